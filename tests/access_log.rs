//! The access log and request IDs, through the real binary: one JSON line
//! per request naming the backend that served it (after a failover and an
//! override too) and the same `x-request-id` the backend and the client
//! saw; sampling that never hides an error; reopening after logrotate's
//! rename; a stalled log that never stalls requests; upgrades logged once,
//! when they end.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::ctl::refused_addr;
use common::{Backend, Proxy, eventually, metric};
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

const ACCESS: &str = "\n[access_log]\npath = \"access.log\"\n";

fn log_path(p: &Proxy) -> PathBuf {
    p.dir.path().join("access.log")
}

/// The JSON lines of an access log file (every line must parse).
fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The line of request `id`, once it has been written.
async fn line_of(path: &Path, id: &str) -> Value {
    let mut found = None;
    eventually(Duration::from_secs(10), || {
        found = lines(path).into_iter().find(|l| l["request_id"] == id);
        std::future::ready(found.is_some())
    })
    .await;
    found.unwrap_or_else(|| panic!("no line for {id} in {:?}", lines(path)))
}

fn id_of(resp: &reqwest::Response) -> String {
    resp.headers()["x-request-id"].to_str().unwrap().to_owned()
}

/// What the backend's `/echo` saw of a header.
fn echoed(body: &Value, name: &str) -> Option<String> {
    body["headers"][name][0].as_str().map(str::to_owned)
}

