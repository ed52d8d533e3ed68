//! What the abuse suite (`tests/abuse_h1.rs`, `tests/abuse_h2.rs`,
//! `tests/smuggling.rs`) measures while an attack runs: the proxy's resident
//! memory and open descriptors read from `/proc/PID`, and a legitimate
//! client on connections of its own that must keep getting answers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::raw::RawConn;

/// Resident set size of `pid` in KiB (`VmRSS`), 0 if it is gone.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Open file descriptors of `pid` (sockets included), 0 if it is gone.
pub fn fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// A process's resources at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub rss_kib: u64,
    pub fds: u64,
}

pub fn usage(pid: u32) -> Usage {
    Usage {
        rss_kib: rss_kib(pid),
        fds: fds(pid),
    }
}

/// Samples a process every 20 ms on a thread of its own (so a busy test
/// runtime cannot skip the peak) until [`Sampler::stop`].
pub struct Sampler {
    stop: Arc<AtomicBool>,
    peak_rss: Arc<AtomicU64>,
    peak_fds: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    pub fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let (peak_rss, peak_fds) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (s, r, f) = (stop.clone(), peak_rss.clone(), peak_fds.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let u = usage(pid);
                r.fetch_max(u.rss_kib, Ordering::Relaxed);
                f.fetch_max(u.fds, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Sampler {
            stop,
            peak_rss,
            peak_fds,
            thread: Some(thread),
        }
    }

    /// The highest RSS and descriptor count seen while sampling.
    pub fn stop(mut self) -> Usage {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        Usage {
            rss_kib: self.peak_rss.load(Ordering::Relaxed),
            fds: self.peak_fds.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Waits until the process's descriptors are back to at most
/// `baseline + slack` (listeners, pooled upstream connections and the
/// like come and go); returns the last count seen.
pub async fn fds_back_to(pid: u32, baseline: u64, slack: u64, within: Duration) -> (bool, u64) {
    let ok = super::eventually(within, || async { fds(pid) <= baseline + slack }).await;
    (ok, fds(pid))
}

/// What a [`Prober`] saw.
#[derive(Debug, Clone)]
pub struct Probed {
    pub ok: u64,
    pub failed: u64,
    /// The slowest answer (connect to last byte).
    pub slowest: Duration,
    /// Failures, described, first ones only.
    pub errors: Vec<String>,
}

/// A legitimate client: every 100 ms a fresh connection sends `GET path`
/// and expects `200`, until stopped.
pub struct Prober {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Probed>,
}

impl Prober {
    pub fn start(addr: SocketAddr, path: &'static str) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let mut seen = Probed {
                ok: 0,
                failed: 0,
                slowest: Duration::ZERO,
                errors: Vec::new(),
            };
            while !s.load(Ordering::Relaxed) {
                let started = Instant::now();
                let req = format!("GET {path} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
                let got = tokio::time::timeout(Duration::from_secs(5), async {
                    let mut c = RawConn::connect(addr).await;
                    c.send(req.as_bytes()).await?;
                    c.read_response().await
                })
                .await;
                match got {
                    Ok(Ok(r)) if r.status == 200 => seen.ok += 1,
                    other => {
                        seen.failed += 1;
                        if seen.errors.len() < 5 {
                            seen.errors.push(format!("{other:?}"));
                        }
                    }
                }
                seen.slowest = seen.slowest.max(started.elapsed());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            seen
        });
        Prober { stop, task }
    }

    pub async fn stop(self) -> Probed {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the prober does not panic")
    }
}
