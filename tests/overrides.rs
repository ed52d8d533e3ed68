//! Tester overrides (issue 3): a header or cookie naming a backend of the
//! route forces it, even at weight 0; with a token only when
//! `x-cutover-token` matches; an unknown name is ignored, never an error.
mod common;

use common::{Backend, Proxy};

/// Which backend answered `/` with these headers; panics unless 200 and
/// the body and `x-cutover-backend` agree.
async fn served(p: &Proxy, headers: &[(&str, &str)]) -> String {
    let mut req = common::client().get(p.url("/"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request reaches the proxy");
    let status = resp.status();
    let exposed = resp
        .headers()
        .get("x-cutover-backend")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = resp.text().await.unwrap();
    assert_eq!(
        status, 200,
        "an override never produces an error page; body: {body}"
    );
    assert_eq!(exposed.as_deref(), Some(body.as_str()));
    body
}

/// Asks 20 times; every answer must be `want`.
async fn always(p: &Proxy, headers: &[(&str, &str)], want: &str) {
    for i in 0..20 {
        let got = served(p, headers).await;
        assert_eq!(got, want, "request {i} with {headers:?}");
    }
}

/// Blue, green and red backends; route `app` splits blue 100 / green 0 and
/// does not list red at all.
async fn setup(route_extra: &str, env: &[(&str, &str)]) -> (Vec<Backend>, Proxy) {
    let b = Backend::start("blue").await;
    let g = Backend::start("green").await;
    let r = Backend::start("red").await;
    let cfg = common::config(
        &[("blue", &[&b]), ("green", &[&g]), ("red", &[&r])],
        &format!(
            "[[routes]]\nname = \"app\"\nweights = {{ blue = 100, green = 0 }}\nexpose_backend_header = true\n{route_extra}\n"
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.toml");
    std::fs::write(&path, cfg).unwrap();
    let p = Proxy::start_at(dir, path, env).await;
    (vec![b, g, r], p)
}

const BOTH: &str = "override = { header = \"x-cutover-backend\", cookie = \"cutover_force\" }";

#[tokio::test]
async fn override_by_header_and_by_cookie_reaches_a_weight_0_backend() {
    let (_bs, p) = setup(BOTH, &[]).await;
    // Control: normal routing sends everything to blue.
    always(&p, &[], "blue").await;
    always(&p, &[("x-cutover-backend", "green")], "green").await;
    always(&p, &[("cookie", "cutover_force=green")], "green").await;
    always(&p, &[("cookie", "a=1; cutover_force=green; b=2")], "green").await;
    // Naming the backend normal routing would pick anyway is fine too.
    always(&p, &[("x-cutover-backend", "blue")], "blue").await;
    always(&p, &[("cookie", "cutover_force=blue")], "blue").await;
}

#[tokio::test]
async fn overrides_are_off_unless_configured() {
    let (_bs, p) = setup("", &[]).await;
    always(&p, &[("x-cutover-backend", "green")], "blue").await;
    always(&p, &[("cookie", "cutover_force=green")], "blue").await;

    // Only the configured channel counts.
    let (_bs, p) = setup("override = { header = \"x-cutover-backend\" }", &[]).await;
    always(&p, &[("x-cutover-backend", "green")], "green").await;
    always(&p, &[("cookie", "cutover_force=green")], "blue").await;
    let (_bs, p) = setup("override = { cookie = \"cutover_force\" }", &[]).await;
    always(&p, &[("x-cutover-backend", "green")], "blue").await;
    always(&p, &[("cookie", "cutover_force=green")], "green").await;
}

/// The token gates both channels; given inline, as a file and as an
/// environment variable.
#[tokio::test]
async fn with_a_token_the_override_counts_only_with_the_right_x_cutover_token() {
    let token_dir = tempfile::tempdir().unwrap();
    let token_file = token_dir.path().join("token");
    std::fs::write(&token_file, "t0ken-from-file\n").unwrap();
    let cases = [
        (
            "override = { header = \"x-cutover-backend\", cookie = \"cutover_force\", token = \"inline-t0ken\" }".to_owned(),
            "inline-t0ken",
            vec![],
        ),
        (
            format!(
                "override = {{ header = \"x-cutover-backend\", cookie = \"cutover_force\", token_file = \"{}\" }}",
                token_file.display()
            ),
            // The file's trailing newline is not part of the token.
            "t0ken-from-file",
            vec![],
        ),
        (
            "override = { header = \"x-cutover-backend\", cookie = \"cutover_force\", token_env = \"CUTOVER_TEST_OVERRIDE_TOKEN\" }"
                .to_owned(),
            "t0ken-from-env",
            vec![("CUTOVER_TEST_OVERRIDE_TOKEN", "t0ken-from-env")],
        ),
    ];
    for (extra, token, env) in &cases {
        let (_bs, p) = setup(extra, env).await;
        let wrong = format!("{token}x");
        let prefix = &token[..token.len() - 1];
        for ask in [
            ("x-cutover-backend", "green"),
            ("cookie", "cutover_force=green"),
        ] {
            // Without a token, or a wrong one: ignored, normal routing.
            always(&p, &[ask], "blue").await;
            always(&p, &[ask, ("x-cutover-token", &wrong)], "blue").await;
            always(&p, &[ask, ("x-cutover-token", prefix)], "blue").await;
            always(&p, &[ask, ("x-cutover-token", "")], "blue").await;
            always(
                &p,
                &[ask, ("x-cutover-token", &token.to_uppercase())],
                "blue",
            )
            .await;
            // The right one: honoured.
            always(&p, &[ask, ("x-cutover-token", token)], "green").await;
        }
    }
}

#[tokio::test]
async fn an_unknown_backend_name_is_ignored_not_an_error() {
    let (_bs, p) = setup(BOTH, &[]).await;
    for name in ["purple", "", "blue,green", "../green", "gree"] {
        always(&p, &[("x-cutover-backend", name)], "blue").await;
        always(&p, &[("cookie", &format!("cutover_force={name}"))], "blue").await;
    }
    // Red is a backend of the config but not of this route: not a name the
    // override may use.
    always(&p, &[("x-cutover-backend", "red")], "blue").await;
    always(&p, &[("cookie", "cutover_force=red")], "blue").await;

    // Unknown name with a token configured and given: still normal routing.
    let (_bs, p) = setup(
        "override = { header = \"x-cutover-backend\", token = \"tok\" }",
        &[],
    )
    .await;
    always(
        &p,
        &[("x-cutover-backend", "purple"), ("x-cutover-token", "tok")],
        "blue",
    )
    .await;
    always(
        &p,
        &[("x-cutover-backend", "green"), ("x-cutover-token", "tok")],
        "green",
    )
    .await;
}

/// An override beats the user's sticky bucket, and only for the requests
/// that carry it.
#[tokio::test]
async fn override_wins_over_sticky_cookie() {
    let extra = format!("{BOTH}\nsticky = {{ cookie = \"cutover\" }}");
    let (_bs, p) = setup(&extra, &[]).await;
    // A user whose cookie buckets them on blue (blue owns every bucket)...
    let resp = common::client().get(p.url("/")).send().await.unwrap();
    let line = resp
        .headers()
        .get("set-cookie")
        .expect("sticky cookie")
        .to_str()
        .unwrap()
        .to_owned();
    let cookie = line.split(';').next().unwrap().to_owned();
    // ...is forced to green by the override, and back without it.
    always(
        &p,
        &[("cookie", &format!("{cookie}; cutover_force=green"))],
        "green",
    )
    .await;
    always(
        &p,
        &[("cookie", &cookie), ("x-cutover-backend", "green")],
        "green",
    )
    .await;
    always(&p, &[("cookie", &cookie)], "blue").await;
}
