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
    /// `local` (this process's evidence) or `prometheus` (every replica's).
    pub source: &'static str,
    /// With `prometheus`: how many replicas export the route's evidence.
    pub replicas: Option<u64>,
}

/// How the sample-ratio test counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrmUnit {
    Requests,
    /// New sticky users (a sticky route with a cookie).
    NewUsers,
    /// No test (a route sticky by a header only).
    None,
}

/// What a route's verdicts are computed on besides the counts: the same
/// whether the counts are local or summed over replicas by Prometheus.
#[derive(Debug, Clone)]
pub struct Subject {
    pub name: String,
    /// (backend, weight), aligned with the counts.
    pub backends: Vec<(String, u32)>,
    pub baseline: String,
    pub unit: SrmUnit,
    pub settings: verdict::Settings,
    pub edges: Vec<f64>,
}

impl Subject {
    /// `route` with `baseline`.
    pub fn of(route: &Route, baseline: &str) -> Subject {
        let unit = match &route.sticky {
            None => SrmUnit::Requests,
            Some(s) if s.cookie.is_some() => SrmUnit::NewUsers,
            Some(_) => SrmUnit::None,
        };
        Subject {
            name: route.name.to_string(),
            backends: route
                .backends
                .iter()
                .map(|b| (b.backend.name.to_string(), b.weight))
                .collect(),
            baseline: baseline.to_owned(),
            unit,
            settings: route.analysis.settings.clone(),
            edges: route
                .backends
                .first()
                .map(|b| b.metrics.edges().to_vec())
                .unwrap_or_default(),
        }
    }
}

struct History {
    /// (backend, weight) when the window started; a change restarts it.
    key: Vec<(String, u32)>,
    baseline: String,
    snapshots: VecDeque<(Instant, Vec<Counts>)>,
    /// The last analysis and what it was judged on: the table's generation
    /// (the route's settings) and the window's counts. Judging is a pure
    /// function of the two, so a route whose window did not move is not
    /// judged again; only its length is new. Judging every served route
    /// each second (the verdicts' text, formatted) took a third of the
    /// analysis' CPU with 10,000 of them (181 → 121 ticks in 10 s).
    judged: Option<(u64, Vec<Counts>, RouteAnalysis)>,
}

#[derive(Default)]
struct Idle {
    at: Option<Instant>,
    /// The table's own names (shared, not copied).
    routes: std::collections::HashSet<Arc<str>>,
}

/// Every route's window and latest analysis.
#[derive(Default)]
pub struct Windows {
    histories: Mutex<HashMap<String, History>>,
    /// The routes none of whose backends had served at the last tick, and
    /// when that was: no window is kept for them (10,000 idle routes would
    /// be 10,000 snapshots), and the first that serves starts its window
    /// there, at zero, so its first requests count.
    idle: Mutex<Idle>,
    latest: Mutex<Vec<RouteAnalysis>>,
    /// The last answer from Prometheus per route with `analysis.source`.
    polled: Mutex<HashMap<String, Polled>>,
    /// The verdict and SRM alarm last published per (route, backend).
    published: Mutex<HashMap<(String, String), (Kind, bool)>>,
}

/// An answer from Prometheus, or why there is none.
#[derive(Clone)]
struct Polled {
    at: Instant,
    result: Result<super::prometheus::Fetched, String>,
}

/// An answer older than this is not used (the poller bounds every query by
/// [`super::prometheus::TIMEOUT`], so this means it stopped answering).
const STALE: Duration = Duration::from_secs(15);

impl Windows {
    /// Keeps Prometheus' latest answer for `route`.
    pub fn set_polled(&self, route: String, result: Result<super::prometheus::Fetched, String>) {
        let p = Polled {
            at: Instant::now(),
            result,
        };
        self.polled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(route, p);
    }

