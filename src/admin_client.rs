//! The command line's client for the admin listener (`status`, `report`,
//! `rollout`): one HTTP/1.1 request, bounded in time, so a stuck proxy never
//! hangs an operator's shell.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// The whole exchange (connect, request, response body) must end within this.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// `method path` on the admin listener at `admin` (`http://host:port`), with
/// `Authorization: Bearer <token>` when given; the body of a 2xx answer.
pub fn request(
    admin: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<Bytes> {
    let base = admin.trim_end_matches('/');
    let uri: http::Uri = format!("{base}{path}")
        .parse()
        .context("--admin must be a URL like http://127.0.0.1:9901")?;
    let authority = uri
        .authority()
        .context("--admin needs host:port")?
        .to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(&authority)
            .await
            .with_context(|| format!("cannot connect to {authority}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut req = http::Request::builder()
            .method(method)
            .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header("host", &authority);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = sender
            .send_request(req.body(Full::new(Bytes::new()))?)
            .await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!(
                "admin answered {status}: {}",
                String::from_utf8_lossy(&body).trim()
            );
        }
        Ok(body)
    };
    rt.block_on(async {
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .with_context(|| format!("no answer from {authority} within {TIMEOUT:?}"))?
    })
}
