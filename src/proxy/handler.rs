//! The request path, top to bottom: load the table, check framing, match a
//! route, choose a backend and an endpoint, rewrite, forward (with retries,
//! `forward.rs`), rewrite the response, record. Everything before "forward"
//! is synchronous. With `[access_log]`, each step that answers also fills
//! in the request's access log line (`access_log`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Request, Response, StatusCode, Version, header};
use http_body::Body as _;
use hyper::body::Incoming;

use super::body::ResponseBody;
use super::error::ProxyError;
use super::forward::{Context, Failed, Sent, forward};
use super::grpc;
use super::headers;
use super::request_id;
use super::server::{ConnSlot, Shared};
use super::upgrade;
use crate::access_log::{self, Answer, Entry};
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

/// `fields`: what the caller found in the request's header fields
/// (`headers::Fields::of_request`).
pub async fn handle(
    w: &Worker,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    mut fields: headers::Fields,
) -> Response<ResponseBody> {
    let started = Instant::now();
    // One lock-free load, through this worker's own cache (no shared
    // reference count); this request finishes with this table even if a
    // reload publishes another meanwhile.
    let table = super::table_cache::current(&w.shared);
    // A gRPC call is judged by its grpc-status, and the proxy's own errors
    // are answered to it as gRPC.
    let grpc = fields.grpc;

    // 0. The request's ID (kept or made, `request_id`), and with
    //    `[access_log]` the request's part of its line, written now while
    //    the request is borrowed. An absolute-form target's (or HTTP/2
    //    `:authority`'s) authority wins over `Host` (RFC 9112 §3.2.2,
    //    RFC 9113 §8.3.1), and is what the upstream gets as `Host` (step 4).
    let request_id = request_id::ensure(req.headers_mut(), fields.request_ids);
    let client_version = req.version();
    let host = req
        .uri()
        .authority()
        .map(headers::authority_host)
        .or_else(|| fields.host.as_ref().and_then(|h| h.to_str().ok()));
    let entry = w.shared.access_log.as_ref().map(|log| {
        let path = match req.uri().path_and_query() {
            Some(pq) if log.log_query() => pq.as_str(),
            _ => req.uri().path(),
        };
        let r = access_log::Request {
            client_ip: conn.client_ip.as_bytes(),
            client_port: conn.peer.port(),
            request_id: &request_id,
            method: req.method(),
            host,
            path,
            version: client_version,
            user_agent: req.headers().get(header::USER_AGENT),
        };
        log.entry(&r, started)
    });
    let log = Log {
        id: &request_id,
        started,
        grpc,
    };

    // 1. CONNECT asks for a forward proxy's tunnel (RFC 9110 §9.3.6): there
    //    is none here, and a backend's 2xx to it would leave hyper holding
    //    the client connection as upgraded, answering nothing.
    if req.method() == http::Method::CONNECT {
        let err = ProxyError::Connect;
        return log.local(&table.unmatched, err, entry, Answer::default());
    }
    //    Framing: never forward a request whose length two headers disagree
    //    on (RFC 9112 §6.1); hyper already rejects bad chunked lists and
    //    differing Content-Lengths with 400.
    if fields.transfer_encoding && fields.content_length {
        let err = ProxyError::AmbiguousFraming;
        return log.local(&table.unmatched, err, entry, Answer::default());
    }
    //    The only transfer coding the proxy can pass on is a single chunked
    //    (it re-frames bodies): anything else would be silently dropped.
    if fields.transfer_encoding && !single_chunked(req.headers()) {
        let err = ProxyError::UnsupportedTransferCoding;
        return log.local(&table.unmatched, err, entry, Answer::default());
    }
    //    Exactly one Host in HTTP/1.1 (RFC 9112 §3.2).
    let hosts = fields.hosts;
    if hosts > 1 || (hosts == 0 && req.version() == Version::HTTP_11) {
        let err = ProxyError::BadHost;
        return log.local(&table.unmatched, err, entry, Answer::default());
    }

    // 2. Match a route by host and path.
    let Some(route) = table.find(host, req.uri().path()) else {
        let err = ProxyError::NoRoute;
        return log.local(&table.unmatched, err, entry, Answer::default());
    };
    let name = |i: usize| -> &str { &route.backends[i].backend.name };

    // 3. Choose the backend (override, bucket, failover), then an endpoint.
    let choice = route.choose(req.headers(), conn.tls);
    let answer = Answer {
        route: Some(&route.name),
        overridden: choice.overridden,
        failover_from: choice.failed_over_from.map(name),
        ..Answer::default()
    };
    let Some(backend) = choice.backend else {
        let wanted = choice.failed_over_from.unwrap_or(0);
        // One line a second at most, for all routes: an outage would
        // otherwise log a line per request.
        static GATE: LogGate = LogGate::new();
        if let Some(suppressed) = GATE.allow() {
            tracing::warn!(route = %route.name, suppressed, request_id = request_id::as_str(&request_id),
                "no backend of the route has an available endpoint");
        }
        let metrics = &route.backends[wanted].metrics;
        return log.local(metrics, ProxyError::NoEndpoint, entry, answer);
    };
    if let Some(from) = choice.failed_over_from {
        route.count_failover(from, backend);
    }
    let Some(endpoint) = route.backends[backend].backend.pick() else {
        let metrics = &route.backends[backend].metrics;
        let answer = Answer {
            backend: Some(name(backend)),
            ..answer
        };
        return log.local(metrics, ProxyError::NoEndpoint, entry, answer);
    };

    // 4. Rewrite the request for the upstream (RFC 9110 §7.6).
    //    `fields` still holds for the hop-by-hop fields: only
    //    `x-request-id` changed since.
    let upgrade = if fields.upgrade && fields.connection > 0 {
        headers::requested_upgrade(req.headers())
    } else {
        None
    };
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, &fields);
    headers::strip_aliases(&mut parts.headers, &fields);
    if let Some(protocol) = upgrade {
        headers::set_upgrade(&mut parts.headers, protocol);
    }
    let host = match parts.uri.authority() {
        Some(authority) => headers::set_host(&mut parts.headers, authority, fields.host.take()),
        None => fields.host.take(),
    };
    let client = &conn.client_ip;
    headers::set_forwarded(&mut parts.headers, client, conn.tls, host, fields.forwarded);
    if parts.version == Version::HTTP_2 && fields.cookies > 1 {
        headers::join_cookies(&mut parts.headers);
    }

    // 4b. Shadow (`crate::shadow`): maybe a copy for the route's shadow
    //     backend, sent by its own task; never of an override, an upgrade
    //     or a gRPC stream.
    let mut mirror = route.shadow.as_ref().and_then(|s| {
        let never = choice.overridden || client_upgrade.is_some() || grpc;
        let served = (&route.backends[backend].backend, endpoint);
        s.mirror(&parts, &body, served, never, &w.client)
    });

    // 5. Forward: retries and the request timeout live in `forward`.
    let mut entry = entry;
    let cx = Context {
        started,
        request_id: &request_id,
        bytes_in: match &mut entry {
            Some(e) if !body.is_end_stream() => Some(e.count_in()),
            _ => None,
        },
        tee: mirror.as_mut().and_then(|m| m.request_tee()),
        grpc,
    };
    // For the access log only.
    let asked = entry.as_ref().map(|_| Instant::now());
    let chosen = backend;
    let Sent {
        mut resp,
        lease,
        backend,
        endpoint,
        in_flight,
        gauge,
        retries,
    } = match forward(w, route, backend, endpoint, parts, body, cx).await {
        Ok(sent) => sent,
        Err(Failed {
            err,
            backend,
            endpoint,
            retries,
        }) => {
            let answer = Answer {
                backend: Some(name(backend)),
                endpoint: endpoint.map(|e| &*e.label),
                retries,
                failover_from: answer
                    .failover_from
                    .or((backend != chosen).then(|| name(chosen))),
                upstream: asked.map(|a| a.elapsed()),
                ..answer
            };
            return log.local(&route.backends[backend].metrics, err, entry, answer);
        }
    };
    let served = &route.backends[backend];
    // The client's answer for the shadow comparison, copied as it streams.
    let tee = mirror.and_then(|m| m.answered(&resp, started.elapsed().as_secs_f64()));
    let mut entry = entry.and_then(|e| {
        let answer = Answer {
            status: resp.status().as_u16(),
            backend: Some(&served.backend.name),
            endpoint: Some(&endpoint.label),
            retries,
            failover_from: answer
                .failover_from
                .or((backend != chosen).then(|| name(chosen))),
            upstream: asked.map(|a| a.elapsed()),
            ..answer
        };
        e.answer(&answer, None)
    });

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
        let fields = headers::Fields::of(resp.headers());
        headers::strip_hop_by_hop(resp.headers_mut(), &fields);
        if let (Some(client), Some(p)) = (client_upgrade, protocol) {
            headers::set_upgrade(resp.headers_mut(), p);
            // An upgrade is logged once, when the tunnel ends.
            w.tracker.spawn(upgrade::tunnel(
                client,
                upstream_upgrade,
                route.name.clone(),
                conn.slot.clone(),
                w.shared.timeouts.tunnel_idle,
                entry.take(),
            ));
        }
    } else {
        let fields = headers::Fields::of(resp.headers());
        headers::strip_hop_by_hop(resp.headers_mut(), &fields);
    }
    if let Some(cookie) = choice.set_cookie {
        served.metrics.assigned();
        resp.headers_mut().append(header::SET_COOKIE, cookie);
    }
    if route.expose_backend_header {
        resp.headers_mut()
            .insert(&headers::X_CUTOVER_BACKEND, served.name_value.clone());
    }
    resp.headers_mut()
        .insert(request_id::X_REQUEST_ID.clone(), request_id.clone());

    // 7. Record, and stream the body back; the access log line is written
    //    when the body ends. A gRPC answer is judged by its grpc-status: in
    //    the headers of a trailers-only answer, else when the trailers pass
    //    (`grpc::Watch`).
    let seconds = started.elapsed().as_secs_f64();
    let mut watch = None;
    if grpc && resp.status() == StatusCode::OK {
        served.metrics.record_head(200, choice.overridden, seconds);
        let judged = grpc::Watch::new(&table, route, backend, endpoint, choice.overridden, seconds);
        match grpc::status_of(resp.headers()) {
            Some(code) => judged.judge_now(code),
            None => watch = Some(Box::new(judged)),
        }
    } else {
        served
            .metrics
            .record(resp.status().as_u16(), choice.overridden, seconds);
    }
    resp.map(|body| {
        ResponseBody::Upstream {
            body,
            lease,
            _in_flight: in_flight,
            _gauge: gauge,
            grpc: watch,
        }
        .teed(tee)
        .logged(entry)
    })
}

