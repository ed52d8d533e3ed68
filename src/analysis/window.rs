//! The windows of evidence, kept off the request path: once a second a
//! control-plane task snapshots every (route, backend)'s counters, keeps the
//! snapshots of the last `window`, and judges each route on the difference
//! between the newest and the oldest. A route's window restarts when its
//! backends or weights change (the SRM null and the traffic mix changed).
//! "Since an instant" is the same difference against a snapshot the caller
//! keeps ([`Counts::since`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::evidence::Counts;
use super::latency::Histogram;
use super::srm::{self, Srm};
use super::verdict::{self, Comparison, Kind, Side};
use crate::metrics::Metrics;
use crate::routing::{Route, RoutingTable};

/// One comparison of a route, with the counts behind it.
#[derive(Debug, Clone)]
pub struct Judged {
    pub backend: String,
    pub green: Counts,
    pub blue: Counts,
    pub comparison: Comparison,
}

/// A route's current analysis.
#[derive(Debug, Clone)]
pub struct RouteAnalysis {
    pub name: String,
    pub baseline: String,
    pub window_seconds: f64,
    pub srm: Srm,
    /// `requests` or `new sticky users`: what the SRM test counted.
    pub srm_unit: &'static str,
    pub settings: verdict::Settings,
    pub edges: Vec<f64>,
    pub comparisons: Vec<Judged>,
}

struct History {
    /// (backend, weight) when the window started; a change restarts it.
    key: Vec<(String, u32)>,
    baseline: String,
    snapshots: VecDeque<(Instant, Vec<Counts>)>,
}

/// Every route's window and latest analysis.
#[derive(Default)]
pub struct Windows {
    histories: Mutex<HashMap<String, History>>,
    latest: Mutex<Vec<RouteAnalysis>>,
}

impl Windows {
    /// The analyses of the last tick.
    pub fn latest(&self) -> Vec<RouteAnalysis> {
        self.latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes a snapshot of every analysed route at `now`, judges it and
    /// publishes the verdicts as metrics.
    pub fn tick(&self, table: &RoutingTable, metrics: &Metrics, now: Instant) {
        let mut histories = self.histories.lock().unwrap_or_else(|p| p.into_inner());
        histories.retain(|name, _| table.routes.iter().any(|r| &*r.name == name));
        let mut out = Vec::new();
        for route in table.routes.iter().filter(|r| r.backends.len() >= 2) {
            let key: Vec<(String, u32)> = route
                .backends
                .iter()
                .map(|b| (b.backend.name.to_string(), b.weight))
                .collect();
            let snap: Vec<Counts> = route
                .backends
                .iter()
                .map(|b| {
                    b.metrics
                        .evidence()
                        .map(|e| e.snapshot())
                        .unwrap_or_default()
                })
                .collect();
            let h = histories
                .entry(route.name.to_string())
                .or_insert_with(|| History {
                    key: Vec::new(),
                    baseline: String::new(),
                    snapshots: VecDeque::new(),
                });
            if h.key != key {
                h.key = key;
                h.baseline = baseline(route);
                h.snapshots.clear();
            }
            h.snapshots.push_back((now, snap));
            let window = route.analysis.window;
            while h.snapshots.len() > 1
                && h.snapshots
                    .get(1)
                    .is_some_and(|(t, _)| now.duration_since(*t) >= window)
            {
                h.snapshots.pop_front();
            }
            if let (Some((t0, first)), Some((_, last))) = (h.snapshots.front(), h.snapshots.back())
            {
                let counts: Vec<Counts> = last.iter().zip(first).map(|(l, f)| l.since(f)).collect();
                let a = judge(route, &h.baseline, &counts, now.duration_since(*t0));
                publish(metrics, &a);
                out.push(a);
            }
        }
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = out;
    }
}

/// The configured baseline, else the backend with the largest weight (the
/// first by name among equals).
fn baseline(route: &Route) -> String {
    if let Some(b) = &route.analysis.baseline {
        return b.clone();
    }
    let mut best = 0;
    for (i, b) in route.backends.iter().enumerate() {
        if b.weight > route.backends[best].weight {
            best = i;
        }
    }
    route.backends[best].backend.name.to_string()
}

/// Judges every other backend of `route` against the baseline on `counts`
/// (aligned with `route.backends`).
pub fn judge(route: &Route, baseline: &str, counts: &[Counts], window: Duration) -> RouteAnalysis {
    let settings = route.analysis.settings.clone();
    let alpha = 1.0 - settings.confidence;
    let weights: Vec<u32> = route.backends.iter().map(|b| b.weight).collect();
    // On a sticky route with a cookie the unit is the user (one new cookie
    // each); on a header-hashed sticky route users cannot be counted, so
    // there is no test.
    let (srm, srm_unit) = match &route.sticky {
        None => {
            let n: Vec<u64> = counts.iter().map(|c| c.requests).collect();
            (srm::test(&n, &weights, alpha), "requests")
        }
        Some(s) if s.cookie.is_some() => {
            let n: Vec<u64> = counts.iter().map(|c| c.assigned).collect();
            (srm::test(&n, &weights, alpha), "new sticky users")
        }
        Some(_) => (
            srm::test(&[], &[], alpha),
            "none (header-hashed sticky route)",
        ),
    };
    let edges = route
        .backends
        .first()
        .and_then(|b| b.metrics.evidence())
        .map(|e| e.edges().to_vec())
        .unwrap_or_default();
    let bi = route.backend_index(baseline).unwrap_or(0);
    fn side<'a>(c: &'a Counts, edges: &'a [f64]) -> Side<'a> {
        Side {
            requests: c.requests,
            errors: c.errors,
            latency: Histogram {
                edges,
                counts: &c.buckets,
            },
        }
    }
    let comparisons = route
        .backends
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != bi)
        .map(|(i, b)| Judged {
            backend: b.backend.name.to_string(),
            green: counts[i].clone(),
            blue: counts[bi].clone(),
            comparison: verdict::compare(
                side(&counts[i], &edges),
                side(&counts[bi], &edges),
                &srm,
                &settings,
            ),
        })
        .collect();
    RouteAnalysis {
        name: route.name.to_string(),
        baseline: route.backends[bi].backend.name.to_string(),
        window_seconds: window.as_secs_f64(),
        srm,
        srm_unit,
        settings,
        edges: edges.clone(),
        comparisons,
    }
}

fn publish(metrics: &Metrics, a: &RouteAnalysis) {
    for j in &a.comparisons {
        for k in Kind::ALL {
            metrics
                .analysis_verdict
                .with_label_values(&[&a.name, &j.backend, k.as_str()])
                .set(i64::from(j.comparison.kind == k));
        }
        metrics
            .srm_alarm
            .with_label_values(&[&a.name, &j.backend])
            .set(i64::from(a.srm.alarm));
    }
}

/// Runs [`Windows::tick`] once a second on the current table until the
/// process ends.
pub async fn run(windows: Arc<Windows>, shared: Arc<crate::proxy::Shared>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let table = shared.table.load_full();
        windows.tick(&table, &shared.metrics, Instant::now());
    }
}
