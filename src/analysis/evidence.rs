//! The evidence of one (route, backend), recorded on the request path:
//! requests, 5xx sent to the client, new sticky users and latency bucket
//! counts, as monotonic counters. Recording is a few relaxed `fetch_add`s on
//! the calling thread's own stripe (cache lines no other stripe shares): no
//! lock, no allocation, no clock read. Windows are differences of snapshots
//! taken off the request path ([`super::window`]).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::stripe::{Line, PER_LINE, STRIPES};

const REQUESTS: usize = 0;
const ERRORS: usize = 1;
const ASSIGNED: usize = 2;
/// Latency summed in nanoseconds (the histogram's `_sum` when exported);
/// on the same line as `REQUESTS`, so it costs no extra cache line.
const SUM_NANOS: usize = 3;
const BUCKETS: usize = 4;

/// Where a response's latency falls, computed once per response for both
/// the A/B evidence and the per-pair Prometheus series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latency {
    /// Its bucket, `0..=edges.len()`: upper edges are inclusive, as in
    /// Prometheus' `le`; NaN counts in `+Inf` only, as in the `prometheus`
    /// crate.
    pub bucket: usize,
    /// Nanoseconds (`as` saturates: a negative or NaN duration is 0).
    pub nanos: u64,
}

impl Latency {
    /// `seconds` against the finite upper `edges`.
    #[inline]
    pub fn of(edges: &[f64], seconds: f64) -> Latency {
        let bucket = if seconds.is_nan() {
            edges.len()
        } else {
            edges.partition_point(|e| *e < seconds)
        };
        Latency {
            bucket,
            nanos: (seconds * 1e9) as u64,
        }
    }
}

/// Striped counters of one (route, backend).
pub struct Evidence {
    /// Finite upper edges of the latency buckets, seconds; one more bucket
    /// (`+Inf`) follows.
    edges: Box<[f64]>,
    lines_per_stripe: usize,
    lines: Box<[Line]>,
}

/// The counters summed over stripes: plain counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub errors: u64,
    /// Requests that received a new sticky cookie: one per new user.
    pub assigned: u64,
    /// Latency of all requests counted, nanoseconds.
    pub sum_nanos: u64,
    /// Non-cumulative, `edges.len() + 1` of them.
    pub buckets: Vec<u64>,
}

impl Counts {
    /// What happened between `earlier` and `self` (counters only grow).
    pub fn since(&self, earlier: &Counts) -> Counts {
        Counts {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            assigned: self.assigned.saturating_sub(earlier.assigned),
            sum_nanos: self.sum_nanos.saturating_sub(earlier.sum_nanos),
            buckets: self
                .buckets
                .iter()
                .enumerate()
                .map(|(i, b)| b.saturating_sub(earlier.buckets.get(i).copied().unwrap_or(0)))
                .collect(),
        }
    }
}

impl Evidence {
    pub fn new(edges: &[f64]) -> Evidence {
        let counters = BUCKETS + edges.len() + 1;
        let lines_per_stripe = counters.div_ceil(PER_LINE);
        let lines = (0..STRIPES * lines_per_stripe)
            .map(|_| Line(std::array::from_fn(|_| AtomicU64::new(0))))
            .collect();
        Evidence {
            edges: edges.into(),
            lines_per_stripe,
            lines,
        }
    }

    pub fn edges(&self) -> &[f64] {
        &self.edges
    }

    fn add(&self, stripe: usize, counter: usize) {
        self.add_n(stripe, counter, 1);
    }

    fn add_n(&self, stripe: usize, counter: usize, n: u64) {
        let line = stripe * self.lines_per_stripe + counter / PER_LINE;
        if let Some(l) = self.lines.get(line) {
            l.0[counter % PER_LINE].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Records one response sent to the client (override traffic is not
    /// evidence: callers skip it).
    pub fn record(&self, error: bool, seconds: f64) {
        self.record_latency(error, Latency::of(&self.edges, seconds));
    }

    /// [`Self::record`] with the latency already placed (against these
    /// edges).
    #[inline]
    pub fn record_latency(&self, error: bool, latency: Latency) {
        let stripe = crate::stripe::current();
        self.add(stripe, REQUESTS);
        if error {
            self.add(stripe, ERRORS);
        }
        self.add_n(stripe, SUM_NANOS, latency.nanos);
        self.add(stripe, BUCKETS + latency.bucket);
    }

    /// Records a new sticky user assigned to this backend.
    pub fn assigned(&self) {
        self.add(crate::stripe::current(), ASSIGNED);
    }

    /// The counters summed over stripes.
    pub fn snapshot(&self) -> Counts {
        let counters = BUCKETS + self.edges.len() + 1;
        let mut sum = vec![0u64; counters];
        for stripe in 0..STRIPES {
            for (c, total) in sum.iter_mut().enumerate() {
                let line = &self.lines[stripe * self.lines_per_stripe + c / PER_LINE];
                *total += line.0[c % PER_LINE].load(Ordering::Relaxed);
            }
        }
        Counts {
            requests: sum[REQUESTS],
            errors: sum[ERRORS],
            assigned: sum[ASSIGNED],
            sum_nanos: sum[SUM_NANOS],
            buckets: sum[BUCKETS..].to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_many_threads_add_up() {
        let e = std::sync::Arc::new(Evidence::new(&[0.01, 0.1]));
        let threads: Vec<_> = (0..20)
            .map(|t| {
                let e = e.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        e.record(i % 10 == 0, if t % 2 == 0 { 0.01 } else { 0.5 });
                    }
                    e.assigned();
                })
            })
            .collect();
        for t in threads {
            t.join().expect("no panic");
        }
        let c = e.snapshot();
        assert_eq!(c.requests, 20_000);
        assert_eq!(c.sum_nanos, 10_000 * 10_000_000 + 10_000 * 500_000_000);
        assert_eq!(c.errors, 2_000);
        assert_eq!(c.assigned, 20);
        assert_eq!(c.buckets, vec![10_000, 0, 10_000]);
        let later = Counts {
            requests: 20_005,
            ..c.clone()
        };
        assert_eq!(later.since(&c).requests, 5);
    }

    #[test]
    fn latency_buckets_have_inclusive_upper_edges() {
        let edges = [0.01, 0.1];
        let at = |s: f64| Latency::of(&edges, s);
        assert_eq!(
            at(0.0),
            Latency {
                bucket: 0,
                nanos: 0
            }
        );
        assert_eq!(at(0.01).bucket, 0);
        assert_eq!(at(0.010001).bucket, 1);
        assert_eq!(at(0.1).bucket, 1);
        assert_eq!(
            at(7.0),
            Latency {
                bucket: 2,
                nanos: 7_000_000_000
            }
        );
        assert_eq!(
            at(f64::NAN),
            Latency {
                bucket: 2,
                nanos: 0
            }
        );
        assert_eq!(
            at(-1.0),
            Latency {
                bucket: 0,
                nanos: 0
            }
        );
    }
}
