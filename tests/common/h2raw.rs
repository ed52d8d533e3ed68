//! HTTP/2 frames written by hand over a plain `TcpStream`, for the attacks
//! no well-behaved client library sends: streams opened and reset at once,
//! endless CONTINUATION frames, floods of SETTINGS and PING. A frame is a
//! 9-byte header (24-bit length, type, flags, 31-bit stream id) and its
//! payload (RFC 9113 §4.1); header blocks use only HPACK literals without
//! indexing (RFC 7541 §6.2.2), so no encoder state is needed.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const ACK: u8 = 0x1;

/// `SETTINGS_INITIAL_WINDOW_SIZE` (RFC 9113 §6.5.2).
pub const INITIAL_WINDOW_SIZE: u16 = 0x4;

/// One frame: header and payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A SETTINGS frame with the given (identifier, value) pairs.
pub fn settings(values: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::new();
    for (id, v) in values {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&v.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &p)
}

pub fn settings_ack() -> Vec<u8> {
    frame(SETTINGS, ACK, 0, &[])
}

pub fn ping(data: [u8; 8]) -> Vec<u8> {
    frame(PING, 0, 0, &data)
}

pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

pub fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

/// One header field as an HPACK literal without indexing, new name
/// (RFC 7541 §6.2.2); names and values under 127 bytes.
pub fn literal(block: &mut Vec<u8>, name: &str, value: &str) {
    assert!(name.len() < 127 && value.len() < 127);
    block.push(0x00);
    block.push(name.len() as u8);
    block.extend_from_slice(name.as_bytes());
    block.push(value.len() as u8);
    block.extend_from_slice(value.as_bytes());
}

/// The header block of `GET path` to `authority`, plain http.
pub fn get_block(authority: &str, path: &str) -> Vec<u8> {
    let mut b = Vec::new();
    literal(&mut b, ":method", "GET");
    literal(&mut b, ":scheme", "http");
    literal(&mut b, ":authority", authority);
    literal(&mut b, ":path", path);
    b
}

/// A HEADERS frame with a whole block (END_HEADERS), ending the stream.
pub fn get(stream: u32, authority: &str, path: &str) -> Vec<u8> {
    frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        stream,
        &get_block(authority, path),
    )
}

/// A frame as read: type, flags, stream, payload.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a GOAWAY or RST_STREAM.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            GOAWAY => 4,
            RST_STREAM => 0,
            _ => return None,
        };
        let b = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// A raw HTTP/2 client connection, its halves apart so a test can write
/// an attack while a task reads what the proxy answers.
pub struct H2Raw {
    pub reader: H2Reader,
    pub writer: OwnedWriteHalf,
}

impl H2Raw {
    /// Connects and sends the preface and a SETTINGS frame with `extra`.
    pub async fn connect(addr: SocketAddr, extra: &[(u16, u32)]) -> H2Raw {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        let (r, w) = stream.into_split();
        let mut c = H2Raw {
            reader: H2Reader { half: r },
            writer: w,
        };
        let mut hello = PREFACE.to_vec();
        hello.extend(settings(extra));
        c.send(&hello).await.expect("preface");
        c
    }

    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes).await
    }

    /// Writes `bytes`, or gives up after `within` (a peer that stopped
    /// reading): `Ok(false)` then.
    pub async fn send_within(&mut self, bytes: &[u8], within: Duration) -> std::io::Result<bool> {
        match tokio::time::timeout(within, self.writer.write_all(bytes)).await {
            Ok(r) => r.map(|()| true),
            Err(_) => Ok(false),
        }
    }

    pub async fn read_frame(&mut self, within: Duration) -> Option<Frame> {
        self.reader.read_frame(within).await
    }
}

/// The reading half of an [`H2Raw`].
pub struct H2Reader {
    half: OwnedReadHalf,
}

impl H2Reader {
    /// The next frame; `None` on close, reset or `within` passing.
    pub async fn read_frame(&mut self, within: Duration) -> Option<Frame> {
        let read = async {
            let mut head = [0u8; 9];
            self.half.read_exact(&mut head).await.ok()?;
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0; len];
            self.half.read_exact(&mut payload).await.ok()?;
            Some(Frame {
                kind: head[3],
                flags: head[4],
                stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
                payload,
            })
        };
        tokio::time::timeout(within, read).await.ok().flatten()
    }

    /// Reads frames until a GOAWAY (returned), the connection ends
    /// (`Ended::Closed`) or `within` passes (`Ended::Open`).
    pub async fn until_goaway(&mut self, within: Duration) -> Ended {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ended::Open;
            }
            match self.read_frame(left).await {
                Some(f) if f.kind == GOAWAY => return Ended::GoAway(f.error_code().unwrap_or(0)),
                Some(_) => {}
                None if tokio::time::Instant::now() >= deadline => return Ended::Open,
                None => return Ended::Closed,
            }
        }
    }

    /// Reads until the peer closes the TCP connection (`true`) or `within`
    /// passes (`false`), discarding what arrives.
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        let mut buf = [0u8; 16 * 1024];
        loop {
            match tokio::time::timeout_at(deadline, self.half.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
    }
}

/// How an attacked HTTP/2 connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The proxy sent GOAWAY with this error code (RFC 9113 §7).
    GoAway(u32),
    /// The connection closed without a GOAWAY.
    Closed,
    /// Still open.
    Open,
}

/// `ENHANCE_YOUR_CALM` (RFC 9113 §7).
pub const ENHANCE_YOUR_CALM: u32 = 0xb;
pub const CANCEL: u32 = 0x8;

/// How a field of an HPACK header block is represented (RFC 7541 §6),
/// from the pattern of its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repr {
    Indexed,
    /// Literal with incremental indexing: added to the dynamic table.
    Incremental,
    WithoutIndexing,
    /// Literal never indexed (§6.2.3), as for a sensitive value.
    NeverIndexed,
    SizeUpdate,
}

/// The representation of each field of `block`, in order. Names and values
/// are stepped over, not decoded (they may be Huffman-coded).
pub fn representations(block: &[u8]) -> Vec<Repr> {
    let mut at = 0;
    let mut out = Vec::new();
    while at < block.len() {
        let (repr, prefix) = match block[at] {
            0x80..=0xff => (Repr::Indexed, 7),
            0x40..=0x7f => (Repr::Incremental, 6),
            0x20..=0x3f => (Repr::SizeUpdate, 5),
            0x10..=0x1f => (Repr::NeverIndexed, 4),
            _ => (Repr::WithoutIndexing, 4),
        };
        let name = hpack_int(block, &mut at, prefix);
        if !matches!(repr, Repr::Indexed | Repr::SizeUpdate) {
            if name == 0 {
                at += hpack_int(block, &mut at, 7);
            }
            at += hpack_int(block, &mut at, 7);
        }
        out.push(repr);
    }
    out
}

/// An HPACK integer with a `prefix`-bit prefix (RFC 7541 §5.1) at `at`,
/// which it moves past.
fn hpack_int(block: &[u8], at: &mut usize, prefix: u32) -> usize {
    let max = (1usize << prefix) - 1;
    let mut n = usize::from(block[*at]) & max;
    *at += 1;
    if n == max {
        let mut shift = 0;
        loop {
            let b = block[*at];
            *at += 1;
            n += usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
    }
    n
}
