//! Endpoints and the backends that group them. An [`Endpoint`]'s state
//! (requests in flight, health, ejection) outlives reloads: the
//! [`EndpointRegistry`] hands the same `Arc` to every table that still lists
//! it.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus::IntCounterVec;

use super::budget::RetryBudget;
use super::pool::Pools;
use crate::config::{
    BackendSpec, Balance, EndpointSpec, OutlierSpec, Protocol, RetrySpec, UpstreamTls,
};
use crate::stripe::Padded;

/// Milliseconds on a process-wide monotonic clock; never 0.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// One upstream address and what the proxy knows about it.
#[derive(Debug)]
pub struct Endpoint {
    pub spec: EndpointSpec,
    /// `host:port` as shown in logs, metrics and `/admin/state`.
    pub label: Arc<str>,
    /// Requests in flight, per thread stripe (`stripe`): starting and
    /// ending a request writes only the worker's own cache lines (the
    /// count, and the reference count of its own `Arc` that the request's
    /// [`InFlight`] holds).
    in_flight: Box<[Arc<Padded<AtomicIsize>>]>,
    /// The active health check's verdict (true without checks).
    healthy: AtomicBool,
    /// Passive ejection: unavailable until this `now_ms()`; 0 when not.
    ejected_until: AtomicU64,
    ejections: AtomicU32,
    consecutive_failures: AtomicU32,
    /// Rate limit of this endpoint's failure WARN lines.
    pub warn_gate: LogGate,
    /// Rate limit of "max_ejected_percent forbids ejecting it".
    eject_gate: LogGate,
    /// Why the health check last said what it said, for `/admin/state`.
    pub health_detail: Mutex<String>,
    /// Idle keep-alive connections, a list per worker thread.
    pub pools: Pools,
    /// How an `https://` endpoint is verified; fixed for the endpoint's
    /// life: a change of TLS settings makes a new endpoint (and pool).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// HTTP/1.1 or HTTP/2 (`backends.NAME.protocol`); fixed for the
    /// endpoint's life like `tls`.
    pub protocol: Protocol,
}

impl Endpoint {
    pub fn new(spec: EndpointSpec, workers: usize) -> Endpoint {
        Endpoint {
            pools: Pools::new(workers),
            label: spec.authority.as_str().into(),
            spec,
            in_flight: (0..crate::stripe::STRIPES)
                .map(|_| Arc::default())
                .collect(),
            healthy: AtomicBool::new(true),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            warn_gate: LogGate::default(),
            eject_gate: LogGate::default(),
            health_detail: Mutex::new("no active check".into()),
            tls: None,
            protocol: Protocol::Http1,
        }
    }

    pub fn is_available(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && !self.is_ejected()
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && now_ms() < until
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    /// Requests in flight from every worker (`/admin/state`).
    pub fn in_flight(&self) -> usize {
        let sum: isize = self
            .in_flight
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum();
        sum.max(0) as usize
    }

    /// Requests in flight from this worker: what P2C compares, so that
    /// choosing reads no line another worker writes (each worker balances
    /// its own share of the load, as nginx's workers do without a zone).
    pub fn local_in_flight(&self) -> usize {
        let s = crate::stripe::current() % self.in_flight.len();
        self.in_flight[s].0.load(Ordering::Relaxed).max(0) as usize
    }

    /// Counts a request against this endpoint until the guard drops.
    pub fn start_request(&self) -> InFlight {
        let count = &self.in_flight[crate::stripe::current() % self.in_flight.len()];
        count.0.fetch_add(1, Ordering::Relaxed);
        InFlight(count.clone())
    }

    /// A response below 500: the failure streak ends.
    pub fn report_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }
}

