//! The dashboard's 15 minutes of history: a control-plane task that every
//! [`INTERVAL`] reads the per-(route, backend) counters and histograms the
//! request path already keeps, and stores the deltas in a ring served at
//! `GET /admin/history`. Nothing on the request path changes.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::metrics::Metrics;
use crate::routing::RoutingTable;

/// How often the sampler reads the counters.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// How much history is kept: 15 minutes, i.e. 450 samples of 2 s.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
const CAPACITY: usize = (WINDOW.as_secs() / INTERVAL.as_secs()) as usize;

/// One interval of one (route, backend), all traffic included (overrides
/// too, like `/admin/state`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Point {
    #[serde(serialize_with = "as_str")]
    pub route: Arc<str>,
    #[serde(serialize_with = "as_str")]
    pub backend: Arc<str>,
    /// Weight in force at the end of the interval.
    pub weight: u32,
    /// Responses sent in the interval.
    pub requests: u64,
    /// Of those, with a 5xx status (the proxy's own 502/503/504 included).
    pub errors_5xx: u64,
    /// `requests` per second of the interval.
    pub rps: f64,
    /// `errors_5xx / requests` (at most 1); `None` without requests.
    pub error_rate: Option<f64>,
    /// Latency quantiles of the interval's requests, estimated from the
    /// histogram buckets like Prometheus' `histogram_quantile`.
    pub p50_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
}

/// `Arc<str>` as a JSON string (serde's `rc` feature is not enabled).
fn as_str<S: serde::Serializer>(v: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v)
}

/// The counters of all series at one sampling instant.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Unix time at the end of the interval.
    pub unix: f64,
    /// Length of the interval (about [`INTERVAL`]).
    pub seconds: f64,
    pub series: Vec<Point>,
}

/// Cumulative values of one (route, backend) at the previous tick.
#[derive(Clone, Default)]
struct Totals {
    errors_5xx: u64,
    /// Histogram: sample count and cumulative bucket counts.
    count: u64,
    buckets: Vec<u64>,
}

impl Totals {
    /// A pair before its first request.
    const ZERO: Totals = Totals {
        errors_5xx: 0,
        count: 0,
        buckets: Vec::new(),
    };
}

/// The ring, shared between the sampler and the admin listener (both on the
/// control thread; the lock is held only to copy in or out).
#[derive(Default)]
pub struct History {
    ring: Mutex<VecDeque<Sample>>,
}

impl History {
    /// The samples that end after `since` (unix seconds), oldest first.
    pub fn since(&self, since: f64) -> Vec<Sample> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter().filter(|s| s.unix > since).cloned().collect()
    }

    fn push(&self, s: Sample) {
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() == CAPACITY {
            ring.pop_front();
        }
        ring.push_back(s);
    }

    /// The JSON document of `GET /admin/history?since=UNIX`.
    pub fn json(&self, since: f64) -> serde_json::Value {
        serde_json::json!({
            "interval_seconds": INTERVAL.as_secs_f64(),
            "window_seconds": WINDOW.as_secs_f64(),
            "samples": self.since(since),
        })
    }
}

/// Samples every [`INTERVAL`] until the runtime stops.
pub async fn run(history: Arc<History>, shared: Arc<crate::proxy::Shared>) {
    let mut prev: HashMap<(Arc<str>, Arc<str>), Totals> = HashMap::new();
    let mut last = Instant::now();
    let mut first = true;
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let seconds = now.duration_since(last).as_secs_f64();
        last = now;
        let table = shared.table.load_full();
        // The first tick only records the starting totals.
        let first = std::mem::take(&mut first);
        let series = sample(&table, &shared.metrics, &mut prev, first, seconds);
        if !first && seconds > 0.0 {
            let unix = unix_millis(SystemTime::now());
            history.push(Sample {
                unix,
                seconds,
                series,
            });
        }
    }
}

/// A sample's time: unix seconds in whole milliseconds. A client sends
/// the last one back as `?since=`; with at most three decimals it parses
/// back to the same `f64` even in a parser that is not correctly rounded
/// (`serde_json`'s default is within one unit in the last place), so the
/// sample is not returned twice.
fn unix_millis(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as f64 / 1000.0
}

