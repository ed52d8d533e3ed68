//! The request path, top to bottom: load the table, check framing, match a
//! route, choose a backend and an endpoint, rewrite, forward, rewrite the
//! response, record. Everything up to "forward" is synchronous.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version, header};
use hyper::body::Incoming;

use super::body::{GaugeGuard, RequestBody, ResponseBody};
use super::error::{ProxyError, classify};
use super::headers;
use super::server::Shared;
use super::upgrade;
use crate::metrics::RouteMetrics;
use crate::upstream::client::UpstreamClient;

/// What a worker thread owns.
pub struct Worker {
    pub shared: Arc<Shared>,
    pub client: UpstreamClient,
}

/// What the request path needs to know about the client connection.
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The client's IP, ready for `X-Forwarded-For`.
    pub client_ip: HeaderValue,
    pub tls: bool,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: bool) -> ConnInfo {
        let ip = peer.ip().to_canonical().to_string();
        ConnInfo {
            peer,
            client_ip: HeaderValue::from_str(&ip).expect("an IP is a valid header value"),
            tls,
        }
    }
}

static ROOT: PathAndQuery = PathAndQuery::from_static("/");

pub async fn handle(w: &Worker, conn: &ConnInfo, mut req: Request<Incoming>) -> Response<ResponseBody> {
    let started = Instant::now();
    // One lock-free load; this request finishes with this table even if a
    // reload publishes another meanwhile.
    let table = w.shared.table.load_full();

    // 1. Framing: never forward a request whose length two headers disagree
    //    on (RFC 9112 §6.1); hyper already rejects bad chunked lists and
    //    differing Content-Lengths with 400.
    if req.headers().contains_key(header::TRANSFER_ENCODING) && req.headers().contains_key(header::CONTENT_LENGTH) {
        return local(&table.unmatched, ProxyError::AmbiguousFraming, started);
    }

    // 2. Match a route by host and path.
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    let Some(route) = table.find(host, req.uri().path()) else {
        return local(&table.unmatched, ProxyError::NoRoute, started);
    };

    // 3. Choose the backend (override, bucket, failover), then an endpoint.
    let choice = route.choose(req.headers(), conn.tls);
    let Some(chosen) = choice.backend.map(|i| &route.backends[i]) else {
        let first = &route.backends[route.split.pick(crate::routing::Bucket::random())];
        tracing::warn!(route = %route.name, "no backend of the route has an available endpoint");
        return local(&first.metrics, ProxyError::NoEndpoint, started);
    };
    let Some(endpoint) = chosen.backend.pick() else {
        return local(&chosen.metrics, ProxyError::NoEndpoint, started);
    };
    let metrics = &chosen.metrics;

    // 4. Rewrite the request for the upstream.
    let upgrade = headers::requested_upgrade(req.headers());
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    if let Some(protocol) = upgrade {
        headers::set_upgrade(&mut parts.headers, protocol);
    }
    if !parts.headers.contains_key(header::HOST) {
        if let Some(authority) = parts.uri.authority() {
            if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                parts.headers.insert(header::HOST, v);
            }
        }
    }
    headers::set_forwarded(&mut parts.headers, &conn.client_ip, conn.tls);
    if parts.version == Version::HTTP_2 {
        headers::join_cookies(&mut parts.headers);
    }
    let path = parts.uri.path_and_query().cloned().unwrap_or_else(|| ROOT.clone());
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(endpoint.spec.scheme.clone());
    uri.authority = Some(endpoint.spec.authority.clone());
    uri.path_and_query = Some(path);
    parts.uri = Uri::from_parts(uri).expect("scheme, authority and path are set");
    parts.version = Version::HTTP_11;
    let body = if body_is_empty(&body) { RequestBody::Empty } else { RequestBody::Streaming(body) };
    let upstream_req = Request::from_parts(parts, body);

    // 5. Forward, bounded by the request timeout until the response head.
    let in_flight = endpoint.start_request();
    let gauge = GaugeGuard::new(metrics.in_flight());
    let timeout = w.shared.timeouts.request;
    let result = tokio::time::timeout(timeout, w.client.request(upstream_req)).await;
    let mut resp = match result {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            let kind = classify(&e);
            tracing::warn!(route = %route.name, backend = %chosen.backend.name, endpoint = %endpoint.label,
                kind = kind.as_str(), error = %error_chain(&e), "upstream request failed");
            return upstream_failure(metrics, ProxyError::Upstream(kind), choice.overridden, started);
        }
        Err(_) => {
            tracing::warn!(route = %route.name, backend = %chosen.backend.name, endpoint = %endpoint.label,
                timeout = ?timeout, "upstream did not answer in time");
            return upstream_failure(metrics, ProxyError::RequestTimeout, choice.overridden, started);
        }
    };

    // 6. Rewrite the response: hop-by-hop out, unless switching protocols.
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching && client_upgrade.is_some() {
        let protocol = resp.headers().get(header::UPGRADE).cloned();
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        headers::strip_hop_by_hop(resp.headers_mut());
        if let (Some(client), Some(p)) = (client_upgrade, protocol) {
            headers::set_upgrade(resp.headers_mut(), p);
            tokio::spawn(upgrade::tunnel(client, upstream_upgrade, route.name.clone()));
        }
    } else {
        headers::strip_hop_by_hop(resp.headers_mut());
    }
    if let Some(cookie) = choice.set_cookie {
        resp.headers_mut().append(header::SET_COOKIE, cookie);
    }
    if route.expose_backend_header {
        resp.headers_mut().insert(&headers::X_CUTOVER_BACKEND, chosen.name_value.clone());
    }

    // 7. Record, and stream the body back.
    metrics.record(resp.status().as_u16(), choice.overridden, started.elapsed().as_secs_f64());
    resp.map(|body| ResponseBody::Upstream {
        body,
        _in_flight: in_flight,
        _gauge: gauge,
    })
}

/// A request body known to be empty is not streamed, so no chunked framing
/// is invented for it upstream.
fn body_is_empty(body: &Incoming) -> bool {
    use http_body::Body;
    body.is_end_stream()
}

fn local(metrics: &RouteMetrics, err: ProxyError, started: Instant) -> Response<ResponseBody> {
    metrics.record(err.status().as_u16(), false, started.elapsed().as_secs_f64());
    err.response()
}

fn upstream_failure(metrics: &RouteMetrics, err: ProxyError, overridden: bool, started: Instant) -> Response<ResponseBody> {
    if let Some(kind) = err.upstream_kind() {
        metrics.upstream_error(kind);
    }
    metrics.record(err.status().as_u16(), overridden, started.elapsed().as_secs_f64());
    err.response()
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
