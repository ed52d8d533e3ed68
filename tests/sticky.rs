//! Sticky buckets (issue 3) against the real binary: cookies, signed
//! cookies, header hashing, weight changes by hot reload, drain mode and
//! failover. Every request names its backend twice: in the body (the test
//! backend answers its own name) and in `x-cutover-backend`
//! (`expose_backend_header = true`); the two must agree.
mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Backend, Proxy};
use futures_util::{StreamExt, stream};

/// Requests in flight at once per phase: modest, the CI machine has 2 cores
/// shared with every other test binary.
const PARALLEL: usize = 16;

/// What one response said.
#[derive(Debug, Clone)]
struct Hit {
    backend: String,
    /// The whole `Set-Cookie` line, if the proxy sent one.
    set_cookie: Option<String>,
}

impl Hit {
    /// The value of the sticky cookie named `name` that the proxy set.
    fn cookie(&self, name: &str) -> Option<String> {
        let line = self.set_cookie.as_deref()?;
        let first = line.split(';').next()?;
        let (k, v) = first.split_once('=')?;
        (k.trim() == name).then(|| v.to_owned())
    }
}

/// GET `/` with the given extra headers; panics on anything but a 200 whose
/// body and `x-cutover-backend` agree.
async fn hit(c: &reqwest::Client, p: &Proxy, headers: &[(&str, &str)]) -> Hit {
    let mut req = c.get(p.url("/"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request reaches the proxy");
    let status = resp.status();
    let exposed = resp
        .headers()
        .get("x-cutover-backend")
        .map(|v| v.to_str().unwrap().to_owned());
    let cookies: Vec<String> = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let body = resp.text().await.unwrap();
    assert_eq!(status, 200, "body: {body}");
    assert_eq!(
        exposed.as_deref(),
        Some(body.as_str()),
        "x-cutover-backend names the backend that answered"
    );
    assert!(cookies.len() <= 1, "at most one Set-Cookie: {cookies:?}");
    Hit {
        backend: body,
        set_cookie: cookies.into_iter().next(),
    }
}

/// GET `/` as a user holding sticky cookie `name=value` (or none).
async fn hit_with(c: &reqwest::Client, p: &Proxy, name: &str, value: Option<&str>) -> Hit {
    match value {
        Some(v) => hit(c, p, &[("cookie", &format!("{name}={v}"))]).await,
        None => hit(c, p, &[]).await,
    }
}

/// Runs `n` first visits (no cookie) in parallel; returns each user's hit.
async fn first_visits(c: &reqwest::Client, p: &Proxy, n: usize) -> Vec<Hit> {
    stream::iter(0..n)
        .map(|_| hit(c, p, &[]))
        .buffered(PARALLEL)
        .collect()
        .await
}

/// Replays each cookie value once, in parallel, keeping the order.
async fn replay(c: &reqwest::Client, p: &Proxy, name: &str, values: &[String]) -> Vec<Hit> {
    stream::iter(values.iter())
        .map(|v| hit_with(c, p, name, Some(v)))
        .buffered(PARALLEL)
        .collect()
        .await
}

/// The bucket a cookie holds: the documented value is
/// `<bucket>[.<backend>][.<signature>]` (src/routing/sticky.rs).
fn bucket_of(value: &str) -> u16 {
    value
        .split('.')
        .next()
        .unwrap()
        .parse()
        .expect("the cookie starts with its bucket")
}

/// `[(name, weight, [start, end))]` of a route in `/admin/state`.
fn state_backends(state: &serde_json::Value, route: &str) -> Vec<(String, u64, (u64, u64))> {
    let r = state["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == route)
        .unwrap_or_else(|| panic!("route {route} in {state}"));
    r["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let range = b["buckets"].as_array().unwrap();
            (
                b["name"].as_str().unwrap().to_owned(),
                b["weight"].as_u64().unwrap(),
                (range[0].as_u64().unwrap(), range[1].as_u64().unwrap()),
            )
        })
        .collect()
}

/// Which backend `/admin/state` says owns `bucket`.
fn owner(backends: &[(String, u64, (u64, u64))], bucket: u16) -> &str {
    let b = u64::from(bucket);
    let owners: Vec<&str> = backends
        .iter()
        .filter(|(_, _, (s, e))| *s <= b && b < *e)
        .map(|(n, _, _)| n.as_str())
        .collect();
    assert_eq!(
        owners.len(),
        1,
        "exactly one backend owns bucket {bucket}: {backends:?}"
    );
    owners[0]
}

/// Rewrites the config atomically and waits until `/admin/state` shows
/// `weight` for `backend` of route `app` (`None`: the backend left the route).
async fn reload_to(p: &Proxy, config: &str, backend: &str, weight: Option<u64>) {
    p.write_config(config);
    let ok = common::eventually(Duration::from_secs(10), || async {
        let s = p.state().await;
        let w = state_backends(&s, "app")
            .into_iter()
            .find(|(n, _, _)| n == backend)
            .map(|(_, w, _)| w);
        w == weight
    })
    .await;
    assert!(
        ok,
        "the reload to {backend}={weight:?} never showed in /admin/state: {}",
        p.state().await
    );
}

fn route(weights: &str, extra: &str) -> String {
    format!(
        "[[routes]]\nname = \"app\"\nweights = {{ {weights} }}\nexpose_backend_header = true\n{extra}\n"
    )
}

fn two(b: &Backend, g: &Backend, weights: &str, extra: &str) -> String {
    common::config(&[("blue", &[b]), ("green", &[g])], &route(weights, extra))
}

const STICKY: &str =
    "sticky = { cookie = \"cutover\", max_age = \"1h\", secret = \"s3cret-for-tests\" }";

/// At most this many standard deviations from the mean of a binomial.
fn within_sigmas(observed: usize, n: usize, p: f64, sigmas: f64) -> bool {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    (observed as f64 - mean).abs() <= sigmas * sd
}

/// 2,000 users at 10% green; green goes to 50% by hot reload.
///
/// The math: a user's bucket is uniform on 0..10000. Backends sorted by
/// name own contiguous ranges, so at blue 90 / green 10 blue owns [0, 9000)
/// and green [9000, 10000); at 50/50 blue owns [0, 5000), green
/// [5000, 10000).
/// - A green user (bucket >= 9000) is still >= 5000: every one stays green.
///   This is exact, no statistics.
/// - A blue user's bucket is uniform on [0, 9000); it moves iff it lies in
///   [5000, 9000): p = 4000 / 9000 = 4/9. Given n_blue blue users, the number
///   that move is Binomial(n_blue, 4/9): for n_blue ~ 1800, mean 800 and
///   sigma = sqrt(1800 * 4/9 * 5/9) ~ 21.1. We accept 4 sigma (~84), so a
///   correct proxy fails this about once in 16,000 runs.
/// - The first split itself: green users ~ Binomial(2000, 0.1), mean 200,
///   sigma ~ 13.4; also checked at 4 sigma.
///
/// On top of the statistics, each user's backend must be exactly the owner
/// of the bucket in their cookie according to `/admin/state`'s ranges.
#[tokio::test]
async fn green_users_stay_green_and_four_ninths_of_blue_move_when_green_goes_from_10_to_50() {
    const USERS: usize = 2000;
    let b = Backend::start("blue").await;
    let g = Backend::start("green").await;
    let p = Proxy::start(&two(&b, &g, "blue = 90, green = 10", STICKY)).await;
    let c = common::client();

    let ranges = state_backends(&p.state().await, "app");
    assert_eq!(
        ranges,
        vec![
            ("blue".into(), 90, (0, 9000)),
            ("green".into(), 10, (9000, 10000))
        ]
    );

    // First visits: no cookie, so each user gets one.
    let first = first_visits(&c, &p, USERS).await;
    let cookies: Vec<String> = first
        .iter()
        .map(|h| {
            h.cookie("cutover")
                .unwrap_or_else(|| panic!("a first visit sets the cookie: {h:?}"))
        })
        .collect();
    for (h, v) in first.iter().zip(&cookies) {
        assert_eq!(
            h.backend,
            owner(&ranges, bucket_of(v)),
            "first visit routed by its bucket ({v})"
        );
    }
    let was_green: Vec<bool> = first.iter().map(|h| h.backend == "green").collect();
    let n_green = was_green.iter().filter(|g| **g).count();
    assert!(
        within_sigmas(n_green, USERS, 0.1, 4.0),
        "{n_green} of {USERS} users on green at 10%"
    );

    // Later visits with the cookie: same backend, no new cookie.
    let again = replay(&c, &p, "cutover", &cookies).await;
    for (i, h) in again.iter().enumerate() {
        assert_eq!(
            h.backend, first[i].backend,
            "user {i} moved without a weight change"
        );
        assert!(
            h.set_cookie.is_none(),
            "a valid cookie is not re-set: {h:?}"
        );
    }

    // Green to 50% by hot reload.
    reload_to(
        &p,
        &two(&b, &g, "blue = 50, green = 50", STICKY),
        "green",
        Some(50),
    )
    .await;
    let ranges = state_backends(&p.state().await, "app");
    assert_eq!(
        ranges,
        vec![
            ("blue".into(), 50, (0, 5000)),
            ("green".into(), 50, (5000, 10000))
        ]
    );

    let after = replay(&c, &p, "cutover", &cookies).await;
    let mut moved = 0;
    for (i, h) in after.iter().enumerate() {
        assert_eq!(
            h.backend,
            owner(&ranges, bucket_of(&cookies[i])),
            "user {i} routed by the bucket in the cookie"
        );
        assert!(
            h.set_cookie.is_none(),
            "the cookie holds the bucket; a weight change does not rewrite it: {h:?}"
        );
        if was_green[i] {
            assert_eq!(
                h.backend, "green",
                "user {i} was green at 10% and must stay green at 50%"
            );
        } else if h.backend == "green" {
            moved += 1;
        }
    }
    let n_blue = USERS - n_green;
    let p_move = 4.0 / 9.0;
    eprintln!(
        "green at 10%: {n_green}/{USERS}; blue users moved at 50%: {moved}/{n_blue} (expected {:.0})",
        n_blue as f64 * p_move
    );
    assert!(
        within_sigmas(moved, n_blue, p_move, 4.0),
        "{moved} of {n_blue} blue users moved; expected {:.0} +- 4 sigma ({:.1})",
        n_blue as f64 * p_move,
        4.0 * (n_blue as f64 * p_move * (1.0 - p_move)).sqrt()
    );
}

#[tokio::test]
async fn a_user_with_a_cookie_lands_on_the_same_backend_five_times() {
    let b = Backend::start("blue").await;
    let g = Backend::start("green").await;
    let p = Proxy::start(&two(&b, &g, "blue = 50, green = 50", STICKY)).await;
    let c = common::client();
    let users = first_visits(&c, &p, 40).await;
    let seen: HashSet<&str> = users.iter().map(|h| h.backend.as_str()).collect();
    assert_eq!(
        seen.len(),
        2,
        "40 users at 50/50 reach both backends: {seen:?}"
    );
    for (i, u) in users.iter().enumerate() {
        let cookie = u.cookie("cutover").expect("first visit sets the cookie");
        for round in 0..5 {
            let h = hit_with(&c, &p, "cutover", Some(&cookie)).await;
            assert_eq!(h.backend, u.backend, "user {i}, request {round}");
            assert!(h.set_cookie.is_none(), "user {i}, request {round}: {h:?}");
        }
    }
    // Control: without the cookie the same 40 x 5 requests would not all
    // agree with the first visit (weighted random per request).
    let mut disagree = 0;
    for u in &users {
        for _ in 0..5 {
            if hit(&c, &p, &[]).await.backend != u.backend {
                disagree += 1;
            }
        }
    }
    assert!(disagree > 0, "requests without a cookie are not pinned");
}

#[tokio::test]
async fn two_processes_with_the_same_config_and_secret_route_1000_cookies_identically() {
    let b = Backend::start("blue").await;
    let g = Backend::start("green").await;
    let cfg = two(&b, &g, "blue = 50, green = 50", STICKY);
    let pa = Proxy::start(&cfg).await;
    let pb = Proxy::start(&cfg).await;
    let c = common::client();

    let from_a = first_visits(&c, &pa, 1000).await;
    let cookies: Vec<String> = from_a
        .iter()
        .map(|h| h.cookie("cutover").expect("A sets a cookie"))
        .collect();
    let greens = from_a.iter().filter(|h| h.backend == "green").count();
    assert!(
        within_sigmas(greens, 1000, 0.5, 4.0),
        "{greens} of 1000 on green at 50/50"
    );

    let at_b = replay(&c, &pb, "cutover", &cookies).await;
    for (i, (a, b)) in from_a.iter().zip(&at_b).enumerate() {
        assert_eq!(
            a.backend, b.backend,
            "cookie {i} ({}) routed differently by B",
            cookies[i]
        );
        assert!(
            b.set_cookie.is_none(),
            "B accepts A's signed cookie {}: {b:?}",
            cookies[i]
        );
    }

    // A third process with another secret must not trust them.
    let other = two(
        &b,
        &g,
        "blue = 50, green = 50",
        &STICKY.replace("s3cret-for-tests", "another-secret"),
    );
    let pc = Proxy::start(&other).await;
    let at_c = replay(&c, &pc, "cutover", &cookies[..50]).await;
    for (i, h) in at_c.iter().enumerate() {
        let fresh = h
            .cookie("cutover")
            .unwrap_or_else(|| panic!("C re-sets cookie {i} signed by another secret: {h:?}"));
        assert_ne!(fresh, cookies[i]);
    }
}

#[tokio::test]
async fn tampered_or_unsigned_cookies_count_as_absent() {
    let b = Backend::start("blue").await;
    let g = Backend::start("green").await;
    let p = Proxy::start(&two(&b, &g, "blue = 50, green = 50", STICKY)).await;
    let c = common::client();

    let users = first_visits(&c, &p, 2).await;
    let v1 = users[0].cookie("cutover").unwrap();
    let v2 = users[1].cookie("cutover").unwrap();
    // Control: the genuine cookie is accepted (no new Set-Cookie).
    assert!(
        hit_with(&c, &p, "cutover", Some(&v1))
            .await
            .set_cookie
            .is_none()
    );

    let (bucket, sig) = v1
        .split_once('.')
        .expect("a signed cookie is <bucket>.<signature>");
    let bucket: u16 = bucket.parse().unwrap();
    let other_bucket = (bucket + 5000) % 10000;
    // Flip the first character: the last one of 22 base64 characters for
    // 16 bytes carries 4 unused bits, so changing it tests the decoder,
    // not the MAC.
    let first = if sig.starts_with('A') { "B" } else { "A" };
    let flipped_sig = format!("{first}{}", &sig[1..]);
    let (b2, sig2) = v2.split_once('.').unwrap();
    let tampered = [
        format!("{other_bucket}.{sig}"),   // bucket changed, signature kept
        format!("{bucket}.{flipped_sig}"), // signature changed
        format!("{bucket}.{sig2}"),        // another user's signature
        format!("{b2}.{sig}"),             // another user's bucket
        bucket.to_string(),                // unsigned while a secret is set
        format!("{bucket}."),              // empty signature
        "not-a-cookie".to_owned(),         // garbage
        format!("{bucket}.green.{sig}"),   // a backend smuggled in
    ];
    for t in &tampered {
        if *t == v2 || *t == v1 {
            continue;
        }
        let mut fresh_buckets = HashSet::new();
        for _ in 0..20 {
            let h = hit_with(&c, &p, "cutover", Some(t)).await;
            let fresh = h
                .cookie("cutover")
                .unwrap_or_else(|| panic!("tampered cookie {t:?} must count as absent: {h:?}"));
            assert_ne!(&fresh, t);
            // The fresh cookie is genuine: sending it back sets nothing.
            let back = hit_with(&c, &p, "cutover", Some(&fresh)).await;
            assert!(
                back.set_cookie.is_none(),
                "the fresh cookie {fresh} verifies"
            );
            assert_eq!(back.backend, h.backend);
            fresh_buckets.insert(bucket_of(&fresh));
        }
        // A new bucket is drawn at random each time, not derived from the
        // tampered value (20 equal draws of 10,000: p = 1e-76).
        assert!(
            fresh_buckets.len() > 1,
            "tampered {t:?} always got bucket {fresh_buckets:?}"
        );
    }
}

#[tokio::test]
async fn set_cookie_attributes() {
    let b = Backend::start("blue").await;
    let g = Backend::start("green").await;
    let p = Proxy::start(&two(&b, &g, "blue = 50, green = 50", STICKY)).await;
    let c = common::client();
    let h = hit(&c, &p, &[]).await;
    let line = h.set_cookie.expect("a first visit sets the cookie");
    let mut parts = line.split("; ");
    let (name, value) = parts.next().unwrap().split_once('=').unwrap();
    assert_eq!(name, "cutover");
    assert!(
        !value.is_empty()
            && value
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b';' && b != b',')
    );
    let attrs: HashSet<&str> = parts.collect();
    let want: HashSet<&str> = ["Path=/", "Max-Age=3600", "HttpOnly", "SameSite=Lax"].into();
    // Plain HTTP: no `Secure`.
    assert_eq!(attrs, want, "Set-Cookie: {line}");

    // Without max_age: a session cookie, no Max-Age.
    let p2 = Proxy::start(&two(
        &b,
        &g,
        "blue = 50, green = 50",
        "sticky = { cookie = \"sid\" }",
    ))
    .await;
    let line = hit(&c, &p2, &[]).await.set_cookie.expect("sets the cookie");
    let mut parts = line.split("; ");
    let (name, value) = parts.next().unwrap().split_once('=').unwrap();
    assert_eq!(name, "sid");
    // Unsigned: the value is the bucket itself.
    let bucket: u16 = value
        .parse()
        .unwrap_or_else(|_| panic!("unsigned cookie value {value:?} is a bucket"));
    assert!(bucket < 10_000);
    let attrs: HashSet<&str> = parts.collect();
    assert_eq!(
        attrs,
        ["Path=/", "HttpOnly", "SameSite=Lax"].into(),
        "Set-Cookie: {line}"
    );
}

/// One request per id, with the id in `x-user-id`, in order.
async fn by_header(c: &reqwest::Client, p: &Proxy, ids: &[String]) -> Vec<Hit> {
    stream::iter(ids)
        .map(|id| async move { hit(c, p, &[("x-user-id", id.as_str())]).await })
        .buffered(PARALLEL)
        .collect()
        .await
}

/// `bucket = xxh3_64_with_seed(value, hash_seed) % 10000`, as documented.
fn documented_header_bucket(value: &str, seed: u64) -> u16 {
    (xxhash_rust::xxh3::xxh3_64_with_seed(value.as_bytes(), seed) % 10_000) as u16
}

#[tokio::test]
async fn header_mode_same_value_same_backend_across_processes_and_no_cookie() {
    let b = Backend::start("blue").await;
    let g = Backend::start("green").await;
    let cfg = two(
        &b,
        &g,
        "blue = 50, green = 50",
        "sticky = { header = \"x-user-id\", hash_seed = 7 }",
    );
    let pa = Proxy::start(&cfg).await;
    let pb = Proxy::start(&cfg).await;
    let pc = Proxy::start(&cfg.replace("hash_seed = 7", "hash_seed = 8")).await;
    let c = common::client();

    let ids: Vec<String> = (0..300).map(|i| format!("user-{i}@example.com")).collect();
    let a1 = by_header(&c, &pa, &ids).await;
    let a2 = by_header(&c, &pa, &ids).await;
    let bb = by_header(&c, &pb, &ids).await;
    let cc = by_header(&c, &pc, &ids).await;
    let mut differ_with_other_seed = 0;
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(a1[i].backend, a2[i].backend, "{id}: A changed its mind");
        assert_eq!(a1[i].backend, bb[i].backend, "{id}: A and B disagree");
        for h in [&a1[i], &a2[i], &bb[i], &cc[i]] {
            assert!(h.set_cookie.is_none(), "header mode sets no cookie: {h:?}");
        }
        let want = if documented_header_bucket(id, 7) < 5000 {
            "blue"
        } else {
            "green"
        };
        assert_eq!(
            a1[i].backend, want,
            "{id}: bucket is xxh3_64_with_seed(value, 7) % 10000"
        );
        let want_c = if documented_header_bucket(id, 8) < 5000 {
            "blue"
        } else {
            "green"
        };
        assert_eq!(cc[i].backend, want_c, "{id}: seed 8");
        differ_with_other_seed += usize::from(cc[i].backend != a1[i].backend);
    }
    let greens = a1.iter().filter(|h| h.backend == "green").count();
    assert!(
        within_sigmas(greens, ids.len(), 0.5, 4.0),
        "{greens} of 300 ids on green"
    );
    assert!(differ_with_other_seed > 0, "the seed changes the mapping");
}

