//! Upstream keep-alive: connections are reused across requests (whatever
//! the response framing), and one the backend closed while it sat in the
//! pool is replaced without the client noticing.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::proxy::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A raw HTTP/1.1 backend that counts the connections it accepted. It
/// answers `/chunked` with a chunked body and anything else with a
/// Content-Length body; with `close_after_each`, it closes the connection
/// after every response without saying so (no `Connection: close`), as a
/// backend with a short keep-alive timeout does.
struct CountingBackend {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// Connections the proxy closed (end of stream seen by the backend).
    closed: Arc<AtomicUsize>,
}

impl CountingBackend {
    async fn start(close_after_each: bool) -> CountingBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let ends = closed.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let ends = ends.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let n = stream.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            ends.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        // Requests here have no body: a head ends a request.
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                            buf.drain(..end + 4);
                            let reply: &[u8] = if head.starts_with("GET /chunked ") {
                                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
                            } else {
                                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                            };
                            if stream.write_all(reply).await.is_err() {
                                return;
                            }
                            if close_after_each {
                                return;
                            }
                        }
                    }
                });
            }
        });
        CountingBackend {
            addr,
            accepted,
            closed,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }
}

fn config_for(backend: &CountingBackend) -> String {
    format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [backends.blue]\nendpoints = [\"{}\"]\n\n\
         [[routes]]\nname = \"app\"\nweights = {{ blue = 100 }}\n",
        backend.addr
    )
}

async fn proxy_to(backend: &CountingBackend) -> Proxy {
    Proxy::start(&config_for(backend)).await
}

#[tokio::test]
async fn sequential_requests_share_one_upstream_connection() {
    let backend = CountingBackend::start(false).await;
    let proxy = proxy_to(&backend).await;
    // One client connection lands on one worker, whose pool then holds one
    // upstream connection: both framings must give it back.
    let client = common::client();
    for i in 0..40 {
        let path = if i % 2 == 0 { "/chunked" } else { "/length" };
        let resp = client.get(proxy.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "request {i} to {path}");
        assert_eq!(resp.text().await.unwrap(), "ok");
    }
    assert_eq!(
        backend.accepted(),
        1,
        "40 sequential requests should reuse one upstream connection"
    );
}

#[tokio::test]
async fn a_pooled_connection_closed_by_the_backend_is_replaced() {
    let backend = CountingBackend::start(true).await;
    let proxy = proxy_to(&backend).await;
    let client = common::client();
    for i in 0..20 {
        let resp = client.get(proxy.url("/length")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(resp.text().await.unwrap(), "ok");
        // Let the proxy see the close while the connection is idle in its
        // pool (a close racing a new request is a 502 for any proxy).
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        backend.accepted(),
        20,
        "each request needed a new connection"
    );
    let metrics = proxy.metrics().await;
    assert_eq!(
        common::metric(&metrics, "cutover_upstream_errors_total", &[]),
        0.0,
        "a stale pooled connection is not an upstream error:\n{metrics}"
    );
}

#[tokio::test]
async fn a_removed_endpoint_s_idle_connections_are_closed() {
    let old = CountingBackend::start(false).await;
    let new = CountingBackend::start(false).await;
    let proxy = proxy_to(&old).await;
    // Several client connections, so that both workers pool connections to
    // the old endpoint.
    for i in 0..20 {
        let client = common::client();
        let resp = client.get(proxy.url("/length")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(resp.text().await.unwrap(), "ok");
    }
    assert!(old.accepted() >= 1);
    assert_eq!(old.closed(), 0, "pooled connections stay open while listed");
    proxy.write_config(&config_for(&new));
    let switched = common::eventually(Duration::from_secs(10), || async {
        let resp = common::client()
            .get(proxy.url("/length"))
            .send()
            .await
            .unwrap();
        resp.status() == 200 && new.accepted() > 0
    })
    .await;
    assert!(switched, "the reload took effect");
    // Requests on new client connections reach every worker, which then
    // lets go of the old table (2^-19 that 20 miss one of two workers).
    for _ in 0..20 {
        let resp = common::client()
            .get(proxy.url("/length"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    // The old endpoint is in no table: its idle connections close, even
    // though the backend keeps them open forever.
    let closed = common::eventually(Duration::from_secs(10), || async {
        old.closed() == old.accepted()
    })
    .await;
    assert!(
        closed,
        "{} of {} connections to the removed endpoint were closed",
        old.closed(),
        old.accepted()
    );
}
