//! Bodies are streamed, never collected: 256 MiB each way pass through while
//! the proxy's resident memory stays under 64 MiB.

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use common::Proxy;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;

const TOTAL: u64 = 256 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;
/// The proxy's RSS must stay under this during a transfer.
const RSS_LIMIT_KIB: u64 = 64 * 1024;

/// Runs `transfer` while sampling the proxy's RSS every 50 ms; returns its
/// output, the largest RSS seen (KiB) and the number of samples.
async fn sampling_rss<F: Future>(p: &Proxy, transfer: F) -> (F::Output, u64, usize) {
    let mut transfer = std::pin::pin!(transfer);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let (mut max, mut samples) = (0u64, 0usize);
    loop {
        tokio::select! {
            out = &mut transfer => return (out, max, samples),
            _ = tick.tick() => {
                max = max.max(p.rss_kib());
                samples += 1;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_of_256_mib_streams_through() {
    let (b, _g, p) = common::blue_green(100, 0, "").await;
    let before = p.rss_kib();
    assert!(before > 0, "cannot read the proxy's RSS");

    let upload = async {
        let stream = tokio::net::TcpStream::connect(p.http).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        // One 64 KiB buffer, shared by every chunk: the client holds no more.
        let chunk = Bytes::from(vec![b'u'; CHUNK]);
        let chunks = futures_util::stream::iter(
            (0..TOTAL / CHUNK as u64).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))),
        );
        // The backend stops reading for a while after the first chunk: a
        // proxy that buffered instead of applying backpressure would take in
        // the whole body meanwhile.
        let req = hyper::Request::post("/upload-pause/500")
            .header("host", "upload.test")
            .header("content-length", TOTAL)
            .body(StreamBody::new(chunks))
            .unwrap();
        let resp = send.send_request(req).await.expect("response head");
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .expect("response body")
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    let ((status, body), max, samples) = sampling_rss(&p, upload).await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        TOTAL.to_string(),
        "the backend counted a different number of bytes"
    );
    assert_eq!(b.seen(), ["/upload-pause/500"]);
    assert!(
        samples >= 2,
        "the transfer was too quick to sample ({samples} samples)"
    );
    assert!(
        max < RSS_LIMIT_KIB,
        "proxy RSS reached {max} KiB (limit {RSS_LIMIT_KIB} KiB; {before} KiB before)"
    );
    eprintln!("upload: RSS before {before} KiB, max {max} KiB over {samples} samples");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_upload_streams_through() {
    // Without Content-Length the body is chunked on both sides; 64 MiB is
    // enough to show it is not buffered.
    const SIZE: u64 = 64 * 1024 * 1024;
    let (_b, _g, p) = common::blue_green(100, 0, "").await;
    let upload = async {
        let stream = tokio::net::TcpStream::connect(p.http).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let chunk = Bytes::from(vec![b'c'; CHUNK]);
        let chunks = futures_util::stream::iter(
            (0..SIZE / CHUNK as u64).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))),
        );
        let req = hyper::Request::post("/upload")
            .header("host", "upload.test")
            .body(StreamBody::new(chunks))
            .unwrap();
        let resp = send.send_request(req).await.expect("response head");
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    let ((status, body), max, _) = sampling_rss(&p, upload).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, SIZE.to_string());
    assert!(max < RSS_LIMIT_KIB, "proxy RSS reached {max} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_of_256_mib_streams_through() {
    let (b, _g, p) = common::blue_green(100, 0, "").await;
    let before = p.rss_kib();
    assert!(before > 0, "cannot read the proxy's RSS");

    let download = async {
        let mut resp = common::client()
            .get(p.url(&format!("/download/{TOTAL}")))
            .timeout(Duration::from_secs(300))
            .send()
            .await
            .expect("response head");
        assert_eq!(resp.status(), 200);
        let declared = resp.content_length();
        let mut n = 0u64;
        let mut all_x = true;
        let mut stalled = false;
        // Counted chunk by chunk, never collected.
        while let Some(chunk) = resp.chunk().await.expect("body chunk") {
            all_x &= chunk.iter().all(|c| *c == b'x');
            n += chunk.len() as u64;
            if !stalled && n >= 16 * 1024 * 1024 {
                // A slow client: a proxy that buffered instead of applying
                // backpressure would take in the rest from the backend now.
                stalled = true;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        (declared, n, all_x)
    };
    let ((declared, n, all_x), max, samples) = sampling_rss(&p, download).await;

    assert_eq!(n, TOTAL, "the client received a different number of bytes");
    assert_eq!(declared, Some(TOTAL), "Content-Length passes through");
    assert!(all_x, "the body was altered");
    assert_eq!(b.seen(), [format!("/download/{TOTAL}")]);
    assert!(
        samples >= 2,
        "the transfer was too quick to sample ({samples} samples)"
    );
    assert!(
        max < RSS_LIMIT_KIB,
        "proxy RSS reached {max} KiB (limit {RSS_LIMIT_KIB} KiB; {before} KiB before)"
    );
    eprintln!("download: RSS before {before} KiB, max {max} KiB over {samples} samples");
}
