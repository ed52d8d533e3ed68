//! Timeouts bound what they name, through the real binary: the first request
//! head (`header_read` from the accept), the HTTP/1 vs HTTP/2 decision, the
//! graceful close of HTTP/2 (`graceful_close`), bodies that stop moving
//! (`body_idle`).

mod common;

use std::time::{Duration, Instant};

use common::raw::RawConn;

/// The HTTP/2 client connection preface: the magic, then an empty SETTINGS
/// frame (RFC 9113 §3.4), and nothing after it (no ACK, no PING answer).
const H2_PREFACE_AND_SETTINGS: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

/// Reads until the proxy closes; `Some(elapsed)` if it did within `within`.
async fn closed_after(c: &mut RawConn, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let deadline = started + within;
    while Instant::now() < deadline {
        let (closed, _) = c.closed_within(deadline - Instant::now()).await;
        if closed {
            return Some(started.elapsed());
        }
    }
    None
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_header_read_not_idle() {
    let (b, _g, p) = common::blue_green(
        100,
        0,
        "\n[timeouts]\nheader_read = \"500ms\"\nidle = \"30s\"\n",
    )
    .await;
    let mut c = RawConn::connect(p.http).await;
    let took = closed_after(&mut c, Duration::from_secs(10)).await;
    let took = took.expect("a silent connection was held past 10 s (idle is 30 s)");
    // header_read is checked every quarter of itself: 0.5 s to 0.625 s,
    // plus scheduling.
    assert!(
        took >= Duration::from_millis(400),
        "closed too early: {took:?}"
    );
    assert!(b.seen().is_empty());
}

#[tokio::test]
async fn a_head_trickled_from_its_first_byte_is_http1_under_header_read() {
    // `P`, then `O`, ...: not the HTTP/2 preface once the second byte
    // differs, so header_read applies to the whole head.
    let (b, _g, p) = common::blue_green(
        100,
        0,
        "\n[timeouts]\nheader_read = \"1s\"\nidle = \"30s\"\n",
    )
    .await;
    let mut c = RawConn::connect(p.http).await;
    let head = b"POST /trickle HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n";
    let started = Instant::now();
    let mut cut = false;
    for byte in head.chunks(1) {
        if c.send(byte).await.is_err() {
            cut = true;
            break;
        }
        let (closed, _) = c.closed_within(Duration::from_millis(100)).await;
        if closed {
            cut = true;
            break;
        }
    }
    let took = started.elapsed();
    assert!(
        cut,
        "a head trickled over {took:?} was read to the end (header_read is 1 s)"
    );
    assert!(
        took >= Duration::from_millis(800),
        "cut too early: {took:?}"
    );
    assert!(b.seen().is_empty(), "{:?}", b.seen());
}

#[tokio::test]
async fn a_head_in_one_packet_after_a_pause_is_still_served() {
    // The deadline is header_read, not "instantly": a client that connects
    // and sends its head 300 ms later is served.
    let (_b, _g, p) = common::blue_green(
        100,
        0,
        "\n[timeouts]\nheader_read = \"1s\"\nidle = \"30s\"\n",
    )
    .await;
    let mut c = RawConn::connect(p.http).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await.unwrap();
    assert_eq!(c.read_response().await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_connections_that_never_answer_the_close_ping_are_closed() {
    // 30 connections send the preface and SETTINGS, then nothing: they take
    // all 20 slots (10 wait in the accept queue). At idle the proxy sends
    // GOAWAY and a PING that is never answered; graceful_close later it
    // closes them, and a new request is served.
    let (_b, _g, p) = common::blue_green(
        100,
        0,
        "\n[timeouts]\nidle = \"1s\"\ngraceful_close = \"1s\"\n\n[limits]\nmax_connections = 20\n\n[server]\nworkers = 1\n",
    )
    .await;
    let mut conns = Vec::new();
    for _ in 0..30 {
        let mut c = RawConn::connect(p.http).await;
        c.send(H2_PREFACE_AND_SETTINGS).await.unwrap();
        conns.push(c);
    }
    let started = Instant::now();
    let closing: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move { closed_after(&mut c, Duration::from_secs(20)).await })
        })
        .collect();
    for c in closing {
        // Two rounds of idle + graceful_close (the second for the ten that
        // waited for a slot), each up to a quarter over, plus scheduling.
        let took = c.await.unwrap();
        assert!(
            took.is_some(),
            "an HTTP/2 connection that ignores the PING was held past 20 s"
        );
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "closing took {took:?}");
    let resp = common::raw::roundtrip(p.http, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .expect("a new request is served once the slots are free");
    assert_eq!(resp.status, 200);
}

/// `cutover_connections_open` and the backend's in-flight gauge, summed.
async fn open_and_in_flight(p: &common::Proxy) -> (f64, f64) {
    let text = p.metrics().await;
    (
        common::metric(&text, "cutover_connections_open", &[]),
        common::metric(&text, "cutover_requests_in_flight", &[]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_sending_its_body_gets_408_not_504() {
    let (b, _g, p) = common::blue_green(100, 0, "\n[timeouts]\nbody_idle = \"500ms\"\n").await;
    let mut c = RawConn::connect(p.http).await;
    c.send(b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n0123456789")
        .await
        .unwrap();
    let started = Instant::now();
    let resp = c.read_response().await.expect("an answer within 10 s");
    assert_eq!(resp.status, 408, "{}", resp.text());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(450),
        "answered too early: {took:?}"
    );
    assert_eq!(resp.header("connection"), Some("close"));
    // Not the backend's fault: no upstream error counted.
    let text = p.metrics().await;
    assert_eq!(
        common::metric(&text, "cutover_upstream_errors_total", &[]),
        0.0,
        "{text}"
    );
    // The upstream connection is released.
    let released = common::eventually(Duration::from_secs(5), || async {
        open_and_in_flight(&p).await == (0.0, 0.0)
    })
    .await;
    assert!(released, "{:?}", open_and_in_flight(&p).await);
    assert_eq!(b.seen(), ["/upload"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_held_for_a_retry_is_bounded_by_body_idle() {
    // A small idempotent body is buffered (for a retry after a 5xx) before
    // anything is sent: a client that stops half-way gets 408 there too.
    let b = common::Backend::start("blue").await;
    let cfg = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [timeouts]\nbody_idle = \"500ms\"\n\n\
         [backends.blue]\nendpoints = [\"{}\"]\nretry_on = [\"connect\", \"5xx\"]\n\n\
         [[routes]]\nname = \"app\"\nweights = {{ blue = 1 }}\n",
        b.addr
    );
    let p = common::Proxy::start(&cfg).await;
    let mut c = RawConn::connect(p.http).await;
    c.send(b"PUT /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n01234")
        .await
        .unwrap();
    let resp = c.read_response().await.expect("an answer within 10 s");
    assert_eq!(resp.status, 408, "{}", resp.text());
    assert!(b.seen().is_empty(), "{:?}", b.seen());
    let released = common::eventually(Duration::from_secs(5), || async {
        open_and_in_flight(&p).await == (0.0, 0.0)
    })
    .await;
    assert!(released, "{:?}", open_and_in_flight(&p).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_large_response_is_cut_off() {
    let (_b, _g, p) = common::blue_green(100, 0, "\n[timeouts]\nbody_idle = \"500ms\"\n").await;
    let mut c = RawConn::connect(p.http).await;
    c.send(b"GET /download/50000000 HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    // Read nothing: the socket buffers fill and the response stops.
    let busy = common::eventually(Duration::from_secs(5), || async {
        open_and_in_flight(&p).await == (1.0, 1.0)
    })
    .await;
    assert!(busy, "{:?}", open_and_in_flight(&p).await);
    let started = Instant::now();
    let released = common::eventually(Duration::from_secs(10), || async {
        open_and_in_flight(&p).await == (0.0, 0.0)
    })
    .await;
    assert!(
        released,
        "a stalled download still held its connections 10 s later: {:?}",
        open_and_in_flight(&p).await
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // The client sees its connection end short of 50 MB.
    let got = c.read_until_close(Duration::from_secs(10)).await;
    assert!(got.len() < 50_000_000, "{}", got.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_at_a_zero_window_are_cut_off() {
    let (_b, _g, p) = common::blue_green(100, 0, "\n[timeouts]\nbody_idle = \"500ms\"\n").await;
    let tcp = tokio::net::TcpStream::connect(p.http).await.unwrap();
    // A window of 0: the proxy may send headers, never a byte of body.
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let mut responses = Vec::new();
    for _ in 0..5 {
        let mut client = client.clone().ready().await.unwrap();
        let req = http::Request::get(format!("http://{}/download/1000000", p.http))
            .body(())
            .unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        responses.push(resp);
    }
    let pinned = common::eventually(Duration::from_secs(5), || async {
        open_and_in_flight(&p).await == (1.0, 5.0)
    })
    .await;
    assert!(pinned, "{:?}", open_and_in_flight(&p).await);
    let released = common::eventually(Duration::from_secs(10), || async {
        open_and_in_flight(&p).await == (0.0, 0.0)
    })
    .await;
    assert!(
        released,
        "streams at a zero window still held their upstream connections: {:?}",
        open_and_in_flight(&p).await
    );
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "the HTTP/2 connection was not closed");
    drop(responses);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_that_keeps_moving_outlives_the_request_timeout() {
    // 10 chunks 300 ms apart: 3 s of upload, past `request` (1 s), each
    // pause under `body_idle` (2 s). The upload is the client's, not a slow
    // upstream: it is served.
    let (_b, _g, p) = common::blue_green(
        100,
        0,
        "\n[timeouts]\nrequest = \"1s\"\nbody_idle = \"2s\"\n",
    )
    .await;
    let mut c = RawConn::connect(p.http).await;
    c.send(b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 10000\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.send(&[b'x'; 1000]).await.unwrap();
    }
    let resp = c.read_response().await.expect("an answer");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), "10000");
}

#[tokio::test]
async fn an_open_file_limit_too_small_for_max_connections_is_raised_then_warned_about() {
    // Soft 256, hard 1000: the soft limit is raised to 1000, which holds
    // (1000 - 256) / 2 = 372 connections, not 10,000.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cutover.toml");
    std::fs::write(
        &cfg,
        "[listen]\nhttp = \"127.0.0.1:0\"\n[backends.b]\nendpoints = [\"127.0.0.1:1\"]\n",
    )
    .unwrap();
    let mut child = std::process::Command::new("prlimit")
        .arg("--nofile=256:1000")
        .arg(common::proxy::bin())
        .args(["--log-format", "json", "run", "--config"])
        .arg(&cfg)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("prlimit (util-linux) runs");
    let stderr = child.stderr.take().unwrap();
    let warned = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("open-file limit") {
                return Some(line);
            }
            if line.contains("\"listening\"") {
                return None;
            }
        }
        None
    });
    let line = tokio::time::timeout(Duration::from_secs(10), warned)
        .await
        .expect("a log line in time")
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let line = line.expect("no warning about the open-file limit before listening");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["open_files"], 1000, "{line}");
    assert_eq!(v["lowered_to"], 372, "{line}");
    assert_eq!(v["max_connections"], 10000, "{line}");
}
