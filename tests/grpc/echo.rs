//! A real gRPC service for the tests: tonic's generic server and client
//! (`tonic::server::Grpc`, `tonic::client::Grpc`) with the prost messages
//! of `echo.proto` derived by hand, so no `protoc` is needed. The server
//! speaks HTTP/2 only (h2c, or h2 over TLS), like a tonic or grpc-go server.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use http::uri::PathAndQuery;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::watch;
use tonic::codec::Streaming;
use tonic::metadata::MetadataMap;
use tonic::server::{
    ClientStreamingService, ServerStreamingService, StreamingService, UnaryService,
};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};
use tonic_prost::ProstCodec;

pub const UNARY: &str = "/test.Echo/Unary";
pub const SERVER_STREAM: &str = "/test.Echo/ServerStream";
pub const CLIENT_STREAM: &str = "/test.Echo/ClientStream";
pub const BIDI: &str = "/test.Echo/Bidi";

/// `test.Msg` of `echo.proto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Msg {
    #[prost(string, tag = "1")]
    pub text: String,
    #[prost(bytes = "vec", tag = "2")]
    pub data: Vec<u8>,
    #[prost(uint32, tag = "3")]
    pub count: u32,
    #[prost(uint64, tag = "4")]
    pub size: u64,
    #[prost(int32, tag = "5")]
    pub fail_code: i32,
    #[prost(uint32, tag = "6")]
    pub delay_ms: u32,
}

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    pub service: String,
}

/// `grpc.health.v1.HealthCheckResponse`: 1 SERVING, 2 NOT_SERVING.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    pub status: i32,
}

pub const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
pub const SERVING: i32 = 1;
pub const NOT_SERVING: i32 = 2;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type MsgStream = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send>>;

/// What the server saw.
#[derive(Default)]
pub struct State {
    pub name: String,
    pub calls: AtomicUsize,
    pub connections: AtomicUsize,
    /// Server streams dropped before they ended: the call was cancelled.
    pub cancelled: AtomicUsize,
    /// Request bytes read by client streams.
    pub received: AtomicU64,
    /// Non-zero: every unary call fails with this gRPC status.
    pub fail_all: AtomicI32,
    /// The `grpc-timeout` of the last call, as sent.
    pub last_timeout: std::sync::Mutex<Option<String>>,
    /// What `grpc.health.v1.Health/Check` answers (0: SERVING).
    pub health: AtomicI32,
    /// Health checks answered, and the service the last one asked about.
    pub health_checks: AtomicUsize,
    pub health_service: std::sync::Mutex<Option<String>>,
}

pub struct Server {
    pub addr: SocketAddr,
    pub state: Arc<State>,
    goaway: watch::Sender<u64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Server {
    /// h2c on 127.0.0.1:0.
    pub async fn start(name: &str) -> Server {
        Self::start_with(name, None, None).await
    }

    /// With the server's `SETTINGS_MAX_CONCURRENT_STREAMS` and, if given, TLS
    /// (ALPN h2).
    pub async fn start_with(
        name: &str,
        max_streams: Option<u32>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            name: name.to_owned(),
            ..State::default()
        });
        let (goaway, goaway_rx) = watch::channel(0u64);
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = &mut stopped => return,
                    r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                };
                st.connections.fetch_add(1, Ordering::Relaxed);
                let st = st.clone();
                let mut goaway = goaway_rx.clone();
                goaway.mark_unchanged();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(st.clone(), req));
                    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    b.max_concurrent_streams(max_streams);
                    let io: Box<dyn Io> = match tls {
                        None => Box::new(stream),
                        Some(cfg) => {
                            match tokio_rustls::TlsAcceptor::from(cfg).accept(stream).await {
                                Ok(s) => Box::new(s),
                                Err(_) => return,
                            }
                        }
                    };
                    let conn = b.serve_connection(TokioIo::new(io), svc);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => return,
                        _ = goaway.changed() => conn.as_mut().graceful_shutdown(),
                    }
                    let _ = conn.await;
                });
            }
        });
        Server {
            addr,
            state,
            goaway,
            stop: Some(stop),
        }
    }

    /// Sends GOAWAY on every open connection (a graceful shutdown of them);
    /// the server keeps accepting new ones.
    pub fn goaway(&self) {
        self.goaway.send_modify(|g| *g += 1);
    }

    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::Relaxed)
    }

    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::Relaxed)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

