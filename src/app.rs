//! `cutover run`: wires config, routing table, workers, admin listener, file
//! watcher and signals together, and owns reloads.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use std::collections::HashMap;

use crate::config::{self, Config, HealthSpec, Loaded};
use crate::metrics::Metrics;
use crate::proxy::Shared;
use crate::proxy::server::spawn_workers;
use crate::rollout::Rollouts;
use crate::rollout::machine::Command;
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
    /// Set at an upgrade's handover: the new process runs the control
    /// plane; a reload or rollout tick already under way here does nothing.
    control_stopped: AtomicBool,
    /// Reloads from SIGHUP and the watcher run one at a time.
    reloading: Mutex<()>,
    /// The HTTPS listener's certificates, when it runs.
    resolver: Option<Arc<Resolver>>,
    /// Certificate and key files of the last config that loaded, to watch.
    cert_files: Mutex<Vec<PathBuf>>,
    /// Progressive rollouts; they own their routes' weights while active.
    pub rollouts: Rollouts,
    /// The last config loaded from the file, before rollouts' weights.
    loaded: Mutex<Loaded>,
    /// `admin.token` as the process started with it.
    pub admin_token: Option<String>,
    /// A/B evidence windows and the latest verdicts.
    pub analysis: Arc<crate::analysis::window::Windows>,
    /// The dashboard's last 15 minutes, filled by its sampler.
    pub history: Arc<crate::dashboard::history::History>,
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
        if self.control_stopped.load(Ordering::Relaxed) {
            return;
        }
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
        // Handed to the endpoints the table build creates: TLS settings are
        // published with the table, in one store.
        self.registry.set_tls_configs(upstream_tls);
        if certs_ok {
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        self.warn_restart_only(&loaded.config);
        // The file wins over a rollout: sync first, so that an edit of the
        // weights or of the rollout section is in this very table.
        self.rollouts.sync(&loaded.config, self.metrics());
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let table = self.build(&loaded, generation);
        let weights = describe_weights(&table);
        self.health
            .sync(&table.backends, &health_specs(&loaded.config));
        self.shared.table.store(Arc::new(table));
        self.rollouts.show();
        self.record_success(generation);
        tracing::info!(trigger = why, generation, sha256 = %loaded.sha256, weights = %weights, "config reloaded");
        *self.loaded.lock().unwrap_or_else(|p| p.into_inner()) = loaded;
    }

    /// A table of `loaded` with the weights of the rollouts that own them.
    fn build(&self, loaded: &Loaded, generation: u64) -> RoutingTable {
        let mut effective = loaded.clone();
        self.rollouts.apply(&mut effective.config);
        RoutingTable::build(&effective, generation, &self.registry, self.metrics())
    }

    /// Publishes a table of the last loaded config with the rollouts'
    /// current weights. The caller holds the reload lock.
    fn publish_rollouts(&self) {
        let loaded = self
            .loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let table = self.build(&loaded, generation);
        let weights = describe_weights(&table);
        self.shared.table.store(Arc::new(table));
        self.metrics().generation.set(generation as i64);
        tracing::info!(generation, weights = %weights, "rollout weights published");
    }

    /// One evaluation of the rollouts; blocking (state files): run it in
    /// `spawn_blocking`.
    pub fn rollout_tick(&self) {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        if self.control_stopped.load(Ordering::Relaxed) {
            return;
        }
        let table = self.shared.table.load_full();
        let changed = self.rollouts.tick(&table, self.metrics());
        if changed.weights {
            self.publish_rollouts();
        }
        // Verdicts change every tick; states only once in force.
        self.rollouts.show();
        changed.save_pending(&self.rollouts);
    }

    /// A person's command on a route's rollout; blocking (state files).
    pub fn rollout_command(&self, route: &str, command: Command) -> Result<(), String> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let changed = self.rollouts.command(route, command, self.metrics())?;
        if changed.weights {
            self.publish_rollouts();
            self.rollouts.show();
            changed.save_pending(&self.rollouts);
        }
        Ok(())
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
            ("admin.token", old.admin_token != new.admin_token),
            ("timeouts", old.timeouts != new.timeouts),
            ("limits", old.limits != new.limits),
            ("server.workers", old.workers != new.workers),
            ("server.drain_delay", old.drain_delay != new.drain_delay),
            (
                "server.upgrade_socket",
                old.upgrade_socket != new.upgrade_socket,
            ),
            (
                "server.upgrade_timeout",
                old.upgrade_timeout != new.upgrade_timeout,
            ),
            ("metrics.buckets", old.metric_buckets != new.metric_buckets),
            ("access_log", old.access_log != new.access_log),
        ];
        for (key, _) in changed.iter().filter(|(_, c)| *c) {
            tracing::warn!(
                key,
                "this setting changes only on restart; ignored until then"
            );
        }
    }
}

