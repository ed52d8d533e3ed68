//! The body of a request sent upstream. It lives here, below `proxy`, so
//! that `upstream` (pools, health checks) depends on nothing above it;
//! `proxy::body` re-exports it.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// What is sent upstream: the client's body as it arrives, a small body
/// buffered so that a retry can send it again, or nothing.
#[derive(Debug)]
pub enum RequestBody {
    Streaming(Incoming),
    Buffered(Option<Bytes>),
    Empty,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Streaming(b) => Pin::new(b).poll_frame(cx),
            RequestBody::Buffered(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Streaming(b) => b.is_end_stream(),
            RequestBody::Buffered(b) => b.is_none(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Streaming(b) => b.size_hint(),
            RequestBody::Buffered(b) => {
                SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64))
            }
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}
