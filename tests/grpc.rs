//! HTTP/2 to backends (`protocol = "h2c" | "h2"`) and gRPC end to end: a
//! real tonic client through the real `cutover` binary to real tonic
//! servers (`grpc/echo.rs`).

mod common;
#[path = "grpc/echo.rs"]
mod echo;
#[path = "grpc/refuse.rs"]
mod refuse;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use echo::{Msg, Server};
use futures_util::StreamExt;
use tonic::Code;

use common::{Proxy, eventually};

/// A proxy in front of h2c servers `blue` and `green` with these weights.
fn config(blue: &Server, green: &Server, weights: (u32, u32), extra: &str) -> String {
    format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [backends.blue]\nendpoints = [\"{}\"]\nprotocol = \"h2c\"\n\n\
         [backends.green]\nendpoints = [\"{}\"]\nprotocol = \"h2c\"\n\n\
         [[routes]]\nname = \"grpc\"\nweights = {{ blue = {}, green = {} }}\n{extra}",
        blue.addr, green.addr, weights.0, weights.1
    )
}

async fn setup(weights: (u32, u32), extra: &str) -> (Server, Server, Proxy) {
    let blue = Server::start("blue").await;
    let green = Server::start("green").await;
    let p = Proxy::start(&config(&blue, &green, weights, extra)).await;
    (blue, green, p)
}

fn msg(data: &[u8]) -> Msg {
    Msg {
        data: data.to_vec(),
        ..Msg::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_four_call_kinds_through_h2c() {
    let (blue, _green, p) = setup((100, 0), "").await;
    let mut c = echo::client(p.http).await;

    let r = c.unary(msg(b"hello")).await.expect("unary");
    assert_eq!(r.metadata().get("x-backend").unwrap(), "blue");
    assert_eq!(r.get_ref().text, "blue");
    assert_eq!(r.get_ref().data, b"hello");

    let mut s = c
        .server_stream(Msg {
            count: 5,
            data: b"x".to_vec(),
            ..Msg::default()
        })
        .await
        .expect("server stream")
        .into_inner();
    let mut n = 0;
    while let Some(m) = s.message().await.expect("stream message") {
        assert_eq!(m.count, n);
        n += 1;
    }
    assert_eq!(n, 5);

    let up = futures_util::stream::iter((0..7).map(|_| msg(&[1; 1000])));
    let r = c.client_stream(up).await.expect("client stream");
    assert_eq!((r.get_ref().count, r.get_ref().size), (7, 7000));

    // Bidi: each message answered before the next is sent.
    let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(1);
    let rx = futures_util::stream::unfold(rx, |mut rx| async { rx.recv().await.map(|m| (m, rx)) });
    let mut replies = c.bidi(rx).await.expect("bidi").into_inner();
    for i in 0..10u8 {
        tx.send(msg(&[i])).await.unwrap();
        let m = replies.message().await.unwrap().expect("an answer");
        assert_eq!((m.text.as_str(), m.data.as_slice()), ("blue", &[i][..]));
    }
    drop(tx);
    assert!(replies.message().await.unwrap().is_none());
    assert_eq!(blue.calls(), 4);
}

/// A gRPC error travels in the trailers: status, message and custom
/// metadata, after the messages of a stream; and as a trailers-only answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_arrive_intact() {
    let (_blue, _green, p) = setup((100, 0), "").await;
    let mut c = echo::client(p.http).await;
    let mut s = c
        .server_stream(Msg {
            count: 3,
            fail_code: Code::Aborted as i32,
            ..Msg::default()
        })
        .await
        .unwrap()
        .into_inner();
    for _ in 0..3 {
        s.message()
            .await
            .expect("message before the error")
            .unwrap();
    }
    let status = s.message().await.expect_err("the trailers' status");
    assert_eq!(status.code(), Code::Aborted);
    assert_eq!(status.message(), "failing on purpose");
    assert_eq!(status.metadata().get("x-trailer").unwrap(), "kept");

    let status = c
        .unary(Msg {
            fail_code: Code::PermissionDenied as i32,
            ..Msg::default()
        })
        .await
        .expect_err("trailers-only error");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(status.metadata().get("x-trailer").unwrap(), "kept");

    // A successful stream ends with grpc-status 0 in its trailers.
    let mut s = c
        .server_stream(Msg {
            count: 1,
            ..Msg::default()
        })
        .await
        .unwrap()
        .into_inner();
    s.message().await.unwrap().unwrap();
    assert!(s.message().await.unwrap().is_none());
    let trailers = s.trailers().await.unwrap().expect("trailers");
    assert!(trailers.get("grpc-status").is_none_or(|v| v == "0"));
}

/// 80/20 over 600 calls: green's count is binomial(600, 0.2), mean 120,
/// sd 9.8; the test allows 4 sd (39).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_are_respected() {
    let (blue, green, p) = setup((80, 20), "").await;
    let mut c = echo::client(p.http).await;
    let mut greens = 0i64;
    for _ in 0..600 {
        let r = c.unary(msg(b"")).await.expect("unary");
        if r.get_ref().text == "green" {
            greens += 1;
        }
    }
    assert!((greens - 120).abs() <= 39, "green answered {greens} of 600");
    assert_eq!(blue.calls() + green.calls(), 600);
    // All of it on one connection per backend and worker.
    assert!(blue.connections() <= 2, "{}", blue.connections());
}