/// The client TLS config of each verification setting `https://` endpoints
/// use.
fn upstream_tls(
    config: &Config,
) -> anyhow::Result<HashMap<crate::config::UpstreamTls, Arc<rustls::ClientConfig>>> {
    let mut map = HashMap::new();
    for b in &config.backends {
        if !b
            .endpoints
            .iter()
            .any(|e| e.scheme == http::uri::Scheme::HTTPS)
        {
            continue;
        }
        if b.upstream_tls.insecure_skip_verify {
            tracing::warn!(backend = %b.name, "insecure_skip_verify: upstream certificates are NOT verified");
        }
        if map.contains_key(&b.upstream_tls) {
            continue;
        }
        let client = crate::tls::client_config(&b.upstream_tls)
            .with_context(|| format!("backends.{}", b.name))?;
        map.insert(b.upstream_tls.clone(), client);
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

/// Routes whose weights a reload's log line names; the rest are counted.
const WEIGHTS_LOGGED: usize = 20;

/// "app: blue=90 green=10; api: ..." for the reload log line, at most
/// [`WEIGHTS_LOGGED`] routes, then "(+N more routes)": with 10,000 routes
/// the whole list was one line of 300 KB per reload.
fn describe_weights(table: &RoutingTable) -> String {
    let mut out: Vec<String> = table
        .routes
        .iter()
        .take(WEIGHTS_LOGGED)
        .map(|r| {
            let w: Vec<String> = r
                .backends
                .iter()
                .map(|b| format!("{}={}", b.backend.name, b.weight))
                .collect();
            format!("{}: {}", r.name, w.join(" "))
        })
        .collect();
    let more = table.routes.len().saturating_sub(WEIGHTS_LOGGED);
    if more > 0 {
        out.push(format!("(+{more} more routes)"));
    }
    out.join("; ")
}

/// The certificate and key files a config names, and the backends' CA
/// bundles (a rotated CA reloads like a rotated certificate).
fn cert_files(config: &Config) -> Vec<PathBuf> {
    let certs = config.tls.iter().flat_map(|t| t.certs.iter());
    let cas = config
        .backends
        .iter()
        .filter_map(|b| b.upstream_tls.ca.clone());
    certs
        .flat_map(|c| [c.cert.clone(), c.key.clone()])
        .chain(cas)
        .collect()
}

/// Serves `path` until SIGTERM or SIGINT, then drains and returns.
/// Descriptors kept for everything but client connections: listeners,
/// admin, the watcher, health checks, logs, idle upstream connections.
const RESERVED_FDS: u64 = 256;

/// Raises the soft open-file limit to the hard one, and lowers the
/// connection limit if the result cannot hold it: a client connection can
/// hold two descriptors (itself and its upstream connection, or a tunnel's
/// two ends). Past the limit accept fails for every listener, admin too.
fn fit_open_files(shared: &Shared, max_connections: usize) {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-file limit (RLIMIT_NOFILE)");
            return;
        }
    };
    let needed = 2 * max_connections as u64 + RESERVED_FDS;
    if limit < needed {
        let fits = (limit.saturating_sub(RESERVED_FDS) / 2).max(1) as usize;
        shared.lower_max_connections(fits);
        tracing::warn!(
            open_files = limit,
            needed,
            max_connections,
            lowered_to = fits,
            "the open-file limit (ulimit -n) cannot hold limits.max_connections at two descriptors each; \
             serving at most lowered_to connections; raise the hard limit (e.g. LimitNOFILE=) to lift this"
        );
    } else {
        tracing::debug!(open_files = limit, needed, "open-file limit");
    }
}