/// `Connection` may name fields to drop at the hop, but not the request's
/// ID: the backend gets the ID the client and the log see, whether the
/// client sent one or not.
#[tokio::test]
async fn a_connection_header_cannot_strip_the_request_id() {
    let (_b, _g, p) = common::blue_green(100, 0, ACCESS).await;
    let c = common::client();
    for given in [Some("client-id-1"), None] {
        let mut req = c
            .get(p.url("/echo"))
            .header("connection", "keep-alive, x-request-id, x-other")
            .header("x-other", "dropped");
        if let Some(id) = given {
            req = req.header("x-request-id", id);
        }
        let resp = req.send().await.unwrap();
        let id = id_of(&resp);
        if let Some(given) = given {
            assert_eq!(id, given);
        }
        let body: Value = resp.json().await.unwrap();
        assert_eq!(
            echoed(&body, "x-request-id").as_deref(),
            Some(&*id),
            "{body}"
        );
        assert_eq!(
            echoed(&body, "x-other"),
            None,
            "a named field is dropped: {body}"
        );
        line_of(&log_path(&p), &id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_names_the_backend_and_the_request_id_everyone_saw() {
    let extra = format!("override = {{ header = \"x-cutover-backend\" }}\n{ACCESS}");
    let (_b, _g, p) = common::blue_green(100, 0, &extra).await;
    let c = common::client();

    let resp = c
        .get(p.url("/echo/q?secret=1"))
        .header("user-agent", "test-agent/1")
        .send()
        .await
        .unwrap();
    let id = id_of(&resp);
    assert_eq!(id.len(), 36, "a UUID: {id}");
    assert_eq!(&id[14..15], "7", "version 7: {id}");
    let raw = resp.bytes().await.unwrap();
    let body: Value = serde_json::from_slice(&raw).unwrap_or_else(|e| panic!("{e}: {raw:?}"));
    assert_eq!(echoed(&body, "x-request-id").as_deref(), Some(&*id));
    let l = line_of(&log_path(&p), &id).await;
    assert_eq!(l["backend"], "blue", "{l}");
    assert_eq!(l["route"], "app");
    assert_eq!(l["status"], 200);
    assert_eq!(l["method"], "GET");
    assert_eq!(l["path"], "/echo/q", "no query without log_query: {l}");
    assert_eq!(l["protocol"], "HTTP/1.1");
    assert_eq!(l["override"], false);
    assert_eq!(l["retries"], 0);
    assert_eq!(l["failover_from"], Value::Null);
    assert_eq!(l["error"], Value::Null);
    assert_eq!(l["user_agent"], "test-agent/1");
    assert_eq!(l["bytes_in"], 0);
    assert_eq!(l["bytes_out"].as_u64(), Some(raw.len() as u64), "{l}");
    assert!(
        l["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{l}"
    );
    assert!(
        l["endpoint"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{l}"
    );
    let (up, total) = (
        l["upstream_ms"].as_f64().unwrap(),
        l["duration_ms"].as_f64().unwrap(),
    );
    assert!(0.0 < up && up <= total, "{l}");
    assert!(l["ts"].as_str().unwrap().ends_with('Z'), "{l}");

    // A tester's override: served by green, and the line says so.
    let resp = c
        .get(p.url("/"))
        .header("x-cutover-backend", "green")
        .send()
        .await
        .unwrap();
    let id = id_of(&resp);
    assert_eq!(resp.text().await.unwrap(), "green");
    let l = line_of(&log_path(&p), &id).await;
    assert_eq!(
        (&l["backend"], &l["override"]),
        (&"green".into(), &true.into()),
        "{l}"
    );
    assert_eq!(l["bytes_out"], 5);

    // A client's own ID is kept; an oversized or unsafe one is replaced.
    let mine = "client-id_1.2:3";
    for (given, kept) in [
        (mine.to_owned(), true),
        ("a".repeat(128), true),
        ("a".repeat(129), false),
        ("bad\"id".to_owned(), false),
        ("two words".to_owned(), false),
    ] {
        let resp = c
            .post(p.url("/echo"))
            .header("x-request-id", &given)
            .body("12345")
            .send()
            .await
            .unwrap();
        let id = id_of(&resp);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(id == given, kept, "{given:?} -> {id}");
        if !kept {
            assert_eq!(id.len(), 36);
        }
        assert_eq!(echoed(&body, "x-request-id").as_deref(), Some(&*id));
        let l = line_of(&log_path(&p), &id).await;
        assert_eq!(l["bytes_in"], 5, "{l}");
        assert_eq!(l["method"], "POST");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_names_both_backends_and_the_event_log_the_request() {
    let (_reserved, dead) = refused_addr();
    let green = Backend::start("green").await;
    let cfg = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [backends.blue]\nendpoints = [\"{dead}\"]\n[backends.green]\nendpoints = [\"{}\"]\n\
         [[routes]]\nname = \"app\"\nweights = {{ blue = 100, green = 0 }}\nfailover = true\n{ACCESS}",
        green.addr
    );
    let p = Proxy::start(&cfg).await;
    let resp = common::client().get(p.url("/")).send().await.unwrap();
    let id = id_of(&resp);
    assert_eq!(resp.text().await.unwrap(), "green");
    let l = line_of(&log_path(&p), &id).await;
    assert_eq!(l["backend"], "green", "{l}");
    assert_eq!(l["failover_from"], "blue", "{l}");
    assert_eq!(l["retries"], 1, "{l}");
    assert_eq!(l["status"], 200);
    // The refused connect's event log line carries the request's ID.
    let logged = eventually(Duration::from_secs(5), || {
        let found = p
            .logs()
            .iter()
            .any(|e| e["message"] == "upstream request failed" && e["request_id"] == *id);
        std::future::ready(found)
    })
    .await;
    assert!(logged, "{:?}", p.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_zero_still_logs_errors() {
    let (_reserved, dead) = refused_addr();
    let ok = Backend::start("ok").await;
    let cfg = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [backends.down]\nendpoints = [\"{dead}\"]\nretries = 0\n[backends.ok]\nendpoints = [\"{}\"]\n\
         [[routes]]\nname = \"down\"\npath_prefix = \"/down\"\nweights = {{ down = 1 }}\n\
         [[routes]]\nname = \"ok\"\nweights = {{ ok = 1 }}\n{ACCESS}sample = 0\n",
        ok.addr
    );
    let p = Proxy::start(&cfg).await;
    let c = common::client();
    let mut ok_ids = Vec::new();
    for _ in 0..20 {
        let resp = c.get(p.url("/")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        ok_ids.push(id_of(&resp));
    }
    let resp = c.get(p.url("/down")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    let id = id_of(&resp);
    let l = line_of(&log_path(&p), &id).await;
    assert_eq!(l["status"], 502);
    assert_eq!(l["route"], "down");
    assert_eq!(l["backend"], "down");
    assert_eq!(l["error"], "upstream_connect", "{l}");
    // The 502's line was written after the 200s were answered: none of
    // them is in the file.
    let all = lines(&log_path(&p));
    assert!(
        all.iter()
            .all(|l| !ok_ids.iter().any(|id| l["request_id"] == **id)),
        "{all:?}"
    );
    // A local answer before routing (two `Host` fields: 400) is an error
    // too.
    let raw = common::raw::roundtrip(p.http, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(raw.status, 400);
    let id = raw.header("x-request-id").unwrap().to_owned();
    let l = line_of(&log_path(&p), &id).await;
    assert_eq!(
        (&l["error"], &l["route"]),
        (&"bad_host".into(), &Value::Null)
    );
}

fn signal(p: &Proxy, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &p.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_is_reopened_after_a_rename() {
    let (_b, _g, p) = common::blue_green(1, 0, ACCESS).await;
    let c = common::client();
    let path = log_path(&p);
    let first = id_of(&c.get(p.url("/")).send().await.unwrap());
    line_of(&path, &first).await;

    // logrotate: rename, then SIGUSR1.
    let rotated = p.dir.path().join("access.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    signal(&p, "-USR1");
    // Any line in a new `access.log` was written after the reopen.
    let reopened = eventually(Duration::from_secs(10), || {
        let (c, url, path) = (c.clone(), p.url("/"), path.clone());
        async move {
            c.get(url).send().await.unwrap();
            !lines(&path).is_empty()
        }
    })
    .await;
    assert!(reopened, "no new access.log after rename + SIGUSR1");
    let old = lines(&rotated);
    assert!(old.iter().any(|l| l["request_id"] == *first));
    let new = lines(&path);
    assert!(new.iter().all(|l| !old.contains(l)), "a line in both files");

    // A rename alone (no signal) is noticed too, within a second or so.
    std::fs::rename(&path, p.dir.path().join("access.log.2")).unwrap();
    let reopened = eventually(Duration::from_secs(10), || {
        let (c, url, path) = (c.clone(), p.url("/"), path.clone());
        async move {
            c.get(url).send().await.unwrap();
            !lines(&path).is_empty()
        }
    })
    .await;
    assert!(reopened, "no new access.log after a rename without signal");
    let text = p.metrics().await;
    assert_eq!(metric(&text, "cutover_access_log_dropped_total", &[]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_log_never_stalls_requests() {
    let b = Backend::start("blue").await;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("access.log");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    // A reader that never reads: the proxy's writes block once the pipe's
    // buffer (64 KiB) is full. O_NONBLOCK (0o4000 on Linux) so that this
    // open does not wait for the writer.
    use std::os::unix::fs::OpenOptionsExt;
    let _reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(0o4000)
        .open(&fifo)
        .unwrap();
    let cfg = common::config(
        &[("blue", &[&b])],
        &format!("[[routes]]\nname = \"app\"\nweights = {{ blue = 1 }}\n{ACCESS}"),
    );
    let path = dir.path().join("cutover.toml");
    std::fs::write(&path, cfg).unwrap();
    let p = Proxy::start_at(dir, path, &[]).await;

    // Long lines (an 8 KiB user agent) fill the pipe and then the queue of
    // batches (256 x 32 KiB) within about 1,100 requests.
    let agent = "a".repeat(8 << 10);
    const N: usize = 2_000;
    const TASKS: usize = 8;
    let next = Arc::new(AtomicUsize::new(0));
    let slowest = Arc::new(std::sync::Mutex::new(Duration::ZERO));
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (c, url, agent) = (common::client(), p.url("/"), agent.clone());
            let (next, slowest) = (next.clone(), slowest.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < N {
                    let t = Instant::now();
                    let resp = c
                        .get(&url)
                        .header("user-agent", &agent)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status(), 200);
                    resp.bytes().await.unwrap();
                    let mut s = slowest.lock().unwrap();
                    *s = (*s).max(t.elapsed());
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let took = started.elapsed();
    let slowest = *slowest.lock().unwrap();
    // A request that waited on the log would wait forever (nobody reads):
    // any bound shows it did not; 2 s leaves room for a loaded machine.
    assert!(
        slowest < Duration::from_secs(2),
        "slowest request {slowest:?} (all: {took:?})"
    );
    let dropped = eventually(Duration::from_secs(5), || async {
        metric(&p.metrics().await, "cutover_access_log_dropped_total", &[]) > 0.0
    })
    .await;
    assert!(dropped, "no dropped line counted");
    // Still serving, promptly.
    let t = Instant::now();
    let resp = common::client().get(p.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(t.elapsed() < Duration::from_secs(2));
}

/// A backend that answers with its own `traceparent` and `tracestate`, and
/// the request's headers as a JSON body.
async fn trace_backend() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let headers: serde_json::Map<String, Value> = req
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
                        .collect();
                    let mut resp = hyper::Response::new(Full::new(Bytes::from(
                        Value::from(headers).to_string(),
                    )));
                    let h = resp.headers_mut();
                    h.insert(
                        "traceparent",
                        "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"
                            .parse()
                            .unwrap(),
                    );
                    h.insert("tracestate", "backend=1,congo=t61rcWkgMzE".parse().unwrap());
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_passes_unchanged_both_ways() {
    let backend = trace_backend().await;
    let cfg = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[backends.t]\nendpoints = [\"{backend}\"]\n\
         [[routes]]\nname = \"t\"\nweights = {{ t = 1 }}\n"
    );
    let p = Proxy::start(&cfg).await;
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let state = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";
    let resp = common::client()
        .get(p.url("/"))
        .header("traceparent", parent)
        .header("tracestate", state)
        .send()
        .await
        .unwrap();
    let h = resp.headers().clone();
    let seen: Value = resp.json().await.unwrap();
    assert_eq!(seen["traceparent"], parent);
    assert_eq!(seen["tracestate"], state);
    assert_eq!(
        seen["x-request-id"].as_str(),
        h["x-request-id"].to_str().ok()
    );
    assert_eq!(
        h["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"
    );
    assert_eq!(h["tracestate"], "backend=1,congo=t61rcWkgMzE");
}

/// A WebSocket echo server.
async fn ws_echo_backend() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    let echo = matches!(msg, Message::Text(_) | Message::Binary(_));
                    if msg.is_close() || (echo && ws.send(msg).await.is_err()) {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_is_logged_once_when_it_ends() {
    let ws = ws_echo_backend().await;
    let cfg = common::config(
        &[],
        &format!(
            "[backends.ws]\nendpoints = [\"{ws}\"]\n\n[[routes]]\nname = \"ws\"\nweights = {{ ws = 1 }}\n{ACCESS}"
        ),
    );
    let p = Proxy::start(&cfg).await;
    let (mut socket, resp) = tokio_tungstenite::connect_async(format!("ws://{}/ws", p.http))
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let message = "x".repeat(1000);
    for _ in 0..3 {
        socket.send(Message::text(message.clone())).await.unwrap();
        let back = socket.next().await.unwrap().unwrap();
        assert_eq!(back.into_text().unwrap().len(), 1000);
    }
    // Open for longer than a batch waits (100 ms): no line yet.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !lines(&log_path(&p)).iter().any(|l| l["request_id"] == *id),
        "logged before the tunnel ended"
    );
    socket.close(None).await.unwrap();
    while socket.next().await.is_some() {}
    // The tunnel ends when both sides have closed.
    drop(socket);
    let l = line_of(&log_path(&p), &id).await;
    assert_eq!(l["status"], 101, "{l}");
    assert_eq!(l["backend"], "ws");
    // Three masked 1000-byte frames (1008 bytes each) and a close frame up,
    // three unmasked ones (1004 bytes each) and a close frame down.
    let (up, down) = (
        l["bytes_in"].as_u64().unwrap(),
        l["bytes_out"].as_u64().unwrap(),
    );
    assert!((3 * 1008..3 * 1008 + 64).contains(&up), "{l}");
    assert!((3 * 1004..3 * 1004 + 64).contains(&down), "{l}");
    assert!(l["duration_ms"].as_f64().unwrap() >= 400.0, "{l}");
    let count = lines(&log_path(&p))
        .iter()
        .filter(|l| l["request_id"] == *id)
        .count();
    assert_eq!(count, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_still_held_at_shutdown_are_written() {
    let b = Backend::start("blue").await;
    let cfg = common::config(
        &[("blue", &[&b])],
        &format!(
            "[server]\ndrain_delay = \"0s\"\n[[routes]]\nname = \"app\"\nweights = {{ blue = 1 }}\n{ACCESS}"
        ),
    );
    let mut p = Proxy::start(&cfg).await;
    let resp = common::client().get(p.url("/")).send().await.unwrap();
    let id = id_of(&resp);
    resp.bytes().await.unwrap();
    // At once, before the worker's 100 ms flush.
    p.terminate();
    assert!(
        p.wait_exit(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
    assert!(
        lines(&log_path(&p)).iter().any(|l| l["request_id"] == *id),
        "the last line was lost at shutdown"
    );
}
