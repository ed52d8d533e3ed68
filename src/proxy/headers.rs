//! Header rules of a proxy (RFC 9110 §7.6): hop-by-hop fields are removed in
//! both directions, the forwarding headers are set, `Host` is kept.

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;

pub static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
pub static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
pub static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_CUTOVER_BACKEND: HeaderName = HeaderName::from_static("x-cutover-backend");

static UPGRADE_VALUE: HeaderValue = HeaderValue::from_static("upgrade");
static HTTP: HeaderValue = HeaderValue::from_static("http");
static HTTPS: HeaderValue = HeaderValue::from_static("https");

/// The fixed hop-by-hop fields (RFC 9110 §7.6.1), and Cutover's own tester
/// override token, which stays out of the app. `Connection` and `TE` have
/// rules of their own.
static HOP_BY_HOP: [&HeaderName; 6] = [
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
    &HTTP2_SETTINGS,
    &crate::routing::overrides::TOKEN_HEADER,
];

/// What the header rules need to know of a message, found in one walk over
/// its fields, comparing names without hashing: each rule then looks up or
/// removes only what is there. Most requests carry nothing the rules act on
/// but `Host`, most responses nothing but `Connection`.
#[derive(Debug, Default)]
pub struct Fields {
    /// The first `Host` value (requests only), and how many there are.
    pub host: Option<HeaderValue>,
    pub hosts: usize,
    /// The first `Content-Type` says gRPC (requests only).
    pub grpc: bool,
    /// `Connection` fields.
    pub connection: usize,
    pub te: bool,
    pub transfer_encoding: bool,
    pub content_length: bool,
    pub upgrade: bool,
    /// Which of [`HOP_BY_HOP`] are there, a bit each.
    listed: u8,
    pub forwarded: bool,
    pub request_ids: usize,
    pub cookies: usize,
    /// A field whose name, with `_` read as `-`, is one the proxy sets
    /// ([`strip_aliases`]; requests only).
    pub aliases: bool,
}

impl Fields {
    /// A response's fields.
    pub fn of(headers: &HeaderMap) -> Fields {
        Fields::walk(headers, false)
    }

    /// A request's fields, with its `Host` and whether it is gRPC.
    pub fn of_request(headers: &HeaderMap) -> Fields {
        Fields::walk(headers, true)
    }

    #[inline(always)]
    fn walk(headers: &HeaderMap, request: bool) -> Fields {
        let mut f = Fields::default();
        let mut content_type = false;
        for (name, value) in headers {
            if name == header::HOST {
                if request && f.hosts == 0 {
                    f.host = Some(value.clone());
                }
                f.hosts += 1;
            } else if name == header::CONTENT_TYPE {
                if request && !content_type {
                    f.grpc = super::grpc::is_grpc_value(value);
                }
                content_type = true;
            } else if name == header::CONTENT_LENGTH {
                f.content_length = true;
            } else if name == header::CONNECTION {
                f.connection += 1;
            } else if name == header::TE {
                f.te = true;
            } else if name == header::COOKIE {
                f.cookies += 1;
            } else if name == header::FORWARDED {
                f.forwarded = true;
            } else if *name == super::request_id::X_REQUEST_ID {
                f.request_ids += 1;
            } else if let Some(i) = HOP_BY_HOP.iter().position(|h| *h == name) {
                f.listed |= 1 << i;
                f.transfer_encoding |= name == header::TRANSFER_ENCODING;
                f.upgrade |= name == header::UPGRADE;
            } else if request && is_alias(name) {
                f.aliases = true;
            }
        }
        f
    }
}

/// The fields the proxy sets on a request, which a backend must be able to
/// trust.
static SET_BY_PROXY: [&HeaderName; 4] = [
    &X_FORWARDED_FOR,
    &X_FORWARDED_PROTO,
    &X_FORWARDED_HOST,
    &super::request_id::X_REQUEST_ID,
];

/// `X_Forwarded_For` and the like: one of [`SET_BY_PROXY`] with `_` for
/// `-`. CGI, WSGI and Rack backends read both spellings as the same
/// variable (`HTTP_X_FORWARDED_FOR`), so a client's alias could stand in
/// for the proxy's own value there.
fn is_alias(name: &HeaderName) -> bool {
    let n = name.as_str().as_bytes();
    n.contains(&b'_')
        && SET_BY_PROXY.iter().any(|set| {
            let set = set.as_str().as_bytes();
            set.len() == n.len()
                && set
                    .iter()
                    .zip(n)
                    .all(|(s, c)| s == c || (*s == b'-' && *c == b'_'))
        })
}