pub fn run(path: &Path) -> anyhow::Result<()> {
    run_with(path, false)
}

/// `cutover run`; with `upgrade`, takes over the listening sockets of the
/// process serving the same config, then tells it to drain
/// ([`crate::upgrade`]).
pub fn run_with(path: &Path, upgrade: bool) -> anyhow::Result<()> {
    let loaded: Loaded = config::load(path)?;
    let config = loaded.config.clone();
    let upgrade_path = crate::upgrade::socket_path(config.upgrade_socket.as_deref(), path);
    let mut taken = match upgrade {
        true => Some(crate::upgrade::take(&upgrade_path, config.upgrade_timeout)?),
        false => None,
    };
    let mut inherited = taken
        .as_mut()
        .map(|t| std::mem::take(&mut t.sockets))
        .unwrap_or_default();
    // The control plane (admin, watcher, health checks, signals) runs on
    // this thread; the data plane on the worker threads.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let metrics = Arc::new(Metrics::new(&config.metric_buckets));
    let registry = EndpointRegistry::new(metrics.ejections.clone(), config.workers);
    registry.set_tls_configs(upstream_tls(&config)?);
    let rollouts = Rollouts::default();
    rollouts.sync(&config, &metrics);
    let mut effective = loaded.clone();
    rollouts.apply(&mut effective.config);
    let table = RoutingTable::build(&effective, 1, &registry, &metrics);
    // Each copy of a 10,000-route config is ~9 MiB: keep only those in use.
    drop(effective);
    rollouts.show();
    let mut shared = Shared::new(table, metrics.clone(), &config);
    if let Some(spec) = &config.access_log {
        let log = crate::access_log::AccessLog::start(spec, metrics.access_log_dropped.clone())
            .with_context(|| format!("access_log.path: {:?}", spec.target))?;
        shared.access_log = Some(log);
    }
    let shared = Arc::new(shared);
    fit_open_files(&shared, config.limits.max_connections);
    let health = HealthCheckers::new(rt.handle().clone());
    health.sync(&shared.table.load().backends, &health_specs(&config));
    let http = config.listen_http.context("listen.http is required")?;
    // Every listener is bound before anything is served, so an address in
    // use stops the start with nothing half running.
    let listeners = crate::upgrade::listen(
        "listen.http",
        http,
        config.workers,
        std::mem::take(&mut inherited.http),
    )?;
    tracing::info!(listener = "http", addr = %listeners.addr, workers = config.workers, inherited = upgrade, "listening");
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
            let l = crate::upgrade::listen(
                "listen.https",
                addr,
                config.workers,
                std::mem::take(&mut inherited.https),
            )?;
            tracing::info!(listener = "https", addr = %l.addr, "listening");
            Some((l, acceptor))
        }
    };
    let admin = match config.admin {
        Some(addr) => Some(crate::upgrade::listen_one(
            "admin.listen",
            addr,
            inherited.admin.take(),
        )?),
        None => None,
    };
    // Copies of every listening socket, for the next upgrade.
    let handover = crate::upgrade::Sockets {
        http: listeners.dup()?,
        https: match &https {
            Some((l, _)) => l.dup()?,
            None => Vec::new(),
        },
        admin: admin.as_ref().map(|a| a.try_clone()).transpose()?,
    };
    let (stop, stopped) = watch::channel(false);
    let workers = spawn_workers(shared.clone(), listeners, https, stopped);

    let (drain_delay, drain) = (config.drain_delay, config.timeouts.drain);
    let admin_token = config.admin_token.clone();
    let app = Arc::new(App {
        shared,
        config_path: path.to_path_buf(),
        registry,
        health,
        cert_files: Mutex::new(cert_files(&config)),
        // Only the settings a reload cannot change are compared with it:
        // no copy of the routes (~9 MiB at 10,000 routes).
        started_with: Config {
            routes: Vec::new(),
            ..config
        },
        generation: AtomicU64::new(1),
        last_error: Mutex::new(None),
        draining: AtomicBool::new(false),
        control_stopped: AtomicBool::new(false),
        reloading: Mutex::new(()),
        resolver,
        rollouts,
        loaded: Mutex::new(loaded),
        admin_token,
        analysis: Arc::default(),
        history: Arc::default(),
    });
    app.record_success(1);

    let result = rt.block_on(async {
        let mut admin_task = None;
        if let Some(admin) = admin {
            let listener = tokio::net::TcpListener::from_std(admin)?;
            tracing::info!(listener = "admin", addr = %listener.local_addr()?, "listening");
            admin_task = Some(tokio::spawn(crate::admin::serve(listener, app.clone())));
        }
        // Serving now: the old process, if any, may stop accepting.
        if let Some(taken) = taken.take() {
            let old = taken.pid;
            match tokio::task::spawn_blocking(move || taken.ready()).await? {
                Ok(_) => tracing::info!(pid = old, "upgrade: serving; the old process drains"),
                // Serving already: exiting would drop the connections this
                // process accepted. The old one was told `ready`.
                Err(e) => {
                    let error = std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(": ");
                    tracing::warn!(pid = old, error, "upgrade: serving, but the old process did not confirm that it drains; stop it if it still runs")
                }
            }
        }
        let offer = match crate::upgrade::Offer::start(&upgrade_path, handover, config.upgrade_timeout) {
            Ok(o) => Some(o),
            Err(e) => {
                tracing::warn!(path = ?upgrade_path, error = %e, "no upgrade socket; `cutover run --upgrade` cannot take over from this process");
                None
            }
        };
        if let Some(o) = &offer {
            tracing::debug!(path = ?o.path(), "upgrade socket");
        }
        // The control plane's own tasks: after an upgrade only the new
        // process acts (see below).
        let control = [
            tokio::spawn(crate::analysis::window::run(
                app.analysis.clone(),
                app.shared.clone(),
            )),
            tokio::spawn(crate::analysis::prometheus::run(
                app.analysis.clone(),
                app.shared.clone(),
                app.clone(),
            )),
            tokio::spawn(crate::dashboard::history::run(
                app.history.clone(),
                app.shared.clone(),
            )),
            tokio::spawn(rollout_ticker(app.clone())),
        ];
        let watcher = config::watch::spawn(app.clone()).await?;
        if let Some(queue) = app.rollouts.notify.receiver() {
            tokio::spawn(crate::rollout::notify::deliver(queue));
        }
        let upgraded = tokio::select! {
            r = wait_for_stop(&app) => { r?; None }
            pid = handed_over(offer.as_ref()) => Some(pid),
        };
        if let Some(o) = &offer {
            o.close();
        }
        if upgraded.is_some() {
            // The new process owns rollouts, health checks, evidence and
            // the config file from now on (it loaded the same file and
            // state): this one stops acting on them while it drains, so
            // two processes never advance a rollout or reload at once.
            // Webhook events staged before the handover are still sent.
            app.control_stopped.store(true, Ordering::Relaxed);
            drop(watcher);
            for task in &control {
                task.abort();
            }
            app.health.sync(&[], &HashMap::new());
        }

        // `/readyz` answers 503 first, for `server.drain_delay`, while the
        // listeners still serve: load balancers stop sending before the
        // listeners close. A second signal skips the wait. After an
        // upgrade the new process serves the same sockets: no delay, and
        // its admin listener takes every admin connection.
        app.draining.store(true, Ordering::Relaxed);
        if let Some(pid) = upgraded {
            tracing::info!(pid, "upgraded: the new process serves the listeners");
            if let Some(t) = &admin_task {
                t.abort();
            }
        } else if !drain_delay.is_zero() {
            tracing::info!(delay = ?drain_delay, "shutting down: /readyz reports draining; listeners close after the delay");
            let _ = tokio::time::timeout(drain_delay, wait_for_stop(&app)).await;
        }
        tracing::info!(drain = ?drain, "shutting down: no new connections, draining");
        let _ = stop.send(true);
        let joined = tokio::task::spawn_blocking(move || {
            for w in workers {
                let _ = w.join();
            }
        });
        if tokio::time::timeout(drain, joined).await.is_err() {
            tracing::warn!("drain deadline passed; closing the remaining connections");
        }
        anyhow::Ok(())
    });
    // Dropping the runtime would wait for the blocking join of the workers,
    // i.e. past the drain deadline.
    rt.shutdown_background();
    if let Some(log) = &app.shared.access_log {
        log.finish(std::time::Duration::from_secs(2));
    }
    result?;
    tracing::info!("stopped");
    Ok(())
}

