//! The one place where a failure becomes a status code: [`ProxyError::status`].

use std::error::Error as _;

use http::{HeaderValue, Response, StatusCode, header};

use super::body::ResponseBody;
use crate::metrics::UpstreamErrorKind;
use crate::upstream::connect::ConnectError;
use crate::upstream::pool::UpstreamError;

/// Why the proxy answered a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// Both `Content-Length` and `Transfer-Encoding` (RFC 9112 §6.1): a
    /// smuggling attempt or a broken client; the connection is closed.
    AmbiguousFraming,
    /// A transfer coding other than a single `chunked` (RFC 9112 §6.1).
    UnsupportedTransferCoding,
    /// `CONNECT`: a forward proxy's tunnel (RFC 9110 §9.3.6), which a
    /// reverse proxy does not offer.
    Connect,
    /// No `Host`, or several, in HTTP/1.1 (RFC 9112 §3.2).
    BadHost,
    NoRoute,
    /// The client's body could not be read while buffering it for retries.
    ClientBody,
    /// The client sent no body bytes for `timeouts.body_idle`.
    ClientBodyTimeout,
    /// Every backend of the route is down.
    NoEndpoint,
    /// The endpoint's `max_connections` are all busy, and the wait for one
    /// was too long or too crowded.
    PoolFull,
    Upstream(UpstreamErrorKind),
    /// No response head within `timeouts.request`.
    RequestTimeout,
}

impl ProxyError {
    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::AmbiguousFraming => StatusCode::BAD_REQUEST,
            ProxyError::UnsupportedTransferCoding | ProxyError::Connect => {
                StatusCode::NOT_IMPLEMENTED
            }
            ProxyError::BadHost => StatusCode::BAD_REQUEST,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::ClientBody => StatusCode::BAD_REQUEST,
            ProxyError::NoEndpoint | ProxyError::PoolFull => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ClientBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Upstream(UpstreamErrorKind::Timeout) | ProxyError::RequestTimeout => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// The short plain-text body sent to the client.
    pub fn reason(self) -> &'static str {
        match self {
            ProxyError::AmbiguousFraming => {
                "bad request: both Content-Length and Transfer-Encoding\n"
            }
            ProxyError::UnsupportedTransferCoding => {
                "not implemented: only a single chunked transfer coding is supported\n"
            }
            ProxyError::Connect => "not implemented: CONNECT is not supported\n",
            ProxyError::BadHost => "bad request: exactly one Host header is required\n",
            ProxyError::NoRoute => "no route for this host and path\n",
            ProxyError::ClientBody => "bad request: the request body could not be read\n",
            ProxyError::ClientBodyTimeout => "request timeout: the request body stopped arriving\n",
            ProxyError::NoEndpoint => "no backend available\n",
            ProxyError::PoolFull => "service unavailable: upstream connection limit reached\n",
            ProxyError::Upstream(UpstreamErrorKind::Connect) => {
                "bad gateway: upstream connect failed\n"
            }
            ProxyError::Upstream(UpstreamErrorKind::Timeout) => {
                "gateway timeout: upstream connect timed out\n"
            }
            ProxyError::Upstream(UpstreamErrorKind::Reset) => {
                "bad gateway: upstream connection reset\n"
            }
            ProxyError::Upstream(UpstreamErrorKind::Protocol) => {
                "bad gateway: upstream sent an invalid response\n"
            }
            ProxyError::RequestTimeout => "gateway timeout: upstream did not answer in time\n",
        }
    }

    /// The short reason in the access log's `error` field.
    pub fn code(self) -> &'static str {
        match self {
            ProxyError::AmbiguousFraming => "ambiguous_framing",
            ProxyError::UnsupportedTransferCoding => "unsupported_transfer_coding",
            ProxyError::Connect => "connect_method",
            ProxyError::BadHost => "bad_host",
            ProxyError::NoRoute => "no_route",
            ProxyError::ClientBody => "client_body",
            ProxyError::ClientBodyTimeout => "client_body_timeout",
            ProxyError::NoEndpoint => "no_endpoint",
            ProxyError::PoolFull => "pool_full",
            ProxyError::Upstream(UpstreamErrorKind::Connect) => "upstream_connect",
            ProxyError::Upstream(UpstreamErrorKind::Timeout) => "upstream_timeout",
            ProxyError::Upstream(UpstreamErrorKind::Reset) => "upstream_reset",
            ProxyError::Upstream(UpstreamErrorKind::Protocol) => "upstream_protocol",
            ProxyError::RequestTimeout => "request_timeout",
        }
    }

    /// The kind counted in `cutover_upstream_errors_total`, if any.
    pub fn upstream_kind(self) -> Option<UpstreamErrorKind> {
        match self {
            ProxyError::Upstream(k) => Some(k),
            ProxyError::RequestTimeout => Some(UpstreamErrorKind::Timeout),
            _ => None,
        }
    }

    pub fn response(self) -> Response<ResponseBody> {
        let mut resp = Response::new(ResponseBody::local(self.reason()));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        match self {
            ProxyError::AmbiguousFraming
            | ProxyError::UnsupportedTransferCoding
            | ProxyError::BadHost
            | ProxyError::ClientBody
            | ProxyError::ClientBodyTimeout
            // What a CONNECT client sends next is meant as tunnel data, not
            // a request: never parse it as one.
            | ProxyError::Connect => {
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            ProxyError::NoEndpoint | ProxyError::PoolFull => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        resp
    }
}

/// The client's own request body failed (a bad chunk line, a chunk size
/// that overflows, a connection cut midway): hyper's client reports it as a
/// user body error caused by the server side's `hyper::Error` (wrapped in a
/// `BodyError` by the body_idle deadline). That is the
/// client's fault (400), not the endpoint's.
pub fn is_client_body(err: &UpstreamError) -> bool {
    matches!(err, UpstreamError::Http(h) if h.is_user()
        && h.source().is_some_and(|s| s.is::<hyper::Error>() || s.is::<crate::upstream::body::BodyError>()))
}

/// Classifies an error of the upstream client.
pub fn classify(err: &UpstreamError) -> UpstreamErrorKind {
    match err {
        UpstreamError::Connect(ConnectError::Timeout) => UpstreamErrorKind::Timeout,
        UpstreamError::Connect(_) | UpstreamError::PoolFull => UpstreamErrorKind::Connect,
        UpstreamError::Http(h) if h.is_parse() || h.is_parse_status() || h.is_user() => {
            UpstreamErrorKind::Protocol
        }
        UpstreamError::Http(h) if h.is_timeout() => UpstreamErrorKind::Timeout,
        UpstreamError::Http(h) => match h.source().and_then(|e| e.downcast_ref::<std::io::Error>())
        {
            Some(io) if io.kind() == std::io::ErrorKind::TimedOut => UpstreamErrorKind::Timeout,
            _ => UpstreamErrorKind::Reset,
        },
    }
}
