//! Keep-alive connections to endpoints. Every [`Endpoint`] holds one idle
//! list per worker thread and a worker only touches its own, so the mutex
//! around a list is never contended (it is there because the endpoint is
//! shared). Reloads keep endpoints, and with them their connections; a
//! removed endpoint's connections close when its last table is dropped.
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

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use http::{Request, Response};
use hyper::body::Incoming;

use super::Endpoint;
use super::body::RequestBody;
use super::connect::{ConnectError, Sender, connect};

/// How long an unused connection stays in the pool.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per endpoint and worker; more are closed.
const MAX_IDLE: usize = 1024;

/// The idle connections of one endpoint, a list per worker.
#[derive(Debug)]
pub struct Pools(Box<[Slot]>);

/// One worker's list and counts, alone on their cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Slot {
    idle: Mutex<Vec<Idle>>,
    /// Connections open (idle or in use) of this worker to the endpoint.
    open: AtomicUsize,
    /// Requests waiting for one of them.
    waiting: AtomicUsize,
    /// A connection came back to `idle` or closed.
    freed: Notify,
}

/// Counts a connection as open until its connection task ends.
struct Open {
    endpoint: Arc<Endpoint>,
    worker: usize,
}

impl Drop for Open {
    fn drop(&mut self) {
        let slot = self.endpoint.pools.slot(self.worker);
        slot.open.fetch_sub(1, Ordering::Relaxed);
        slot.freed.notify_one();
    }
}

#[derive(Debug)]
struct Idle {
    sender: Sender,
    since: Instant,
}

impl Pools {
    pub fn new(workers: usize) -> Pools {
        Pools((0..workers.max(1)).map(|_| Slot::default()).collect())
    }

    /// The most recently used live connection of `worker`, if any.
    fn take(&self, worker: usize) -> Option<Sender> {
        let mut idle = self.idle(worker);
        while let Some(Idle { sender, since }) = idle.pop() {
            if sender.is_ready() && since.elapsed() < IDLE_TIMEOUT {
                return Some(sender);
            }
        }
        None
    }

    fn put(&self, worker: usize, sender: Sender) {
        let mut idle = self.idle(worker);
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
        drop(idle);
        self.slot(worker).freed.notify_one();
    }

    /// Closes `worker`'s connections that idled out or were closed by the
    /// endpoint. The oldest are first in the list.
    pub fn sweep(&self, worker: usize) {
        let mut idle = self.idle(worker);
        idle.retain(|i| !i.sender.is_closed() && i.since.elapsed() < IDLE_TIMEOUT);
    }

    fn slot(&self, worker: usize) -> &Slot {
        &self.0[worker % self.0.len()]
    }

    fn idle(&self, worker: usize) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.slot(worker)
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Connections `worker` has open to the endpoint.
    pub fn open(&self, worker: usize) -> usize {
        self.slot(worker).open.load(Ordering::Relaxed)
    }
}

/// A connection in use by one request.
#[derive(Debug)]
pub struct Lease {
    sender: Sender,
    endpoint: Arc<Endpoint>,
    worker: usize,
    reusable: bool,
}

impl Lease {
    /// The request was cut short (its body not all sent, or not read by
    /// the backend): the connection closes instead of going back.
    pub fn forbid_reuse(&mut self) {
        self.reusable = false;
    }

    /// Gives the connection back once the response has been read to its end.
    /// It is nearly always ready again at once; if not, a small task waits.
    pub fn release(self) {
        let Lease {
            mut sender,
            endpoint,
            worker,
            reusable,
        } = self;
        if !reusable {
            return;
        }
        if sender.is_ready() {
            endpoint.pools.put(worker, sender);
        } else if !sender.is_closed() {
            tokio::spawn(async move {
                if sender.ready().await.is_ok() {
                    endpoint.pools.put(worker, sender);
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

    /// Sends `req` (origin-form URI, with its Host) to `endpoint` on an idle
    /// connection, else a new one. An idle connection found closed before
    /// anything was written is skipped without counting as a failure.
    /// At most `max_connections` open per endpoint on this worker.
    pub async fn send(
        &self,
        endpoint: &Arc<Endpoint>,
        mut req: Request<RequestBody>,
        max_connections: usize,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        let slot = endpoint.pools.slot(self.worker);
        let mut deadline = None;
        loop {
            while let Some(mut sender) = endpoint.pools.take(self.worker) {
                match sender.try_send_request(req).await {
                    Ok(resp) => return Ok((resp, self.lease(sender, endpoint))),
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
            if slot.open.load(Ordering::Relaxed) < max_connections {
                break;
            }
            // Full: wait for a connection to come back or close. The worker
            // is one thread, so nothing frees one between the check above
            // and this wait; a stale wake-up just loops.
            let full = SendError {
                error: UpstreamError::PoolFull,
                unsent: None,
            };
            if slot.waiting.load(Ordering::Relaxed) >= max_connections {
                return Err(full);
            }
            let until =
                *deadline.get_or_insert_with(|| tokio::time::Instant::now() + self.connect_timeout);
            slot.waiting.fetch_add(1, Ordering::Relaxed);
            let woke = tokio::time::timeout_at(until, slot.freed.notified()).await;
            slot.waiting.fetch_sub(1, Ordering::Relaxed);
            if woke.is_err() {
                return Err(full);
            }
        }
        slot.open.fetch_add(1, Ordering::Relaxed);
        let open = Open {
            endpoint: endpoint.clone(),
            worker: self.worker,
        };
        // Boxed: connecting (resolver, TLS handshake) is rare and its future
        // large; unboxed it would grow every request's future.
        let connecting = Box::pin(connect(
            &endpoint.spec,
            endpoint.tls.as_ref(),
            self.connect_timeout,
            open,
        ));
        let mut sender = match connecting.await {
            Ok(s) => s,
            Err(e) => {
                return Err(SendError {
                    error: e.into(),
                    unsent: Some(req),
                });
            }
        };
        match sender.try_send_request(req).await {
            Ok(resp) => Ok((resp, self.lease(sender, endpoint))),
            Err(mut e) => Err(SendError {
                unsent: e.take_message(),
                error: e.into_error().into(),
            }),
        }
    }

    fn lease(&self, sender: Sender, endpoint: &Arc<Endpoint>) -> Lease {
        Lease {
            sender,
            endpoint: endpoint.clone(),
            worker: self.worker,
            reusable: true,
        }
    }
}
