//! Federated identity credentials on the token endpoint: each AADSTS answer, the emulator's
//! service-account issuer, an external issuer reached over HTTP (and its cached keys), and a
//! managed identity's token as the assertion.

use serde_json::{json, Value};

use super::tests::{claims_of, CLIENT};
use super::JWT_BEARER_ASSERTION_TYPE;
use crate::keys::SigningKey;
use crate::FederatedCredential;
use crate::{AppRegistration, Emulator, EmulatorHandle, EmulatorOptions};
use crate::{TokenOutcome, DEFAULT_TENANT, GRAPH_RESOURCE, TOKEN_EXCHANGE_AUDIENCE};

const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";

async fn emulator() -> EmulatorHandle {
    Emulator::start(
        "127.0.0.1:0".parse().expect("addr"),
        EmulatorOptions::default(),
    )
    .await
    .expect("emulator")
}

/// An emulator with [`CLIENT`] consented in the default tenant, trusting `credentials`.
async fn trusting(credentials: Vec<FederatedCredential>) -> EmulatorHandle {
    let emu = emulator().await;
    let mut app = AppRegistration::new(CLIENT);
    for credential in credentials {
        app = app.with_federated(credential);
    }
    emu.register_app(app).expect("register");
    emu.consent(DEFAULT_TENANT, CLIENT, vec!["Mail.Read".into()]);
    emu
}

/// A client-credentials request with `assertion`; (status, body).
async fn redeem(emu: &EmulatorHandle, assertion: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(emu.token_endpoint(DEFAULT_TENANT))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT),
            ("scope", GRAPH_SCOPE),
            ("client_assertion_type", JWT_BEARER_ASSERTION_TYPE),
            ("client_assertion", assertion),
        ])
        .send()
        .await
        .expect("post");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

