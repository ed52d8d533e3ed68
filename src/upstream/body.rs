//! The body of a request sent upstream. It lives here, below `proxy`, so
//! that `upstream` (pools, health checks) depends on nothing above it;
//! `proxy::body` re-exports it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::endpoint::now_ms;

/// What is sent upstream: the client's body as it arrives, a small body
/// buffered so that a retry can send it again, or nothing.
#[derive(Debug)]
pub enum RequestBody {
    /// Boxed: a request moves several times on its way to the upstream
    /// connection (hyper's dispatch channel, and back on failure), and
    /// most requests have no body.
    Streaming(Box<ClientBody>),
    /// The client's body, held until the backend answers `100 Continue`.
    Expecting(Box<super::expect::Held>),
    Buffered(Option<Bytes>),
    /// The client's body, kept as it is sent so that it can be sent again
    /// (`replay.rs`).
    Replayable(Box<super::replay::Recording>),
    Empty,
}

/// HTTP/1.1 framing for a GET or HEAD whose body has no known length (a
/// client's chunked body, or an HTTP/2 one without `content-length`):
/// `Transfer-Encoding: chunked`, stated. hyper's client sends such a
/// request without its body unless told (it assumes those methods have
/// none), and the body would be lost. Other methods it chunks itself; a
/// known length goes as `Content-Length`.
pub fn chunk_unknown_length(req: &mut http::Request<RequestBody>) {
    if matches!(*req.method(), http::Method::GET | http::Method::HEAD)
        && req.body().size_hint().exact().is_none()
    {
        req.headers_mut().insert(
            http::header::TRANSFER_ENCODING,
            http::HeaderValue::from_static("chunked"),
        );
    }
}

/// Why a client's request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("reading the client's body: {0}")]
    Client(#[source] hyper::Error),
    /// No byte of it arrived for `timeouts.body_idle` while one was wanted.
    #[error("the client sent no body bytes for {0:?}")]
    Stalled(Duration),
}

impl BodyError {
    /// Whether `e` or one of its sources is [`BodyError::Stalled`].
    pub fn is_stalled(mut e: &(dyn std::error::Error + 'static)) -> bool {
        loop {
            if let Some(BodyError::Stalled(_)) = e.downcast_ref::<BodyError>() {
                return true;
            }
            match e.source() {
                Some(s) => e = s,
                None => return false,
            }
        }
    }
}

/// The client's request body, with a no-progress deadline: while the
/// upstream waits for bytes and none arrive for `body_idle`, it fails with
/// [`BodyError::Stalled`] (the client gets 408). The timer is allocated only
/// when the body first has to wait, and reset only when it waits again
/// after progress. `polled` is when the upstream last asked for bytes (0
/// once the body ended or was dropped), so the request timeout does not run
/// while the upstream reads an upload.
#[derive(Debug)]
pub struct ClientBody {
    body: Incoming,
    idle: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    moved: bool,
    polled: Option<Arc<AtomicU64>>,
    /// Bytes read, for the access log (`count_into`).
    counted: Option<Arc<AtomicU64>>,
    /// A copy for a shadow request (`tee_into`).
    tee: Option<super::tee::Tee>,
}

impl ClientBody {
    pub fn new(body: Incoming, idle: Duration) -> ClientBody {
        ClientBody {
            body,
            idle,
            timer: None,
            moved: true,
            polled: None,
            counted: None,
            tee: None,
        }
    }

    /// Copies the body into `tee` as it is read (`shadow`).
    pub fn tee_into(&mut self, tee: super::tee::Tee) {
        self.tee = Some(tee);
    }

    /// Adds the bytes of every data frame read to `counter`.
    pub fn count_into(&mut self, counter: Arc<AtomicU64>) {
        self.counted = Some(counter);
    }

    /// The `now_ms()` at which the upstream last polled this body; 0 once
    /// it ended.
    pub fn polled(&mut self) -> Arc<AtomicU64> {
        let at = Arc::new(AtomicU64::new(now_ms()));
        self.polled = Some(at.clone());
        at
    }

    fn ended(&mut self) {
        if let Some(s) = self.polled.take() {
            s.store(0, Ordering::Relaxed);
        }
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        self.ended();
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let Some(at) = &this.polled {
            at.store(now_ms(), Ordering::Relaxed);
        }
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.moved = true;
                if let (Some(c), Some(Ok(f))) = (&this.counted, &frame)
                    && let Some(data) = f.data_ref()
                {
                    c.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                if let Some(t) = &mut this.tee {
                    match &frame {
                        Some(Ok(f)) => t.data(f.data_ref().map_or(&[][..], |d| &d[..])),
                        Some(Err(_)) => t.abandon(),
                        None => {}
                    }
                }
                if frame.is_none() || this.body.is_end_stream() {
                    this.ended();
                    if let Some(t) = &mut this.tee {
                        t.end();
                    }
                }
                Poll::Ready(frame.map(|f| f.map_err(BodyError::Client)))
            }
            Poll::Pending => {
                let idle = this.idle;
                let deadline = tokio::time::Instant::now() + idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if std::mem::take(&mut this.moved) {
                    timer.as_mut().reset(deadline);
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.ended();
                        Poll::Ready(Some(Err(BodyError::Stalled(idle))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            RequestBody::Streaming(b) => Pin::new(&mut **b).poll_frame(cx),
            RequestBody::Expecting(h) => h.poll_frame(cx),
            RequestBody::Buffered(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RequestBody::Replayable(r) => Pin::new(&mut **r).poll_frame(cx),
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Streaming(b) => b.is_end_stream(),
            RequestBody::Expecting(h) => h.is_end_stream(),
            RequestBody::Buffered(b) => b.is_none(),
            RequestBody::Replayable(r) => r.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Streaming(b) => b.size_hint(),
            RequestBody::Expecting(h) => h.size_hint(),
            RequestBody::Buffered(b) => {
                SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64))
            }
            RequestBody::Replayable(r) => r.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}
