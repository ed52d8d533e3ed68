//! Hand-written HTTP/1.1 over a plain `TcpStream`, for requests a normal
//! client would refuse to send (conflicting framing, hop-by-hop headers,
//! oversized heads) and for reading exactly what the proxy put on the wire.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// How long any one read may wait before the helpers give up.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A response as it came off the wire.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// In wire order, names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name` (case-insensitive), in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client connection that writes raw bytes and parses responses.
pub struct RawConn {
    reader: BufReader<TcpStream>,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        RawConn {
            reader: BufReader::new(stream),
        }
    }

    /// Writes `bytes` as they are.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let s = self.reader.get_mut();
        s.write_all(bytes).await?;
        s.flush().await
    }

    /// Reads one response (not to a HEAD request).
    /// `Err` on a timeout, a malformed response or a connection that ends
    /// before a whole response arrived.
    pub async fn read_response(&mut self) -> std::io::Result<RawResponse> {
        tokio::time::timeout(READ_TIMEOUT, self.read_response_inner())
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no response in time"))?
    }

    async fn read_line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }

    async fn read_response_inner(&mut self) -> std::io::Result<RawResponse> {
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
        let status_line = self.read_line().await?;
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        if !version.starts_with("HTTP/1.") {
            return Err(bad(&format!("not a status line: {status_line:?}")));
        }
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("bad status"))?;
        let mut headers = Vec::new();
        loop {
            let line = self.read_line().await?;
            if line.is_empty() {
                break;
            }
            let (k, v) = line
                .split_once(':')
                .ok_or_else(|| bad(&format!("bad header line {line:?}")))?;
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
        let mut resp = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        let no_body = status < 200 || status == 204 || status == 304;
        if no_body {
            return Ok(resp);
        }
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
        if chunked {
            loop {
                let size_line = self.read_line().await?;
                let size =
                    usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| bad(&format!("bad chunk size {size_line:?}")))?;
                if size == 0 {
                    // Trailers, then the empty line.
                    while !self.read_line().await?.is_empty() {}
                    break;
                }
                let start = resp.body.len();
                resp.body.resize(start + size, 0);
                self.reader.read_exact(&mut resp.body[start..]).await?;
                self.read_line().await?;
            }
        } else if let Some(len) = resp.header("content-length") {
            let len: usize = len.parse().map_err(|_| bad("bad content-length"))?;
            resp.body.resize(len, 0);
            self.reader.read_exact(&mut resp.body).await?;
        } else {
            self.reader.read_to_end(&mut resp.body).await?;
        }
        Ok(resp)
    }

    /// Reads exactly `n` bytes, whatever they are.
    pub async fn read_n(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0; n];
        tokio::time::timeout(READ_TIMEOUT, self.reader.read_exact(&mut buf))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        Ok(buf)
    }

    /// Waits until the peer closes the connection (`true`) or sends more
    /// bytes / nothing happens within `within` (`false`). Bytes received are
    /// returned for diagnostics.
    pub async fn closed_within(&mut self, within: Duration) -> (bool, Vec<u8>) {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        match tokio::time::timeout(within, self.reader.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => (true, got),
            Ok(Ok(n)) => {
                got.extend_from_slice(&buf[..n]);
                (false, got)
            }
            Err(_) => (false, got),
        }
    }

    /// Reads whatever arrives until the peer closes, resets, or `within`
    /// passes; never fails.
    pub async fn read_until_close(&mut self, within: Duration) -> Vec<u8> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        let mut buf = [0u8; 8192];
        loop {
            match tokio::time::timeout_at(deadline, self.reader.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return got,
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            }
        }
    }
}

/// One request on a fresh connection, one response back.
pub async fn roundtrip(addr: SocketAddr, request: &[u8]) -> std::io::Result<RawResponse> {
    let mut c = RawConn::connect(addr).await;
    c.send(request).await?;
    c.read_response().await
}

/// A backend that speaks raw bytes: each accepted connection is handed to
/// `script`, which reads what the proxy sent and writes whatever it likes
/// (an HTTP/1.0 answer, a close-delimited body, a 417 without reading the
/// body). Counts connections accepted and open at once.
pub struct RawBackend {
    pub addr: SocketAddr,
    pub accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub max_open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl RawBackend {
    pub async fn start<F, Fut>(script: F) -> RawBackend
    where
        F: Fn(BackendConn) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let max_open = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (a, m) = (accepted.clone(), max_open.clone());
        let script = Arc::new(script);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                let (script, open) = (script.clone(), open.clone());
                tokio::spawn(async move {
                    script(BackendConn {
                        reader: BufReader::new(stream),
                    })
                    .await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        RawBackend {
            addr,
            accepted,
            max_open,
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn max_open(&self) -> usize {
        self.max_open.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The backend's side of one connection from the proxy.
pub struct BackendConn {
    pub reader: BufReader<TcpStream>,
}

impl BackendConn {
    /// Reads one request head (up to the empty line), lines without CRLF;
    /// `None` when the proxy closed the connection first.
    pub async fn read_head(&mut self) -> Option<Vec<String>> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            match tokio::time::timeout(READ_TIMEOUT, self.reader.read_line(&mut line)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(_)) => {}
            }
            let line = line.trim_end_matches(['\r', '\n']).to_owned();
            if line.is_empty() {
                return Some(lines);
            }
            lines.push(line);
        }
    }

    /// Reads exactly `n` body bytes.
    pub async fn read_exact(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0; n];
        tokio::time::timeout(READ_TIMEOUT, self.reader.read_exact(&mut buf))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        Ok(buf)
    }

    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let s = self.reader.get_mut();
        s.write_all(bytes).await?;
        s.flush().await
    }

    /// What arrives until the peer closes or `within` passes.
    pub async fn read_until_close(&mut self, within: Duration) -> Vec<u8> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        let mut buf = [0u8; 8192];
        loop {
            match tokio::time::timeout_at(deadline, self.reader.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return got,
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            }
        }
    }
}

/// `value` of `name: value` in a head from [`BackendConn::read_head`].
pub fn head_field<'h>(head: &'h [String], name: &str) -> Option<&'h str> {
    head.iter().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Replaces the value of every `date:` line, so whole responses can be
/// compared byte for byte.
pub fn mask_date(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .split("\r\n")
        .map(|l| {
            if l.to_ascii_lowercase().starts_with("date:") {
                "date: *"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}
