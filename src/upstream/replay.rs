//! A request body that can be sent again: what it sends is kept (up to
//! `retry_buffer_bytes`), and when the attempt is given up, the body hands
//! back what it sent and the rest of the client's body it did not read
//! ([`Rewound`]). Only as much as was sent is held, so streaming calls
//! (gRPC bidi) still stream; past the limit nothing is kept and the body
//! cannot be replayed.
//!
//! Used where a request may have to go out again though hyper no longer
//! has it: an HTTP/2 stream the backend never processed (REFUSED_STREAM,
//! above a GOAWAY's last-stream-id, RFC 9113 §8.7), and a gRPC call
//! answered UNAVAILABLE before any response byte.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;

use super::body::{BodyError, ClientBody};

/// What an attempt's body gives back when it is dropped.
#[derive(Debug)]
pub struct Rewound {
    sent: Vec<Bytes>,
    rest: Option<ClientBody>,
    limit: usize,
}

impl Rewound {
    /// The body for the next attempt: what was sent, then the rest, kept
    /// again; and where it comes back.
    pub fn replay(self) -> (Recording, oneshot::Receiver<Rewound>) {
        let size = self.sent.iter().map(Bytes::len).sum();
        Recording::with(self.sent, size, self.rest, self.limit)
    }

    /// The client's body all sent: nothing left to wait for.
    pub fn complete(&self) -> bool {
        self.rest.is_none()
    }
}

/// The body of one attempt.
#[derive(Debug)]
pub struct Recording {
    /// Data sent on this and earlier attempts, in order.
    sent: Vec<Bytes>,
    /// How many of `sent` this attempt has sent again.
    pos: usize,
    size: usize,
    limit: usize,
    /// The client's body not read yet; `None` once it ended.
    rest: Option<ClientBody>,
    /// Gone past `limit`, or trailers: cannot be replayed.
    lost: bool,
    back: Option<oneshot::Sender<Rewound>>,
}

impl Recording {
    /// Keeps up to `limit` bytes of `body` as it is sent.
    pub fn new(body: ClientBody, limit: usize) -> (Recording, oneshot::Receiver<Rewound>) {
        let rest = (!body.is_end_stream()).then_some(body);
        Recording::with(Vec::new(), 0, rest, limit)
    }

    fn with(
        sent: Vec<Bytes>,
        size: usize,
        rest: Option<ClientBody>,
        limit: usize,
    ) -> (Recording, oneshot::Receiver<Rewound>) {
        let (tx, rx) = oneshot::channel();
        let body = Recording {
            sent,
            pos: 0,
            size,
            limit,
            rest,
            lost: false,
            back: Some(tx),
        };
        (body, rx)
    }

    /// Whether keeping is still wanted: nobody waits for the body back
    /// once the attempt's answer was taken.
    fn keeping(&self) -> bool {
        !self.lost && self.back.as_ref().is_some_and(|b| !b.is_closed())
    }

    fn lose(&mut self) {
        self.lost = true;
        self.sent = Vec::new();
        self.pos = 0;
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        if let Some(back) = self.back.take()
            && !self.lost
        {
            let _ = back.send(Rewound {
                sent: std::mem::take(&mut self.sent),
                rest: self.rest.take(),
                limit: self.limit,
            });
        }
    }
}

impl Body for Recording {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let Some(chunk) = this.sent.get(this.pos) {
            this.pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
        }
        let Some(rest) = &mut this.rest else {
            return Poll::Ready(None);
        };
        let frame = std::task::ready!(Pin::new(&mut *rest).poll_frame(cx));
        let ended = match &frame {
            None | Some(Err(_)) => true,
            Some(Ok(_)) => rest.is_end_stream(),
        };
        if ended {
            this.rest = None;
        }
        match &frame {
            Some(Ok(f)) => match f.data_ref() {
                Some(data) if this.keeping() => {
                    this.size += data.len();
                    if this.size > this.limit {
                        this.lose();
                    } else {
                        this.sent.push(data.clone());
                        this.pos = this.sent.len();
                    }
                }
                Some(_) => {}
                // Trailers are not kept.
                None => this.lose(),
            },
            Some(Err(_)) => this.lose(),
            None => {}
        }
        if !this.keeping() && !this.lost {
            this.lose();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.pos >= self.sent.len() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let again: usize = self.sent[self.pos.min(self.sent.len())..]
            .iter()
            .map(Bytes::len)
            .sum();
        let rest = self
            .rest
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |r| r.size_hint());
        let mut hint = SizeHint::new();
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + again as u64);
        }
        hint.set_lower(rest.lower() + again as u64);
        hint
    }
}
