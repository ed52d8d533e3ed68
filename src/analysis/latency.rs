//! Is green slower than blue? Answered from the latency histograms' bucket
//! counts with the time-uniform band of [`dkw`](super::dkw) (Howard and
//! Ramdas 2022, Theorem 2) around each side's distribution function `F_g`,
//! `F_b`, each at `alpha/2`, so both hold together with `1 - alpha` at every
//! time. Everything below follows from "both bands hold"; nothing assumes a
//! shape for the latencies.
//!
//! - Quantiles (their §4, "confidence sequences for all quantiles at once"):
//!   `Q(q) > e` when `F(e) < q`, and `Q(q) <= e` when `F(e) >= q`, checked at
//!   the bucket edges `e`, so the bounds are bucket edges.
//! - Stochastic order: the *slower share*
//!   `S = sup_x [F_b(x) - F_g(x + delta)]` is the largest set of quantile
//!   levels `u` (measured as a probability) on which green's `u`-quantile
//!   exceeds blue's by more than `delta`. `S = 0` when green is nowhere slower
//!   than blue by more than `delta`; `S = 1` when every green request is
//!   slower than every blue one by more than `delta`.
//!
//! `Worse` when the lower bound of green's quantile minus the upper bound of
//! blue's exceeds `delta`, or when the lower bound of `S` exceeds
//! [`EFFECT`]; `Within` when the upper bound of `S` is below it. Bucket
//! edges limit both: `x + delta` is rounded up to an edge for the lower
//! bound and the whole bucket of `x` counts for the upper one, so `Within`
//! needs buckets finer than `delta`, and a shift smaller than a bucket is
//! seen only in part. If green is
//! nowhere slower by more than `delta` (`F_g(x + delta) >= F_b(x)` for all
//! `x`), neither `Worse` can happen while the bands hold: at most `alpha`
//! over the whole release.

use super::dkw::half_width;
use super::{Bounds, Outcome};

/// The effect size of the stochastic-order test: green is `Worse` when more
/// than this share of its quantile levels is slower than blue's by more
/// than `delta`, `Within` when less.
pub const EFFECT: f64 = 0.05;

/// A latency histogram: `counts[i]` observations in `(edges[i-1],
/// edges[i]]`, the last count above the last edge (`+Inf`). Seconds.
#[derive(Debug, Clone, Copy)]
pub struct Histogram<'a> {
    pub edges: &'a [f64],
    pub counts: &'a [u64],
}

impl Histogram<'_> {
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Empirical distribution function at each edge.
    fn cdf(&self) -> Vec<f64> {
        let n = self.total().max(1) as f64;
        let mut c = 0u64;
        (0..self.edges.len())
            .map(|i| {
                c += self.counts.get(i).copied().unwrap_or(0);
                c as f64 / n
            })
            .collect()
    }

    /// The `q`-quantile interpolated within its bucket as Prometheus'
    /// `histogram_quantile` does (the last finite edge when it falls in
    /// `+Inf`); 0 when empty.
    pub fn quantile(&self, q: f64) -> f64 {
        let n = self.total();
        if n == 0 || self.edges.is_empty() {
            return 0.0;
        }
        let rank = q * n as f64;
        let mut below = 0u64;
        for (i, (edge, k)) in self.edges.iter().zip(self.counts).enumerate() {
            if (below + k) as f64 >= rank && *k > 0 {
                let start = if i == 0 { 0.0 } else { self.edges[i - 1] };
                return start + (edge - start) * (rank - below as f64) / *k as f64;
            }
            below += k;
        }
        self.edges[self.edges.len() - 1]
    }
}

/// The `q`-quantile of one side with time-uniform bounds at half-width
/// `eps` (`upper` is infinite until the band can place it below the last
/// edge).
pub fn quantile_bounds(h: Histogram<'_>, q: f64, eps: f64) -> Bounds {
    let cdf = h.cdf();
    let lower = h
        .edges
        .iter()
        .zip(&cdf)
        .filter(|(_, f)| **f + eps < q)
        .map(|(e, _)| *e)
        .fold(0.0, f64::max);
    let upper = h
        .edges
        .iter()
        .zip(&cdf)
        .find(|(_, f)| **f - eps >= q)
        .map_or(f64::INFINITY, |(e, _)| *e);
    Bounds {
        estimate: h.quantile(q),
        lower,
        upper,
    }
}

/// One quantile of both sides.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuantilePair {
    pub q: f64,
    pub green: Bounds,
    pub blue: Bounds,
}

/// Why latency was found worse.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Worse {
    /// The configured quantile: green's lower bound minus blue's upper.
    Quantile(QuantilePair),
    /// The slower share's lower bound exceeds [`EFFECT`].
    Order,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Latency {
    /// p50, p90, p99 and the configured quantile (if another).
    pub quantiles: Vec<QuantilePair>,
    pub slower_share: Bounds,
    pub outcome: Outcome,
    pub worse: Option<Worse>,
}