    /// The analysis of a route whose evidence comes from Prometheus: its
    /// last answer, summed over replicas, judged like local counts; no
    /// answer is `inconclusive`, never a move.
    fn judged_by_prometheus(&self, route: &Route, now: Instant) -> RouteAnalysis {
        let polled = self
            .polled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&*route.name)
            .cloned();
        let subject = Subject::of(route, &baseline(route));
        let names: Vec<&str> = subject.backends.iter().map(|b| b.0.as_str()).collect();
        let window = route.analysis.window;
        let none = |why: String| judge_counts(&subject, &[], window).unknown(&why);
        let mut a = match polled {
            None => none("waiting for the first answer from prometheus".into()),
            Some(p) if now.saturating_duration_since(p.at) > STALE => none(format!(
                "prometheus unreachable: no answer for {:.0} s",
                now.saturating_duration_since(p.at).as_secs_f64()
            )),
            Some(p) => match &p.result {
                Err(e) => none(format!("prometheus unreachable: {e}")),
                Ok(f) => match f.aligned(&names, &subject.edges) {
                    Err(e) => none(e),
                    Ok(counts) => {
                        let mut a = judge_counts(&subject, &counts, window);
                        a.replicas = Some(f.replicas);
                        a
                    }
                },
            },
        };
        a.source = "prometheus";
        a
    }

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
        // A set, not a scan per name: 10,000 routes are 10,000 lookups.
        let names: std::collections::HashSet<&str> =
            table.routes.iter().map(|r| &*r.name).collect();
        histories.retain(|name, _| names.contains(name.as_str()));
        let mut out = Vec::new();
        self.polled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|name, _| names.contains(name.as_str()));
        let was_idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|p| p.into_inner()));
        let mut idle_now = std::collections::HashSet::new();
        for route in table.routes.iter().filter(|r| r.backends.len() >= 2) {
            if route.analysis.source.is_some() {
                out.push(self.judged_by_prometheus(route, now));
                continue;
            }
            let same_key = |h: &History| {
                h.key.len() == route.backends.len()
                    && h.key
                        .iter()
                        .zip(route.backends.iter())
                        .all(|((n, w), b)| **n == *b.backend.name && *w == b.weight)
            };
            // A route none of whose backends has served yet has no
            // evidence: it keeps no window and is neither judged nor
            // published (no `/admin/analysis` entry, no verdict series)
            // until its first request.
            let idle = route
                .backends
                .iter()
                .all(|b| b.metrics.evidence().is_none());
            if idle {
                histories.remove(&*route.name);
                idle_now.insert(route.name.clone());
                continue;
            }
            let snap = snapshot(route);
            let fresh = !histories.contains_key(&*route.name);
            if fresh {
                histories.insert(
                    route.name.to_string(),
                    History {
                        key: Vec::new(),
                        baseline: String::new(),
                        snapshots: VecDeque::new(),
                        judged: None,
                    },
                );
            }
            let Some(h) = histories.get_mut(&*route.name) else {
                continue;
            };
            if !same_key(h) {
                h.key = route
                    .backends
                    .iter()
                    .map(|b| (b.backend.name.to_string(), b.weight))
                    .collect();
                h.baseline = baseline(route);
                h.snapshots.clear();
                h.judged = None;
                if let (true, Some(at)) = (fresh, was_idle.at)
                    && was_idle.routes.contains(&*route.name)
                {
                    let zero = snap
                        .iter()
                        .map(|c| Counts {
                            buckets: vec![0; c.buckets.len()],
                            ..Default::default()
                        })
                        .collect();
                    h.snapshots.push_back((at, zero));
                }
            }
            let window = route.analysis.window;
            slide(&mut h.snapshots, &snap, now, window);
            let Some((t0, first)) = h.snapshots.front() else {
                continue;
            };
            let counts: Vec<Counts> = snap.iter().zip(first).map(|(l, f)| l.since(f)).collect();
            let elapsed = now.duration_since(*t0);
            let a = match &h.judged {
                Some((generation, c, a)) if *generation == table.generation && *c == counts => {
                    RouteAnalysis {
                        window_seconds: elapsed.as_secs_f64(),
                        ..a.clone()
                    }
                }
                _ => {
                    let a = judge(route, &h.baseline, &counts, elapsed);
                    h.judged = Some((table.generation, counts, a.clone()));
                    a
                }
            };
            out.push(a);
        }
        *self.idle.lock().unwrap_or_else(|p| p.into_inner()) = Idle {
            at: Some(now),
            routes: idle_now,
        };
        self.publish(metrics, &out);
        // Shadow copies: their own comparison, in `/admin/analysis` only.
        out.extend(
            table
                .routes
                .iter()
                .filter_map(|r| crate::shadow::evidence::tick(r, now)),
        );
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = out;
    }
}