/// `sticky = { header = "x-user-id" }` reads gRPC metadata like any header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_by_metadata() {
    let (_blue, _green, p) = setup((50, 50), "sticky = { header = \"x-user-id\" }\n").await;
    let mut c = echo::client(p.http).await;
    let mut seen = std::collections::HashSet::new();
    for user in 0..40 {
        let mut first = None;
        for _ in 0..3 {
            let mut req = tonic::Request::new(msg(b""));
            req.metadata_mut()
                .insert("x-user-id", format!("user-{user}").parse().unwrap());
            let text = c.unary(req).await.unwrap().into_inner().text;
            assert_eq!(
                first.get_or_insert(text.clone()),
                &text,
                "user {user} moved"
            );
            seen.insert(text);
        }
    }
    // 40 users on a 50/50 split all on one side: p = 2^-39.
    assert_eq!(seen.len(), 2);
}

/// A call the client cancels is reset upstream: the server's stream is
/// dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_reaches_the_backend() {
    let (blue, _green, p) = setup((100, 0), "").await;
    let mut c = echo::client(p.http).await;
    let mut s = c
        .server_stream(Msg {
            count: 1_000_000,
            delay_ms: 20,
            ..Msg::default()
        })
        .await
        .unwrap()
        .into_inner();
    s.message().await.unwrap().unwrap();
    s.message().await.unwrap().unwrap();
    assert_eq!(blue.state.cancelled.load(Ordering::Relaxed), 0);
    drop(s);
    assert!(
        eventually(Duration::from_secs(5), || async {
            blue.state.cancelled.load(Ordering::Relaxed) == 1
        })
        .await,
        "the backend's stream was not cancelled"
    );
}

