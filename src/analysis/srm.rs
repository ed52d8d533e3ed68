//! Sample-ratio mismatch: are the requests counted per backend the shares
//! the weights promise? Lindon and Malek, "Anytime-valid inference for
//! multinomial count data" (NeurIPS 2022), §3: under the null the counts
//! `x` are multinomial with the weights' shares `pi`; against a
//! Dirichlet(`k pi`) mixture of alternatives the Bayes factor
//!
//! `BF_n = Gamma(k) / Gamma(k + n) * prod_i Gamma(k pi_i + x_i) / Gamma(k pi_i)
//!         / prod_i pi_i^x_i`
//!
//! is a nonnegative martingale with mean 1 under the null (an e-process),
//! so `P(exists n: BF_n >= 1/alpha) <= alpha`: the alarm may be checked
//! after every request. `k = 100` (the concentration of their reference
//! implementation) centres the prior on the promised shares.
//!
//! A mismatch means the comparison is biased (green's failures failed over
//! to blue, a backend dropped requests, a client retried on one side) and a
//! verdict must not be `pass`. The test assumes independent assignments: on
//! a sticky route a returning user's requests all go where the user went,
//! so requests are clustered and their counts vary far more than a
//! multinomial's. There the unit is the user: Cutover counts the requests
//! that received a new sticky cookie (one per new user) instead.

use statrs::function::gamma::ln_gamma;

/// The prior's concentration `k`.
const CONCENTRATION: f64 = 100.0;

#[derive(Debug, Clone, PartialEq)]
pub struct Srm {
    pub alarm: bool,
    /// `BF_n`, capped at 1e300 (so it stays a JSON number).
    pub e_value: f64,
    /// The shares the weights promise and the shares observed.
    pub expected: Vec<f64>,
    pub observed: Vec<f64>,
}

/// Tests `counts` against the shares of `weights` at level `alpha`.
/// A backend with weight 0 that received requests is an alarm by itself
/// (infinite evidence); with no counts there is no evidence.
pub fn test(counts: &[u64], weights: &[u32], alpha: f64) -> Srm {
    let total_w: f64 = weights.iter().map(|w| f64::from(*w)).sum();
    let n: u64 = counts.iter().sum();
    let expected: Vec<f64> = weights
        .iter()
        .map(|w| {
            if total_w > 0.0 {
                f64::from(*w) / total_w
            } else {
                0.0
            }
        })
        .collect();
    let observed: Vec<f64> = counts
        .iter()
        .map(|c| if n > 0 { *c as f64 / n as f64 } else { 0.0 })
        .collect();
    let impossible = counts
        .iter()
        .zip(&expected)
        .any(|(c, p)| *c > 0 && *p == 0.0);
    let log_bf = if impossible {
        f64::INFINITY
    } else {
        let k = CONCENTRATION;
        let mut l = ln_gamma(k) - ln_gamma(k + n as f64);
        for (x, p) in counts.iter().zip(&expected) {
            if *p > 0.0 {
                let (x, a) = (*x as f64, k * p);
                l += ln_gamma(a + x) - ln_gamma(a) - x * p.ln();
            }
        }
        l
    };
    Srm {
        alarm: log_bf >= (1.0 / alpha).ln(),
        e_value: log_bf.min(690.0).exp(),
        expected,
        observed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_counts_no_alarm_and_skewed_counts_alarm() {
        assert!(!test(&[5_000, 5_050], &[50, 50], 0.05).alarm);
        assert!(!test(&[900, 100], &[90, 10], 0.05).alarm);
        let s = test(&[5_600, 4_400], &[50, 50], 0.05);
        assert!(s.alarm && s.e_value > 20.0, "{s:?}");
        assert!((s.observed[0] - 0.56).abs() < 1e-9);
    }

    #[test]
    fn edge_cases() {
        let s = test(&[0, 0], &[50, 50], 0.05);
        assert!(!s.alarm && (s.e_value - 1.0).abs() < 1e-9, "{s:?}");
        let s = test(&[10, 3], &[100, 0], 0.05);
        assert!(s.alarm && s.e_value.is_finite(), "{s:?}");
        let s = test(&[10, 0], &[100, 0], 0.05);
        assert!(!s.alarm, "{s:?}");
        let s = test(&[], &[], 0.05);
        assert!(!s.alarm);
    }
}
