//! Watches the config file's directory (not the file: editors and Kubernetes
//! replace it rather than write it) and reloads once per burst of events.
//!
//! Covered: an in-place write; write-to-temp then rename (vim, `sed -i`); a
//! ConfigMap volume, where `..data` is a symlink swapped to a new directory;
//! delete then re-create. A reload whose content hash is unchanged is a no-op.
//! The directories of the TLS certificates are watched the same way.
//!
//! Why it is shaped like this: notify's `watch()` hands the request to the
//! thread that also delivers events and waits for its answer. So the event
//! callback takes no lock at all (it only forwards events over a bounded
//! channel), the filtering by file name happens on the receiving task, and
//! `watch`/`unwatch` run on a blocking thread with a deadline, the watcher
//! moved there and back rather than shared behind a lock: a stuck notify
//! stalls reloads at worst, never the admin listener or signal handling.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// What the watcher drives: the running proxy, seen from below.
pub trait Reloader: Send + Sync + 'static {
    /// Re-reads the config; blocking (runs on a blocking thread).
    fn reload(&self, why: &str);
    /// The files whose changes matter, as given and as resolved (a symlink
    /// and its target); resolved anew at each call.
    fn watched_files(&self) -> Vec<PathBuf>;
    /// Called once the watch is in place: reloads if the config changed
    /// between its load and now (an edit no event reports, e.g. one made
    /// while a new process started); blocking.
    fn catch_up(&self);
}

/// How long the watcher waits for a burst of file events to settle.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// How long one sync of the watch set (`watch`/`unwatch` calls) may take
/// before the watcher gives up waiting for it and keeps serving events.
pub const SYNC_DEADLINE: Duration = Duration::from_secs(5);

/// Events queued between the notify thread and the watcher task. When it is
/// full, events are dropped and one reload is done for all of them.
const QUEUE: usize = 1024;

type Updated = (notify::RecommendedWatcher, HashSet<PathBuf>);

/// Keeps the watch alive; dropping it stops watching.
pub struct Watching {
    task: JoinHandle<()>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Watches the files `target` names, and reloads it when they change. The
/// first sync of the watch set is done (or has timed out) on return.
pub async fn spawn(target: Arc<dyn Reloader>) -> anyhow::Result<Watching> {
    let (tx, mut rx) = mpsc::channel::<notify::Event>(QUEUE);
    let overflowed = Arc::new(AtomicBool::new(false));
    let overflow = overflowed.clone();
    // Runs on notify's thread: no lock, no blocking, only a hand-off.
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(event) {
            overflow.store(true, Ordering::Relaxed);
        }
    })?;
    let mut set = WatchSet {
        watcher: Some(watcher),
        names: HashSet::new(),
        dirs: HashSet::new(),
        stuck: None,
    };
    set.sync(&target).await;
    let catching_up = target.clone();
    let _ = tokio::task::spawn_blocking(move || catching_up.catch_up()).await;
    let task = tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            let lost = overflowed.swap(false, Ordering::Relaxed);
            if !lost && !set.relevant(&event) {
                continue;
            }
            // Debounce: let the burst (truncate + write, or a symlink dance)
            // finish, then reload once.
            tokio::time::sleep(DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            overflowed.store(false, Ordering::Relaxed);
            let reloading = target.clone();
            let _ = tokio::task::spawn_blocking(move || reloading.reload("file change")).await;
            // A symlink may now point into another directory.
            set.sync(&target).await;
        }
    });
    Ok(Watching { task })
}

/// The directories watched and the file names whose events count.
struct WatchSet {
    /// `None` while a sync that passed its deadline still holds it.
    watcher: Option<notify::RecommendedWatcher>,
    /// Only events about the files themselves (or Kubernetes' `..data`
    /// swap) count: a log file written next to the config must not reload.
    names: HashSet<OsString>,
    dirs: HashSet<PathBuf>,
    /// A sync that passed its deadline; no other starts until it returns.
    stuck: Option<JoinHandle<Updated>>,
}

impl WatchSet {
    fn relevant(&self, event: &notify::Event) -> bool {
        event.paths.iter().any(|p| {
            p.file_name()
                .is_some_and(|n| self.names.contains(n) || n.as_encoded_bytes().starts_with(b".."))
        })
    }

    /// Watches the directory of every file (link and target) and stops
    /// watching directories no longer needed, off the control runtime.
    async fn sync(&mut self, target: &Arc<dyn Reloader>) {
        if let Some(stuck) = self.stuck.take() {
            if !stuck.is_finished() {
                tracing::warn!("a previous watch update is still stuck; skipping this one");
                self.stuck = Some(stuck);
                return;
            }
            if let Ok((watcher, dirs)) = stuck.await {
                self.watcher = Some(watcher);
                self.dirs = dirs;
            }
        }
        let Some(mut watcher) = self.watcher.take() else {
            // Lost to a panic in notify: nothing left to update.
            return;
        };
        let target = target.clone();
        let had = self.dirs.clone();
        let files = tokio::task::spawn_blocking(move || target.watched_files()).await;
        let files = files.unwrap_or_default();
        self.names = files
            .iter()
            .filter_map(|f| f.file_name().map(OsString::from))
            .collect();
        let want: HashSet<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(PathBuf::from))
            .collect();
        let mut job = tokio::task::spawn_blocking(move || {
            let dirs = update(&mut watcher, had, &want);
            (watcher, dirs)
        });
        match tokio::time::timeout(SYNC_DEADLINE, &mut job).await {
            Ok(Ok((watcher, dirs))) => {
                self.watcher = Some(watcher);
                self.dirs = dirs;
            }
            Ok(Err(e)) => tracing::error!(error = %e, "updating the watched directories failed"),
            Err(_) => {
                tracing::warn!(deadline = ?SYNC_DEADLINE, "updating the watched directories is taking too long; reloads may be missed");
                self.stuck = Some(job);
            }
        }
    }
}

/// Blocking: adds watches for `want` not in `had`, removes those of `had`
/// not in `want`; returns the directories now watched.
fn update(
    watcher: &mut notify::RecommendedWatcher,
    had: HashSet<PathBuf>,
    want: &HashSet<PathBuf>,
) -> HashSet<PathBuf> {
    let mut now = HashSet::new();
    for dir in had {
        if want.contains(&dir) {
            now.insert(dir);
        } else if let Err(e) = watcher.unwatch(&dir) {
            // A deleted directory (an old ConfigMap generation) is already
            // unwatched by the kernel.
            tracing::debug!(dir = %dir.display(), error = %e, "unwatch");
        } else {
            tracing::info!(dir = %dir.display(), "no longer watching directory");
        }
    }
    for dir in want {
        if now.contains(dir) {
            continue;
        }
        match watcher.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                tracing::info!(dir = %dir.display(), "watching directory");
                now.insert(dir.clone());
            }
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory"),
        }
    }
    now
}