/// 100 MiB down a server stream and 100 MiB up a client stream: the
/// proxy's memory stays bounded by its windows, not the stream size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_streams_both_ways_in_bounded_memory() {
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: u32 = 1600; // 100 MiB
    let (blue, _green, p) = setup((100, 0), "").await;
    let mut c = echo::client(p.http).await;
    c.unary(msg(b"warm")).await.unwrap();
    let before = p.rss_kib();
    let started = Instant::now();

    let mut s = c
        .server_stream(Msg {
            count: CHUNKS,
            data: vec![7; CHUNK],
            ..Msg::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (mut n, mut peak) = (0u64, before);
    while let Some(m) = s.message().await.unwrap() {
        n += m.data.len() as u64;
        if m.count % 200 == 0 {
            peak = peak.max(p.rss_kib());
        }
    }
    assert_eq!(n, u64::from(CHUNKS) * CHUNK as u64);
    let down = started.elapsed();

    let started = Instant::now();
    let up = futures_util::stream::iter(0..CHUNKS).map(|_| msg(&[9; CHUNK]));
    let sampler = {
        let pid = p.child.id();
        tokio::spawn(async move {
            let mut peak = 0;
            for _ in 0..2000 {
                peak = peak.max(rss_of(pid));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        })
    };
    let r = c.client_stream(up).await.unwrap();
    let up_time = started.elapsed();
    sampler.abort();
    assert_eq!(r.get_ref().size, u64::from(CHUNKS) * CHUNK as u64);
    assert_eq!(
        blue.state.received.load(Ordering::Relaxed),
        r.get_ref().size
    );
    peak = peak.max(p.rss_kib());
    eprintln!(
        "100 MiB down in {down:?}, up in {up_time:?}; proxy RSS {before} KiB before, peak {peak} KiB"
    );
    assert!(
        peak < before + 32 * 1024,
        "proxy RSS grew from {before} KiB to {peak} KiB"
    );
}

fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Many calls at once share one upstream connection per worker; a server
/// that allows 4 streams per connection gets more connections, and every
/// call succeeds (none refused for exceeding the peer's limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_multiplex_within_the_peer_limit() {
    let blue = Server::start_with("blue", Some(4), None).await;
    let green = Server::start("green").await;
    let p = Proxy::start(&format!(
        "[server]\nworkers = 1\n\n{}",
        config(&blue, &green, (100, 0), "")
    ))
    .await;
    let mut c = echo::client(p.http).await;
    // The server's SETTINGS arrive during the first call; the connection
    // records them when it sends the second.
    c.unary(msg(b"")).await.unwrap();
    c.unary(msg(b"")).await.unwrap();
    assert_eq!(blue.connections(), 1);
    concurrent_unary_calls(&c, 20, 300).await;
    // The first connection is known to be full at 4: another opens. Its
    // own limit is not known until its SETTINGS arrive, so the rest wait
    // inside it (one stream until then, then 4) rather than be refused.
    assert!(blue.connections() >= 2, "{}", blue.connections());

    // With an unlimited server, 20 at once fit on the one connection.
    let p2 = Proxy::start(&format!(
        "[server]\nworkers = 1\n\n{}",
        config(&green, &blue, (100, 0), "")
    ))
    .await;
    let mut c = echo::client(p2.http).await;
    c.unary(msg(b"")).await.unwrap();
    let before = green.connections();
    concurrent_unary_calls(&c, 20, 200).await;
    assert_eq!(green.connections(), before);
}

/// A backend that sends GOAWAY (graceful restart) is replaced without
/// failing a call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_replaces_the_connection_without_failing_calls() {
    let (blue, _green, p) = setup((100, 0), "").await;
    let mut c = echo::client(p.http).await;
    for round in 0..5 {
        for _ in 0..20 {
            c.unary(msg(b"")).await.expect("unary");
        }
        blue.goaway();
        // No wait: the next calls race the GOAWAY.
        let _ = round;
    }
    for _ in 0..20 {
        c.unary(msg(b""))
            .await
            .expect("unary after the last GOAWAY");
    }
    assert!(blue.connections() >= 2, "{}", blue.connections());
}

/// Streams the backend never processed go out again instead of failing:
/// a server that refuses every third stream (REFUSED_STREAM; a call at
/// most once) and sends GOAWAY every 10 streams, under 8 concurrent
/// callers, fails no call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_streams_and_goaway_are_resent() {
    let b = refuse::Refusing::start(10).await;
    let p = Proxy::start(&format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [backends.blue]\nendpoints = [\"{}\"]\nprotocol = \"h2c\"\n\n\
         [[routes]]\nname = \"grpc\"\nweights = {{ blue = 100 }}\n",
        b.addr
    ))
    .await;
    let c = echo::client(p.http).await;
    let callers = (0..8).map(|i| {
        let mut c = echo::Client(c.0.clone());
        tokio::spawn(async move {
            let mut failed = Vec::new();
            for j in 0..25u8 {
                let mut req = tonic::Request::new(msg(&[i, j]));
                req.metadata_mut()
                    .insert("x-call", format!("{i}-{j}").parse().unwrap());
                match c.unary(req).await {
                    Ok(r) => assert_eq!(r.get_ref().data, [i, j]),
                    Err(s) => failed.push(s),
                }
            }
            failed
        })
    });
    let failed: Vec<_> = futures_util::future::join_all(callers)
        .await
        .into_iter()
        .flat_map(|r| r.unwrap())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of 200 calls failed: {:?}",
        failed.len(),
        failed.first()
    );
    assert_eq!(b.answered(), 200);
    // About a third of the ~300 streams.
    assert!(b.refused() >= 30, "{} refused", b.refused());
    assert!(b.connections() >= 10, "{} connections", b.connections());
    let m = p.metrics().await;
    assert_eq!(
        common::metric(&m, "cutover_grpc_responses_total", &[("grpc_status", "0")]),
        200.0,
        "{m}"
    );
}