/// Snapshots a window keeps at most (plus one): one per `window / SNAPSHOTS`,
/// at least a second apart. Before, every tick's was kept: a route that had
/// served kept 300 of them for the default 5 minutes (about 150 KB), and
/// 1,000 such routes grew the process by 0.5 MB a second.
const SNAPSHOTS: u32 = 60;

/// Moves a window of `snapshots` to `now`, whose counts are `snap`: keeps
/// `snap` if the newest kept is a step old, then drops those that left the
/// window. The front is then the counts at the window's start, to within a
/// step, and its time where that start really is: `now - front` is the
/// length judged.
fn slide(
    snapshots: &mut VecDeque<(Instant, Vec<Counts>)>,
    snap: &[Counts],
    now: Instant,
    window: Duration,
) {
    let step = (window / SNAPSHOTS).max(Duration::from_secs(1));
    if snapshots
        .back()
        .is_none_or(|(t, _)| now.saturating_duration_since(*t) >= step)
    {
        snapshots.push_back((now, snap.to_vec()));
    }
    while snapshots
        .get(1)
        .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= window)
    {
        snapshots.pop_front();
    }
    // Counters only grow: when the front equals `snap`, nothing happened
    // since the front, and one snapshot says it all, at the latest time
    // that is still inside the window (a quiet route keeps one, not 60).
    if snapshots.len() > 1 && snapshots.front().is_some_and(|(_, c)| c == snap) {
        let t0 = snapshots.front().map_or(now, |(t, _)| *t);
        let start = now.checked_sub(window).map_or(t0, |s| s.max(t0));
        snapshots.clear();
        snapshots.push_back((start, snap.to_vec()));
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
    judge_counts(&Subject::of(route, baseline), counts, window)
}

/// Judges every other backend of `s` against its baseline on `counts`
/// (aligned with `s.backends`): the one verdict function, whatever the
/// counts' source.
pub fn judge_counts(s: &Subject, counts: &[Counts], window: Duration) -> RouteAnalysis {
    let settings = s.settings.clone();
    let alpha = 1.0 - settings.srm_confidence;
    let weights: Vec<u32> = s.backends.iter().map(|b| b.1).collect();
    // On a sticky route with a cookie the unit is the user (one new cookie
    // each); on a header-hashed sticky route users cannot be counted, so
    // there is no test.
    let (srm, srm_unit) = match s.unit {
        SrmUnit::Requests => {
            let n: Vec<u64> = counts.iter().map(|c| c.requests).collect();
            (srm::test(&n, &weights, alpha), "requests")
        }
        SrmUnit::NewUsers => {
            let n: Vec<u64> = counts.iter().map(|c| c.assigned).collect();
            (srm::test(&n, &weights, alpha), "new sticky users")
        }
        SrmUnit::None => (
            srm::test(&[], &[], alpha),
            "none (header-hashed sticky route)",
        ),
    };
    let edges = &s.edges;
    let bi = s
        .backends
        .iter()
        .position(|b| b.0 == s.baseline)
        .unwrap_or(0);
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
    let empty = Counts {
        buckets: vec![0; edges.len() + 1],
        ..Counts::default()
    };
    let at = |i: usize| counts.get(i).unwrap_or(&empty);
    let comparisons = s
        .backends
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != bi)
        .map(|(i, b)| Judged {
            backend: b.0.clone(),
            green: at(i).clone(),
            blue: at(bi).clone(),
            comparison: verdict::compare(side(at(i), edges), side(at(bi), edges), &srm, &settings),
        })
        .collect();
    RouteAnalysis {
        name: s.name.clone(),
        baseline: s.backends.get(bi).map(|b| b.0.clone()).unwrap_or_default(),
        window_seconds: window.as_secs_f64(),
        srm,
        srm_unit,
        settings,
        edges: edges.clone(),
        comparisons,
        source: "local",
        replicas: None,
    }
}

