//! Seeded simulations of whole releases watched after every batch of
//! requests: the false-alarm rate the verdict promises, and how many
//! requests it needs to catch a real regression.

use statrs::distribution::{Binomial, DiscreteCDF};

use super::latency::Histogram;
use super::srm;
use super::verdict::{Kind, Settings, Side, compare};

const EDGES: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// One side's running counts.
#[derive(Clone)]
struct Counts {
    n: u64,
    errors: u64,
    buckets: Vec<u64>,
}

impl Counts {
    fn new() -> Counts {
        Counts {
            n: 0,
            errors: 0,
            buckets: vec![0; EDGES.len() + 1],
        }
    }

    fn add(&mut self, error: bool, seconds: f64) {
        self.n += 1;
        self.errors += u64::from(error);
        let i = EDGES.partition_point(|e| *e < seconds);
        self.buckets[i] += 1;
    }

    fn side(&self) -> Side<'_> {
        Side {
            requests: self.n,
            errors: self.errors,
            latency: Histogram {
                edges: EDGES,
                counts: &self.buckets,
            },
        }
    }
}

/// A latency like a web backend's: log-normal, median 20 ms, sigma 0.5
/// (p99 about 64 ms), by Box-Muller from the seeded generator.
fn latency(rng: &mut fastrand::Rng, shift: f64) -> f64 {
    let (u1, u2) = (rng.f64().max(1e-300), rng.f64());
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    0.020 * (0.5 * z).exp() + shift
}

/// A 50/50 release of `per_side` requests per side (assigned at random, as
/// the split does), judged after every `batch` requests. Returns the number
/// of requests per side at the first `fail`, if any.
fn release(
    seed: u64,
    per_side: u64,
    batch: u64,
    blue_error: f64,
    green_error: f64,
    green_shift: f64,
) -> Option<u64> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let settings = Settings::default();
    let (mut g, mut b) = (Counts::new(), Counts::new());
    let mut total = 0u64;
    while g.n.min(b.n) < per_side {
        if rng.bool() {
            g.add(rng.f64() < green_error, latency(&mut rng, green_shift));
        } else {
            b.add(rng.f64() < blue_error, latency(&mut rng, 0.0));
        }
        total += 1;
        if total.is_multiple_of(batch) {
            let s = srm::test(&[b.n, g.n], &[50, 50], 1.0 - settings.confidence);
            if compare(g.side(), b.side(), &s, &settings).kind == Kind::Fail {
                return Some(g.n.min(b.n));
            }
        }
    }
    None
}

/// A/A: the share of 1,000 releases of 20,000 requests per side, watched
/// after every 100 requests (400 looks), that ever read `fail` must stay
/// within alpha = 5% plus three binomial standard deviations:
/// 0.05 + 3 sqrt(0.05 * 0.95 / 1000) = 0.0707, i.e. 70 runs.
#[test]
fn a_a_releases_rarely_fail() {
    let runs = 1_000;
    let fails = (0..runs)
        .filter(|seed| release(*seed, 20_000, 100, 0.01, 0.01, 0.0).is_some())
        .count();
    let tolerance = 0.05 + 3.0 * (0.05f64 * 0.95 / runs as f64).sqrt();
    println!("A/A: {fails} of {runs} releases ever failed (allowed {tolerance:.4})");
    assert!((fails as f64) / (runs as f64) <= tolerance, "{fails}");
}

/// The requests per side after which a green at `pg` errors against a blue
/// at `pb` reads `fail` with probability at least 0.9, computed, not
/// simulated: the verdict's lower bound rises with green's errors and falls
/// with blue's, so if it fails with green at the 5th percentile of
/// Binomial(n, pg) and blue at the 95th of Binomial(n, pb), it fails with
/// probability >= 1 - 0.05 - 0.05 at that n (and so by that n).
fn requests_to_detect(pb: f64, pg: f64) -> u64 {
    let settings = Settings::default();
    let flat = vec![0u64; EDGES.len() + 1];
    let mut n = 200u64;
    loop {
        let g = Binomial::new(pg, n).expect("valid").inverse_cdf(0.05);
        let b = Binomial::new(pb, n).expect("valid").inverse_cdf(0.95);
        let side = |errors| Side {
            requests: n,
            errors,
            latency: Histogram {
                edges: EDGES,
                counts: &flat,
            },
        };
        let s = srm::test(&[n, n], &[50, 50], 0.05);
        if compare(side(g), side(b), &s, &settings).kind == Kind::Fail {
            return n;
        }
        n += n / 20;
    }
}

