//! A client connection's IO, wrapped to see what the connection is doing:
//! close keep-alive connections idle for `timeouts.idle`, and cut off a
//! request head that takes longer than `timeouts.header_read` (slowloris).
//! hyper has a header-read timer of its own, but it arms it while waiting
//! for the next request too (so idle keep-alive connections closed after
//! `header_read`) and boxes a new timer per request; this one is a pair of
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

/// What one connection has been doing, shared with its request handlers.
#[derive(Debug, Default)]
pub struct Activity {
    /// Bumped on every read or write that moved bytes.
    io_events: AtomicU64,
    /// Requests being handled or answered (until their response body has
    /// been sent) on this connection.
    busy: AtomicU32,
    /// `now_ms()` when bytes arrived with no request in progress: a request
    /// head has begun. 0 when none is pending.
    head_since: AtomicU64,
    /// HTTP/2: requests are multiplexed frames, there is no head to time.
    multiplexed: AtomicBool,
}

/// Why [`Activity::watch`] gave up on a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Expired {
    /// No bytes moved and no request was in progress for `timeouts.idle`.
    Idle,
    /// A request head took longer than `timeouts.header_read`.
    Head,
}

impl Activity {
    /// Marks a request as being handled until the guard drops; its head
    /// is complete.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(0, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// Resolves when the connection should be closed: idle for `idle`, or a
    /// request head pending for `header_read`. Checked every quarter of the
    /// shorter one, so either may run up to a quarter over.
    pub async fn watch(&self, idle: Duration, header_read: Duration) -> Expired {
        let tick = idle.min(header_read) / 4;
        let (idle, header_read) = (idle.as_millis() as u64, header_read.as_millis() as u64);
        let mut seen = self.io_events.load(Ordering::Relaxed);
        let mut moved = now_ms();
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
            let events = self.io_events.load(Ordering::Relaxed);
            if events != seen || self.busy.load(Ordering::Relaxed) != 0 {
                (seen, moved) = (events, now);
            } else if now.saturating_sub(moved) >= idle {
                return Expired::Idle;
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
}

/// A request in progress on a connection.
#[derive(Debug)]
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// A response body that keeps its request counted as in progress until it
/// has been sent (or dropped), so neither watch fires while it streams.
pub struct Tracked<B> {
    body: B,
    _busy: Busy,
}

impl<B> Tracked<B> {
    pub fn new(body: B, busy: Busy) -> Tracked<B> {
        Tracked { body, _busy: busy }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
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
    /// Nothing read yet: the first bytes tell HTTP/2 from HTTP/1.
    fresh: bool,
}

impl<T> ActivityIo<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        ActivityIo {
            inner,
            activity,
            fresh: true,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ActivityIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if res.is_ready() {
            this.activity.touch();
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                if std::mem::take(&mut this.fresh) {
                    let n = new.len().min(H2_PREFACE.len());
                    if new[..n] == H2_PREFACE[..n] {
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
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
