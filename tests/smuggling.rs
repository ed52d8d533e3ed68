//! A request smuggling corpus through the real binary, in front of a
//! backend that records every request as it came off the wire and frames
//! it strictly (`common::recording`). Each case hides a request where one
//! reading of the message would find it (after a body one header frames
//! and another does not, inside an unread body, behind an upgrade that
//! never happened); the proxy may refuse the message, or frame it one
//! way and close, but the hidden request must never reach the backend, the
//! backend must never be handed a message it frames differently from the
//! proxy, and the client must never get the hidden request's answer.
//!
//! Covered: CL.TE, TE.CL, TE.TE obfuscations, obs-fold, bare LF,
//! `Content-Length: +N` and other bad or contradicting lengths,
//! absolute-form targets, CONNECT, and the cases of Pingora's
//! CVE-2025-4366 (a body left unread behind a local answer parsed as the
//! next request), CVE-2026-2833 (bytes after an upgrade the backend
//! declined passed on raw) and CVE-2026-2835 (transfer codings other than
//! a final chunked, HTTP/1.0 bodies without a length).

mod common;

use std::time::Duration;

use common::Proxy;
use common::raw::RawConn;
use common::recording::RecordingBackend;

/// The request hidden where the backend would see it if framing went
/// wrong; `/ok/...` is routed to the recording backend.
const SMUGGLED: &str = "GET /ok/smuggled HTTP/1.1\r\nHost: h\r\n\r\n";
/// A hidden request for a path no route serves: it may be answered by the
/// proxy (it is the client's next request by the RFC's reading) but must
/// never get past routing to a backend.
const PRIVATE: &str = "GET /private HTTP/1.1\r\nHost: h\r\n\r\n";
/// Sent after every case on the same connection, if it is still open.
const FOLLOW: &[u8] = b"GET /ok/follow HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";

/// `/ok` goes to the recording backend, `/down` to a closed port, anything
/// else has no route (the proxy answers 404 itself).
async fn setup() -> (RecordingBackend, Proxy) {
    let b = RecordingBackend::start().await;
    let p = Proxy::start(&format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [timeouts]\nbody_idle = \"2s\"\n\n\
         [backends.blue]\nendpoints = [\"{}\"]\n\n\
         [backends.down]\nendpoints = [\"127.0.0.1:1\"]\nretries = 0\n\n\
         [[routes]]\nname = \"down\"\npath_prefix = \"/down\"\nweights = {{ down = 1 }}\n\n\
         [[routes]]\nname = \"ok\"\npath_prefix = \"/ok\"\nweights = {{ blue = 1 }}\n",
        b.addr
    ))
    .await;
    (b, p)
}

/// One attack: `first` is sent at once; `then`, if any, after the first
/// answer arrived (or 300 ms passed), as a client whose body comes late.
struct Case {
    name: &'static str,
    first: Vec<u8>,
    then: Option<Vec<u8>>,
    /// The target that must not reach the backend.
    hidden: &'static str,
}

fn case(name: &'static str, first: impl Into<Vec<u8>>, hidden: &'static str) -> Case {
    Case {
        name,
        first: first.into(),
        then: None,
        hidden,
    }
}

/// `POST /ok/a` with `fields`, whose `Content-Length` (if `{CL}` is in the
/// fields) covers `0\r\n\r\n` and the smuggled request: the CL.TE shape.
fn cl_te(fields: &str) -> Vec<u8> {
    let body = format!("0\r\n\r\n{SMUGGLED}");
    let fields = fields.replace("{CL}", &body.len().to_string());
    format!("POST /ok/a HTTP/1.1\r\nHost: h\r\n{fields}\r\n{body}").into_bytes()
}

/// `POST /ok/a` whose chunked body holds the smuggled request as its one
/// chunk, with a `Content-Length: 4` covering only the chunk size line:
/// the TE.CL shape.
fn te_cl(fields: &str) -> Vec<u8> {
    let body = format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len());
    let fields = fields.replace("{CL}", "4");
    format!("POST /ok/a HTTP/1.1\r\nHost: h\r\n{fields}\r\n{body}").into_bytes()
}

