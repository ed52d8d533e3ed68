//! Thread per core: each worker thread runs its own current-thread runtime,
//! accepts on its own descriptor of the one listening socket (`listener`;
//! whichever worker is free takes the next connection), and owns its
//! upstream client. Workers share only the routing table (`ArcSwap`),
//! metrics and the connection limit.

use std::convert::Infallible;
use std::sync::Arc;
use std::thread::JoinHandle;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use super::handler::{self, ConnInfo, Worker};
use super::io::{Activity, ActivityIo, Deadlines, Expired, Tracked};
use super::listener::Listeners;
use crate::config::{Limits, Timeouts};
use crate::metrics::Metrics;
use crate::routing::RoutingTable;
use crate::upstream::pool::Client;

/// State shared by every worker thread.
pub struct Shared {
    pub table: ArcSwap<RoutingTable>,
    pub metrics: Arc<Metrics>,
    /// Fixed at start; a reload that changes them is reported, not applied.
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub tls_handshake_timeout: std::time::Duration,
    connections: Arc<Semaphore>,
    /// `[access_log]`, fixed at start; `None`: off (one branch per request).
    pub access_log: Option<crate::access_log::AccessLog>,
}

impl Shared {
    pub fn new(
        table: RoutingTable,
        metrics: Arc<Metrics>,
        config: &crate::config::Config,
    ) -> Shared {
        let (timeouts, limits) = (config.timeouts.clone(), config.limits.clone());
        Shared {
            table: ArcSwap::from_pointee(table),
            metrics,
            tls_handshake_timeout: config
                .tls
                .as_ref()
                .map_or(std::time::Duration::from_secs(10), |t| t.handshake_timeout),
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            access_log: None,
            timeouts,
            limits,
        }
    }
}

impl Shared {
    /// Lowers the connection limit to `n` (to fit the open-file limit).
    pub fn lower_max_connections(&self, n: usize) {
        let max = self.limits.max_connections;
        if n < max {
            self.connections.forget_permits(max - n);
        }
    }
}

/// A client connection's slot of `limits.max_connections`, counted in
/// `cutover_connections_open`, held by the connection and by a tunnel it
/// was upgraded to, until both have closed.
#[derive(Debug)]
pub struct ConnSlot {
    _permit: OwnedSemaphorePermit,
    open: IntGauge,
}

impl ConnSlot {
    fn new(permit: OwnedSemaphorePermit, open: &IntGauge) -> Arc<ConnSlot> {
        open.inc();
        Arc::new(ConnSlot {
            _permit: permit,
            open: open.clone(),
        })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// Starts one worker thread per `http` listener descriptor; each also
/// accepts on its descriptor of the `https` socket. Each returns once `shutdown` turned
/// true and its connections finished.
pub fn spawn_workers(
    shared: Arc<Shared>,
    http: Listeners,
    https: Option<(Listeners, TlsAcceptor)>,
    shutdown: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let (mut tls_sockets, acceptor) = match https {
        Some((l, a)) => (l.sockets.into_iter().map(Some).collect(), Some(a)),
        None => (Vec::new(), None),
    };
    http.sockets
        .into_iter()
        .enumerate()
        .map(|(i, socket)| {
            let shared = shared.clone();
            let shutdown = shutdown.clone();
            let tls = tls_sockets
                .get_mut(i)
                .and_then(Option::take)
                .zip(acceptor.clone());
            std::thread::Builder::new()
                .name(format!("cutover-worker-{i}"))
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a runtime starts");
                    rt.block_on(worker(i, shared, socket, tls, shutdown));
                })
                .expect("a thread starts")
        })
        .collect()
}

async fn worker(
    id: usize,
    shared: Arc<Shared>,
    http: std::net::TcpListener,
    https: Option<(std::net::TcpListener, TlsAcceptor)>,
    shutdown: watch::Receiver<bool>,
) {
    let tracker = TaskTracker::new();
    let worker = Arc::new(Worker {
        client: Client::new(id, shared.timeouts.connect),
        shared: shared.clone(),
        tracker: tracker.clone(),
    });
    tokio::spawn(sweep_pools(id, shared.clone()));
    let plain = accept_loop(
        worker.clone(),
        http,
        None,
        tracker.clone(),
        shutdown.clone(),
    );
    match https {
        Some((socket, acceptor)) => {
            let tls = accept_loop(worker, socket, Some(acceptor), tracker.clone(), shutdown);
            tokio::join!(plain, tls);
        }
        None => plain.await,
    }
    tracker.close();
    tracker.wait().await;
}

