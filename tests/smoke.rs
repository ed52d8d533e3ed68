mod common;

#[tokio::test]
async fn proxies_to_a_backend() {
    let (_b, _g, p) = common::blue_green(100, 0, "").await;
    let body = common::client()
        .get(p.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "blue");
}
