//! `cutover report`: the A/B verdicts of `/admin/analysis` side by side in a
//! terminal, with an exit status for CI/CD gates: 0 pass, 1 fail, 2
//! inconclusive (the worst comparison shown decides), 3 when the admin
//! endpoint cannot be read.
//!
//! With `--prometheus URL` it needs no proxy: the same verdict function is
//! applied to the evidence of every replica, summed by Prometheus.

use std::process::ExitCode;

use serde_json::Value;

pub fn run(admin: &str, route: Option<&str>, json: bool) -> ExitCode {
    match fetch(admin) {
        Ok(doc) => {
            // Shadow classes are extra: a proxy without `/admin/shadow` (or
            // without a shadow) still gets its verdicts.
            let shadow = crate::admin_client::request(admin, "GET", "/admin/shadow", None)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
            let (mut text, code) = render(&doc, route, json);
            if let (Some(shadow), false) = (shadow, json) {
                text.push_str(&render_shadow(&shadow, route));
            }
            print!("{text}");
            ExitCode::from(code)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(3)
        }
    }
}

/// `cutover report --prometheus URL --route NAME --window W`: the verdicts
/// of `route` over the last `window`, from every replica's evidence.
pub fn run_prometheus(url: &str, route: &str, window: &str, json: bool) -> ExitCode {
    match from_prometheus(url, route, window) {
        Ok(doc) => {
            let (text, code) = render(&doc, Some(route), json);
            print!("{text}");
            ExitCode::from(code)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(3)
        }
    }
}

fn from_prometheus(url: &str, route: &str, window: &str) -> anyhow::Result<Value> {
    use crate::analysis::window::{SrmUnit, Subject, judge_counts};
    use anyhow::Context;
    crate::analysis::prometheus::check_url(url)
        .map_err(|e| anyhow::anyhow!("--prometheus: {e}"))?;
    let window = humantime::parse_duration(window)
        .with_context(|| format!("--window: \"{window}\" is not a duration like 10m"))?;
    if window.is_zero() {
        anyhow::bail!("--window must be more than 0");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let now = crate::analysis::prometheus::now_unix();
    let f = rt.block_on(crate::analysis::prometheus::fetch(
        url.trim_end_matches('/'),
        route,
        window,
        now,
    ))?;
    if f.backends.len() < 2 {
        anyhow::bail!(
            "prometheus has evidence of {} backend(s) of route \"{route}\" (cutover_analysis_requests_total): two are needed",
            f.backends.len()
        );
    }
    // As the proxy does by default: the baseline is the largest weight in
    // force, new sticky users are the SRM unit where there are any.
    let backends: Vec<(String, u32)> = f
        .backends
        .iter()
        .map(|b| (b.clone(), f.weights.get(b).copied().unwrap_or(0)))
        .collect();
    let baseline = backends
        .iter()
        .fold(None::<&(String, u32)>, |best, b| match best {
            Some(x) if x.1 >= b.1 => Some(x),
            _ => Some(b),
        })
        .map(|b| b.0.clone())
        .unwrap_or_default();
    let unit = if backends.iter().all(|b| b.1 == 0) {
        SrmUnit::None
    } else if f.counts.iter().any(|c| c.assigned > 0) {
        SrmUnit::NewUsers
    } else {
        SrmUnit::Requests
    };
    let subject = Subject {
        name: route.to_owned(),
        backends,
        baseline,
        unit,
        settings: crate::analysis::Settings::default(),
        edges: f.edges.clone(),
    };
    let names: Vec<&str> = f.backends.iter().map(String::as_str).collect();
    let counts = f.aligned(&names, &f.edges).map_err(anyhow::Error::msg)?;
    let mut a = judge_counts(&subject, &counts, window);
    a.source = "prometheus";
    a.replicas = Some(f.replicas);
    Ok(crate::analysis::json::document(&[a]))
}

fn fetch(admin: &str) -> anyhow::Result<Value> {
    let body = crate::admin_client::request(admin, "GET", "/admin/analysis", None)?;
    Ok(serde_json::from_slice(&body)?)
}

/// The report text and exit code for `doc` (the `/admin/analysis` JSON).
pub fn render(doc: &Value, route: Option<&str>, json: bool) -> (String, u8) {
    let routes: Vec<&Value> = doc["routes"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter(|r| route.is_none_or(|n| r["name"] == n))
                .collect()
        })
        .unwrap_or_default();
    let verdicts: Vec<&str> = routes
        .iter()
        .flat_map(|r| r["comparisons"].as_array().into_iter().flatten())
        .map(|c| c["verdict"].as_str().unwrap_or("inconclusive"))
        .collect();
    let code = if verdicts.contains(&"fail") {
        1
    } else if !verdicts.is_empty() && verdicts.iter().all(|v| *v == "pass") {
        0
    } else {
        2
    };
    if json {
        let shown = serde_json::json!({ "routes": routes });
        return (
            serde_json::to_string_pretty(&shown).unwrap_or_default() + "\n",
            code,
        );
    }
    let mut out = String::new();
    if routes.is_empty() {
        out.push_str("no route with two or more backends to compare\n");
    }
    for r in routes {
        let base = r["baseline"].as_str().unwrap_or("?");
        out.push_str(&format!(
            "route {}: baseline {base}, last {:.0} s\n",
            r["name"].as_str().unwrap_or("?"),
            r["window_seconds"].as_f64().unwrap_or(0.0)
        ));
        if r["source"] == "prometheus" {
            out.push_str(&format!(
                "  evidence of {} replica(s), summed by prometheus\n",
                r["replicas"].as_u64().unwrap_or(0)
            ));
        }
        for c in r["comparisons"].as_array().into_iter().flatten() {
            let name = c["backend"].as_str().unwrap_or("?");
            let w = name.len().max(base.len()).max(8);
            out.push_str(&format!("  {:<14} {name:>w$}  {base:>w$}\n", "", w = w));
            let row = |label: &str, a: String, b: String| {
                format!("  {label:<14} {a:>w$}  {b:>w$}\n", w = w)
            };
            out.push_str(&row(
                "requests",
                c["requests"].to_string(),
                c["baseline_requests"].to_string(),
            ));
            out.push_str(&row(
                "error rate",
                pct(&c["error_rate"]),
                pct(&c["baseline_error_rate"]),
            ));
            for (k, q) in c["latency_seconds"].as_object().into_iter().flatten() {
                out.push_str(&row(
                    k,
                    ms(&q["backend"]["estimate"]),
                    ms(&q["baseline"]["estimate"]),
                ));
            }
            let srm = &c["srm"];
            out.push_str(&format!(
                "  {:<14} {}\n",
                "sample ratio",
                if srm["alarm"] == true {
                    format!(
                        "MISMATCH (e-value {:.3e})",
                        srm["e_value"].as_f64().unwrap_or(0.0)
                    )
                } else {
                    "ok".into()
                }
            ));
            out.push_str(&format!(
                "  {:<14} {}\n",
                "verdict",
                c["verdict"].as_str().unwrap_or("?").to_uppercase()
            ));
            for reason in c["reasons"].as_array().into_iter().flatten() {
                out.push_str(&format!("    - {}\n", reason.as_str().unwrap_or("")));
            }
        }
    }
    (out, code)
}

