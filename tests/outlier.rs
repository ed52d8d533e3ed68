//! What passive ejection counts: gateway failures by default, an app's own
//! 5xx only with `outlier.on = ["5xx"]`; and how much a failing endpoint may
//! write to the log.

mod common;

use std::time::{Duration, Instant};

use common::{Backend, Proxy};

/// Two endpoints (so `max_ejected_percent = 50` allows ejecting one) and a
/// route to them; `outlier` is the backend's outlier table.
async fn two_endpoints(outlier: &str) -> (Backend, Backend, Proxy) {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let p = Proxy::start(&format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [backends.blue]\nendpoints = [\"{}\", \"{}\"]\nretries = 0\noutlier = {outlier}\n\n\
         [[routes]]\nname = \"app\"\nweights = {{ blue = 100 }}\n",
        a.addr, b.addr
    ))
    .await;
    (a, b, p)
}

/// Sends `n` requests to `/status/500` and returns the ejections counted.
async fn ejections_after_500s(p: &Proxy, n: usize) -> f64 {
    let c = common::client();
    for _ in 0..n {
        let r = c.get(p.url("/status/500")).send().await.unwrap();
        assert_eq!(r.status(), 500);
    }
    common::metric(&p.metrics().await, "cutover_endpoint_ejections_total", &[])
}

#[tokio::test]
async fn app_500s_do_not_eject_by_default() {
    let (_a, _b, p) = two_endpoints("{ consecutive_failures = 2 }").await;
    // Round robin: each endpoint sees 10 500s in a row, 5 times the streak.
    assert_eq!(ejections_after_500s(&p, 20).await, 0.0);
}

#[tokio::test]
async fn app_500s_eject_with_on_5xx() {
    let (_a, _b, p) = two_endpoints("{ consecutive_failures = 2, on = [\"5xx\"] }").await;
    assert!(ejections_after_500s(&p, 20).await >= 1.0);
}

#[tokio::test]
async fn gateway_failures_still_eject_by_default() {
    let (_a, _b, p) = two_endpoints("{ consecutive_failures = 2 }").await;
    let c = common::client();
    for _ in 0..20 {
        c.get(p.url("/status/503")).send().await.unwrap();
    }
    let m = p.metrics().await;
    assert!(common::metric(&m, "cutover_endpoint_ejections_total", &[]) >= 1.0);
}

#[tokio::test]
async fn unknown_outlier_trigger_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.toml");
    std::fs::write(
        &path,
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n[backends.blue]\nendpoints = [\"127.0.0.1:1\"]\n\
         outlier = { on = [\"4xx\"] }\n\n[[routes]]\nname = \"app\"\nweights = { blue = 100 }\n",
    )
    .unwrap();
    let out = std::process::Command::new(common::proxy::bin())
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("backends.blue.outlier.on[0]") && err.contains(":6:"),
        "{err}"
    );
}

/// A dead endpoint that cannot be ejected (the only one of its backend):
/// every request fails, but the log gets at most one line per second of
/// each kind, and those lines say how many were left out.
#[tokio::test]
async fn failure_logs_are_rate_limited() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = dead.local_addr().unwrap();
    drop(dead);
    let p = Proxy::start(&format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n[backends.blue]\nendpoints = [\"{addr}\"]\n\n\
         [[routes]]\nname = \"app\"\nweights = {{ blue = 100 }}\n"
    ))
    .await;
    let c = common::client();
    let started = Instant::now();
    let n = 300;
    for _ in 0..n {
        let r = c.get(p.url("/")).send().await.unwrap();
        assert_eq!(r.status(), 502);
    }
    let elapsed = started.elapsed();
    // The last lines may still be in the pipe.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = p.logs();
    let count = |msg: &str| {
        logs.iter()
            .filter(|l| l["message"].as_str().is_some_and(|m| m.contains(msg)))
            .count()
    };
    // One per second, and one at the first failure: at most secs + 2.
    let bound = elapsed.as_secs() as usize + 2;
    let failed = count("upstream request failed");
    let forbidden = count("max_ejected_percent forbids");
    assert!(
        (1..=bound).contains(&failed),
        "{failed} lines for {n} failures in {elapsed:?}"
    );
    assert!(forbidden <= bound, "{forbidden} lines in {elapsed:?}");
    let suppressed: u64 = logs
        .iter()
        .filter(|l| l["message"] == "upstream request failed")
        .filter_map(|l| l["suppressed"].as_u64())
        .sum();
    // Lines shown plus those they report suppressed, plus the ones
    // suppressed since the last line: all n.
    assert!(suppressed + failed as u64 <= n, "{suppressed} + {failed}");
}
