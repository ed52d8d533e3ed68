//! The configuration file exactly as written: serde structs, no validation.
//!
//! Every leaf that validation may reject is `Spanned`, so an error can point at
//! `file:line:col`. `validate.rs` turns this into the runtime [`super::Config`].

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

pub type Str = Spanned<String>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: RawListen,
    #[serde(default)]
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub metrics: RawMetrics,
    pub tls: Option<Spanned<RawTls>>,
    pub backends: Spanned<BTreeMap<String, Spanned<RawBackend>>>,
    #[serde(default)]
    pub routes: Vec<Spanned<RawRoute>>,
    /// Settings shared by every route's `[routes.rollout]`.
    #[serde(default)]
    pub rollout: RawRolloutGlobal,
    /// `[access_log]`: one line per request; off without it.
    pub access_log: Option<Spanned<RawAccessLog>>,
    /// `[grpc]`: how gRPC answers are judged.
    #[serde(default)]
    pub grpc: RawGrpc,
}

/// `[grpc]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGrpc {
    /// Statuses that count as errors, by name or number.
    pub error_codes: Option<Spanned<Vec<Spanned<toml::Value>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    pub path: Str,
    pub format: Option<Str>,
    pub sample: Option<Spanned<f64>>,
    #[serde(default)]
    pub log_query: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRolloutGlobal {
    pub state_dir: Option<Str>,
    /// Where every route's rollout events go, unless its own says otherwise.
    pub notify: Option<Spanned<RawNotify>>,
}

/// `notify = { webhook = "http://..." }`: rollout events are POSTed there.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotify {
    pub webhook: Str,
}

/// `[routes.rollout]`: a progressive rollout of one backend of the route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRollout {
    pub id: Str,
    pub canary: Str,
    pub steps: Spanned<Vec<Spanned<RawStep>>>,
    pub hold: Option<Str>,
    pub min_requests: Option<Spanned<i64>>,
    pub on_failure: Option<Str>,
    pub notify: Option<Spanned<RawNotify>>,
    /// RFC 3339: when the first step starts, the same for every replica.
    pub start: Option<Str>,
}

