//! HTTP/1 abuse through the real binary: slowloris (many connections,
//! first packets of one byte, heads trickled), slow request bodies, slow
//! readers of large responses, 10x `limits.max_connections` idle sockets,
//! and upgraded tunnels beyond the connection limit. Each attack must be
//! cut off by the limit that names it, keep the proxy's memory and
//! descriptors bounded (and give them back), and leave a legitimate client
//! served; the backend sees only requests the clients sent.

mod common;

use std::time::{Duration, Instant};

use common::abuse::{Prober, Sampler, fds, fds_back_to, usage};
use common::raw::{RawBackend, RawConn};

/// Descriptors that may come and go besides the attack's (pooled upstream
/// connections of the prober, the admin scrape).
const FD_SLACK: u64 = 8;

async fn open_and_in_flight(p: &common::Proxy) -> (f64, f64) {
    let text = p.metrics().await;
    (
        common::metric(&text, "cutover_connections_open", &[]),
        common::metric(&text, "cutover_requests_in_flight", &[]),
    )
}

/// Waits until every connection in `conns` is closed by the proxy, up to
/// `within`; returns how many were and when the last one was.
async fn all_closed(conns: Vec<RawConn>, within: Duration) -> (usize, Duration) {
    let started = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let got = c.read_until_close(within).await;
                (started.elapsed() < within, got)
            })
        })
        .collect();
    let mut closed = 0;
    for t in tasks {
        if t.await.unwrap().0 {
            closed += 1;
        }
    }
    (closed, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_one_byte_first_packets_and_trickled_heads_are_cut_at_header_read() {
    // 200 connections send one byte (`G`, or `P`, which could still be the
    // HTTP/2 preface) and stop; 50 more trickle a head a byte every 300 ms.
    // header_read (1 s, checked every quarter) cuts every one of them; a
    // legitimate client is served throughout.
    let (b, _g, p) = common::blue_green(
        100,
        0,
        "\n[timeouts]\nheader_read = \"1s\"\nidle = \"30s\"\n",
    )
    .await;
    let pid = p.child.id();
    let before = usage(pid);
    let sampler = Sampler::start(pid);
    let prober = Prober::start(p.http, "/probe");
    let started = Instant::now();
    let mut conns = Vec::new();
    for i in 0..200 {
        let mut c = RawConn::connect(p.http).await;
        c.send(if i % 2 == 0 { b"G" } else { b"P" }).await.unwrap();
        conns.push(c);
    }
    let tricklers: Vec<_> = (0..50)
        .map(|_| {
            let addr = p.http;
            tokio::spawn(async move {
                let mut c = RawConn::connect(addr).await;
                let head = b"GET /slowloris HTTP/1.1\r\nHost: h\r\nX-a: b\r\n\r\n";
                let t = Instant::now();
                for byte in head.chunks(1) {
                    if c.send(byte).await.is_err() {
                        return Some(t.elapsed());
                    }
                    if c.closed_within(Duration::from_millis(300)).await.0 {
                        return Some(t.elapsed());
                    }
                }
                None
            })
        })
        .collect();
    let (closed, took) = all_closed(conns, Duration::from_secs(10)).await;
    assert_eq!(closed, 200, "one-byte connections held 10 s ({took:?})");
    for t in tricklers {
        let cut = t.await.unwrap();
        let cut = cut.expect("a head trickled to its end was read (header_read is 1 s)");
        assert!(cut < Duration::from_secs(3), "trickler cut after {cut:?}");
    }
    let total = started.elapsed();
    let probed = prober.stop().await;
    let peak = sampler.stop();
    eprintln!(
        "slowloris: 250 connections cut within {total:?}; fds {} -> peak {}; RSS {} -> peak {} KiB; probe {probed:?}",
        before.fds, peak.fds, before.rss_kib, peak.rss_kib
    );
    // Connecting 200 on a loaded machine takes a while; each is cut 1 to
    // 1.25 s after its accept.
    assert!(total < Duration::from_secs(8), "took {total:?}");
    assert_eq!(probed.failed, 0, "legitimate client failed: {probed:?}");
    assert!(probed.ok >= 1, "{probed:?}");
    assert!(
        b.seen().iter().all(|s| s == "/probe"),
        "the backend saw requests no client completed: {:?}",
        b.seen()
    );
    // A connection costs one descriptor here; RSS a few KiB each.
    assert!(
        peak.fds <= before.fds + 250 + FD_SLACK,
        "{} -> {}",
        before.fds,
        peak.fds
    );
    assert!(
        peak.rss_kib < before.rss_kib + 16 * 1024,
        "RSS {} -> peak {} KiB",
        before.rss_kib,
        peak.rss_kib
    );
    let (back, now) = fds_back_to(pid, before.fds, FD_SLACK, Duration::from_secs(5)).await;
    assert!(back, "descriptors {} before, {now} after", before.fds);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_bodies_from_many_clients_are_cut_at_body_idle() {
    // 50 uploads announce 1 MB, send 10 bytes and stop: each gets 408
    // within body_idle (1 s, checked every eighth) and its upstream
    // connection is released.
    let (b, _g, p) =
        common::blue_green(100, 0, "\n[timeouts]\nbody_idle = \"1s\"\nidle = \"30s\"\n").await;
    let pid = p.child.id();
    let before = usage(pid);
    let sampler = Sampler::start(pid);
    let prober = Prober::start(p.http, "/probe");
    let started = Instant::now();
    let uploads: Vec<_> = (0..50)
        .map(|_| {
            let addr = p.http;
            tokio::spawn(async move {
                let mut c = RawConn::connect(addr).await;
                c.send(b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000\r\n\r\n0123456789")
                    .await
                    .unwrap();
                let r = c.read_response().await.map(|r| r.status);
                (r, c.closed_within(Duration::from_secs(5)).await.0)
            })
        })
        .collect();
    for u in uploads {
        let (status, closed) = u.await.unwrap();
        assert_eq!(status.ok(), Some(408));
        assert!(closed, "a connection answered 408 was kept open");
    }
    let took = started.elapsed();
    let released = common::eventually(Duration::from_secs(5), || async {
        open_and_in_flight(&p).await.1 == 0.0
    })
    .await;
    assert!(released, "{:?}", open_and_in_flight(&p).await);
    let probed = prober.stop().await;
    let peak = sampler.stop();
    eprintln!(
        "slow bodies: 50 cut in {took:?}; fds {} -> peak {}; RSS {} -> peak {} KiB; probe {probed:?}",
        before.fds, peak.fds, before.rss_kib, peak.rss_kib
    );
    assert!(took < Duration::from_secs(6), "took {took:?}");
    assert_eq!(probed.failed, 0, "legitimate client failed: {probed:?}");
    let uploads_seen = b.seen().iter().filter(|s| *s == "/upload").count();
    assert_eq!(uploads_seen, 50, "{:?}", b.seen());
    // Each upload holds its connection and an upstream one.
    assert!(
        peak.fds <= before.fds + 2 * 50 + FD_SLACK,
        "{} -> {}",
        before.fds,
        peak.fds
    );
    assert!(
        peak.rss_kib < before.rss_kib + 16 * 1024,
        "RSS {} -> peak {} KiB",
        before.rss_kib,
        peak.rss_kib
    );
    // Upstream connections of failed exchanges are closed, not pooled.
    let (back, now) = fds_back_to(pid, before.fds, FD_SLACK, Duration::from_secs(5)).await;
    assert!(back, "descriptors {} before, {now} after", before.fds);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_of_large_responses_hold_bounded_memory_and_are_cut() {
    // 20 clients ask for 50 MB each and read nothing: the proxy buffers at
    // most a few chunks per response (backpressure from the client socket
    // to the upstream one), never the 1 GB in all, and body_idle cuts them.
    let (_b, _g, p) =
        common::blue_green(100, 0, "\n[timeouts]\nbody_idle = \"1s\"\nidle = \"30s\"\n").await;
    let pid = p.child.id();
    let before = usage(pid);
    let sampler = Sampler::start(pid);
    let prober = Prober::start(p.http, "/probe");
    let mut conns = Vec::new();
    for _ in 0..20 {
        let mut c = RawConn::connect(p.http).await;
        c.send(b"GET /download/50000000 HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        conns.push(c);
    }
    let busy = common::eventually(Duration::from_secs(5), || async {
        open_and_in_flight(&p).await.1 >= 20.0
    })
    .await;
    assert!(busy, "{:?}", open_and_in_flight(&p).await);
    let started = Instant::now();
    let released = common::eventually(Duration::from_secs(10), || async {
        open_and_in_flight(&p).await.1 == 0.0
    })
    .await;
    let took = started.elapsed();
    assert!(released, "{:?}", open_and_in_flight(&p).await);
    let (closed, _) = all_closed(conns, Duration::from_secs(10)).await;
    let probed = prober.stop().await;
    let peak = sampler.stop();
    eprintln!(
        "slow readers: 20 x 50 MB cut in {took:?}; fds {} -> peak {}; RSS {} -> peak {} KiB; probe {probed:?}",
        before.fds, peak.fds, before.rss_kib, peak.rss_kib
    );
    assert_eq!(closed, 20);
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(probed.failed, 0, "legitimate client failed: {probed:?}");
    // A 64 KiB chunk in flight and hyper's write buffer per response: a
    // few hundred KiB each at most, 32 MiB in all is 1.6 MiB each.
    assert!(
        peak.rss_kib < before.rss_kib + 32 * 1024,
        "RSS {} -> peak {} KiB",
        before.rss_kib,
        peak.rss_kib
    );
    let (back, now) = fds_back_to(pid, before.fds, FD_SLACK, Duration::from_secs(5)).await;
    assert!(back, "descriptors {} before, {now} after", before.fds);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_times_max_connections_idle_sockets_wait_in_the_kernel_and_are_cycled() {
    // max_connections = 20; 200 sockets connect and send nothing. The proxy
    // holds at most 20 of them (the rest wait in the accept queue, costing
    // it nothing), closes each at header_read (300 ms), and takes the next;
    // a legitimate client queued behind them is served once its turn
    // comes, and the admin listener answers throughout.
    let (b, _g, p) = common::blue_green(
        100,
        0,
        "\n[timeouts]\nheader_read = \"300ms\"\nidle = \"30s\"\n\n[limits]\nmax_connections = 20\n",
    )
    .await;
    let pid = p.child.id();
    let before = usage(pid);
    let sampler = Sampler::start(pid);
    let mut conns = Vec::new();
    for _ in 0..200 {
        conns.push(RawConn::connect(p.http).await);
    }
    let health = common::client()
        .get(p.admin_url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let held = common::metric(&p.metrics().await, "cutover_connections_open", &[]);
    assert!(held <= 20.0, "{held} connections open");
    let started = Instant::now();
    let addr = p.http;
    let legit = tokio::spawn(async move {
        let mut c = RawConn::connect(addr).await;
        c.send(b"GET /probe HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        c.read_response().await.map(|r| r.status)
    });
    let (closed, took) = all_closed(conns, Duration::from_secs(15)).await;
    let status = legit.await.unwrap();
    let peak = sampler.stop();
    eprintln!(
        "10x max_connections: 200 idle sockets cycled in {took:?}, legit served after {:?}; fds {} -> peak {}",
        started.elapsed(),
        before.fds,
        peak.fds
    );
    assert_eq!(closed, 200, "idle sockets held past 15 s");
    // 10 rounds of 20, each 300 to 375 ms, plus scheduling.
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(status.ok(), Some(200));
    assert_eq!(b.seen(), ["/probe"]);
    assert!(
        peak.fds <= before.fds + 20 + FD_SLACK,
        "{} -> {} descriptors with max_connections = 20",
        before.fds,
        peak.fds
    );
    let (back, now) = fds_back_to(pid, before.fds, FD_SLACK, Duration::from_secs(5)).await;
    assert!(back, "descriptors {} before, {now} after", before.fds);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgraded_tunnels_beyond_the_connection_limit_queue_and_are_cut_at_tunnel_idle() {
    // A backend that accepts every upgrade and then holds the tunnel
    // silently. max_connections = 10; 30 clients upgrade and go quiet. At
    // most 10 tunnels exist at once (a tunnel keeps its connection's slot:
    // 2 descriptors each), tunnel_idle (500 ms) closes them, and the queued
    // clients get theirs in turn.
    let backend = RawBackend::start(|mut c| async move {
        if c.read_head().await.is_some() {
            let _ = c
                .write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x-test\r\n\r\n")
                .await;
            c.read_until_close(Duration::from_secs(20)).await;
        }
    })
    .await;
    let p = common::Proxy::start(&format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [timeouts]\ntunnel_idle = \"500ms\"\n\n[limits]\nmax_connections = 10\n\n\
         [backends.blue]\nendpoints = [\"{}\"]\n\n\
         [[routes]]\nname = \"app\"\nweights = {{ blue = 1 }}\n",
        backend.addr
    ))
    .await;
    let pid = p.child.id();
    let before = usage(pid);
    let sampler = Sampler::start(pid);
    let started = Instant::now();
    let clients: Vec<_> = (0..30)
        .map(|_| {
            let addr = p.http;
            tokio::spawn(async move {
                let mut c = RawConn::connect(addr).await;
                c.send(b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: x-test\r\n\r\n")
                    .await
                    .unwrap();
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    match c.read_n(1).await {
                        Ok(b) => head.extend(b),
                        Err(e) => return Err(format!("{e} after {:?}", String::from_utf8_lossy(&head))),
                    }
                }
                let upgraded = Instant::now();
                let (closed, _) = c.closed_within(Duration::from_secs(5)).await;
                Ok((head, closed, upgraded.elapsed()))
            })
        })
        .collect();
    for c in clients {
        let (head, closed, held) = c
            .await
            .unwrap()
            .expect("every client gets its tunnel in turn");
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{:?}",
            String::from_utf8_lossy(&head)
        );
        assert!(closed, "a silent tunnel was held past 5 s");
        assert!(held < Duration::from_secs(3), "held {held:?}");
    }
    let took = started.elapsed();
    let peak = sampler.stop();
    eprintln!(
        "tunnels: 30 through 10 slots in {took:?}; backend max open {}; fds {} -> peak {}",
        backend.max_open(),
        before.fds,
        peak.fds
    );
    assert_eq!(backend.accepted(), 30);
    // The proxy's descriptors are the measure: the backend, on the test's
    // loaded runtime, notices a tunnel's end well after the proxy closed
    // it and gave its slot to the next client (up to 15 open at once seen).
    assert!(
        peak.fds <= before.fds + 2 * 10 + FD_SLACK,
        "{} -> {} descriptors",
        before.fds,
        peak.fds
    );
    let (back, now) = fds_back_to(pid, before.fds, FD_SLACK, Duration::from_secs(5)).await;
    assert!(
        back,
        "descriptors {} before, {now} after ({})",
        before.fds,
        fds(pid)
    );
}
