//! Prometheus metrics. Names and labels are a contract with dashboards and
//! alerts (see README, "Metrics"). Everything lives in an owned [`Registry`];
//! the per-route-and-backend handles the request path needs are resolved once
//! when a routing table is built ([`RouteMetrics`]), so recording a request
//! hashes no label and takes no lock.

use std::sync::{Arc, OnceLock};

use crate::analysis::evidence::Evidence;

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

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
    requests: IntCounterVec,
    duration: HistogramVec,
    upstream_errors: IntCounterVec,
    weight: IntGaugeVec,
    in_flight: IntGaugeVec,
    pub connections_open: IntGauge,
    pub reloads: IntCounterVec,
    pub last_reload_success: Gauge,
    pub generation: IntGauge,
    retries: IntCounterVec,
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
    /// A/B evidence per (route, backend), kept across reloads like the
    /// Prometheus series (see `analysis`).
    evidence: crate::analysis::exported::EvidenceMap,
    edges: Vec<f64>,
    pub analysis_verdict: IntGaugeVec,
    pub srm_alarm: IntGaugeVec,
    /// `cutover_access_log_dropped_total`: lines the access log writer
    /// could not take in time.
    pub access_log_dropped: IntCounter,
    /// `cutover_grpc_responses_total{route,backend,grpc_status}`.
    grpc_responses: IntCounterVec,
    /// `cutover_shadow_*` and what `/admin/shadow` shows (`crate::shadow`).
    pub shadow: Arc<crate::shadow::ShadowMetrics>,
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
        let requests = IntCounterVec::new(
            Opts::new("cutover_requests_total", "Requests answered, by route, backend and status code sent to the client; override=\"true\" for tester overrides."),
            &["route", "backend", "code", "override"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "cutover_request_duration_seconds",
                "Time from request head received to response head sent.",
            )
            .buckets(buckets.to_vec()),
            &["route", "backend"],
        )
        .expect("valid metric");
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "cutover_upstream_errors_total",
                "Failed upstream exchanges by kind: connect, timeout, reset, protocol.",
            ),
            &["route", "backend", "kind"],
        )
        .expect("valid metric");
        let grpc_responses = IntCounterVec::new(
            Opts::new(
                "cutover_grpc_responses_total",
                "gRPC responses by route, backend and grpc-status (0-16), from the headers of a trailers-only response, else from the trailers.",
            ),
            &["route", "backend", "grpc_status"],
        )
        .expect("valid metric");
        let weight = IntGaugeVec::new(
            Opts::new(
                "cutover_backend_weight",
                "The weight in force for a backend of a route.",
            ),
            &["route", "backend"],
        )
        .expect("valid metric");
        let in_flight = IntGaugeVec::new(
            Opts::new(
                "cutover_requests_in_flight",
                "Requests waiting for or streaming a response.",
            ),
            &["route", "backend"],
        )
        .expect("valid metric");
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
        let retries = IntCounterVec::new(
            Opts::new(
                "cutover_retries_total",
                "Requests sent again, by reason: connect or 5xx.",
            ),
            &["route", "backend", "reason"],
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
            Box::new(requests.clone()),
            Box::new(duration.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(grpc_responses.clone()),
            Box::new(weight.clone()),
            Box::new(in_flight.clone()),
            Box::new(connections_open.clone()),
            Box::new(reloads.clone()),
            Box::new(last_reload_success.clone()),
            Box::new(generation.clone()),
            Box::new(build_info),
            Box::new(retries.clone()),
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
        Metrics {
            shadow,
            registry,
            requests,
            duration,
            upstream_errors,
            weight,
            in_flight,
            connections_open,
            reloads,
            last_reload_success,
            generation,
            retries,
            failovers,
            ejections,
            endpoint_healthy,
            tls_cert_expiry,
            rollout_step,
            rollout_state,
            rollout_transitions,
            notifications,
            evidence,
            edges: buckets.to_vec(),
            analysis_verdict,
            srm_alarm,
            access_log_dropped,
            grpc_responses,
        }
    }

    /// The A/B evidence of (route, backend), created on first use.
    pub fn evidence(&self, route: &str, backend: &str) -> Arc<Evidence> {
        self.evidence
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((route.into(), backend.into()))
            .or_insert_with(|| Arc::new(Evidence::new(&self.edges)))
            .clone()
    }

    /// The counter of requests of `route` failed over from one backend to
    /// another.
    pub fn failover(&self, route: &str, from: &str, to: &str) -> IntCounter {
        self.failovers.with_label_values(&[route, from, to])
    }

    /// Resolves the handles for one (route, backend); `""` for both when no
    /// route matched.
    pub fn route(&self, route: &str, backend: &str, weight: Option<u32>) -> RouteMetrics {
        if let Some(w) = weight {
            self.weight
                .with_label_values(&[route, backend])
                .set(i64::from(w));
        }
        let labels = [route, backend];
        RouteMetrics(Arc::new(Handles {
            duration: self.duration.with_label_values(&labels),
            in_flight: self.in_flight.with_label_values(&labels),
            errors: UpstreamErrorKind::ALL.map(|k| {
                self.upstream_errors
                    .with_label_values(&[route, backend, k.as_str()])
            }),
            retries: ["connect", "5xx"]
                .map(|r| self.retries.with_label_values(&[route, backend, r])),
            evidence: (!route.is_empty()).then(|| self.evidence(route, backend)),
            grpc: GrpcCodes {
                vec: self.grpc_responses.clone(),
                route: route.into(),
                backend: backend.into(),
                resolved: Default::default(),
            },
            codes: Codes {
                vec: self.requests.clone(),
                route: route.into(),
                backend: backend.into(),
                common: Default::default(),
            },
        }))
    }

    /// Drops the weight series of routes or backends no longer configured
    /// (call after setting the new ones: nothing in force ever disappears).
    pub fn forget_weights(&self, routes: &[crate::config::RouteSpec]) {
        retain(&self.weight, |route, backend| {
            routes
                .iter()
                .any(|r| r.name == route && r.weights.iter().any(|(b, _)| b == backend))
        });
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let families = self.registry.gather();
        prometheus::TextEncoder::new()
            .encode_to_string(&families)
            .unwrap_or_default()
    }

    /// The requests counter family, for `/admin/state`.
    pub fn requests_family(&self) -> &IntCounterVec {
        &self.requests
    }
}

