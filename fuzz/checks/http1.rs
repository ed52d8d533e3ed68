//! The HTTP/1 request path end to end: the input's bytes are written on one
//! connection to a real Cutover listener (in this process, one worker)
//! whose backend records every request it receives. Every request the
//! backend sees must be one the client framed, in order: a subsequence of
//! what a strict RFC 9112 reading of the bytes finds (same method, path and
//! body), which stops at anything ambiguous (`Transfer-Encoding` with
//! `Content-Length`, any coding but a single `chunked`, differing or
//! malformed lengths, a bad chunk): nothing after such a request may reach
//! the backend, and no second request hidden in a body ever does. A
//! request whose head is sound but whose body turns out malformed or short
//! may reach the backend (the head is streamed before the body is read),
//! but only as the last one and with a body that fails.
//!
//! Bounded: inputs past 16 KiB are cut, and each exchange has a 3 s
//! deadline (the proxy's own timeouts are 1-2 s). Requests are told apart by
//! the client's source address (127.x.y.z, one per input), which the proxy
//! appends to `X-Forwarded-For`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cutover::config::{self, Loaded};
use cutover::metrics::Metrics;
use cutover::proxy::server::spawn_workers;
use cutover::proxy::{Listeners, Shared};
use cutover::routing::RoutingTable;
use cutover::upstream::EndpointRegistry;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MAX_INPUT: usize = 16 * 1024;
const DEADLINE: Duration = Duration::from_secs(3);

/// One request as the backend received it.
#[derive(Debug, Clone)]
struct Seen {
    /// Arrival order at the backend, to find the record again.
    seq: u64,
    /// The last `X-Forwarded-For` element: which input sent it.
    client: Option<String>,
    method: String,
    path: String,
    /// `None` while being read; `Err` if the body did not complete.
    body: Option<Result<Vec<u8>, ()>>,
}

/// One request as the client framed it.
#[derive(Debug, Clone, PartialEq)]
struct Framed {
    method: String,
    path: String,
    body: Vec<u8>,
    /// `false` for the last request when its head is sound but its body is
    /// malformed or cut short: a streaming proxy has forwarded the head by
    /// the time it finds out, so the backend may see it, but only with a
    /// body that fails (never one that looks complete).
    complete: bool,
}

struct Harness {
    proxy: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    next: AtomicU32,
    client: tokio::runtime::Runtime,
    /// The proxy runs for the life of the process: held here (in a static),
    /// not leaked, so LeakSanitizer sees them reachable.
    _running: (
        tokio::sync::watch::Sender<bool>,
        Vec<std::thread::JoinHandle<()>>,
        EndpointRegistry,
    ),
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(start)
}

fn start() -> Harness {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let backend = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the backend");
    let backend_addr = backend.local_addr().expect("backend address");
    let record = seen.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(serve_backend(backend, record));
    });

    let text = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[server]\nworkers = 1\n\
         [timeouts]\nheader_read = \"1s\"\nrequest = \"2s\"\nbody_idle = \"1s\"\nidle = \"1s\"\n\
         [backends.app]\nendpoints = [\"{backend_addr}\"]\n\
         [[routes]]\nname = \"all\"\nweights = {{ app = 1 }}\n"
    );
    let path = Path::new("fuzz-http1.toml");
    let config = config::parse(path, &text).expect("the harness config is valid");
    let loaded = Loaded {
        config: config.clone(),
        path: path.into(),
        sha256: String::new(),
        fingerprint: String::new(),
    };
    let metrics = Arc::new(Metrics::new(&config.metric_buckets));
    let registry = EndpointRegistry::new(metrics.ejections.clone(), config.workers);
    let table = RoutingTable::build(&loaded, 1, &registry, &metrics);
    let shared = Arc::new(Shared::new(table, metrics, &config));
    let listeners = Listeners::bind("127.0.0.1:0".parse().expect("an address"), 1).expect("bind");
    let proxy = listeners.addr;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let workers = spawn_workers(shared, listeners, None, stopped);
    Harness {
        proxy,
        seen,
        next: AtomicU32::new(0),
        _running: (stop, workers, registry),
        client: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime"),
    }
}

