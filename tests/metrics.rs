mod common;

// Metrics end to end: the `/metrics` text against `promtool`, exact counts
// for traffic with known outcomes, a real Prometheus server scraping the
// admin port, weights and reload metrics, `/admin/state` and
// `cutover status`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::prom::{self, Labels, PromServer, labels, samples};
use common::{Backend, Proxy};
use futures_util::StreamExt;

/// The override header configured on the routes below.
const FORCE: &str = "x-cutover-backend";

/// How long to wait for anything asynchronous (a reload, Prometheus scrapes).
const PATIENCE: Duration = Duration::from_secs(30);

/// A port on 127.0.0.1 where nothing listens, for a dead endpoint. The
/// socket is bound but never listens: a connect to it is refused, and no
/// other test (or process) can take the port while this lives.
struct ClosedPort {
    addr: SocketAddr,
    _socket: socket2::Socket,
}

impl ClosedPort {
    fn new() -> ClosedPort {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("a socket");
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        socket.bind(&any.into()).expect("bind 127.0.0.1:0");
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        ClosedPort {
            addr,
            _socket: socket,
        }
    }
}

/// [`common::eventually`] on a value fetched by `get` until `ok` holds;
/// also returns the last value fetched, for the failure message.
async fn eventually_with<T, F, Fut>(
    within: Duration,
    mut get: F,
    ok: impl Fn(&T) -> bool,
) -> (bool, T)
where
    T: Default,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let last = std::cell::RefCell::new(T::default());
    let done = common::eventually(within, || {
        let fut = get();
        let (last, ok) = (&last, &ok);
        async move {
            let v = fut.await;
            let good = ok(&v);
            *last.borrow_mut() = v;
            good
        }
    })
    .await;
    (done, last.into_inner())
}

/// Sends `n` GETs one after another, each optionally with a `Host` and an
/// override header, and checks every status.
async fn send(
    c: &reqwest::Client,
    p: &Proxy,
    path: &str,
    host: Option<&str>,
    force: Option<&str>,
    n: usize,
    expect: u16,
) {
    for i in 0..n {
        let mut r = c.get(p.url(path));
        if let Some(h) = host {
            r = r.header("host", h);
        }
        if let Some(b) = force {
            r = r.header(FORCE, b);
        }
        let resp = r.send().await.expect("the proxy answers");
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        assert_eq!(
            status, expect,
            "request {i} to {path} (host {host:?}, override {force:?}): body {body:?}"
        );
    }
}

