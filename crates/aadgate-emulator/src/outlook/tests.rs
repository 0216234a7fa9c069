use super::*;
use crate::{Emulator, EmulatorOptions, TokenSpec, DEFAULT_TENANT};

async fn start() -> (EmulatorHandle, MockOutlookHandle) {
    let emu = Emulator::start(
        "127.0.0.1:0".parse().expect("addr"),
        EmulatorOptions::default(),
    )
    .await
    .expect("emulator");
    let outlook = MockOutlook::start("127.0.0.1:0".parse().expect("addr"), emu.clone())
        .await
        .expect("outlook");
    (emu, outlook)
}

async fn call(outlook: &MockOutlookHandle, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .get(format!("{}{path}", outlook.base_url()))
        .header("client-request-id", "3f2504e0-4f89-11d3-9a0c-0305e82c3301")
        .header("return-client-request-id", "true");
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send().await.expect("send")
}

fn diagnostics(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("x-ms-diagnostics")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

fn app_token(emu: &EmulatorHandle, aud: &str, roles: &[&str]) -> String {
    emu.mint(&TokenSpec::app(DEFAULT_TENANT, aud, roles).with_ver(1))
}

#[tokio::test]
async fn app_only_certificate_token_reads_messages_on_both_apis() {
    let (emu, outlook) = start().await;
    let token = app_token(&emu, OUTLOOK_RESOURCE, &["Mail.Read"]);
    let resp = call(
        &outlook,
        "/api/v2.0/users/alice%40contoso.example/messages",
        Some(&token),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("request-id").is_some());
    assert_eq!(
        resp.headers()["client-request-id"],
        "3f2504e0-4f89-11d3-9a0c-0305e82c3301"
    );
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["value"].as_array().map(Vec::len), Some(3));
    assert!(body["value"][0]["Subject"]
        .as_str()
        .is_some_and(|s| s.contains("alice@contoso.example")));

    let graph_token = app_token(&emu, GRAPH_RESOURCE, &["Mail.ReadWrite"]);
    let resp = call(&outlook, "/v1.0/Users/bob/Messages", Some(&graph_token)).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("json");
    assert!(body["value"][0]["subject"].is_string());

    let recorded = outlook.requests();
    assert_eq!(recorded.len(), 2);
    assert!(recorded[0].header("authorization").is_some());
}

#[tokio::test]
async fn exchange_diagnostics_for_each_refusal() {
    let (emu, outlook) = start().await;
    let path = "/api/v2.0/users/alice/messages";

    let resp = call(&outlook, path, None).await;
    assert_eq!(resp.status(), 401);
    assert!(resp.headers()["www-authenticate"]
        .to_str()
        .expect("ascii")
        .starts_with("Bearer client_id=\"00000002-0000-0ff1-ce00-000000000000\""));

    let resp = call(&outlook, path, Some("not-a-token")).await;
    assert_eq!(resp.status(), 401);
    assert!(diagnostics(&resp).starts_with("2000001;"));

    let other = crate::SigningKey::generate().expect("key");
    let forged = other.mint(&TokenSpec::app(
        DEFAULT_TENANT,
        OUTLOOK_RESOURCE,
        &["Mail.Read"],
    ));
    let resp = call(&outlook, path, Some(&forged)).await;
    assert_eq!(
        diagnostics(&resp),
        "2000000;reason=\"The token has an invalid signature.\";error_category=\"invalid_signature\""
    );

    let expired = emu.mint(
        &TokenSpec::app(DEFAULT_TENANT, OUTLOOK_RESOURCE, &["Mail.Read"]).with_lifetime(-3600),
    );
    let resp = call(&outlook, path, Some(&expired)).await;
    assert_eq!(resp.status(), 401);
    assert!(diagnostics(&resp).contains("The token has expired."));

    let graph = app_token(&emu, GRAPH_RESOURCE, &["Mail.Read"]);
    let resp = call(&outlook, path, Some(&graph)).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(
        diagnostics(&resp),
        "2000003;reason=\"The audience claim value is invalid 'https://graph.microsoft.com'.\";error_category=\"invalid_resource\""
    );

    let secret_based = emu.mint(
        &TokenSpec::app(DEFAULT_TENANT, OUTLOOK_RESOURCE, &["Mail.Read"]).with_auth_strength("1"),
    );
    let resp = call(&outlook, path, Some(&secret_based)).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(
        diagnostics(&resp),
        "2000010;reason=\"The access token is acquired using an authentication method that is too weak to allow access for this application. Presented auth strength was 1, required is 2.\";error_category=\"insufficient_auth_strength\""
    );

    let no_roles = emu.mint(
        &TokenSpec::app(DEFAULT_TENANT, OUTLOOK_RESOURCE, &[]).with_claim("roles", Value::Null),
    );
    let resp = call(&outlook, path, Some(&no_roles)).await;
    assert_eq!(resp.status(), 401);
    assert!(diagnostics(&resp).contains("missing the claim type 'roles'"));

    let wrong_role = app_token(&emu, OUTLOOK_RESOURCE, &["Calendars.Read"]);
    let resp = call(&outlook, path, Some(&wrong_role)).await;
    assert_eq!(resp.status(), 403);
    assert_eq!(
        diagnostics(&resp),
        "2000008;reason=\"The token contains not enough scope to make this call.\";error_category=\"invalid_grant\""
    );

    let app = app_token(&emu, OUTLOOK_RESOURCE, &["Mail.Read"]);
    let resp = call(&outlook, "/api/v2.0/me/messages", Some(&app)).await;
    assert_eq!(resp.status(), 401);
    assert!(diagnostics(&resp).contains("No applicable user context claims found."));
    let graph_app = app_token(&emu, GRAPH_RESOURCE, &["Mail.Read"]);
    let resp = call(&outlook, "/v1.0/me/messages", Some(&graph_app)).await;
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn delegated_tokens_read_only_their_own_mailbox() {
    let (emu, outlook) = start().await;
    let user = emu.mint(
        &TokenSpec::user(DEFAULT_TENANT, OUTLOOK_RESOURCE, "Mail.Read")
            .with_ver(1)
            .with_upn("alice@contoso.example"),
    );
    let resp = call(&outlook, "/api/v2.0/me/messages", Some(&user)).await;
    assert_eq!(resp.status(), 200);
    let resp = call(
        &outlook,
        "/api/v2.0/users/alice@contoso.example/messages",
        Some(&user),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let resp = call(
        &outlook,
        "/api/v2.0/users/bob@contoso.example/messages",
        Some(&user),
    )
    .await;
    assert_eq!(resp.status(), 403);
}

#[tokio::test]
async fn fail_next_with_401_then_recovers() {
    let (emu, outlook) = start().await;
    let token = app_token(&emu, OUTLOOK_RESOURCE, &["Mail.Read"]);
    outlook.fail_next_with_401(2);
    let path = "/api/v2.0/users/alice/messages";
    assert_eq!(call(&outlook, path, Some(&token)).await.status(), 401);
    assert_eq!(call(&outlook, path, Some(&token)).await.status(), 401);
    assert_eq!(call(&outlook, path, Some(&token)).await.status(), 200);
    assert_eq!(outlook.request_count(), 3);
}
