//! Watches the config file's directory (not the file: editors and Kubernetes
//! replace it rather than write it) and reloads once per burst of events.
//!
//! Covered: an in-place write; write-to-temp then rename (vim, `sed -i`); a
//! ConfigMap volume, where `..data` is a symlink swapped to a new directory;
//! delete then re-create. A reload whose content hash is unchanged is a no-op.
//! The directories of the TLS certificates are watched the same way.

use std::sync::Arc;

use anyhow::Context;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::app::{App, DEBOUNCE};

/// Starts watching; the returned watcher must be kept alive.
pub fn spawn(app: Arc<App>) -> anyhow::Result<notify::RecommendedWatcher> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.send(());
        }
    })?;
    for dir in app.watched_dirs() {
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .with_context(|| format!("cannot watch {}", dir.display()))?;
        tracing::info!(dir = %dir.display(), "watching directory");
    }
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Debounce: let the burst (truncate + write, or a symlink dance)
            // finish, then reload once.
            tokio::time::sleep(DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            let app = app.clone();
            let _ = tokio::task::spawn_blocking(move || app.reload("file change")).await;
        }
    });
    Ok(watcher)
}
