//! The `cutover` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cutover::config::edit::{self, Edit};
use cutover::logging::{self, LogFormat};

/// jemalloc instead of glibc's malloc: an idle keep-alive connection costs
/// less than half the RSS, and memory is given back when connections close
/// (README "Idle connections": measured, with the basic scenario's numbers).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its first allocation: a background thread
/// returns freed pages to the kernel after 1 s (`dirty_decay_ms`; default
/// 10 s, and without the thread only when the same arena allocates again,
/// which an idle worker never does), at once once purged (`muzzy_decay_ms:0`,
/// no lazy `MADV_FREE` stage, so RSS shows it). The 8 KiB size class gets
/// 64 KiB slabs of 8 regions (`slab_sizes`; by default a slab is one 8 KiB
/// region): hyper allocates a new 8 KiB read buffer at most reads, and with
/// many connections per worker the thread cache over- and underflows, so
/// every region it took or gave back was a slab made or unmade, ~2.1k
/// instructions per request at 64 connections (README, #19).
/// `_RJEM_MALLOC_CONF` in the environment overrides them (the symbols are
/// prefixed `_rjem_`).
// SAFETY: a NUL-terminated C string that jemalloc only reads, under the
// name it looks for (`malloc_conf` with the crate's `_rjem_` prefix); a
// reference to an array is a plain pointer, as C's `const char *`.
#[cfg(feature = "jemalloc")]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &[u8; 84] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,slab_sizes:8192-8192:16\0";

#[derive(Parser)]
#[command(
    name = "cutover",
    version,
    about = "A reverse proxy for blue/green and canary releases"
)]
struct Cli {
    /// Log lines as human-readable text or as JSON objects.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with a config file, reloading it when it changes.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Take over the listening sockets of the Cutover running with this
        /// config (via server.upgrade_socket), then let it drain: a new
        /// binary without a refused connection. Exit 2: none is running;
        /// 3: another upgrade is under way; 4: the process on the upgrade
        /// socket said nothing within server.upgrade_timeout.
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a config file: exit 0 if valid, 1 with file:line:col errors if not.
    /// Secrets that cannot be read here (`*_file`, `*_env`) are warnings.
    Check {
        #[arg(long, short)]
        config: PathBuf,
        /// Treat secrets that cannot be resolved as errors.
        #[arg(long)]
        strict: bool,
    },
    /// Run an embedded config with two built-in demo backends, blue and green.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
        /// Run a short progressive rollout of green, with background
        /// traffic; type `bad`, `slow` or `good` to change green.
        #[arg(long)]
        rollout: bool,
    },
    /// Set backend weights in a config file (every route, or --route).
    Set {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        route: Option<String>,
        /// BACKEND=WEIGHT pairs, e.g. blue=50 green=50.
        #[arg(required = true, value_parser = parse_weight)]
        weights: Vec<(String, u32)>,
    },
    /// Put all weight on one backend (every route, or --route).
    Rollback {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        to: String,
        #[arg(long)]
        route: Option<String>,
    },
    /// Show or steer a progressive rollout: status, pause, resume, promote,
    /// abort (roll back now). The mutating verbs need admin.token, given
    /// with --token or CUTOVER_ADMIN_TOKEN.
    Rollout {
        #[arg(value_parser = ["status", "pause", "resume", "promote", "abort"])]
        verb: String,
        #[arg(long, default_value = "http://127.0.0.1:9901")]
        admin: String,
        /// The route; may be left out when only one route has a rollout.
        #[arg(long)]
        route: Option<String>,
        #[arg(long)]
        token: Option<String>,
    },
    /// The A/B verdicts of a running Cutover (or, with --prometheus, of
    /// every replica's evidence summed by Prometheus); exit 0 pass, 1 fail,
    /// 2 inconclusive, 3 when the evidence cannot be read.
    Report {
        #[arg(long, default_value = "http://127.0.0.1:9901")]
        admin: String,
        #[arg(long)]
        route: Option<String>,
        #[arg(long)]
        json: bool,
        /// Read the evidence from this Prometheus (http://host:port), no
        /// proxy needed; needs --route.
        #[arg(long, requires = "route")]
        prometheus: Option<String>,
        /// With --prometheus: how far back the evidence goes.
        #[arg(long, default_value = "5m", requires = "prometheus")]
        window: String,
    },
    /// Show per-variant traffic, errors and latency from a running Cutover.
    Status {
        #[arg(long, default_value = "http://127.0.0.1:9901")]
        admin: String,
    },
}

fn parse_weight(s: &str) -> Result<(String, u32), String> {
    let (name, w) = s
        .split_once('=')
        .ok_or_else(|| format!("\"{s}\" is not BACKEND=WEIGHT"))?;
    let w = w
        .parse()
        .map_err(|_| format!("\"{w}\" is not a whole number"))?;
    Ok((name.to_owned(), w))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    if let Command::Report {
        admin,
        route,
        json,
        prometheus,
        window,
    } = &cli.command
    {
        if let (Some(url), Some(route)) = (prometheus, route) {
            return cutover::report::run_prometheus(url, route, window, *json);
        }
        return cutover::report::run(admin, route.as_deref(), *json);
    }
    let result = match cli.command {
        Command::Report { .. } => Ok(()),
        Command::Run { config, upgrade } => cutover::app::run_with(&config, upgrade),
        Command::Check { config, strict } => check(&config, strict),
        Command::Demo {
            http,
            admin,
            rollout,
        } => cutover::demo::run(http, admin, rollout),
        Command::Set {
            config,
            route,
            weights,
        } => edit_and_print(&config, route.as_deref(), Edit::Set(&weights)),
        Command::Rollback { config, to, route } => {
            edit_and_print(&config, route.as_deref(), Edit::Rollback { to: &to })
        }
        Command::Status { admin } => cutover::status::run(&admin),
        Command::Rollout {
            verb,
            admin,
            route,
            token,
        } => cutover::rollout::cli::run(&admin, &verb, route.as_deref(), token.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            let upgrade = e
                .chain()
                .find_map(|c| c.downcast_ref::<cutover::upgrade::UpgradeError>());
            upgrade.map_or(ExitCode::FAILURE, |u| ExitCode::from(u.exit_code()))
        }
    }
}

/// Validates the file; then resolves its secrets, which may be readable
/// only where the proxy runs: a warning unless `strict`.
fn check(path: &std::path::Path, strict: bool) -> anyhow::Result<()> {
    let (_, mut config) = cutover::config::read(path)?;
    for w in config.routes.iter().filter_map(|r| r.shadow.as_ref()) {
        for line in &w.warnings {
            eprintln!("warning: {line}");
        }
    }
    match cutover::config::secrets::resolve(&mut config) {
        Ok(()) => {}
        Err(e) if strict => return Err(e.into()),
        Err(e) => {
            for line in e.to_string().lines() {
                eprintln!("warning: {line}");
            }
        }
    }
    println!("{}: ok", path.display());
    Ok(())
}

fn edit_and_print(
    config: &std::path::Path,
    route: Option<&str>,
    e: Edit<'_>,
) -> anyhow::Result<()> {
    for line in edit::apply(config, route, e)? {
        println!("{line}");
    }
    Ok(())
}
