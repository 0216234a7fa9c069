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
//! | `GET /_emulator/counts` | requests so far, `{"metadata", "jwks", "token", "adminconsent"}` | `200` |
//!
//! A malformed body or an unknown tenant name gets an AAD-shaped `400`.

mod apps;
mod control;
mod control_api;
mod metadata;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::{get, post};

use axum::Router;

pub use crate::state::{TokenEndpointVersion, TokenOutcome, TokenRequestRecord};
pub use apps::AppRegistration;

use crate::keys::SigningKey;
use crate::serve::{base_url, ServerTask};
use crate::state::{Directory, EmuState};
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
}

impl Default for EmulatorOptions {
    fn default() -> Self {
        EmulatorOptions {
            signing_key: None,
            token_lifetime_secs: 3599,
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
    /// runtime. Fails when the address cannot be bound or key generation fails.
    pub async fn start(
        listen: SocketAddr,
        opts: EmulatorOptions,
    ) -> Result<EmulatorHandle, EmulatorError> {
        let key = match opts.signing_key {
            Some(key) => key,
            None => SigningKey::generate()?,
        };
        let mut directory = Directory::default();
        directory.tenants.insert(DEFAULT_TENANT.to_string());
        let mut shared = None;
        let server = ServerTask::spawn(listen, "aad-emulator", |addr| {
            let state = Arc::new(EmuState::new(
                base_url(addr),
                key,
                opts.token_lifetime_secs,
                directory,
            ));
            shared = Some(state.clone());
            router(state)
        })
        .await?;
        let state =
            shared.ok_or_else(|| EmulatorError::Invalid("emulator state was not built".into()))?;
        Ok(EmulatorHandle {
            inner: Arc::new(HandleInner { state, server }),
        })
    }
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
        .with_state(state)
}

impl EmulatorHandle {
    fn state(&self) -> &EmuState {
        &self.inner.state
    }

    /// `http://127.0.0.1:PORT`.
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