fn code(body: &Value) -> u64 {
    body["error_codes"][0].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn a_service_account_token_of_the_emulators_issuer_gets_an_app_token() {
    let emu = trusting(vec![]).await;
    let issuer = emu.service_account_issuer();
    assert_eq!(issuer, format!("{}/k8s", emu.base_url()));
    assert!(emu.add_federated_credential(
        CLIENT,
        FederatedCredential::new(&issuer, "system:serviceaccount:gateway:aadgate"),
    ));
    let token = emu
        .mint_service_account_token("gateway", "aadgate")
        .expect("sa token");
    let (status, body) = redeem(&emu, &token).await;
    assert_eq!(status, 200, "{body}");
    let claims = claims_of(body["access_token"].as_str().expect("token"));
    assert_eq!(claims["aud"], GRAPH_RESOURCE);
    assert_eq!(claims["appid"], CLIENT);
    assert_eq!(claims["appidacr"], "2");
    assert_eq!(claims["roles"], json!(["Mail.Read"]));
    let record = emu.token_requests().pop().expect("record");
    assert!(record.federated);
    assert_eq!(record.outcome, TokenOutcome::Issued);
    // The emulator's own issuer is checked without HTTP.
    assert_eq!(emu.federation_fetch_count(), 0);
}

#[tokio::test]
async fn each_mismatch_gets_entra_ids_code() {
    let emu = trusting(vec![]).await;
    let issuer = emu.service_account_issuer();
    let subject = "system:serviceaccount:gateway:aadgate";
    let token = |ns: &str, name: &str, aud: &str| {
        emu.mint_service_account_token_for(ns, name, aud, 3600)
            .expect("token")
    };
    // No federated credential at all: the generic 70021, naming issuer, subject and audience.
    let (status, body) = redeem(&emu, &token("gateway", "aadgate", TOKEN_EXCHANGE_AUDIENCE)).await;
    assert_eq!((status, code(&body)), (400, 70_021), "{body}");
    assert_eq!(body["error"], "invalid_request");
    let text = body["error_description"].as_str().expect("description");
    assert!(text.starts_with("AADSTS70021: No matching federated identity record found for presented assertion. Assertion Issuer: '"), "{text}");
    assert!(
        text.contains(&format!("Assertion Subject: '{subject}'")),
        "{text}"
    );

    emu.add_federated_credential(
        CLIENT,
        FederatedCredential::new("https://token.actions.githubusercontent.com", subject),
    );
    let (status, body) = redeem(&emu, &token("gateway", "aadgate", TOKEN_EXCHANGE_AUDIENCE)).await;
    assert_eq!((status, code(&body)), (401, 700_211), "{body}");
    assert_eq!(body["error"], "invalid_client");
    assert!(body["error_description"]
        .as_str()
        .expect("text")
        .contains(&format!("presented assertion issuer '{issuer}'")));

    emu.add_federated_credential(CLIENT, FederatedCredential::new(&issuer, subject));
    // Subjects are compared case-sensitively.
    let (status, body) = redeem(&emu, &token("gateway", "AADGATE", TOKEN_EXCHANGE_AUDIENCE)).await;
    assert_eq!((status, code(&body)), (401, 700_213), "{body}");
    let (status, body) = redeem(&emu, &token("gateway", "aadgate", "api://not-the-exchange")).await;
    assert_eq!((status, code(&body)), (401, 700_212), "{body}");
    assert!(body["error_description"]
        .as_str()
        .expect("text")
        .contains("presented assertion audience 'api://not-the-exchange'"));
    let (status, _) = redeem(&emu, &token("gateway", "aadgate", TOKEN_EXCHANGE_AUDIENCE)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_credential_with_another_audience_accepts_that_audience() {
    let emu = trusting(vec![]).await;
    let credential =
        FederatedCredential::new(&emu.service_account_issuer(), "system:serviceaccount:ns:sa")
            .with_audience("api://AzureADTokenExchangeUSGov");
    emu.add_federated_credential(CLIENT, credential);
    let token = emu
        .mint_service_account_token_for("ns", "sa", "api://AzureADTokenExchangeUSGov", 600)
        .expect("token");
    assert_eq!(redeem(&emu, &token).await.0, 200);
}

#[tokio::test]
async fn an_expired_or_forged_federated_assertion_is_refused() {
    let emu = trusting(vec![]).await;
    let issuer = emu.service_account_issuer();
    emu.add_federated_credential(
        CLIENT,
        FederatedCredential::new(&issuer, "system:serviceaccount:ns:sa"),
    );
    let expired = emu
        .mint_service_account_token_for("ns", "sa", TOKEN_EXCHANGE_AUDIENCE, -3600)
        .expect("token");
    let (status, body) = redeem(&emu, &expired).await;
    assert_eq!((status, code(&body)), (401, 700_024), "{body}");

    // The same claims signed by a key the issuer does not publish.
    let good = emu.mint_service_account_token("ns", "sa").expect("token");
    let (input, _) = good.rsplit_once('.').expect("dot");
    let forger = SigningKey::generate().expect("key");
    let forged = format!("{input}.{}", forger.sign(input.as_bytes()).expect("sign"));
    let (status, body) = redeem(&emu, &forged).await;
    assert_eq!((status, code(&body)), (401, 50_013), "{body}");
}

#[tokio::test]
async fn an_external_issuers_keys_are_fetched_once_and_again_after_a_rotation() {
    // A second emulator plays the external cluster: its issuer is reached over HTTP.
    let cluster = emulator().await;
    let emu = trusting(vec![FederatedCredential::new(
        &cluster.service_account_issuer(),
        "system:serviceaccount:prod:api",
    )])
    .await;
    let token = cluster
        .mint_service_account_token("prod", "api")
        .expect("token");
    assert_eq!(redeem(&emu, &token).await.0, 200);
    assert_eq!(emu.federation_fetch_count(), 2, "metadata, then JWKS");
    assert_eq!(cluster.service_account_fetch_count(), 2);
    let again = cluster
        .mint_service_account_token("prod", "api")
        .expect("token");
    assert_eq!(redeem(&emu, &again).await.0, 200);
    assert_eq!(emu.federation_fetch_count(), 2, "keys cached");

    // An assertion naming a key the cached set lacks makes the emulator fetch again; the key
    // is still unknown to the issuer, so the answer is the signature error.
    let unknown_kid = {
        let mut parts = token.split('.');
        let header: Value = serde_json::from_slice(
            &crate::b64url_decode(parts.next().expect("header")).expect("b64"),
        )
        .expect("json");
        let mut header = header.as_object().cloned().expect("object");
        header.insert("kid".into(), json!("rotated-key"));
        let key = SigningKey::generate().expect("key");
        let input = format!(
            "{}.{}",
            crate::b64url(&serde_json::to_vec(&header).expect("json")),
            parts.next().expect("claims")
        );
        format!("{input}.{}", key.sign(input.as_bytes()).expect("sign"))
    };
    let (status, body) = redeem(&emu, &unknown_kid).await;
    assert_eq!((status, code(&body)), (401, 50_013), "{body}");
    assert_eq!(emu.federation_fetch_count(), 4);
    cluster.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_issuer_gets_50166() {
    let cluster = emulator().await;
    let issuer = cluster.service_account_issuer();
    let token = cluster
        .mint_service_account_token("prod", "api")
        .expect("token");
    cluster.shutdown().await;
    let emu = trusting(vec![FederatedCredential::new(
        &issuer,
        "system:serviceaccount:prod:api",
    )])
    .await;
    let (status, body) = redeem(&emu, &token).await;
    assert_eq!((status, code(&body)), (400, 50_166), "{body}");
    assert!(body["error_description"]
        .as_str()
        .expect("text")
        .starts_with("AADSTS50166: Request to External OIDC endpoint failed."));
}

/// IMDS's answer for the token exchange audience (`client_id` names a user-assigned identity).
async fn imds_token(emu: &EmulatorHandle, client_id: Option<&str>) -> Value {
    let mut url = format!(
        "{}?api-version=2018-02-01&resource=api%3A%2F%2FAzureADTokenExchange",
        emu.imds_token_endpoint()
    );
    if let Some(client_id) = client_id {
        url.push_str(&format!("&client_id={client_id}"));
    }
    reqwest::Client::new()
        .get(url)
        .header("Metadata", "true")
        .send()
        .await
        .expect("imds")
        .json()
        .await
        .expect("json")
}

#[tokio::test]
async fn a_managed_identitys_token_from_imds_is_a_federated_assertion() {
    let emu = trusting(vec![]).await;
    let system = emu.system_managed_identity();
    emu.add_federated_credential(CLIENT, FederatedCredential::for_managed_identity(&system));
    let imds = imds_token(&emu, None).await;
    let assertion = imds["access_token"].as_str().expect("token");
    let claims = claims_of(assertion);
    assert_eq!(claims["iss"], crate::issuer_v2(DEFAULT_TENANT));
    assert_eq!(claims["sub"], system.principal_id);
    assert_eq!(claims["aud"], TOKEN_EXCHANGE_AUDIENCE);
    let (status, body) = redeem(&emu, assertion).await;
    assert_eq!(status, 200, "{body}");

    // A user-assigned identity the app does not trust: its subject does not match.
    let user = emu.add_user_assigned_identity("6a1f7c2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b");
    let other = imds_token(&emu, Some(&user.client_id)).await;
    let (status, body) = redeem(&emu, other["access_token"].as_str().expect("token")).await;
    assert_eq!((status, code(&body)), (401, 700_213), "{body}");
}

#[tokio::test]
async fn an_entra_token_that_is_not_a_managed_identitys_is_refused() {
    let emu = trusting(vec![]).await;
    let sub = "0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e";
    emu.add_federated_credential(
        CLIENT,
        FederatedCredential::new(&crate::issuer_v2(DEFAULT_TENANT), sub),
    );
    let token = emu.mint(
        &crate::TokenSpec::app(DEFAULT_TENANT, TOKEN_EXCHANGE_AUDIENCE, &[])
            .with_sub(sub)
            .with_oid(sub),
    );
    let (status, body) = redeem(&emu, &token).await;
    assert_eq!((status, code(&body)), (401, 700_226), "{body}");
}
