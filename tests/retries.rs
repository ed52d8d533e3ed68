//! Retries (issue 6): connect failures are retried on another endpoint
//! within the retry budget; with `retry_on = ["5xx"]` idempotent requests
//! answered 502/503/504 are retried too, other requests never.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::ctl::{CtlBackend, refused_addr};
use common::{Proxy, metric};

const HEAD: &str = "[listen]\nhttp = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n";

/// `n` GETs of `url` over `tasks` concurrent tasks: (status, `x-backend`)
/// of each.
async fn send_many(url: &str, n: usize, tasks: usize) -> Vec<(u16, String)> {
    let client = common::client();
    let next = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (client, next, url) = (client.clone(), next.clone(), url.to_owned());
            tokio::spawn(async move {
                let mut out = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    out.push(send(client.get(&url)).await);
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    all
}

/// Sends a request: (status, `x-backend`); the body is read.
async fn send(req: reqwest::RequestBuilder) -> (u16, String) {
    let r = req.send().await.expect("request");
    let backend = r
        .headers()
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let status = r.status().as_u16();
    r.bytes().await.expect("body");
    (status, backend)
}

fn retries(m: &str, reason: &str) -> f64 {
    metric(
        m,
        "cutover_retries_total",
        &[("route", "app"), ("backend", "blue"), ("reason", reason)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refused_endpoint_costs_no_client_error() {
    let e1 = CtlBackend::start("e1").await;
    let e2 = CtlBackend::start("e2").await;
    let (_reserved, dead) = refused_addr();
    let cfg = format!(
        "{HEAD}[backends.blue]\nendpoints = [\"{}\", \"{dead}\", \"{}\"]\n\n[[routes]]\nname = \"app\"\nweights = {{ blue = 100 }}\n",
        e1.addr, e2.addr
    );
    let p = Proxy::start(&cfg).await;

    let answers = send_many(&p.url("/"), 60, 4).await;
    let bad: Vec<_> = answers
        .iter()
        .filter(|(s, b)| *s != 200 || (b != "e1" && b != "e2"))
        .collect();
    assert!(bad.is_empty(), "client-visible errors: {bad:?}");

    let m = p.metrics().await;
    let retried = retries(&m, "connect");
    let refused = metric(
        &m,
        "cutover_upstream_errors_total",
        &[("route", "app"), ("backend", "blue"), ("kind", "connect")],
    );
    assert!(retried >= 1.0, "no connect retry counted");
    // Every refused attempt was retried (the floor of the budget alone
    // allows 10; the dead endpoint is ejected after 5 failures).
    assert_eq!(
        retried, refused,
        "each refused connect should have been retried once"
    );
    let dead_label = dead.to_string();
    let ejections = metric(
        &m,
        "cutover_endpoint_ejections_total",
        &[("backend", "blue"), ("endpoint", &dead_label)],
    );
    assert_eq!(
        ejections, 1.0,
        "the refusing endpoint should be ejected after 5 failures"
    );
    assert_eq!(e1.hits() + e2.hits(), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_caps_retries_when_every_endpoint_refuses() {
    let (_r1, dead1) = refused_addr();
    let (_r2, dead2) = refused_addr();
    // Passive ejection off, so both endpoints stay available and every
    // request would be tried 1 + 2 times without the budget.
    let cfg = format!(
        "{HEAD}[backends.blue]\nendpoints = [\"{dead1}\", \"{dead2}\"]\nretries = 2\noutlier = {{ consecutive_failures = 0 }}\n\n\
         [[routes]]\nname = \"app\"\nweights = {{ blue = 100 }}\n"
    );
    let p = Proxy::start(&cfg).await;

    const N: usize = 200;
    const TASKS: usize = 4;
    let started = Instant::now();
    let answers = send_many(&p.url("/"), N, TASKS).await;
    let elapsed = started.elapsed();
    assert_eq!(answers.len(), N);
    assert!(
        answers.iter().all(|(s, _)| *s == 502),
        "every request must fail: {answers:?}"
    );

    let m = p.metrics().await;
    let retried = retries(&m, "connect");
    let refused = metric(
        &m,
        "cutover_upstream_errors_total",
        &[("route", "app"), ("backend", "blue"), ("kind", "connect")],
    );
    assert_eq!(
        refused,
        N as f64 + retried,
        "each attempt, first or retry, is one connect error"
    );
    assert_eq!(
        metric(
            &m,
            "cutover_requests_total",
            &[("route", "app"), ("code", "502")]
        ),
        N as f64
    );

    // The budget: retries within the last 10 one-second slots stay below
    // 1 per second (10) + 20% of the requests in those slots. If all N
    // requests fall inside one window (the run takes well under a second
    // normally; 8 s leaves room), the total is at most 10 + 0.2 N = 50.
    // Slack: a withdrawal checks then increments without a lock, so each of
    // the TASKS concurrent requests may overshoot by one, and a count racing
    // a slot reset may be lost (at most once per task per second boundary,
    // and the run crosses at most a couple): 2 * TASKS = 8.
    let slack = 2.0 * TASKS as f64;
    let allowance = 10.0 + 0.2 * N as f64;
    let windows = if elapsed < Duration::from_secs(8) {
        1.0
    } else {
        (elapsed.as_secs_f64() / 10.0).ceil() + 1.0
    };
    let bound = windows * allowance + slack;
    eprintln!("budget test: {retried} retries for {N} requests in {elapsed:?}; bound {bound}");
    assert!(
        retried <= bound,
        "{retried} retries for {N} requests; the budget allows {bound} (without it: {})",
        2 * N
    );
    // And the budget is spent, not merely never touched: without
    // competition, every allowed retry is taken.
    if windows == 1.0 {
        assert!(
            retried >= allowance - slack,
            "only {retried} retries; the budget allows {allowance}"
        );
    } else {
        assert!(retried >= 10.0, "only {retried} retries");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_requests_are_retried_on_503_others_are_not() {
    let bad = CtlBackend::start("bad").await;
    let good = CtlBackend::start("good").await;
    bad.set_status(503);
    // Ejection off so that `bad` stays in the rotation.
    let cfg = format!(
        "{HEAD}[backends.blue]\nendpoints = [\"{}\", \"{}\"]\nretry_on = [\"5xx\"]\nretry_buffer_bytes = 1024\n\
         outlier = {{ consecutive_failures = 0 }}\n\n[[routes]]\nname = \"app\"\nweights = {{ blue = 100 }}\n",
        bad.addr, good.addr
    );
    let p = Proxy::start(&cfg).await;
    let client = common::client();

    // GETs, small PUTs and DELETEs (idempotent, PUT's body buffered): all
    // answered 200 by `good`, those that went to `bad` first after a retry.
    // Round robin sends about half to `bad` first: at most 9 retries for 18
    // requests, within the budget's floor (10) alone.
    for _ in 0..6 {
        assert_eq!(
            send(client.get(p.url("/get"))).await,
            (200, "good".to_owned())
        );
    }
    let seen_at_bad = |method: &str| bad.seen().iter().filter(|s| s.starts_with(method)).count();
    for _ in 0..6 {
        let r = client
            .put(p.url("/put"))
            .body("hello")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-backend"], "good");
        assert_eq!(
            r.headers()["x-body-len"],
            "5",
            "the PUT reached good without its body"
        );
        if seen_at_bad("PUT") > 0 {
            break;
        }
    }
    assert!(
        seen_at_bad("PUT") > 0,
        "no PUT went to bad first; its retry was not tested"
    );
    for _ in 0..6 {
        assert_eq!(
            send(client.delete(p.url("/delete"))).await,
            (200, "good".to_owned())
        );
        if seen_at_bad("DELETE") > 0 {
            break;
        }
    }
    assert!(seen_at_bad("DELETE") > 0, "no DELETE went to bad first");
    let first_tries = bad.seen().len();
    assert!(
        seen_at_bad("GET") >= 1,
        "no GET went to bad first; nothing was tested"
    );
    let m = p.metrics().await;
    assert_eq!(
        retries(&m, "5xx"),
        first_tries as f64,
        "each 503 from bad should be retried once"
    );

    // POST is not idempotent: bad's 503 reaches the client.
    let mut post_503 = 0;
    for _ in 0..20 {
        let (status, backend) = send(client.post(p.url("/post")).body("x")).await;
        if status == 503 {
            assert_eq!(backend, "bad", "a 503 not from the backend");
            post_503 += 1;
        } else {
            assert_eq!((status, backend.as_str()), (200, "good"));
        }
    }
    assert!(post_503 >= 1, "no POST went to bad in 20");
    // A PUT too large to buffer (4 KiB > retry_buffer_bytes) streams and is
    // not retried either.
    let mut big_503 = 0;
    for _ in 0..20 {
        let (status, backend) = send(client.put(p.url("/big")).body(vec![b'x'; 4096])).await;
        if status == 503 {
            assert_eq!(backend, "bad");
            big_503 += 1;
        } else {
            assert_eq!(status, 200);
        }
    }
    assert!(big_503 >= 1, "no large PUT went to bad in 20");
    let m = p.metrics().await;
    assert_eq!(
        retries(&m, "5xx"),
        first_tries as f64,
        "a POST or a streamed PUT was retried"
    );
    let posts_at_bad = bad.seen().iter().filter(|s| s.starts_with("POST")).count();
    assert_eq!(posts_at_bad, post_503);

    // 502 and 504 are retried like 503; 500 is not (not a gateway answer).
    let retried_before = retries(&p.metrics().await, "5xx");
    for code in [502, 504] {
        bad.set_status(code);
        let before = bad.hits();
        for _ in 0..4 {
            assert_eq!(
                send(client.get(p.url("/get"))).await,
                (200, "good".to_owned()),
                "after a {code}"
            );
        }
        assert!(
            bad.hits() > before,
            "no GET went to bad while it answered {code}"
        );
    }
    let retried = retries(&p.metrics().await, "5xx") - retried_before;
    assert!(retried >= 2.0, "{retried} retries after 502 and 504");
    bad.set_status(500);
    let mut got_500 = false;
    for _ in 0..10 {
        let (status, backend) = send(client.get(p.url("/get"))).await;
        if status == 500 {
            assert_eq!(backend, "bad");
            got_500 = true;
            break;
        }
    }
    assert!(got_500, "a 500 was retried (or no GET reached bad in 10)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_method_is_retried_when_the_connect_is_refused() {
    let good = CtlBackend::start("good").await;
    let (_reserved, dead) = refused_addr();
    // Ejection off, so that `dead` stays in the rotation; no `retry_on`:
    // connect failures are always retryable, whatever the method, since
    // nothing reached the backend.
    let cfg = format!(
        "{HEAD}[backends.blue]\nendpoints = [\"{dead}\", \"{}\"]\noutlier = {{ consecutive_failures = 0 }}\n\n\
         [[routes]]\nname = \"app\"\nweights = {{ blue = 100 }}\n",
        good.addr
    );
    let p = Proxy::start(&cfg).await;
    let client = common::client();
    // 10 POSTs: about half go to `dead` first, within the budget's floor.
    for _ in 0..10 {
        let r = client
            .post(p.url("/post"))
            .body("payload")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-backend"], "good");
        assert_eq!(
            r.headers()["x-body-len"],
            "7",
            "the retried POST lost its body"
        );
    }
    let m = p.metrics().await;
    let retried = retries(&m, "connect");
    assert!(
        retried >= 1.0,
        "no POST was retried after a refused connect"
    );
    assert_eq!(
        retried,
        metric(
            &m,
            "cutover_upstream_errors_total",
            &[("route", "app"), ("kind", "connect")]
        )
    );
    assert_eq!(good.hits(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_0_turns_retries_off() {
    let good = CtlBackend::start("good").await;
    let (_reserved, dead) = refused_addr();
    let cfg = format!(
        "{HEAD}[backends.blue]\nendpoints = [\"{dead}\", \"{}\"]\nretries = 0\noutlier = {{ consecutive_failures = 0 }}\n\n\
         [[routes]]\nname = \"app\"\nweights = {{ blue = 100 }}\n",
        good.addr
    );
    let p = Proxy::start(&cfg).await;
    let answers = send_many(&p.url("/"), 20, 1).await;
    let refused = answers.iter().filter(|(s, _)| *s == 502).count();
    // Round robin: about half go to `dead`, and each of those fails.
    assert!(
        refused >= 1,
        "no request went to the dead endpoint: {answers:?}"
    );
    assert_eq!(refused + good.hits() as usize, 20, "{answers:?}");
    let m = p.metrics().await;
    assert_eq!(retries(&m, "connect"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_survives_reloads() {
    let (_r1, dead1) = refused_addr();
    let (_r2, dead2) = refused_addr();
    // Every endpoint refuses; each rewrite only changes a comment, which is
    // still a reload (new generation, new routing table).
    let config = |k: u32| {
        format!(
            "# rewrite {k}\n{HEAD}[backends.blue]\nendpoints = [\"{dead1}\", \"{dead2}\"]\nretries = 2\n\
             outlier = {{ consecutive_failures = 0 }}\n\n[[routes]]\nname = \"app\"\nweights = {{ blue = 100 }}\n"
        )
    };
    let p = Proxy::start(&config(0)).await;
    let started = Instant::now();
    let mut sent = send_many(&p.url("/"), 100, 4).await.len();
    for k in 1..=5u32 {
        p.write_config(&config(k));
        let reloaded = common::eventually(Duration::from_secs(10), || async {
            p.state().await["config"]["generation"].as_u64() == Some(1 + u64::from(k))
        })
        .await;
        assert!(reloaded, "rewrite {k} not reloaded");
        sent += send_many(&p.url("/"), 10, 1).await.len();
    }
    let elapsed = started.elapsed();
    let retried = retries(&p.metrics().await, "connect");

    // 150 requests within one 10 s window (normally about 1 s; 8 s leaves
    // room) allow 10 + 0.2 * 150 = 40 retries, + 8 slack as in
    // `retry_budget_caps_retries_when_every_endpoint_refuses`. A budget that
    // started afresh with each reload would allow 30 before the reloads and
    // 10 + 0.2 * 10 = 12 after each of the 5: about 90.
    let slack = 8.0;
    let bound = if elapsed < Duration::from_secs(8) {
        10.0 + 0.2 * sent as f64 + slack
    } else {
        ((elapsed.as_secs_f64() / 10.0).ceil() + 1.0) * (10.0 + 0.2 * sent as f64) + slack
    };
    eprintln!(
        "budget across reloads: {retried} retries for {sent} requests in {elapsed:?}; bound {bound}"
    );
    assert!(
        retried <= bound,
        "{retried} retries for {sent} requests over 5 reloads in {elapsed:?}; the budget allows {bound}: \
         does each reload start a fresh budget?"
    );
}