/// The handles of one (route, backend), cheap to clone.
#[derive(Clone)]
pub struct RouteMetrics(Arc<Handles>);

struct Handles {
    duration: Histogram,
    in_flight: IntGauge,
    errors: [IntCounter; 4],
    retries: [IntCounter; 2],
    evidence: Option<Arc<Evidence>>,
    codes: Codes,
    grpc: GrpcCodes,
}

impl RouteMetrics {
    /// Records a response head sent to the client.
    pub fn record(&self, code: u16, overridden: bool, seconds: f64) {
        self.record_head(code, overridden, seconds);
        // A/B evidence: what ordinary users got; testers' overrides are not.
        if let (Some(e), false) = (&self.0.evidence, overridden) {
            e.record(code >= 500, seconds);
        }
    }

    /// Records a response head without the A/B evidence, which a gRPC
    /// response gets from its `grpc-status` ([`Self::grpc`]).
    pub fn record_head(&self, code: u16, overridden: bool, seconds: f64) {
        self.0.codes.inc(code, overridden);
        self.0.duration.observe(seconds);
    }

    /// Records a gRPC status (0-16) and, as the A/B evidence, whether it
    /// is an error, with the time to the response head.
    pub fn grpc(&self, status: u8, error: bool, overridden: bool, seconds: f64) {
        self.0.grpc.inc(status);
        if let (Some(e), false) = (&self.0.evidence, overridden) {
            e.record(error, seconds);
        }
    }

    /// Counts a new sticky user placed on this backend (the unit of the
    /// sample-ratio test on sticky routes).
    pub fn assigned(&self) {
        if let Some(e) = &self.0.evidence {
            e.assigned();
        }
    }

    pub fn evidence(&self) -> Option<&Arc<Evidence>> {
        self.0.evidence.as_ref()
    }

    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.0.errors[kind as usize].inc();
    }

    pub fn retry(&self, reason: RetryReason) {
        self.0.retries[reason as usize].inc();
    }

    pub fn in_flight(&self) -> &IntGauge {
        &self.0.in_flight
    }

    pub fn duration(&self) -> &Histogram {
        &self.0.duration
    }
}

/// Status codes seen often enough to keep a resolved handle for.
const COMMON: [u16; 18] = [
    200, 201, 204, 206, 301, 302, 304, 400, 401, 403, 404, 429, 431, 499, 500, 502, 503, 504,
];

/// `cutover_requests_total` children of one (route, backend): common codes
/// are resolved on first use and kept; rare ones go through the vector.
struct Codes {
    vec: IntCounterVec,
    route: Box<str>,
    backend: Box<str>,
    common: [[OnceLock<IntCounter>; COMMON.len()]; 2],
}

impl Codes {
    fn inc(&self, code: u16, overridden: bool) {
        let ov = if overridden { "true" } else { "false" };
        let resolve = || {
            let code = itoa_code(code);
            self.vec
                .with_label_values(&[&self.route, &self.backend, code.as_str(), ov])
        };
        match COMMON.iter().position(|c| *c == code) {
            Some(i) => self.common[usize::from(overridden)][i]
                .get_or_init(resolve)
                .inc(),
            None => resolve().inc(),
        }
    }
}

/// `cutover_grpc_responses_total` children of one (route, backend),
/// resolved on first use.
struct GrpcCodes {
    vec: IntCounterVec,
    route: Box<str>,
    backend: Box<str>,
    resolved: [OnceLock<IntCounter>; 17],
}

impl GrpcCodes {
    const LABELS: [&'static str; 17] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    ];

    fn inc(&self, status: u8) {
        let i = if status > 16 { 2 } else { usize::from(status) };
        self.resolved[i]
            .get_or_init(|| {
                self.vec
                    .with_label_values(&[&self.route, &self.backend, Self::LABELS[i]])
            })
            .inc();
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
        let h = m.route("app", "blue", Some(90));
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
}
