//! gRPC through the proxy (gRPC over HTTP/2, `PROTOCOL-HTTP2.md` of the
//! gRPC repository): which requests are gRPC, the `grpc-timeout` deadline,
//! a response judged by its `grpc-status` (in the headers of a
//! trailers-only answer, else in the trailers, [`Watch`]), and the proxy's
//! own errors answered as gRPC rather than as an HTTP error page.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, header};
use http_body::Frame;

use super::body::ResponseBody;
use super::error::ProxyError;
use super::table_cache::Handle;
use crate::metrics::{RouteMetrics, UpstreamErrorKind};
use crate::routing::Route;
use crate::upstream::{Backend, Endpoint};

pub static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
pub static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
static CONTENT_TYPE: HeaderValue = HeaderValue::from_static("application/grpc");

/// The status codes Cutover itself uses or judges by (which ones count as
/// errors: `config::GrpcCodeSet`, `[grpc] error_codes`).
pub const OK: u8 = 0;
pub const CANCELLED: u8 = 1;
pub const UNKNOWN: u8 = 2;
pub const DEADLINE_EXCEEDED: u8 = 4;
pub const UNIMPLEMENTED: u8 = 12;
pub const INTERNAL: u8 = 13;
pub const UNAVAILABLE: u8 = 14;
pub const DATA_LOSS: u8 = 15;
/// The highest code defined (UNAUTHENTICATED); anything else is UNKNOWN.
pub const MAX_CODE: u8 = 16;

/// `Content-Type: application/grpc`, alone or with a `+format` or
/// parameters.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(is_grpc_value)
}

/// Whether a `Content-Type` value is gRPC's (see [`is_grpc`]).
pub fn is_grpc_value(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    const PREFIX: &[u8] = b"application/grpc";
    b.len() >= PREFIX.len()
        && b[..PREFIX.len()].eq_ignore_ascii_case(PREFIX)
        && matches!(b.get(PREFIX.len()), None | Some(b'+' | b';'))
}

/// The `grpc-status` of a header or trailer block: `None` when absent,
/// UNKNOWN when it is not a defined code.
pub fn status_of(map: &HeaderMap) -> Option<u8> {
    let v = map.get(&GRPC_STATUS)?;
    let code = match v.as_bytes() {
        [d] if d.is_ascii_digit() => d - b'0',
        [a, b] if a.is_ascii_digit() && b.is_ascii_digit() && *a != b'0' => {
            (a - b'0') * 10 + (b - b'0')
        }
        _ => UNKNOWN,
    };
    Some(if code > MAX_CODE { UNKNOWN } else { code })
}

/// A trailers-only answer (`grpc-status` in the headers: no response byte
/// of the call) with UNAVAILABLE: a call that may be retried.
pub fn unavailable_at_once<B>(resp: &Response<B>) -> bool {
    resp.status() == http::StatusCode::OK && status_of(resp.headers()) == Some(UNAVAILABLE)
}

/// `grpc-timeout`: up to 8 digits and a unit, `H`, `M`, `S`, `m`, `u` or
/// `n`. `None` when absent or malformed.
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(&GRPC_TIMEOUT)?.as_bytes();
    let (unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The gRPC status of the proxy's own error: UNAVAILABLE when no backend
/// could answer, DEADLINE_EXCEEDED for timeouts, and the gRPC spec's
/// mapping of the HTTP status otherwise (404: UNIMPLEMENTED, 400: INTERNAL).
pub fn code_of(err: ProxyError) -> u8 {
    match err {
        ProxyError::NoEndpoint | ProxyError::PoolFull => UNAVAILABLE,
        ProxyError::Upstream(UpstreamErrorKind::Timeout) | ProxyError::RequestTimeout => {
            DEADLINE_EXCEEDED
        }
        ProxyError::Upstream(_) => UNAVAILABLE,
        ProxyError::NoRoute | ProxyError::Connect => UNIMPLEMENTED,
        ProxyError::AmbiguousFraming
        | ProxyError::UnsupportedTransferCoding
        | ProxyError::BadHost
        | ProxyError::ClientBody
        | ProxyError::ClientBodyTimeout => INTERNAL,
    }
}

/// The proxy's own error as a trailers-only gRPC answer: HTTP 200, the
/// status and message in the headers, no body.
pub fn local_response(err: ProxyError) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::empty());
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, CONTENT_TYPE.clone());
    h.insert(&GRPC_STATUS, HeaderValue::from(u16::from(code_of(err))));
    if let Ok(message) = HeaderValue::from_str(err.reason().trim_end()) {
        h.insert(&GRPC_MESSAGE, message);
    }
    resp
}

