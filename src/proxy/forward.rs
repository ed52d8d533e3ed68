//! Sending a request upstream, with retries. A retry happens only when it is
//! safe: nothing reached the backend (connect refused or timed out), or, with
//! `retry_on = ["5xx"]`, an idempotent request got 502/503/504. It goes to
//! another endpoint of the same backend, else (with failover) to another
//! backend of the route, within the backend's retry budget.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::body::{GaugeGuard, RequestBody};
use super::error::{ProxyError, classify};
use super::handler::Worker;
use crate::metrics::RetryReason;
use crate::routing::Route;
use crate::upstream::Endpoint;
use crate::upstream::endpoint::InFlight;

static ROOT: PathAndQuery = PathAndQuery::from_static("/");

/// Where a request went and what came back.
pub struct Sent<'t> {
    pub resp: Response<Incoming>,
    pub backend: usize,
    pub endpoint: &'t Arc<Endpoint>,
    pub in_flight: InFlight,
    /// `cutover_requests_in_flight` of the backend that answered.
    pub gauge: GaugeGuard,
}

/// Why it failed, and on which backend the failure counts.
pub struct Failed {
    pub err: ProxyError,
    pub backend: usize,
}

/// A request head and body that can be sent more than once.
struct Replay {
    method: Method,
    uri: Uri,
    headers: http::HeaderMap,
    body: Option<Bytes>,
    idempotent: bool,
}

pub async fn forward<'t>(
    w: &Worker,
    route: &'t Route,
    mut backend: usize,
    mut endpoint: &'t Arc<Endpoint>,
    parts: Parts,
    body: Incoming,
    started: Instant,
) -> Result<Sent<'t>, Failed> {
    let policy = &route.backends[backend].backend.retry;
    let deadline = tokio::time::Instant::from_std(started) + w.shared.timeouts.request;
    // Keep a copy only when a retry could use it: the head, and a body small
    // enough to buffer (larger bodies stream and are never retried).
    let mut once = None;
    let mut replay = None;
    if policy.retries > 0 {
        let empty = body.is_end_stream();
        let small = body
            .size_hint()
            .upper()
            .is_some_and(|n| n <= policy.buffer_bytes as u64);
        if empty || small {
            let buffered = if empty {
                None
            } else {
                match Limited::new(body, policy.buffer_bytes).collect().await {
                    Ok(b) => Some(b.to_bytes()),
                    Err(_) => {
                        return Err(Failed {
                            err: ProxyError::ClientBody,
                            backend,
                        });
                    }
                }
            };
            replay = Some(Replay {
                idempotent: matches!(
                    parts.method,
                    Method::GET
                        | Method::HEAD
                        | Method::OPTIONS
                        | Method::PUT
                        | Method::DELETE
                        | Method::TRACE
                ),
                method: parts.method,
                uri: parts.uri,
                headers: parts.headers,
                body: buffered,
            });
        } else {
            once = Some((parts, RequestBody::Streaming(body)));
        }
    } else {
        let body = if body.is_end_stream() {
            RequestBody::Empty
        } else {
            RequestBody::Streaming(body)
        };
        once = Some((parts, body));
    }
    route.backends[backend].backend.budget.deposit(started);

    let mut attempt = 0;
    loop {
        let req = match (&replay, once.take()) {
            (_, Some((parts, body))) => Request::from_parts(parts, body),
            (Some(r), None) => r.request(),
            (None, None) => unreachable!("a request without a replay copy is sent once"),
        };
        let req = to_upstream(req, endpoint);
        let this = &route.backends[backend];
        let in_flight = endpoint.start_request();
        let gauge = GaugeGuard::new(this.metrics.in_flight());
        let (next_backend, next) = match tokio::time::timeout_at(deadline, w.client.request(req))
            .await
        {
            Ok(Ok(resp)) => {
                let status = resp.status();
                if status.is_server_error() {
                    this.backend.report_failure(endpoint);
                } else {
                    endpoint.report_success();
                    this.backend.forgive(endpoint);
                }
                let retryable = matches!(
                    status,
                    StatusCode::BAD_GATEWAY
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::GATEWAY_TIMEOUT
                ) && this.backend.retry.on_5xx
                    && replay.as_ref().is_some_and(|r| r.idempotent)
                    && attempt < policy.retries;
                if !retryable {
                    return Ok(Sent {
                        resp,
                        backend,
                        endpoint,
                        in_flight,
                        gauge,
                    });
                }
                match retry_target(route, backend, endpoint) {
                    Some(next) => {
                        tracing::debug!(route = %route.name, backend = %this.backend.name, endpoint = %endpoint.label,
                            status = status.as_u16(), "retrying after a 5xx");
                        this.metrics.retry(RetryReason::Status5xx);
                        next
                    }
                    // No retry possible: the client gets the backend's answer.
                    None => {
                        return Ok(Sent {
                            resp,
                            backend,
                            endpoint,
                            in_flight,
                            gauge,
                        });
                    }
                }
            }
            Ok(Err(e)) => {
                let kind = classify(&e);
                this.backend.report_failure(endpoint);
                this.metrics.upstream_error(kind);
                tracing::warn!(route = %route.name, backend = %this.backend.name, endpoint = %endpoint.label,
                    kind = kind.as_str(), error = %error_chain(&e), "upstream request failed");
                let err = ProxyError::Upstream(kind);
                if !e.is_connect() || replay.is_none() || attempt >= policy.retries {
                    return Err(Failed { err, backend });
                }
                match retry_target(route, backend, endpoint) {
                    Some(next) => {
                        this.metrics.retry(RetryReason::Connect);
                        next
                    }
                    None => return Err(Failed { err, backend }),
                }
            }
            Err(_) => {
                this.backend.report_failure(endpoint);
                this.metrics
                    .upstream_error(crate::metrics::UpstreamErrorKind::Timeout);
                tracing::warn!(route = %route.name, backend = %this.backend.name, endpoint = %endpoint.label,
                    timeout = ?w.shared.timeouts.request, "upstream did not answer in time");
                return Err(Failed {
                    err: ProxyError::RequestTimeout,
                    backend,
                });
            }
        };
        if next_backend != backend {
            route.count_failover(backend, next_backend);
        }
        (backend, endpoint) = (next_backend, next);
        attempt += 1;
    }
}

