//! Turns a [`RawConfig`] into a [`Config`], collecting every problem with its
//! location instead of stopping at the first.

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::HeaderName;
use http::uri::{Authority, Scheme};
use toml::Spanned;

use super::AnalysisSpec;
use super::NotifySpec;
use super::raw::RawNotify;
use super::raw::{RawAccessLog, RawAnalysis};
use super::raw::{
    RawBackend, RawConfig, RawHealth, RawOutlier, RawOverride, RawRollout, RawRoute, RawSticky, Str,
};
use super::{AccessLogFormat, AccessLogSpec, LogTarget};
use super::{
    BackendSpec, Balance, CertSpec, Config, ConfigError, Diagnostic, EndpointSpec, HealthSpec,
    HostMatch, Limits, OnFailure, OutlierSpec, OverrideSpec, Protocol, RetrySpec, RolloutSpec,
    RouteSpec, SecretRef, SecretSource, StickySpec, Timeouts, TlsSpec, UpstreamTls,
};

/// HTTP/2 streams per connection at most: each may hold a request in
/// flight, an upstream connection and `max_send_buf_size` of buffered
/// response (nginx's default is 128, HAProxy's 100).
const MAX_CONCURRENT_STREAMS: i64 = 1_000;

/// The longest any duration key may be: deadlines are computed as
/// `now + duration` and must neither panic nor wrap.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

const DEFAULT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

pub(super) fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    // serde_path_to_error names the key path of type and unknown-key
    // errors, as validation errors do.
    let located = |e: toml::de::Error, path: Option<String>| {
        let offset = e.span().map_or(0, |s| s.start);
        let message = match path.filter(|p| p != ".") {
            Some(p) => format!("{p}: {}", e.message().trim()),
            None => e.message().trim().to_owned(),
        };
        ConfigError::Invalid(vec![Diagnostic::at(&file, text, offset, message)])
    };
    let de = toml::Deserializer::parse(text).map_err(|e| located(e, None))?;
    let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let offset = e.inner().span().map_or(0, |s| s.start);
        let path = key_path(e.path(), key_before(text, offset));
        located(e.into_inner(), Some(path))
    })?;
    let mut v = Validator {
        file,
        text,
        dir: path.parent().unwrap_or(Path::new(".")),
        errors: Vec::new(),
    };
    let config = v.config(raw);
    if v.errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid(v.errors))
    }
}

struct Validator<'a> {
    file: String,
    text: &'a str,
    /// Relative `*_file` paths are read from the config file's directory.
    dir: &'a Path,
    errors: Vec<Diagnostic>,
}

