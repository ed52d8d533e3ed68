//! `cutover run`: wires config, routing table, workers, admin listener, file
//! watcher and signals together, and owns reloads.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use std::collections::HashMap;

use crate::config::{self, Config, HealthSpec, Loaded};
use crate::metrics::Metrics;
use crate::proxy::server::spawn_workers;
use crate::proxy::{Listeners, Shared};
use crate::routing::RoutingTable;
use crate::upstream::EndpointRegistry;
use crate::upstream::health::HealthCheckers;

/// The control plane's view of the running proxy.
pub struct App {
    pub shared: Arc<Shared>,
    pub config_path: PathBuf,
    registry: EndpointRegistry,
    pub health: HealthCheckers,
    /// What was fixed at start, to report reloads that try to change it.
    started_with: Config,
    generation: AtomicU64,
    last_error: Mutex<Option<String>>,
    draining: AtomicBool,
    /// Reloads from SIGHUP and the watcher run one at a time.
    reloading: Mutex<()>,
}

impl App {
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Re-reads the config file and, if it changed and is valid, publishes a
    /// new table. An invalid file keeps the old table serving.
    pub fn reload(&self, why: &str) {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let loaded = match config::load(&self.config_path) {
            Ok(l) => l,
            Err(e) => {
                let message = e.to_string();
                tracing::error!(trigger = why, error = %message, "config reload failed; keeping the last good config");
                self.metrics().reloads.with_label_values(&["failure"]).inc();
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(message);
                return;
            }
        };
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if loaded.sha256 == self.shared.table.load().source.sha256 {
            tracing::debug!(trigger = why, "config unchanged");
            return;
        }
        self.warn_restart_only(&loaded.config);
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let table = RoutingTable::build(&loaded, generation, &self.registry, self.metrics());
        let weights = describe_weights(&table);
        self.health.sync(&table.backends, &health_specs(&loaded.config));
        self.shared.table.store(Arc::new(table));
        self.record_success(generation);
        tracing::info!(trigger = why, generation, sha256 = %loaded.sha256, weights = %weights, "config reloaded");
    }

    fn record_success(&self, generation: u64) {
        let m = self.metrics();
        m.reloads.with_label_values(&["success"]).inc();
        m.generation.set(generation as i64);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        m.last_reload_success.set(now.as_secs_f64());
    }

    fn warn_restart_only(&self, new: &Config) {
        let old = &self.started_with;
        let changed = [
            ("listen.http", old.listen_http != new.listen_http),
            ("admin.listen", old.admin != new.admin),
            ("timeouts", old.timeouts != new.timeouts),
            ("limits", old.limits != new.limits),
            ("server.workers", old.workers != new.workers),
            ("metrics.buckets", old.metric_buckets != new.metric_buckets),
        ];
        for (key, _) in changed.iter().filter(|(_, c)| *c) {
            tracing::warn!(key, "this setting changes only on restart; ignored until then");
        }
    }
}

/// The health check settings of each backend that has them.
fn health_specs(config: &Config) -> HashMap<Arc<str>, HealthSpec> {
    config
        .backends
        .iter()
        .filter_map(|b| Some((Arc::from(b.name.as_str()), b.health.clone()?)))
        .collect()
}

/// "app: blue=90 green=10; api: ..." for the reload log line.
fn describe_weights(table: &RoutingTable) -> String {
    table
        .routes
        .iter()
        .map(|r| {
            let w: Vec<String> = r.backends.iter().map(|b| format!("{}={}", b.backend.name, b.weight)).collect();
            format!("{}: {}", r.name, w.join(" "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Serves `path` until SIGTERM or SIGINT, then drains and returns.
pub fn run(path: &Path) -> anyhow::Result<()> {
    let loaded: Loaded = config::load(path)?;
    let config = loaded.config.clone();
    // The control plane (admin, watcher, health checks, signals) runs on
    // this thread; the data plane on the worker threads.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let metrics = Arc::new(Metrics::new(&config.metric_buckets));
    let registry = EndpointRegistry::new(metrics.ejections.clone());
    let table = RoutingTable::build(&loaded, 1, &registry, &metrics);
    let health = HealthCheckers::new(rt.handle().clone());
    health.sync(&table.backends, &health_specs(&config));
    let shared = Arc::new(Shared::new(table, metrics, config.timeouts.clone(), config.limits.clone()));
    let http = config.listen_http.context("listen.http is required")?;
    let listeners = Listeners::bind(http, config.workers).with_context(|| format!("cannot listen on {http}"))?;
    tracing::info!(listener = "http", addr = %listeners.addr, workers = config.workers, "listening");
    let (stop, stopped) = watch::channel(false);
    let workers = spawn_workers(shared.clone(), listeners, stopped);

    let app = Arc::new(App {
        shared,
        config_path: path.to_path_buf(),
        registry,
        health,
        started_with: config.clone(),
        generation: AtomicU64::new(1),
        last_error: Mutex::new(None),
        draining: AtomicBool::new(false),
        reloading: Mutex::new(()),
    });
    app.record_success(1);

    rt.block_on(async {
        if let Some(addr) = config.admin {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            tracing::info!(listener = "admin", addr = %listener.local_addr()?, "listening");
            tokio::spawn(crate::admin::serve(listener, app.clone()));
        }
        let _watcher = config::watch::spawn(app.clone())?;
        wait_for_stop(&app).await?;

        tracing::info!(drain = ?config.timeouts.drain, "shutting down: no new connections, draining");
        app.draining.store(true, Ordering::Relaxed);
        let _ = stop.send(true);
        let joined = tokio::task::spawn_blocking(move || {
            for w in workers {
                let _ = w.join();
            }
        });
        if tokio::time::timeout(config.timeouts.drain, joined).await.is_err() {
            tracing::warn!("drain deadline passed; closing the remaining connections");
        }
        anyhow::Ok(())
    })?;
    tracing::info!("stopped");
    Ok(())
}

/// Reloads on SIGHUP; returns on SIGTERM or SIGINT.
async fn wait_for_stop(app: &App) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => app.reload("SIGHUP"),
        }
    }
}

/// How long the watcher waits for a burst of file events to settle.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
