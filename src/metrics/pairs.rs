//! The per-request series of every (route, backend) that has served:
//! `cutover_requests_total`, `cutover_request_duration_seconds`,
//! `cutover_requests_in_flight`, `cutover_upstream_errors_total`,
//! `cutover_retries_total` and `cutover_grpc_responses_total`. Recording is
//! a relaxed `fetch_add` on the calling thread's own stripe
//! ([`crate::stripe`]): lines no other thread writes, so nothing bounces
//! between the workers' cores. [`PairCollector`] sums the stripes at scrape
//! time into the same families, names, labels and help the `prometheus`
//! crate's vectors exported before; every value is a sum of integers.
//!
//! Memory: a stripe is allocated when its thread first writes to the pair,
//! so a pair served by two workers holds two stripes. With the default 14
//! bucket edges a stripe is 76 counters = 5 lines of 128 bytes (plus 128
//! bytes for its `Arc` header), 768 bytes; a pair costs ~0.4 KiB of stripe
//! slots plus 768 bytes per thread that served it: 1.9 KiB with 2 workers,
//! 12.7 KiB at most (all 16 stripes).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{IntCounterVec, Opts};

use super::UpstreamErrorKind;
use crate::analysis::evidence::Latency;
use crate::stripe::{Line, PER_LINE, STRIPES};

pub const REQUESTS: &str = "cutover_requests_total";
pub const DURATION: &str = "cutover_request_duration_seconds";
pub const IN_FLIGHT: &str = "cutover_requests_in_flight";
pub const ERRORS: &str = "cutover_upstream_errors_total";
pub const RETRIES: &str = "cutover_retries_total";
pub const GRPC: &str = "cutover_grpc_responses_total";

/// Status codes seen often enough to get a counter in every stripe; the
/// others go to a shared `IntCounterVec` merged into the same family.
pub const COMMON: [u16; 18] = [
    200, 201, 204, 206, 301, 302, 304, 400, 401, 403, 404, 429, 431, 499, 500, 502, 503, 504,
];

/// The `reason` labels of `cutover_retries_total`, by `RetryReason as usize`.
const RETRY_REASONS: [&str; 2] = ["connect", "5xx"];

/// The `grpc_status` labels, `0` to `16`.
const GRPC_STATUSES: [&str; 17] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
];

// Where each counter sits in a stripe.
/// Requests in flight: +1 and -1 as wrapping `u64`s, summed as an `i64`.
const AT_IN_FLIGHT: usize = 0;
/// Latency summed in nanoseconds, an integer like the evidence's
/// `SUM_NANOS` (exported as `_sum` = nanoseconds / 1e9); on the same line
/// as the in-flight count, which every request writes anyway.
const AT_SUM_NANOS: usize = 1;
/// `cutover_requests_total` of the [`COMMON`] codes:
/// `[override as usize][index in COMMON]`.
const AT_CODES: usize = 2;
const AT_ERRORS: usize = AT_CODES + 2 * COMMON.len();
const AT_RETRIES: usize = AT_ERRORS + UpstreamErrorKind::ALL.len();
const AT_GRPC: usize = AT_RETRIES + RETRY_REASONS.len();
/// Latency buckets, not cumulative: one per edge, then `+Inf`. Their sum
/// is the histogram's `_count`.
const AT_BUCKETS: usize = AT_GRPC + GRPC_STATUSES.len();

/// One thread's lines of a pair. In an `Arc` so that an in-flight guard can
/// hold its stripe: the reference count it writes sits in this allocation's
/// header (on its own 128 bytes: the lines are aligned), a line written by
/// the same thread as the lines, not one every worker shares.
type Stripe = Arc<[Line]>;

/// The striped counters of one (route, backend).
pub struct Pair {
    /// Counters per stripe: `AT_BUCKETS + edges + 1`.
    counters: usize,
    stripes: [OnceLock<Stripe>; STRIPES],
}

impl Pair {
    /// A pair with `buckets` latency buckets (the edges and `+Inf`); no
    /// stripe is allocated yet.
    pub fn new(buckets: usize) -> Pair {
        Pair {
            counters: AT_BUCKETS + buckets,
            stripes: Default::default(),
        }
    }

