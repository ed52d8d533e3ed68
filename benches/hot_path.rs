//! Criterion micro-benchmarks of the request path's decisions: route match
//! (1, 1,000 and 10,000 routes), backend choice (weighted random, sticky
//! cookie with and without an HMAC signature, hashed header), and the header
//! rewrite. Each also prints the heap allocations it makes per operation,
//! counted by a wrapping global allocator.
//!
//! Run: `cargo bench --bench hot_path`

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use cutover::config::{self, Loaded};
use cutover::metrics::Metrics;
use cutover::proxy::headers;
use cutover::routing::RoutingTable;
use cutover::upstream::EndpointRegistry;
use http::{HeaderMap, HeaderValue};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations per call of `f`, over 10,000 calls.
fn allocations_per_op(mut f: impl FnMut()) -> f64 {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..10_000 {
        f();
    }
    (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / 10_000.0
}

fn table(routes: usize, route_extra: &str) -> RoutingTable {
    let mut text = String::from(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[backends.blue]\nendpoints = [\"127.0.0.1:9001\"]\n[backends.green]\nendpoints = [\"127.0.0.1:9002\"]\n",
    );
    for i in 0..routes.saturating_sub(1) {
        text.push_str(&format!(
            "[[routes]]\nname = \"r{i}\"\nhost = \"h{i}.example.com\"\nweights = {{ blue = 90, green = 10 }}\n"
        ));
    }
    text.push_str(&format!(
        "[[routes]]\nname = \"app\"\nweights = {{ blue = 90, green = 10 }}\n{route_extra}"
    ));
    let path = Path::new("bench.toml");
    let loaded = Loaded {
        config: config::parse(path, &text).expect("valid bench config"),
        path: path.into(),
        sha256: String::new(),
        fingerprint: String::new(),
    };
    let metrics = Metrics::new(&[0.001, 0.01, 0.1, 1.0]);
    let registry = EndpointRegistry::new(
        prometheus::IntCounterVec::new(prometheus::Opts::new("e", "e"), &["backend", "endpoint"])
            .unwrap(),
        1,
    );
    RoutingTable::build(&loaded, 1, &registry, &metrics)
}

fn route_match(c: &mut Criterion) {
    for n in [1usize, 1_000, 10_000] {
        let t = table(n, "");
        let host = format!("h{}.example.com", n / 2);
        let host = if n == 1 {
            "app.example.com".to_owned()
        } else {
            host
        };
        let mut run = || {
            black_box(t.find(Some(black_box(&host)), black_box("/api/items")));
        };
        println!(
            "route_match/{n}: {:.2} allocations/op",
            allocations_per_op(&mut run)
        );
        c.bench_function(&format!("route_match/{n}"), |b| b.iter(&mut run));
    }
}

fn choose(c: &mut Criterion) {
    let cases: [(&str, &str, &str); 4] = [
        ("weighted_random", "", ""),
        (
            "cookie",
            "sticky = { cookie = \"cutover\" }\n",
            "cutover=4242",
        ),
        (
            "cookie_signed",
            "sticky = { cookie = \"cutover\", secret = \"s3cret\" }\n",
            "",
        ),
        ("header_hash", "sticky = { header = \"x-user-id\" }\n", ""),
    ];
    for (name, extra, cookie) in cases {
        let t = table(1, extra);
        let route = t.find(None, "/").expect("route");
        let mut h = HeaderMap::new();
        h.insert("x-user-id", HeaderValue::from_static("user-12345"));
        let cookie = if name == "cookie_signed" {
            // A valid signed value, as the proxy itself would set it.
            let set = route
                .choose(&HeaderMap::new(), false)
                .set_cookie
                .expect("a new user gets a cookie");
            set.to_str().unwrap().split(';').next().unwrap().to_owned()
        } else {
            cookie.to_owned()
        };
        if !cookie.is_empty() {
            h.insert(
                "cookie",
                HeaderValue::from_str(&format!("session=abc; {cookie}")).unwrap(),
            );
        }
        let mut run = || {
            black_box(route.choose(black_box(&h), false));
        };
        println!(
            "choose/{name}: {:.2} allocations/op",
            allocations_per_op(&mut run)
        );
        c.bench_function(&format!("choose/{name}"), |b| b.iter(&mut run));
    }
}

fn header_rewrite(c: &mut Criterion) {
    let mut base = HeaderMap::new();
    base.insert("host", HeaderValue::from_static("shop.example.com"));
    base.insert("user-agent", HeaderValue::from_static("wrk"));
    base.insert("accept", HeaderValue::from_static("*/*"));
    base.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    let client = HeaderValue::from_static("127.0.0.1");
    let mut run = || {
        let mut h = base.clone();
        let mut fields = headers::Fields::of_request(&h);
        headers::strip_hop_by_hop(&mut h, &fields);
        let host = fields.host.take();
        headers::set_forwarded(&mut h, &client, false, host, fields.forwarded);
        black_box(h);
    };
    println!(
        "header_rewrite (includes cloning the map): {:.2} allocations/op",
        allocations_per_op(&mut run)
    );
    c.bench_function("header_rewrite", |b| b.iter(&mut run));
}

/// Recording a response: the whole `record` (the pair's striped Prometheus
/// series and the A/B evidence, relaxed adds on the thread's own stripes)
/// against the evidence alone.
fn record(c: &mut Criterion) {
    let metrics = Metrics::new(&[
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]);
    let handles = metrics.route(&"app".into(), &"green".into(), Some(10), false);
    // The children and the evidence are created on the first record.
    handles.record(200, false, 0.012);
    let evidence = handles.evidence().expect("a route has evidence").clone();
    let mut i = 0u64;
    let mut whole = || {
        i += 1;
        handles.record(if i.is_multiple_of(100) { 503 } else { 200 }, false, 0.012);
    };
    println!(
        "record (metrics + evidence): {:.2} allocations/op",
        allocations_per_op(&mut whole)
    );
    c.bench_function("record/metrics+evidence", |b| b.iter(&mut whole));
    let mut alone = || evidence.record(black_box(false), black_box(0.012));
    println!(
        "record (evidence alone): {:.2} allocations/op",
        allocations_per_op(&mut alone)
    );
    c.bench_function("record/evidence", |b| b.iter(&mut alone));
}

criterion_group!(benches, route_match, choose, header_rewrite, record);
criterion_main!(benches);
