//! End-to-end: HTTP/2 (h2c and TLS with ALPN), gRPC and WebSocket through the real gateway
//! binary (SPEC section 13), with the emulator, the echo upstream (HTTP/1.1 and h2c, WebSocket)
//! and the gRPC echo service, and real clients: reqwest over HTTP/1.1 and HTTP/2, tonic, and
//! tokio-tungstenite.

mod common;

use aadgate_emulator::TokenSpec;
use common::*;
use serde_json::{json, Value};

const DEAD: &str = "http://127.0.0.1:1";

/// Routes reaching every refusal of section 4 that one configuration can produce, plus the
/// plain routes the protocol tests use.
fn config(extra_server: &str) -> String {
    let base = base_config(
        "",
        &format!(
            "mode = \"allow_list\"\nallow = [\"{TENANT_A}\", \"{TENANT_B}\"]\ndeny = [\"{TENANT_C}\"]\n"
        ),
    )
    .replace(
        "workers = 2",
        &format!("workers = 2\nh2c = true\nmax_uri_bytes = 512\n{extra_server}"),
    );
    base + &format!(
        r#"
[clients]
allow = ["{CLIENT}"]

[validators.no-guests]
kind = "cel"
expr = "!has(claims.acct) || claims.acct == 0"
message = "guest accounts are not allowed"

[validators.dead-hook]
kind = "http"
url = "{DEAD}/authorize"
timeout = "200ms"
on_error = "deny"

[[routes]]
name = "orders"
path_prefix = "/orders/"
upstream = "{{echo}}"
roles_any = ["Orders.Read"]
validators = ["no-guests"]

[[routes]]
name = "profile"
path_prefix = "/profile/"
upstream = "{{echo}}"
token_kind = "user"
scopes_any = ["profile.read"]

[[routes]]
name = "jobs"
path_prefix = "/jobs/"
upstream = "{{echo}}"
token_kind = "app"
min_auth_strength = 2

[[routes]]
name = "hooked"
path_prefix = "/hooked/"
upstream = "{{echo}}"
validators = ["dead-hook"]

[[routes]]
name = "limited"
path_prefix = "/limited/"
upstream = "{{echo}}"

[[routes]]
name = "dead"
path_prefix = "/dead/"
upstream = "{DEAD}"

[[routes]]
name = "graph"
path_prefix = "/v1.0/"
upstream = "{{echo}}"
exchange = "graph"

[exchange.graph]
client_id = "{CLIENT}"
token_endpoint = "{DEAD}/{{tenantid}}/oauth2/v2.0/token"
scope = "https://graph.microsoft.com/.default"
certificates = [ {{ cert = "{{dir}}/app.crt", key = "{{dir}}/app.key" }} ]
timeout = "1s"

[[rate_limits]]
name = "tight"
key = "tenant"
rate = 1
period = "1h"
burst = 1
routes = ["limited"]
"#
    )
}