/// Reads the (route, backend) pairs of `table`, returns their deltas
/// against `prev` over `seconds` and stores the new totals there.
///
/// Every response is counted in exactly one interval. A route none of
/// whose backends has served has no series (its children do not exist
/// yet, see `metrics::RouteMetrics`, and 10,000 idle routes would
/// otherwise cost 20,000 points a sample); once one has, all the route's
/// backends are charted. Totals are kept for every pair ever read, also
/// after a reload removes it, so a pair that comes back carries on from
/// them; a pair not in `prev` has therefore never been read, and on any
/// tick but the `first` (which only records the starting totals) its past
/// is zero: its first request came after the previous tick read the
/// table. A counter that went backwards (cannot happen in one process,
/// but cheap to guard) restarts from zero.
fn sample(
    table: &RoutingTable,
    metrics: &Metrics,
    prev: &mut HashMap<(Arc<str>, Arc<str>), Totals>,
    first: bool,
    seconds: f64,
) -> Vec<Point> {
    let errors = errors_5xx(metrics);
    let mut out = Vec::new();
    for r in table.routes.iter() {
        if !r.backends.iter().any(|b| b.metrics.has_served()) {
            continue;
        }
        let start = out.len();
        for b in r.backends.iter() {
            let key = (r.name.clone(), b.backend.name.clone());
            let (bounds, now) = totals(&b.metrics.duration());
            let now = Totals {
                errors_5xx: errors.get(&key).copied().unwrap_or(0),
                ..now
            };
            let before = match prev.get(&key) {
                Some(before) => Some(before),
                None if first => None,
                None => Some(&Totals::ZERO),
            };
            if let Some(before) = before
                && seconds > 0.0
            {
                out.push(point(&key, b.weight, &bounds, before, &now, seconds));
            }
            prev.insert(key, now);
        }
        // A route quiet through the interval has no points (a chart reads
        // that as no requests): kept, 1,000 routes that had served once
        // would hold 900,000 points, about 90 MB, every 15 minutes.
        if out[start..]
            .iter()
            .all(|p| p.requests == 0 && p.errors_5xx == 0)
        {
            out.truncate(start);
        }
    }
    out
}

fn point(
    key: &(Arc<str>, Arc<str>),
    weight: u32,
    bounds: &[f64],
    before: &Totals,
    now: &Totals,
    seconds: f64,
) -> Point {
    let reset = now.count < before.count || before.buckets.len() != now.buckets.len();
    let before = if reset { &Totals::ZERO } else { before };
    let requests = now.count - before.count;
    // The status counter is bumped just before the histogram: a read in
    // between sees one more error than requests. Counted, not clipped, so
    // sums over samples stay exact; only the rate is capped.
    let errors = now.errors_5xx.saturating_sub(before.errors_5xx);
    let delta: Vec<u64> = now
        .buckets
        .iter()
        .zip(before.buckets.iter().chain(std::iter::repeat(&0)))
        .map(|(n, b)| n.saturating_sub(*b))
        .collect();
    Point {
        route: key.0.clone(),
        backend: key.1.clone(),
        weight,
        requests,
        errors_5xx: errors,
        rps: requests as f64 / seconds,
        error_rate: (requests > 0).then(|| (errors as f64 / requests as f64).min(1.0)),
        p50_seconds: quantile(bounds, &delta, requests, 0.5),
        p99_seconds: quantile(bounds, &delta, requests, 0.99),
    }
}

/// Sample count and cumulative bucket counts of a histogram, with the
/// buckets' upper bounds.
fn totals(hist: &prometheus::proto::Histogram) -> (Vec<f64>, Totals) {
    let mut t = Totals::default();
    let mut bounds = Vec::new();
    t.count = hist.get_sample_count();
    for b in hist.get_bucket() {
        bounds.push(b.upper_bound());
        t.buckets.push(b.cumulative_count());
    }
    (bounds, t)
}

