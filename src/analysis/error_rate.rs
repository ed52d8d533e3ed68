//! The difference of two error rates, green minus blue, with a confidence
//! sequence built from one [`rate`](super::rate) sequence per side (Howard
//! et al. 2021, as there), joined by a union bound: if each side's sequence
//! holds with `1 - alpha/2` at every time, both hold together with `1 - alpha`,
//! and then `p_g - p_b` lies in `[L_g - U_b, U_g - L_b]` at every time.
//!
//! The decision tests `H0: p_g - p_b <= threshold` against "worse by more
//! than `threshold`": `fail` when the lower bound exceeds the threshold,
//! `pass` when the upper bound is below it. So an A/A comparison (difference
//! 0) can only fail if the lower bound is wrong, which happens with at most
//! `alpha` over the whole release, however often it is looked at; a green
//! worse by twice the threshold fails once the interval is narrower than
//! the margin. A test of `p_g - p_b <= 0` would fail faster but would also
//! fail for increases below the threshold the user said are acceptable.

use super::rate::confidence_sequence;
use super::{Bounds, Outcome};

/// Green's and blue's error rates and their difference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Difference {
    pub green: Bounds,
    pub blue: Bounds,
    pub difference: Bounds,
    pub outcome: Outcome,
}

/// Compares `green_errors / green_n` with `blue_errors / blue_n` at error
/// level `alpha` against an absolute `threshold` (0.01 = one point).
pub fn compare(
    green_errors: u64,
    green_n: u64,
    blue_errors: u64,
    blue_n: u64,
    threshold: f64,
    alpha: f64,
) -> Difference {
    let green = confidence_sequence(green_errors, green_n, alpha / 2.0);
    let blue = confidence_sequence(blue_errors, blue_n, alpha / 2.0);
    let difference = Bounds {
        estimate: green.estimate - blue.estimate,
        lower: green.lower - blue.upper,
        upper: green.upper - blue.lower,
    };
    let outcome = if difference.lower > threshold {
        Outcome::Worse
    } else if difference.upper < threshold {
        Outcome::Within
    } else {
        Outcome::Unknown
    };
    Difference {
        green,
        blue,
        difference,
        outcome,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_traffic_with_one_error_is_unknown() {
        let d = compare(1, 20, 0, 20, 0.01, 0.05);
        assert_eq!(d.outcome, Outcome::Unknown, "{d:?}");
        assert!(d.difference.lower < 0.0);
    }

    #[test]
    fn a_clear_increase_is_worse_and_identical_rates_are_within() {
        let d = compare(300, 10_000, 10, 10_000, 0.01, 0.05);
        assert_eq!(d.outcome, Outcome::Worse, "{d:?}");
        let d = compare(100, 20_000, 100, 20_000, 0.01, 0.05);
        assert_eq!(d.outcome, Outcome::Within, "{d:?}");
    }

    #[test]
    fn one_side_empty_is_unknown() {
        for (ge, gn, be, bn) in [(0, 0, 5, 1000), (50, 1000, 0, 0), (0, 0, 0, 0)] {
            let d = compare(ge, gn, be, bn, 0.01, 0.05);
            assert_eq!(d.outcome, Outcome::Unknown, "{d:?}");
            assert!(d.difference.lower >= -1.0 && d.difference.upper <= 1.0);
        }
    }
}