/// Where a retry goes: another endpoint of the same backend, else (with
/// failover) one of another backend; `None` when there is none or the
/// backend's retry budget is spent.
fn retry_target<'t>(
    route: &'t Route,
    backend: usize,
    failed: &Arc<Endpoint>,
) -> Option<(usize, &'t Arc<Endpoint>)> {
    let this = &route.backends[backend].backend;
    let target = this
        .pick_other(failed)
        .map(|ep| (backend, ep))
        .or_else(|| {
            let other = route
                .failover
                .then(|| route.failover_from(backend))
                .flatten()?;
            Some((other, route.backends[other].backend.pick()?))
        })?;
    if !this.budget.withdraw(Instant::now()) {
        tracing::warn!(route = %route.name, backend = %this.name, "retry budget exhausted; not retrying");
        return None;
    }
    Some(target)
}

impl Replay {
    fn request(&self) -> Request<RequestBody> {
        let body = match &self.body {
            Some(b) => RequestBody::Buffered(Some(b.clone())),
            None => RequestBody::Empty,
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// Points the request at `endpoint`: absolute URI for the pool key, HTTP/1.1.
fn to_upstream(mut req: Request<RequestBody>, endpoint: &Endpoint) -> Request<RequestBody> {
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| ROOT.clone());
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(endpoint.spec.scheme.clone());
    uri.authority = Some(endpoint.spec.authority.clone());
    uri.path_and_query = Some(path);
    *req.uri_mut() = Uri::from_parts(uri).expect("scheme, authority and path are set");
    *req.version_mut() = Version::HTTP_11;
    req
}

/// "a: b: c" from an error and its sources, for one log field.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