/// Removes a request's aliases of the fields the proxy sets ([`is_alias`]),
/// as nginx drops every name with an underscore by default; other names
/// with underscores pass. `f` is what [`Fields`] found in `headers`.
pub fn strip_aliases(headers: &mut HeaderMap, f: &Fields) {
    if !f.aliases {
        return;
    }
    let aliases: Vec<HeaderName> = headers.keys().filter(|n| is_alias(n)).cloned().collect();
    for name in aliases {
        headers.remove(name);
    }
}

/// Removes hop-by-hop fields (RFC 9110 §7.6.1): `Connection` and every field
/// it names, `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`,
/// `Upgrade`, `HTTP2-Settings`, and `TE` unless it is exactly `trailers`.
/// `f` is what [`Fields`] found in `headers`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, f: &Fields) {
    // A message with both `Transfer-Encoding` and `Content-Length` was
    // framed by the former; the latter must go (RFC 9112 §6.3), or it would
    // frame the re-chunked or re-counted body wrongly. (Requests like that
    // are refused before this; responses are fixed here.)
    if f.transfer_encoding && f.content_length {
        headers.remove(header::CONTENT_LENGTH);
    }
    if f.connection > 0 {
        strip_connection(headers, f.connection);
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if f.listed & (1 << i) != 0 {
            headers.remove(*name);
        }
    }
    if f.te && !te_only_trailers(headers) {
        headers.remove(header::TE);
    }
}

/// Removes `Connection` (`fields` of them) and the fields it names (never
/// `Host` nor `X-Request-Id`).
fn strip_connection(headers: &mut HeaderMap, fields: usize) {
    // `remove` hands back only the first value; there is nearly always one.
    if fields == 1 {
        if let Some(value) = headers.remove(header::CONNECTION) {
            remove_named(headers, &value);
        }
    } else {
        let values: Vec<HeaderValue> = headers
            .get_all(header::CONNECTION)
            .iter()
            .cloned()
            .collect();
        headers.remove(header::CONNECTION);
        for value in &values {
            remove_named(headers, value);
        }
    }
}

/// Removes the fields a `Connection` value lists ("close, x-secret").
fn remove_named(headers: &mut HeaderMap, connection: &HeaderValue) {
    // "keep-alive" names a field removed anyway; "close" names none;
    // `Host` is never removed, nor the request's ID (the one the log, the
    // backend and the client see; it is set before this). Their usual
    // spellings are compared exactly first: a byte comparison is far
    // cheaper than a case-insensitive one.
    let names_none = |t: &[u8]| {
        matches!(t, b"keep-alive" | b"close")
            || [&b"keep-alive"[..], b"close", b"host", b"x-request-id"]
                .iter()
                .any(|n| t.eq_ignore_ascii_case(n))
    };
    // Nearly every value is one of those alone.
    if names_none(connection.as_bytes()) {
        return;
    }
    for token in connection.as_bytes().split(|b| *b == b',') {
        let token = token.trim_ascii();
        if names_none(token) {
            continue;
        }
        // A `&str` is looked up without allocating; one that is not a valid
        // field name matches nothing.
        if let Ok(name) = std::str::from_utf8(token) {
            headers.remove(name);
        }
    }
}

fn te_only_trailers(headers: &HeaderMap) -> bool {
    headers.get_all(header::TE).iter().all(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .all(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
    })
}

/// The protocols a request asks to switch to, without `h2c`, which is never
/// forwarded (RFC 9113 §3.1 removed it; a proxy must not pass it on), even
/// in a list such as `h2c, websocket`.
pub fn requested_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let upgrade = headers.get(header::UPGRADE)?;
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !asks {
        return None;
    }
    let is_h2c = |t: &[u8]| t.trim_ascii().eq_ignore_ascii_case(b"h2c");
    let tokens = || upgrade.as_bytes().split(|b| *b == b',');
    if !tokens().any(is_h2c) {
        return Some(upgrade.clone());
    }
    let kept: Vec<&[u8]> = tokens()
        .filter(|t| !is_h2c(t) && !t.trim_ascii().is_empty())
        .map(|t| t.trim_ascii())
        .collect();
    if kept.is_empty() {
        return None;
    }
    HeaderValue::from_bytes(&kept.join(&b", "[..])).ok()
}

