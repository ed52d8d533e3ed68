//! Prometheus metrics. Names and labels are a contract with dashboards and
//! alerts (see README, "Metrics"). Everything lives in an owned [`Registry`];
//! the per-route-and-backend handles the request path needs are resolved once
//! when a routing table is built ([`RouteMetrics`]), so recording a request
//! hashes no label and takes no lock.

use std::sync::{Arc, OnceLock};

use crate::analysis::evidence::{Evidence, Latency};

use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

mod pairs;

pub use pairs::InFlightGuard;
use pairs::{COMMON, Pair, PairCollector, PairMap};

/// Removes the series of a `(route|backend, backend|endpoint)` gauge whose
/// two labels `keep` rejects, leaving every other series untouched.
pub fn retain(gauge: &IntGaugeVec, keep: impl Fn(&str, &str) -> bool) {
    use prometheus::core::Collector;
    // Label pairs come sorted by name; the vec wants them in its own
    // order, which `desc` gives.
    let names: Vec<String> = gauge
        .desc()
        .first()
        .map(|d| d.variable_labels.clone())
        .unwrap_or_default();
    for family in gauge.collect() {
        for m in family.get_metric() {
            let values: Vec<&str> = names
                .iter()
                .filter_map(|name| {
                    m.get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value())
                })
                .collect();
            if let [a, b] = values[..]
                && !keep(a, b)
            {
                let _ = gauge.remove_label_values(&[a, b]);
            }
        }
    }
}

/// Why an upstream exchange failed; also the `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    Connect,
    Timeout,
    Reset,
    Protocol,
}

impl UpstreamErrorKind {
    pub const ALL: [UpstreamErrorKind; 4] =
        [Self::Connect, Self::Timeout, Self::Reset, Self::Protocol];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Reset => "reset",
            Self::Protocol => "protocol",
        }
    }
}

/// Every metric family Cutover exports.
pub struct Metrics {
    pub registry: Registry,
    /// The per-request series of every (route, backend) that has served.
    per_request: PairCollector,
    /// `cutover_backend_weight`, one entry per (route, backend) in force.
    weight: Weights,
    pub connections_open: IntGauge,
    pub reloads: IntCounterVec,
    pub last_reload_success: Gauge,
    pub generation: IntGauge,
    failovers: IntCounterVec,
    pub ejections: IntCounterVec,
    pub endpoint_healthy: IntGaugeVec,
    pub tls_cert_expiry: prometheus::GaugeVec,
    /// `cutover_rollout_step{route}`: the index of the rollout's step.
    pub rollout_step: IntGaugeVec,
    /// `cutover_rollout_state{route,state}`: 1 for the current state.
    pub rollout_state: IntGaugeVec,
    pub rollout_transitions: IntCounterVec,
    /// Rollout notifications by route and result (sent, failed, dropped).
    pub notifications: IntCounterVec,
    pub analysis_verdict: IntGaugeVec,
    pub srm_alarm: IntGaugeVec,
    /// `cutover_access_log_dropped_total`: lines the access log writer
    /// could not take in time.
    pub access_log_dropped: IntCounter,
    /// What [`RouteMetrics`] resolve their children from.
    families: Arc<Families>,
    /// `cutover_shadow_*` and what `/admin/shadow` shows (`crate::shadow`).
    pub shadow: Arc<crate::shadow::ShadowMetrics>,
}

/// Weight by (backend, route).
type WeightMap = std::collections::BTreeMap<(Arc<str>, Arc<str>), u32>;

/// `cutover_backend_weight{route,backend}`, kept as a map of the names the
/// routing table already holds and exported at scrape time: 20,000 gauge
/// children (10,000 routes x 2 backends) cost ~13 MiB, this ~1.5 MiB.
#[derive(Clone)]
struct Weights {
    /// Keyed (backend, route): the order of the exported labels.
    map: Arc<std::sync::Mutex<WeightMap>>,
    desc: prometheus::core::Desc,
}

impl Default for Weights {
    fn default() -> Weights {
        Weights {
            map: Arc::default(),
            desc: prometheus::core::Desc::new(
                "cutover_backend_weight".into(),
                "The weight in force for a backend of a route.".into(),
                vec!["route".into(), "backend".into()],
                Default::default(),
            )
            .expect("valid metric"),
        }
    }
}

