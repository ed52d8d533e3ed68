//! Shadow traffic: a sampled copy of a route's requests goes to another
//! backend (`shadow = { backend = "green", ... }`), and its answer is
//! compared with the one the client got. The client never waits for it.
//!
//! - [`mirror`]: the decision on the request path (one thread-local random
//!   number, one thread-local count) and the task that sends the copy;
//! - [`compare`]: the classes of difference; [`json`]: JSON-aware diffs;
//! - [`evidence`]: the copies' status and latency as an A/B comparison;
//! - [`book`]: the metrics, the per-class counts and examples for
//!   `/admin/shadow`, kept across reloads.

pub mod book;
pub mod compare;
pub mod evidence;
pub mod json;
pub mod mirror;

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};
use prometheus::IntCounter;

use crate::upstream::Backend;
pub use book::ShadowMetrics;

/// A route's validated `shadow` table.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowSpec {
    /// The backend that gets the copies.
    pub backend: String,
    /// The share of eligible requests copied, 0..=1.
    pub sample: f64,
    /// Methods copied; default GET and HEAD.
    pub methods: Vec<Method>,
    /// Bodies (the request's, and both answers for comparison) up to this
    /// many bytes; larger requests are not copied, larger answers not
    /// compared.
    pub max_body: usize,
    pub compare_headers: Vec<HeaderName>,
    /// JSON paths whose differences do not count.
    pub ignore: Vec<json::Path>,
    /// Also send a copy to another endpoint of the primary backend; a class
    /// the primary shows against itself is noise.
    pub noise: bool,
    /// Keep one example per class for `/admin/shadow` (bodies can hold
    /// personal data: off by default).
    pub keep_examples: bool,
    /// The copy's own deadline, head and body.
    pub timeout: Duration,
    /// Copies pending or in flight per worker at most; more are dropped.
    pub queue: usize,
    /// `file:line:col: ...` for each non-idempotent method listed:
    /// `cutover check` prints them as warnings.
    pub warnings: Vec<String>,
}

/// Defaults of the `shadow` keys.
pub const DEFAULT_SAMPLE: f64 = 1.0;
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_QUEUE: usize = 64;

/// A route's shadow, built with its routing table.
pub struct Shadow {
    pub spec: ShadowSpec,
    pub route: Arc<str>,
    pub backend: Arc<Backend>,
    /// `fastrand::u64(..) < threshold` samples; `None`: every request.
    threshold: Option<u64>,
    pub counts: Counts,
    pub book: Arc<ShadowMetrics>,
    pub evidence: Arc<evidence::ShadowEvidence>,
}

/// `cutover_shadow_requests_total{route,backend,result}` handles.
pub struct Counts {
    pub sent: IntCounter,
    pub dropped: IntCounter,
    pub skipped: IntCounter,
    pub error: IntCounter,
}

impl Shadow {
    pub fn new(
        route: &str,
        spec: &ShadowSpec,
        backend: Arc<Backend>,
        book: &Arc<ShadowMetrics>,
    ) -> Shadow {
        let threshold = (spec.sample < 1.0).then_some((spec.sample * u64::MAX as f64) as u64);
        Shadow {
            counts: book.counts(route, &spec.backend),
            evidence: book.evidence(route, &spec.backend),
            spec: spec.clone(),
            route: route.into(),
            backend,
            threshold,
            book: book.clone(),
        }
    }
}
