//! The routing decision: any request (host, path) maps to the route a plain
//! reading of the README's rules picks, or to none; the chosen backend is
//! one of the route's, owns the request's bucket, and has weight unless an
//! override forced it; and the bucket ranges keep their promises (each
//! backend's share to within one bucket, weight 0 owns nothing, and with
//! two backends raising green's weight only moves users blue -> green).

use std::path::Path;

use cutover::config::{self, HostMatch, Loaded};
use cutover::metrics::Metrics;
use cutover::routing::{BUCKETS, Bucket, RoutingTable, Split};
use cutover::upstream::EndpointRegistry;
use http::{HeaderMap, HeaderValue};

use super::input::Input;

/// Builds the routing table of a validated config, as a reload does.
pub fn build(loaded: &Loaded) -> RoutingTable {
    let metrics = Metrics::new(&[0.1, 1.0]);
    let registry = EndpointRegistry::new(metrics.ejections.clone(), 1);
    RoutingTable::build(loaded, 1, &registry, &metrics)
}

const HOSTS: &[&str] = &[
    "shop.example.com",
    "example.com",
    "a.b.example.com",
    "api.test",
    "x",
];
const PREFIXES: &[&str] = &["/", "/a", "/ab", "/a/", "/api", "/api/v2", "/b"];
const BACKENDS: &[&str] = &["blue", "green", "red"];

/// The route a literal reading of the README's matching rules picks: an
/// exact host beats a `*.suffix` (the longest first) beats no host; within
/// one, the longest matching prefix, the first in the file on a tie.
fn reference(routes: &[(HostMatch, String)], host: Option<&str>, path: &str) -> Option<usize> {
    let best = |group: &dyn Fn(&HostMatch) -> bool| -> Option<usize> {
        let mut best: Option<usize> = None;
        for (i, (h, prefix)) in routes.iter().enumerate() {
            if group(h)
                && path.starts_with(prefix.as_str())
                && best.is_none_or(|b| routes[b].1.len() < prefix.len())
            {
                best = Some(i);
            }
        }
        best
    };
    // Lower case, no port, no trailing dot; longer names than the matcher's
    // 256-byte buffer match only host-less routes.
    let host = host
        .map(|h| {
            let name = if h.starts_with('[') {
                &h[..h.find(']').map_or(h.len(), |i| i + 1)]
            } else {
                h.rsplit_once(':').map_or(h, |(n, _)| n)
            };
            name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
        })
        .filter(|h| h.len() <= 256);
    if let Some(host) = &host {
        if let Some(r) = best(&|m| matches!(m, HostMatch::Exact(e) if e == host)) {
            return Some(r);
        }
        let parents = host.match_indices('.').map(|(i, _)| &host[i + 1..]);
        for parent in parents {
            if let Some(r) = best(&|m| matches!(m, HostMatch::Suffix(s) if s == parent)) {
                return Some(r);
            }
        }
    }
    best(&|m| matches!(m, HostMatch::Any))
}

fn text(input: &mut Input<'_>) -> String {
    let mut t = String::from("[listen]\nhttp = \"127.0.0.1:0\"\n");
    for b in BACKENDS {
        t.push_str(&format!("[backends.{b}]\nendpoints = [\"127.0.0.1:9\"]\n"));
    }
    for i in 0..1 + input.choose(6) {
        t.push_str(&format!("[[routes]]\nname = \"r{i}\"\n"));
        match input.choose(3) {
            0 => {}
            1 => t.push_str(&format!(
                "host = \"{}\"\n",
                HOSTS[input.choose(HOSTS.len())]
            )),
            _ => t.push_str(&format!(
                "host = \"*.{}\"\n",
                HOSTS[input.choose(HOSTS.len())]
            )),
        }
        t.push_str(&format!(
            "path_prefix = \"{}\"\n",
            PREFIXES[input.choose(PREFIXES.len())]
        ));
        let n = 1 + input.choose(3);
        let weights: Vec<String> = (0..n)
            .map(|k| format!("{} = {}", BACKENDS[k], input.u8() % 101))
            .collect();
        t.push_str(&format!("weights = {{ {} }}\n", weights.join(", ")));
        match input.choose(4) {
            0 => t.push_str(&format!(
                "[routes.sticky]\nheader = \"x-user\"\nhash_seed = {}\n",
                input.u16()
            )),
            1 => t.push_str("[routes.override]\nheader = \"x-cutover-backend\"\n"),
            _ => {}
        }
    }
    t
}