impl prometheus::core::Collector for Weights {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        use prometheus::proto;
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let metrics = map
            .iter()
            .map(|((backend, route), w)| {
                let label = |name: &str, value: &str| {
                    let mut l = proto::LabelPair::default();
                    l.set_name(name.to_owned());
                    l.set_value(value.to_owned());
                    l
                };
                let mut g = proto::Gauge::default();
                g.set_value(f64::from(*w));
                let mut m = proto::Metric::from_label(vec![
                    label("backend", backend),
                    label("route", route),
                ]);
                m.set_gauge(g);
                m
            })
            .collect();
        let mut f = proto::MetricFamily::default();
        f.set_name(self.desc.fq_name.clone());
        f.set_help(self.desc.help.clone());
        f.set_field_type(proto::MetricType::GAUGE);
        f.set_metric(metrics);
        vec![f]
    }
}

/// Why a request was sent again; also the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// Nothing reached the backend: connect refused or timed out.
    Connect,
    /// An idempotent request answered 502, 503 or 504 (`retry_on = ["5xx"]`).
    Status5xx,
}

impl Metrics {
    pub fn new(buckets: &[f64]) -> Metrics {
        let registry = Registry::new();
        let weight = Weights::default();
        let connections_open =
            IntGauge::new("cutover_connections_open", "Client connections open.")
                .expect("valid metric");
        let reloads = IntCounterVec::new(
            Opts::new(
                "cutover_config_reloads_total",
                "Config reloads by result: success or failure.",
            ),
            &["result"],
        )
        .expect("valid metric");
        let last_reload_success = Gauge::new(
            "cutover_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config load.",
        )
        .expect("valid metric");
        let generation = IntGauge::new(
            "cutover_config_generation",
            "Increases with every successful config load.",
        )
        .expect("valid metric");
        let failovers = IntCounterVec::new(
            Opts::new(
                "cutover_failovers_total",
                "Requests sent to another backend because theirs had nothing available.",
            ),
            &["route", "from", "to"],
        )
        .expect("valid metric");
        let ejections = IntCounterVec::new(
            Opts::new(
                "cutover_endpoint_ejections_total",
                "Passive ejections after consecutive failures.",
            ),
            &["backend", "endpoint"],
        )
        .expect("valid metric");
        let endpoint_healthy = IntGaugeVec::new(
            Opts::new(
                "cutover_endpoint_healthy",
                "1 when an endpoint takes traffic: health check passing and not ejected.",
            ),
            &["backend", "endpoint"],
        )
        .expect("valid metric");
        let tls_cert_expiry = prometheus::GaugeVec::new(
            Opts::new(
                "cutover_tls_cert_expiry_timestamp_seconds",
                "Unix time at which a served certificate expires.",
            ),
            &["name"],
        )
        .expect("valid metric");
        let rollout_step = IntGaugeVec::new(
            Opts::new(
                "cutover_rollout_step",
                "The step (0-based index into `steps`) of a route's rollout.",
            ),
            &["route"],
        )
        .expect("valid metric");
        let rollout_state = IntGaugeVec::new(
            Opts::new(
                "cutover_rollout_state",
                "1 for the current state of a route's rollout: progressing, paused, promoted, rolled_back.",
            ),
            &["route", "state"],
        )
        .expect("valid metric");
        let rollout_transitions = IntCounterVec::new(
            Opts::new(
                "cutover_rollout_transitions_total",
                "Rollout transitions by the state entered.",
            ),
            &["route", "to"],
        )
        .expect("valid metric");
        let notifications = IntCounterVec::new(
            Opts::new(
                "cutover_notifications_total",
                "Rollout events for a webhook: sent (2xx), failed (after the retries, or a 4xx), dropped (the queue was full).",
            ),
            &["route", "result"],
        )
        .expect("valid metric");
        let analysis_verdict = IntGaugeVec::new(
            Opts::new(
                "cutover_analysis_verdict",
                "1 for the current A/B verdict (pass, fail, inconclusive) of a backend against its route's baseline.",
            ),
            &["route", "backend", "verdict"],
        )
        .expect("valid metric");
        let srm_alarm = IntGaugeVec::new(
            Opts::new(
                "cutover_srm_alarm",
                "1 when a route's requests per backend do not match the weights (sample-ratio mismatch).",
            ),
            &["route", "backend"],
        )
        .expect("valid metric");
        let access_log_dropped = IntCounter::new(
            "cutover_access_log_dropped_total",
            "Access log lines dropped because the writer fell behind (a slow or stalled file).",
        )
        .expect("valid metric");
        let build_info = IntGaugeVec::new(
            Opts::new("cutover_build_info", "Always 1; the version is a label."),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for result in ["success", "failure"] {
            reloads.with_label_values(&[result]);
        }
        let mut collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(weight.clone()),
            Box::new(connections_open.clone()),
            Box::new(reloads.clone()),
            Box::new(last_reload_success.clone()),
            Box::new(generation.clone()),
            Box::new(build_info),
            Box::new(failovers.clone()),
            Box::new(ejections.clone()),
            Box::new(endpoint_healthy.clone()),
            Box::new(tls_cert_expiry.clone()),
            Box::new(rollout_step.clone()),
            Box::new(rollout_state.clone()),
            Box::new(rollout_transitions.clone()),
            Box::new(notifications.clone()),
            Box::new(analysis_verdict.clone()),
            Box::new(srm_alarm.clone()),
            Box::new(access_log_dropped.clone()),
        ];
        let pairs = PairMap::default();
        let per_request = PairCollector::new(pairs.clone(), buckets);
        collectors.push(Box::new(per_request.clone()));
        let evidence = crate::analysis::exported::EvidenceMap::default();
        collectors.push(Box::new(crate::analysis::exported::EvidenceCollector::new(
            evidence.clone(),
        )));
        for c in collectors {
            registry.register(c).expect("metric names are unique");
        }
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process metrics register once");
        let shadow = Arc::new(crate::shadow::ShadowMetrics::new(&registry, buckets));
        let families = Arc::new(Families {
            pairs,
            rare_codes: per_request.rare().clone(),
            evidence,
            edges: buckets.into(),
        });
        Metrics {
            families,
            shadow,
            registry,
            per_request,
            weight,
            connections_open,
            reloads,
            last_reload_success,
            generation,
            failovers,
            ejections,
            endpoint_healthy,
            tls_cert_expiry,
            rollout_step,
            rollout_state,
            rollout_transitions,
            notifications,
            analysis_verdict,
            srm_alarm,
            access_log_dropped,
        }
    }