/// Closes this worker's idle upstream connections that timed out or were
/// closed by their endpoint, every few seconds.
async fn sweep_pools(worker: usize, shared: Arc<Shared>) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(10));
    loop {
        every.tick().await;
        let table = shared.table.load();
        for backend in &table.backends {
            for ep in backend.endpoints.iter() {
                ep.pools.sweep(worker);
            }
        }
    }
}

/// Accepts connections until shutdown; each is served on its own task.
async fn accept_loop(
    worker: Arc<Worker>,
    socket: std::net::TcpListener,
    tls: Option<TlsAcceptor>,
    tracker: TaskTracker,
    mut shutdown: watch::Receiver<bool>,
) {
    let listener = match tokio::net::TcpListener::from_std(socket) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot register listener");
            return;
        }
    };
    let shared = worker.shared.clone();
    let builder = http_builder(&shared.limits);
    loop {
        // Take a connection slot first: past max_connections, new
        // connections wait in the kernel's accept queue.
        let permit = tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            p = shared.connections.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (worker, builder, shutdown) = (worker.clone(), builder.clone(), shutdown.clone());
        // Plain and TLS connections are separate task types: a plain
        // connection's task is not sized for a TLS session it never has.
        match &tls {
            None => {
                let slot = ConnSlot::new(permit, &worker.shared.metrics.connections_open);
                let conn = Arc::new(ConnInfo::new(peer, false, slot));
                tracker.spawn(serve(worker, builder, stream, conn, shutdown));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tracker.spawn(async move {
                    let limit = worker.shared.tls_handshake_timeout;
                    match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let open = &worker.shared.metrics.connections_open;
                            let conn =
                                Arc::new(ConnInfo::new(peer, true, ConnSlot::new(permit, open)));
                            serve(worker, builder, tls, conn, shutdown).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %peer, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

/// Response bytes an HTTP/2 stream buffers beyond what the client's window
/// lets through: 64 KiB, the protocol's initial window (RFC 9113 §6.9.2).
const MAX_SEND_BUF: usize = 64 * 1024;

/// hyper's server settings, every limit explicit.
fn http_builder(l: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        // `timeouts.header_read` is enforced by `io::Activity::watch`.
        .header_read_timeout(None)
        .max_buf_size(l.max_header_bytes)
        .max_headers(l.max_headers)
        .keep_alive(true)
        .half_close(false);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(l.max_concurrent_streams)
        // What a stream may buffer for a client that does not read (hyper's
        // default is 400 KiB): one window's worth.
        .max_send_buf_size(MAX_SEND_BUF)
        .max_header_list_size(l.max_header_bytes as u32)
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(1024)
        .keep_alive_interval(None);
    b
}

/// Serves one client connection until it closes, idles out, or drains.
pub async fn serve<I>(
    worker: Arc<Worker>,
    builder: auto::Builder<TokioExecutor>,
    io: I,
    conn: Arc<ConnInfo>,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let t = &worker.shared.timeouts;
    let deadlines = Deadlines {
        idle: t.idle,
        header_read: t.header_read,
        body_idle: t.body_idle,
        graceful_close: t.graceful_close,
    };
    let activity = Arc::new(Activity::accepted());
    let io = TokioIo::new(ActivityIo::new(io, activity.clone()));
    let handler_activity = activity.clone();
    let conn_peer = conn.peer;
    let service = service_fn(move |req| {
        let worker = worker.clone();
        let conn = conn.clone();
        let busy = handler_activity.busy();
        async move {
            let resp = handler::handle(&worker, &conn, req).await;
            Ok::<_, Infallible>(resp.map(|body| Tracked::new(body, busy)))
        }
    });
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    let watch = activity.watch(deadlines);
    tokio::pin!(watch);
    // Starts a graceful close once; the watch then bounds it.
    macro_rules! close {
        () => {
            if !activity.closing() {
                activity.start_closing();
                connection.as_mut().graceful_shutdown();
                watch.set(activity.watch(deadlines));
            }
        };
    }
    if *shutdown.borrow() {
        close!();
    }
    loop {
        tokio::select! {
            res = connection.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "client connection ended with an error");
                }
                break;
            }
            _ = shutdown.changed(), if !activity.closing() => close!(),
            expired = &mut watch => match expired {
                Expired::Idle => close!(),
                Expired::Head => {
                    tracing::debug!(peer = %conn_peer, timeout = ?deadlines.header_read, "request head too slow; closing");
                    break;
                }
                Expired::Stalled => {
                    tracing::debug!(peer = %conn_peer, timeout = ?deadlines.body_idle, "a body made no progress; closing");
                    break;
                }
                Expired::Grace => {
                    tracing::debug!(peer = %conn_peer, timeout = ?deadlines.graceful_close, "graceful close not finished; closing");
                    break;
                }
            },
        }
    }
}
