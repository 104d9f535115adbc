//! The server's own limits (DESIGN.md §6, "Server limits") through the real `berth` binary:
//! no request, authenticated or not, makes the metrics grow.

mod support;

use std::collections::BTreeSet;

use support::Server;

/// The label sets of the request counters in a `/metrics` exposition, without their values.
fn request_series(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|line| {
            line.starts_with("berth_http_requests_total{")
                || line.starts_with("berth_http_request_seconds_total{")
        })
        .filter_map(|line| {
            line.rsplit_once(' ')
                .map(|(series, _value)| series.to_owned())
        })
        .collect()
}

async fn metrics(client: &reqwest::Client, server: &Server) -> String {
    client
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .expect("metrics answers")
        .text()
        .await
        .expect("metrics text")
}

/// 1,000 unauthenticated requests with made-up methods leave the metrics with the series they
/// had: every unknown method is counted as `other`.
#[tokio::test]
async fn made_up_methods_do_not_grow_the_metrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[]);
    let client = reqwest::Client::new();
    let paths = |i: usize| {
        [
            "/healthz".to_owned(),
            format!("/v1/tenants/t{i}"),
            format!("/nowhere/{i}"),
        ]
    };
    let send = |method: String, path: String| {
        let client = client.clone();
        let url = format!("{}{path}", server.url);
        async move {
            let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
            let response = client.request(method, url).send().await.expect("answer");
            assert!(response.status().is_client_error(), "{}", response.status());
        }
    };
    // Every series these requests can make exists before the snapshot: `other` on each kind
    // of path, and `GET /metrics` itself (counted once its first answer is sent).
    for path in paths(0) {
        send("WARMUP".to_owned(), path).await;
    }
    metrics(&client, &server).await;
    let before = request_series(&metrics(&client, &server).await);
    assert!(
        before
            .iter()
            .any(|series| series.contains("method=\"other\"")),
        "{before:#?}"
    );

    for i in 0..1_000 {
        let path = paths(i)[i % 3].clone();
        send(format!("FOO{i}"), path).await;
    }
    let after = request_series(&metrics(&client, &server).await);
    assert_eq!(before, after, "made-up methods added series");
    assert!(!after.iter().any(|series| series.contains("FOO")));
}
