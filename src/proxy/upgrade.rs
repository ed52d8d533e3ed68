//! Protocol upgrades (WebSocket): once the backend answered 101, bytes are
//! copied both ways until either side closes, or neither sends anything for
//! `timeouts.tunnel_idle` (HAProxy's `timeout tunnel`). The tunnel keeps
//! its client connection's slot of `limits.max_connections` until it ends.

use std::sync::Arc;
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::io::{Activity, ActivityIo};
use super::server::ConnSlot;

/// Joins the client's and the upstream's upgraded connections.
pub async fn tunnel(
    client: OnUpgrade,
    upstream: OnUpgrade,
    route: Arc<str>,
    _slot: Arc<ConnSlot>,
    idle: Duration,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(route = %route, error = %e, "upgrade failed");
            return;
        }
    };
    let activity = Arc::new(Activity::accepted());
    let mut client = ActivityIo::new(TokioIo::new(client), activity.clone());
    let mut upstream = TokioIo::new(upstream);
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match copied {
            Ok((up, down)) => {
                tracing::debug!(route = %route, bytes_up = up, bytes_down = down, "tunnel closed")
            }
            Err(e) => tracing::debug!(route = %route, error = %e, "tunnel ended with an error"),
        },
        _ = activity.silent_for(idle) => {
            tracing::debug!(route = %route, timeout = ?idle, "tunnel idle; closing")
        }
    }
}
