//! Rollout notifications (issue 15, item 6) against the real binary: a real
//! HTTP server receives the webhook events of real rollouts (one over TLS);
//! retries on 5xx and not on 4xx; a webhook that never answers or is unreachable never
//! delays a rollback.
//!
//! Times are printed (`--nocapture`) and asserted against generous bounds:
//! the machine running the tests is shared.
mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Proxy;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

/// A backend answering its name, and 500 for `fail_pct` of every 100
/// requests (deterministically: requests 0..fail_pct of each hundred).
struct Flaky {
    addr: SocketAddr,
    fail_pct: Arc<AtomicU32>,
}

async fn flaky(name: &'static str) -> Flaky {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fail_pct = Arc::new(AtomicU32::new(0));
    let count = Arc::new(AtomicU64::new(0));
    let pct = fail_pct.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (pct, count) = (pct.clone(), count.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    let n = count.fetch_add(1, Ordering::Relaxed);
                    let mut r = hyper::Response::new(Full::new(Bytes::from(name)));
                    if (n % 100) < u64::from(pct.load(Ordering::Relaxed)) {
                        *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    async move { Ok::<_, Infallible>(r) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Flaky { addr, fail_pct }
}

/// A webhook receiver: answers the statuses of `script` to the first
/// attempts, then 200 (or never answers, with `hang`); keeps every event it
/// answered 2xx to, and counts attempts.
struct Webhook {
    addr: SocketAddr,
    attempts: Arc<AtomicU64>,
    events: Arc<Mutex<Vec<Value>>>,
}

async fn webhook(script: &'static [u16], hang: bool) -> Webhook {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let attempts = Arc::new(AtomicU64::new(0));
    let events: Arc<Mutex<Vec<Value>>> = Arc::default();
    let (a, ev) = (attempts.clone(), events.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (a, ev) = (a.clone(), ev.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (a, ev) = (a.clone(), ev.clone());
                    async move {
                        let n = a.fetch_add(1, Ordering::Relaxed) as usize;
                        assert_eq!(req.method(), "POST");
                        assert_eq!(req.uri().path(), "/hook");
                        assert_eq!(req.headers()["content-type"], "application/json");
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        if hang {
                            std::future::pending::<()>().await;
                        }
                        let status = script.get(n).copied().unwrap_or(200);
                        if (200..300).contains(&status) {
                            ev.lock()
                                .unwrap()
                                .push(serde_json::from_slice(&body).unwrap());
                        }
                        let mut r = hyper::Response::new(Full::new(Bytes::new()));
                        *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Webhook {
        addr,
        attempts,
        events,
    }
}

impl Webhook {
    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }
}

/// An address nothing listens on (bound, then closed).
fn unreachable() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}/hook", l.local_addr().unwrap())
}

/// Blue and green and a route `app` with a rollout (`rollout` goes in
/// `[routes.rollout]`); `global` goes in `[rollout]`.
fn config(blue: &Flaky, green: &Flaky, global: &str, rollout: &str) -> String {
    format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [rollout]\n{global}\n\n\
         [backends.blue]\nendpoints = [\"{}\"]\n\n[backends.green]\nendpoints = [\"{}\"]\n\n\
         [[routes]]\nname = \"app\"\nweights = {{ blue = 100, green = 0 }}\n\
         [routes.rollout]\nid = \"v2.0\"\ncanary = \"green\"\n{rollout}\n",
        blue.addr, green.addr
    )
}

fn notify(url: &str) -> String {
    format!("notify = {{ webhook = \"{url}\" }}")
}

/// `workers` loops each sending a `GET /` every `every`, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<u64>>,
}

fn load(p: &Proxy, workers: usize, every: Duration) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = (0..workers)
        .map(|_| {
            let (stop, url) = (stop.clone(), p.url("/"));
            tokio::spawn(async move {
                let c = common::client();
                let mut tick = tokio::time::interval(every);
                let mut sent = 0;
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    if let Ok(r) = c.get(&url).send().await {
                        let _ = r.bytes().await;
                    }
                    sent += 1;
                }
                sent
            })
        })
        .collect();
    Load { stop, tasks }
}

impl Load {
    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let mut n = 0;
        for t in self.tasks {
            n += t.await.unwrap();
        }
        n
    }
}

async fn rollout_state(p: &Proxy) -> Value {
    p.state().await["routes"][0]["rollout"].clone()
}

