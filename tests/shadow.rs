//! Shadow traffic (`shadow = { ... }`): copies of sampled requests go to
//! another backend, the client never waits for them, and the answers are
//! compared with the client's, through the real binary and real backends.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

use common::{Proxy, eventually, metric};

/// What a scripted backend answers: status, body, delay before answering.
type Script = dyn Fn(&str, &str, &[u8]) -> (u16, String, Duration) + Send + Sync;

/// A backend that answers by script (method, path and query, body) and
/// counts the requests it got.
struct App {
    addr: SocketAddr,
    hits: Arc<AtomicU64>,
    bodies: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl App {
    async fn start(
        script: impl Fn(&str, &str, &[u8]) -> (u16, String, Duration) + Send + Sync + 'static,
    ) -> App {
        let script: Arc<Script> = Arc::new(script);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (h, b) = (hits.clone(), bodies.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (script, hits, bodies) = (script.clone(), h.clone(), b.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (script, hits, bodies) = (script.clone(), hits.clone(), bodies.clone());
                        async move {
                            hits.fetch_add(1, Ordering::Relaxed);
                            let method = req.method().to_string();
                            let path = req
                                .uri()
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            bodies.lock().unwrap().push(body.to_vec());
                            let (status, text, delay) = script(&method, &path, &body);
                            tokio::time::sleep(delay).await;
                            let mut r = Response::new(Full::new(Bytes::from(text)));
                            *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            r.headers_mut()
                                .insert("content-type", "application/json".parse().unwrap());
                            r.headers_mut()
                                .insert("set-cookie", "from=backend".parse().unwrap());
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        App { addr, hits, bodies }
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

/// `n=123` of a query.
fn query_n(path: &str) -> u64 {
    path.split("n=")
        .nth(1)
        .and_then(|s| s.split('&').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn config(blue: &[SocketAddr], green: SocketAddr, route_extra: &str) -> String {
    let eps: Vec<String> = blue.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [backends.blue]\nendpoints = [{}]\n\n[backends.green]\nendpoints = [\"{green}\"]\n\n\
         [[routes]]\nname = \"app\"\nweights = {{ blue = 100, green = 0 }}\n{route_extra}\n",
        eps.join(", ")
    )
}

/// `n` GETs of `/item?n=i`, `par` at a time; the latencies seen.
async fn load(p: &Proxy, n: u64, par: u64) -> Vec<Duration> {
    let client = common::client();
    let mut tasks = Vec::new();
    for k in 0..par {
        let (client, url) = (client.clone(), p.url("/item"));
        tasks.push(tokio::spawn(async move {
            let mut took = Vec::new();
            let mut i = k;
            while i < n {
                let t = Instant::now();
                let r = client.get(format!("{url}?n={i}")).send().await.unwrap();
                assert_eq!(r.status(), 200);
                r.bytes().await.unwrap();
                took.push(t.elapsed());
                i += par;
            }
            took
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

async fn shadow_doc(p: &Proxy) -> Value {
    let r = common::client()
        .get(p.admin_url("/admin/shadow"))
        .send()
        .await
        .unwrap();
    r.json::<Value>().await.unwrap()["routes"][0].clone()
}

/// Waits until every copy sent so far has been compared or failed.
async fn settled(p: &Proxy, sent: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = p.metrics().await;
        let got = |r: &str| {
            metric(
                &text,
                "cutover_shadow_requests_total",
                &[("route", "app"), ("backend", "green"), ("result", r)],
            )
        };
        let done = got("sent") + got("error") + got("dropped") + got("skipped");
        let compared = metric(&text, "cutover_shadow_compared_total", &[("route", "app")]);
        if done >= sent && compared >= got("sent") {
            return text;
        }
        assert!(Instant::now() < deadline, "copies did not settle: {text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn classes(doc: &Value) -> Vec<(String, u64, f64)> {
    doc["classes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["count"].as_u64().unwrap() > 0)
        .map(|c| {
            (
                c["class"].as_str().unwrap().to_owned(),
                c["count"].as_u64().unwrap(),
                c["share"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// Blue answers `{"id", "name", "rid"}` with a random request id.
fn blue_script(_: &str, path: &str, _: &[u8]) -> (u16, String, Duration) {
    let body = format!(
        r#"{{"id":{},"name":"a","rid":"{:x}"}}"#,
        query_n(path),
        fastrand::u64(..)
    );
    (200, body, Duration::ZERO)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_field_green_changes_on_one_in_twenty_is_that_class_at_five_percent() {
    let blue = App::start(blue_script).await;
    // Green changes `name` on a random 1 in 20 requests.
    let green = App::start(|_, path, _| {
        let name = if fastrand::u32(..20) == 0 { "b" } else { "a" };
        let body = format!(
            r#"{{"rid":"{:x}","id":{},"name":"{name}"}}"#,
            fastrand::u64(..),
            query_n(path)
        );
        (200, body, Duration::ZERO)
    })
    .await;
    let p = Proxy::start(&config(
        &[blue.addr],
        green.addr,
        r#"shadow = { backend = "green", sample = 1.0, ignore = ["$.rid"], keep_examples = true }"#,
    ))
    .await;
    let n = 800;
    load(&p, n, 8).await;
    let text = settled(&p, n as f64).await;
    let compared = metric(&text, "cutover_shadow_compared_total", &[("route", "app")]);
    assert!(compared >= n as f64 * 0.95, "compared {compared} of {n}");
    let doc = shadow_doc(&p).await;
    let found = classes(&doc);
    assert_eq!(found.len(), 1, "exactly one class: {doc}");
    let (class, count, share) = &found[0];
    assert_eq!(class, "body_field:$.name");
    // `cutover report` lists it among the route's top classes.
    let out = std::process::Command::new(common::proxy::bin())
        .args(["report", "--admin"])
        .arg(p.admin_url(""))
        .output()
        .expect("runs");
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.contains("route app: shadow green") && out.contains("body_field:$.name"),
        "{out}"
    );
    // Binomial(compared, 1/20): 4 sigma = 4 * sqrt(p (1 - p) / compared),
    // about 0.031 at 800.
    let p0 = 0.05;
    let sigma = (p0 * (1.0 - p0) / compared).sqrt();
    assert!(
        (share - p0).abs() <= 4.0 * sigma,
        "share {share} vs {p0} +- {}",
        4.0 * sigma
    );
    assert_eq!(
        *count as f64,
        metric(
            &text,
            "cutover_shadow_mismatches_total",
            &[("class", "body_field:$.name")]
        )
    );
    let example = &doc["classes"][0]["example"];
    assert!(
        example["request"]
            .as_str()
            .unwrap()
            .starts_with("GET /item?n="),
        "{example}"
    );
    assert_eq!(example["primary_status"], 200);
    assert!(
        example["shadow_body"]
            .as_str()
            .unwrap()
            .contains(r#""name":"b""#),
        "{example}"
    );
    // No user request reached green; no shadow cookie reached a user.
    assert_eq!(
        green.hits() as f64,
        metric(
            &text,
            "cutover_shadow_requests_total",
            &[("result", "sent")]
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_identical_green_shows_no_class_when_the_random_id_is_ignored() {
    let blue = App::start(blue_script).await;
    let green = App::start(blue_script).await;
    let p = Proxy::start(&config(
        &[blue.addr],
        green.addr,
        r#"shadow = { backend = "green", ignore = ["$.rid"], compare_headers = ["content-type"] }"#,
    ))
    .await;
    load(&p, 200, 4).await;
    settled(&p, 200.0).await;
    let doc = shadow_doc(&p).await;
    assert!(doc["compared"].as_u64().unwrap() >= 190, "{doc}");
    assert_eq!(classes(&doc), vec![], "{doc}");
    assert!(
        doc["classes"][0]["example"].is_null(),
        "examples are off by default"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn noise_the_primary_shows_against_itself_is_not_a_mismatch() {
    // Two blue endpoints: the random id differs between them too.
    let blue1 = App::start(blue_script).await;
    let blue2 = App::start(blue_script).await;
    let green = App::start(blue_script).await;
    let p = Proxy::start(&config(
        &[blue1.addr, blue2.addr],
        green.addr,
        r#"shadow = { backend = "green", noise = true }"#,
    ))
    .await;
    load(&p, 100, 4).await;
    let text = settled(&p, 100.0).await;
    let doc = shadow_doc(&p).await;
    assert_eq!(classes(&doc), vec![], "rid is noise, not a mismatch: {doc}");
    let noise = metric(
        &text,
        "cutover_shadow_noise_total",
        &[("class", "body_field:$.rid")],
    );
    assert!(
        noise >= 95.0,
        "every comparison saw rid differ as noise: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_or_dead_green_does_not_slow_the_client_and_its_errors_count() {
    let blue = App::start(blue_script).await;
    let slow = App::start(|_, _, _| (200, "{}".into(), Duration::from_millis(500))).await;
    let plain = Proxy::start(&config(&[blue.addr], slow.addr, "")).await;
    let shadowed = Proxy::start(&config(
        &[blue.addr],
        slow.addr,
        r#"shadow = { backend = "green", timeout = "2s", queue = 1000 }"#,
    ))
    .await;
    let p99 = |mut v: Vec<Duration>| {
        v.sort();
        v[(v.len() * 99 / 100).min(v.len() - 1)]
    };
    // Side by side, interleaved in rounds, so load on the machine hits both.
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..4 {
        a.extend(load(&plain, 50, 2).await);
        b.extend(load(&shadowed, 50, 2).await);
    }
    let (base, with) = (p99(a), p99(b));
    // Waiting for green would add 500 ms to every copied request (all of
    // them: sample = 1.0); 250 ms is the noise margin of a loaded 2-core
    // machine, half the effect looked for.
    assert!(
        with < base + Duration::from_millis(250),
        "p99 {with:?} with shadow vs {base:?} without"
    );
    assert!(with < Duration::from_millis(500), "p99 {with:?}");
    let text = settled(&shadowed, 200.0).await;
    assert_eq!(
        metric(
            &text,
            "cutover_shadow_requests_total",
            &[("result", "sent")]
        ),
        200.0,
        "{text}"
    );

    // Green down: copies fail, are counted, and clients do not notice.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let down = Proxy::start(&config(
        &[blue.addr],
        dead,
        r#"shadow = { backend = "green" }"#,
    ))
    .await;
    let took = load(&down, 50, 2).await;
    assert!(p99(took) < Duration::from_millis(500));
    let text = settled(&down, 50.0).await;
    assert_eq!(
        metric(
            &text,
            "cutover_shadow_requests_total",
            &[("result", "error")]
        ),
        50.0,
        "{text}"
    );
    // The errors are the shadow comparison's evidence.
    let deadline = Instant::now() + Duration::from_secs(10);
    let shadow = loop {
        let shadow = analysis_shadow(&down).await;
        if shadow["comparisons"][0]["errors"] == 50 {
            break shadow;
        }
        assert!(Instant::now() < deadline, "{shadow:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(shadow["baseline"], "blue");
    assert_eq!(shadow["comparisons"][0]["backend"], "green");
    assert_eq!(shadow["comparisons"][0]["baseline_errors"], 0);
}

/// The `"source": "shadow"` entry of `/admin/analysis`.
async fn analysis_shadow(p: &Proxy) -> Value {
    let r = common::client()
        .get(p.admin_url("/admin/analysis"))
        .send()
        .await
        .unwrap();
    let doc: Value = r.json().await.unwrap();
    doc["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["source"] == "shadow")
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_green_failing_five_percent_of_copies_fails_its_shadow_step_and_no_user_reaches_it() {
    let blue = App::start(|_, _, _| (200, r#"{"v":1}"#.into(), Duration::ZERO)).await;
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    // 1 in 20 of green's answers is a 500.
    let green = App::start(move |_, _, _| {
        if c.fetch_add(1, Ordering::Relaxed) % 20 == 19 {
            (500, "{}".into(), Duration::ZERO)
        } else {
            (200, r#"{"v":1}"#.into(), Duration::ZERO)
        }
    })
    .await;
    let p = Proxy::start(&config(
        &[blue.addr],
        green.addr,
        "shadow = { backend = \"green\" }
[routes.rollout]
id = \"v2\"
canary = \"green\"
steps = [\"shadow\", 50, 100]
hold = \"1h\"
min_requests = 100",
    ))
    .await;
    let client = common::client();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut served = 0;
    let state = loop {
        for _ in 0..20 {
            let r = client.get(p.url("/item")).send().await.unwrap();
            assert_eq!(r.status(), 200, "no user gets green's 500");
            served += 1;
        }
        let r = p.state().await["routes"][0]["rollout"].clone();
        if r["state"] != "progressing" {
            break r;
        }
        assert_eq!(r["canary_weight"], 0, "{r:#}");
        assert!(Instant::now() < deadline, "never judged: {r:#}");
    };
    assert_eq!(state["state"], "rolled_back", "{state:#}");
    assert!(
        state["reason"].as_str().unwrap().contains("error rate"),
        "{state:#}"
    );
    let text = p.metrics().await;
    assert_eq!(
        metric(&text, "cutover_requests_total", &[("backend", "green")]),
        0.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "cutover_requests_total", &[("backend", "blue")]),
        served as f64
    );
    // Mirroring is off after the rollback: green gets nothing more.
    let before = green.hits();
    for _ in 0..50 {
        client.get(p.url("/item")).send().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        green.hits(),
        before,
        "no copies after the shadow step failed"
    );
    println!(
        "shadow step failed after {served} requests: {}",
        state["reason"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_drops_and_counts() {
    let blue = App::start(blue_script).await;
    let slow = App::start(|_, _, _| (200, "{}".into(), Duration::from_millis(1500))).await;
    let p = Proxy::start(&format!(
        "{}[server]\nworkers = 1\n",
        config(
            &[blue.addr],
            slow.addr,
            r#"shadow = { backend = "green", queue = 2 }"#
        )
    ))
    .await;
    load(&p, 20, 4).await;
    let text = settled(&p, 20.0).await;
    let got = |r| metric(&text, "cutover_shadow_requests_total", &[("result", r)]);
    assert!(got("dropped") >= 10.0, "{text}");
    assert_eq!(got("sent") + got("dropped"), 20.0, "{text}");
    assert!(got("sent") >= 2.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn post_is_mirrored_only_when_listed_and_check_warns() {
    let blue = App::start(|_, _, body| {
        (
            200,
            String::from_utf8_lossy(body).into_owned(),
            Duration::ZERO,
        )
    })
    .await;
    let green = App::start(|_, _, body| {
        (
            200,
            String::from_utf8_lossy(body).into_owned(),
            Duration::ZERO,
        )
    })
    .await;
    let client = common::client();
    let p = Proxy::start(&config(
        &[blue.addr],
        green.addr,
        r#"shadow = { backend = "green" }"#,
    ))
    .await;
    for _ in 0..5 {
        let r = client
            .post(p.url("/order"))
            .body(r#"{"qty":1}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    client.get(p.url("/item")).send().await.unwrap();
    assert!(eventually(Duration::from_secs(10), || async { green.hits() >= 1 }).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(green.hits(), 1, "only the GET was copied");

    let cfg = config(
        &[blue.addr],
        green.addr,
        r#"shadow = { backend = "green", methods = ["GET", "POST"] }"#,
    );
    let listed = Proxy::start(&cfg).await;
    for i in 0..5 {
        let r = client
            .post(listed.url("/order"))
            .body(format!(r#"{{"qty":{i}}}"#))
            .send()
            .await
            .unwrap();
        assert_eq!(r.text().await.unwrap(), format!(r#"{{"qty":{i}}}"#));
    }
    let text = settled(&listed, 5.0).await;
    assert_eq!(
        metric(
            &text,
            "cutover_shadow_requests_total",
            &[("result", "sent")]
        ),
        5.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "cutover_shadow_compared_total", &[]),
        5.0,
        "{text}"
    );
    assert_eq!(shadow_doc(&listed).await["classes"], serde_json::json!([]));
    let mut bodies = green.bodies.lock().unwrap()[1..].to_vec();
    bodies.sort();
    assert_eq!(bodies.len(), 5);
    assert_eq!(
        bodies[4],
        br#"{"qty":4}"#.to_vec(),
        "the copy carries the body"
    );

    let out = common::proxy::run_to_exit(
        &["check", "--config", listed.config_path.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert!(out.status.is_some_and(|s| s.success()), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("routes[0].shadow.methods: POST is not idempotent"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("cutover.toml:"),
        "with its location: {}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_over_max_body_is_skipped_and_overrides_are_never_copied() {
    let blue = App::start(|_, _, _| (200, "{}".into(), Duration::ZERO)).await;
    let green = App::start(|_, _, _| (200, "{}".into(), Duration::ZERO)).await;
    let p = Proxy::start(&config(
        &[blue.addr],
        green.addr,
        "shadow = { backend = \"green\", methods = [\"PUT\"], max_body = 16 }\noverride = { header = \"x-variant\" }",
    ))
    .await;
    let client = common::client();
    client
        .put(p.url("/x"))
        .body("0123456789abcdefXYZ")
        .send()
        .await
        .unwrap();
    client
        .put(p.url("/x"))
        .header("x-variant", "blue")
        .body("small")
        .send()
        .await
        .unwrap();
    client.put(p.url("/x")).body("small").send().await.unwrap();
    let text = settled(&p, 2.0).await;
    let got = |r| metric(&text, "cutover_shadow_requests_total", &[("result", r)]);
    assert_eq!((got("skipped"), got("sent")), (1.0, 1.0), "{text}");
    assert_eq!(green.hits(), 1);
}
