//! The managed-identity endpoints, the service-account issuer, the workload control endpoints,
//! the consent revocation time, and HTTPS with a public URL.

use serde_json::{json, Value};

use super::{AppRegistration, Emulator, EmulatorHandle, EmulatorOptions};
use crate::{b64url_decode, DEFAULT_TENANT, TOKEN_EXCHANGE_AUDIENCE};

const CLIENT: &str = "3c2a9b8e-5d4f-4e6a-9b1c-7d8e9f0a1b2c";
const USER_ASSIGNED: &str = "6a1f7c2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b";

async fn emulator() -> EmulatorHandle {
    Emulator::start(
        "127.0.0.1:0".parse().expect("addr"),
        EmulatorOptions::default(),
    )
    .await
    .expect("emulator")
}

fn claims_of(token: &str) -> Value {
    let part = token.split('.').nth(1).expect("claims");
    serde_json::from_slice(&b64url_decode(part).expect("b64")).expect("json")
}

async fn get(url: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut request = reqwest::Client::new().get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("get");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn imds_wants_the_metadata_header_and_answers_imds_json() {
    let emu = emulator().await;
    let url = format!(
        "{}?api-version=2018-02-01&resource=https://management.azure.com/",
        emu.imds_token_endpoint()
    );
    let (status, body) = get(&url, &[]).await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"error": "invalid_request", "error_description": "Required metadata header not specified"})
    );
    let (status, body) = get(&url, &[("Metadata", "true")]).await;
    assert_eq!(status, 200, "{body}");
    let system = emu.system_managed_identity();
    assert_eq!(body["client_id"], system.client_id);
    assert_eq!(body["resource"], "https://management.azure.com/");
    assert_eq!(body["token_type"], "Bearer");
    // IMDS writes its numbers as strings.
    assert_eq!(body["expires_in"], "86399");
    let expires_on: i64 = body["expires_on"]
        .as_str()
        .expect("string")
        .parse()
        .expect("number");
    assert!(expires_on > crate::unix_now() + 86_000);
    let claims = claims_of(body["access_token"].as_str().expect("token"));
    assert_eq!(claims["aud"], "https://management.azure.com/");
    assert_eq!(claims["iss"], crate::issuer_v1(DEFAULT_TENANT));
    assert_eq!(claims["oid"], system.principal_id);
    assert_eq!(claims["appid"], system.client_id);
    assert_eq!(claims["idtyp"], "app");
    assert!(claims["xms_mirid"].as_str().is_some());

    assert_eq!(emu.imds_request_count(), 2);
    let requests = emu.managed_identity_requests();
    assert_eq!(requests[0].header("metadata"), None);
    assert_eq!(requests[1].header("metadata"), Some("true"));
    assert_eq!(requests[1].path, "/metadata/identity/oauth2/token");
    let counts: Value = reqwest::get(format!("{}/_emulator/counts", emu.base_url()))
        .await
        .expect("counts")
        .json()
        .await
        .expect("json");
    assert_eq!(counts["imds"], 2);
    emu.reset_counts();
    assert_eq!(emu.imds_request_count(), 0);
    assert!(emu.managed_identity_requests().is_empty());
}

#[tokio::test]
async fn imds_names_user_assigned_identities_by_client_id_and_refuses_unknown_ones() {
    let emu = emulator().await;
    let user = emu.add_user_assigned_identity(USER_ASSIGNED);
    assert!(!user.system_assigned);
    assert_eq!(
        emu.add_user_assigned_identity(USER_ASSIGNED),
        user,
        "idempotent"
    );
    let base = format!(
        "{}?api-version=2018-02-01&resource=api%3A%2F%2FAzureADTokenExchange",
        emu.imds_token_endpoint()
    );
    let metadata = [("Metadata", "true")];
    let (status, body) = get(&format!("{base}&client_id={USER_ASSIGNED}"), &metadata).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["client_id"], USER_ASSIGNED);
    let claims = claims_of(body["access_token"].as_str().expect("token"));
    assert_eq!(claims["sub"], user.principal_id);
    assert_eq!(claims["aud"], TOKEN_EXCHANGE_AUDIENCE);
    assert_eq!(claims["iss"], crate::issuer_v2(DEFAULT_TENANT));
    assert_eq!(claims["ver"], "2.0");
    let (status, body) = get(
        &format!("{base}&object_id={}", user.principal_id),
        &metadata,
    )
    .await;
    assert_eq!((status, &body["client_id"]), (200, &json!(USER_ASSIGNED)));
    let resource_id = format!(
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/aadgate-dev\
         /providers/Microsoft.ManagedIdentity/userAssignedIdentities/{USER_ASSIGNED}"
    );
    let (status, body) = get(&format!("{base}&mi_res_id={resource_id}"), &metadata).await;
    assert_eq!((status, &body["client_id"]), (200, &json!(USER_ASSIGNED)));

    let (status, body) = get(
        &format!("{base}&client_id=00000000-0000-0000-0000-000000000001"),
        &metadata,
    )
    .await;
    assert_eq!(
        (status, &body["error_description"]),
        (400, &json!("Identity not found"))
    );
    let (status, body) = get(
        &format!("{}?api-version=2018-02-01", emu.imds_token_endpoint()),
        &metadata,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        body["error_description"],
        "Required audience parameter not specified"
    );
}

