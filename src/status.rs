//! `cutover status`: `/admin/state` as a small table for a terminal, the
//! variants of each route side by side.

use serde_json::Value;

pub fn run(admin: &str) -> anyhow::Result<()> {
    let body = crate::admin_client::request(admin, "GET", "/admin/state", None)?;
    let state: Value = serde_json::from_slice(&body)?;
    print!("{}", render(&state));
    Ok(())
}

pub fn render(state: &Value) -> String {
    let mut out = String::new();
    let cfg = &state["config"];
    out.push_str(&format!(
        "config {} (generation {}, sha256 {})\n",
        cfg["path"].as_str().unwrap_or("?"),
        cfg["generation"],
        cfg["sha256"].as_str().unwrap_or("").get(..12).unwrap_or("")
    ));
    if let Some(err) = cfg["last_reload_error"].as_str() {
        out.push_str(&format!("last reload FAILED: {err}\n"));
    }
    for route in state["routes"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "\nroute {}\n",
            route["name"].as_str().unwrap_or("?")
        ));
        if route["rollout"].is_object() {
            let name = route["name"].as_str().unwrap_or("?");
            out.push_str("  ");
            out.push_str(&crate::rollout::cli::render(name, &route["rollout"]));
        }
        out.push_str(&format!(
            "  {:<12} {:>6} {:>12} {:>10} {:>7} {:>7} {:>9} {:>9} {:>9}\n",
            "backend", "weight", "buckets", "requests", "5xx", "5xx %", "p50", "p90", "p99"
        ));
        for b in route["backends"].as_array().into_iter().flatten() {
            let lat = |q: &str| {
                b["latency_seconds"][q]
                    .as_f64()
                    .map_or("-".to_owned(), |s| format!("{:.1}ms", s * 1000.0))
            };
            out.push_str(&format!(
                "  {:<12} {:>6} {:>12} {:>10} {:>7} {:>6.2}% {:>9} {:>9} {:>9}\n",
                b["name"].as_str().unwrap_or("?"),
                b["weight"].to_string(),
                format!("{}-{}", b["buckets"][0], b["buckets"][1]),
                b["requests"].to_string(),
                b["errors_5xx"].to_string(),
                b["error_rate"].as_f64().unwrap_or(0.0) * 100.0,
                lat("p50"),
                lat("p90"),
                lat("p99"),
            ));
        }
    }
    out
}
