//! The upstream HTTP client: one per worker thread, so each thread has its
//! own keep-alive pool and no lock is shared between threads. Pools are keyed
//! by endpoint, so a reload that keeps an endpoint keeps its connections;
//! connections to removed endpoints close after `POOL_IDLE`.

use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use std::sync::Arc;

use super::connector::{Connector, TlsConfigs};
use crate::config::Timeouts;
use crate::proxy::body::RequestBody;

pub type UpstreamClient = Client<Connector, RequestBody>;

/// How long an unused upstream connection stays in the pool.
const POOL_IDLE: Duration = Duration::from_secs(90);

pub fn build(timeouts: &Timeouts, tls: Arc<TlsConfigs>) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.enforce_http(false);
    connector.set_connect_timeout(Some(timeouts.connect));
    connector.set_nodelay(true);
    connector.set_keepalive(Some(Duration::from_secs(60)));
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_max_idle_per_host(1024)
        .build(Connector::new(connector, tls))
}
