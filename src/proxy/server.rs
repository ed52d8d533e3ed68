//! Thread per core: each worker thread runs its own current-thread runtime,
//! accepts on its own descriptor of the one listening socket (`listener`;
//! whichever worker is free takes the next connection), and owns its
//! upstream client. Workers share only the routing table (`ArcSwap`),
//! metrics and the connection limit.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::JoinHandle;

use arc_swap::ArcSwap;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::task::TaskTracker;

use super::handler::{self, ConnInfo, Worker};
use super::headers;
use super::io::{Activity, ActivityIo, Deadlines, Expired, Tracked, speaks_http1};
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
        // Through the worker's table cache, so an idle worker lets go of a
        // replaced table (and its endpoints' pools) within one sweep.
        let table = super::table_cache::current(&shared);
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
    let builders = Arc::new(http_builders(&shared.limits));
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
        let (worker, builders, shutdown) = (worker.clone(), builders.clone(), shutdown.clone());
        // Plain and TLS connections are separate task types: a plain
        // connection's task is not sized for a TLS session it never has.
        match &tls {
            None => {
                let slot = ConnSlot::new(permit, &worker.shared.metrics.connections_open);
                let conn = Arc::new(ConnInfo::new(peer, false, slot));
                tracker.spawn(serve(worker, builders, stream, conn, shutdown));
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
                            serve(worker, builders, tls, conn, shutdown).await;
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

/// hyper's own cap on a request's header fields. Left to hyper when it is
/// the configured one: set explicitly, hyper fills a buffer of that many
/// entries for every request head it parses (1.7k instructions a request)
/// instead of using an uninitialized one on the stack.
const HYPER_MAX_HEADERS: usize = 100;

/// hyper's server settings, every limit explicit (`max_headers` when it is
/// not hyper's own): `auto` detects HTTP/2 (TLS, and plain connections that
/// may send its preface); `h1` serves the HTTP/1 rounds of plain connections.
pub struct Builders {
    auto: auto::Builder<TokioExecutor>,
    h1: http1::Builder,
}

fn http_builders(l: &Limits) -> Builders {
    let mut auto = auto::Builder::new(TokioExecutor::new());
    auto.http1()
        .timer(TokioTimer::new())
        // `timeouts.header_read` is enforced by `io::Activity::watch`.
        .header_read_timeout(None)
        .max_buf_size(l.max_header_bytes)
        .keep_alive(true)
        .half_close(false);
    if l.max_headers != HYPER_MAX_HEADERS {
        auto.http1().max_headers(l.max_headers);
    }
    auto.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(l.max_concurrent_streams)
        // What a stream may buffer for a client that does not read (hyper's
        // default is 400 KiB): one window's worth.
        .max_send_buf_size(MAX_SEND_BUF)
        .max_header_list_size(l.max_header_bytes as u32)
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(1024)
        .keep_alive_interval(None);
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(None)
        // `max_buf_size` alone lets a head through that arrived in one
        // read larger than it (a round starts once the socket is readable,
        // when much of a big head may be there): this one counts the head.
        .max_header_size(l.max_header_bytes)
        .max_buf_size(l.max_header_bytes)
        // Flattened writes: a response's head and body chunks copied into
        // one buffer and written with `write`, instead of handed to
        // `writev` as they are. hyper fills a 64-entry `IoSlice` array on
        // every vectored flush, which costs more than copying the small
        // bodies most responses have (~0.37k instructions per request on
        // each side, callgrind); a large body costs a copy per chunk. The
        // buffer keeps its largest size until the round ends. `auto`
        // (TLS, HTTP/2, a connection that lives on) stays vectored.
        .writev(false)
        .keep_alive(true)
        .half_close(false);
    if l.max_headers != HYPER_MAX_HEADERS {
        h1.max_headers(l.max_headers);
    }
    Builders { auto, h1 }
}

/// A client stream: plain TCP, or TLS over it.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The socket to wait on between HTTP/1 requests; `None` for TLS, whose
    /// session may hold decrypted bytes the socket no longer shows.
    fn between_requests(&self) -> Option<&TcpStream>;
}

impl ClientStream for TcpStream {
    fn between_requests(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl ClientStream for TlsStream<TcpStream> {
    fn between_requests(&self) -> Option<&TcpStream> {
        None
    }
}

/// The hyper connection serving a client connection, boxed: a connection
/// waiting for its next request holds neither it nor its buffers.
enum Serving<A, H> {
    /// HTTP/2, TLS, or a plain connection still undecided: for good.
    Auto(Pin<Box<A>>),
    /// One round of HTTP/1 on a plain connection: until a response that
    /// keeps the connection alive has been sent, then taken apart.
    H1(Box<H>),
}

/// Serves one client connection until it closes, idles out, or drains.
///
/// A plain HTTP/1 connection is served in rounds: it waits until the socket
/// is readable holding only the socket (nothing of hyper's), then a hyper
/// connection serves requests until the connection goes quiet after the
/// response to a request without a body that keeps the connection alive;
/// keep-alive is then disabled (after that response's head went out, so
/// no `Connection: close` is sent), hyper finishes and stops without
/// shutting the socket, and its unparsed bytes are put back in front of
/// the socket for the next round. An idle keep-alive connection thus holds
/// a few hundred bytes instead of hyper's two 8 KiB buffers, and a busy
/// one pays nothing per request.
pub async fn serve<I: ClientStream>(
    worker: Arc<Worker>,
    builders: Arc<Builders>,
    io: I,
    conn: Arc<ConnInfo>,
    mut shutdown: watch::Receiver<bool>,
) {
    let t = &worker.shared.timeouts;
    let deadlines = Deadlines {
        idle: t.idle,
        header_read: t.header_read,
        body_idle: t.body_idle,
        graceful_close: t.graceful_close,
    };
    let activity = Arc::new(Activity::accepted());
    let mut io = TokioIo::new(ActivityIo::new(io, activity.clone()));
    let handler_activity = activity.clone();
    let conn_peer = conn.peer;
    let service = service_fn(move |req: Request<Incoming>| {
        let worker = worker.clone();
        let conn = conn.clone();
        let busy = handler_activity.busy();
        // One walk over the request's fields, for this and the request path.
        let fields = headers::Fields::of_request(req.headers());
        let ends_round = keeps_alive(&req, &fields);
        let h1 = req.version() < Version::HTTP_2;
        async move {
            let mut resp = handler::handle(&worker, &conn, req, fields).await;
            // Draining: an HTTP/1 connection is not closed while idle, where
            // the client's next request could cross the close; the next
            // response says it is the last (RFC 9112 §9.6), as Envoy's drain
            // and HAProxy's `idle-close-on-response` do.
            if h1 && busy.closing() && response_keeps_alive(&resp) {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            if ends_round && response_keeps_alive(&resp) {
                busy.may_end_round();
            }
            Ok::<_, Infallible>(resp.map(|body| Tracked::new(body, busy)))
        }
    });
    let watch = activity.watch(deadlines);
    tokio::pin!(watch);
    let mut first = true;
    loop {
        // Between requests: wait for bytes holding only the socket. The
        // first bytes tell HTTP/1 from HTTP/2's preface.
        let mut http1 = false;
        if let Some(tcp) = io.inner().get_ref().between_requests() {
            if !io.inner().has_unread() {
                // Draining: the connection waits for its next request (a
                // connection accepted just before the listeners stopped
                // may not have sent its first yet), answered with
                // `Connection: close`, for `timeouts.graceful_close` (the
                // watch's `Grace`); closing it now could cross a request.
                if *shutdown.borrow() {
                    activity.start_closing();
                }
                let arrived = async {
                    if first {
                        let mut head = [0u8; 24];
                        let n = tcp.peek(&mut head).await?;
                        Ok((n, speaks_http1(&head[..n])))
                    } else {
                        tcp.readable().await.map(|()| (1, true))
                    }
                };
                tokio::pin!(arrived);
                loop {
                    tokio::select! {
                        biased;
                        r = &mut arrived => match r {
                            Ok((0, _)) | Err(_) => return,
                            Ok((_, h1)) => {
                                http1 = h1;
                                break;
                            }
                        },
                        _ = shutdown.changed(), if !activity.closing() => activity.start_closing(),
                        expired = &mut watch => {
                            match expired {
                                Expired::Head => tracing::debug!(peer = %conn_peer, timeout = ?deadlines.header_read, "request head too slow; closing"),
                                Expired::Grace => tracing::debug!(peer = %conn_peer, timeout = ?deadlines.graceful_close, "draining: no request within the graceful close; closing"),
                                _ => {}
                            }
                            return;
                        }
                    }
                }
            } else {
                http1 = true;
            }
        }
        first = false;
        let mut serving = if http1 {
            let c = builders.h1.serve_connection(io, service.clone());
            Serving::H1(Box::new(c.with_upgrades()))
        } else {
            let c = builders
                .auto
                .serve_connection_with_upgrades(io, service.clone());
            Serving::Auto(Box::pin(c))
        };
        let mut round = Round::default();
        // Idle: starts a graceful close once; the watch then bounds it.
        macro_rules! close {
            () => {
                if !activity.closing() {
                    activity.start_closing();
                    round.goaway = true;
                    match &mut serving {
                        Serving::Auto(c) => c.as_mut().graceful_shutdown(),
                        Serving::H1(c) => Pin::new(&mut **c).graceful_shutdown(),
                    }
                    watch.set(activity.watch(deadlines));
                }
            };
        }
        // Draining: not hyper's `graceful_shutdown`, which closes an idle
        // HTTP/1 connection at once (under a request that may be on its
        // way): HTTP/1 answers its next request with `Connection: close`,
        // HTTP/2 gets GOAWAY from `poll_round`, and the watch closes the
        // connection after `graceful_close` with nothing in progress.
        if *shutdown.borrow() {
            activity.start_closing();
        }
        loop {
            tokio::select! {
                res = poll_fn(|cx| poll_round(&mut serving, &activity, &mut round, cx)) => {
                    if let Err(e) = res {
                        tracing::debug!(error = %e, "client connection ended with an error");
                        return;
                    }
                    break;
                }
                _ = shutdown.changed(), if !activity.closing() => activity.start_closing(),
                expired = &mut watch => match expired {
                    Expired::Idle => close!(),
                    Expired::Head => {
                        tracing::debug!(peer = %conn_peer, timeout = ?deadlines.header_read, "request head too slow; closing");
                        return;
                    }
                    Expired::Stalled => {
                        tracing::debug!(peer = %conn_peer, timeout = ?deadlines.body_idle, "a body made no progress; closing");
                        return;
                    }
                    Expired::Grace => {
                        tracing::debug!(peer = %conn_peer, timeout = ?deadlines.graceful_close, "graceful close not finished; closing");
                        return;
                    }
                },
            }
        }
        // Another round only after the response that was to end this one,
        // and no request after it: hyper stopped because we asked it to.
        // Draining since, the next round waits for a request as above.
        activity.keep_open(false);
        let Serving::H1(c) = serving else { return };
        if round.last.is_none() || round.last != Some(activity.requests()) {
            return;
        }
        let Some(parts) = c.into_parts() else { return };
        io = parts.io;
        io.inner_mut().unread(parts.read_buf);
    }
}

/// What [`poll_round`] keeps between polls of one hyper connection.
#[derive(Default)]
struct Round {
    /// The request whose response ends this HTTP/1 round, once chosen.
    last: Option<u64>,
    /// HTTP/2: GOAWAY was sent.
    goaway: bool,
}

/// Polls a round; once the response that ends an HTTP/1 round has begun
/// (its head is written: keep-alive can be disabled without hyper adding
/// `Connection: close`) and the connection went quiet (no request since,
/// no bytes for a tick of the watch, which wakes this task), asks hyper to
/// stop after it, keeping the socket. hyper is then idle or finishing that
/// response: it stops without parsing another head, and returns what it
/// read of one.
///
/// Draining, a connection that speaks HTTP/2 (known once its preface was
/// read) gets GOAWAY: its streams in flight finish, and it takes no more
/// (RFC 9113 §6.8).
fn poll_round<A, H>(
    serving: &mut Serving<A, H>,
    activity: &Activity,
    round: &mut Round,
    cx: &mut Context<'_>,
) -> Poll<Result<(), Box<dyn std::error::Error + Send + Sync>>>
where
    A: Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>> + Graceful,
    H: Future<Output = hyper::Result<()>> + Graceful + Unpin,
{
    match serving {
        Serving::Auto(c) => {
            let polled = c.as_mut().poll(cx);
            if polled.is_pending() && !round.goaway && activity.closing() && activity.multiplexed()
            {
                round.goaway = true;
                c.as_mut().graceful_shutdown();
                return c.as_mut().poll(cx);
            }
            polled
        }
        Serving::H1(c) => {
            if let Poll::Ready(r) = Pin::new(&mut **c).poll(cx) {
                return Poll::Ready(r.map_err(Into::into));
            }
            if round.last.is_some() || activity.closing() {
                return Poll::Pending;
            }
            let Some(n) = activity.take_end_of_round() else {
                return Poll::Pending;
            };
            round.last = Some(n);
            activity.keep_open(true);
            Pin::new(&mut **c).graceful_shutdown();
            Pin::new(&mut **c).poll(cx).map_err(Into::into)
        }
    }
}

/// `graceful_shutdown` of hyper's connections (HTTP/1: stop after the
/// response in progress; auto: GOAWAY on HTTP/2), for [`poll_round`].
trait Graceful {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> Graceful for http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::UpgradeableConnection::graceful_shutdown(self)
    }
}

impl<I, S, B, E> Graceful for auto::UpgradeableConnection<'_, I, S, E>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: auto::HttpServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        auto::UpgradeableConnection::graceful_shutdown(self)
    }
}

/// A request after which the connection stays open and in HTTP/1 (RFC 9112
/// §9.3): version 1.1, no body (so nothing of it is left to read), no
/// `Connection: close`, no upgrade.
fn keeps_alive(req: &Request<Incoming>, fields: &headers::Fields) -> bool {
    req.version() == Version::HTTP_11
        && req.body().is_end_stream()
        && req.method() != Method::CONNECT
        && !fields.upgrade
        && (fields.connection == 0 || !says_close(req.headers()))
}

/// A response after which hyper keeps the connection open.
fn response_keeps_alive<B>(resp: &Response<B>) -> bool {
    resp.status() != StatusCode::SWITCHING_PROTOCOLS && !says_close(resp.headers())
}

/// `Connection` mentions `close` in any case, even inside another token
/// (erring on the side of a normal keep-alive); no allocation.
fn says_close(h: &http::HeaderMap) -> bool {
    h.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .windows(5)
            .any(|w| w.eq_ignore_ascii_case(b"close"))
    })
}