/// Compares green's latencies with blue's at error level `alpha`, with
/// `delta` seconds of tolerated slowdown, judged at quantile `q` and in
/// stochastic order. Both histograms have the same edges.
pub fn compare(
    green: Histogram<'_>,
    blue: Histogram<'_>,
    q: f64,
    delta: f64,
    alpha: f64,
) -> Latency {
    let eg = half_width(green.total(), alpha / 2.0);
    let eb = half_width(blue.total(), alpha / 2.0);
    let pair = |q| QuantilePair {
        q,
        green: quantile_bounds(green, q, eg),
        blue: quantile_bounds(blue, q, eb),
    };
    let mut quantiles: Vec<QuantilePair> = [0.5, 0.9, 0.99].into_iter().map(pair).collect();
    if !quantiles.iter().any(|p| p.q == q) {
        quantiles.push(pair(q));
    }
    let judged = pair(q);
    let slower_share = slower_share(green, blue, delta, eg, eb);
    let worse = if judged.green.lower - judged.blue.upper > delta {
        Some(Worse::Quantile(judged))
    } else if slower_share.lower > EFFECT {
        Some(Worse::Order)
    } else {
        None
    };
    let outcome = match worse {
        Some(_) => Outcome::Worse,
        None if slower_share.upper < EFFECT => Outcome::Within,
        None => Outcome::Unknown,
    };
    Latency {
        quantiles,
        slower_share,
        outcome,
        worse,
    }
}

/// Bounds on `S = sup_x [F_b(x) - F_g(x + delta)]` from the bands.
fn slower_share(green: Histogram<'_>, blue: Histogram<'_>, delta: f64, eg: f64, eb: f64) -> Bounds {
    let edges = blue.edges;
    let (fg, fb) = (green.cdf(), blue.cdf());
    let clamp = |f: f64| f.clamp(0.0, 1.0);
    // F_g at the smallest edge >= y bounds F_g(y) from above (1 past the
    // last edge); at the largest edge <= y, from below (0 before the first).
    let g_ceil = |y: f64, f: &dyn Fn(f64) -> f64| {
        edges
            .iter()
            .position(|e| *e >= y)
            .map_or(1.0, |j| clamp(f(fg[j])))
    };
    let g_floor = |y: f64| {
        edges
            .iter()
            .rposition(|e| *e <= y)
            .map_or(0.0, |j| clamp(fg[j] - eg))
    };
    let mut estimate = 0.0f64;
    let mut lower = 0.0f64;
    let mut upper = 0.0f64;
    for (i, e) in edges.iter().enumerate() {
        // At x = e: a valid point of the supremum.
        estimate = estimate.max(fb[i] - g_ceil(e + delta, &|f| f));
        lower = lower.max(clamp(fb[i] - eb) - g_ceil(e + delta, &|f| f + eg));
        // For x in (previous edge, e]: F_b(x) <= F_b(e) and
        // F_g(x + delta) >= F_g(previous edge + delta).
        let start = if i == 0 { 0.0 } else { edges[i - 1] };
        upper = upper.max(clamp(fb[i] + eb) - g_floor(start + delta));
    }
    // x above the last edge: F_b(x) <= 1, F_g(x + delta) >= F_g(last edge).
    if let Some(last) = edges.last() {
        upper = upper.max(1.0 - g_floor(last + delta));
    }
    Bounds {
        estimate: estimate.max(0.0),
        lower: lower.max(0.0),
        upper: upper.clamp(0.0, 1.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EDGES: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25];

    #[test]
    fn quantiles_interpolate_and_bound() {
        let counts = [0, 100, 0, 0, 0, 0, 0];
        let h = Histogram {
            edges: EDGES,
            counts: &counts,
        };
        assert!((h.quantile(0.5) - 0.0075).abs() < 1e-9);
        let b = quantile_bounds(h, 0.5, 0.1);
        assert_eq!((b.lower, b.upper), (0.005, 0.01));
        let empty = Histogram {
            edges: EDGES,
            counts: &[0; 7],
        };
        assert_eq!(empty.quantile(0.99), 0.0);
        let b = quantile_bounds(empty, 0.99, half_width(0, 0.05));
        assert_eq!((b.lower, b.upper), (0.0, f64::INFINITY));
    }

    #[test]
    fn identical_sides_are_within_and_a_shift_is_worse() {
        let same = [10, 400, 500, 80, 10, 0, 0];
        let h = Histogram {
            edges: EDGES,
            counts: &same,
        };
        // Many observations: tight bands.
        let big: Vec<u64> = same.iter().map(|c| c * 100).collect();
        let hb = Histogram {
            edges: EDGES,
            counts: &big,
        };
        let l = compare(hb, hb, 0.99, 0.010, 0.05);
        assert_ne!(l.outcome, Outcome::Worse, "{l:?}");
        assert_eq!(l.slower_share.lower, 0.0);
        // Within needs buckets finer than the tolerance: at 100 ms it is
        // certified.
        let l = compare(hb, hb, 0.99, 0.100, 0.05);
        assert_eq!(l.outcome, Outcome::Within, "{l:?}");
        let l = compare(h, h, 0.99, 0.010, 0.05);
        assert_ne!(l.outcome, Outcome::Worse, "{l:?}");
        // Green 30 ms slower: everything moves up two buckets or more.
        let slow = [0, 0, 0, 10, 900, 90, 0];
        let g = Histogram {
            edges: EDGES,
            counts: &slow,
        };
        let l = compare(g, h, 0.99, 0.010, 0.05);
        assert_eq!(l.outcome, Outcome::Worse, "{l:?}");
        assert_eq!(l.worse, Some(Worse::Order));
        assert!(l.slower_share.lower > 0.5, "{l:?}");
    }

    #[test]
    fn one_side_empty_is_unknown() {
        let some = [10, 400, 500, 80, 10, 0, 0];
        let h = Histogram {
            edges: EDGES,
            counts: &some,
        };
        let empty = Histogram {
            edges: EDGES,
            counts: &[0; 7],
        };
        for (g, b) in [(h, empty), (empty, h), (empty, empty)] {
            let l = compare(g, b, 0.99, 0.010, 0.05);
            assert_eq!(l.outcome, Outcome::Unknown, "{l:?}");
        }
    }
}
