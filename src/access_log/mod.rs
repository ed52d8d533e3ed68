//! The access log (`[access_log]`): one line per request, JSON or text
//! (`line`), off the request path. A request's line is formatted into a
//! buffer of its own (reused, per worker thread), appended to its worker's
//! batch when the response ends, and the batch is handed to the writer
//! thread (`writer`) over a bounded channel every [`FLUSH_EVERY`] or
//! [`BATCH_BYTES`]. A full channel drops the batch and counts its lines in
//! `cutover_access_log_dropped_total`: a slow disk never slows requests.

pub mod line;
mod writer;

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::time::{Duration, Instant, SystemTime};

use prometheus::IntCounter;

use crate::config::{AccessLogFormat, AccessLogSpec, LogTarget};
pub use line::{Answer, Request};
use writer::{Batch, Writer};

/// A worker hands its batch over at least this often...
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// ...or once it holds this much.
pub const BATCH_BYTES: usize = 32 * 1024;
/// Batches waiting for the writer, at most (with [`BATCH_BYTES`]: a bound
/// of about 8 MiB of lines in memory).
const QUEUED_BATCHES: usize = 256;
/// Line buffers kept for reuse per worker thread.
const POOLED: usize = 64;

/// The running access log, shared by the workers.
pub struct AccessLog {
    format: AccessLogFormat,
    /// `sample` scaled to `u32`; a successful request is logged when a
    /// random `u32` is below it (`u64` so that 1.0 means always).
    sample: u64,
    log_query: bool,
    tx: SyncSender<Batch>,
    dropped: IntCounter,
    reopen: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    stopped: std::sync::Mutex<mpsc::Receiver<std::io::Result<()>>>,
}

impl AccessLog {
    /// Starts the writer thread. A file that cannot be opened is an error;
    /// one whose open blocks (a FIFO without a reader) is not: lines are
    /// dropped and counted until it opens.
    pub fn start(spec: &AccessLogSpec, dropped: IntCounter) -> std::io::Result<AccessLog> {
        let (tx, rx) = mpsc::sync_channel(QUEUED_BATCHES);
        let (report, reported) = mpsc::channel();
        let reopen = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let w = Writer {
            target: spec.target.clone(),
            rx,
            reopen: reopen.clone(),
            stop: stop.clone(),
            dropped: dropped.clone(),
            report,
        };
        std::thread::Builder::new()
            .name("cutover-access-log".into())
            .spawn(move || w.run())?;
        if let Ok(Err(e)) = reported.recv_timeout(Duration::from_secs(1)) {
            return Err(e);
        }
        if let LogTarget::File(path) = &spec.target {
            tracing::info!(path = %path.display(), "access log");
        }
        Ok(AccessLog {
            format: spec.format,
            sample: (spec.sample * 4_294_967_296.0) as u64,
            log_query: spec.log_query,
            tx,
            dropped,
            reopen,
            stop,
            stopped: std::sync::Mutex::new(reported),
        })
    }

    /// Asks the writer to reopen its file (`SIGUSR1`).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }

    /// Writes what the writer holds and stops it, waiting at most `within`.
    /// Call once the workers have ended (their batches are handed over as
    /// their threads exit).
    pub fn finish(&self, within: Duration) {
        self.stop.store(true, Ordering::Relaxed);
        if let Ok(rx) = self.stopped.lock() {
            let _ = rx.recv_timeout(within);
        }
    }

    /// Starts the line of a request: its own part is written now, while
    /// the request is still borrowed.
    pub fn entry(&self, r: &Request, started: Instant) -> Entry {
        let mut buf = LOCAL
            .with(|l| {
                l.borrow_mut()
                    .get_or_insert_with(|| Local::new(self))
                    .pool
                    .pop()
            })
            .unwrap_or_else(|| Vec::with_capacity(512));
        line::request(&mut buf, self.format, SystemTime::now(), r);
        Entry {
            buf,
            format: self.format,
            started,
            sample: self.sample,
            bytes_in: BytesIn::Known(0),
            bytes_out: 0,
            error: None,
            ended: None,
            answered: false,
        }
    }

    pub fn log_query(&self) -> bool {
        self.log_query
    }
}

/// Request body bytes: none, or counted as the body is read.
#[derive(Debug)]
pub enum BytesIn {
    Known(u64),
    Counted(Arc<AtomicU64>),
}

/// One request's line, written out when dropped: at the end of the
/// response body, or of the tunnel after an upgrade.
#[derive(Debug)]
pub struct Entry {
    buf: Vec<u8>,
    format: AccessLogFormat,
    started: Instant,
    sample: u64,
    bytes_in: BytesIn,
    bytes_out: u64,
    error: Option<&'static str>,
    ended: Option<Instant>,
    answered: bool,
}

