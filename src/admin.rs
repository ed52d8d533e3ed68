//! The admin listener: `/healthz`, `/readyz`, `/metrics`, `/admin/state`,
//! the dashboard (`/`, `/dashboard`, `/admin/history`) and `/admin/rollout`
//! (whose `POST`s need `admin.token`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};

use crate::app::App;
use crate::routing::RoutingTable;

pub async fn serve(listener: tokio::net::TcpListener, app: Arc<App>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let app = app.clone();
                async move {
                    if req.uri().path().starts_with("/admin/rollout") {
                        return Ok::<_, Infallible>(rollout(app, &req).await);
                    }
                    Ok::<_, Infallible>(route(&app, &req))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn route(app: &App, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    // Flagger's webhooks POST their event; the gate ignores the body.
    if req.uri().path() == "/admin/analysis/gate" && req.method() == Method::POST {
        return analysis_gate(app, req);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" if app.is_draining() => {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining\n".into())
        }
        "/readyz" => text(StatusCode::OK, "ready\n".into()),
        "/metrics" => {
            refresh_endpoint_gauges(app);
            let mut r = text(StatusCode::OK, app.metrics().render());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/admin/state" => {
            let body = serde_json::to_string_pretty(&state(app)).unwrap_or_default();
            let mut r = text(StatusCode::OK, body + "\n");
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            r
        }
        "/admin/analysis" => json_response(
            StatusCode::OK,
            &crate::analysis::json::document(&app.analysis.latest()),
        ),
        "/admin/analysis/gate" | "/admin/analysis/verdict" => analysis_gate(app, req),
        "/admin/shadow" => json_response(StatusCode::OK, &shadow(app)),
        "/" | "/dashboard" => dashboard_page(),
        "/admin/history" => {
            let since = query_f64(req.uri().query(), "since").unwrap_or(0.0);
            json_response(StatusCode::OK, &app.history.json(since))
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /dashboard /healthz /readyz /metrics /admin/state /admin/history /admin/rollout\n"
                .into(),
        ),
    }
}

/// `GET /admin/shadow`: per route with a shadow, its copies and classes.
fn shadow(app: &App) -> Value {
    let table = app.shared.table.load();
    let shadows: Vec<(String, String, f64)> = table
        .routes
        .iter()
        .filter_map(|r| {
            let s = r.shadow.as_ref()?;
            Some((r.name.to_string(), s.spec.backend.clone(), s.spec.sample))
        })
        .collect();
    app.metrics().shadow.document(&shadows)
}

/// The dashboard page, with a policy that keeps it from loading anything
/// but same-origin JSON.
fn dashboard_page() -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(
        crate::dashboard::PAGE.as_bytes(),
    )));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(crate::dashboard::CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

/// `GET /admin/rollout`: every route's rollout; `POST
/// /admin/rollout/<route>/<pause|resume|promote|abort>`: a person's command,
/// off unless `admin.token` is set, then only with `Authorization: Bearer
/// <token>` (compared in constant time).
async fn rollout(app: Arc<App>, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().trim_end_matches('/');
    if req.method() == Method::GET || req.method() == Method::HEAD {
        if path != "/admin/rollout" {
            return text(
                StatusCode::NOT_FOUND,
                "not found: GET /admin/rollout\n".into(),
            );
        }
        let routes: Vec<Value> = app
            .rollouts
            .routes()
            .into_iter()
            .filter_map(|r| {
                let mut v = app.rollouts.describe(&r)?;
                v["route"] = json!(r);
                Some(v)
            })
            .collect();
        return json_response(StatusCode::OK, &json!({ "routes": routes }));
    }
    if req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET or POST only\n".into());
    }
    let Some(token) = app.admin_token.as_deref() else {
        return text(
            StatusCode::FORBIDDEN,
            "mutating admin endpoints are off: set admin.token (or token_file, token_env)\n".into(),
        );
    };
    if !authorized(req, token) {
        let mut r = text(
            StatusCode::UNAUTHORIZED,
            "needs Authorization: Bearer <admin.token>\n".into(),
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    let mut parts = path
        .strip_prefix("/admin/rollout/")
        .unwrap_or_default()
        .split('/');
    let (Some(route), Some(action), None) = (parts.next(), parts.next(), parts.next()) else {
        return text(
            StatusCode::NOT_FOUND,
            "not found: POST /admin/rollout/<route>/<pause|resume|promote|abort>\n".into(),
        );
    };
    let Some(command) = crate::rollout::machine::Command::parse(action) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("\"{action}\" is not one of pause, resume, promote, abort\n"),
        );
    };
    let route = route.to_owned();
    // State files are written: off the control runtime.
    let worker = app.clone();
    let name = route.clone();
    let result = tokio::task::spawn_blocking(move || worker.rollout_command(&name, command)).await;
    match result {
        Ok(Ok(())) => {
            let state = app.rollouts.describe(&route).unwrap_or(Value::Null);
            json_response(StatusCode::OK, &state)
        }
        Ok(Err(why)) => text(StatusCode::CONFLICT, why + "\n"),
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the command did not complete\n".into(),
        ),
    }
}

