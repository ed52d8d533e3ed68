//! Route matching by host and path prefix: an exact host beats a `*.suffix`
//! wildcard (the longest suffix first), which beats a route with no host;
//! within a host the longest path prefix wins. When the most specific host has
//! no prefix that matches, the next less specific one is tried.

use std::collections::HashMap;

use crate::config::HostMatch;

/// Route indexes grouped by host, each group sorted by prefix length.
#[derive(Debug, Default)]
pub struct Matcher {
    exact: HashMap<Box<str>, Prefixes>,
    suffix: HashMap<Box<str>, Prefixes>,
    any: Prefixes,
}

#[derive(Debug, Default)]
struct Prefixes(Vec<(Box<str>, usize)>);

impl Prefixes {
    fn insert(&mut self, prefix: &str, route: usize) {
        self.0.push((prefix.into(), route));
        // Stable: equal prefixes keep config order, the first one wins.
        self.0.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
    }

    fn find(&self, path: &str) -> Option<usize> {
        self.0
            .iter()
            .find(|(p, _)| path.starts_with(&**p))
            .map(|(_, r)| *r)
    }
}

impl Matcher {
    pub fn insert(&mut self, host: &HostMatch, prefix: &str, route: usize) {
        let group = match host {
            HostMatch::Any => &mut self.any,
            HostMatch::Exact(h) => self.exact.entry(h.as_str().into()).or_default(),
            HostMatch::Suffix(s) => self.suffix.entry(s.as_str().into()).or_default(),
        };
        group.insert(prefix, route);
    }

    /// The route for `host` (a `Host` header value, any case, port allowed)
    /// and `path`.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<usize> {
        // No route names a host (known since the table was built): the
        // host need not be normalized nor looked up.
        if self.exact.is_empty() && self.suffix.is_empty() {
            return self.any.find(path);
        }
        let mut buf = [0u8; 256];
        if let Some(host) = host.and_then(|h| normalize_host(h, &mut buf)) {
            if let Some(r) = self.exact.get(host).and_then(|p| p.find(path)) {
                return Some(r);
            }
            if !self.suffix.is_empty() {
                // "a.b.example.com" tries "b.example.com", "example.com", "com".
                let mut rest = host;
                while let Some((_, parent)) = rest.split_once('.') {
                    if let Some(r) = self.suffix.get(parent).and_then(|p| p.find(path)) {
                        return Some(r);
                    }
                    rest = parent;
                }
            }
        }
        self.any.find(path)
    }
}

/// Lower-cases `host` into `buf` without its port or trailing dot.
fn normalize_host<'a>(host: &str, buf: &'a mut [u8; 256]) -> Option<&'a str> {
    let name = if host.starts_with('[') {
        // An IPv6 literal: "[::1]:8080".
        &host[..host.find(']').map_or(host.len(), |i| i + 1)]
    } else {
        // The last ':' starts the port (a byte search: cheaper than
        // `rsplit_once` on a short string).
        match host.as_bytes().iter().rposition(|b| *b == b':') {
            Some(i) => &host[..i],
            None => host,
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    let out = buf.get_mut(..name.len())?;
    out.copy_from_slice(name.as_bytes());
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher() -> Matcher {
        let mut m = Matcher::default();
        m.insert(&HostMatch::Any, "/", 0);
        m.insert(&HostMatch::Any, "/api", 1);
        m.insert(&HostMatch::Exact("shop.example.com".into()), "/", 2);
        m.insert(&HostMatch::Suffix("example.com".into()), "/", 3);
        m.insert(&HostMatch::Exact("only-api.test".into()), "/api/v2", 4);
        m
    }

    #[test]
    fn specificity() {
        let m = matcher();
        assert_eq!(m.find(Some("Shop.Example.com:8080"), "/api"), Some(2));
        assert_eq!(m.find(Some("a.b.example.com"), "/x"), Some(3));
        assert_eq!(m.find(Some("example.com"), "/x"), Some(0));
        assert_eq!(m.find(None, "/api/x"), Some(1));
        assert_eq!(m.find(Some("other"), "/apix"), Some(1));
        assert_eq!(m.find(Some("only-api.test"), "/api/v2/x"), Some(4));
        // Falls through to the any-host routes when the host has no match.
        assert_eq!(m.find(Some("only-api.test"), "/api/v1"), Some(1));
        assert_eq!(m.find(Some("[::1]:80"), "/"), Some(0));
        assert_eq!(m.find(Some("shop.example.com."), "/"), Some(2));
    }

    #[test]
    fn without_host_routes_any_host_matches() {
        let mut m = Matcher::default();
        m.insert(&HostMatch::Any, "/", 0);
        m.insert(&HostMatch::Any, "/api", 1);
        for host in [
            None,
            Some("shop:80"),
            Some("[::1]"),
            Some(""),
            Some("x".repeat(300).as_str()),
        ] {
            assert_eq!(m.find(host, "/api/x"), Some(1), "{host:?}");
            assert_eq!(m.find(host, "/b"), Some(0), "{host:?}");
        }
    }

    #[test]
    fn no_route() {
        let mut m = Matcher::default();
        m.insert(&HostMatch::Any, "/a", 0);
        assert_eq!(m.find(None, "/b"), None);
        let long = "x".repeat(300);
        assert_eq!(m.find(Some(&long), "/a"), Some(0));
    }
}
