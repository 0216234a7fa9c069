use base64::Engine as _;
use serde_json::{json, Value};

use super::*;
use crate::{
    AppRegistration, Emulator, EmulatorOptions, TokenSpec, DEFAULT_TENANT, GRAPH_RESOURCE,
};

const CLIENT: &str = "5e1f2a3b-4c5d-4e6f-8a7b-9c0d1e2f3a4b";
const OTHER_TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT_REQUEST_ID: &str = "3f2504e0-4f89-11d3-9a0c-0305e82c3301";

async fn start() -> (EmulatorHandle, MockGraphHandle) {
    let emu = Emulator::start(
        "127.0.0.1:0".parse().expect("addr"),
        EmulatorOptions::default(),
    )
    .await
    .expect("emulator");
    let graph = MockGraph::start("127.0.0.1:0".parse().expect("addr"), emu.clone())
        .await
        .expect("graph");
    (emu, graph)
}

/// An app-only v1 Graph token of [`CLIENT`] in the default tenant.
fn app(roles: &[&str]) -> TokenSpec {
    TokenSpec::app(DEFAULT_TENANT, GRAPH_RESOURCE, roles)
        .with_ver(1)
        .with_appid(CLIENT)
}

/// `spec` as a CAE token (the client declared `cp1`).
fn cae(spec: TokenSpec) -> TokenSpec {
    spec.with_claim("xms_cc", json!(["cp1"]))
}

async fn get(graph: &MockGraphHandle, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .get(format!("{}{path}", graph.base_url()))
        .header("client-request-id", CLIENT_REQUEST_ID)
        .header("return-client-request-id", "true");
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send().await.expect("send")
}

async fn send_mail(
    graph: &MockGraphHandle,
    path: &str,
    token: &str,
    body: &str,
) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}{path}", graph.base_url()))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("send")
}

/// (status, `error.code`, `error.message`, `WWW-Authenticate` values) of an error answer.
async fn refusal(resp: reqwest::Response) -> (u16, String, String, Vec<String>) {
    let status = resp.status().as_u16();
    let challenges = resp
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().expect("ascii").to_string())
        .collect();
    let body: Value = resp.json().await.expect("json error body");
    let text = |p: &str| {
        body.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    (
        status,
        text("/error/code"),
        text("/error/message"),
        challenges,
    )
}

/// The value of parameter `name` in a challenge (`name="value"`).
fn param(challenge: &str, name: &str) -> Option<String> {
    let start = challenge.find(&format!("{name}=\""))? + name.len() + 2;
    let len = challenge[start..].find('"')?;
    Some(challenge[start..start + len].to_string())
}

/// The claims request of a CAE challenge, decoded.
fn decoded_claims(challenge: &str) -> Value {
    let encoded = param(challenge, "claims").expect("claims parameter");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("standard base64");
    serde_json::from_slice(&bytes).expect("claims JSON")
}

const GRAPH_BEARER: &str = "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", client_id=\"00000003-0000-0000-c000-000000000000\"";

