//! Sending a request upstream, with retries. A retry happens only when it is
//! safe: nothing reached the backend (connect refused or timed out), or, with
//! `retry_on = ["5xx"]`, an idempotent request got 502/503/504 or a gRPC
//! call got UNAVAILABLE before any response byte. It goes to another
//! endpoint of the same backend, else (with failover) to another backend of
//! the route, within the backend's retry budget.
//!
//! Apart from those, a request an HTTP/2 backend did not process
//! (REFUSED_STREAM, or above a GOAWAY's last-stream-id) goes out again on
//! the same endpoint: nothing was done, so it is a resend, not a retry.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::body::{BodyError, ClientBody, GaugeGuard, RequestBody};
use super::error::{ProxyError, classify, is_client_body};
use super::handler::Worker;
use super::request_id::as_str as id_str;
use crate::metrics::RetryReason;
use crate::routing::Route;
use crate::upstream::Endpoint;
use crate::upstream::endpoint::{InFlight, now_ms};
use crate::upstream::expect;
use crate::upstream::pool::{Lease, SendError, UpstreamError};
use crate::upstream::replay::{Recording, Rewound};

static ROOT: PathAndQuery = PathAndQuery::from_static("/");

/// Where a request went and what came back.
pub struct Sent<'t> {
    pub resp: Response<Incoming>,
    /// The connection, to go back to its pool when the body has been read.
    pub lease: Lease,
    pub backend: usize,
    pub endpoint: &'t Arc<Endpoint>,
    pub in_flight: InFlight,
    /// `cutover_requests_in_flight` of the backend that answered.
    pub gauge: GaugeGuard,
    /// Attempts after the first.
    pub retries: u32,
}

/// Why it failed, and on which backend (and endpoint, if one was tried)
/// the failure counts.
pub struct Failed<'t> {
    pub err: ProxyError,
    pub backend: usize,
    pub endpoint: Option<&'t Arc<Endpoint>>,
    pub retries: u32,
}

/// A copy of an idempotent request for retries after a 5xx, which consume
/// the original.
struct Replay {
    method: Method,
    uri: Uri,
    headers: http::HeaderMap,
    body: Option<Bytes>,
}

/// Resends of a request an HTTP/2 backend did not process, at most: a
/// backend refusing every stream cannot hold a request forever.
const MAX_RESENDS: u32 = 3;

/// How long a given-up attempt may take to hand its body back
/// ([`Rewound`]): at once when the request was all sent or its stream
/// reset; a stream still uploading after a trailers-only answer is not
/// waited for longer.
const REWIND_WAIT: Duration = Duration::from_secs(1);

/// A request whose body is kept as it is sent (`replay.rs`), to be sent
/// again though hyper no longer has it.
struct Resend {
    head: Replay,
    back: tokio::sync::oneshot::Receiver<Rewound>,
}

/// The request's own context: when it started, its ID (for the event logs
/// of its failures), and a counter of its body's bytes (access log).
pub struct Context<'a> {
    pub started: Instant,
    pub request_id: &'a http::HeaderValue,
    pub bytes_in: Option<Arc<AtomicU64>>,
    /// A copy of the body for a shadow request (`crate::shadow`).
    pub tee: Option<crate::upstream::tee::Tee>,
    /// A gRPC call (`grpc::is_grpc`).
    pub grpc: bool,
}