/// A rollout step: the canary's weight, or `"shadow"` (weight 0 with the
/// route's `shadow` mirroring to the canary, judged on the copies).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawStep {
    Weight(i64),
    Name(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    pub http: Option<Str>,
    pub https: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub certs: Spanned<Vec<Spanned<RawCert>>>,
    pub handshake_timeout: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCert {
    pub cert: Str,
    pub key: Str,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Str,
    /// Turns on the mutating admin endpoints, which then require it.
    pub token: Option<Str>,
    pub token_file: Option<Str>,
    pub token_env: Option<Str>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub header_read: Option<Str>,
    pub connect: Option<Str>,
    pub request: Option<Str>,
    pub idle: Option<Str>,
    pub drain: Option<Str>,
    pub body_idle: Option<Str>,
    pub tunnel_idle: Option<Str>,
    pub graceful_close: Option<Str>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_header_bytes: Option<Spanned<i64>>,
    pub max_headers: Option<Spanned<i64>>,
    pub max_connections: Option<Spanned<i64>>,
    pub max_concurrent_streams: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub workers: Option<Spanned<i64>>,
    pub drain_delay: Option<Str>,
    pub upgrade_socket: Option<Str>,
    pub upgrade_timeout: Option<Str>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub buckets: Option<Spanned<Vec<f64>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub endpoints: Spanned<Vec<Str>>,
    pub balance: Option<Str>,
    pub health: Option<Spanned<RawHealth>>,
    pub outlier: Option<Spanned<RawOutlier>>,
    pub retries: Option<Spanned<i64>>,
    pub retry_on: Option<Spanned<Vec<Str>>>,
    pub retry_buffer_bytes: Option<Spanned<i64>>,
    /// Upstream connections per endpoint and worker.
    pub max_connections: Option<Spanned<i64>>,
    /// `http1` (default), `h2c`, `h2` or `auto`.
    pub protocol: Option<Str>,
    pub ca: Option<Str>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// Required unless `grpc = true`.
    pub path: Option<Str>,
    /// Check with the gRPC health protocol (`grpc.health.v1.Health/Check`).
    #[serde(default)]
    pub grpc: bool,
    /// The service the gRPC check asks about; "" (the default): the server.
    pub service: Option<Str>,
    pub interval: Option<Str>,
    pub timeout: Option<Str>,
    pub healthy_threshold: Option<Spanned<i64>>,
    pub unhealthy_threshold: Option<Spanned<i64>>,
    /// Status codes that count as healthy; default: any 2xx.
    pub expected_status: Option<Spanned<Vec<Spanned<i64>>>>,
    #[serde(default)]
    pub start_unhealthy: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    pub consecutive_failures: Option<Spanned<i64>>,
    pub base_ejection_time: Option<Str>,
    pub max_ejection_time: Option<Str>,
    pub max_ejected_percent: Option<Spanned<i64>>,
    /// What counts as a failure besides gateway failures: `["5xx"]`.
    pub on: Option<Spanned<Vec<Str>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Str,
    pub host: Option<Str>,
    pub path_prefix: Option<Str>,
    pub weights: Spanned<BTreeMap<Str, Spanned<i64>>>,
    pub sticky: Option<Spanned<RawSticky>>,
    #[serde(rename = "override")]
    pub overrides: Option<Spanned<RawOverride>>,
    #[serde(default)]
    pub drain: bool,
    #[serde(default)]
    pub expose_backend_header: bool,
    pub failover: Option<bool>,
    pub rollout: Option<Spanned<RawRollout>>,
    pub analysis: Option<Spanned<RawAnalysis>>,
    /// `shadow = { backend = "green", ... }`: mirror sampled requests.
    pub shadow: Option<Spanned<RawShadow>>,
}

/// `shadow = { ... }`: a sampled copy of requests to another backend,
/// whose answers are compared with the client's (`crate::shadow`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShadow {
    pub backend: Str,
    pub sample: Option<Spanned<f64>>,
    pub methods: Option<Spanned<Vec<Str>>>,
    /// Bytes, or a string like `"64KiB"`.
    pub max_body: Option<Spanned<toml::Value>>,
    pub compare_headers: Option<Spanned<Vec<Str>>>,
    pub ignore: Option<Spanned<Vec<Str>>>,
    #[serde(default)]
    pub noise: bool,
    #[serde(default)]
    pub keep_examples: bool,
    pub timeout: Option<Str>,
    /// Mirrored requests in flight per worker at most.
    pub queue: Option<Spanned<i64>>,
}

/// `[routes.analysis]`: how the route's backends are compared.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnalysis {
    pub baseline: Option<Str>,
    pub window: Option<Str>,
    pub confidence: Option<Spanned<f64>>,
    pub srm_confidence: Option<Spanned<f64>>,
    pub min_requests: Option<Spanned<i64>>,
    pub max_error_rate_increase: Option<Spanned<f64>>,
    pub max_latency_increase: Option<Str>,
    pub quantile: Option<Spanned<f64>>,
    pub source: Option<Spanned<RawSource>>,
}

/// `source = { prometheus = "URL", lag = "30s" }`: the evidence of every
/// replica, summed by Prometheus.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    pub prometheus: Str,
    pub lag: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSticky {
    pub cookie: Option<Str>,
    pub max_age: Option<Str>,
    pub header: Option<Str>,
    pub hash_seed: Option<Spanned<i64>>,
    pub secret: Option<Str>,
    pub secret_file: Option<Str>,
    pub secret_env: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOverride {
    pub header: Option<Str>,
    pub cookie: Option<Str>,
    pub token: Option<Str>,
    pub token_file: Option<Str>,
    pub token_env: Option<Str>,
}
