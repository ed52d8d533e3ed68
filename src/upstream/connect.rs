//! Opening a connection to an endpoint: resolve (IP literals skip the
//! resolver), TCP connect, TLS for `https://` (the backend's client config,
//! SNI = the endpoint's host, ALPN by the backend's `protocol`), all within
//! the connect timeout; then an HTTP/1.1 or HTTP/2 handshake whose
//! connection task runs on the calling runtime.
//!
//! The TLS client config travels with the endpoint (see
//! [`super::Endpoint::tls`]), so it is published in the same routing table
//! snapshot: a request on an older table never looks it up in a newer map.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

use super::body::RequestBody;
use super::h2::{H2Conn, H2State};
use crate::config::{EndpointSpec, Protocol};

/// The sending half of an upstream HTTP/1.1 connection.
pub type Sender = http1::SendRequest<RequestBody>;

/// A new connection, by the protocol it speaks.
pub enum Connected {
    H1(Sender),
    H2(H2Conn),
}

/// The most an upstream connection buffers while reading (hyper's default
/// is 408 KiB): a response head must fit, bodies stream through it.
const READ_BUF_MAX: usize = 64 * 1024;

type Io = TokioIo<Either<TcpStream, TlsStream<TcpStream>>>;

/// What an upstream HTTP/2 stream may receive before the proxy reads it
/// (hyper's default is 2 MiB): a response body streams through at the
/// client's pace, so a slow client holds at most this much per stream.
const H2_STREAM_WINDOW: u32 = 256 * 1024;
/// The same for the whole connection (hyper's default: 5 MiB).
const H2_CONN_WINDOW: u32 = 1024 * 1024;
/// Request bytes buffered per stream beyond the backend's window.
const H2_SEND_BUF: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot resolve: {0}")]
    Resolve(io::Error),
    #[error("connect failed: {0}")]
    Tcp(io::Error),
    #[error("connect timed out")]
    Timeout,
    #[error("no TLS config for this endpoint")]
    NoTlsConfig,
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
    #[error("HTTP/1.1 handshake failed: {0}")]
    Handshake(hyper::Error),
    #[error("HTTP/2 handshake failed: {0}")]
    H2Handshake(hyper::Error),
    /// `protocol = "h2"` and the endpoint did not pick `h2` by ALPN.
    #[error("the endpoint did not select h2 by ALPN")]
    NoH2,
}

impl ConnectError {
    /// The proxy's own lack of resources (file descriptors, ephemeral
    /// ports, buffers, memory) or config, not the endpoint's fault: never
    /// counted towards its ejection.
    pub fn is_local(&self) -> bool {
        match self {
            ConnectError::NoTlsConfig => true,
            ConnectError::Tcp(e) | ConnectError::Resolve(e) => is_local_io(e),
            _ => false,
        }
    }
}

/// EMFILE, ENFILE, ENOBUFS, ENOMEM, EADDRNOTAVAIL, EADDRINUSE (Linux
/// numbers; `std` has no `ErrorKind` for the first four).
fn is_local_io(e: &io::Error) -> bool {
    const LOCAL: [i32; 4] = [24, 23, 105, 12];
    matches!(
        e.kind(),
        io::ErrorKind::AddrNotAvailable | io::ErrorKind::AddrInUse | io::ErrorKind::OutOfMemory
    ) || e.raw_os_error().is_some_and(|n| LOCAL.contains(&n))
}

/// Connects to `spec` and returns a sender ready for its first request,
/// HTTP/2 for `h2c` and `h2`, and for `auto` when ALPN picked `h2`.
/// `hold` lives as long as the connection (a pool's count of open ones).
pub async fn connect(
    spec: &EndpointSpec,
    tls: Option<&Arc<ClientConfig>>,
    protocol: Protocol,
    timeout: Duration,
    hold: impl Send + 'static,
) -> Result<Connected, ConnectError> {
    let io = tokio::time::timeout(timeout, transport(spec, tls))
        .await
        .map_err(|_| ConnectError::Timeout)??;
    let alpn_h2 = match &io {
        Either::Right(tls) => tls.get_ref().1.alpn_protocol() == Some(b"h2"),
        Either::Left(_) => false,
    };
    let h2 = match protocol {
        Protocol::Http1 => false,
        Protocol::H2c => true,
        Protocol::H2 if alpn_h2 => true,
        Protocol::H2 => return Err(ConnectError::NoH2),
        Protocol::Auto => alpn_h2,
    };
    if h2 {
        return handshake_h2(TokioIo::new(io), timeout, hold).await;
    }
    let (sender, conn) = http1::Builder::new()
        .max_buf_size(READ_BUF_MAX)
        // Flattened writes, as the client side's (see `proxy::server`):
        // cheaper than hyper's vectored flush for a request head and a
        // small body. A pooled connection keeps the buffer at the size of
        // the largest request body chunk it sent (at most the client
        // side's read buffer, `limits.max_header_bytes`).
        .writev(false)
        .handshake::<Io, RequestBody>(TokioIo::new(io))
        .await
        .map_err(ConnectError::Handshake)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
        drop(hold);
    });
    Ok(Connected::H1(sender))
}