/// Sends `n` GETs, `concurrency` at a time, each expecting 200.
async fn send_concurrently(
    c: &reqwest::Client,
    p: &Proxy,
    path: &str,
    force: Option<&str>,
    n: usize,
    concurrency: usize,
) {
    let statuses: Vec<u16> = futures_util::stream::iter(0..n)
        .map(|_| {
            let mut r = c.get(p.url(path));
            if let Some(b) = force {
                r = r.header(FORCE, b);
            }
            async move {
                let resp = r.send().await.expect("the proxy answers");
                let status = resp.status().as_u16();
                let _ = resp.bytes().await;
                status
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    assert!(
        statuses.iter().all(|s| *s == 200),
        "{path} (override {force:?}): {statuses:?}"
    );
}

/// `GET /metrics` on the admin listener, checked for 200 and the text
/// exposition content type.
async fn scrape(p: &Proxy) -> String {
    let resp = common::client()
        .get(p.admin_url("/metrics"))
        .send()
        .await
        .expect("admin answers");
    assert_eq!(resp.status(), 200);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(
        ct.starts_with("text/plain") && ct.contains("version=0.0.4"),
        "content-type {ct:?}"
    );
    resp.text().await.unwrap()
}

/// Every series of `name` present in `text` must have the expected value
/// (0 when not listed), and every listed series with a non-zero value must
/// be present. Panics listing all differences.
fn check_family(text: &str, name: &str, expected: &[(Labels, f64)]) {
    check_series(text, name, &samples(text, name), expected);
}

/// [`check_family`] on series already picked out of `text`.
fn check_series(text: &str, name: &str, got: &[(Labels, f64)], expected: &[(Labels, f64)]) {
    let want: BTreeMap<&Labels, f64> = expected.iter().map(|(l, v)| (l, *v)).collect();
    let mut problems = Vec::new();
    for (l, v) in got {
        let w = want.get(l).copied().unwrap_or(0.0);
        if *v != w {
            problems.push(format!("{name}{l:?} = {v}, expected {w}"));
        }
    }
    for (l, w) in &want {
        if *w != 0.0 && !got.iter().any(|(g, _)| g == *l) {
            problems.push(format!("{name}{l:?} missing, expected {w}"));
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n--- /metrics ---\n{text}",
        problems.join("\n")
    );
}

fn rb(route: &str, backend: &str) -> Labels {
    labels(&[("route", route), ("backend", backend)])
}

fn req(route: &str, backend: &str, code: &str, overridden: bool) -> Labels {
    let ov = if overridden { "true" } else { "false" };
    labels(&[
        ("route", route),
        ("backend", backend),
        ("code", code),
        ("override", ov),
    ])
}

fn one(text: &str, name: &str, l: &[(&str, &str)]) -> Option<f64> {
    let want = labels(l);
    samples(text, name)
        .into_iter()
        .find(|(g, _)| *g == want)
        .map(|(_, v)| v)
}

/// Blue, green and two dead backends (each on its own closed port):
/// - `app` (host 127.0.0.1): blue 100, green 0, dead 0, override header,
///   no failover (so a forced dead backend answers 502, not blue's 200);
/// - `broken` (host 127.0.0.1, `/broken`): gone 100;
/// - `only` (host only.example): blue 100.
///
/// A request with any other host matches no route.
async fn mixed_proxy() -> (Backend, Backend, Proxy, [ClosedPort; 2]) {
    let b = Backend::start("blue").await;
    let g = Backend::start("green").await;
    let closed = [ClosedPort::new(), ClosedPort::new()];
    let (dead, gone) = (closed[0].addr, closed[1].addr);
    let cfg = common::config(
        &[("blue", &[&b]), ("green", &[&g])],
        &format!(
            "[backends.dead]\nendpoints = [\"{dead}\"]\n\n\
             [backends.gone]\nendpoints = [\"{gone}\"]\n\n\
             [[routes]]\nname = \"app\"\nhost = \"127.0.0.1\"\n\
             weights = {{ blue = 100, green = 0, dead = 0 }}\n\
             override = {{ header = \"{FORCE}\" }}\nfailover = false\n\n\
             [[routes]]\nname = \"broken\"\nhost = \"127.0.0.1\"\npath_prefix = \"/broken\"\n\
             weights = {{ gone = 100 }}\n\n\
             [[routes]]\nname = \"only\"\nhost = \"only.example\"\nweights = {{ blue = 100 }}\n"
        ),
    );
    let p = Proxy::start(&cfg).await;
    (b, g, p, closed)
}

/// What [`mixed_traffic`] sends, by outcome.
struct Mixed;

impl Mixed {
    const BLUE_200: usize = 6;
    const BLUE_UNKNOWN_OVERRIDE: usize = 2;
    const BLUE_500: usize = 3;
    const GREEN_200: usize = 4;
    const GREEN_500: usize = 2;
    const GREEN_502: usize = 1;
    const GREEN_418: usize = 1;
    // No endpoint sees 5 failures (5xx or connect) in a row, so passive
    // ejection with its default threshold cannot change the outcome.
    const DEAD_502: usize = 3;
    const GONE_502: usize = 2;
    const ONLY_200: usize = 2;
    const UNMATCHED_404: usize = 3;
}

async fn mixed_traffic(c: &reqwest::Client, p: &Proxy) {
    send(c, p, "/", None, None, Mixed::BLUE_200, 200).await;
    // An override naming no backend of the route is ignored: plain traffic.
    send(
        c,
        p,
        "/",
        None,
        Some("purple"),
        Mixed::BLUE_UNKNOWN_OVERRIDE,
        200,
    )
    .await;
    send(c, p, "/status/500", None, None, Mixed::BLUE_500, 500).await;
    send(c, p, "/", None, Some("green"), Mixed::GREEN_200, 200).await;
    send(
        c,
        p,
        "/status/500",
        None,
        Some("green"),
        Mixed::GREEN_500,
        500,
    )
    .await;
    // A 502 sent by the backend itself is not an upstream error.
    send(
        c,
        p,
        "/status/502",
        None,
        Some("green"),
        Mixed::GREEN_502,
        502,
    )
    .await;
    // A code without a pre-resolved handle.
    send(
        c,
        p,
        "/status/418",
        None,
        Some("green"),
        Mixed::GREEN_418,
        418,
    )
    .await;
    send(c, p, "/", None, Some("dead"), Mixed::DEAD_502, 502).await;
    send(c, p, "/broken/x", None, None, Mixed::GONE_502, 502).await;
    send(c, p, "/", Some("only.example"), None, Mixed::ONLY_200, 200).await;
    send(
        c,
        p,
        "/",
        Some("other.example"),
        None,
        Mixed::UNMATCHED_404,
        404,
    )
    .await;
}

#[tokio::test]
async fn exact_counts_for_known_outcomes() {
    let (_b, _g, p, _closed) = mixed_proxy().await;
    let c = common::client();
    mixed_traffic(&c, &p).await;

    // In flight goes back to 0 once every response body has been sent.
    let (settled, text) = eventually_with(
        Duration::from_secs(10),
        || scrape(&p),
        |text| {
            let gauges = samples(text, "cutover_requests_in_flight");
            !gauges.is_empty() && gauges.iter().all(|(_, v)| *v == 0.0)
        },
    )
    .await;
    assert!(
        settled,
        "cutover_requests_in_flight did not return to 0:\n{text}"
    );
    for (route, backend) in [
        ("app", "blue"),
        ("app", "green"),
        ("app", "dead"),
        ("broken", "gone"),
    ] {
        assert_eq!(
            one(
                &text,
                "cutover_requests_in_flight",
                &[("route", route), ("backend", backend)]
            ),
            Some(0.0),
            "in flight of {route}/{backend}:\n{text}"
        );
    }

    let n = |x: usize| x as f64;
    check_family(
        &text,
        "cutover_requests_total",
        &[
            (
                req("app", "blue", "200", false),
                n(Mixed::BLUE_200 + Mixed::BLUE_UNKNOWN_OVERRIDE),
            ),
            (req("app", "blue", "500", false), n(Mixed::BLUE_500)),
            (req("app", "green", "200", true), n(Mixed::GREEN_200)),
            (req("app", "green", "500", true), n(Mixed::GREEN_500)),
            (req("app", "green", "502", true), n(Mixed::GREEN_502)),
            (req("app", "green", "418", true), n(Mixed::GREEN_418)),
            (req("app", "dead", "502", true), n(Mixed::DEAD_502)),
            (req("broken", "gone", "502", false), n(Mixed::GONE_502)),
            (req("only", "blue", "200", false), n(Mixed::ONLY_200)),
            (req("", "", "404", false), n(Mixed::UNMATCHED_404)),
        ],
    );
    let counts = [
        (
            rb("app", "blue"),
            n(Mixed::BLUE_200 + Mixed::BLUE_UNKNOWN_OVERRIDE + Mixed::BLUE_500),
        ),
        (
            rb("app", "green"),
            n(Mixed::GREEN_200 + Mixed::GREEN_500 + Mixed::GREEN_502 + Mixed::GREEN_418),
        ),
        (rb("app", "dead"), n(Mixed::DEAD_502)),
        (rb("broken", "gone"), n(Mixed::GONE_502)),
        (rb("only", "blue"), n(Mixed::ONLY_200)),
        (rb("", ""), n(Mixed::UNMATCHED_404)),
    ];
    check_family(&text, "cutover_request_duration_seconds_count", &counts);
    // The +Inf bucket is the count; the sum is positive wherever there was
    // traffic.
    let inf: Vec<(Labels, f64)> = samples(&text, "cutover_request_duration_seconds_bucket")
        .into_iter()
        .filter_map(|(mut l, v)| (l.remove("le")? == "+Inf").then_some((l, v)))
        .collect();
    check_series(
        &text,
        "cutover_request_duration_seconds_bucket{le=\"+Inf\"}",
        &inf,
        &counts,
    );
    for (l, count) in &counts {
        let sum = samples(&text, "cutover_request_duration_seconds_sum")
            .into_iter()
            .find(|(g, _)| g == l)
            .map(|(_, v)| v);
        assert!(
            sum.is_some_and(|s| s > 0.0 && s.is_finite()),
            "duration sum of {l:?} (count {count}): {sum:?}\n{text}"
        );
    }

    check_family(
        &text,
        "cutover_upstream_errors_total",
        &[
            (
                labels(&[("route", "app"), ("backend", "dead"), ("kind", "connect")]),
                n(Mixed::DEAD_502),
            ),
            (
                labels(&[
                    ("route", "broken"),
                    ("backend", "gone"),
                    ("kind", "connect"),
                ]),
                n(Mixed::GONE_502),
            ),
        ],
    );
    // Every kind is exported from the start, at 0.
    for kind in ["connect", "timeout", "reset", "protocol"] {
        assert!(
            one(
                &text,
                "cutover_upstream_errors_total",
                &[("route", "app"), ("backend", "blue"), ("kind", kind)]
            )
            .is_some(),
            "no {kind} series for app/blue:\n{text}"
        );
    }

    // Nothing was retried or failed over (one endpoint per backend, no
    // failover on `app`).
    check_family(&text, "cutover_retries_total", &[]);
    check_family(&text, "cutover_failovers_total", &[]);

    check_family(
        &text,
        "cutover_backend_weight",
        &[
            (rb("app", "blue"), 100.0),
            (rb("app", "green"), 0.0),
            (rb("app", "dead"), 0.0),
            (rb("broken", "gone"), 100.0),
            (rb("only", "blue"), 100.0),
        ],
    );
    assert_eq!(
        samples(&text, "cutover_backend_weight").len(),
        5,
        "one weight per configured (route, backend), none for route=\"\":\n{text}"
    );

    // Types are part of the contract.
    for (family, ty) in [
        ("cutover_requests_total", "counter"),
        ("cutover_request_duration_seconds", "histogram"),
        ("cutover_upstream_errors_total", "counter"),
        ("cutover_backend_weight", "gauge"),
        ("cutover_requests_in_flight", "gauge"),
        ("cutover_connections_open", "gauge"),
        ("cutover_config_reloads_total", "counter"),
        (
            "cutover_config_last_reload_success_timestamp_seconds",
            "gauge",
        ),
        ("cutover_config_generation", "gauge"),
        ("cutover_build_info", "gauge"),
    ] {
        assert_eq!(
            prom::family_type(&text, family).as_deref(),
            Some(ty),
            "# TYPE of {family}:\n{text}"
        );
    }

    // Histogram buckets: the defaults, 0.5 ms to 10 s.
    let les: Vec<String> = samples(&text, "cutover_request_duration_seconds_bucket")
        .into_iter()
        .filter(|(l, _)| *l.get("route").unwrap() == "app" && *l.get("backend").unwrap() == "blue")
        .map(|(l, _)| l["le"].clone())
        .collect();
    assert_eq!(les.first().map(String::as_str), Some("0.0005"), "{les:?}");
    assert!(les.iter().any(|l| l == "10"), "{les:?}");
    assert_eq!(les.last().map(String::as_str), Some("+Inf"), "{les:?}");

    // Connections: the client keeps one open, then closes it.
    let open = samples(&text, "cutover_connections_open");
    assert_eq!(open.len(), 1, "{text}");
    assert!(
        open[0].1 >= 1.0,
        "the test client holds a keep-alive connection: {open:?}"
    );
    drop(c);
    let (closed, last) = eventually_with(
        Duration::from_secs(10),
        || async { samples(&scrape(&p).await, "cutover_connections_open") },
        |open| open.len() == 1 && open[0].1 == 0.0,
    )
    .await;
    assert!(
        closed,
        "cutover_connections_open did not return to 0 after the client closed: {last:?}"
    );

    assert_eq!(
        samples(&text, "cutover_build_info"),
        vec![(labels(&[("version", env!("CARGO_PKG_VERSION"))]), 1.0)],
        "{text}"
    );
    for process in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_cpu_seconds_total",
        "process_start_time_seconds",
    ] {
        let v = samples(&text, process);
        assert!(v.len() == 1 && v[0].1 >= 0.0, "{process}: {v:?}\n{text}");
    }
    assert!(samples(&text, "process_resident_memory_bytes")[0].1 > 1_000_000.0);
    assert!(samples(&text, "process_open_fds")[0].1 >= 3.0);
}

#[tokio::test]
async fn metrics_pass_promtool_check() {
    // Fails (does not skip) without promtool: CI installs it.
    prom::promtool();
    let (_b, _g, p, _closed) = mixed_proxy().await;
    let c = common::client();
    mixed_traffic(&c, &p).await;
    let text = scrape(&p).await;
    // Everything the traffic should have produced is in the text checked.
    for family in [
        "cutover_requests_total",
        "cutover_request_duration_seconds_bucket",
        "cutover_upstream_errors_total",
        "cutover_backend_weight",
        "cutover_requests_in_flight",
        "cutover_connections_open",
        "cutover_config_reloads_total",
        "cutover_config_last_reload_success_timestamp_seconds",
        "cutover_config_generation",
        "cutover_build_info",
        "process_resident_memory_bytes",
    ] {
        assert!(!samples(&text, family).is_empty(), "no {family}:\n{text}");
    }
    let (code, printed) = prom::promtool_check_metrics(&text);
    println!("promtool check metrics: exit {code:?}, printed {printed:?}");
    assert_eq!(
        code,
        Some(0),
        "promtool check metrics failed:\n{printed}\n--- input ---\n{text}"
    );
    assert!(
        printed.trim().is_empty(),
        "promtool check metrics printed lint problems:\n{printed}"
    );

    // The check itself can fail: a counter without `_total` is reported.
    let (code, printed) = prom::promtool_check_metrics(
        "# HELP broken_requests Requests.\n# TYPE broken_requests counter\nbroken_requests 1\n",
    );
    assert!(
        code != Some(0) || !printed.trim().is_empty(),
        "promtool accepted a counter without _total: {code:?} {printed}"
    );
}

#[tokio::test]
async fn real_prometheus_scrapes_per_backend_counts_and_latency() {
    const BLUE: usize = 120;
    const GREEN: usize = 20;
    let (_b, _g, p) =
        common::blue_green(100, 0, &format!("override = {{ header = \"{FORCE}\" }}\n")).await;
    let server = PromServer::start(p.admin.expect("admin listener")).await;

    // A (route, backend)'s series appear with its first request (10,000
    // idle routes cost no children; README, "Metrics"): one request to
    // each backend creates them, and a scrape that sees them is the
    // baseline of the rates below.
    let c = common::client();
    send_concurrently(&c, &p, "/", None, 1, 1).await;
    send_concurrently(&c, &p, "/", Some("green"), 1, 1).await;
    let (scraped, seen) = eventually_with(
        PATIENCE,
        || {
            server.query_by(
                "cutover_request_duration_seconds_count{job=\"cutover\",route=\"app\"}",
                "backend",
            )
        },
        |seen| seen.as_ref().is_some_and(|m| m.len() == 2),
    )
    .await;
    assert!(
        scraped,
        "prometheus never scraped cutover's histograms: {seen:?}\n{}",
        server.log()
    );
    let up = server.query_by("up{job=\"cutover\"}", "job").await;
    assert_eq!(up, Some(BTreeMap::from([("cutover".to_owned(), 1.0)])));

    send_concurrently(&c, &p, "/", None, BLUE, 4).await;
    send_concurrently(&c, &p, "/sleep/50", Some("green"), GREEN, 4).await;

    // Counters are exact from the first request on (the first ones too).
    let expected = BTreeMap::from([
        ("blue".to_owned(), BLUE as f64 + 1.0),
        ("green".to_owned(), GREEN as f64 + 1.0),
    ]);
    let (matched, counts) = eventually_with(
        PATIENCE,
        || {
            server.query_by(
                "sum by (backend) (cutover_requests_total{route=\"app\"})",
                "backend",
            )
        },
        |counts| counts.as_ref() == Some(&expected),
    )
    .await;
    println!("prometheus: sum by (backend) (cutover_requests_total{{route=\"app\"}}) = {counts:?}");
    assert!(
        matched,
        "prometheus' per-backend request counts {counts:?}, expected {expected:?}\n{}",
        server.log()
    );
    // Tester traffic (override="true") can be left out of the analysis.
    let plain = server
        .query_by(
            "sum by (backend) (cutover_requests_total{route=\"app\",override=\"false\"})",
            "backend",
        )
        .await;
    assert_eq!(
        plain,
        Some(BTreeMap::from([("blue".to_owned(), BLUE as f64 + 1.0)]))
    );
    let forced = server
        .query_by(
            "sum by (backend) (cutover_requests_total{route=\"app\",override=\"true\"})",
            "backend",
        )
        .await;
    assert_eq!(
        forced,
        Some(BTreeMap::from([("green".to_owned(), GREEN as f64 + 1.0)]))
    );

    let q = "histogram_quantile(0.99, sum by (le, backend) \
             (rate(cutover_request_duration_seconds_bucket{route=\"app\"}[1m])))";
    let (ok, p99) = eventually_with(
        PATIENCE,
        || server.query_by(q, "backend"),
        |p99| {
            p99.as_ref()
                .is_some_and(|m| m.len() == 2 && m.values().all(|v| v.is_finite()))
        },
    )
    .await;
    println!("prometheus: {q} = {p99:?}");
    assert!(ok, "no p99 per backend from prometheus: {p99:?}");
    let p99 = p99.unwrap();
    let (blue, green) = (p99["blue"], p99["green"]);
    assert!(green > 0.05, "green sleeps 50 ms, its p99 is {green}");
    assert!(green > blue, "green p99 {green} <= blue p99 {blue}");

    // The same over the whole run, from the cumulative buckets.
    let q = "histogram_quantile(0.5, sum by (le, backend) \
             (cutover_request_duration_seconds_bucket{route=\"app\"}))";
    let p50 = server.query_by(q, "backend").await.unwrap_or_default();
    println!("prometheus: {q} = {p50:?}");
    assert!(
        p50.get("green").is_some_and(|g| *g > 0.05),
        "green p50 {p50:?}"
    );
    assert!(
        p50.get("blue").is_some_and(|b| *b < 0.05),
        "blue p50 {p50:?}"
    );
}

fn weights_config(b: &Backend, g: &Backend, weights: &str) -> String {
    common::config(
        &[("blue", &[b]), ("green", &[g])],
        &format!("[[routes]]\nname = \"app\"\nweights = {{ {weights} }}\n"),
    )
}

struct ReloadView {
    generation: Option<f64>,
    success: Option<f64>,
    failure: Option<f64>,
    timestamp: Option<f64>,
    blue: Option<f64>,
    green: Option<f64>,
}

fn reload_view(text: &str) -> ReloadView {
    ReloadView {
        generation: one(text, "cutover_config_generation", &[]),
        success: one(
            text,
            "cutover_config_reloads_total",
            &[("result", "success")],
        ),
        failure: one(
            text,
            "cutover_config_reloads_total",
            &[("result", "failure")],
        ),
        timestamp: one(
            text,
            "cutover_config_last_reload_success_timestamp_seconds",
            &[],
        ),
        blue: one(
            text,
            "cutover_backend_weight",
            &[("route", "app"), ("backend", "blue")],
        ),
        green: one(
            text,
            "cutover_backend_weight",
            &[("route", "app"), ("backend", "green")],
        ),
    }
}

#[tokio::test]
async fn weight_changes_and_reloads_show_in_metrics() {
    let b = Backend::start("blue").await;
    let g = Backend::start("green").await;
    let p = Proxy::start(&weights_config(&b, &g, "blue = 100, green = 0")).await;
    let c = common::client();

    let text = scrape(&p).await;
    let before = reload_view(&text);
    assert_eq!(before.blue, Some(100.0), "{text}");
    assert_eq!(before.green, Some(0.0), "{text}");
    let gen0 = before.generation.expect("cutover_config_generation");
    let ok0 = before.success.expect("reloads_total{result=\"success\"}");
    let bad0 = before
        .failure
        .expect("reloads_total{result=\"failure\"} exists at 0");
    let ts0 = before.timestamp.expect("last reload success timestamp");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        ts0 > now - 120.0 && ts0 <= now + 1.0,
        "last success {ts0} is not around now {now}"
    );
    assert_eq!(gen0, 1.0, "the first config is generation 1");
    assert_eq!(bad0, 0.0);
    send(&c, &p, "/", None, None, 4, 200).await;

    // Weights move to green.
    p.write_config(&weights_config(&b, &g, "blue = 0, green = 100"));
    let (applied, text) = eventually_with(
        PATIENCE,
        || scrape(&p),
        |text| {
            let v = reload_view(text);
            v.blue == Some(0.0) && v.green == Some(100.0)
        },
    )
    .await;
    assert!(applied, "the new weights never showed:\n{text}");
    let after = reload_view(&text);
    assert_eq!(after.generation, Some(gen0 + 1.0), "{text}");
    assert_eq!(after.success, Some(ok0 + 1.0), "{text}");
    assert_eq!(after.failure, Some(bad0), "{text}");
    let ts1 = after.timestamp.unwrap();
    assert!(ts1 > ts0, "last success timestamp {ts0} -> {ts1}");
    send(&c, &p, "/", None, None, 4, 200).await;

    // Traffic before and after the reload lands in the same series.
    let text = scrape(&p).await;
    check_family(
        &text,
        "cutover_requests_total",
        &[
            (req("app", "blue", "200", false), 4.0),
            (req("app", "green", "200", false), 4.0),
        ],
    );
    check_family(
        &text,
        "cutover_request_duration_seconds_count",
        &[
            (rb("app", "blue"), 4.0),
            (rb("app", "green"), 4.0),
            (rb("", ""), 0.0),
        ],
    );

    // A broken file: counted as a failure, nothing else moves.
    p.write_config("[listen\nthis is not toml\n");
    let (failed, text) = eventually_with(
        PATIENCE,
        || scrape(&p),
        |text| reload_view(text).failure == Some(bad0 + 1.0),
    )
    .await;
    assert!(failed, "the failed reload was not counted:\n{text}");
    let v = reload_view(&text);
    assert_eq!(v.generation, Some(gen0 + 1.0), "{text}");
    assert_eq!(v.success, Some(ok0 + 1.0), "{text}");
    assert_eq!(v.timestamp, Some(ts1), "{text}");
    assert_eq!((v.blue, v.green), (Some(0.0), Some(100.0)), "{text}");

    // Green leaves the route: its weight series goes away.
    p.write_config(&weights_config(&b, &g, "blue = 100"));
    let (applied, text) = eventually_with(
        PATIENCE,
        || scrape(&p),
        |text| reload_view(text).generation == Some(gen0 + 2.0),
    )
    .await;
    assert!(applied, "the third config never loaded:\n{text}");
    check_family(
        &text,
        "cutover_backend_weight",
        &[(rb("app", "blue"), 100.0)],
    );
    assert_eq!(samples(&text, "cutover_backend_weight").len(), 1, "{text}");
    let v = reload_view(&text);
    assert_eq!(v.success, Some(ok0 + 2.0), "{text}");
    assert!(v.timestamp.unwrap() > ts1);
}

#[tokio::test]
async fn admin_state_and_status_compare_blue_and_green() {
    const BLUE_OK: usize = 40;
    const BLUE_5XX: usize = 10;
    const GREEN_SLOW: usize = 20;
    const GREEN_5XX: usize = 5;
    let (_b, _g, p) =
        common::blue_green(100, 0, &format!("override = {{ header = \"{FORCE}\" }}\n")).await;
    let c = common::client();
    // 5xx answers are spread out: five in a row would eject the endpoint.
    for _ in 0..BLUE_5XX {
        send(&c, &p, "/status/503", None, None, 1, 503).await;
        send_concurrently(&c, &p, "/", None, BLUE_OK / BLUE_5XX, 4).await;
    }
    for _ in 0..GREEN_5XX {
        send(&c, &p, "/status/500", None, Some("green"), 1, 500).await;
        send_concurrently(
            &c,
            &p,
            "/sleep/50",
            Some("green"),
            GREEN_SLOW / GREEN_5XX,
            4,
        )
        .await;
    }

    let state: serde_json::Value = common::client()
        .get(p.admin_url("/admin/state"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let routes = state["routes"].as_array().expect("routes");
    assert_eq!(routes.len(), 1, "{state:#}");
    assert_eq!(routes[0]["name"], "app");
    let backend = |name: &str| -> serde_json::Value {
        routes[0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == name)
            .unwrap_or_else(|| panic!("no backend {name}: {state:#}"))
            .clone()
    };
    let (blue, green) = (backend("blue"), backend("green"));
    for (b, requests, errors) in [
        (&blue, BLUE_OK + BLUE_5XX, BLUE_5XX),
        (&green, GREEN_SLOW + GREEN_5XX, GREEN_5XX),
    ] {
        assert_eq!(b["requests"].as_u64(), Some(requests as u64), "{b:#}");
        assert_eq!(b["errors_5xx"].as_u64(), Some(errors as u64), "{b:#}");
        let rate = b["error_rate"].as_f64().expect("error_rate");
        assert!(
            (rate - errors as f64 / requests as f64).abs() < 1e-9,
            "{b:#}"
        );
        let lat = &b["latency_seconds"];
        let (p50, p90, p99) = (
            lat["p50"].as_f64().expect("p50"),
            lat["p90"].as_f64().expect("p90"),
            lat["p99"].as_f64().expect("p99"),
        );
        assert!(
            0.0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= 10.0,
            "{b:#}"
        );
    }
    assert_eq!(blue["weight"], 100);
    assert_eq!(green["weight"], 0);
    let lat = |b: &serde_json::Value, q: &str| b["latency_seconds"][q].as_f64().unwrap();
    println!(
        "/admin/state: blue p50/p90/p99 = {}/{}/{}, green = {}/{}/{}",
        lat(&blue, "p50"),
        lat(&blue, "p90"),
        lat(&blue, "p99"),
        lat(&green, "p50"),
        lat(&green, "p90"),
        lat(&green, "p99")
    );
    assert!(lat(&blue, "p50") < 0.05, "{blue:#}");
    // 20 of green's 25 requests slept 50 ms.
    assert!(lat(&green, "p50") > 0.05, "{green:#}");
    assert!(lat(&green, "p99") > 0.05, "{green:#}");
    assert!(
        lat(&green, "p99") > lat(&blue, "p99"),
        "green p99 must be above blue's: {green:#} {blue:#}"
    );

    // `cutover status` renders the same numbers as a table.
    let admin = format!("http://{}", p.admin.unwrap());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
            .args(["status", "--admin", &admin])
            .output()
            .expect("cutover status runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "cutover status: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    println!("cutover status:\n{stdout}");
    assert!(stdout.contains("route app"), "{stdout}");
    let row = |name: &str| -> Vec<String> {
        stdout
            .lines()
            .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .find(|cols| cols.first().map(String::as_str) == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{stdout}"))
    };
    // backend weight buckets requests 5xx 5xx% p50 p90 p99
    let (blue_row, green_row) = (row("blue"), row("green"));
    assert_eq!(blue_row.len(), 9, "{stdout}");
    assert_eq!(blue_row[1], "100", "{stdout}");
    assert_eq!(blue_row[3], (BLUE_OK + BLUE_5XX).to_string(), "{stdout}");
    assert_eq!(blue_row[4], BLUE_5XX.to_string(), "{stdout}");
    assert_eq!(blue_row[5], "20.00%", "{stdout}");
    assert_eq!(green_row.len(), 9, "{stdout}");
    assert_eq!(green_row[1], "0", "{stdout}");
    assert_eq!(
        green_row[3],
        (GREEN_SLOW + GREEN_5XX).to_string(),
        "{stdout}"
    );
    assert_eq!(green_row[4], GREEN_5XX.to_string(), "{stdout}");
    assert_eq!(green_row[5], "20.00%", "{stdout}");
    let ms = |s: &str| -> f64 {
        s.strip_suffix("ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{s:?} is not a latency in ms:\n{stdout}"))
    };
    assert!(ms(&green_row[8]) > 50.0, "{stdout}");
    assert!(ms(&green_row[8]) > ms(&blue_row[8]), "{stdout}");
}

#[tokio::test]
async fn health_endpoints_answer_200() {
    let (_b, _g, p) = common::blue_green(100, 0, "").await;
    let c = common::client();
    for (path, body) in [("/healthz", "ok"), ("/readyz", "ready")] {
        let resp = c.get(p.admin_url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.text().await.unwrap().trim(), body, "{path}");
    }
    // The admin listener is separate from the proxy: these are not routed.
    let text = scrape(&p).await;
    check_family(&text, "cutover_requests_total", &[]);
}

#[tokio::test]
async fn configured_buckets_are_used() {
    let b = Backend::start("blue").await;
    let cfg = common::config(
        &[("blue", &[&b])],
        "[metrics]\nbuckets = [0.01, 0.2, 3.0]\n\n[[routes]]\nname = \"app\"\nweights = { blue = 1 }\n",
    );
    let p = Proxy::start(&cfg).await;
    send(&common::client(), &p, "/", None, None, 2, 200).await;
    let text = scrape(&p).await;
    let buckets: Vec<(String, f64)> = samples(&text, "cutover_request_duration_seconds_bucket")
        .into_iter()
        .filter(|(l, _)| l["route"] == "app")
        .map(|(l, v)| (l["le"].clone(), v))
        .collect();
    let les: Vec<&str> = buckets.iter().map(|(le, _)| le.as_str()).collect();
    assert_eq!(les, ["0.01", "0.2", "3", "+Inf"], "{text}");
    assert_eq!(buckets.last().unwrap().1, 2.0, "{text}");
}

#[tokio::test]
async fn a_failed_over_request_counts_on_the_backend_that_serves_it() {
    // `app` sends everyone to `dead` (a closed port); its connect failure is
    // retried on green (failover, on by default), which takes its time.
    let g = Backend::start("green").await;
    let closed = ClosedPort::new();
    let dead = closed.addr;
    let cfg = common::config(
        &[("green", &[&g])],
        &format!(
            "[backends.dead]\nendpoints = [\"{dead}\"]\n\n\
             [[routes]]\nname = \"app\"\nweights = {{ dead = 100, green = 0 }}\n"
        ),
    );
    let p = Proxy::start(&cfg).await;
    let c = common::client();
    let url = p.url("/sleep/2000");
    let request = tokio::spawn(async move {
        let resp = c.get(url).send().await.expect("the proxy answers");
        (
            resp.status().as_u16(),
            resp.text().await.unwrap_or_default(),
        )
    });

    // While green works on it, the request is in flight, on green.
    let in_flight = |text: &str, backend: &str| {
        one(
            text,
            "cutover_requests_in_flight",
            &[("route", "app"), ("backend", backend)],
        )
        .unwrap_or(0.0)
    };
    let (seen, text) = eventually_with(
        Duration::from_secs(10),
        || scrape(&p),
        // The first attempt is briefly in flight on `dead` until its
        // connect is refused; wait for the retry to reach green.
        |text| in_flight(text, "green") > 0.0,
    )
    .await;
    assert!(
        seen,
        "the request never showed as in flight on green:\n{text}"
    );
    assert_eq!(
        (in_flight(&text, "green"), in_flight(&text, "dead")),
        (1.0, 0.0),
        "a request waiting for green's answer must be in flight on green, not on the \
         backend it failed over from:\n{text}"
    );

    let (status, body) = request.await.unwrap();
    assert_eq!((status, body.as_str()), (200, "green"));
    let (settled, text) = eventually_with(
        Duration::from_secs(10),
        || scrape(&p),
        |text| in_flight(text, "green") == 0.0 && in_flight(text, "dead") == 0.0,
    )
    .await;
    assert!(settled, "in flight did not return to 0:\n{text}");
    check_family(
        &text,
        "cutover_requests_total",
        &[(req("app", "green", "200", false), 1.0)],
    );
    check_family(
        &text,
        "cutover_request_duration_seconds_count",
        &[(rb("app", "green"), 1.0)],
    );
    check_family(
        &text,
        "cutover_upstream_errors_total",
        &[(
            labels(&[("route", "app"), ("backend", "dead"), ("kind", "connect")]),
            1.0,
        )],
    );
}
