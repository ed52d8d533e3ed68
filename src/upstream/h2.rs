//! HTTP/2 upstream connections: one carries many requests at once, so the
//! pool shares it instead of leasing it. Each keeps a count of its streams
//! in flight and the peer's `SETTINGS_MAX_CONCURRENT_STREAMS` (RFC 9113
//! §5.1.2); a full connection takes no more, and the pool opens another.
//!
//! The counts are touched by one worker only (pools are per worker), so
//! their cache lines are not contended.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Uri, Version};
use hyper::client::conn::http2;

use super::body::RequestBody;
use super::endpoint::now_ms;

/// Streams per connection at most, whatever the peer allows: past this a
/// new connection spreads the load (Envoy's default is 2^31; gRPC servers
/// usually allow 100 to unlimited).
pub const MAX_STREAMS: usize = 256;

/// Streams the connection opens before the peer's SETTINGS arrive; more
/// wait inside it (see `connect.rs`).
pub const INITIAL_STREAMS: usize = 1;

/// An HTTP/2 connection that idled this long with no stream is dropped.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The sending half of an upstream HTTP/2 connection and its counts.
#[derive(Debug, Clone)]
pub struct H2Conn {
    pub sender: http2::SendRequest<RequestBody>,
    pub state: Arc<H2State>,
}

#[derive(Debug)]
pub struct H2State {
    streams: AtomicUsize,
    /// The peer's limit, as the connection task last saw it.
    peer_max: AtomicUsize,
    /// `now_ms()` when the last stream ended.
    last_used: AtomicU64,
}

impl H2State {
    pub fn new() -> H2State {
        H2State {
            streams: AtomicUsize::new(0),
            // Until the peer's SETTINGS arrive: the RFC's recommended
            // minimum (RFC 9113 §6.5.2), which hyper also assumes.
            peer_max: AtomicUsize::new(100),
            last_used: AtomicU64::new(now_ms()),
        }
    }

    /// The connection's current limit. [`INITIAL_STREAMS`] is what hyper
    /// reports before the peer's SETTINGS: taken as "not known yet" (a peer
    /// that really allows one stream gets its streams queued in the
    /// connection instead of spread).
    pub fn set_peer_max(&self, n: usize) {
        if n != INITIAL_STREAMS && self.peer_max.load(Ordering::Relaxed) != n {
            self.peer_max.store(n, Ordering::Relaxed);
        }
    }

    /// Whether one more stream fits.
    pub fn has_room(&self) -> bool {
        let max = self.peer_max.load(Ordering::Relaxed).min(MAX_STREAMS);
        self.streams.load(Ordering::Relaxed) < max
    }

    pub fn streams(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }

    /// Idle past [`IDLE_TIMEOUT`]: no stream, none for that long.
    pub fn idled_out(&self) -> bool {
        self.streams() == 0
            && now_ms().saturating_sub(self.last_used.load(Ordering::Relaxed))
                > IDLE_TIMEOUT.as_millis() as u64
    }

    /// Counts a stream until the guard drops.
    pub fn start_stream(self: &Arc<Self>) -> Stream {
        self.streams.fetch_add(1, Ordering::Relaxed);
        Stream(self.clone())
    }
}

impl Default for H2State {
    fn default() -> H2State {
        H2State::new()
    }
}

/// One stream in flight on a connection.
#[derive(Debug)]
pub struct Stream(Arc<H2State>);

impl Drop for Stream {
    fn drop(&mut self) {
        if self.0.streams.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.last_used.store(now_ms(), Ordering::Relaxed);
        }
    }
}

/// Whether the backend did not process a request that failed, so it may
/// go out again whatever its method (RFC 9113 §8.7): hyper never handed it
/// to the connection (canceled), the peer refused the stream
/// (`REFUSED_STREAM`), or the stream was above the last-stream-id of the
/// peer's GOAWAY (h2 fails exactly those with the GOAWAY's error; a stream
/// at or below it that dies with the connection gets an I/O error).
pub fn unprocessed(err: &hyper::Error) -> bool {
    if err.is_canceled() {
        return true;
    }
    let Some(e) = std::error::Error::source(err).and_then(|s| s.downcast_ref::<::h2::Error>())
    else {
        return false;
    };
    e.is_remote() && (e.is_go_away() || e.reason() == Some(::h2::Reason::REFUSED_STREAM))
}

/// An HTTP/2 request names its target in `:scheme` and `:authority`
/// (RFC 9113 §8.3.1), taken from `Host`, which then goes: the two must not
/// disagree. Undone by [`to_h1`] if the request ends up on HTTP/1.1.
pub fn to_h2<B>(req: &mut Request<B>, scheme: &Scheme, fallback: &Authority) {
    if req.version() == Version::HTTP_2 {
        return;
    }
    let authority = req
        .headers_mut()
        .remove(header::HOST)
        .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        .unwrap_or_else(|| fallback.clone());
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(scheme.clone());
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = Version::HTTP_2;
}

/// Back to HTTP/1.1: origin form, and `Host` from the authority.
pub fn to_h1<B>(req: &mut Request<B>) {
    if req.version() != Version::HTTP_2 {
        return;
    }
    if let Some(a) = req.uri().authority()
        && let Ok(host) = HeaderValue::from_str(a.as_str())
    {
        req.headers_mut().insert(header::HOST, host);
    }
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(path);
    *req.version_mut() = Version::HTTP_11;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_follows_the_peer_and_the_cap() {
        let s = Arc::new(H2State::new());
        s.set_peer_max(INITIAL_STREAMS);
        assert_eq!(s.peer_max.load(Ordering::Relaxed), 100);
        s.set_peer_max(2);
        let a = s.start_stream();
        assert!(s.has_room());
        let _b = s.start_stream();
        assert!(!s.has_room());
        drop(a);
        assert!(s.has_room());
        s.set_peer_max(usize::MAX);
        let many: Vec<_> = (0..MAX_STREAMS).map(|_| s.start_stream()).collect();
        assert!(!s.has_room());
        drop(many);
        assert_eq!(s.streams(), 1);
    }

    #[test]
    fn host_becomes_the_authority_and_back() {
        let mut req = Request::new(());
        *req.uri_mut() = Uri::from_static("/pkg.Svc/Call?x=1");
        req.headers_mut()
            .insert(header::HOST, HeaderValue::from_static("shop:8080"));
        let fallback = Authority::from_static("10.0.0.1:9");
        to_h2(&mut req, &Scheme::HTTP, &fallback);
        assert_eq!(req.uri(), "http://shop:8080/pkg.Svc/Call?x=1");
        assert!(!req.headers().contains_key(header::HOST));
        to_h1(&mut req);
        assert_eq!(req.uri(), "/pkg.Svc/Call?x=1");
        assert_eq!(req.headers()[header::HOST], "shop:8080");
        assert_eq!(req.version(), Version::HTTP_11);
        let mut bare = Request::new(());
        to_h2(&mut bare, &Scheme::HTTPS, &fallback);
        assert_eq!(bare.uri(), "https://10.0.0.1:9/");
    }
}
