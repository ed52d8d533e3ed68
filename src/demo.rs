//! `cutover demo`: the whole thing with no files. Two built-in backends (blue
//! and green, each answering a page that names its colour and version), an
//! embedded config written to a temporary file that is watched like any
//! other, and a few lines of what to try.
//!
//! `cutover demo --rollout` runs a short progressive rollout of green
//! instead ([`ROLLOUT`]), with background traffic ([`traffic`]) so the
//! verdicts move, and a green a person makes bad, slow or good again by
//! typing that word in the demo's terminal ([`read_commands`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{Response, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// The embedded config; `{blue}`, `{green}`, `{http}` and `{admin}` are
/// filled in at start.
const TEMPLATE: &str = r#"# Cutover demo config, written by `cutover demo` and watched:
# edit the weights below and save, or run `cutover set` on this file.

[listen]
http = "{http}"

[admin]
listen = "{admin}"

# A demo needs few connections; 1000 fits any open-file limit (README,
# "Open files"), so the demo starts without a warning.
[limits]
max_connections = 1000

# One line per request on this terminal (README, "Access log").
[access_log]
path = "stdout"
format = "text"

[backends.blue]
endpoints = ["{blue}"]

[backends.green]
endpoints = ["{green}"]

[[routes]]
name = "app"
weights = { {weights} }
sticky = { cookie = "cutover", max_age = "1h" }
override = { header = "x-cutover-backend", cookie = "cutover_force" }
expose_backend_header = true
"#;

/// `--rollout`: green released in four steps of 20 s each; the verdict
/// thresholds are those of the analysis defaults but the error rate, which
/// tolerates 3 points so that the demo's few hundred requests per second
/// can pass a step within its hold.
const ROLLOUT: &str = r#"analysis = { max_error_rate_increase = 0.03 }
[routes.rollout]
id = "v2.0"
canary = "green"
steps = [10, 25, 50, 100]
hold = "20s"
min_requests = 200
on_failure = "rollback"
"#;

/// Requests per second the `--rollout` demo sends through the proxy.
pub const TRAFFIC_PER_SECOND: u64 = 300;

/// How the demo's green behaves; set from the terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Mode {
    Good = 0,
    /// One answer in five is a 500.
    Bad = 1,
    /// Every answer 50 ms late.
    Slow = 2,
}