    /// This thread's stripe, allocated on its first write.
    #[inline]
    fn mine(&self) -> &Stripe {
        let lines = self.counters.div_ceil(PER_LINE);
        self.stripes[crate::stripe::current() % STRIPES].get_or_init(|| {
            (0..lines)
                .map(|_| Line(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect()
        })
    }

    /// A response head sent: its code's counter (`None` for a code outside
    /// [`COMMON`], counted by the caller), its latency (bucket and
    /// nanoseconds, placed once for this and the A/B evidence).
    #[inline]
    pub fn response(&self, code: Option<(bool, usize)>, latency: Latency) {
        let s = self.mine();
        if let Some((overridden, i)) = code {
            add(s, AT_CODES + usize::from(overridden) * COMMON.len() + i, 1);
        }
        add(s, AT_SUM_NANOS, latency.nanos);
        add(s, AT_BUCKETS + latency.bucket, 1);
    }

    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        add(self.mine(), AT_ERRORS + kind as usize, 1);
    }

    /// `reason`: `RetryReason as usize`.
    pub fn retry(&self, reason: usize) {
        add(self.mine(), AT_RETRIES + reason, 1);
    }

    /// `status`: 0 to 16.
    pub fn grpc(&self, status: usize) {
        add(self.mine(), AT_GRPC + status, 1);
    }

    /// Counts a request in flight until the guard drops.
    #[inline]
    pub fn in_flight(&self) -> InFlightGuard {
        let s = self.mine();
        add(s, AT_IN_FLIGHT, 1);
        InFlightGuard(s.clone())
    }

    /// Every counter summed over the stripes (wrapping, for the in-flight
    /// count's decrements).
    fn sums(&self) -> Vec<u64> {
        let mut sum = vec![0u64; self.counters];
        for stripe in self.stripes.iter().filter_map(OnceLock::get) {
            for (c, total) in sum.iter_mut().enumerate() {
                let n = stripe[c / PER_LINE].0[c % PER_LINE].load(Ordering::Relaxed);
                *total = total.wrapping_add(n);
            }
        }
        sum
    }

    /// The latency histogram now, with `edges` (those the pair was made
    /// with).
    pub fn histogram(&self, edges: &[f64]) -> proto::Histogram {
        let c = self.sums();
        histogram(edges, &c[AT_BUCKETS..], c[AT_SUM_NANOS])
    }
}

#[inline]
fn add(stripe: &[Line], counter: usize, n: u64) {
    if let Some(l) = stripe.get(counter / PER_LINE) {
        l.0[counter % PER_LINE].fetch_add(n, Ordering::Relaxed);
    }
}

/// Holds `cutover_requests_in_flight` of a pair up by one while alive. The
/// decrement goes to the stripe of the increment, whichever thread drops
/// the guard, so every stripe's count stays at or above zero.
pub struct InFlightGuard(Stripe);

impl Drop for InFlightGuard {
    #[inline]
    fn drop(&mut self) {
        if let Some(l) = self.0.first() {
            l.0[AT_IN_FLIGHT].fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl fmt::Debug for InFlightGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InFlightGuard")
    }
}

/// A histogram from non-cumulative `buckets` (`edges` and `+Inf`).
pub fn histogram(edges: &[f64], buckets: &[u64], sum_nanos: u64) -> proto::Histogram {
    let mut h = proto::Histogram::default();
    let mut cumulative = 0;
    for (edge, n) in edges.iter().zip(buckets) {
        cumulative += n;
        let mut b = proto::Bucket::default();
        b.set_upper_bound(*edge);
        b.set_cumulative_count(cumulative);
        h.bucket.push(b);
    }
    // The `+Inf` bucket, which the text format adds, is the count.
    h.set_sample_count(buckets.iter().sum());
    h.set_sample_sum(sum_nanos as f64 / 1e9);
    h
}

/// (route, backend).
type Key = (Arc<str>, Arc<str>);

/// Every pair that has served, by (route, backend); kept for the life of
/// the process, so a new table's handles of a pair find its counters.
pub type PairMap = Arc<Mutex<HashMap<Key, Arc<Pair>>>>;

/// Exports the pairs of a [`PairMap`] (and the rare status codes) at each
/// scrape, one family per name.
#[derive(Clone)]
pub struct PairCollector {
    pairs: PairMap,
    /// `cutover_requests_total` of the codes outside [`COMMON`]; its own
    /// desc is the family's, and it is not registered (this collects it).
    rare: IntCounterVec,
    edges: Arc<[f64]>,
    /// Requests, duration, in flight, errors, retries, gRPC.
    descs: Vec<Desc>,
}

/// Name, help and label names of each family, in `descs` order.
pub const FAMILIES: [(&str, &str, &[&str]); 6] = [
    (
        REQUESTS,
        "Requests answered, by route, backend and status code sent to the client; override=\"true\" for tester overrides.",
        &["route", "backend", "code", "override"],
    ),
    (
        DURATION,
        "Time from request head received to response head sent.",
        &["route", "backend"],
    ),
    (
        IN_FLIGHT,
        "Requests waiting for or streaming a response.",
        &["route", "backend"],
    ),
    (
        ERRORS,
        "Failed upstream exchanges by kind: connect, timeout, reset, protocol.",
        &["route", "backend", "kind"],
    ),
    (
        RETRIES,
        "Requests sent again, by reason: connect or 5xx.",
        &["route", "backend", "reason"],
    ),
    (
        GRPC,
        "gRPC responses by route, backend and grpc-status (0-16), from the headers of a trailers-only response, else from the trailers.",
        &["route", "backend", "grpc_status"],
    ),
];

impl PairCollector {
    pub fn new(pairs: PairMap, edges: &[f64]) -> PairCollector {
        let descs = FAMILIES
            .iter()
            .map(|(name, help, labels)| {
                Desc::new(
                    (*name).into(),
                    (*help).into(),
                    labels.iter().map(|l| (*l).to_owned()).collect(),
                    HashMap::new(),
                )
                .expect("valid metric")
            })
            .collect();
        let (name, help, labels) = FAMILIES[0];
        let rare = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
        PairCollector {
            pairs,
            rare,
            edges: edges.into(),
            descs,
        }
    }

