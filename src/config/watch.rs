//! Watches the config file's directory (not the file: editors and Kubernetes
//! replace it rather than write it) and reloads once per burst of events.
//!
//! Covered: an in-place write; write-to-temp then rename (vim, `sed -i`); a
//! ConfigMap volume, where `..data` is a symlink swapped to a new directory;
//! delete then re-create. A reload whose content hash is unchanged is a no-op.
//! The directories of the TLS certificates are watched the same way.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::app::{App, DEBOUNCE};

/// Starts watching; the returned watcher must be kept alive.
pub fn spawn(app: Arc<App>) -> anyhow::Result<Arc<Mutex<notify::RecommendedWatcher>>> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Only events about the files themselves (or Kubernetes' `..data`
    // swap) count: a log file written next to the config must not reload.
    let names: Arc<Mutex<HashSet<OsString>>> = Arc::default();
    let wanted = names.clone();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let names = wanted.lock().unwrap_or_else(|p| p.into_inner());
        let relevant = !event.kind.is_access()
            && event.paths.iter().any(|p| {
                p.file_name()
                    .is_some_and(|n| names.contains(n) || n.to_string_lossy().starts_with(".."))
            });
        if relevant {
            let _ = tx.send(());
        }
    })?;
    let watcher = Arc::new(Mutex::new(watcher));
    let mut watched = HashSet::new();
    sync(&app, &watcher, &names, &mut watched);
    let handle = watcher.clone();
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Debounce: let the burst (truncate + write, or a symlink dance)
            // finish, then reload once.
            tokio::time::sleep(DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            let reloading = app.clone();
            let _ = tokio::task::spawn_blocking(move || reloading.reload("file change")).await;
            // A symlink may now point into another directory.
            sync(&app, &handle, &names, &mut watched);
        }
    });
    Ok(watcher)
}

/// Watches the directory of every file (link and target), and records the
/// names whose events count.
fn sync(
    app: &App,
    watcher: &Mutex<notify::RecommendedWatcher>,
    names: &Mutex<HashSet<OsString>>,
    watched: &mut HashSet<PathBuf>,
) {
    let files = app.watched_files();
    let mut watcher = watcher.lock().unwrap_or_else(|p| p.into_inner());
    let mut names = names.lock().unwrap_or_else(|p| p.into_inner());
    for file in files {
        names.extend(file.file_name().map(OsString::from));
        let Some(dir) = file.parent().map(PathBuf::from) else {
            continue;
        };
        if watched.contains(&dir) {
            continue;
        }
        match watcher.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                tracing::info!(dir = %dir.display(), "watching directory");
                watched.insert(dir);
            }
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory"),
        }
    }
}