#[tokio::test]
async fn header_mode_falls_back_to_the_cookie_when_the_header_is_missing() {
    let b = Backend::start("blue").await;
    let g = Backend::start("green").await;
    let sticky = "sticky = { header = \"x-user-id\", cookie = \"cutover\", secret = \"k\" }";
    let p = Proxy::start(&two(&b, &g, "blue = 50, green = 50", sticky)).await;
    let c = common::client();
    for i in 0..20 {
        let id = format!("u{i}");
        let h = hit(&c, &p, &[("x-user-id", &id)]).await;
        assert!(
            h.set_cookie.is_none(),
            "with the header present no cookie is set: {h:?}"
        );
        let want = if documented_header_bucket(&id, 0) < 5000 {
            "blue"
        } else {
            "green"
        };
        assert_eq!(h.backend, want, "{id}: default seed 0");
    }
    let users = first_visits(&c, &p, 20).await;
    for u in &users {
        let v = u
            .cookie("cutover")
            .expect("without the header the cookie is the source");
        let again = hit_with(&c, &p, "cutover", Some(&v)).await;
        assert_eq!(again.backend, u.backend);
        assert!(again.set_cookie.is_none());
    }
}

/// Users on each backend at 50/50 with drain routes.
async fn drain_setup(drain: bool) -> (Backend, Backend, Proxy, Vec<(String, String)>) {
    let b = Backend::start("blue").await;
    let g = Backend::start("green").await;
    let extra = format!("{STICKY}\ndrain = {drain}");
    let p = Proxy::start(&two(&b, &g, "blue = 50, green = 50", &extra)).await;
    let c = common::client();
    let users: Vec<(String, String)> = first_visits(&c, &p, 100)
        .await
        .into_iter()
        .map(|h| {
            let v = h.cookie("cutover").expect("a first visit sets the cookie");
            (v, h.backend)
        })
        .collect();
    let greens = users.iter().filter(|(_, b)| b == "green").count();
    assert!(
        (15..=85).contains(&greens),
        "{greens} of 100 users on green at 50/50"
    );
    (b, g, p, users)
}

