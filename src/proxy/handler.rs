//! The request path, top to bottom: load the table, check framing, match a
//! route, choose a backend and an endpoint, rewrite, forward (with retries,
//! `forward.rs`), rewrite the response, record. Everything before "forward"
//! is synchronous.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Request, Response, StatusCode, Version, header};
use hyper::body::Incoming;

use super::body::ResponseBody;
use super::error::ProxyError;
use super::forward::{Failed, Sent, forward};
use super::headers;
use super::server::Shared;
use super::upgrade;
use crate::metrics::RouteMetrics;
use crate::upstream::pool::Client;

/// What a worker thread owns.
pub struct Worker {
    pub shared: Arc<Shared>,
    pub client: Client,
    /// Upgraded tunnels are tracked like connections, so shutdown drains them.
    pub tracker: tokio_util::task::TaskTracker,
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

pub async fn handle(
    w: &Worker,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
) -> Response<ResponseBody> {
    let started = Instant::now();
    // One lock-free load; this request finishes with this table even if a
    // reload publishes another meanwhile.
    let table = w.shared.table.load_full();

    // 1. Framing: never forward a request whose length two headers disagree
    //    on (RFC 9112 §6.1); hyper already rejects bad chunked lists and
    //    differing Content-Lengths with 400.
    if req.headers().contains_key(header::TRANSFER_ENCODING)
        && req.headers().contains_key(header::CONTENT_LENGTH)
    {
        return local(
            &table.unmatched,
            ProxyError::AmbiguousFraming,
            false,
            started,
        );
    }
    //    The only transfer coding the proxy can pass on is a single chunked
    //    (it re-frames bodies): anything else would be silently dropped.
    let te: Vec<&[u8]> = req
        .headers()
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|t| t.trim_ascii())
        .collect();
    let single_chunked = te.len() == 1 && te[0].eq_ignore_ascii_case(b"chunked");
    if !(te.is_empty() || single_chunked) {
        return local(
            &table.unmatched,
            ProxyError::UnsupportedTransferCoding,
            false,
            started,
        );
    }
    //    Exactly one Host in HTTP/1.1 (RFC 9112 §3.2).
    let hosts = req.headers().get_all(header::HOST).iter().count();
    if hosts > 1 || (hosts == 0 && req.version() == Version::HTTP_11) {
        return local(&table.unmatched, ProxyError::BadHost, false, started);
    }

    // 2. Match a route by host and path.
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    let Some(route) = table.find(host, req.uri().path()) else {
        return local(&table.unmatched, ProxyError::NoRoute, false, started);
    };

    // 3. Choose the backend (override, bucket, failover), then an endpoint.
    let choice = route.choose(req.headers(), conn.tls);
    let Some(backend) = choice.backend else {
        let wanted = choice.failed_over_from.unwrap_or(0);
        tracing::warn!(route = %route.name, "no backend of the route has an available endpoint");
        return local(
            &route.backends[wanted].metrics,
            ProxyError::NoEndpoint,
            choice.overridden,
            started,
        );
    };
    if let Some(from) = choice.failed_over_from {
        route.count_failover(from, backend);
    }
    let Some(endpoint) = route.backends[backend].backend.pick() else {
        return local(
            &route.backends[backend].metrics,
            ProxyError::NoEndpoint,
            choice.overridden,
            started,
        );
    };

    // 4. Rewrite the request for the upstream (RFC 9110 §7.6).
    let upgrade = headers::requested_upgrade(req.headers());
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    if let Some(protocol) = upgrade {
        headers::set_upgrade(&mut parts.headers, protocol);
    }
    if !parts.headers.contains_key(header::HOST)
        && let Some(v) = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        parts.headers.insert(header::HOST, v);
    }
    headers::set_forwarded(&mut parts.headers, &conn.client_ip, conn.tls);
    if parts.version == Version::HTTP_2 {
        headers::join_cookies(&mut parts.headers);
    }

    // 5. Forward: retries and the request timeout live in `forward`.
    let Sent {
        mut resp,
        lease,
        backend,
        endpoint: _,
        in_flight,
        gauge,
    } = match forward(w, route, backend, endpoint, parts, body, started).await {
        Ok(sent) => sent,
        Err(Failed { err, backend }) => {
            return local(
                &route.backends[backend].metrics,
                err,
                choice.overridden,
                started,
            );
        }
    };
    let served = &route.backends[backend];

    // 6. Rewrite the response: hop-by-hop out, unless switching protocols
    //    (the connection then belongs to the tunnel, not the pool).
    let mut lease = Some(lease);
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        lease = None;
        let protocol = resp.headers().get(header::UPGRADE).cloned();
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        headers::strip_hop_by_hop(resp.headers_mut());
        if let (Some(client), Some(p)) = (client_upgrade, protocol) {
            headers::set_upgrade(resp.headers_mut(), p);
            w.tracker.spawn(upgrade::tunnel(
                client,
                upstream_upgrade,
                route.name.clone(),
            ));
        }
    } else {
        headers::strip_hop_by_hop(resp.headers_mut());
    }
    if let Some(cookie) = choice.set_cookie {
        served.metrics.assigned();
        resp.headers_mut().append(header::SET_COOKIE, cookie);
    }
    if route.expose_backend_header {
        resp.headers_mut()
            .insert(&headers::X_CUTOVER_BACKEND, served.name_value.clone());
    }

    // 7. Record, and stream the body back.
    served.metrics.record(
        resp.status().as_u16(),
        choice.overridden,
        started.elapsed().as_secs_f64(),
    );
    resp.map(|body| ResponseBody::Upstream {
        body,
        lease,
        _in_flight: in_flight,
        _gauge: gauge,
    })
}

/// An answer of the proxy's own, counted like any other.
fn local(
    metrics: &RouteMetrics,
    err: ProxyError,
    overridden: bool,
    started: Instant,
) -> Response<ResponseBody> {
    metrics.record(
        err.status().as_u16(),
        overridden,
        started.elapsed().as_secs_f64(),
    );
    err.response()
}
