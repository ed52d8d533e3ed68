//! Upgrades: WebSocket is tunnelled after the backend's 101; `Upgrade: h2c`
//! is never forwarded.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Proxy;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

/// What the WebSocket backend saw of each handshake: (path, headers).
type Handshakes = Arc<Mutex<Vec<(String, Vec<(String, String)>)>>>;

/// A WebSocket echo server on a raw listener: every text and binary message
/// is sent back as it came.
async fn ws_echo_backend() -> (SocketAddr, Handshakes) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Handshakes = Arc::default();
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let seen = seen2.clone();
            tokio::spawn(async move {
                // The callback's error type is tungstenite's, not ours.
                #[allow(clippy::result_large_err)]
                let record = |req: &Request, resp: Response| {
                    let headers = req
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                        .collect();
                    seen.lock().unwrap().push((req.uri().to_string(), headers));
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await else {
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
    (addr, seen)
}

async fn ws_proxy(ws: SocketAddr) -> Proxy {
    ws_proxy_with(ws, "").await
}

/// The WebSocket route, with `extra` config sections appended.
async fn ws_proxy_with(ws: SocketAddr, extra: &str) -> Proxy {
    let cfg = common::config(
        &[],
        &format!(
            "[backends.ws]\nendpoints = [\"{ws}\"]\n\n[[routes]]\nname = \"ws\"\nweights = {{ ws = 1 }}\n{extra}"
        ),
    );
    Proxy::start(&cfg).await
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open_ws(p: &Proxy) -> Ws {
    let (ws, resp) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(format!("ws://{}/ws", p.http)),
    )
    .await
    .expect("handshake in time")
    .expect("handshake through the proxy");
    assert_eq!(resp.status(), 101);
    ws
}

async fn echo(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    let back = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("echo in time")
        .expect("the tunnel is open")
        .unwrap();
    assert_eq!(back, Message::text(text));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_count_against_max_connections_and_admin_still_answers() {
    let (ws_addr, _) = ws_echo_backend().await;
    let p = ws_proxy_with(
        ws_addr,
        "\n[limits]\nmax_connections = 3\n\n[server]\nworkers = 1\n",
    )
    .await;
    let mut tunnels = Vec::new();
    for _ in 0..3 {
        let mut ws = open_ws(&p).await;
        echo(&mut ws, "hi").await;
        tunnels.push(ws);
    }
    // All three slots are held by tunnels: a fourth connection waits in the
    // accept queue, and the gauge counts the tunnels.
    let waiting = tokio::spawn(common::raw::roundtrip(
        p.http,
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "a connection past max_connections was served while 3 tunnels were open"
    );
    let text = p.metrics().await;
    assert_eq!(common::metric(&text, "cutover_connections_open", &[]), 3.0);
    // The admin listener is not the data plane's: it answers.
    let health = common::client()
        .get(p.admin_url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // A tunnel closes: its slot goes to the waiting connection.
    tunnels.pop().unwrap().close(None).await.unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("served once a tunnel closed")
        .unwrap()
        .expect("a response");
    // The WebSocket backend drops a plain request: 502, but served.
    assert_eq!(resp.status, 502, "{}", resp.text());
    for ws in &mut tunnels {
        echo(ws, "still open").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_tunnel_is_closed_after_tunnel_idle_and_a_busy_one_is_not() {
    let (ws_addr, _) = ws_echo_backend().await;
    let p = ws_proxy_with(ws_addr, "\n[timeouts]\ntunnel_idle = \"600ms\"\n").await;
    let mut busy = open_ws(&p).await;
    let mut silent = open_ws(&p).await;
    let started = std::time::Instant::now();
    // The busy one echoes every 150 ms for twice tunnel_idle.
    while started.elapsed() < Duration::from_millis(1200) {
        echo(&mut busy, "tick").await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // The silent one was closed (600 ms, checked every 150 ms).
    let end = tokio::time::timeout(Duration::from_secs(5), silent.next())
        .await
        .expect("a silent tunnel was still open 6 s after tunnel_idle");
    assert!(
        !matches!(end, Some(Ok(Message::Text(_)))),
        "unexpected message: {end:?}"
    );
    echo(&mut busy, "still open").await;
    let text = p.metrics().await;
    assert_eq!(common::metric(&text, "cutover_connections_open", &[]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_messages_echo_through_the_proxy() {
    let (ws_addr, handshakes) = ws_echo_backend().await;
    let p = ws_proxy(ws_addr).await;

    let (mut ws, resp) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(format!("ws://{}/chat?room=1", p.http)),
    )
    .await
    .expect("handshake in time")
    .expect("handshake through the proxy");
    assert_eq!(resp.status(), 101);

    let big: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let messages = [
        Message::text("hello"),
        Message::binary(vec![0u8, 1, 2, 255]),
        Message::text("second text, with ünïcödé"),
        Message::binary(big),
        Message::text(""),
        Message::text("last"),
    ];
    // One at a time: each echo comes back before the next is sent.
    for m in &messages[..3] {
        ws.send(m.clone()).await.unwrap();
        let echo = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("echo in time")
            .expect("the tunnel is open")
            .unwrap();
        assert_eq!(&echo, m);
    }
    // Then pipelined: all sent, then all read back in order.
    for m in &messages[3..] {
        ws.send(m.clone()).await.unwrap();
    }
    for m in &messages[3..] {
        let echo = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("echo in time")
            .expect("the tunnel is open")
            .unwrap();
        assert_eq!(&echo, m);
    }
    ws.close(None).await.unwrap();

    let seen = handshakes.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let (path, headers) = &seen[0];
    assert_eq!(path, "/chat?room=1");
    let get = |n: &str| {
        headers
            .iter()
            .filter(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(get("upgrade"), ["websocket"]);
    assert_eq!(get("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(get("host"), [p.http.to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_websockets_at_once() {
    let (ws_addr, handshakes) = ws_echo_backend().await;
    let p = ws_proxy(ws_addr).await;
    let url = format!("ws://{}/ws", p.http);
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move {
                let (mut ws, _) = tokio_tungstenite::connect_async(url)
                    .await
                    .expect("handshake");
                for j in 0..20 {
                    let m = Message::text(format!("client {i} message {j}"));
                    ws.send(m.clone()).await.unwrap();
                    let echo = tokio::time::timeout(Duration::from_secs(10), ws.next())
                        .await
                        .expect("echo in time")
                        .unwrap()
                        .unwrap();
                    assert_eq!(echo, m);
                }
                ws.close(None).await.unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(handshakes.lock().unwrap().len(), 4);
}

#[tokio::test]
async fn upgrade_h2c_is_not_forwarded() {
    let (_b, _g, p) = common::blue_green(100, 0, "").await;
    let resp = common::raw::roundtrip(
        p.http,
        b"GET /echo HTTP/1.1\r\n\
          Host: h2c.test\r\n\
          Connection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\n\
          HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\
          \r\n",
    )
    .await
    .expect("a response");
    assert_eq!(
        resp.status,
        200,
        "the request is served as plain HTTP/1.1: {}",
        resp.text()
    );
    assert!(resp.header("upgrade").is_none(), "{:?}", resp.headers);
    let echo: Value = serde_json::from_slice(&resp.body).expect("echo JSON");
    let headers = echo["headers"].as_object().unwrap();
    for name in ["upgrade", "http2-settings", "connection"] {
        assert!(
            !headers.contains_key(name),
            "{name} reached the backend: {echo}"
        );
    }
    assert_eq!(echo["headers"]["host"][0], "h2c.test");
}

#[tokio::test]
async fn websocket_upgrade_to_a_backend_that_declines_is_a_plain_response() {
    // The backend answers 200 instead of 101: the client gets that 200, and
    // the backend did see the upgrade it declined.
    let (_b, _g, p) = common::blue_green(100, 0, "").await;
    let resp = common::raw::roundtrip(
        p.http,
        b"GET /echo HTTP/1.1\r\n\
          Host: ws.test\r\n\
          Connection: Upgrade\r\n\
          Upgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          \r\n",
    )
    .await
    .expect("a response");
    assert_eq!(resp.status, 200);
    let echo: Value = serde_json::from_slice(&resp.body).expect("echo JSON");
    assert_eq!(echo["headers"]["upgrade"][0], "websocket", "{echo}");
}
