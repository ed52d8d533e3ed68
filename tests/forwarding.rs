//! How requests and responses are re-framed and re-addressed on their way
//! through: absolute-form targets (RFC 9112 §3.2.2), the client's
//! `Forwarded`, `Upgrade` lists with `h2c`, bad chunked bodies from clients,
//! GET and HEAD bodies, and upstream responses framed by both
//! `Content-Length` and `Transfer-Encoding` (RFC 9112 §6.3).

mod common;

use std::time::Duration;

use common::raw::{RawBackend, RawConn, roundtrip};
use common::recording::RecordingBackend;
use common::{Backend, Proxy};

/// Routes `a` (host a.test) to blue and `b` (host other.host) to green.
async fn two_hosts() -> (Backend, Backend, Proxy) {
    let b = Backend::start("blue").await;
    let g = Backend::start("green").await;
    let cfg = common::config(
        &[("blue", &[&b]), ("green", &[&g])],
        "[[routes]]\nname = \"a\"\nhost = \"a.test\"\nweights = { blue = 100 }\n\n\
         [[routes]]\nname = \"b\"\nhost = \"other.host\"\nweights = { green = 100 }\n",
    );
    let p = Proxy::start(&cfg).await;
    (b, g, p)
}

fn echo(resp: &common::raw::RawResponse) -> serde_json::Value {
    serde_json::from_slice(&resp.body).unwrap_or_else(|e| panic!("{e}: {}", resp.text()))
}

#[tokio::test]
async fn absolute_form_is_routed_and_forwarded_by_its_authority() {
    let (_b, g, p) = two_hosts().await;
    let resp = roundtrip(
        p.http,
        b"GET http://other.host/echo/x?y=1 HTTP/1.1\r\nHost: a.test\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    let e = echo(&resp);
    assert_eq!(g.seen(), ["/echo/x?y=1"]);
    assert_eq!(e["uri"], "/echo/x?y=1");
    assert_eq!(e["headers"]["host"][0], "other.host");
    assert_eq!(e["headers"]["x-forwarded-host"][0], "other.host");
}

#[tokio::test]
async fn client_forwarded_header_is_stripped() {
    let (_b, _g, p) = two_hosts().await;
    let resp = roundtrip(
        p.http,
        b"GET /echo HTTP/1.1\r\nHost: a.test\r\nForwarded: for=6.6.6.6;proto=https\r\n\r\n",
    )
    .await
    .unwrap();
    let e = echo(&resp);
    assert!(e["headers"].get("forwarded").is_none(), "{e}");
    assert_eq!(e["headers"]["x-forwarded-for"][0], "127.0.0.1");
}

#[tokio::test]
async fn h2c_is_dropped_from_an_upgrade_list() {
    let (_b, _g, p) = two_hosts().await;
    let resp = roundtrip(
        p.http,
        b"GET /echo HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c, websocket\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    .await
    .unwrap();
    let e = echo(&resp);
    assert_eq!(e["headers"]["upgrade"][0], "websocket", "{e}");
    assert!(e["headers"].get("http2-settings").is_none(), "{e}");
}

/// A GET or HEAD with a chunked body reaches the backend with its body, as
/// a POST does. (hyper's client sends those methods without a body of
/// unknown length unless told to chunk it: the body was lost, and the
/// backend saw a complete request without it.) HEAD goes last: its answer
/// from this backend carries a body, which a client must not read.
#[tokio::test]
async fn get_and_head_chunked_bodies_reach_the_backend() {
    let b = RecordingBackend::start().await;
    let p = Proxy::start(&format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [backends.blue]\nendpoints = [\"{}\"]\n\n\
         [[routes]]\nname = \"all\"\nweights = {{ blue = 1 }}\n",
        b.addr
    ))
    .await;
    for method in ["POST", "GET", "HEAD"] {
        let mut c = RawConn::connect(p.http).await;
        let req = format!(
            "{method} /{method} HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
             5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        );
        c.send(req.as_bytes()).await.unwrap();
        let target = format!("/{method}");
        let arrived = common::eventually(Duration::from_secs(5), || async {
            b.targets().contains(&target)
        })
        .await;
        assert!(
            arrived,
            "{method} never reached the backend: {:?}",
            b.requests()
        );
        let r = b
            .requests()
            .into_iter()
            .find(|r| r.target() == target)
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&r.body),
            "hello world",
            "{method}: {r:?}"
        );
        assert_eq!(r.field("transfer-encoding"), Some("chunked"), "{r:?}");
        if method != "HEAD" {
            let resp = c.read_response().await.unwrap();
            assert_eq!(resp.status, 200, "{method}: {}", resp.text());
        }
    }
    assert!(b.faults().is_empty(), "{:?}", b.faults());
}

/// A chunk size that overflows, or a chunk line ended by a bare LF, is the
/// client's error: 400 and the connection closed, not a 502 that blames
/// (and counts against) the backend.
#[tokio::test]
async fn bad_chunked_request_bodies_are_400() {
    let (b, _g, p) = two_hosts().await;
    for body in [
        &b"FFFFFFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n"[..],
        b"5\nhello\r\n0\r\n\r\n",
    ] {
        let mut c = RawConn::connect(p.http).await;
        let mut req =
            b"POST /upload HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        req.extend_from_slice(body);
        c.send(&req).await.unwrap();
        let resp = c.read_response().await.unwrap();
        assert_eq!(
            resp.status,
            400,
            "{:?}: {}",
            String::from_utf8_lossy(body),
            resp.text()
        );
        assert_eq!(resp.header("connection"), Some("close"));
    }
    let text = reqwest::get(p.url("/")).await.unwrap();
    assert_eq!(text.status(), 404, "a.test has no route for a bare IP host");
    let m = common::client()
        .get(p.url("/"))
        .header("host", "a.test")
        .send()
        .await
        .unwrap();
    assert_eq!(m.status(), 200);
    drop(b);
}

/// A response framed by both: the chunked framing wins, `Content-Length`
/// is dropped, the whole body arrives and the next request on the same
/// client connection works.
#[tokio::test]
async fn upstream_content_length_with_chunked_is_dropped() {
    let backend = RawBackend::start(|mut c| async move {
        while c.read_head().await.is_some() {
            let reply =
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
                          5\r\nhello\r\n0\r\n\r\n";
            if c.write(reply).await.is_err() {
                return;
            }
        }
    })
    .await;
    let p = Proxy::start(&format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n[backends.blue]\nendpoints = [\"{}\"]\n\n\
         [[routes]]\nname = \"app\"\nweights = {{ blue = 100 }}\n",
        backend.addr
    ))
    .await;
    let mut c = RawConn::connect(p.http).await;
    for _ in 0..2 {
        c.send(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
            .await
            .unwrap();
        let resp = c.read_response().await.unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), "hello");
        assert_eq!(resp.header("content-length"), None, "{:?}", resp.headers);
    }
    let (closed, extra) = c.closed_within(Duration::from_millis(200)).await;
    assert!(
        !closed && extra.is_empty(),
        "closed={closed} extra={extra:?}"
    );
}
