//! The A/B evidence read back from Prometheus, summed over every replica
//! that exports it ([`super::exported`]), through the HTTP API's instant
//! queries (`GET /api/v1/query`). Used by the proxy when a route has
//! `analysis.source = { prometheus = "URL" }` and by `cutover report
//! --prometheus`: both turn the sums into [`Counts`] and judge them with the
//! same [`super::window::judge_counts`] as the local evidence.
//!
//! Counts over `[from, at]` are `increase(...[at - from])` evaluated at
//! `at`: Prometheus extrapolates to the edges of the range, so they are
//! estimates (rounded to whole requests), off by up to a scrape interval's
//! worth of traffic at each edge. Every query has a deadline and a bounded
//! answer; nothing here ever runs on the request path.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::evidence::Counts;
use super::exported::{DURATION, NEW_USERS, REQUESTS};

/// A whole query (connect, request, answer) must end within this.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer read from Prometheus.
const MAX_ANSWER: usize = 4 << 20;

/// What Prometheus holds for one route over one range.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fetched {
    /// Backend names as Prometheus has them, sorted.
    pub backends: Vec<String>,
    /// Aligned with `backends`.
    pub counts: Vec<Counts>,
    /// The finite bucket edges (`le`) found, ascending.
    pub edges: Vec<f64>,
    /// How many replicas export the route's evidence.
    pub replicas: u64,
    /// `cutover_backend_weight` per backend (largest over replicas).
    pub weights: BTreeMap<String, u32>,
}

impl Fetched {
    /// The counts of `backends` (in that order) over the bucket `edges`,
    /// zero for a backend Prometheus has nothing of; an error when the
    /// exported buckets are not `edges` (replicas with other
    /// `metrics.buckets`).
    pub fn aligned(&self, backends: &[&str], edges: &[f64]) -> Result<Vec<Counts>, String> {
        if !self.edges.is_empty() && self.edges != edges {
            return Err(format!(
                "the latency buckets in prometheus ({:?}) are not metrics.buckets ({edges:?})",
                self.edges
            ));
        }
        Ok(backends
            .iter()
            .map(|b| {
                let mut c = self
                    .backends
                    .iter()
                    .position(|x| x == b)
                    .map_or_else(Counts::default, |i| self.counts[i].clone());
                c.buckets.resize(edges.len() + 1, 0);
                c
            })
            .collect())
    }
}

/// How often the proxy asks Prometheus.
pub const POLL: Duration = Duration::from_secs(1);

/// A window of evidence a rollout wants from Prometheus.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    pub route: String,
    /// The step it is for (its start, Unix seconds).
    pub step_started_unix: f64,
    /// Where its evidence starts (Unix seconds).
    pub from: f64,
    /// `Some((k, at))`: the step's `k`-th boundary, `at`; `None`: up to now.
    pub boundary: Option<(u64, f64)>,
}

/// The rollouts' side of the poller: which windows they want judged, and
/// where the answers go. Both calls are quick and never wait on I/O.
pub trait StepEvidence: Send + Sync {
    fn wanted(&self, now_unix: f64) -> Vec<Wanted>;
    fn deliver(&self, wanted: &Wanted, result: Result<Fetched, String>);
}

pub fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Every [`POLL`], for each route with `analysis.source`, fetches its
/// sliding window into `windows` and the windows its rollout wants into
/// `steps`: concurrently, each bounded by [`TIMEOUT`], on its own task, so
/// a slow Prometheus delays nothing but the next poll.
pub async fn run(
    windows: Arc<super::window::Windows>,
    shared: Arc<crate::proxy::Shared>,
    steps: Arc<dyn StepEvidence>,
) {
    let mut every = tokio::time::interval(POLL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let table = shared.table.load_full();
        let now = now_unix();
        let mut set = tokio::task::JoinSet::new();
        // Only a rollout's step asks by name (a few); each route's own
        // poll reads its source directly: looking every route up by name
        // was quadratic (10,000 routes kept a core 14% busy while idle).
        let url_of = |name: &str| {
            table
                .routes
                .iter()
                .find(|r| &*r.name == name)
                .and_then(|r| r.analysis.source.as_ref())
                .map(|s| s.url.clone())
        };
        for route in table.routes.iter().filter(|r| r.backends.len() >= 2) {
            let Some(url) = route.analysis.source.as_ref().map(|s| s.url.clone()) else {
                continue;
            };
            let (name, window, windows) = (
                route.name.to_string(),
                route.analysis.window,
                windows.clone(),
            );
            set.spawn(async move {
                let r = fetch(&url, &name, window, now).await;
                windows.set_polled(name, r.map_err(|e| format!("{e:#}")));
            });
        }
        for w in steps.wanted(now) {
            let Some(url) = url_of(&w.route) else {
                continue;
            };
            let steps = steps.clone();
            set.spawn(async move {
                let at = w.boundary.map_or(now, |b| b.1);
                let r = if at > w.from {
                    fetch(&url, &w.route, Duration::from_secs_f64(at - w.from), at)
                        .await
                        .map_err(|e| format!("{e:#}"))
                } else {
                    Ok(Fetched::default())
                };
                steps.deliver(&w, r);
            });
        }
        while set.join_next().await.is_some() {}
    }
}