async fn wait_state(p: &Proxy, state: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let last = rollout_state(p).await;
        if last["state"] == state {
            return last;
        }
        assert!(
            Instant::now() < deadline,
            "rollout never reached {state}: {last:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn count(metrics: &str, result: &str) -> f64 {
    common::metric(
        metrics,
        "cutover_notifications_total",
        &[("route", "app"), ("result", result)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_green_rolled_back_sends_exactly_one_rolled_back_event_with_its_evidence() {
    let (blue, green) = (flaky("blue").await, flaky("green").await);
    let hook = webhook(&[], false).await;
    // The route's own webhook wins over the global one (unreachable here).
    let p = Proxy::start(&config(
        &blue,
        &green,
        &notify(&unreachable()),
        &format!(
            "steps = [50, 100]\nhold = \"1h\"\nmin_requests = 200\n{}",
            notify(&hook.url())
        ),
    ))
    .await;
    wait_state(&p, "progressing", Duration::from_secs(5)).await;
    let l = load(&p, 6, Duration::from_millis(20));
    green.fail_pct.store(10, Ordering::Relaxed);
    wait_state(&p, "rolled_back", Duration::from_secs(60)).await;
    l.finish().await;
    assert!(
        common::eventually(Duration::from_secs(5), || async {
            hook.events().len() >= 2
        })
        .await,
        "events: {:#?}",
        hook.events()
    );
    // Anything else in flight would have arrived by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = hook.events();
    assert_eq!(events.len(), 2, "{events:#?}");
    let (start, back) = (&events[0], &events[1]);
    assert_eq!(start["to"], "progressing");
    assert_eq!(start["from"], Value::Null);
    assert_eq!(start["canary_weight"], 50);
    assert_eq!(
        start["text"],
        "cutover: route app rollout v2.0 started at step 1 of 2 (50%): rollout started"
    );
    assert_eq!(back["route"], "app");
    assert_eq!(back["id"], "v2.0");
    assert_eq!(back["from"], "progressing");
    assert_eq!(back["to"], "rolled_back");
    assert_eq!(back["step"], 0);
    assert_eq!(back["canary_weight"], 0);
    assert!(back["timestamp"].as_str().unwrap().ends_with('Z'), "{back}");
    let reason = back["reason"].as_str().unwrap();
    assert!(reason.contains("error rate"), "{reason}");
    let ev = &back["evidence"];
    assert_eq!(ev["canary"]["backend"], "green");
    assert_eq!(ev["baseline"]["backend"], "blue");
    let (g, b) = (&ev["canary"], &ev["baseline"]);
    assert!(g["requests"].as_u64().unwrap() > 0, "{ev}");
    assert!(g["errors"].as_u64().unwrap() > 0, "{ev}");
    assert!(g["error_rate"].as_f64().unwrap() > 0.05, "{ev}");
    assert_eq!(b["errors"], 0, "{ev}");
    assert!(g["latency_seconds"]["p50"].as_f64().is_some(), "{ev}");
    let text = back["text"].as_str().unwrap();
    assert!(
        text.starts_with(
            "cutover: route app rollout v2.0 rolled back at step 1 of 2 (50%): green is at 0%, blue takes 100%: verdict fail: error rate "
        ),
        "{text}"
    );
    println!("rollback event text: {text}");
    let m = p.metrics().await;
    assert_eq!(count(&m, "sent"), 2.0);
    assert_eq!(count(&m, "failed") + count(&m, "dropped"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_promotion_sends_one_event_per_step_in_order_to_the_global_webhook() {
    let (blue, green) = (flaky("blue").await, flaky("green").await);
    let hook = webhook(&[], false).await;
    let p = Proxy::start(&config(
        &blue,
        &green,
        &notify(&hook.url()),
        "steps = [10, 50, 100]\nhold = \"1s\"\nmin_requests = 100",
    ))
    .await;
    let l = load(&p, 6, Duration::from_millis(20));
    wait_state(&p, "promoted", Duration::from_secs(90)).await;
    l.finish().await;
    assert!(
        common::eventually(Duration::from_secs(5), || async {
            hook.events().len() >= 3
        })
        .await,
        "events: {:#?}",
        hook.events()
    );
    let events = hook.events();
    let seen: Vec<(Value, Value, Value, Value)> = events
        .iter()
        .map(|e| {
            (
                e["from"].clone(),
                e["to"].clone(),
                e["step"].clone(),
                e["canary_weight"].clone(),
            )
        })
        .collect();
    use serde_json::json;
    assert_eq!(
        seen,
        [
            (Value::Null, json!("progressing"), json!(0), json!(10)),
            (
                json!("progressing"),
                json!("progressing"),
                json!(1),
                json!(50)
            ),
            (
                json!("progressing"),
                json!("promoted"),
                json!(2),
                json!(100)
            ),
        ]
    );
    let moved = events[1]["text"].as_str().unwrap();
    assert!(
        moved.starts_with(
            "cutover: route app rollout v2.0 moved to step 2 of 3 (50%): step 10 passed after "
        ),
        "{moved}"
    );
    assert!(
        events[1]["evidence"]["canary"]["requests"]
            .as_u64()
            .unwrap()
            >= 100,
        "{}",
        events[1]
    );
    assert!(
        events[2]["text"].as_str().unwrap().starts_with(
            "cutover: route app rollout v2.0 promoted: green takes 100%: step 50 passed"
        ),
        "{}",
        events[2]
    );
    // Counted once the answer is in, just after the receiver saw the event.
    assert!(
        common::eventually(Duration::from_secs(5), || async {
            count(&p.metrics().await, "sent") == 3.0
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_answering_500_twice_gets_the_event_on_the_third_attempt_and_a_4xx_is_not_retried()
 {
    let (blue, green) = (flaky("blue").await, flaky("green").await);
    let flaky_hook = webhook(&[500, 503], false).await;
    let started = Instant::now();
    let p = Proxy::start(&config(
        &blue,
        &green,
        "",
        &format!(
            "steps = [50, 100]\nhold = \"1h\"\n{}",
            notify(&flaky_hook.url())
        ),
    ))
    .await;
    // The start event: two 5xx, then (after 1 s and 2 s of backoff) 200.
    assert!(
        common::eventually(Duration::from_secs(15), || async {
            !flaky_hook.events().is_empty()
        })
        .await
    );
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(flaky_hook.attempts.load(Ordering::Relaxed), 3);
    assert_eq!(flaky_hook.events().len(), 1);
    assert_eq!(flaky_hook.events()[0]["to"], "progressing");
    assert!(
        took >= Duration::from_secs(3),
        "backoff 1 s + 2 s: {took:?}"
    );
    println!("delivered on the 3rd attempt after {took:?}");
    let m = p.metrics().await;
    assert_eq!((count(&m, "sent"), count(&m, "failed")), (1.0, 0.0));
    drop(p);

    let refusing = webhook(&[404, 404, 404, 404], false).await;
    let p = Proxy::start(&config(
        &blue,
        &green,
        "",
        &format!(
            "steps = [50, 100]\nhold = \"1h\"\n{}",
            notify(&refusing.url())
        ),
    ))
    .await;
    assert!(
        common::eventually(Duration::from_secs(10), || async {
            count(&p.metrics().await, "failed") == 1.0
        })
        .await
    );
    // Time for a retry, were there one.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        refusing.attempts.load(Ordering::Relaxed),
        1,
        "no retry on 4xx"
    );
    let failed: Vec<Value> = p
        .logs()
        .into_iter()
        .filter(|l| l["message"] == "rollout notification failed")
        .collect();
    assert_eq!(failed.len(), 1, "one log line per failed delivery");
    assert_eq!(failed[0]["error"], "HTTP 404 Not Found");
    assert_eq!(
        failed[0]["webhook"],
        format!("http://{}", refusing.addr),
        "logged without its path"
    );
}

/// Seconds from green going bad (10% 500s) to the rollback in force
/// (seen in `/admin/state`) under ~150 req/s, for a proxy whose route
/// notifies `hook` (or nothing).
async fn rollback_time(hook: Option<String>) -> (f64, Proxy) {
    let (blue, green) = (flaky("blue").await, flaky("green").await);
    let p = Proxy::start(&config(
        &blue,
        &green,
        "",
        &format!(
            "steps = [50, 100]\nhold = \"1h\"\nmin_requests = 200\n{}",
            hook.as_deref().map(notify).unwrap_or_default()
        ),
    ))
    .await;
    wait_state(&p, "progressing", Duration::from_secs(5)).await;
    let l = load(&p, 3, Duration::from_millis(20));
    let bad_at = Instant::now();
    green.fail_pct.store(10, Ordering::Relaxed);
    wait_state(&p, "rolled_back", Duration::from_secs(60)).await;
    let took = bad_at.elapsed().as_secs_f64();
    l.finish().await;
    (took, p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_webhook_that_never_answers_or_is_unreachable_never_delays_a_rollback() {
    let hang = webhook(&[], true).await;
    let dead = unreachable();
    // The three run at once, so they share the machine's load.
    let ((none, _p0), (hanging, p1), (unreachable, p2)) = tokio::join!(
        rollback_time(None),
        rollback_time(Some(hang.url())),
        rollback_time(Some(dead)),
    );
    println!(
        "rollback after green went bad: no webhook {none:.2}s, webhook never answers {hanging:.2}s, unreachable {unreachable:.2}s"
    );
    // The rollback is decided on evidence alone: all three need about as
    // many requests. 5 s covers the scheduling noise of a shared machine;
    // a delivery in the way would add 5 s per attempt (the attempt timeout).
    assert!(hanging < none + 5.0, "{hanging} vs {none}");
    assert!(unreachable < none + 5.0, "{unreachable} vs {none}");
    assert!(hang.attempts.load(Ordering::Relaxed) >= 1, "it was called");
    // The unreachable webhook's two events fail after 1 + 2 + 4 s of
    // backoff each, in order: one log line each.
    assert!(
        common::eventually(Duration::from_secs(30), || async {
            count(&p2.metrics().await, "failed") == 2.0
        })
        .await
    );
    let failed = p2
        .logs()
        .into_iter()
        .filter(|l| l["message"] == "rollout notification failed")
        .count();
    assert_eq!(failed, 2);
    assert_eq!(count(&p1.metrics().await, "sent"), 0.0);
}

#[test]
fn cutover_check_points_at_a_bad_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[listen]\nhttp = \"127.0.0.1:0\"\n[rollout]\nnotify = { webhook = \"hooks.example.com/x\" }\n\
         [backends.blue]\nendpoints = [\"127.0.0.1:1\"]\n[backends.green]\nendpoints = [\"127.0.0.1:2\"]\n\
         [[routes]]\nname = \"app\"\nweights = { blue = 100, green = 0 }\n[routes.rollout]\n\
         id = \"v2\"\ncanary = \"green\"\nsteps = [100]\nnotify = { webhook = \"http://\" }\n",
    )
    .unwrap();
    let out = std::process::Command::new(common::proxy::bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("c.toml:4:22: rollout.notify.webhook: \"hooks.example.com/x\" is not a webhook URL: the scheme must be http:// or https://"),
        "{err}"
    );
    assert!(
        err.contains("c.toml:16:22: routes[0].rollout.notify.webhook: \"http://\" is not a webhook URL: a host is required"),
        "{err}"
    );
}

/// An `https://` webhook whose certificate the proxy trusts through
/// `SSL_CERT_FILE` (read by the system-roots loader): the event arrives over
/// TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_webhook_gets_its_events_over_tls() {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject;
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "notify test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().unwrap();
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf.use_authority_key_identifier_extension = true;
    leaf.key_usages.push(KeyUsagePurpose::DigitalSignature);
    leaf.extended_key_usages
        .push(ExtendedKeyUsagePurpose::ServerAuth);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_der = leaf.signed_by(&leaf_key, &issuer).unwrap().der().clone();
    let key = PrivateKeyDer::from_pem_slice(leaf_key.serialize_pem().as_bytes()).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![leaf_der], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let events: Arc<Mutex<Vec<Value>>> = Arc::default();
    let ev = events.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, ev) = (acceptor.clone(), ev.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let ev = ev.clone();
                    async move {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        ev.lock()
                            .unwrap()
                            .push(serde_json::from_slice(&body).unwrap());
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    let (blue, green) = (flaky("blue").await, flaky("green").await);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let path = dir.path().join("cutover.toml");
    std::fs::write(
        &path,
        config(
            &blue,
            &green,
            &notify(&format!("https://localhost:{port}/hook")),
            "steps = [50, 100]\nhold = \"1h\"",
        ),
    )
    .unwrap();
    let ca_file = ca_file.to_str().unwrap().to_owned();
    let p = Proxy::start_at(dir, path, &[("SSL_CERT_FILE", &ca_file)]).await;
    assert!(
        common::eventually(Duration::from_secs(10), || async {
            !events.lock().unwrap().is_empty()
        })
        .await,
        "{:?}",
        p.logs()
    );
    assert_eq!(events.lock().unwrap()[0]["to"], "progressing");
    // Counted once the answer is in, just after the receiver saw the event.
    assert!(
        common::eventually(Duration::from_secs(5), || async {
            count(&p.metrics().await, "sent") == 1.0
        })
        .await
    );
}
