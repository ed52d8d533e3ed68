//! Keep-alive connections to endpoints. Every [`Endpoint`] holds one idle
//! list per worker thread and a worker only touches its own, so the mutex
//! around a list is never contended (it is there because the endpoint is
//! shared). Each worker's list sits behind its own `Arc` ([`Slot`]): a
//! request holds that one, not the endpoint's, so leasing a connection
//! writes only the worker's own reference count. Reloads keep endpoints,
//! and with them their connections; a removed endpoint's connections close
//! when its last table (and the last request leasing one) is gone: a
//! connection's own task holds its slot only weakly.
//!
//! A connection is leased for one request and comes back when the response
//! body has been read to its end ([`Lease::release`]); one dropped midway is
//! closed.
//!
//! A worker opens at most `backends.NAME.max_connections` connections to an
//! endpoint (in use or idle). Past that a request waits for one to come back
//! or close, up to `timeouts.connect`, with at most as many waiting again;
//! beyond either it gets [`UpstreamError::PoolFull`] (a 503). Every HTTP/2
//! stream needs its own HTTP/1.1 upstream connection, so without the cap
//! one client could open thousands.
//!
//! HTTP/2 endpoints (`protocol = "h2c" | "h2" | "auto"`, see `h2.rs`) share
//! their connections instead: a request takes a stream on the first
//! connection of the worker with room, else the worker opens another (one
//! handshake at a time per worker, the others wait for it), still within
//! `max_connections`. A connection closed or going away is skipped; a
//! request it gives back unsent goes on the next one.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use http::{Request, Response};
use hyper::body::Incoming;

use super::Endpoint;
use super::body::{RequestBody, chunk_unknown_length};
use super::connect::{ConnectError, Connected, Sender, connect};
use super::h2::{self, H2Conn, Stream};
use crate::config::Protocol;

/// How long an unused connection stays in the pool.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per endpoint and worker; more are closed.
const MAX_IDLE: usize = 1024;
/// Marks a worker's shadow client (`Client::shadow`): its own slots, so
/// mirrored requests never take or wait for a user's connection.
const SHADOW: usize = 1 << (usize::BITS - 1);

/// The idle connections of one endpoint, a list per worker.
#[derive(Debug)]
pub struct Pools {
    slots: Box<[Arc<Slot>]>,
    /// `protocol = "auto"` and ALPN chose HTTP/1.1: connections open
    /// concurrently again, as for `http1`.
    auto_h1: AtomicBool,
}

/// One worker's list and counts, alone on their cache line (and, behind
/// its own `Arc`, with their own reference count).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Slot {
    idle: Mutex<Vec<Idle>>,
    /// Connections open (idle or in use) of this worker to the endpoint.
    open: AtomicUsize,
    /// Requests waiting for one of them.
    waiting: AtomicUsize,
    /// A connection came back to `idle` or closed, an HTTP/2 stream ended,
    /// or an HTTP/2 handshake finished.
    freed: Notify,
    /// HTTP/2 connections, shared by the requests of the worker.
    h2: Mutex<Vec<H2Conn>>,
    /// HTTP/2 handshakes under way.
    connecting: AtomicUsize,
}

/// Counts a connection as open until its connection task ends. Weak: the
/// slot holds the connection's sender while it is idle, and the task ends
/// only once the sender is dropped.
struct Open(Weak<Slot>);

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(slot) = self.0.upgrade() {
            slot.open.fetch_sub(1, Ordering::Relaxed);
            slot.freed.notify_one();
        }
    }
}

#[derive(Debug)]
struct Idle {
    sender: Sender,
    since: Instant,
}

impl Pools {
    pub fn new(workers: usize) -> Pools {
        Pools {
            // The second half: the workers' shadow slots.
            slots: (0..2 * workers.max(1)).map(|_| Arc::default()).collect(),
            auto_h1: AtomicBool::new(false),
        }
    }

    /// Closes `worker`'s connections that idled out or were closed by the
    /// endpoint. The oldest are first in the list.
    pub fn sweep(&self, worker: usize) {
        for w in [worker, worker | SHADOW] {
            let mut idle = self.slot(w).idle();
            idle.retain(|i| !i.sender.is_closed() && i.since.elapsed() < IDLE_TIMEOUT);
        }
    }

    fn slot(&self, worker: usize) -> &Arc<Slot> {
        let half = self.slots.len() / 2;
        let base = if worker & SHADOW != 0 { half } else { 0 };
        &self.slots[base + (worker & !SHADOW) % half]
    }

    /// Connections `worker` has open to the endpoint.
    pub fn open(&self, worker: usize) -> usize {
        self.slot(worker).open.load(Ordering::Relaxed)
    }
}

