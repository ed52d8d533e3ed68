//! A band around an empirical distribution function that holds at every
//! sample size at once: Howard and Ramdas, "Sequential estimation of
//! quantiles with applications to A/B-testing and best-arm identification"
//! (Bernoulli 28(3), 2022), Theorem 2, a time-uniform
//! Dvoretzky-Kiefer-Wolfowitz inequality:
//!
//! `P(exists t >= 1: sup_x |F_t(x) - F(x)| > 0.85 sqrt((log log(e t) +
//! 0.8 log(1612 / alpha)) / t)) <= alpha`.
//!
//! Its width shrinks like `sqrt(log log t / t)`, the best possible rate for
//! a bound that holds at every `t`; the fixed-sample DKW band it replaces
//! is `sqrt(log(2 / alpha) / 2t)`.

/// The band's half-width after `n` observations at error level `alpha`;
/// 1 (no information) when `n` is 0.
pub fn half_width(n: u64, alpha: f64) -> f64 {
    if n == 0 {
        return 1.0;
    }
    let t = n as f64;
    let x = (std::f64::consts::E * t).ln().ln() + 0.8 * (1612.0 / alpha).ln();
    (0.85 * (x / t).sqrt()).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrinks_and_is_wider_than_fixed_sample_dkw() {
        assert_eq!(half_width(0, 0.05), 1.0);
        assert_eq!(half_width(1, 0.05), 1.0);
        let mut last = 1.0;
        for n in [100u64, 1_000, 10_000, 100_000] {
            let w = half_width(n, 0.05);
            let fixed = ((2.0f64 / 0.05).ln() / (2.0 * n as f64)).sqrt();
            assert!(w < last && w > fixed, "{n}: {w} (fixed {fixed})");
            last = w;
        }
        assert!(last < 0.02, "{last}");
    }
}