/// An HTTP/1.1 client to an HTTP/2 backend and back; the backend sees
/// HTTP/2 with `:authority` from the client's Host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_client_to_h2c_backend() {
    let b = common::Backend::start("blue").await;
    let p = Proxy::start(&format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n[backends.blue]\nendpoints = [\"{}\"]\nprotocol = \"h2c\"\n\n\
         [[routes]]\nname = \"app\"\nweights = {{ blue = 100 }}\n",
        b.addr
    ))
    .await;
    let client = common::client();
    for _ in 0..3 {
        let resp = client
            .post(p.url("/echo/x?q=1"))
            .header("host", "shop.example")
            .header("te", "trailers")
            .header("x-app", "1")
            .body("payload")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), reqwest::Version::HTTP_11);
        let text = resp.text().await.unwrap();
        let doc: serde_json::Value = serde_json::from_str(&text).expect(&text);
        assert_eq!(doc["version"], "HTTP/2.0", "{doc}");
        assert_eq!(doc["uri"], "http://shop.example/echo/x?q=1", "{doc}");
        assert_eq!(doc["headers"]["te"][0], "trailers", "{doc}");
        assert_eq!(doc["headers"]["x-app"][0], "1", "{doc}");
        assert!(doc["headers"].get("host").is_none(), "{doc}");
    }
    let resp = client.get(p.url("/download/1000000")).send().await.unwrap();
    assert_eq!(resp.bytes().await.unwrap().len(), 1_000_000);
}

/// Status counted by grpc-status: trailers-only errors from the headers,
/// stream errors from the trailers; UNAVAILABLE counts as an error in the
/// A/B evidence and ejects the endpoint, though every answer was HTTP 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_status_is_counted_and_unavailable_is_an_error() {
    let (blue, green, p) = setup(
        (50, 50),
        "[backends.green.outlier]\nmax_ejected_percent = 100\nbase_ejection_time = \"60s\"\n",
    )
    .await;
    green
        .state
        .fail_all
        .store(Code::Unavailable as i32, Ordering::Relaxed);
    let mut c = echo::client(p.http).await;
    let (mut ok, mut unavailable) = (0, 0);
    for _ in 0..40 {
        match c.unary(msg(b"")).await {
            Ok(_) => ok += 1,
            Err(s) => {
                assert_eq!(s.code(), Code::Unavailable);
                assert_eq!(s.message(), "failing on purpose");
                unavailable += 1;
            }
        }
    }
    // Five in a row eject green's only endpoint; the rest fail over to blue.
    assert_eq!(unavailable, 5, "{ok} ok");
    assert_eq!(green.calls(), 5);
    // An error in the trailers, after two messages.
    let mut s = c
        .server_stream(Msg {
            count: 2,
            fail_code: Code::DataLoss as i32,
            ..Msg::default()
        })
        .await
        .unwrap()
        .into_inner();
    while s.message().await.is_ok_and(|m| m.is_some()) {}
    let m = p.metrics().await;
    let grpc = |backend, status| {
        common::metric(
            &m,
            "cutover_grpc_responses_total",
            &[
                ("route", "grpc"),
                ("backend", backend),
                ("grpc_status", status),
            ],
        )
    };
    assert_eq!(grpc("green", "14"), 5.0, "{m}");
    assert_eq!(grpc("blue", "0"), 35.0, "{m}");
    assert_eq!(grpc("blue", "15"), 1.0, "{m}");
    assert_eq!(
        common::metric(&m, "cutover_requests_total", &[("code", "200")]),
        41.0
    );
    assert_eq!(
        common::metric(
            &m,
            "cutover_endpoint_ejections_total",
            &[("backend", "green")]
        ),
        1.0,
        "{m}"
    );
    // The A/B comparison sees green's errors.
    let errors = |doc: &serde_json::Value| {
        doc["routes"][0]["comparisons"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["backend"] == "green"))
            .and_then(|c| c["errors"].as_u64())
    };
    assert!(
        eventually(Duration::from_secs(10), || async {
            let doc: serde_json::Value = reqwest::get(p.admin_url("/admin/analysis"))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            errors(&doc) == Some(5)
        })
        .await,
        "green's 5 UNAVAILABLE are not errors in /admin/analysis"
    );
    drop(blue);
}

