//! The verdict of one comparison (green against its baseline, blue): the
//! error-rate and latency tests under one error budget, the sample-ratio
//! alarm, and the minimum evidence.
//!
//! `alpha = 1 - confidence` is split in two (Bonferroni): `alpha/2` for the
//! error-rate sequence, `alpha/2` for the latency bands. Each guarantees its
//! `Worse` happens with at most its share when green is not worse, however
//! often it is looked at, so an A/A comparison reads `fail` at any time of
//! the release with probability at most `alpha`. The SRM alarm has its own
//! `alpha`: it can only turn a `pass` into `inconclusive`.
//!
//! `pass` means: enough requests, the error rate is not worse by more than
//! the threshold (with confidence), latency was not found worse, and no
//! sample-ratio mismatch. It does not certify latency equivalence, which at
//! the default buckets (25, 50, 100 ms) cannot be bounded to 10 ms from
//! above; the reasons say when it is certified.

use super::Outcome;
use super::error_rate::{self, Difference};
use super::latency::{self, Histogram, Latency, Worse};
use super::srm::Srm;

/// The thresholds of a route's `analysis` table.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// 1 - alpha of the whole verdict.
    pub confidence: f64,
    /// 1 - alpha of the sample-ratio alarm, a test of its own: an alarm
    /// pauses a rollout, so its false alarms must be rarer than the
    /// verdict's (industry practice is p < 0.001 or stricter: Fabijan et
    /// al., "Diagnosing Sample Ratio Mismatch in Online Controlled
    /// Experiments", KDD 2019).
    pub srm_confidence: f64,
    /// Per side, before anything but `inconclusive`.
    pub min_requests: u64,
    /// Absolute: 0.01 is one percentage point.
    pub max_error_rate_increase: f64,
    /// Seconds.
    pub max_latency_increase: f64,
    pub quantile: f64,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            confidence: 0.95,
            srm_confidence: 0.999,
            min_requests: 200,
            max_error_rate_increase: 0.01,
            max_latency_increase: 0.010,
            quantile: 0.99,
        }
    }
}

/// What one side of a comparison saw: plain counts.
#[derive(Debug, Clone, Copy)]
pub struct Side<'a> {
    pub requests: u64,
    /// 5xx sent to the client, the proxy's own included.
    pub errors: u64,
    pub latency: Histogram<'a>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Pass,
    Fail,
    Inconclusive,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Pass, Kind::Fail, Kind::Inconclusive];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Pass => "pass",
            Kind::Fail => "fail",
            Kind::Inconclusive => "inconclusive",
        }
    }
}

/// A verdict with the evidence behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub kind: Kind,
    /// Short sentences a person can read, the deciding ones first.
    pub reasons: Vec<String>,
    pub errors: Difference,
    pub latency: Latency,
}

/// Compares `green` with `blue` (the baseline) under `settings`, given the
/// route's SRM result.
pub fn compare(green: Side<'_>, blue: Side<'_>, srm: &Srm, settings: &Settings) -> Comparison {
    let alpha = (1.0 - settings.confidence).clamp(1e-9, 0.5);
    let errors = error_rate::compare(
        green.errors,
        green.requests,
        blue.errors,
        blue.requests,
        settings.max_error_rate_increase,
        alpha / 2.0,
    );
    let latency = latency::compare(
        green.latency,
        blue.latency,
        settings.quantile,
        settings.max_latency_increase,
        alpha / 2.0,
    );
    let pct = settings.confidence * 100.0;
    let mut fails = Vec::new();
    let mut others = Vec::new();
    let error_line = format!(
        "error rate {} vs {}, {:+.1} points ({pct:.0}% bounds {:+.1}..{:+.1})",
        percent(errors.green.estimate),
        percent(errors.blue.estimate),
        errors.difference.estimate * 100.0,
        errors.difference.lower * 100.0,
        errors.difference.upper * 100.0,
    );
    match errors.outcome {
        Outcome::Worse => fails.push(format!(
            "{error_line}: more than {:+.1} points",
            settings.max_error_rate_increase * 100.0
        )),
        _ => others.push(error_line),
    }
    let q = latency
        .quantiles
        .iter()
        .find(|p| p.q == settings.quantile)
        .copied();
    let delta_ms = settings.max_latency_increase * 1e3;
    let share = latency.slower_share;
    let order_line = format!(
        "{:.0}% of requests slower than the baseline's by more than {delta_ms:.0} ms ({pct:.0}% bounds {:.0}%..{:.0}%)",
        share.estimate * 100.0,
        share.lower * 100.0,
        share.upper * 100.0,
    );
    match latency.worse {
        Some(Worse::Quantile(p)) => fails.push(format!(
            "p{} latency {} vs {} ({pct:.0}% bounds {}..{} vs {}..{}): more than {delta_ms:.0} ms slower",
            qname(p.q),
            ms(p.green.estimate),
            ms(p.blue.estimate),
            ms(p.green.lower),
            ms(p.green.upper),
            ms(p.blue.lower),
            ms(p.blue.upper),
        )),
        Some(Worse::Order) => fails.push(order_line),
        None => {
            if let Some(p) = q {
                others.push(format!(
                    "p{} latency {} vs {}",
                    qname(p.q),
                    ms(p.green.estimate),
                    ms(p.blue.estimate)
                ));
            }
            others.push(order_line);
        }
    }
    if srm.alarm {
        others.insert(
            0,
            format!(
                "sample ratio mismatch: {} of requests where the weights promise {} (e-value {:.3e}); the comparison is biased",
                shares(&srm.observed),
                shares(&srm.expected),
                srm.e_value
            ),
        );
    }
    let short = settings
        .min_requests
        .saturating_sub(green.requests.min(blue.requests));
    let kind = if short > 0 {
        others.insert(
            0,
            format!(
                "{} and {} requests, {} per side needed",
                green.requests, blue.requests, settings.min_requests
            ),
        );
        Kind::Inconclusive
    } else if !fails.is_empty() {
        Kind::Fail
    } else if errors.outcome == Outcome::Within && latency.outcome != Outcome::Worse && !srm.alarm {
        Kind::Pass
    } else {
        Kind::Inconclusive
    };
    let reasons = if kind == Kind::Inconclusive && short > 0 {
        others
    } else {
        fails.into_iter().chain(others).collect()
    };
    Comparison {
        kind,
        reasons,
        errors,
        latency,
    }
}

