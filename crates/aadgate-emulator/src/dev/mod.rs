//! What `aadgate dev-idp` (the emulator alone) and `aadgate dev-token` (mint a token offline)
//! do, given their options; the command line that fills [`DevIdpOptions`] and
//! [`DevTokenOptions`] belongs to the `aadgate` binary.
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
use super::server::{
    AppRegistration, Emulator, EmulatorHandle, EmulatorOptions, FederatedCredential,
};
use super::tls::DevTls;
use super::{EmulatorError, DEFAULT_AUDIENCE, DEFAULT_CLIENT_ID, DEFAULT_TENANT, GRAPH_RESOURCE};

mod args;
#[cfg(test)]
mod tests;

pub use args::{AppArg, AppRolesArg, ConsentArg, FederatedArg, RedirectUriArg, ServiceAccountArg};

/// What `aadgate dev-idp` serves.
#[derive(Debug, Clone)]
pub struct DevIdpOptions {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Signing key file (PEM key + certificate), created on first use. `None`:
    /// [`default_dev_key_path`].
    pub key: Option<PathBuf>,
    /// Apps registered with a certificate for the client credentials grant.
    pub apps: Vec<AppArg>,
    /// Admin consents of apps in tenants, with app roles.
    pub consents: Vec<ConsentArg>,
    /// Redirect URIs of apps for the admin-consent endpoints (an app named only here is
    /// registered without credentials). Default: none.
    pub redirect_uris: Vec<RedirectUriArg>,
    /// Application permissions apps ask for on the consent page. Default: none.
    pub app_roles: Vec<AppRolesArg>,
    /// Federated identity credentials of apps (an app named only here is registered without
    /// certificates). Default: none.
    pub federated: Vec<FederatedArg>,
    /// User-assigned managed identities, by client id (the system-assigned one always exists).
    /// Default: none.
    pub user_assigned_identities: Vec<String>,
    /// Write a service-account token of the emulator's issuer to this file at start (what AKS
    /// projects into a pod as `AZURE_FEDERATED_TOKEN_FILE`). Default: none.
    pub write_sa_token: Option<PathBuf>,
    /// The service account of that token. Default `default/default`.
    pub sa: Option<ServiceAccountArg>,
    /// Serve HTTPS with a local CA and server certificate kept beside the key file
    /// (`dev-ca.pem`, `dev-server.pem`), created on first use. Default: plain HTTP.
    pub tls: bool,
    /// The base URL the emulator advertises in its documents (e.g.
    /// `https://idp.localtest.me:8399`); an `https://` URL turns TLS on, and its host is put in
    /// the server certificate. Default: the listen address.
    pub public_url: Option<String>,
}

impl Default for DevIdpOptions {
    fn default() -> Self {
        DevIdpOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 8399)),
            key: None,
            apps: Vec::new(),
            consents: Vec::new(),
            redirect_uris: Vec::new(),
            app_roles: Vec::new(),
            federated: Vec::new(),
            user_assigned_identities: Vec::new(),
            write_sa_token: None,
            sa: None,
            tls: false,
            public_url: None,
        }
    }
}

impl DevIdpOptions {
    /// Whether the emulator serves HTTPS: `--tls`, or an `https://` public URL.
    pub fn serves_tls(&self) -> bool {
        self.tls
            || self
                .public_url
                .as_deref()
                .is_some_and(|u| u.trim().starts_with("https://"))
    }
}

/// What `aadgate dev-token` mints (SPEC section 2); `None` and empty fields take the defaults
/// of [`dev_token_spec`].
#[derive(Debug, Clone, Default)]
pub struct DevTokenOptions {
    /// Tenant id (`tid`). Default: [`DEFAULT_TENANT`].
    pub tid: Option<String>,
    /// Audience (`aud`). Default: [`DEFAULT_AUDIENCE`].
    pub aud: Option<String>,
    /// App roles. With roles and no scopes the token is app-only (`idtyp=app`, certificate
    /// strength).
    pub roles: Vec<String>,
    /// Delegated scopes, each entry may hold several separated by spaces; makes a user token.
    pub scp: Vec<String>,
    /// Client application id (`appid` in v1, `azp` in v2).
    pub appid: Option<String>,
    /// Token version, 1 or 2.
    pub ver: Option<u8>,
    /// Lifetime in seconds (`exp` = now + SECS; negative for an expired token). Default 3600.
    pub exp: Option<i64>,
    /// Signing key file, shared with `dev-idp`; created on first use. `None`:
    /// [`default_dev_key_path`].
    pub key: Option<PathBuf>,
    /// Extra claims `NAME=JSON`; a value that is not JSON is taken as a string.
    pub claims: Vec<String>,
    /// Identity type claim (`idtyp`), e.g. `app` or `user`.
    pub idtyp: Option<String>,
}

