//! Header rules of a proxy (RFC 9110 §7.6): hop-by-hop fields removed in both
//! directions, X-Forwarded-* set, Host kept.

mod common;

use common::raw::{RawConn, roundtrip};
use serde_json::Value;

/// The values the backend's `/echo` saw for `name`, in order.
fn seen_values(echo: &Value, name: &str) -> Vec<String> {
    echo["headers"][name]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// Sends a hand-written request head (without the final empty line) and
/// returns what `/echo` reported.
async fn raw_echo(addr: std::net::SocketAddr, head: &str) -> Value {
    let req = format!("{head}\r\n\r\n");
    let resp = roundtrip(addr, req.as_bytes()).await.expect("a response");
    assert_eq!(resp.status, 200, "{}", resp.text());
    serde_json::from_slice(&resp.body).expect("echo JSON")
}

#[tokio::test]
async fn hop_by_hop_request_headers_are_stripped() {
    let (_b, _g, p) = common::blue_green(100, 0, "").await;
    let echo = raw_echo(
        p.http,
        "GET /echo HTTP/1.1\r\n\
         Host: shop.example.com\r\n\
         Connection: keep-alive, X-Secret\r\n\
         Connection: x-other-secret\r\n\
         X-Secret: 1\r\n\
         X-Other-Secret: 2\r\n\
         Keep-Alive: timeout=5\r\n\
         Proxy-Connection: keep-alive\r\n\
         TE: gzip\r\n\
         Upgrade: websocket\r\n\
         X-Kept: yes",
    )
    .await;
    let headers = echo["headers"].as_object().unwrap();
    for name in [
        "connection",
        "x-secret",
        "x-other-secret",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
        "transfer-encoding",
    ] {
        assert!(
            !headers.contains_key(name),
            "{name} reached the backend: {echo}"
        );
    }
    assert_eq!(seen_values(&echo, "x-kept"), ["yes"], "{echo}");
    assert_eq!(seen_values(&echo, "host"), ["shop.example.com"], "{echo}");
}

#[tokio::test]
async fn te_trailers_is_kept() {
    let (_b, _g, p) = common::blue_green(100, 0, "").await;
    let echo = raw_echo(p.http, "GET /echo HTTP/1.1\r\nHost: h\r\nTE: trailers").await;
    assert_eq!(seen_values(&echo, "te"), ["trailers"], "{echo}");
}

#[tokio::test]
async fn te_other_than_trailers_is_stripped_even_after_a_trailers_line() {
    // TE on two lines: only "trailers" may go upstream, whatever comes first.
    let (_b, _g, p) = common::blue_green(100, 0, "").await;
    let echo = raw_echo(
        p.http,
        "GET /echo HTTP/1.1\r\nHost: h\r\nTE: trailers\r\nTE: gzip",
    )
    .await;
    let te = seen_values(&echo, "te");
    assert!(
        te.iter().all(|v| v == "trailers"),
        "TE {te:?} reached the backend"
    );
    let echo = raw_echo(
        p.http,
        "GET /echo HTTP/1.1\r\nHost: h\r\nTE: gzip\r\nTE: trailers",
    )
    .await;
    let te = seen_values(&echo, "te");
    assert!(
        te.iter().all(|v| v == "trailers"),
        "TE {te:?} reached the backend"
    );
}

#[tokio::test]
async fn host_is_kept_even_when_named_in_connection() {
    // Host is end-to-end; a client listing it in Connection must not make
    // the proxy send the backend some other Host.
    let (_b, _g, p) = common::blue_green(100, 0, "").await;
    let echo = raw_echo(
        p.http,
        "GET /echo HTTP/1.1\r\nHost: shop.example.com\r\nConnection: keep-alive, Host",
    )
    .await;
    assert_eq!(seen_values(&echo, "host"), ["shop.example.com"], "{echo}");
    assert_eq!(
        seen_values(&echo, "x-forwarded-host"),
        ["shop.example.com"],
        "{echo}"
    );
}

#[tokio::test]
async fn a_client_x_forwarded_host_never_passes_as_is() {
    // HTTP/1.0 allows a request without Host: the proxy has no host to set,
    // and must not let the client's own X-Forwarded-Host through instead.
    let (_b, _g, p) = common::blue_green(100, 0, "").await;
    let echo = raw_echo(
        p.http,
        "GET /echo HTTP/1.0\r\nX-Forwarded-Host: evil.example",
    )
    .await;
    let xfh = seen_values(&echo, "x-forwarded-host");
    assert!(
        !xfh.iter().any(|v| v.contains("evil.example")),
        "X-Forwarded-Host {xfh:?} reached the backend"
    );
    // With a Host, the client's value is replaced by it.
    let echo = raw_echo(
        p.http,
        "GET /echo HTTP/1.1\r\nHost: h\r\nX-Forwarded-Host: evil.example",
    )
    .await;
    assert_eq!(seen_values(&echo, "x-forwarded-host"), ["h"]);
}

/// A client's `X_Forwarded_For`, `x_forwarded_proto`, `X_Forwarded_Host` or
/// `X_Request_Id` never reaches the backend: CGI, WSGI and Rack read them as
/// the proxy's own fields (`HTTP_X_FORWARDED_FOR`). Other names with
/// underscores pass.
#[tokio::test]
async fn underscore_aliases_of_the_forwarding_fields_are_removed() {
    let (_b, _g, p) = common::blue_green(100, 0, "").await;
    let echo = raw_echo(
        p.http,
        "GET /echo HTTP/1.1\r\nHost: h\r\nX_Forwarded_For: 6.6.6.6\r\n\
         x_forwarded_proto: https\r\nX_FORWARDED_HOST: evil.example\r\n\
         X_Request_Id: forged\r\nX-Forwarded_For: 7.7.7.7\r\nX_App_Id: kept",
    )
    .await;
    let headers = echo["headers"].as_object().expect("headers");
    let names: Vec<&String> = headers.keys().collect();
    for alias in [
        "x_forwarded_for",
        "x_forwarded_proto",
        "x_forwarded_host",
        "x_request_id",
        "x-forwarded_for",
    ] {
        assert!(!headers.contains_key(alias), "{alias} passed: {names:?}");
    }
    assert_eq!(seen_values(&echo, "x_app_id"), ["kept"]);
    assert_eq!(seen_values(&echo, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen_values(&echo, "x-forwarded-proto"), ["http"]);
    assert_eq!(seen_values(&echo, "x-forwarded-host"), ["h"]);
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_stripped() {
    let (b, _g, p) = common::blue_green(100, 0, "").await;
    let req = b"GET /hop HTTP/1.1\r\nHost: h\r\n\r\n";
    // The backend really sends them ...
    let direct = roundtrip(b.addr, req).await.unwrap();
    assert_eq!(direct.header("x-hop"), Some("1"));
    assert!(direct.header("keep-alive").is_some());
    assert!(direct.header("proxy-connection").is_some());
    assert!(direct.header("upgrade").is_some());
    assert_eq!(direct.header("connection"), Some("x-hop"));
    // ... and the client of the proxy sees none of them.
    let resp = roundtrip(p.http, req).await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "blue");
    assert_eq!(
        resp.header("x-end"),
        Some("kept"),
        "end-to-end headers pass: {:?}",
        resp.headers
    );
    for name in ["x-hop", "keep-alive", "proxy-connection", "upgrade"] {
        assert!(
            resp.header(name).is_none(),
            "{name} reached the client: {:?}",
            resp.headers
        );
    }
    for v in resp.header_all("connection") {
        assert!(
            !v.to_ascii_lowercase().contains("x-hop"),
            "Connection: {v} reached the client"
        );
    }
}

#[tokio::test]
async fn x_forwarded_for_is_appended_to_an_existing_one() {
    let (_b, _g, p) = common::blue_green(100, 0, "").await;
    let client = common::client();
    let echo: Value = client
        .get(p.url("/echo"))
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        seen_values(&echo, "x-forwarded-for").join(", "),
        "203.0.113.7, 127.0.0.1"
    );

    // Several lines already: every address is kept, in order, then ours.
    let echo = raw_echo(
        p.http,
        "GET /echo HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 203.0.113.7, 10.0.0.1\r\nX-Forwarded-For: 198.51.100.2",
    )
    .await;
    assert_eq!(
        seen_values(&echo, "x-forwarded-for").join(", "),
        "203.0.113.7, 10.0.0.1, 198.51.100.2, 127.0.0.1"
    );

    // None: just the client's address.
    let echo: Value = client
        .get(p.url("/echo"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen_values(&echo, "x-forwarded-for"), ["127.0.0.1"]);
}

#[tokio::test]
async fn x_forwarded_proto_and_host_are_set() {
    let (_b, _g, p) = common::blue_green(100, 0, "").await;
    let echo: Value = common::client()
        .get(p.url("/echo"))
        .header("host", "shop.example.com:8080")
        // A client cannot claim https on a cleartext listener.
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.example")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen_values(&echo, "x-forwarded-proto"), ["http"], "{echo}");
    assert_eq!(
        seen_values(&echo, "x-forwarded-host"),
        ["shop.example.com:8080"],
        "{echo}"
    );
}

#[tokio::test]
async fn host_is_kept() {
    let (b, _g, p) = common::blue_green(100, 0, "").await;
    let client = common::client();
    let echo: Value = client
        .get(p.url("/echo"))
        .header("host", "shop.example.com")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen_values(&echo, "host"), ["shop.example.com"]);
    assert_eq!(echo["uri"], "/echo");

    // The default Host names the proxy, not the backend.
    let echo: Value = client
        .get(p.url("/echo/x?y=1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen_values(&echo, "host"), [p.http.to_string()]);
    assert_ne!(p.http, b.addr);
    assert_eq!(echo["uri"], "/echo/x?y=1");
}

#[tokio::test]
async fn hop_by_hop_stripping_keeps_the_connection_usable() {
    // Two requests on one keep-alive connection, the first naming fields in
    // Connection: the second is answered normally.
    let (_b, _g, p) = common::blue_green(100, 0, "").await;
    let mut c = RawConn::connect(p.http).await;
    c.send(b"GET /echo HTTP/1.1\r\nHost: h\r\nConnection: x-a\r\nX-A: 1\r\n\r\n")
        .await
        .unwrap();
    let first = c.read_response().await.unwrap();
    assert_eq!(first.status, 200);
    let echo: Value = serde_json::from_slice(&first.body).unwrap();
    assert!(echo["headers"].get("x-a").is_none());
    c.send(b"GET /echo/2 HTTP/1.1\r\nHost: h\r\nX-A: 2\r\n\r\n")
        .await
        .unwrap();
    let second = c.read_response().await.unwrap();
    let echo: Value = serde_json::from_slice(&second.body).unwrap();
    assert_eq!(echo["uri"], "/echo/2");
    assert_eq!(seen_values(&echo, "x-a"), ["2"]);
}
