//! `backends.NAME.max_connections` caps the upstream connections a worker
//! opens to an endpoint; requests past it wait (as many again, up to
//! `timeouts.connect`) or get 503.

mod common;

use std::time::Duration;

use common::Proxy;
use common::raw::{RawBackend, roundtrip};

/// Answers every request after 300 ms, keeping connections alive.
async fn slow_backend() -> RawBackend {
    RawBackend::start(|mut c| async move {
        while c.read_head().await.is_some() {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow";
            if c.write(reply).await.is_err() {
                return;
            }
        }
    })
    .await
}

#[tokio::test]
async fn concurrent_requests_never_open_more_than_max_connections() {
    let backend = slow_backend().await;
    let p = Proxy::start(&format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n[server]\nworkers = 1\n\n\
         [timeouts]\nconnect = \"2s\"\n\n\
         [backends.blue]\nendpoints = [\"{}\"]\nmax_connections = 2\nretries = 0\n\n\
         [[routes]]\nname = \"app\"\nweights = {{ blue = 100 }}\n",
        backend.addr
    ))
    .await;
    let n = 6;
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let addr = p.http;
            tokio::spawn(async move {
                roundtrip(addr, b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        let resp = t.await.unwrap();
        match resp.status {
            200 => ok += 1,
            503 => assert!(resp.text().contains("connection limit"), "{}", resp.text()),
            other => panic!("unexpected {other}: {}", resp.text()),
        }
    }
    // 2 at once, 2 waiting (the queue is as long as the limit); within
    // the 2 s deadline each waiter gets a connection 300 ms later.
    assert!(ok >= 4, "{ok} of {n} served");
    assert!(
        backend.max_open() <= 2,
        "{} open at once",
        backend.max_open()
    );
    assert!(backend.accepted() <= 2, "{} accepted", backend.accepted());
}
