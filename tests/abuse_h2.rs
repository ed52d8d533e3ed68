//! HTTP/2 abuse through the real binary, frames written by hand
//! (`common::h2raw`): rapid reset (CVE-2023-44487), CONTINUATION floods,
//! SETTINGS and PING floods from a client that never reads, and many
//! streams held at a zero window. Each attack must be cut off within its
//! limit, keep the proxy's memory and descriptors bounded (and give them
//! back), and leave a legitimate client on other connections served.

mod common;

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use common::abuse::{Prober, Sampler, fds_back_to, usage};
use common::h2raw::{self, ENHANCE_YOUR_CALM, Ended, H2Raw};

/// Short limits so every attack ends within seconds.
const LIMITS: &str = "\n[timeouts]\nidle = \"1s\"\ngraceful_close = \"1s\"\nbody_idle = \"1s\"\nheader_read = \"1s\"\n";

/// Descriptors that may come and go besides the attack's (pooled upstream
/// connections of the prober, the admin scrape, a worker's wakeups).
const FD_SLACK: u64 = 8;

async fn in_flight(p: &common::Proxy) -> f64 {
    common::metric(&p.metrics().await, "cutover_requests_in_flight", &[])
}

/// A proxy in front of `blue`, warmed up: one request served, so its
/// baseline includes a pooled upstream connection.
async fn warm_proxy() -> (common::Backend, common::Backend, common::Proxy) {
    let (b, g, p) = common::blue_green(100, 0, LIMITS).await;
    let r = common::raw::roundtrip(p.http, b"GET /warm HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    (b, g, p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_cut_off_and_never_reaches_the_backend_unbounded() {
    let (b, _g, p) = warm_proxy().await;
    let pid = p.child.id();
    let before = usage(pid);
    let sampler = Sampler::start(pid);
    let prober = Prober::start(p.http, "/probe");

    // Each stream: a GET to a slow path, cancelled at once. Batches of 100
    // pairs, as fast as the socket takes them, for at most 5 s.
    let H2Raw { reader, mut writer } = H2Raw::connect(p.http, &[]).await;
    let mut reader = reader;
    let ended = tokio::spawn(async move {
        let e = reader.until_goaway(Duration::from_secs(15)).await;
        (e, Instant::now())
    });
    let started = Instant::now();
    let mut sent = 0u32;
    let mut id = 1u32;
    while started.elapsed() < Duration::from_secs(5) && !ended.is_finished() {
        let mut batch = Vec::new();
        for _ in 0..100 {
            batch.extend(h2raw::get(id, "h", "/sleep/5000"));
            batch.extend(h2raw::rst_stream(id, h2raw::CANCEL));
            id += 2;
        }
        match tokio::time::timeout(Duration::from_secs(1), writer.write_all(&batch)).await {
            Ok(Ok(())) => sent += 100,
            _ => break,
        }
    }
    let (how, at) = ended.await.unwrap();
    let took = at.duration_since(started);
    assert!(
        matches!(how, Ended::GoAway(ENHANCE_YOUR_CALM) | Ended::Closed),
        "rapid reset not cut off: {how:?} after {sent} streams in {took:?}"
    );
    assert!(took < Duration::from_secs(5), "cut off after {took:?}");
    // h2 refuses a connection once 20 streams reset before being served
    // pile up (`max_pending_accept_reset_streams`); streams served before
    // the reset reach the backend but are cancelled there.
    let seen = b.seen().iter().filter(|s| *s == "/sleep/5000").count();
    assert!(
        seen <= 1000,
        "{seen} of {sent} reset streams reached the backend"
    );
    // Cancelled upstream: nothing left in flight long before the 5 s sleep.
    let idle = common::eventually(Duration::from_secs(3), || async {
        in_flight(&p).await == 0.0
    })
    .await;
    assert!(
        idle,
        "reset streams still in flight: {}",
        in_flight(&p).await
    );
    let probed = prober.stop().await;
    let peak = sampler.stop();
    assert_eq!(probed.failed, 0, "legitimate client failed: {probed:?}");
    assert!(probed.ok >= 1, "{probed:?}");
    assert!(
        peak.rss_kib < before.rss_kib + 64 * 1024,
        "RSS {} KiB -> peak {} KiB",
        before.rss_kib,
        peak.rss_kib
    );
    let (back, now) = fds_back_to(pid, before.fds, FD_SLACK, Duration::from_secs(5)).await;
    assert!(back, "descriptors {} before, {now} after", before.fds);
    eprintln!(
        "rapid reset: {how:?} after {sent} streams sent in {took:?}; backend saw {seen}; \
         RSS {} -> peak {} KiB; probe {probed:?}",
        before.rss_kib, peak.rss_kib
    );
}

/// Sends `frames` over and over until the proxy ends the connection or
/// stops reading (the socket's buffers full for 1 s), or `within` passes.
/// Returns how it ended, the bytes written, and how long it took.
async fn flood(
    c: H2Raw,
    first: &[u8],
    frames: &[u8],
    within: Duration,
) -> (Ended, u64, Duration, H2Raw) {
    let H2Raw { reader, mut writer } = c;
    let mut reader = reader;
    let ended = tokio::spawn(async move {
        let e = reader.until_goaway(within + Duration::from_secs(5)).await;
        (e, Instant::now(), reader)
    });
    let started = Instant::now();
    let mut written = 0u64;
    let _ = writer.write_all(first).await;
    while started.elapsed() < within && !ended.is_finished() {
        match tokio::time::timeout(Duration::from_secs(1), writer.write_all(frames)).await {
            Ok(Ok(())) => written += frames.len() as u64,
            _ => break,
        }
    }
    let (how, at, reader) = ended.await.unwrap();
    (
        how,
        written,
        at.duration_since(started),
        H2Raw { reader, writer },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_is_cut_off_at_the_header_limit() {
    // `limits.max_header_bytes` (16 KiB here) bounds the header block a
    // stream may send in HEADERS + CONTINUATION frames; frames past it end
    // the connection instead of being buffered.
    let (b, _g, p) = common::blue_green(
        100,
        0,
        &format!("{LIMITS}\n[limits]\nmax_header_bytes = 16384\n"),
    )
    .await;
    let pid = p.child.id();
    let before = usage(pid);
    let sampler = Sampler::start(pid);
    let prober = Prober::start(p.http, "/probe");
    for empty in [false, true] {
        let c = H2Raw::connect(p.http, &[]).await;
        // HEADERS without END_HEADERS, then CONTINUATION after
        // CONTINUATION, none ending the block: of 4 KiB of header fields
        // each, or empty (the frames alone cost the server).
        let first = h2raw::frame(h2raw::HEADERS, 0, 1, &h2raw::get_block("h", "/flood"));
        let mut pad = Vec::new();
        while pad.len() < 4096 {
            h2raw::literal(&mut pad, "x-pad", &"x".repeat(100));
        }
        let one = if empty {
            h2raw::frame(h2raw::CONTINUATION, 0, 1, &[])
        } else {
            h2raw::frame(h2raw::CONTINUATION, 0, 1, &pad)
        };
        let frames: Vec<u8> = one.iter().copied().cycle().take(one.len() * 256).collect();
        let (how, written, took, _c) = flood(c, &first, &frames, Duration::from_secs(5)).await;
        assert!(
            how != Ended::Open,
            "CONTINUATION flood (empty frames: {empty}) not cut off: {written} bytes in {took:?}"
        );
        assert!(took < Duration::from_secs(5), "cut off after {took:?}");
        eprintln!("continuation flood (empty: {empty}): {how:?} after {written} bytes in {took:?}");
    }
    assert!(
        !b.seen().iter().any(|s| s == "/flood"),
        "a flooded header block reached the backend: {:?}",
        b.seen()
    );
    let probed = prober.stop().await;
    let peak = sampler.stop();
    assert_eq!(probed.failed, 0, "legitimate client failed: {probed:?}");
    assert!(
        peak.rss_kib < before.rss_kib + 32 * 1024,
        "RSS {} KiB -> peak {} KiB",
        before.rss_kib,
        peak.rss_kib
    );
    let (back, now) = fds_back_to(pid, before.fds, FD_SLACK, Duration::from_secs(5)).await;
    assert!(back, "descriptors {} before, {now} after", before.fds);
}

/// A client that floods `frames` (each asking for an answer: a SETTINGS
/// ACK, a PING ACK) and never reads: the proxy's answers back up, so it
/// must stop reading (TCP flow control) or close, never queue without
/// bound; once the client goes quiet, `idle` + `graceful_close` close it.
async fn never_reading_flood(one: Vec<u8>, what: &str) {
    let (_b, _g, p) = warm_proxy().await;
    let pid = p.child.id();
    let before = usage(pid);
    let sampler = Sampler::start(pid);
    let prober = Prober::start(p.http, "/probe");
    let mut c = H2Raw::connect(p.http, &[]).await;
    let frames: Vec<u8> = one.iter().copied().cycle().take(one.len() * 1000).collect();
    let started = Instant::now();
    let mut written = 0u64;
    while started.elapsed() < Duration::from_secs(3) {
        match c.send_within(&frames, Duration::from_secs(1)).await {
            Ok(true) => written += frames.len() as u64,
            _ => break,
        }
    }
    let flooded = started.elapsed();
    // Quiet now, still not reading: closed within idle + graceful_close
    // (1 s + 1 s, each checked up to a quarter late), with margin.
    let quiet = Instant::now();
    let closed = c.reader.closed_within(Duration::from_secs(8)).await;
    let probed = prober.stop().await;
    let peak = sampler.stop();
    eprintln!(
        "{what} flood: {written} bytes in {flooded:?}, closed {:?} after going quiet; \
         RSS {} -> peak {} KiB; probe {probed:?}",
        quiet.elapsed(),
        before.rss_kib,
        peak.rss_kib
    );
    assert!(
        closed,
        "a {what} flooder was still connected 8 s after going quiet"
    );
    assert_eq!(probed.failed, 0, "legitimate client failed: {probed:?}");
    assert!(probed.ok >= 1, "{probed:?}");
    assert!(
        peak.rss_kib < before.rss_kib + 32 * 1024,
        "{what} flood: RSS {} KiB -> peak {} KiB after {written} bytes",
        before.rss_kib,
        peak.rss_kib
    );
    let (back, now) = fds_back_to(pid, before.fds, FD_SLACK, Duration::from_secs(5)).await;
    assert!(back, "descriptors {} before, {now} after", before.fds);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settings_flood_from_a_client_that_never_reads_stays_bounded() {
    never_reading_flood(h2raw::settings(&[(0x3, 100)]), "SETTINGS").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_from_a_client_that_never_reads_stays_bounded() {
    never_reading_flood(h2raw::ping(*b"flooding"), "PING").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_streams_at_a_zero_window_stay_bounded_and_are_cut_off() {
    // 4 connections x 100 streams of 1 MB at a window of 0: each stream
    // may buffer one window (64 KiB) of response, so the proxy's memory is
    // bounded by 400 x 64 KiB = 25 MiB whatever the responses' size; all
    // are cut off by `body_idle`.
    let (_b, _g, p) = common::blue_green(
        100,
        0,
        // Only body_idle short: 400 streams of 1 MB keep two shared cores
        // busy, so a 1 s header_read could cut the prober's own head.
        "\n[timeouts]\nbody_idle = \"1s\"\n\n[limits]\nmax_concurrent_streams = 100\n",
    )
    .await;
    let pid = p.child.id();
    let before = usage(pid);
    let sampler = Sampler::start(pid);
    let prober = Prober::start(p.http, "/probe");
    let mut conns = Vec::new();
    for _ in 0..4 {
        let mut c = H2Raw::connect(p.http, &[(h2raw::INITIAL_WINDOW_SIZE, 0)]).await;
        let mut streams = Vec::new();
        for i in 0..100u32 {
            streams.extend(h2raw::get(1 + 2 * i, "h", "/download/1000000"));
        }
        c.send(&streams).await.unwrap();
        conns.push(c);
    }
    let pinned = common::eventually(Duration::from_secs(5), || async {
        in_flight(&p).await >= 400.0
    })
    .await;
    assert!(pinned, "in flight: {}", in_flight(&p).await);
    let started = Instant::now();
    let closing: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move { c.reader.closed_within(Duration::from_secs(10)).await })
        })
        .collect();
    for c in closing {
        assert!(c.await.unwrap(), "a zero-window connection was held 10 s");
    }
    let took = started.elapsed();
    let probed = prober.stop().await;
    let peak = sampler.stop();
    eprintln!(
        "zero window: 400 streams cut off in {took:?}; RSS {} -> peak {} KiB; probe {probed:?}",
        before.rss_kib, peak.rss_kib
    );
    // body_idle is 1 s, checked every eighth: cut within 1.25 s of the
    // last byte moving, plus scheduling on a loaded machine.
    assert!(took < Duration::from_secs(5), "cut off after {took:?}");
    assert_eq!(probed.failed, 0, "legitimate client failed: {probed:?}");
    assert!(
        peak.rss_kib < before.rss_kib + 64 * 1024,
        "RSS {} KiB -> peak {} KiB",
        before.rss_kib,
        peak.rss_kib
    );
    let released = common::eventually(Duration::from_secs(5), || async {
        in_flight(&p).await == 0.0
    })
    .await;
    assert!(released, "in flight: {}", in_flight(&p).await);
    let (back, now) = fds_back_to(pid, before.fds, FD_SLACK, Duration::from_secs(5)).await;
    assert!(back, "descriptors {} before, {now} after", before.fds);
}