fn request_host(input: &mut Input<'_>) -> Option<String> {
    match input.choose(4) {
        0 => None,
        1 => Some(String::from_utf8_lossy(input.bytes(40)).into_owned()),
        _ => {
            let mut h = String::new();
            if input.bool() {
                h.push_str(["a.", "x.y.", "shop."][input.choose(3)]);
            }
            h.push_str(HOSTS[input.choose(HOSTS.len())]);
            if input.bool() {
                h = h.to_ascii_uppercase();
            }
            h.push_str(["", ".", ":8080", ".:1"][input.choose(4)]);
            Some(h)
        }
    }
}

pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    split_invariants(&mut input);

    let text = text(&mut input);
    let path = Path::new("fuzz.toml");
    let Ok(config) = config::parse(path, &text) else {
        return; // e.g. every weight 0
    };
    let routes: Vec<(HostMatch, String)> = config
        .routes
        .iter()
        .map(|r| (r.host.clone(), r.path_prefix.clone()))
        .collect();
    let table = build(&Loaded {
        config,
        path: path.into(),
        sha256: String::new(),
        fingerprint: String::new(),
    });
    for _ in 0..1 + input.choose(4) {
        let host = request_host(&mut input);
        let path = match input.choose(3) {
            0 => String::from_utf8_lossy(input.bytes(20)).into_owned(),
            _ => format!(
                "{}{}",
                PREFIXES[input.choose(PREFIXES.len())],
                ["", "x", "/", "b/c"][input.choose(4)]
            ),
        };
        let found = table.find(host.as_deref(), &path);
        let expected = reference(&routes, host.as_deref(), &path);
        assert_eq!(
            found.map(|r| r.name.to_string()),
            expected.map(|i| format!("r{i}")),
            "host {host:?} path {path:?}\n{text}"
        );
        let Some(route) = found else { continue };

        let mut headers = HeaderMap::new();
        let user = input.bytes(8);
        if let Ok(v) = HeaderValue::from_bytes(user) {
            headers.insert("x-user", v);
        }
        if input.bool() {
            headers.insert("x-cutover-backend", HeaderValue::from_static("green"));
        }
        let choice = route.choose(&headers, false);
        let i = choice.backend.expect("every endpoint is up");
        assert!(i < route.backends.len());
        assert_eq!(choice.failed_over_from, None);
        if choice.overridden {
            assert_eq!(&*route.backends[i].backend.name, "green");
            continue;
        }
        assert!(
            route.backends[i].weight > 0,
            "a weight-0 backend was chosen"
        );
        if let Some(h) = route
            .sticky
            .as_ref()
            .and_then(|s| s.header_bucket(&headers))
        {
            assert_eq!(
                i,
                route.backend_for(h),
                "the hashed header's bucket decides"
            );
        }
    }
}

/// The bucket rule, on weights straight from the input.
fn split_invariants(input: &mut Input<'_>) {
    let n = 1 + input.choose(4);
    let weights: Vec<u32> = (0..n).map(|_| u32::from(input.u16())).collect();
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    if total == 0 {
        return; // refused by validation
    }
    let split = Split::new(&weights);
    let mut start = 0;
    for (i, w) in weights.iter().enumerate() {
        let (s, e) = split.range(i);
        assert_eq!(s, start, "ranges are contiguous");
        assert!(s <= e);
        let exact = f64::from(*w) * f64::from(BUCKETS) / total as f64;
        assert!(
            (f64::from(e - s) - exact).abs() < 1.0,
            "{weights:?}: {i} owns {s}..{e}"
        );
        if *w == 0 {
            assert_eq!(s, e, "weight 0 owns nothing");
        }
        start = e;
    }
    assert_eq!(start, BUCKETS, "every bucket has an owner");

    // Raise the last backend's weight (green of blue/green): every owner's
    // index can only grow, so with two backends users only move to green.
    let mut raised = weights.clone();
    let delta = u32::from(input.u16()) + 1;
    *raised.last_mut().expect("n >= 1") += delta;
    let after = Split::new(&raised);
    for b in 0..BUCKETS {
        let bucket = Bucket::new(b).expect("in range");
        let (old, new) = (split.pick(bucket), after.pick(bucket));
        assert!(
            new >= old,
            "{weights:?} -> {raised:?}: bucket {b} moved {old} -> {new}"
        );
        assert!(weights[old] > 0 && raised[new] > 0);
    }
}