/// At most one log line per second for a repeated event, counting the
/// ones left out: a failing endpoint must not flood the log with a line per
/// request. Touched only on failure paths.
#[derive(Debug, Default)]
pub struct LogGate {
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl LogGate {
    const EVERY_MS: u64 = 1000;

    pub const fn new() -> LogGate {
        LogGate {
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)`: log now, saying `n` lines were suppressed since the last
    /// one; `None`: suppressed (and counted).
    pub fn allow(&self) -> Option<u64> {
        let now = now_ms();
        let last = self.last_ms.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= Self::EVERY_MS)
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// A request in flight to an endpoint, as the stripe it counts in;
/// dropping it ends the count (on that stripe, whichever thread drops it).
#[derive(Debug)]
pub struct InFlight(Arc<Padded<AtomicIsize>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A named group of endpoints, e.g. blue, with its failure policies.
#[derive(Debug)]
pub struct Backend {
    pub name: Arc<str>,
    pub endpoints: Box<[Arc<Endpoint>]>,
    pub balance: Balance,
    pub outlier: OutlierSpec,
    pub retry: RetrySpec,
    /// gRPC statuses that count as errors (`[grpc] error_codes`).
    pub grpc_errors: crate::config::GrpcCodeSet,
    /// Upstream connections per endpoint and worker (`pool.rs`).
    pub max_connections: usize,
    /// Shared by every table that has this backend, so reloads keep it.
    pub budget: Arc<RetryBudget>,
    ejections: IntCounterVec,
    /// Held while deciding an ejection (a rare path), so two workers cannot
    /// both take the last ejection `max_ejected_percent` allows.
    ejecting: Mutex<()>,
}

thread_local! {
    /// Round-robin position; per thread, so workers share no counter.
    static ROUND_ROBIN: Cell<usize> = Cell::new(fastrand::usize(..1024));
}

impl Backend {
    /// An available endpoint, or `None` when every one is down.
    pub fn pick(&self) -> Option<&Arc<Endpoint>> {
        let eps = &self.endpoints;
        match (self.balance, eps.len()) {
            (_, 0) => None,
            (_, 1) => eps.first().filter(|e| e.is_available()),
            (Balance::P2c, n) => {
                let a = &eps[fastrand::usize(..n)];
                let b = &eps[fastrand::usize(..n)];
                match (a.is_available(), b.is_available()) {
                    (true, true) if b.local_in_flight() < a.local_in_flight() => Some(b),
                    (true, _) => Some(a),
                    (false, true) => Some(b),
                    (false, false) => self.scan(fastrand::usize(..n), None),
                }
            }
            (Balance::RoundRobin, _) => {
                let start = ROUND_ROBIN.with(|c| {
                    let v = c.get();
                    c.set(v.wrapping_add(1));
                    v
                });
                // The n-th available endpoint, so an unavailable one's
                // share is spread over all the others, not its neighbour.
                let up = eps.iter().filter(|e| e.is_available()).count();
                if up == 0 {
                    return None;
                }
                eps.iter()
                    .filter(|e| e.is_available())
                    .nth(start % up)
                    .or_else(|| self.scan(start, None))
            }
        }
    }

    /// An available endpoint other than `not`, for a retry.
    pub fn pick_other(&self, not: &Arc<Endpoint>) -> Option<&Arc<Endpoint>> {
        self.scan(fastrand::usize(..self.endpoints.len().max(1)), Some(not))
    }

    /// The first available endpoint from `start`, wrapping around.
    fn scan(&self, start: usize, skip: Option<&Arc<Endpoint>>) -> Option<&Arc<Endpoint>> {
        let n = self.endpoints.len();
        (0..n)
            .map(|i| &self.endpoints[(start + i) % n])
            .find(|e| e.is_available() && !skip.is_some_and(|s| Arc::ptr_eq(s, e)))
    }

    pub fn has_available(&self) -> bool {
        self.endpoints.iter().any(|e| e.is_available())
    }

    /// A gateway failure of `ep` (connect failure, timeout, reset, 502, 503,
    /// 504; any 5xx with `on = ["5xx"]`): after
    /// `consecutive_failures` in a row it is ejected for a time that doubles
    /// with each ejection, unless that would eject more than
    /// `max_ejected_percent` of the backend.
    pub fn report_failure(&self, ep: &Endpoint) {
        let o = &self.outlier;
        if o.consecutive_failures == 0 {
            return;
        }
        let streak = ep.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if streak < o.consecutive_failures || ep.is_ejected() {
            return;
        }
        let _deciding = self.ejecting.lock().unwrap_or_else(|p| p.into_inner());
        if ep.is_ejected() {
            return;
        }
        let ejected = self.endpoints.iter().filter(|e| e.is_ejected()).count();
        if (ejected + 1) * 100 > o.max_ejected_percent as usize * self.endpoints.len() {
            if let Some(suppressed) = ep.eject_gate.allow() {
                tracing::warn!(backend = %self.name, endpoint = %ep.label, ejected, suppressed,
                    "endpoint keeps failing but max_ejected_percent forbids ejecting it");
            }
            return;
        }
        let n = ep.ejections.fetch_add(1, Ordering::Relaxed).min(16);
        let time = o
            .base_ejection_time
            .saturating_mul(1 << n)
            .min(o.max_ejection_time);
        ep.ejected_until
            .store(now_ms() + time.as_millis() as u64, Ordering::Relaxed);
        ep.consecutive_failures.store(0, Ordering::Relaxed);
        self.ejections
            .with_label_values(&[&self.name, &ep.label])
            .inc();
        tracing::warn!(backend = %self.name, endpoint = %ep.label, failures = streak,
            ejected_for = ?time, "endpoint ejected");
    }

    /// Forgets earlier ejections of an endpoint that has been back for a
    /// while, so its next ejection starts at the base time again.
    pub fn forgive(&self, ep: &Endpoint) {
        let until = ep.ejected_until.load(Ordering::Relaxed);
        let settled = until + self.outlier.max_ejection_time.as_millis() as u64;
        if until != 0 && now_ms() > settled {
            ep.ejections.store(0, Ordering::Relaxed);
            ep.ejected_until.store(0, Ordering::Relaxed);
        }
    }

    /// Milliseconds left in an endpoint's ejection, for `/admin/state`.
    pub fn ejected_for(&self, ep: &Endpoint) -> Option<Duration> {
        let until = ep.ejected_until.load(Ordering::Relaxed);
        let now = now_ms();
        (until > now).then(|| Duration::from_millis(until - now))
    }
}

/// Backend, address, TLS settings, protocol.
type EndpointKey = (String, EndpointSpec, UpstreamTls, Protocol);

/// Keeps one [`Endpoint`] per (backend, address) across reloads.
#[derive(Debug)]
pub struct EndpointRegistry {
    /// Keyed by TLS settings too: connections verified under other settings
    /// (another CA, verification turned on) are never reused.
    /// And by protocol: a connection speaks one.
    known: Mutex<HashMap<EndpointKey, Arc<Endpoint>>>,
    /// The client config of each TLS setting in use, set before each build.
    tls: Mutex<HashMap<UpstreamTls, Arc<rustls::ClientConfig>>>,
    budgets: Mutex<HashMap<String, Arc<RetryBudget>>>,
    ejections: IntCounterVec,
    /// Worker threads, each with its own pool per endpoint.
    workers: usize,
}

impl EndpointRegistry {
    pub fn new(ejections: IntCounterVec, workers: usize) -> EndpointRegistry {
        EndpointRegistry {
            workers,
            known: Mutex::default(),
            tls: Mutex::default(),
            budgets: Mutex::default(),
            ejections,
        }
    }

    /// The client configs the next [`Self::backends`] gives new `https://`
    /// endpoints, by the settings they were built from.
    pub fn set_tls_configs(&self, configs: HashMap<UpstreamTls, Arc<rustls::ClientConfig>>) {
        *self.tls.lock().unwrap_or_else(|p| p.into_inner()) = configs;
    }

    /// Builds the backends of a new config, reusing the state of endpoints
    /// that were already known and forgetting those no longer listed.
    pub fn backends(&self, specs: &[BackendSpec]) -> Vec<Arc<Backend>> {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = HashMap::new();
        let mut budgets = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
        let tls = self.tls.lock().unwrap_or_else(|p| p.into_inner());
        budgets.retain(|name, _| specs.iter().any(|b| &b.name == name));
        let backends = specs
            .iter()
            .map(|b| {
                let endpoints = b
                    .endpoints
                    .iter()
                    .map(|spec| {
                        let key = (
                            b.name.clone(),
                            spec.clone(),
                            b.upstream_tls.clone(),
                            b.protocol,
                        );
                        let ep = known.remove(&key).unwrap_or_else(|| {
                            let mut ep = Endpoint::new(spec.clone(), self.workers);
                            ep.protocol = b.protocol;
                            if spec.scheme == http::uri::Scheme::HTTPS {
                                ep.tls = tls
                                    .get(&b.upstream_tls)
                                    .map(|c| super::connect::with_alpn(c, b.protocol));
                            }
                            ep.set_healthy(!b.health.as_ref().is_some_and(|h| h.start_unhealthy));
                            Arc::new(ep)
                        });
                        next.insert(key, ep.clone());
                        ep
                    })
                    .collect();
                Arc::new(Backend {
                    name: b.name.as_str().into(),
                    endpoints,
                    balance: b.balance,
                    outlier: b.outlier.clone(),
                    retry: b.retry.clone(),
                    grpc_errors: b.grpc_errors,
                    max_connections: b.max_connections,
                    budget: budgets
                        .entry(b.name.clone())
                        .or_insert_with(|| Arc::new(RetryBudget::new(0.2, 1)))
                        .clone(),
                    ejections: self.ejections.clone(),
                    ejecting: Mutex::new(()),
                })
            })
            .collect();
        *known = next;
        backends
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EndpointSpec;

    fn spec(port: u16) -> EndpointSpec {
        crate::config::parse_endpoint(&format!("127.0.0.1:{port}")).unwrap()
    }

    fn backend(balance: Balance) -> BackendSpec {
        BackendSpec {
            name: "blue".into(),
            endpoints: vec![spec(1), spec(2), spec(3)],
            balance,
            health: None,
            outlier: OutlierSpec {
                consecutive_failures: 2,
                base_ejection_time: Duration::from_secs(10),
                max_ejection_time: Duration::from_secs(300),
                max_ejected_percent: 50,
                on_5xx: false,
            },
            retry: RetrySpec {
                retries: 2,
                on_5xx: false,
                buffer_bytes: 0,
            },
            upstream_tls: Default::default(),
            max_connections: 1024,
            protocol: Default::default(),
            grpc_errors: Default::default(),
        }
    }

    fn registry() -> EndpointRegistry {
        EndpointRegistry::new(
            IntCounterVec::new(prometheus::Opts::new("e", "e"), &["backend", "endpoint"]).unwrap(),
            1,
        )
    }

    #[test]
    fn round_robin_skips_unavailable() {
        let reg = registry();
        let b = &reg.backends(&[backend(Balance::RoundRobin)])[0];
        b.endpoints[1].set_healthy(false);
        let picks: Vec<_> = (0..6).map(|_| b.pick().unwrap().label.clone()).collect();
        assert!(picks.iter().all(|l| &**l != "127.0.0.1:2"));
        assert!(picks.iter().any(|l| &**l == "127.0.0.1:1"));
        assert!(picks.iter().any(|l| &**l == "127.0.0.1:3"));
        for e in b.endpoints.iter() {
            e.set_healthy(false);
        }
        assert!(b.pick().is_none());
    }

    #[test]
    fn p2c_prefers_fewer_in_flight() {
        let reg = registry();
        let b = &reg.backends(&[backend(Balance::P2c)])[0];
        let _busy: Vec<_> = (0..5).map(|_| b.endpoints[0].start_request()).collect();
        let n = (0..300)
            .filter(|_| b.pick().unwrap().label.as_ref() == "127.0.0.1:1")
            .count();
        // Endpoint 1 wins only when both draws land on it: p = 1/9, mean 33,
        // sd 5.4; 80 is over 8 sd away.
        assert!(n < 80, "{n}");
    }

    #[test]
    fn ejection_respects_max_percent() {
        let reg = registry();
        let b = &reg.backends(&[backend(Balance::RoundRobin)])[0];
        for ep in b.endpoints.iter() {
            b.report_failure(ep);
            b.report_failure(ep);
        }
        // 3 endpoints at 50%: only one may be ejected.
        assert_eq!(b.endpoints.iter().filter(|e| e.is_ejected()).count(), 1);
        assert!(b.has_available());
    }

    #[test]
    fn state_survives_reload_only_for_kept_endpoints() {
        let reg = registry();
        let first = reg.backends(&[backend(Balance::RoundRobin)]);
        first[0].endpoints[0].set_healthy(false);
        let mut spec2 = backend(Balance::RoundRobin);
        spec2.endpoints = vec![spec(1), spec(9)];
        let second = reg.backends(&[spec2]);
        assert!(Arc::ptr_eq(&first[0].endpoints[0], &second[0].endpoints[0]));
        assert!(!second[0].endpoints[0].is_available());
        assert!(second[0].endpoints[1].is_available());
    }
}