/// The request's `Transfer-Encoding` is a single `chunked`: the only coding
/// the proxy can pass on (it re-frames bodies).
fn single_chunked(headers: &http::HeaderMap) -> bool {
    let mut codings = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|t| t.trim_ascii());
    matches!((codings.next(), codings.next()), (Some(t), None) if t.eq_ignore_ascii_case(b"chunked"))
}

/// What a local answer needs besides its error.
struct Log<'a> {
    id: &'a HeaderValue,
    started: Instant,
    /// A gRPC call: the proxy's own errors are answered as gRPC.
    grpc: bool,
}

impl Log<'_> {
    /// An answer of the proxy's own, counted and logged like any other.
    fn local(
        &self,
        metrics: &RouteMetrics,
        err: ProxyError,
        entry: Option<Entry>,
        answer: Answer,
    ) -> Response<ResponseBody> {
        // What the client gets: a gRPC error is an HTTP 200.
        let status = if self.grpc {
            200
        } else {
            err.status().as_u16()
        };
        let seconds = self.started.elapsed().as_secs_f64();
        let mut resp = if self.grpc {
            // Trailers-only, HTTP 200; the evidence counts it as the HTTP
            // status would (a 5xx of the proxy's is an error, a 4xx is not).
            metrics.record_head(200, answer.overridden, seconds);
            let error = err.status().is_server_error();
            metrics.grpc(grpc::code_of(err), error, answer.overridden, seconds);
            grpc::local_response(err)
        } else {
            metrics.record(status, answer.overridden, seconds);
            err.response()
        };
        resp.headers_mut()
            .insert(request_id::X_REQUEST_ID.clone(), self.id.clone());
        let entry = entry.and_then(|e| e.answer(&Answer { status, ..answer }, Some(err.code())));
        resp.map(|b| b.logged(entry))
    }
}
