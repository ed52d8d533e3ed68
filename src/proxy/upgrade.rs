//! Protocol upgrades (WebSocket): once the backend answered 101, bytes are
//! copied both ways until either side closes, or neither sends anything for
//! `timeouts.tunnel_idle` (HAProxy's `timeout tunnel`). The tunnel keeps
//! its client connection's slot of `limits.max_connections` until it ends,
//! and writes the request's access log line then, with bytes both ways.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::io::{Activity, ActivityIo};
use super::server::ConnSlot;
use crate::access_log::Entry;

/// Joins the client's and the upstream's upgraded connections.
pub async fn tunnel(
    client: OnUpgrade,
    upstream: OnUpgrade,
    route: Arc<str>,
    _slot: Arc<ConnSlot>,
    idle: Duration,
    mut entry: Option<Entry>,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(route = %route, error = %e, "upgrade failed");
            if let Some(entry) = &mut entry {
                entry.failed("upgrade_failed");
            }
            return;
        }
    };
    let activity = Arc::new(Activity::accepted());
    let client = ActivityIo::new(TokioIo::new(client), activity.clone());
    let mut client = Counted {
        io: client,
        read: 0,
        written: 0,
    };
    let mut upstream = TokioIo::new(upstream);
    let why = tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match copied {
            Ok((up, down)) => {
                tracing::debug!(route = %route, bytes_up = up, bytes_down = down, "tunnel closed");
                None
            }
            Err(e) => {
                tracing::debug!(route = %route, error = %e, "tunnel ended with an error");
                Some("tunnel_error")
            }
        },
        _ = activity.silent_for(idle) => {
            tracing::debug!(route = %route, timeout = ?idle, "tunnel idle; closing");
            Some("tunnel_idle")
        }
    };
    if let Some(entry) = &mut entry {
        entry.tunnelled(client.read, client.written);
        match why {
            Some(why) => entry.failed(why),
            None => entry.ended(),
        }
    }
}

/// The client side of a tunnel, counting bytes each way for the access log
/// (`copy_bidirectional` reports them only when both sides closed cleanly).
struct Counted<I> {
    io: I,
    read: u64,
    written: u64,
}

impl<I: AsyncRead + Unpin> AsyncRead for Counted<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        this.read += (buf.filled().len() - before) as u64;
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Counted<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            this.written += *n as u64;
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
