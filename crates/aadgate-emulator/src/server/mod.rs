//! The AAD emulator server: OpenID metadata, JWKS, the token endpoint, the admin-consent pages
//! and the directory of tenants, apps and consents behind them, plus the knobs tests turn.
//!
//! Paths and documents follow AAD's:
//!
//! | path | answer |
//! |---|---|
//! | `GET /{tenant}/v2.0/.well-known/openid-configuration` | v2 metadata |
//! | `GET /{tenant}/.well-known/openid-configuration` | v1 metadata |
//! | `GET /{tenant}/discovery/keys` | v1 JWKS (no `issuer` member) |
//! | `GET /{tenant}/discovery/v2.0/keys` | v2 JWKS, each key with `issuer` |
//! | `POST /{tenant}/oauth2/v2.0/token` | client credentials, v2 (see [`super::token_endpoint`]) |
//! | `POST /{tenant}/oauth2/token` | client credentials, v1 |
//! | `GET`, `POST /{tenant}/v2.0/adminconsent` | the admin consent page and its Accept/Cancel (see [`super::consent`]) |
//! | `GET`, `POST /{tenant}/oauth2/authorize?prompt=admin_consent` (and `/oauth2/v2.0/authorize`) | the same page |
//!
//! For metadata, keys and the token endpoint, `{tenant}` is `common`, `organizations`,
//! `consumers` (metadata and keys only), any tenant GUID — every GUID is a tenant, as in Entra
//! ID, so a token `dev-token` mints for any tenant verifies against a running emulator, and a
//! client-credentials request for a tenant where the app has no service principal gets
//! AADSTS700016, not 90002 — or a tenant name registered with
//! [`EmulatorHandle::add_tenant_name`] (e.g. `contoso.onmicrosoft.com`), which answers as its
//! tenant. Any other name gets AAD's `AADSTS90002` (400 `invalid_tenant`), as on the real
//! service. The consent page's organization picker lists the tenants the directory has seen:
//! [`super::DEFAULT_TENANT`], any tenant given to [`EmulatorHandle::add_tenant`],
//! [`EmulatorHandle::add_tenant_name`], [`EmulatorHandle::consent`], an Accept, or an app's home
//! tenant. For `common` and `organizations` the metadata `issuer` is the template
//! (`…/{tenantid}/v2.0`, `https://sts.windows.net/{tenantid}/`); for a tenant it is that
//! tenant's issuer. The common v2 keys carry
//! `issuer: "https://login.microsoftonline.com/{tenantid}/v2.0"`; a tenant's v2 keys carry that
//! tenant's issuer.
//!
//! Control endpoints, the emulator's own (not AAD's), for users' CI and tests that run
//! `aadgate dev-idp` as a separate process; `{tid}` is a GUID (or, for apps, a registered name):
//!
//! | path | what it does | answer |
//! |---|---|---|
//! | `POST /_emulator/tenants/{tid}`, optional `{"name": "contoso.onmicrosoft.com"}` | makes the tenant seen (listed by the consent page), registers the name | `204` |
//! | `PUT /_emulator/tenants/{tid}/apps/{client_id}`, optional `{"roles": ["Mail.Read"]}` | admin consent without the page ([`EmulatorHandle::consent`]) | `204` |
//! | `DELETE /_emulator/tenants/{tid}/apps/{client_id}` | removes the service principal: consent revoked ([`EmulatorHandle::revoke_consent`]) | `204`, `404` when there was none |
//! | `GET /_emulator/tenants/{tid}/apps/{client_id}` | the service principal, `{"tenant", "client_id", "roles", "disabled"}` | `200`, `404` when there is none |
//! | `GET /_emulator/counts` | requests so far, `{"metadata", "jwks", "token", "adminconsent", "imds", "identity_endpoint", "service_account", "federation"}` | `200` |
//!
//! A malformed body or an unknown tenant name gets an AAD-shaped `400`.
//!
//! Workload identities ([`workload`], [`managed_identity`]): the apps' federated identity
//! credentials (`/_emulator/apps/{client_id}/federatedIdentityCredentials`), a Kubernetes-style
//! service-account issuer at `{base}/k8s` (`/k8s/.well-known/openid-configuration`,
//! `/k8s/openid/v1/jwks`, tokens minted through
//! `/_emulator/k8s/api/v1/namespaces/{ns}/serviceaccounts/{name}/token`), and the managed-identity
//! endpoints `GET /metadata/identity/oauth2/token` (IMDS) and `GET /msi/token`
//! (`IDENTITY_ENDPOINT`).
//!
//! Plain HTTP by default; with [`EmulatorOptions::tls`] the emulator serves HTTPS (see
//! [`crate::tls`]), and [`EmulatorOptions::public_url`] sets the base URL every document
//! advertises (`token_endpoint`, `jwks_uri`, `authorization_endpoint`, the service-account
//! issuer, …) when clients reach the emulator by another name than its bound address. Token
//! issuers stay AAD's real strings either way.

