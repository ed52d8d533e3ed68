//! The request header rewrite (`proxy::headers`, in the order of step 4 of
//! `proxy::handler::handle`) on arbitrary header maps: no hop-by-hop field
//! survives (RFC 9110 §7.6.1: the fixed ones, those `Connection` names, `TE`
//! unless only `trailers`), `Content-Length` goes with `Transfer-Encoding`,
//! `Host` is kept (or is the target's authority), `X-Request-Id` is kept, aliases of the
//! fields the proxy sets (`x_forwarded_for`) are removed, every other field is
//! untouched, and the forwarding headers are as the README documents them.

use std::net::IpAddr;

use cutover::proxy::headers;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;

use super::input::Input;

const NAMES: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "upgrade",
    "http2-settings",
    "x-cutover-token",
    "content-length",
    "host",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "cookie",
    "close",
    "trailers",
    "x-app",
    "x-secret",
    "x_forwarded_for",
    "x_forwarded-proto",
    "x_request_id",
    "x_app",
];

/// Fields removed whatever `Connection` says.
const FIXED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
    "x-cutover-token",
    "forwarded",
];

/// Fields whose names with `_` for `-` are removed.
const ALIASED: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
];

/// Fields the rewrite sets.
const SET: &[&str] = &[
    "host",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
];

fn name(input: &mut Input<'_>) -> Option<HeaderName> {
    if input.choose(4) == 0 {
        HeaderName::from_bytes(input.bytes(24)).ok()
    } else {
        Some(HeaderName::from_static(NAMES[input.choose(NAMES.len())]))
    }
}

fn value(input: &mut Input<'_>) -> Option<HeaderValue> {
    if input.choose(3) == 0 {
        return HeaderValue::from_bytes(input.bytes(40)).ok();
    }
    // A list of known names, in any case, with blanks and empty items.
    let mut v = Vec::new();
    for i in 0..1 + input.choose(3) {
        if i > 0 {
            v.extend_from_slice([&b","[..], b", ", b" ,", b",,"][input.choose(4)]);
        }
        let n = NAMES[input.choose(NAMES.len())];
        let upper = input.u8();
        v.extend(n.bytes().enumerate().map(|(j, b)| {
            if (upper >> (j % 8)) & 1 == 1 {
                b.to_ascii_uppercase()
            } else {
                b
            }
        }));
    }
    HeaderValue::from_bytes(&v).ok()
}

fn values(map: &HeaderMap, name: &str) -> Vec<HeaderValue> {
    map.get_all(name).iter().cloned().collect()
}

pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let tls = input.bool();
    let client = if input.bool() {
        IpAddr::from(input.u32().to_be_bytes())
    } else {
        IpAddr::from(u128::from(input.u64()).to_be_bytes())
    };
    let client = HeaderValue::from_str(&client.to_string()).expect("an IP");
    let authority = if input.bool() {
        Authority::try_from(input.bytes(30)).ok()
    } else {
        None
    };
    let mut orig = HeaderMap::new();
    for _ in 0..input.choose(24) {
        if let (Some(n), Some(v)) = (name(&mut input), value(&mut input)) {
            orig.append(n, v);
        }
    }

    // Step 1 of the request path refuses a request with two Hosts.
    if orig.get_all(header::HOST).iter().count() > 1 {
        return;
    }

    // Step 4 of the request path.
    let mut h = orig.clone();
    let mut fields = headers::Fields::of_request(&h);
    let upgrade = if fields.upgrade && fields.connection > 0 {
        headers::requested_upgrade(&h)
    } else {
        None
    };
    headers::strip_hop_by_hop(&mut h, &fields);
    headers::strip_aliases(&mut h, &fields);
    if let Some(protocol) = &upgrade {
        headers::set_upgrade(&mut h, protocol.clone());
    }
    let host = match &authority {
        Some(a) => headers::set_host(&mut h, a, fields.host.take()),
        None => fields.host.take(),
    };
    headers::set_forwarded(&mut h, &client, tls, host, fields.forwarded);

    // What must be gone.
    let mut removed: Vec<String> = FIXED.iter().map(|s| s.to_string()).collect();
    for v in orig.get_all(header::CONNECTION) {
        for token in v.as_bytes().split(|b| *b == b',') {
            let token = token.trim_ascii().to_ascii_lowercase();
            if let Ok(t) = String::from_utf8(token)
                && !["host", "x-request-id", "close", ""].contains(&t.as_str())
            {
                removed.push(t);
            }
        }
    }
    let te_trailers = orig.get_all(header::TE).iter().all(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .all(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
    });
    if !te_trailers {
        removed.push("te".into());
    }
    if orig.contains_key(header::TRANSFER_ENCODING) {
        removed.push("content-length".into());
    }
    // Aliases of what the proxy sets: `x_forwarded_for` and the like.
    for n in orig.keys() {
        if n.as_str().contains('_') && ALIASED.contains(&n.as_str().replace('_', "-").as_str()) {
            removed.push(n.as_str().into());
        }
    }
    for r in &removed {
        if SET.contains(&r.as_str()) || (upgrade.is_some() && (r == "connection" || r == "upgrade"))
        {
            continue;
        }
        assert!(
            !h.contains_key(r.as_str()),
            "{r} survived: {orig:?} -> {h:?}"
        );
    }
    if let Some(p) = &upgrade {
        assert_eq!(values(&h, "connection"), ["upgrade"]);
        assert_eq!(values(&h, "upgrade"), std::slice::from_ref(p));
        assert!(
            !p.as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"h2c")),
            "h2c is never forwarded: {p:?}"
        );
    }

    // Everything else is untouched.
    for n in orig.keys().chain(h.keys()) {
        if removed.iter().any(|r| r == n.as_str()) || SET.contains(&n.as_str()) {
            continue;
        }
        assert_eq!(
            values(&orig, n.as_str()),
            values(&h, n.as_str()),
            "{n} changed"
        );
    }

    // Host: the client's, unless the target has an authority.
    let host_after = match &authority {
        Some(a) => match HeaderValue::from_str(headers::authority_host(a)) {
            Ok(v) => vec![v],
            Err(_) => values(&orig, "host"),
        },
        None => values(&orig, "host"),
    };
    assert_eq!(values(&h, "host"), host_after, "Host");

    // The forwarding headers.
    let prior = if removed.iter().any(|r| r == "x-forwarded-for") {
        Vec::new()
    } else {
        values(&orig, "x-forwarded-for")
    };
    let xff = values(&h, "x-forwarded-for");
    assert_eq!(xff.len(), 1, "one X-Forwarded-For: {xff:?}");
    if prior.is_empty() {
        assert_eq!(xff[0], client);
    } else {
        let mut joined: Vec<u8> = Vec::new();
        for v in &prior {
            joined.extend_from_slice(v.as_bytes());
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(client.as_bytes());
        assert!(xff[0].as_bytes() == joined || xff[0] == client, "{xff:?}");
        assert!(xff[0].as_bytes().ends_with(client.as_bytes()));
    }
    let proto = if tls { "https" } else { "http" };
    assert_eq!(values(&h, "x-forwarded-proto"), [proto]);
    assert_eq!(
        values(&h, "x-forwarded-host"),
        host_after.first().cloned().into_iter().collect::<Vec<_>>(),
        "X-Forwarded-Host is the Host sent upstream"
    );
}
