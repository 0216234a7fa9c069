use super::*;
use serde_json::Value;

fn parse(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or(Value::Null)
}

async fn start() -> EchoHandle {
    EchoServer::start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("start echo")
}

#[tokio::test]
async fn echoes_method_path_query_headers_and_body_hash() {
    let echo = start().await;
    let client = reqwest::Client::new();
    let resp = client
        .put(format!("{}/a/b%20c?x=1&x=2", echo.base_url()))
        .header("x-test", "one")
        .header("x-test", "two")
        .body("hello")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let body = parse(&resp.bytes().await.expect("body"));
    assert_eq!(body["method"], "PUT");
    assert_eq!(body["path"], "/a/b%20c");
    assert_eq!(body["query"], "x=1&x=2");
    assert_eq!(body["headers"]["x-test"], json!(["one", "two"]));
    assert_eq!(body["body_bytes"], 5);
    assert_eq!(
        body["body_sha256"],
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    );
    let recorded = echo.last_request().expect("recorded");
    assert_eq!(recorded.method, "PUT");
    assert_eq!(recorded.header_all("x-test"), vec!["one", "two"]);
    assert_eq!(echo.request_count(), 1);
}

#[tokio::test]
async fn streams_a_ten_megabyte_upload_and_download() {
    let echo = start().await;
    let size: u64 = 10 * 1024 * 1024 + 7;
    let upload: Vec<u8> = (0..size).map(download_pattern_byte).collect();
    let expected_sha: String = digest::digest(&digest::SHA256, &upload)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{}/upload", echo.base_url()))
        .body(upload)
        .send()
        .await
        .expect("upload");
    let body = parse(&resp.bytes().await.expect("body"));
    assert_eq!(body["body_bytes"], size);
    assert_eq!(body["body_sha256"], expected_sha);

    let resp = client
        .get(format!("{}/download/{size}", echo.base_url()))
        .send()
        .await
        .expect("download");
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("content-length").is_none(), "chunked");
    let bytes = resp.bytes().await.expect("bytes");
    assert_eq!(bytes.len() as u64, size);
    assert!(bytes
        .iter()
        .enumerate()
        .all(|(i, b)| *b == download_pattern_byte(i as u64)));
}

#[tokio::test]
async fn status_endpoint_sets_diagnostic_headers() {
    let echo = start().await;
    let resp = reqwest::get(format!("{}/status/503", echo.base_url()))
        .await
        .expect("get");
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["x-ms-diagnostics"], "test");
    assert!(resp.headers().get("request-id").is_some());
    let resp = reqwest::get(format!("{}/status/abc", echo.base_url()))
        .await
        .expect("get");
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn hold_waits_for_release_without_sleeping() {
    let echo = start().await;
    let url = format!("{}/hold/slow", echo.base_url());
    let request = tokio::spawn(async move { reqwest::get(url).await });
    echo.arrived("slow").await;
    assert_eq!(echo.arrived_count("slow"), 1);
    assert!(!request.is_finished());
    echo.release("slow");
    let resp = request.await.expect("join").expect("response");
    assert_eq!(resp.status(), 200);
    let body = parse(&resp.bytes().await.expect("body"));
    assert_eq!(body["path"], "/hold/slow");
}

#[tokio::test]
async fn shutdown_releases_held_requests() {
    let echo = start().await;
    let url = format!("{}/hold/forever", echo.base_url());
    let request = tokio::spawn(async move { reqwest::get(url).await });
    echo.arrived("forever").await;
    echo.shutdown().await;
    let resp = request.await.expect("join").expect("response");
    assert_eq!(resp.status(), 200);
}

fn h2c_client() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("h2c client")
}

fn sha256_hex(bytes: &[u8]) -> String {
    digest::digest(&digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn one_port_answers_http1_and_h2c_and_says_which() {
    let echo = start().await;
    let resp = reqwest::get(format!("{}/v", echo.base_url()))
        .await
        .expect("http/1.1");
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(
        parse(&resp.bytes().await.expect("body"))["version"],
        "HTTP/1.1"
    );

    let resp = h2c_client()
        .get(format!("{}/v", echo.base_url()))
        .send()
        .await
        .expect("h2c");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(
        parse(&resp.bytes().await.expect("body"))["version"],
        "HTTP/2.0"
    );
    let versions: Vec<String> = echo.requests().into_iter().map(|r| r.version).collect();
    assert_eq!(versions, ["HTTP/1.1", "HTTP/2.0"]);
}

#[tokio::test]
async fn trailers_follow_the_body_over_h2() {
    let echo = start().await;
    let resp = h2c_client()
        .get(format!("{}/trailers", echo.base_url()))
        .header("te", "trailers")
        .send()
        .await
        .expect("h2c");
    assert_eq!(resp.status(), 200);
    let collected = http::Response::<reqwest::Body>::from(resp)
        .into_body()
        .collect()
        .await
        .expect("body");
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["x-echo-trailer"], "done");
    let body = parse(&collected.to_bytes());
    assert_eq!(body["path"], "/trailers");
    assert_eq!(body["headers"]["te"], json!(["trailers"]));
}

#[tokio::test]
async fn upload_echo_streams_five_megabytes_back_over_both_protocols() {
    let echo = start().await;
    let size: u64 = 5 * 1024 * 1024 + 3;
    let upload: Vec<u8> = (0..size).map(|i| download_pattern_byte(i * 7)).collect();
    let expected = sha256_hex(&upload);
    for client in [reqwest::Client::new(), h2c_client()] {
        let resp = client
            .post(format!("{}/upload-echo", echo.base_url()))
            .header("content-type", "application/x-test")
            .body(upload.clone())
            .send()
            .await
            .expect("upload");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/x-test");
        let bytes = resp.bytes().await.expect("echoed body");
        assert_eq!(bytes.len() as u64, size);
        assert_eq!(sha256_hex(&bytes), expected);
    }
    assert_eq!(echo.request_count(), 2);
}