mod apps;
mod control;
mod control_api;
pub mod managed_identity;
mod metadata;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_workload;
pub mod workload;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::{get, post};

use axum::Router;

pub use crate::state::{FederatedCredential, ManagedIdentity, TrustedSubject};
pub use crate::state::{TokenEndpointVersion, TokenOutcome, TokenRequestRecord};
pub use apps::AppRegistration;

use crate::keys::SigningKey;
use crate::serve::{base_url, ServerTask};
use crate::state::{Directory, EmuState};
use crate::tls::{TlsIdentity, TlsListener};
use crate::{consent, token_endpoint};
use crate::{EmulatorError, DEFAULT_TENANT};

/// Entry point of the AAD emulator; see [`Emulator::start`].
#[derive(Debug)]
pub struct Emulator;

/// How to start the emulator.
#[derive(Debug, Clone)]
pub struct EmulatorOptions {
    /// The initial signing key; a fresh one is generated when `None` (the default).
    pub signing_key: Option<SigningKey>,
    /// Lifetime (`expires_in`) of tokens the token endpoint issues, in seconds. Default 3599,
    /// like AAD.
    pub token_lifetime_secs: i64,
    /// Serve HTTPS with this certificate and key instead of plain HTTP (the default, `None`).
    /// [`crate::DevTls`] makes a local CA and a server certificate for it.
    pub tls: Option<TlsIdentity>,
    /// The base URL the emulator's documents advertise, e.g. `https://localhost:8443` (no
    /// trailing slash). Default `None`: `http(s)://` + the bound address.
    pub public_url: Option<String>,
    /// CA certificates (PEM) trusted, besides the system's, when the emulator fetches an
    /// external issuer's documents for a federated assertion. Default none; a TLS emulator
    /// started by `dev-idp` adds its own CA.
    pub extra_root_pem: Vec<String>,
}

impl Default for EmulatorOptions {
    fn default() -> Self {
        EmulatorOptions {
            signing_key: None,
            token_lifetime_secs: 3599,
            tls: None,
            public_url: None,
            extra_root_pem: Vec::new(),
        }
    }
}

/// A running emulator. Cheap to clone; the server stops gracefully when
/// [`EmulatorHandle::shutdown`] is called or the last clone is dropped.
#[derive(Clone)]
pub struct EmulatorHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    state: Arc<EmuState>,
    server: ServerTask,
}

impl fmt::Debug for EmulatorHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmulatorHandle")
            .field("base_url", &self.inner.state.base_url)
            .finish_non_exhaustive()
    }
}