#[tokio::test]
async fn an_app_token_reads_users_by_guid_and_upn() {
    let (emu, graph) = start().await;
    let token = emu.mint(&app(&["User.Read.All"]));

    let resp = get(
        &graph,
        "/v1.0/users/alice.smith%40contoso.example",
        Some(&token),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("application/json;odata.metadata=minimal"));
    let alice: Value = resp.json().await.expect("json");
    assert_eq!(
        alice["@odata.context"],
        "https://graph.microsoft.com/v1.0/$metadata#users/$entity"
    );
    assert_eq!(alice["displayName"], "Alice Smith");
    assert_eq!(alice["userPrincipalName"], "alice.smith@contoso.example");
    assert_eq!(alice["mail"], "alice.smith@contoso.example");
    let id = alice["id"].as_str().expect("id").to_string();
    assert!(crate::is_guid(&id));

    let again: Value = get(
        &graph,
        "/v1.0/Users/alice.smith@contoso.example",
        Some(&token),
    )
    .await
    .json()
    .await
    .expect("json");
    assert_eq!(again, alice, "the same UPN gives the same user");

    let by_guid: Value = get(&graph, &format!("/v1.0/users/{id}"), Some(&token))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(by_guid["id"], id.as_str());
    assert!(by_guid["userPrincipalName"]
        .as_str()
        .is_some_and(|upn| upn.ends_with(".onmicrosoft.com")));

    let directory = emu.mint(&app(&["Directory.Read.All"]));
    assert_eq!(
        get(&graph, "/v1.0/users/bob@contoso.example", Some(&directory))
            .await
            .status(),
        200
    );
    let graph_app_id_aud = emu.mint(&app(&["User.Read.All"]).with_aud(GRAPH_APP_ID));
    assert_eq!(
        get(
            &graph,
            "/v1.0/users/bob@contoso.example",
            Some(&graph_app_id_aud)
        )
        .await
        .status(),
        200
    );
    let v2 = emu.mint(
        &TokenSpec::app(DEFAULT_TENANT, GRAPH_RESOURCE, &["User.Read.All"]).with_appid(CLIENT),
    );
    assert_eq!(
        get(&graph, "/v1.0/users/bob@contoso.example", Some(&v2))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn an_app_token_lists_messages_in_graphs_shape() {
    let (emu, graph) = start().await;
    let token = emu.mint(&app(&["Mail.Read"]));
    let resp = get(
        &graph,
        "/v1.0/users/alice@contoso.example/messages",
        Some(&token),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["odata-version"], "4.0");
    let body: Value = resp.json().await.expect("json");
    assert!(body["@odata.context"].as_str().is_some_and(|c| c
        .starts_with("https://graph.microsoft.com/v1.0/$metadata#users('")
        && c.ends_with("')/messages")));
    let messages = body["value"].as_array().expect("value");
    assert_eq!(messages.len(), 3);
    for message in messages {
        for field in ["id", "subject", "receivedDateTime", "bodyPreview"] {
            assert!(message[field].is_string(), "{field} in {message}");
        }
        assert!(message.pointer("/from/emailAddress/address").is_some());
    }
    assert_eq!(
        messages[0].pointer("/toRecipients/0/emailAddress/address"),
        Some(&json!("alice@contoso.example"))
    );

    let read_write = emu.mint(&app(&["Mail.ReadWrite"]));
    let again: Value = get(
        &graph,
        "/v1.0/users/alice@contoso.example/messages",
        Some(&read_write),
    )
    .await
    .json()
    .await
    .expect("json");
    assert_eq!(again, body, "the inbox is deterministic");
}

#[tokio::test]
async fn send_mail_is_accepted_with_202_and_recorded() {
    let (emu, graph) = start().await;
    let token = emu.mint(&app(&["Mail.Send"]));
    let body = r#"{"message":{"subject":"Build 42","body":{"contentType":"Text","content":"green"},
        "toRecipients":[{"emailAddress":{"address":"bob@contoso.example"}}]},"saveToSentItems":false}"#;
    let resp = send_mail(
        &graph,
        "/v1.0/users/alice%40contoso.example/sendMail",
        &token,
        body,
    )
    .await;
    assert_eq!(resp.status(), 202);
    assert!(resp.headers().get("request-id").is_some());
    assert_eq!(resp.bytes().await.expect("body").len(), 0);

    let sent = graph.sent_mail();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].tenant, DEFAULT_TENANT);
    assert_eq!(sent[0].mailbox, "alice@contoso.example");
    assert_eq!(sent[0].client_id.as_deref(), Some(CLIENT));
    assert_eq!(sent[0].subject.as_deref(), Some("Build 42"));
    assert_eq!(sent[0].recipients, ["bob@contoso.example"]);
    assert!(!sent[0].save_to_sent_items);
    assert_eq!(sent[0].message["body"]["content"], "green");
}

#[tokio::test]
async fn send_mail_bodies_graph_refuses_are_400s() {
    let (emu, graph) = start().await;
    let token = emu.mint(&app(&["Mail.Send"]));
    let path = "/v1.0/users/alice@contoso.example/sendMail";
    let cases = [
        ("", "BadRequest", "Empty Payload. JSON content expected."),
        (
            "{\"message\":",
            "BadRequest",
            "Unable to read JSON request payload.",
        ),
        (
            r#"{"saveToSentItems":true}"#,
            "ErrorInvalidParameter",
            "The value of the parameter 'Message' is empty.",
        ),
        (
            r#"{"message":{"subject":"no one"}}"#,
            "ErrorInvalidRecipients",
            "A message can't be sent because it contains no recipients.",
        ),
    ];
    for (body, code, message) in cases {
        let (status, got_code, got_message, _) =
            refusal(send_mail(&graph, path, &token, body).await).await;
        assert_eq!((status, got_code.as_str()), (400, code), "{body}");
        assert!(got_message.contains(message), "{body}: {got_message}");
    }
    assert!(graph.sent_mail().is_empty());
}

