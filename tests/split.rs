//! Weighted traffic split between named backends.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::Proxy;

/// Sends `n` GETs to `/` over `tasks` concurrent tasks and counts the answers
/// by backend name: (blue, green).
async fn count(p: &Proxy, n: usize, tasks: usize) -> (usize, usize) {
    let client = common::client();
    let next = Arc::new(AtomicUsize::new(0));
    let url = p.url("/");
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (client, next, url) = (client.clone(), next.clone(), url.clone());
            tokio::spawn(async move {
                let (mut blue, mut green) = (0usize, 0usize);
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    let resp = client.get(&url).send().await.expect("request");
                    assert_eq!(resp.status(), 200);
                    match resp.text().await.expect("body").as_str() {
                        "blue" => blue += 1,
                        "green" => green += 1,
                        other => panic!("unexpected body {other:?}"),
                    }
                }
                (blue, green)
            })
        })
        .collect();
    let (mut blue, mut green) = (0, 0);
    for h in handles {
        let (b, g) = h.await.unwrap();
        blue += b;
        green += g;
    }
    (blue, green)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ninety_ten_split_is_within_four_sigma() {
    let (b, g, p) = common::blue_green(90, 10, "").await;
    const N: usize = 10_000;
    let (blue, green) = count(&p, N, 32).await;
    assert_eq!(blue + green, N);

    // Each request goes to green independently with p = 0.1, so green's count
    // is Binomial(n, p): mean n p = 1000, sigma = sqrt(n p (1 - p))
    // = sqrt(10000 * 0.1 * 0.9) = 30. Four sigma (120) is crossed by chance
    // with probability about 6e-5.
    let p_green = 0.1;
    let mean = N as f64 * p_green;
    let sigma = (N as f64 * p_green * (1.0 - p_green)).sqrt();
    let deviation = (green as f64 - mean).abs();
    assert!(
        deviation <= 4.0 * sigma,
        "green got {green} of {N}; expected {mean} +- {} (4 sigma)",
        4.0 * sigma
    );
    // The backends saw exactly what the client counted.
    assert_eq!(g.seen().len(), green);
    assert_eq!(b.seen().len(), blue);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_weight_gets_nothing() {
    let (b, g, p) = common::blue_green(100, 0, "").await;
    const N: usize = 1_000;
    let (blue, green) = count(&p, N, 16).await;
    assert_eq!(green, 0, "a weight of 0 got traffic");
    assert_eq!(blue, N);
    assert!(g.seen().is_empty(), "green saw {:?}", g.seen().len());
    assert_eq!(b.seen().len(), N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_weight_first_in_name_order_gets_nothing() {
    // Blue sorts first: its empty range sits at the start of the table.
    let (b, g, p) = common::blue_green(0, 100, "").await;
    const N: usize = 1_000;
    let (blue, green) = count(&p, N, 16).await;
    assert_eq!(blue, 0, "a weight of 0 got traffic");
    assert_eq!(green, N);
    assert!(b.seen().is_empty());
    assert_eq!(g.seen().len(), N);
}