impl Entry {
    /// A counter for the request body's bytes, for a request that has one.
    pub fn count_in(&mut self) -> Arc<AtomicU64> {
        let c = Arc::new(AtomicU64::new(0));
        self.bytes_in = BytesIn::Counted(c.clone());
        c
    }

    /// Adds what the proxy did; `None` when a successful request is
    /// sampled out (`sample`). Errors (status >= 400 or a local answer)
    /// are always logged.
    pub fn answer(mut self, a: &Answer, error: Option<&'static str>) -> Option<Entry> {
        let success = a.status < 400 && error.is_none();
        if success
            && self.sample <= u64::from(u32::MAX)
            && u64::from(fastrand::u32(..)) >= self.sample
        {
            self.answered = false;
            return None;
        }
        line::answer(&mut self.buf, self.format, a);
        self.error = error;
        self.answered = true;
        Some(self)
    }

    /// Response body bytes sent.
    pub fn sent(&mut self, n: usize) {
        self.bytes_out += n as u64;
    }

    /// Bytes both ways of an upgraded connection, after the request.
    pub fn tunnelled(&mut self, up: u64, down: u64) {
        self.bytes_in = BytesIn::Known(self.bytes_in() + up);
        self.bytes_out += down;
    }

    /// The response has been sent in full.
    pub fn ended(&mut self) {
        self.ended.get_or_insert_with(Instant::now);
    }

    /// The exchange failed after its head: `why` unless an error is
    /// already set.
    pub fn failed(&mut self, why: &'static str) {
        self.error.get_or_insert(why);
        self.ended();
    }

    /// Whether the response ended (else it was cut short).
    pub fn is_ended(&self) -> bool {
        self.ended.is_some()
    }

    fn bytes_in(&self) -> u64 {
        match &self.bytes_in {
            BytesIn::Known(n) => *n,
            BytesIn::Counted(c) => c.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        if self.answered {
            if self.ended.is_none() {
                self.error.get_or_insert("client_closed");
            }
            let at = self.ended.unwrap_or_else(Instant::now);
            let end = line::End {
                error: self.error,
                bytes_in: self.bytes_in(),
                bytes_out: self.bytes_out,
                duration: at.saturating_duration_since(self.started),
            };
            line::end(&mut buf, self.format, &end);
        }
        let answered = self.answered;
        let _ = LOCAL.try_with(|l| {
            if let Some(l) = l.borrow_mut().as_mut() {
                if answered {
                    l.push(&buf);
                }
                buf.clear();
                if l.pool.len() < POOLED && buf.capacity() <= 4096 {
                    l.pool.push(buf);
                }
            }
        });
    }
}

thread_local! {
    static LOCAL: RefCell<Option<Local>> = const { RefCell::new(None) };
}

/// A worker thread's batch and line buffers.
struct Local {
    batch: Batch,
    pool: Vec<Vec<u8>>,
    tx: SyncSender<Batch>,
    dropped: IntCounter,
}

impl Local {
    fn new(log: &AccessLog) -> Local {
        // The idle tail of a batch goes out on a timer of this worker's
        // runtime (every worker runs one).
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async {
                let mut every = tokio::time::interval(FLUSH_EVERY);
                loop {
                    every.tick().await;
                    LOCAL.with(|l| {
                        if let Some(l) = l.borrow_mut().as_mut() {
                            l.flush();
                        }
                    });
                }
            });
        }
        Local {
            batch: Batch {
                buf: Vec::new(),
                lines: 0,
            },
            pool: Vec::new(),
            tx: log.tx.clone(),
            dropped: log.dropped.clone(),
        }
    }

    fn push(&mut self, line: &[u8]) {
        if self.batch.buf.capacity() == 0 {
            self.batch.buf.reserve(BATCH_BYTES + 4096);
        }
        self.batch.buf.extend_from_slice(line);
        self.batch.lines += 1;
        if self.batch.buf.len() >= BATCH_BYTES {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.batch.lines == 0 {
            return;
        }
        let next = Batch {
            buf: Vec::new(),
            lines: 0,
        };
        let batch = std::mem::replace(&mut self.batch, next);
        match self.tx.try_send(batch) {
            Ok(()) => {}
            Err(TrySendError::Full(mut b) | TrySendError::Disconnected(mut b)) => {
                self.dropped.inc_by(b.lines);
                // Keep the buffer: the next batch reuses it.
                b.buf.clear();
                b.lines = 0;
                self.batch = b;
            }
        }
    }
}

impl Drop for Local {
    /// A worker thread that ends hands over what it still holds.
    fn drop(&mut self) {
        self.flush();
    }
}