#[tokio::test]
async fn drain_keeps_green_users_on_green_at_weight_0_and_sends_no_new_user_there() {
    let (b, g, p, users) = drain_setup(true).await;
    let c = common::client();
    reload_to(
        &p,
        &two(
            &b,
            &g,
            "blue = 100, green = 0",
            &format!("{STICKY}\ndrain = true"),
        ),
        "green",
        Some(0),
    )
    .await;

    for (v, before) in &users {
        for _ in 0..3 {
            let h = hit_with(&c, &p, "cutover", Some(v)).await;
            assert_eq!(
                &h.backend, before,
                "drain: a user stays where they were (cookie {v})"
            );
            if before == "green" {
                assert!(
                    h.set_cookie.is_none(),
                    "a drained user's cookie already names green: {h:?}"
                );
            }
        }
    }
    let new_users = first_visits(&c, &p, 300).await;
    for h in &new_users {
        assert_eq!(
            h.backend, "blue",
            "a new user never goes to a draining backend"
        );
        let v = h.cookie("cutover").expect("new users get a cookie");
        // And coming back, they stay on blue.
        assert_eq!(hit_with(&c, &p, "cutover", Some(&v)).await.backend, "blue");
    }
}

#[tokio::test]
async fn without_drain_weight_0_moves_every_user_off_at_once() {
    let (b, g, p, users) = drain_setup(false).await;
    let c = common::client();
    reload_to(
        &p,
        &two(
            &b,
            &g,
            "blue = 100, green = 0",
            &format!("{STICKY}\ndrain = false"),
        ),
        "green",
        Some(0),
    )
    .await;
    let hits = replay(
        &c,
        &p,
        "cutover",
        &users.iter().map(|(v, _)| v.clone()).collect::<Vec<_>>(),
    )
    .await;
    for ((v, before), h) in users.iter().zip(&hits) {
        assert_eq!(
            h.backend, "blue",
            "user on {before} (cookie {v}) moves to blue on the very next request"
        );
        assert!(
            h.set_cookie.is_none(),
            "the bucket cookie is not rewritten: {h:?}"
        );
    }
}

