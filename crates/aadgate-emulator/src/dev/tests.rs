//! Tests of the `dev-idp` and `dev-token` options and of what they start.

use super::*;

fn claims_of(token: &str) -> serde_json::Map<String, Value> {
    let part = token.split('.').nth(1).expect("claims part");
    serde_json::from_slice(&crate::b64url_decode(part).expect("b64")).expect("json")
}

#[test]
fn dev_token_options_map_to_claims() {
    let spec = dev_token_spec(&DevTokenOptions {
        tid: Some("72f988bf-86f1-41af-91ab-2d7cd011db47".into()),
        aud: Some("api://orders".into()),
        scp: vec!["Orders.Read Orders.Write".into(), "User.Read".into()],
        ver: Some(1),
        exp: Some(-60),
        claims: vec![
            "acct=1".into(),
            "upn=alice@contoso.example".into(),
            "groups=[\"g1\",\"g2\"]".into(),
        ],
        ..DevTokenOptions::default()
    })
    .expect("spec");
    assert_eq!(spec.tid, "72f988bf-86f1-41af-91ab-2d7cd011db47");
    assert_eq!(spec.aud, "api://orders");
    assert_eq!(
        spec.scp.as_deref(),
        Some("Orders.Read Orders.Write User.Read")
    );
    assert_eq!(spec.ver, 1);
    assert_eq!(spec.lifetime_secs, -60);
    assert_eq!(spec.extra_claims["acct"], 1);
    assert_eq!(spec.extra_claims["upn"], "alice@contoso.example");
    assert_eq!(spec.extra_claims["groups"], serde_json::json!(["g1", "g2"]));
}

#[test]
fn roles_without_scopes_make_an_app_only_token() {
    let spec = dev_token_spec(&DevTokenOptions {
        roles: vec!["A.Read".into(), " B.Write ".into(), "".into()],
        appid: Some("c1".into()),
        ..DevTokenOptions::default()
    })
    .expect("spec");
    assert_eq!(spec.idtyp.as_deref(), Some("app"));
    assert_eq!(spec.app_auth_strength.as_deref(), Some("2"));
    assert_eq!(
        spec.roles,
        Some(vec!["A.Read".to_string(), "B.Write".to_string()])
    );
    assert_eq!(spec.appid.as_deref(), Some("c1"));
}

#[test]
fn a_claim_without_a_name_is_refused() {
    for claim in ["=1", "no-equals", " =x"] {
        let bad = DevTokenOptions {
            claims: vec![claim.into()],
            ..DevTokenOptions::default()
        };
        assert!(
            matches!(dev_token_spec(&bad), Err(EmulatorError::Invalid(_))),
            "{claim}"
        );
    }
}

#[test]
fn app_and_consent_values_parse() {
    let app: AppArg = "3c2a9b8e-5d4f-4e6a-9b1c-7d8e9f0a1b2c=certs/app.crt"
        .parse()
        .expect("app");
    assert_eq!(app.client_id, "3c2a9b8e-5d4f-4e6a-9b1c-7d8e9f0a1b2c");
    assert_eq!(app.cert_pem, PathBuf::from("certs/app.crt"));
    let consent: ConsentArg =
        "72F988BF-86F1-41AF-91AB-2D7CD011DB47=3c2a9b8e-5d4f-4e6a-9b1c-7d8e9f0a1b2c:Mail.Read,Mail.Send"
            .parse()
            .expect("consent");
    assert_eq!(consent.tenant, "72f988bf-86f1-41af-91ab-2d7cd011db47");
    assert_eq!(consent.roles, vec!["Mail.Read", "Mail.Send"]);
    let no_roles: ConsentArg = format!("{DEFAULT_TENANT}=c1").parse().expect("consent");
    assert!(no_roles.roles.is_empty());
    for bad in ["no-equals", "=x", "c1="] {
        assert!(bad.parse::<AppArg>().is_err(), "{bad}");
    }
    for bad in [
        "not-a-guid=x:y",
        "no-equals",
        &format!("{DEFAULT_TENANT}=:R"),
    ] {
        assert!(bad.parse::<ConsentArg>().is_err(), "{bad}");
    }
}

#[test]
fn redirect_uri_values_parse() {
    let arg: RedirectUriArg = "c1=https://api.contoso.com/cb?a=b&c=d"
        .parse()
        .expect("redirect");
    assert_eq!(arg.client_id, "c1");
    assert_eq!(arg.url, "https://api.contoso.com/cb?a=b&c=d");
    for bad in [
        "no-equals",
        "=https://x/cb",
        "c1=",
        "c1=ftp://x/cb",
        "c1=/cb",
    ] {
        assert!(bad.parse::<RedirectUriArg>().is_err(), "{bad}");
    }
}

