//! Connects to endpoints: plain TCP for `http://`, TLS for `https://` with
//! the owning backend's client config (its CA, or the system roots) and SNI =
//! the endpoint's host. Configs are swapped on reload; only new connections
//! use them.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use http::Uri;
use http::uri::Authority;
use hyper_rustls::MaybeHttpsStream;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tower_service::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The TLS client config of every `https://` endpoint, by authority.
pub type TlsConfigs = ArcSwap<HashMap<Authority, Arc<ClientConfig>>>;

#[derive(Clone)]
pub struct Connector {
    http: HttpConnector,
    tls: Arc<TlsConfigs>,
}

impl Connector {
    pub fn new(http: HttpConnector, tls: Arc<TlsConfigs>) -> Connector {
        Connector { http, tls }
    }
}

impl Service<Uri> for Connector {
    type Response = MaybeHttpsStream<TokioIo<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = (uri.scheme() == Some(&http::uri::Scheme::HTTPS)).then(|| {
            let authority = uri.authority().cloned();
            let config = authority
                .as_ref()
                .and_then(|a| self.tls.load().get(a).cloned());
            (authority, config)
        });
        let connecting = self.http.call(uri);
        Box::pin(async move {
            let tcp = connecting.await?;
            let Some((authority, config)) = tls else {
                return Ok(MaybeHttpsStream::Http(tcp));
            };
            let config = config.ok_or("no TLS config for this endpoint")?;
            let host = authority.as_ref().map(|a| a.host()).unwrap_or_default();
            let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, TokioIo::new(tcp))
                .await?;
            Ok(MaybeHttpsStream::Https(TokioIo::new(stream)))
        })
    }
}
