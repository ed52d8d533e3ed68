//! Responses carry Cutover's own HTTP version, whatever the backend answered
//! with (RFC 9110 §6.2), and HTTP/1.0 clients get the keep-alive rules of
//! RFC 9112 §9.3 from the proxy itself. Every byte the client receives is
//! checked (the `date` value masked; each request brings its own
//! `x-request-id`, which the proxy keeps and echoes).

mod common;

use std::time::Duration;

use common::Proxy;
use common::raw::{BackendConn, RawBackend, RawConn, mask_date};

/// A route `app` to one raw backend.
async fn proxy_to(backend: &RawBackend) -> Proxy {
    Proxy::start(&format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n[backends.blue]\nendpoints = [\"{}\"]\n\n\
         [[routes]]\nname = \"app\"\nweights = {{ blue = 100 }}\n",
        backend.addr
    ))
    .await
}

/// HTTP/1.0, `Content-Length`, `Connection: keep-alive`: many requests per
/// connection.
async fn v10_keep_alive(mut c: BackendConn) {
    while c.read_head().await.is_some() {
        let reply = b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello";
        if c.write(reply).await.is_err() {
            return;
        }
    }
}

/// HTTP/1.0, `Content-Length`, no keep-alive: one answer, then close.
async fn v10_close(mut c: BackendConn) {
    if c.read_head().await.is_some() {
        let _ = c
            .write(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello")
            .await;
    }
}

/// HTTP/1.0 with a body delimited by closing the connection.
async fn v10_close_delimited(mut c: BackendConn) {
    if c.read_head().await.is_some() {
        let _ = c.write(b"HTTP/1.0 200 OK\r\n\r\nhello").await;
    }
}

const LENGTH_11: &str =
    "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-request-id: t\r\ndate: *\r\n\r\nhello";
const CHUNKED_11: &str = "HTTP/1.1 200 OK\r\nx-request-id: t\r\ntransfer-encoding: chunked\r\ndate: *\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
/// `date: ` and an IMF-fixdate are always 6 + 29 bytes.
const DATE_LEN: usize = 35 - "date: *".len();

/// Sends `n` pipelined requests in one write and checks every byte of the
/// `n` answers, then that the connection is still open and serves one more.
async fn pipelined_http11(proxy: &Proxy, n: usize, expected: &str) {
    let mut c = RawConn::connect(proxy.http).await;
    let req = "GET / HTTP/1.1\r\nHost: app\r\nX-Request-Id: t\r\n\r\n".repeat(n);
    c.send(req.as_bytes()).await.unwrap();
    let want = expected.repeat(n);
    let got = c.read_n(want.len() + n * DATE_LEN).await.unwrap();
    assert_eq!(mask_date(&got), want);
    let (closed, extra) = c.closed_within(Duration::from_millis(200)).await;
    assert!(
        !closed && extra.is_empty(),
        "closed={closed} extra={extra:?}"
    );
    c.send(b"GET / HTTP/1.1\r\nHost: app\r\nX-Request-Id: t\r\n\r\n")
        .await
        .unwrap();
    let got = c.read_n(expected.len() + DATE_LEN).await.unwrap();
    assert_eq!(mask_date(&got), expected);
}

#[tokio::test]
async fn http10_backend_with_keep_alive_answers_as_http11() {
    let b = RawBackend::start(v10_keep_alive).await;
    let p = proxy_to(&b).await;
    pipelined_http11(&p, 3, LENGTH_11).await;
}

#[tokio::test]
async fn http10_backend_without_keep_alive_answers_as_http11() {
    let b = RawBackend::start(v10_close).await;
    let p = proxy_to(&b).await;
    pipelined_http11(&p, 3, LENGTH_11).await;
    assert!(b.accepted() >= 4, "one backend connection per request");
}

#[tokio::test]
async fn http10_close_delimited_body_is_chunked_for_http11() {
    let b = RawBackend::start(v10_close_delimited).await;
    let p = proxy_to(&b).await;
    pipelined_http11(&p, 3, CHUNKED_11).await;
}

/// An HTTP/1.0 client that asks for keep-alive keeps its connection, even
/// when the backend's HTTP/1.0 answer did not (it is the proxy's
/// connection, RFC 9112 §9.3).
#[tokio::test]
async fn http10_client_with_keep_alive_keeps_the_connection() {
    let b = RawBackend::start(v10_close).await;
    let p = proxy_to(&b).await;
    let mut c = RawConn::connect(p.http).await;
    let expected = "HTTP/1.0 200 OK\r\ncontent-length: 5\r\nx-request-id: t\r\nconnection: keep-alive\r\ndate: *\r\n\r\nhello";
    for _ in 0..2 {
        c.send(b"GET / HTTP/1.0\r\nHost: app\r\nX-Request-Id: t\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let got = c.read_n(expected.len() + DATE_LEN).await.unwrap();
        assert_eq!(mask_date(&got), expected);
    }
    let (closed, extra) = c.closed_within(Duration::from_millis(200)).await;
    assert!(
        !closed && extra.is_empty(),
        "closed={closed} extra={extra:?}"
    );
}

/// An HTTP/1.0 client that does not ask for keep-alive gets its answer and
/// a closed connection, even from a backend that keeps its own open.
#[tokio::test]
async fn http10_client_without_keep_alive_is_closed() {
    for (script, body) in [(0, "content-length: 5\r\n"), (1, "")] {
        let b = match script {
            0 => RawBackend::start(v10_keep_alive).await,
            _ => RawBackend::start(v10_close_delimited).await,
        };
        let p = proxy_to(&b).await;
        let mut c = RawConn::connect(p.http).await;
        c.send(b"GET / HTTP/1.0\r\nHost: app\r\nX-Request-Id: t\r\n\r\n")
            .await
            .unwrap();
        let got = c.read_until_close(Duration::from_secs(5)).await;
        assert_eq!(
            mask_date(&got),
            format!("HTTP/1.0 200 OK\r\n{body}x-request-id: t\r\ndate: *\r\n\r\nhello")
        );
    }
}
