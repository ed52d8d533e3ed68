//! A controllable test backend, for failure tests (health checks, ejection,
//! retries). Unlike [`super::Backend`], it can be killed for real: `kill`
//! refuses new connections *and* closes every open one, like a crashed
//! process; and what it answers can be changed while it runs.
//!
//! - `/healthz`: answers [`CtlBackend::health`] (200 at start) after
//!   [`CtlBackend::health_delay_ms`] (0 at start), counted in
//!   [`CtlBackend::health_hits`]
//! - anything else: answers [`CtlBackend::status`] (200 at start) after
//!   reading the whole request body; body = the name, headers
//!   `x-backend: name` and `x-body-len: bytes read`; counted in
//!   [`CtlBackend::hits`] and recorded as `"METHOD /path"` in
//!   [`CtlBackend::seen`]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

/// status, health status, health delay: kept across a restart.
type Settings = (Arc<AtomicU16>, Arc<AtomicU16>, Arc<AtomicU64>);

/// What the handler reads and counts; shared with the test.
struct State {
    name: String,
    status: Arc<AtomicU16>,
    health: Arc<AtomicU16>,
    health_delay_ms: Arc<AtomicU64>,
    hits: Arc<AtomicU64>,
    health_hits: Arc<AtomicU64>,
    seen: Arc<Mutex<Vec<String>>>,
}

pub struct CtlBackend {
    pub name: String,
    pub addr: SocketAddr,
    /// The status of every answer but `/healthz`'s.
    pub status: Arc<AtomicU16>,
    /// The status of `/healthz`.
    pub health: Arc<AtomicU16>,
    /// How long `/healthz` takes to answer, in milliseconds.
    pub health_delay_ms: Arc<AtomicU64>,
    /// Requests answered, `/healthz` excluded.
    pub hits: Arc<AtomicU64>,
    /// `/healthz` requests answered.
    pub health_hits: Arc<AtomicU64>,
    seen: Arc<Mutex<Vec<String>>>,
    kill: Option<oneshot::Sender<oneshot::Sender<()>>>,
    /// After `kill`: a bound, non-listening socket that keeps the port
    /// reserved (connects to it are refused) until `restart`.
    holder: Option<TcpSocket>,
}

impl CtlBackend {
    pub async fn start(name: &str) -> CtlBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        Self::serve(
            listener,
            name,
            Default::default(),
            Default::default(),
            Default::default(),
            None,
        )
    }

    fn serve(
        listener: TcpListener,
        name: &str,
        hits: Arc<AtomicU64>,
        health_hits: Arc<AtomicU64>,
        seen: Arc<Mutex<Vec<String>>>,
        settings: Option<Settings>,
    ) -> CtlBackend {
        let addr = listener.local_addr().unwrap();
        let (status, health, health_delay_ms) = settings.unwrap_or_else(|| {
            (
                Arc::new(AtomicU16::new(200)),
                Arc::new(AtomicU16::new(200)),
                Arc::default(),
            )
        });
        let state = Arc::new(State {
            name: name.to_owned(),
            status: status.clone(),
            health: health.clone(),
            health_delay_ms: health_delay_ms.clone(),
            hits: hits.clone(),
            health_hits: health_hits.clone(),
            seen: seen.clone(),
        });
        let (kill, mut killed) = oneshot::channel::<oneshot::Sender<()>>();
        tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    done = &mut killed => {
                        // Refuse new connections first, then close the open
                        // ones (the tasks own the sockets) and wait for it.
                        drop(listener);
                        conns.shutdown().await;
                        if let Ok(done) = done {
                            let _ = done.send(());
                        }
                        return;
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                    r = listener.accept() => {
                        let Ok((stream, _)) = r else { continue };
                        let state = state.clone();
                        conns.spawn(async move {
                            let svc = service_fn(move |req| handle(state.clone(), req));
                            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                }
            }
        });
        CtlBackend {
            name: name.to_owned(),
            addr,
            status,
            health,
            health_delay_ms,
            hits,
            health_hits,
            seen,
            kill: Some(kill),
            holder: None,
        }
    }

    /// Like a crash: new connections are refused and every open connection
    /// is closed (requests in flight on them get no answer). Returns once
    /// all of them are closed. The port stays reserved for [`Self::restart`].
    pub async fn kill(&mut self) {
        if let Some(kill) = self.kill.take() {
            let (done, closed) = oneshot::channel();
            let _ = kill.send(done);
            let _ = closed.await;
            let holder = TcpSocket::new_v4().unwrap();
            holder.set_reuseaddr(true).unwrap();
            // Best effort: without it the port is merely free.
            if holder.bind(self.addr).is_ok() {
                self.holder = Some(holder);
            }
        }
    }

    /// Serves again on the same port, with the same counters and settings.
    pub async fn restart(&mut self) {
        assert!(self.kill.is_none(), "restart of a running backend");
        self.holder = None;
        // The port is ours, but be patient with a loaded machine.
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("rebinding {}: {e}; retrying", self.addr);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot rebind {}: {e}", self.addr),
            }
        };
        let settings = Some((
            self.status.clone(),
            self.health.clone(),
            self.health_delay_ms.clone(),
        ));
        let fresh = Self::serve(
            listener,
            &self.name,
            self.hits.clone(),
            self.health_hits.clone(),
            self.seen.clone(),
            settings,
        );
        self.kill = fresh.into_kill();
    }

    fn into_kill(mut self) -> Option<oneshot::Sender<oneshot::Sender<()>>> {
        self.kill.take()
    }

    pub fn set_status(&self, code: u16) {
        self.status.store(code, Ordering::Relaxed);
    }

    pub fn set_health(&self, code: u16) {
        self.health.store(code, Ordering::Relaxed);
    }

    pub fn set_health_delay(&self, delay: Duration) {
        self.health_delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    pub fn health_hits(&self) -> u64 {
        self.health_hits.load(Ordering::Relaxed)
    }

    /// `"METHOD /path"` of every request but `/healthz`, in order.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for CtlBackend {
    fn drop(&mut self) {
        if let Some(kill) = self.kill.take() {
            let (done, _) = oneshot::channel();
            let _ = kill.send(done);
        }
    }
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let code = if path == "/healthz" {
        state.health_hits.fetch_add(1, Ordering::Relaxed);
        let delay = state.health_delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        state.health.load(Ordering::Relaxed)
    } else {
        state.hits.fetch_add(1, Ordering::Relaxed);
        state
            .seen
            .lock()
            .unwrap()
            .push(format!("{} {path}", req.method()));
        state.status.load(Ordering::Relaxed)
    };
    let len = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().len(),
        Err(_) => 0,
    };
    let mut r = Response::new(Full::new(Bytes::from(state.name.clone())));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert("x-backend", state.name.parse().unwrap());
    r.headers_mut().insert("x-body-len", len.into());
    Ok(r)
}

/// An address where connects are refused: a bound socket that does not
/// listen. Keep the socket alive as long as the address is in use, so no
/// other test can take the port.
pub fn refused_addr() -> (TcpSocket, SocketAddr) {
    let s = TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = s.local_addr().unwrap();
    (s, addr)
}
