//! Prometheus-side helpers: exposition text parsed into series, `promtool`,
//! and a real Prometheus server (Debian's `prometheus` package) scraping a
//! target on loopback.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A series' labels, sorted by name.
pub type Labels = BTreeMap<String, String>;

/// Every sample named exactly `name` in Prometheus text output, with its
/// labels parsed (quoted values unescaped).
pub fn samples(text: &str, name: &str) -> Vec<(Labels, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .filter(|(n, _, _)| n == name)
        .map(|(_, labels, v)| (labels, v))
        .collect()
}

/// The `# TYPE` of a family, e.g. `Some("counter")`.
pub fn family_type(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix("# TYPE ")?;
        let (n, t) = rest.split_once(' ')?;
        (n == name).then(|| t.trim().to_owned())
    })
}

/// Labels from `&[("k", "v")]`.
pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// `name{labels} value [timestamp]` into its parts; `None` if malformed.
fn parse_line(line: &str) -> Option<(String, Labels, f64)> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut labels = Labels::new();
    let mut rest = &line[name_end..];
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        let mut end = None;
        loop {
            // Skip separators.
            while let Some((_, c)) = chars.peek() {
                if *c == ',' || *c == ' ' {
                    chars.next();
                } else {
                    break;
                }
            }
            match chars.peek() {
                Some((i, '}')) => {
                    end = Some(*i + 1);
                    break;
                }
                None => break,
                _ => {}
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return None;
            }
            let mut value = String::new();
            let mut escaped = false;
            for (_, c) in chars.by_ref() {
                match (escaped, c) {
                    (true, 'n') => {
                        value.push('\n');
                        escaped = false;
                    }
                    (true, c) => {
                        value.push(c);
                        escaped = false;
                    }
                    (false, '\\') => escaped = true,
                    (false, '"') => break,
                    (false, c) => value.push(c),
                }
            }
            labels.insert(key.trim().to_owned(), value);
        }
        rest = &after[end?..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((name, labels, value))
}

/// A tool from Debian's `prometheus` package, on `PATH` or in `/usr/bin`.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `promtool`, or a failure telling how to get it (CI installs it).
pub fn promtool() -> PathBuf {
    find_tool("promtool").unwrap_or_else(|| {
        panic!(
            "promtool not found on PATH or in /usr/bin: install Debian's `prometheus` package \
             (apt-get update && apt-get install -y prometheus), or run ./test.sh, which installs it"
        )
    })
}

/// Runs `promtool check metrics` on `text` (on its stdin): exit code and
/// everything it printed.
pub fn promtool_check_metrics(text: &str) -> (Option<i32>, String) {
    use std::io::Write;
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    let mut stdin = child.stdin.take().unwrap();
    let input = text.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = child.wait_with_output().expect("promtool runs");
    writer.join().unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), printed)
}

/// A free port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A real Prometheus server scraping one target every second; killed on drop.
pub struct PromServer {
    child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl PromServer {
    /// Starts `/usr/bin/prometheus` (or `prometheus` on PATH) scraping
    /// `http://target/metrics` every second, with a temporary data dir, on a
    /// free loopback port (one retry if that port was taken meanwhile), and
    /// waits until it is ready.
    pub async fn start(target: SocketAddr) -> PromServer {
        Self::start_many(&[target]).await
    }

    /// Like [`PromServer::start`], scraping every one of `targets` (one job,
    /// one `instance` label each).
    pub async fn start_many(targets: &[SocketAddr]) -> PromServer {
        let target = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let bin = find_tool("prometheus").unwrap_or_else(|| {
            panic!(
                "prometheus not found on PATH or in /usr/bin: install Debian's `prometheus` package \
                 (apt-get update && apt-get install -y prometheus), or run ./test.sh, which installs it"
            )
        });
        let mut last_log = String::new();
        for _attempt in 0..2 {
            let dir = tempfile::tempdir().unwrap();
            let config = dir.path().join("prometheus.yml");
            std::fs::write(
                &config,
                format!(
                    "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                     scrape_configs:\n  - job_name: cutover\n    metrics_path: /metrics\n    \
                     static_configs:\n      - targets: [{target}]\n"
                ),
            )
            .unwrap();
            let port = free_port();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
            let child = Command::new(&bin)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("prometheus starts");
            let mut server = PromServer { child, addr, dir };
            if server.wait_ready(Duration::from_secs(30)).await {
                return server;
            }
            last_log = server.log();
            // Dropping kills it; try once more on another port.
        }
        panic!("prometheus did not become ready (tried twice); its log:\n{last_log}");
    }

    /// Ready when `/-/ready` answers 200 as Prometheus and the process is
    /// still running.
    async fn wait_ready(&mut self, within: Duration) -> bool {
        let client = super::client();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            // The body tells Prometheus from anything else that might have
            // taken the port meanwhile.
            if let Ok(r) = client.get(self.url("/-/ready")).send().await
                && r.status() == 200
                && r.text().await.is_ok_and(|t| t.contains("Prometheus"))
                && matches!(self.child.try_wait(), Ok(None))
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// What Prometheus printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query: the `data.result` vector, or `None` if the API
    /// answered with an error or could not be reached.
    pub async fn query(&self, q: &str) -> Option<Vec<serde_json::Value>> {
        let resp = super::client()
            .get(self.url("/api/v1/query"))
            .query(&[("query", q)])
            .send()
            .await
            .ok()?;
        let doc: serde_json::Value = resp.json().await.ok()?;
        if doc["status"] != "success" {
            return None;
        }
        doc["data"]["result"].as_array().cloned()
    }

    /// An instant query whose result is keyed by one label: `{value: sample}`.
    pub async fn query_by(&self, q: &str, label: &str) -> Option<BTreeMap<String, f64>> {
        let result = self.query(q).await?;
        result
            .iter()
            .map(|s| {
                let key = s["metric"][label].as_str().unwrap_or("").to_owned();
                let v: f64 = s["value"][1].as_str()?.parse().ok()?;
                Some((key, v))
            })
            .collect()
    }
}

impl Drop for PromServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