async fn serve_backend(listener: std::net::TcpListener, seen: Arc<Mutex<Vec<Seen>>>) {
    listener.set_nonblocking(true).expect("nonblocking");
    let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let seen = seen.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let seen = seen.clone();
                async move {
                    let client = req
                        .headers()
                        .get("x-forwarded-for")
                        .and_then(|v| v.as_bytes().rsplit(|b| *b == b',').next())
                        .map(|v| String::from_utf8_lossy(v.trim_ascii()).into_owned());
                    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
                    {
                        let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
                        s.push(Seen {
                            seq,
                            client,
                            method: req.method().to_string(),
                            path: req.uri().path().to_owned(),
                            body: None,
                        });
                    }
                    let body = tokio::time::timeout(DEADLINE, req.into_body().collect()).await;
                    let body = match body {
                        Ok(Ok(b)) => Ok(b.to_bytes().to_vec()),
                        _ => Err(()),
                    };
                    let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
                    // Gone if the check gave up waiting for it.
                    if let Some(r) = s.iter_mut().find(|r| r.seq == seq) {
                        r.body = Some(body);
                    }
                    drop(s);
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(
                        b"ok",
                    ))))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

pub fn check(data: &[u8]) {
    let data = &data[..data.len().min(MAX_INPUT)];
    let h = harness();
    let n = h.next.fetch_add(1, Ordering::Relaxed);
    // 127.1.0.0 and up: one source address per input.
    let ip = Ipv4Addr::from(0x7f01_0000 + (n % 0x00fe_0000));
    let client = ip.to_string();
    h.client.block_on(async {
        let _ = tokio::time::timeout(DEADLINE, exchange(ip, h.proxy, data)).await;
    });
    // Requests the proxy forwarded before it closed our connection are
    // complete at the backend within a moment.
    let until = Instant::now() + Duration::from_secs(1);
    let mine = loop {
        let seen = h.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mine: Vec<Seen> = seen
            .iter()
            .filter(|s| s.client.as_deref() == Some(client.as_str()) || s.client.is_none())
            .cloned()
            .collect();
        if mine.iter().all(|s| s.body.is_some()) || Instant::now() > until {
            break mine;
        }
        drop(seen);
        std::thread::sleep(Duration::from_millis(2));
    };
    h.seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|s| s.client.as_deref() != Some(client.as_str()) && s.client.is_some());

    let framed = frame(data);
    let mut next = framed.iter();
    for s in &mine {
        assert!(
            s.client.is_some(),
            "the backend got a request without X-Forwarded-For: {s:?}"
        );
        let found = next.by_ref().any(|f| {
            f.method == s.method
                && f.path == s.path
                // A body cut short (the client went away) matches any;
                // one the client never completed must not look complete.
                && match &s.body {
                    Some(Ok(b)) => f.complete && *b == f.body,
                    _ => true,
                }
        });
        assert!(
            found,
            "the backend got a request the client did not frame: {s:?}\nframed: {framed:?}\nall seen: {mine:?}\ninput: {:?}",
            String::from_utf8_lossy(data)
        );
    }
}

/// Writes `data`, half-closes, and reads until the proxy closes.
async fn exchange(ip: Ipv4Addr, proxy: SocketAddr, data: &[u8]) -> std::io::Result<()> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((ip, 0)))?;
    let mut stream = socket.connect(proxy).await?;
    let (mut r, mut w) = stream.split();
    let read = async {
        let mut buf = vec![0u8; 16 * 1024];
        while r.read(&mut buf).await? > 0 {}
        std::io::Result::Ok(())
    };
    let write = async {
        // The proxy may close first; what it read is what counts.
        let _ = w.write_all(data).await;
        let _ = w.shutdown().await;
    };
    let (read, ()) = tokio::join!(read, write);
    read
}

