//! A backend that records every request exactly as it came off the wire,
//! framed strictly (RFC 9112 §6): a request with both `Content-Length` and
//! `Transfer-Encoding`, a bad chunk line or a head it cannot parse is
//! recorded as a framing fault, and the connection is closed. It answers
//! each request `200` with `seen TARGET` as the body, so a client can tell
//! which request an answer belongs to.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use super::raw::{BackendConn, RawBackend, head_field};

/// One request as the backend read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// `GET /path HTTP/1.1`.
    pub line: String,
    /// The head's fields, in order, as written.
    pub fields: Vec<String>,
    pub body: Vec<u8>,
}

impl Recorded {
    /// The request target.
    pub fn target(&self) -> &str {
        self.line.split(' ').nth(1).unwrap_or("")
    }

    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// What the backend saw, in arrival order.
#[derive(Debug, Default)]
pub struct Log {
    pub requests: Vec<Recorded>,
    /// Requests it could not frame: each would be a desync with the proxy.
    pub faults: Vec<String>,
    /// Requests whose connection the proxy closed before their body ended
    /// (the client's body failed): aborted, not misframed.
    pub aborted: Vec<String>,
}

pub struct RecordingBackend {
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Log>>,
    _raw: RawBackend,
}

impl RecordingBackend {
    pub async fn start() -> RecordingBackend {
        let log: Arc<Mutex<Log>> = Arc::default();
        let l = log.clone();
        let raw = RawBackend::start(move |c| serve(c, l.clone())).await;
        RecordingBackend {
            addr: raw.addr,
            log,
            _raw: raw,
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().requests.clone()
    }

    pub fn faults(&self) -> Vec<String> {
        self.log.lock().unwrap().faults.clone()
    }

    pub fn targets(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|r| r.target().to_owned())
            .collect()
    }
}

async fn serve(mut c: BackendConn, log: Arc<Mutex<Log>>) {
    while let Some(head) = c.read_head().await {
        let fault = |why: String| log.lock().unwrap().faults.push(why);
        let Some(line) = head.first().cloned() else {
            return;
        };
        if line.split(' ').count() != 3 || !line.ends_with(" HTTP/1.1") {
            return fault(format!("bad request line {line:?}"));
        }
        let (cl, te) = (
            head_field(&head, "content-length"),
            head_field(&head, "transfer-encoding"),
        );
        let body = match (cl, te) {
            (Some(_), Some(_)) => return fault(format!("both lengths: {head:?}")),
            (None, Some(te)) if te.eq_ignore_ascii_case("chunked") => {
                match read_chunked(&mut c).await {
                    Ok(b) => b,
                    Err(None) => return log.lock().unwrap().aborted.push(line),
                    Err(Some(e)) => return fault(format!("{e}: {head:?}")),
                }
            }
            (None, Some(te)) => return fault(format!("transfer-encoding {te:?}")),
            (Some(n), None) => match n.parse::<usize>() {
                Ok(n) if n <= 1 << 20 => match c.read_exact(n).await {
                    Ok(b) => b,
                    Err(_) => return log.lock().unwrap().aborted.push(line),
                },
                _ => return fault(format!("content-length {n:?}")),
            },
            (None, None) => Vec::new(),
        };
        let target = line.split(' ').nth(1).unwrap_or("").to_owned();
        log.lock().unwrap().requests.push(Recorded {
            line,
            fields: head[1..].to_vec(),
            body,
        });
        let answer = format!("seen {target}");
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if c.write(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// A chunked body, strictly: hex size, CRLF, data, CRLF; trailers ignored.
/// `Err(None)`: the connection ended first (an aborted message).
async fn read_chunked(c: &mut BackendConn) -> Result<Vec<u8>, Option<String>> {
    use tokio::io::AsyncBufReadExt;
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        match c.reader.read_line(&mut line).await {
            Ok(0) | Err(_) => return Err(None),
            Ok(_) => {}
        }
        let size = line
            .strip_suffix("\r\n")
            .ok_or_else(|| format!("chunk line {line:?}"))?;
        let size = size.split(';').next().unwrap_or("");
        let n = usize::from_str_radix(size, 16).map_err(|_| format!("chunk size {size:?}"))?;
        if n == 0 {
            loop {
                let mut t = String::new();
                match c.reader.read_line(&mut t).await {
                    Ok(0) | Err(_) => return Err(None),
                    Ok(_) if t == "\r\n" => return Ok(body),
                    Ok(_) if !t.ends_with("\r\n") => return Err(Some(format!("trailer {t:?}"))),
                    Ok(_) => {}
                }
            }
        }
        let data = c.read_exact(n + 2).await.map_err(|_| None)?;
        if !data.ends_with(b"\r\n") {
            return Err(Some("chunk without CRLF".into()));
        }
        body.extend_from_slice(&data[..n]);
    }
}