impl Emulator {
    /// Binds `listen` (port 0 picks a free port), then serves the emulator on the current tokio
    /// runtime, over HTTPS when [`EmulatorOptions::tls`] is set. Fails when the address cannot
    /// be bound, key generation fails, or the TLS identity or public URL is unusable.
    pub async fn start(
        listen: SocketAddr,
        opts: EmulatorOptions,
    ) -> Result<EmulatorHandle, EmulatorError> {
        let key = match opts.signing_key {
            Some(key) => key,
            None => SigningKey::generate()?,
        };
        let public_url = match &opts.public_url {
            Some(url) => Some(check_public_url(url)?),
            None => None,
        };
        let tls_config = match &opts.tls {
            Some(identity) => Some(identity.server_config()?),
            None => None,
        };
        let http = federation_client(&opts.extra_root_pem)?;
        let mut directory = Directory::default();
        directory.tenants.insert(DEFAULT_TENANT.to_string());
        let mut shared = None;
        let lifetime = opts.token_lifetime_secs;
        let make_state = |addr: SocketAddr, https: bool| {
            let base = public_url.clone().unwrap_or_else(|| {
                let plain = base_url(addr);
                if https {
                    plain.replacen("http://", "https://", 1)
                } else {
                    plain
                }
            });
            Arc::new(EmuState::new(base, key, lifetime, directory, http))
        };
        let server = match tls_config {
            None => {
                ServerTask::spawn(listen, "aad-emulator", |addr| {
                    let state = make_state(addr, false);
                    shared = Some(state.clone());
                    router(state)
                })
                .await?
            }
            Some(config) => {
                ServerTask::spawn_with(listen, "aad-emulator", |listener, addr, stop| {
                    let state = make_state(addr, true);
                    shared = Some(state.clone());
                    let app = router(state);
                    let listener = TlsListener::new(listener, config);
                    async move {
                        axum::serve(listener, app)
                            .with_graceful_shutdown(stop)
                            .await
                    }
                })
                .await?
            }
        };
        let state =
            shared.ok_or_else(|| EmulatorError::Invalid("emulator state was not built".into()))?;
        Ok(EmulatorHandle {
            inner: Arc::new(HandleInner { state, server }),
        })
    }
}

/// A public URL is an absolute http(s) URL; returned without a trailing slash.
fn check_public_url(url: &str) -> Result<String, EmulatorError> {
    let trimmed = url.trim().trim_end_matches('/');
    let ok = (trimmed.starts_with("https://") || trimmed.starts_with("http://"))
        && trimmed
            .parse::<http::Uri>()
            .is_ok_and(|u| u.host().is_some());
    if !ok {
        return Err(EmulatorError::Invalid(format!(
            "public URL '{url}' is not an absolute http(s) URL"
        )));
    }
    Ok(trimmed.to_string())
}

/// The client that fetches external issuers' documents, trusting `extra_roots` besides the
/// system's roots.
fn federation_client(extra_roots: &[String]) -> Result<reqwest::Client, EmulatorError> {
    crate::grpc::ensure_tls_provider();
    let mut builder = reqwest::Client::builder().redirect(reqwest::redirect::Policy::limited(3));
    for pem in extra_roots {
        let cert = reqwest::Certificate::from_pem(pem.as_bytes())
            .map_err(|e| EmulatorError::Certificate(format!("extra root: {e}")))?;
        builder = builder.add_root_certificate(cert);
    }
    builder
        .build()
        .map_err(|e| EmulatorError::Invalid(format!("HTTP client: {e}")))
}