#[tokio::test]
async fn dev_idp_registers_redirect_uris_so_its_consent_url_shows_the_page() {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = "3c2a9b8e-5d4f-4e6a-9b1c-7d8e9f0a1b2c";
    let redirect = "http://127.0.0.1:9/.aadgate/onboarding/callback";
    let idp = start_dev_idp(&DevIdpOptions {
        listen: "127.0.0.1:0".parse().expect("addr"),
        key: Some(dir.path().join("dev-key.pem")),
        apps: vec![],
        consents: vec![],
        redirect_uris: vec![format!("{client}={redirect}").parse().expect("arg")],
        app_roles: vec![format!("{client}=User.Read.All").parse().expect("arg")],
        ..DevIdpOptions::default()
    })
    .await
    .expect("dev-idp");
    let url = idp.admin_consent_url(
        "organizations",
        client,
        redirect,
        "https://graph.microsoft.com/.default",
    );
    assert_eq!(
        url,
        format!(
            "{}/organizations/v2.0/adminconsent?client_id={client}\
             &redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2F.aadgate%2Fonboarding%2Fcallback\
             &scope=https%3A%2F%2Fgraph.microsoft.com%2F.default",
            idp.base_url()
        )
    );
    let page = reqwest::get(&url).await.expect("get");
    assert_eq!(page.status(), 200);
    assert!(page.text().await.expect("text").contains("id=\"accept\""));
    idp.shutdown().await;
}

#[tokio::test]
async fn dev_token_verifies_against_dev_idp_sharing_the_key_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key_path = dir.path().join("dev-key.pem");
    let token = run_dev_token(DevTokenOptions {
        key: Some(key_path.clone()),
        scp: vec!["Orders.Read".into()],
        ..DevTokenOptions::default()
    })
    .expect("token");

    let app_key = SigningKey::generate().expect("app key");
    let cert_path = dir.path().join("app.crt");
    std::fs::write(&cert_path, app_key.certificate_pem()).expect("write cert");
    let idp = start_dev_idp(&DevIdpOptions {
        listen: "127.0.0.1:0".parse().expect("addr"),
        key: Some(key_path),
        apps: vec![AppArg {
            client_id: "3c2a9b8e-5d4f-4e6a-9b1c-7d8e9f0a1b2c".into(),
            cert_pem: cert_path,
        }],
        consents: vec![ConsentArg {
            tenant: DEFAULT_TENANT.into(),
            client_id: "3c2a9b8e-5d4f-4e6a-9b1c-7d8e9f0a1b2c".into(),
            roles: vec!["Mail.Read".into()],
        }],
        redirect_uris: vec![],
        app_roles: vec![],
        ..DevIdpOptions::default()
    })
    .await
    .expect("dev-idp");
    let jwks: Value = reqwest::get(idp.jwks_uri())
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let header_part = token.split('.').next().expect("header");
    let header: Value =
        serde_json::from_slice(&crate::b64url_decode(header_part).expect("b64")).expect("json");
    let jwk = &jwks["keys"][0];
    assert_eq!(jwk["kid"], header["kid"]);
    let decoding = jsonwebtoken::DecodingKey::from_rsa_components(
        jwk["n"].as_str().expect("n"),
        jwk["e"].as_str().expect("e"),
    )
    .expect("key");
    let (input, sig) = token.rsplit_once('.').expect("dot");
    assert!(jsonwebtoken::crypto::verify(
        sig,
        input.as_bytes(),
        &decoding,
        jsonwebtoken::Algorithm::RS256
    )
    .expect("verify"));
    assert_eq!(claims_of(&token)["scp"], "Orders.Read");
    idp.shutdown().await;
}

#[test]
fn federated_and_service_account_values_parse() {
    let fic: FederatedArg = "c1=https://oidc.example/abc|system:serviceaccount:ns:sa"
        .parse()
        .expect("fic");
    assert_eq!(fic.issuer, "https://oidc.example/abc");
    assert_eq!(fic.subject, "system:serviceaccount:ns:sa");
    assert_eq!(fic.audience, None);
    let fic: FederatedArg = "c1=k8s|system:serviceaccount:ns:sa|api://Other"
        .parse()
        .expect("fic");
    assert_eq!(fic.audience.as_deref(), Some("api://Other"));
    let mi: FederatedArg = "c1=managed-identity|system".parse().expect("mi");
    assert_eq!(
        (mi.issuer.as_str(), mi.subject.as_str()),
        ("managed-identity", "system")
    );
    for bad in [
        "c1",
        "=k8s|x",
        "c1=k8s",
        "c1=k8s||",
        "c1=k8s|x|",
        "c1=ftp://x|y",
        "c1=a|b|c|d",
    ] {
        assert!(bad.parse::<FederatedArg>().is_err(), "{bad}");
    }
    let sa: ServiceAccountArg = "gateway/aadgate".parse().expect("sa");
    assert_eq!(
        (sa.namespace.as_str(), sa.name.as_str()),
        ("gateway", "aadgate")
    );
    for bad in ["gateway", "/x", "x/", "a:b/c", "a/b/c"] {
        assert!(bad.parse::<ServiceAccountArg>().is_err(), "{bad}");
    }
    assert_eq!(ServiceAccountArg::default().namespace, "default");
}

