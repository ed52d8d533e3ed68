//! `[[routes]]`: matching, weights, sticky assignment, overrides, and routes that clash.

use super::*;

impl Validator<'_> {
    /// Routes that cannot both work: the same host and `path_prefix` (the
    /// later one would never match), and routes a browser may visit with
    /// one cookie jar sharing a sticky cookie name with a different secret
    /// or drain setting (each would reset or distrust the other's cookie).
    pub(super) fn route_clashes(&mut self, raw: &RawConfig, routes: &[RouteSpec]) {
        for (i, r) in routes.iter().enumerate() {
            let Some(spanned) = raw.routes.get(i) else {
                continue;
            };
            let rr = spanned.get_ref();
            if let Some(j) = routes[..i]
                .iter()
                .position(|o| o.host == r.host && o.path_prefix == r.path_prefix)
            {
                let at = rr.path_prefix.as_ref().unwrap_or(&rr.name);
                self.error(
                    at,
                    format!(
                        "routes[{i}]: same host and path_prefix \"{}\" as routes[{j}] (\"{}\"), so it would never match",
                        r.path_prefix, routes[j].name
                    ),
                );
            }
            let Some(cookie) = r.sticky.as_ref().and_then(|s| s.cookie.as_ref()) else {
                continue;
            };
            let clash = routes[..i].iter().enumerate().find(|(_, o)| {
                hosts_overlap(&o.host, &r.host)
                    && o.sticky.as_ref().is_some_and(|s| {
                        s.cookie.as_ref() == Some(cookie)
                            && (o.drain != r.drain || !same_secret(s, r.sticky.as_ref()))
                    })
            });
            if let (Some((j, other)), Some(at)) = (
                clash,
                rr.sticky.as_ref().and_then(|s| s.get_ref().cookie.as_ref()),
            ) {
                self.error(
                    at,
                    format!(
                        "routes[{i}].sticky.cookie: \"{cookie}\" is also the cookie of routes[{j}] (\"{}\") on an overlapping host, with a different secret or drain setting; use another cookie name or the same settings",
                        other.name
                    ),
                );
            }
        }
    }

    pub(super) fn route(&mut self, i: usize, r: &RawRoute, known: &BTreeSet<&str>) -> RouteSpec {
        let key = format!("routes[{i}]");
        if !valid_name(r.name.get_ref()) {
            self.error(
                &r.name,
                format!("{key}.name: a route name uses only letters, digits, '-' and '_'"),
            );
        }
        let host = match &r.host {
            None => HostMatch::Any,
            Some(h) => self.host(&key, h),
        };
        let path_prefix = match &r.path_prefix {
            None => "/".to_owned(),
            Some(p) if p.get_ref().starts_with('/') => p.get_ref().clone(),
            Some(p) => {
                self.error(
                    p,
                    format!("{key}.path_prefix: \"{}\" must start with '/'", p.get_ref()),
                );
                "/".to_owned()
            }
        };
        let known_list = known.iter().copied().collect::<Vec<_>>().join(", ");
        let mut weights = Vec::new();
        for (backend, w) in r.weights.get_ref() {
            if !known.contains(backend.get_ref().as_str()) {
                self.error(
                    backend,
                    format!(
                        "{key}.weights: backend \"{}\" is not defined (known: {known_list})",
                        backend.get_ref()
                    ),
                );
            } else if !(0..=1_000_000).contains(w.get_ref()) {
                self.error(
                    w,
                    format!(
                        "{key}.weights.{}: {} is out of range 0..=1000000",
                        backend.get_ref(),
                        w.get_ref()
                    ),
                );
            } else {
                weights.push((backend.get_ref().clone(), *w.get_ref() as u32));
            }
        }
        if r.weights.get_ref().values().all(|w| *w.get_ref() <= 0) {
            self.error(
                &r.weights,
                format!("{key}.weights: at least one backend needs a positive weight"),
            );
        }
        let sticky = r.sticky.as_ref().map(|s| self.sticky(&key, s));
        if let (true, Some(raw), Some(s)) = (r.drain, &r.sticky, &sticky)
            && s.cookie.is_some()
            && s.secret_from.is_none()
        {
            // In drain mode the cookie names the backend that last served
            // the user, and that backend is honoured at weight 0: unsigned,
            // anyone could write `cutover=1.green` and reach it.
            self.error(
                raw,
                format!(
                    "{key}.sticky: drain = true needs a cookie secret (secret, secret_file or secret_env): an unsigned cookie could name a backend at weight 0 and reach it"
                ),
            );
        }
        let overrides = r.overrides.as_ref().map(|o| self.overrides(&key, o));
        let rollout = r
            .rollout
            .as_ref()
            .and_then(|ro| self.rollout(&key, ro, &weights));
        let shadow = r.shadow.as_ref().map(|s| self.shadow(&key, s, known));
        if let (Some(ro), Some(raw)) = (&rollout, &r.rollout)
            && ro.steps.first() == Some(&0)
            && shadow.as_ref().is_none_or(|s| s.backend != ro.canary)
        {
            self.error(
                &raw.get_ref().steps,
                format!(
                    "{key}.rollout.steps: a \"shadow\" step needs the route's `shadow = {{ backend = \"{}\" }}`",
                    ro.canary
                ),
            );
        }
        RouteSpec {
            name: r.name.get_ref().clone(),
            host,
            path_prefix,
            weights,
            sticky,
            overrides,
            drain: r.drain,
            expose_backend_header: r.expose_backend_header,
            failover: r.failover.unwrap_or(true),
            rollout,
            analysis: r
                .analysis
                .as_ref()
                .map(|a| self.analysis(&key, a.get_ref(), r))
                .unwrap_or_default(),
            shadow,
        }
    }

    pub(super) fn host(&mut self, key: &str, h: &Str) -> HostMatch {
        let lower = h.get_ref().to_ascii_lowercase();
        let (suffix, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid {
            self.error(
                h,
                format!(
                    "{key}.host: \"{}\" is not a host name or \"*.suffix\" wildcard",
                    h.get_ref()
                ),
            );
        }
        if suffix {
            HostMatch::Suffix(name.to_owned())
        } else {
            HostMatch::Exact(name.to_owned())
        }
    }

    pub(super) fn sticky(&mut self, key: &str, s: &Spanned<RawSticky>) -> StickySpec {
        let raw = s.get_ref();
        if raw.cookie.is_none() && raw.header.is_none() {
            self.error(s, format!("{key}.sticky: set `cookie`, `header`, or both"));
        }
        let cookie = raw
            .cookie
            .as_ref()
            .map(|c| self.cookie_name(&format!("{key}.sticky.cookie"), c));
        let header = raw
            .header
            .as_ref()
            .and_then(|h| self.header_name(&format!("{key}.sticky.header"), h));
        let max_age = raw
            .max_age
            .as_ref()
            .map(|_| self.duration(&format!("{key}.sticky.max_age"), &raw.max_age, 0));
        let hash_seed = raw.hash_seed.as_ref().map_or(0, |n| *n.get_ref() as u64);
        let (secret, secret_from) = self.secret(
            &format!("{key}.sticky"),
            s,
            &raw.secret,
            &raw.secret_file,
            &raw.secret_env,
            "secret",
        );
        StickySpec {
            cookie,
            max_age,
            header,
            hash_seed,
            secret: secret.map(String::into_bytes),
            secret_from,
        }
    }

    pub(super) fn overrides(&mut self, key: &str, o: &Spanned<RawOverride>) -> OverrideSpec {
        let raw = o.get_ref();
        let header = raw
            .header
            .as_ref()
            .and_then(|h| self.header_name(&format!("{key}.override.header"), h));
        let cookie = raw
            .cookie
            .as_ref()
            .map(|c| self.cookie_name(&format!("{key}.override.cookie"), c));
        let (token, token_from) = self.secret(
            &format!("{key}.override"),
            o,
            &raw.token,
            &raw.token_file,
            &raw.token_env,
            "token",
        );
        OverrideSpec {
            header,
            cookie,
            token,
            token_from,
        }
    }
}

/// Whether one browser may send the same cookies to both host matches.
pub(super) fn hosts_overlap(a: &HostMatch, b: &HostMatch) -> bool {
    let under = |name: &str, suffix: &str| name == suffix || name.ends_with(&format!(".{suffix}"));
    match (a, b) {
        (HostMatch::Any, _) | (_, HostMatch::Any) => true,
        (HostMatch::Exact(x), HostMatch::Exact(y)) => x == y,
        (HostMatch::Suffix(s), HostMatch::Exact(e))
        | (HostMatch::Exact(e), HostMatch::Suffix(s)) => under(e, s),
        (HostMatch::Suffix(x), HostMatch::Suffix(y)) => under(x, y) || under(y, x),
    }
}

/// The same signing key, as written (sources, not resolved values: this
/// must hold without reading secrets).
pub(super) fn same_secret(a: &StickySpec, b: Option<&StickySpec>) -> bool {
    let Some(b) = b else { return false };
    let source = |s: &StickySpec| s.secret_from.as_ref().map(|r| r.source.clone());
    source(a) == source(b) && a.secret == b.secret
}
