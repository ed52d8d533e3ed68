//! The access log's writer: one std thread that owns the file, so a slow
//! or stalled disk (or a FIFO nobody reads) blocks only this thread, never
//! a worker. It reopens the file on `SIGUSR1` and when the path no longer
//! names the open file (logrotate's rename), checked every second.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use prometheus::IntCounter;

use crate::config::LogTarget;

/// Lines formatted by one worker, written with one `write_all`.
pub struct Batch {
    pub buf: Vec<u8>,
    pub lines: u64,
}

/// How often the path is checked for a rename, and the longest a
/// `SIGUSR1` waits to be acted on.
const CHECK_EVERY: Duration = Duration::from_secs(1);

pub struct Writer {
    pub target: LogTarget,
    pub rx: Receiver<Batch>,
    pub reopen: Arc<AtomicBool>,
    pub stop: Arc<AtomicBool>,
    pub dropped: IntCounter,
    /// Told the result of the first open, and when the writer stopped.
    pub report: Sender<std::io::Result<()>>,
}

enum Out {
    Stdout,
    Stderr,
    File {
        path: PathBuf,
        /// `None` after an open failed; retried every check.
        file: Option<(File, (u64, u64))>,
    },
}

impl Writer {
    pub fn run(self) {
        let mut out = match &self.target {
            LogTarget::Stdout => Out::Stdout,
            LogTarget::Stderr => Out::Stderr,
            LogTarget::File(path) => {
                // A FIFO blocks here until a reader opens it: the caller
                // waits for this report only briefly.
                let opened = open(path);
                let file = match opened {
                    Ok(f) => {
                        let _ = self.report.send(Ok(()));
                        Some(f)
                    }
                    Err(e) => {
                        let _ = self.report.send(Err(e));
                        return;
                    }
                };
                Out::File {
                    path: path.clone(),
                    file,
                }
            }
        };
        if !matches!(out, Out::File { .. }) {
            let _ = self.report.send(Ok(()));
        }
        let mut checked = Instant::now();
        loop {
            match self.rx.recv_timeout(CHECK_EVERY) {
                Ok(batch) => self.write(&mut out, batch),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if self.stop.load(Ordering::Relaxed) {
                while let Ok(batch) = self.rx.try_recv() {
                    self.write(&mut out, batch);
                }
                break;
            }
            let signalled = self.reopen.swap(false, Ordering::Relaxed);
            if signalled || checked.elapsed() >= CHECK_EVERY {
                checked = Instant::now();
                out.reopen_if_needed(signalled);
            }
        }
        if let Out::File {
            file: Some((f, _)), ..
        } = &mut out
        {
            let _ = f.flush();
        }
        let _ = self.report.send(Ok(()));
    }

    fn write(&self, out: &mut Out, batch: Batch) {
        let written = match out {
            Out::Stdout => std::io::stdout().lock().write_all(&batch.buf),
            Out::Stderr => std::io::stderr().lock().write_all(&batch.buf),
            Out::File { file: Some(f), .. } => f.0.write_all(&batch.buf),
            Out::File { file: None, .. } => Err(std::io::ErrorKind::NotFound.into()),
        };
        if let Err(e) = written {
            self.dropped.inc_by(batch.lines);
            static GATE: crate::upstream::endpoint::LogGate =
                crate::upstream::endpoint::LogGate::new();
            if let Some(suppressed) = GATE.allow() {
                tracing::warn!(error = %e, suppressed, "cannot write the access log; lines dropped");
            }
        }
    }
}

impl Out {
    /// Reopens the file when told to, or when its path now names another
    /// file or none (renamed away).
    fn reopen_if_needed(&mut self, signalled: bool) {
        let Out::File { path, file } = self else {
            return;
        };
        let current = std::fs::metadata(&*path).ok().map(|m| (m.dev(), m.ino()));
        let moved = match (&file, current) {
            (Some((_, id)), Some(now)) => *id != now,
            _ => true,
        };
        if !(signalled || moved) {
            return;
        }
        match open(path) {
            Ok(f) => {
                tracing::info!(path = %path.display(), signalled, "access log reopened");
                *file = Some(f);
            }
            Err(e) => {
                if file.is_some() {
                    tracing::warn!(path = %path.display(), error = %e, "cannot reopen the access log");
                }
                *file = None;
            }
        }
    }
}

fn open(path: &PathBuf) -> std::io::Result<(File, (u64, u64))> {
    let f = OpenOptions::new().create(true).append(true).open(path)?;
    let m = f.metadata()?;
    Ok((f, (m.dev(), m.ino())))
}
