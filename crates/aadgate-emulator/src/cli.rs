//! `aadgate dev-idp` (the emulator alone) and `aadgate dev-token` (mint a token offline).
//!
//! Both use the same key file (`--key`, default [`default_dev_key_path`]), created on first use,
//! so a token minted by `dev-token` verifies against a running `dev-idp`.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde_json::Value;

use super::keys::{default_dev_key_path, SigningKey};
use super::mint::TokenSpec;
use super::server::{AppRegistration, Emulator, EmulatorHandle, EmulatorOptions};
use super::{is_guid, EmulatorError, DEFAULT_AUDIENCE, DEFAULT_CLIENT_ID, DEFAULT_TENANT};

/// `--app CLIENT_ID=CERT_PEM`: an app registration with one certificate file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppArg {
    /// Application (client) id.
    pub client_id: String,
    /// PEM certificate file whose key may sign client assertions.
    pub cert_pem: PathBuf,
}

/// `--consent TENANT=CLIENT_ID:ROLE1,ROLE2`: admin consent of an app in a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentArg {
    /// Tenant id (GUID).
    pub tenant: String,
    /// Application (client) id.
    pub client_id: String,
    /// Consented app roles (may be empty).
    pub roles: Vec<String>,
}

fn parse_app_arg(text: &str) -> Result<AppArg, String> {
    let (client_id, path) = text
        .split_once('=')
        .ok_or_else(|| format!("expected CLIENT_ID=CERT_PEM, got '{text}'"))?;
    if client_id.trim().is_empty() || path.trim().is_empty() {
        return Err(format!("expected CLIENT_ID=CERT_PEM, got '{text}'"));
    }
    Ok(AppArg {
        client_id: client_id.trim().to_string(),
        cert_pem: PathBuf::from(path.trim()),
    })
}

