//! The real `cutover` binary, started on a config in a temporary directory.
//! Logs are read as JSON from stderr: the `listening` lines give the ports.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Proxy {
    pub child: Child,
    pub http: SocketAddr,
    pub admin: Option<SocketAddr>,
    /// The HTTPS listener, when the config has `https = ...` under `[listen]`.
    pub https: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    logs: Arc<Mutex<Vec<serde_json::Value>>>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_cutover")
}

impl Proxy {
    /// Writes `config` to `<tmp>/cutover.toml` and starts `cutover run` on it.
    pub async fn start(config: &str) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cutover.toml");
        std::fs::write(&path, config).unwrap();
        Self::start_at(dir, path, &[]).await
    }

    /// Starts on an existing file in `dir`, with extra environment variables.
    pub async fn start_at(
        dir: tempfile::TempDir,
        config_path: PathBuf,
        env: &[(&str, &str)],
    ) -> Proxy {
        let mut cmd = Command::new(bin());
        cmd.args(["--log-format", "json", "run", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("cutover starts");
        let stderr = child.stderr.take().unwrap();
        let logs: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let logs2 = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let v = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({ "raw": line }));
                logs2.lock().unwrap().push(v);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let (mut http, mut admin, mut https) = (None, None, None);
        let text = std::fs::read_to_string(&config_path).unwrap_or_default();
        let wants_admin = text.contains("[admin]");
        let wants_https = text.lines().any(|l| {
            l.trim_start()
                .strip_prefix("https")
                .is_some_and(|r| r.trim_start().starts_with('='))
        });
        while http.is_none() || (wants_admin && admin.is_none()) || (wants_https && https.is_none())
        {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("cutover exited with {status}: {:?}", logs.lock().unwrap());
            }
            assert!(
                Instant::now() < deadline,
                "cutover did not report its listeners: {:?}",
                logs.lock().unwrap()
            );
            for l in logs.lock().unwrap().iter() {
                if l["message"] == "listening" {
                    let addr: Option<SocketAddr> = l["addr"].as_str().and_then(|a| a.parse().ok());
                    match l["listener"].as_str() {
                        Some("http") => http = addr,
                        Some("admin") => admin = addr,
                        Some("https") => https = addr,
                        _ => {}
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Proxy {
            child,
            http: http.unwrap(),
            admin,
            https,
            dir,
            config_path,
            logs,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// `https://NAME:PORT/path` for the HTTPS listener (resolve NAME to 127.0.0.1).
    pub fn https_url(&self, name: &str, path: &str) -> String {
        format!(
            "https://{}:{}{}",
            name,
            self.https.expect("config has listen.https").port(),
            path
        )
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin.expect("config has [admin]"), path)
    }

    /// The JSON log lines printed so far.
    pub fn logs(&self) -> Vec<serde_json::Value> {
        self.logs.lock().unwrap().clone()
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(self.admin_url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn state(&self) -> serde_json::Value {
        reqwest::get(self.admin_url("/admin/state"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Replaces the config file atomically (write to temp, rename over).
    pub fn write_config(&self, text: &str) {
        write_atomically(&self.config_path, text);
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Waits for the process to exit, up to `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    }

    /// CPU time (user + system) the proxy process has used, in clock ticks
    /// of /proc (`USER_HZ`, 100 per second on Linux).
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("the proxy's /proc stat");
        // Fields after the `(comm)`, which may hold spaces: state is the
        // 3rd field of the line, utime and stime the 14th and 15th.
        let (_, rest) = stat.rsplit_once(')').expect("(comm) in /proc stat");
        let f: Vec<u64> = rest
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|v| v.parse().expect("utime and stime are numbers"))
            .collect();
        assert_eq!(f.len(), 2, "utime and stime in {stat}");
        f.iter().sum()
    }
}

pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a `cutover` process that ran to its end printed.
pub struct Exited {
    /// `None`: still running after `within`, so it was killed.
    pub status: Option<std::process::ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cutover ARGS` and waits up to `within` for it to exit (else kills
/// it). Blocking: call it from `spawn_blocking` in async tests.
pub fn run_to_exit(args: &[&str], within: Duration) -> Exited {
    use std::io::Read;
    let mut child = Command::new(bin())
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cutover starts");
    let read_all = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().unwrap()));
    let stderr = read_all(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + within;
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    Exited {
        status,
        stdout,
        stderr,
    }
}
