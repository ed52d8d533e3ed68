//! The routing table: one immutable snapshot of everything the request path
//! needs, built off the hot path from a validated [`Config`] and published
//! whole with one `ArcSwap::store`.

use std::sync::Arc;
use std::time::SystemTime;

use super::matcher::Matcher;
use super::overrides::Overrides;
use super::sticky::{CookieCodec, Sticky};
use super::{Bucket, Split};
use crate::config::{Config, HostMatch, Loaded};
use crate::metrics::{Failovers, Metrics, RouteMetrics};
use crate::upstream::{Backend, EndpointRegistry};
use http::HeaderValue;

/// Where a table's config came from, for `/admin/state`.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: std::path::PathBuf,
    pub sha256: String,
    pub fingerprint: String,
    pub loaded_at: SystemTime,
}

pub struct RoutingTable {
    /// 1 for the first config, +1 per successful reload.
    pub generation: u64,
    pub source: Source,
    pub routes: Box<[Route]>,
    matcher: Matcher,
    /// Metrics for requests that match no route (`route=""`).
    pub unmatched: RouteMetrics,
    /// Every backend of the config, sorted by name.
    pub backends: Box<[Arc<Backend>]>,
}

pub struct Route {
    /// Its place in [`RoutingTable::routes`].
    pub index: usize,
    pub name: Arc<str>,
    /// The host and path prefix as configured, for `/admin/state`.
    pub host: String,
    pub path_prefix: String,
    /// This route's backends, sorted by name, aligned with `split`.
    pub backends: Box<[RouteBackend]>,
    pub split: Split,
    pub sticky: Option<Sticky>,
    pub overrides: Option<Overrides>,
    /// Users on a weight-0 backend stay there (soft drain).
    pub drain: bool,
    pub expose_backend_header: bool,
    pub failover: bool,
    /// `cutover_failovers_total` handles, created on first use.
    pub failovers: Failovers,
    /// How the backends are compared (`analysis`); the evidence handles are
    /// in each backend's `metrics`.
    pub analysis: crate::config::AnalysisSpec,
    /// `shadow = { ... }`: copies of sampled requests (`crate::shadow`).
    pub shadow: Option<Arc<crate::shadow::Shadow>>,
}

pub struct RouteBackend {
    pub backend: Arc<Backend>,
    pub weight: u32,
    /// The backend's name as a header value, for `x-cutover-backend`.
    pub name_value: HeaderValue,
    pub metrics: RouteMetrics,
}

impl RoutingTable {
    pub fn build(
        loaded: &Loaded,
        generation: u64,
        registry: &EndpointRegistry,
        metrics: &Metrics,
    ) -> RoutingTable {
        let config: &Config = &loaded.config;
        let backends = registry.backends(&config.backends);
        let by_name = |name: &str| {
            backends
                .iter()
                .find(|b| &*b.name == name)
                .expect("validated: route backends exist")
                .clone()
        };
        let mut matcher = Matcher::default();
        let routes = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                matcher.insert(&spec.host, &spec.path_prefix, i);
                let weights: Vec<u32> = spec.weights.iter().map(|(_, w)| *w).collect();
                let name: Arc<str> = spec.name.as_str().into();
                let members: Vec<Arc<Backend>> =
                    spec.weights.iter().map(|(b, _)| by_name(b)).collect();
                let member_names: Vec<Arc<str>> = members.iter().map(|b| b.name.clone()).collect();
                Route {
                    index: i,
                    failovers: metrics.failovers(&name, &member_names),
                    name: name.clone(),
                    host: match &spec.host {
                        HostMatch::Any => String::new(),
                        HostMatch::Exact(h) => h.clone(),
                        HostMatch::Suffix(s) => format!("*.{s}"),
                    },
                    path_prefix: spec.path_prefix.clone(),
                    backends: members
                        .into_iter()
                        .zip(&weights)
                        .map(|(backend, weight)| RouteBackend {
                            name_value: HeaderValue::from_str(&backend.name)
                                .expect("validated name"),
                            metrics: metrics.route(
                                &name,
                                &backend.name,
                                Some(*weight),
                                spec.analysis.source.is_some(),
                            ),
                            weight: *weight,
                            backend,
                        })
                        .collect(),
                    split: Split::new(&weights),
                    sticky: spec.sticky.as_ref().map(|s| Sticky {
                        cookie: s
                            .cookie
                            .as_ref()
                            .map(|name| CookieCodec::new(name, s.max_age, s.secret.as_deref())),
                        header: s.header.clone(),
                        hash_seed: s.hash_seed,
                    }),
                    overrides: spec.overrides.as_ref().map(|o| Overrides {
                        header: o.header.clone(),
                        cookie: o.cookie.clone(),
                        token: o.token.clone(),
                    }),
                    drain: spec.drain,
                    expose_backend_header: spec.expose_backend_header,
                    failover: spec.failover,
                    analysis: spec.analysis.clone(),
                    shadow: spec.shadow.as_ref().map(|s| {
                        Arc::new(crate::shadow::Shadow::new(
                            &spec.name,
                            s,
                            by_name(&s.backend),
                            &metrics.shadow,
                        ))
                    }),
                }
            })
            .collect();
        // Stale weight series go only after the new values are set, so a
        // scrape during a reload never finds a weight missing.
        metrics.forget_weights(&config.routes);
        RoutingTable {
            generation,
            source: Source {
                path: loaded.path.clone(),
                sha256: loaded.sha256.clone(),
                fingerprint: loaded.fingerprint.clone(),
                loaded_at: SystemTime::now(),
            },
            routes,
            matcher,
            unmatched: metrics.route(&"".into(), &"".into(), None, false),
            backends: backends.into(),
        }
    }

    /// The route for a request's host and path.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        self.matcher.find(host, path).map(|i| &self.routes[i])
    }
}

impl Route {
    /// The backend owning `bucket`.
    pub fn backend_for(&self, bucket: Bucket) -> usize {
        self.split.pick(bucket)
    }

    /// Counts a request of this route moved from backend `from` to `to`.
    pub fn count_failover(&self, from: usize, to: usize) {
        self.failovers.inc(from, to);
    }

    pub fn backend_index(&self, name: &str) -> Option<usize> {
        self.backends.iter().position(|b| &*b.backend.name == name)
    }
}