impl Validator<'_> {
    fn error<T>(&mut self, at: &Spanned<T>, message: String) {
        let d = Diagnostic::at(&self.file, self.text, at.span().start, message);
        self.errors.push(d);
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let listen_http = raw
            .listen
            .http
            .as_ref()
            .and_then(|a| self.socket_addr("listen.http", a));
        if raw.listen.http.is_none() {
            self.errors.push(Diagnostic::at(
                &self.file,
                self.text,
                0,
                "listen: `http` is required".to_owned(),
            ));
        }
        let listen_https = raw
            .listen
            .https
            .as_ref()
            .and_then(|a| self.socket_addr("listen.https", a));
        let tls = raw.tls.as_ref().map(|t| TlsSpec {
            certs: t
                .get_ref()
                .certs
                .get_ref()
                .iter()
                .map(|c| CertSpec {
                    cert: self.dir.join(c.get_ref().cert.get_ref()),
                    key: self.dir.join(c.get_ref().key.get_ref()),
                })
                .collect(),
            handshake_timeout: self.duration(
                "tls.handshake_timeout",
                &t.get_ref().handshake_timeout,
                10,
            ),
        });
        if let Some(t) = &raw.tls
            && t.get_ref().certs.get_ref().is_empty()
        {
            self.error(
                &t.get_ref().certs,
                "tls.certs: at least one { cert, key } is required".into(),
            );
        }
        if let (Some(h), None) = (&raw.listen.https, &raw.tls) {
            self.error(h, "listen.https: needs a [tls] section with certs".into());
        }
        let admin = raw
            .admin
            .as_ref()
            .and_then(|a| self.socket_addr("admin.listen", &a.listen));
        let (admin_token, admin_token_from) = raw.admin.as_ref().map_or((None, None), |a| {
            let at = Spanned::new(a.listen.span(), ());
            self.secret("admin", &at, &a.token, &a.token_file, &a.token_env, "token")
        });
        let rollout_state_dir = match &raw.rollout.state_dir {
            Some(d) if d.get_ref().is_empty() => {
                self.error(d, "rollout.state_dir: must not be empty".into());
                self.dir.join(".cutover-state")
            }
            Some(d) => self.dir.join(d.get_ref()),
            None => self.dir.join(".cutover-state"),
        };
        let notify = raw
            .rollout
            .notify
            .as_ref()
            .and_then(|n| self.notify("rollout.notify", n));
        let t = &raw.timeouts;
        let timeouts = Timeouts {
            header_read: self.duration("timeouts.header_read", &t.header_read, 10),
            connect: self.duration("timeouts.connect", &t.connect, 1),
            request: self.duration("timeouts.request", &t.request, 60),
            idle: self.duration("timeouts.idle", &t.idle, 60),
            drain: self.duration("timeouts.drain", &t.drain, 30),
            body_idle: self.duration_at_most("timeouts.body_idle", &t.body_idle, 60, 86_400),
            tunnel_idle: self.duration_at_most(
                "timeouts.tunnel_idle",
                &t.tunnel_idle,
                3_600,
                7 * 86_400,
            ),
            graceful_close: self.duration_at_most(
                "timeouts.graceful_close",
                &t.graceful_close,
                5,
                3_600,
            ),
        };
        let l = &raw.limits;
        let limits = Limits {
            max_header_bytes: self.int(
                "limits.max_header_bytes",
                &l.max_header_bytes,
                65536,
                8192,
                16 << 20,
            ),
            max_headers: self.int("limits.max_headers", &l.max_headers, 100, 1, 10_000),
            max_connections: self.int(
                "limits.max_connections",
                &l.max_connections,
                10_000,
                1,
                10_000_000,
            ),
            max_concurrent_streams: self.int(
                "limits.max_concurrent_streams",
                &l.max_concurrent_streams,
                200,
                1,
                MAX_CONCURRENT_STREAMS,
            ) as u32,
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = match &raw.server.workers {
            Some(w) if *w.get_ref() == 0 => cores,
            _ => self.int("server.workers", &raw.server.workers, cores, 1, 1024),
        };
        // Zero is allowed: no delay.
        let drain_delay = match &raw.server.drain_delay {
            Some(d) if humantime::parse_duration(d.get_ref()).is_ok_and(|d| d.is_zero()) => {
                Duration::ZERO
            }
            d => self.duration("server.drain_delay", d, 2),
        };
        let metric_buckets = match &raw.metrics.buckets {
            None => DEFAULT_BUCKETS.to_vec(),
            Some(b) => {
                let ok = !b.get_ref().is_empty()
                    && b.get_ref().windows(2).all(|w| w[0] < w[1])
                    && b.get_ref().iter().all(|x| x.is_finite() && *x > 0.0);
                if !ok {
                    self.error(
                        b,
                        "metrics.buckets: must be positive and strictly increasing".into(),
                    );
                }
                b.get_ref().clone()
            }
        };
        let backends: Vec<BackendSpec> = raw
            .backends
            .get_ref()
            .iter()
            .map(|(name, b)| self.backend(name, b))
            .collect();
        if backends.is_empty() {
            self.error(
                &raw.backends,
                "backends: at least one backend is required".into(),
            );
        }
        self.shared_tls_endpoints(&raw, &backends);
        let known: BTreeSet<&str> = backends.iter().map(|b| b.name.as_str()).collect();
        let mut names = HashSet::new();
        let mut routes = Vec::new();
        for (i, r) in raw.routes.iter().enumerate() {
            if !names.insert(r.get_ref().name.get_ref().clone()) {
                let n = &r.get_ref().name;
                self.error(
                    n,
                    format!("routes[{i}].name: duplicate route name \"{}\"", n.get_ref()),
                );
            }
            routes.push(self.route(i, r.get_ref(), &known));
        }
        self.route_clashes(&raw, &routes);
        // A route's own `notify` wins over the global one.
        for r in &mut routes {
            if let Some(ro) = &mut r.rollout
                && ro.notify.is_none()
            {
                ro.notify.clone_from(&notify);
            }
        }
        let access_log = raw
            .access_log
            .as_ref()
            .map(|a| self.access_log(a.get_ref()));
        Config {
            listen_http,
            listen_https,
            tls,
            admin,
            timeouts,
            limits,
            workers,
            drain_delay,
            metric_buckets,
            backends,
            routes,
            rollout_state_dir,
            admin_token,
            admin_token_from,
            access_log,
        }
    }

    /// `[access_log]`.
    fn access_log(&mut self, a: &RawAccessLog) -> AccessLogSpec {
        let target = match a.path.get_ref().as_str() {
            "stdout" => LogTarget::Stdout,
            "stderr" => LogTarget::Stderr,
            "" => {
                self.error(&a.path, "access_log.path: must not be empty".into());
                LogTarget::Stderr
            }
            p => LogTarget::File(self.dir.join(p)),
        };
        let format = match a.format.as_ref().map(|f| f.get_ref().as_str()) {
            None | Some("json") => AccessLogFormat::Json,
            Some("text") => AccessLogFormat::Text,
            Some(other) => {
                let at = a.format.as_ref().expect("matched Some");
                self.error(
                    at,
                    format!("access_log.format: \"{other}\" is not one of \"json\", \"text\""),
                );
                AccessLogFormat::Json
            }
        };
        let sample = match &a.sample {
            None => 1.0,
            Some(s) if (0.0..=1.0).contains(s.get_ref()) => *s.get_ref(),
            Some(s) => {
                self.error(s, "access_log.sample: must be between 0 and 1".into());
                1.0
            }
        };
        AccessLogSpec {
            target,
            format,
            sample,
            log_query: a.log_query,
        }
    }

    /// Routes that cannot both work: the same host and `path_prefix` (the
    /// later one would never match), and routes a browser may visit with
    /// one cookie jar sharing a sticky cookie name with a different secret
    /// or drain setting (each would reset or distrust the other's cookie).
    fn route_clashes(&mut self, raw: &RawConfig, routes: &[RouteSpec]) {
        for (i, r) in routes.iter().enumerate() {
            let Some(spanned) = raw.routes.get(i) else {
                continue;
            };
            let rr = spanned.get_ref();
            if let Some(j) = routes[..i]
                .iter()
                .position(|o| o.host == r.host && o.path_prefix == r.path_prefix)
            {
                let at = rr.path_prefix.as_ref().unwrap_or(&rr.name);
                self.error(
                    at,
                    format!(
                        "routes[{i}]: same host and path_prefix \"{}\" as routes[{j}] (\"{}\"), so it would never match",
                        r.path_prefix, routes[j].name
                    ),
                );
            }
            let Some(cookie) = r.sticky.as_ref().and_then(|s| s.cookie.as_ref()) else {
                continue;
            };
            let clash = routes[..i].iter().enumerate().find(|(_, o)| {
                hosts_overlap(&o.host, &r.host)
                    && o.sticky.as_ref().is_some_and(|s| {
                        s.cookie.as_ref() == Some(cookie)
                            && (o.drain != r.drain || !same_secret(s, r.sticky.as_ref()))
                    })
            });
            if let (Some((j, other)), Some(at)) = (
                clash,
                rr.sticky.as_ref().and_then(|s| s.get_ref().cookie.as_ref()),
            ) {
                self.error(
                    at,
                    format!(
                        "routes[{i}].sticky.cookie: \"{cookie}\" is also the cookie of routes[{j}] (\"{}\") on an overlapping host, with a different secret or drain setting; use another cookie name or the same settings",
                        other.name
                    ),
                );
            }
        }
    }

    /// Upstream TLS settings are per connection pool, which is per address:
    /// two backends may share an `https://` endpoint only if they verify it
    /// the same way.
    fn shared_tls_endpoints(&mut self, raw: &RawConfig, backends: &[BackendSpec]) {
        for (i, (_, spanned)) in raw.backends.get_ref().iter().enumerate() {
            let Some(b) = backends.get(i) else { continue };
            let clash = backends[..i].iter().find(|other| {
                other.upstream_tls != b.upstream_tls
                    && b.endpoints
                        .iter()
                        .any(|e| e.scheme == Scheme::HTTPS && other.endpoints.contains(e))
            });
            if let Some(other) = clash {
                self.error(
                    spanned,
                    format!(
                        "backends.{}: shares an https:// endpoint with backends.{} but sets ca or insecure_skip_verify differently",
                        b.name, other.name
                    ),
                );
            }
        }
    }

    fn socket_addr(&mut self, key: &str, s: &Str) -> Option<SocketAddr> {
        match s.get_ref().parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.error(
                    s,
                    format!("{key}: \"{}\" is not an ip:port address", s.get_ref()),
                );
                None
            }
        }
    }

    fn duration(&mut self, key: &str, s: &Option<Str>, default_secs: u64) -> Duration {
        let Some(s) = s else {
            return Duration::from_secs(default_secs);
        };
        match humantime::parse_duration(s.get_ref()) {
            Ok(d) if d > MAX_DURATION => {
                self.error(
                    s,
                    format!(
                        "{key}: \"{}\" is longer than the maximum of 365 days",
                        s.get_ref()
                    ),
                );
                Duration::from_secs(default_secs)
            }
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.error(s, format!("{key}: must be greater than zero"));
                Duration::from_secs(default_secs)
            }
            Err(e) => {
                self.error(
                    s,
                    format!(
                        "{key}: \"{}\" is not a duration like \"250ms\" or \"5s\" ({e})",
                        s.get_ref()
                    ),
                );
                Duration::from_secs(default_secs)
            }
        }
    }

    /// A duration with a documented maximum, so deadline arithmetic can
    /// never overflow.
    fn duration_at_most(
        &mut self,
        key: &str,
        s: &Option<Str>,
        default_secs: u64,
        max_secs: u64,
    ) -> Duration {
        let d = self.duration(key, s, default_secs);
        match s {
            Some(s) if d > Duration::from_secs(max_secs) => {
                let max = humantime::format_duration(Duration::from_secs(max_secs));
                self.error(
                    s,
                    format!(
                        "{key}: \"{}\" is more than the maximum of {max}",
                        s.get_ref()
                    ),
                );
                Duration::from_secs(default_secs)
            }
            _ => d,
        }
    }

    fn int(
        &mut self,
        key: &str,
        v: &Option<Spanned<i64>>,
        default: usize,
        min: i64,
        max: i64,
    ) -> usize {
        match v {
            None => default,
            Some(n) if (min..=max).contains(n.get_ref()) => *n.get_ref() as usize,
            Some(n) => {
                self.error(
                    n,
                    format!("{key}: {} is out of range {min}..={max}", n.get_ref()),
                );
                default
            }
        }
    }

    fn backend(&mut self, name: &str, spanned: &Spanned<RawBackend>) -> BackendSpec {
        let raw = spanned.get_ref();
        let key = format!("backends.{}", name);
        if !valid_name(name) {
            self.error(
                spanned,
                format!("{key}: a backend name uses only letters, digits, '-' and '_'"),
            );
        }
        if raw.endpoints.get_ref().is_empty() {
            self.error(
                &raw.endpoints,
                format!("{key}.endpoints: at least one endpoint is required"),
            );
        }
        let mut endpoints = Vec::new();
        for (i, e) in raw.endpoints.get_ref().iter().enumerate() {
            match parse_endpoint(e.get_ref()) {
                Ok(ep) if endpoints.contains(&ep) => {
                    self.error(
                        e,
                        format!("{key}.endpoints[{i}]: \"{}\" is listed twice", e.get_ref()),
                    );
                }
                Ok(ep) => endpoints.push(ep),
                Err(why) => self.error(
                    e,
                    format!("{key}.endpoints[{i}]: \"{}\" {why}", e.get_ref()),
                ),
            }
        }
        let balance = match raw.balance.as_ref().map(|b| (b, b.get_ref().as_str())) {
            None | Some((_, "round_robin")) => Balance::RoundRobin,
            Some((_, "p2c")) => Balance::P2c,
            Some((b, other)) => {
                self.error(
                    b,
                    format!("{key}.balance: \"{other}\" is not one of round_robin, p2c"),
                );
                Balance::RoundRobin
            }
        };
        let health = raw.health.as_ref().map(|h| self.health(&key, h.get_ref()));
        let outlier = self.outlier(&key, raw.outlier.as_ref().map(|o| o.get_ref()));
        let mut on_5xx = false;
        for (i, r) in raw
            .retry_on
            .iter()
            .flat_map(|r| r.get_ref().iter())
            .enumerate()
        {
            match r.get_ref().as_str() {
                "5xx" => on_5xx = true,
                "connect" => {}
                other => self.error(
                    r,
                    format!("{key}.retry_on[{i}]: \"{other}\" is not one of connect, 5xx"),
                ),
            }
        }
        let retry = RetrySpec {
            retries: self.int(&format!("{key}.retries"), &raw.retries, 2, 0, 10) as u32,
            on_5xx,
            buffer_bytes: self.int(
                &format!("{key}.retry_buffer_bytes"),
                &raw.retry_buffer_bytes,
                65536,
                0,
                16 << 20,
            ),
        };
        let upstream_tls = UpstreamTls {
            ca: raw.ca.as_ref().map(|c| self.dir.join(c.get_ref())),
            insecure_skip_verify: raw.insecure_skip_verify,
            ca_digest: None,
        };
        let max_connections = self.int(
            &format!("{key}.max_connections"),
            &raw.max_connections,
            1024,
            1,
            1 << 20,
        );
        let protocol = self.protocol(&key, raw, &endpoints);
        BackendSpec {
            protocol,
            max_connections,
            name: name.to_owned(),
            endpoints,
            balance,
            health,
            outlier,
            retry,
            upstream_tls,
        }
    }

    /// `protocol`: `h2c` is cleartext only, `h2` and `auto` choose by ALPN
    /// and so need `https://` endpoints.
    fn protocol(&mut self, key: &str, raw: &RawBackend, endpoints: &[EndpointSpec]) -> Protocol {
        let Some(p) = &raw.protocol else {
            return Protocol::Http1;
        };
        let protocol = match p.get_ref().as_str() {
            "http1" => Protocol::Http1,
            "h2c" => Protocol::H2c,
            "h2" => Protocol::H2,
            "auto" => Protocol::Auto,
            other => {
                self.error(
                    p,
                    format!("{key}.protocol: \"{other}\" is not one of http1, h2c, h2, auto"),
                );
                return Protocol::Http1;
            }
        };
        let https = |e: &&EndpointSpec| e.scheme == Scheme::HTTPS;
        match protocol {
            Protocol::H2c if endpoints.iter().any(|e| https(&e)) => self.error(
                p,
                format!("{key}.protocol: \"h2c\" is HTTP/2 over cleartext; use \"h2\" for https:// endpoints"),
            ),
            Protocol::H2 | Protocol::Auto if !endpoints.iter().all(|e| https(&e)) => self.error(
                p,
                format!(
                    "{key}.protocol: \"{}\" negotiates HTTP/2 by TLS ALPN and needs https:// endpoints; use \"h2c\" for cleartext",
                    p.get_ref()
                ),
            ),
            _ => {}
        }
        protocol
    }

    fn health(&mut self, key: &str, h: &RawHealth) -> HealthSpec {
        let key = format!("{key}.health");
        if !h.path.get_ref().starts_with('/') {
            self.error(
                &h.path,
                format!("{key}.path: \"{}\" must start with '/'", h.path.get_ref()),
            );
        } else if h.path.get_ref().parse::<http::Uri>().is_err() || h.path.get_ref().contains('#') {
            // What the checker sends: an origin-form request target
            // (RFC 9112 §3.2.1), so no spaces, controls or fragment.
            self.error(
                &h.path,
                format!(
                    "{key}.path: \"{}\" is not a valid request target (encode spaces and other special characters as %XX)",
                    h.path.get_ref()
                ),
            );
        }
        let mut expected_status = Vec::new();
        for s in h.expected_status.iter().flat_map(|s| s.get_ref().iter()) {
            if (100..=599).contains(s.get_ref()) {
                expected_status.push(*s.get_ref() as u16);
            } else {
                self.error(
                    s,
                    format!(
                        "{key}.expected_status: {} is not an HTTP status",
                        s.get_ref()
                    ),
                );
            }
        }
        HealthSpec {
            path: h.path.get_ref().clone(),
            interval: self.duration_ms(&format!("{key}.interval"), &h.interval, 2000),
            timeout: self.duration_ms(&format!("{key}.timeout"), &h.timeout, 1000),
            healthy_threshold: self.int(
                &format!("{key}.healthy_threshold"),
                &h.healthy_threshold,
                2,
                1,
                100,
            ) as u32,
            unhealthy_threshold: self.int(
                &format!("{key}.unhealthy_threshold"),
                &h.unhealthy_threshold,
                3,
                1,
                100,
            ) as u32,
            expected_status,
            start_unhealthy: h.start_unhealthy,
        }
    }

    fn outlier(&mut self, key: &str, o: Option<&RawOutlier>) -> OutlierSpec {
        let key = format!("{key}.outlier");
        let none = RawOutlier {
            consecutive_failures: None,
            base_ejection_time: None,
            max_ejection_time: None,
            max_ejected_percent: None,
            on: None,
        };
        let o = o.unwrap_or(&none);
        let mut on_5xx = false;
        for (i, r) in o.on.iter().flat_map(|r| r.get_ref().iter()).enumerate() {
            match r.get_ref().as_str() {
                "5xx" => on_5xx = true,
                "gateway" => {}
                other => self.error(
                    r,
                    format!("{key}.on[{i}]: \"{other}\" is not one of gateway, 5xx"),
                ),
            }
        }
        OutlierSpec {
            on_5xx,
            consecutive_failures: self.int(
                &format!("{key}.consecutive_failures"),
                &o.consecutive_failures,
                5,
                0,
                1000,
            ) as u32,
            base_ejection_time: self.duration_ms(
                &format!("{key}.base_ejection_time"),
                &o.base_ejection_time,
                10_000,
            ),
            max_ejection_time: self.duration_ms(
                &format!("{key}.max_ejection_time"),
                &o.max_ejection_time,
                300_000,
            ),
            max_ejected_percent: self.int(
                &format!("{key}.max_ejected_percent"),
                &o.max_ejected_percent,
                50,
                0,
                100,
            ) as u32,
        }
    }

    fn duration_ms(&mut self, key: &str, s: &Option<Str>, default_ms: u64) -> Duration {
        match s {
            None => Duration::from_millis(default_ms),
            Some(_) => self.duration(key, s, 1),
        }
    }

    fn route(&mut self, i: usize, r: &RawRoute, known: &BTreeSet<&str>) -> RouteSpec {
        let key = format!("routes[{i}]");
        if !valid_name(r.name.get_ref()) {
            self.error(
                &r.name,
                format!("{key}.name: a route name uses only letters, digits, '-' and '_'"),
            );
        }
        let host = match &r.host {
            None => HostMatch::Any,
            Some(h) => self.host(&key, h),
        };
        let path_prefix = match &r.path_prefix {
            None => "/".to_owned(),
            Some(p) if p.get_ref().starts_with('/') => p.get_ref().clone(),
            Some(p) => {
                self.error(
                    p,
                    format!("{key}.path_prefix: \"{}\" must start with '/'", p.get_ref()),
                );
                "/".to_owned()
            }
        };
        let known_list = known.iter().copied().collect::<Vec<_>>().join(", ");
        let mut weights = Vec::new();
        for (backend, w) in r.weights.get_ref() {
            if !known.contains(backend.get_ref().as_str()) {
                self.error(
                    backend,
                    format!(
                        "{key}.weights: backend \"{}\" is not defined (known: {known_list})",
                        backend.get_ref()
                    ),
                );
            } else if !(0..=1_000_000).contains(w.get_ref()) {
                self.error(
                    w,
                    format!(
                        "{key}.weights.{}: {} is out of range 0..=1000000",
                        backend.get_ref(),
                        w.get_ref()
                    ),
                );
            } else {
                weights.push((backend.get_ref().clone(), *w.get_ref() as u32));
            }
        }
        if r.weights.get_ref().values().all(|w| *w.get_ref() <= 0) {
            self.error(
                &r.weights,
                format!("{key}.weights: at least one backend needs a positive weight"),
            );
        }
        let sticky = r.sticky.as_ref().map(|s| self.sticky(&key, s));
        if let (true, Some(raw), Some(s)) = (r.drain, &r.sticky, &sticky)
            && s.cookie.is_some()
            && s.secret_from.is_none()
        {
            // In drain mode the cookie names the backend that last served
            // the user, and that backend is honoured at weight 0: unsigned,
            // anyone could write `cutover=1.green` and reach it.
            self.error(
                raw,
                format!(
                    "{key}.sticky: drain = true needs a cookie secret (secret, secret_file or secret_env): an unsigned cookie could name a backend at weight 0 and reach it"
                ),
            );
        }
        let overrides = r.overrides.as_ref().map(|o| self.overrides(&key, o));
        let rollout = r
            .rollout
            .as_ref()
            .and_then(|ro| self.rollout(&key, ro, &weights));
        RouteSpec {
            name: r.name.get_ref().clone(),
            host,
            path_prefix,
            weights,
            sticky,
            overrides,
            drain: r.drain,
            expose_backend_header: r.expose_backend_header,
            failover: r.failover.unwrap_or(true),
            rollout,
            analysis: r
                .analysis
                .as_ref()
                .map(|a| self.analysis(&key, a.get_ref(), r))
                .unwrap_or_default(),
        }
    }

    /// `routes[i].analysis`: every key optional, each checked in place.
    fn analysis(&mut self, key: &str, a: &RawAnalysis, r: &RawRoute) -> AnalysisSpec {
        let key = format!("{key}.analysis");
        let mut spec = AnalysisSpec::default();
        if let Some(b) = &a.baseline {
            if r.weights
                .get_ref()
                .keys()
                .any(|k| k.get_ref() == b.get_ref())
            {
                spec.baseline = Some(b.get_ref().clone());
            } else {
                self.error(
                    b,
                    format!(
                        "{key}.baseline: \"{}\" is not one of the route's backends",
                        b.get_ref()
                    ),
                );
            }
        }
        if a.window.is_some() {
            spec.window = self.duration(&format!("{key}.window"), &a.window, 300);
        }
        let mut real = |name: &str, v: &Option<Spanned<f64>>, ok: fn(f64) -> bool, range: &str| {
            let v = v.as_ref()?;
            if ok(*v.get_ref()) {
                Some(*v.get_ref())
            } else {
                self.error(
                    v,
                    format!("{key}.{name}: {} is out of range {range}", v.get_ref()),
                );
                None
            }
        };
        if let Some(c) = real(
            "confidence",
            &a.confidence,
            |c| (0.5..1.0).contains(&c),
            "0.5..1 (exclusive of 1)",
        ) {
            spec.settings.confidence = c;
        }
        if let Some(e) = real(
            "max_error_rate_increase",
            &a.max_error_rate_increase,
            |e| (0.0..1.0).contains(&e),
            "0..1 (an absolute rate: 0.01 is one point)",
        ) {
            spec.settings.max_error_rate_increase = e;
        }
        if let Some(q) = real(
            "quantile",
            &a.quantile,
            |q| q > 0.0 && q < 1.0,
            "0..1 (exclusive)",
        ) {
            spec.settings.quantile = q;
        }
        spec.settings.min_requests = self.int(
            &format!("{key}.min_requests"),
            &a.min_requests,
            200,
            1,
            1_000_000_000,
        ) as u64;
        if a.max_latency_increase.is_some() {
            spec.settings.max_latency_increase = self
                .duration(
                    &format!("{key}.max_latency_increase"),
                    &a.max_latency_increase,
                    1,
                )
                .as_secs_f64();
        }
        if let Some(src) = &a.source {
            let src = src.get_ref();
            let url = src.prometheus.get_ref().trim();
            match crate::analysis::prometheus::check_url(url) {
                Ok(()) => {
                    let lag = self.duration(&format!("{key}.source.lag"), &src.lag, 30);
                    spec.source = Some(crate::config::PromSource {
                        url: url.trim_end_matches('/').to_owned(),
                        lag,
                    });
                }
                Err(e) => self.error(&src.prometheus, format!("{key}.source.prometheus: {e}")),
            }
        }
        spec
    }

    /// `[routes.rollout]`: the canary is one of the route's backends, another
    /// one with a positive weight is the baseline, the steps climb to 100.
    fn rollout(
        &mut self,
        key: &str,
        spanned: &Spanned<RawRollout>,
        weights: &[(String, u32)],
    ) -> Option<RolloutSpec> {
        let key = format!("{key}.rollout");
        let r = spanned.get_ref();
        let mut ok = true;
        let id = r.id.get_ref().trim();
        if id.is_empty() || id.len() > 128 || id.chars().any(char::is_control) {
            self.error(
                &r.id,
                format!("{key}.id: must be 1 to 128 printable characters"),
            );
            ok = false;
        }
        let canary = r.canary.get_ref();
        if !weights.iter().any(|(b, _)| b == canary) {
            let listed: Vec<&str> = weights.iter().map(|(b, _)| b.as_str()).collect();
            self.error(
                &r.canary,
                format!(
                    "{key}.canary: \"{canary}\" is not a backend of this route's weights (listed: {})",
                    listed.join(", ")
                ),
            );
            ok = false;
        }
        // The baseline: the other backend with the largest weight (the
        // first by name on a tie).
        let baseline = weights
            .iter()
            .filter(|(b, w)| b != canary && *w > 0)
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
            .map(|(b, _)| b.clone());
        if baseline.is_none() && ok {
            self.error(
                spanned,
                format!(
                    "{key}: the route needs a baseline: a backend other than \"{canary}\" with a positive weight"
                ),
            );
            ok = false;
        }
        let steps = r.steps.get_ref();
        if steps.is_empty() {
            self.error(
                &r.steps,
                format!("{key}.steps: at least one step is required"),
            );
            ok = false;
        }
        for (i, s) in steps.iter().enumerate() {
            let v = *s.get_ref();
            if !(1..=100).contains(&v) {
                self.error(s, format!("{key}.steps[{i}]: {v} is out of range 1..=100"));
                ok = false;
            } else if i > 0 && v <= *steps[i - 1].get_ref() {
                self.error(
                    s,
                    format!("{key}.steps[{i}]: {v} must be greater than the step before it"),
                );
                ok = false;
            }
        }
        if let Some(last) = steps.last()
            && *last.get_ref() != 100
        {
            self.error(
                last,
                format!(
                    "{key}.steps: the last step must be 100 (the canary takes all the traffic)"
                ),
            );
            ok = false;
        }
        let hold = self.duration(&format!("{key}.hold"), &r.hold, 300);
        let min_requests = self.int(
            &format!("{key}.min_requests"),
            &r.min_requests,
            500,
            1,
            1_000_000_000,
        ) as u64;
        let notify = r
            .notify
            .as_ref()
            .and_then(|n| self.notify(&format!("{key}.notify"), n));
        let on_failure = match r.on_failure.as_ref().map(|o| (o, o.get_ref().as_str())) {
            None | Some((_, "rollback")) => OnFailure::Rollback,
            Some((_, "pause")) => OnFailure::Pause,
            Some((o, other)) => {
                self.error(
                    o,
                    format!("{key}.on_failure: \"{other}\" is not one of rollback, pause"),
                );
                OnFailure::Rollback
            }
        };
        let start = r.start.as_ref().and_then(|s| {
            match humantime::parse_rfc3339_weak(s.get_ref().trim()) {
                Ok(t) => t
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_secs()),
                Err(e) => {
                    self.error(
                        s,
                        format!(
                            "{key}.start: \"{}\" is not an RFC 3339 time like 2026-12-01T18:00:00Z: {e}",
                            s.get_ref()
                        ),
                    );
                    None
                }
            }
        });
        Some(RolloutSpec {
            start,
            id: id.to_owned(),
            canary: canary.clone(),
            baseline: baseline?,
            steps: steps.iter().map(|s| *s.get_ref() as u32).collect(),
            hold,
            min_requests,
            on_failure,
            notify,
        })
        .filter(|_| ok)
    }

    /// `notify = { webhook = "..." }`: an absolute `http://` or `https://`
    /// URL with a host.
    fn notify(&mut self, key: &str, n: &Spanned<RawNotify>) -> Option<NotifySpec> {
        let w = &n.get_ref().webhook;
        let text = w.get_ref();
        let why = match text.parse::<http::Uri>() {
            _ if !text.starts_with("http://") && !text.starts_with("https://") => {
                "the scheme must be http:// or https://".into()
            }
            _ if text
                .split_once("://")
                .is_some_and(|(_, rest)| rest.is_empty() || rest.starts_with('/')) =>
            {
                "a host is required".into()
            }
            Err(e) => e.to_string(),
            Ok(u) if u.host().is_none_or(str::is_empty) => "a host is required".into(),
            Ok(u) => return Some(NotifySpec { webhook: u }),
        };
        self.error(
            w,
            format!(
                "{key}.webhook: \"{}\" is not a webhook URL: {why}",
                w.get_ref()
            ),
        );
        None
    }

    fn host(&mut self, key: &str, h: &Str) -> HostMatch {
        let lower = h.get_ref().to_ascii_lowercase();
        let (suffix, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid {
            self.error(
                h,
                format!(
                    "{key}.host: \"{}\" is not a host name or \"*.suffix\" wildcard",
                    h.get_ref()
                ),
            );
        }
        if suffix {
            HostMatch::Suffix(name.to_owned())
        } else {
            HostMatch::Exact(name.to_owned())
        }
    }

    fn sticky(&mut self, key: &str, s: &Spanned<RawSticky>) -> StickySpec {
        let raw = s.get_ref();
        if raw.cookie.is_none() && raw.header.is_none() {
            self.error(s, format!("{key}.sticky: set `cookie`, `header`, or both"));
        }
        let cookie = raw
            .cookie
            .as_ref()
            .map(|c| self.cookie_name(&format!("{key}.sticky.cookie"), c));
        let header = raw
            .header
            .as_ref()
            .and_then(|h| self.header_name(&format!("{key}.sticky.header"), h));
        let max_age = raw
            .max_age
            .as_ref()
            .map(|_| self.duration(&format!("{key}.sticky.max_age"), &raw.max_age, 0));
        let hash_seed = raw.hash_seed.as_ref().map_or(0, |n| *n.get_ref() as u64);
        let (secret, secret_from) = self.secret(
            &format!("{key}.sticky"),
            s,
            &raw.secret,
            &raw.secret_file,
            &raw.secret_env,
            "secret",
        );
        StickySpec {
            cookie,
            max_age,
            header,
            hash_seed,
            secret: secret.map(String::into_bytes),
            secret_from,
        }
    }

    fn overrides(&mut self, key: &str, o: &Spanned<RawOverride>) -> OverrideSpec {
        let raw = o.get_ref();
        let header = raw
            .header
            .as_ref()
            .and_then(|h| self.header_name(&format!("{key}.override.header"), h));
        let cookie = raw
            .cookie
            .as_ref()
            .map(|c| self.cookie_name(&format!("{key}.override.cookie"), c));
        let (token, token_from) = self.secret(
            &format!("{key}.override"),
            o,
            &raw.token,
            &raw.token_file,
            &raw.token_env,
            "token",
        );
        OverrideSpec {
            header,
            cookie,
            token,
            token_from,
        }
    }

    /// Where a secret given inline, as `<what>_file` or as `<what>_env` comes
    /// from, and its value if inline. Reads nothing: see `secrets.rs`.
    fn secret<T>(
        &mut self,
        key: &str,
        at: &Spanned<T>,
        inline: &Option<Str>,
        file: &Option<Str>,
        env: &Option<Str>,
        what: &str,
    ) -> (Option<String>, Option<SecretRef>) {
        let given = [inline.is_some(), file.is_some(), env.is_some()];
        if given.iter().filter(|g| **g).count() > 1 {
            self.error(
                at,
                format!("{key}: set only one of {what}, {what}_file, {what}_env"),
            );
            return (None, None);
        }
        let (source, from, name) = if let Some(s) = inline {
            if s.get_ref().is_empty() {
                self.error(s, format!("{key}.{what}: must not be empty"));
                return (None, None);
            }
            (SecretSource::Inline, s, what.to_owned())
        } else if let Some(f) = file {
            let path = self.dir.join(f.get_ref());
            (SecretSource::File(path), f, format!("{what}_file"))
        } else if let Some(e) = env {
            (
                SecretSource::Env(e.get_ref().clone()),
                e,
                format!("{what}_env"),
            )
        } else {
            return (None, None);
        };
        let value = inline.as_ref().map(|s| s.get_ref().clone());
        let at = Diagnostic::at(&self.file, self.text, from.span().start, String::new());
        let secret = SecretRef {
            source,
            key: format!("{key}.{name}"),
            at,
        };
        (value, Some(secret))
    }

    fn header_name(&mut self, key: &str, h: &Str) -> Option<HeaderName> {
        match HeaderName::try_from(h.get_ref().as_str()) {
            Ok(n) => Some(n),
            Err(_) => {
                self.error(
                    h,
                    format!("{key}: \"{}\" is not a valid header name", h.get_ref()),
                );
                None
            }
        }
    }

    fn cookie_name(&mut self, key: &str, c: &Str) -> String {
        // RFC 6265 §4.1.1: a cookie name is an RFC 9110 token.
        let ok = !c.get_ref().is_empty() && c.get_ref().bytes().all(is_token_byte);
        if !ok {
            self.error(
                c,
                format!("{key}: \"{}\" is not a valid cookie name", c.get_ref()),
            );
        }
        c.get_ref().clone()
    }
}

