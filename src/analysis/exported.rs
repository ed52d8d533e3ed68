//! The A/B evidence as Prometheus series, so that a verdict can be computed
//! from the evidence of every replica summed ([`super::prometheus`]):
//!
//! - `cutover_analysis_requests_total{route,backend,class="ok|error"}`,
//! - `cutover_analysis_duration_seconds{route,backend}` (a histogram with the
//!   `metrics.buckets` edges),
//! - `cutover_analysis_new_users_total{route,backend}` (new sticky users, the
//!   unit of the sample-ratio test on sticky routes).
//!
//! They count exactly what the local verdict counts (5xx sent to the client,
//! the proxy's own 502/503/504 included, tester overrides excluded), unlike
//! `cutover_request_duration_seconds`, which includes overrides. They cost
//! the request path nothing: this collector reads the striped evidence
//! counters at scrape time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};

use super::evidence::Evidence;

pub const REQUESTS: &str = "cutover_analysis_requests_total";
pub const DURATION: &str = "cutover_analysis_duration_seconds";
pub const NEW_USERS: &str = "cutover_analysis_new_users_total";

/// Every (route, backend)'s evidence, shared with [`crate::metrics::Metrics`].
pub type EvidenceMap = Arc<Mutex<HashMap<(String, String), Arc<Evidence>>>>;

/// Exports the evidence of an [`EvidenceMap`] at each scrape.
pub struct EvidenceCollector {
    map: EvidenceMap,
    descs: Vec<Desc>,
}

impl EvidenceCollector {
    pub fn new(map: EvidenceMap) -> EvidenceCollector {
        let desc = |name: &str, help: &str, labels: &[&str]| {
            Desc::new(
                name.into(),
                help.into(),
                labels.iter().map(|l| (*l).to_owned()).collect(),
                HashMap::new(),
            )
            .expect("valid metric")
        };
        let descs = vec![
            desc(
                REQUESTS,
                "A/B evidence: responses by class (error: 5xx sent to the client, the proxy's own included), tester overrides excluded.",
                &["route", "backend", "class"],
            ),
            desc(
                DURATION,
                "A/B evidence: latency (request head to response head) of the responses counted in cutover_analysis_requests_total.",
                &["route", "backend"],
            ),
            desc(
                NEW_USERS,
                "A/B evidence: requests that received a new sticky cookie (one per new user).",
                &["route", "backend"],
            ),
        ];
        EvidenceCollector { map, descs }
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<proto::LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = proto::LabelPair::default();
            l.set_name((*k).to_owned());
            l.set_value((*v).to_owned());
            l
        })
        .collect()
}

fn counter(pairs: &[(&str, &str)], value: u64) -> proto::Metric {
    let mut c = proto::Counter::default();
    c.set_value(value as f64);
    let mut m = proto::Metric::from_label(labels(pairs));
    m.set_counter(c);
    m
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<proto::Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_owned());
    f.set_help(help.to_owned());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

impl Collector for EvidenceCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut all: Vec<((String, String), Arc<Evidence>)> = self
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let (mut requests, mut durations, mut users) = (Vec::new(), Vec::new(), Vec::new());
        for ((route, backend), e) in &all {
            let c = e.snapshot();
            let rb = [("route", route.as_str()), ("backend", backend.as_str())];
            let with_class = |class| [rb[0], rb[1], ("class", class)];
            requests.push(counter(
                &with_class("ok"),
                c.requests.saturating_sub(c.errors),
            ));
            requests.push(counter(&with_class("error"), c.errors));
            users.push(counter(&rb, c.assigned));
            let mut h = proto::Histogram::default();
            let mut cumulative = 0;
            for (edge, n) in e.edges().iter().zip(&c.buckets) {
                cumulative += n;
                let mut b = proto::Bucket::default();
                b.set_upper_bound(*edge);
                b.set_cumulative_count(cumulative);
                h.bucket.push(b);
            }
            // The `+Inf` bucket is the count.
            h.set_sample_count(c.buckets.iter().sum());
            h.set_sample_sum(c.sum_nanos as f64 / 1e9);
            let mut m = proto::Metric::from_label(labels(&rb));
            m.set_histogram(h);
            durations.push(m);
        }
        vec![
            family(
                REQUESTS,
                self.descs[0].help.as_str(),
                MetricType::COUNTER,
                requests,
            ),
            family(
                DURATION,
                self.descs[1].help.as_str(),
                MetricType::HISTOGRAM,
                durations,
            ),
            family(
                NEW_USERS,
                self.descs[2].help.as_str(),
                MetricType::COUNTER,
                users,
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_what_the_verdict_counts() {
        let map: EvidenceMap = Arc::default();
        let e = Arc::new(Evidence::new(&[0.01, 0.1]));
        map.lock()
            .unwrap()
            .insert(("app".into(), "green".into()), e.clone());
        e.record(true, 0.005);
        e.record(false, 0.05);
        e.record(false, 2.0);
        e.assigned();
        let registry = prometheus::Registry::new();
        registry
            .register(Box::new(EvidenceCollector::new(map)))
            .unwrap();
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        for line in [
            r#"cutover_analysis_requests_total{route="app",backend="green",class="ok"} 2"#,
            r#"cutover_analysis_requests_total{route="app",backend="green",class="error"} 1"#,
            r#"cutover_analysis_duration_seconds_bucket{route="app",backend="green",le="0.01"} 1"#,
            r#"cutover_analysis_duration_seconds_bucket{route="app",backend="green",le="0.1"} 2"#,
            r#"cutover_analysis_duration_seconds_bucket{route="app",backend="green",le="+Inf"} 3"#,
            r#"cutover_analysis_duration_seconds_sum{route="app",backend="green"} 2.055"#,
            r#"cutover_analysis_duration_seconds_count{route="app",backend="green"} 3"#,
            r#"cutover_analysis_new_users_total{route="app",backend="green"} 1"#,
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
    }
}