/// The new process's pid once an upgrade handed the sockets over; never
/// without an upgrade socket.
async fn handed_over(offer: Option<&crate::upgrade::Offer>) -> u32 {
    if let Some(mut rx) = offer.map(|o| o.handed_over()) {
        loop {
            if let Some(pid) = *rx.borrow_and_update() {
                return pid;
            }
            if rx.changed().await.is_err() {
                break;
            }
        }
    }
    std::future::pending().await
}

/// Reloads on SIGHUP; returns on SIGTERM or SIGINT. A reload runs on a
/// blocking thread (reloads queue on `App::reloading`), so a slow file
/// system never delays the next signal.
async fn wait_for_stop(app: &Arc<App>) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    // Listened to even without an access log, so that a logrotate
    // `postrotate` never kills the proxy.
    let mut usr1 = signal(SignalKind::user_defined1())?;
    loop {
        tokio::select! {
            _ = usr1.recv() => {
                if let Some(log) = &app.shared.access_log {
                    log.reopen();
                }
            }
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => {
                let app = app.clone();
                tokio::task::spawn_blocking(move || app.reload("SIGHUP"));
            }
        }
    }
}

impl config::watch::Reloader for App {
    fn reload(&self, why: &str) {
        App::reload(self, why);
    }

    fn watched_files(&self) -> Vec<PathBuf> {
        App::watched_files(self)
    }

