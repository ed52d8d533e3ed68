//! Keep-alive connections to endpoints. Every [`Endpoint`] holds one idle
//! list per worker thread and a worker only touches its own, so the mutex
//! around a list is never contended (it is there because the endpoint is
//! shared). Reloads keep endpoints, and with them their connections; a
//! removed endpoint's connections close when its last table is dropped.
//!
//! A connection is leased for one request and comes back when the response
//! body has been read to its end ([`Lease::release`]); one dropped midway is
//! closed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// One worker's list, alone on its cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Slot(Mutex<Vec<Idle>>);

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
        let mut idle = self.slot(worker);
        while let Some(Idle { sender, since }) = idle.pop() {
            if sender.is_ready() && since.elapsed() < IDLE_TIMEOUT {
                return Some(sender);
            }
        }
        None
    }

    fn put(&self, worker: usize, sender: Sender) {
        let mut idle = self.slot(worker);
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Closes `worker`'s connections that idled out or were closed by the
    /// endpoint. The oldest are first in the list.
    pub fn sweep(&self, worker: usize) {
        let mut idle = self.slot(worker);
        idle.retain(|i| !i.sender.is_closed() && i.since.elapsed() < IDLE_TIMEOUT);
    }

    fn slot(&self, worker: usize) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.0[worker % self.0.len()]
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// A connection in use by one request.
#[derive(Debug)]
pub struct Lease {
    sender: Sender,
    endpoint: Arc<Endpoint>,
    worker: usize,
}

impl Lease {
    /// Gives the connection back once the response has been read to its end.
    /// It is nearly always ready again at once; if not, a small task waits.
    pub fn release(self) {
        let Lease {
            mut sender,
            endpoint,
            worker,
        } = self;
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
    pub async fn send(
        &self,
        endpoint: &Arc<Endpoint>,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
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
        // Boxed: connecting (resolver, TLS handshake) is rare and its future
        // large; unboxed it would grow every request's future.
        let connecting = Box::pin(connect(
            &endpoint.spec,
            endpoint.tls.as_ref(),
            self.connect_timeout,
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
        }
    }
}
