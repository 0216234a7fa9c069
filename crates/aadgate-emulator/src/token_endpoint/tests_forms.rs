//! Certificate assertions in every form Entra ID accepts (`x5t` padded or not, `x5t#S256`
//! alone, an `x5c` chain), and the `claims` parameter (client capability `cp1`).

use base64::Engine as _;
use serde_json::{json, Value};

use super::tests::{aad_token_url, assertion, claims_of, CLIENT};
use super::JWT_BEARER_ASSERTION_TYPE;
use crate::keys::SigningKey;
use crate::DEFAULT_TENANT;
use crate::{AppRegistration, Emulator, EmulatorHandle, EmulatorOptions};

/// Changes a client assertion's JOSE header.
type HeaderTweak<'a> = dyn Fn(&mut serde_json::Map<String, Value>) + 'a;

const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";

async fn fixture() -> (EmulatorHandle, SigningKey) {
    let emu = Emulator::start(
        "127.0.0.1:0".parse().expect("addr"),
        EmulatorOptions::default(),
    )
    .await
    .expect("emulator");
    let key = SigningKey::generate().expect("key");
    emu.register_app(AppRegistration::new(CLIENT).with_certificate(&key))
        .expect("register");
    emu.consent(DEFAULT_TENANT, CLIENT, vec!["Mail.Read".into()]);
    (emu, key)
}