    fn catch_up(&self) {
        let loaded = self
            .loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sha256
            .clone();
        let now = std::fs::read(&self.config_path).map(|b| config::sha256_hex(&b));
        if now.is_ok_and(|now| now != loaded) {
            self.reload("file changed before the watch started");
        }
    }
}

/// Rollouts whose evidence comes from Prometheus ask through the app.
impl crate::analysis::prometheus::StepEvidence for App {
    fn wanted(&self, now_unix: f64) -> Vec<crate::analysis::prometheus::Wanted> {
        self.rollouts.wanted(now_unix)
    }

    fn deliver(
        &self,
        wanted: &crate::analysis::prometheus::Wanted,
        result: Result<crate::analysis::prometheus::Fetched, String>,
    ) {
        self.rollouts.deliver(wanted, result);
    }
}

/// How often the rollouts are evaluated.
pub const ROLLOUT_TICK: std::time::Duration = std::time::Duration::from_millis(500);

/// Evaluates the rollouts every [`ROLLOUT_TICK`] on a blocking thread, so a
/// slow disk never holds up the control runtime.
async fn rollout_ticker(app: Arc<App>) {
    let mut every = tokio::time::interval(ROLLOUT_TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let app = app.clone();
        let _ = tokio::task::spawn_blocking(move || app.rollout_tick()).await;
    }
}
