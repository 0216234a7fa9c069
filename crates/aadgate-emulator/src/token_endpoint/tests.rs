use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{json, Map, Value};

use super::*;
use crate::keys::SigningKey;
use crate::mint::issuer_v1;
use crate::server::{AppRegistration, Emulator, EmulatorHandle, EmulatorOptions};
use crate::{b64url, b64url_decode, new_guid, unix_now, DEFAULT_TENANT, OUTLOOK_RESOURCE};

pub(crate) const CLIENT: &str = "3c2a9b8e-5d4f-4e6a-9b1c-7d8e9f0a1b2c";
const CORRELATION: &str = "0b6a3c2d-1e4f-4a5b-8c7d-9e0f1a2b3c4d";
const OUTLOOK_SCOPE: &str = "https://outlook.office365.com/.default";

type Tweak<'a> = dyn Fn(&mut Map<String, Value>, &mut Map<String, Value>) + 'a;
type Fields = Vec<(&'static str, String)>;
/// (name, URL, form, expected status, `error`, AADSTS code)
type Case = (&'static str, String, Fields, u16, &'static str, u32);

struct Fixture {
    emu: EmulatorHandle,
    app_key: SigningKey,
    other_key: SigningKey,
}

async fn fixture() -> Fixture {
    let emu = Emulator::start(
        "127.0.0.1:0".parse().expect("addr"),
        EmulatorOptions::default(),
    )
    .await
    .expect("emulator");
    let app_key = SigningKey::generate().expect("app key");
    let other_key = SigningKey::generate().expect("other key");
    emu.register_app(
        AppRegistration::new(CLIENT)
            .with_display_name("aadgate exchange")
            .with_certificate(&app_key)
            .with_secret("s3cret"),
    )
    .expect("register");
    emu.consent(DEFAULT_TENANT, CLIENT, vec!["Mail.Read".into()]);
    Fixture {
        emu,
        app_key,
        other_key,
    }
}

pub(crate) fn aad_token_url(tenant: &str) -> String {
    format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token")
}

/// A client assertion as the gateway builds it (SPEC section 5), then `tweak`ed.
pub(crate) fn assertion(
    key: &SigningKey,
    aud: &str,
    tweak: impl FnOnce(&mut Map<String, Value>, &mut Map<String, Value>),
) -> String {
    let now = unix_now();
    let mut header = Map::new();
    header.insert("alg".into(), json!("RS256"));
    header.insert("typ".into(), json!("JWT"));
    header.insert("x5t".into(), json!(key.x5t()));
    header.insert("x5t#S256".into(), json!(key.x5t_s256()));
    let mut claims = Map::new();
    claims.insert("aud".into(), json!(aud));
    claims.insert("iss".into(), json!(CLIENT));
    claims.insert("sub".into(), json!(CLIENT));
    claims.insert("jti".into(), json!(new_guid()));
    claims.insert("iat".into(), json!(now));
    claims.insert("nbf".into(), json!(now));
    claims.insert("exp".into(), json!(now + 600));
    tweak(&mut header, &mut claims);
    let input = format!(
        "{}.{}",
        b64url(&serde_json::to_vec(&header).expect("header")),
        b64url(&serde_json::to_vec(&claims).expect("claims"))
    );
    let signature = key.sign(input.as_bytes()).expect("sign");
    format!("{input}.{signature}")
}

fn form(scope: &str, assertion: &str) -> Vec<(&'static str, String)> {
    vec![
        ("grant_type", "client_credentials".into()),
        ("client_id", CLIENT.into()),
        ("scope", scope.into()),
        ("client_assertion_type", JWT_BEARER_ASSERTION_TYPE.into()),
        ("client_assertion", assertion.into()),
    ]
}

async fn post(url: &str, fields: &[(&str, String)]) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(url)
        .header("client-request-id", CORRELATION)
        .form(fields)
        .send()
        .await
        .expect("post");
    let status = resp.status().as_u16();
    (status, resp.json::<Value>().await.unwrap_or(Value::Null))
}

pub(crate) fn claims_of(token: &str) -> Value {
    let part = token.split('.').nth(1).expect("claims");
    serde_json::from_slice(&b64url_decode(part).expect("b64")).expect("json")
}

