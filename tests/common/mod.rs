//! The integration-test harness: real backends and the real `cutover`
//! binary on ephemeral loopback ports, spoken to over real HTTP.
#![allow(dead_code)]

pub mod abuse;
pub mod backend;
pub mod ctl;
pub mod h2raw;
pub mod prom;
pub mod proxy;
pub mod raw;
pub mod recording;

pub use backend::Backend;
pub use proxy::Proxy;

use std::time::{Duration, Instant};

/// Polls `cond` every 20 ms until it holds or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A plain reqwest client that keeps no cookies and never retries.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client builds")
}

/// The value of one series in Prometheus text output, e.g.
/// `metric(&text, "cutover_requests_total", &[("backend", "blue"), ("code", "200")])`
/// sums every series of that name whose labels include all of those given.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// A config with the given backends and `[[routes]]` text appended;
/// listens on ephemeral ports.
pub fn config(backends: &[(&str, &[&Backend])], routes: &str) -> String {
    let mut s =
        String::from("[listen]\nhttp = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n");
    for (name, eps) in backends {
        let eps: Vec<String> = eps.iter().map(|b| format!("\"{}\"", b.addr)).collect();
        s.push_str(&format!(
            "[backends.{name}]\nendpoints = [{}]\n\n",
            eps.join(", ")
        ));
    }
    s.push_str(routes);
    s
}

/// Blue and green backends and a route `app` with the given weights.
pub async fn blue_green(blue: u32, green: u32, route_extra: &str) -> (Backend, Backend, Proxy) {
    let b = Backend::start("blue").await;
    let g = Backend::start("green").await;
    let cfg = config(
        &[("blue", &[&b]), ("green", &[&g])],
        &format!(
            "[[routes]]\nname = \"app\"\nweights = {{ blue = {blue}, green = {green} }}\n{route_extra}"
        ),
    );
    let p = Proxy::start(&cfg).await;
    (b, g, p)
}
