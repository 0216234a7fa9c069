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
use std::str::FromStr;

use serde_json::Value;

use super::keys::{default_dev_key_path, SigningKey};
use super::mint::TokenSpec;
use super::server::{
    AppRegistration, Emulator, EmulatorHandle, EmulatorOptions, FederatedCredential,
};
use super::tls::DevTls;
use super::{
    is_guid, EmulatorError, DEFAULT_AUDIENCE, DEFAULT_CLIENT_ID, DEFAULT_TENANT, GRAPH_RESOURCE,
};

/// `--app CLIENT_ID=CERT_PEM`: an app registration with one certificate file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppArg {
    /// Application (client) id.
    pub client_id: String,
    /// PEM certificate file whose key may sign client assertions.
    pub cert_pem: PathBuf,
}

/// `--redirect-uri CLIENT_ID=URL`: a redirect URI of an app for the admin-consent endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectUriArg {
    /// Application (client) id.
    pub client_id: String,
    /// The redirect URI, compared exactly by the consent page.
    pub url: String,
}

impl FromStr for RedirectUriArg {
    type Err = String;

    /// Parses `CLIENT_ID=URL` (split at the first `=`, so the URL may hold `=`); the message of
    /// the error names the expected form.
    fn from_str(text: &str) -> Result<RedirectUriArg, String> {
        let usage = || format!("expected CLIENT_ID=URL, got '{text}'");
        let (client_id, url) = text.split_once('=').ok_or_else(usage)?;
        let (client_id, url) = (client_id.trim(), url.trim());
        if client_id.is_empty() || url.is_empty() {
            return Err(usage());
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("redirect URI '{url}' is not an http(s) URL"));
        }
        Ok(RedirectUriArg {
            client_id: client_id.to_string(),
            url: url.to_string(),
        })
    }
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

impl FromStr for AppArg {
    type Err = String;

    /// Parses `CLIENT_ID=CERT_PEM`; the message of the error names the expected form.
    fn from_str(text: &str) -> Result<AppArg, String> {
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
}

impl FromStr for ConsentArg {
    type Err = String;

    /// Parses `TENANT=CLIENT_ID:ROLE1,ROLE2` (the roles may be absent); the tenant must be a
    /// GUID and is lower-cased.
    fn from_str(text: &str) -> Result<ConsentArg, String> {
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
}

/// `--app-roles CLIENT_ID=ROLE1,ROLE2`: the application permissions an app asks for; Accept on
/// the consent page grants them to its new service principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRolesArg {
    /// Application (client) id.
    pub client_id: String,
    /// App roles (application permissions), at least one.
    pub roles: Vec<String>,
}

impl FromStr for AppRolesArg {
    type Err = String;

    /// Parses `CLIENT_ID=ROLE1,ROLE2`.
    fn from_str(text: &str) -> Result<AppRolesArg, String> {
        let usage = || format!("expected CLIENT_ID=ROLE1,ROLE2, got '{text}'");
        let (client_id, roles) = text.split_once('=').ok_or_else(usage)?;
        let roles: Vec<String> = roles
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(str::to_string)
            .collect();
        if client_id.trim().is_empty() || roles.is_empty() {
            return Err(usage());
        }
        Ok(AppRolesArg {
            client_id: client_id.trim().to_string(),
            roles,
        })
    }
}

/// `--federated APP=ISSUER|SUBJECT[|AUDIENCE]`: a federated identity credential of an app.
///
/// Two issuers are shorthands resolved when the emulator starts: `k8s` is the emulator's own
/// service-account issuer (`{base}/k8s`), and `managed-identity` takes as subject `system` or a
/// user-assigned identity's client id and stands for that managed identity (issuer
/// `https://login.microsoftonline.com/{tenant}/v2.0`, subject its principal id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederatedArg {
    /// Application (client) id of the app that trusts the credential.
    pub client_id: String,
    /// The external issuer (`iss`), or `k8s` / `managed-identity`.
    pub issuer: String,
    /// The external subject (`sub`); for `managed-identity`, `system` or a client id.
    pub subject: String,
    /// The audience; default `api://AzureADTokenExchange`.
    pub audience: Option<String>,
}

impl FromStr for FederatedArg {
    type Err = String;

    /// Parses `APP=ISSUER|SUBJECT[|AUDIENCE]`.
    fn from_str(text: &str) -> Result<FederatedArg, String> {
        let usage = || format!("expected APP=ISSUER|SUBJECT[|AUDIENCE], got '{text}'");
        let (client_id, rest) = text.split_once('=').ok_or_else(usage)?;
        let parts: Vec<&str> = rest.split('|').map(str::trim).collect();
        let (issuer, subject, audience) = match parts.as_slice() {
            [issuer, subject] => (*issuer, *subject, None),
            [issuer, subject, audience] if !audience.is_empty() => {
                (*issuer, *subject, Some(audience.to_string()))
            }
            _ => return Err(usage()),
        };
        if client_id.trim().is_empty() || issuer.is_empty() || subject.is_empty() {
            return Err(usage());
        }
        let shorthand = issuer == "k8s" || issuer == "managed-identity";
        if !(shorthand || issuer.starts_with("https://") || issuer.starts_with("http://")) {
            return Err(format!(
                "issuer '{issuer}' is not an http(s) URL, 'k8s' or 'managed-identity'"
            ));
        }
        Ok(FederatedArg {
            client_id: client_id.trim().to_string(),
            issuer: issuer.to_string(),
            subject: subject.to_string(),
            audience,
        })
    }
}

/// `--sa NAMESPACE/NAME`: the Kubernetes service account a written token is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountArg {
    /// Namespace.
    pub namespace: String,
    /// Service account name.
    pub name: String,
}

impl Default for ServiceAccountArg {
    fn default() -> Self {
        ServiceAccountArg {
            namespace: "default".into(),
            name: "default".into(),
        }
    }
}

impl FromStr for ServiceAccountArg {
    type Err = String;

    /// Parses `NAMESPACE/NAME`.
    fn from_str(text: &str) -> Result<ServiceAccountArg, String> {
        let usage = || format!("expected NAMESPACE/NAME, got '{text}'");
        let (namespace, name) = text.split_once('/').ok_or_else(usage)?;
        let (namespace, name) = (namespace.trim(), name.trim());
        let bad = |s: &str| s.is_empty() || s.contains(':') || s.contains('/');
        if bad(namespace) || bad(name) {
            return Err(usage());
        }
        Ok(ServiceAccountArg {
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
    }
}

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

#[cfg(test)]
mod tests {
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
}