    /// The handles for one (route, backend); `""` for both when no route
    /// matched. Nothing is allocated per (route, backend) beyond the handle
    /// itself until its first request (see [`RouteMetrics`]), so a table of
    /// 10,000 routes costs little more than its config; a pair that has
    /// served before (its counters exist) is resolved now, so its series
    /// and evidence carry on across the reload. `eager`: resolved now
    /// anyway, for a route judged from Prometheus, whose evidence series
    /// must be there at 0 before its first request, or `increase()` would
    /// miss every request a replica served before its first scrape.
    pub fn route(
        &self,
        route: &Arc<str>,
        backend: &Arc<str>,
        weight: Option<u32>,
        eager: bool,
    ) -> RouteMetrics {
        if let Some(w) = weight {
            self.weight
                .map
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert((backend.clone(), route.clone()), w);
        }
        let handles = RouteMetrics(Arc::new(Handles {
            route: route.clone(),
            backend: backend.clone(),
            families: self.families.clone(),
            resolved: OnceLock::new(),
        }));
        let served = route.is_empty()
            || eager
            || self
                .families
                .pairs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&(route.clone(), backend.clone()));
        if served {
            handles.resolved();
        }
        handles
    }

    /// The `cutover_failovers_total` handles of a route's backends,
    /// resolved on first use.
    pub fn failovers(&self, route: &Arc<str>, backends: &[Arc<str>]) -> Failovers {
        Failovers {
            vec: self.failovers.clone(),
            route: route.clone(),
            backends: backends.into(),
            cells: (0..backends.len() * backends.len())
                .map(|_| OnceLock::new())
                .collect(),
        }
    }

    /// Drops the weight series of routes or backends no longer configured
    /// (call after setting the new ones: nothing in force ever disappears).
    pub fn forget_weights(&self, routes: &[crate::config::RouteSpec]) {
        // A set, not a scan per series: 20,000 series are 20,000 lookups.
        let kept: std::collections::HashSet<(&str, &str)> = routes
            .iter()
            .flat_map(|r| r.weights.iter().map(|(b, _)| (r.name.as_str(), b.as_str())))
            .collect();
        self.weight
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(backend, route), _| kept.contains(&(&**route, &**backend)));
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let families = self.registry.gather();
        prometheus::TextEncoder::new()
            .encode_to_string(&families)
            .unwrap_or_default()
    }

    /// The `cutover_requests_total` family as a scrape shows it, for
    /// `/admin/state` and the dashboard's history.
    pub fn requests_family(&self) -> prometheus::proto::MetricFamily {
        self.per_request.requests()
    }
}