/// Each obfuscated `Transfer-Encoding` (a list of fields, CRLF-separated).
const TE_OBFUSCATIONS: &[&str] = &[
    "Transfer-Encoding: chunked",
    "Transfer-Encoding: xchunked",
    "Transfer-Encoding : chunked",
    "Transfer-Encoding: chunked\r\nTransfer-Encoding: x",
    "Transfer-Encoding: x\r\nTransfer-Encoding: chunked",
    "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
    "Transfer-Encoding:\tchunked",
    "Transfer-Encoding: chunked, identity",
    "Transfer-Encoding: identity, chunked",
    "Transfer-Encoding: gzip, chunked",
    "Transfer-Encoding: \"chunked\"",
    "Transfer-Encoding: CHUNKED",
    "Transfer-Encoding: chunked\x0b",
    "Transfer-Encoding: \x0bchunked",
    "Transfer-Encoding: chunk",
    "Transfer_Encoding: chunked",
    "X: X\nTransfer-Encoding: chunked",
    "Transfer-Encoding\r\n : chunked",
    "Transfer-Encoding: identity\r\n chunked",
    "X-Folded: a\r\n Transfer-Encoding: chunked",
];

/// Sends a case on a fresh connection, then [`FOLLOW`]; returns every byte
/// the proxy answered until it closed.
async fn run(p: &Proxy, c: &Case) -> String {
    let mut conn = RawConn::connect(p.http).await;
    let _ = conn.send(&c.first).await;
    let mut got = Vec::new();
    if let Some(then) = &c.then {
        let (closed, early) = conn.closed_within(Duration::from_millis(300)).await;
        got.extend(early);
        if !closed {
            let _ = conn.send(then).await;
        }
    }
    let _ = conn.send(FOLLOW).await;
    got.extend(conn.read_until_close(Duration::from_secs(5)).await);
    String::from_utf8_lossy(&got).into_owned()
}

/// The status codes of the responses in `text`.
fn statuses(text: &str) -> Vec<u16> {
    text.split("HTTP/1.1 ")
        .skip(1)
        .filter_map(|s| s.get(..3)?.parse().ok())
        .collect()
}

