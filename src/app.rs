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
use crate::proxy::{Listeners, Shared, listener};
use crate::routing::RoutingTable;
use crate::tls::{CertStore, Resolver};
use crate::upstream::EndpointRegistry;
use crate::upstream::health::HealthCheckers;
use arc_swap::ArcSwap;
use tokio_rustls::TlsAcceptor;

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
    /// The HTTPS listener's certificates, when it runs.
    resolver: Option<Arc<Resolver>>,
    /// Certificate and key files of the last config that loaded, to watch.
    cert_files: Mutex<Vec<PathBuf>>,
}

impl App {
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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
            Err(e) => return self.fail(why, e.to_string()),
        };
        // Certificates are reloaded when their files change, even if the
        // config did not; the watcher follows them to new paths.
        *self.cert_files.lock().unwrap_or_else(|p| p.into_inner()) = cert_files(&loaded.config);
        let certs_ok = self.reload_certs(&loaded.config);
        if loaded.fingerprint == self.shared.table.load().source.fingerprint {
            if certs_ok {
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
            tracing::debug!(trigger = why, "config unchanged");
            return;
        }
        let upstream_tls = match upstream_tls(&loaded.config) {
            Ok(t) => t,
            Err(e) => return self.fail(why, format!("{e:#}")),
        };
        if certs_ok {
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        self.warn_restart_only(&loaded.config);
        self.shared.upstream_tls.store(Arc::new(upstream_tls));
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let table = RoutingTable::build(&loaded, generation, &self.registry, self.metrics());
        let weights = describe_weights(&table);
        self.health
            .sync(&table.backends, &health_specs(&loaded.config));
        self.shared.table.store(Arc::new(table));
        self.record_success(generation);
        tracing::info!(trigger = why, generation, sha256 = %loaded.sha256, weights = %weights, "config reloaded");
    }

    fn fail(&self, why: &str, message: String) {
        tracing::error!(trigger = why, error = %message, "config reload failed; keeping the last good config");
        self.metrics().reloads.with_label_values(&["failure"]).inc();
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(message);
    }

    /// Swaps in the certificates if their files changed; a bad pair is
    /// rejected and the old certificates keep serving. False on failure.
    fn reload_certs(&self, config: &Config) -> bool {
        let (Some(resolver), Some(spec)) = (&self.resolver, &config.tls) else {
            return true;
        };
        if CertStore::digest_of(spec) == resolver.store.load().digest {
            return true;
        }
        match CertStore::load(spec) {
            Ok(store) => {
                record_expiry(self.metrics(), &store);
                let names: Vec<&str> = store.certs.iter().map(|c| c.label.as_str()).collect();
                tracing::info!(certs = ?names, "certificates reloaded");
                resolver.store.store(Arc::new(store));
                true
            }
            Err(e) => {
                self.fail(
                    "certificate change",
                    format!("certificate reload failed, keeping the current ones: {e:#}"),
                );
                false
            }
        }
    }

    /// Directories to watch: the config's, and those of its certificates.
    /// A file given through a symlink is watched in both the link's and
    /// the target's directory; the target is resolved anew at each call.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.config_path.clone()];
        files.extend(
            self.cert_files
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned(),
        );
        let mut out = Vec::new();
        for f in files {
            out.extend(std::path::absolute(&f).ok());
            out.extend(std::fs::canonicalize(&f).ok());
        }
        out.sort();
        out.dedup();
        out
    }

    fn record_success(&self, generation: u64) {
        let m = self.metrics();
        m.reloads.with_label_values(&["success"]).inc();
        m.generation.set(generation as i64);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        m.last_reload_success.set(now.as_secs_f64());
    }

    fn warn_restart_only(&self, new: &Config) {
        let old = &self.started_with;
        let changed = [
            ("listen.http", old.listen_http != new.listen_http),
            ("listen.https", old.listen_https != new.listen_https),
            ("admin.listen", old.admin != new.admin),
            ("timeouts", old.timeouts != new.timeouts),
            ("limits", old.limits != new.limits),
            ("server.workers", old.workers != new.workers),
            ("metrics.buckets", old.metric_buckets != new.metric_buckets),
        ];
        for (key, _) in changed.iter().filter(|(_, c)| *c) {
            tracing::warn!(
                key,
                "this setting changes only on restart; ignored until then"
            );
        }
    }
}