/// The handles of one (route, backend), cheap to clone. Its per-request
/// series (striped counters, see `pairs`) and A/B evidence are created on
/// first use (a request, a retry, an upstream error): until then the pair
/// has no `cutover_requests_total`, `cutover_request_duration_seconds`,
/// `cutover_requests_in_flight`, `cutover_upstream_errors_total`,
/// `cutover_retries_total` or `cutover_analysis_*` series at all (an
/// absent series reads as 0 in PromQL's `sum`/`rate`); its
/// `cutover_backend_weight` is always there.
#[derive(Clone)]
pub struct RouteMetrics(Arc<Handles>);

/// What every [`RouteMetrics`] resolves its counters from.
struct Families {
    /// Every pair that has served; a new table's handles of one find it.
    pairs: PairMap,
    /// `cutover_requests_total` of the codes outside [`COMMON`].
    rare_codes: IntCounterVec,
    evidence: crate::analysis::exported::EvidenceMap,
    edges: Box<[f64]>,
}

struct Handles {
    route: Arc<str>,
    backend: Arc<str>,
    families: Arc<Families>,
    resolved: OnceLock<Box<Resolved>>,
}

/// The counters of one (route, backend) that has served.
struct Resolved {
    pair: Arc<Pair>,
    evidence: Option<Arc<Evidence>>,
}

impl RouteMetrics {
    fn resolved(&self) -> &Resolved {
        self.0.resolved.get_or_init(|| {
            let Handles {
                route,
                backend,
                families: f,
                ..
            } = &*self.0;
            Box::new(Resolved {
                pair: f
                    .pairs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry((route.clone(), backend.clone()))
                    .or_insert_with(|| Arc::new(Pair::new(f.edges.len() + 1)))
                    .clone(),
                evidence: (!route.is_empty()).then(|| {
                    f.evidence
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry((route.to_string(), backend.to_string()))
                        .or_insert_with(|| Arc::new(Evidence::new(&f.edges)))
                        .clone()
                }),
            })
        })
    }
}

impl RouteMetrics {
    /// Records a response head sent to the client.
    pub fn record(&self, code: u16, overridden: bool, seconds: f64) {
        // Placed once for the series and the evidence.
        let latency = Latency::of(&self.0.families.edges, seconds);
        let r = self.head(code, overridden, latency);
        // A/B evidence: what ordinary users got; testers' overrides are not.
        if let (Some(e), false) = (&r.evidence, overridden) {
            e.record_latency(code >= 500, latency);
        }
    }

    /// Records a response head without the A/B evidence, which a gRPC
    /// response gets from its `grpc-status` ([`Self::grpc`]).
    #[inline]
    pub fn record_head(&self, code: u16, overridden: bool, seconds: f64) {
        self.head(
            code,
            overridden,
            Latency::of(&self.0.families.edges, seconds),
        );
    }

    #[inline]
    fn head(&self, code: u16, overridden: bool, latency: Latency) -> &Resolved {
        let (h, r) = (&*self.0, self.resolved());
        // Not a status code: counted as 500, as its label has always been.
        let code = if (100..=999).contains(&code) {
            code
        } else {
            500
        };
        let common = COMMON.iter().position(|c| *c == code);
        if common.is_none() {
            let ov = if overridden { "true" } else { "false" };
            h.families
                .rare_codes
                .with_label_values(&[&h.route, &h.backend, itoa_code(code).as_str(), ov])
                .inc();
        }
        r.pair.response(common.map(|i| (overridden, i)), latency);
        r
    }

    /// Records a gRPC status (0-16) and, as the A/B evidence, whether it
    /// is an error, with the time to the response head.
    pub fn grpc(&self, status: u8, error: bool, overridden: bool, seconds: f64) {
        let r = self.resolved();
        // Not a gRPC status: counted as 2 (UNKNOWN).
        r.pair
            .grpc(if status > 16 { 2 } else { usize::from(status) });
        if let (Some(e), false) = (&r.evidence, overridden) {
            e.record(error, seconds);
        }
    }

