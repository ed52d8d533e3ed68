//! Endpoints and the backends that group them. An [`Endpoint`]'s state
//! (requests in flight, health) outlives reloads: the [`EndpointRegistry`]
//! hands the same `Arc` to every table that still lists it.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::{Balance, BackendSpec, EndpointSpec};

/// One upstream address and what the proxy knows about it.
#[derive(Debug)]
pub struct Endpoint {
    pub spec: EndpointSpec,
    /// `host:port` as shown in logs, metrics and `/admin/state`.
    pub label: Arc<str>,
    in_flight: AtomicUsize,
    healthy: AtomicBool,
}

impl Endpoint {
    pub fn new(spec: EndpointSpec) -> Endpoint {
        Endpoint {
            label: spec.authority.as_str().into(),
            spec,
            in_flight: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
        }
    }

    pub fn is_available(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request against this endpoint until the guard drops.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// A request in flight to an endpoint; dropping it ends the count.
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A named group of endpoints, e.g. blue.
#[derive(Debug)]
pub struct Backend {
    pub name: Arc<str>,
    pub endpoints: Box<[Arc<Endpoint>]>,
    pub balance: Balance,
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
                    (true, true) if b.in_flight() < a.in_flight() => Some(b),
                    (true, _) => Some(a),
                    (false, true) => Some(b),
                    (false, false) => self.scan(fastrand::usize(..n)),
                }
            }
            (Balance::RoundRobin, _) => {
                let start = ROUND_ROBIN.with(|c| {
                    let v = c.get();
                    c.set(v.wrapping_add(1));
                    v
                });
                self.scan(start)
            }
        }
    }

    /// The first available endpoint from `start`, wrapping around.
    fn scan(&self, start: usize) -> Option<&Arc<Endpoint>> {
        let n = self.endpoints.len();
        (0..n)
            .map(|i| &self.endpoints[(start + i) % n])
            .find(|e| e.is_available())
    }

    pub fn has_available(&self) -> bool {
        self.endpoints.iter().any(|e| e.is_available())
    }
}

/// Keeps one [`Endpoint`] per (backend, address) across reloads.
#[derive(Debug, Default)]
pub struct EndpointRegistry {
    known: Mutex<HashMap<(String, EndpointSpec), Arc<Endpoint>>>,
}

impl EndpointRegistry {
    /// Builds the backends of a new config, reusing the state of endpoints
    /// that were already known and forgetting those no longer listed.
    pub fn backends(&self, specs: &[BackendSpec]) -> Vec<Arc<Backend>> {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = HashMap::new();
        let backends = specs
            .iter()
            .map(|b| {
                let endpoints = b
                    .endpoints
                    .iter()
                    .map(|spec| {
                        let key = (b.name.clone(), spec.clone());
                        let ep = known
                            .remove(&key)
                            .unwrap_or_else(|| Arc::new(Endpoint::new(spec.clone())));
                        next.insert(key, ep.clone());
                        ep
                    })
                    .collect();
                Arc::new(Backend {
                    name: b.name.as_str().into(),
                    endpoints,
                    balance: b.balance,
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
        }
    }

    #[test]
    fn round_robin_skips_unavailable() {
        let reg = EndpointRegistry::default();
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
        let reg = EndpointRegistry::default();
        let b = &reg.backends(&[backend(Balance::P2c)])[0];
        let _busy: Vec<_> = (0..5).map(|_| b.endpoints[0].start_request()).collect();
        let n = (0..300).filter(|_| b.pick().unwrap().label.as_ref() == "127.0.0.1:1").count();
        // Endpoint 1 wins only when both draws land on it: p = 1/9.
        assert!(n < 80, "{n}");
    }

    #[test]
    fn state_survives_reload_only_for_kept_endpoints() {
        let reg = EndpointRegistry::default();
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