#[tokio::test]
async fn dev_idp_writes_a_service_account_token_its_federated_app_redeems() {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = "3c2a9b8e-5d4f-4e6a-9b1c-7d8e9f0a1b2c";
    let user = "6a1f7c2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b";
    let token_file = dir.path().join("tokens").join("azure-identity-token");
    let idp = start_dev_idp(&DevIdpOptions {
        listen: "127.0.0.1:0".parse().expect("addr"),
        key: Some(dir.path().join("dev-key.pem")),
        consents: vec![format!("{DEFAULT_TENANT}={client}:Mail.Read")
            .parse()
            .expect("consent")],
        federated: vec![
            format!("{client}=k8s|system:serviceaccount:gateway:aadgate")
                .parse()
                .expect("fic"),
            format!("{client}=managed-identity|{user}")
                .parse()
                .expect("fic"),
        ],
        user_assigned_identities: vec![user.into()],
        write_sa_token: Some(token_file.clone()),
        sa: Some("gateway/aadgate".parse().expect("sa")),
        ..DevIdpOptions::default()
    })
    .await
    .expect("dev-idp");
    let credentials = idp.federated_credentials(client);
    assert_eq!(credentials.len(), 2);
    assert_eq!(credentials[0].issuer, idp.service_account_issuer());
    let mi = idp
        .managed_identities()
        .into_iter()
        .find(|mi| mi.client_id == user)
        .expect("user-assigned");
    assert_eq!(credentials[1].subject, mi.principal_id);
    let token = std::fs::read_to_string(&token_file).expect("token file");
    let response: Value = reqwest::Client::new()
        .post(idp.token_endpoint(DEFAULT_TENANT))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", client),
            ("scope", "https://graph.microsoft.com/.default"),
            (
                "client_assertion_type",
                crate::token_endpoint::JWT_BEARER_ASSERTION_TYPE,
            ),
            ("client_assertion", token.as_str()),
        ])
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    assert_eq!(
        claims_of(response["access_token"].as_str().expect("token"))["roles"],
        serde_json::json!(["Mail.Read"])
    );
    idp.shutdown().await;

    let missing = start_dev_idp(&DevIdpOptions {
        listen: "127.0.0.1:0".parse().expect("addr"),
        key: Some(dir.path().join("dev-key.pem")),
        federated: vec![format!("{client}=managed-identity|{user}")
            .parse()
            .expect("fic")],
        ..DevIdpOptions::default()
    })
    .await;
    assert!(matches!(missing, Err(EmulatorError::Invalid(_))));
}

#[tokio::test]
async fn dev_idp_tls_keeps_its_ca_beside_the_key_and_serves_https() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = DevIdpOptions {
        listen: "127.0.0.1:0".parse().expect("addr"),
        key: Some(dir.path().join("dev-key.pem")),
        tls: true,
        ..DevIdpOptions::default()
    };
    assert!(options.serves_tls());
    let idp = start_dev_idp(&options).await.expect("dev-idp");
    assert!(idp.base_url().starts_with("https://127.0.0.1:"));
    let ca = std::fs::read(dir.path().join(crate::tls::DEV_CA_FILE)).expect("ca file");
    assert!(dir.path().join(crate::tls::DEV_SERVER_FILE).exists());
    crate::grpc::ensure_tls_provider();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("ca"))
        .build()
        .expect("client");
    let keys = client.get(idp.jwks_uri()).send().await.expect("https");
    assert_eq!(keys.status(), 200);
    idp.shutdown().await;

    let https_url = DevIdpOptions {
        public_url: Some("https://idp.aadgate.test:8443".into()),
        ..DevIdpOptions::default()
    };
    assert!(https_url.serves_tls());
    let mixed = DevIdpOptions {
        listen: "127.0.0.1:0".parse().expect("addr"),
        key: Some(dir.path().join("dev-key.pem")),
        tls: true,
        public_url: Some("http://idp.aadgate.test".into()),
        ..DevIdpOptions::default()
    };
    assert!(matches!(
        start_dev_idp(&mixed).await,
        Err(EmulatorError::Invalid(_))
    ));
}