pub fn run(http: SocketAddr, admin: SocketAddr, rollout: bool) -> anyhow::Result<()> {
    // Fail before starting anything when an address is taken; `app::run`
    // binds them again (and would refuse them the same way). Port 0 becomes
    // the port found free here, so the banner and the traffic know it.
    let probe = |flag: &str, addr: SocketAddr| -> anyhow::Result<SocketAddr> {
        let l = crate::proxy::listener::bind(addr).context(flag.to_owned())?;
        Ok(l.local_addr()?)
    };
    let http = probe("--http", http)?;
    let admin = probe("--admin", admin)?;
    let green_mode = Arc::new(AtomicU8::new(Mode::Good as u8));
    let blue = start_backend("blue", "v1.0", Arc::new(AtomicU8::new(Mode::Good as u8)))?;
    let green = start_backend("green", "v2.0", green_mode.clone())?;
    let dir = std::env::temp_dir().join(format!("cutover-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path: PathBuf = dir.join("cutover.toml");
    let text = TEMPLATE
        .replace("{http}", &http.to_string())
        .replace("{admin}", &admin.to_string())
        .replace("{blue}", &blue.to_string())
        .replace("{green}", &green.to_string());
    let text = if rollout {
        // ~300 lines a second would bury the `rollout transition` lines:
        // the access log goes to a file beside the config instead.
        text.replace("{weights}", "blue = 100, green = 0")
            .replace(
                "# One line per request on this terminal (README, \"Access log\").\n",
                "# One line per request, in access.log beside this file.\n",
            )
            .replace("path = \"stdout\"", "path = \"access.log\"")
            + ROLLOUT
    } else {
        text.replace("{weights}", "blue = 90, green = 10")
    };
    std::fs::write(&path, text)?;
    let p = path.display();
    if rollout {
        println!(
            "Cutover demo: a progressive rollout of green (v2.0) over blue (v1.0).

  Green takes 10%, 25%, 50%, then 100% of new users, at least 20 s per step,
  each step passed only when green is no worse than blue on the evidence of
  that step. The demo sends about {TRAFFIC_PER_SECOND} requests per second through the proxy.

  proxy   http://{http}/
  admin   http://{admin}/   (the live dashboard: watch the weights and the verdict)
  config  {p}

Type in this terminal, then Enter:
  bad     green answers 500 to one request in five: the rollout rolls back by itself
  slow    green answers 50 ms late: rolled back on latency
  good    green is healthy again (a finished rollout stays finished)
Or watch from another terminal:
  cargo run --release -- rollout status --admin http://{admin}
  cargo run --release -- report --admin http://{admin}
The transitions are the `rollout transition` log lines below. Ctrl-C stops the demo.
"
        );
        std::thread::Builder::new()
            .name("demo-traffic".into())
            .spawn(move || traffic(http, TRAFFIC_PER_SECOND))?;
        std::thread::Builder::new()
            .name("demo-terminal".into())
            .spawn(move || read_commands(&green_mode))?;
        return crate::app::run(&path);
    }
    println!(
        "Cutover demo: blue (v1.0) is live, green (v2.0) gets 10% of new users.

  proxy   http://{http}/
  admin   http://{admin}/   (the live dashboard; also /admin/state, /admin/analysis, /metrics)
  config  {p}   (watched: edit the weights and save)

Try, in another terminal:
  for i in $(seq 100); do curl -s http://{http}/ | head -1; done | sort | uniq -c
  curl -s -H 'x-cutover-backend: green' http://{http}/          # tester override
  cargo run --release -- set --config {p} blue=50 green=50
  cargo run --release -- rollback --config {p} --to blue
  cargo run --release -- status --admin http://{admin}
  cargo run --release -- report --admin http://{admin}                  # blue vs green verdict
Ctrl-C stops the demo.
"
    );
    crate::app::run(&path)
}

/// Sets green's [`Mode`] from the words typed in the terminal (standard
/// input), until it closes.
fn read_commands(mode: &AtomicU8) {
    use std::io::BufRead;
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        let (m, what) = match line.trim() {
            "bad" => (Mode::Bad, "green now answers 500 to one request in five"),
            "slow" => (Mode::Slow, "green now answers 50 ms late"),
            "good" => (Mode::Good, "green is healthy again"),
            "" => continue,
            other => {
                println!("demo: \"{other}\" is not one of bad, slow, good");
                continue;
            }
        };
        mode.store(m as u8, Ordering::Relaxed);
        println!("demo: {what}");
    }
}

/// Sends about `per_second` `GET /` through the proxy at `http`, each from
/// a new user (no cookie), over a few keep-alive connections; reconnects
/// when one closes (and while the proxy starts).
fn traffic(http: SocketAddr, per_second: u64) {
    const CONNECTIONS: u64 = 4;
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    rt.block_on(async move {
        let every = Duration::from_micros(1_000_000 * CONNECTIONS / per_second.max(1));
        let tasks: Vec<_> = (0..CONNECTIONS)
            .map(|_| tokio::spawn(one_connection(http, every)))
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    });
}

async fn one_connection(http: SocketAddr, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(stream) = tokio::net::TcpStream::connect(http).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let Ok((mut sender, conn)) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await
        else {
            continue;
        };
        tokio::spawn(conn);
        loop {
            tick.tick().await;
            let Ok(req) = http::Request::get("/")
                .header(header::HOST, http.to_string())
                .body(Full::new(Bytes::new()))
            else {
                return;
            };
            match sender.send_request(req).await {
                Ok(resp) => {
                    use http_body_util::BodyExt;
                    if resp.into_body().collect().await.is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    }
}

/// Serves the demo page of one colour on an ephemeral port, on its own
/// thread, behaving as `mode` says.
fn start_backend(
    colour: &'static str,
    version: &'static str,
    mode: Arc<AtomicU8>,
) -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    std::thread::Builder::new().name(format!("demo-{colour}")).spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime starts");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener registers");
            let answered = Arc::new(AtomicU64::new(0));
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (mode, answered) = (mode.clone(), answered.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let n = answered.fetch_add(1, Ordering::Relaxed);
                    let mode = mode.load(Ordering::Relaxed);
                    async move {
                        if mode == Mode::Slow as u8 {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        let body = format!(
                            "{colour} ({version}) answered {} {}\n\nThis is the {colour} variant of the demo app.\n",
                            req.method(),
                            req.uri().path()
                        );
                        let mut resp = Response::new(Full::new(Bytes::from(body)));
                        resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
                        if mode == Mode::Bad as u8 && n % 5 == 0 {
                            *resp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                        }
                        Ok::<_, Infallible>(resp)
                    }});
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    })?;
    Ok(addr)
}
