//! A real HTTP backend for tests (hyper, HTTP/1.1 and h2c), on 127.0.0.1:0.
//!
//! Paths:
//! - anything else: 200, body = the backend's name, header `x-backend: name`
//! - `/echo`: 200, body = JSON `{"method","uri","headers":{name:[values]}}`
//! - `/sleep/MS`: waits MS milliseconds, then 200 with the name
//! - `/status/CODE`: answers CODE with the name as body
//! - `/download/BYTES`: streams BYTES bytes of `x` in 64 KiB chunks
//! - `/upload`: reads the body as a stream, answers the byte count
//! - `/upload-pause/MS`: like `/upload`, but stops reading for MS
//!   milliseconds after the first chunk (a slow consumer)
//! - `/hop`: 200 with hop-by-hop response headers (`Connection: x-hop`,
//!   `x-hop: 1`, `Keep-Alive`, `Proxy-Connection`, `Upgrade`) and an
//!   end-to-end `x-end: kept`
//!
//! Every request's path (with query) is recorded, see [`Backend::seen`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::oneshot;

type Body = BoxBody<Bytes, Infallible>;

pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    stop: Option<oneshot::Sender<()>>,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        Self::start_on("127.0.0.1:0".parse().unwrap(), name).await
    }

    /// Starts on a given address (to bring a stopped backend back).
    pub async fn start_on(addr: SocketAddr, name: &str) -> Backend {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind backend");
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = oneshot::channel();
        let name_owned = name.to_owned();
        let seen2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = &mut stopped => return,
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                };
                let name = name_owned.clone();
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(name.clone(), seen.clone(), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Backend {
            name: name.to_owned(),
            addr,
            seen,
            stop: Some(stop),
        }
    }

    /// Paths (with query) of every request received so far.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// Stops accepting new connections (existing ones finish).
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).map_err(|never| match never {}).boxed()
}

async fn handle(
    name: String,
    seen: Arc<Mutex<Vec<String>>>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    seen.lock().unwrap().push(path.clone());
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let first = parts.next().unwrap_or("");
    let arg = parts.next().unwrap_or("").split('?').next().unwrap_or("");
    let named = |status: StatusCode, body: Body| {
        let mut r = Response::new(body);
        *r.status_mut() = status;
        r.headers_mut().insert("x-backend", name.parse().unwrap());
        r
    };
    let resp = match first {
        "echo" => {
            let mut headers = serde_json::Map::new();
            for (k, v) in req.headers() {
                let e = headers
                    .entry(k.as_str().to_owned())
                    .or_insert_with(|| serde_json::Value::Array(vec![]));
                e.as_array_mut()
                    .unwrap()
                    .push(String::from_utf8_lossy(v.as_bytes()).into_owned().into());
            }
            let doc = serde_json::json!({
                "backend": name,
                "method": req.method().as_str(),
                "uri": req.uri().to_string(),
                "version": format!("{:?}", req.version()),
                "headers": headers,
            });
            named(StatusCode::OK, full(doc.to_string()))
        }
        "sleep" => {
            tokio::time::sleep(Duration::from_millis(arg.parse().unwrap_or(0))).await;
            named(StatusCode::OK, full(name.clone()))
        }
        "status" => named(
            StatusCode::from_u16(arg.parse().unwrap_or(500))
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            full(name.clone()),
        ),
        "download" => {
            let total: u64 = arg.parse().unwrap_or(0);
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let n = total / chunk.len() as u64;
            let rest = (total % chunk.len() as u64) as usize;
            let chunks = (0..n)
                .map(move |_| chunk.clone())
                .chain((rest > 0).then(|| Bytes::from(vec![b'x'; rest])));
            let s = stream::iter(chunks.map(|c| Ok::<_, Infallible>(Frame::data(c))));
            let mut r = named(StatusCode::OK, BodyExt::boxed(StreamBody::new(s)));
            r.headers_mut().insert("content-length", total.into());
            r
        }
        "upload" => {
            let mut body = req.into_body();
            let mut n = 0u64;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(_) => break,
                }
            }
            named(StatusCode::OK, full(n.to_string()))
        }
        "upload-pause" => {
            let pause = Duration::from_millis(arg.parse().unwrap_or(0));
            let mut body = req.into_body();
            let mut n = 0u64;
            let mut paused = false;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(_) => break,
                }
                if !paused {
                    paused = true;
                    tokio::time::sleep(pause).await;
                }
            }
            named(StatusCode::OK, full(n.to_string()))
        }
        "hop" => {
            let mut r = named(StatusCode::OK, full(name.clone()));
            let h = r.headers_mut();
            h.insert("connection", "x-hop".parse().unwrap());
            h.insert("x-hop", "1".parse().unwrap());
            h.insert("keep-alive", "timeout=5, max=100".parse().unwrap());
            h.insert("proxy-connection", "keep-alive".parse().unwrap());
            h.insert("upgrade", "foo/1".parse().unwrap());
            h.insert("x-end", "kept".parse().unwrap());
            r
        }
        _ => named(StatusCode::OK, full(name.clone())),
    };
    Ok(resp)
}
