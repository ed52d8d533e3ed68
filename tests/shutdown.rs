//! Graceful shutdown: on SIGTERM stop accepting, finish what is in flight,
//! close idle keep-alive connections, exit 0.

mod common;

use std::time::{Duration, Instant};

use common::raw::RawConn;

/// Appended after the route: these tests time the shutdown itself, not
/// the `server.drain_delay` before it; an idle keep-alive connection waits
/// `timeouts.graceful_close` (here 1 s) for a last request at shutdown.
const NO_DELAY: &str = "\n[server]\ndrain_delay = \"0s\"\n\n[timeouts]\ngraceful_close = \"1s\"\n";

/// Whether a new TCP connection to `addr` is refused (or reset at once).
async fn refused(addr: std::net::SocketAddr) -> bool {
    tokio::net::TcpStream::connect(addr).await.is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_in_flight_request_finish_then_exits_0() {
    let (b, _g, mut p) = common::blue_green(100, 0, NO_DELAY).await;
    let addr = p.http;
    // An idle keep-alive connection, which must not hold the exit back.
    let mut idle = RawConn::connect(addr).await;
    idle.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(idle.read_response().await.unwrap().status, 200);

    let client = common::client();
    let url = p.url("/sleep/2000");
    let in_flight = tokio::spawn(async move {
        let resp = client.get(url).send().await?;
        let status = resp.status().as_u16();
        Ok::<_, reqwest::Error>((status, resp.text().await?, Instant::now()))
    });
    assert!(
        common::eventually(Duration::from_secs(5), || async {
            b.seen().contains(&"/sleep/2000".to_owned())
        })
        .await,
        "the slow request reached the backend"
    );
    let signalled = Instant::now();
    p.terminate();

    // New connections are refused soon after the signal ...
    assert!(
        common::eventually(Duration::from_secs(5), || refused(addr)).await,
        "still accepting connections after SIGTERM"
    );
    let refused_at = Instant::now();
    // ... while the in-flight request is still running, and it completes.
    let (status, body, done) = in_flight
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert!(
        refused_at < done,
        "the 2 s request ended before the listener closed"
    );
    assert_eq!(status, 200);
    assert_eq!(body, "blue");
    assert!(refused(addr).await, "accepting again after the drain");

    // The idle connection was closed, not left to the 30 s drain deadline.
    let (closed, _) = idle.closed_within(Duration::from_secs(5)).await;
    assert!(closed, "the idle keep-alive connection was not closed");

    let status = tokio::task::spawn_blocking(move || {
        let s = p.wait_exit(Duration::from_secs(10));
        (s, p)
    })
    .await
    .unwrap()
    .0
    .expect("the proxy exits within 10 s of finishing its last request");
    assert!(status.success(), "exit status {status}");
    assert_eq!(status.code(), Some(0));
    assert!(done.duration_since(signalled) < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_nothing_in_flight_exits_0_promptly() {
    let (_b, _g, mut p) = common::blue_green(100, 0, NO_DELAY).await;
    // An idle HTTP/1.1 keep-alive connection (pooled by reqwest) ...
    let client = common::client();
    let resp = client.get(p.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "blue");
    // ... and an idle HTTP/2 connection, held open by this test: the proxy
    // has to close both (GOAWAY for HTTP/2) to exit before the 30 s drain.
    let stream = tokio::net::TcpStream::connect(p.http).await.unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let h2_conn = tokio::spawn(conn);
    let req = hyper::Request::get(p.url("/"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    assert_eq!(h2.send_request(req).await.unwrap().status(), 200);
    let started = Instant::now();
    p.terminate();
    let status = tokio::task::spawn_blocking(move || p.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("exits");
    assert_eq!(status.code(), Some(0));
    // Well before the default 30 s drain deadline: idle connections are closed.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let ended = tokio::time::timeout(Duration::from_secs(5), h2_conn).await;
    assert!(ended.is_ok(), "the HTTP/2 connection is still open");
    drop(h2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_an_h2_stream_lets_it_finish() {
    // HTTP/2: GOAWAY, the open stream completes.
    let (b, _g, mut p) = common::blue_green(100, 0, NO_DELAY).await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let url = p.url("/sleep/1000");
    let in_flight = tokio::spawn(async move {
        let resp = client.get(url).send().await?;
        let version = resp.version();
        let status = resp.status().as_u16();
        Ok::<_, reqwest::Error>((version, status, resp.text().await?))
    });
    assert!(common::eventually(Duration::from_secs(5), || async { !b.seen().is_empty() }).await);
    p.terminate();
    let (version, status, body) = in_flight.await.unwrap().expect("the stream completes");
    assert_eq!(version, reqwest::Version::HTTP_2);
    assert_eq!(status, 200);
    assert_eq!(body, "blue");
    let status = tokio::task::spawn_blocking(move || p.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("exits");
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_drains_like_sigterm() {
    let (b, _g, mut p) = common::blue_green(100, 0, NO_DELAY).await;
    let client = common::client();
    let url = p.url("/sleep/1000");
    let in_flight = tokio::spawn(async move {
        let resp = client.get(url).send().await?;
        let status = resp.status().as_u16();
        Ok::<_, reqwest::Error>((status, resp.text().await?))
    });
    assert!(common::eventually(Duration::from_secs(5), || async { !b.seen().is_empty() }).await);
    let sent = std::process::Command::new("kill")
        .args(["-INT", &p.child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let (status, body) = in_flight
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!((status, body.as_str()), (200, "blue"));
    let status = tokio::task::spawn_blocking(move || p.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("exits");
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_deadline_bounds_the_wait() {
    // drain = 500ms, a request that would take 10 s: the proxy exits 0 soon
    // after the deadline instead of waiting for it.
    let (b, _g, mut p) =
        common::blue_green(100, 0, &format!("{NO_DELAY}drain = \"500ms\"\n")).await;
    let client = common::client();
    let url = p.url("/sleep/10000");
    let in_flight =
        tokio::spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) });
    assert!(common::eventually(Duration::from_secs(5), || async { !b.seen().is_empty() }).await);
    let signalled = Instant::now();
    p.terminate();
    let (status, p) = tokio::task::spawn_blocking(move || (p.wait_exit(Duration::from_secs(8)), p))
        .await
        .unwrap();
    let waited = signalled.elapsed();
    let status = status.expect("exits after the drain deadline");
    assert_eq!(status.code(), Some(0));
    assert!(
        waited >= Duration::from_millis(400),
        "did not wait for the in-flight request: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "waited {waited:?} with drain = 500ms"
    );
    // The cut-off request fails rather than hanging or succeeding.
    let result = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("ends")
        .unwrap();
    assert!(
        result.is_err(),
        "a request cut off by the deadline answered {result:?}"
    );
    drop(p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_websocket_is_drained_not_cut() {
    // An upgraded connection is an exchange in flight: after SIGTERM it keeps
    // working until the drain deadline (here 3 s) or until it closes, as
    // with nginx and Envoy; it is not reset the moment the signal arrives.
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() && ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let cfg = common::config(
        &[],
        &format!(
            "[server]\ndrain_delay = \"0s\"\n\n[timeouts]\ndrain = \"3s\"\n\n[backends.ws]\nendpoints = [\"{ws_addr}\"]\n\n\
             [[routes]]\nname = \"ws\"\nweights = {{ ws = 1 }}\n"
        ),
    );
    let mut p = common::Proxy::start(&cfg).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/", p.http))
        .await
        .unwrap();
    let mut echo = async |text: &str| {
        ws.send(Message::text(text))
            .await
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(m))) => Ok(m.into_text().map_err(|e| e.to_string())?.to_string()),
            other => Err(format!("{other:?}")),
        }
    };
    assert_eq!(echo("before").await.unwrap(), "before");
    let signalled = Instant::now();
    p.terminate();
    // Wait until the signal took effect (the listener is closed) ...
    assert!(common::eventually(Duration::from_secs(5), || refused(p.http)).await);
    // ... then the tunnel still carries messages.
    let after = echo("after the signal").await;
    assert_eq!(
        after.as_deref(),
        Ok("after the signal"),
        "the WebSocket was cut at SIGTERM"
    );
    let status = tokio::task::spawn_blocking(move || p.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("exits by the drain deadline");
    assert_eq!(status.code(), Some(0));
    assert!(
        signalled.elapsed() < Duration::from_secs(8),
        "took {:?}",
        signalled.elapsed()
    );
}

/// `/readyz` says 503 as soon as SIGTERM arrives, while the listeners keep
/// serving for `server.drain_delay`, so a load balancer stops sending
/// before anything is refused (issue 13, item 15).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_reports_draining_before_the_listeners_close() {
    let (_b, _g, mut p) =
        common::blue_green(100, 0, "\n[server]\ndrain_delay = \"1500ms\"\n").await;
    let client = common::client();
    let readyz = async |c: &reqwest::Client| {
        c.get(p.admin_url("/readyz"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .ok()
    };
    assert_eq!(readyz(&client).await, Some(200));
    let signalled = Instant::now();
    p.terminate();
    assert!(
        common::eventually(Duration::from_secs(1), || async {
            readyz(&client).await == Some(503)
        })
        .await,
        "/readyz did not report draining"
    );
    // Within the delay, new connections are still accepted and served.
    let fresh = reqwest::Client::builder().no_proxy().build().unwrap();
    let resp = fresh.get(p.url("/")).send().await;
    assert!(
        signalled.elapsed() < Duration::from_millis(1500),
        "too slow to check inside the delay; rerun on a less loaded machine"
    );
    assert_eq!(resp.map(|r| r.status().as_u16()).ok(), Some(200));
    // Then the listener closes and the process exits 0.
    assert!(
        common::eventually(Duration::from_secs(5), || refused(p.http)).await,
        "the listener did not close after the delay"
    );
    assert!(signalled.elapsed() >= Duration::from_millis(1400));
    let status = tokio::task::spawn_blocking(move || p.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("exits");
    assert_eq!(status.code(), Some(0));
}
