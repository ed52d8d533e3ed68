//! `Expect: 100-continue` goes to the backend, and the client is asked for
//! its body only when the backend asks for it (RFC 9110 §10.1.1).

mod common;

use std::time::{Duration, Instant};

use common::Proxy;
use common::raw::{RawBackend, RawConn, head_field};
use tokio::sync::mpsc;

async fn proxy_to(backend: &RawBackend) -> Proxy {
    Proxy::start(&format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n[backends.blue]\nendpoints = [\"{}\"]\n\n\
         [[routes]]\nname = \"app\"\nweights = {{ blue = 100 }}\n",
        backend.addr
    ))
    .await
}

const HEAD: &[u8] =
    b"POST /up HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n";

/// The backend refuses with 417 without reading the body: the client gets
/// the 417 and no `100 Continue`, the backend gets no body byte, and its
/// connection is not reused.
#[tokio::test]
async fn a_417_reaches_the_client_before_any_upload() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let backend = RawBackend::start(move |mut c| {
        let tx = tx.clone();
        async move {
            let Some(head) = c.read_head().await else {
                return;
            };
            let expect = head_field(&head, "expect").map(str::to_owned);
            let _ = c
                .write(b"HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n\r\n")
                .await;
            // Whatever follows on this connection until the proxy closes it.
            let after = c.read_until_close(Duration::from_secs(5)).await;
            let _ = tx.send((expect, after));
        }
    })
    .await;
    let p = proxy_to(&backend).await;
    for round in 1..=2 {
        let mut c = RawConn::connect(p.http).await;
        c.send(HEAD).await.unwrap();
        let resp = c.read_response().await.unwrap();
        assert_eq!(resp.status, 417, "round {round}: {resp:?}");
        let (expect, after) = tokio::time::timeout(Duration::from_secs(8), rx.recv())
            .await
            .expect("the proxy closed the refused connection")
            .unwrap();
        assert_eq!(expect.as_deref(), Some("100-continue"));
        assert!(after.is_empty(), "round {round}: backend got {after:?}");
    }
    assert_eq!(backend.accepted(), 2, "the refused connection was reused");
}

/// The backend asks for the body: the client gets `100 Continue`, uploads,
/// and the backend's answer.
#[tokio::test]
async fn a_backend_100_continue_lets_the_body_through() {
    let backend = RawBackend::start(|mut c| async move {
        while c.read_head().await.is_some() {
            let _ = c.write(b"HTTP/1.1 100 Continue\r\n\r\n").await;
            let Ok(body) = c.read_exact(5).await else {
                return;
            };
            let mut reply = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n".to_vec();
            reply.extend_from_slice(&body);
            if c.write(&reply).await.is_err() {
                return;
            }
        }
    })
    .await;
    let p = proxy_to(&backend).await;
    let mut c = RawConn::connect(p.http).await;
    for _ in 0..2 {
        c.send(HEAD).await.unwrap();
        assert_eq!(c.read_response().await.unwrap().status, 100);
        c.send(b"hello").await.unwrap();
        let resp = c.read_response().await.unwrap();
        assert_eq!((resp.status, resp.text().as_str()), (200, "hello"));
    }
    assert_eq!(
        backend.accepted(),
        1,
        "a completed exchange keeps its connection"
    );
}

/// A backend that ignores the expectation and waits for the body gets it
/// after `expect::WAIT` (1 s).
#[tokio::test]
async fn a_silent_backend_gets_the_body_after_a_second() {
    let backend = RawBackend::start(|mut c| async move {
        if c.read_head().await.is_some()
            && let Ok(body) = c.read_exact(5).await
        {
            let mut reply = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n".to_vec();
            reply.extend_from_slice(&body);
            let _ = c.write(&reply).await;
        }
    })
    .await;
    let p = proxy_to(&backend).await;
    let mut c = RawConn::connect(p.http).await;
    let started = Instant::now();
    c.send(HEAD).await.unwrap();
    assert_eq!(c.read_response().await.unwrap().status, 100);
    assert!(started.elapsed() >= Duration::from_millis(900));
    c.send(b"hello").await.unwrap();
    let resp = c.read_response().await.unwrap();
    assert_eq!((resp.status, resp.text().as_str()), (200, "hello"));
}

/// The general case, without `Expect`: the backend answers 413 as soon as
/// it has the head and keeps the connection open, so the body that follows
/// on it would be read as the next request. The proxy must never send
/// another request on a connection whose request body was not all sent
/// when the answer came (nginx's `request_body_sent` rule).
#[tokio::test]
async fn a_connection_answered_before_its_body_was_sent_is_not_reused() {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let backend = RawBackend::start(move |mut c| {
        let tx = tx.clone();
        async move {
            while let Some(head) = c.read_head().await {
                if head[0].starts_with("POST /up ") {
                    let _ = c
                        .write(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n")
                        .await;
                    // A naive backend: what follows is "the next request".
                    let after = c.read_until_close(Duration::from_secs(4)).await;
                    let _ = tx.send(after);
                    return;
                }
                let _ = c
                    .write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            }
        }
    })
    .await;
    let p = Proxy::start(&format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n[server]\nworkers = 2\n\n\
         [backends.blue]\nendpoints = [\"{}\"]\n\n\
         [[routes]]\nname = \"app\"\nweights = {{ blue = 100 }}\n",
        backend.addr
    ))
    .await;
    let mut c = RawConn::connect(p.http).await;
    c.send(b"POST /up HTTP/1.1\r\nHost: app\r\nContent-Length: 10\r\n\r\nhello")
        .await
        .unwrap();
    let resp = c.read_response().await.unwrap();
    assert_eq!(resp.status, 413, "{resp:?}");
    // The rest of the body, after the answer.
    c.send(b"world").await.unwrap();
    // Later requests, spread over a second: any of them would land on the
    // answered connection if it went back to the pool.
    // (Two workers: this is where the old code reused it, 3 runs in 4.)
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let r = common::raw::roundtrip(p.http, b"GET /next HTTP/1.1\r\nHost: app\r\n\r\n").await;
        statuses.push(r.map_or(0, |r| r.status));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = tokio::time::timeout(Duration::from_secs(8), rx.recv())
        .await
        .expect("the backend's early-answered connection ended")
        .unwrap();
    let after = String::from_utf8_lossy(&after);
    assert!(
        !after.contains("GET /next"),
        "a request went out on the connection answered before its body: {after:?}"
    );
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
}