    /// Counts a new sticky user placed on this backend (the unit of the
    /// sample-ratio test on sticky routes).
    pub fn assigned(&self) {
        if let Some(e) = &self.resolved().evidence {
            e.assigned();
        }
    }

    /// The A/B evidence, `None` until the pair's first request (or for
    /// `route=""`).
    pub fn evidence(&self) -> Option<&Arc<Evidence>> {
        self.0.resolved.get()?.evidence.as_ref()
    }

    /// The evidence counts now: zeros for a pair that has served nothing.
    pub fn evidence_counts(&self) -> crate::analysis::evidence::Counts {
        match self.evidence() {
            Some(e) => e.snapshot(),
            None => crate::analysis::evidence::Counts {
                buckets: vec![0; self.0.families.edges.len() + 1],
                ..Default::default()
            },
        }
    }

    /// Whether the pair has served (its counters exist).
    pub fn has_served(&self) -> bool {
        self.0.resolved.get().is_some()
    }

    /// The latency bucket edges (`metrics.buckets`), seconds.
    pub fn edges(&self) -> &[f64] {
        &self.0.families.edges
    }

    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.resolved().pair.upstream_error(kind);
    }

    pub fn retry(&self, reason: RetryReason) {
        self.resolved().pair.retry(reason as usize);
    }

    /// Counts a request in `cutover_requests_in_flight` until the guard
    /// drops.
    #[inline]
    pub fn in_flight(&self) -> InFlightGuard {
        self.resolved().pair.in_flight()
    }

    /// The latency histogram as a scrape shows it; empty buckets for a
    /// pair that has served nothing (reading it creates nothing).
    pub fn duration(&self) -> prometheus::proto::Histogram {
        let edges = &self.0.families.edges;
        match self.0.resolved.get() {
            Some(r) => r.pair.histogram(edges),
            None => pairs::histogram(edges, &vec![0; edges.len() + 1], 0),
        }
    }
}

/// `cutover_failovers_total` children of one route, `[from * n + to]`,
/// resolved on first use.
pub struct Failovers {
    vec: IntCounterVec,
    route: Arc<str>,
    backends: Box<[Arc<str>]>,
    cells: Box<[OnceLock<IntCounter>]>,
}

impl Failovers {
    /// Counts a request moved from backend `from` to `to`.
    pub fn inc(&self, from: usize, to: usize) {
        let n = self.backends.len();
        if let (Some(cell), Some(f), Some(t)) = (
            self.cells.get(from * n + to),
            self.backends.get(from),
            self.backends.get(to),
        ) {
            cell.get_or_init(|| self.vec.with_label_values(&[&self.route, f, t]))
                .inc();
        }
    }
}