/// Starts the emulator `dev-idp` describes (key file, TLS files, apps, consents, federated
/// credentials, managed identities, the service-account token file) and returns its handle,
/// without printing or waiting; [`run_dev_idp`] is this plus the banner and Ctrl-C.
pub async fn start_dev_idp(args: &DevIdpOptions) -> Result<EmulatorHandle, EmulatorError> {
    start_with_tls(args).await.map(|(emulator, _)| emulator)
}

/// The TLS files of `args`, beside the key file; `None` for plain HTTP.
fn dev_tls(
    args: &DevIdpOptions,
    key_path: &std::path::Path,
) -> Result<Option<DevTls>, EmulatorError> {
    if !args.serves_tls() {
        return Ok(None);
    }
    if let Some(url) = &args.public_url {
        if url.trim().starts_with("http://") {
            return Err(EmulatorError::Invalid(format!(
                "--tls with an http:// public URL '{url}': give an https:// URL"
            )));
        }
    }
    let hosts: Vec<String> = args
        .public_url
        .iter()
        .filter_map(|url| url.parse::<http::Uri>().ok())
        .filter_map(|uri| uri.host().map(str::to_string))
        .collect();
    let dir = key_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| std::path::Path::new("."));
    DevTls::load_or_create(dir, &hosts).map(Some)
}

async fn start_with_tls(
    args: &DevIdpOptions,
) -> Result<(EmulatorHandle, Option<DevTls>), EmulatorError> {
    let key_path = args.key.clone().unwrap_or_else(default_dev_key_path);
    let key = SigningKey::load_or_create(&key_path)?;
    let tls = dev_tls(args, &key_path)?;
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
    for redirect in &args.redirect_uris {
        let entry = apps
            .remove(&redirect.client_id)
            .unwrap_or_else(|| AppRegistration::new(&redirect.client_id));
        apps.insert(
            redirect.client_id.clone(),
            entry.with_redirect_uri(&redirect.url),
        );
    }
    for asked in &args.app_roles {
        let entry = apps
            .remove(&asked.client_id)
            .unwrap_or_else(|| AppRegistration::new(&asked.client_id));
        apps.insert(
            asked.client_id.clone(),
            entry.with_app_roles(asked.roles.clone()),
        );
    }
    for fic in &args.federated {
        apps.entry(fic.client_id.clone())
            .or_insert_with(|| AppRegistration::new(&fic.client_id));
    }
    let emulator = Emulator::start(
        args.listen,
        EmulatorOptions {
            signing_key: Some(key),
            tls: tls.as_ref().map(|t| t.identity.clone()),
            public_url: args.public_url.clone(),
            extra_root_pem: tls.iter().map(|t| t.ca_pem.clone()).collect(),
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
    for client_id in &args.user_assigned_identities {
        emulator.add_user_assigned_identity(client_id);
    }
    for fic in &args.federated {
        let credential = federated_credential(&emulator, fic)?;
        emulator.add_federated_credential(&fic.client_id, credential);
    }
    if let Some(path) = &args.write_sa_token {
        let sa = args.sa.clone().unwrap_or_default();
        let token = emulator.mint_service_account_token(&sa.namespace, &sa.name)?;
        write_token_file(path, &token)?;
    }
    Ok((emulator, tls))
}

/// The credential a `--federated` value stands for, its shorthands resolved.
fn federated_credential(
    emulator: &EmulatorHandle,
    fic: &FederatedArg,
) -> Result<FederatedCredential, EmulatorError> {
    let credential = match fic.issuer.as_str() {
        "k8s" => FederatedCredential::new(&emulator.service_account_issuer(), &fic.subject),
        "managed-identity" => {
            let identity = if fic.subject.eq_ignore_ascii_case("system") {
                emulator.system_managed_identity()
            } else {
                emulator
                    .managed_identities()
                    .into_iter()
                    .find(|mi| mi.client_id.eq_ignore_ascii_case(&fic.subject))
                    .ok_or_else(|| {
                        EmulatorError::Invalid(format!(
                            "--federated {}: no managed identity '{}' (add it with \
                             --user-assigned-identity)",
                            fic.client_id, fic.subject
                        ))
                    })?
            };
            FederatedCredential::for_managed_identity(&identity)
        }
        issuer => FederatedCredential::new(issuer, &fic.subject),
    };
    Ok(match &fic.audience {
        Some(audience) => credential.with_audience(audience),
        None => credential,
    })
}

/// Writes a token file the way a kubelet updates a projected volume: a temporary file renamed
/// over the old one, so a reader never sees half a token.
fn write_token_file(path: &std::path::Path, token: &str) -> Result<(), EmulatorError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| {
            EmulatorError::io(format!("cannot create folder {}", parent.display()), e)
        })?;
    }
    let tmp = path.with_extension(format!("{}.tmp", uuid::Uuid::new_v4().simple()));
    std::fs::write(&tmp, token)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            EmulatorError::io(format!("cannot write token file {}", path.display()), e)
        })
}

