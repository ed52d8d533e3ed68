//! Zero-downtime upgrade of Cutover itself (`cutover run --upgrade`), as
//! HAProxy's `-x` does: the running process listens on a Unix socket
//! (`server.upgrade_socket`); a new process started on the same config
//! connects, receives every listening socket over it (`SCM_RIGHTS`: the
//! per-worker `SO_REUSEPORT` sockets of `listen.http` and `listen.https`
//! and the admin socket), serves on them, and says `ready`; only then does
//! the old process stop accepting and drain. The sockets stay open all
//! along (both processes hold them, then the new one alone), so no
//! connection is refused and none is queued on a socket nobody accepts
//! from. The new process then takes over the upgrade socket's path, so it
//! can be upgraded in turn.

mod offer;
mod take;
mod wire;

pub use offer::Offer;
pub use take::{Taken, take};

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::Digest;

use crate::proxy::Listeners;

/// The longest upgrade socket path: `sun_path` holds 108 bytes with its
/// NUL, and the new process first binds `PATH.PID.tmp`.
pub const MAX_PATH: usize = 86;

/// How long the old process waits for the new one to say it serves, and
/// the new one for each answer of the old; past it the old one keeps
/// serving as if nothing happened.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The listening sockets handed over, in the order they travel.
#[derive(Debug, Default)]
pub struct Sockets {
    /// `listen.http`: one `SO_REUSEPORT` socket per worker.
    pub http: Vec<TcpListener>,
    /// `listen.https`: one per worker, or none.
    pub https: Vec<TcpListener>,
    pub admin: Option<TcpListener>,
}

/// Why `--upgrade` did not happen; the old process, if any, serves on.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error(
        "no running Cutover to upgrade: nothing listens on the upgrade socket {path:?} \
         (server.upgrade_socket); start without --upgrade"
    )]
    NotRunning {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "an upgrade is already in progress (pid {old} is handing over to pid {new}); retry once it is done"
    )]
    Busy { old: u32, new: u32 },
    #[error("upgrade socket {path:?}: {what}")]
    Protocol { path: PathBuf, what: String },
    #[error("upgrade socket {path:?}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl UpgradeError {
    /// `cutover run --upgrade`'s exit status: 2 nothing to upgrade, 3 an
    /// upgrade already in progress, 1 anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            UpgradeError::NotRunning { .. } => 2,
            UpgradeError::Busy { .. } => 3,
            _ => 1,
        }
    }
}

/// Where the upgrade socket of a process serving `config_path` lives:
/// `server.upgrade_socket`, else `$XDG_RUNTIME_DIR/cutover-HASH.sock`
/// (`/tmp/cutover-UID-HASH.sock` without it), HASH naming the config
/// file's canonical path, so every config has its own socket and the old
/// and the new binary agree on it.
pub fn socket_path(configured: Option<&Path>, config_path: &Path) -> PathBuf {
    if let Some(p) = configured {
        return p.to_path_buf();
    }
    let canonical = std::fs::canonicalize(config_path).unwrap_or_else(|_| config_path.into());
    let digest = sha2::Sha256::digest(canonical.as_os_str().as_encoded_bytes());
    let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => Path::new(&dir).join(format!("cutover-{hash}.sock")),
        None => {
            let uid = rustix::process::geteuid().as_raw();
            PathBuf::from(format!("/tmp/cutover-{uid}-{hash}.sock"))
        }
    }
}

/// The listener of `key` at `addr`: the inherited sockets when there are
/// (an upgrade keeps the listen address; port 0 takes the old one's),
/// else freshly bound ones.
pub fn listen(
    key: &str,
    addr: SocketAddr,
    workers: usize,
    inherited: Vec<TcpListener>,
) -> anyhow::Result<Listeners> {
    if inherited.is_empty() {
        return Listeners::bind(addr, workers).context(key.to_owned());
    }
    let listeners = Listeners::adopt(inherited, workers).context(key.to_owned())?;
    same_address(key, addr, listeners.addr)?;
    Ok(listeners)
}

/// The admin listener: inherited, else bound.
pub fn listen_one(
    key: &str,
    addr: SocketAddr,
    inherited: Option<TcpListener>,
) -> anyhow::Result<TcpListener> {
    match inherited {
        None => Ok(crate::proxy::listener::bind(addr).context(key.to_owned())?),
        Some(l) => {
            same_address(key, addr, l.local_addr()?)?;
            Ok(l)
        }
    }
}

fn same_address(key: &str, configured: SocketAddr, inherited: SocketAddr) -> anyhow::Result<()> {
    let same =
        configured == inherited || (configured.port() == 0 && configured.ip() == inherited.ip());
    anyhow::ensure!(
        same,
        "{key}: the running process listens on {inherited}, the config says {configured}; \
         an upgrade keeps the listen addresses: restart to change them"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_socket_is_per_config_and_fits_sun_path() {
        let a = socket_path(None, Path::new("/etc/cutover/a.toml"));
        let b = socket_path(None, Path::new("/etc/cutover/b.toml"));
        assert_ne!(a, b);
        assert_eq!(a, socket_path(None, Path::new("/etc/cutover/a.toml")));
        assert!(a.as_os_str().len() <= MAX_PATH || std::env::var_os("XDG_RUNTIME_DIR").is_some());
        let set = Path::new("/run/cutover.sock");
        assert_eq!(socket_path(Some(set), Path::new("x.toml")), set);
    }

    #[test]
    fn port_zero_takes_the_inherited_port() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(same_address("k", at("127.0.0.1:0"), at("127.0.0.1:8080")).is_ok());
        assert!(same_address("k", at("127.0.0.1:8080"), at("127.0.0.1:8080")).is_ok());
        let e = same_address("k", at("127.0.0.1:8081"), at("127.0.0.1:8080")).unwrap_err();
        assert!(e.to_string().contains("restart"), "{e}");
    }
}