/// A status code as a label without going through `format!`.
fn itoa_code(code: u16) -> http::StatusCode {
    http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_count_into_the_families() {
        let m = Metrics::new(&[0.1, 1.0]);
        let h = m.route(&"app".into(), &"blue".into(), Some(90), false);
        h.record(200, false, 0.05);
        h.record(200, false, 0.05);
        h.record(418, true, 2.0);
        h.upstream_error(UpstreamErrorKind::Timeout);
        let text = m.render();
        assert!(text.contains(r#"cutover_requests_total{backend="blue",code="200",override="false",route="app"} 2"#), "{text}");
        assert!(text.contains(
            r#"cutover_requests_total{backend="blue",code="418",override="true",route="app"} 1"#
        ));
        assert!(
            text.contains(
                r#"cutover_request_duration_seconds_count{backend="blue",route="app"} 3"#
            )
        );
        assert!(text.contains(
            r#"cutover_upstream_errors_total{backend="blue",kind="timeout",route="app"} 1"#
        ));
        assert!(text.contains(r#"cutover_backend_weight{backend="blue",route="app"} 90"#));
    }

    #[test]
    fn a_pair_that_served_nothing_has_only_its_weight() {
        let m = Metrics::new(&[0.1, 1.0]);
        let idle = m.route(&"idle".into(), &"blue".into(), Some(50), false);
        let text = m.render();
        assert!(text.contains(r#"cutover_backend_weight{backend="blue",route="idle"} 50"#));
        assert!(!text.contains("cutover_requests_total{"), "{text}");
        assert!(
            !text.contains("cutover_request_duration_seconds_count{"),
            "{text}"
        );
        assert!(!text.contains("cutover_analysis_requests_total{"), "{text}");
        for family in [
            "cutover_requests_in_flight{",
            "cutover_upstream_errors_total{",
            "cutover_retries_total{",
            "cutover_grpc_responses_total{",
        ] {
            assert!(!text.contains(family), "{family}\n{text}");
        }
        assert_eq!(idle.duration().get_sample_count(), 0);
        assert_eq!(idle.duration().get_bucket().len(), 2);
        assert!(idle.evidence().is_none());
        assert_eq!(idle.evidence_counts().buckets, vec![0, 0, 0]);
        idle.record(200, false, 0.05);
        let text = m.render();
        assert!(
            text.contains(
                r#"cutover_request_duration_seconds_count{backend="blue",route="idle"} 1"#
            )
        );
        assert!(text.contains(
            r#"cutover_analysis_requests_total{route="idle",backend="blue",class="ok"} 1"#
        ));
        // A new table's handles of a pair that has served are resolved at
        // once, so its series and evidence carry on.
        let again = m.route(&"idle".into(), &"blue".into(), Some(50), false);
        assert_eq!(again.evidence().map(|e| e.snapshot().requests), Some(1));
        assert_eq!(again.duration().get_sample_count(), 1);
    }

    /// Requests from several threads at once: every count exact, the
    /// in-flight gauge the sum of increments and decrements made on other
    /// threads than theirs.
    #[test]
    fn counts_from_many_threads_add_up_exactly() {
        const THREADS: usize = 8;
        const N: u64 = 2_000;
        let m = Metrics::new(&[0.1, 1.0]);
        let h = m.route(&"app".into(), &"blue".into(), Some(90), false);
        let held = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..THREADS {
                s.spawn(|| {
                    for i in 0..N {
                        let guard = h.in_flight();
                        // 0.5 s: the middle bucket; a power of two, so the
                        // sum is exact in nanoseconds and in seconds.
                        h.record(200, false, 0.5);
                        if i % 10 == 0 {
                            h.record(503, true, 2.0);
                            h.record(418, false, 0.0625);
                            h.upstream_error(UpstreamErrorKind::Reset);
                            h.retry(RetryReason::Status5xx);
                            h.grpc(14, true, false, 0.0625);
                            // Ends on another thread than it started.
                            held.lock().unwrap().push(guard);
                        }
                    }
                });
            }
        });
        let (n, tenth) = (THREADS as u64 * N, THREADS as u64 * N / 10);
        let text = m.render();
        let has = |line: String| assert!(text.contains(&line), "{line}\n{text}");
        let rb = r#"backend="blue",route="app""#;
        has(format!(
            r#"cutover_requests_total{{backend="blue",code="200",override="false",route="app"}} {n}"#
        ));
        has(format!(
            r#"cutover_requests_total{{backend="blue",code="503",override="true",route="app"}} {tenth}"#
        ));
        has(format!(
            r#"cutover_requests_total{{backend="blue",code="418",override="false",route="app"}} {tenth}"#
        ));
        has(format!(
            r#"cutover_request_duration_seconds_bucket{{{rb},le="0.1"}} {tenth}"#
        ));
        has(format!(
            r#"cutover_request_duration_seconds_bucket{{{rb},le="1"}} {}"#,
            n + tenth
        ));
        has(format!(
            r#"cutover_request_duration_seconds_bucket{{{rb},le="+Inf"}} {}"#,
            n + 2 * tenth
        ));
        has(format!(
            r#"cutover_request_duration_seconds_count{{{rb}}} {}"#,
            n + 2 * tenth
        ));
        let sum = n as f64 * 0.5 + tenth as f64 * (2.0 + 0.0625);
        has(format!(
            r#"cutover_request_duration_seconds_sum{{{rb}}} {sum}"#
        ));
        has(format!(
            r#"cutover_upstream_errors_total{{backend="blue",kind="reset",route="app"}} {tenth}"#
        ));
        has(format!(
            r#"cutover_retries_total{{backend="blue",reason="5xx",route="app"}} {tenth}"#
        ));
        has(format!(
            r#"cutover_grpc_responses_total{{backend="blue",grpc_status="14",route="app"}} {tenth}"#
        ));
        has(format!(r#"cutover_requests_in_flight{{{rb}}} {tenth}"#));
        drop(held);
        let zero = format!(r#"cutover_requests_in_flight{{{rb}}} 0"#);
        assert!(m.render().contains(&zero), "{zero}");
        assert_eq!(h.duration().get_sample_count(), n + 2 * tenth);
        // The evidence: overrides excluded, gRPC statuses included.
        assert_eq!(h.evidence_counts().requests, n + 2 * tenth);
    }

    /// The six striped families against what the `prometheus` crate's
    /// vectors exported for the same events (the contract: names, help,
    /// types, labels, buckets, which series exist and their values).
    #[test]
    fn exposition_is_the_prometheus_crates() {
        use prometheus::{HistogramOpts, HistogramVec};
        let edges = [0.1, 1.0];
        let m = Metrics::new(&edges);
        let reference = Registry::new();
        let counter = |name: &str, labels: &[&str]| {
            let (_, help, _) = pairs::FAMILIES.iter().find(|f| f.0 == name).unwrap();
            let v = IntCounterVec::new(Opts::new(name, *help), labels).unwrap();
            reference.register(Box::new(v.clone())).unwrap();
            v
        };
        let requests = counter(pairs::REQUESTS, &["route", "backend", "code", "override"]);
        let errors = counter(pairs::ERRORS, &["route", "backend", "kind"]);
        let retries = counter(pairs::RETRIES, &["route", "backend", "reason"]);
        let grpc = counter(pairs::GRPC, &["route", "backend", "grpc_status"]);
        let duration = HistogramVec::new(
            HistogramOpts::new(pairs::DURATION, pairs::FAMILIES[1].1).buckets(edges.to_vec()),
            &["route", "backend"],
        )
        .unwrap();
        let in_flight = IntGaugeVec::new(
            Opts::new(pairs::IN_FLIGHT, pairs::FAMILIES[2].1),
            &["route", "backend"],
        )
        .unwrap();
        reference.register(Box::new(duration.clone())).unwrap();
        reference.register(Box::new(in_flight.clone())).unwrap();
        // What resolving a pair created.
        let resolve = |r: &str, b: &str| {
            duration.with_label_values(&[r, b]);
            in_flight.with_label_values(&[r, b]);
            for k in UpstreamErrorKind::ALL {
                errors.with_label_values(&[r, b, k.as_str()]);
            }
            for reason in ["connect", "5xx"] {
                retries.with_label_values(&[r, b, reason]);
            }
        };
        let pair = |r: &str, b: &str| m.route(&r.into(), &b.into(), Some(1), false);
        let (unmatched, blue, green) = (pair("", ""), pair("app", "blue"), pair("app", "green"));
        let _idle = pair("idle", "blue");
        resolve("", "");
        for (h, b, code, ov, seconds) in [
            (&blue, "blue", 200, false, 0.5),
            (&blue, "blue", 200, false, 0.0625),
            (&blue, "blue", 599, false, 2.0),
            (&green, "green", 502, true, 0.25),
            (&unmatched, "", 404, false, 0.125),
        ] {
            let r = if b.is_empty() { "" } else { "app" };
            h.record(code, ov, seconds);
            resolve(r, b);
            let labels = [r, b, &code.to_string(), if ov { "true" } else { "false" }];
            requests.with_label_values(&labels).inc();
            duration.with_label_values(&[r, b]).observe(seconds);
        }
        blue.upstream_error(UpstreamErrorKind::Connect);
        errors.with_label_values(&["app", "blue", "connect"]).inc();
        green.retry(RetryReason::Connect);
        retries
            .with_label_values(&["app", "green", "connect"])
            .inc();
        green.grpc(4, true, false, 0.5);
        grpc.with_label_values(&["app", "green", "4"]).inc();
        let _busy = blue.in_flight();
        in_flight.with_label_values(&["app", "blue"]).inc();

        let ours = m.render();
        let theirs = prometheus::TextEncoder::new()
            .encode_to_string(&reference.gather())
            .unwrap();
        let striped = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| {
                    let name = l
                        .trim_start_matches("# HELP ")
                        .trim_start_matches("# TYPE ");
                    pairs::FAMILIES.iter().any(|f| name.starts_with(f.0))
                })
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(striped(&ours), striped(&theirs), "{ours}");
        assert!(ours.contains(r#"cutover_requests_total{backend="blue",code="599","#));
    }
}