/// `routes[1].weights.blue`, without the segments `toml::Spanned` adds.
/// A map key serde cannot name (a `Spanned` key) is read from the text: the
/// `key =` just before the value at `offset`.
fn key_path(path: &serde_path_to_error::Path, unknown: Option<&str>) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } if key.starts_with("$__serde_spanned") => {}
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {
                if let Some(key) = unknown {
                    out.push('.');
                    out.push_str(key);
                }
            }
        }
    }
    if out.is_empty() { ".".into() } else { out }
}

fn key_before(text: &str, offset: usize) -> Option<&str> {
    let before = text.get(..offset)?.trim_end().strip_suffix('=')?.trim_end();
    let start = before
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .map_or(0, |i| i + 1);
    Some(&before[start..]).filter(|k| !k.is_empty())
}

/// Whether one browser may send the same cookies to both host matches.
fn hosts_overlap(a: &HostMatch, b: &HostMatch) -> bool {
    let under = |name: &str, suffix: &str| name == suffix || name.ends_with(&format!(".{suffix}"));
    match (a, b) {
        (HostMatch::Any, _) | (_, HostMatch::Any) => true,
        (HostMatch::Exact(x), HostMatch::Exact(y)) => x == y,
        (HostMatch::Suffix(s), HostMatch::Exact(e))
        | (HostMatch::Exact(e), HostMatch::Suffix(s)) => under(e, s),
        (HostMatch::Suffix(x), HostMatch::Suffix(y)) => under(x, y) || under(y, x),
    }
}