/// 5xx responses by (route, backend), from `cutover_requests_total`.
fn errors_5xx(metrics: &Metrics) -> HashMap<(Arc<str>, Arc<str>), u64> {
    let mut out: HashMap<(Arc<str>, Arc<str>), u64> = HashMap::new();
    let family = metrics.requests_family();
    for m in family.get_metric() {
        let label = |name: &str| {
            m.get_label()
                .iter()
                .find(|l| l.name() == name)
                .map(|l| l.value())
                .unwrap_or_default()
        };
        if label("code").starts_with('5') {
            let key = (Arc::from(label("route")), Arc::from(label("backend")));
            *out.entry(key).or_default() += m.get_counter().value() as u64;
        }
    }
    out
}

/// The `q` quantile of `total` observations whose cumulative bucket counts
/// are `cumulative` (upper bounds `bounds`): linear interpolation inside
/// the bucket, the highest finite bound above it, like Prometheus'
/// `histogram_quantile`. `None` without observations.
pub fn quantile(bounds: &[f64], cumulative: &[u64], total: u64, q: f64) -> Option<f64> {
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let (mut prev_bound, mut prev_count) = (0.0, 0u64);
    for (&bound, &count) in bounds.iter().zip(cumulative) {
        if count as f64 >= rank {
            let in_bucket = count.saturating_sub(prev_count) as f64;
            let frac = if in_bucket > 0.0 {
                (rank - prev_count as f64) / in_bucket
            } else {
                1.0
            };
            return Some(prev_bound + (bound - prev_bound) * frac);
        }
        prev_bound = bound;
        prev_count = count;
    }
    Some(prev_bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sent as JSON and parsed back (as the tests' client and any client
    /// with a best-effort float parser do), a sample's time is unchanged.
    #[test]
    fn sample_times_survive_a_json_round_trip() {
        let start = UNIX_EPOCH + Duration::from_secs(1_764_668_400);
        for ms in (0..2_000_000).step_by(7) {
            let unix = unix_millis(start + Duration::from_millis(ms));
            let text = serde_json::to_string(&unix).expect("a number");
            let back: f64 = serde_json::from_str(&text).expect("a number");
            assert_eq!(back, unix, "{text}");
        }
    }

    #[test]
    fn quantile_interpolates_inside_the_bucket() {
        let bounds = [0.01, 0.1, 1.0];
        // 10 in (0, 0.01], 10 in (0.01, 0.1]
        assert_eq!(quantile(&bounds, &[10, 20, 20], 20, 0.5), Some(0.01));
        let p = quantile(&bounds, &[10, 20, 20], 20, 0.75).unwrap();
        assert!((p - 0.055).abs() < 1e-12, "{p}");
        assert_eq!(quantile(&bounds, &[0, 0, 0], 0, 0.5), None);
        // Above the highest bucket: its bound.
        assert_eq!(quantile(&bounds, &[0, 0, 0], 5, 0.99), Some(1.0));
    }

    #[test]
    fn point_is_the_delta_and_survives_a_reset() {
        let key: (Arc<str>, Arc<str>) = ("app".into(), "blue".into());
        let bounds = [0.01, 0.1];
        let before = Totals {
            errors_5xx: 1,
            count: 10,
            buckets: vec![5, 10],
        };
        let now = Totals {
            errors_5xx: 3,
            count: 20,
            buckets: vec![15, 20],
        };
        let p = point(&key, 50, &bounds, &before, &now, 5.0);
        assert_eq!((p.requests, p.errors_5xx), (10, 2));
        assert_eq!(p.rps, 2.0);
        assert_eq!(p.error_rate, Some(0.2));
        assert_eq!(p.p50_seconds, Some(0.005));
        // Counters that went backwards count from zero.
        let p = point(&key, 50, &bounds, &now, &before, 5.0);
        assert_eq!((p.requests, p.errors_5xx), (10, 1));
        // An idle interval has no rate and no latency.
        let p = point(&key, 50, &bounds, &now, &now, 5.0);
        assert_eq!((p.requests, p.error_rate, p.p99_seconds), (0, None, None));
    }
}