#[tokio::test]
async fn me_with_an_app_only_token_is_graphs_400() {
    let (emu, graph) = start().await;
    let token = emu.mint(&app(&["User.Read.All", "Mail.Read", "Mail.Send"]));
    for path in ["/v1.0/me", "/v1.0/me/messages"] {
        let (status, code, message, challenges) =
            refusal(get(&graph, path, Some(&token)).await).await;
        assert_eq!(status, 400, "{path}");
        assert_eq!(code, "BadRequest");
        assert_eq!(
            message,
            "/me request is only valid with delegated authentication flow."
        );
        assert!(challenges.is_empty());
    }
    let resp = send_mail(&graph, "/v1.0/me/sendMail", &token, "{}").await;
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn delegated_tokens_reach_their_own_data_through_me() {
    let (emu, graph) = start().await;
    let alice = |scp: &str| {
        emu.mint(
            &TokenSpec::user(DEFAULT_TENANT, GRAPH_RESOURCE, scp).with_upn("alice@contoso.example"),
        )
    };
    let token = alice("User.Read Mail.Read Mail.Send");
    let me: Value = get(&graph, "/v1.0/me", Some(&token))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(me["id"], crate::DEFAULT_USER_OID);
    assert_eq!(me["userPrincipalName"], "alice@contoso.example");
    let own = get(&graph, "/v1.0/users/alice@contoso.example", Some(&token)).await;
    assert_eq!(own.json::<Value>().await.expect("json"), me);
    assert_eq!(
        get(&graph, "/v1.0/me/messages", Some(&token))
            .await
            .status(),
        200
    );
    let mail =
        r#"{"message":{"toRecipients":[{"emailAddress":{"address":"bob@contoso.example"}}]}}"#;
    assert_eq!(
        send_mail(&graph, "/v1.0/me/sendMail", &token, mail)
            .await
            .status(),
        202
    );
    assert_eq!(graph.sent_mail()[0].mailbox, "alice@contoso.example");
    assert!(graph.sent_mail()[0].save_to_sent_items);

    let (status, code, ..) =
        refusal(get(&graph, "/v1.0/users/bob@contoso.example", Some(&token)).await).await;
    assert_eq!(
        (status, code.as_str()),
        (403, "Authorization_RequestDenied")
    );
    let (status, code, ..) = refusal(
        get(
            &graph,
            "/v1.0/users/bob@contoso.example/messages",
            Some(&token),
        )
        .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (403, "ErrorAccessDenied"));
    let shared = alice("Mail.Read.Shared");
    assert_eq!(
        get(
            &graph,
            "/v1.0/users/bob@contoso.example/messages",
            Some(&shared)
        )
        .await
        .status(),
        200
    );
}

#[tokio::test]
async fn every_token_failure_is_invalid_authentication_token_with_graphs_challenge() {
    let (emu, graph) = start().await;
    let path = "/v1.0/users/alice@contoso.example/messages";
    let forged = crate::SigningKey::generate()
        .expect("key")
        .mint(&app(&["Mail.Read"]));
    let mut tampered = emu.mint(&app(&["Mail.Read"]));
    tampered.push('A');
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no token", None, "Access token is empty."),
        (
            "not a JWT",
            Some("not-a-token".into()),
            "CompactToken parsing failed with error code: 80049217",
        ),
        ("another key", Some(forged), "Signature is invalid."),
        ("tampered", Some(tampered), "Signature is invalid."),
        (
            "expired",
            Some(emu.mint(&app(&["Mail.Read"]).with_lifetime(-3600))),
            "Lifetime validation failed, the token is expired.",
        ),
        (
            "not yet valid",
            Some(emu.mint(&app(&["Mail.Read"]).with_not_before_offset(3600))),
            "Lifetime validation failed, the token is not yet valid.",
        ),
        (
            "Outlook audience",
            Some(emu.mint(&app(&["Mail.Read"]).with_aud(crate::OUTLOOK_RESOURCE))),
            "Access token validation failure. Invalid audience.",
        ),
        (
            "tenant not a GUID",
            Some(emu.mint(&app(&["Mail.Read"]).with_tid("contoso.onmicrosoft.com"))),
            "Access token validation failure. Invalid issuer.",
        ),
        (
            "issuer of another tenant",
            Some(emu.mint(
                &app(&["Mail.Read"]).with_claim("iss", json!(crate::issuer_v1(OTHER_TENANT))),
            )),
            "Access token validation failure. Invalid issuer.",
        ),
        (
            "no roles",
            Some(emu.mint(&app(&[]).with_claim("roles", Value::Null))),
            "Either scp or roles claim need to be present in the token.",
        ),
    ];
    for (name, token, message) in cases {
        let resp = get(&graph, path, token.as_deref()).await;
        let (status, code, got, challenges) = refusal(resp).await;
        assert_eq!(status, 401, "{name}");
        assert_eq!(code, "InvalidAuthenticationToken", "{name}");
        assert_eq!(got, message, "{name}");
        assert_eq!(challenges, [GRAPH_BEARER], "{name}");
    }
    // Just inside the five minutes of skew.
    let barely = emu.mint(&app(&["Mail.Read"]).with_lifetime(-200));
    assert_eq!(get(&graph, path, Some(&barely)).await.status(), 200);
}

