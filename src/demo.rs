//! `cutover demo`: the whole thing with no files. Two built-in backends (blue
//! and green, each answering a page that names its colour and version), an
//! embedded config written to a temporary file that is watched like any
//! other, and a few lines of what to try.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;

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
weights = { blue = 90, green = 10 }
sticky = { cookie = "cutover", max_age = "1h" }
override = { header = "x-cutover-backend", cookie = "cutover_force" }
expose_backend_header = true
"#;

pub fn run(http: SocketAddr, admin: SocketAddr) -> anyhow::Result<()> {
    // Fail before starting anything when an address is taken; `app::run`
    // binds them again (and would refuse them the same way).
    for (flag, addr) in [("--http", http), ("--admin", admin)] {
        drop(crate::proxy::listener::bind(addr).context(flag)?);
    }
    let blue = start_backend("blue", "v1.0")?;
    let green = start_backend("green", "v2.0")?;
    let dir = std::env::temp_dir().join(format!("cutover-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path: PathBuf = dir.join("cutover.toml");
    let text = TEMPLATE
        .replace("{http}", &http.to_string())
        .replace("{admin}", &admin.to_string())
        .replace("{blue}", &blue.to_string())
        .replace("{green}", &green.to_string());
    std::fs::write(&path, text)?;
    let p = path.display();
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

/// Serves the demo page of one colour on an ephemeral port, on its own thread.
fn start_backend(colour: &'static str, version: &'static str) -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    std::thread::Builder::new().name(format!("demo-{colour}")).spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime starts");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener registers");
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                tokio::spawn(async move {
                    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| async move {
                        let body = format!(
                            "{colour} ({version}) answered {} {}\n\nThis is the {colour} variant of the demo app.\n",
                            req.method(),
                            req.uri().path()
                        );
                        let mut resp = Response::new(Full::new(Bytes::from(body)));
                        resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
                        Ok::<_, Infallible>(resp)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    })?;
    Ok(addr)
}
