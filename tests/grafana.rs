//! `deploy/grafana/cutover.json` against a real Prometheus scraping a real
//! Cutover with traffic: every PromQL expression in the dashboard (panels,
//! annotations, template variables) must run and return data.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::prom::PromServer;
use common::{Backend, Proxy, eventually};
use serde_json::Value;

const DASHBOARD: &str = include_str!("../deploy/grafana/cutover.json");

/// Every PromQL expression with Grafana's variables replaced by what a user
/// would pick: this job, this route, one-minute rate windows.
fn expressions(dash: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut panels: Vec<&Value> = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        panels.push(p);
        panels.extend(p["panels"].as_array().into_iter().flatten());
    }
    for p in panels {
        for t in p["targets"].as_array().into_iter().flatten() {
            let title = format!("panel {:?} {}", p["title"], t["refId"]);
            out.push((title, t["expr"].as_str().expect("expr").to_owned()));
        }
    }
    for a in dash["annotations"]["list"].as_array().expect("annotations") {
        out.push((
            format!("annotation {:?}", a["name"]),
            a["expr"].as_str().expect("annotation expr").to_owned(),
        ));
    }
    // `label_values(metric, label)` is Grafana's; Prometheus answers the
    // same question with `group by (label) (metric)`.
    for v in dash["templating"]["list"].as_array().expect("templating") {
        let Some(q) = v["query"]["query"].as_str() else {
            continue;
        };
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|s| s.strip_suffix(')'))
            .expect("variables use label_values(metric, label)");
        let (metric, label) = inner.rsplit_once(',').expect("metric, label");
        out.push((
            format!("variable {:?}", v["name"]),
            format!("group by ({}) ({})", label.trim(), metric.trim()),
        ));
    }
    out.into_iter()
        .map(|(title, e)| {
            let e = e
                .replace("$__rate_interval", "1m")
                .replace("$__interval", "1m")
                .replace("$__range", "5m")
                .replace("$route", "app")
                .replace("$job", "cutover");
            assert!(!e.contains('$'), "{title}: unknown variable in {e}");
            (title, e)
        })
        .collect()
}

#[test]
fn dashboard_is_importable_json() {
    let dash: Value = serde_json::from_str(DASHBOARD).expect("valid JSON");
    assert_eq!(dash["uid"], "cutover-release");
    let mut ids = BTreeSet::new();
    for p in dash["panels"].as_array().unwrap() {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate panel id"
        );
        if p["type"] != "row" {
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "panel {:?} must use the dashboard's datasource variable",
                p["title"]
            );
        }
    }
    assert!(expressions(&dash).len() >= 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let dash: Value = serde_json::from_str(DASHBOARD).unwrap();
    let b = Backend::start("blue").await;
    let g = Backend::start("green").await;
    let route = |blue: u32, green: u32| {
        common::config(
            &[("blue", &[&b]), ("green", &[&g])],
            &format!(
                "[[routes]]\nname = \"app\"\nweights = {{ blue = {blue}, green = {green} }}\n"
            ),
        )
    };
    let p = Proxy::start(&route(90, 10)).await;
    let server = PromServer::start(p.admin.expect("admin listener")).await;

    // Weighted traffic to both variants until the test ends, so rates are
    // non-zero.
    let url = p.url("/");
    let traffic = tokio::spawn(async move {
        let c = common::client();
        loop {
            let _ = c.get(&url).send().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    // A reload, for the annotation and the weight panel.
    let scraped = eventually(Duration::from_secs(30), || async {
        server
            .query("cutover_config_generation")
            .await
            .is_some_and(|r| !r.is_empty())
    })
    .await;
    assert!(
        scraped,
        "prometheus never scraped cutover:\n{}",
        server.log()
    );
    p.write_config(&route(50, 50));

    let queries = expressions(&dash);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let empty = loop {
        let mut empty = Vec::new();
        for (title, q) in &queries {
            match server.query(q).await {
                Some(r) if !r.is_empty() => {}
                Some(_) => empty.push(format!("{title}: no data: {q}")),
                None => empty.push(format!("{title}: query failed: {q}")),
            }
        }
        if empty.is_empty() || std::time::Instant::now() > deadline {
            break empty;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    traffic.abort();
    assert!(
        empty.is_empty(),
        "dashboard queries without data:\n{}",
        empty.join("\n")
    );

    // The weight panel shows the weights in force after the reload.
    let weights = server
        .query_by(
            "max by (route, backend) (cutover_backend_weight{route=~\"app\",job=~\"cutover\"})",
            "backend",
        )
        .await
        .unwrap();
    assert_eq!(weights.get("green"), Some(&50.0), "{weights:?}");
}