async fn redeem(emu: &EmulatorHandle, assertion: &str, claims: Option<&str>) -> (u16, Value) {
    let mut form = vec![
        ("grant_type", "client_credentials"),
        ("client_id", CLIENT),
        ("scope", GRAPH_SCOPE),
        ("client_assertion_type", JWT_BEARER_ASSERTION_TYPE),
        ("client_assertion", assertion),
    ];
    if let Some(claims) = claims {
        form.push(("claims", claims));
    }
    let response = reqwest::Client::new()
        .post(emu.token_endpoint(DEFAULT_TENANT))
        .form(&form)
        .send()
        .await
        .expect("post");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

fn padded(unpadded: &str) -> String {
    let mut text = unpadded.to_string();
    while !text.len().is_multiple_of(4) {
        text.push('=');
    }
    text
}

#[tokio::test]
async fn x5t_is_accepted_with_or_without_padding_and_x5t_s256_alone() {
    let (emu, key) = fixture().await;
    let aud = aad_token_url(DEFAULT_TENANT);
    let cases: [(&str, Box<HeaderTweak<'_>>); 3] = [
        (
            "x5t padded, as MSAL for Python sends it",
            Box::new(|h| {
                h.insert("x5t".into(), json!(padded(key.x5t())));
                h.remove("x5t#S256");
            }),
        ),
        (
            "x5t unpadded",
            Box::new(|h| {
                h.remove("x5t#S256");
            }),
        ),
        (
            "x5t#S256 padded, no x5t",
            Box::new(|h| {
                h.insert("x5t#S256".into(), json!(padded(key.x5t_s256())));
                h.remove("x5t");
            }),
        ),
    ];
    assert!(padded(key.x5t()).ends_with('='), "SHA-1 base64 pads");
    for (name, tweak) in cases {
        let a = assertion(&key, &aud, |h, _| tweak(h));
        let (status, body) = redeem(&emu, &a, None).await;
        assert_eq!(status, 200, "{name}: {body}");
        let record = emu.token_requests().pop().expect("record");
        assert_eq!(
            record.assertion_thumbprint.as_deref(),
            Some(key.thumbprint_hex()),
            "{name}"
        );
    }
}

#[tokio::test]
async fn an_x5c_chain_names_the_certificate_by_its_leaf() {
    let (emu, key) = fixture().await;
    let aud = aad_token_url(DEFAULT_TENANT);
    let leaf = base64::engine::general_purpose::STANDARD.encode(key.certificate_der());
    // MSAL for Python sends the PEM body, line breaks included.
    let wrapped: String = leaf
        .as_bytes()
        .chunks(64)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("\n");
    for x5c in [leaf.clone(), wrapped] {
        let a = assertion(&key, &aud, |h, _| {
            h.remove("x5t");
            h.remove("x5t#S256");
            h.insert("x5c".into(), json!([x5c]));
        });
        let (status, body) = redeem(&emu, &a, None).await;
        assert_eq!(status, 200, "{body}");
    }
    // A chain whose leaf is not registered: the key is not found.
    let stranger = SigningKey::generate().expect("key");
    let a = assertion(&stranger, &aud, |h, _| {
        h.remove("x5t");
        h.remove("x5t#S256");
        h.insert(
            "x5c".into(),
            json!([base64::engine::general_purpose::STANDARD.encode(stranger.certificate_der())]),
        );
    });
    let (status, body) = redeem(&emu, &a, None).await;
    assert_eq!(
        (status, body["error_codes"][0].as_u64()),
        (401, Some(700_027)),
        "{body}"
    );
    let a = assertion(&key, &aud, |h, _| {
        h.insert("x5c".into(), json!("not an array"));
    });
    let (status, body) = redeem(&emu, &a, None).await;
    assert_eq!(
        (status, body["error_codes"][0].as_u64()),
        (401, Some(50_027)),
        "{body}"
    );
}

#[tokio::test]
async fn claims_with_cp1_give_a_cae_token_that_lives_a_day() {
    let (emu, key) = fixture().await;
    let aud = aad_token_url(DEFAULT_TENANT);
    let (status, body) = redeem(&emu, &assertion(&key, &aud, |_, _| {}), None).await;
    assert_eq!(status, 200);
    assert_eq!(body["expires_in"], 3599);
    assert!(claims_of(body["access_token"].as_str().expect("token"))
        .get("xms_cc")
        .is_none());

    let cp1 = r#"{"access_token":{"xms_cc":{"values":["cp1"]}}}"#;
    let (status, body) = redeem(&emu, &assertion(&key, &aud, |_, _| {}), Some(cp1)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_in"], 86_399);
    let claims = claims_of(body["access_token"].as_str().expect("token"));
    assert_eq!(claims["xms_cc"], json!(["cp1"]));
    let lifetime = claims["exp"].as_i64().expect("exp") - claims["iat"].as_i64().expect("iat");
    assert_eq!(lifetime, 86_399);
    assert_eq!(
        emu.token_requests()
            .pop()
            .expect("record")
            .claims
            .as_deref(),
        Some(cp1)
    );

    // A claims challenge merged with the capability, as a client sends it after a 401.
    let now = crate::unix_now();
    let challenge = format!(
        r#"{{"access_token":{{"nbf":{{"essential":true,"value":"{now}"}},"xms_cc":{{"values":["cp1"]}}}}}}"#
    );
    let (status, body) = redeem(&emu, &assertion(&key, &aud, |_, _| {}), Some(&challenge)).await;
    assert_eq!(status, 200, "{body}");
    let claims = claims_of(body["access_token"].as_str().expect("token"));
    assert!(claims["nbf"].as_i64().expect("nbf") >= now);
    assert_eq!(claims["xms_cc"], json!(["cp1"]));

    // Capabilities other than cp1, or none: an ordinary token.
    let other = r#"{"access_token":{"xms_cc":{"values":["cp2"]}}}"#;
    let (_, body) = redeem(&emu, &assertion(&key, &aud, |_, _| {}), Some(other)).await;
    assert_eq!(body["expires_in"], 3599);
}

#[tokio::test]
async fn a_claims_value_that_is_not_a_json_object_is_an_invalid_request() {
    let (emu, key) = fixture().await;
    let aud = aad_token_url(DEFAULT_TENANT);
    for bad in ["{not json", "[1,2]", "\"cp1\""] {
        let (status, body) = redeem(&emu, &assertion(&key, &aud, |_, _| {}), Some(bad)).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"], "invalid_request");
        assert_eq!(body["error_codes"], json!([90_100]), "{bad}");
    }
}

/// A CA (ECDSA) and a leaf it issued for `cn` with an RSA key: (CA PEM, leaf signing key).
fn issued(cn: &str) -> (String, SigningKey) {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ca key");
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Contoso issuing CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let leaf_key =
        rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            .expect("leaf key");
    let mut leaf_params = rcgen::CertificateParams::default();
    leaf_params.distinguished_name = rcgen::DistinguishedName::new();
    leaf_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).expect("leaf");
    let key = SigningKey::from_pem(&leaf_key.serialize_pem(), &leaf.pem()).expect("signing key");
    (ca.pem(), key)
}

#[tokio::test]
async fn a_trusted_subject_name_and_issuer_accept_an_unregistered_x5c_leaf() {
    let (emu, _) = fixture().await;
    let (ca_pem, leaf) = issued("gateway.contoso.example");
    emu.register_app(
        AppRegistration::new(CLIENT)
            .with_trusted_subject("gateway.contoso.example", &ca_pem)
            .expect("trust"),
    )
    .expect("register");
    let aud = aad_token_url(DEFAULT_TENANT);
    let ca_der = crate::keys::certificate_der_from_pem(&ca_pem).expect("ca der");
    let chain_of = |key: &SigningKey| {
        json!([
            base64::engine::general_purpose::STANDARD.encode(key.certificate_der()),
            base64::engine::general_purpose::STANDARD.encode(&ca_der),
        ])
    };
    let sni = |key: &SigningKey| {
        let chain = chain_of(key);
        assertion(key, &aud, move |h, _| {
            h.insert("x5c".into(), chain);
        })
    };
    let (status, body) = redeem(&emu, &sni(&leaf), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        emu.token_requests()
            .pop()
            .expect("record")
            .assertion_thumbprint
            .as_deref(),
        Some(leaf.thumbprint_hex())
    );

    let (_, wrong_name) = issued("intruder.contoso.example");
    let (status, body) = redeem(&emu, &sni(&wrong_name), None).await;
    assert_eq!(
        (status, body["error_codes"][0].as_u64()),
        (401, Some(700_030)),
        "{body}"
    );

    // The right name from another CA.
    let (_, other_ca) = issued("gateway.contoso.example");
    let (status, body) = redeem(&emu, &sni(&other_ca), None).await;
    assert_eq!(
        (status, body["error_codes"][0].as_u64()),
        (401, Some(50_017)),
        "{body}"
    );

    // The trusted leaf, but the assertion signed by another key.
    let forged = {
        let chain = chain_of(&leaf);
        assertion(&wrong_name, &aud, move |h, _| {
            h.insert("x5c".into(), chain);
        })
    };
    let (status, body) = redeem(&emu, &forged, None).await;
    assert_eq!(
        (status, body["error_codes"][0].as_u64()),
        (401, Some(700_027)),
        "{body}"
    );
}