impl Slot {
    /// A stream on the first live HTTP/2 connection with room; closed and
    /// idle ones are dropped on the way.
    fn take_h2(&self) -> Option<(H2Conn, Stream)> {
        let mut conns = self.h2.lock().unwrap_or_else(|p| p.into_inner());
        conns.retain(|c| !c.sender.is_closed() && !c.state.idled_out());
        let c = conns.iter().find(|c| c.state.has_room())?;
        Some((c.clone(), c.state.start_stream()))
    }

    fn put_h2(&self, conn: H2Conn) {
        self.h2.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
    }

    /// The most recently used live connection, if any.
    fn take(&self) -> Option<Sender> {
        let mut idle = self.idle();
        while let Some(Idle { sender, since }) = idle.pop() {
            if sender.is_ready() && since.elapsed() < IDLE_TIMEOUT {
                return Some(sender);
            }
        }
        None
    }

    fn put(&self, sender: Sender) {
        let mut idle = self.idle();
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
        drop(idle);
        self.freed.notify_one();
    }

    fn idle(&self) -> MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A connection in use by one request, or for HTTP/2 a stream on a shared
/// one.
#[derive(Debug)]
pub struct Lease(Held);

#[derive(Debug)]
enum Held {
    H1 {
        sender: Sender,
        slot: Arc<Slot>,
        reusable: bool,
    },
    H2 {
        _stream: StreamLease,
    },
}

/// An HTTP/2 stream; when it ends a request waiting for room is woken.
#[derive(Debug)]
struct StreamLease {
    _stream: Stream,
    slot: Arc<Slot>,
}

impl Drop for StreamLease {
    fn drop(&mut self) {
        if self.slot.waiting.load(Ordering::Relaxed) != 0 {
            self.slot.freed.notify_one();
        }
    }
}

impl Lease {
    /// The request was cut short (its body not all sent, or not read by
    /// the backend): the connection closes instead of going back. (An
    /// HTTP/2 stream is reset on its own; the connection stays.)
    pub fn forbid_reuse(&mut self) {
        if let Held::H1 { reusable, .. } = &mut self.0 {
            *reusable = false;
        }
    }

    /// Gives the connection back once the response has been read to its end.
    /// It is nearly always ready again at once; if not, a small task waits.
    pub fn release(self) {
        let Held::H1 {
            mut sender,
            slot,
            reusable,
        } = self.0
        else {
            return;
        };
        if !reusable {
            return;
        }
        if sender.is_ready() {
            slot.put(sender);
        } else if !sender.is_closed() {
            tokio::spawn(async move {
                if sender.ready().await.is_ok() {
                    slot.put(sender);
                }
            });
        }
    }
}

/// Why a request could not be sent, and the request itself when none of it
/// reached the endpoint (so it can go elsewhere).
pub struct SendError {
    pub error: UpstreamError,
    pub unsent: Option<Request<RequestBody>>,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Http(#[from] hyper::Error),
    /// `max_connections` open and the wait for one timed out or was full.
    #[error("upstream connection limit reached")]
    PoolFull,
}

impl UpstreamError {
    /// Not the endpoint's fault; see [`ConnectError::is_local`].
    pub fn is_local(&self) -> bool {
        matches!(self, UpstreamError::Connect(c) if c.is_local())
    }
}

/// A worker's way to its endpoints.
pub struct Client {
    worker: usize,
    connect_timeout: Duration,
}

impl Client {
    pub fn new(worker: usize, connect_timeout: Duration) -> Client {
        Client {
            worker,
            connect_timeout,
        }
    }

    /// The same worker's client for shadow copies (`crate::shadow`): its
    /// own connections (and `max_connections` of them) to every endpoint.
    pub fn shadow(&self) -> Client {
        Client {
            worker: self.worker | SHADOW,
            connect_timeout: self.connect_timeout,
        }
    }