/// The `host[:port]` of an authority, without any `userinfo@`.
pub fn authority_host(authority: &Authority) -> &str {
    let a = authority.as_str();
    a.rsplit_once('@').map_or(a, |(_, host)| host)
}

/// Makes `Host` the request target's authority, when the target has one
/// (absolute form, RFC 9112 §3.2.2: the received `Host` is ignored; an
/// HTTP/2 `:authority`, RFC 9113 §8.3.1), and returns the `Host` the request
/// now has; `host` is the received one. Allocates only when they differ.
pub fn set_host(
    headers: &mut HeaderMap,
    authority: &Authority,
    host: Option<HeaderValue>,
) -> Option<HeaderValue> {
    let wanted = authority_host(authority);
    if host.as_ref().map(|v| v.as_bytes()) == Some(wanted.as_bytes()) {
        return host;
    }
    match HeaderValue::from_str(wanted) {
        Ok(v) => {
            headers.insert(header::HOST, v.clone());
            Some(v)
        }
        Err(_) => host,
    }
}

/// Puts back `Connection: upgrade` and `Upgrade` after stripping.
pub fn set_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, UPGRADE_VALUE.clone());
    headers.insert(header::UPGRADE, protocol);
}

/// Sets `X-Forwarded-For` (appending `client` to what is there),
/// `X-Forwarded-Proto` and `X-Forwarded-Host` (`host`: the request's `Host`),
/// and removes a client's `Forwarded` (RFC 7239; `forwarded`: there is one):
/// Cutover does not write that field, so one that reached the app could only
/// be the client's own claim.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client: &HeaderValue,
    tls: bool,
    host: Option<HeaderValue>,
    forwarded: bool,
) {
    if forwarded {
        headers.remove(header::FORWARDED);
    }
    match headers.entry(&X_FORWARDED_FOR) {
        Entry::Vacant(e) => {
            e.insert(client.clone());
        }
        Entry::Occupied(mut e) => {
            let mut joined = Vec::with_capacity(64);
            for v in e.iter() {
                joined.extend_from_slice(v.as_bytes());
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(client.as_bytes());
            e.insert(HeaderValue::from_bytes(&joined).unwrap_or_else(|_| client.clone()));
        }
    }
    headers.insert(
        &X_FORWARDED_PROTO,
        if tls { HTTPS.clone() } else { HTTP.clone() },
    );
    // Never pass on a client's own X-Forwarded-Host.
    match host {
        Some(host) => {
            headers.insert(&X_FORWARDED_HOST, host);
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
}

/// HTTP/2 may split `Cookie` over several fields; HTTP/1.1 wants one, joined
/// with "; " (RFC 9113 §8.2.3).
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    if values.next().is_none() || values.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    for (i, v) in headers.get_all(header::COOKIE).iter().enumerate() {
        if i > 0 {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strip(h: &mut HeaderMap) {
        let f = Fields::of(h);
        strip_hop_by_hop(h, &f);
    }

    #[test]
    fn aliases_of_the_fields_the_proxy_sets_are_removed_and_no_others() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("x_forwarded_for", "6.6.6.6"),
            ("x-forwarded_proto", "https"),
            ("x_forwarded_host", "evil"),
            ("x_request_id", "forged"),
            ("x_forwarded_by", "kept"),
            ("x_app", "kept"),
            ("x-request-id", "kept"),
        ] {
            h.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        let f = Fields::of_request(&h);
        assert!(f.aliases);
        strip_aliases(&mut h, &f);
        let mut left: Vec<&str> = h.keys().map(|n| n.as_str()).collect();
        left.sort();
        assert_eq!(left, ["x-request-id", "x_app", "x_forwarded_by"]);
        // Responses are not looked at.
        assert!(!Fields::of(&h).aliases);
    }

    /// `set_forwarded` as the request path calls it.
    fn forward(h: &mut HeaderMap, client: &HeaderValue, tls: bool) {
        let f = Fields::of_request(h);
        set_forwarded(h, client, tls, f.host, f.forwarded);
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn strips_named_and_listed_fields() {
        let mut h = map(&[
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "gzip"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
        ]);
        strip(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-kept"], "yes");
        let mut h = map(&[("te", "trailers")]);
        strip(&mut h);
        assert_eq!(h["te"], "trailers");
        // The tokens that name nothing to remove, in any case.
        for c in [
            "keep-alive",
            "Keep-Alive",
            "close",
            "CLOSE",
            "host",
            "close, Host",
        ] {
            let mut h = map(&[("connection", c), ("host", "shop"), ("x-kept", "1")]);
            strip(&mut h);
            assert_eq!(h.len(), 2, "{c}: {h:?}");
        }
    }

    #[test]
    fn strips_what_every_connection_field_names_but_host() {
        let mut h = map(&[
            ("connection", "X-One"),
            ("connection", " x-two ,host"),
            ("x-one", "1"),
            ("x-two", "2"),
            ("host", "shop"),
            ("x-cutover-token", "secret"),
            ("te", "trailers, gzip"),
            ("transfer-encoding", "chunked"),
        ]);
        strip(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["host"], "shop");
    }

    #[test]
    fn fields_are_found_in_one_walk() {
        let h = map(&[
            ("host", "a"),
            ("host", "b"),
            ("content-type", "application/grpc"),
            ("content-type", "text/plain"),
            ("connection", "close"),
            ("connection", "x"),
            ("x-request-id", "1"),
            ("cookie", "a=1"),
            ("cookie", "b=2"),
            ("forwarded", "for=x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
        ]);
        let f = Fields::of_request(&h);
        assert_eq!(f.host.as_ref().unwrap(), "a");
        assert_eq!(f.hosts, 2);
        assert!(f.grpc && f.forwarded && f.transfer_encoding && f.upgrade);
        assert!(!f.te && !f.content_length);
        assert_eq!((f.connection, f.request_ids, f.cookies), (2, 1, 2));
        assert_eq!(f.listed, 0b1100);
        // Only the first Content-Type counts; a response records neither.
        let h = map(&[
            ("content-type", "text/plain"),
            ("content-type", "application/grpc"),
        ]);
        assert!(!Fields::of_request(&h).grpc);
        let h = map(&[("host", "a"), ("content-type", "application/grpc")]);
        let f = Fields::of(&h);
        assert!(f.host.is_none() && !f.grpc && f.hosts == 1);
    }

    #[test]
    fn forwarded_headers_append() {
        let mut h = map(&[("x-forwarded-for", "1.1.1.1"), ("host", "shop")]);
        forward(&mut h, &HeaderValue::from_static("127.0.0.1"), false);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "shop");
    }

    #[test]
    fn upgrade_detection_refuses_h2c() {
        let h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert_eq!(requested_upgrade(&h).unwrap(), "websocket");
        let h = map(&[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
        ]);
        assert!(requested_upgrade(&h).is_none());
        let h = map(&[("upgrade", "websocket")]);
        assert!(requested_upgrade(&h).is_none());
        let h = map(&[("connection", "upgrade"), ("upgrade", "h2c, websocket")]);
        assert_eq!(requested_upgrade(&h).unwrap(), "websocket");
        let h = map(&[("connection", "upgrade"), ("upgrade", " H2C ,")]);
        assert!(requested_upgrade(&h).is_none());
    }

    #[test]
    fn transfer_encoding_drops_content_length() {
        let mut h = map(&[("transfer-encoding", "chunked"), ("content-length", "3")]);
        strip(&mut h);
        assert!(h.is_empty(), "{h:?}");
        let mut h = map(&[("content-length", "3")]);
        strip(&mut h);
        assert_eq!(h["content-length"], "3");
    }

    #[test]
    fn authority_replaces_host() {
        let a: Authority = "user@other.host:8080".parse().unwrap();
        let mut h = map(&[("host", "shop")]);
        let given = h.get("host").cloned();
        let host = set_host(&mut h, &a, given);
        assert_eq!(h["host"], "other.host:8080");
        assert_eq!(host.unwrap(), "other.host:8080");
        let same: Authority = "shop".parse().unwrap();
        let given = h.get("host").cloned();
        assert_eq!(set_host(&mut h, &same, given).unwrap(), "shop");
    }

    #[test]
    fn client_forwarded_is_removed() {
        let mut h = map(&[("forwarded", "for=6.6.6.6")]);
        forward(&mut h, &HeaderValue::from_static("127.0.0.1"), false);
        assert!(!h.contains_key("forwarded"));
    }

    #[test]
    fn cookies_are_joined() {
        let mut h = map(&[("cookie", "a=1"), ("cookie", "b=2")]);
        join_cookies(&mut h);
        assert_eq!(h["cookie"], "a=1; b=2");
    }
}
