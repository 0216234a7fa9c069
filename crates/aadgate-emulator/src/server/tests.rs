use super::*;
use crate::mint::{issuer_v1, issuer_v2, TokenSpec};
use crate::token_endpoint::tests::{aad_token_url, assertion, CLIENT};
use crate::token_endpoint::JWT_BEARER_ASSERTION_TYPE;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{json, Value};

async fn start() -> EmulatorHandle {
    Emulator::start(
        "127.0.0.1:0".parse().expect("addr"),
        EmulatorOptions::default(),
    )
    .await
    .expect("start emulator")
}

async fn get_json(url: &str) -> (u16, Value) {
    let resp = reqwest::get(url).await.expect("request");
    let status = resp.status().as_u16();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

fn verify_with_jwk(token: &str, jwk: &Value) -> bool {
    let (input, sig) = token.rsplit_once('.').expect("dot");
    let key = DecodingKey::from_rsa_components(
        jwk["n"].as_str().expect("n"),
        jwk["e"].as_str().expect("e"),
    )
    .expect("jwk key");
    jsonwebtoken::crypto::verify(sig, input.as_bytes(), &key, Algorithm::RS256).unwrap_or(false)
}

#[tokio::test]
async fn common_metadata_points_at_the_emulator_with_templated_issuers() {
    let emu = start().await;
    let (status, v2) = get_json(&emu.metadata_url()).await;
    assert_eq!(status, 200);
    assert_eq!(
        v2["issuer"],
        "https://login.microsoftonline.com/{tenantid}/v2.0"
    );
    assert_eq!(v2["jwks_uri"], emu.jwks_uri());
    assert_eq!(
        v2["token_endpoint"],
        format!("{}/common/oauth2/v2.0/token", emu.base_url())
    );
    let (_, v1) = get_json(&emu.metadata_url_v1()).await;
    assert_eq!(v1["issuer"], "https://sts.windows.net/{tenantid}/");
    assert_eq!(v1["jwks_uri"], emu.jwks_uri_v1());
    let tenant_url = format!(
        "{}/{DEFAULT_TENANT}/v2.0/.well-known/openid-configuration",
        emu.base_url()
    );
    let (_, tenant) = get_json(&tenant_url).await;
    assert_eq!(tenant["issuer"], issuer_v2(DEFAULT_TENANT));
    assert_eq!(tenant["tenant_region_scope"], "NA");
    assert_eq!(emu.metadata_fetch_count(), 3);
    assert_eq!(emu.jwks_fetch_count(), 0);
}

#[tokio::test]
async fn metadata_and_keys_answer_for_any_tenant_guid_and_registered_names_only() {
    let emu = start().await;
    let any = "2b1b5e1c-6c3e-4f7a-9a2b-0d4c3e2f1a00";
    emu.add_tenant_name("Contoso.onmicrosoft.com", DEFAULT_TENANT);
    let base = emu.base_url();
    // (case, path, status, issuer of a 200 answer)
    let table = [
        (
            "v2 metadata of a tenant nobody added",
            format!("/{any}/v2.0/.well-known/openid-configuration"),
            200,
            Some(issuer_v2(any)),
        ),
        (
            "v1 metadata of that tenant",
            format!("/{}/.well-known/openid-configuration", any.to_uppercase()),
            200,
            Some(issuer_v1(any)),
        ),
        (
            "v2 keys of that tenant",
            format!("/{any}/discovery/v2.0/keys"),
            200,
            None,
        ),
        (
            "common keeps the issuer template",
            "/common/v2.0/.well-known/openid-configuration".to_string(),
            200,
            Some("https://login.microsoftonline.com/{tenantid}/v2.0".to_string()),
        ),
        (
            "organizations keeps the issuer template",
            "/organizations/v2.0/.well-known/openid-configuration".to_string(),
            200,
            Some("https://login.microsoftonline.com/{tenantid}/v2.0".to_string()),
        ),
        (
            "a registered name answers as its tenant",
            "/contoso.onmicrosoft.com/v2.0/.well-known/openid-configuration".to_string(),
            200,
            Some(issuer_v2(DEFAULT_TENANT)),
        ),
        (
            "an unknown name is AADSTS90002",
            "/fabrikam.onmicrosoft.com/v2.0/.well-known/openid-configuration".to_string(),
            400,
            None,
        ),
        (
            "a malformed id is AADSTS90002",
            "/2b1b5e1c-6c3e-4f7a-9a2b/v2.0/.well-known/openid-configuration".to_string(),
            400,
            None,
        ),
    ];
    for (case, path, status, issuer) in table {
        let (got, body) = get_json(&format!("{base}{path}")).await;
        assert_eq!(got, status, "{case}: {body}");
        if status == 400 {
            assert_eq!(body["error"], "invalid_tenant", "{case}");
            assert_eq!(body["error_codes"], json!([90002]), "{case}");
        }
        if let Some(issuer) = issuer {
            assert_eq!(body["issuer"], issuer, "{case}");
        }
        if path.ends_with("/keys") {
            let keys = body["keys"].as_array().expect("keys");
            assert_eq!(keys[0]["issuer"], issuer_v2(any), "{case}");
        }
    }
}

#[tokio::test]
async fn a_token_minted_for_any_tenant_verifies_with_that_tenants_published_keys() {
    let emu = start().await;
    let any = "2b1b5e1c-6c3e-4f7a-9a2b-0d4c3e2f1a00";
    let token = emu.mint(&TokenSpec::app(any, "api://x", &["R"]));
    let (_, meta) = get_json(&format!(
        "{}/{any}/v2.0/.well-known/openid-configuration",
        emu.base_url()
    ))
    .await;
    let jwks_uri = meta["jwks_uri"].as_str().expect("jwks_uri");
    let (status, jwks) = get_json(jwks_uri).await;
    assert_eq!(status, 200);
    let keys = jwks["keys"].as_array().expect("keys");
    assert!(keys.iter().any(|k| verify_with_jwk(&token, k)));
}

#[tokio::test]
async fn jwks_shapes_and_minted_token_verifies_with_published_key() {
    let emu = start().await;
    let (status, v2) = get_json(&emu.jwks_uri()).await;
    assert_eq!(status, 200);
    let keys = v2["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 1);
    let jwk = &keys[0];
    for member in ["kty", "use", "kid", "x5t", "n", "e", "x5c"] {
        assert!(jwk.get(member).is_some(), "missing {member}");
    }
    assert_eq!(
        jwk["issuer"],
        "https://login.microsoftonline.com/{tenantid}/v2.0"
    );
    let (_, v1) = get_json(&emu.jwks_uri_v1()).await;
    assert!(v1["keys"][0].get("issuer").is_none());
    let (_, tenant_keys) = get_json(&format!(
        "{}/{DEFAULT_TENANT}/discovery/v2.0/keys",
        emu.base_url()
    ))
    .await;
    assert_eq!(tenant_keys["keys"][0]["issuer"], issuer_v2(DEFAULT_TENANT));
    assert_eq!(emu.jwks_fetch_count(), 3);

    let token = emu.mint(&TokenSpec::default());
    assert!(verify_with_jwk(&token, jwk));
    assert_eq!(jwk["kid"], emu.signing_key().kid());
    assert!(!verify_with_jwk(&format!("{token}x"), jwk));
}

#[tokio::test]
async fn rotation_publishes_new_key_and_optionally_drops_old() {
    let emu = start().await;
    let old_kid = emu.signing_key().kid().to_string();
    let new_kid = emu.rotate_key(true).expect("rotate");
    assert_ne!(old_kid, new_kid);
    let (_, jwks) = get_json(&emu.jwks_uri()).await;
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter_map(|k| k["kid"].as_str())
        .collect();
    assert_eq!(kids, vec![new_kid.as_str(), old_kid.as_str()]);
    let token = emu.mint(&TokenSpec::default());
    assert!(token.split('.').next().is_some());
    assert_eq!(emu.signing_key().kid(), new_kid);

    let newest = emu.rotate_key(false).expect("rotate");
    let (_, jwks) = get_json(&emu.jwks_uri()).await;
    assert_eq!(jwks["keys"].as_array().map(Vec::len), Some(1));
    assert_eq!(jwks["keys"][0]["kid"], newest);
}

#[tokio::test]
async fn outage_toggle_answers_503_and_still_counts() {
    let emu = start().await;
    emu.set_keys_available(false);
    assert_eq!(
        reqwest::get(emu.jwks_uri()).await.expect("get").status(),
        503
    );
    assert_eq!(
        reqwest::get(emu.metadata_url())
            .await
            .expect("get")
            .status(),
        503
    );
    emu.set_keys_available(true);
    assert_eq!(
        reqwest::get(emu.jwks_uri()).await.expect("get").status(),
        200
    );
    assert_eq!(emu.jwks_fetch_count(), 2);
    assert_eq!(emu.metadata_fetch_count(), 1);
}

#[tokio::test]
async fn shutdown_stops_serving_and_drop_does_too() {
    let emu = start().await;
    let url = emu.jwks_uri();
    emu.shutdown().await;
    assert!(reqwest::get(&url).await.is_err());

    let emu = start().await;
    let url = emu.jwks_uri();
    let client = reqwest::Client::new();
    assert!(client.get(&url).send().await.is_ok());
    drop(emu);
    // The listener closes once the server task sees the drop; retry briefly.
    let mut refused = false;
    for _ in 0..500 {
        if reqwest::Client::new().get(&url).send().await.is_err() {
            refused = true;
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        refused,
        "server still answering after the handle was dropped"
    );
}

const NEW_TENANT: &str = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d";
const FABRIKAM: &str = "7e6d5c4b-3a2f-4e1d-9c8b-7a6f5e4d3c2b";
const REDIRECT: &str = "https://api.contoso.example/cb";
const SCOPE: &str = "https://graph.microsoft.com/.default";

/// An emulator with the token-endpoint tests' app ([`CLIENT`]) registered, and an HTTP client
/// that does not follow redirects.
struct ControlFixture {
    emu: EmulatorHandle,
    app_key: SigningKey,
    http: reqwest::Client,
}

impl ControlFixture {
    async fn start() -> Self {
        let emu = start().await;
        let app_key = SigningKey::generate().expect("app key");
        emu.register_app(
            AppRegistration::new(CLIENT)
                .with_certificate(&app_key)
                .with_redirect_uri(REDIRECT),
        )
        .expect("register");
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        ControlFixture { emu, app_key, http }
    }

    /// A client-credentials request of the app in `tenant`: (status, body).
    async fn token(&self, tenant: &str) -> (u16, Value) {
        let a = assertion(&self.app_key, &aad_token_url(tenant), |_, _| {});
        let fields = [
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT),
            ("scope", SCOPE),
            ("client_assertion_type", JWT_BEARER_ASSERTION_TYPE),
            ("client_assertion", a.as_str()),
        ];
        let response = self
            .http
            .post(self.emu.token_endpoint(tenant))
            .form(&fields)
            .send()
            .await
            .expect("token request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

#[tokio::test]
async fn control_endpoints_add_tenants_consent_revoke_and_count() {
    let f = ControlFixture::start().await;
    let base = f.emu.base_url();
    let app_url = format!("{base}/_emulator/tenants/{NEW_TENANT}/apps/{CLIENT}");
    let send = |method: reqwest::Method, url: String, body: Option<&str>| {
        let mut request = f.http.request(method, url);
        if let Some(body) = body {
            request = request.body(body.to_string());
        }
        request.send()
    };
    let status =
        |r: Result<reqwest::Response, reqwest::Error>| r.expect("request").status().as_u16();

    let tenant_url = format!("{base}/_emulator/tenants/{NEW_TENANT}");
    let named = Some(r#"{"name": "Northwind.onmicrosoft.com"}"#);
    assert_eq!(
        status(send(reqwest::Method::POST, tenant_url.clone(), named).await),
        204
    );
    assert!(f.emu.known_tenants().contains(&(
        NEW_TENANT.to_string(),
        "northwind.onmicrosoft.com".to_string()
    )));
    assert_eq!(
        status(
            send(
                reqwest::Method::POST,
                format!("{base}/_emulator/tenants/{FABRIKAM}"),
                None
            )
            .await
        ),
        204
    );

    assert_eq!(
        status(send(reqwest::Method::GET, app_url.clone(), None).await),
        404
    );
    let roles = Some(r#"{"roles": ["Orders.Read"]}"#);
    assert_eq!(
        status(send(reqwest::Method::PUT, app_url.clone(), roles).await),
        204
    );
    assert!(f.emu.has_service_principal(NEW_TENANT, CLIENT));
    let got: Value = send(reqwest::Method::GET, app_url.clone(), None)
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(
        got,
        json!({"tenant": NEW_TENANT, "client_id": CLIENT, "roles": ["Orders.Read"], "disabled": false})
    );
    let (token_status, body) = f.token(NEW_TENANT).await;
    assert_eq!(token_status, 200, "{body}");

    let by_name = format!("{base}/_emulator/tenants/northwind.onmicrosoft.com/apps/{CLIENT}");
    assert_eq!(
        status(send(reqwest::Method::DELETE, by_name, None).await),
        204
    );
    assert!(!f.emu.has_service_principal(NEW_TENANT, CLIENT));
    assert_eq!(
        status(send(reqwest::Method::DELETE, app_url.clone(), None).await),
        404
    );
    let (_, body) = f.token(NEW_TENANT).await;
    assert_eq!(body["error_codes"], json!([700016]));

    // Bad input gets an AAD-shaped 400.
    for (case, method, url, body, code) in [
        (
            "a tenant that is not a GUID",
            reqwest::Method::POST,
            format!("{base}/_emulator/tenants/contoso"),
            None,
            90002,
        ),
        (
            "a body that is not JSON",
            reqwest::Method::PUT,
            app_url.clone(),
            Some("roles=x"),
            90023,
        ),
        (
            "roles that are not strings",
            reqwest::Method::PUT,
            app_url.clone(),
            Some(r#"{"roles": [1]}"#),
            90023,
        ),
        (
            "a name that is not a string",
            reqwest::Method::POST,
            tenant_url.clone(),
            Some(r#"{"name": 7}"#),
            90023,
        ),
        (
            "an unknown tenant name",
            reqwest::Method::DELETE,
            format!("{base}/_emulator/tenants/nobody.example/apps/{CLIENT}"),
            None,
            90002,
        ),
    ] {
        let response = send(method, url, body).await.expect("request");
        assert_eq!(response.status().as_u16(), 400, "{case}");
        let json: Value = response.json().await.expect("json");
        assert_eq!(json["error_codes"], json!([code]), "{case}");
    }

    let consent_url = f
        .emu
        .admin_consent_url("organizations", CLIENT, REDIRECT, SCOPE);
    let page = f.http.get(consent_url).send().await.expect("page");
    assert_eq!(page.status(), 200);
    let counts: Value = f
        .http
        .get(format!("{base}/_emulator/counts"))
        .send()
        .await
        .expect("counts")
        .json()
        .await
        .expect("json");
    assert_eq!(counts["token"], 2);
    assert_eq!(counts["adminconsent"], 1);
    assert_eq!(counts["metadata"], 0);
    assert_eq!(counts["jwks"], 0);
    f.emu.reset_counts();
    assert_eq!(f.emu.consent_page_count(), 0);
}
