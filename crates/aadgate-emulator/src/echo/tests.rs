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

mod websocket {
    use super::*;
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

    type Client = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

    fn ws_url(echo: &EchoHandle) -> String {
        format!("{}/ws", echo.base_url().replacen("http://", "ws://", 1))
    }

    /// Connects with `x-user: alice` and returns the client and the hello's JSON.
    async fn connect(echo: &EchoHandle) -> (Client, Value) {
        let mut request = ws_url(echo).into_client_request().expect("request");
        request
            .headers_mut()
            .insert("x-user", HeaderValue::from_static("alice"));
        let (mut client, response) = tokio_tungstenite::connect_async(request)
            .await
            .expect("connect");
        assert_eq!(response.status(), 101);
        let hello = match client.next().await {
            Some(Ok(Message::Text(text))) => parse(text.as_bytes()),
            other => panic!("expected the headers hello, got {other:?}"),
        };
        (client, hello)
    }

    async fn next(client: &mut Client) -> Message {
        client
            .next()
            .await
            .expect("a message")
            .expect("not an error")
    }

    #[tokio::test]
    async fn sends_the_upgrade_headers_then_echoes_text_binary_and_pings() {
        let echo = start().await;
        let (mut client, hello) = connect(&echo).await;
        assert_eq!(hello["headers"]["x-user"], json!(["alice"]));
        assert_eq!(hello["headers"]["upgrade"], json!(["websocket"]));

        client.send(Message::text("hello")).await.expect("send");
        assert_eq!(next(&mut client).await, Message::text("hello"));
        let binary = Bytes::from_static(&[0, 1, 2, 254, 255]);
        client
            .send(Message::Binary(binary.clone()))
            .await
            .expect("send");
        assert_eq!(next(&mut client).await, Message::Binary(binary));
        client
            .send(Message::Ping(Bytes::from_static(b"are you there")))
            .await
            .expect("ping");
        assert_eq!(
            next(&mut client).await,
            Message::Pong(Bytes::from_static(b"are you there"))
        );

        let open = echo.ws_opened(0).await;
        assert_eq!(open.request.path, "/ws");
        assert_eq!(open.request.header("x-user"), Some("alice"));
        assert_eq!(echo.ws_connections()[0].messages, 2);
        assert_eq!(echo.ws_connections()[0].end, None);
    }

    #[tokio::test]
    async fn records_the_clients_close_code_and_reason() {
        let echo = start().await;
        let (mut client, _) = connect(&echo).await;
        client
            .close(Some(CloseFrame {
                code: CloseCode::Library(4001),
                reason: "token expired".into(),
            }))
            .await
            .expect("close");
        assert_eq!(
            echo.ws_ended(0).await,
            WsEnd::Closed {
                code: Some(4001),
                reason: "token expired".into()
            }
        );
        // The server answered the close handshake.
        assert!(matches!(next(&mut client).await, Message::Close(_)));
    }

    #[tokio::test]
    async fn records_a_connection_dropped_without_a_close_frame() {
        let echo = start().await;
        let (client, _) = connect(&echo).await;
        drop(client);
        assert_eq!(echo.ws_ended(0).await, WsEnd::Dropped);
    }

    #[tokio::test]
    async fn shutdown_closes_open_connections_with_going_away() {
        let echo = start().await;
        let (mut client, _) = connect(&echo).await;
        echo.shutdown().await;
        assert_eq!(echo.ws_ended(0).await, WsEnd::ServerShutdown);
        match next(&mut client).await {
            Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Away),
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_get_without_upgrade_headers_is_refused() {
        let echo = start().await;
        let resp = reqwest::get(format!("{}/ws", echo.base_url()))
            .await
            .expect("get");
        assert_eq!(resp.status(), 400);
        let resp = h2c_client()
            .get(format!("{}/ws", echo.base_url()))
            .send()
            .await
            .expect("h2c get");
        assert_eq!(resp.status(), 400);
        let resp = reqwest::Client::new()
            .get(format!("{}/ws", echo.base_url()))
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("sec-websocket-version", "8")
            .send()
            .await
            .expect("old version");
        assert_eq!(resp.status(), 426);
        assert_eq!(resp.headers()["sec-websocket-version"], "13");
        assert!(echo.ws_connections().is_empty());
    }
}
