//! Listen addresses are never shared (issue 21): a second `cutover run` or
//! `cutover demo` on an address that anything already serves exits non-zero
//! at start, naming the address and the process holding it, while the first
//! keeps serving every request; once the first is gone the address is free.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::proxy::{Exited, run_to_exit};
use common::{Backend, Proxy};

/// How long a second process may take to give up; it exits at once, so this
/// only bounds a loaded machine (and how long a broken build runs).
const EXIT_WITHIN: Duration = Duration::from_secs(15);

/// Two workers, one route to `backend`, and the given listen addresses.
fn config(http: &str, admin: &str, extra: &str, backend: &Backend) -> String {
    format!(
        "[server]\nworkers = 2\n\n[listen]\nhttp = \"{http}\"\n{extra}\n[admin]\nlisten = \"{admin}\"\n\n\
         [backends.b]\nendpoints = [\"{}\"]\n\n[[routes]]\nname = \"app\"\nweights = {{ b = 100 }}\n",
        backend.addr
    )
}

/// Writes `text` to a config file in a new temporary directory.
fn config_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// `cutover run --config PATH` to its exit, off the async runtime.
async fn run(path: &std::path::Path) -> Exited {
    let path = path.to_str().unwrap().to_owned();
    tokio::task::spawn_blocking(move || run_to_exit(&["run", "--config", &path], EXIT_WITHIN))
        .await
        .unwrap()
}

/// Asserts that the process failed at start and said why: `key`, `addr` and,
/// when known, the holder's pid.
fn assert_refused(out: &Exited, key: &str, addr: SocketAddr, pid: Option<u32>) {
    let status = out.status.expect("a second instance must exit, not serve");
    assert!(!status.success(), "exit status {status}: {}", out.stderr);
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in {}", out.stderr));
    for want in [key, &addr.to_string(), "already served by"] {
        assert!(line.contains(want), "{want:?} not in {line:?}");
    }
    if let Some(pid) = pid {
        assert!(
            line.contains(&format!("pid {pid} ")),
            "pid {pid} not in {line:?}"
        );
    }
}

