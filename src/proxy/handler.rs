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
use super::grpc;
use super::headers;
use super::server::{ConnSlot, Shared};
use super::upgrade;
use crate::metrics::RouteMetrics;
use crate::upstream::endpoint::LogGate;
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
    /// The connection's slot of `limits.max_connections`; an upgraded
    /// tunnel keeps it until the tunnel closes.
    pub slot: Arc<ConnSlot>,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: bool, slot: Arc<ConnSlot>) -> ConnInfo {
        let ip = peer.ip().to_canonical().to_string();
        ConnInfo {
            peer,
            client_ip: HeaderValue::from_str(&ip).expect("an IP is a valid header value"),
            tls,
            slot,
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
    // A gRPC call is judged by its grpc-status, and the proxy's own errors
    // are answered to it as gRPC.
    let grpc = grpc::is_grpc(req.headers());

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
            grpc,
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
            grpc,
        );
    }
    //    Exactly one Host in HTTP/1.1 (RFC 9112 §3.2).
    let hosts = req.headers().get_all(header::HOST).iter().count();
    if hosts > 1 || (hosts == 0 && req.version() == Version::HTTP_11) {
        return local(&table.unmatched, ProxyError::BadHost, false, started, grpc);
    }

    // 2. Match a route by host and path. An absolute-form target's (or
    //    HTTP/2 `:authority`'s) authority wins over `Host` (RFC 9112 §3.2.2,
    //    RFC 9113 §8.3.1), and is what the upstream gets as `Host` (step 4).
    let client_version = req.version();
    let host = req
        .uri()
        .authority()
        .map(headers::authority_host)
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        });
    let Some(route) = table.find(host, req.uri().path()) else {
        return local(&table.unmatched, ProxyError::NoRoute, false, started, grpc);
    };

    // 3. Choose the backend (override, bucket, failover), then an endpoint.
    let choice = route.choose(req.headers(), conn.tls);
    let Some(backend) = choice.backend else {
        let wanted = choice.failed_over_from.unwrap_or(0);
        // One line a second at most, for all routes: an outage would
        // otherwise log a line per request.
        static GATE: LogGate = LogGate::new();
        if let Some(suppressed) = GATE.allow() {
            tracing::warn!(route = %route.name, suppressed,
                "no backend of the route has an available endpoint");
        }
        return local(
            &route.backends[wanted].metrics,
            ProxyError::NoEndpoint,
            choice.overridden,
            started,
            grpc,
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
            grpc,
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
    if let Some(authority) = parts.uri.authority() {
        headers::set_host(&mut parts.headers, authority);
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
        endpoint,
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
                grpc,
            );
        }
    };
    let served = &route.backends[backend];

    // 6. Rewrite the response: hop-by-hop out, unless switching protocols
    //    (the connection then belongs to the tunnel, not the pool).
    // Cutover's own version, not the backend's (RFC 9110 §6.2): hyper then
    // applies the HTTP/1.0 client's keep-alive rules (RFC 9112 §9.3) itself.
    if client_version != Version::HTTP_2 {
        *resp.version_mut() = Version::HTTP_11;
    }
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
                conn.slot.clone(),
                w.shared.timeouts.tunnel_idle,
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

    // 7. Record, and stream the body back. A gRPC answer is judged by its
    //    grpc-status: in the headers of a trailers-only answer, else when
    //    the trailers pass (`grpc::Watch`).
    let seconds = started.elapsed().as_secs_f64();
    let mut watch = None;
    if grpc && resp.status() == StatusCode::OK {
        served.metrics.record_head(200, choice.overridden, seconds);
        let judged = grpc::Watch {
            metrics: served.metrics.clone(),
            backend: served.backend.clone(),
            endpoint: endpoint.clone(),
            overridden: choice.overridden,
            seconds,
            done: false,
        };
        match grpc::status_of(resp.headers()) {
            Some(code) => judged.judge_now(code),
            None => watch = Some(Box::new(judged)),
        }
    } else {
        served
            .metrics
            .record(resp.status().as_u16(), choice.overridden, seconds);
    }
    resp.map(|body| ResponseBody::Upstream {
        body,
        lease,
        _in_flight: in_flight,
        _gauge: gauge,
        grpc: watch,
    })
}

/// An answer of the proxy's own, counted like any other.
fn local(
    metrics: &RouteMetrics,
    err: ProxyError,
    overridden: bool,
    started: Instant,
    grpc: bool,
) -> Response<ResponseBody> {
    let seconds = started.elapsed().as_secs_f64();
    if grpc {
        // Trailers-only, HTTP 200; the evidence counts it as the HTTP
        // status would (a 5xx of the proxy's is an error, a 4xx is not).
        metrics.record_head(200, overridden, seconds);
        let error = err.status().is_server_error();
        metrics.grpc(grpc::code_of(err), error, overridden, seconds);
        return grpc::local_response(err);
    }
    metrics.record(err.status().as_u16(), overridden, seconds);
    err.response()
}
