//! A client connection's IO, wrapped to see what the connection is doing,
//! and the one ticker per connection that enforces its deadlines:
//! - the first request head must arrive within `timeouts.header_read` of
//!   the accept, and any later head within `header_read` of its first byte
//!   (slowloris; nginx's `client_header_timeout`);
//! - a keep-alive connection with nothing in progress closes after
//!   `timeouts.idle`;
//! - a response body that moves no bytes for `timeouts.body_idle` (a client
//!   that stopped reading, an HTTP/2 stream at a zero window, an upstream
//!   that stopped sending) closes the connection, which releases its
//!   upstream connection;
//! - a graceful close (GOAWAY and PING on HTTP/2) with nothing in progress
//!   that the client does not finish within `timeouts.graceful_close` is
//!   closed hard.
//!
//! It also carries what `server::serve` needs to serve a plain HTTP/1
//! connection in rounds: request numbers, the request whose response may end
//! a round, a write side kept open when hyper ends one, and bytes put back
//! in front of the stream.
//!
//! hyper has a header-read timer of its own, but it arms it while waiting
//! for the next request too (so idle keep-alive connections closed after
//! `header_read`) and boxes a new timer per request; this one is a few
//! atomics per request and one ticker per connection.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::upstream::endpoint::now_ms;

/// What a connection's first bytes are when it speaks HTTP/2 (with TLS and
/// ALPN h2, or h2c with prior knowledge): RFC 9113 §3.4.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Response bodies are counted in a ring of buckets by the epoch (an eighth
/// of `body_idle`) in which they last moved; a bucket 9 to 15 epochs old
/// that is not empty holds a body that made no progress for `body_idle`.
const EPOCHS: usize = 16;
const STALLED_AGE: u32 = 9;

/// The deadlines [`Activity::watch`] enforces.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub idle: Duration,
    pub header_read: Duration,
    pub body_idle: Duration,
    pub graceful_close: Duration,
}

/// What one connection has been doing, shared with its request handlers.
#[derive(Debug)]
pub struct Activity {
    /// Bumped on every read or write that moved bytes.
    io_events: AtomicU64,
    /// Requests being handled or answered (until their response body has
    /// been sent) on this connection.
    busy: AtomicU32,
    /// `now_ms()` when a request head began: the accept for the first one,
    /// the first byte for later ones. 0 when none is pending.
    head_since: AtomicU64,
    /// HTTP/2: requests are multiplexed frames, there is no head to time.
    multiplexed: AtomicBool,
    /// A graceful close has begun (idle, or shutdown).
    closing: AtomicBool,
    /// `now_ms()` at accept: body epochs count from here.
    born: u64,
    /// The current body epoch, advanced by the watch.
    epoch: AtomicU32,
    /// Response bodies in flight, by the epoch they last moved in.
    streaming: [AtomicU32; EPOCHS],
    /// Requests begun on this connection (numbered from 1).
    requests: AtomicU64,
    /// The number of the request whose response may end the current
    /// HTTP/1 round (see `server::serve`); 0 for none.
    last_of_round: AtomicU64,
    /// Ending a round: the IO ignores hyper's shutdown, so the socket stays
    /// open for the next round.
    keep_open: AtomicBool,
    /// No bytes moved and nothing was in progress during the watch's last
    /// tick.
    quiet: AtomicBool,
}

/// Why [`Activity::watch`] gave up on a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Expired {
    /// No bytes moved and no request was in progress for `timeouts.idle`:
    /// close gracefully.
    Idle,
    /// A request head took longer than `timeouts.header_read`.
    Head,
    /// A response body made no progress for `timeouts.body_idle`.
    Stalled,
    /// A graceful close was not finished within `timeouts.graceful_close`.
    Grace,
}

impl Activity {
    /// A connection just accepted: its first request head is due within
    /// `header_read` from now.
    pub fn accepted() -> Activity {
        let now = now_ms();
        Activity {
            born: now,
            io_events: AtomicU64::new(0),
            busy: AtomicU32::new(0),
            head_since: AtomicU64::new(now),
            multiplexed: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            epoch: AtomicU32::new(0),
            streaming: Default::default(),
            requests: AtomicU64::new(0),
            last_of_round: AtomicU64::new(0),
            keep_open: AtomicBool::new(false),
            quiet: AtomicBool::new(false),
        }
    }

