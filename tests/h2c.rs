//! HTTP/2 cleartext with prior knowledge, on the same listener as HTTP/1.1.

mod common;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

fn h2_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// One HTTP/2 connection to `addr`, every request on it a stream.
async fn h2_connection<B>(addr: std::net::SocketAddr) -> SendRequest<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake with the proxy");
    tokio::spawn(conn);
    send
}

#[tokio::test]
async fn prior_knowledge_client_gets_answers() {
    let (_b, _g, p) = common::blue_green(100, 0, "").await;
    let client = h2_client();
    for _ in 0..3 {
        let resp = client.get(p.url("/")).send().await.unwrap();
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-backend"], "blue");
        assert_eq!(resp.text().await.unwrap(), "blue");
    }
    let resp = client.get(p.url("/status/418")).send().await.unwrap();
    assert_eq!(resp.status(), 418);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_on_one_connection() {
    let (b, _g, p) = common::blue_green(100, 0, "").await;
    let send = h2_connection::<Empty<Bytes>>(p.http).await;
    const STREAMS: usize = 16;
    const SLEEP_MS: u64 = 300;
    let started = Instant::now();
    let tasks: Vec<_> = (0..STREAMS)
        .map(|i| {
            let mut send = send.clone();
            let uri = format!("http://{}/sleep/{SLEEP_MS}?stream={i}", p.http);
            tokio::spawn(async move {
                send.ready().await.unwrap();
                let req = hyper::Request::get(uri).body(Empty::new()).unwrap();
                let resp = send.send_request(req).await.expect("a response");
                assert_eq!(resp.version(), hyper::Version::HTTP_2);
                let status = resp.status();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                (status, body)
            })
        })
        .collect();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(&body[..], b"blue");
    }
    let elapsed = started.elapsed();
    // Served one after another they would take 16 x 300 ms = 4.8 s; at
    // once, little more than 300 ms. Half the serial time leaves room for a
    // busy machine and still fails if streams are serialized.
    let serial = Duration::from_millis(SLEEP_MS * STREAMS as u64);
    assert!(elapsed < serial / 2, "{STREAMS} streams took {elapsed:?}");
    let mut seen = b.seen();
    seen.sort();
    let mut expected: Vec<String> = (0..STREAMS)
        .map(|i| format!("/sleep/{SLEEP_MS}?stream={i}"))
        .collect();
    expected.sort();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn authority_becomes_host_upstream() {
    let (_b, _g, p) = common::blue_green(100, 0, "").await;
    let mut send = h2_connection::<Empty<Bytes>>(p.http).await;
    let req = hyper::Request::get("http://shop.example.com:8080/echo/h2")
        .header("x-forwarded-for", "203.0.113.9")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(Empty::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let echo: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["version"], "HTTP/1.1", "HTTP/1.1 upstream");
    assert_eq!(echo["uri"], "/echo/h2");
    assert_eq!(
        echo["headers"]["host"],
        serde_json::json!(["shop.example.com:8080"])
    );
    assert_eq!(
        echo["headers"]["x-forwarded-host"],
        serde_json::json!(["shop.example.com:8080"])
    );
    assert_eq!(
        echo["headers"]["x-forwarded-for"],
        serde_json::json!(["203.0.113.9, 127.0.0.1"])
    );
    // HTTP/2 may split Cookie; HTTP/1.1 upstream gets one field.
    assert_eq!(echo["headers"]["cookie"], serde_json::json!(["a=1; b=2"]));
}

#[tokio::test]
async fn h2_request_bodies_stream_through() {
    let (_b, _g, p) = common::blue_green(100, 0, "").await;
    const SIZE: u64 = 16 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    let mut send = h2_connection::<BoxBody<Bytes, Infallible>>(p.http).await;
    let chunk = Bytes::from(vec![b'h'; CHUNK]);
    let frames =
        (0..SIZE / CHUNK as u64).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone())));
    let body = StreamBody::new(futures_util::stream::iter(frames)).boxed();
    let req = hyper::Request::post(format!("http://{}/upload", p.http))
        .body(body)
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(String::from_utf8_lossy(&body), SIZE.to_string());

    // And a small body with a known length, through reqwest.
    let resp = h2_client()
        .post(p.url("/upload"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.text().await.unwrap(), "5");
}

/// An HTTP/2 GET whose body has no `content-length` reaches an HTTP/1.1
/// backend with its body (chunked), as a POST does: hyper's client would
/// send it without one.
#[tokio::test]
async fn h2_get_bodies_of_unknown_length_reach_an_http1_backend() {
    let (_b, _g, p) = common::blue_green(100, 0, "").await;
    let mut send = h2_connection::<BoxBody<Bytes, Infallible>>(p.http).await;
    for method in [hyper::Method::POST, hyper::Method::GET] {
        let frames = ["hello", " world"].map(|s| Ok::<_, Infallible>(Frame::data(Bytes::from(s))));
        let body = StreamBody::new(futures_util::stream::iter(frames)).boxed();
        let req = hyper::Request::builder()
            .method(method.clone())
            .uri(format!("http://{}/upload", p.http))
            .body(body)
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200, "{method}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            String::from_utf8_lossy(&body),
            "11",
            "{method}: the bytes the backend read"
        );
    }
}

