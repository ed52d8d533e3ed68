//! Progressive rollout (issue 15) against the real binary, with short holds:
//! automatic rollback of a bad green, promotion of a good one with sticky
//! users only moving blue -> green, low traffic that waits, restarts that
//! resume, and people (admin abort, file edit) rolling back under load.
//!
//! Times are printed (`--nocapture`) and asserted against generous bounds:
//! the machine running the tests is shared.
mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Proxy;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

const TOKEN: &str = "rollout-test-token";

/// A backend answering its name, and 500 for `fail_pct` of every 100
/// requests (deterministically: requests 0..fail_pct of each hundred).
struct Flaky {
    addr: SocketAddr,
    fail_pct: Arc<AtomicU32>,
    /// Only the `fail_once`-th request fails (1-based), when non-zero.
    fail_once: Arc<AtomicU64>,
    /// Added to every answer, milliseconds.
    delay_ms: Arc<AtomicU64>,
}

async fn flaky(name: &'static str) -> Flaky {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fail_pct = Arc::new(AtomicU32::new(0));
    let fail_once = Arc::new(AtomicU64::new(0));
    let count = Arc::new(AtomicU64::new(0));
    let delay_ms = Arc::new(AtomicU64::new(0));
    let (pct, once, delay) = (fail_pct.clone(), fail_once.clone(), delay_ms.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (pct, once, count, delay) =
                (pct.clone(), once.clone(), count.clone(), delay.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    let n = count.fetch_add(1, Ordering::Relaxed);
                    let fail = (n % 100) < u64::from(pct.load(Ordering::Relaxed))
                        || once.load(Ordering::Relaxed) == n + 1;
                    let mut r = hyper::Response::new(Full::new(Bytes::from(name)));
                    if fail {
                        *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    let wait = Duration::from_millis(delay.load(Ordering::Relaxed));
                    async move {
                        if !wait.is_zero() {
                            tokio::time::sleep(wait).await;
                        }
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Flaky {
        addr,
        fail_pct,
        fail_once,
        delay_ms,
    }
}

/// Blue and green and a route `app` with a rollout; `extra` goes in
/// `[routes.rollout]`.
fn config(blue: &Flaky, green: &Flaky, weights: &str, rollout: &str) -> String {
    format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\n\
         [backends.blue]\nendpoints = [\"{}\"]\n\n[backends.green]\nendpoints = [\"{}\"]\n\n\
         [[routes]]\nname = \"app\"\nweights = {{ {weights} }}\n\
         sticky = {{ cookie = \"u\", max_age = \"1h\" }}\n\
         [routes.rollout]\n{rollout}\n",
        blue.addr, green.addr
    )
}

/// Every request a load generator sent: start, end, backend, status.
#[derive(Clone)]
struct Sent {
    start: Instant,
    end: Instant,
    backend: String,
    status: u16,
}

struct Load {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Sent>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// `workers` loops each sending one new-user `GET /` every `every`.
fn load(p: &Proxy, workers: usize, every: Duration) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let log: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let tasks = (0..workers)
        .map(|_| {
            let (stop, log, url) = (stop.clone(), log.clone(), p.url("/"));
            tokio::spawn(async move {
                let c = common::client();
                let mut tick = tokio::time::interval(every);
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let start = Instant::now();
                    let (status, backend) = match c.get(&url).send().await {
                        Ok(r) => {
                            let s = r.status().as_u16();
                            (s, r.text().await.unwrap_or_default())
                        }
                        Err(e) => (0, e.to_string()),
                    };
                    log.lock().unwrap().push(Sent {
                        start,
                        end: Instant::now(),
                        backend,
                        status,
                    });
                }
            })
        })
        .collect();
    Load { stop, log, tasks }
}

impl Load {
    async fn finish(self) -> Vec<Sent> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        self.log.lock().unwrap().clone()
    }
}

async fn rollout_state(p: &Proxy) -> Value {
    let s = p.state().await;
    s["routes"][0]["rollout"].clone()
}

async fn wait_state(p: &Proxy, state: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let last = rollout_state(p).await;
        if last["state"] == state {
            return last;
        }
        assert!(
            Instant::now() < deadline,
            "rollout never reached {state}: {last:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn weights(state: &Value) -> Vec<(String, u64)> {
    state["routes"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap().to_owned(),
                b["weight"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn ctl(args: &[&str]) -> std::process::Output {
    std::process::Command::new(common::proxy::bin())
        .args(args)
        .output()
        .expect("cutover runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_green_with_3_percent_500s_is_rolled_back_and_blue_takes_everything() {
    let (blue, green) = (flaky("blue").await, flaky("green").await);
    let p = Proxy::start(&config(
        &blue,
        &green,
        "blue = 100, green = 0",
        "id = \"v2\"\ncanary = \"green\"\nsteps = [50, 100]\nhold = \"1h\"\nmin_requests = 200",
    ))
    .await;
    let r = wait_state(&p, "progressing", Duration::from_secs(5)).await;
    assert_eq!(r["canary_weight"], 50);
    // ~300 requests per second: 6 workers, one request each 20 ms.
    let l = load(&p, 6, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bad_at = Instant::now();
    green.fail_pct.store(3, Ordering::Relaxed);
    let r = wait_state(&p, "rolled_back", Duration::from_secs(60)).await;
    let seen_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent = l.finish().await;
    assert!(
        r["reason"].as_str().unwrap().contains("error rate"),
        "{r:#}"
    );
    assert_eq!(
        weights(&p.state().await),
        [("blue".into(), 100), ("green".into(), 0)]
    );
    let last_green = sent
        .iter()
        .filter(|s| s.backend == "green")
        .map(|s| s.end)
        .max()
        .unwrap();
    let after: Vec<&Sent> = sent.iter().filter(|s| s.start > seen_at).collect();
    assert!(after.len() > 100, "load kept going: {}", after.len());
    assert!(
        after.iter().all(|s| s.backend == "blue" && s.status == 200),
        "every request after the verdict goes to blue"
    );
    let rate = sent.len() as f64 / (sent.last().unwrap().end - sent[0].start).as_secs_f64();
    println!(
        "rollback: green bad -> last request served by green {:.2}s, -> state seen {:.2}s, at {rate:.0} req/s; reason: {}",
        (last_green - bad_at).as_secs_f64(),
        (seen_at - bad_at).as_secs_f64(),
        r["reason"]
    );
    let m = p.metrics().await;
    assert_eq!(
        common::metric(
            &m,
            "cutover_rollout_state",
            &[("route", "app"), ("state", "rolled_back")]
        ),
        1.0
    );
    assert_eq!(
        common::metric(
            &m,
            "cutover_rollout_transitions_total",
            &[("route", "app"), ("to", "rolled_back")]
        ),
        1.0
    );
    assert!(p.logs().iter().any(|l| {
        l["message"] == "rollout transition"
            && l["to"] == "rolled_back"
            && l["evidence"]
                .as_str()
                .is_some_and(|e| e.contains("error rate"))
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_green_30ms_slower_is_rolled_back_with_a_latency_reason() {
    let (blue, green) = (flaky("blue").await, flaky("green").await);
    let p = Proxy::start(&config(
        &blue,
        &green,
        "blue = 100, green = 0",
        "id = \"v2\"\ncanary = \"green\"\nsteps = [50, 100]\nhold = \"1h\"\nmin_requests = 200",
    ))
    .await;
    green.delay_ms.store(30, Ordering::Relaxed);
    let l = load(&p, 8, Duration::from_millis(25));
    let r = wait_state(&p, "rolled_back", Duration::from_secs(90)).await;
    let sent = l.finish().await;
    let reason = r["reason"].as_str().unwrap();
    // The deciding sentence comes first.
    let first = reason.split("; ").next().unwrap();
    assert!(
        first.contains("latency") || first.contains("slower"),
        "{reason}"
    );
    println!(
        "slow green rolled back after {} requests: {reason}",
        sent.len()
    );
    assert!(sent.iter().all(|s| s.status == 200));
}

/// The backend a user holding sticky cookie `u=<value>` is sent to.
async fn as_user(c: &reqwest::Client, p: &Proxy, cookie: &str) -> String {
    let r = c
        .get(p.url("/"))
        .header("cookie", format!("u={cookie}"))
        .send()
        .await
        .unwrap();
    r.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_identical_green_is_promoted_through_every_step_and_users_only_move_to_green() {
    let (blue, green) = (flaky("blue").await, flaky("green").await);
    let p = Proxy::start(&config(
        &blue,
        &green,
        "blue = 100, green = 0",
        "id = \"v2\"\ncanary = \"green\"\nsteps = [10, 50, 100]\nhold = \"1s\"\nmin_requests = 100",
    ))
    .await;
    let c = common::client();
    // 300 users arrive at the first step and keep their cookies.
    let mut users = Vec::new();
    for _ in 0..300 {
        let r = c.get(p.url("/")).send().await.unwrap();
        let cookie = r
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("u="))
            .and_then(|v| v.split(';').next())
            .expect("a sticky cookie")
            .to_owned();
        users.push((cookie, vec![r.text().await.unwrap()]));
    }
    let l = load(&p, 6, Duration::from_millis(20));
    let mut weights_seen = vec![rollout_state(&p).await["canary_weight"].clone()];
    // Replays every user's cookie between looks at the state, until
    // promotion (each round is a few hundred ms: no sleep needed).
    let deadline = Instant::now() + Duration::from_secs(90);
    let done = loop {
        for (cookie, seen) in users.iter_mut() {
            let b = as_user(&c, &p, cookie).await;
            if seen.last() != Some(&b) {
                seen.push(b);
            }
        }
        let r = rollout_state(&p).await;
        if weights_seen.last() != Some(&r["canary_weight"]) {
            weights_seen.push(r["canary_weight"].clone());
        }
        if r["state"] == "promoted" {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
    };
    let sent = l.finish().await;
    let r = rollout_state(&p).await;
    assert!(done, "not promoted: {r:#}");
    assert_eq!(weights_seen, [10, 50, 100], "every step, in order");
    assert!(sent.iter().all(|s| s.status == 200));
    for (cookie, seen) in &mut users {
        let b = as_user(&c, &p, cookie).await;
        if seen.last() != Some(&b) {
            seen.push(b);
        }
        assert!(
            seen == &["blue"] || seen == &["green"] || seen == &["blue", "green"],
            "user {cookie} went {seen:?}"
        );
        assert_eq!(
            seen.last().unwrap(),
            "green",
            "everyone on green at the end"
        );
    }
    let history: Vec<&str> = r["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["to"].as_str().unwrap())
        .collect();
    assert_eq!(history, ["progressing", "progressing", "promoted"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_traffic_with_one_5xx_waits_instead_of_rolling_back() {
    let (blue, green) = (flaky("blue").await, flaky("green").await);
    green.fail_once.store(1, Ordering::Relaxed);
    let p = Proxy::start(&config(
        &blue,
        &green,
        "blue = 100, green = 0",
        "id = \"v2\"\ncanary = \"green\"\nsteps = [50, 100]\nhold = \"1s\"\nmin_requests = 200",
    ))
    .await;
    // About 5 requests per second for 4 seconds.
    let l = load(&p, 1, Duration::from_millis(200));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let sent = l.finish().await;
    assert!(
        sent.iter().any(|s| s.status == 500),
        "green's one 5xx was sent"
    );
    let r = rollout_state(&p).await;
    assert_eq!(r["state"], "progressing", "{r:#}");
    assert_eq!(r["verdict"], "inconclusive", "{r:#}");
    assert!(
        r["verdict_reasons"][0]
            .as_str()
            .unwrap()
            .contains("200 per side needed"),
        "{r:#}"
    );
}

/// Kills the proxy (SIGKILL: no chance to write anything) and starts it
/// again on the same config file and state directory.
async fn kill_and_restart(mut p: Proxy) -> Proxy {
    let dir = std::mem::replace(&mut p.dir, tempfile::tempdir().unwrap());
    let path = p.config_path.clone();
    let _ = p.child.kill();
    let _ = p.child.wait();
    drop(p);
    Proxy::start_at(dir, path, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_at_the_same_step_and_after_promotion_users_stay_on_green() {
    let (blue, green) = (flaky("blue").await, flaky("green").await);
    let p = Proxy::start(&config(
        &blue,
        &green,
        "blue = 100, green = 0",
        "id = \"v2\"\ncanary = \"green\"\nsteps = [20, 50, 100]\nhold = \"1s\"\nmin_requests = 50",
    ))
    .await;
    let l = load(&p, 4, Duration::from_millis(20));
    let ok = common::eventually(Duration::from_secs(60), || async {
        rollout_state(&p).await["canary_weight"] == 50
    })
    .await;
    l.finish().await;
    assert!(ok, "{:#}", rollout_state(&p).await);
    let before = rollout_state(&p).await;
    let p = kill_and_restart(p).await;
    let after = rollout_state(&p).await;
    assert_eq!(after["state"], "progressing", "{after:#}");
    assert_eq!(after["canary_weight"], 50);
    assert_eq!(after["step"], before["step"]);
    assert_eq!(after["step_started_unix"], before["step_started_unix"]);
    assert_eq!(
        weights(&p.state().await),
        [("blue".into(), 50), ("green".into(), 50)]
    );

    // Promote by hand (the CLI, with the token), kill, restart.
    let admin = format!("http://{}", p.admin.unwrap());
    let out = ctl(&["rollout", "promote", "--admin", &admin, "--token", TOKEN]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("promoted"));
    let p = kill_and_restart(p).await;
    assert_eq!(rollout_state(&p).await["state"], "promoted");
    let c = common::client();
    for _ in 0..50 {
        assert_eq!(
            c.get(p.url("/"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
            "green"
        );
    }
    let out = ctl(&["status", "--admin", &format!("http://{}", p.admin.unwrap())]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("rollout v2 on route app: promoted"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_file_pauses_with_the_files_weights() {
    let (blue, green) = (flaky("blue").await, flaky("green").await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.toml");
    std::fs::write(
        &path,
        config(
            &blue,
            &green,
            "blue = 100, green = 0",
            "id = \"v2\"\ncanary = \"green\"\nsteps = [50, 100]",
        ),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join(".cutover-state")).unwrap();
    std::fs::write(
        dir.path().join(".cutover-state/app.json"),
        "{\"version\": 1, \"rou",
    )
    .unwrap();
    let p = Proxy::start_at(dir, path, &[]).await;
    let r = rollout_state(&p).await;
    assert_eq!(r["state"], "paused", "{r:#}");
    assert!(r["reason"].as_str().unwrap().contains("corrupt"), "{r:#}");
    assert_eq!(
        weights(&p.state().await),
        [("blue".into(), 100), ("green".into(), 0)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abort_and_a_file_edit_roll_back_within_a_second_under_load_without_failures() {
    let (blue, green) = (flaky("blue").await, flaky("green").await);
    let plan = "id = \"v2\"\ncanary = \"green\"\nsteps = [50, 100]\nhold = \"1h\"";
    let p = Proxy::start(&config(&blue, &green, "blue = 100, green = 0", plan)).await;
    let admin = format!("http://{}", p.admin.unwrap());

    // Without the token, or with a wrong one, nothing changes.
    let c = common::client();
    let url = p.admin_url("/admin/rollout/app/abort");
    assert_eq!(c.post(&url).send().await.unwrap().status(), 401);
    let wrong = c.post(&url).bearer_auth("nope").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(rollout_state(&p).await["state"], "progressing");

    for how in ["abort", "file edit"] {
        let l = load(&p, 6, Duration::from_millis(20));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let at = Instant::now();
        if how == "abort" {
            let out = ctl(&["rollout", "abort", "--admin", &admin, "--token", TOKEN]);
            assert!(out.status.success(), "{out:?}");
        } else {
            let path = p.config_path.to_str().unwrap();
            let out = ctl(&["rollback", "--config", path, "--to", "blue"]);
            assert!(out.status.success(), "{out:?}");
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let sent = l.finish().await;
        let last_green = sent
            .iter()
            .filter(|s| s.backend == "green")
            .map(|s| s.end)
            .max()
            .unwrap();
        let took = last_green.saturating_duration_since(at);
        println!(
            "{how}: last request served by green {:.3}s after the command",
            took.as_secs_f64()
        );
        assert!(took < Duration::from_secs(1), "{how}: {took:?}");
        assert!(
            sent.iter().all(|s| s.status == 200),
            "{how}: zero failed requests"
        );
        let r = rollout_state(&p).await;
        assert_eq!(
            weights(&p.state().await),
            [("blue".into(), 100), ("green".into(), 0)]
        );
        if how == "abort" {
            assert_eq!(r["state"], "rolled_back");
            assert!(r["reason"].as_str().unwrap().contains("aborted"));
            // A new rollout (a new id) for the file-edit round.
            p.write_config(&config(
                &blue,
                &green,
                "blue = 100, green = 0",
                &plan.replace("v2", "v3"),
            ));
            wait_state(&p, "progressing", Duration::from_secs(5)).await;
        } else {
            assert!(r.is_null(), "the rollout section is gone: {r:#}");
        }
    }
}
