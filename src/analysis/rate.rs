//! A confidence sequence for one Bernoulli rate (the share of requests that
//! failed): the conjugate beta-binomial mixture of Howard, Ramdas, McAuliffe
//! and Sekhon, "Time-uniform, nonparametric, nonasymptotic confidence
//! sequences" (Ann. Statist. 49(2), 2021, the conjugate mixtures of §3, after
//! Robbins 1970).
//!
//! For `s` failures in `n` requests and a candidate rate `p`, the mixture of
//! likelihood ratios over a Beta(a, b) prior on the alternative,
//!
//! `M_n(p) = B(a + s, b + n - s) / B(a, b) / (p^s (1 - p)^(n - s))`,
//!
//! is a nonnegative martingale with mean 1 when `p` is the true rate, so by
//! Ville's inequality `P(exists n: M_n(p) >= 1/alpha) <= alpha`: the set
//! `{p : M_n(p) < 1/alpha}` covers the true rate at every `n` at once, which
//! is what lets the verdict be recomputed after every request. `log M_n` is
//! convex in `p` and negative at `s/n`, so the set is an interval found by
//! bisection on each side of `s/n`.

use statrs::function::beta::ln_beta;

use super::Bounds;

/// Jeffreys' prior Beta(1/2, 1/2): weight near 0 suits error rates of a
/// few percent, and its regret is `1/2 log n` like any smooth prior.
const PRIOR: (f64, f64) = (0.5, 0.5);

/// The `1 - alpha` confidence sequence for the rate after `failures` of
/// `n`. With `n = 0` it is `[0, 1]`.
pub fn confidence_sequence(failures: u64, n: u64, alpha: f64) -> Bounds {
    let s = failures.min(n) as f64;
    let f = n as f64 - s;
    if n == 0 {
        return Bounds {
            estimate: 0.0,
            lower: 0.0,
            upper: 1.0,
        };
    }
    let (a, b) = PRIOR;
    let mixture = ln_beta(a + s, b + f) - ln_beta(a, b);
    let threshold = (1.0 / alpha).ln();
    // log M_n(p) - log(1/alpha), positive outside the sequence.
    let outside = |p: f64| mixture - xlogy(s, p) - xlogy(f, 1.0 - p) - threshold;
    let estimate = s / n as f64;
    let lower = if s == 0.0 {
        0.0
    } else {
        bisect(&outside, 0.0, estimate)
    };
    let upper = if f == 0.0 {
        1.0
    } else {
        bisect(&outside, 1.0, estimate)
    };
    Bounds {
        estimate,
        lower,
        upper,
    }
}

/// `x ln y`, 0 when `x` is 0.
fn xlogy(x: f64, y: f64) -> f64 {
    if x == 0.0 { 0.0 } else { x * y.ln() }
}

/// The point between `out` (outside the set) and `inside` where `outside`
/// changes sign, to 1e-12; the inside end is returned, so the bound errs
/// towards the wider interval.
fn bisect(outside: &impl Fn(f64) -> f64, mut out: f64, mut inside: f64) -> f64 {
    for _ in 0..64 {
        let mid = 0.5 * (out + inside);
        if outside(mid) > 0.0 {
            out = mid;
        } else {
            inside = mid;
        }
        if (out - inside).abs() < 1e-12 {
            break;
        }
    }
    // Wider by the tolerance, never narrower.
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_extreme_counts() {
        let b = confidence_sequence(0, 0, 0.05);
        assert_eq!((b.lower, b.upper), (0.0, 1.0));
        let b = confidence_sequence(0, 1000, 0.05);
        assert_eq!(b.lower, 0.0);
        assert!(b.upper > 0.0 && b.upper < 0.01, "{b:?}");
        let b = confidence_sequence(1000, 1000, 0.05);
        assert_eq!(b.upper, 1.0);
        assert!(b.lower > 0.99, "{b:?}");
        // More failures than requests is clamped, not a panic.
        let b = confidence_sequence(5, 3, 0.05);
        assert_eq!(b.estimate, 1.0);
    }

    #[test]
    fn contains_the_estimate_and_narrows() {
        let mut last = 1.0;
        for n in [10u64, 100, 1_000, 10_000, 100_000] {
            let b = confidence_sequence(n / 20, n, 0.05);
            assert!(b.lower <= 0.05 && 0.05 <= b.upper, "{n}: {b:?}");
            let width = b.upper - b.lower;
            assert!(width < last, "{n}: {width} !< {last}");
            last = width;
        }
        assert!(last < 0.01, "{last}");
    }

    #[test]
    fn wider_than_a_fixed_sample_interval() {
        // The price of looking at every n: wider than the normal interval
        // at the same level (1.96 sd), narrower than 2.5x it.
        let b = confidence_sequence(100, 10_000, 0.05);
        let sd = (0.01f64 * 0.99 / 10_000.0).sqrt();
        let half = (b.upper - b.lower) / 2.0;
        assert!(half > 1.96 * sd && half < 2.5 * 1.96 * sd, "{half} vs {sd}");
    }
}