fn verifies_with_published_key(emu: &EmulatorHandle, token: &str) -> bool {
    let jwk = emu.signing_key().jwk(None);
    let key = DecodingKey::from_rsa_components(
        jwk["n"].as_str().expect("n"),
        jwk["e"].as_str().expect("e"),
    )
    .expect("key");
    let (input, sig) = token.rsplit_once('.').expect("dot");
    jsonwebtoken::crypto::verify(sig, input.as_bytes(), &key, Algorithm::RS256).unwrap_or(false)
}

#[tokio::test]
async fn v2_certificate_grant_issues_v1_outlook_token_with_consented_roles() {
    let f = fixture().await;
    let url = f.emu.token_endpoint(DEFAULT_TENANT);
    let a = assertion(&f.app_key, &aad_token_url(DEFAULT_TENANT), |_, _| {});
    let (status, body) = post(&url, &form(OUTLOOK_SCOPE, &a)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["ext_expires_in"], 3599);
    let token = body["access_token"].as_str().expect("token");
    assert!(verifies_with_published_key(&f.emu, token));
    let claims = claims_of(token);
    assert_eq!(claims["aud"], OUTLOOK_RESOURCE);
    assert_eq!(claims["iss"], issuer_v1(DEFAULT_TENANT));
    assert_eq!(claims["ver"], "1.0");
    assert_eq!(claims["tid"], DEFAULT_TENANT);
    assert_eq!(claims["appid"], CLIENT);
    assert_eq!(claims["appidacr"], "2");
    assert_eq!(claims["idtyp"], "app");
    assert_eq!(claims["roles"], json!(["Mail.Read"]));
    assert_eq!(claims["oid"], claims["sub"]);

    // The emulator's own URL is an accepted audience too, and the service principal's oid is
    // stable.
    f.emu.set_token_lifetime(120);
    let a = assertion(&f.app_key, &url, |_, _| {});
    let (status, body) = post(&url, &form(OUTLOOK_SCOPE, &a)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_in"], 120);
    let second = claims_of(body["access_token"].as_str().expect("token"));
    assert_eq!(second["oid"], claims["oid"]);

    assert_eq!(f.emu.token_request_count(), 2);
    let records = f.emu.token_requests();
    assert_eq!(records[0].tenant, DEFAULT_TENANT);
    assert_eq!(records[0].endpoint, TokenEndpointVersion::V2);
    assert_eq!(records[0].client_id.as_deref(), Some(CLIENT));
    assert_eq!(records[0].scope.as_deref(), Some(OUTLOOK_SCOPE));
    assert_eq!(
        records[0].assertion_thumbprint.as_deref(),
        Some(f.app_key.thumbprint_hex())
    );
    assert_eq!(records[0].outcome, TokenOutcome::Issued);
}

#[tokio::test]
async fn v1_endpoint_answers_strings_and_resource_and_v2_custom_resource_gets_v2_token() {
    let f = fixture().await;
    let url = f.emu.token_endpoint_v1(DEFAULT_TENANT);
    let a = assertion(
        &f.app_key,
        &format!("https://login.microsoftonline.com/{DEFAULT_TENANT}/oauth2/token"),
        |_, _| {},
    );
    let fields = vec![
        ("grant_type", "client_credentials".to_string()),
        ("client_id", CLIENT.into()),
        ("resource", OUTLOOK_RESOURCE.into()),
        ("client_assertion_type", JWT_BEARER_ASSERTION_TYPE.into()),
        ("client_assertion", a),
    ];
    let (status, body) = post(&url, &fields).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_in"], "3599");
    assert_eq!(body["resource"], OUTLOOK_RESOURCE);
    assert!(body["expires_on"]
        .as_str()
        .is_some_and(|s| s.parse::<i64>().is_ok()));
    assert_eq!(f.emu.token_requests()[0].endpoint, TokenEndpointVersion::V1);

    let a = assertion(&f.app_key, &aad_token_url(DEFAULT_TENANT), |_, _| {});
    let (status, body) = post(
        &f.emu.token_endpoint(DEFAULT_TENANT),
        &form("api://aadgate-demo/.default", &a),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let claims = claims_of(body["access_token"].as_str().expect("token"));
    assert_eq!(claims["ver"], "2.0");
    assert_eq!(claims["azp"], CLIENT);
    assert_eq!(claims["azpacr"], "2");
    assert_eq!(claims["iss"], crate::issuer_v2(DEFAULT_TENANT));
}

#[tokio::test]
async fn client_secret_is_accepted_with_strength_1() {
    let f = fixture().await;
    let url = f.emu.token_endpoint(DEFAULT_TENANT);
    let fields = |secret: &str| {
        vec![
            ("grant_type", "client_credentials".to_string()),
            ("client_id", CLIENT.into()),
            ("scope", OUTLOOK_SCOPE.into()),
            ("client_secret", secret.into()),
        ]
    };
    let (status, body) = post(&url, &fields("s3cret")).await;
    assert_eq!(status, 200, "{body}");
    let claims = claims_of(body["access_token"].as_str().expect("token"));
    assert_eq!(claims["appidacr"], "1");
    let (status, body) = post(&url, &fields("wrong")).await;
    assert_eq!(
        (status, body["error_codes"][0].as_u64()),
        (401, Some(7_000_215))
    );
    assert!(f.emu.token_requests()[1].used_client_secret);
}

#[tokio::test]
async fn a_registered_tenant_name_stands_for_its_tenant_and_an_unknown_name_is_90002() {
    let f = fixture().await;
    f.emu
        .add_tenant_name("contoso.onmicrosoft.com", DEFAULT_TENANT);
    let fields = vec![
        ("grant_type", "client_credentials".to_string()),
        ("client_id", CLIENT.into()),
        ("scope", OUTLOOK_SCOPE.into()),
        ("client_secret", "s3cret".into()),
    ];
    let url = f.emu.token_endpoint("Contoso.onmicrosoft.com");
    let (status, body) = post(&url, &fields).await;
    assert_eq!(status, 200, "{body}");
    let claims = claims_of(body["access_token"].as_str().expect("token"));
    assert_eq!(claims["tid"], DEFAULT_TENANT);
    let url = f.emu.token_endpoint("fabrikam.onmicrosoft.com");
    let (status, body) = post(&url, &fields).await;
    assert_eq!(
        (status, body["error_codes"][0].as_u64()),
        (400, Some(90_002))
    );
}

#[tokio::test]
async fn every_tenant_guid_is_a_tenant_so_one_nobody_consented_in_is_700016_not_90002() {
    let f = fixture().await;
    let nobody = "2b1b5e1c-6c3e-4f7a-9a2b-0d4c3e2f1a00";
    let url = f.emu.token_endpoint(&nobody.to_uppercase());
    let a = assertion(&f.app_key, &aad_token_url(nobody), |_, _| {});
    let (status, body) = post(&url, &form(OUTLOOK_SCOPE, &a)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "unauthorized_client");
    assert_eq!(body["error_codes"], json!([700016]));
    let description = body["error_description"].as_str().expect("description");
    assert!(
        description.starts_with(&format!(
            "AADSTS700016: Application with identifier '{CLIENT}' was not found in the directory '{nobody}'."
        )),
        "{description}"
    );
    // Consent there, and the same request succeeds.
    f.emu.consent(nobody, CLIENT, vec![]);
    let a = assertion(&f.app_key, &aad_token_url(nobody), |_, _| {});
    let (status, body) = post(&url, &form(OUTLOOK_SCOPE, &a)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        claims_of(body["access_token"].as_str().expect("token"))["tid"],
        nobody
    );
}

#[tokio::test]
async fn error_answers_have_aad_shape_and_correlation_id() {
    let f = fixture().await;
    let url = f.emu.token_endpoint("fabrikam.onmicrosoft.com");
    let a = assertion(&f.app_key, &aad_token_url(DEFAULT_TENANT), |_, _| {});
    let (status, body) = post(&url, &form(OUTLOOK_SCOPE, &a)).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_tenant");
    assert_eq!(body["error_codes"], json!([90002]));
    assert_eq!(body["correlation_id"], CORRELATION);
    let description = body["error_description"].as_str().expect("description");
    assert!(description.starts_with("AADSTS90002: Tenant 'fabrikam.onmicrosoft.com' not found."));
    assert!(description.contains(&format!("\r\nCorrelation ID: {CORRELATION}\r\n")));
    assert!(description.contains(&format!(
        "Trace ID: {}",
        body["trace_id"].as_str().expect("trace")
    )));
    assert!(body["timestamp"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z') && t.len() == 20));
    assert_eq!(
        body["error_uri"],
        "https://login.microsoftonline.com/error?code=90002"
    );
}

#[tokio::test]
async fn each_failure_gets_aads_code() {
    let f = fixture().await;
    let emu = &f.emu;
    let tenant_url = emu.token_endpoint(DEFAULT_TENANT);
    let aad_aud = aad_token_url(DEFAULT_TENANT);
    let good = |tweak: &Tweak<'_>| assertion(&f.app_key, &aad_aud, |h, c| tweak(h, c));
    let other_tenant = "11111111-2222-3333-4444-555555555555";
    emu.add_tenant(other_tenant);
    let disabled_tenant = "22222222-3333-4444-5555-666666666666";
    emu.consent(disabled_tenant, CLIENT, vec![]);
    emu.set_app_disabled(disabled_tenant, CLIENT, true);

    let with =
        |mut fields: Vec<(&'static str, String)>, name: &'static str, value: Option<&str>| {
            fields.retain(|(n, _)| *n != name);
            if let Some(v) = value {
                fields.push((name, v.to_string()));
            }
            fields
        };
    let base = || form(OUTLOOK_SCOPE, &good(&|_, _| {}));
    // Names the app's certificate but is signed by another key: only the signature is wrong.
    let signed_by_other_with_app_thumbprint = assertion(&f.other_key, &aad_aud, |h, _| {
        h.insert("x5t".into(), json!(f.app_key.x5t()));
        h.insert("x5t#S256".into(), json!(f.app_key.x5t_s256()));
    });
    let now = unix_now();

    let cases: Vec<Case> = vec![
        (
            "common",
            emu.token_endpoint("common"),
            base(),
            400,
            "invalid_request",
            9_001_023,
        ),
        (
            "organizations",
            emu.token_endpoint("organizations"),
            base(),
            400,
            "invalid_request",
            50_059,
        ),
        (
            "no grant_type",
            tenant_url.clone(),
            with(base(), "grant_type", None),
            400,
            "invalid_request",
            900_144,
        ),
        (
            "password grant",
            tenant_url.clone(),
            with(base(), "grant_type", Some("password")),
            400,
            "unsupported_grant_type",
            70_003,
        ),
        (
            "no client_id",
            tenant_url.clone(),
            with(base(), "client_id", None),
            400,
            "invalid_request",
            900_144,
        ),
        (
            "unknown app",
            tenant_url.clone(),
            with(
                base(),
                "client_id",
                Some("99999999-9999-4999-8999-999999999999"),
            ),
            400,
            "unauthorized_client",
            700_016,
        ),
        (
            "not consented in tenant",
            emu.token_endpoint(other_tenant),
            form(
                OUTLOOK_SCOPE,
                &assertion(&f.app_key, &aad_token_url(other_tenant), |_, _| {}),
            ),
            400,
            "unauthorized_client",
            700_016,
        ),
        (
            "disabled",
            emu.token_endpoint(disabled_tenant),
            form(
                OUTLOOK_SCOPE,
                &assertion(&f.app_key, &aad_token_url(disabled_tenant), |_, _| {}),
            ),
            400,
            "unauthorized_client",
            7_000_112,
        ),
        (
            "no credential",
            tenant_url.clone(),
            with(
                with(base(), "client_assertion", None),
                "client_assertion_type",
                None,
            ),
            401,
            "invalid_client",
            7_000_218,
        ),
        (
            "no assertion type",
            tenant_url.clone(),
            with(base(), "client_assertion_type", None),
            400,
            "invalid_request",
            900_144,
        ),
        (
            "bad assertion type",
            tenant_url.clone(),
            with(base(), "client_assertion_type", Some("urn:x")),
            400,
            "invalid_request",
            90_100,
        ),
        (
            "malformed",
            tenant_url.clone(),
            with(base(), "client_assertion", Some("abc.def")),
            401,
            "invalid_client",
            50_027,
        ),
        (
            "typ",
            tenant_url.clone(),
            form(
                OUTLOOK_SCOPE,
                &good(&|h, _| {
                    h.insert("typ".into(), json!("JOSE"));
                }),
            ),
            401,
            "invalid_client",
            5_002_727,
        ),
        (
            "no thumbprint",
            tenant_url.clone(),
            form(
                OUTLOOK_SCOPE,
                &good(&|h, _| {
                    h.remove("x5t");
                    h.remove("x5t#S256");
                }),
            ),
            401,
            "invalid_client",
            50_027,
        ),
        (
            "alg",
            tenant_url.clone(),
            form(
                OUTLOOK_SCOPE,
                &good(&|h, _| {
                    h.insert("alg".into(), json!("HS256"));
                }),
            ),
            401,
            "invalid_client",
            5_002_738,
        ),
        (
            "unknown certificate",
            tenant_url.clone(),
            form(OUTLOOK_SCOPE, &assertion(&f.other_key, &aad_aud, |_, _| {})),
            401,
            "invalid_client",
            700_027,
        ),
        (
            "bad signature",
            tenant_url.clone(),
            form(OUTLOOK_SCOPE, &signed_by_other_with_app_thumbprint),
            401,
            "invalid_client",
            700_027,
        ),
        (
            "aud is common",
            tenant_url.clone(),
            form(
                OUTLOOK_SCOPE,
                &good(&|_, c| {
                    c.insert("aud".into(), json!(aad_token_url("common")));
                }),
            ),
            401,
            "invalid_client",
            700_023,
        ),
        (
            "iss != sub",
            tenant_url.clone(),
            form(
                OUTLOOK_SCOPE,
                &good(&|_, c| {
                    c.insert("sub".into(), json!("someone-else"));
                }),
            ),
            401,
            "invalid_client",
            50_048,
        ),
        (
            "iss = sub != client",
            tenant_url.clone(),
            form(
                OUTLOOK_SCOPE,
                &good(&|_, c| {
                    c.insert("iss".into(), json!("x"));
                    c.insert("sub".into(), json!("x"));
                }),
            ),
            401,
            "invalid_client",
            700_021,
        ),
        (
            "expired",
            tenant_url.clone(),
            form(
                OUTLOOK_SCOPE,
                &good(&|_, c| {
                    c.insert("exp".into(), json!(now - 3600));
                }),
            ),
            401,
            "invalid_client",
            700_024,
        ),
        (
            "exp too far ahead",
            tenant_url.clone(),
            form(
                OUTLOOK_SCOPE,
                &good(&|_, c| {
                    c.insert("exp".into(), json!(now + 3 * 86_400));
                }),
            ),
            401,
            "invalid_client",
            700_024,
        ),
        (
            "nbf in future",
            tenant_url.clone(),
            form(
                OUTLOOK_SCOPE,
                &good(&|_, c| {
                    c.insert("nbf".into(), json!(now + 3600));
                }),
            ),
            401,
            "invalid_client",
            700_024,
        ),
        (
            "scope without .default",
            tenant_url.clone(),
            form("https://outlook.office365.com/Mail.Read", &good(&|_, _| {})),
            400,
            "invalid_scope",
            1_002_012,
        ),
        (
            "two resources",
            tenant_url.clone(),
            form(
                "https://outlook.office365.com/.default https://graph.microsoft.com/.default",
                &good(&|_, _| {}),
            ),
            400,
            "invalid_scope",
            70_011,
        ),
        (
            "resource on v2",
            tenant_url.clone(),
            with(base(), "resource", Some(OUTLOOK_RESOURCE)),
            400,
            "invalid_request",
            901_002,
        ),
        (
            "unknown resource",
            tenant_url.clone(),
            form("https://unknown.example/.default", &good(&|_, _| {})),
            400,
            "invalid_resource",
            500_011,
        ),
    ];
    let mut expected_count = 0;
    for (name, url, fields, status, error, code) in cases {
        let (got_status, body) = post(&url, &fields).await;
        expected_count += 1;
        assert_eq!(got_status, status, "{name}: {body}");
        assert_eq!(body["error"], error, "{name}: {body}");
        assert_eq!(body["error_codes"], json!([code]), "{name}: {body}");
        let description = body["error_description"].as_str().unwrap_or("");
        assert!(
            description.starts_with(&format!("AADSTS{code}: ")),
            "{name}: {description}"
        );
    }
    assert_eq!(emu.token_request_count(), expected_count);
    let last = emu.token_requests().pop().expect("record");
    assert_eq!(
        last.outcome,
        TokenOutcome::Failed {
            status: 400,
            error: "invalid_resource".into(),
            aadsts: 500_011
        }
    );
}

#[tokio::test]
async fn key_not_found_and_signature_failures_name_the_thumbprint() {
    let f = fixture().await;
    let url = f.emu.token_endpoint(DEFAULT_TENANT);
    let aud = aad_token_url(DEFAULT_TENANT);
    let (_, body) = post(
        &url,
        &form(OUTLOOK_SCOPE, &assertion(&f.other_key, &aud, |_, _| {})),
    )
    .await;
    let description = body["error_description"].as_str().expect("description");
    assert!(
        description.contains("[Reason - The key was not found."),
        "{description}"
    );
    assert!(
        description.contains(f.other_key.thumbprint_hex()),
        "{description}"
    );
    assert_eq!(
        f.emu.token_requests()[0].assertion_thumbprint.as_deref(),
        Some(f.other_key.thumbprint_hex())
    );
}

#[tokio::test]
async fn replayed_jti_removed_revoked_and_expired_certificates_are_refused() {
    let f = fixture().await;
    let url = f.emu.token_endpoint(DEFAULT_TENANT);
    let aud = aad_token_url(DEFAULT_TENANT);
    let a = assertion(&f.app_key, &aud, |_, _| {});
    assert_eq!(post(&url, &form(OUTLOOK_SCOPE, &a)).await.0, 200);
    let (status, body) = post(&url, &form(OUTLOOK_SCOPE, &a)).await;
    assert_eq!(
        (status, body["error_codes"][0].as_u64()),
        (401, Some(50_013))
    );

    let second = SigningKey::generate().expect("second key");
    let expired = SigningKey::generate_with_validity((2000, 1, 1), (2001, 1, 1)).expect("old key");
    f.emu
        .register_app(
            AppRegistration::new(CLIENT)
                .with_certificate(&f.app_key)
                .with_certificate(&second)
                .with_certificate(&expired),
        )
        .expect("re-register");
    assert!(f
        .emu
        .revoke_app_certificate(CLIENT, second.thumbprint_hex()));
    let (_, body) = post(
        &url,
        &form(OUTLOOK_SCOPE, &assertion(&second, &aud, |_, _| {})),
    )
    .await;
    assert_eq!(body["error_codes"][0], 7_000_214);
    let (_, body) = post(
        &url,
        &form(OUTLOOK_SCOPE, &assertion(&expired, &aud, |_, _| {})),
    )
    .await;
    assert_eq!(body["error_codes"][0], 1_000_502);

    // Rollover: remove the first certificate by its colon-separated lower-case thumbprint.
    let colon: String = f
        .app_key
        .thumbprint_hex()
        .to_ascii_lowercase()
        .as_bytes()
        .chunks(2)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect::<Vec<_>>()
        .join(":");
    assert!(f.emu.remove_app_certificate(CLIENT, &colon));
    let (status, body) = post(
        &url,
        &form(OUTLOOK_SCOPE, &assertion(&f.app_key, &aud, |_, _| {})),
    )
    .await;
    assert_eq!(
        (status, body["error_codes"][0].as_u64()),
        (401, Some(700_027))
    );
    assert!(!f.emu.remove_app_certificate(CLIENT, &colon));
}

#[tokio::test]
async fn forced_failure_and_wrong_method() {
    let f = fixture().await;
    let url = f.emu.token_endpoint(DEFAULT_TENANT);
    let aud = aad_token_url(DEFAULT_TENANT);
    f.emu.set_token_endpoint_failure(Some(503));
    let (status, body) = post(
        &url,
        &form(OUTLOOK_SCOPE, &assertion(&f.app_key, &aud, |_, _| {})),
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(body["error"], "temporarily_unavailable");
    assert_eq!(body["error_codes"], json!([90006]));
    f.emu.set_token_endpoint_failure(Some(500));
    let (status, body) = post(
        &url,
        &form(OUTLOOK_SCOPE, &assertion(&f.app_key, &aud, |_, _| {})),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (500, Some("server_error"))
    );
    f.emu.set_token_endpoint_failure(None);
    let (status, _) = post(
        &url,
        &form(OUTLOOK_SCOPE, &assertion(&f.app_key, &aud, |_, _| {})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(f.emu.token_request_count(), 3);

    let resp = reqwest::get(&url).await.expect("get");
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error_codes"], json!([900561]));
    assert_eq!(
        f.emu.token_request_count(),
        3,
        "only POSTs are token requests"
    );
}