    /// Sends `req` (origin-form URI, with its Host) to `endpoint` on an idle
    /// connection (HTTP/2: a shared one with room), else a new one. A
    /// connection found closed before anything was written is skipped
    /// without counting as a failure. At most `max_connections` open per
    /// endpoint on this worker.
    pub async fn send(
        &self,
        endpoint: &Arc<Endpoint>,
        mut req: Request<RequestBody>,
        max_connections: usize,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        let slot = endpoint.pools.slot(self.worker);
        let multiplexed = endpoint.protocol != Protocol::Http1;
        let mut deadline = None;
        loop {
            // `send_h2` boxed here and below: its future would otherwise
            // be inlined twice into this one, which every HTTP/1 request
            // carries (and moves) too.
            while multiplexed && let Some((conn, stream)) = slot.take_h2() {
                match Box::pin(self.send_h2(endpoint, slot, conn, stream, req)).await {
                    Err(SendError {
                        unsent: Some(unsent),
                        ..
                    }) => req = unsent,
                    done => return done,
                }
            }
            while let Some(mut sender) = slot.take() {
                h2::to_h1(&mut req);
                chunk_unknown_length(&mut req);
                match sender.try_send_request(req).await {
                    Ok(resp) => return Ok((resp, lease(sender, slot))),
                    Err(mut e) => match e.take_message() {
                        Some(unsent) => req = unsent,
                        None => {
                            return Err(SendError {
                                error: e.into_error().into(),
                                unsent: None,
                            });
                        }
                    },
                }
            }
            // HTTP/2: while a handshake is under way, wait for it rather
            // than open one connection per waiting request.
            let handshaking = multiplexed
                && slot.connecting.load(Ordering::Relaxed) != 0
                && !endpoint.pools.auto_h1.load(Ordering::Relaxed);
            if !handshaking && slot.open.load(Ordering::Relaxed) < max_connections {
                break;
            }
            // Full: wait for a connection to come back or close. The worker
            // is one thread, so nothing frees one between the check above
            // and this wait; a stale wake-up just loops.
            let full = || SendError {
                error: UpstreamError::PoolFull,
                unsent: None,
            };
            if !handshaking && slot.waiting.load(Ordering::Relaxed) >= max_connections {
                return Err(full());
            }
            let until =
                *deadline.get_or_insert_with(|| tokio::time::Instant::now() + self.connect_timeout);
            slot.waiting.fetch_add(1, Ordering::Relaxed);
            let woke = tokio::time::timeout_at(until, slot.freed.notified()).await;
            slot.waiting.fetch_sub(1, Ordering::Relaxed);
            if woke.is_err() {
                return Err(full());
            }
        }
        slot.open.fetch_add(1, Ordering::Relaxed);
        let open = Open(Arc::downgrade(slot));
        let handshake = multiplexed.then(|| Handshake::start(slot));
        // Boxed: connecting (resolver, TLS handshake) is rare and its future
        // large; unboxed it would grow every request's future.
        let connecting = Box::pin(connect(
            &endpoint.spec,
            endpoint.tls.as_ref(),
            endpoint.protocol,
            self.connect_timeout,
            open,
        ));
        let connected = connecting.await;
        drop(handshake);
        match connected {
            Ok(Connected::H1(mut sender)) => {
                if endpoint.protocol == Protocol::Auto {
                    endpoint.pools.auto_h1.store(true, Ordering::Relaxed);
                }
                h2::to_h1(&mut req);
                chunk_unknown_length(&mut req);
                match sender.try_send_request(req).await {
                    Ok(resp) => Ok((resp, lease(sender, slot))),
                    Err(mut e) => Err(SendError {
                        unsent: e.take_message(),
                        error: e.into_error().into(),
                    }),
                }
            }
            Ok(Connected::H2(conn)) => {
                let stream = conn.state.start_stream();
                slot.put_h2(conn.clone());
                slot.freed.notify_waiters();
                Box::pin(self.send_h2(endpoint, slot, conn, stream, req)).await
            }
            Err(e) => Err(SendError {
                error: e.into(),
                unsent: Some(req),
            }),
        }
    }

    /// One request as a stream of an HTTP/2 connection.
    async fn send_h2(
        &self,
        endpoint: &Endpoint,
        slot: &Arc<Slot>,
        mut conn: H2Conn,
        stream: Stream,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        h2::to_h2(&mut req, &endpoint.spec.scheme, &endpoint.spec.authority);
        let lease = Lease(Held::H2 {
            _stream: StreamLease {
                _stream: stream,
                slot: slot.clone(),
            },
        });
        match conn.sender.try_send_request(req).await {
            Ok(resp) => Ok((resp, lease)),
            Err(mut e) => Err(SendError {
                unsent: e.take_message(),
                error: e.into_error().into(),
            }),
        }
    }
}

/// An HTTP/1.1 connection leased for one request.
fn lease(sender: Sender, slot: &Arc<Slot>) -> Lease {
    Lease(Held::H1 {
        sender,
        slot: slot.clone(),
        reusable: true,
    })
}

/// An HTTP/2 handshake under way on a worker; when it ends, however it
/// ends, the requests that waited for it look again.
struct Handshake(Arc<Slot>);

impl Handshake {
    fn start(slot: &Arc<Slot>) -> Handshake {
        slot.connecting.fetch_add(1, Ordering::Relaxed);
        Handshake(slot.clone())
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.0.connecting.fetch_sub(1, Ordering::Relaxed);
        self.0.freed.notify_waiters();
    }
}