    /// The counters of the codes outside [`COMMON`].
    pub fn rare(&self) -> &IntCounterVec {
        &self.rare
    }

    fn pairs(&self) -> Vec<(Key, Arc<Pair>)> {
        self.pairs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn family(&self, i: usize, kind: MetricType, metrics: Vec<proto::Metric>) -> MetricFamily {
        let mut f = MetricFamily::default();
        f.set_name(self.descs[i].fq_name.clone());
        f.set_help(self.descs[i].help.clone());
        f.set_field_type(kind);
        f.set_metric(metrics);
        f
    }

    /// The `cutover_requests_total` family alone (`/admin/state` and the
    /// dashboard's history sum it by pair).
    pub fn requests(&self) -> MetricFamily {
        let mut metrics = self.rare_metrics();
        for ((route, backend), pair) in self.pairs() {
            push_codes(&mut metrics, &route, &backend, &pair.sums());
        }
        self.family(0, MetricType::COUNTER, metrics)
    }

    fn rare_metrics(&self) -> Vec<proto::Metric> {
        self.rare
            .collect()
            .into_iter()
            .flat_map(|mut f| f.take_metric())
            .collect()
    }
}

/// A metric with its labels in name order, as the `prometheus` crate's
/// vectors put them (the text format prints them in this order).
fn metric(pairs: &[(&str, &str)]) -> proto::Metric {
    let mut sorted = pairs.to_vec();
    sorted.sort_by_key(|(name, _)| *name);
    proto::Metric::from_label(
        sorted
            .iter()
            .map(|(k, v)| {
                let mut l = proto::LabelPair::default();
                l.set_name((*k).to_owned());
                l.set_value((*v).to_owned());
                l
            })
            .collect(),
    )
}

fn counter(pairs: &[(&str, &str)], value: u64) -> proto::Metric {
    let mut c = proto::Counter::default();
    c.set_value(value as f64);
    let mut m = metric(pairs);
    m.set_counter(c);
    m
}

/// The common codes a pair has answered: a code appears from its first
/// response on, as a child of the vector did.
fn push_codes(out: &mut Vec<proto::Metric>, route: &str, backend: &str, c: &[u64]) {
    for (i, n) in c[AT_CODES..AT_ERRORS].iter().enumerate() {
        if *n > 0 {
            let code = COMMON[i % COMMON.len()].to_string();
            let overridden = if i >= COMMON.len() { "true" } else { "false" };
            out.push(counter(
                &[
                    ("route", route),
                    ("backend", backend),
                    ("code", &code),
                    ("override", overridden),
                ],
                *n,
            ));
        }
    }
}

impl Collector for PairCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    /// A pair that has served has its duration, in-flight, error and retry
    /// series from its first request on (at 0 until counted), as the
    /// vectors' children resolved then did; a code or gRPC status has a
    /// series once counted.
    fn collect(&self) -> Vec<MetricFamily> {
        let mut requests = self.rare_metrics();
        let (mut durations, mut in_flight, mut errors, mut retries, mut grpc) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((route, backend), pair) in self.pairs() {
            let c = pair.sums();
            let rb = [("route", &*route), ("backend", &*backend)];
            push_codes(&mut requests, &route, &backend, &c);
            let mut m = metric(&rb);
            m.set_histogram(histogram(&self.edges, &c[AT_BUCKETS..], c[AT_SUM_NANOS]));
            durations.push(m);
            let mut g = proto::Gauge::default();
            g.set_value(c[AT_IN_FLIGHT] as i64 as f64);
            let mut m = metric(&rb);
            m.set_gauge(g);
            in_flight.push(m);
            for kind in UpstreamErrorKind::ALL {
                errors.push(counter(
                    &[rb[0], rb[1], ("kind", kind.as_str())],
                    c[AT_ERRORS + kind as usize],
                ));
            }
            for (i, reason) in RETRY_REASONS.iter().enumerate() {
                retries.push(counter(
                    &[rb[0], rb[1], ("reason", reason)],
                    c[AT_RETRIES + i],
                ));
            }
            for (i, status) in GRPC_STATUSES.iter().enumerate() {
                let n = c[AT_GRPC + i];
                if n > 0 {
                    grpc.push(counter(&[rb[0], rb[1], ("grpc_status", status)], n));
                }
            }
        }
        vec![
            self.family(0, MetricType::COUNTER, requests),
            self.family(1, MetricType::HISTOGRAM, durations),
            self.family(2, MetricType::GAUGE, in_flight),
            self.family(3, MetricType::COUNTER, errors),
            self.family(4, MetricType::COUNTER, retries),
            self.family(5, MetricType::COUNTER, grpc),
        ]
    }
}