/// How many mismatch classes `report` lists per shadowed route.
const TOP_CLASSES: usize = 5;

/// The top mismatch classes of each shadowed route (`/admin/shadow`), most
/// frequent first; nothing for routes without a shadow.
pub fn render_shadow(doc: &Value, route: Option<&str>) -> String {
    let mut out = String::new();
    let routes = doc["routes"].as_array().into_iter().flatten();
    for r in routes.filter(|r| route.is_none_or(|n| r["route"] == n)) {
        out.push_str(&format!(
            "route {}: shadow {}, {} compared, {} sent, {} dropped, {} skipped, {} errors\n",
            r["route"].as_str().unwrap_or("?"),
            r["backend"].as_str().unwrap_or("?"),
            r["compared"],
            r["sent"],
            r["dropped"],
            r["skipped"],
            r["error"],
        ));
        let classes: Vec<&Value> = r["classes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["count"].as_u64().unwrap_or(0) > 0)
            .take(TOP_CLASSES)
            .collect();
        if classes.is_empty() {
            out.push_str("  no mismatch\n");
        }
        for c in classes {
            out.push_str(&format!(
                "  {:<40} {:>8} {:>8}\n",
                c["class"].as_str().unwrap_or("?"),
                c["count"],
                pct(&c["share"])
            ));
        }
    }
    out
}

fn pct(v: &Value) -> String {
    v.as_f64()
        .map_or("-".into(), |x| format!("{:.2}%", x * 100.0))
}

fn ms(v: &Value) -> String {
    v.as_f64().map_or("-".into(), crate::analysis::verdict::ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_worst_verdict() {
        let doc = |v: &[&str]| {
            let cs: Vec<Value> = v
                .iter()
                .map(|v| serde_json::json!({ "backend": "g", "verdict": v }))
                .collect();
            serde_json::json!({ "routes": [{ "name": "app", "baseline": "blue", "comparisons": cs }] })
        };
        assert_eq!(render(&doc(&["pass"]), None, false).1, 0);
        assert_eq!(render(&doc(&["pass", "fail"]), None, false).1, 1);
        assert_eq!(render(&doc(&["pass", "inconclusive"]), None, true).1, 2);
        assert_eq!(render(&doc(&[]), None, false).1, 2);
        assert_eq!(render(&doc(&["fail"]), Some("other"), false).1, 2);
    }

    #[test]
    fn shadow_lists_the_top_classes_most_frequent_first() {
        let doc = serde_json::json!({ "routes": [{
            "route": "app", "backend": "green", "compared": 100, "sent": 100,
            "dropped": 0, "skipped": 0, "error": 0,
            "classes": [
                { "class": "status", "count": 7, "share": 0.07 },
                { "class": "header:etag", "count": 0, "share": 0.0 },
            ],
        }]});
        let text = render_shadow(&doc, None);
        assert!(text.contains("shadow green, 100 compared"), "{text}");
        assert!(text.contains("status") && text.contains("7.00%"), "{text}");
        assert!(!text.contains("header:etag"), "{text}");
        assert_eq!(render_shadow(&doc, Some("other")), "");
    }
}
