//! Rollout notifications: one JSON event per transition, POSTed to the
//! route's webhook (`notify = { webhook = "..." }`, README "Rollout
//! notifications"), with a Slack-compatible `text`.
//!
//! Nothing here can hold up a rollout or a request: a transition stages its
//! event ([`Outbox::stage`]), the controller flushes the staged events into a
//! bounded queue once the transition's weights are in force
//! ([`Outbox::flush`], never waiting: a full queue drops and counts), and a
//! task on the control runtime delivers them ([`deliver`]): one worker per
//! webhook, so a dead webhook delays only its own events, in order; each
//! attempt bounded by [`ATTEMPT_TIMEOUT`], retried after [`BACKOFF`] on
//! connection errors, timeouts and 5xx, never on 4xx.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri, header};
use http_body_util::Full;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use prometheus::IntCounterVec;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::machine::{Phase, Rollout};
use crate::analysis::window::Judged;
use crate::config::{RolloutSpec, UpstreamTls};

/// Events waiting for delivery, over all webhooks; past it, dropped.
pub const QUEUE: usize = 256;
/// Events waiting for one webhook; past it, dropped.
pub const QUEUE_PER_WEBHOOK: usize = 64;
/// One attempt (connect, TLS, request, response head).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// The waits before the 2nd, 3rd and 4th (last) attempts.
pub const BACKOFF: [Duration; 3] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];

/// The evidence of one side of the comparison, as the event shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Side {
    pub backend: String,
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    /// Point estimates, e.g. `{"p50": 0.012, "p99": 0.045}`; absent
    /// before the first request.
    pub latency_seconds: serde_json::Map<String, Value>,
}

/// What a step was judged on: the canary against its baseline since the
/// step started.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Evidence {
    pub window_seconds: f64,
    pub canary: Side,
    pub baseline: Side,
    /// The verdict's sentences, the deciding ones first.
    pub reasons: Vec<String>,
}

impl Evidence {
    /// The evidence of comparison `j`, `window_seconds` long.
    pub fn of(j: &Judged, baseline: &str, window_seconds: f64) -> Evidence {
        let rate = |e: u64, n: u64| if n == 0 { 0.0 } else { e as f64 / n as f64 };
        let side = |backend: &str, c: &crate::analysis::evidence::Counts, green: bool| Side {
            backend: backend.to_owned(),
            requests: c.requests,
            errors: c.errors,
            error_rate: rate(c.errors, c.requests),
            latency_seconds: j
                .comparison
                .latency
                .quantiles
                .iter()
                .filter_map(|p| {
                    let b = if green { p.green } else { p.blue };
                    b.estimate.is_finite().then(|| {
                        (
                            format!("p{}", crate::analysis::verdict::qname(p.q)),
                            json!(b.estimate),
                        )
                    })
                })
                .collect(),
        };
        Evidence {
            window_seconds,
            canary: side(&j.backend, &j.green, true),
            baseline: side(baseline, &j.blue, false),
            reasons: j.comparison.reasons.clone(),
        }
    }
}

/// One event on its way to one webhook.
pub struct Job {
    route: String,
    webhook: Uri,
    body: Bytes,
    counter: IntCounterVec,
}

/// Staged events and the queue to the delivery task.
pub struct Outbox {
    staged: Mutex<Vec<Job>>,
    tx: mpsc::Sender<Job>,
    rx: Mutex<Option<mpsc::Receiver<Job>>>,
}

impl Default for Outbox {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Outbox {
            staged: Mutex::default(),
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }
}

impl Outbox {
    /// Keeps the event of `r`'s last transition for [`Outbox::flush`], when
    /// its plan has a webhook.
    pub fn stage(
        &self,
        route: &str,
        plan: &RolloutSpec,
        r: &Rollout,
        evidence: Option<&Evidence>,
        counter: &IntCounterVec,
    ) {
        let Some(n) = &plan.notify else { return };
        let body = event(route, plan, r, evidence, now_unix()).to_string();
        lock(&self.staged).push(Job {
            route: route.to_owned(),
            webhook: n.webhook.clone(),
            body: Bytes::from(body),
            counter: counter.clone(),
        });
    }

