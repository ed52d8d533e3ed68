//! Turns a [`RawConfig`] into a [`Config`], collecting every problem with its
//! location instead of stopping at the first. A pure function of the text:
//! secrets are resolved later (`config::secrets`). This file holds the
//! server-wide sections; the rest is split by section: `backends`,
//! `routes`, `release` (analysis and rollout) and `values` (the checks
//! every section uses).

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

mod backends;
mod grpc;
mod release;
mod routes;
mod shadow;
mod values;

pub use backends::parse_endpoint;
use values::valid_name;

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
        let upgrade_socket = raw.server.upgrade_socket.as_ref().map(|p| {
            let path = self.dir.join(p.get_ref());
            // sun_path holds 108 bytes; the new process binds `PATH.PID.tmp`.
            if p.get_ref().is_empty() || path.as_os_str().len() > crate::upgrade::MAX_PATH {
                let max = crate::upgrade::MAX_PATH;
                self.error(p, format!("server.upgrade_socket: must be a path of 1 to {max} bytes (a Unix socket path)"));
            }
            path
        });
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
        let grpc_errors = self.grpc_error_codes(&raw.grpc);
        let backends: Vec<BackendSpec> = raw
            .backends
            .get_ref()
            .iter()
            .map(|(name, b)| BackendSpec {
                grpc_errors,
                ..self.backend(name, b)
            })
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
            upgrade_socket,
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