/// The proxy's own failures reach a gRPC client as gRPC: HTTP 200,
/// trailers-only, UNAVAILABLE for no backend, DEADLINE_EXCEEDED when the
/// call's grpc-timeout (shorter than timeouts.request) passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_errors_are_grpc_and_grpc_timeout_is_the_deadline() {
    let (blue, _green, p) = setup((100, 0), "").await;
    // A raw HTTP/2 client: tonic's own channel would enforce the timeout
    // itself, before the proxy could.
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let payload = prost::Message::encode_to_vec(&Msg {
        delay_ms: 3000,
        ..Msg::default()
    });
    let mut frame = vec![0u8];
    frame.extend((payload.len() as u32).to_be_bytes());
    frame.extend(payload);
    let started = Instant::now();
    let resp = h2
        .post(p.url(echo::UNARY))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "300m")
        .body(frame)
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["grpc-status"], "4", "{resp:?}");
    assert_eq!(
        resp.headers()["grpc-message"],
        "gateway timeout: upstream did not answer in time"
    );
    assert!(took < Duration::from_millis(2500), "{took:?}");
    assert_eq!(
        blue.state.last_timeout.lock().unwrap().as_deref(),
        Some("300m")
    );

    // No backend listening: UNAVAILABLE from the proxy itself.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let p2 = Proxy::start(&format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [backends.blue]\nendpoints = [\"{dead}\"]\nprotocol = \"h2c\"\nretries = 0\n\n\
         [[routes]]\nname = \"grpc\"\nweights = {{ blue = 100 }}\n"
    ))
    .await;
    let mut c = echo::client(p2.http).await;
    let s = c.unary(msg(b"")).await.expect_err("no backend");
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert_eq!(s.message(), "bad gateway: upstream connect failed");
    let m = p2.metrics().await;
    assert_eq!(
        common::metric(&m, "cutover_grpc_responses_total", &[("grpc_status", "14")]),
        1.0,
        "{m}"
    );
    // A plain HTTP client still gets an HTTP error page.
    let resp = common::client().get(p2.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
}

/// A TLS server config with a fresh self-signed certificate, ALPN `h2`.
fn tls_config() -> std::sync::Arc<rustls::ServerConfig> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let mut c = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![ck.cert.der().clone()], key)
    .unwrap();
    c.alpn_protocols = vec![b"h2".to_vec()];
    std::sync::Arc::new(c)
}