/// `Authorization: Bearer <token>`, the token compared in constant time.
fn authorized(req: &Request<Incoming>, token: &str) -> bool {
    use subtle::ConstantTimeEq;
    let Some(given) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    given.trim().as_bytes().ct_eq(token.as_bytes()).into()
}

fn json_response(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_string_pretty(v).unwrap_or_default();
    let mut r = text(status, body + "\n");
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

/// `/admin/analysis/gate?route=NAME[&backend=B][&inconclusive=pass]`: 200
/// on pass, 503 on fail or inconclusive, for Flagger's webhooks (any
/// non-2xx fails a check). `/admin/analysis/verdict` answers the same JSON
/// with 200 whatever the verdict, for Argo Rollouts' web provider, whose
/// `successCondition`/`failureCondition` read `result.verdict`.
fn analysis_gate(app: &App, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let query = req.uri().query().unwrap_or("");
    let param = |name: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    };
    let Some(route) = param("route") else {
        return text(StatusCode::BAD_REQUEST, "route=NAME is required\n".into());
    };
    let latest = app.analysis.latest();
    let Some((kind, body)) = crate::analysis::json::gate(&latest, route, param("backend")) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("no comparison for route {route:?}\n"),
        );
    };
    let lenient = param("inconclusive") == Some("pass");
    let status = match kind {
        _ if req.uri().path() == "/admin/analysis/verdict" => StatusCode::OK,
        crate::analysis::Kind::Pass => StatusCode::OK,
        crate::analysis::Kind::Inconclusive if lenient => StatusCode::OK,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    json_response(status, &body)
}

/// The number `key=N` of a query string, if there is one.
fn query_f64(query: Option<&str>, key: &str) -> Option<f64> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite())
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// `cutover_endpoint_healthy` is derived at scrape time, so that ejections
/// that simply expire need no event.
fn refresh_endpoint_gauges(app: &App) {
    let table = app.shared.table.load();
    let gauge = &app.metrics().endpoint_healthy;
    for b in table.backends.iter() {
        for e in b.endpoints.iter() {
            gauge
                .with_label_values(&[&*b.name, &*e.label])
                .set(i64::from(e.is_available()));
        }
    }
    // Set every value first, then drop stale series: no scrape may see an
    // endpoint missing.
    crate::metrics::retain(gauge, |backend, endpoint| {
        table
            .backends
            .iter()
            .any(|b| &*b.name == backend && b.endpoints.iter().any(|e| &*e.label == endpoint))
    });
}

