//! Protocol upgrades (WebSocket): once the backend answered 101, bytes are
//! copied both ways until either side closes.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// Joins the client's and the upstream's upgraded connections.
pub async fn tunnel(client: OnUpgrade, upstream: OnUpgrade, route: std::sync::Arc<str>) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(route = %route, error = %e, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => {
            tracing::debug!(route = %route, bytes_up = up, bytes_down = down, "tunnel closed")
        }
        Err(e) => tracing::debug!(route = %route, error = %e, "tunnel ended with an error"),
    }
}
