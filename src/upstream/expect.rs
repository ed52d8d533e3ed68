//! `Expect: 100-continue` (RFC 9110 §10.1.1) across the proxy: the
//! expectation goes to the backend, and the client's body is held until the
//! backend asks for it with `100 Continue`. Only then is the client's body
//! polled, which is when hyper sends the client its own `100 Continue`; a
//! backend that answers with a final status first (`417`, `401`, ...) never
//! gets the body, the client is never asked to upload it, and the upstream
//! connection is not reused (its request was cut short).
//!
//! A backend that ignores the expectation (an HTTP/1.0 server, or one that
//! just waits for the body) gets it after [`WAIT`] without an answer, as
//! curl does.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

/// How long the body is held when the backend says nothing.
pub const WAIT: Duration = Duration::from_secs(1);

const WAITING: u8 = 0;
const OPEN: u8 = 1;
const CLOSED: u8 = 2;
const DONE: u8 = 3;

/// Whether the client asked `Expect: 100-continue`.
pub fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Shared by the held body (inside hyper's client connection) and the
/// request path.
#[derive(Debug, Default)]
pub struct Gate {
    state: AtomicU8,
    waker: Mutex<Option<Waker>>,
}

impl Gate {
    fn set(&self, from: u8, to: u8) {
        if self
            .state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            && let Some(w) = self.waker.lock().unwrap_or_else(|p| p.into_inner()).take()
        {
            w.wake();
        }
    }

    /// A response head arrived. Returns whether the connection may be
    /// reused: only if the whole body was sent. A body still held is
    /// never sent.
    pub fn on_response(&self) -> bool {
        self.set(WAITING, CLOSED);
        self.state.load(Ordering::Acquire) == DONE
    }
}

/// The client's body, held until the gate opens.
#[derive(Debug)]
pub struct Held {
    body: super::body::ClientBody,
    gate: Arc<Gate>,
    /// Started at the first poll: hyper polls the body once the head is out.
    wait: Option<Pin<Box<Sleep>>>,
}

/// Holds `req`'s body and has the backend's `100 Continue` open it.
pub fn hold(
    req: &mut Request<super::body::RequestBody>,
    body: super::body::ClientBody,
) -> Arc<Gate> {
    let gate = Arc::new(Gate::default());
    let g = gate.clone();
    hyper::ext::on_informational(req, move |resp| {
        if resp.status() == StatusCode::CONTINUE {
            g.set(WAITING, OPEN);
        }
    });
    *req.body_mut() = super::body::RequestBody::Expecting(Box::new(Held {
        body,
        gate: gate.clone(),
        wait: None,
    }));
    gate
}

impl Held {
    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, super::body::BodyError>>> {
        loop {
            match self.gate.state.load(Ordering::Acquire) {
                OPEN => {
                    let frame = Pin::new(&mut self.body).poll_frame(cx);
                    if matches!(frame, Poll::Ready(None))
                        || (matches!(frame, Poll::Ready(Some(Ok(_)))) && self.body.is_end_stream())
                    {
                        self.gate.set(OPEN, DONE);
                    }
                    return frame;
                }
                // Cut short: hyper's client sees a body that ended early and
                // does not reuse the connection.
                CLOSED => return Poll::Ready(None),
                DONE => return Poll::Ready(None),
                _ => {}
            }
            *self.gate.waker.lock().unwrap_or_else(|p| p.into_inner()) = Some(cx.waker().clone());
            if self.gate.state.load(Ordering::Acquire) != WAITING {
                continue;
            }
            let wait = self
                .wait
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(WAIT)));
            if wait.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.gate.set(WAITING, OPEN);
        }
    }

    pub fn is_end_stream(&self) -> bool {
        matches!(self.gate.state.load(Ordering::Acquire), CLOSED | DONE)
    }

    pub fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