fn parse_consent_arg(text: &str) -> Result<ConsentArg, String> {
    let usage = || format!("expected TENANT=CLIENT_ID:ROLE1,ROLE2, got '{text}'");
    let (tenant, rest) = text.split_once('=').ok_or_else(usage)?;
    let (client_id, roles) = rest.split_once(':').unwrap_or((rest, ""));
    let tenant = tenant.trim();
    if !is_guid(tenant) {
        return Err(format!("tenant '{tenant}' is not a GUID"));
    }
    if client_id.trim().is_empty() {
        return Err(usage());
    }
    Ok(ConsentArg {
        tenant: tenant.to_ascii_lowercase(),
        client_id: client_id.trim().to_string(),
        roles: roles
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

/// Arguments of `aadgate dev-idp`.
#[derive(Debug, Clone, clap::Args)]
pub struct DevIdpArgs {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8399")]
    pub listen: SocketAddr,
    /// Signing key file (PEM key + certificate), created on first use.
    /// Default: $XDG_CACHE_HOME/aadgate/dev-key.pem or ~/.cache/aadgate/dev-key.pem.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Register an app with a certificate for the client credentials grant (repeatable).
    #[arg(long = "app", value_name = "CLIENT_ID=CERT_PEM", value_parser = parse_app_arg)]
    pub apps: Vec<AppArg>,
    /// Admin-consent an app in a tenant with app roles (repeatable).
    #[arg(long = "consent", value_name = "TENANT=CLIENT_ID:ROLE1,ROLE2", value_parser = parse_consent_arg)]
    pub consents: Vec<ConsentArg>,
}

/// Arguments of `aadgate dev-token` (SPEC section 2).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DevTokenArgs {
    /// Tenant id (`tid`). Default: the emulator's default tenant.
    #[arg(long, value_name = "T")]
    pub tid: Option<String>,
    /// Audience (`aud`). Default: api://aadgate-demo.
    #[arg(long, value_name = "A")]
    pub aud: Option<String>,
    /// App roles, comma separated. With roles and no scopes the token is app-only
    /// (`idtyp=app`, certificate strength).
    #[arg(long, value_name = "R,..", value_delimiter = ',')]
    pub roles: Vec<String>,
    /// Delegated scopes (space separated or repeated); makes a user token.
    #[arg(long, value_name = "S", num_args = 1..)]
    pub scp: Vec<String>,
    /// Client application id (`appid` in v1, `azp` in v2).
    #[arg(long, value_name = "C")]
    pub appid: Option<String>,
    /// Token version.
    #[arg(long, value_name = "1|2", value_parser = clap::value_parser!(u8).range(1..=2))]
    pub ver: Option<u8>,
    /// Lifetime in seconds (`exp` = now + SECS; negative for an expired token). Default 3600.
    #[arg(long, value_name = "SECS", allow_negative_numbers = true)]
    pub exp: Option<i64>,
    /// Signing key file, shared with `dev-idp`; created on first use.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Extra claim NAME=JSON (repeatable); a value that is not JSON is taken as a string.
    #[arg(long = "claim", value_name = "NAME=JSON")]
    pub claims: Vec<String>,
    /// Identity type claim (`idtyp`), e.g. `app` or `user`.
    #[arg(long, value_name = "IDTYP")]
    pub idtyp: Option<String>,
}

/// Starts the emulator `dev-idp` describes (key file, apps, consents) and returns its handle,
/// without printing or waiting; [`run_dev_idp`] is this plus the banner and Ctrl-C.
pub async fn start_dev_idp(args: &DevIdpArgs) -> Result<EmulatorHandle, EmulatorError> {
    let key_path = args.key.clone().unwrap_or_else(default_dev_key_path);
    let key = SigningKey::load_or_create(&key_path)?;
    let mut apps: BTreeMap<String, AppRegistration> = BTreeMap::new();
    for app in &args.apps {
        let pem = std::fs::read_to_string(&app.cert_pem).map_err(|e| {
            EmulatorError::io(
                format!("cannot read certificate {}", app.cert_pem.display()),
                e,
            )
        })?;
        let entry = apps
            .remove(&app.client_id)
            .unwrap_or_else(|| AppRegistration::new(&app.client_id));
        apps.insert(app.client_id.clone(), entry.with_certificate_pem(&pem)?);
    }
    let emulator = Emulator::start(
        args.listen,
        EmulatorOptions {
            signing_key: Some(key),
            ..EmulatorOptions::default()
        },
    )
    .await?;
    for app in apps.into_values() {
        emulator.register_app(app)?;
    }
    for consent in &args.consents {
        emulator.consent(&consent.tenant, &consent.client_id, consent.roles.clone());
    }
    Ok(emulator)
}

/// `aadgate dev-idp`: serves the emulator until Ctrl-C, after printing its URLs and how to mint
/// tokens for it. Takes the arguments by value or by reference.
pub async fn run_dev_idp(args: impl Borrow<DevIdpArgs>) -> Result<(), EmulatorError> {
    let args = args.borrow();
    let emulator = start_dev_idp(args).await?;
    let key_path = args.key.clone().unwrap_or_else(default_dev_key_path);
    let key = emulator.signing_key();
    let base = emulator.base_url();
    println!("aadgate dev-idp: Azure AD emulator listening on {base}");
    println!(
        "  signing key      {} (kid {})",
        key_path.display(),
        key.kid()
    );
    println!("  metadata (v2)    {}", emulator.metadata_url());
    println!("  metadata (v1)    {}", emulator.metadata_url_v1());
    println!("  JWKS (v2)        {}", emulator.jwks_uri());
    println!("  token endpoint   {}", emulator.token_endpoint_template());
    println!("  default tenant   {DEFAULT_TENANT}");
    for app in &args.apps {
        println!(
            "  app              {} ({})",
            app.client_id,
            app.cert_pem.display()
        );
    }
    for consent in &args.consents {
        println!(
            "  consent          {} in {}: [{}]",
            consent.client_id,
            consent.tenant,
            consent.roles.join(", ")
        );
    }
    println!();
    println!(
        "Gateway config:  [identity] metadata_url = \"{}\"",
        emulator.metadata_url()
    );
    println!();
    println!("Mint tokens that verify against this emulator:");
    println!(
        "  aadgate dev-token --key {} --aud {DEFAULT_AUDIENCE} --scp Orders.Read",
        key_path.display()
    );
    println!(
        "  aadgate dev-token --key {} --aud {DEFAULT_AUDIENCE} --roles Orders.Read --appid {DEFAULT_CLIENT_ID} --ver 1",
        key_path.display()
    );
    println!();
    println!("Press Ctrl-C to stop.");
    tokio::signal::ctrl_c()
        .await
        .map_err(|e| EmulatorError::io("waiting for Ctrl-C", e))?;
    emulator.shutdown().await;
    Ok(())
}

/// The [`TokenSpec`] `dev-token` arguments describe.
pub fn dev_token_spec(args: &DevTokenArgs) -> Result<TokenSpec, EmulatorError> {
    let tid = args
        .tid
        .clone()
        .unwrap_or_else(|| DEFAULT_TENANT.to_string());
    let aud = args
        .aud
        .clone()
        .unwrap_or_else(|| DEFAULT_AUDIENCE.to_string());
    let roles: Vec<&str> = args
        .roles
        .iter()
        .map(|r| r.trim())
        .filter(|r| !r.is_empty())
        .collect();
    let scopes: Vec<&str> = args.scp.iter().flat_map(|s| s.split_whitespace()).collect();
    let mut spec = if !roles.is_empty() && scopes.is_empty() {
        TokenSpec::app(&tid, &aud, &roles)
    } else {
        let mut spec = TokenSpec {
            tid,
            aud,
            ..TokenSpec::default()
        };
        if !scopes.is_empty() {
            spec.scp = Some(scopes.join(" "));
        }
        if !roles.is_empty() {
            spec = spec.with_roles(&roles);
        }
        spec
    };
    if let Some(appid) = &args.appid {
        spec.appid = Some(appid.clone());
    }
    if let Some(ver) = args.ver {
        spec.ver = ver;
    }
    if let Some(exp) = args.exp {
        spec.lifetime_secs = exp;
    }
    if let Some(idtyp) = &args.idtyp {
        spec.idtyp = Some(idtyp.clone());
    }
    for claim in &args.claims {
        let (name, raw) = claim
            .split_once('=')
            .filter(|(name, _)| !name.trim().is_empty())
            .ok_or_else(|| {
                EmulatorError::Invalid(format!("--claim expects NAME=JSON, got '{claim}'"))
            })?;
        let value = serde_json::from_str::<Value>(raw).unwrap_or_else(|_| Value::from(raw));
        spec.extra_claims.insert(name.trim().to_string(), value);
    }
    Ok(spec)
}

/// `aadgate dev-token`: mints the token the arguments describe with the shared key file and
/// returns it (the caller prints it). Takes the arguments by value or by reference.
pub fn run_dev_token(args: impl Borrow<DevTokenArgs>) -> Result<String, EmulatorError> {
    let args = args.borrow();
    let spec = dev_token_spec(args)?;
    let key_path = args.key.clone().unwrap_or_else(default_dev_key_path);
    let key = SigningKey::load_or_create(&key_path)?;
    key.try_mint(&spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct TokenCli {
        #[command(flatten)]
        args: DevTokenArgs,
    }

    #[derive(Parser)]
    struct IdpCli {
        #[command(flatten)]
        args: DevIdpArgs,
    }

    fn claims_of(token: &str) -> serde_json::Map<String, Value> {
        let part = token.split('.').nth(1).expect("claims part");
        serde_json::from_slice(&crate::b64url_decode(part).expect("b64")).expect("json")
    }

    #[test]
    fn dev_token_flags_map_to_claims() {
        let cli = TokenCli::try_parse_from([
            "dev-token",
            "--tid",
            "72f988bf-86f1-41af-91ab-2d7cd011db47",
            "--aud",
            "api://orders",
            "--scp",
            "Orders.Read Orders.Write",
            "User.Read",
            "--ver",
            "1",
            "--exp",
            "-60",
            "--claim",
            "acct=1",
            "--claim",
            "upn=alice@contoso.example",
            "--claim",
            "groups=[\"g1\",\"g2\"]",
        ])
        .expect("parse");
        let spec = dev_token_spec(&cli.args).expect("spec");
        assert_eq!(
            spec.scp.as_deref(),
            Some("Orders.Read Orders.Write User.Read")
        );
        assert_eq!(spec.ver, 1);
        assert_eq!(spec.lifetime_secs, -60);
        assert_eq!(spec.extra_claims["acct"], 1);
        assert_eq!(spec.extra_claims["upn"], "alice@contoso.example");
        assert_eq!(spec.extra_claims["groups"], serde_json::json!(["g1", "g2"]));

        let cli =
            TokenCli::try_parse_from(["dev-token", "--roles", "A.Read,B.Write", "--appid", "c1"])
                .expect("parse");
        let spec = dev_token_spec(&cli.args).expect("spec");
        assert_eq!(spec.idtyp.as_deref(), Some("app"));
        assert_eq!(spec.app_auth_strength.as_deref(), Some("2"));
        assert_eq!(
            spec.roles,
            Some(vec!["A.Read".to_string(), "B.Write".to_string()])
        );
        assert_eq!(spec.appid.as_deref(), Some("c1"));

        assert!(TokenCli::try_parse_from(["dev-token", "--ver", "3"]).is_err());
        let bad = DevTokenArgs {
            claims: vec!["=1".into()],
            ..DevTokenArgs::default()
        };
        assert!(dev_token_spec(&bad).is_err());
    }

    #[test]
    fn dev_idp_flags_parse_apps_and_consents() {
        let cli = IdpCli::try_parse_from([
            "dev-idp",
            "--listen",
            "127.0.0.1:0",
            "--app",
            "3c2a9b8e-5d4f-4e6a-9b1c-7d8e9f0a1b2c=certs/app.crt",
            "--consent",
            "72f988bf-86f1-41af-91ab-2d7cd011db47=3c2a9b8e-5d4f-4e6a-9b1c-7d8e9f0a1b2c:Mail.Read,Mail.Send",
        ])
        .expect("parse");
        assert_eq!(cli.args.apps[0].cert_pem, PathBuf::from("certs/app.crt"));
        assert_eq!(cli.args.consents[0].roles, vec!["Mail.Read", "Mail.Send"]);
        assert!(IdpCli::try_parse_from(["dev-idp", "--consent", "not-a-guid=x:y"]).is_err());
        assert!(IdpCli::try_parse_from(["dev-idp", "--app", "no-equals"]).is_err());
        let defaults = IdpCli::try_parse_from(["dev-idp"]).expect("parse");
        assert_eq!(
            defaults.args.listen,
            "127.0.0.1:8399".parse::<SocketAddr>().expect("addr")
        );
    }

    #[tokio::test]
    async fn dev_token_verifies_against_dev_idp_sharing_the_key_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key_path = dir.path().join("dev-key.pem");
        let token = run_dev_token(DevTokenArgs {
            key: Some(key_path.clone()),
            scp: vec!["Orders.Read".into()],
            ..DevTokenArgs::default()
        })
        .expect("token");

        let app_key = SigningKey::generate().expect("app key");
        let cert_path = dir.path().join("app.crt");
        std::fs::write(&cert_path, app_key.certificate_pem()).expect("write cert");
        let idp = start_dev_idp(&DevIdpArgs {
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
}