/// A range as PromQL writes it: whole milliseconds, at least 1 ms.
fn range(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

/// A label value inside a PromQL string literal.
fn quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The evidence of `route` over the `window` that ends at `at` (Unix
/// seconds), summed over replicas.
pub async fn fetch(base: &str, route: &str, window: Duration, at: f64) -> anyhow::Result<Fetched> {
    let r = quote(route);
    let w = range(window);
    let by_class = format!("sum by (backend, class) (increase({REQUESTS}{{route=\"{r}\"}}[{w}]))");
    let by_le = format!("sum by (backend, le) (increase({DURATION}_bucket{{route=\"{r}\"}}[{w}]))");
    let users = format!("sum by (backend) (increase({NEW_USERS}{{route=\"{r}\"}}[{w}]))");
    // One `ok` series per replica and backend: the largest count over
    // backends is the number of replicas.
    let replicas = format!("max(count by (backend) ({REQUESTS}{{route=\"{r}\",class=\"ok\"}}))");
    let weights = format!("max by (backend) (cutover_backend_weight{{route=\"{r}\"}})");
    let (by_class, by_le, users, replicas, weights) = tokio::try_join!(
        query(base, &by_class, at),
        query(base, &by_le, at),
        query(base, &users, at),
        query(base, &replicas, at),
        query(base, &weights, at),
    )?;
    let mut out = Fetched::default();
    let index = |out: &mut Fetched, backend: &str| -> usize {
        match out.backends.iter().position(|b| b == backend) {
            Some(i) => i,
            None => {
                out.backends.push(backend.to_owned());
                out.counts.push(Counts::default());
                out.backends.len() - 1
            }
        }
    };
    for s in &by_class {
        let i = index(&mut out, label(s, "backend"));
        let n = whole(s.value);
        match label(s, "class") {
            "error" => {
                out.counts[i].errors += n;
                out.counts[i].requests += n;
            }
            _ => out.counts[i].requests += n,
        }
    }
    for s in &users {
        let i = index(&mut out, label(s, "backend"));
        out.counts[i].assigned += whole(s.value);
    }
    // Cumulative `le` buckets into the plain ones of `Counts`.
    let mut edges: Vec<f64> = by_le
        .iter()
        .filter_map(|s| label(s, "le").parse::<f64>().ok())
        .filter(|e| e.is_finite())
        .collect();
    edges.sort_by(f64::total_cmp);
    edges.dedup();
    let mut cumulative: Vec<Vec<f64>> = Vec::new();
    for s in &by_le {
        let i = index(&mut out, label(s, "backend"));
        if cumulative.len() <= i {
            cumulative.resize(i + 1, vec![0.0; edges.len() + 1]);
        }
        let le = label(s, "le");
        let slot = if le == "+Inf" {
            Some(edges.len())
        } else {
            le.parse::<f64>()
                .ok()
                .and_then(|e| edges.iter().position(|x| *x == e))
        };
        if let Some(k) = slot {
            cumulative[i][k] += s.value;
        }
    }
    cumulative.resize(out.backends.len(), vec![0.0; edges.len() + 1]);
    for (c, cum) in out.counts.iter_mut().zip(&cumulative) {
        let cum: Vec<u64> = cum.iter().map(|v| whole(*v)).collect();
        c.buckets = cum
            .iter()
            .enumerate()
            .map(|(k, v)| v.saturating_sub(if k == 0 { 0 } else { cum[k - 1] }))
            .collect();
    }
    out.edges = edges;
    out.replicas = replicas.first().map_or(0, |s| whole(s.value));
    out.weights = weights
        .iter()
        .map(|s| (label(s, "backend").to_owned(), whole(s.value) as u32))
        .collect();
    // Sorted by name, like a route's backends.
    let mut order: Vec<usize> = (0..out.backends.len()).collect();
    order.sort_by(|a, b| out.backends[*a].cmp(&out.backends[*b]));
    out.backends = order.iter().map(|i| out.backends[*i].clone()).collect();
    out.counts = order.iter().map(|i| out.counts[*i].clone()).collect();
    Ok(out)
}

/// A count from an `increase`: rounded, never negative.
fn whole(v: f64) -> u64 {
    if v.is_finite() && v > 0.0 {
        v.round() as u64
    } else {
        0
    }
}

/// One sample of an instant vector.
struct Sample {
    metric: serde_json::Map<String, Value>,
    value: f64,
}

fn label<'a>(s: &'a Sample, name: &str) -> &'a str {
    s.metric.get(name).and_then(Value::as_str).unwrap_or("")
}

