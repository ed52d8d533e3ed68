//! Active health checks: one task per checked endpoint, on the control
//! runtime, jittered so checks do not align. [`HealthCheckers::sync`] runs
//! after every table build: checkers of endpoints that stay keep running,
//! new endpoints get one, removed ones are stopped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::{HeaderValue, Request, StatusCode, Uri, header};
use tokio::runtime::Handle;
use tokio::task::AbortHandle;

use super::body::RequestBody;
use super::connect::{Connected, connect};
use super::{Backend, Endpoint};
use crate::config::{EndpointSpec, HealthSpec};

struct Checker {
    spec: HealthSpec,
    /// The endpoint checked: a reload that changes its TLS settings makes a
    /// new one, which needs a checker of its own.
    endpoint: Arc<Endpoint>,
    task: AbortHandle,
}

pub struct HealthCheckers {
    runtime: Handle,
    running: Mutex<HashMap<(Arc<str>, EndpointSpec), Checker>>,
}

impl HealthCheckers {
    /// Checkers run on `runtime`; each check opens a connection of its own.
    pub fn new(runtime: Handle) -> HealthCheckers {
        HealthCheckers {
            runtime,
            running: Mutex::default(),
        }
    }

    /// Makes the running checkers match `backends` and their health specs.
    pub fn sync(&self, backends: &[Arc<Backend>], specs: &HashMap<Arc<str>, HealthSpec>) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = HashMap::new();
        for b in backends {
            let Some(spec) = specs.get(&b.name) else {
                continue;
            };
            for ep in b.endpoints.iter() {
                let key = (b.name.clone(), ep.spec.clone());
                let checker = match running.remove(&key) {
                    Some(c) if c.spec == *spec && Arc::ptr_eq(&c.endpoint, ep) => c,
                    old => {
                        if let Some(old) = old {
                            old.task.abort();
                        }
                        let task = self.runtime.spawn(check_loop(
                            b.name.clone(),
                            ep.clone(),
                            spec.clone(),
                        ));
                        Checker {
                            spec: spec.clone(),
                            endpoint: ep.clone(),
                            task: task.abort_handle(),
                        }
                    }
                };
                next.insert(key, checker);
            }
        }
        // Whatever is left is no longer checked: stop it, and an endpoint
        // that stays without checks counts as healthy again.
        for ((backend, ep), c) in running.drain() {
            c.task.abort();
            let still_listed = backends
                .iter()
                .filter(|b| b.name == backend)
                .flat_map(|b| b.endpoints.iter())
                .find(|e| e.spec == ep);
            if let Some(e) = still_listed {
                e.set_healthy(true);
                *e.health_detail.lock().unwrap_or_else(|p| p.into_inner()) =
                    "no active check".into();
            }
        }
        *running = next;
    }

    /// How many checker tasks run.
    pub fn count(&self) -> usize {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

async fn check_loop(backend: Arc<str>, ep: Arc<Endpoint>, spec: HealthSpec) {
    let uri: Uri = match spec.path.parse() {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(backend = %backend, endpoint = %ep.label, error = %e, "bad health check URL");
            return;
        }
    };
    // Jitter: start anywhere in the first interval, then +-10% each time.
    tokio::time::sleep(spec.interval.mul_f64(fastrand::f64())).await;
    let (mut ok_streak, mut fail_streak) = (0u32, 0u32);
    loop {
        let verdict = check_once(&uri, &ep, &spec).await;
        let detail = match &verdict {
            Ok(status) => format!("GET {} -> {}", spec.path, status.as_u16()),
            Err(why) => format!("GET {} -> {why}", spec.path),
        };
        let passed = verdict.is_ok_and(|s| expected(&spec, s));
        if passed {
            ok_streak += 1;
            fail_streak = 0;
        } else {
            fail_streak += 1;
            ok_streak = 0;
        }
        let healthy = ep.is_healthy();
        if !healthy && ok_streak >= spec.healthy_threshold {
            ep.set_healthy(true);
            tracing::info!(backend = %backend, endpoint = %ep.label, check = %detail, "endpoint healthy");
        } else if healthy && fail_streak >= spec.unhealthy_threshold {
            ep.set_healthy(false);
            tracing::warn!(backend = %backend, endpoint = %ep.label, check = %detail, "endpoint unhealthy");
        }
        *ep.health_detail.lock().unwrap_or_else(|p| p.into_inner()) = detail;
        tokio::time::sleep(spec.interval.mul_f64(0.9 + 0.2 * fastrand::f64())).await;
    }
}

async fn check_once(uri: &Uri, ep: &Endpoint, spec: &HealthSpec) -> Result<StatusCode, String> {
    let mut req = Request::new(RequestBody::Empty);
    *req.uri_mut() = uri.clone();
    let h = req.headers_mut();
    h.insert(
        header::HOST,
        HeaderValue::from_str(ep.spec.authority.as_str()).map_err(|e| e.to_string())?,
    );
    h.insert(
        header::USER_AGENT,
        HeaderValue::from_static("cutover-health-check"),
    );
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    let check = async {
        let connected = connect(&ep.spec, ep.tls.as_ref(), ep.protocol, spec.timeout, ())
            .await
            .map_err(|e| e.to_string())?;
        let resp = match connected {
            Connected::H1(mut sender) => sender.send_request(req).await,
            Connected::H2(mut conn) => {
                req.headers_mut().remove(header::CONNECTION);
                crate::upstream::h2::to_h2(&mut req, &ep.spec.scheme, &ep.spec.authority);
                conn.sender.send_request(req).await
            }
        };
        Ok(resp.map_err(|e| e.to_string())?.status())
    };
    match tokio::time::timeout(spec.timeout, check).await {
        Ok(verdict) => verdict,
        Err(_) => Err(format!("timed out after {:?}", spec.timeout)),
    }
}

fn expected(spec: &HealthSpec, status: StatusCode) -> bool {
    if spec.expected_status.is_empty() {
        status.is_success()
    } else {
        spec.expected_status.contains(&status.as_u16())
    }
}