fn percent(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// Milliseconds, "inf" for an unbounded bound.
pub fn ms(seconds: f64) -> String {
    if seconds.is_finite() {
        let m = seconds * 1e3;
        if m < 10.0 {
            format!("{m:.1} ms")
        } else {
            format!("{m:.0} ms")
        }
    } else {
        "inf".into()
    }
}

/// 0.99 -> "99", 0.999 -> "99.9".
pub fn qname(q: f64) -> String {
    let s = format!("{}", (q * 1000.0).round() / 10.0);
    s.trim_end_matches(".0").to_string()
}

fn shares(s: &[f64]) -> String {
    s.iter()
        .map(|x| format!("{:.1}%", x * 100.0))
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::srm;

    const EDGES: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1];

    fn side(requests: u64, errors: u64, counts: &[u64]) -> Side<'_> {
        Side {
            requests,
            errors,
            latency: Histogram {
                edges: EDGES,
                counts,
            },
        }
    }

    #[test]
    fn twenty_requests_one_error_is_inconclusive() {
        let g = [0, 20, 0, 0, 0, 0];
        let b = [0, 20, 0, 0, 0, 0];
        let s = srm::test(&[20, 20], &[50, 50], 0.05);
        let c = compare(side(20, 1, &g), side(20, 0, &b), &s, &Settings::default());
        assert_eq!(c.kind, Kind::Inconclusive, "{c:?}");
        assert!(
            c.reasons[0].contains("200 per side needed"),
            "{:?}",
            c.reasons
        );
    }

    #[test]
    fn errors_fail_and_srm_blocks_pass() {
        let g = [0, 10_000, 0, 0, 0, 0];
        let b = [0, 10_000, 0, 0, 0, 0];
        let ok = srm::test(&[10_000, 10_000], &[50, 50], 0.05);
        let c = compare(
            side(10_000, 400, &g),
            side(10_000, 20, &b),
            &ok,
            &Settings::default(),
        );
        assert_eq!(c.kind, Kind::Fail, "{c:?}");
        assert!(
            c.reasons[0].starts_with("error rate 4.0% vs 0.2%, +3.8 points"),
            "{:?}",
            c.reasons
        );
        let c = compare(
            side(10_000, 20, &g),
            side(10_000, 20, &b),
            &ok,
            &Settings::default(),
        );
        assert_eq!(c.kind, Kind::Pass, "{c:?}");
        let bad = srm::test(&[8_000, 10_000], &[50, 50], 0.05);
        assert!(bad.alarm);
        let c = compare(
            side(10_000, 20, &g),
            side(10_000, 20, &b),
            &bad,
            &Settings::default(),
        );
        assert_eq!(c.kind, Kind::Inconclusive, "{c:?}");
        assert!(
            c.reasons[0].starts_with("sample ratio mismatch"),
            "{:?}",
            c.reasons
        );
    }

    #[test]
    fn names() {
        assert_eq!(qname(0.99), "99");
        assert_eq!(qname(0.5), "50");
        assert_eq!(qname(0.999), "99.9");
        assert_eq!(ms(0.0412), "41 ms");
        assert_eq!(ms(f64::INFINITY), "inf");
    }
}
