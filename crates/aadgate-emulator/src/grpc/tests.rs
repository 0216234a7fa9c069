use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::echo::download_pattern_byte;

async fn start() -> (GrpcEchoHandle, GrpcEchoClient) {
    let server = GrpcEchoServer::start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("start gRPC echo");
    let client = GrpcEchoClient::connect(&server.base_url())
        .await
        .expect("connect");
    (server, client)
}

fn pattern(len: usize) -> Bytes {
    (0..len as u64).map(download_pattern_byte).collect()
}

#[tokio::test]
async fn unary_echoes_with_the_request_metadata_a_header_and_a_trailer() {
    let (server, client) = start().await;
    let outcome = client
        .unary(
            "hello",
            &b"\x00\x01payload"[..],
            &[
                ("authorization", "Bearer abc"),
                ("x-tenant", "one"),
                ("x-tenant", "two"),
                ("x-trace-bin", "\u{1}\u{2}"),
            ],
        )
        .await
        .expect("unary");
    assert_eq!(outcome.reply.message, "hello");
    assert_eq!(
        outcome.reply.payload,
        Bytes::from_static(b"\x00\x01payload")
    );
    let metadata = &outcome.reply.metadata;
    assert_eq!(metadata["authorization"], "Bearer abc");
    assert_eq!(metadata["x-tenant"], "one, two");
    assert_eq!(metadata["x-trace-bin"], "AQI");
    assert_eq!(metadata["content-type"], "application/grpc");
    assert_eq!(metadata["te"], "trailers");
    assert_eq!(outcome.headers[ECHO_HEADER], "unary");
    assert!(
        outcome.headers.get(ECHO_TRAILER).is_none(),
        "a trailer only"
    );
    assert_eq!(outcome.trailers[ECHO_TRAILER], "done");
    assert_eq!(outcome.trailers["grpc-status"], "0");

    assert_eq!(server.calls(), 1);
    let request = server.last_request().expect("recorded");
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/aadgate.echo.v1.Echo/Unary");
    assert_eq!(request.version, "HTTP/2.0");
    assert_eq!(request.header("x-tenant"), Some("one"));
}

#[tokio::test]
async fn server_stream_sends_a_hundred_replies() {
    let (_server, client) = start().await;
    let outcome = client
        .server_stream(100, 1000, &[("x-user", "alice")])
        .await
        .expect("stream");
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    assert_eq!(outcome.replies.len(), 100);
    for (i, reply) in outcome.replies.iter().enumerate() {
        assert_eq!(reply.message, format!("reply {i}"));
        assert_eq!(reply.payload, pattern(1000));
    }
    assert_eq!(outcome.replies[0].metadata["x-user"], "alice");
    assert!(outcome.replies[1].metadata.is_empty());
    assert_eq!(outcome.headers[ECHO_HEADER], "server-stream");
    assert_eq!(outcome.trailers[ECHO_TRAILER], "done");
}

#[tokio::test]
async fn a_five_mebibyte_message_goes_both_ways() {
    let (_server, client) = start().await;
    let payload = pattern(5 * 1024 * 1024);
    let outcome = client
        .unary("big", payload.clone(), &[])
        .await
        .expect("5 MiB unary");
    assert_eq!(outcome.reply.payload.len(), payload.len());
    assert!(outcome.reply.payload == payload);

    let outcome = client
        .server_stream(2, 5 * 1024 * 1024, &[])
        .await
        .expect("5 MiB replies");
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    assert_eq!(outcome.replies.len(), 2);
    assert!(outcome.replies.iter().all(|r| r.payload == payload));
}

#[tokio::test]
async fn fail_ends_with_each_status_code_asked_for() {
    let (_server, client) = start().await;
    for number in 1..=16 {
        let code = Code::from_i32(number);
        let message = format!("failing with {}", code_name(code));
        let status = client
            .fail(code, &message, &[])
            .await
            .expect_err("a failure");
        assert_eq!(status.code(), code);
        assert_eq!(status.message(), message);
    }
    let outcome = client
        .fail(Code::Ok, "fine", &[])
        .await
        .expect("code 0 answers");
    assert_eq!(outcome.reply.message, "fine");
}