#[tokio::test]
async fn missing_permissions_get_graphs_403_codes() {
    let (emu, graph) = start().await;
    let cases = [
        (
            "/v1.0/users/alice@contoso.example",
            &["Mail.Read"][..],
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        ),
        (
            "/v1.0/users/alice@contoso.example/messages",
            &["User.Read.All", "Mail.Send"][..],
            "ErrorAccessDenied",
            "Access is denied. Check credentials and try again.",
        ),
    ];
    for (path, roles, code, message) in cases {
        let token = emu.mint(&app(roles));
        let (status, got_code, got_message, challenges) =
            refusal(get(&graph, path, Some(&token)).await).await;
        assert_eq!(
            (status, got_code.as_str(), got_message.as_str()),
            (403, code, message),
            "{path}"
        );
        assert!(challenges.is_empty());
    }
    let read_only = emu.mint(&app(&["Mail.ReadWrite"]));
    let body =
        r#"{"message":{"toRecipients":[{"emailAddress":{"address":"bob@contoso.example"}}]}}"#;
    let (status, code, ..) = refusal(
        send_mail(
            &graph,
            "/v1.0/users/alice@contoso.example/sendMail",
            &read_only,
            body,
        )
        .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (403, "ErrorAccessDenied"));
}

#[tokio::test]
async fn unknown_paths_methods_versions_and_users() {
    let (emu, graph) = start().await;
    let token = emu.mint(&app(&["User.Read.All", "Mail.Read"]));
    let cases = [
        ("/v1.0/groups", 400, "BadRequest", "Resource not found for the segment 'groups'."),
        ("/v1.0/users/alice@contoso.example/events", 400, "BadRequest", "Resource not found for the segment 'events'."),
        ("/v2.0/users/alice@contoso.example", 400, "BadRequest", "Invalid version: v2.0"),
        ("/v1.0/users/alice", 404, "Request_ResourceNotFound", "Resource 'alice' does not exist or one of its queried reference-property objects are not present."),
        ("/v1.0/users/alice/messages", 404, "ErrorInvalidUser", "The requested user 'alice' is invalid."),
        ("/v1.0/users/alice@contoso.example/sendMail", 405, "BadRequest", "The HTTP method 'GET' is not allowed on this resource."),
    ];
    for (path, status, code, message) in cases {
        let (got_status, got_code, got_message, _) =
            refusal(get(&graph, path, Some(&token)).await).await;
        assert_eq!(
            (got_status, got_code.as_str(), got_message.as_str()),
            (status, code, message),
            "{path}"
        );
    }
    // The version is checked before the token, the segment after it.
    assert_eq!(get(&graph, "/beta/me", None).await.status(), 400);
    assert_eq!(get(&graph, "/v1.0/groups", None).await.status(), 401);
}

