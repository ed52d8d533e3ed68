//! Configuration: the raw file model (`raw`), its validation into [`Config`]
//! (`validate`), errors that point at `file:line:col` (`error`), the file
//! watcher for hot reload (`watch`) and the safe editor behind `cutover set`
//! and `cutover rollback` (`edit`).

mod error;
mod raw;
mod validate;

pub mod edit;
pub mod secrets;
pub mod watch;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use http::uri::{Authority, Scheme};

pub use error::{ConfigError, Diagnostic};
pub use secrets::{SecretRef, SecretSource};
pub use validate::parse_endpoint;

/// A validated configuration: everything parsed, nothing left to check.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen_http: Option<SocketAddr>,
    pub listen_https: Option<SocketAddr>,
    pub tls: Option<TlsSpec>,
    pub admin: Option<SocketAddr>,
    pub timeouts: Timeouts,
    pub limits: Limits,
    /// Worker threads (one runtime and one listener socket each).
    pub workers: usize,
    /// On SIGTERM, how long `/readyz` says 503 before the listeners close,
    /// so load balancers stop sending first (`server.drain_delay`).
    pub drain_delay: std::time::Duration,
    /// `server.upgrade_socket`: where `cutover run --upgrade` finds this
    /// process; `None`: derived from the config path ([`crate::upgrade`]).
    pub upgrade_socket: Option<PathBuf>,
    pub metric_buckets: Vec<f64>,
    /// Sorted by name.
    pub backends: Vec<BackendSpec>,
    pub routes: Vec<RouteSpec>,
    /// Where rollout state files live (`[rollout] state_dir`).
    pub rollout_state_dir: PathBuf,
    /// `admin.token`: turns on the mutating admin endpoints.
    pub admin_token: Option<String>,
    /// Where `admin.token` comes from, when one is configured.
    pub admin_token_from: Option<SecretRef>,
    /// `[access_log]`; `None`: no access log.
    pub access_log: Option<AccessLogSpec>,
}

/// `[access_log]`: where request lines go and how they look.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogSpec {
    pub target: LogTarget,
    pub format: AccessLogFormat,
    /// Share of successful requests logged (errors always are), 0..=1.
    pub sample: f64,
    /// Log the query string with the path (it can hold personal data).
    pub log_query: bool,
}

/// Where the access log is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    Stdout,
    Stderr,
    /// Resolved against the config file's directory.
    File(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// One JSON object per line.
    Json,
    /// Space-separated fields in a fixed order (README).
    Text,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Timeouts {
    pub header_read: Duration,
    pub connect: Duration,
    pub request: Duration,
    pub idle: Duration,
    /// No progress of a request or response body for this long ends the
    /// exchange.
    pub body_idle: Duration,
    /// A WebSocket (upgraded) tunnel silent both ways this long is closed.
    pub tunnel_idle: Duration,
    /// A graceful close (GOAWAY + PING) not finished in this long is hard.
    pub graceful_close: Duration,
    pub drain: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_connections: usize,
    pub max_concurrent_streams: u32,
}

#[derive(Debug, Clone)]
pub struct BackendSpec {
    pub name: String,
    pub endpoints: Vec<EndpointSpec>,
    pub balance: Balance,
    pub health: Option<HealthSpec>,
    pub outlier: OutlierSpec,
    pub retry: RetrySpec,
    pub upstream_tls: UpstreamTls,
    /// Upstream connections per endpoint and worker thread, open or idle;
    /// requests past it wait (as many again, up to `timeouts.connect`).
    pub max_connections: usize,
    /// How the endpoints are spoken to (`protocol`).
    pub protocol: Protocol,
    /// gRPC statuses that count as errors (`[grpc] error_codes`, the same
    /// for every backend).
    pub grpc_errors: GrpcCodeSet,
}

/// How Cutover speaks to a backend's endpoints (`backends.NAME.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    /// HTTP/1.1 (over TLS for `https://` endpoints, ALPN `http/1.1`).
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge over cleartext TCP (RFC 9113 §3.3).
    H2c,
    /// HTTP/2 over TLS, ALPN `h2` (RFC 9113 §3.2).
    H2,
    /// HTTP/2 over TLS when the endpoint picks `h2` by ALPN, else HTTP/1.1.
    Auto,
}

