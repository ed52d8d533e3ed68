//! The new process's side: takes the running process's listening sockets,
//! and once serving on them tells it to drain.

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::wire::{self, Hello};
use super::{Sockets, UpgradeError};

/// The sockets taken, and the connection to the process they came from.
pub struct Taken {
    pub sockets: Sockets,
    /// The old process.
    pub pid: u32,
    conn: UnixStream,
    path: PathBuf,
    timeout: Duration,
}

/// Connects to the upgrade socket at `path` and receives the sockets,
/// waiting at most `timeout` (`server.upgrade_timeout`) for them.
pub fn take(path: &Path, timeout: Duration) -> Result<Taken, UpgradeError> {
    let io = |source| UpgradeError::Io {
        path: path.into(),
        source,
    };
    let protocol = |what: String| UpgradeError::Protocol {
        path: path.into(),
        what,
    };
    let conn = UnixStream::connect(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            UpgradeError::NotRunning {
                path: path.into(),
                source,
            }
        }
        _ => io(source),
    })?;
    conn.set_read_timeout(Some(timeout)).map_err(io)?;
    conn.set_write_timeout(Some(timeout)).map_err(io)?;
    let peer = rustix::net::sockopt::socket_peercred(&conn).map_err(|e| io(e.into()))?;
    if peer.uid != rustix::process::geteuid() {
        return Err(protocol(format!(
            "served by uid {}, not this user",
            peer.uid.as_raw()
        )));
    }
    let (line, fds) = wire::recv_with_fds(&conn).map_err(|e| match timed_out(&e) {
        true => UpgradeError::Timeout {
            path: path.into(),
            what: "listening sockets",
            waited: timeout,
        },
        false => io(e),
    })?;
    let (pid, http, https, admin) = match Hello::parse(&line) {
        Some(Hello::Busy { old, new }) => return Err(UpgradeError::Busy { old, new }),
        Some(Hello::Offer {
            pid,
            http,
            https,
            admin,
        }) => (pid, http, https, admin),
        None => return Err(protocol(format!("unexpected greeting {line:?}"))),
    };
    if fds.len() != http + https + admin || http == 0 || admin > 1 {
        return Err(protocol(format!(
            "{line:?} came with {} descriptors",
            fds.len()
        )));
    }
    let mut listeners = fds.into_iter().map(TcpListener::from);
    let sockets = Sockets {
        http: listeners.by_ref().take(http).collect(),
        https: listeners.by_ref().take(https).collect(),
        admin: listeners.next(),
    };
    for l in sockets
        .http
        .iter()
        .chain(&sockets.https)
        .chain(&sockets.admin)
    {
        l.local_addr()
            .map_err(|e| protocol(format!("a descriptor is not a TCP socket: {e}")))?;
        // Served by tokio, which needs them non-blocking: say so rather
        // than rely on the sender's flag (shared by every copy).
        l.set_nonblocking(true).map_err(io)?;
    }
    Ok(Taken {
        sockets,
        pid,
        conn,
        path: path.into(),
        timeout,
    })
}

/// A read past `SO_RCVTIMEO`.
fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

impl Taken {
    /// Tells the old process that this one serves, and waits until it
    /// stopped accepting.
    pub fn ready(mut self) -> Result<u32, UpgradeError> {
        let io = |source| UpgradeError::Io {
            path: self.path.clone(),
            source,
        };
        let line = format!("ready pid={}\n", std::process::id());
        self.conn.write_all(line.as_bytes()).map_err(io)?;
        let answer = wire::read_line(&mut self.conn).map_err(|e| match timed_out(&e) {
            true => UpgradeError::Timeout {
                path: self.path.clone(),
                what: "`draining`",
                waited: self.timeout,
            },
            false => io(e),
        })?;
        match answer.as_str() {
            "draining" => Ok(self.pid),
            other => Err(UpgradeError::Protocol {
                path: self.path.clone(),
                what: format!("unexpected answer {other:?}"),
            }),
        }
    }
}