/// The same signing key, as written (sources, not resolved values: this
/// must hold without reading secrets).
fn same_secret(a: &StickySpec, b: Option<&StickySpec>) -> bool {
    let Some(b) = b else { return false };
    let source = |s: &StickySpec| s.secret_from.as_ref().map(|r| r.source.clone());
    source(a) == source(b) && a.secret == b.secret
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses `host:port`, `http://host:port` (port defaults to 80) or
/// `https://host:port` (port defaults to 443).
pub fn parse_endpoint(s: &str) -> Result<EndpointSpec, &'static str> {
    let (scheme, rest) = if let Some(r) = s.strip_prefix("http://") {
        (Scheme::HTTP, r)
    } else if let Some(r) = s.strip_prefix("https://") {
        (Scheme::HTTPS, r)
    } else if s.contains("://") {
        return Err("has an unsupported scheme (use http:// or https://)");
    } else {
        (Scheme::HTTP, s)
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') || rest.contains('@') || rest.is_empty() {
        return Err("is not host:port");
    }
    let authority: Authority = rest.parse().map_err(|_| "is not host:port")?;
    let has_port = authority.port_u16().is_some();
    if !has_port && !s.contains("://") {
        return Err("needs a port (host:port)");
    }
    if authority.port_u16() == Some(0) {
        return Err("has port 0");
    }
    Ok(EndpointSpec { scheme, authority })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> String {
        parse(Path::new("c.toml"), text).unwrap_err().to_string()
    }

    const BASE: &str = "[listen]\nhttp = \"127.0.0.1:0\"\n[backends.blue]\nendpoints = [\"127.0.0.1:1\"]\n[backends.green]\nendpoints = [\"127.0.0.1:2\"]\n";

    #[test]
    fn unknown_backend_points_at_the_key() {
        let text =
            format!("{BASE}[[routes]]\nname = \"app\"\nweights = {{ blue = 1, gren = 2 }}\n");
        let e = errors(&text);
        assert_eq!(
            e,
            "c.toml:9:23: routes[0].weights: backend \"gren\" is not defined (known: blue, green)"
        );
    }

    #[test]
    fn protocol_is_checked_against_the_endpoints() {
        let ok = "[listen]\nhttp = \"127.0.0.1:0\"\n[backends.a]\nendpoints = [\"127.0.0.1:1\"]\nprotocol = \"h2c\"\n[backends.b]\nendpoints = [\"https://x:1\"]\nprotocol = \"auto\"\n";
        let c = parse(Path::new("c.toml"), ok).unwrap();
        assert_eq!(c.backends[0].protocol, Protocol::H2c);
        assert_eq!(c.backends[1].protocol, Protocol::Auto);
        let e = errors(
            "[listen]\nhttp = \"127.0.0.1:0\"\n[backends.a]\nendpoints = [\"127.0.0.1:1\"]\nprotocol = \"h3\"\n",
        );
        assert!(
            e.contains("c.toml:5:12: backends.a.protocol: \"h3\" is not one of"),
            "{e}"
        );
        let e = errors(
            "[listen]\nhttp = \"127.0.0.1:0\"\n[backends.a]\nendpoints = [\"127.0.0.1:1\"]\nprotocol = \"h2\"\n",
        );
        assert!(
            e.contains("c.toml:5:12: backends.a.protocol: \"h2\" negotiates"),
            "{e}"
        );
        let e = errors(
            "[listen]\nhttp = \"127.0.0.1:0\"\n[backends.a]\nendpoints = [\"https://x:1\"]\nprotocol = \"h2c\"\n",
        );
        assert!(
            e.contains("c.toml:5:12: backends.a.protocol: \"h2c\" is HTTP/2 over cleartext"),
            "{e}"
        );
    }

    #[test]
    fn unknown_field_and_bad_duration_and_address() {
        assert!(
            errors(&format!("{BASE}[limits]\nmax_foo = 1\n"))
                .starts_with("c.toml:8:1: limits.max_foo: unknown field `max_foo`")
        );
        assert!(
            errors(&format!("{BASE}[timeouts]\nconnect = \"1 parsec\"\n"))
                .starts_with("c.toml:8:11: timeouts.connect:")
        );
        let e = errors("[listen]\nhttp = \"nope\"\n[backends.b]\nendpoints = [\"x\"]\n");
        assert!(e.contains("c.toml:2:8: listen.http"), "{e}");
        assert!(
            e.contains("c.toml:4:14: backends.b.endpoints[0]: \"x\" needs a port"),
            "{e}"
        );
    }

    #[test]
    fn timeouts_and_stream_limits_have_maximums() {
        let e = errors(&format!(
            "{BASE}[timeouts]\nbody_idle = \"2days\"\ntunnel_idle = \"0s\"\ngraceful_close = \"2h\"\n[limits]\nmax_concurrent_streams = 5000\n"
        ));
        assert!(
            e.contains(
                "c.toml:8:13: timeouts.body_idle: \"2days\" is more than the maximum of 1day"
            ),
            "{e}"
        );
        assert!(
            e.contains("c.toml:9:15: timeouts.tunnel_idle: must be greater than zero"),
            "{e}"
        );
        assert!(e.contains("c.toml:10:18: timeouts.graceful_close:"), "{e}");
        assert!(
            e.contains(
                "c.toml:12:26: limits.max_concurrent_streams: 5000 is out of range 1..=1000"
            ),
            "{e}"
        );
        let ok = parse(
            Path::new("c.toml"),
            &format!("{BASE}[timeouts]\nbody_idle = \"1h\"\n"),
        )
        .unwrap();
        assert_eq!(ok.timeouts.body_idle, Duration::from_secs(3600));
        assert_eq!(ok.timeouts.tunnel_idle, Duration::from_secs(3600));
        assert_eq!(ok.timeouts.graceful_close, Duration::from_secs(5));
    }

    #[test]
    fn weights_need_a_positive_entry_and_unique_names() {
        let text = format!(
            "{BASE}[[routes]]\nname = \"a\"\nweights = {{ blue = 0 }}\n[[routes]]\nname = \"a\"\nweights = {{ blue = 1 }}\n"
        );
        let e = errors(&text);
        assert!(
            e.contains("routes[0].weights: at least one backend needs a positive weight"),
            "{e}"
        );
        assert!(
            e.contains("c.toml:11:8: routes[1].name: duplicate route name \"a\""),
            "{e}"
        );
    }

    const ROLLOUT_ROUTE: &str =
        "[[routes]]\nname = \"app\"\nweights = { blue = 100, green = 0 }\n[routes.rollout]\n";

    #[test]
    fn prometheus_source_and_rollout_start_are_validated_with_locations() {
        let route =
            "[[routes]]\nname = \"app\"\nweights = { blue = 50, green = 50 }\n[routes.analysis]\n";
        let ok = format!(
            "{BASE}{route}source = {{ prometheus = \"http://prom:9090/\", lag = \"5s\" }}\n"
        );
        let c = parse(Path::new("c.toml"), &ok).unwrap();
        let src = c.routes[0].analysis.source.clone().unwrap();
        assert_eq!(
            (src.url.as_str(), src.lag),
            ("http://prom:9090", Duration::from_secs(5))
        );
        let e = errors(&format!(
            "{BASE}{route}source = {{ prometheus = \"ftp://x\" }}\n"
        ));
        assert!(
            e.contains("c.toml:11:25: routes[0].analysis.source.prometheus: \"ftp://x\" must start with http:// or https://"),
            "{e}"
        );
        let e = errors(&format!(
            "{BASE}{route}source = {{ prom = \"http://p\" }}\n"
        ));
        assert!(e.contains("c.toml:11:"), "{e}");
        let start = |v: &str| {
            format!(
                "{BASE}{ROLLOUT_ROUTE}id = \"v2\"\ncanary = \"green\"\nsteps = [10, 100]\nstart = \"{v}\"\n"
            )
        };
        let c = parse(Path::new("c.toml"), &start("2026-12-01T18:00:00Z")).unwrap();
        assert_eq!(
            c.routes[0].rollout.as_ref().unwrap().start,
            Some(1_796_148_000)
        );
        let e = errors(&start("tomorrow"));
        assert!(
            e.contains(
                "c.toml:14:9: routes[0].rollout.start: \"tomorrow\" is not an RFC 3339 time"
            ),
            "{e}"
        );
    }

    #[test]
    fn rollout_is_validated_with_locations() {
        let ok = format!(
            "{BASE}{ROLLOUT_ROUTE}id = \"v2\"\ncanary = \"green\"\nsteps = [1, 10, 50, 100]\nhold = \"2s\"\n"
        );
        let c = parse(Path::new("c.toml"), &ok).unwrap();
        let r = c.routes[0].rollout.as_ref().unwrap();
        assert_eq!(r.baseline, "blue");
        assert_eq!(r.steps, vec![1, 10, 50, 100]);
        assert_eq!(r.min_requests, 500);
        assert_eq!(r.on_failure, OnFailure::Rollback);
        assert_eq!(r.hold, Duration::from_secs(2));
        assert_eq!(c.rollout_state_dir, Path::new(".cutover-state"));

        let e = errors(&format!(
            "{BASE}{ROLLOUT_ROUTE}id = \"v2\"\ncanary = \"gren\"\nsteps = [0, 10, 10, 50]\non_failure = \"panic\"\n"
        ));
        assert!(
            e.contains("c.toml:12:10: routes[0].rollout.canary: \"gren\" is not a backend"),
            "{e}"
        );
        assert!(
            e.contains("c.toml:13:10: routes[0].rollout.steps[0]: 0 is out of range 1..=100"),
            "{e}"
        );
        assert!(
            e.contains("c.toml:13:17: routes[0].rollout.steps[2]: 10 must be greater"),
            "{e}"
        );
        assert!(
            e.contains("c.toml:13:21: routes[0].rollout.steps: the last step must be 100"),
            "{e}"
        );
        assert!(
            e.contains("c.toml:14:14: routes[0].rollout.on_failure: \"panic\""),
            "{e}"
        );

        let e = errors(&format!(
            "{BASE}[[routes]]\nname = \"app\"\nweights = {{ blue = 0, green = 10 }}\n[routes.rollout]\nid = \"v2\"\ncanary = \"green\"\nsteps = [100]\n"
        ));
        assert!(
            e.contains("c.toml:10:1: routes[0].rollout: the route needs a baseline"),
            "{e}"
        );
        let e = errors(&format!(
            "{BASE}{ROLLOUT_ROUTE}id = \"v2\"\ncanary = \"green\"\nsteps = [100]\nspeed = 1\n"
        ));
        assert!(e.contains("routes[0].rollout.speed: unknown field"), "{e}");
    }

    #[test]
    fn rollout_notify_is_global_or_per_route_and_validated() {
        let route = format!("{ROLLOUT_ROUTE}id = \"v2\"\ncanary = \"green\"\nsteps = [100]\n");
        let global = "[rollout]\nnotify = { webhook = \"http://hooks:9000/a?b=1\" }\n";
        let c = parse(
            Path::new("/etc/c/c.toml"),
            &format!("{BASE}{global}{route}"),
        )
        .unwrap();
        let n = c.routes[0]
            .rollout
            .as_ref()
            .unwrap()
            .notify
            .as_ref()
            .unwrap();
        assert_eq!(n.webhook, "http://hooks:9000/a?b=1");
        let own = "notify = { webhook = \"https://example.com/b\" }\n";
        let c = parse(
            Path::new("/etc/c/c.toml"),
            &format!("{BASE}{global}{route}{own}"),
        )
        .unwrap();
        let n = c.routes[0]
            .rollout
            .as_ref()
            .unwrap()
            .notify
            .as_ref()
            .unwrap();
        assert_eq!(n.webhook, "https://example.com/b");
        let c = parse(Path::new("/etc/c/c.toml"), &format!("{BASE}{route}")).unwrap();
        assert_eq!(c.routes[0].rollout.as_ref().unwrap().notify, None);

        let e = errors(&format!(
            "{BASE}[rollout]\nnotify = {{ webhook = \"hooks/a\" }}\n{route}notify = {{ webhook = \"ftp://x/\" }}\n"
        ));
        assert!(
            e.contains("c.toml:8:22: rollout.notify.webhook: \"hooks/a\" is not a webhook URL: the scheme must be http:// or https://"),
            "{e}"
        );
        assert!(
            e.contains("c.toml:16:22: routes[0].rollout.notify.webhook: \"ftp://x/\""),
            "{e}"
        );
        let e = errors(&format!(
            "{BASE}{route}notify = {{ url = \"http://x/\" }}\n"
        ));
        assert!(
            e.contains("routes[0].rollout.notify.url: unknown field"),
            "{e}"
        );
    }

    #[test]
    fn admin_token_and_state_dir() {
        let c = parse(
            Path::new("/etc/c/c.toml"),
            &format!("{BASE}[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"s3cret\"\n[rollout]\nstate_dir = \"/var/lib/cutover\"\n"),
        )
        .unwrap();
        assert_eq!(c.admin_token.as_deref(), Some("s3cret"));
        assert_eq!(c.rollout_state_dir, Path::new("/var/lib/cutover"));
        let e = errors(&format!(
            "{BASE}[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"\"\n"
        ));
        assert!(e.contains("admin.token: must not be empty"), "{e}");
    }

    #[test]
    fn access_log() {
        let c = parse(
            Path::new("/etc/c/c.toml"),
            &format!(
                "{BASE}[access_log]\npath = \"access.log\"\nformat = \"text\"\nsample = 0.25\n"
            ),
        )
        .unwrap();
        let a = c.access_log.unwrap();
        assert_eq!(a.target, LogTarget::File("/etc/c/access.log".into()));
        assert_eq!(
            (a.format, a.sample, a.log_query),
            (AccessLogFormat::Text, 0.25, false)
        );
        let c = parse(Path::new("c.toml"), BASE).unwrap();
        assert!(c.access_log.is_none());
        let e = errors(&format!(
            "{BASE}[access_log]\npath = \"stdout\"\nformat = \"xml\"\nsample = 2.0\n"
        ));
        assert!(e.contains("access_log.format: \"xml\""), "{e}");
        assert!(e.contains(":10:10: access_log.sample"), "{e}");
    }

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            parse_endpoint("127.0.0.1:80").unwrap().to_string(),
            "http://127.0.0.1:80"
        );
        assert_eq!(
            parse_endpoint("https://app:8443").unwrap().to_string(),
            "https://app:8443"
        );
        assert_eq!(
            parse_endpoint("http://app").unwrap().authority.as_str(),
            "app"
        );
        assert!(parse_endpoint("ftp://x:1").is_err());
        assert!(parse_endpoint("x:1/path").is_err());
    }
}
