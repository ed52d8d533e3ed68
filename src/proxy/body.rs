//! Body types on both sides of the proxy. Bodies are streamed frame by frame,
//! never collected; enums instead of boxes keep the request path free of
//! allocations.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

pub use crate::upstream::body::{BodyError, ClientBody, RequestBody};
use crate::upstream::endpoint::InFlight;
use crate::upstream::pool::Lease;

/// What is sent to the client: the upstream's body, or a short local one.
#[derive(Debug)]
pub enum ResponseBody {
    /// Counts as in flight (endpoint and gauge) until fully sent or dropped;
    /// the connection goes back to its pool once the body has ended.
    Upstream {
        body: Incoming,
        lease: Option<Lease>,
        _in_flight: InFlight,
        _gauge: GaugeGuard,
        /// A gRPC response whose `grpc-status` comes in the trailers.
        grpc: Option<Box<super::grpc::Watch>>,
    },
    Local(Option<Bytes>),
    /// Either of the above, with its access log line (only with
    /// `[access_log]`), written when the body ends or is dropped.
    Logged(Box<Logged>),
    /// The upstream's body, copied (up to a limit) for a shadow comparison
    /// as it streams to the client (`crate::shadow`).
    Teed(Box<Teed>),
}

#[derive(Debug)]
pub struct Teed {
    body: ResponseBody,
    tee: crate::upstream::tee::Tee,
}

#[derive(Debug)]
pub struct Logged {
    body: ResponseBody,
    entry: crate::access_log::Entry,
}

impl ResponseBody {
    pub fn local(text: &'static str) -> ResponseBody {
        ResponseBody::Local(Some(Bytes::from_static(text.as_bytes())))
    }

    pub fn empty() -> ResponseBody {
        ResponseBody::Local(None)
    }

    /// This body, with `entry` written out when it ends.
    /// This body, copied into `tee` as it streams (if there is one).
    pub fn teed(self, tee: Option<crate::upstream::tee::Tee>) -> ResponseBody {
        match tee {
            Some(tee) => ResponseBody::Teed(Box::new(Teed { body: self, tee })),
            None => self,
        }
    }

    pub fn logged(self, entry: Option<crate::access_log::Entry>) -> ResponseBody {
        match entry {
            Some(entry) => ResponseBody::Logged(Box::new(Logged { body: self, entry })),
            None => self,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ResponseBody::Upstream {
                body, lease, grpc, ..
            } => {
                let frame = Pin::new(&mut *body).poll_frame(cx);
                if let Some(w) = grpc {
                    match &frame {
                        Poll::Ready(Some(Ok(f))) => w.frame(f),
                        Poll::Ready(Some(Err(_))) => w.error(),
                        Poll::Ready(None) => w.end(),
                        Poll::Pending => {}
                    }
                }
                match &frame {
                    Poll::Ready(None) => lease.take().map(Lease::release),
                    Poll::Ready(Some(Ok(_))) if body.is_end_stream() => {
                        lease.take().map(Lease::release)
                    }
                    Poll::Ready(Some(Err(_))) => lease.take().map(drop),
                    _ => None,
                };
                frame
            }
            ResponseBody::Local(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Logged(l) => {
                let frame = Pin::new(&mut l.body).poll_frame(cx);
                match &frame {
                    Poll::Ready(Some(Ok(f))) => {
                        if let Some(data) = f.data_ref() {
                            l.entry.sent(data.len());
                        }
                        if l.body.is_end_stream() {
                            l.entry.ended();
                        }
                    }
                    Poll::Ready(None) => l.entry.ended(),
                    Poll::Ready(Some(Err(_))) => l.entry.failed("upstream_body"),
                    Poll::Pending => {}
                }
                frame
            }
            ResponseBody::Teed(t) => {
                let frame = Pin::new(&mut t.body).poll_frame(cx);
                match &frame {
                    Poll::Ready(Some(Ok(f))) => {
                        if let Some(data) = f.data_ref() {
                            t.tee.data(data);
                        }
                        if t.body.is_end_stream() {
                            t.tee.end();
                        }
                    }
                    Poll::Ready(None) => t.tee.end(),
                    Poll::Ready(Some(Err(_))) => t.tee.abandon(),
                    Poll::Pending => {}
                }
                frame
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Upstream { body, .. } => body.is_end_stream(),
            ResponseBody::Local(b) => b.is_none(),
            ResponseBody::Logged(l) => l.body.is_end_stream(),
            ResponseBody::Teed(t) => t.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Upstream { body, .. } => body.size_hint(),
            ResponseBody::Local(b) => {
                SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64))
            }
            ResponseBody::Logged(l) => l.body.size_hint(),
            ResponseBody::Teed(t) => t.body.size_hint(),
        }
    }
}

impl Drop for Logged {
    /// A body the server never polled because it was empty has ended, not
    /// been cut short.
    fn drop(&mut self) {
        if self.body.is_end_stream() {
            self.entry.ended();
        }
    }
}

impl Drop for Teed {
    /// An empty body the server never polled has ended too.
    fn drop(&mut self) {
        if self.body.is_end_stream() {
            self.tee.end();
        }
    }
}

impl Drop for ResponseBody {
    /// The server may stop polling once `is_end_stream` says so: the
    /// connection is released here then. A body dropped before its end (the
    /// client went away) takes its connection with it.
    fn drop(&mut self) {
        if let ResponseBody::Upstream {
            body, lease, grpc, ..
        } = self
            && body.is_end_stream()
        {
            if let Some(lease) = lease.take() {
                lease.release();
            }
            // Ended without trailers; else the watch's drop counts the
            // call as cancelled by the client.
            if let Some(w) = grpc {
                w.end();
            }
        }
    }
}

/// Holds `cutover_requests_in_flight` of a (route, backend) up by one
/// while alive.
pub type GaugeGuard = crate::metrics::InFlightGuard;