/// The HTTP/2 handshake (the preface and SETTINGS are sent, the peer's
/// are read by the connection task). The task records the peer's
/// `SETTINGS_MAX_CONCURRENT_STREAMS` each time it runs, so the pool knows
/// when this connection is full (RFC 9113 §5.1.2).
async fn handshake_h2(
    io: Io,
    timeout: Duration,
    hold: impl Send + 'static,
) -> Result<Connected, ConnectError> {
    let handshake = http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONN_WINDOW)
        .max_send_buf_size(H2_SEND_BUF)
        // Until the peer's SETTINGS arrive, one stream at a time; more wait
        // inside the connection. Streams sent past a limit the peer has not
        // announced yet would be refused (REFUSED_STREAM), and hyper fails
        // such a request without handing it back for another connection.
        .initial_max_send_streams(super::h2::INITIAL_STREAMS)
        .handshake::<Io, RequestBody>(io);
    let (sender, conn) = tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| ConnectError::Timeout)?
        .map_err(ConnectError::H2Handshake)?;
    let state = Arc::new(H2State::new());
    let watch = state.clone();
    tokio::spawn(async move {
        let mut conn = std::pin::pin!(conn);
        let ended = std::future::poll_fn(|cx| {
            let polled = conn.as_mut().poll(cx);
            watch.set_peer_max(conn.as_ref().get_ref().current_max_send_streams());
            polled
        })
        .await;
        if let Err(e) = ended {
            tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
        }
        drop(hold);
    });
    Ok(Connected::H2(H2Conn { sender, state }))
}

/// The client config of `protocol`: the backend's, with the ALPN list of
/// the protocol (RFC 7301). A copy only when it differs.
pub fn with_alpn(config: &Arc<ClientConfig>, protocol: Protocol) -> Arc<ClientConfig> {
    let alpn = protocol.alpn();
    if config
        .alpn_protocols
        .iter()
        .map(Vec::as_slice)
        .eq(alpn.iter().copied())
    {
        return config.clone();
    }
    let mut c = (**config).clone();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

async fn transport(
    spec: &EndpointSpec,
    tls: Option<&Arc<ClientConfig>>,
) -> Result<Either<TcpStream, TlsStream<TcpStream>>, ConnectError> {
    let tcp = tcp(&spec.authority, spec.scheme == Scheme::HTTPS).await?;
    if spec.scheme != Scheme::HTTPS {
        return Ok(Either::Left(tcp));
    }
    let config = tls.cloned().ok_or(ConnectError::NoTlsConfig)?;
    let host = spec.authority.host().trim_matches(['[', ']']).to_owned();
    let name = ServerName::try_from(host)
        .map_err(|e| ConnectError::Tls(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(ConnectError::Tls)?;
    Ok(Either::Right(stream))
}

/// Tries each address of the authority in turn; the first that accepts wins.
async fn tcp(authority: &Authority, https: bool) -> Result<TcpStream, ConnectError> {
    let host = authority.host().trim_matches(['[', ']']);
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(ConnectError::Resolve)?
            .collect(),
    };
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let keepalive = TcpKeepalive::new().with_time(Duration::from_secs(60));
                let _ = SockRef::from(&stream).set_tcp_keepalive(&keepalive);
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(ConnectError::Tcp(last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_errors_are_local() {
        for n in [24, 23, 99, 98, 105, 12] {
            assert!(ConnectError::Tcp(io::Error::from_raw_os_error(n)).is_local());
        }
        for n in [111, 104, 113, 110] {
            assert!(!ConnectError::Tcp(io::Error::from_raw_os_error(n)).is_local());
        }
        assert!(!ConnectError::Timeout.is_local());
    }
}