impl RouteAnalysis {
    /// Every verdict made `inconclusive`, with `why` first among the
    /// reasons: evidence that could not be read is never `pass` nor `fail`.
    pub fn unknown(mut self, why: &str) -> RouteAnalysis {
        for j in &mut self.comparisons {
            j.comparison.kind = Kind::Inconclusive;
            j.comparison.reasons.insert(0, why.to_owned());
        }
        self
    }
}

/// The evidence of every backend of `route` now, aligned with
/// `route.backends`: keep it, and [`judge_since`] judges what happened
/// after (a rollout step's window).
pub fn snapshot(route: &Route) -> Vec<Counts> {
    route
        .backends
        .iter()
        .map(|b| b.metrics.evidence_counts())
        .collect()
}

/// The verdicts of `route` on the evidence since `start` (from
/// [`snapshot`] on a route with the same backends), `elapsed` ago.
pub fn judge_since(route: &Route, start: &[Counts], elapsed: Duration) -> RouteAnalysis {
    let now = snapshot(route);
    let counts: Vec<Counts> = now
        .iter()
        .enumerate()
        .map(|(i, c)| c.since(start.get(i).unwrap_or(&Counts::default())))
        .collect();
    judge(route, &baseline(route), &counts, elapsed)
}

impl Windows {
    /// Sets the verdict and SRM series of `analyses`: only those that
    /// changed, and removes those of routes or backends no longer compared.
    /// (Resetting both families and making every series anew each second
    /// was a quarter of the analysis' CPU with 10,000 routes: 121 → 76
    /// ticks in 10 s.)
    fn publish(&self, metrics: &Metrics, analyses: &[RouteAnalysis]) {
        let mut published = self.published.lock().unwrap_or_else(|p| p.into_inner());
        let mut now = HashMap::with_capacity(published.len());
        for a in analyses {
            for j in &a.comparisons {
                let key = (a.name.clone(), j.backend.clone());
                let value = (j.comparison.kind, a.srm.alarm);
                if published.remove(&key) != Some(value) {
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
                now.insert(key, value);
            }
        }
        for (route, backend) in published.keys() {
            for k in Kind::ALL {
                let _ = metrics
                    .analysis_verdict
                    .remove_label_values(&[route, backend, k.as_str()]);
            }
            let _ = metrics.srm_alarm.remove_label_values(&[route, backend]);
        }
        *published = now;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Loaded;
    use crate::upstream::EndpointRegistry;

    fn table(metrics: &Metrics, weights: &str) -> RoutingTable {
        table_of(metrics, weights, "", 1)
    }

    /// A table of generation `generation` whose route's analysis has `extra`.
    fn table_of(metrics: &Metrics, weights: &str, extra: &str, generation: u64) -> RoutingTable {
        let text = format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\n[backends.blue]\nendpoints = [\"127.0.0.1:9001\"]\n\
             [backends.green]\nendpoints = [\"127.0.0.1:9002\"]\n\
             [[routes]]\nname = \"app\"\nweights = {{ {weights} }}\n\
             [routes.analysis]\nwindow = \"60s\"\n{extra}"
        );
        let path = std::path::Path::new("t.toml");
        let loaded = Loaded {
            config: crate::config::parse(path, &text).expect("valid"),
            path: path.into(),
            sha256: String::new(),
            fingerprint: String::new(),
        };
        let ejections = prometheus::IntCounterVec::new(
            prometheus::Opts::new("e", "e"),
            &["backend", "endpoint"],
        )
        .expect("valid");
        RoutingTable::build(
            &loaded,
            generation,
            &EndpointRegistry::new(ejections, 1),
            metrics,
        )
    }

    fn send(t: &RoutingTable, backend: usize, n: u64, code: u16) {
        for _ in 0..n {
            t.routes[0].backends[backend]
                .metrics
                .record(code, false, 0.002);
        }
    }

    /// The sample-ratio alarm uses `srm_confidence`, not `confidence`:
    /// counts whose e-value lies between 1/0.05 and 1/0.001 alarm only
    /// when `srm_confidence` is lowered to 0.95.
    #[test]
    fn the_srm_alarm_uses_srm_confidence() {
        let n = [1_000, 1_180];
        let e = srm::test(&n, &[50, 50], 0.05).e_value;
        assert!(
            (20.0..1000.0).contains(&e),
            "e-value {e} between the levels"
        );
        let judged = |srm_confidence: f64| {
            let subject = Subject {
                name: "app".into(),
                backends: vec![("blue".into(), 50), ("green".into(), 50)],
                baseline: "blue".into(),
                unit: SrmUnit::Requests,
                settings: verdict::Settings {
                    srm_confidence,
                    ..verdict::Settings::default()
                },
                edges: vec![0.1],
            };
            let counts: Vec<Counts> = n
                .iter()
                .map(|&requests| Counts {
                    requests,
                    buckets: vec![requests, 0],
                    ..Counts::default()
                })
                .collect();
            judge_counts(&subject, &counts, Duration::from_secs(60))
                .srm
                .alarm
        };
        assert!(!judged(verdict::Settings::default().srm_confidence));
        assert!(judged(0.95));
    }

    /// Counts of one backend with `n` requests so far.
    fn counts(n: u64) -> Vec<Counts> {
        vec![Counts {
            requests: n,
            buckets: vec![n, 0],
            ..Default::default()
        }]
    }

    #[test]
    fn a_window_keeps_at_most_snapshots_plus_one_and_judges_its_length() {
        // Ticks every second for 20 minutes of steady traffic (one request
        // a second), 5 minute window: at most 61 kept (not 300), the front
        // between one window and one step old, and the counts since the
        // front match that age to the second.
        let (window, step) = (Duration::from_secs(300), Duration::from_secs(5));
        let t0 = Instant::now();
        let mut w = VecDeque::new();
        for s in 0..1200u64 {
            let now = t0 + Duration::from_secs(s);
            slide(&mut w, &counts(s), now, window);
            assert!(w.len() <= SNAPSHOTS as usize + 1, "{s}: {}", w.len());
            let (t, first) = w.front().unwrap();
            let age = now.duration_since(*t);
            if s >= 300 {
                assert!(age >= window && age < window + step, "{s}: {age:?}");
            }
            assert_eq!(s - first[0].requests, age.as_secs(), "{s}");
        }
    }

    #[test]
    fn a_quiet_window_keeps_one_snapshot_at_its_start() {
        // Traffic for 10 s, then none: once the traffic has left the 60 s
        // window, one snapshot is kept, dated one window ago.
        let window = Duration::from_secs(60);
        let t0 = Instant::now();
        let mut w = VecDeque::new();
        for s in 0..200u64 {
            let now = t0 + Duration::from_secs(s);
            slide(&mut w, &counts(s.min(10)), now, window);
            let (t, first) = w.front().unwrap();
            if s >= 71 {
                assert_eq!(w.len(), 1, "{s}");
                assert_eq!(now.duration_since(*t), window, "{s}");
                assert_eq!(first[0].requests, 10);
            }
        }
    }

    #[test]
    fn an_unmoved_window_keeps_its_verdict_until_the_table_changes() {
        // The same counts on the same table: the last analysis again, with
        // its new length. A reload that keeps the weights but changes the
        // settings (a new generation) is judged anew.
        let metrics = Metrics::new(&[0.001, 0.01, 0.1]);
        let w = Windows::default();
        let t = table(&metrics, "blue = 50, green = 50");
        let t0 = Instant::now();
        w.tick(&t, &metrics, t0);
        send(&t, 0, 100, 200);
        send(&t, 1, 100, 200);
        w.tick(&t, &metrics, t0 + Duration::from_secs(1));
        let a1 = w.latest()[0].clone();
        w.tick(&t, &metrics, t0 + Duration::from_secs(2));
        let a2 = w.latest()[0].clone();
        assert_eq!((a1.window_seconds, a2.window_seconds), (1.0, 2.0));
        assert_eq!(
            format!("{:?}", a1.comparisons),
            format!("{:?}", a2.comparisons)
        );
        assert_eq!(a2.settings.min_requests, 200);
        let t2 = table_of(&metrics, "blue = 50, green = 50", "min_requests = 50\n", 2);
        w.tick(&t2, &metrics, t0 + Duration::from_secs(3));
        let a3 = w.latest()[0].clone();
        assert_eq!((a3.settings.min_requests, a3.window_seconds), (50, 3.0));
        assert_eq!(a3.comparisons[0].green.requests, 100);
    }

    #[test]
    fn windows_slide_and_restart_on_new_weights() {
        let metrics = Metrics::new(&[0.001, 0.01, 0.1]);
        let w = Windows::default();
        let t = table(&metrics, "blue = 50, green = 50");
        let t0 = Instant::now();
        w.tick(&t, &metrics, t0);
        send(&t, 0, 300, 200);
        send(&t, 1, 300, 503);
        // Overrides are not evidence.
        t.routes[0].backends[1].metrics.record(200, true, 0.002);
        w.tick(&t, &metrics, t0 + Duration::from_secs(30));
        let a = &w.latest()[0];
        assert_eq!(a.baseline, "blue");
        assert_eq!(a.window_seconds, 30.0);
        let j = &a.comparisons[0];
        assert_eq!(
            (j.backend.as_str(), j.green.requests, j.green.errors),
            ("green", 300, 300)
        );
        assert_eq!(j.comparison.kind, Kind::Fail);
        let start = snapshot(&t.routes[0]);
        // 70 s later the first 300 requests have left the 60 s window.
        send(&t, 0, 250, 200);
        send(&t, 1, 250, 200);
        w.tick(&t, &metrics, t0 + Duration::from_secs(70));
        w.tick(&t, &metrics, t0 + Duration::from_secs(100));
        let j = &w.latest()[0].comparisons[0];
        assert_eq!((j.green.requests, j.green.errors), (250, 0), "{j:?}");
        // Since an instant: the same 250.
        let since = judge_since(&t.routes[0], &start, Duration::from_secs(70));
        assert_eq!(since.comparisons[0].green.requests, 250);
        // New weights: the window starts again, and the baseline follows.
        let t2 = table(&metrics, "blue = 10, green = 90");
        w.tick(&t2, &metrics, t0 + Duration::from_secs(101));
        let a = &w.latest()[0];
        assert_eq!((a.baseline.as_str(), a.window_seconds), ("green", 0.0));
        assert_eq!(a.comparisons[0].green.requests, 0);
        let m = metrics.render();
        assert!(
            m.contains(
                r#"cutover_analysis_verdict{backend="blue",route="app",verdict="inconclusive"} 1"#
            ),
            "{m}"
        );
        // Green is the baseline now: its series as the compared one are gone.
        assert!(
            !m.contains(r#"cutover_analysis_verdict{backend="green""#)
                && !m.contains(r#"cutover_srm_alarm{backend="green""#),
            "{m}"
        );
    }
}