    /// Marks a request as being handled until the guard drops; its head
    /// is complete.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(0, Ordering::Relaxed);
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        Busy(self.clone(), n)
    }

    /// The number of the latest request, if its response has begun and may
    /// end the round (see [`Busy::may_end_round`]) and the connection was
    /// quiet for a whole tick of the watch since; clears that mark. A busy
    /// connection thus keeps its hyper connection from request to request,
    /// and one that went idle gives it up within two ticks.
    pub fn take_end_of_round(&self) -> Option<u64> {
        if !self.quiet.load(Ordering::Relaxed) {
            return None;
        }
        let n = self.last_of_round.swap(0, Ordering::Relaxed);
        (n != 0 && n == self.requests.load(Ordering::Relaxed)).then_some(n)
    }

    /// Requests begun on this connection.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// While set, the IO does not shut down its write side when hyper asks.
    pub fn keep_open(&self, on: bool) {
        self.keep_open.store(on, Ordering::Relaxed);
    }

    /// The connection is being closed gracefully: from now on, with nothing
    /// in progress, it has `graceful_close` left.
    pub fn start_closing(&self) {
        self.closing.store(true, Ordering::Relaxed);
    }

    pub fn closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }

    /// The connection speaks HTTP/2 (its preface was read).
    pub fn multiplexed(&self) -> bool {
        self.multiplexed.load(Ordering::Relaxed)
    }

    /// Resolves when the connection should be closed (after `Idle`, start
    /// a graceful close and watch again). Checked every quarter
    /// of the shortest deadline (an eighth of `body_idle`), so each may run
    /// up to a quarter over (`body_idle` up to a quarter and an eighth).
    pub async fn watch(&self, d: Deadlines) -> Expired {
        let quarter = |t: Duration| t / 4;
        let epoch_len = (d.body_idle / 8).max(Duration::from_millis(1));
        let tick = quarter(d.idle)
            .min(quarter(d.header_read))
            .min(quarter(d.graceful_close))
            .min(epoch_len)
            .max(Duration::from_millis(5));
        let ms = |t: Duration| t.as_millis() as u64;
        let (idle, header_read, grace, epoch_ms) = (
            ms(d.idle),
            ms(d.header_read),
            ms(d.graceful_close),
            ms(epoch_len).max(1),
        );
        let mut seen = self.io_events.load(Ordering::Relaxed);
        let mut moved = now_ms();
        let mut quiet_since = 0;
        loop {
            tokio::time::sleep(tick).await;
            let now = now_ms();
            let head = self.head_since.load(Ordering::Relaxed);
            if head != 0
                && now.saturating_sub(head) >= header_read
                && !self.multiplexed.load(Ordering::Relaxed)
            {
                return Expired::Head;
            }
            let epoch = (now.saturating_sub(self.born) / epoch_ms) as u32;
            if epoch != self.epoch.load(Ordering::Relaxed) {
                self.epoch.store(epoch, Ordering::Relaxed);
            }
            if (STALLED_AGE..EPOCHS as u32).any(|age| {
                epoch >= age
                    && self.streaming[(epoch - age) as usize % EPOCHS].load(Ordering::Relaxed) != 0
            }) {
                return Expired::Stalled;
            }
            let busy = self.busy.load(Ordering::Relaxed) != 0;
            if self.closing.load(Ordering::Relaxed) {
                if busy {
                    quiet_since = 0;
                } else if quiet_since == 0 {
                    quiet_since = now;
                } else if now - quiet_since >= grace {
                    return Expired::Grace;
                }
                continue;
            }
            let events = self.io_events.load(Ordering::Relaxed);
            self.quiet.store(events == seen && !busy, Ordering::Relaxed);
            if events != seen || busy {
                (seen, moved) = (events, now);
            } else if now.saturating_sub(moved) >= idle {
                return Expired::Idle;
            }
        }
    }

    /// Resolves once no bytes moved for `limit` (checked every quarter of
    /// it): a silent tunnel.
    pub async fn silent_for(&self, limit: Duration) {
        let tick = (limit / 4).max(Duration::from_millis(5));
        let limit = limit.as_millis() as u64;
        let mut seen = self.io_events.load(Ordering::Relaxed);
        let mut moved = now_ms();
        loop {
            tokio::time::sleep(tick).await;
            let (now, events) = (now_ms(), self.io_events.load(Ordering::Relaxed));
            if events != seen {
                (seen, moved) = (events, now);
            } else if now - moved >= limit {
                return;
            }
        }
    }

    /// Bytes arrived. With no request in progress they begin a head.
    fn read(&self) {
        if self.busy.load(Ordering::Relaxed) == 0 && self.head_since.load(Ordering::Relaxed) == 0 {
            self.head_since.store(now_ms(), Ordering::Relaxed);
        }
    }

    fn touch(&self) {
        self.io_events.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a response body as streaming in the current epoch.
    fn stream_start(&self) -> u32 {
        let epoch = self.epoch.load(Ordering::Relaxed);
        self.streaming[epoch as usize % EPOCHS].fetch_add(1, Ordering::Relaxed);
        epoch
    }

    /// A response body moved: counts it in the current epoch.
    fn stream_moved(&self, mine: &mut u32) {
        let epoch = self.epoch.load(Ordering::Relaxed);
        if epoch != *mine {
            self.streaming[epoch as usize % EPOCHS].fetch_add(1, Ordering::Relaxed);
            self.streaming[*mine as usize % EPOCHS].fetch_sub(1, Ordering::Relaxed);
            *mine = epoch;
        }
    }

    fn stream_end(&self, mine: u32) {
        self.streaming[mine as usize % EPOCHS].fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request in progress on a connection, and its number.
#[derive(Debug)]
pub struct Busy(Arc<Activity>, u64);

impl Busy {
    /// This request had no body and its response head keeps the connection
    /// alive: once the response is sent, the HTTP/1 connection can be taken
    /// apart and wait for the next request holding no buffers.
    pub fn may_end_round(&self) {
        self.0.last_of_round.store(self.1, Ordering::Relaxed);
    }

    /// The connection is being closed (idle, or draining): this request's
    /// response is its last.
    pub fn closing(&self) -> bool {
        self.0.closing()
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// A response body that keeps its request counted as in progress until it
/// has been sent (or dropped), so neither the idle nor the head deadline
/// fires while it streams, and that reports its progress for `body_idle`.
pub struct Tracked<B> {
    body: B,
    epoch: u32,
    busy: Busy,
}

impl<B> Tracked<B> {
    pub fn new(body: B, busy: Busy) -> Tracked<B> {
        let epoch = busy.0.stream_start();
        Tracked { body, epoch, busy }
    }
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        self.busy.0.stream_end(self.epoch);
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if frame.is_ready() {
            this.busy.0.stream_moved(&mut this.epoch);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// An IO stream that reports reads and writes to an [`Activity`].
pub struct ActivityIo<T> {
    inner: T,
    activity: Arc<Activity>,
    /// How many bytes of the HTTP/2 preface have been read so far; `None`
    /// once the protocol is decided (the whole preface, or a byte that
    /// differs): a client trickling `P`, `O`, ... is HTTP/1.
    preface: Option<u8>,
    /// Bytes read by a previous HTTP/1 round but not parsed (pipelined):
    /// read again before the stream.
    unread: Bytes,
}

impl<T> ActivityIo<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        ActivityIo {
            inner,
            activity,
            preface: Some(0),
            unread: Bytes::new(),
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Puts bytes back in front of the stream. They are copied: `bytes` is
    /// usually a view of hyper's whole 8 KiB read buffer, which an idle
    /// connection should not keep.
    pub fn unread(&mut self, bytes: Bytes) {
        self.unread = Bytes::copy_from_slice(&bytes);
    }

    /// Whether bytes put back with [`ActivityIo::unread`] remain.
    pub fn has_unread(&self) -> bool {
        !self.unread.is_empty()
    }
}

/// Whether a connection's first bytes (at least one) are HTTP/1: they
/// differ from the HTTP/2 preface. `false` while they could still be it.
pub fn speaks_http1(first: &[u8]) -> bool {
    !first.is_empty() && sniff(0, first) == (None, false)
}

/// The next state of the preface match after `new` bytes: `Some(n)` still
/// undecided with `n` bytes matched, `None` decided; `true` when HTTP/2.
fn sniff(matched: u8, new: &[u8]) -> (Option<u8>, bool) {
    let rest = &H2_PREFACE[matched as usize..];
    let n = new.len().min(rest.len());
    if new[..n] != rest[..n] {
        (None, false)
    } else if n == rest.len() {
        (None, true)
    } else {
        (Some(matched + n as u8), false)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ActivityIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.unread.is_empty() {
            let n = this.unread.len().min(buf.remaining());
            buf.put_slice(&this.unread.split_to(n));
            this.activity.read();
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if res.is_ready() {
            this.activity.touch();
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                if let Some(matched) = this.preface {
                    let (next, h2) = sniff(matched, new);
                    this.preface = next;
                    if h2 {
                        this.activity.multiplexed.store(true, Ordering::Relaxed);
                    }
                }
                this.activity.read();
            }
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ActivityIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_write(cx, buf);
        if res.is_ready() {
            this.activity.touch();
        }
        res
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if res.is_ready() {
            this.activity.touch();
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.activity.keep_open.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preface_decides_only_on_enough_bytes() {
        // One byte at a time: undecided until all 24 match.
        let mut m = Some(0);
        for (i, b) in H2_PREFACE.iter().enumerate() {
            let (next, h2) = sniff(m.unwrap(), std::slice::from_ref(b));
            assert_eq!(h2, i == H2_PREFACE.len() - 1);
            m = next;
        }
        assert_eq!(m, None);
        // `P`, then `O`: HTTP/1 at the first byte that differs.
        assert_eq!(sniff(0, b"P"), (Some(1), false));
        assert_eq!(sniff(1, b"OST / HTTP/1.1"), (None, false));
        // All at once, with more after it.
        assert_eq!(
            sniff(0, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0"),
            (None, true)
        );
        assert_eq!(sniff(0, b"GET / HTTP/1.1\r\n"), (None, false));
    }
}