#[tokio::test]
async fn every_answer_carries_request_ids_and_a_date() {
    let (emu, graph) = start().await;
    let token = emu.mint(&app(&["Mail.Read"]));
    let ok = get(
        &graph,
        "/v1.0/users/alice@contoso.example/messages",
        Some(&token),
    )
    .await;
    assert!(ok
        .headers()
        .get("request-id")
        .and_then(|v| v.to_str().ok())
        .is_some_and(crate::is_guid));
    assert_eq!(ok.headers()["client-request-id"], CLIENT_REQUEST_ID);
    assert!(ok.headers().get("date").is_some());

    let refused = get(&graph, "/v1.0/users/alice@contoso.example/messages", None).await;
    let request_id = refused.headers()["request-id"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert_eq!(refused.headers()["client-request-id"], CLIENT_REQUEST_ID);
    assert!(refused.headers().get("date").is_some());
    let body: Value = refused.json().await.expect("json");
    let inner = &body["error"]["innerError"];
    assert_eq!(inner["request-id"], request_id.as_str());
    assert_eq!(inner["client-request-id"], CLIENT_REQUEST_ID);
    let date = inner["date"].as_str().expect("date");
    assert_eq!(date.len(), "2024-02-02T19:22:43".len(), "{date}");
    assert_eq!(&date[10..11], "T");

    // Without return-client-request-id the caller's id is not echoed as a header.
    let resp = reqwest::Client::new()
        .get(format!(
            "{}/v1.0/users/alice@contoso.example/messages",
            graph.base_url()
        ))
        .header("client-request-id", CLIENT_REQUEST_ID)
        .send()
        .await
        .expect("send");
    assert!(resp.headers().get("client-request-id").is_none());
    assert!(resp.headers().get("request-id").is_some());
    assert_eq!(graph.request_count(), 3);
    assert_eq!(
        graph.requests()[0].header("client-request-id"),
        Some(CLIENT_REQUEST_ID)
    );
}

#[tokio::test]
async fn a_cae_token_issued_before_a_critical_event_gets_the_claims_challenge() {
    let (emu, graph) = start().await;
    let path = "/v1.0/users/alice@contoso.example/messages";
    let earlier = unix_now() - 60;
    let cae_token = emu.mint(&cae(app(&["Mail.Read"])).with_now(earlier));
    let plain_token = emu.mint(&app(&["Mail.Read"]).with_now(earlier));
    assert_eq!(get(&graph, path, Some(&cae_token)).await.status(), 200);
    assert_eq!(graph.required_not_before(DEFAULT_TENANT, CLIENT), None);

    let event = graph.revoke_sessions(DEFAULT_TENANT, CLIENT);
    let required = graph
        .required_not_before(DEFAULT_TENANT, CLIENT)
        .expect("an event");
    let event_secs = event
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    assert_eq!(required, event_secs as i64 + 1);
    // A CAE token minted in the same second as the event, before it, is challenged too.
    let same_second = emu.mint(&cae(app(&["Mail.Read"])).with_now(event_secs as i64));

    for token in [&cae_token, &same_second] {
        let (status, code, message, challenges) =
            refusal(get(&graph, path, Some(token)).await).await;
        assert_eq!(status, 401);
        assert_eq!(code, "InvalidAuthenticationToken");
        assert_eq!(
            message,
            "Continuous access evaluation resulted in challenge with result: InteractionRequired and code: TokenIssuedBeforeRevocationTimestamp"
        );
        assert_eq!(challenges.len(), 1);
        let challenge = &challenges[0];
        assert!(challenge.starts_with(GRAPH_BEARER), "{challenge}");
        assert_eq!(
            param(challenge, "error").as_deref(),
            Some("insufficient_claims")
        );
        assert_eq!(
            param(challenge, "error_description").as_deref(),
            Some(message.as_str())
        );
        assert_eq!(
            decoded_claims(challenge),
            json!({ "access_token": { "nbf": { "essential": true, "value": required.to_string() } } })
        );
    }
    assert_eq!(graph.challenge_count(), 2);

    // Without cp1 the token keeps working until it expires: that is what CAE is about.
    assert_eq!(get(&graph, path, Some(&plain_token)).await.status(), 200);
    // Other apps and other tenants are not affected.
    let other_app = emu.mint(
        &cae(app(&["Mail.Read"]))
            .with_appid("6f7a8b9c-0d1e-4f2a-8b3c-4d5e6f7a8b9c")
            .with_now(earlier),
    );
    assert_eq!(get(&graph, path, Some(&other_app)).await.status(), 200);
    let other_tenant = emu.mint(
        &cae(app(&["Mail.Read"]))
            .with_tid(OTHER_TENANT)
            .with_now(earlier),
    );
    assert_eq!(get(&graph, path, Some(&other_tenant)).await.status(), 200);

    // The client re-acquires with the challenge's claims: a token valid from `required` on.
    let renewed = emu.mint(&cae(app(&["Mail.Read"])).with_claim("nbf", json!(required)));
    assert_eq!(get(&graph, path, Some(&renewed)).await.status(), 200);
    let later = emu.mint(&cae(app(&["Mail.Read"])).with_now(required + 5));
    assert_eq!(get(&graph, path, Some(&later)).await.status(), 200);
    assert_eq!(graph.challenge_count(), 2);
}

#[tokio::test]
async fn removing_the_service_principal_challenges_the_apps_cae_tokens_only() {
    let (emu, graph) = start().await;
    emu.consent(DEFAULT_TENANT, CLIENT, vec!["Mail.Read".into()]);
    let path = "/v1.0/users/alice@contoso.example/messages";
    let earlier = unix_now() - 60;
    let cae_token = emu.mint(&cae(app(&["Mail.Read"])).with_now(earlier));
    let plain_token = emu.mint(&app(&["Mail.Read"]).with_now(earlier));
    assert_eq!(get(&graph, path, Some(&cae_token)).await.status(), 200);

    assert!(emu.revoke_consent(DEFAULT_TENANT, CLIENT));
    let required = graph
        .required_not_before(DEFAULT_TENANT, CLIENT)
        .expect("the removal is a revocation event");
    let (status, _, _, challenges) = refusal(get(&graph, path, Some(&cae_token)).await).await;
    assert_eq!(status, 401);
    assert_eq!(
        decoded_claims(&challenges[0]),
        json!({ "access_token": { "nbf": { "essential": true, "value": required.to_string() } } })
    );
    assert_eq!(get(&graph, path, Some(&plain_token)).await.status(), 200);
    // Another tenant's consent is untouched.
    let elsewhere = emu.mint(
        &cae(app(&["Mail.Read"]))
            .with_tid(OTHER_TENANT)
            .with_now(earlier),
    );
    assert_eq!(get(&graph, path, Some(&elsewhere)).await.status(), 200);
}

#[tokio::test]
async fn a_cae_token_from_the_token_endpoint_is_challenged_after_the_event() {
    let (emu, graph) = start().await;
    emu.register_app(AppRegistration::new(CLIENT).with_secret("s3cret"))
        .expect("register");
    emu.consent(DEFAULT_TENANT, CLIENT, vec!["Mail.Read".into()]);
    let response: Value = reqwest::Client::new()
        .post(emu.token_endpoint(DEFAULT_TENANT))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT),
            ("client_secret", "s3cret"),
            ("scope", "https://graph.microsoft.com/.default"),
            (
                "claims",
                r#"{"access_token":{"xms_cc":{"values":["cp1"]}}}"#,
            ),
        ])
        .send()
        .await
        .expect("token request")
        .json()
        .await
        .expect("token JSON");
    let token = response["access_token"].as_str().expect("access_token");
    let path = "/v1.0/users/alice@contoso.example/messages";
    assert_eq!(get(&graph, path, Some(token)).await.status(), 200);

    graph.revoke_sessions(DEFAULT_TENANT, CLIENT);
    let resp = get(&graph, path, Some(token)).await;
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert_eq!(
        param(&challenge, "error").as_deref(),
        Some("insufficient_claims")
    );
}

#[tokio::test]
async fn forced_401s_and_pop_challenges() {
    let (emu, graph) = start().await;
    let token = emu.mint(&app(&["Mail.Read"]));
    let path = "/v1.0/users/alice@contoso.example/messages";
    graph.fail_next_with_401(2);
    for _ in 0..2 {
        let (status, _, message, _) = refusal(get(&graph, path, Some(&token)).await).await;
        assert_eq!(status, 401);
        assert_eq!(message, "Lifetime validation failed, the token is expired.");
    }
    assert_eq!(get(&graph, path, Some(&token)).await.status(), 200);

    graph.send_pop_challenges(true);
    let (_, _, _, challenges) = refusal(get(&graph, path, None).await).await;
    assert_eq!(challenges.len(), 2);
    assert!(challenges[0].starts_with("PoP realm=\"\", authorization_uri="));
    assert!(param(&challenges[0], "nonce").is_some_and(|n| !n.is_empty()));
    assert_eq!(challenges[1], GRAPH_BEARER);
    graph.send_pop_challenges(false);
    let (_, _, _, challenges) = refusal(get(&graph, path, None).await).await;
    assert_eq!(challenges, [GRAPH_BEARER]);
}
