//! Header rules of a proxy (RFC 9110 §7.6): hop-by-hop fields are removed in
//! both directions, the forwarding headers are set, `Host` is kept.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

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

/// Removes hop-by-hop fields (RFC 9110 §7.6.1): `Connection` and every field
/// it names, `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`,
/// `Upgrade`, `HTTP2-Settings`, and `TE` unless it is exactly `trailers`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        // Allocates only when a client names fields in Connection.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            if name != header::HOST {
                headers.remove(name);
            }
        }
        headers.remove(header::CONNECTION);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::UPGRADE);
    headers.remove(&HTTP2_SETTINGS);
    // The tester override token is Cutover's own and stays out of the app.
    headers.remove(&crate::routing::overrides::TOKEN_HEADER);
    let te_only_trailers = headers.get_all(header::TE).iter().all(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .all(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
    });
    if !te_only_trailers {
        headers.remove(header::TE);
    }
}

/// The protocol a request asks to switch to, unless it is `h2c`, which is
/// never forwarded (RFC 9113 §3.1 removed it; a proxy must not pass it on).
pub fn requested_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let upgrade = headers.get(header::UPGRADE)?;
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let h2c = upgrade.as_bytes().eq_ignore_ascii_case(b"h2c");
    (asks && !h2c).then(|| upgrade.clone())
}

/// Puts back `Connection: upgrade` and `Upgrade` after stripping.
pub fn set_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, UPGRADE_VALUE.clone());
    headers.insert(header::UPGRADE, protocol);
}

/// Sets `X-Forwarded-For` (appending `client` to what is there),
/// `X-Forwarded-Proto` and `X-Forwarded-Host`.
pub fn set_forwarded(headers: &mut HeaderMap, client: &HeaderValue, tls: bool) {
    let xff = match headers.get(&X_FORWARDED_FOR) {
        None => client.clone(),
        Some(_) => {
            let mut joined = Vec::with_capacity(64);
            for v in headers.get_all(&X_FORWARDED_FOR) {
                joined.extend_from_slice(v.as_bytes());
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(client.as_bytes());
            HeaderValue::from_bytes(&joined).unwrap_or_else(|_| client.clone())
        }
    };
    headers.insert(&X_FORWARDED_FOR, xff);
    headers.insert(
        &X_FORWARDED_PROTO,
        if tls { HTTPS.clone() } else { HTTP.clone() },
    );
    // Never pass on a client's own X-Forwarded-Host.
    match headers.get(header::HOST).cloned() {
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
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-kept"], "yes");
        let mut h = map(&[("te", "trailers")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn forwarded_headers_append() {
        let mut h = map(&[("x-forwarded-for", "1.1.1.1"), ("host", "shop")]);
        set_forwarded(&mut h, &HeaderValue::from_static("127.0.0.1"), false);
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
    }

    #[test]
    fn cookies_are_joined() {
        let mut h = map(&[("cookie", "a=1"), ("cookie", "b=2")]);
        join_cookies(&mut h);
        assert_eq!(h["cookie"], "a=1; b=2");
    }
}
