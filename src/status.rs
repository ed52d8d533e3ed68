//! `cutover status`: `/admin/state` as a small table for a terminal, the
//! variants of each route side by side.

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;

pub fn run(admin: &str) -> anyhow::Result<()> {
    let base = admin.trim_end_matches('/');
    let uri: http::Uri = format!("{base}/admin/state")
        .parse()
        .context("--admin must be a URL like http://127.0.0.1:9901")?;
    let authority = uri
        .authority()
        .context("--admin needs host:port")?
        .to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let body = rt.block_on(async {
        let stream = tokio::net::TcpStream::connect(&authority)
            .await
            .with_context(|| format!("cannot connect to {authority}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = http::Request::get(uri.path())
            .header("host", &authority)
            .body(Empty::<Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "admin answered {}",
            resp.status()
        );
        anyhow::Ok(resp.into_body().collect().await?.to_bytes())
    })?;
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