/// Judges a gRPC response by its `grpc-status` once it is known: counts it
/// in `cutover_grpc_responses_total` and the A/B evidence, and reports the
/// endpoint's success or failure. A body that ends without one counts as
/// INTERNAL, an upstream reset as UNAVAILABLE, and a client that went away
/// first as CANCELLED (not the endpoint's fault).
///
/// It holds the worker's own handle on the table and finds the pair's
/// metrics, the backend and the endpoint in it by position: cloning their
/// `Arc`s would write reference counts every worker shares, per request.
pub struct Watch {
    table: Handle,
    route: usize,
    backend: usize,
    endpoint: usize,
    overridden: bool,
    /// Time to the response head, the latency in the evidence.
    seconds: f64,
    done: bool,
}

impl Watch {
    /// Watches the answer of `endpoint`, of the `backend`-th backend of
    /// `route` in `table`.
    pub fn new(
        table: &Handle,
        route: &Route,
        backend: usize,
        endpoint: &Arc<Endpoint>,
        overridden: bool,
        seconds: f64,
    ) -> Watch {
        let endpoint = route.backends[backend]
            .backend
            .endpoints
            .iter()
            .position(|e| Arc::ptr_eq(e, endpoint))
            .unwrap_or(usize::MAX);
        Watch {
            table: table.clone(),
            route: route.index,
            backend,
            endpoint,
            overridden,
            seconds,
            done: false,
        }
    }

    pub fn frame(&mut self, frame: &Frame<Bytes>) {
        if let Some(t) = frame.trailers_ref() {
            self.finish(status_of(t).unwrap_or(INTERNAL));
        }
    }

    /// The upstream body failed.
    pub fn error(&mut self) {
        self.finish(UNAVAILABLE);
    }

    /// The body ended; without trailers that is a protocol error.
    pub fn end(&mut self) {
        self.finish(INTERNAL);
    }

    /// A trailers-only answer: judged at once.
    pub fn judge_now(mut self, code: u8) {
        self.finish(code);
    }

    pub fn finish(&mut self, code: u8) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let served = &self.table.routes[self.route].backends[self.backend];
        if let Some(endpoint) = served.backend.endpoints.get(self.endpoint) {
            let (overridden, seconds) = (self.overridden, self.seconds);
            judge(
                &served.metrics,
                &served.backend,
                endpoint,
                code,
                overridden,
                seconds,
            );
        }
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("route", &self.route)
            .field("backend", &self.backend)
            .field("endpoint", &self.endpoint)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.finish(CANCELLED);
    }
}

/// Counts one gRPC status of a backend's answer and reports the endpoint.
pub fn judge(
    metrics: &RouteMetrics,
    backend: &Backend,
    endpoint: &Endpoint,
    code: u8,
    overridden: bool,
    seconds: f64,
) {
    let error = backend.grpc_errors.contains(code);
    metrics.grpc(code, error, overridden, seconds);
    if error {
        backend.report_failure(endpoint);
    } else if code != CANCELLED {
        endpoint.report_success();
        backend.forgive(endpoint);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(k: &'static str, v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        h
    }

    #[test]
    fn grpc_content_types() {
        for v in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC;x=1",
        ] {
            assert!(is_grpc(&map("content-type", v)), "{v}");
        }
        for v in [
            "application/grpc-web",
            "application/json",
            "application/grp",
        ] {
            assert!(!is_grpc(&map("content-type", v)), "{v}");
        }
    }

    #[test]
    fn statuses_parse() {
        assert_eq!(status_of(&map("grpc-status", "0")), Some(OK));
        assert_eq!(status_of(&map("grpc-status", "14")), Some(UNAVAILABLE));
        assert_eq!(status_of(&map("grpc-status", "17")), Some(UNKNOWN));
        assert_eq!(status_of(&map("grpc-status", "04")), Some(UNKNOWN));
        assert_eq!(status_of(&map("grpc-status", "x")), Some(UNKNOWN));
        assert_eq!(status_of(&HeaderMap::new()), None);
    }

    #[test]
    fn timeouts_parse() {
        let t = |v| timeout(&map("grpc-timeout", v));
        assert_eq!(t("100m"), Some(Duration::from_millis(100)));
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(t("123456789S"), None);
        assert_eq!(t("m"), None);
        assert_eq!(t("5x"), None);
        assert_eq!(t("-5S"), None);
    }

    #[test]
    fn own_errors_are_trailers_only() {
        let r = local_response(ProxyError::NoEndpoint);
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(r.headers()["content-type"], "application/grpc");
        assert_eq!(
            local_response(ProxyError::RequestTimeout).headers()["grpc-status"],
            "4"
        );
    }
}
