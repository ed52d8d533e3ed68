//! The shadow's metric families, and per (route, class) what
//! `/admin/shadow` shows: counts from the counters, one example if the
//! route keeps them. Owned by [`crate::metrics::Metrics`], so it outlives
//! reloads like the series do.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use prometheus::{IntCounterVec, Opts, Registry};
use serde_json::{Value, json};

use super::Counts;
use super::evidence::ShadowEvidence;

/// Distinct classes per route at most; more count as `other`, so a
/// backend answering random field names cannot grow the series without
/// bound.
pub const MAX_CLASSES: usize = 64;

pub struct ShadowMetrics {
    requests: IntCounterVec,
    mismatches: IntCounterVec,
    noise: IntCounterVec,
    compared: IntCounterVec,
    routes: Mutex<BTreeMap<String, RouteBook>>,
    /// Per (route, shadow backend): the copies as A/B evidence.
    evidence: Mutex<HashMap<(String, String), Arc<ShadowEvidence>>>,
    /// Latency bucket edges (`metrics.buckets`).
    edges: Vec<f64>,
}

#[derive(Default)]
struct RouteBook {
    backend: String,
    classes: BTreeMap<String, Option<Example>>,
}

/// One request that showed a class (`keep_examples = true` only).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Example {
    /// `METHOD /path?query`.
    pub request: String,
    pub primary_status: u16,
    pub shadow_status: u16,
    pub diff: String,
    pub primary_body: String,
    pub shadow_body: String,
}

/// One comparison's outcome.
pub struct Compared {
    pub classes: Vec<String>,
    /// Classes the primary also showed against itself (`noise = true`).
    pub noise: Vec<String>,
    pub example: Option<Example>,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let v = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(v.clone()))
        .expect("registered once");
    v
}

impl ShadowMetrics {
    pub fn new(registry: &Registry, edges: &[f64]) -> ShadowMetrics {
        ShadowMetrics {
            requests: counter_vec(
                registry,
                "cutover_shadow_requests_total",
                "Mirrored copies by route, shadow backend and result: sent, dropped (worker queue full), skipped (body too large, streamed, or the client's failed), error (no answer from the shadow).",
                &["route", "backend", "result"],
            ),
            mismatches: counter_vec(
                registry,
                "cutover_shadow_mismatches_total",
                "Compared copies whose answer differed from the client's, by class (status, header:NAME, body_field:PATH, body_not_json, body_bytes).",
                &["route", "backend", "class"],
            ),
            noise: counter_vec(
                registry,
                "cutover_shadow_noise_total",
                "Differences the primary backend also showed against itself (noise = true): not counted as mismatches.",
                &["route", "backend", "class"],
            ),
            compared: counter_vec(
                registry,
                "cutover_shadow_compared_total",
                "Mirrored copies whose answer was compared with the client's.",
                &["route", "backend"],
            ),
            routes: Mutex::default(),
            evidence: Mutex::default(),
            edges: edges.to_vec(),
        }
    }

    /// The evidence of (route, backend)'s copies, created on first use.
    pub fn evidence(&self, route: &str, backend: &str) -> Arc<ShadowEvidence> {
        self.evidence
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((route.to_owned(), backend.to_owned()))
            .or_insert_with(|| Arc::new(ShadowEvidence::new(&self.edges)))
            .clone()
    }

    /// The request counters of (route, backend), resolved once per table.
    pub fn counts(&self, route: &str, backend: &str) -> Counts {
        let c = |r| self.requests.with_label_values(&[route, backend, r]);
        Counts {
            sent: c("sent"),
            dropped: c("dropped"),
            skipped: c("skipped"),
            error: c("error"),
        }
    }

    /// Counts one comparison (off the request path, in the copy's task).
    pub fn record(&self, route: &str, backend: &str, c: Compared) {
        self.compared.with_label_values(&[route, backend]).inc();
        if c.classes.is_empty() {
            return;
        }
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let book = routes.entry(route.to_owned()).or_default();
        backend.clone_into(&mut book.backend);
        for class in c.classes {
            let noise = c.noise.contains(&class);
            let class = if book.classes.contains_key(&class) || book.classes.len() < MAX_CLASSES {
                class
            } else {
                "other".to_owned()
            };
            let vec = if noise { &self.noise } else { &self.mismatches };
            vec.with_label_values(&[route, backend, &class]).inc();
            let example = book.classes.entry(class).or_default();
            if example.is_none() && !noise {
                example.clone_from(&c.example);
            }
        }
    }

    /// `/admin/shadow` for the routes with a shadow now, `(route, backend,
    /// sample)`.
    pub fn document(&self, shadows: &[(String, String, f64)]) -> Value {
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let docs: Vec<Value> = shadows
            .iter()
            .map(|(route, backend, sample)| {
                let get = |r: &str| self.requests.with_label_values(&[route, backend, r]).get();
                let compared = self.compared.with_label_values(&[route, backend]).get();
                let mut classes: Vec<Value> = routes
                    .get(route)
                    .filter(|b| &b.backend == backend)
                    .map(|b| {
                        b.classes
                            .iter()
                            .map(|(class, example)| {
                                let labels = [route.as_str(), backend.as_str(), class.as_str()];
                                let count = self.mismatches.with_label_values(&labels).get();
                                let noise = self.noise.with_label_values(&labels).get();
                                json!({
                                    "class": class,
                                    "count": count,
                                    "share": share(count, compared),
                                    "noise": noise,
                                    "example": example,
                                })
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                classes.sort_by_key(|c| std::cmp::Reverse(c["count"].as_u64().unwrap_or(0)));
                json!({
                    "route": route,
                    "backend": backend,
                    "sample": sample,
                    "sent": get("sent"),
                    "dropped": get("dropped"),
                    "skipped": get("skipped"),
                    "error": get("error"),
                    "compared": compared,
                    "classes": classes,
                })
            })
            .collect();
        json!({ "routes": docs })
    }
}

fn share(n: u64, of: u64) -> f64 {
    if of == 0 { 0.0 } else { n as f64 / of as f64 }
}