/// Runs every case against one proxy; checks the invariants, and that a
/// fresh connection is served after each.
async fn check(cases: Vec<Case>) {
    let (b, p) = setup().await;
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for c in &cases {
        let before = b.requests().len();
        let faults_before = b.faults().len();
        let answered = run(&p, c).await;
        let seen: Vec<String> = b.requests()[before..]
            .iter()
            .map(|r| r.line.clone())
            .collect();
        report.push(format!(
            "{:<52} client got {:?}, backend saw {:?}",
            c.name,
            statuses(&answered),
            seen
        ));
        let mut fail = |why: String| failures.push(format!("{}: {why}", c.name));
        if seen.iter().any(|l| l.contains(c.hidden)) {
            fail(format!(
                "the hidden request reached the backend: {seen:?}; client got {answered:?}"
            ));
        }
        if answered.contains(&format!("seen {}", c.hidden)) {
            fail(format!(
                "the client got the hidden request's answer: {answered:?}"
            ));
        }
        let faults = b.faults()[faults_before..].to_vec();
        if !faults.is_empty() {
            fail(format!(
                "the backend could not frame what it was sent: {faults:?}"
            ));
        }
        for r in &b.requests()[before..] {
            if r.field("content-length").is_some() && r.field("transfer-encoding").is_some() {
                fail(format!("both lengths went upstream: {r:?}"));
            }
        }
        let ok = common::raw::roundtrip(p.http, b"GET /ok/fresh HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .map(|r| r.text());
        if ok.as_deref().ok() != Some("seen /ok/fresh") {
            fail(format!(
                "a fresh connection was not served after it: {ok:?}"
            ));
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cl_te_te_cl_and_te_te_obfuscations_never_smuggle() {
    let mut cases = Vec::new();
    for te in TE_OBFUSCATIONS {
        let name: &'static str = Box::leak(format!("CL.TE {te:?}").into_boxed_str());
        cases.push(case(
            name,
            cl_te(&format!("Content-Length: {{CL}}\r\n{te}\r\n")),
            "/ok/smuggled",
        ));
        // `Transfer_Encoding` is no transfer coding (RFC 9110 §5.1): with a
        // Content-Length of 4 the hidden request is the client's next one.
        if te.starts_with("Transfer_") {
            continue;
        }
        let name: &'static str = Box::leak(format!("TE.CL {te:?}").into_boxed_str());
        cases.push(case(
            name,
            te_cl(&format!("{te}\r\nContent-Length: {{CL}}\r\n")),
            "/ok/smuggled",
        ));
        // The coding alone, no Content-Length: if the proxy took it for
        // chunked the hidden request is chunk data, else it must refuse.
        let name: &'static str = Box::leak(format!("TE only {te:?}").into_boxed_str());
        cases.push(case(name, te_cl(&format!("{te}\r\n")), "/ok/smuggled"));
    }
    check(cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_and_contradicting_content_lengths_never_smuggle() {
    // The hidden request is the body by one reading of the lengths, the
    // next request by another.
    let n = SMUGGLED.len();
    let body = |fields: String| -> Vec<u8> {
        format!("POST /ok/a HTTP/1.1\r\nHost: h\r\n{fields}\r\n{SMUGGLED}").into_bytes()
    };
    let cases = vec![
        case(
            "CL +N",
            body(format!("Content-Length: +{n}\r\n")),
            "/ok/smuggled",
        ),
        case(
            "CL -N",
            body(format!("Content-Length: -{n}\r\n")),
            "/ok/smuggled",
        ),
        case(
            "CL 0x",
            body(format!("Content-Length: 0x{n:x}\r\n")),
            "/ok/smuggled",
        ),
        case(
            "CL N.0",
            body(format!("Content-Length: {n}.0\r\n")),
            "/ok/smuggled",
        ),
        case(
            "CL 'N N'",
            body(format!("Content-Length: {n} {n}\r\n")),
            "/ok/smuggled",
        ),
        case(
            "CL 0 then N",
            body(format!("Content-Length: 0\r\nContent-Length: {n}\r\n")),
            "/ok/smuggled",
        ),
        case(
            "CL N then 0",
            body(format!("Content-Length: {n}\r\nContent-Length: 0\r\n")),
            "/ok/smuggled",
        ),
        case(
            "CL 'N, 0'",
            body(format!("Content-Length: {n}, 0\r\n")),
            "/ok/smuggled",
        ),
        case(
            "CL 'N, N'",
            body(format!("Content-Length: {n}, {n}\r\n")),
            "/ok/smuggled",
        ),
        case(
            "CL N twice",
            body(format!("Content-Length: {n}\r\nContent-Length: {n}\r\n")),
            "/ok/smuggled",
        ),
        case(
            "CL with space before colon",
            body(format!("Content-Length : {n}\r\n")),
            "/ok/smuggled",
        ),
        case(
            "CL overflowing",
            body("Content-Length: 18446744073709551616\r\n".into()),
            "/ok/smuggled",
        ),
        case(
            "CL bare LF",
            format!("POST /ok/a HTTP/1.1\nHost: h\nContent-Length: {n}\n\n{SMUGGLED}"),
            "/ok/smuggled",
        ),
        case(
            "GET with CL body",
            format!("GET /ok/a HTTP/1.1\r\nHost: h\r\nContent-Length: {n}\r\n\r\n{SMUGGLED}"),
            "/ok/smuggled",
        ),
    ];
    check(cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_lf_and_chunk_line_tricks_never_smuggle() {
    let n = SMUGGLED.len();
    let chunked = |chunks: String| -> Vec<u8> {
        format!("POST /ok/a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n{chunks}")
            .into_bytes()
    };
    let cases = vec![
        case(
            "bare LF head, CL.TE",
            format!(
                "POST /ok/a HTTP/1.1\nHost: h\nContent-Length: {}\nTransfer-Encoding: chunked\n\n0\n\n{SMUGGLED}",
                n + 5
            ),
            "/ok/smuggled",
        ),
        case(
            "bare LF chunk lines",
            chunked(format!("{n:x}\n{SMUGGLED}\n0\n\n")),
            "/ok/smuggled",
        ),
        case(
            "LF in chunk extension",
            chunked(format!("2;x\nxx\r\n{n:x}\r\n{SMUGGLED}\r\n0\r\n\r\n")),
            "/ok/smuggled",
        ),
        case(
            "CR without LF in chunk line",
            chunked(format!("{n:x}\r{SMUGGLED}\r\n0\r\n\r\n")),
            "/ok/smuggled",
        ),
        case(
            "chunk size with leading +",
            chunked(format!("+{n:x}\r\n{SMUGGLED}\r\n0\r\n\r\n")),
            "/ok/smuggled",
        ),
        case(
            "chunk size 0x prefix",
            chunked(format!("0x{n:x}\r\n{SMUGGLED}\r\n0\r\n\r\n")),
            "/ok/smuggled",
        ),
        case(
            "chunk size overflowing",
            chunked(format!("1{:0>16}\r\n{SMUGGLED}\r\n0\r\n\r\n", 0)),
            "/ok/smuggled",
        ),
        case(
            "chunk data longer than its size",
            chunked(format!("1\r\nab\r\n0\r\n\r\n{SMUGGLED}")),
            "/ok/smuggled",
        ),
        case(
            "last chunk without final CRLF, then a request",
            chunked(format!("0\r\n{SMUGGLED}")),
            "/ok/smuggled",
        ),
        case(
            "trailer smuggling a length",
            chunked(format!("0\r\nContent-Length: {n}\r\n\r\n{PRIVATE}")),
            "/private",
        ),
    ];
    check(cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_answers_never_leave_an_unread_body_to_be_parsed_cve_2025_4366() {
    // The proxy answers these itself (no route: 404; backend down: 502)
    // without reading the body; the body, a request by its bytes, must be
    // drained or the connection closed, never parsed as the next request.
    let n = SMUGGLED.len();
    let chunk = format!("{n:x}\r\n{SMUGGLED}\r\n0\r\n\r\n");
    let late = |name, head: String| Case {
        name,
        first: head.into_bytes(),
        then: Some(SMUGGLED.as_bytes().to_vec()),
        hidden: "/ok/smuggled",
    };
    let cases = vec![
        case(
            "404 with CL body",
            format!("POST /nothing HTTP/1.1\r\nHost: h\r\nContent-Length: {n}\r\n\r\n{SMUGGLED}"),
            "/ok/smuggled",
        ),
        case(
            "404 with chunked body",
            format!(
                "POST /nothing HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}"
            ),
            "/ok/smuggled",
        ),
        case(
            "502 with CL body",
            format!("POST /down HTTP/1.1\r\nHost: h\r\nContent-Length: {n}\r\n\r\n{SMUGGLED}"),
            "/ok/smuggled",
        ),
        case(
            "502 with chunked body",
            format!("POST /down HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}"),
            "/ok/smuggled",
        ),
        case(
            "400 bad host with CL body",
            format!(
                "POST /ok/a HTTP/1.1\r\nHost: h\r\nHost: i\r\nContent-Length: {n}\r\n\r\n{SMUGGLED}"
            ),
            "/ok/smuggled",
        ),
        case(
            "GET 404 with CL body",
            format!("GET /nothing HTTP/1.1\r\nHost: h\r\nContent-Length: {n}\r\n\r\n{SMUGGLED}"),
            "/ok/smuggled",
        ),
        late(
            "404, body sent after the answer",
            format!("POST /nothing HTTP/1.1\r\nHost: h\r\nContent-Length: {n}\r\n\r\n"),
        ),
        late(
            "502, body sent after the answer",
            format!("POST /down HTTP/1.1\r\nHost: h\r\nContent-Length: {n}\r\n\r\n"),
        ),
        late(
            "404, 100-continue, body sent anyway",
            format!(
                "POST /nothing HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: {n}\r\n\r\n"
            ),
        ),
        late(
            "502, 100-continue, body sent anyway",
            format!(
                "POST /down HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: {n}\r\n\r\n"
            ),
        ),
        late(
            "404, chunked, body sent after the answer",
            format!(
                "POST /nothing HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n{n:x}\r\n"
            ),
        ),
    ];
    check(cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_a_declined_upgrade_are_parsed_not_tunnelled_cve_2026_2833() {
    // The backend answers 200, not 101: what follows the request is the
    // client's next request, framed and routed by the proxy (no route for
    // /private: 404), never passed raw to the backend.
    let n = PRIVATE.len();
    let cases = vec![
        case(
            "Upgrade: foo",
            format!(
                "GET /ok/up HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n{PRIVATE}"
            ),
            "/private",
        ),
        case(
            "Upgrade: websocket",
            format!(
                "GET /ok/up HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n{PRIVATE}"
            ),
            "/private",
        ),
        case(
            "Upgrade without Connection",
            format!("GET /ok/up HTTP/1.1\r\nHost: h\r\nUpgrade: foo\r\n\r\n{PRIVATE}"),
            "/private",
        ),
        case(
            "Upgrade: h2c",
            format!(
                "GET /ok/up HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n{PRIVATE}"
            ),
            "/private",
        ),
        case(
            "Upgrade with CL body",
            format!(
                "POST /ok/up HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: foo\r\nContent-Length: {n}\r\n\r\n{PRIVATE}"
            ),
            "/private",
        ),
        case(
            "Upgrade on HTTP/1.0",
            format!(
                "GET /ok/up HTTP/1.0\r\nHost: h\r\nConnection: Upgrade, keep-alive\r\nUpgrade: foo\r\n\r\n{PRIVATE}"
            ),
            "/private",
        ),
        case(
            "CONNECT",
            format!("CONNECT h:80 HTTP/1.1\r\nHost: h:80\r\n\r\n{PRIVATE}"),
            "/private",
        ),
        case(
            "CONNECT to a routed path",
            format!("CONNECT /ok/x HTTP/1.1\r\nHost: h\r\n\r\n{PRIVATE}"),
            "/private",
        ),
    ];
    check(cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_codings_and_http10_bodies_never_smuggle_cve_2026_2835() {
    let n = SMUGGLED.len();
    let chunk = format!("{n:x}\r\n{SMUGGLED}\r\n0\r\n\r\n");
    let cases = vec![
        case(
            "HTTP/1.0 chunked",
            format!(
                "POST /ok/a HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}"
            ),
            "/ok/smuggled",
        ),
        case(
            "HTTP/1.0 chunked and CL",
            format!(
                "POST /ok/a HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\nContent-Length: {}\r\n\r\n{chunk}",
                chunk.len()
            ),
            "/ok/smuggled",
        ),
        case(
            "HTTP/1.0 body without a length",
            format!("POST /ok/a HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n{PRIVATE}"),
            "/private",
        ),
        case(
            "HTTP/1.1 body without a length",
            format!("POST /ok/a HTTP/1.1\r\nHost: h\r\n\r\n{PRIVATE}"),
            "/private",
        ),
        case(
            "chunked not last",
            format!(
                "POST /ok/a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n{chunk}"
            ),
            "/ok/smuggled",
        ),
        case(
            "identity",
            format!(
                "POST /ok/a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\nContent-Length: {n}\r\n\r\n{SMUGGLED}"
            ),
            "/ok/smuggled",
        ),
        case(
            "chunked twice in one list",
            format!(
                "POST /ok/a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n{chunk}"
            ),
            "/ok/smuggled",
        ),
        case(
            "empty Transfer-Encoding",
            format!(
                "POST /ok/a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\nContent-Length: {n}\r\n\r\n{SMUGGLED}"
            ),
            "/ok/smuggled",
        ),
        case(
            "HTTP/0.9-style line",
            format!("GET /ok/a\r\n\r\n{SMUGGLED}"),
            "/ok/smuggled",
        ),
        case(
            "HTTP/1.2",
            format!("POST /ok/a HTTP/1.2\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}"),
            "/ok/smuggled",
        ),
    ];
    check(cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_targets_reach_the_backend_in_origin_form_with_their_host() {
    // RFC 9112 §3.2.2: the target's authority replaces Host; the backend
    // gets origin form and one Host, the one the proxy routed by.
    let (b, p) = setup().await;
    for (req, want_host) in [
        (
            "GET http://a.example/ok/abs HTTP/1.1\r\nHost: other\r\n\r\n",
            "a.example",
        ),
        (
            "GET http://a.example:8080/ok/abs?q=1 HTTP/1.1\r\nHost: a.example\r\n\r\n",
            "a.example:8080",
        ),
        (
            "GET HTTP://A.EXAMPLE/ok/abs HTTP/1.1\r\nHost: other\r\n\r\n",
            "A.EXAMPLE",
        ),
    ] {
        let before = b.requests().len();
        let r = common::raw::roundtrip(p.http, req.as_bytes())
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{req:?}: {}", r.text());
        let got = &b.requests()[before..];
        assert_eq!(got.len(), 1, "{req:?}: {got:?}");
        assert!(
            got[0].target().starts_with("/ok/abs"),
            "{req:?}: not origin form upstream: {:?}",
            got[0].line
        );
        let hosts: Vec<_> = got[0]
            .fields
            .iter()
            .filter(|f| f.to_ascii_lowercase().starts_with("host:"))
            .collect();
        assert_eq!(hosts.len(), 1, "{req:?}: {:?}", got[0].fields);
        assert!(
            hosts[0].ends_with(want_host)
                || hosts[0].eq_ignore_ascii_case(&format!("host: {want_host}")),
            "{req:?}: upstream {:?}",
            hosts[0]
        );
    }
    // Targets that are not a path or an absolute URI go nowhere.
    for req in [
        "GET * HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET //ok/x HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET a.example/ok/x HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET http://a@b.example/ok/x HTTP/1.1\r\nHost: h\r\n\r\n",
    ] {
        let before = b.requests().len();
        let got = common::raw::roundtrip(p.http, req.as_bytes()).await;
        let seen = &b.requests()[before..];
        eprintln!(
            "{req:?}: {:?}, backend {:?}",
            got.as_ref().map(|r| r.status),
            seen
        );
        for r in seen {
            assert!(r.target().starts_with('/'), "{req:?}: {:?}", r.line);
        }
    }
    assert!(b.faults().is_empty(), "{:?}", b.faults());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_refused_not_forwarded() {
    // CONNECT asks a forward proxy for a tunnel (RFC 9110 §9.3.6). Passed
    // on, a backend's 2xx made hyper treat the client connection as
    // upgraded: the client got no byte at all (the request was counted as
    // a 200), and the backend was handed a CONNECT it might have honoured.
    let (b, p) = setup().await;
    for req in [
        "CONNECT /ok/x HTTP/1.1\r\nHost: h\r\n\r\n",
        "CONNECT h:80 HTTP/1.1\r\nHost: h:80\r\n\r\n",
    ] {
        let r = common::raw::roundtrip(p.http, req.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{req:?}: no answer: {e}"));
        assert_eq!(r.status, 501, "{req:?}: {}", r.text());
    }
    assert!(
        !b.requests().iter().any(|r| r.line.starts_with("CONNECT")),
        "{:?}",
        b.targets()
    );
}