/// Green at +2 points (3% against 1%): at least 90% of releases fail
/// within the computed number of requests per side.
#[test]
fn two_points_more_errors_fail_in_time() {
    let bound = requests_to_detect(0.01, 0.03);
    let runs = 200;
    let detected: Vec<u64> = (0..runs)
        .filter_map(|seed| release(10_000 + seed, bound, 100, 0.01, 0.03, 0.0))
        .collect();
    let mut sorted = detected.clone();
    sorted.sort_unstable();
    println!(
        "+2 points: {} of {runs} failed within {bound} requests per side (median {})",
        detected.len(),
        sorted.get(sorted.len() / 2).copied().unwrap_or(0)
    );
    assert!(
        detected.len() * 10 >= runs as usize * 9,
        "{}",
        detected.len()
    );
}

/// The requests per side after which green 30 ms slower than the
/// log-normal of [`latency`] fails with probability about 0.9 or more
/// (normal approximation). The widest gap the default buckets show is at
/// x = 25 ms: `F_b(25 ms) - F_g(25 + 10 ms, rounded up to the 50 ms edge)`
/// `= Phi(ln(1.25) / 0.5) - Phi(0) = 0.172`. `fail` needs it to exceed
/// `EFFECT` plus both bands' half-widths (each at alpha/4), and the two
/// empirical CDFs to be within 1.645 standard deviations (<= 0.5/sqrt(n))
/// of theirs, each with probability 0.95.
fn requests_to_detect_30ms() -> u64 {
    use statrs::distribution::{ContinuousCDF, Normal};
    let phi = Normal::standard();
    let gap = phi.cdf((1.25f64).ln() / 0.5) - phi.cdf(0.0);
    (200u64..)
        .find(|n| {
            let eps = super::dkw::half_width(*n, 0.0125);
            let noise = 2.0 * 1.645 * 0.5 / (*n as f64).sqrt();
            2.0 * eps + noise < gap - super::latency::EFFECT
        })
        .unwrap_or(u64::MAX)
}

/// Green 30 ms slower: at least 90% of releases fail within the computed
/// number of requests per side.
#[test]
fn thirty_ms_slower_fails_in_time() {
    let bound = requests_to_detect_30ms();
    let runs = 200;
    let detected: Vec<u64> = (0..runs)
        .filter_map(|seed| release(20_000 + seed, bound, 100, 0.0, 0.0, 0.030))
        .collect();
    let mut sorted = detected.clone();
    sorted.sort_unstable();
    println!(
        "+30 ms: {} of {runs} failed within {bound} requests per side (median {})",
        detected.len(),
        sorted.get(sorted.len() / 2).copied().unwrap_or(0)
    );
    assert!(
        detected.len() * 10 >= runs as usize * 9,
        "{}",
        detected.len()
    );
}

/// The largest sample-ratio e-value a 90/10 route's counts reach while
/// `requests` are assigned, each to green with probability `green_share`,
/// checked after every 10 requests.
fn srm_peak(seed: u64, requests: u64, green_share: f64) -> f64 {
    let mut rng = fastrand::Rng::with_seed(seed);
    let (mut blue, mut green) = (0u64, 0u64);
    let mut peak = 1.0f64;
    for i in 1..=requests {
        if rng.f64() < green_share {
            green += 1;
        } else {
            blue += 1;
        }
        if i.is_multiple_of(10) {
            peak = peak.max(srm::test(&[blue, green], &[90, 10], 0.5).e_value);
        }
    }
    peak
}

/// SRM, A/A: the share of 2,000 routes of 20,000 requests at 90/10,
/// checked after every 10 requests (2,000 looks), whose e-value ever
/// reaches `1/alpha` stays within alpha plus three binomial standard
/// deviations, both at `confidence`'s level (0.05: at most 0.0646, 129
/// runs) and at the default `srm_confidence` (0.001: at most 0.0031, 6
/// runs). Lindon and Malek's Bayes factor is an e-process, so Ville's
/// inequality bounds the chance of ever crossing.
#[test]
fn a_a_routes_rarely_raise_the_srm_alarm() {
    let runs = 2_000u64;
    let peaks: Vec<f64> = (0..runs).map(|seed| srm_peak(seed, 20_000, 0.1)).collect();
    for alpha in [0.05, 1.0 - Settings::default().srm_confidence] {
        let alarms = peaks.iter().filter(|p| **p >= 1.0 / alpha).count();
        let tolerance = alpha + 3.0 * (alpha * (1.0 - alpha) / runs as f64).sqrt();
        println!(
            "SRM A/A at alpha {alpha:.3}: {alarms} of {runs} ever alarmed (allowed {tolerance:.4})"
        );
        assert!(alarms as f64 / runs as f64 <= tolerance, "{alarms}");
    }
}

