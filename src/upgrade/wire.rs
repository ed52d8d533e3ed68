//! The upgrade socket's messages, one line each:
//!
//! - old to new: `cutover-upgrade 1 pid=OLD http=N https=M admin=A`, with
//!   the N + M + A listening sockets attached (`SCM_RIGHTS`), in that
//!   order; or `busy pid=OLD new=OTHER` while another upgrade is under way;
//! - new to old, once it serves: `ready pid=NEW`;
//! - old to new, once it stopped accepting: `draining`.

use std::io::{IoSlice, IoSliceMut, Read};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// The kernel passes at most `SCM_MAX_FD` (253) descriptors per message.
pub const MAX_FDS: usize = 253;
/// No line of the protocol is longer.
const MAX_LINE: usize = 256;

/// What the old process says first.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    Offer {
        pid: u32,
        http: usize,
        https: usize,
        admin: usize,
    },
    Busy {
        old: u32,
        new: u32,
    },
}

impl Hello {
    pub fn line(&self) -> String {
        match self {
            Hello::Offer {
                pid,
                http,
                https,
                admin,
            } => format!("cutover-upgrade 1 pid={pid} http={http} https={https} admin={admin}\n"),
            Hello::Busy { old, new } => format!("busy pid={old} new={new}\n"),
        }
    }

    pub fn parse(line: &str) -> Option<Hello> {
        let mut words = line.split_whitespace();
        let head = words.next()?;
        let fields: Vec<(&str, u32)> = words
            .filter(|w| *w != "1")
            .map(|w| {
                let (k, v) = w.split_once('=')?;
                Some((k, v.parse().ok()?))
            })
            .collect::<Option<_>>()?;
        let get = |key: &str| fields.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        match head {
            "cutover-upgrade" if line.split_whitespace().nth(1) == Some("1") => {
                Some(Hello::Offer {
                    pid: get("pid")?,
                    http: get("http")? as usize,
                    https: get("https")? as usize,
                    admin: get("admin")? as usize,
                })
            }
            "busy" => Some(Hello::Busy {
                old: get("pid")?,
                new: get("new")?,
            }),
            _ => None,
        }
    }
}

/// Sends `line` with `fds` attached, in one `sendmsg`.
pub fn send_with_fds(conn: &UnixStream, line: &str, fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(std::io::Error::other(format!(
            "{} listening sockets, more than the {MAX_FDS} one message can carry",
            fds.len()
        )));
    }
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(std::io::Error::other("control buffer too small"));
    }
    let sent = rustix::net::sendmsg(
        conn,
        &[IoSlice::new(line.as_bytes())],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    if sent != line.len() {
        return Err(std::io::ErrorKind::WriteZero.into());
    }
    Ok(())
}

/// Receives one line and the descriptors attached to it (close-on-exec).
pub fn recv_with_fds(conn: &UnixStream) -> std::io::Result<(String, Vec<OwnedFd>)> {
    let mut buf = [0u8; MAX_LINE];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        conn,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if got.flags.contains(ReturnFlags::CTRUNC) {
        return Err(std::io::Error::other("descriptors were cut off"));
    }
    let text = std::str::from_utf8(&buf[..got.bytes])
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
    match text.strip_suffix('\n') {
        Some(line) => Ok((line.to_owned(), fds)),
        None if got.bytes == 0 => Err(std::io::ErrorKind::UnexpectedEof.into()),
        None => Err(std::io::ErrorKind::InvalidData.into()),
    }
}

/// Reads one line (without its `\n`), at most [`MAX_LINE`] bytes.
pub fn read_line(conn: &mut UnixStream) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < MAX_LINE {
        if conn.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if byte[0] == b'\n' {
            return String::from_utf8(line).map_err(|_| std::io::ErrorKind::InvalidData.into());
        }
        line.push(byte[0]);
    }
    Err(std::io::ErrorKind::InvalidData.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn hello_lines_round_trip() {
        let offer = Hello::Offer {
            pid: 7,
            http: 2,
            https: 0,
            admin: 1,
        };
        let busy = Hello::Busy { old: 7, new: 9 };
        for h in [offer, busy] {
            assert_eq!(Hello::parse(h.line().trim_end()), Some(h));
        }
        assert_eq!(
            Hello::parse("cutover-upgrade 2 pid=1 http=1 https=0 admin=0"),
            None
        );
        assert_eq!(Hello::parse("busy pid=x new=1"), None);
        assert_eq!(Hello::parse(""), None);
    }

    #[test]
    fn sockets_travel_with_their_line() {
        let (a, b) = UnixStream::pair().unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        send_with_fds(&a, "hello\n", &[l.as_fd(), l.as_fd()]).unwrap();
        let (line, fds) = recv_with_fds(&b).unwrap();
        assert_eq!(line, "hello");
        assert_eq!(fds.len(), 2);
        let got = std::net::TcpListener::from(fds.into_iter().next().unwrap());
        assert_eq!(got.local_addr().unwrap(), l.local_addr().unwrap());
    }
}