impl Protocol {
    /// The ALPN protocols offered in the TLS handshake (RFC 7301).
    pub fn alpn(self) -> &'static [&'static [u8]] {
        match self {
            Protocol::Http1 | Protocol::H2c => &[b"http/1.1"],
            Protocol::H2 => &[b"h2"],
            Protocol::Auto => &[b"h2", b"http/1.1"],
        }
    }
}

/// How `https://` endpoints of a backend are verified.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct UpstreamTls {
    /// PEM CA bundle; `None`: the system's roots.
    pub ca: Option<PathBuf>,
    pub insecure_skip_verify: bool,
    /// SHA-256 of the `ca` file's content, filled in by
    /// [`secrets::resolve`]: a rotated CA is a different setting, so a
    /// reload applies it and connections verified under the old one are
    /// not reused.
    pub ca_digest: Option<String>,
}

/// Active health checks of every endpoint of a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSpec {
    /// For gRPC checks, [`HealthSpec::GRPC_PATH`].
    pub path: String,
    /// `grpc = true`: the gRPC health protocol, asking about this service
    /// ("" for the whole server); SERVING is healthy.
    pub grpc: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// Empty: any 2xx.
    pub expected_status: Vec<u16>,
    pub start_unhealthy: bool,
}

impl HealthSpec {
    /// The gRPC health check's method (`grpc/health/v1/health.proto`).
    pub const GRPC_PATH: &'static str = "/grpc.health.v1.Health/Check";
}

/// Passive ejection after consecutive failures (Envoy's outlier detection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierSpec {
    /// 0 turns passive ejection off.
    pub consecutive_failures: u32,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejected_percent: u32,
    /// Any 5xx counts as a failure, not only 502/503/504 (`on = ["5xx"]`).
    pub on_5xx: bool,
}

/// A set of gRPC status codes (0 to 16), as bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GrpcCodeSet(pub u32);

impl GrpcCodeSet {
    /// The status names of the gRPC spec (`doc/statuscodes.md`), by code.
    pub const NAMES: [&'static str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];

    pub fn contains(self, code: u8) -> bool {
        code < 32 && self.0 & (1 << code) != 0
    }

    pub fn with(self, code: u8) -> GrpcCodeSet {
        GrpcCodeSet(self.0 | 1 << code)
    }
}

/// UNKNOWN, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE and DATA_LOSS: the
/// statuses that say the service failed rather than the call.
impl Default for GrpcCodeSet {
    fn default() -> GrpcCodeSet {
        GrpcCodeSet(1 << 2 | 1 << 4 | 1 << 13 | 1 << 14 | 1 << 15)
    }
}

/// Retries within a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySpec {
    pub retries: u32,
    /// Also retry idempotent requests answered 502, 503 or 504.
    pub on_5xx: bool,
    /// Request bodies up to this size are buffered so they can be replayed.
    pub buffer_bytes: usize,
}

/// One upstream address, `http://host:port` once parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointSpec {
    pub scheme: Scheme,
    pub authority: Authority,
}

impl std::fmt::Display for EndpointSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

/// The HTTPS listener's certificates; the first is the default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSpec {
    pub certs: Vec<CertSpec>,
    pub handshake_timeout: Duration,
}

/// A PEM certificate chain and its key, paths resolved against the config's
/// directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSpec {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How a backend spreads requests over its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    /// Power of two random choices on in-flight requests.
    P2c,
}

#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub name: String,
    pub host: HostMatch,
    pub path_prefix: String,
    /// (backend name, weight), sorted by backend name.
    pub weights: Vec<(String, u32)>,
    pub sticky: Option<StickySpec>,
    pub overrides: Option<OverrideSpec>,
    pub drain: bool,
    pub expose_backend_header: bool,
    /// Send a request elsewhere when its backend has nothing available.
    pub failover: bool,
    pub rollout: Option<RolloutSpec>,
    /// The route's `analysis` table: how its backends are compared.
    pub analysis: AnalysisSpec,
    /// `shadow = { ... }`: mirroring to another backend (`crate::shadow`).
    pub shadow: Option<crate::shadow::ShadowSpec>,
}

/// A route's A/B comparison settings (`[routes.analysis]`).
#[derive(Debug, Clone, PartialEq)]
pub struct AnalysisSpec {
    /// The backend the others are compared with; `None`: the one with the
    /// largest weight when the window starts.
    pub baseline: Option<String>,
    /// The sliding window of evidence.
    pub window: std::time::Duration,
    pub settings: crate::analysis::Settings,
    /// `source = { prometheus = ... }`: judge on every replica's evidence.
    pub source: Option<PromSource>,
}