/// Green leaves the config (backend and weight); its users go to blue, keep
/// their cookie, and come back when green is restored.
#[tokio::test]
async fn removed_backend_users_fail_over_and_keep_their_cookie() {
    let b = Backend::start("blue").await;
    let g = Backend::start("green").await;
    let full = two(&b, &g, "blue = 50, green = 50", STICKY);
    let p = Proxy::start(&full).await;
    let c = common::client();
    let users = first_visits(&c, &p, 100).await;
    let cookies: Vec<String> = users.iter().map(|h| h.cookie("cutover").unwrap()).collect();
    assert!(users.iter().any(|h| h.backend == "green"));

    let blue_only = common::config(&[("blue", &[&b])], &route("blue = 100", STICKY));
    reload_to(&p, &blue_only, "green", None).await;
    let during = replay(&c, &p, "cutover", &cookies).await;
    for (i, h) in during.iter().enumerate() {
        assert_eq!(h.backend, "blue", "user {i}");
        assert!(
            h.set_cookie.is_none(),
            "user {i} (was {}) keeps their cookie: {h:?}",
            users[i].backend
        );
    }

    reload_to(&p, &full, "green", Some(50)).await;
    let back = replay(&c, &p, "cutover", &cookies).await;
    for (i, h) in back.iter().enumerate() {
        assert_eq!(
            h.backend, users[i].backend,
            "user {i} returns to their backend"
        );
        assert!(h.set_cookie.is_none());
    }
}