#[tokio::test]
async fn the_identity_endpoint_wants_its_header_and_answers_app_service_json() {
    let emu = emulator().await;
    let url = format!(
        "{}?api-version=2019-08-01&resource=https://vault.azure.net",
        emu.identity_endpoint()
    );
    let (status, _) = get(&url, &[]).await;
    assert_eq!(status, 400);
    let (status, _) = get(&url, &[("X-IDENTITY-HEADER", "guess")]).await;
    assert_eq!(status, 400);
    let secret = emu.identity_header();
    let (status, body) = get(&url, &[("X-IDENTITY-HEADER", secret.as_str())]).await;
    assert_eq!(status, 200, "{body}");
    let mut keys: Vec<&str> = body
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "access_token",
            "client_id",
            "expires_on",
            "resource",
            "token_type"
        ]
    );
    assert!(body["expires_on"]
        .as_str()
        .expect("string")
        .parse::<i64>()
        .is_ok());
    assert_eq!(emu.identity_endpoint_request_count(), 3);
    assert_eq!(emu.imds_request_count(), 0);
}

#[tokio::test]
async fn the_service_account_issuer_publishes_metadata_keys_and_kubernetes_shaped_tokens() {
    let emu = emulator().await;
    let issuer = emu.service_account_issuer();
    let (status, metadata) = get(&format!("{issuer}/.well-known/openid-configuration"), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(metadata["issuer"], issuer);
    let jwks_uri = metadata["jwks_uri"].as_str().expect("jwks_uri").to_string();
    assert_eq!(jwks_uri, format!("{issuer}/openid/v1/jwks"));
    let (_, jwks) = get(&jwks_uri, &[]).await;
    let jwk = &jwks["keys"][0];
    assert_ne!(jwk["kid"], emu.signing_key().kid(), "a key of its own");

    let token = emu
        .mint_service_account_token("gateway", "aadgate")
        .expect("token");
    let header: Value =
        serde_json::from_slice(&b64url_decode(token.split('.').next().expect("h")).expect("b64"))
            .expect("json");
    assert_eq!(header["kid"], jwk["kid"]);
    let claims = claims_of(&token);
    assert_eq!(claims["iss"], issuer);
    assert_eq!(claims["sub"], "system:serviceaccount:gateway:aadgate");
    assert_eq!(claims["aud"], json!([TOKEN_EXCHANGE_AUDIENCE]));
    assert_eq!(claims["kubernetes.io"]["namespace"], "gateway");
    assert_eq!(claims["kubernetes.io"]["serviceaccount"]["name"], "aadgate");
    let lifetime = claims["exp"].as_i64().expect("exp") - claims["iat"].as_i64().expect("iat");
    assert_eq!(lifetime, 3600);
    let decoding = jsonwebtoken::DecodingKey::from_rsa_components(
        jwk["n"].as_str().expect("n"),
        jwk["e"].as_str().expect("e"),
    )
    .expect("key");
    let (input, signature) = token.rsplit_once('.').expect("dot");
    assert!(jsonwebtoken::crypto::verify(
        signature,
        input.as_bytes(),
        &decoding,
        jsonwebtoken::Algorithm::RS256
    )
    .expect("verify"));
    assert_eq!(emu.service_account_fetch_count(), 2);
    assert!(emu.mint_service_account_token("a:b", "c").is_err());
}

#[tokio::test]
async fn control_endpoints_add_credentials_mint_service_account_tokens_and_register_identities() {
    let emu = emulator().await;
    let client = reqwest::Client::new();
    let base = emu.base_url();
    let credentials = format!("{base}/_emulator/apps/{CLIENT}/federatedIdentityCredentials");
    let body = json!({"name": "aks", "issuer": emu.service_account_issuer(), "subject": "system:serviceaccount:ns:sa"});
    let response = client
        .post(&credentials)
        .json(&body)
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 404, "no such app yet");
    emu.register_app(AppRegistration::new(CLIENT))
        .expect("register");
    let response = client
        .post(&credentials)
        .json(&body)
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.expect("json");
    assert_eq!(created["audiences"], json!([TOKEN_EXCHANGE_AUDIENCE]));
    let listed: Value = client
        .get(&credentials)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(listed["value"][0]["subject"], "system:serviceaccount:ns:sa");
    assert_eq!(emu.federated_credentials(CLIENT).len(), 1);
    let response = client
        .post(&credentials)
        .json(&json!({"issuer": "https://x"}))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 400, "subject missing");

    let request = client
        .post(format!(
            "{base}/_emulator/k8s/api/v1/namespaces/ns/serviceaccounts/sa/token"
        ))
        .json(&json!({"spec": {"audiences": ["api://other"], "expirationSeconds": 600}}))
        .send()
        .await
        .expect("post");
    assert_eq!(request.status(), 201);
    let request: Value = request.json().await.expect("json");
    assert_eq!(request["kind"], "TokenRequest");
    let claims = claims_of(request["status"]["token"].as_str().expect("token"));
    assert_eq!(claims["aud"], json!(["api://other"]));
    assert_eq!(claims["sub"], "system:serviceaccount:ns:sa");
    assert!(request["status"]["expirationTimestamp"]
        .as_str()
        .expect("time")
        .ends_with('Z'));

    let put: Value = client
        .put(format!(
            "{base}/_emulator/managed-identities/{USER_ASSIGNED}"
        ))
        .send()
        .await
        .expect("put")
        .json()
        .await
        .expect("json");
    assert_eq!(put["client_id"], USER_ASSIGNED);
    let all: Value = client
        .get(format!("{base}/_emulator/managed-identities"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(all["value"][0]["system_assigned"], true);
    assert_eq!(all["value"][1]["principal_id"], put["principal_id"]);
}

#[tokio::test]
async fn consent_revocation_time_is_kept_until_consent_is_given_again() {
    let emu = emulator().await;
    emu.consent(DEFAULT_TENANT, CLIENT, vec![]);
    assert_eq!(emu.consent_revoked_at(DEFAULT_TENANT, CLIENT), None);
    let before = std::time::SystemTime::now();
    assert!(emu.revoke_consent(DEFAULT_TENANT, CLIENT));
    let at = emu
        .consent_revoked_at(DEFAULT_TENANT, CLIENT)
        .expect("revoked");
    assert!(at >= before);
    assert_eq!(
        emu.consent_revoked_at(
            &DEFAULT_TENANT.to_ascii_uppercase(),
            &CLIENT.to_ascii_uppercase()
        ),
        Some(at)
    );
    emu.consent(DEFAULT_TENANT, CLIENT, vec![]);
    assert_eq!(emu.consent_revoked_at(DEFAULT_TENANT, CLIENT), None);
}

#[tokio::test]
async fn over_https_the_documents_advertise_the_public_url_and_keep_aads_issuers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = crate::DevTls::load_or_create(dir.path(), &[]).expect("tls");
    let emu = Emulator::start(
        "127.0.0.1:0".parse().expect("addr"),
        EmulatorOptions {
            tls: Some(tls.identity.clone()),
            ..EmulatorOptions::default()
        },
    )
    .await
    .expect("emulator");
    let port = emu.addr().port();
    assert_eq!(emu.base_url(), format!("https://127.0.0.1:{port}"));
    crate::grpc::ensure_tls_provider();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(tls.ca_pem.as_bytes()).expect("ca"))
        .build()
        .expect("client");
    let metadata: Value = client
        .get(format!(
            "https://localhost:{port}/{DEFAULT_TENANT}/v2.0/.well-known/openid-configuration"
        ))
        .send()
        .await
        .expect("https")
        .json()
        .await
        .expect("json");
    assert_eq!(
        metadata["token_endpoint"],
        format!("https://127.0.0.1:{port}/{DEFAULT_TENANT}/oauth2/v2.0/token")
    );
    assert_eq!(metadata["issuer"], crate::issuer_v2(DEFAULT_TENANT));
    // Plain HTTP on the TLS port gets no answer.
    assert!(
        reqwest::get(format!("http://127.0.0.1:{port}/common/discovery/keys"))
            .await
            .is_err()
    );
    emu.shutdown().await;

    let public = "https://idp.aadgate.test:8443";
    let emu = Emulator::start(
        "127.0.0.1:0".parse().expect("addr"),
        EmulatorOptions {
            tls: Some(tls.identity.clone()),
            public_url: Some(format!("{public}/")),
            ..EmulatorOptions::default()
        },
    )
    .await
    .expect("emulator");
    let port = emu.addr().port();
    let metadata: Value = client
        .get(format!(
            "https://127.0.0.1:{port}/common/v2.0/.well-known/openid-configuration"
        ))
        .send()
        .await
        .expect("https")
        .json()
        .await
        .expect("json");
    for (field, path) in [
        ("token_endpoint", "/common/oauth2/v2.0/token"),
        ("jwks_uri", "/common/discovery/v2.0/keys"),
        ("authorization_endpoint", "/common/oauth2/v2.0/authorize"),
        ("end_session_endpoint", "/common/oauth2/v2.0/logout"),
    ] {
        assert_eq!(metadata[field], format!("{public}{path}"), "{field}");
    }
    assert_eq!(
        metadata["issuer"],
        "https://login.microsoftonline.com/{tenantid}/v2.0"
    );
    assert_eq!(emu.service_account_issuer(), format!("{public}/k8s"));
    assert_eq!(
        emu.imds_token_endpoint(),
        format!("{public}/metadata/identity/oauth2/token")
    );
    assert!(Emulator::start(
        "127.0.0.1:0".parse().expect("addr"),
        EmulatorOptions {
            public_url: Some("not a url".into()),
            ..EmulatorOptions::default()
        },
    )
    .await
    .is_err());
}