pub async fn forward<'t>(
    w: &Worker,
    route: &'t Route,
    mut backend: usize,
    mut endpoint: &'t Arc<Endpoint>,
    mut parts: Parts,
    body: Incoming,
    cx: Context<'_>,
) -> Result<Sent<'t>, Failed<'t>> {
    let Context {
        started,
        request_id,
        bytes_in,
        tee,
        grpc,
    } = cx;
    let policy = &route.backends[backend].backend.retry;
    // A gRPC call's own deadline (`grpc-timeout`) when it is shorter.
    let timeout = match grpc.then(|| super::grpc::timeout(&parts.headers)) {
        Some(Some(t)) => t.min(w.shared.timeouts.request),
        _ => w.shared.timeouts.request,
    };
    let mut deadline = tokio::time::Instant::from_std(started) + timeout;
    to_origin_form(&mut parts);
    // The client's body, bounded by `body_idle`; while the upstream is still
    // reading it, the request timeout waits (an upload takes what it takes).
    let body_idle = w.shared.timeouts.body_idle;
    let mut body = ClientBody::new(body, body_idle);
    if let Some(counter) = bytes_in {
        body.count_into(counter);
    }
    if let Some(tee) = tee {
        body.tee_into(tee);
    }
    let uploading = (!body.is_end_stream()).then(|| body.polled());
    // A request that never reached a backend comes back whole from the pool,
    // so connect failures retry without a copy. Only 5xx retries need one:
    // the head, and a body small enough to buffer (larger ones stream and
    // are not retried after a 5xx).
    let mut replay = None;
    // `Expect: 100-continue`: the body waits for the backend's word
    // (`expect.rs`), so it is never buffered for a replay.
    // HTTP/2 backends send no `100 Continue` that hyper's client would
    // report, so their body is never held.
    let expects = !body.is_end_stream()
        && endpoint.protocol == crate::config::Protocol::Http1
        && expect::expects_continue(&parts.headers);
    let mut held = None;
    let multiplexed = endpoint.protocol != crate::config::Protocol::Http1;
    let mut resend: Option<Resend> = None;
    let body = if expects {
        held = Some(body);
        RequestBody::Empty
    } else if policy.retries > 0 && policy.on_5xx && idempotent(&parts.method) {
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
                    Err(e) => {
                        let err = if BodyError::is_stalled(&*e) {
                            ProxyError::ClientBodyTimeout
                        } else {
                            ProxyError::ClientBody
                        };
                        return Err(Failed {
                            err,
                            backend,
                            endpoint: None,
                            retries: 0,
                        });
                    }
                }
            };
            let copy = Replay {
                method: parts.method.clone(),
                uri: parts.uri.clone(),
                headers: parts.headers.clone(),
                body: buffered,
            };
            let body = copy.body();
            replay = Some(copy);
            body
        } else {
            RequestBody::Streaming(Box::new(body))
        }
    } else if !multiplexed {
        if body.is_end_stream() {
            RequestBody::Empty
        } else {
            RequestBody::Streaming(Box::new(body))
        }
    } else {
        // HTTP/2: hyper loses a request whose stream the backend refused,
        // so keep it (its body up to `retry_buffer_bytes`, as it is sent).
        let (recording, back) = Recording::new(body, policy.buffer_bytes);
        resend = Some(Resend {
            head: Replay {
                method: parts.method.clone(),
                uri: parts.uri.clone(),
                headers: parts.headers.clone(),
                body: None,
            },
            back,
        });
        RequestBody::Replayable(Box::new(recording))
    };
    route.backends[backend].backend.budget.deposit(started);

    let mut req = Request::from_parts(parts, body);
    let gate = held.map(|body| expect::hold(&mut req, body));
    let mut attempt = 0;
    let mut resends = 0;
    loop {
        let this = &route.backends[backend];
        let in_flight = endpoint.start_request();
        let gauge = this.metrics.in_flight();
        let send = w.client.send(endpoint, req, this.backend.max_connections);
        tokio::pin!(send);
        let sent = loop {
            match tokio::time::timeout_at(deadline, &mut send).await {
                Err(elapsed) => {
                    // Still uploading, and the upstream asked for bytes
                    // within `body_idle`: wait until it has been silent
                    // that long, and a little more, so that a client that
                    // stalled gets its 408 from the body first.
                    let polled = uploading.as_ref().map_or(0, |u| u.load(Ordering::Relaxed));
                    let since = Duration::from_millis(now_ms().saturating_sub(polled));
                    if polled == 0 || since >= body_idle {
                        break Err(elapsed);
                    }
                    deadline = tokio::time::Instant::now() + (body_idle - since) + body_idle / 4;
                }
                sent => break sent,
            }
        };
        let (next_backend, next) = match sent {
            Ok(Ok((resp, mut lease))) => {
                if let Some(gate) = &gate
                    && !gate.on_response()
                {
                    lease.forbid_reuse();
                }
                // Answered before the client's body was all sent: the
                // backend may not read the rest, and would then take it for
                // the next request. The body still goes on (a backend may
                // answer while it reads), but the connection closes after
                // it (nginx's `request_body_sent` rule).
                if uploading
                    .as_ref()
                    .is_some_and(|u| u.load(Ordering::Relaxed) != 0)
                {
                    lease.forbid_reuse();
                }
                let status = resp.status();
                // Gateway failures count by default (Envoy's
                // consecutive_gateway_failure); an app's own 5xx only with
                // `outlier.on = ["5xx"]`, else one URL that answers 500
                // could eject every endpoint.
                let gateway = matches!(
                    status,
                    StatusCode::BAD_GATEWAY
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::GATEWAY_TIMEOUT
                );
                if gateway || (status.is_server_error() && this.backend.outlier.on_5xx) {
                    this.backend.report_failure(endpoint);
                } else if grpc && status == StatusCode::OK {
                    // Judged by its grpc-status (`grpc::Watch`).
                } else {
                    endpoint.report_success();
                    this.backend.forgive(endpoint);
                }
                let retry = matches!(
                    status,
                    StatusCode::BAD_GATEWAY
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::GATEWAY_TIMEOUT
                ) && attempt < policy.retries;
                // gRPC: UNAVAILABLE before any response byte (trailers-only)
                // may be retried, like a 503 (gRPC's retry design, A6).
                if grpc
                    && policy.on_5xx
                    && attempt < policy.retries
                    && super::grpc::unavailable_at_once(&resp)
                    && let Some(r) = resend.take()
                    && let Some(next) = retry_target(route, backend, endpoint)
                    && let Some((again, r)) = r.rewind(deadline).await
                {
                    if this.backend.grpc_errors.contains(super::grpc::UNAVAILABLE) {
                        this.backend.report_failure(endpoint);
                    }
                    tracing::debug!(route = %route.name, backend = %this.backend.name, endpoint = %endpoint.label,
                        request_id = id_str(request_id), "retrying a gRPC call answered UNAVAILABLE");
                    this.metrics.retry(RetryReason::Status5xx);
                    drop((resp, lease));
                    req = again;
                    resend = Some(r);
                    if next.0 != backend {
                        route.count_failover(backend, next.0);
                    }
                    (backend, endpoint) = next;
                    attempt += 1;
                    continue;
                }
                let target = match &replay {
                    Some(r) if retry => retry_target(route, backend, endpoint).map(|t| (t, r)),
                    _ => None,
                };
                // No retry possible: the client gets the backend's answer.
                let Some((next, copy)) = target else {
                    return Ok(Sent {
                        resp,
                        lease,
                        backend,
                        endpoint,
                        in_flight,
                        gauge,
                        retries: attempt,
                    });
                };
                tracing::debug!(route = %route.name, backend = %this.backend.name, endpoint = %endpoint.label,
                    status = status.as_u16(), request_id = id_str(request_id), "retrying after a 5xx");
                this.metrics.retry(RetryReason::Status5xx);
                req = copy.request();
                next
            }
            Ok(Err(SendError {
                error: UpstreamError::PoolFull,
                ..
            })) => {
                // The proxy's own limit: not the endpoint's failure.
                if let Some(suppressed) = endpoint.warn_gate.allow() {
                    tracing::warn!(route = %route.name, backend = %this.backend.name, endpoint = %endpoint.label,
                        max_connections = this.backend.max_connections, suppressed, request_id = id_str(request_id),
                        "upstream connection limit reached");
                }
                return Err(Failed {
                    err: ProxyError::PoolFull,
                    backend,
                    endpoint: Some(endpoint),
                    retries: attempt,
                });
            }
            Ok(Err(SendError { error, .. })) if BodyError::is_stalled(&error) => {
                tracing::debug!(route = %route.name, timeout = ?w.shared.timeouts.body_idle,
                    request_id = id_str(request_id), "the client stopped sending its body");
                return Err(Failed {
                    err: ProxyError::ClientBodyTimeout,
                    backend,
                    endpoint: Some(endpoint),
                    retries: attempt,
                });
            }
            Ok(Err(SendError {
                error: error @ UpstreamError::Http(_),
                unsent: None,
            })) if resends < MAX_RESENDS
                && endpoint.protocol != crate::config::Protocol::Http1
                && matches!(&error, UpstreamError::Http(e) if crate::upstream::h2::unprocessed(e))
                && resend.is_some() =>
            {
                // Not processed (RFC 9113 §8.7): the same request again, on
                // the same endpoint; the pool skips a connection that is
                // going away. Not the endpoint's failure.
                let again = match resend.take() {
                    Some(r) => r.rewind(deadline).await,
                    None => None,
                };
                let Some((again, r)) = again else {
                    let kind = classify(&error);
                    this.metrics.upstream_error(kind);
                    return Err(Failed {
                        err: ProxyError::Upstream(kind),
                        backend,
                        endpoint: Some(endpoint),
                        retries: attempt,
                    });
                };
                tracing::debug!(route = %route.name, backend = %this.backend.name, endpoint = %endpoint.label,
                    error = %error_chain(&error), request_id = id_str(request_id), "resending a request the backend did not process");
                this.metrics.retry(RetryReason::Connect);
                req = again;
                resend = Some(r);
                resends += 1;
                continue;
            }
            Ok(Err(SendError { error, unsent })) => {
                if is_client_body(&error) {
                    tracing::debug!(route = %route.name, error = %error_chain(&error),
                        request_id = id_str(request_id), "client request body failed");
                    return Err(Failed {
                        err: ProxyError::ClientBody,
                        backend,
                        endpoint: Some(endpoint),
                        retries: attempt,
                    });
                }
                let kind = classify(&error);
                if !error.is_local() {
                    this.backend.report_failure(endpoint);
                }
                this.metrics.upstream_error(kind);
                if let Some(suppressed) = endpoint.warn_gate.allow() {
                    tracing::warn!(route = %route.name, backend = %this.backend.name, endpoint = %endpoint.label,
                        kind = kind.as_str(), error = %error_chain(&error), suppressed, request_id = id_str(request_id),
                        "upstream request failed");
                }
                let err = ProxyError::Upstream(kind);
                let Some(unsent) = unsent.filter(|_| attempt < policy.retries) else {
                    return Err(Failed {
                        err,
                        backend,
                        endpoint: Some(endpoint),
                        retries: attempt,
                    });
                };
                let Some(next) = retry_target(route, backend, endpoint) else {
                    return Err(Failed {
                        err,
                        backend,
                        endpoint: Some(endpoint),
                        retries: attempt,
                    });
                };
                this.metrics.retry(RetryReason::Connect);
                req = unsent;
                next
            }
            Err(_) => {
                this.backend.report_failure(endpoint);
                this.metrics
                    .upstream_error(crate::metrics::UpstreamErrorKind::Timeout);
                if let Some(suppressed) = endpoint.warn_gate.allow() {
                    tracing::warn!(route = %route.name, backend = %this.backend.name, endpoint = %endpoint.label,
                        timeout = ?w.shared.timeouts.request, suppressed, request_id = id_str(request_id), "upstream did not answer in time");
                }
                return Err(Failed {
                    err: ProxyError::RequestTimeout,
                    backend,
                    endpoint: Some(endpoint),
                    retries: attempt,
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

fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// HTTP/1.1 to the endpoint, with the path and query only (an HTTP/2 or
/// absolute-form request carries scheme and authority in its URI).
fn to_origin_form(parts: &mut Parts) {
    parts.version = Version::HTTP_11;
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| ROOT.clone());
        parts.uri = Uri::from(path);
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

impl Resend {
    /// The request again, once the given-up attempt handed its body back;
    /// `None` if it could not be kept (larger than `retry_buffer_bytes`).
    async fn rewind(
        self,
        deadline: tokio::time::Instant,
    ) -> Option<(Request<RequestBody>, Resend)> {
        let until = deadline.min(tokio::time::Instant::now() + REWIND_WAIT);
        let rewound = tokio::time::timeout_at(until, self.back).await.ok()?.ok()?;
        let (recording, back) = rewound.replay();
        let mut req = Request::new(RequestBody::Replayable(Box::new(recording)));
        *req.method_mut() = self.head.method.clone();
        *req.uri_mut() = self.head.uri.clone();
        *req.headers_mut() = self.head.headers.clone();
        Some((
            req,
            Resend {
                head: self.head,
                back,
            },
        ))
    }
}

impl Replay {
    fn body(&self) -> RequestBody {
        match &self.body {
            Some(b) => RequestBody::Buffered(Some(b.clone())),
            None => RequestBody::Empty,
        }
    }

    fn request(&self) -> Request<RequestBody> {
        let mut req = Request::new(self.body());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }
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
