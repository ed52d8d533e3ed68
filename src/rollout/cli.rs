//! `cutover rollout status|pause|resume|promote|abort`: the admin endpoints
//! `/admin/rollout` from a terminal.

use anyhow::{Context, bail};
use serde_json::Value;

use crate::admin_client::request;

/// Runs `verb` against the admin listener at `admin`; `route` may be left
/// out when exactly one route has a rollout. The token comes from `token`
/// or the `CUTOVER_ADMIN_TOKEN` environment variable.
pub fn run(
    admin: &str,
    verb: &str,
    route: Option<&str>,
    token: Option<&str>,
) -> anyhow::Result<()> {
    let base = admin.trim_end_matches('/');
    let listing = request(base, "GET", "/admin/rollout", None)?;
    let all: Value = serde_json::from_slice(&listing).context("admin answered no JSON")?;
    let rollouts = all["routes"].as_array().cloned().unwrap_or_default();
    if verb == "status" {
        let shown: Vec<&Value> = rollouts
            .iter()
            .filter(|r| route.is_none_or(|n| r["route"] == n))
            .collect();
        if shown.is_empty() {
            bail!(
                "no rollout{}",
                route
                    .map(|r| format!(" on route \"{r}\""))
                    .unwrap_or_default()
            );
        }
        for r in shown {
            print!("{}", render(r["route"].as_str().unwrap_or("?"), r));
        }
        return Ok(());
    }
    let route = match route {
        Some(r) => r.to_owned(),
        None => match rollouts.as_slice() {
            [one] => one["route"].as_str().unwrap_or_default().to_owned(),
            [] => bail!("no route has a rollout"),
            _ => bail!("several routes have a rollout: name one with --route"),
        },
    };
    let env = std::env::var("CUTOVER_ADMIN_TOKEN").ok();
    let token = token.or(env.as_deref());
    let body = request(
        base,
        "POST",
        &format!("/admin/rollout/{route}/{verb}"),
        token,
    )?;
    let state: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    print!("{}", render(&route, &state));
    Ok(())
}

/// A rollout object of `/admin/state` or `/admin/rollout` for a terminal.
pub fn render(route: &str, r: &Value) -> String {
    let steps: Vec<String> = r["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| s.to_string())
        .collect();
    let mut out = format!(
        "rollout {} on route {route}: {} (canary {} at {}%, step {} of [{}], verdict {})\n",
        r["id"].as_str().unwrap_or("?"),
        r["state"].as_str().unwrap_or("?"),
        r["canary"].as_str().unwrap_or("?"),
        r["canary_weight"],
        r["step"],
        steps.join(", "),
        r["verdict"].as_str().unwrap_or("?"),
    );
    if let Some(reason) = r["reason"].as_str().filter(|s| !s.is_empty()) {
        out.push_str(&format!("  reason: {reason}\n"));
    }
    for why in r["verdict_reasons"].as_array().into_iter().flatten() {
        out.push_str(&format!("  evidence: {}\n", why.as_str().unwrap_or("")));
    }
    if r["owns_weights"] == false {
        out.push_str("  the config file's weights are in force\n");
    }
    out
}