/// The requests in `data` as RFC 9112 frames them, up to the first one
/// that is malformed, incomplete or ambiguous.
fn frame(data: &[u8]) -> Vec<Framed> {
    let mut out = Vec::new();
    let mut rest = data;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 100];
        let mut req = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(n)) = req.parse(rest) else {
            return out;
        };
        let (Some(method), Some(target)) = (req.method, req.path) else {
            return out;
        };
        let Ok(uri) = target.parse::<http::Uri>() else {
            return out;
        };
        if method == "CONNECT" {
            return out; // a tunnel follows, not requests
        }
        let mut te = Vec::new();
        let mut lengths = Vec::new();
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                te.extend(
                    h.value
                        .split(|b| *b == b',')
                        .map(|t| t.trim_ascii().to_vec()),
                );
            } else if h.name.eq_ignore_ascii_case("content-length") {
                for v in h.value.split(|b| *b == b',') {
                    let v = v.trim_ascii();
                    // Invalid: the framing is, unless Transfer-Encoding
                    // overrides it (RFC 9112 §6.3, rules 3 and 5).
                    if v.is_empty() || v.len() > 15 || !v.iter().all(u8::is_ascii_digit) {
                        lengths.push(None);
                        continue;
                    }
                    lengths.push(
                        std::str::from_utf8(v)
                            .ok()
                            .and_then(|v| v.parse::<usize>().ok()),
                    );
                }
            }
        }
        let body_start = &rest[n..];
        let (body, used) = if !te.is_empty() {
            let single_chunked = te.len() == 1 && te[0].eq_ignore_ascii_case(b"chunked");
            if !single_chunked {
                return out;
            }
            let Some(x) = chunked(body_start) else {
                out.push(Framed {
                    method: method.to_owned(),
                    path: uri.path().to_owned(),
                    body: Vec::new(),
                    complete: false,
                });
                return out;
            };
            if !lengths.is_empty() {
                // RFC 9112 §6.1 lets a server process it by its
                // Transfer-Encoding (hyper drops the Content-Length), but
                // it must close the connection after: nothing may follow.
                out.push(Framed {
                    method: method.to_owned(),
                    path: uri.path().to_owned(),
                    body: x.0,
                    complete: true,
                });
                return out;
            }
            x
        } else if let Some(first) = lengths.first() {
            let Some(len) = *first else { return out };
            if lengths.iter().any(|l| *l != Some(len)) {
                return out;
            }
            if body_start.len() < len {
                out.push(Framed {
                    method: method.to_owned(),
                    path: uri.path().to_owned(),
                    body: Vec::new(),
                    complete: false,
                });
                return out;
            }
            (body_start[..len].to_vec(), len)
        } else {
            (Vec::new(), 0)
        };
        out.push(Framed {
            method: method.to_owned(),
            path: uri.path().to_owned(),
            body,
            complete: true,
        });
        rest = &body_start[used..];
    }
}

/// A chunked body (RFC 9112 §7.1): its data and the bytes it took, or
/// `None` if it is malformed or incomplete.
fn chunked(data: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let line_end = find_crlf(&data[at..])? + at;
        let line = &data[at..line_end];
        let size_end = line
            .iter()
            .position(|b| !b.is_ascii_hexdigit())
            .unwrap_or(line.len());
        let (size, ext) = line.split_at(size_end);
        if size.is_empty() || size.len() > 15 {
            return None;
        }
        // Blanks, then an extension: `;` and anything but a bare CR or LF.
        let ext = ext.trim_ascii_start();
        if !(ext.is_empty() || ext[0] == b';') || ext.iter().any(|b| *b == b'\r' || *b == b'\n') {
            return None;
        }
        let size = usize::from_str_radix(std::str::from_utf8(size).ok()?, 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // Trailer fields, then an empty line.
            loop {
                let end = find_crlf(&data[at..])? + at;
                let line = &data[at..end];
                at = end + 2;
                if line.is_empty() {
                    return Some((body, at));
                }
                if line.contains(&b'\n') || !line.contains(&b':') {
                    return None;
                }
            }
        }
        let chunk = data.get(at..at.checked_add(size)?)?;
        body.extend_from_slice(chunk);
        at += size;
        if data.get(at..at + 2)? != b"\r\n" {
            return None;
        }
        at += 2;
    }
}

/// The offset of the first CRLF; `None` if a bare LF comes first or none.
fn find_crlf(data: &[u8]) -> Option<usize> {
    let lf = data.iter().position(|b| *b == b'\n')?;
    lf.checked_sub(1).filter(|&cr| data[cr] == b'\r')
}
