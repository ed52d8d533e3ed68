//! Active health checks: one task per checked endpoint, on the control
//! runtime, jittered so checks do not align. A check is a `GET` of the
//! health path (healthy: 2xx or `expected_status`), or with `grpc = true`
//! a call of `grpc.health.v1.Health/Check` (healthy: SERVING). [`HealthCheckers::sync`] runs
//! after every table build: checkers of endpoints that stay keep running,
//! new endpoints get one, removed ones are stopped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tokio::runtime::Handle;
use tokio::task::AbortHandle;

use super::body::RequestBody;
use super::connect::{Connected, connect};
use super::grpc_health;
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
        let (passed, detail) = match &spec.grpc {
            None => match check_once(&uri, &ep, &spec, http_request(&ep)).await {
                Ok(resp) => (
                    expected(&spec, resp.status()),
                    format!("GET {} -> {}", spec.path, resp.status().as_u16()),
                ),
                Err(why) => (false, format!("GET {} -> {why}", spec.path)),
            },
            Some(service) => {
                let verdict = match check_once(&uri, &ep, &spec, grpc_request(service)).await {
                    Ok(resp) => grpc_verdict(resp, spec.timeout).await,
                    Err(why) => Err(why),
                };
                let what = &spec.path[1..];
                match verdict {
                    Ok(status) => (
                        status == grpc_health::SERVING,
                        format!(
                            "{what}({service:?}) -> {}",
                            grpc_health::NAMES
                                .get(status as usize)
                                .copied()
                                .unwrap_or("?")
                        ),
                    ),
                    Err(why) => (false, format!("{what}({service:?}) -> {why}")),
                }
            }
        };
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

fn http_request(ep: &Endpoint) -> Request<RequestBody> {
    let mut req = Request::new(RequestBody::Empty);
    let h = req.headers_mut();
    if let Ok(host) = HeaderValue::from_str(ep.spec.authority.as_str()) {
        h.insert(header::HOST, host);
    }
    h.insert(
        header::USER_AGENT,
        HeaderValue::from_static("cutover-health-check"),
    );
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    req
}

/// `POST /grpc.health.v1.Health/Check` with `HealthCheckRequest { service }`.
fn grpc_request(service: &str) -> Request<RequestBody> {
    let mut req = Request::new(RequestBody::Buffered(Some(grpc_health::request(service))));
    *req.method_mut() = Method::POST;
    let h = req.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(header::TE, HeaderValue::from_static("trailers"));
    h.insert(
        header::USER_AGENT,
        HeaderValue::from_static("cutover-health-check"),
    );
    req
}

/// The `HealthCheckResponse.status` of an answer, if the call succeeded
/// (`grpc-status: 0`, in the headers or the trailers). The body is read up
/// to 4 KiB within the check's timeout.
async fn grpc_verdict(resp: Response<Incoming>, timeout: Duration) -> Result<u64, String> {
    if resp.status() != StatusCode::OK {
        return Err(format!("HTTP {}", resp.status().as_u16()));
    }
    let headers = resp.headers().clone();
    let read = Limited::new(resp.into_body(), 4096).collect();
    let body = match tokio::time::timeout(timeout, read).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err(format!("timed out after {timeout:?}")),
    };
    let code = body
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| headers.get("grpc-status"))
        .map(|v| v.as_bytes().to_vec());
    match code.as_deref() {
        Some(b"0") => grpc_health::status(&body.to_bytes()).map_err(str::to_owned),
        Some(other) => Err(format!("grpc-status {}", String::from_utf8_lossy(other))),
        None => Err("no grpc-status".to_owned()),
    }
}

/// Sends one check on a connection of its own; the response head within
/// the check's timeout.
async fn check_once(
    uri: &Uri,
    ep: &Endpoint,
    spec: &HealthSpec,
    mut req: Request<RequestBody>,
) -> Result<Response<Incoming>, String> {
    *req.uri_mut() = uri.clone();
    let check = async {
        let connected = connect(&ep.spec, ep.tls.as_ref(), ep.protocol, spec.timeout, ())
            .await
            .map_err(|e| e.to_string())?;
        let resp = match connected {
            Connected::H1(mut sender) => sender.send_request(req).await,
            Connected::H2(mut conn) => {
                req.headers_mut().remove(header::CONNECTION);
                if !req.headers().contains_key(header::HOST)
                    && let Ok(host) = HeaderValue::from_str(ep.spec.authority.as_str())
                {
                    req.headers_mut().insert(header::HOST, host);
                }
                crate::upstream::h2::to_h2(&mut req, &ep.spec.scheme, &ep.spec.authority);
                conn.sender.send_request(req).await
            }
        };
        resp.map_err(|e| e.to_string())
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
