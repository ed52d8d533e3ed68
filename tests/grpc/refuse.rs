//! An h2c gRPC server, on the `h2` crate directly, that turns streams away
//! the ways HTTP/2 allows: every third stream of a connection is refused
//! (`REFUSED_STREAM`, RFC 9113 §8.7) unless its call (metadata `x-call`)
//! was refused before, so a call that is resent gets through; and every
//! connection is shut down with GOAWAY after `per_connection` streams. Accepted unary calls are
//! answered with the request's own message and `grpc-status: 0`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response};

#[derive(Default)]
pub struct State {
    pub answered: AtomicUsize,
    pub refused: AtomicUsize,
    pub connections: AtomicUsize,
    refused_calls: std::sync::Mutex<std::collections::HashSet<Vec<u8>>>,
}

pub struct Refusing {
    pub addr: SocketAddr,
    pub state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Refusing {
    pub async fn start(per_connection: usize) -> Refusing {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                st.connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve(stream, st.clone(), per_connection));
            }
        });
        Refusing { addr, state, task }
    }

    pub fn answered(&self) -> usize {
        self.state.answered.load(Ordering::Relaxed)
    }

    pub fn refused(&self) -> usize {
        self.state.refused.load(Ordering::Relaxed)
    }

    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::Relaxed)
    }
}

impl Drop for Refusing {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(stream: tokio::net::TcpStream, state: Arc<State>, per_connection: usize) {
    let Ok(mut conn) = h2::server::handshake(stream).await else {
        return;
    };
    let mut n = 0;
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        n += 1;
        let call = req
            .headers()
            .get("x-call")
            .map_or_else(Vec::new, |v| v.as_bytes().to_vec());
        if n % 3 == 2 && state.refused_calls.lock().unwrap().insert(call) {
            state.refused.fetch_add(1, Ordering::Relaxed);
            respond.send_reset(h2::Reason::REFUSED_STREAM);
            continue;
        }
        if n == per_connection {
            conn.graceful_shutdown();
        }
        let state = state.clone();
        tokio::spawn(async move {
            let mut body = req.into_body();
            let mut data = Vec::new();
            while let Some(Ok(chunk)) = body.data().await {
                let _ = body.flow_control().release_capacity(chunk.len());
                data.extend_from_slice(&chunk);
            }
            let head = Response::builder()
                .header("content-type", "application/grpc")
                .body(())
                .unwrap();
            let Ok(mut send) = respond.send_response(head, false) else {
                return;
            };
            let _ = send.send_data(Bytes::from(data), false);
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            if send.send_trailers(trailers).is_ok() {
                state.answered.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
}
