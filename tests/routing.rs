//! Route matching by host (exact, `*.suffix`, any) and longest path prefix.

mod common;

use common::{Backend, Proxy};

/// One backend per route, each named after its route, so the body of an
/// answer says which route matched.
struct Setup {
    backends: Vec<Backend>,
    proxy: Proxy,
}

/// (route and backend name, host line or "", path_prefix or "")
const ROUTES: &[(&str, &str, &str)] = &[
    ("exact", "shop.example.com", ""),
    ("exact-api", "shop.example.com", "/api"),
    ("exact-only-v2", "api.example.com", "/v2"),
    ("wild", "*.example.com", ""),
    ("wild-deeper", "*.eu.example.com", ""),
    ("any-public", "", "/public"),
    ("any-public-long", "", "/public/long"),
];

async fn setup() -> Setup {
    let mut backends = Vec::new();
    for (name, _, _) in ROUTES {
        backends.push(Backend::start(name).await);
    }
    let mut routes = String::new();
    for (name, host, prefix) in ROUTES {
        routes.push_str(&format!("[[routes]]\nname = \"{name}\"\n"));
        if !host.is_empty() {
            routes.push_str(&format!("host = \"{host}\"\n"));
        }
        if !prefix.is_empty() {
            routes.push_str(&format!("path_prefix = \"{prefix}\"\n"));
        }
        routes.push_str(&format!("weights = {{ {name} = 1 }}\n\n"));
    }
    let named: Vec<(&str, [&Backend; 1])> =
        backends.iter().map(|b| (b.name.as_str(), [b])).collect();
    let refs: Vec<(&str, &[&Backend])> = named.iter().map(|(n, b)| (*n, &b[..])).collect();
    let proxy = Proxy::start(&common::config(&refs, &routes)).await;
    Setup { backends, proxy }
}

/// (status, body) of a GET with the given Host header.
async fn get(s: &Setup, host: &str, path: &str) -> (u16, String) {
    let resp = common::client()
        .get(s.proxy.url(path))
        .header("host", host)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

async fn routed_to(s: &Setup, host: &str, path: &str) -> String {
    let (status, body) = get(s, host, path).await;
    assert_eq!(status, 200, "{host}{path}: {body}");
    body
}

#[tokio::test]
async fn exact_host_matches_case_insensitively_and_ignores_the_port() {
    let s = setup().await;
    assert_eq!(routed_to(&s, "shop.example.com", "/").await, "exact");
    assert_eq!(routed_to(&s, "SHOP.Example.COM", "/cart").await, "exact");
    assert_eq!(
        routed_to(&s, "shop.example.com:8443", "/cart").await,
        "exact"
    );
}

#[tokio::test]
async fn longest_path_prefix_wins_within_a_host() {
    let s = setup().await;
    assert_eq!(routed_to(&s, "shop.example.com", "/api").await, "exact-api");
    assert_eq!(
        routed_to(&s, "shop.example.com", "/api/orders/1").await,
        "exact-api"
    );
    assert_eq!(routed_to(&s, "shop.example.com", "/ap").await, "exact");
    assert_eq!(routed_to(&s, "other.test", "/public").await, "any-public");
    assert_eq!(routed_to(&s, "other.test", "/public/x").await, "any-public");
    assert_eq!(
        routed_to(&s, "other.test", "/public/long").await,
        "any-public-long"
    );
    assert_eq!(
        routed_to(&s, "other.test", "/public/long/x?q=1").await,
        "any-public-long"
    );
}

#[tokio::test]
async fn wildcard_matches_subdomains_not_the_bare_domain() {
    let s = setup().await;
    assert_eq!(routed_to(&s, "a.example.com", "/").await, "wild");
    assert_eq!(routed_to(&s, "a.b.example.com", "/x").await, "wild");
    assert_eq!(routed_to(&s, "Www.Example.com:80", "/x").await, "wild");
    // The longest matching suffix wins among wildcards.
    assert_eq!(
        routed_to(&s, "shop.eu.example.com", "/x").await,
        "wild-deeper"
    );
    // "*.example.com" does not match "example.com" itself: that falls back to
    // the any-host routes, which have no "/x".
    assert_eq!(get(&s, "example.com", "/x").await.0, 404);
    assert_eq!(routed_to(&s, "example.com", "/public").await, "any-public");
    // Nor a name that merely ends in the same letters.
    assert_eq!(get(&s, "badexample.com", "/x").await.0, 404);
}

#[tokio::test]
async fn exact_beats_wildcard_beats_any() {
    let s = setup().await;
    // The same path, three hosts: each picks its most specific route, even
    // though the any-host route has a longer prefix.
    assert_eq!(
        routed_to(&s, "shop.example.com", "/public/long").await,
        "exact"
    );
    assert_eq!(routed_to(&s, "x.example.com", "/public/long").await, "wild");
    assert_eq!(
        routed_to(&s, "other.test", "/public/long").await,
        "any-public-long"
    );
    // An exact host whose prefixes do not match falls through to the next
    // less specific host match (documented in src/routing/matcher.rs).
    assert_eq!(
        routed_to(&s, "api.example.com", "/v2/items").await,
        "exact-only-v2"
    );
    assert_eq!(routed_to(&s, "api.example.com", "/v1/items").await, "wild");
}

#[tokio::test]
async fn no_matching_route_is_404_and_reaches_no_backend() {
    let s = setup().await;
    let (status, body) = get(&s, "other.test", "/private").await;
    assert_eq!(status, 404);
    assert!(
        !body.is_empty() && body.len() < 200,
        "short text reason expected: {body:?}"
    );
    let (status, _) = get(&s, "other.test", "/").await;
    assert_eq!(status, 404);
    for b in &s.backends {
        assert!(b.seen().is_empty(), "{} saw {:?}", b.name, b.seen());
    }
}

#[tokio::test]
async fn a_route_without_host_matches_any_host_and_no_host() {
    let s = setup().await;
    assert_eq!(
        routed_to(&s, "anything.invalid", "/public").await,
        "any-public"
    );
    // The default Host (the proxy's own address) matches only any-host routes.
    let resp = common::client()
        .get(s.proxy.url("/public/long"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "any-public-long");
    // HTTP/1.0 without a Host header at all.
    let r = common::raw::roundtrip(s.proxy.http, b"GET /public HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "any-public");
}
