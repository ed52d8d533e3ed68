//! The running process's side: listens on the upgrade socket and hands
//! its listening sockets to one new process at a time.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::Sockets;
use super::wire::{self, Hello};

/// The upgrade socket of this process.
pub struct Offer {
    path: PathBuf,
    /// The socket file's inode, to remove it only while it is ours.
    inode: u64,
    inner: Arc<Inner>,
}

struct Inner {
    /// Copies of the listening sockets; `None` once shutting down.
    sockets: Mutex<Option<Sockets>>,
    /// The pid of the new process being handed the sockets.
    upgrading_to: Mutex<Option<u32>>,
    /// Set to the new process's pid once it serves.
    handed_over: watch::Sender<Option<u32>>,
    /// `server.upgrade_timeout`: how long a new process has to say `ready`.
    timeout: std::time::Duration,
}

impl Offer {
    /// Binds the upgrade socket at `path` (mode 0600, replacing a stale
    /// file or the old process's socket atomically, by rename) and serves
    /// it on its own thread; a new process has `timeout` to say `ready`.
    pub fn start(
        path: &Path,
        sockets: Sockets,
        timeout: std::time::Duration,
    ) -> std::io::Result<Offer> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".{}.tmp", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        let listener = UnixListener::bind(&tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        let inode = std::fs::metadata(&tmp)?.ino();
        std::fs::rename(&tmp, path)?;
        let inner = Arc::new(Inner {
            sockets: Mutex::new(Some(sockets)),
            upgrading_to: Mutex::new(None),
            handed_over: watch::channel(None).0,
            timeout,
        });
        let serving = inner.clone();
        std::thread::Builder::new()
            .name("cutover-upgrade".into())
            .spawn(move || {
                for conn in listener.incoming().flatten() {
                    let inner = serving.clone();
                    let _ = std::thread::Builder::new()
                        .name("cutover-upgrade-conn".into())
                        .spawn(move || inner.handle(conn));
                }
            })?;
        Ok(Offer {
            path: path.to_path_buf(),
            inode,
            inner,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Changes to the new process's pid once it serves on the sockets.
    pub fn handed_over(&self) -> watch::Receiver<Option<u32>> {
        self.inner.handed_over.subscribe()
    }

    /// Stops offering: closes this process's copies of the listening
    /// sockets and, unless a new process took it over, the socket file.
    pub fn close(&self) {
        drop(lock(&self.inner.sockets).take());
        let ours = std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.inode);
        if ours && self.inner.handed_over.borrow().is_none() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Inner {
    fn handle(&self, mut conn: UnixStream) {
        let _ = conn.set_read_timeout(Some(self.timeout));
        let _ = conn.set_write_timeout(Some(self.timeout));
        // The socket file is 0600; this also stops a process that got a
        // descriptor of it some other way.
        let peer = match rustix::net::sockopt::socket_peercred(&conn) {
            Ok(p) if p.uid == rustix::process::geteuid() => p,
            Ok(p) => {
                tracing::warn!(
                    uid = p.uid.as_raw(),
                    "upgrade refused: the peer runs as another user"
                );
                return;
            }
            Err(_) => return,
        };
        let new = peer.pid.as_raw_nonzero().get() as u32;
        let me = std::process::id();
        {
            let mut upgrading_to = lock(&self.upgrading_to);
            if let Some(other) = *upgrading_to {
                tracing::warn!(
                    pid = new,
                    upgrading_to = other,
                    "upgrade refused: another one is under way"
                );
                let line = Hello::Busy {
                    old: me,
                    new: other,
                }
                .line();
                let _ = conn.write_all(line.as_bytes());
                return;
            }
            *upgrading_to = Some(new);
        }
        tracing::info!(pid = new, "upgrade: handing the listening sockets over");
        match self.hand_over(&mut conn, me) {
            Ok(()) => {
                tracing::info!(pid = new, "upgrade: the new process serves; draining");
                // Answered before the drain starts: a process with nothing
                // to drain exits at once, and would take this thread (and
                // the answer the new process waits for) with it.
                let _ = conn.write_all(b"draining\n");
                // Still busy: this process is leaving.
                self.handed_over.send_replace(Some(new));
            }
            Err(e) => {
                tracing::warn!(pid = new, error = %e, "upgrade abandoned; still serving");
                *lock(&self.upgrading_to) = None;
            }
        }
    }

    /// Sends the sockets, then waits for the new process to serve.
    fn hand_over(&self, conn: &mut UnixStream, me: u32) -> std::io::Result<()> {
        {
            let sockets = lock(&self.sockets);
            let Some(s) = sockets.as_ref() else {
                return Err(std::io::Error::other("shutting down"));
            };
            let fds: Vec<BorrowedFd<'_>> = (s.http.iter().chain(&s.https).chain(&s.admin))
                .map(AsFd::as_fd)
                .collect();
            let hello = Hello::Offer {
                pid: me,
                http: s.http.len(),
                https: s.https.len(),
                admin: usize::from(s.admin.is_some()),
            };
            wire::send_with_fds(conn, &hello.line(), &fds)?;
        }
        let line = wire::read_line(conn)?;
        if !line.starts_with("ready ") {
            return Err(std::io::Error::other(format!("unexpected answer {line:?}")));
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