async fn handle(
    state: Arc<State>,
    req: http::Request<Incoming>,
) -> Result<http::Response<tonic::body::Body>, Infallible> {
    if req.uri().path() == HEALTH_CHECK {
        let mut grpc = tonic::server::Grpc::new(ProstCodec::<
            HealthCheckResponse,
            HealthCheckRequest,
        >::default());
        return Ok(grpc.unary(Health(state), req).await);
    }
    state.calls.fetch_add(1, Ordering::Relaxed);
    *state.last_timeout.lock().unwrap() = req
        .headers()
        .get("grpc-timeout")
        .map(|v| v.to_str().unwrap_or("?").to_owned());
    let mut grpc = tonic::server::Grpc::new(ProstCodec::<Msg, Msg>::default());
    let svc = Svc(state);
    let resp = match req.uri().path() {
        UNARY => grpc.unary(svc, req).await,
        SERVER_STREAM => grpc.server_streaming(svc, req).await,
        CLIENT_STREAM => grpc.client_streaming(svc, req).await,
        BIDI => grpc.streaming(svc, req).await,
        _ => Status::unimplemented("no such method").into_http(),
    };
    Ok(resp)
}

#[derive(Clone)]
struct Svc(Arc<State>);

/// The gRPC health service, answering what `State::health` says.
struct Health(Arc<State>);

impl UnaryService<HealthCheckRequest> for Health {
    type Response = HealthCheckResponse;
    type Future = BoxFuture<Result<Response<HealthCheckResponse>, Status>>;

    fn call(&mut self, req: Request<HealthCheckRequest>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            state.health_checks.fetch_add(1, Ordering::Relaxed);
            *state.health_service.lock().unwrap() = Some(req.into_inner().service);
            let status = match state.health.load(Ordering::Relaxed) {
                0 => SERVING,
                s => s,
            };
            Ok(Response::new(HealthCheckResponse { status }))
        })
    }
}

fn failure(code: i32) -> Status {
    let mut md = MetadataMap::new();
    md.insert("x-trailer", "kept".parse().unwrap());
    Status::with_metadata(Code::from_i32(code), "failing on purpose", md)
}

fn reply(state: &State, msg: Msg) -> Response<Msg> {
    let mut r = Response::new(Msg {
        text: state.name.clone(),
        ..msg
    });
    r.metadata_mut()
        .insert("x-backend", state.name.parse().unwrap());
    r
}

impl UnaryService<Msg> for Svc {
    type Response = Msg;
    type Future = BoxFuture<Result<Response<Msg>, Status>>;

    fn call(&mut self, req: Request<Msg>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            let msg = req.into_inner();
            if msg.delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(msg.delay_ms.into())).await;
            }
            let fail = match state.fail_all.load(Ordering::Relaxed) {
                0 => msg.fail_code,
                all => all,
            };
            if fail != 0 {
                return Err(failure(fail));
            }
            Ok(reply(&state, msg))
        })
    }
}

/// Counts a server stream dropped before its end.
struct Cancelled(Arc<State>, bool);