/// The JSON document of `/admin/state`.
pub fn state(app: &App) -> Value {
    let table = app.shared.table.load_full();
    let counts = request_counts(app);
    let loaded_at = table
        .source
        .loaded_at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    json!({
        "config": {
            "path": table.source.path.display().to_string(),
            "sha256": table.source.sha256,
            "loaded_at_unix": loaded_at.as_secs_f64(),
            "generation": table.generation,
            "last_reload_error": app.last_error(),
        },
        "draining": app.is_draining(),
        "health_checkers": app.health.count(),
        "routes": routes(app, &table, &counts),
    })
}

#[derive(Default, Clone, Copy)]
struct Counts {
    requests: u64,
    errors_5xx: u64,
}

/// Sums `cutover_requests_total` by (route, backend), overrides included.
fn request_counts(app: &App) -> HashMap<(String, String), Counts> {
    let mut out: HashMap<(String, String), Counts> = HashMap::new();
    let family = app.metrics().requests_family();
    for m in family.get_metric() {
        let label = |name: &str| {
            m.get_label()
                .iter()
                .find(|l| l.name() == name)
                .map(|l| l.value().to_owned())
                .unwrap_or_default()
        };
        let n = m.get_counter().value() as u64;
        let c = out.entry((label("route"), label("backend"))).or_default();
        c.requests += n;
        if label("code").starts_with('5') {
            c.errors_5xx += n;
        }
    }
    out
}

fn routes(
    app: &App,
    table: &RoutingTable,
    counts: &HashMap<(String, String), Counts>,
) -> Vec<Value> {
    table
        .routes
        .iter()
        .map(|r| {
            let backends: Vec<Value> = r
                .backends
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let c = counts.get(&(r.name.to_string(), b.backend.name.to_string())).copied().unwrap_or_default();
                    let (start, end) = r.split.range(i);
                    let h = b.metrics.duration();
                    json!({
                        "name": &*b.backend.name,
                        "weight": b.weight,
                        "buckets": [start, end],
                        "requests": c.requests,
                        "errors_5xx": c.errors_5xx,
                        "error_rate": if c.requests > 0 { c.errors_5xx as f64 / c.requests as f64 } else { 0.0 },
                        "latency_seconds": {
                            "p50": quantile(&h, 0.5),
                            "p90": quantile(&h, 0.9),
                            "p99": quantile(&h, 0.99),
                        },
                        "endpoints": b.backend.endpoints.iter().map(|e| json!({
                            "address": &*e.label,
                            "available": e.is_available(),
                            "healthy": e.is_healthy(),
                            "health_check": e.health_detail.lock().map(|d| d.clone()).unwrap_or_default(),
                            "ejected_for_seconds": b.backend.ejected_for(e).map(|d| d.as_secs_f64()),
                            "in_flight": e.in_flight(),
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            json!({
                "name": &*r.name,
                "host": if r.host.is_empty() { None } else { Some(&r.host) },
                "path_prefix": r.path_prefix,
                "sticky": r.sticky.is_some(),
                "drain": r.drain,
                "backends": backends,
                "rollout": app.rollouts.describe(&r.name),
            })
        })
        .collect()
}

/// A quantile estimated from histogram buckets the way Prometheus'
/// `histogram_quantile` does: linear interpolation inside the bucket.
/// `None` before the first observation.
pub fn quantile(hist: &prometheus::proto::Histogram, q: f64) -> Option<f64> {
    let total = hist.get_sample_count();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut prev_bound = 0.0;
    let mut prev_count = 0u64;
    for b in hist.get_bucket() {
        let count = b.cumulative_count();
        if count as f64 >= rank {
            let in_bucket = (count - prev_count) as f64;
            let frac = if in_bucket > 0.0 {
                (rank - prev_count as f64) / in_bucket
            } else {
                1.0
            };
            return Some(prev_bound + (b.upper_bound() - prev_bound) * frac);
        }
        prev_bound = b.upper_bound();
        prev_count = count;
    }
    // Above the highest bucket: Prometheus answers its upper bound.
    Some(prev_bound)
}