/// Where a route's evidence comes from when not from this process alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromSource {
    /// The Prometheus server's base URL (its HTTP API is under it).
    pub url: String,
    /// How long after an instant Prometheus holds every replica's samples
    /// up to it (a scrape interval and then some): rollout steps are
    /// judged this long after their boundaries, and their evidence starts
    /// this long after they do.
    pub lag: Duration,
}

impl Default for AnalysisSpec {
    fn default() -> AnalysisSpec {
        AnalysisSpec {
            baseline: None,
            window: std::time::Duration::from_secs(300),
            settings: crate::analysis::Settings::default(),
            source: None,
        }
    }
}

/// `[routes.rollout]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutSpec {
    pub id: String,
    /// The backend being released.
    pub canary: String,
    /// The backend it is compared with and that takes the rest of the
    /// traffic: the route's other backend with the largest weight in the file.
    pub baseline: String,
    /// The canary's weight (percent) at each step; strictly increasing, the
    /// last is 100.
    pub steps: Vec<u32>,
    pub hold: Duration,
    /// Per side, per step, before the step can pass.
    pub min_requests: u64,
    pub on_failure: OnFailure,
    /// `start`: when the first step starts (Unix seconds), the same for
    /// every replica; `None`: when this process first sees the rollout.
    pub start: Option<u64>,
    /// Where its transitions are announced: its own `notify`, else the
    /// global `[rollout] notify`.
    pub notify: Option<NotifySpec>,
}

/// `notify = { webhook = "..." }`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifySpec {
    /// `http://` or `https://`, with a host.
    pub webhook: http::Uri,
}

/// What a `fail` verdict does to a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    Rollback,
    Pause,
}

/// Which `Host` a route answers; the port is ignored and case folded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    Any,
    Exact(String),
    /// `*.example.com`, stored as `example.com`: matches any deeper name.
    Suffix(String),
}

#[derive(Debug, Clone)]
pub struct StickySpec {
    pub cookie: Option<String>,
    pub max_age: Option<Duration>,
    pub header: Option<HeaderName>,
    pub hash_seed: u64,
    /// The cookie signing key, once resolved (see [`secrets`]).
    pub secret: Option<Vec<u8>>,
    /// Where the secret comes from, when one is configured.
    pub secret_from: Option<SecretRef>,
}

#[derive(Debug, Clone)]
pub struct OverrideSpec {
    pub header: Option<HeaderName>,
    pub cookie: Option<String>,
    /// The override token, once resolved (see [`secrets`]).
    pub token: Option<String>,
    /// Where the token comes from, when one is configured.
    pub token_from: Option<SecretRef>,
}

/// A config as loaded from disk, with what `/admin/state` reports about it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub path: PathBuf,
    pub sha256: String,
    /// Changes when the text or any secret or token it reads from a file or
    /// the environment changes: what a reload compares.
    pub fingerprint: String,
}

/// Reads, parses and validates a config file and resolves its secrets:
/// what `cutover run` and every reload need.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let (text, mut config) = read(path)?;
    secrets::resolve(&mut config)?;
    let fingerprint = fingerprint(&text, &config);
    Ok(Loaded {
        config,
        path: path.to_path_buf(),
        sha256: sha256_hex(text.as_bytes()),
        fingerprint,
    })
}

/// Reads, parses and validates a config file without resolving secrets
/// (see [`secrets::resolve`]): a pure function of the file's text.
pub fn read(path: &Path) -> Result<(String, Config), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let config = parse(path, &text)?;
    Ok((text, config))
}

/// Parses and validates config text; `path` names it in errors and anchors
/// relative `*_file` paths. Reads nothing: secrets stay unresolved.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    validate::parse(path, text)
}

fn fingerprint(text: &str, config: &Config) -> String {
    let mut input = text.as_bytes().to_vec();
    for b in &config.backends {
        input.push(0);
        input.extend_from_slice(
            b.upstream_tls
                .ca_digest
                .as_deref()
                .unwrap_or_default()
                .as_bytes(),
        );
    }
    for r in &config.routes {
        for secret in [
            r.sticky.as_ref().and_then(|s| s.secret.as_deref()),
            r.overrides
                .as_ref()
                .and_then(|o| o.token.as_deref().map(str::as_bytes)),
        ] {
            input.push(0);
            input.extend_from_slice(secret.unwrap_or_default());
        }
    }
    sha256_hex(&input)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