#[tokio::test]
async fn h2_error_answers_are_local_and_the_connection_survives() {
    // A 404 (no route) and a 502 (backend down) on streams of one
    // connection; a good request on the same connection still works.
    let live = common::Backend::start("live").await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = common::config(
        &[("live", &[&live])],
        &format!(
            "[backends.gone]\nendpoints = [\"{dead}\"]\n\n\
             [[routes]]\nname = \"live\"\npath_prefix = \"/live\"\nweights = {{ live = 1 }}\n\n\
             [[routes]]\nname = \"down\"\npath_prefix = \"/down\"\nweights = {{ gone = 1 }}\n"
        ),
    );
    let p = common::Proxy::start(&cfg).await;
    let mut send = h2_connection::<Full<Bytes>>(p.http).await;
    for (path, status) in [("/nowhere", 404), ("/down", 502), ("/live", 200)] {
        let req = hyper::Request::post(format!("http://{}{path}", p.http))
            .body(Full::new(Bytes::from_static(b"some body")))
            .unwrap();
        let resp = send
            .send_request(req)
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(resp.status(), status, "{path}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(!body.is_empty() && body.len() < 200, "{path}: {body:?}");
    }
    assert_eq!(live.seen(), ["/live"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_content_length_mismatch_never_desyncs_the_upstream() {
    // H2.CL: an HTTP/2 request whose content-length disagrees with its DATA.
    // Downgraded to HTTP/1.1 as is, the extra bytes would be read by the
    // backend as the next request on the pooled upstream connection.
    let (b, _g, p) = common::blue_green(100, 0, "").await;
    let cases = [
        ("0", "GET /smuggled0 HTTP/1.1\r\nHost: h\r\n\r\n"),
        ("5", "hello GET /smuggled5 HTTP/1.1\r\nHost: h\r\n\r\n"),
    ];
    for (cl, data) in cases {
        let tcp = tokio::net::TcpStream::connect(p.http).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        let mut client = client.ready().await.unwrap();
        let req = http::Request::post(format!("http://{}/echo", p.http))
            .header("content-length", cl)
            .body(())
            .unwrap();
        let (resp, mut stream) = client.send_request(req, false).unwrap();
        let _ = stream.send_data(Bytes::from(data), true);
        // A reset stream or an error answer are both fine; a success is not
        // required either, only that nothing is smuggled.
        let _ = tokio::time::timeout(Duration::from_secs(10), resp)
            .await
            .expect("an outcome in time");
        // The pooled upstream connections still carry clean requests.
        for _ in 0..3 {
            let resp = common::client().get(p.url("/after")).send().await.unwrap();
            assert_eq!(resp.text().await.unwrap(), "blue");
        }
    }
    let smuggled = common::eventually(Duration::from_millis(300), || async {
        b.seen().iter().any(|s| s.contains("smuggled"))
    })
    .await;
    assert!(!smuggled, "the backend saw {:?}", b.seen());
}

#[tokio::test]
async fn header_read_does_not_cut_an_idle_h2_connection() {
    // HTTP/2 has no request head to time: frames read outside a stream
    // (the preface, SETTINGS, WINDOW_UPDATEs) must not look like a slow head.
    let (_b, _g, p) = common::blue_green(
        100,
        0,
        "\n[timeouts]\nheader_read = \"300ms\"\nidle = \"10s\"\n",
    )
    .await;
    let mut send = h2_connection::<Empty<Bytes>>(p.http).await;
    for i in 0..2 {
        // Three header_reads after the preface, then between the streams.
        tokio::time::sleep(Duration::from_millis(900)).await;
        let req = hyper::Request::get(p.url("/")).body(Empty::new()).unwrap();
        send.ready().await.expect("the h2 connection is still open");
        let resp = send
            .send_request(req)
            .await
            .unwrap_or_else(|e| panic!("request {i} on the h2 connection failed: {e}"));
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"blue");
    }
}

#[tokio::test]
async fn the_request_id_is_never_indexed_by_hpack() {
    // Each response's x-request-id is new, so adding it to the connection's
    // HPACK dynamic table only evicts useful entries (and costs the encoder
    // a comparison with every earlier ID there): the proxy sends it as a
    // literal never indexed (RFC 7541 §6.2.3), the one such field of an
    // answer here, whether it made the ID or kept the client's.
    use common::h2raw::{self, H2Raw, Repr};
    let (_b, _g, p) = common::blue_green(100, 0, "").await;
    let mut c = H2Raw::connect(p.http, &[]).await;
    c.send(&h2raw::settings_ack()).await.unwrap();
    for (i, id) in [None, Some("client-chosen-1"), None]
        .into_iter()
        .enumerate()
    {
        let stream = 1 + 2 * i as u32;
        let mut block = h2raw::get_block("h", "/");
        if let Some(id) = id {
            h2raw::literal(&mut block, "x-request-id", id);
        }
        let flags = h2raw::END_HEADERS | h2raw::END_STREAM;
        c.send(&h2raw::frame(h2raw::HEADERS, flags, stream, &block))
            .await
            .unwrap();
        let head = loop {
            let f = c
                .read_frame(Duration::from_secs(10))
                .await
                .expect("the proxy answers");
            if f.kind == h2raw::HEADERS && f.stream == stream {
                break f;
            }
        };
        assert!(head.flags & h2raw::END_HEADERS != 0, "one HEADERS frame");
        let reprs = h2raw::representations(&head.payload);
        let never = reprs.iter().filter(|r| **r == Repr::NeverIndexed).count();
        assert_eq!(never, 1, "response {i}: {reprs:?}");
    }
}
