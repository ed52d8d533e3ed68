//! Opening a connection to an endpoint: resolve (IP literals skip the
//! resolver), TCP connect, TLS for `https://` (the backend's client config,
//! SNI = the endpoint's host), all within the connect timeout; then an
//! HTTP/1.1 handshake whose connection task runs on the calling runtime.
//!
//! The TLS client config travels with the endpoint (see
//! [`super::Endpoint::tls`]), so it is published in the same routing table
//! snapshot: a request on an older table never looks it up in a newer map.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

use super::body::RequestBody;
use crate::config::EndpointSpec;

/// The sending half of an upstream HTTP/1.1 connection.
pub type Sender = http1::SendRequest<RequestBody>;

/// The most an upstream connection buffers while reading (hyper's default
/// is 408 KiB): a response head must fit, bodies stream through it.
const READ_BUF_MAX: usize = 64 * 1024;

type Io = TokioIo<Either<TcpStream, TlsStream<TcpStream>>>;

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

/// Connects to `spec` and returns a sender ready for its first request.
/// `hold` lives as long as the connection (a pool's count of open ones).
pub async fn connect(
    spec: &EndpointSpec,
    tls: Option<&Arc<ClientConfig>>,
    timeout: Duration,
    hold: impl Send + 'static,
) -> Result<Sender, ConnectError> {
    let io = tokio::time::timeout(timeout, transport(spec, tls))
        .await
        .map_err(|_| ConnectError::Timeout)??;
    let (sender, conn) = http1::Builder::new()
        .max_buf_size(READ_BUF_MAX)
        .handshake::<Io, RequestBody>(TokioIo::new(io))
        .await
        .map_err(ConnectError::Handshake)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
        drop(hold);
    });
    Ok(sender)
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