fn router(state: Arc<EmuState>) -> Router {
    Router::new()
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(metadata::metadata_v2),
        )
        .route(
            "/{tenant}/.well-known/openid-configuration",
            get(metadata::metadata_v1),
        )
        .route("/{tenant}/discovery/keys", get(metadata::jwks_v1))
        .route("/{tenant}/discovery/v2.0/keys", get(metadata::jwks_v2))
        .route(
            "/{tenant}/oauth2/v2.0/token",
            post(token_endpoint::token_v2).fallback(token_endpoint::not_post),
        )
        .route(
            "/{tenant}/oauth2/token",
            post(token_endpoint::token_v1).fallback(token_endpoint::not_post),
        )
        .route(
            "/{tenant}/v2.0/adminconsent",
            get(consent::adminconsent_page).post(consent::adminconsent_decision),
        )
        .route(
            "/{tenant}/oauth2/authorize",
            get(consent::authorize_page).post(consent::authorize_decision),
        )
        .route(
            "/{tenant}/oauth2/v2.0/authorize",
            get(consent::authorize_page).post(consent::authorize_decision),
        )
        .route("/_emulator/tenants/{tid}", post(control_api::add_tenant))
        .route(
            "/_emulator/tenants/{tid}/apps/{client_id}",
            get(control_api::get_app)
                .put(control_api::put_app)
                .delete(control_api::delete_app),
        )
        .route("/_emulator/counts", get(control_api::counts))
        .route(
            "/k8s/.well-known/openid-configuration",
            get(workload::sa_metadata),
        )
        .route("/k8s/openid/v1/jwks", get(workload::sa_jwks))
        .route(
            "/_emulator/k8s/api/v1/namespaces/{ns}/serviceaccounts/{name}/token",
            post(workload::sa_token_request),
        )
        .route(
            "/_emulator/apps/{client_id}/federatedIdentityCredentials",
            get(workload::list_credentials).post(workload::add_credential),
        )
        .route(
            managed_identity::IMDS_TOKEN_PATH,
            get(managed_identity::imds_token),
        )
        .route(
            managed_identity::IDENTITY_ENDPOINT_PATH,
            get(managed_identity::identity_endpoint_token),
        )
        .route(
            "/_emulator/managed-identities",
            get(managed_identity::list_identities),
        )
        .route(
            "/_emulator/managed-identities/{client_id}",
            axum::routing::put(managed_identity::put_identity),
        )
        .with_state(state)
}

impl EmulatorHandle {
    fn state(&self) -> &EmuState {
        &self.inner.state
    }

    /// `http://127.0.0.1:PORT` (`https://` when serving TLS), or the public URL it was
    /// started with.
    pub fn base_url(&self) -> String {
        self.state().base_url.clone()
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.server.addr()
    }

    /// The common v2 metadata URL: `{base}/common/v2.0/.well-known/openid-configuration`.
    pub fn metadata_url(&self) -> String {
        format!(
            "{}/common/v2.0/.well-known/openid-configuration",
            self.state().base_url
        )
    }

    /// The common v1 metadata URL: `{base}/common/.well-known/openid-configuration`.
    pub fn metadata_url_v1(&self) -> String {
        format!(
            "{}/common/.well-known/openid-configuration",
            self.state().base_url
        )
    }

    /// The common v2 JWKS URL: `{base}/common/discovery/v2.0/keys`.
    pub fn jwks_uri(&self) -> String {
        format!("{}/common/discovery/v2.0/keys", self.state().base_url)
    }

    /// The common v1 JWKS URL: `{base}/common/discovery/keys`.
    pub fn jwks_uri_v1(&self) -> String {
        format!("{}/common/discovery/keys", self.state().base_url)
    }

    /// The v2 token endpoint of `tenant`: `{base}/{tenant}/oauth2/v2.0/token`.
    pub fn token_endpoint(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/token", self.state().base_url)
    }

    /// The token endpoint template for gateway configs:
    /// `{base}/{tenantid}/oauth2/v2.0/token`.
    pub fn token_endpoint_template(&self) -> String {
        self.token_endpoint("{tenantid}")
    }

    /// The admin consent URL an app sends an administrator to:
    /// `{base}/{tenant}/v2.0/adminconsent?client_id=…&redirect_uri=…&scope=…` (values
    /// form-encoded; `tenant` is usually `organizations`). `redirect_uri` must be registered
    /// for the app ([`AppRegistration::with_redirect_uri`]) or the page answers AADSTS50011.
    pub fn admin_consent_url(
        &self,
        tenant: &str,
        client_id: &str,
        redirect_uri: &str,
        scope: &str,
    ) -> String {
        consent::admin_consent_url(
            &self.state().base_url,
            tenant,
            client_id,
            redirect_uri,
            scope,
        )
    }

    /// The v1 token endpoint of `tenant`: `{base}/{tenant}/oauth2/token`.
    pub fn token_endpoint_v1(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/token", self.state().base_url)
    }

    /// Stops the server gracefully (in-flight requests finish) and waits for it.
    pub async fn shutdown(&self) {
        self.inner.server.shutdown().await;
    }
}
