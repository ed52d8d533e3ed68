//! Many replicas (issues 14 and 15): a real `prometheus` scraping two real
//! Cutover processes with the same config (each its own state directory)
//! in front of shared real backends. `cutover report --prometheus` and
//! `analysis.source = { prometheus }` judge the evidence of both summed;
//! both replicas read the same verdict and take the same rollout steps.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
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
use common::prom::PromServer;

/// A backend that answers 500 for every `fail_every`-th request (0: never).
async fn backend(fail_every: u64) -> SocketAddr {
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

fn config(blue: SocketAddr, green: SocketAddr, weights: &str, extra: &str) -> String {
    format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [backends.blue]\nendpoints = [\"{blue}\"]\n\n[backends.green]\nendpoints = [\"{green}\"]\n\n\
         [[routes]]\nname = \"app\"\nweights = {{ {weights} }}\n{extra}\n"
    )
}

/// About `rate` requests per second to each of `urls` until dropped.
struct Load(Arc<AtomicBool>);

impl Load {
    fn start(urls: &[String], rate: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        for url in urls {
            for _ in 0..4 {
                let (stop, url) = (stop.clone(), url.clone());
                let period = Duration::from_micros(4_000_000 / rate);
                tokio::spawn(async move {
                    let client = common::client();
                    let mut pace = tokio::time::interval(period);
                    while !stop.load(Ordering::Relaxed) {
                        pace.tick().await;
                        let _ = client.get(&url).send().await.map(|r| r.status());
                    }
                });
            }
        }
        Load(stop)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Two proxies on `cfg`, and a Prometheus scraping both every second.
async fn replicas(cfg: &str) -> ([Proxy; 2], PromServer) {
    let ps = [Proxy::start(cfg).await, Proxy::start(cfg).await];
    let prom = PromServer::start_many(&[ps[0].admin.unwrap(), ps[1].admin.unwrap()]).await;
    (ps, prom)
}

/// Both replicas reload `cfg` (judged from Prometheus), and every evidence
/// series is scraped once (at 0) before any traffic: a route judged from
/// Prometheus has its series from its table's start (elsewhere they appear
/// on a pair's first request), so `increase` counts every request.
async fn judge_from_prometheus(ps: &[Proxy; 2], prom: &PromServer, cfg: &str) {
    ps[0].write_config(cfg);
    ps[1].write_config(cfg);
    // 2 replicas x 2 backends.
    let q = r#"count(cutover_analysis_requests_total{route="app",class="ok"})"#;
    let ok = common::eventually(Duration::from_secs(20), || async {
        prom.query(q)
            .await
            .and_then(|r| r.first()?["value"][1].as_str().map(|v| v == "4"))
            .unwrap_or(false)
    })
    .await;
    assert!(ok, "prometheus never scraped both replicas: {}", prom.log());
}

/// A counter of `route="app"` for `backend` in a proxy's own metrics.
async fn local(p: &Proxy, backend: &str) -> f64 {
    common::metric(
        &p.metrics().await,
        "cutover_analysis_requests_total",
        &[("route", "app"), ("backend", backend)],
    )
}

/// Waits until Prometheus holds the final counters of both replicas (the
/// load has stopped): the sum it has equals the sum of what they export.
async fn settled(ps: &[Proxy; 2], prom: &PromServer) -> (f64, f64, f64) {
    let last = std::cell::Cell::new((0.0, 0.0, 0.0));
    let ok = common::eventually(Duration::from_secs(20), || {
        let last = &last;
        async move {
            let g = [local(&ps[0], "green").await, local(&ps[1], "green").await];
            let b = local(&ps[0], "blue").await + local(&ps[1], "blue").await;
            let q = r#"sum(cutover_analysis_requests_total{route="app",backend="green"})"#;
            let have = prom
                .query(q)
                .await
                .and_then(|r| r.first()?["value"][1].as_str()?.parse::<f64>().ok());
            last.set((g[0], g[1], b));
            have == Some(g[0] + g[1])
        }
    })
    .await;
    assert!(ok, "prometheus never caught up: {:?}", last.get());
    last.get()
}

async fn analysis(p: &Proxy) -> Value {
    let r = common::client()
        .get(p.admin_url("/admin/analysis"))
        .send()
        .await
        .expect("admin answers");
    r.json().await.unwrap_or(Value::Null)
}

fn green_of(doc: &Value) -> Value {
    doc["routes"][0]["comparisons"][0].clone()
}

/// `cutover report --prometheus URL --route app --window 10m --json`.
async fn report(prom: &PromServer) -> (Option<i32>, Value, String) {
    let url = prom.url("");
    let out = tokio::task::spawn_blocking(move || {
        common::proxy::run_to_exit(
            &[
                "report",
                "--prometheus",
                &url,
                "--route",
                "app",
                "--window",
                "10m",
                "--json",
            ],
            Duration::from_secs(20),
        )
    })
    .await
    .unwrap();
    let doc = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
    (out.status.and_then(|s| s.code()), doc, out.stderr)
}

/// `increase` over a range whose first samples are 0 extrapolates only at
/// its end, by at most one scrape interval (1 s) of a sampled span of at
/// least 10 s: at most +10%. Without the sum over replicas it would read
/// about half (each replica takes about half of the load).
fn assert_summed(reported: f64, one: f64, other: f64, what: &str) {
    let sum = one + other;
    assert!(
        reported >= 0.98 * sum && reported <= 1.10 * sum + 2.0,
        "{what}: {reported} reported, the replicas counted {one} + {other} = {sum}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_green_fails_on_the_evidence_of_both_replicas_summed() {
    let (blue, green) = (backend(0).await, backend(33).await);
    let plain = config(blue, green, "blue = 50, green = 50", "");
    let (ps, prom) = replicas(&plain).await;
    // Now that Prometheus' address is known, both replicas read from it.
    let cfg = config(
        blue,
        green,
        "blue = 50, green = 50",
        &format!(
            "[routes.analysis]\nwindow = \"10m\"\nsource = {{ prometheus = \"{}\" }}\n",
            prom.url("")
        ),
    );
    judge_from_prometheus(&ps, &prom, &cfg).await;
    let load = Load::start(&[ps[0].url("/"), ps[1].url("/")], 150);
    // Both replicas read `fail` from the same summed evidence.
    let both_fail = common::eventually(Duration::from_secs(60), || async {
        let (a, b) = (analysis(&ps[0]).await, analysis(&ps[1]).await);
        green_of(&a)["verdict"] == "fail" && green_of(&b)["verdict"] == "fail"
    })
    .await;
    drop(load);
    let (a, b) = (analysis(&ps[0]).await, analysis(&ps[1]).await);
    assert!(both_fail, "{a:#}\n{b:#}");
    for doc in [&a, &b] {
        assert_eq!(doc["routes"][0]["source"], "prometheus", "{doc:#}");
        assert_eq!(doc["routes"][0]["replicas"], 2, "{doc:#}");
        assert!(
            green_of(doc)["reasons"][0]
                .as_str()
                .is_some_and(|r| r.starts_with("error rate")),
            "{doc:#}"
        );
    }
    let (g0, g1, _) = settled(&ps, &prom).await;
    // Each replica's analysis counts both replicas' green requests.
    let counted = common::eventually(Duration::from_secs(10), || async {
        let (a, b) = (analysis(&ps[0]).await, analysis(&ps[1]).await);
        let sum = g0 + g1;
        [a, b].iter().all(|d| {
            let n = green_of(d)["requests"].as_f64().unwrap_or(0.0);
            n >= 0.98 * sum && n <= 1.10 * sum + 2.0
        })
    })
    .await;
    let (a, b) = (analysis(&ps[0]).await, analysis(&ps[1]).await);
    assert!(
        counted,
        "replicas counted {g0} + {g1} green requests; analyses: {} and {}",
        green_of(&a)["requests"],
        green_of(&b)["requests"]
    );
    // The CLI, with no proxy involved: the same verdict and the same sums.
    let (code, doc, err) = report(&prom).await;
    assert_eq!(code, Some(1), "{doc:#}\n{err}");
    let j = green_of(&doc);
    assert_eq!(j["verdict"], "fail", "{doc:#}");
    assert_eq!(doc["routes"][0]["replicas"], 2, "{doc:#}");
    assert_summed(j["requests"].as_f64().unwrap_or(0.0), g0, g1, "green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_identical_green_never_fails_and_the_report_sums_both_replicas() {
    let (blue, green) = (backend(0).await, backend(0).await);
    let plain = config(blue, green, "blue = 50, green = 50", "");
    let (ps, prom) = replicas(&plain).await;
    let cfg = config(
        blue,
        green,
        "blue = 50, green = 50",
        &format!(
            "[routes.analysis]\nwindow = \"10m\"\nsource = {{ prometheus = \"{}\" }}\n",
            prom.url("")
        ),
    );
    judge_from_prometheus(&ps, &prom, &cfg).await;
    let load = Load::start(&[ps[0].url("/"), ps[1].url("/")], 150);
    let mut seen = Vec::new();
    // ~10 s of load, looking every half second: never `fail`.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for p in &ps {
            let v = green_of(&analysis(p).await)["verdict"].clone();
            assert_ne!(v, "fail");
            seen.push(v);
        }
    }
    drop(load);
    let (g0, g1, b) = settled(&ps, &prom).await;
    let (code, doc, err) = report(&prom).await;
    assert!(matches!(code, Some(0 | 2)), "{code:?} {doc:#}\n{err}");
    let j = green_of(&doc);
    assert_summed(j["requests"].as_f64().unwrap_or(0.0), g0, g1, "green");
    let blue_reported = j["baseline_requests"].as_f64().unwrap_or(0.0);
    assert!(
        blue_reported >= 0.98 * b && blue_reported <= 1.10 * b + 2.0,
        "blue: {blue_reported} reported, {b} counted"
    );
    // Once Prometheus answers, both replicas say where their evidence is.
    for p in &ps {
        assert_eq!(analysis(p).await["routes"][0]["source"], "prometheus");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_prometheus_is_inconclusive_and_the_admin_stays_quick() {
    let (blue, green) = (backend(0).await, backend(33).await);
    // Nothing listens there.
    let (_hold, dead) = common::ctl::refused_addr();
    let cfg = config(
        blue,
        green,
        "blue = 50, green = 50",
        &format!("[routes.analysis]\nsource = {{ prometheus = \"http://{dead}\" }}\n"),
    );
    let p = Proxy::start(&cfg).await;
    let load = Load::start(&[p.url("/")], 200);
    let ok = common::eventually(Duration::from_secs(10), || async {
        green_of(&analysis(&p).await)["reasons"][0]
            .as_str()
            .is_some_and(|r| r.starts_with("prometheus unreachable: "))
    })
    .await;
    let doc = analysis(&p).await;
    assert!(ok, "{doc:#}");
    assert_eq!(green_of(&doc)["verdict"], "inconclusive");
    // The admin answers at once while the poller fails every second.
    let t = std::time::Instant::now();
    let _ = analysis(&p).await;
    assert!(t.elapsed() < Duration::from_secs(1));
    drop(load);
    let out = tokio::task::spawn_blocking(move || {
        common::proxy::run_to_exit(
            &[
                "report",
                "--prometheus",
                &format!("http://{dead}"),
                "--route",
                "app",
            ],
            Duration::from_secs(20),
        )
    })
    .await
    .unwrap();
    assert_eq!(out.status.and_then(|s| s.code()), Some(3), "{}", out.stderr);
}

/// The rollout section both replicas run: the same `start` for both.
///
/// A 5-point threshold lets an identical green pass after a few hundred
/// requests (at 1 point it takes about a thousand per side).
fn rollout(prom: &PromServer, start: &str) -> String {
    format!(
        "[routes.analysis]\nmax_error_rate_increase = 0.05\n\
         source = {{ prometheus = \"{}\", lag = \"2s\" }}\n\
         [routes.rollout]\nid = \"v2\"\ncanary = \"green\"\nsteps = [20, 50, 100]\nhold = \"2s\"\n\
         min_requests = 100\nstart = \"{start}\"\n",
        prom.url("")
    )
}

async fn rollout_state(p: &Proxy) -> Value {
    p.state().await["routes"][0]["rollout"].clone()
}

/// The transitions as (to, step, canary weight, at): what must agree.
fn transitions(r: &Value) -> Vec<(String, u64, u64, String)> {
    r["history"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["to"].as_str().unwrap_or("").to_owned(),
                e["step"].as_u64().unwrap_or(99),
                e["canary_weight"].as_u64().unwrap_or(999),
                format!("{:.3}", e["at_unix"].as_f64().unwrap_or(0.0)),
            )
        })
        .collect()
}

async fn rollout_replicas(fail_every: u64) -> ([Proxy; 2], PromServer) {
    let (blue, green) = (backend(0).await, backend(fail_every).await);
    let plain = config(blue, green, "blue = 50, green = 50", "");
    let (ps, prom) = replicas(&plain).await;
    let start =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(1))
            .to_string();
    let cfg = config(
        blue,
        green,
        "blue = 100, green = 0",
        &rollout(&prom, &start),
    );
    judge_from_prometheus(&ps, &prom, &cfg).await;
    (ps, prom)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_take_the_same_steps_at_the_same_instants_to_promotion() {
    let (ps, _prom) = rollout_replicas(0).await;
    let load = Load::start(&[ps[0].url("/"), ps[1].url("/")], 150);
    let done = common::eventually(Duration::from_secs(120), || async {
        rollout_state(&ps[0]).await["state"] == "promoted"
            && rollout_state(&ps[1]).await["state"] == "promoted"
    })
    .await;
    drop(load);
    let (a, b) = (rollout_state(&ps[0]).await, rollout_state(&ps[1]).await);
    assert!(done, "{a:#}\n{b:#}");
    let (ta, tb) = (transitions(&a), transitions(&b));
    let weights: Vec<u64> = ta.iter().map(|t| t.2).collect();
    assert_eq!(weights, [20, 50, 100], "{ta:?}");
    // Not only the same steps: the same instants, computed apart.
    assert_eq!(ta, tb, "{a:#}\n{b:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_replicas_roll_back_a_bad_green() {
    // Every other request fails: far past the 5-point threshold.
    let (ps, _prom) = rollout_replicas(2).await;
    let load = Load::start(&[ps[0].url("/"), ps[1].url("/")], 150);
    let done = common::eventually(Duration::from_secs(90), || async {
        rollout_state(&ps[0]).await["state"] == "rolled_back"
            && rollout_state(&ps[1]).await["state"] == "rolled_back"
    })
    .await;
    drop(load);
    let (a, b) = (rollout_state(&ps[0]).await, rollout_state(&ps[1]).await);
    assert!(done, "{a:#}\n{b:#}");
    for r in [&a, &b] {
        assert!(
            r["reason"]
                .as_str()
                .is_some_and(|s| s.starts_with("verdict fail: error rate")),
            "{r:#}"
        );
        assert_eq!(r["canary_weight"], 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollout_with_prometheus_down_neither_advances_nor_rolls_back() {
    // Green fails every other request: its own evidence would roll it
    // back within about a second of load.
    let (blue, green) = (backend(0).await, backend(2).await);
    let (_hold, dead) = common::ctl::refused_addr();
    let cfg = config(
        blue,
        green,
        "blue = 100, green = 0",
        &format!(
            "[routes.analysis]\nsource = {{ prometheus = \"http://{dead}\", lag = \"1s\" }}\n\
             [routes.rollout]\nid = \"v2\"\ncanary = \"green\"\nsteps = [50, 100]\nhold = \"1s\"\nmin_requests = 50\n"
        ),
    );
    let p = Proxy::start(&cfg).await;
    let load = Load::start(&[p.url("/")], 200);
    let waited = common::eventually(Duration::from_secs(10), || async {
        rollout_state(&p).await["verdict_reasons"][0]
            .as_str()
            .is_some_and(|r| r.starts_with("prometheus unreachable: "))
    })
    .await;
    // Long enough for ~1,000 requests, half of them to a failing green.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let r = rollout_state(&p).await;
    drop(load);
    assert!(waited, "{r:#}");
    assert_eq!(r["state"], "progressing", "{r:#}");
    assert_eq!(r["canary_weight"], 50, "{r:#}");
    assert_eq!(r["verdict"], "inconclusive", "{r:#}");
}