/// `GET base/api/v1/query?query=q&time=at`: the instant vector.
async fn query(base: &str, q: &str, at: f64) -> anyhow::Result<Vec<Sample>> {
    let path = format!("/api/v1/query?query={}&time={at:.3}", encode(q));
    let body = get(base, &path).await?;
    let doc: Value = serde_json::from_slice(&body).context("prometheus answered no JSON")?;
    if doc["status"] != "success" {
        bail!(
            "prometheus: {}: {}",
            doc["errorType"].as_str().unwrap_or("error"),
            doc["error"].as_str().unwrap_or("")
        );
    }
    let result = doc["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Ok(result
        .into_iter()
        .filter_map(|s| {
            let metric = s["metric"].as_object()?.clone();
            let value = s["value"][1].as_str()?.parse::<f64>().ok()?;
            Some(Sample { metric, value })
        })
        .collect())
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Checks a `source.prometheus` URL: `http://` or `https://` with a host.
pub fn check_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("\"{url}\" is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("\"{url}\" must start with http:// or https://")),
    }
    if uri.authority().is_none_or(|a| a.host().is_empty()) {
        return Err(format!("\"{url}\" has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("\"{url}\" must not have a query string"));
    }
    Ok(())
}

/// One GET of `path` under `base`, bounded by [`TIMEOUT`] and
/// [`MAX_ANSWER`]; the body of a 2xx (or of Prometheus' 4xx JSON errors).
async fn get(base: &str, path: &str) -> anyhow::Result<Bytes> {
    tokio::time::timeout(TIMEOUT, get_unbounded(base, path))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {TIMEOUT:?}"))?
}

async fn get_unbounded(base: &str, path: &str) -> anyhow::Result<Bytes> {
    let uri: http::Uri = base.parse().context("not a URL")?;
    let https = uri.scheme_str() == Some("https");
    let authority = uri.authority().context("no host")?.clone();
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let prefix = uri.path().trim_end_matches('/');
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .with_context(|| format!("cannot connect to {authority}"))?;
    let req = http::Request::get(format!("{prefix}{path}"))
        .header("host", authority.as_str())
        .header("accept", "application/json")
        .body(Full::new(Bytes::new()))?;
    let resp = if https {
        let name = rustls_pki_types::ServerName::try_from(host.to_owned())?;
        let tls = tokio_rustls::TlsConnector::from(tls_config().await?)
            .connect(name, stream)
            .await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        sender.send_request(req).await?
    } else {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        sender.send_request(req).await?
    };
    let status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?
        .to_bytes();
    // The API answers errors (bad query) as 4xx JSON with a message.
    if !status.is_success() && !(400..500).contains(&status.as_u16()) {
        bail!("answered {status}");
    }
    Ok(body)
}

/// The client TLS config for `https://` Prometheus URLs (the system's
/// roots), built once, on a blocking thread: it reads the roots from disk.
async fn tls_config() -> anyhow::Result<Arc<rustls::ClientConfig>> {
    static TLS: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    if let Some(c) = TLS.get() {
        return Ok(c.clone());
    }
    let c = tokio::task::spawn_blocking(|| -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let mut config = (*crate::tls::client_config(&Default::default())?).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    })
    .await??;
    Ok(TLS.get_or_init(|| c).clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_queries() {
        assert!(check_url("http://prometheus:9090").is_ok());
        assert!(check_url("https://p.example/prom/").is_ok());
        assert!(check_url("ftp://p:1").is_err());
        assert!(check_url("prometheus:9090").is_err());
        assert!(check_url("http://p:1/?x=1").is_err());
        assert_eq!(encode("a b{c=\"d\"}"), "a%20b%7Bc%3D%22d%22%7D");
        assert_eq!(range(Duration::from_secs(600)), "600000ms");
        assert_eq!(quote(r#"a"b\"#), r#"a\"b\\"#);
        assert_eq!((whole(2.49), whole(-1.0), whole(f64::NAN)), (2, 0, 0));
    }
}