/// gRPC over TLS to the backends: `protocol = "h2"` and `"auto"` (which
/// picks h2 by ALPN), calls and trailers as over h2c.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_tls_with_alpn() {
    let blue = Server::start_with("blue", None, Some(tls_config())).await;
    let green = Server::start_with("green", None, Some(tls_config())).await;
    let p = Proxy::start(&format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n\
         [backends.blue]\nendpoints = [\"https://localhost:{}\"]\nprotocol = \"h2\"\ninsecure_skip_verify = true\n\n\
         [backends.green]\nendpoints = [\"https://localhost:{}\"]\nprotocol = \"auto\"\ninsecure_skip_verify = true\n\n\
         [[routes]]\nname = \"grpc\"\nweights = {{ blue = 50, green = 50 }}\n",
        blue.addr.port(),
        green.addr.port()
    ))
    .await;
    let mut c = echo::client(p.http).await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        let r = c.unary(msg(b"tls")).await.expect("unary over TLS");
        assert_eq!(r.get_ref().data, b"tls");
        seen.insert(r.into_inner().text);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    let up = futures_util::stream::iter((0..3).map(|_| msg(&[1; 10])));
    let mut replies = c.bidi(up).await.expect("bidi over TLS").into_inner();
    let mut n = 0;
    while let Some(_m) = replies.message().await.unwrap() {
        n += 1;
    }
    assert_eq!(n, 3);
    let mut s = c
        .server_stream(Msg {
            count: 1,
            fail_code: Code::Aborted as i32,
            ..Msg::default()
        })
        .await
        .unwrap()
        .into_inner();
    s.message().await.unwrap().unwrap();
    let status = s.message().await.expect_err("trailers over TLS");
    assert_eq!(status.metadata().get("x-trailer").unwrap(), "kept");
    assert!(blue.connections() <= 2 && green.connections() <= 2);
}

/// A reload (new weights) while calls stream ends none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_streaming_load_ends_no_stream() {
    let (blue, green, p) = setup((100, 0), "").await;
    let c = echo::client(p.http).await;
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let mut c = echo::Client(c.0.clone());
            tokio::spawn(async move {
                let mut s = c
                    .server_stream(Msg {
                        count: 40,
                        delay_ms: 25,
                        ..Msg::default()
                    })
                    .await?
                    .into_inner();
                let mut n = 0;
                while s.message().await?.is_some() {
                    n += 1;
                }
                Ok::<_, tonic::Status>(n)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    p.write_config(&config(&blue, &green, (50, 50), ""));
    assert!(
        eventually(Duration::from_secs(10), || async {
            common::metric(
                &p.metrics().await,
                "cutover_config_reloads_total",
                &[("result", "success")],
            ) >= 1.0
        })
        .await,
        "the config was not reloaded"
    );
    for call in calls {
        assert_eq!(call.await.unwrap().expect("stream survives the reload"), 40);
    }
    // New calls follow the new weights.
    let mut c = echo::client(p.http).await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..30 {
        seen.insert(c.unary(msg(b"")).await.unwrap().into_inner().text);
    }
    assert_eq!(seen.len(), 2);
}

/// Health checks speak the backend's protocol: an HTTP/2-only server is
/// healthy to an h2c check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_speak_h2c() {
    let blue = Server::start("blue").await;
    let p = Proxy::start(&format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [backends.blue]\nendpoints = [\"{}\"]\nprotocol = \"h2c\"\n\
         health = {{ path = \"/health\", interval = \"100ms\", start_unhealthy = true, healthy_threshold = 1 }}\n\n\
         [[routes]]\nname = \"grpc\"\nweights = {{ blue = 100 }}\n",
        blue.addr
    ))
    .await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            common::metric(
                &p.metrics().await,
                "cutover_endpoint_healthy",
                &[("backend", "blue")],
            ) == 1.0
        })
        .await,
        "the h2c health check never passed"
    );
    let mut c = echo::client(p.http).await;
    c.unary(msg(b"")).await.expect("healthy endpoint answers");
}

