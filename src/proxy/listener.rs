//! Listening sockets. An address is first bound exclusively, without
//! `SO_REUSEPORT`: that bind fails with `EADDRINUSE` while anything else
//! listens there (another Cutover, nginx, a plain or `SO_REUSEPORT` socket),
//! so a second instance refuses to start instead of silently taking part of
//! the traffic. The probe is then closed and each worker binds its own
//! `SO_REUSEPORT` socket to the same address: the kernel spreads new
//! connections evenly over the workers (one socket shared by all workers
//! let one worker take every connection: 24k vs 35k req/s, README). A later
//! Cutover's exclusive probe fails against these sockets too. Only two
//! instances started within the same few microseconds could both pass the
//! probe. A socket can also be shared explicitly ([`Listeners::from_socket`]).
//! An upgrade (`crate::upgrade`) hands every per-worker socket to the new
//! process ([`Listeners::dup`], [`Listeners::adopt`]) instead of binding:
//! the sockets never close, so no connection is refused, and the probe is
//! not repeated (it would fail against them).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

/// One listening socket, one descriptor of it per worker.
pub struct Listeners {
    pub addr: SocketAddr,
    pub(super) sockets: Vec<std::net::TcpListener>,
}

impl Listeners {
    /// Checks that nobody serves `addr` (port 0 picks a free port), then
    /// binds one `SO_REUSEPORT` socket per worker, `n` in all.
    pub fn bind(addr: SocketAddr, n: usize) -> Result<Listeners, BindError> {
        let probe = bind(addr)?;
        let addr = probe.local_addr().map_err(|e| BindError::new(addr, e))?;
        drop(probe);
        let sockets = (0..n.max(1))
            .map(|_| reuseport(addr).map_err(|e| BindError::new(addr, e)))
            .collect::<Result<_, _>>()?;
        Ok(Listeners { addr, sockets })
    }

    /// Shares an already listening socket (e.g. one handed over by another
    /// process) among `n` workers.
    pub fn from_socket(socket: std::net::TcpListener, n: usize) -> std::io::Result<Listeners> {
        let addr = socket.local_addr()?;
        let mut sockets = Vec::with_capacity(n.max(1));
        for _ in 1..n.max(1) {
            sockets.push(socket.try_clone()?);
        }
        sockets.push(socket);
        Ok(Listeners { addr, sockets })
    }
}

impl Listeners {
    /// Copies of the workers' sockets (the same sockets, new descriptors),
    /// to hand over in an upgrade.
    pub fn dup(&self) -> std::io::Result<Vec<std::net::TcpListener>> {
        self.sockets.iter().map(|s| s.try_clone()).collect()
    }

    /// Takes over the sockets of a previous process, one per worker. Past
    /// them, more workers join the address's `SO_REUSEPORT` group; fewer
    /// workers than sockets would leave sockets nobody accepts from, whose
    /// queued connections would wait, so that is refused.
    pub fn adopt(sockets: Vec<std::net::TcpListener>, n: usize) -> Result<Listeners, AdoptError> {
        let first = sockets
            .first()
            .ok_or(AdoptError::Fewer { had: 0, workers: n })?;
        let addr = first.local_addr().map_err(AdoptError::Socket)?;
        if sockets.len() > n.max(1) {
            return Err(AdoptError::Fewer {
                had: sockets.len(),
                workers: n,
            });
        }
        let mut sockets = sockets;
        while sockets.len() < n.max(1) {
            sockets.push(reuseport(addr).map_err(|e| AdoptError::Bind(BindError::new(addr, e)))?);
        }
        Ok(Listeners { addr, sockets })
    }
}

/// Sockets handed over by a previous process that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error(
        "the running process has {had} listening sockets, one per worker, but server.workers is {workers}; \
         an upgrade cannot lower the number of workers: restart to do that"
    )]
    Fewer { had: usize, workers: usize },
    #[error("a handed-over socket")]
    Socket(#[source] std::io::Error),
    #[error(transparent)]
    Bind(BindError),
}

/// A non-blocking listening socket on `addr`, exclusively: `SO_REUSEADDR`
/// (a restart is not refused by connections in TIME_WAIT) but no
/// `SO_REUSEPORT`, so the bind fails with `EADDRINUSE` while anyone listens
/// on an overlapping address.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, BindError> {
    let listen = || -> std::io::Result<std::net::TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_tcp_nodelay(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        // Two binds that race both succeed; the second `listen` fails.
        socket.listen(4096)?;
        Ok(socket.into())
    };
    listen().map_err(|e| BindError::new(addr, e))
}

/// One worker's listening socket on `addr`, in the address's
/// `SO_REUSEPORT` group.
fn reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// A listen address that could not be bound, with who holds it if known.
#[derive(Debug, thiserror::Error)]
pub struct BindError {
    pub addr: SocketAddr,
    /// The process listening there, when the address is in use.
    pub holder: Option<Holder>,
    #[source]
    pub source: std::io::Error,
}