/// The client TLS config of every `https://` endpoint, by authority.
fn upstream_tls(
    config: &Config,
) -> anyhow::Result<HashMap<http::uri::Authority, Arc<rustls::ClientConfig>>> {
    let mut map = HashMap::new();
    for b in &config.backends {
        let https: Vec<_> = b
            .endpoints
            .iter()
            .filter(|e| e.scheme == http::uri::Scheme::HTTPS)
            .collect();
        if https.is_empty() {
            continue;
        }
        if b.upstream_tls.insecure_skip_verify {
            tracing::warn!(backend = %b.name, "insecure_skip_verify: upstream certificates are NOT verified");
        }
        let client = crate::tls::client_config(&b.upstream_tls)
            .with_context(|| format!("backends.{}", b.name))?;
        for e in https {
            map.insert(e.authority.clone(), client.clone());
        }
    }
    Ok(map)
}

fn record_expiry(metrics: &Metrics, store: &CertStore) {
    metrics.tls_cert_expiry.reset();
    for c in &store.certs {
        let at = c.not_after.duration_since(UNIX_EPOCH).unwrap_or_default();
        metrics
            .tls_cert_expiry
            .with_label_values(&[&c.label])
            .set(at.as_secs_f64());
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
            let w: Vec<String> = r
                .backends
                .iter()
                .map(|b| format!("{}={}", b.backend.name, b.weight))
                .collect();
            format!("{}: {}", r.name, w.join(" "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The certificate and key files a config names.
fn cert_files(config: &Config) -> Vec<PathBuf> {
    let certs = config.tls.iter().flat_map(|t| t.certs.iter());
    certs
        .flat_map(|c| [c.cert.clone(), c.key.clone()])
        .collect()
}

/// Serves `path` until SIGTERM or SIGINT, then drains and returns.
pub fn run(path: &Path) -> anyhow::Result<()> {
    let loaded: Loaded = config::load(path)?;
    let config = loaded.config.clone();
    // The control plane (admin, watcher, health checks, signals) runs on
    // this thread; the data plane on the worker threads.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let metrics = Arc::new(Metrics::new(&config.metric_buckets));
    let registry = EndpointRegistry::new(metrics.ejections.clone(), config.workers);
    let table = RoutingTable::build(&loaded, 1, &registry, &metrics);
    let shared = Arc::new(Shared::new(table, metrics.clone(), &config));
    shared.upstream_tls.store(Arc::new(upstream_tls(&config)?));
    let health = HealthCheckers::new(rt.handle().clone(), shared.upstream_tls.clone());
    health.sync(&shared.table.load().backends, &health_specs(&config));
    let http = config.listen_http.context("listen.http is required")?;
    // Every listener is bound before anything is served, so an address in
    // use stops the start with nothing half running.
    let listeners = Listeners::bind(http, config.workers).context("listen.http")?;
    tracing::info!(listener = "http", addr = %listeners.addr, workers = config.workers, "listening");
    let mut resolver = None;
    let https = match config.listen_https {
        None => None,
        Some(addr) => {
            let spec = config.tls.as_ref().context("listen.https needs [tls]")?;
            let store = CertStore::load(spec)?;
            record_expiry(&metrics, &store);
            let r = Arc::new(Resolver {
                store: ArcSwap::from_pointee(store),
            });
            let acceptor = TlsAcceptor::from(crate::tls::server_config(r.clone())?);
            resolver = Some(r);
            let l = Listeners::bind(addr, config.workers).context("listen.https")?;
            tracing::info!(listener = "https", addr = %l.addr, "listening");
            Some((l, acceptor))
        }
    };
    let admin = match config.admin {
        Some(addr) => Some(listener::bind(addr).context("admin.listen")?),
        None => None,
    };
    let (stop, stopped) = watch::channel(false);
    let workers = spawn_workers(shared.clone(), listeners, https, stopped);

    let app = Arc::new(App {
        shared,
        config_path: path.to_path_buf(),
        registry,
        health,
        cert_files: Mutex::new(cert_files(&config)),
        started_with: config.clone(),
        generation: AtomicU64::new(1),
        last_error: Mutex::new(None),
        draining: AtomicBool::new(false),
        reloading: Mutex::new(()),
        resolver,
    });
    app.record_success(1);

    let result = rt.block_on(async {
        if let Some(admin) = admin {
            let listener = tokio::net::TcpListener::from_std(admin)?;
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
    });
    // Dropping the runtime would wait for the blocking join of the workers,
    // i.e. past the drain deadline.
    rt.shutdown_background();
    result?;
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