/// Green is down (nothing listens on its port) and its health check says
/// so: its users are served by blue and keep their cookie (no Set-Cookie),
/// so they return once green is back.
///
/// Green has a single endpoint, so passive ejection alone never takes it
/// out (at most `max_ejected_percent`, 50%, of a backend); the active
/// health check (`health = { ... }`, issue 6) is what marks it unavailable.
#[tokio::test]
async fn unavailable_backend_users_fail_over_and_keep_their_cookie() {
    let b = Backend::start("blue").await;
    let g = Backend::start("green").await;
    // Cookies of green users, from a process where green is up.
    let a = Proxy::start(&two(&b, &g, "blue = 50, green = 50", STICKY)).await;
    let c = common::client();
    let green_cookies: Vec<String> = first_visits(&c, &a, 60)
        .await
        .iter()
        .filter(|h| h.backend == "green")
        .map(|h| h.cookie("cutover").unwrap())
        .collect();
    assert!(!green_cookies.is_empty());

    // A second process, same secret, where green's only endpoint is a port
    // nothing listens on, health-checked every 100 ms.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let green_line = format!("endpoints = [\"{}\"]\n", g.addr);
    let cfg = two(&b, &g, "blue = 50, green = 50", STICKY).replace(
        &green_line,
        &format!(
            "endpoints = [\"{dead}\"]\nhealth = {{ path = \"/healthz\", interval = \"100ms\", \
             timeout = \"100ms\", unhealthy_threshold = 2, healthy_threshold = 1 }}\n"
        ),
    );
    assert!(cfg.contains(&dead.to_string()), "{cfg}");
    let p = Proxy::start(&cfg).await;
    // Failed requests are allowed while the proxy notices; afterwards every
    // green user is served by blue with their cookie untouched.
    let all_blue_cookie_kept = || async {
        let mut all = true;
        for v in &green_cookies {
            let r = c
                .get(p.url("/"))
                .header("cookie", format!("cutover={v}"))
                .send()
                .await
                .unwrap();
            let served = r
                .headers()
                .get("x-cutover-backend")
                .map(|h| h.to_str().unwrap().to_owned());
            all &= r.status() == 200
                && served.as_deref() == Some("blue")
                && !r.headers().contains_key("set-cookie");
        }
        all
    };
    let ok = common::eventually(Duration::from_secs(30), all_blue_cookie_kept).await;
    assert!(
        ok,
        "green users never failed over to blue with their cookie kept"
    );

    // Green comes up on that address: they return.
    let _g2 = Backend::start_on(dead, "green").await;
    let ok = common::eventually(Duration::from_secs(30), || async {
        let hits = replay(&c, &p, "cutover", &green_cookies).await;
        hits.iter()
            .all(|h| h.backend == "green" && h.set_cookie.is_none())
    })
    .await;
    assert!(ok, "green users did not return to green");
}

/// The sticky cookie is found among other cookies, in one `Cookie` header
/// or spread over several (HTTP/2 sends one field per cookie; some HTTP/1.1
/// clients repeat the header too).
#[tokio::test]
async fn the_sticky_cookie_is_found_among_other_cookies_over_http1_and_http2() {
    let b = Backend::start("blue").await;
    let g = Backend::start("green").await;
    let p = Proxy::start(&two(&b, &g, "blue = 50, green = 50", STICKY)).await;
    let h1 = common::client();
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let users = first_visits(&h1, &p, 20).await;
    for u in &users {
        let v = u.cookie("cutover").unwrap();
        for c in [&h1, &h2] {
            let one = format!("theme=dark; cutover={v}; lang=en");
            let h = hit(c, &p, &[("cookie", &one)]).await;
            assert_eq!(h.backend, u.backend);
            assert!(h.set_cookie.is_none(), "{h:?}");
            let mut req = c.get(p.url("/"));
            for part in ["theme=dark", &format!("cutover={v}"), "lang=en"] {
                req = req.header("cookie", part);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200);
            assert!(
                resp.headers().get("set-cookie").is_none(),
                "found in the second Cookie field"
            );
            assert_eq!(resp.text().await.unwrap(), u.backend);
        }
    }
}