#[tokio::test]
async fn a_stream_too_large_or_an_unknown_method_is_refused() {
    let (server, client) = start().await;
    let status = client
        .server_stream(1, 17 * 1024 * 1024, &[])
        .await
        .expect_err("over the limit");
    assert_eq!(status.code(), Code::InvalidArgument);

    // A path prefix from the URL goes before the method's path; here it names no method.
    let prefixed = GrpcEchoClient::connect(&format!("{}/prefix/", server.base_url()))
        .await
        .expect("connect");
    let status = prefixed
        .unary("x", Bytes::new(), &[])
        .await
        .expect_err("unknown path");
    assert_eq!(status.code(), Code::Unimplemented);
    assert_eq!(
        server.last_request().expect("recorded").path,
        "/prefix/aadgate.echo.v1.Echo/Unary"
    );
}

#[tokio::test]
async fn bad_urls_and_unreachable_servers_are_errors() {
    for url in ["ftp://127.0.0.1:1", "127.0.0.1:1", "https://127.0.0.1:1"] {
        assert!(
            matches!(
                GrpcEchoClient::connect(url).await,
                Err(GrpcClientError::InvalidUrl { .. })
            ),
            "{url}"
        );
    }
    // A port that was just free: nothing listens there.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let url = format!("http://127.0.0.1:{port}");
    assert!(matches!(
        grpc_call(&url, None, "x").await,
        Err(GrpcClientError::Connect { .. })
    ));
}

#[tokio::test]
async fn grpc_call_summarises_one_call_without_the_token() {
    let (server, _client) = start().await;
    let line = grpc_call(&server.base_url(), Some("secret-token"), "hello")
        .await
        .expect("call");
    assert_eq!(
        line,
        r#"OK: reply "hello"; trailers grpc-status=0, x-echo-trailer=done"#
    );
    let request = server.last_request().expect("recorded");
    assert_eq!(request.header("authorization"), Some("Bearer secret-token"));
}

#[tokio::test]
async fn tls_with_alpn_h2_and_a_given_ca() {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("certificate");
    let cert_pem = certified.cert.pem();
    let key_pem = certified.signing_key.serialize_pem();
    let server = GrpcEchoServer::start_tls(
        "127.0.0.1:0".parse().expect("addr"),
        cert_pem.as_bytes(),
        key_pem.as_bytes(),
    )
    .await
    .expect("start over TLS");
    assert!(server.base_url().starts_with("https://127.0.0.1:"));
    let client = GrpcEchoClient::connect_tls(&server.base_url(), cert_pem.as_bytes())
        .await
        .expect("connect over TLS");
    let outcome = client
        .unary("secure", Bytes::new(), &[])
        .await
        .expect("unary");
    assert_eq!(outcome.reply.message, "secure");
    assert_eq!(outcome.trailers[ECHO_TRAILER], "done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_counts_every_call_over_several_connections() {
    let (server, _client) = start().await;
    let report = grpc_load(
        &server.base_url(),
        Some("t"),
        2,
        4,
        LoadStop::After(Duration::from_millis(200)),
    )
    .await
    .expect("load");
    assert!(report.calls > 0);
    assert_eq!(report.errors, 0, "{:?}", report.first_error);
    assert!(report.p50 <= report.p99 && report.p99 > Duration::ZERO);
    assert_eq!(server.calls(), report.calls);
    assert_eq!(
        server
            .last_request()
            .expect("recorded")
            .header("authorization"),
        Some("Bearer t")
    );
    assert!(matches!(
        grpc_load(&server.base_url(), None, 0, 1, LoadStop::Calls(1)).await,
        Err(GrpcClientError::Invalid(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_with_a_call_budget_makes_exactly_that_many_calls() {
    let (server, _client) = start().await;
    let report = grpc_load(&server.base_url(), None, 2, 3, LoadStop::Calls(37))
        .await
        .expect("load");
    assert_eq!((report.calls, report.errors), (37, 0));
    assert_eq!(server.calls(), 37);
}

#[tokio::test]
async fn shutdown_finishes_with_a_client_connected_and_later_calls_fail() {
    let (server, client) = start().await;
    client
        .unary("before", Bytes::new(), &[])
        .await
        .expect("call");
    server.shutdown().await;
    let status = client
        .unary("after", Bytes::new(), &[])
        .await
        .expect_err("the server is gone");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(server.calls(), 1);
}