/// `Expect: 100-continue` from an HTTP/1.1 client to an HTTP/2 backend:
/// the body is not held waiting for a `100 Continue` that hyper's HTTP/2
/// client never reports (it would wait the 1 s fallback).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_to_h2c_backend_is_not_held() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = common::Backend::start("blue").await;
    let p = Proxy::start(&format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n[backends.blue]\nendpoints = [\"{}\"]\nprotocol = \"h2c\"\n\n\
         [[routes]]\nname = \"app\"\nweights = {{ blue = 100 }}\n",
        b.addr
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(p.http).await.unwrap();
    let started = Instant::now();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(head.starts_with("HTTP/1.1 100"), "{head}");
    s.write_all(b"hello").await.unwrap();
    let mut got = String::new();
    while !got.contains("\r\n\r\n5") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "{got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    let took = started.elapsed();
    assert!(took < Duration::from_millis(800), "{took:?}");
}

/// Green's errors as the A/B comparison sees them: from /admin/analysis
/// and from `cutover_analysis_requests_total{class="error"}`.
async fn green_errors(p: &Proxy) -> (Option<u64>, f64) {
    let doc: serde_json::Value = reqwest::get(p.admin_url("/admin/analysis"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let analysis = doc["routes"][0]["comparisons"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["backend"] == "green"))
        .and_then(|c| c["errors"].as_u64());
    let m = p.metrics().await;
    let metric = common::metric(
        &m,
        "cutover_analysis_requests_total",
        &[("backend", "green"), ("class", "error")],
    );
    (analysis, metric)
}

/// `[grpc] error_codes`: with NOT_FOUND listed, a green answering NOT_FOUND
/// counts as errors in /metrics and /admin/analysis (and is ejected after
/// 5 in a row); with the default list it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_error_codes_are_configurable() {
    for (extra, errors) in [("[grpc]\nerror_codes = [\"NOT_FOUND\", 14]\n", 5), ("", 0)] {
        let (_blue, green, p) = setup(
            (50, 50),
            &format!(
                "[backends.green.outlier]\nmax_ejected_percent = 100\nbase_ejection_time = \"60s\"\n\n{extra}"
            ),
        )
        .await;
        green
            .state
            .fail_all
            .store(Code::NotFound as i32, Ordering::Relaxed);
        let mut c = echo::client(p.http).await;
        let mut not_found = 0;
        for _ in 0..40 {
            if let Err(s) = c.unary(msg(b"")).await {
                assert_eq!(s.code(), Code::NotFound);
                not_found += 1;
            }
        }
        // Counted: ejected after 5 in a row. Not counted: green keeps its
        // half, binomial(40, 0.5) >= 5 but with p < 1e-6.
        if errors > 0 {
            assert_eq!(not_found, 5, "{extra}");
        } else {
            assert!(not_found > 5, "{not_found}");
        }
        assert!(
            eventually(Duration::from_secs(10), || async {
                green_errors(&p).await == (Some(errors), errors as f64)
            })
            .await,
            "{extra:?}: green's errors {:?}, want {errors}",
            green_errors(&p).await
        );
        let m = p.metrics().await;
        assert_eq!(
            common::metric(
                &m,
                "cutover_grpc_responses_total",
                &[("backend", "green"), ("grpc_status", "5")],
            ),
            not_found as f64,
            "{m}"
        );
    }
}

/// A bad `[grpc] error_codes` entry is rejected at its file:line:col.
#[test]
fn bad_grpc_error_codes_are_rejected_at_their_location() {
    let dir = tempfile::tempdir().unwrap();
    for (bad, col) in [("\"NOT_A_CODE\"", 31), ("17", 31), ("-1", 31)] {
        let path = dir.path().join("cutover.toml");
        std::fs::write(
            &path,
            format!(
                "[listen]\nhttp = \"127.0.0.1:0\"\n\n[backends.blue]\nendpoints = [\"127.0.0.1:1\"]\n\n\
                 [[routes]]\nname = \"a\"\nweights = {{ blue = 1 }}\n\n[grpc]\nerror_codes = [\"unavailable\", {bad}]\n"
            ),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(
            text.contains(&format!("cutover.toml:12:{col}: grpc.error_codes[1]")),
            "{bad}: {text}"
        );
    }
}

/// `retry_on = ["5xx"]`: a call answered UNAVAILABLE trailers-only (no
/// response byte) is retried on the other endpoint and succeeds; a call
/// that already received a message is never retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_before_any_byte_is_retried() {
    let down = Server::start("down").await;
    let up = Server::start("up").await;
    down.state
        .fail_all
        .store(Code::Unavailable as i32, Ordering::Relaxed);
    let p = Proxy::start(&format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [backends.blue]\nendpoints = [\"{}\", \"{}\"]\nprotocol = \"h2c\"\nretry_on = [\"5xx\"]\n\
         outlier = {{ consecutive_failures = 0 }}\n\n\
         [[routes]]\nname = \"grpc\"\nweights = {{ blue = 100 }}\n",
        down.addr, up.addr
    ))
    .await;
    let mut c = echo::client(p.http).await;
    for i in 0..20u8 {
        let r = c
            .unary(msg(&[i; 100]))
            .await
            .expect("retried to the healthy endpoint");
        assert_eq!(r.get_ref().text, "up");
        assert_eq!(r.get_ref().data, [i; 100]);
    }
    // Round robin: about half went to `down` first (at least one: p = 2^-19).
    assert!(down.calls() >= 1, "{}", down.calls());
    assert_eq!(up.calls(), 20);
    let m = p.metrics().await;
    assert_eq!(
        common::metric(&m, "cutover_retries_total", &[("reason", "5xx")]),
        down.calls() as f64,
        "{m}"
    );
    assert_eq!(
        common::metric(&m, "cutover_grpc_responses_total", &[("grpc_status", "14")]),
        0.0,
        "{m}"
    );

    // One message, then UNAVAILABLE in the trailers: the client gets both,
    // and the call reached one server once.
    let before = down.calls() + up.calls();
    for _ in 0..4 {
        let mut s = c
            .server_stream(Msg {
                count: 1,
                fail_code: Code::Unavailable as i32,
                ..Msg::default()
            })
            .await
            .unwrap()
            .into_inner();
        s.message().await.unwrap().expect("the message");
        let status = s.message().await.expect_err("UNAVAILABLE after it");
        assert_eq!(status.code(), Code::Unavailable);
    }
    assert_eq!(down.calls() + up.calls(), before + 4);
}

/// `health = { grpc = true }`: `grpc.health.v1.Health/Check`; NOT_SERVING
/// takes green out (all traffic to blue), SERVING brings it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_checks_follow_serving_status() {
    let (blue, green, p) = setup(
        (50, 50),
        "[backends.green.health]\ngrpc = true\nservice = \"test.Echo\"\ninterval = \"100ms\"\n\
         healthy_threshold = 1\nunhealthy_threshold = 1\n",
    )
    .await;
    let healthy = |p: &Proxy| {
        let p = p.admin_url("/metrics");
        async move {
            let m = reqwest::get(p).await.unwrap().text().await.unwrap();
            common::metric(&m, "cutover_endpoint_healthy", &[("backend", "green")])
        }
    };
    assert!(
        eventually(Duration::from_secs(5), || async {
            green.state.health_checks.load(Ordering::Relaxed) >= 1
        })
        .await
    );
    assert_eq!(
        green.state.health_service.lock().unwrap().as_deref(),
        Some("test.Echo")
    );
    assert_eq!(healthy(&p).await, 1.0);

    green
        .state
        .health
        .store(echo::NOT_SERVING, Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(5), || async {
            healthy(&p).await == 0.0
        })
        .await,
        "NOT_SERVING did not take green out"
    );
    let mut c = echo::client(p.http).await;
    let green_before = green.calls();
    for _ in 0..30 {
        assert_eq!(c.unary(msg(b"")).await.unwrap().get_ref().text, "blue");
    }
    assert_eq!(green.calls(), green_before);

    green.state.health.store(echo::SERVING, Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(5), || async {
            healthy(&p).await == 1.0
        })
        .await,
        "SERVING did not bring green back"
    );
    // 30 calls at 50/50 all on blue: p = 2^-30.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..30 {
        seen.insert(c.unary(msg(b"")).await.unwrap().into_inner().text);
    }
    assert_eq!(seen.len(), 2);
    drop(blue);
}

/// `n` unary calls at once on `c`'s channel, each answered after
/// `delay_ms`; every one must succeed.
async fn concurrent_unary_calls(c: &echo::Client, n: usize, delay_ms: u32) {
    let calls = (0..n).map(|_| {
        let mut c = echo::Client(c.0.clone());
        tokio::spawn(async move {
            c.unary(Msg {
                delay_ms,
                ..Msg::default()
            })
            .await
            .map(|_| ())
        })
    });
    for r in futures_util::future::join_all(calls).await {
        r.unwrap().expect("call succeeds");
    }
}