/// Requests on a new connection each, in a loop, counting answers by body.
struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Load {
    /// Starts sending; every result that is not `200` with body `want` is
    /// recorded as a failure.
    fn start(url: String, want: &'static str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let (stop2, answered2) = (stop.clone(), Arc::clone(&answered));
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let task = tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                let got = match client.get(&url).send().await {
                    Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                    Err(e) => (0, e.to_string()),
                };
                if got != (200, want.to_owned()) {
                    failures.push(format!("{got:?}"));
                }
                answered2.fetch_add(1, Ordering::Relaxed);
            }
            failures
        });
        Load {
            stop,
            answered,
            task,
        }
    }

    fn answered(&self) -> usize {
        self.answered.load(Ordering::Relaxed)
    }

    /// Waits until `n` more requests were answered.
    async fn more(&self, n: usize) {
        let target = self.answered() + n;
        let done = common::eventually(Duration::from_secs(20), || async {
            self.answered() >= target
        })
        .await;
        assert!(done, "load stalled at {} answers", self.answered());
    }

    /// Stops and returns (answered, failures).
    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let answered = self.answered.clone();
        let failures = self.task.await.unwrap();
        (answered.load(Ordering::Relaxed), failures)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_on_the_http_address_fails_and_the_first_serves_every_request() {
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let first = Proxy::start(&config("127.0.0.1:0", "127.0.0.1:0", "", &blue)).await;
    // The second would send everything to green: any green answer is a
    // request it stole.
    let (_dir, second) = config_file(&config(&first.http.to_string(), "127.0.0.1:0", "", &green));
    let load = Load::start(first.url("/"), "blue");
    load.more(20).await;
    let before = load.answered();
    let out = run(&second).await;
    let during = load.answered() - before;
    load.more(20).await;
    let (answered, failures) = load.finish().await;
    println!("answered {answered}: {before} before the second start, {during} while it ran");
    assert_refused(&out, "listen.http", first.http, Some(first.child.id()));
    assert!(
        failures.is_empty(),
        "not answered by the first: {failures:?}"
    );
    assert!(green.seen().is_empty(), "green saw {:?}", green.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_on_the_admin_address_fails_before_serving() {
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let first = Proxy::start(&config("127.0.0.1:0", "127.0.0.1:0", "", &blue)).await;
    let admin = first.admin.unwrap();
    let (_dir, second) = config_file(&config("127.0.0.1:0", &admin.to_string(), "", &green));
    let out = run(&second).await;
    assert_refused(&out, "admin.listen", admin, Some(first.child.id()));
    let health = common::client().get(first.admin_url("/healthz")).send();
    assert_eq!(health.await.unwrap().status(), 200);
    let body = common::client().get(first.url("/")).send().await.unwrap();
    assert_eq!(body.text().await.unwrap(), "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_on_the_https_address_fails() {
    let blue = Backend::start("blue").await;
    let certs = tempfile::tempdir().unwrap();
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key_file) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    std::fs::write(&cert, key.cert.pem()).unwrap();
    std::fs::write(&key_file, key.signing_key.serialize_pem()).unwrap();
    let tls = |https: &str| {
        format!(
            "https = \"{https}\"\n\n[tls]\ncerts = [{{ cert = \"{}\", key = \"{}\" }}]\n",
            cert.display(),
            key_file.display()
        )
    };
    let first = Proxy::start(&config(
        "127.0.0.1:0",
        "127.0.0.1:0",
        &tls("127.0.0.1:0"),
        &blue,
    ))
    .await;
    let https = first.https.unwrap();
    let text = config(
        "127.0.0.1:0",
        "127.0.0.1:0",
        &tls(&https.to_string()),
        &blue,
    );
    let (_dir, second) = config_file(&text);
    let out = run(&second).await;
    assert_refused(&out, "listen.https", https, Some(first.child.id()));
    tokio::net::TcpStream::connect(https)
        .await
        .expect("the first still listens");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_first_exits_a_new_run_takes_the_address() {
    let blue = Backend::start("blue").await;
    let mut first = Proxy::start(&config("127.0.0.1:0", "127.0.0.1:0", "", &blue)).await;
    let addr = first.http;
    let client = common::client();
    assert_eq!(
        client.get(first.url("/")).send().await.unwrap().status(),
        200
    );
    first.terminate();
    assert!(
        first
            .wait_exit(Duration::from_secs(20))
            .is_some_and(|s| s.success())
    );
    // The server closed that keep-alive connection: its side is in TIME_WAIT.
    let next = Proxy::start(&config(&addr.to_string(), "127.0.0.1:0", "", &blue)).await;
    assert_eq!(next.http, addr);
    let body = client.get(next.url("/")).send().await.unwrap();
    assert_eq!(body.text().await.unwrap(), "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_held_by_a_plain_socket_is_refused_and_the_holder_named() {
    let blue = Backend::start("blue").await;
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap();
    let (_dir, path) = config_file(&config(&addr.to_string(), "127.0.0.1:0", "", &blue));
    let out = run(&path).await;
    assert_refused(&out, "listen.http", addr, Some(std::process::id()));
}

/// What an older Cutover (or nginx with `reuseport`) holds: a socket in a
/// `SO_REUSEPORT` group, which any process of the same user could join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_held_by_a_reuseport_socket_is_refused() {
    use socket2::{Domain, Socket, Type};
    let blue = Backend::start("blue").await;
    let held = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    held.set_reuse_address(true).unwrap();
    held.set_reuse_port(true).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    held.bind(&any.into()).unwrap();
    held.listen(16).unwrap();
    let addr = held.local_addr().unwrap().as_socket().unwrap();
    let (_dir, path) = config_file(&config(&addr.to_string(), "127.0.0.1:0", "", &blue));
    let out = run(&path).await;
    assert_refused(&out, "listen.http", addr, Some(std::process::id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_refuses_a_taken_address_before_starting_anything() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    for args in [
        ["demo", "--http", &addr, "--admin", "127.0.0.1:0"],
        ["demo", "--http", "127.0.0.1:0", "--admin", &addr],
    ] {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let argv = args.clone();
        let out = tokio::task::spawn_blocking(move || {
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            run_to_exit(&argv, EXIT_WITHIN)
        })
        .await
        .unwrap();
        let flag = if args[2] == addr { "--http" } else { "--admin" };
        assert_refused(&out, flag, addr.parse().unwrap(), Some(std::process::id()));
        assert!(
            out.stdout.is_empty(),
            "printed before failing: {}",
            out.stdout
        );
    }
}
