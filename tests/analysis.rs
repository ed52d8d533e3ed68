//! A/B verdicts through the real binary: real backends that are slower or
//! fail a share of requests, real load, `/admin/analysis`, the gate
//! endpoints, the metrics and `cutover check` on the `analysis` table.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

use common::Proxy;

/// How long a verdict may take to show (a few thousand requests at a few
/// hundred per second on a busy machine).
const PATIENCE: Duration = Duration::from_secs(120);

/// A backend that answers after `delay_ms` and sends 500 for every
/// `fail_every`-th request (0: never).
async fn backend(delay_ms: u64, fail_every: u64) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let n = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let n = n.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<hyper::body::Incoming>| {
                    let i = n.fetch_add(1, Ordering::Relaxed) + 1;
                    async move {
                        if delay_ms > 0 {
                            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                        }
                        let mut r = Response::new(Full::new(Bytes::from_static(b"ok")));
                        if fail_every > 0 && i.is_multiple_of(fail_every) {
                            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                        }
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn config(blue: SocketAddr, green: &str, route_extra: &str) -> String {
    format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [backends.blue]\nendpoints = [\"{blue}\"]\n\n[backends.green]\nendpoints = [\"{green}\"]\n\n\
         [[routes]]\nname = \"app\"\nweights = {{ blue = 50, green = 50 }}\n{route_extra}\n"
    )
}

/// Requests per second of the load: "a few hundred", as a release sees.
const RATE: u64 = 400;

/// Sends about [`RATE`] requests per second from `workers` loops until
/// dropped.
struct Load {
    stop: Arc<AtomicBool>,
    pub sent: Arc<AtomicU64>,
}

impl Load {
    fn start(url: String, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        for _ in 0..workers {
            let (stop, sent, url) = (stop.clone(), sent.clone(), url.clone());
            let period = Duration::from_micros(1_000_000 * workers as u64 / RATE);
            tokio::spawn(async move {
                let client = common::client();
                let mut pace = tokio::time::interval(period);
                while !stop.load(Ordering::Relaxed) {
                    pace.tick().await;
                    let _ = client.get(&url).send().await.map(|r| r.status());
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        Load { stop, sent }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

async fn analysis(p: &Proxy) -> Value {
    let r = common::client()
        .get(p.admin_url("/admin/analysis"))
        .send()
        .await
        .expect("admin answers");
    r.json().await.unwrap_or(Value::Null)
}

/// The comparison of green on route `app`.
fn green(doc: &Value) -> Value {
    doc["routes"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == "app"))
        .and_then(|r| r["comparisons"].as_array())
        .and_then(|c| c.iter().find(|c| c["backend"] == "green"))
        .cloned()
        .unwrap_or(Value::Null)
}

/// Polls until green's verdict is `want`; returns the last comparison.
async fn wait_for_verdict(p: &Proxy, want: &str) -> (bool, Value) {
    let mut last = Value::Null;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::time::Instant::now() < deadline {
        last = green(&analysis(p).await);
        if last["verdict"] == want {
            return (true, last);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (false, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_green_30ms_slower_fails_on_latency() {
    let blue = backend(0, 0).await;
    let green_addr = backend(30, 0).await;
    let p = Proxy::start(&config(blue, &green_addr.to_string(), "")).await;
    let _load = Load::start(p.url("/"), 8);
    let (ok, c) = wait_for_verdict(&p, "fail").await;
    assert!(ok, "{c:#}");
    let reasons = c["reasons"].to_string();
    assert!(reasons.contains("slower than the baseline's"), "{c:#}");
    assert!(!reasons.contains("more than +1.0 points"), "{c:#}");
    // The gate says so too: 503 for Flagger, 200 with the verdict for Argo.
    let client = common::client();
    let gate = client
        .post(p.admin_url("/admin/analysis/gate?route=app&backend=green"))
        .body("{}")
        .send()
        .await
        .expect("gate answers");
    assert_eq!(gate.status(), 503);
    let v = client
        .get(p.admin_url("/admin/analysis/verdict?route=app"))
        .send()
        .await
        .expect("verdict answers");
    assert_eq!(v.status(), 200);
    let body: Value = v.json().await.expect("json");
    assert_eq!(body["verdict"], "fail");
    let m = p.metrics().await;
    assert_eq!(
        common::metric(
            &m,
            "cutover_analysis_verdict",
            &[("route", "app"), ("backend", "green"), ("verdict", "fail")]
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_green_with_3_percent_500s_fails_on_errors() {
    let blue = backend(0, 0).await;
    let green_addr = backend(0, 33).await;
    let p = Proxy::start(&config(blue, &green_addr.to_string(), "")).await;
    let _load = Load::start(p.url("/"), 8);
    let (ok, c) = wait_for_verdict(&p, "fail").await;
    assert!(ok, "{c:#}");
    let first = c["reasons"][0].as_str().unwrap_or_default();
    assert!(first.starts_with("error rate 3."), "{c:#}");
    assert!(c["error_rate_difference"]["lower"].as_f64().unwrap_or(0.0) > 0.01);
    assert_eq!(c["srm"]["alarm"], false, "{c:#}");
    // `cutover report` as a CI gate: exit 1 on fail, the reason printed.
    let (code, out) = report(&p);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("FAIL") && out.contains("error rate 3."),
        "{out}"
    );
}

/// Runs `cutover report --admin URL --route app`: (exit code, stdout).
fn report(p: &Proxy) -> (Option<i32>, String) {
    let out = Command::new(common::proxy::bin())
        .args(["report", "--route", "app", "--admin"])
        .arg(p.admin_url(""))
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if std::env::var_os("SHOW_REPORT").is_some() {
        eprintln!("{text}");
    }
    (out.status.code(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identical_green_never_fails() {
    let blue = backend(0, 0).await;
    let green_addr = backend(0, 0).await;
    let p = Proxy::start(&config(blue, &green_addr.to_string(), "")).await;
    let load = Load::start(p.url("/"), 8);
    // Watch it while 3,000 requests go through (and at least until the
    // minimum is in and the error rate is certified).
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while load.sent.load(Ordering::Relaxed) < 3_000 && tokio::time::Instant::now() < deadline {
        let c = green(&analysis(&p).await);
        assert_ne!(c["verdict"], "fail", "{c:#}");
        seen.push(c["verdict"].as_str().unwrap_or("none").to_owned());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ok, c) = wait_for_verdict(&p, "pass").await;
    assert!(ok, "{c:#}");
    assert!(seen.iter().all(|v| v != "fail"));
    let gate = common::client()
        .get(p.admin_url("/admin/analysis/gate?route=app"))
        .send()
        .await
        .expect("gate answers");
    assert_eq!(gate.status(), 200);
    let (code, out) = report(&p);
    assert_eq!(code, Some(0), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn green_failing_over_to_blue_raises_the_srm_alarm() {
    let blue = backend(0, 0).await;
    // Nothing listens on green: every green request fails over to blue
    // (passive ejection of the refused endpoint makes it unavailable).
    let (_hold, dead) = common::ctl::refused_addr();
    let p = Proxy::start(&config(
        blue,
        &dead.to_string(),
        "failover = true\n[routes.analysis]\nmin_requests = 50\nsrm_confidence = 0.9999\n",
    ))
    .await;
    let _load = Load::start(p.url("/"), 8);
    let mut last = Value::Null;
    let mut doc = Value::Null;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut alarmed = false;
    while !alarmed && tokio::time::Instant::now() < deadline {
        doc = analysis(&p).await;
        last = green(&doc);
        alarmed = last["srm"]["alarm"] == true;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(alarmed, "{last:#}");
    // The alarm's own level, stricter than the default 0.999, and still
    // raised: green gets none of its 50%.
    assert_eq!(doc["routes"][0]["srm_confidence"], 0.9999, "{doc:#}");
    assert_eq!(doc["routes"][0]["confidence"], 0.95, "{doc:#}");
    assert_ne!(last["verdict"], "pass", "{last:#}");
    let m = p.metrics().await;
    assert_eq!(
        common::metric(
            &m,
            "cutover_srm_alarm",
            &[("route", "app"), ("backend", "green")]
        ),
        1.0,
        "{m}"
    );
}

#[test]
fn check_points_at_bad_analysis_keys() {
    let dir = tempfile::tempdir().expect("tmp");
    for (bad, key) in [
        ("confidence = 1.5", "routes[0].analysis.confidence"),
        ("srm_confidence = 1.0", "routes[0].analysis.srm_confidence"),
        ("baseline = \"red\"", "routes[0].analysis.baseline"),
        ("window = \"soon\"", "routes[0].analysis.window"),
        ("quantile = 0.0", "routes[0].analysis.quantile"),
        ("min_requests = 0", "routes[0].analysis.min_requests"),
        (
            "max_latency_increase = \"x\"",
            "routes[0].analysis.max_latency_increase",
        ),
        (
            "max_error_rate_increase = 2.0",
            "routes[0].analysis.max_error_rate_increase",
        ),
    ] {
        let text = config(
            "127.0.0.1:1".parse().expect("addr"),
            "127.0.0.1:2",
            &format!("[routes.analysis]\n{bad}\n"),
        );
        let path = dir.path().join("cutover.toml");
        std::fs::write(&path, &text).expect("write");
        let out = Command::new(common::proxy::bin())
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .expect("runs");
        let all = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad}: {all}");
        // Line 17 is the bad key (the route's `analysis` table starts at 16).
        assert!(all.contains("cutover.toml:17:"), "{bad}: {all}");
        assert!(all.contains(key), "{bad}: {all}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_sticky_route_srm_counts_new_users() {
    let blue = backend(0, 0).await;
    let green_addr = backend(0, 0).await;
    let p = Proxy::start(&config(
        blue,
        &green_addr.to_string(),
        "sticky = { cookie = \"cutover\" }\n[routes.analysis]\nmin_requests = 50\n",
    ))
    .await;
    // The client keeps no cookies: every request is a new user.
    let _load = Load::start(p.url("/"), 4);
    let mut last = Value::Null;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::time::Instant::now() < deadline {
        last = green(&analysis(&p).await);
        if last["baseline_requests"].as_u64().unwrap_or(0) >= 300 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(last["srm"]["unit"], "new sticky users", "{last:#}");
    assert_eq!(last["srm"]["alarm"], false, "{last:#}");
    let observed = last["srm"]["observed_shares"][1].as_f64().unwrap_or(0.0);
    assert!((0.35..0.65).contains(&observed), "{last:#}");
}