impl Drop for Cancelled {
    fn drop(&mut self) {
        if !self.1 {
            self.0.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl ServerStreamingService<Msg> for Svc {
    type Response = Msg;
    type ResponseStream = MsgStream;
    type Future = BoxFuture<Result<Response<MsgStream>, Status>>;

    fn call(&mut self, req: Request<Msg>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            let msg = req.into_inner();
            let guard = Cancelled(state.clone(), false);
            let stream = futures_util::stream::unfold((0u32, guard), move |(i, mut guard)| {
                let msg = msg.clone();
                let name = guard.0.name.clone();
                async move {
                    if i == msg.count {
                        guard.1 = true;
                        if msg.fail_code != 0 && i != u32::MAX {
                            return Some((Err(failure(msg.fail_code)), (u32::MAX, guard)));
                        }
                        return None;
                    }
                    if i == u32::MAX {
                        return None;
                    }
                    if msg.delay_ms > 0 {
                        tokio::time::sleep(Duration::from_millis(msg.delay_ms.into())).await;
                    }
                    let out = Msg {
                        text: name,
                        data: msg.data.clone(),
                        count: i,
                        ..Msg::default()
                    };
                    Some((Ok(out), (i + 1, guard)))
                }
            });
            let mut r = Response::new(Box::pin(stream) as MsgStream);
            r.metadata_mut()
                .insert("x-backend", state.name.parse().unwrap());
            Ok(r)
        })
    }
}

impl ClientStreamingService<Msg> for Svc {
    type Response = Msg;
    type Future = BoxFuture<Result<Response<Msg>, Status>>;

    fn call(&mut self, req: Request<Streaming<Msg>>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            let mut stream = req.into_inner();
            let (mut count, mut size) = (0u32, 0u64);
            while let Some(m) = stream.message().await? {
                count += 1;
                size += m.data.len() as u64;
                state
                    .received
                    .fetch_add(m.data.len() as u64, Ordering::Relaxed);
            }
            Ok(reply(
                &state,
                Msg {
                    count,
                    size,
                    ..Msg::default()
                },
            ))
        })
    }
}

impl StreamingService<Msg> for Svc {
    type Response = Msg;
    type ResponseStream = MsgStream;
    type Future = BoxFuture<Result<Response<MsgStream>, Status>>;

    fn call(&mut self, req: Request<Streaming<Msg>>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            let name = state.name.clone();
            let stream = req.into_inner().map(move |m| {
                m.map(|m| Msg {
                    text: name.clone(),
                    ..m
                })
            });
            Ok(reply(&state, Msg::default()).map(|_| Box::pin(stream) as MsgStream))
        })
    }
}

/// A client on one HTTP/2 connection (prior knowledge) to `addr`.
pub async fn client(addr: SocketAddr) -> Client {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connects to the proxy");
    Client(tonic::client::Grpc::new(channel))
}

pub struct Client(pub tonic::client::Grpc<Channel>);

impl Client {
    pub async fn unary(
        &mut self,
        req: impl tonic::IntoRequest<Msg>,
    ) -> Result<Response<Msg>, Status> {
        self.0.ready().await.unwrap();
        self.0
            .unary(
                req.into_request(),
                PathAndQuery::from_static(UNARY),
                ProstCodec::default(),
            )
            .await
    }

    pub async fn server_stream(&mut self, msg: Msg) -> Result<Response<Streaming<Msg>>, Status> {
        self.0.ready().await.unwrap();
        self.0
            .server_streaming(
                Request::new(msg),
                PathAndQuery::from_static(SERVER_STREAM),
                ProstCodec::default(),
            )
            .await
    }

    pub async fn client_stream(
        &mut self,
        msgs: impl Stream<Item = Msg> + Send + 'static,
    ) -> Result<Response<Msg>, Status> {
        self.0.ready().await.unwrap();
        self.0
            .client_streaming(
                Request::new(msgs),
                PathAndQuery::from_static(CLIENT_STREAM),
                ProstCodec::default(),
            )
            .await
    }

    pub async fn bidi(
        &mut self,
        msgs: impl Stream<Item = Msg> + Send + 'static,
    ) -> Result<Response<Streaming<Msg>>, Status> {
        self.0.ready().await.unwrap();
        self.0
            .streaming(
                Request::new(msgs),
                PathAndQuery::from_static(BIDI),
                ProstCodec::default(),
            )
            .await
    }
}