/// A throwaway certificate and key for the exchange (its token endpoint is dead, so they are
/// never used to sign anything that leaves the test).
fn write_exchange_credentials(dir: &std::path::Path) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
        .or_else(|_| rcgen::KeyPair::generate())
        .expect("key");
    let cert = rcgen::CertificateParams::new(vec!["aadgate-test".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    std::fs::write(dir.join("app.crt"), cert.pem()).expect("write");
    std::fs::write(dir.join("app.key"), key.serialize_pem()).expect("write");
}

async fn start(world: &World, extra_server: &str) -> Gateway {
    let p = Prepared::new(&config(extra_server), world);
    write_exchange_credentials(p.dir.path());
    let path = p.dir.path().join("aadgate.toml");
    std::fs::write(&path, &p.rendered).expect("write config");
    let gw = p.launch(path, &[]).await;
    gw.wait_ready().await;
    gw
}

fn app(tid: &str) -> TokenSpec {
    TokenSpec::app(tid, AUD, &["Orders.Read"])
}

/// One refusal to provoke: the path, the bearer token, and the expected status and reason.
struct Case {
    path: String,
    token: Option<String>,
    status: u16,
    reason: &'static str,
}

fn cases(w: &World) -> Vec<Case> {
    let idp = &w.idp;
    let ok = idp.mint(&app(TENANT_A));
    let case = |path: &str, token: Option<String>, status: u16, reason: &'static str| Case {
        path: path.to_string(),
        token,
        status,
        reason,
    };
    vec![
        case("/orders/a%2Fb", None, 400, "bad_request"),
        case(
            &format!("/orders/{}", "a".repeat(600)),
            None,
            414,
            "uri_too_long",
        ),
        case("/nowhere", None, 404, "route_not_found"),
        case("/orders/1", None, 401, "missing_token"),
        case(
            "/orders/1",
            Some("not-a-jwt".into()),
            401,
            "malformed_token",
        ),
        case(
            "/orders/1",
            Some(with_header(&ok, json!({"alg": "none", "typ": "JWT"}))),
            401,
            "unsupported_alg",
        ),
        case(
            "/orders/1",
            Some(idp.mint(&app(TENANT_A).with_header("kid", json!("no-such-kid")))),
            401,
            "unknown_kid",
        ),
        case(
            "/orders/1",
            Some(tamper_claims(&ok, |c| c["roles"] = json!(["Orders.Admin"]))),
            401,
            "bad_signature",
        ),
        case(
            "/orders/1",
            Some(idp.mint(&app(TENANT_A).with_lifetime(-3600))),
            401,
            "expired",
        ),
        case(
            "/orders/1",
            Some(idp.mint(&app(TENANT_A).with_not_before_offset(3600))),
            401,
            "not_yet_valid",
        ),
        case(
            "/orders/1",
            Some(idp.mint(&TokenSpec::app(TENANT_A, "api://other", &["Orders.Read"]))),
            401,
            "bad_audience",
        ),
        case(
            "/orders/1",
            Some(idp.mint(&{
                let mut id_token = app(TENANT_A).without_claim("idtyp");
                id_token.appid = None;
                id_token.app_auth_strength = None;
                id_token
            })),
            401,
            "not_access_token",
        ),
        case(
            "/orders/1",
            Some(
                idp.mint(
                    &app(TENANT_A)
                        .with_claim("iss", json!(format!("https://sts.windows.net/{TENANT_B}/"))),
                ),
            ),
            401,
            "bad_issuer",
        ),
        case(
            "/orders/1",
            Some(idp.mint(&app("44444444-4444-4444-8444-444444444444"))),
            401,
            "tenant_not_allowed",
        ),
        case(
            "/orders/1",
            Some(idp.mint(&app(TENANT_C))),
            401,
            "tenant_denied",
        ),
        case(
            "/orders/1",
            Some(idp.mint(&app(TENANT_A).with_appid("99999999-9999-4999-8999-999999999999"))),
            403,
            "client_not_allowed",
        ),
        case(
            "/jobs/1",
            Some(idp.mint(&TokenSpec::app(TENANT_A, AUD, &["Jobs.Run"]).with_auth_strength("1"))),
            403,
            "weak_client_auth",
        ),
        case("/profile/me", Some(ok.clone()), 403, "wrong_token_kind"),
        case(
            "/orders/1",
            Some(idp.mint(&TokenSpec::app(TENANT_A, AUD, &["Other"]))),
            403,
            "missing_role",
        ),
        case(
            "/profile/me",
            Some(idp.mint(&TokenSpec::user(TENANT_A, AUD, "other.scope"))),
            403,
            "missing_scope",
        ),
        case(
            "/orders/1",
            Some(idp.mint(&app(TENANT_A).with_claim("acct", json!(1)))),
            403,
            "hook_denied",
        ),
        case("/hooked/1", Some(ok.clone()), 503, "hook_unavailable"),
        case("/v1.0/users", Some(ok.clone()), 503, "exchange_unavailable"),
        case("/dead/1", Some(ok.clone()), 502, "upstream_unavailable"),
    ]
}

/// What a refusal looked like to the caller.
#[derive(Debug)]
struct Seen {
    version: reqwest::Version,
    status: u16,
    header: Vec<(String, String)>,
    body: String,
}

impl Seen {
    fn get(&self, name: &str) -> Option<&str> {
        self.header
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

async fn send(client: &reqwest::Client, gw: &Gateway, case: &Case, grpc: bool) -> Seen {
    let mut req = client.post(gw.url(&case.path));
    if let Some(t) = &case.token {
        req = req.bearer_auth(t);
    }
    if grpc {
        // An empty unary gRPC frame: compressed flag 0, length 0.
        req = req
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(vec![0u8; 5]);
    }
    let r = req.send().await.expect("response");
    let version = r.version();
    let status = r.status().as_u16();
    let header = r
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("?").to_string()))
        .collect();
    let body = r.text().await.expect("body");
    Seen {
        version,
        status,
        header,
        body,
    }
}

fn h2c_client() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

