//! The evidence a rollout step is judged on: per backend of a route, the
//! requests, 5xx sent to the client and latency bucket counts, as monotonic
//! totals whose difference since the step started is the step's evidence.
//!
//! Read off the request path, from the route's metric handles, twice a
//! second at most. The verdict itself is [`judge`].

use crate::routing::table::Route;

/// Monotonic totals of one backend of a route.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub errors: u64,
    /// Non-cumulative latency bucket counts, the last one `+Inf`.
    pub buckets: Vec<u64>,
}

impl Counts {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Counts) -> Counts {
        Counts {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            buckets: self
                .buckets
                .iter()
                .enumerate()
                .map(|(i, b)| b.saturating_sub(earlier.buckets.get(i).copied().unwrap_or(0)))
                .collect(),
        }
    }
}

/// The totals of backend `i` of `route`: requests and 5xx from
/// `cutover_requests_total` without override traffic, latency from
/// `cutover_request_duration_seconds`.
pub fn snapshot(metrics: &crate::metrics::Metrics, route: &Route, backend: &str) -> Counts {
    use prometheus::core::Collector;
    let mut c = Counts::default();
    for family in metrics.requests_family().collect() {
        for m in family.get_metric() {
            let label = |name: &str| {
                m.get_label()
                    .iter()
                    .find(|l| l.name() == name)
                    .map(|l| l.value())
                    .unwrap_or_default()
            };
            if label("route") != &*route.name
                || label("backend") != backend
                || label("override") == "true"
            {
                continue;
            }
            let n = m.get_counter().value() as u64;
            c.requests += n;
            if label("code").starts_with('5') {
                c.errors += n;
            }
        }
    }
    if let Some(b) = route.backends.iter().find(|b| &*b.backend.name == backend) {
        let families = b.metrics.duration().collect();
        if let Some(h) = families
            .first()
            .and_then(|f| f.get_metric().first())
            .map(|m| m.get_histogram())
        {
            let mut prev = 0;
            for bucket in h.get_bucket() {
                c.buckets
                    .push(bucket.cumulative_count().saturating_sub(prev));
                prev = bucket.cumulative_count();
            }
            c.buckets.push(h.get_sample_count().saturating_sub(prev));
        }
    }
    c
}

/// The verdict on a step's evidence (`canary` against `baseline`, both since
/// the step started) and the sentences behind it.
///
/// Interim rule until the anytime-valid tests of the A/B verdict (issue 14,
/// `crate::analysis`) are merged: nothing but `inconclusive` before
/// `min_requests` per side; then the error-rate difference with a normal
/// interval of three standard errors (variance from `(errors + 1) / (n + 2)`,
/// so a side without errors is not certain) is `fail` when its lower bound
/// exceeds `max_increase` and `pass` when its upper bound is below it.
pub fn judge(
    canary: &Counts,
    baseline: &Counts,
    min_requests: u64,
    max_increase: f64,
) -> (super::machine::Verdict, Vec<String>) {
    use super::machine::Verdict;
    let rate = |c: &Counts| c.errors as f64 / c.requests.max(1) as f64;
    let var = |c: &Counts| {
        let p = (c.errors as f64 + 1.0) / (c.requests as f64 + 2.0);
        p * (1.0 - p) / c.requests.max(1) as f64
    };
    let (pc, pb) = (rate(canary), rate(baseline));
    let d = pc - pb;
    let half = 3.0 * (var(canary) + var(baseline)).sqrt();
    let line = format!(
        "error rate {:.1}% vs {:.1}%, {:+.1} points (bounds {:+.1}..{:+.1}), {} and {} requests",
        pc * 100.0,
        pb * 100.0,
        d * 100.0,
        (d - half) * 100.0,
        (d + half) * 100.0,
        canary.requests,
        baseline.requests
    );
    if canary.requests.min(baseline.requests) < min_requests {
        let why = format!(
            "{} and {} requests, {min_requests} per side needed",
            canary.requests, baseline.requests
        );
        return (Verdict::Inconclusive, vec![why, line]);
    }
    if d - half > max_increase {
        let why = format!("{line}: more than {:+.1} points", max_increase * 100.0);
        (Verdict::Fail, vec![why])
    } else if d + half < max_increase {
        (Verdict::Pass, vec![line])
    } else {
        (Verdict::Inconclusive, vec![line])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::machine::Verdict;

    fn c(requests: u64, errors: u64) -> Counts {
        Counts {
            requests,
            errors,
            buckets: vec![],
        }
    }

    #[test]
    fn low_traffic_waits_errors_fail_equal_passes() {
        assert_eq!(
            judge(&c(20, 1), &c(20, 0), 100, 0.01).0,
            Verdict::Inconclusive
        );
        assert_eq!(judge(&c(2000, 60), &c(2000, 0), 100, 0.01).0, Verdict::Fail);
        assert_eq!(judge(&c(2000, 0), &c(2000, 0), 100, 0.01).0, Verdict::Pass);
        let (v, why) = judge(&c(300, 9), &c(300, 3), 100, 0.01);
        assert_eq!(v, Verdict::Inconclusive, "{why:?}");
        assert_eq!(c(10, 2).since(&c(4, 1)), c(6, 1));
    }
}