    /// Queues the staged events for delivery, without waiting: an event
    /// that finds the queue full is dropped and counted.
    pub fn flush(&self) {
        let staged = std::mem::take(&mut *lock(&self.staged));
        for job in staged {
            if let Err(e) = self.tx.try_send(job) {
                let job = e.into_inner();
                dropped(&job, "the notification queue is full");
            }
        }
    }

    /// The queue's receiving end, for [`deliver`]; once.
    pub fn receiver(&self) -> Option<mpsc::Receiver<Job>> {
        lock(&self.rx).take()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn dropped(job: &Job, why: &str) {
    job.counter
        .with_label_values(&[&job.route, "dropped"])
        .inc();
    tracing::warn!(route = %job.route, webhook = %redacted(&job.webhook), "rollout notification dropped: {why}");
}

/// The webhook without its path and query, which often hold its secret
/// (Slack's do): what logs show.
fn redacted(u: &Uri) -> String {
    format!(
        "{}://{}",
        u.scheme_str().unwrap_or("http"),
        u.authority().map_or("", |a| a.as_str())
    )
}

/// The event of `r`'s last transition. The keys are a contract (README,
/// "Rollout notifications").
pub fn event(
    route: &str,
    plan: &RolloutSpec,
    r: &Rollout,
    evidence: Option<&Evidence>,
    now_unix: f64,
) -> Value {
    let from = r
        .history
        .len()
        .checked_sub(2)
        .and_then(|i| r.history.get(i))
        .map(|e| e.to.as_str());
    let at = std::time::UNIX_EPOCH + Duration::from_secs_f64(now_unix.max(0.0));
    json!({
        "route": route,
        "id": r.id,
        "from": from,
        "to": r.phase.as_str(),
        "step": r.step,
        "steps": plan.steps,
        "canary": plan.canary,
        "baseline": plan.baseline,
        "canary_weight": r.canary_weight,
        "reason": r.reason,
        "evidence": evidence,
        "timestamp": humantime::format_rfc3339_millis(at).to_string(),
        "timestamp_unix": now_unix,
        "text": text(route, plan, r, from, evidence),
    })
}

/// One sentence a person reads in a chat channel.
fn text(
    route: &str,
    plan: &RolloutSpec,
    r: &Rollout,
    from: Option<&str>,
    evidence: Option<&Evidence>,
) -> String {
    let n = plan.steps.len();
    let at_step = |i: usize| {
        format!(
            "step {} of {n} ({}%)",
            i + 1,
            plan.steps.get(i).copied().unwrap_or(100)
        )
    };
    let what = match (r.phase, from) {
        (Phase::Progressing, None) => format!("started at {}", at_step(r.step)),
        (Phase::Progressing, Some("paused")) => format!("resumed at {}", at_step(r.step)),
        (Phase::Progressing, _) => format!("moved to {}", at_step(r.step)),
        (Phase::Paused, _) => format!("paused at {}", at_step(r.step)),
        (Phase::Promoted, _) => format!("promoted: {} takes 100%", plan.canary),
        (Phase::RolledBack, _) => format!(
            "rolled back at {}: {} is at 0%, {} takes 100%",
            at_step(r.step),
            plan.canary,
            plan.baseline
        ),
    };
    let mut s = format!("cutover: route {route} rollout {} {what}", r.id);
    // The deciding sentence of the reason comes first.
    if let Some(first) = r.reason.split("; ").next().filter(|f| !f.is_empty()) {
        s.push_str(": ");
        s.push_str(first);
    }
    if let Some(e) = evidence.filter(|e| e.canary.requests + e.baseline.requests > 0) {
        s.push_str(&format!(
            " ({} requests on {}, {} on {}, over {:.0}s)",
            e.canary.requests,
            e.canary.backend,
            e.baseline.requests,
            e.baseline.backend,
            e.window_seconds
        ));
    }
    s
}

/// Delivers the queued events until the queue closes: one worker per
/// webhook, each in order.
pub async fn deliver(mut rx: mpsc::Receiver<Job>) {
    let mut workers: HashMap<Uri, mpsc::Sender<Job>> = HashMap::new();
    while let Some(job) = rx.recv().await {
        let tx = workers.entry(job.webhook.clone()).or_insert_with(|| {
            let (tx, mut rx) = mpsc::channel::<Job>(QUEUE_PER_WEBHOOK);
            tokio::spawn(async move {
                while let Some(job) = rx.recv().await {
                    send(&job).await;
                }
            });
            tx
        });
        if let Err(e) = tx.try_send(job) {
            dropped(&e.into_inner(), "this webhook's queue is full");
        }
    }
}

/// What one attempt got.
enum Attempt {
    Done,
    /// Retrying cannot help (4xx, 3xx).
    Refused(String),
    Retry(String),
}

/// Delivers `job` with its retries; counts and, on failure, logs once.
async fn send(job: &Job) {
    let mut tries = 0;
    let why = loop {
        tries += 1;
        let outcome =
            match tokio::time::timeout(ATTEMPT_TIMEOUT, post(&job.webhook, &job.body)).await {
                Err(_) => Attempt::Retry(format!("no answer within {ATTEMPT_TIMEOUT:?}")),
                Ok(o) => o,
            };
        match outcome {
            Attempt::Done => {
                job.counter.with_label_values(&[&job.route, "sent"]).inc();
                return;
            }
            Attempt::Refused(why) => break why,
            Attempt::Retry(why) => match BACKOFF.get(tries - 1) {
                Some(wait) => tokio::time::sleep(*wait).await,
                None => break why,
            },
        }
    };
    job.counter.with_label_values(&[&job.route, "failed"]).inc();
    tracing::warn!(route = %job.route, webhook = %redacted(&job.webhook), attempts = tries, error = %why, "rollout notification failed");
}

/// One POST of `body` to `url`.
async fn post(url: &Uri, body: &Bytes) -> Attempt {
    let (Some(host), Some(authority)) = (url.host(), url.authority()) else {
        return Attempt::Refused("the webhook has no host".into());
    };
    let https = url.scheme_str() == Some("https");
    let host = host.trim_matches(['[', ']']);
    let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = match TcpStream::connect((host, port)).await {
        Ok(t) => t,
        Err(e) => return Attempt::Retry(format!("connect failed: {e}")),
    };
    let _ = tcp.set_nodelay(true);
    let io = if https {
        let Some(config) = tls() else {
            return Attempt::Refused("no TLS client config".into());
        };
        let Ok(name) = rustls_pki_types::ServerName::try_from(host.to_owned()) else {
            return Attempt::Refused(format!("{host} is not a TLS server name"));
        };
        match tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
        {
            Ok(s) => tokio_util::either::Either::Right(s),
            Err(e) => return Attempt::Retry(format!("TLS handshake failed: {e}")),
        }
    } else {
        tokio_util::either::Either::Left(tcp)
    };
    let (mut sender, conn) = match http1::handshake(TokioIo::new(io)).await {
        Ok(x) => x,
        Err(e) => return Attempt::Retry(format!("HTTP handshake failed: {e}")),
    };
    tokio::spawn(async move {
        // The attempt's own timeout ends the exchange; this ends a server
        // that keeps the connection open after it.
        let _ = tokio::time::timeout(ATTEMPT_TIMEOUT, conn).await;
    });
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    let request = Request::post(path)
        .header(header::HOST, authority.as_str())
        .header(header::CONTENT_TYPE, "application/json")
        .header(
            header::USER_AGENT,
            concat!("cutover/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(body.clone()));
    let Ok(request) = request else {
        return Attempt::Refused("the webhook URL does not make a request".into());
    };
    match sender.send_request(request).await {
        Ok(r) if r.status().is_success() => Attempt::Done,
        Ok(r) if r.status().is_server_error() => Attempt::Retry(format!("HTTP {}", r.status())),
        Ok(r) => Attempt::Refused(format!("HTTP {}", r.status())),
        Err(e) => Attempt::Retry(format!("request failed: {e}")),
    }
}

/// The client config for `https://` webhooks: the system's roots, built on
/// first use.
fn tls() -> Option<Arc<rustls::ClientConfig>> {
    static CONFIG: OnceLock<Option<Arc<rustls::ClientConfig>>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            crate::tls::client_config(&UpstreamTls::default())
                .map_err(|e| tracing::error!(error = %e, "no TLS client config for webhooks"))
                .ok()
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{NotifySpec, OnFailure};

    fn plan() -> RolloutSpec {
        RolloutSpec {
            id: "v2.0".into(),
            canary: "green".into(),
            baseline: "blue".into(),
            steps: vec![1, 10, 50, 100],
            hold: Duration::from_secs(60),
            min_requests: 500,
            on_failure: OnFailure::Rollback,
            start: None,
            notify: Some(NotifySpec {
                webhook: "http://127.0.0.1:1/hook".parse().unwrap(),
            }),
        }
    }

    #[test]
    fn a_rollback_event_names_both_states_and_reads_as_a_sentence() {
        let plan = plan();
        let file = [("blue".into(), 100), ("green".into(), 0)];
        let mut r = Rollout::start(&plan, &file, 100.0);
        let e = event("app", &plan, &r, None, 100.0);
        assert_eq!(e["from"], Value::Null);
        assert_eq!(e["to"], "progressing");
        assert_eq!(
            e["text"],
            "cutover: route app rollout v2.0 started at step 1 of 4 (1%): rollout started"
        );
        r.command(&plan, super::super::machine::Command::Abort, 101.0)
            .unwrap();
        let ev = Evidence {
            window_seconds: 12.0,
            canary: Side {
                backend: "green".into(),
                requests: 80,
                ..Side::default()
            },
            baseline: Side {
                backend: "blue".into(),
                requests: 7900,
                ..Side::default()
            },
            reasons: vec![],
        };
        let e = event("app", &plan, &r, Some(&ev), 101.0);
        assert_eq!(e["from"], "progressing");
        assert_eq!(e["to"], "rolled_back");
        assert_eq!(e["canary_weight"], 0);
        assert_eq!(e["evidence"]["baseline"]["requests"], 7900);
        assert_eq!(e["timestamp"], "1970-01-01T00:01:41.000Z");
        assert_eq!(
            e["text"],
            "cutover: route app rollout v2.0 rolled back at step 1 of 4 (1%): green is at 0%, blue takes 100%: aborted by a person (80 requests on green, 7900 on blue, over 12s)"
        );
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let metrics = crate::metrics::Metrics::new(&[0.1]);
        let outbox = Outbox::default();
        let plan = plan();
        let r = Rollout::start(&plan, &[("blue".into(), 100), ("green".into(), 0)], 1.0);
        for _ in 0..QUEUE + 10 {
            outbox.stage("app", &plan, &r, None, &metrics.notifications);
        }
        // No delivery task runs: the queue fills and the rest is dropped.
        let started = std::time::Instant::now();
        outbox.flush();
        assert!(started.elapsed() < Duration::from_secs(1));
        let dropped = metrics.notifications.with_label_values(&["app", "dropped"]);
        assert_eq!(dropped.get(), 10);
        let mut rx = outbox.receiver().unwrap();
        let mut queued = 0;
        while rx.try_recv().is_ok() {
            queued += 1;
        }
        assert_eq!(queued, QUEUE);
        // A plan without a webhook stages nothing.
        let quiet = RolloutSpec {
            notify: None,
            ..plan
        };
        outbox.stage("app", &quiet, &r, None, &metrics.notifications);
        assert!(lock(&outbox.staged).is_empty());
    }

    #[test]
    fn webhooks_are_logged_without_their_secret_path() {
        let u: Uri = "https://hooks.slack.com/services/T0/B0/SECRET"
            .parse()
            .unwrap();
        assert_eq!(redacted(&u), "https://hooks.slack.com");
    }
}