/// The requests after which a 90/10 route whose green gets `share` of them
/// raises the SRM alarm at the default level with probability at least
/// 0.95, computed, not simulated: with green's count at the 95th
/// percentile of Binomial(n, share) (below the promised 10%, the count
/// least far from it) the e-value must reach `1/alpha`; fewer green
/// requests only raise it.
fn requests_to_alarm(share: f64) -> u64 {
    let alpha = 1.0 - Settings::default().srm_confidence;
    let mut n = 100u64;
    loop {
        let green = Binomial::new(share, n).expect("valid").inverse_cdf(0.95);
        if green < n / 10 && srm::test(&[n - green, green], &[90, 10], alpha).alarm {
            return n;
        }
        n += n / 20;
    }
}

/// A real mismatch: green gets 7% where the weights promise 10% (three in
/// ten of its requests failed over to blue, say). At least 90% of 200
/// routes alarm within the computed number of requests (each does with
/// probability >= 0.95 there; 90% is 3.2 binomial standard deviations
/// below that).
#[test]
fn a_real_mismatch_raises_the_srm_alarm_in_time() {
    let bound = requests_to_alarm(0.07);
    let alpha = 1.0 - Settings::default().srm_confidence;
    let runs = 200u64;
    let alarmed = (0..runs)
        .filter(|seed| srm_peak(1_000_000 + seed, bound, 0.07) >= 1.0 / alpha)
        .count();
    println!(
        "SRM 7% vs 10%: {alarmed} of {runs} alarmed within {bound} requests (alpha {alpha:.3})"
    );
    assert!(alarmed * 10 >= runs as usize * 9, "{alarmed}");
}

/// Low traffic: 20 requests per side, one of green's a 5xx, never fails,
/// whatever the latencies.
#[test]
fn twenty_requests_with_one_error_never_fail() {
    for seed in 0..200 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let (mut g, mut b) = (Counts::new(), Counts::new());
        for i in 0..20 {
            g.add(i == 7, latency(&mut rng, 0.0));
            b.add(false, latency(&mut rng, 0.0));
        }
        let s = srm::test(&[20, 20], &[50, 50], 0.05);
        let c = compare(g.side(), b.side(), &s, &Settings::default());
        assert_ne!(c.kind, Kind::Fail, "{c:?}");
        // Without the minimum too: the interval is far too wide.
        let no_min = Settings {
            min_requests: 0,
            ..Settings::default()
        };
        assert_ne!(compare(g.side(), b.side(), &s, &no_min).kind, Kind::Fail);
    }
}

proptest::proptest! {
    /// Any counts, zero and one side empty included: no panic, bounds in
    /// order, and too few requests is never anything but inconclusive.
    #[test]
    fn any_counts_give_ordered_bounds(
        gn in 0u64..5_000, ge in 0u64..5_000, bn in 0u64..5_000, be in 0u64..5_000,
        gb in proptest::collection::vec(0u64..1_000, EDGES.len() + 1),
        bb in proptest::collection::vec(0u64..1_000, EDGES.len() + 1),
    ) {
        let g = Side { requests: gn, errors: ge, latency: Histogram { edges: EDGES, counts: &gb } };
        let b = Side { requests: bn, errors: be, latency: Histogram { edges: EDGES, counts: &bb } };
        let s = srm::test(&[bn, gn], &[50, 50], 0.05);
        let c = compare(g, b, &s, &Settings::default());
        let d = c.errors.difference;
        proptest::prop_assert!(d.lower <= d.upper && d.lower >= -1.0 && d.upper <= 1.0);
        let share = c.latency.slower_share;
        proptest::prop_assert!(0.0 <= share.lower && share.lower <= share.upper && share.upper <= 1.0);
        for p in &c.latency.quantiles {
            proptest::prop_assert!(p.green.lower <= p.green.upper && p.blue.lower <= p.blue.upper);
        }
        if gn.min(bn) < 200 {
            proptest::prop_assert_eq!(c.kind, Kind::Inconclusive);
        }
    }
}