impl BindError {
    fn new(addr: SocketAddr, source: std::io::Error) -> BindError {
        let holder = match source.kind() {
            std::io::ErrorKind::AddrInUse => Holder::find(addr),
            _ => None,
        };
        BindError {
            addr,
            holder,
            source,
        }
    }

    fn in_use(&self) -> bool {
        self.source.kind() == std::io::ErrorKind::AddrInUse
    }
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot listen on {}", self.addr)?;
        if !self.in_use() {
            return Ok(());
        }
        match &self.holder {
            Some(h) => write!(f, ": already served by {h}")?,
            None => write!(f, ": already served by another process")?,
        }
        // `source` follows: "Address already in use (os error 98)".
        write!(
            f,
            "; Cutover never shares a listen address, so stop that process or choose another address"
        )
    }
}

/// The owner of a listening socket, found through `/proc` (best effort).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The socket's owner, from `/proc/net/tcp{,6}`.
    pub uid: u32,
    /// The process and its command line, when its fds are readable
    /// (same user, or root).
    pub process: Option<(u32, String)>,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.process {
            Some((pid, _)) if *pid == std::process::id() => {
                write!(f, "this process (another of its listeners)")
            }
            Some((pid, cmd)) => write!(f, "pid {pid} ({cmd})"),
            None => write!(
                f,
                "a process of uid {} (not visible to this user)",
                self.uid
            ),
        }
    }
}

impl Holder {
    /// Looks up the socket listening on an address overlapping `addr` in
    /// `/proc/net/tcp{,6}`, then the process whose fd points at its inode.
    /// `None` when anything is missing or unreadable.
    pub fn find(addr: SocketAddr) -> Option<Holder> {
        let (uid, inode) = ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .find_map(|table| listening_socket(&table, addr))?;
        Some(Holder {
            uid,
            process: process_with_socket(inode),
        })
    }
}

/// `(uid, inode)` of the listening socket in one `/proc/net/tcp*` table
/// whose local address overlaps `addr`.
fn listening_socket(table: &str, addr: SocketAddr) -> Option<(u32, u64)> {
    const LISTEN: &str = "0A";
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (local, state) = (f.get(1)?, f.get(3)?);
        if *state != LISTEN {
            return None;
        }
        let local = parse_proc_addr(local)?;
        let overlaps =
            local.ip() == addr.ip() || local.ip().is_unspecified() || addr.ip().is_unspecified();
        (local.port() == addr.port() && overlaps).then_some(())?;
        Some((f.get(7)?.parse().ok()?, f.get(9)?.parse().ok()?))
    })
}

/// `0100007F:1F90` (IPv4) or 32 hex digits `:PORT` (IPv6): the address as
/// the kernel prints it, each 32-bit word in host byte order.
fn parse_proc_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The first process with an fd on `socket:[inode]`, and its command line.
fn process_with_socket(inode: u64) -> Option<(u32, String)> {
    let target = format!("socket:[{inode}]");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|p| {
        let pid: u32 = p.file_name().to_str()?.parse().ok()?;
        let holds = std::fs::read_dir(p.path().join("fd"))
            .ok()?
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == &*target));
        holds.then(|| (pid, command_line(pid)))
    })
}

/// `/proc/PID/cmdline` with spaces, at most 200 characters.
fn command_line(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let text = String::from_utf8_lossy(&raw);
    let cmd: String = text.trim_end_matches('\0').replace('\0', " ");
    match cmd.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &cmd[..i]),
        None if cmd.is_empty() => "?".to_owned(),
        None => cmd,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_addresses() {
        let v4 = parse_proc_addr("0100007F:1F90").unwrap();
        let v6 = parse_proc_addr("00000000000000000000000001000000:0050").unwrap();
        if cfg!(target_endian = "little") {
            assert_eq!(v4, "127.0.0.1:8080".parse().unwrap());
            assert_eq!(v6, "[::1]:80".parse().unwrap());
        }
        assert_eq!(parse_proc_addr("zz:1"), None);
    }

    #[test]
    fn finds_the_listening_socket_of_an_overlapping_address() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000  1000        0 111 1\n\
           1: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 222 1\n";
        let at = |s: &str| listening_socket(table, s.parse().unwrap());
        assert_eq!(at("127.0.0.1:8080"), Some((1000, 222)));
        assert_eq!(at("0.0.0.0:8080"), Some((1000, 222)));
        assert_eq!(at("127.0.0.1:8081"), None);
    }

    #[test]
    fn a_bound_address_is_refused_and_its_holder_named() {
        let first = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        let err = bind(addr).unwrap_err();
        assert_eq!(err.source.kind(), std::io::ErrorKind::AddrInUse);
        let holder = err.holder.clone().expect("found in /proc");
        assert_eq!(holder.process.map(|p| p.0), Some(std::process::id()));
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
        drop(first);
        bind(addr).expect("free again once the first is closed");
    }
}