fn h1_client() -> reqwest::Client {
    reqwest::Client::builder()
        .http1_only()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// The gRPC status and encoded message of section 13 for a section-4 status.
fn grpc_code(status: u16) -> &'static str {
    match status {
        401 => "16",
        403 => "7",
        404 => "12",
        400 | 414 => "3",
        429 => "8",
        502 | 503 => "14",
        _ => panic!("no mapping for {status}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_the_same_over_http2_and_a_grpc_status_for_grpc_calls() {
    let w = World::start().await;
    let gw = start(&w, "").await;
    let (h1, h2) = (h1_client(), h2c_client());
    let mut all = cases(&w);
    // The rate limit: the first call of the tenant is admitted, every later one refused.
    let limited_token = w.idp.mint(&app(TENANT_B));
    let first = send(
        &h2,
        &gw,
        &Case {
            path: "/limited/1".into(),
            token: Some(limited_token.clone()),
            status: 200,
            reason: "ok",
        },
        false,
    )
    .await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.version, reqwest::Version::HTTP_2);
    all.push(Case {
        path: "/limited/1".into(),
        token: Some(limited_token),
        status: 429,
        reason: "rate_limited",
    });

    for case in &all {
        let over_h1 = send(&h1, &gw, case, false).await;
        let over_h2 = send(&h2, &gw, case, false).await;
        let what = format!(
            "{} {}",
            case.reason,
            case.path.get(..40).unwrap_or(&case.path)
        );
        assert_eq!(over_h1.version, reqwest::Version::HTTP_11, "{what}");
        assert_eq!(over_h2.version, reqwest::Version::HTTP_2, "{what}");
        for seen in [&over_h1, &over_h2] {
            assert_eq!(seen.status, case.status, "{what}: {seen:?}");
            assert_eq!(seen.get("x-aadgate-reason"), Some(case.reason), "{what}");
            let body: Value = serde_json::from_str(&seen.body).expect("JSON body");
            assert_eq!(body["reason"], case.reason, "{what}");
            assert!(seen.get("x-request-id").is_some(), "{what}");
        }
        // The same response apart from the request id and the date.
        let strip = |s: &Seen| {
            let mut h: Vec<(String, String)> = s
                .header
                .iter()
                .filter(|(n, _)| !matches!(n.as_str(), "x-request-id" | "date" | "connection"))
                .filter(|(n, _)| !n.starts_with("ratelimit"))
                .cloned()
                .collect();
            h.sort();
            let mut body: Value = serde_json::from_str(&s.body).expect("JSON");
            body["request_id"] = Value::Null;
            (h, body)
        };
        assert_eq!(strip(&over_h1), strip(&over_h2), "{what}");

        let grpc = send(&h2, &gw, case, true).await;
        assert_eq!(
            grpc.status, 200,
            "{what}: a gRPC refusal is HTTP 200: {grpc:?}"
        );
        assert_eq!(grpc.body, "", "{what}: trailers-only, no body");
        assert_eq!(grpc.get("content-type"), Some("application/grpc"), "{what}");
        assert_eq!(
            grpc.get("grpc-status"),
            Some(grpc_code(case.status)),
            "{what}"
        );
        assert_eq!(grpc.get("x-aadgate-reason"), Some(case.reason), "{what}");
        let message = grpc.get("grpc-message").expect("grpc-message");
        let http_message: Value = serde_json::from_str(&over_h2.body).expect("JSON");
        let decoded = percent_encoding::percent_decode_str(message)
            .decode_utf8()
            .expect("UTF-8");
        assert_eq!(
            decoded,
            http_message["message"].as_str().expect("message"),
            "{what}"
        );
        assert!(
            message.bytes().all(|b| (0x20..0x7f).contains(&b)),
            "{what}: percent-encoded: {message}"
        );
        if case.status == 401 {
            assert!(grpc.get("www-authenticate").is_some(), "{what}");
        }
        if case.reason == "rate_limited" {
            assert!(grpc.get("retry-after").is_some(), "{what}");
        }
    }

    // Metrics count a gRPC refusal with its section-4 status, like HTTP.
    let m = gw.metrics().await;
    let count = |reason: &str, status: &str| {
        sample(
            &m,
            "aadgate_requests_total",
            &[
                &format!("status=\"{status}\""),
                &format!("reason=\"{reason}\""),
            ],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(count("missing_token", "401"), 3.0, "h1 + h2 + gRPC");
    assert_eq!(count("missing_role", "403"), 3.0);
    assert_eq!(count("missing_token", "200"), 0.0);
    gw.wait_for_log("proto=HTTP/2 path=/orders/1 route=orders status=401 reason=missing_token")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_and_http1_share_the_listener_and_reach_http1_upstreams() {
    let w = World::start().await;
    let gw = start(&w, "").await;
    let token = w.idp.mint(&app(TENANT_A));
    for (client, version) in [
        (h1_client(), reqwest::Version::HTTP_11),
        (h2c_client(), reqwest::Version::HTTP_2),
    ] {
        let r = client
            .get(gw.url("/orders/7?q=1"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("response");
        assert_eq!(r.version(), version);
        assert_eq!(r.status(), 200);
        assert!(r.headers().contains_key("x-request-id"));
        let seen = w.echo.last_request().expect("upstream saw it");
        assert_eq!(seen.path, "/orders/7");
        assert_eq!(seen.query.as_deref(), Some("q=1"));
        assert_eq!(seen.header("x-auth-tenant-id"), Some(TENANT_A));
        assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
        let host = format!("127.0.0.1:{}", gw.addr.port());
        assert_eq!(seen.header("x-forwarded-host"), Some(host.as_str()));
    }
    // Without `h2c = true` the listener speaks HTTP/1.1 only: prior-knowledge HTTP/2 fails.
    let plain = Gateway::start(
        &(base_config("", &format!("mode = \"allow_list\"\nallow = [\"{TENANT_A}\"]"))
            + "[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"{echo}\"\nauth = \"anonymous\"\n"),
        &w,
    )
    .await;
    plain.wait_ready().await;
    assert!(h2c_client().get(plain.url("/x")).send().await.is_err());
    assert_eq!(
        h1_client()
            .get(plain.url("/x"))
            .send()
            .await
            .expect("h1")
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listeners_negotiate_h2_by_alpn_and_still_serve_http1() {
    let w = World::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let cert =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("certificate");
    std::fs::write(dir.path().join("gw.crt"), cert.pem()).expect("write");
    std::fs::write(dir.path().join("gw.key"), key.serialize_pem()).expect("write");
    let d = dir.path().display();
    let gw = start(
        &w,
        &format!("tls = {{ cert = \"{d}/gw.crt\", key = \"{d}/gw.key\" }}"),
    )
    .await;
    let ca = reqwest::Certificate::from_pem(cert.pem().as_bytes()).expect("cert");
    let url = format!("https://127.0.0.1:{}/orders/1", gw.addr.port());
    let token = w.idp.mint(&app(TENANT_A));
    for (h1_only, version) in [
        (false, reqwest::Version::HTTP_2),
        (true, reqwest::Version::HTTP_11),
    ] {
        let mut b = reqwest::Client::builder().tls_certs_only([ca.clone()]);
        if h1_only {
            b = b.http1_only();
        }
        let client = b.build().expect("client");
        let r = client
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .expect("TLS");
        assert_eq!(r.version(), version);
        assert_eq!(r.status(), 200);
        let seen = w.echo.last_request().expect("request");
        assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
        // A refusal over TLS is the same JSON whatever the version.
        let r = client.get(&url).send().await.expect("TLS");
        assert_eq!(r.version(), version);
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.headers()
                .get("x-aadgate-reason")
                .and_then(|v| v.to_str().ok()),
            Some("missing_token")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket

mod websocket {
    use super::*;
    use aadgate_emulator::WsEnd;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::{Error as WsError, Message};

    type Ws = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    /// Routes to the echo's `/ws`: one plain, one that closes tunnels when the token expires.
    fn ws_config(extra_server: &str) -> String {
        base_config(
            "clock_skew = \"0s\"",
            &format!("mode = \"allow_list\"\nallow = [\"{TENANT_A}\"]\n"),
        )
        .replace("workers = 2", &format!("workers = 2\n{extra_server}"))
            + r#"
[[routes]]
name = "live"
path_prefix = "/ws"
upstream = "{echo}"
roles_any = ["Live.Read"]

[[routes]]
name = "expiring"
path_prefix = "/expiring/ws"
strip_prefix = "/expiring"
upstream = "{echo}"
roles_any = ["Live.Read"]
close_on_token_expiry = true
"#
    }

    fn live_token(w: &World, lifetime: i64) -> String {
        w.idp
            .mint(&TokenSpec::app(TENANT_A, AUD, &["Live.Read"]).with_lifetime(lifetime))
    }

    async fn connect(gw: &Gateway, path: &str, token: Option<&str>) -> Result<Ws, WsError> {
        let mut req = format!("ws://127.0.0.1:{}{path}", gw.addr.port())
            .into_client_request()
            .expect("request");
        if let Some(t) = token {
            req.headers_mut().insert(
                "authorization",
                format!("Bearer {t}").parse().expect("header value"),
            );
        }
        tokio_tungstenite::connect_async(req)
            .await
            .map(|(ws, _)| ws)
    }

    /// The next data or close message (pongs and pings are skipped); `None` when the stream
    /// ends without one.
    async fn next(ws: &mut Ws) -> Option<Result<Message, WsError>> {
        loop {
            match ws.next().await? {
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                other => return Some(other),
            }
        }
    }

    async fn upgrade_headers(ws: &mut Ws) -> Value {
        match next(ws).await {
            Some(Ok(Message::Text(t))) => serde_json::from_str(t.as_str()).expect("JSON"),
            other => panic!("expected the echo's headers message, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_upgrade_is_authenticated_then_tunnelled_both_ways() {
        let w = World::start().await;
        let gw = Gateway::start(&ws_config(""), &w).await;
        gw.wait_ready().await;
        let token = live_token(&w, 3600);
        let mut ws = connect(&gw, "/ws", Some(&token)).await.expect("upgraded");
        let seen = upgrade_headers(&mut ws).await;
        let h = &seen["headers"];
        assert_eq!(h["x-auth-tenant-id"][0], TENANT_A, "{seen}");
        assert_eq!(h["x-auth-roles"][0], "Live.Read", "{seen}");
        assert!(h["x-request-id"][0].is_string(), "{seen}");
        assert_eq!(
            h["upgrade"][0].as_str().map(str::to_lowercase).as_deref(),
            Some("websocket")
        );

        ws.send(Message::text("hello")).await.expect("send");
        assert_eq!(
            next(&mut ws).await.expect("echo").expect("ok"),
            Message::text("hello")
        );
        let blob: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        ws.send(Message::binary(blob.clone())).await.expect("send");
        assert_eq!(
            next(&mut ws).await.expect("echo").expect("ok"),
            Message::binary(blob)
        );
        ws.send(Message::Ping(b"are you there".to_vec().into()))
            .await
            .expect("ping");
        let pong = loop {
            match ws.next().await.expect("frame").expect("ok") {
                Message::Pong(p) => break p,
                _ => continue,
            }
        };
        assert_eq!(pong.as_ref(), b"are you there");

        // A reload leaves an open tunnel alone.
        gw.signal("HUP");
        gw.wait_for_log("configuration reloaded").await;
        ws.send(Message::text("after reload")).await.expect("send");
        assert_eq!(
            next(&mut ws).await.expect("echo").expect("ok"),
            Message::text("after reload")
        );

        ws.close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }))
        .await
        .expect("close");
        assert_eq!(
            w.echo.ws_ended(0).await,
            WsEnd::Closed {
                code: Some(1000),
                reason: "bye".into()
            }
        );
        // The access log tells the upgrade once its tunnel has closed.
        gw.wait_for_log("proto=HTTP/1.1 path=/ws route=live status=101")
            .await;
        let m = gw.metrics().await;
        assert!(
            sample(
                &m,
                "aadgate_requests_total",
                &["route=\"live\"", "status=\"101\""]
            )
            .is_some_and(|n| n >= 1.0),
            "{m}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_upgrade_gets_the_json_answer_and_no_tunnel() {
        let w = World::start().await;
        let gw = Gateway::start(&ws_config(""), &w).await;
        gw.wait_ready().await;
        let refused = |e: WsError| match e {
            WsError::Http(resp) => {
                let reason = resp
                    .headers()
                    .get("x-aadgate-reason")
                    .and_then(|v| v.to_str().ok())
                    .map(String::from);
                let body: Value =
                    serde_json::from_slice(resp.body().as_deref().unwrap_or_default())
                        .unwrap_or(Value::Null);
                (resp.status().as_u16(), reason, body)
            }
            other => panic!("expected an HTTP refusal, got {other}"),
        };
        let (status, reason, body) =
            refused(connect(&gw, "/ws", None).await.expect_err("no token"));
        assert_eq!((status, reason.as_deref()), (401, Some("missing_token")));
        assert_eq!(body["reason"], "missing_token");
        let wrong_role = w.idp.mint(&TokenSpec::app(TENANT_A, AUD, &["Other"]));
        let (status, reason, _) = refused(
            connect(&gw, "/ws", Some(&wrong_role))
                .await
                .expect_err("no role"),
        );
        assert_eq!((status, reason.as_deref()), (403, Some("missing_role")));
        let expired = live_token(&w, -60);
        let (status, reason, _) = refused(
            connect(&gw, "/ws", Some(&expired))
                .await
                .expect_err("expired"),
        );
        assert_eq!((status, reason.as_deref()), (401, Some("expired")));
        assert!(
            w.echo.ws_connections().is_empty(),
            "no tunnel reached the upstream"
        );
        assert!(w.echo.requests().iter().all(|r| r.path != "/ws"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tunnel_closes_when_its_token_expires_on_routes_that_ask_for_it() {
        let w = World::start().await;
        let gw = Gateway::start(&ws_config(""), &w).await;
        gw.wait_ready().await;
        // Both tunnels carry a token that expires in two seconds.
        let token = live_token(&w, 2);
        let mut expiring = connect(&gw, "/expiring/ws", Some(&token))
            .await
            .expect("upgraded");
        upgrade_headers(&mut expiring).await;
        let mut kept = connect(&gw, "/ws", Some(&token)).await.expect("upgraded");
        upgrade_headers(&mut kept).await;
        expiring.send(Message::text("before")).await.expect("send");
        assert_eq!(
            next(&mut expiring).await.expect("echo").expect("ok"),
            Message::text("before")
        );
        // Silent from here on: the gateway closes it at the expiry with 1008.
        let closed = tokio::time::timeout(std::time::Duration::from_secs(30), next(&mut expiring))
            .await
            .expect("closed within the token's lifetime and a margin");
        match closed {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(frame.code, CloseCode::Policy);
                assert_eq!(frame.reason.as_str(), "token expired");
            }
            other => panic!("expected a close frame 1008, got {other:?}"),
        }
        // The upstream saw its side of the tunnel end (the first connection is the expiring one).
        assert_eq!(w.echo.ws_connections()[0].request.path, "/ws");
        assert_eq!(w.echo.ws_ended(0).await, WsEnd::Dropped);
        // The route without close_on_token_expiry keeps its tunnel past the expiry.
        kept.send(Message::text("after")).await.expect("send");
        assert_eq!(
            next(&mut kept).await.expect("echo").expect("ok"),
            Message::text("after")
        );
        assert!(w.echo.ws_connections()[1].end.is_none());
        gw.wait_for_log("tunnel closed: the caller's token expired")
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_tunnel_is_closed_after_tunnel_idle_timeout() {
        let w = World::start().await;
        let gw = Gateway::start(&ws_config("tunnel_idle_timeout = \"1s\""), &w).await;
        gw.wait_ready().await;
        let mut ws = connect(&gw, "/ws", Some(&live_token(&w, 3600)))
            .await
            .expect("upgraded");
        upgrade_headers(&mut ws).await;
        let end = tokio::time::timeout(std::time::Duration::from_secs(30), next(&mut ws))
            .await
            .expect("closed by the idle timeout");
        assert!(
            !matches!(end, Some(Ok(Message::Text(_) | Message::Binary(_)))),
            "{end:?}"
        );
        assert_eq!(w.echo.ws_ended(0).await, WsEnd::Dropped);
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 upstreams, streaming bodies and trailers

mod streaming {
    use super::*;

    /// The echo twice: as an `h2c://` upstream and as an HTTP/1.1 one.
    fn stream_config(w: &World) -> String {
        let h2c = w.echo.base_url().replace("http://", "h2c://");
        base_config(
            "",
            &format!("mode = \"allow_list\"\nallow = [\"{TENANT_A}\"]\n"),
        )
        .replace("workers = 2", "workers = 2\nh2c = true")
            + &format!(
                r#"
[[routes]]
name = "via-h2c"
path_prefix = "/h2/"
strip_prefix = "/h2"
upstream = "{h2c}"

[[routes]]
name = "via-h1"
path_prefix = "/h1/"
strip_prefix = "/h1"
upstream = "{{echo}}"
"#
            )
    }

    fn sha256(data: &[u8]) -> Vec<u8> {
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
            .as_ref()
            .to_vec()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_client_version_reaches_each_upstream_version_with_the_identity() {
        let w = World::start().await;
        let gw = Gateway::start(&stream_config(&w), &w).await;
        gw.wait_ready().await;
        let token = w.idp.mint(&app(TENANT_A));
        for (client, client_version) in [(h1_client(), "HTTP/1.1"), (h2c_client(), "HTTP/2")] {
            for (prefix, upstream_version) in [("/h2", "HTTP/2.0"), ("/h1", "HTTP/1.1")] {
                let r = client
                    .get(gw.url(&format!("{prefix}/orders/1?x=1")))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .expect("response");
                assert_eq!(r.status(), 200, "{client_version} -> {prefix}");
                let body: Value = r.json().await.expect("JSON");
                assert_eq!(
                    body["version"], upstream_version,
                    "{client_version} -> {prefix}"
                );
                assert_eq!(body["path"], "/orders/1");
                assert_eq!(body["query"], "x=1");
                assert_eq!(body["headers"]["x-auth-tenant-id"][0], TENANT_A);
                let host = format!("127.0.0.1:{}", gw.addr.port());
                assert_eq!(body["headers"]["x-forwarded-host"][0], host.as_str());
            }
        }
        gw.wait_for_log("proto=HTTP/2 path=/h2/orders/1 route=via-h2c status=200")
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn five_megabytes_stream_through_both_ways_on_every_combination() {
        let w = World::start().await;
        let gw = Gateway::start(&stream_config(&w), &w).await;
        gw.wait_ready().await;
        let token = w.idp.mint(&app(TENANT_A));
        let upload: Vec<u8> = (0..5 * 1024 * 1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let want = sha256(&upload);
        for client in [h1_client(), h2c_client()] {
            for prefix in ["/h2", "/h1"] {
                let r = client
                    .post(gw.url(&format!("{prefix}/upload-echo")))
                    .bearer_auth(&token)
                    .header("content-type", "application/octet-stream")
                    .body(upload.clone())
                    .send()
                    .await
                    .expect("response");
                assert_eq!(r.status(), 200, "{prefix}");
                let back = r.bytes().await.expect("body");
                assert_eq!(back.len(), upload.len(), "{prefix}");
                assert_eq!(sha256(&back), want, "{prefix}: the same bytes came back");
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn trailers_from_an_h2c_upstream_reach_an_http2_client() {
        let w = World::start().await;
        let gw = Gateway::start(&stream_config(&w), &w).await;
        gw.wait_ready().await;
        let token = w.idp.mint(&app(TENANT_A));
        let tcp = tokio::net::TcpStream::connect(gw.addr)
            .await
            .expect("connect");
        let (mut h2, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("http://127.0.0.1:{}/h2/trailers", gw.addr.port()))
            .header("authorization", format!("Bearer {token}"))
            .header("te", "trailers")
            .body(())
            .expect("request");
        let (response, mut send) = h2.send_request(req, false).expect("send");
        send.send_data(bytes::Bytes::from_static(b"ping"), true)
            .expect("body");
        let response = response.await.expect("response");
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let mut data = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.expect("chunk");
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        let json: Value = serde_json::from_slice(&data).expect("JSON");
        assert_eq!(json["version"], "HTTP/2.0");
        assert_eq!(json["body_bytes"], 4);
        assert_eq!(
            json["headers"]["te"][0], "trailers",
            "gRPC servers expect it"
        );
        let trailers = body
            .trailers()
            .await
            .expect("trailers")
            .expect("some trailers");
        assert_eq!(
            trailers.get("x-echo-trailer").and_then(|v| v.to_str().ok()),
            Some("done")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// gRPC through the gateway, with tonic as client and service

mod grpc {
    use super::*;
    use aadgate_emulator::grpc::{Code, Status};
    use aadgate_emulator::{GrpcEchoClient, GrpcEchoHandle, GrpcEchoServer};

    /// The echo service behind `/aadgate.echo.v1.Echo/` (h2c upstream), a rate-limited second
    /// route for it under a prefix, and a dead h2c upstream.
    fn grpc_config(service: &GrpcEchoHandle, extra_server: &str) -> String {
        let upstream = format!("h2c://{}", service.addr());
        let plain = service.addr();
        base_config(
            "",
            &format!("mode = \"allow_list\"\nallow = [\"{TENANT_A}\", \"{TENANT_B}\"]\n"),
        )
        .replace(
            "workers = 2",
            &format!("workers = 2\nh2c = true\n{extra_server}"),
        ) + &format!(
            r#"
[[routes]]
name = "echo-grpc"
path_prefix = "/aadgate.echo.v1.Echo/"
upstream = "{upstream}"
roles_any = ["Echo.Call"]

[[routes]]
name = "limited-grpc"
path_prefix = "/limited/aadgate.echo.v1.Echo/"
strip_prefix = "/limited"
upstream = "{upstream}"
roles_any = ["Echo.Call"]

[[routes]]
name = "misrouted-grpc"
path_prefix = "/h1/aadgate.echo.v1.Echo/"
strip_prefix = "/h1"
upstream = "http://{plain}"

[[routes]]
name = "dead-grpc"
path_prefix = "/dead/aadgate.echo.v1.Echo/"
strip_prefix = "/dead"
upstream = "h2c://127.0.0.1:1"

[[rate_limits]]
name = "one-call"
key = "tenant"
rate = 1
period = "1h"
burst = 1
routes = ["limited-grpc"]
"#
        )
    }

    fn caller(w: &World) -> String {
        w.idp.mint(&TokenSpec::app(TENANT_A, AUD, &["Echo.Call"]))
    }

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    fn reason(status: &Status) -> Option<&str> {
        status
            .metadata()
            .get("x-aadgate-reason")
            .and_then(|v| v.to_str().ok())
    }

    async fn started(extra_server: &str) -> (World, GrpcEchoHandle, Gateway) {
        let w = World::start().await;
        let service = GrpcEchoServer::start("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("gRPC echo starts");
        let gw = Gateway::start(&grpc_config(&service, extra_server), &w).await;
        gw.wait_ready().await;
        (w, service, gw)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unary_calls_carry_metadata_identity_and_trailers_both_ways() {
        let (w, service, gw) = started("").await;
        let client = GrpcEchoClient::connect(&gw.url("")).await.expect("connect");
        let token = caller(&w);
        let auth = bearer(&token);
        let out = client
            .unary(
                "hello",
                vec![7u8; 1024],
                &[("authorization", &auth), ("x-caller-tag", "blue")],
            )
            .await
            .expect("the call succeeds");
        assert_eq!(out.reply.message, "hello");
        assert_eq!(out.reply.payload.len(), 1024);
        // What the service received: the caller's metadata and the verified identity.
        let seen = &out.reply.metadata;
        assert_eq!(seen.get("x-caller-tag").map(String::as_str), Some("blue"));
        assert_eq!(
            seen.get("x-auth-tenant-id").map(String::as_str),
            Some(TENANT_A)
        );
        assert_eq!(
            seen.get("x-auth-roles").map(String::as_str),
            Some("Echo.Call")
        );
        assert_eq!(seen.get("te").map(String::as_str), Some("trailers"));
        assert!(seen.contains_key("x-request-id"));
        // What the caller received: the service's header metadata and trailers.
        assert_eq!(
            out.headers
                .get("x-echo-header")
                .and_then(|v| v.to_str().ok()),
            Some("unary")
        );
        assert!(out.headers.contains_key("x-request-id"));
        assert_eq!(
            out.trailers
                .get("x-echo-trailer")
                .and_then(|v| v.to_str().ok()),
            Some("done")
        );
        assert_eq!(service.calls(), 1);
        let m = gw.metrics().await;
        assert_eq!(
            sample(
                &m,
                "aadgate_requests_total",
                &["route=\"echo-grpc\"", "status=\"200\""]
            ),
            Some(1.0),
            "{m}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_large_messages_and_the_services_own_statuses_pass_through() {
        let (w, _service, gw) = started("").await;
        let client = GrpcEchoClient::connect(&gw.url("")).await.expect("connect");
        let auth = bearer(&caller(&w));
        let md = [("authorization", auth.as_str())];
        // Server streaming: 100 replies of 10 KiB.
        let stream = client
            .server_stream(100, 10 * 1024, &md)
            .await
            .expect("stream");
        assert!(stream.error.is_none(), "{:?}", stream.error);
        assert_eq!(stream.replies.len(), 100);
        assert!(stream.replies.iter().all(|r| r.payload.len() == 10 * 1024));
        assert_eq!(stream.replies[99].message, "reply 99");
        // Large messages both ways: 5 MiB up and the same 5 MiB back.
        let big: Vec<u8> = (0..5 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let out = client
            .unary("big", big.clone(), &md)
            .await
            .expect("5 MiB call");
        assert_eq!(out.reply.payload.as_ref(), big.as_slice());
        // The service's own non-OK status and message reach the caller untouched, and the
        // gateway adds no reason: it did not refuse anything.
        for code in [Code::NotFound, Code::PermissionDenied, Code::Internal] {
            let status = client
                .fail(code, "from the service", &md)
                .await
                .expect_err("the service fails the call");
            assert_eq!(status.code(), code);
            assert_eq!(status.message(), "from the service");
            assert_eq!(reason(&status), None);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refused_calls_are_grpc_statuses_a_tonic_client_understands() {
        let (w, service, gw) = started("").await;
        let client = GrpcEchoClient::connect(&gw.url("")).await.expect("connect");
        let expect = |result: Result<aadgate_emulator::grpc::UnaryOutcome, Status>,
                      code: Code,
                      want: &str| {
            let status = result.expect_err("refused");
            assert_eq!(status.code(), code, "{want}: {status:?}");
            assert_eq!(reason(&status), Some(want), "{status:?}");
            assert!(!status.message().is_empty());
            status
        };
        let status = expect(
            client.unary("x", vec![], &[]).await,
            Code::Unauthenticated,
            "missing_token",
        );
        assert!(
            status.message().contains("Authorization"),
            "{}",
            status.message()
        );
        assert!(status.metadata().get("www-authenticate").is_some());
        let wrong_role = bearer(&w.idp.mint(&TokenSpec::app(TENANT_A, AUD, &["Other"])));
        let status = expect(
            client
                .unary("x", vec![], &[("authorization", &wrong_role)])
                .await,
            Code::PermissionDenied,
            "missing_role",
        );
        assert!(
            status.message().contains("Echo.Call"),
            "{}",
            status.message()
        );
        let stranger = bearer(&w.idp.mint(&TokenSpec::app(TENANT_C, AUD, &["Echo.Call"])));
        expect(
            client
                .unary("x", vec![], &[("authorization", &stranger)])
                .await,
            Code::Unauthenticated,
            "tenant_not_allowed",
        );
        let expired = bearer(
            &w.idp
                .mint(&TokenSpec::app(TENANT_A, AUD, &["Echo.Call"]).with_lifetime(-3600)),
        );
        expect(
            client
                .unary("x", vec![], &[("authorization", &expired)])
                .await,
            Code::Unauthenticated,
            "expired",
        );
        assert_eq!(service.calls(), 0, "no refused call reached the service");

        let auth = bearer(&caller(&w));
        let md = [("authorization", auth.as_str())];
        // No route for the service under another prefix: UNIMPLEMENTED.
        let elsewhere = GrpcEchoClient::connect(&gw.url("/nowhere"))
            .await
            .expect("connect");
        expect(
            elsewhere.unary("x", vec![], &md).await,
            Code::Unimplemented,
            "route_not_found",
        );
        // The rate limit: one call, then RESOURCE_EXHAUSTED with Retry-After.
        let limited = GrpcEchoClient::connect(&gw.url("/limited"))
            .await
            .expect("connect");
        limited
            .unary("first", vec![], &md)
            .await
            .expect("the first call passes");
        let status = expect(
            limited.unary("second", vec![], &md).await,
            Code::ResourceExhausted,
            "rate_limited",
        );
        assert!(status.metadata().get("retry-after").is_some());
        // A service that cannot be reached: UNAVAILABLE.
        let dead = GrpcEchoClient::connect(&gw.url("/dead"))
            .await
            .expect("connect");
        expect(
            dead.unary("x", vec![], &md).await,
            Code::Unavailable,
            "upstream_unavailable",
        );
        // A gRPC service behind an http:// (HTTP/1.1) upstream cannot answer: the caller gets
        // UNAVAILABLE and the log says what to change, once.
        let misrouted = GrpcEchoClient::connect(&gw.url("/h1"))
            .await
            .expect("connect");
        for _ in 0..2 {
            let status = misrouted.unary("x", vec![], &md).await.expect_err("fails");
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        }
        let logs = gw
            .wait_for_log("a gRPC call is going to an HTTP/1.1 upstream")
            .await;
        assert_eq!(
            logs.matches("a gRPC call is going to an HTTP/1.1 upstream")
                .count(),
            1,
            "{logs}"
        );
        // A refused server-streaming call is refused before any message.
        let status = client.server_stream(3, 1, &[]).await.expect_err("refused");
        assert_eq!(status.code(), Code::Unauthenticated);

        let m = gw.metrics().await;
        let count = |route: &str, status: &str, reason: &str| {
            sample(
                &m,
                "aadgate_requests_total",
                &[
                    &format!("route=\"{route}\""),
                    &format!("status=\"{status}\""),
                    &format!("reason=\"{reason}\""),
                ],
            )
        };
        assert_eq!(count("echo-grpc", "401", "missing_token"), Some(2.0), "{m}");
        assert_eq!(count("echo-grpc", "403", "missing_role"), Some(1.0), "{m}");
        assert_eq!(
            count("limited-grpc", "429", "rate_limited"),
            Some(1.0),
            "{m}"
        );
        assert_eq!(
            count("dead-grpc", "502", "upstream_unavailable"),
            Some(1.0),
            "{m}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn grpc_over_tls_with_alpn_reaches_an_h2_tls_service() {
        let w = World::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = |name: &str| {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
            let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
                .expect("params")
                .self_signed(&key)
                .expect("certificate");
            std::fs::write(dir.path().join(format!("{name}.crt")), cert.pem()).expect("write");
            std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem())
                .expect("write");
            (cert.pem(), key.serialize_pem())
        };
        let (gw_cert, _) = cert("gw");
        let (svc_cert, svc_key) = cert("svc");
        let service = GrpcEchoServer::start_tls(
            "127.0.0.1:0".parse().expect("addr"),
            svc_cert.as_bytes(),
            svc_key.as_bytes(),
        )
        .await
        .expect("TLS gRPC echo starts");
        let d = dir.path().display();
        let template = base_config(
            "",
            &format!("mode = \"allow_list\"\nallow = [\"{TENANT_A}\"]\n"),
        )
        .replace(
            "workers = 2",
            &format!("workers = 2\ntls = {{ cert = \"{d}/gw.crt\", key = \"{d}/gw.key\" }}"),
        ) + &format!(
            "[[routes]]\nname = \"echo-grpc\"\npath_prefix = \"/aadgate.echo.v1.Echo/\"\n\
                 upstream = \"https://localhost:{}\"\nupstream_protocol = \"h2\"\n\
                 roles_any = [\"Echo.Call\"]\n",
            service.addr().port()
        );
        // The gateway trusts the service's self-signed certificate through SSL_CERT_FILE.
        let p = Prepared::new(&template, &w);
        let path = p.dir.path().join("aadgate.toml");
        std::fs::write(&path, &p.rendered).expect("write config");
        let ca = dir.path().join("svc.crt");
        let gw = p
            .launch_with_env(
                path,
                &[],
                &[("SSL_CERT_FILE", Some(&ca.display().to_string()))],
            )
            .await;
        gw.wait_ready().await;
        let client = GrpcEchoClient::connect_tls(
            &format!("https://localhost:{}", gw.addr.port()),
            gw_cert.as_bytes(),
        )
        .await
        .expect("TLS connect");
        let auth = bearer(&caller(&w));
        let out = client
            .unary("over tls", vec![1, 2, 3], &[("authorization", &auth)])
            .await
            .expect("the call succeeds");
        assert_eq!(out.reply.message, "over tls");
        assert_eq!(
            out.reply
                .metadata
                .get("x-forwarded-proto")
                .map(String::as_str),
            Some("https")
        );
        assert_eq!(
            out.trailers
                .get("x-echo-trailer")
                .and_then(|v| v.to_str().ok()),
            Some("done")
        );
        let status = client.unary("x", vec![], &[]).await.expect_err("refused");
        assert_eq!(status.code(), Code::Unauthenticated);
    }
}
