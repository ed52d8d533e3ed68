//! The JSON of `GET /admin/analysis` and of the gate endpoints. The key
//! names are a contract (README, "Comparing blue and green").

use serde_json::{Value, json};

use super::Bounds;
use super::verdict::Kind;
use super::window::{Judged, RouteAnalysis};

/// `{"routes": [...]}`.
pub fn document(analyses: &[RouteAnalysis]) -> Value {
    json!({ "routes": analyses.iter().map(route).collect::<Vec<_>>() })
}

fn route(a: &RouteAnalysis) -> Value {
    json!({
        "name": a.name,
        "baseline": a.baseline,
        "window_seconds": a.window_seconds,
        "confidence": a.settings.confidence,
        "srm_confidence": a.settings.srm_confidence,
        "source": a.source,
        "replicas": a.replicas,
        "comparisons": a.comparisons.iter().map(|j| comparison(a, j)).collect::<Vec<_>>(),
    })
}

/// A bound as JSON: `null` when unbounded.
fn bounds(b: &Bounds) -> Value {
    let f = |x: f64| if x.is_finite() { json!(x) } else { Value::Null };
    json!({ "estimate": f(b.estimate), "lower": f(b.lower), "upper": f(b.upper) })
}

fn rate(errors: u64, requests: u64) -> f64 {
    if requests == 0 {
        0.0
    } else {
        errors as f64 / requests as f64
    }
}

fn comparison(a: &RouteAnalysis, j: &Judged) -> Value {
    let c = &j.comparison;
    let quantiles: serde_json::Map<String, Value> = c
        .latency
        .quantiles
        .iter()
        .map(|p| {
            (
                format!("p{}", super::verdict::qname(p.q)),
                json!({ "backend": bounds(&p.green), "baseline": bounds(&p.blue) }),
            )
        })
        .collect();
    json!({
        "backend": j.backend,
        "requests": j.green.requests,
        "errors": j.green.errors,
        "error_rate": rate(j.green.errors, j.green.requests),
        "baseline_requests": j.blue.requests,
        "baseline_errors": j.blue.errors,
        "baseline_error_rate": rate(j.blue.errors, j.blue.requests),
        "error_rate_difference": bounds(&c.errors.difference),
        "latency_seconds": quantiles,
        "slower_share": bounds(&c.latency.slower_share),
        "srm": {
            "alarm": a.srm.alarm,
            "e_value": a.srm.e_value,
            "unit": a.srm_unit,
            "expected_shares": a.srm.expected,
            "observed_shares": a.srm.observed,
        },
        "verdict": c.kind.as_str(),
        "reasons": c.reasons,
    })
}

/// The verdict of `route` (and `backend`, else the first comparison; else
/// the worst of them), as `(kind, body)`; `None` when nothing matches.
pub fn gate(
    analyses: &[RouteAnalysis],
    route_name: &str,
    backend: Option<&str>,
) -> Option<(Kind, Value)> {
    let a = analyses.iter().find(|a| a.name == route_name)?;
    let picked: Vec<&Judged> = a
        .comparisons
        .iter()
        .filter(|j| backend.is_none_or(|b| j.backend == b))
        .collect();
    if picked.is_empty() {
        return None;
    }
    let kinds: Vec<Kind> = picked.iter().map(|j| j.comparison.kind).collect();
    let kind = if kinds.contains(&Kind::Fail) {
        Kind::Fail
    } else if kinds.iter().all(|k| *k == Kind::Pass) {
        Kind::Pass
    } else {
        Kind::Inconclusive
    };
    let body = json!({
        "route": a.name,
        "baseline": a.baseline,
        "source": a.source,
        "verdict": kind.as_str(),
        "comparisons": picked.iter().map(|j| comparison(a, j)).collect::<Vec<_>>(),
    });
    Some((kind, body))
}
