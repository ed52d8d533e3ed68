//! Buckets: the users of a route are spread over 0..10000 buckets and the
//! route's backends, sorted by name, own contiguous ranges of them in
//! proportion to their weights.
//!
//! With two backends the first owns `[0, b)` and the second `[b, 10000)`, so
//! raising the second's weight only moves users towards it, never back. With
//! three or more the ranges are laid end to end in name order: the decision is
//! still a pure function of (bucket, weights), but a weight change may move
//! users between any two neighbours.

/// Number of buckets a route's traffic is divided into.
pub const BUCKETS: u16 = 10_000;

/// A user's place in the split, `0..BUCKETS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bucket(u16);

impl Bucket {
    pub fn new(n: u16) -> Option<Bucket> {
        (n < BUCKETS).then_some(Bucket(n))
    }

    /// A bucket drawn uniformly from the calling thread's generator.
    pub fn random() -> Bucket {
        Bucket(fastrand::u16(..BUCKETS))
    }

    /// Maps a 64-bit hash onto a bucket.
    pub fn from_hash(h: u64) -> Bucket {
        Bucket((h % u64::from(BUCKETS)) as u16)
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

/// The bucket ranges of one route: `upper[i]` is the exclusive end of backend
/// `i`'s range, which starts where backend `i - 1`'s ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    upper: Box<[u16]>,
}

impl Split {
    /// Builds the ranges for `weights` (at least one positive). Boundaries
    /// are rounded down from the exact cumulative share, so each backend gets
    /// its share of the 10000 buckets to within one bucket, and a weight of 0
    /// gets an empty range.
    pub fn new(weights: &[u32]) -> Split {
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum::<u64>().max(1);
        let mut cumulative = 0u64;
        let mut upper: Vec<u16> = weights
            .iter()
            .map(|w| {
                cumulative += u64::from(*w);
                (cumulative * u64::from(BUCKETS) / total) as u16
            })
            .collect();
        // The last positive weight always closes the range at BUCKETS.
        if let Some(last) = weights.iter().rposition(|w| *w > 0) {
            for u in &mut upper[last..] {
                *u = BUCKETS;
            }
        }
        Split {
            upper: upper.into(),
        }
    }

    /// The index of the backend owning `bucket`.
    pub fn pick(&self, bucket: Bucket) -> usize {
        self.upper.iter().position(|u| bucket.0 < *u).unwrap_or(0)
    }

    /// The `[start, end)` bucket range of backend `i`.
    pub fn range(&self, i: usize) -> (u16, u16) {
        let start = if i == 0 { 0 } else { self.upper[i - 1] };
        (start, self.upper[i])
    }

    pub fn len(&self) -> usize {
        self.upper.len()
    }

    pub fn is_empty(&self) -> bool {
        self.upper.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn owners(split: &Split, backend: usize) -> Vec<u16> {
        (0..BUCKETS)
            .filter(|b| split.pick(Bucket(*b)) == backend)
            .collect()
    }

    #[test]
    fn ninety_ten() {
        let s = Split::new(&[90, 10]);
        assert_eq!(s.range(0), (0, 9000));
        assert_eq!(s.range(1), (9000, 10000));
        assert_eq!(s.pick(Bucket(8999)), 0);
        assert_eq!(s.pick(Bucket(9000)), 1);
    }

    #[test]
    fn zero_weight_owns_nothing_even_last() {
        let s = Split::new(&[5, 0]);
        assert_eq!(s.range(1), (10000, 10000));
        assert!(owners(&s, 1).is_empty());
        let s = Split::new(&[0, 3, 0]);
        assert_eq!(owners(&s, 1).len(), 10000);
    }

    proptest! {
        /// Raising the second backend's weight only adds buckets to it.
        #[test]
        fn raising_green_only_moves_users_to_green(blue in 0u32..1000, a in 0u32..1000, extra in 0u32..1000) {
            prop_assume!(blue + a > 0);
            let b = a + extra;
            let low: Vec<u16> = owners(&Split::new(&[blue, a]), 1);
            let high: Vec<u16> = owners(&Split::new(&[blue, b]), 1);
            prop_assert!(low.iter().all(|x| high.contains(x)));
            if a == 0 { prop_assert!(low.is_empty()); }
        }

        /// Over all 10000 buckets each backend's share is its weight's share,
        /// to within the one bucket that rounding can move.
        #[test]
        fn shares_match_weights(weights in proptest::collection::vec(0u32..10_000, 1..6)) {
            let total: u32 = weights.iter().sum();
            prop_assume!(total > 0);
            let s = Split::new(&weights);
            let mut counts = vec![0usize; weights.len()];
            for b in 0..BUCKETS {
                counts[s.pick(Bucket(b))] += 1;
            }
            let mut sum = 0usize;
            for (i, w) in weights.iter().enumerate() {
                let n = counts[i];
                sum += n;
                let exact = f64::from(*w) * f64::from(BUCKETS) / f64::from(total);
                prop_assert!((n as f64 - exact).abs() < 1.0 + 1e-9, "backend {i}: {n} vs {exact}");
                if *w == 0 { prop_assert_eq!(n, 0); }
            }
            prop_assert_eq!(sum, usize::from(BUCKETS));
        }
    }
}