/// `aadgate dev-idp`: serves the emulator until Ctrl-C, after printing its URLs and how to mint
/// tokens for it. Takes the options by value or by reference.
pub async fn run_dev_idp(args: impl Borrow<DevIdpOptions>) -> Result<(), EmulatorError> {
    let args = args.borrow();
    let (emulator, tls) = start_with_tls(args).await?;
    let key_path = args.key.clone().unwrap_or_else(default_dev_key_path);
    let key = emulator.signing_key();
    let base = emulator.base_url();
    if args.public_url.is_some() {
        let scheme = if tls.is_some() { "https" } else { "http" };
        println!(
            "aadgate dev-idp: Azure AD emulator listening on {scheme}://{}, advertised as {base}",
            emulator.addr()
        );
    } else {
        println!("aadgate dev-idp: Azure AD emulator listening on {base}");
    }
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
    print_consent_urls(&emulator, &args.redirect_uris);
    print_workload_identities(&emulator, args);
    if let Some(tls) = &tls {
        println!();
        println!("TLS (a local CA made on first use; trust it to reach the emulator over HTTPS):");
        println!("  CA certificate   {}", tls.ca_path.display());
        println!("  server key+cert  {}", tls.server_path.display());
        println!("  {}", tls.env_line());
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

/// Prints the managed-identity endpoints and identities, the service-account issuer, the token
/// file and the federated credentials.
fn print_workload_identities(emulator: &EmulatorHandle, args: &DevIdpOptions) {
    println!();
    println!("Workload identities:");
    println!(
        "  IMDS             {} (header Metadata: true)",
        emulator.imds_token_endpoint()
    );
    println!(
        "  IDENTITY_ENDPOINT={} IDENTITY_HEADER={}",
        emulator.identity_endpoint(),
        emulator.identity_header()
    );
    for mi in emulator.managed_identities() {
        println!(
            "  managed identity {} client id {} principal id {}",
            if mi.system_assigned {
                "(system)  "
            } else {
                "(user)    "
            },
            mi.client_id,
            mi.principal_id
        );
    }
    println!(
        "  k8s issuer       {} (service-account tokens)",
        emulator.service_account_issuer()
    );
    if let Some(path) = &args.write_sa_token {
        let sa = args.sa.clone().unwrap_or_default();
        println!(
            "  token file       {} (system:serviceaccount:{}:{}; AZURE_FEDERATED_TOKEN_FILE)",
            path.display(),
            sa.namespace,
            sa.name
        );
    }
    for fic in &args.federated {
        for credential in emulator.federated_credentials(&fic.client_id) {
            println!(
                "  federated        {} trusts {} | {} | {}",
                fic.client_id,
                credential.issuer,
                credential.subject,
                credential.audiences.join(",")
            );
        }
    }
}

/// Prints, for each app with a redirect URI, the admin consent URL an administrator opens.
fn print_consent_urls(emulator: &EmulatorHandle, redirects: &[RedirectUriArg]) {
    if redirects.is_empty() {
        return;
    }
    println!();
    println!("Admin consent (opens the consent page; Accept creates the service principal):");
    for redirect in redirects {
        println!(
            "  {}",
            emulator.admin_consent_url(
                "organizations",
                &redirect.client_id,
                &redirect.url,
                &format!("{GRAPH_RESOURCE}/.default"),
            )
        );
    }
}

/// The [`TokenSpec`] `dev-token` options describe; an error for a `--claim` without a name.
pub fn dev_token_spec(args: &DevTokenOptions) -> Result<TokenSpec, EmulatorError> {
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

/// `aadgate dev-token`: mints the token the options describe with the shared key file and
/// returns it (the caller prints it). Takes the options by value or by reference.
pub fn run_dev_token(args: impl Borrow<DevTokenOptions>) -> Result<String, EmulatorError> {
    let args = args.borrow();
    let spec = dev_token_spec(args)?;
    let key_path = args.key.clone().unwrap_or_else(default_dev_key_path);
    let key = SigningKey::load_or_create(&key_path)?;
    key.try_mint(&spec)
}
