//! Managed identities: the two token endpoints Azure hosts serve to the code they run, with the
//! identities they answer for.
//!
//! - **IMDS** (virtual machines, scale sets, AKS nodes):
//!   `GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=…[&client_id=…|&object_id=…]`
//!   with the header `Metadata: true`
//!   (<https://learn.microsoft.com/entra/identity/managed-identities-azure-resources/how-to-use-vm-token>).
//!   Answers IMDS's JSON, every number a string: `access_token`, `client_id`, `expires_in`,
//!   `expires_on`, `ext_expires_in`, `not_before`, `resource`, `token_type`. Without the header:
//!   400 `{"error": "invalid_request", "error_description": "Required metadata header not specified"}`;
//!   without `resource`: 400 "Required audience parameter not specified"; an unknown
//!   user-assigned identity: 400 "Identity not found".
//! - **App Service / Functions / Container Apps** (`IDENTITY_ENDPOINT`, `IDENTITY_HEADER`):
//!   `GET /msi/token?api-version=2019-08-01&resource=…[&client_id=…|&principal_id=…]` with the
//!   header `X-IDENTITY-HEADER` = [`EmulatorHandle::identity_header`]
//!   (<https://learn.microsoft.com/azure/app-service/overview-managed-identity>). Answers
//!   `access_token`, `expires_on` (a string of Unix seconds), `resource`, `token_type`,
//!   `client_id`.
//!
//! The host has one system-assigned identity ([`EmulatorHandle::system_managed_identity`], used
//! when a request names none) and any number of user-assigned ones
//! ([`EmulatorHandle::add_user_assigned_identity`], named by `client_id`, `object_id` /
//! `principal_id` or `mi_res_id`). Tokens are Entra-shaped, signed with the emulator's active
//! key: `tid` = the identity's tenant, `oid` = `sub` = its principal id, `appid`/`azp` = its
//! client id,
//! `idtyp` = `app`, `xms_mirid` = its resource id, valid 24 hours like Azure's. For
//! `resource=api://AzureADTokenExchange` the token is a v2 token with
//! `iss` = `https://login.microsoftonline.com/{tenant}/v2.0`: the managed identity's assertion,
//! which the token endpoint accepts for an app whose federated credential trusts that issuer
//! with subject = the principal id
//! (<https://learn.microsoft.com/entra/workload-id/workload-identity-federation-config-app-trust-managed-identity>);
//! other resources get v1 tokens (`iss` = `https://sts.windows.net/{tenant}/`), as managed
//! identities' tokens for Azure resources are.
//!
//! Both endpoints count their requests and keep them with their headers
//! ([`EmulatorHandle::managed_identity_requests`]) so tests can assert what a client sent.
//! Control endpoints: `PUT /_emulator/managed-identities/{client_id}` registers a user-assigned
//! identity (`200` with it), `GET /_emulator/managed-identities` lists them all.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, Version};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::EmulatorHandle;
use crate::mint::{issuer_v1, TokenSpec};
use crate::serve::{lock, read, write, RecordedRequest};
use crate::state::{EmuState, FederatedCredential, ManagedIdentity};
use crate::{derived_guid, mint::issuer_v2, unix_now, DEFAULT_TENANT, TOKEN_EXCHANGE_AUDIENCE};

/// Lifetime of managed identities' tokens, seconds (about 24 hours, as Azure's).
pub const MANAGED_IDENTITY_TOKEN_LIFETIME_SECS: i64 = 86_399;

/// Path of the IMDS token endpoint.
pub(super) const IMDS_TOKEN_PATH: &str = "/metadata/identity/oauth2/token";

/// Path of the App Service style token endpoint (`IDENTITY_ENDPOINT`).
pub(super) const IDENTITY_ENDPOINT_PATH: &str = "/msi/token";

impl FederatedCredential {
    /// The credential an app needs to accept `identity`'s tokens as its assertion (a managed
    /// identity as a federated identity credential): issuer
    /// `https://login.microsoftonline.com/{tenant}/v2.0`, subject = its principal id, audience
    /// `api://AzureADTokenExchange`.
    pub fn for_managed_identity(identity: &ManagedIdentity) -> Self {
        FederatedCredential::new(&issuer_v2(&identity.tenant), &identity.principal_id)
    }
}

impl EmulatorHandle {
    /// The host's system-assigned managed identity (the same ids on every run).
    pub fn system_managed_identity(&self) -> ManagedIdentity {
        self.state().system_identity.clone()
    }

    /// Registers a user-assigned managed identity with this client id, in the default tenant,
    /// its principal id derived from the client id (stable across runs); returns it (the same
    /// one when it is registered already).
    pub fn add_user_assigned_identity(&self, client_id: &str) -> ManagedIdentity {
        add_user_assigned(self.state(), client_id)
    }

    /// Every managed identity: the system-assigned one first, then the user-assigned ones by
    /// client id.
    pub fn managed_identities(&self) -> Vec<ManagedIdentity> {
        all_identities(self.state())
    }

    /// `{base}/metadata/identity/oauth2/token`: the IMDS token endpoint (a client's IMDS base URL
    /// is [`EmulatorHandle::base_url`]).
    pub fn imds_token_endpoint(&self) -> String {
        format!("{}{IMDS_TOKEN_PATH}", self.state().base_url)
    }

    /// `{base}/msi/token`: the value for `IDENTITY_ENDPOINT` (App Service style).
    pub fn identity_endpoint(&self) -> String {
        format!("{}{IDENTITY_ENDPOINT_PATH}", self.state().base_url)
    }

    /// The value for `IDENTITY_HEADER`: what the App Service style endpoint wants in
    /// `X-IDENTITY-HEADER` (random per emulator).
    pub fn identity_header(&self) -> String {
        self.state().identity_header.clone()
    }

    /// Requests received by the IMDS token endpoint (any answer).
    pub fn imds_request_count(&self) -> u64 {
        self.state().imds_requests.load(Ordering::SeqCst)
    }

    /// Requests received by the App Service style endpoint (any answer).
    pub fn identity_endpoint_request_count(&self) -> u64 {
        self.state()
            .identity_endpoint_requests
            .load(Ordering::SeqCst)
    }

    /// Every request to either managed-identity endpoint so far, oldest first, with its headers.
    pub fn managed_identity_requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state().managed_identity_log).clone()
    }
}

fn add_user_assigned(state: &EmuState, client_id: &str) -> ManagedIdentity {
    let key = client_id.trim().to_ascii_lowercase();
    write(&state.directory)
        .user_assigned
        .entry(key.clone())
        .or_insert_with(|| ManagedIdentity {
            client_id: key.clone(),
            principal_id: derived_guid(&["user-assigned identity", &key]),
            tenant: DEFAULT_TENANT.to_string(),
            system_assigned: false,
        })
        .clone()
}

fn all_identities(state: &EmuState) -> Vec<ManagedIdentity> {
    let mut out = vec![state.system_identity.clone()];
    let dir = read(&state.directory);
    let mut users: Vec<&ManagedIdentity> = dir.user_assigned.values().collect();
    users.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    out.extend(users.into_iter().cloned());
    out
}

/// Which of the two endpoint shapes a request came to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Imds,
    AppService,
}

/// `GET /metadata/identity/oauth2/token` (IMDS).
pub(super) async fn imds_token(
    State(state): State<Arc<EmuState>>,
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    record(
        &state,
        &state.imds_requests,
        &method,
        &uri,
        version,
        &headers,
    );
    let metadata = headers
        .get("metadata")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if !metadata {
        return imds_error("invalid_request", "Required metadata header not specified");
    }
    if query.get("api-version").is_none_or(|v| v.is_empty()) {
        return imds_error(
            "invalid_request",
            "Required query variable 'api-version' is missing",
        );
    }
    answer(&state, &query, Shape::Imds)
}

/// `GET /msi/token` (App Service style, `IDENTITY_ENDPOINT`).
pub(super) async fn identity_endpoint_token(
    State(state): State<Arc<EmuState>>,
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    record(
        &state,
        &state.identity_endpoint_requests,
        &method,
        &uri,
        version,
        &headers,
    );
    let secret_ok = headers
        .get("x-identity-header")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == state.identity_header);
    if !secret_ok {
        return imds_error(
            "invalid_request",
            "The X-IDENTITY-HEADER header is missing or does not match IDENTITY_HEADER",
        );
    }
    if query.get("api-version").is_none_or(|v| v.is_empty()) {
        return imds_error(
            "invalid_request",
            "Required query variable 'api-version' is missing",
        );
    }
    answer(&state, &query, Shape::AppService)
}

fn record(
    state: &EmuState,
    counter: &AtomicU64,
    method: &Method,
    uri: &Uri,
    version: Version,
    headers: &HeaderMap,
) {
    counter.fetch_add(1, Ordering::SeqCst);
    lock(&state.managed_identity_log)
        .push(RecordedRequest::from_parts(method, uri, version, headers));
}

fn imds_error(error: &str, description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": error, "error_description": description })),
    )
        .into_response()
}

/// The identity a request names (`client_id`, `object_id` / `principal_id`, `mi_res_id` /
/// `msi_res_id`), else the system one; `None` for a name no identity has.
fn identity_for(state: &EmuState, query: &HashMap<String, String>) -> Option<ManagedIdentity> {
    let by = |name: &str| query.get(name).map(|v| v.trim().to_ascii_lowercase());
    if let Some(client_id) = by("client_id") {
        return all_identities(state)
            .into_iter()
            .find(|mi| mi.client_id == client_id);
    }
    if let Some(object_id) = by("object_id").or_else(|| by("principal_id")) {
        return all_identities(state)
            .into_iter()
            .find(|mi| mi.principal_id == object_id);
    }
    if let Some(resource_id) = by("mi_res_id").or_else(|| by("msi_res_id")) {
        return all_identities(state)
            .into_iter()
            .find(|mi| resource_id_of(mi).to_ascii_lowercase() == resource_id);
    }
    Some(state.system_identity.clone())
}

fn answer(state: &EmuState, query: &HashMap<String, String>, shape: Shape) -> Response {
    let Some(resource) = query
        .get("resource")
        .map(|r| r.trim())
        .filter(|r| !r.is_empty())
    else {
        return imds_error(
            "invalid_request",
            "Required audience parameter not specified",
        );
    };
    let Some(identity) = identity_for(state, query) else {
        return imds_error("invalid_request", "Identity not found");
    };
    let now = unix_now();
    let lifetime = MANAGED_IDENTITY_TOKEN_LIFETIME_SECS;
    let token = match mint(state, &identity, resource, now, lifetime) {
        Ok(token) => token,
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({ "error": "unknown", "error_description": e })),
            )
                .into_response()
        }
    };
    let expires_on = now.saturating_add(lifetime).to_string();
    let body = match shape {
        Shape::Imds => json!({
            "access_token": token,
            "client_id": identity.client_id,
            "expires_in": lifetime.to_string(),
            "expires_on": expires_on,
            "ext_expires_in": lifetime.to_string(),
            "not_before": now.to_string(),
            "resource": resource,
            "token_type": "Bearer",
        }),
        Shape::AppService => json!({
            "access_token": token,
            "expires_on": expires_on,
            "resource": resource,
            "token_type": "Bearer",
            "client_id": identity.client_id,
        }),
    };
    Json(body).into_response()
}

/// The Azure resource id of an identity (`xms_mirid`; `mi_res_id` names a user-assigned one
/// by it): the emulator's virtual machine for the system-assigned identity,
/// `…/userAssignedIdentities/{client_id}` for a user-assigned one.
fn resource_id_of(identity: &ManagedIdentity) -> String {
    const GROUP: &str =
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/aadgate-dev/providers";
    if identity.system_assigned {
        format!("{GROUP}/Microsoft.Compute/virtualMachines/aadgate-dev-vm")
    } else {
        format!(
            "{GROUP}/Microsoft.ManagedIdentity/userAssignedIdentities/{}",
            identity.client_id
        )
    }
}

/// The identity's token for `resource`: v2 for the token exchange audience (its federated
/// assertion), v1 otherwise.
fn mint(
    state: &EmuState,
    identity: &ManagedIdentity,
    resource: &str,
    now: i64,
    lifetime: i64,
) -> Result<String, String> {
    let aud = resource.trim_end_matches("/.default");
    let exchange = aud.trim_end_matches('/') == TOKEN_EXCHANGE_AUDIENCE;
    let mirid = resource_id_of(identity);
    let spec = TokenSpec {
        tid: identity.tenant.clone(),
        aud: aud.to_string(),
        ver: if exchange { 2 } else { 1 },
        roles: None,
        scp: None,
        appid: Some(identity.client_id.clone()),
        app_auth_strength: Some("2".to_string()),
        oid: Some(identity.principal_id.clone()),
        sub: Some(identity.principal_id.clone()),
        upn: None,
        idtyp: Some("app".to_string()),
        lifetime_secs: lifetime,
        not_before_offset_secs: None,
        now: Some(now),
        extra_claims: Map::from_iter([
            ("xms_mirid".to_string(), Value::from(mirid)),
            ("idp".to_string(), Value::from(issuer_v1(&identity.tenant))),
        ]),
        extra_header: Map::new(),
    };
    let key = state
        .active_key()
        .ok_or_else(|| "no signing key".to_string())?;
    key.try_mint(&spec).map_err(|e| e.to_string())
}

/// `PUT /_emulator/managed-identities/{client_id}`: registers a user-assigned identity.
pub(super) async fn put_identity(
    State(state): State<Arc<EmuState>>,
    Path(client_id): Path<String>,
) -> Response {
    Json(identity_json(&add_user_assigned(&state, &client_id))).into_response()
}

/// `GET /_emulator/managed-identities`.
pub(super) async fn list_identities(State(state): State<Arc<EmuState>>) -> Response {
    Json(json!({
        "value": all_identities(&state).iter().map(identity_json).collect::<Vec<_>>()
    }))
    .into_response()
}

fn identity_json(identity: &ManagedIdentity) -> Value {
    json!({
        "client_id": identity.client_id,
        "principal_id": identity.principal_id,
        "tenant": identity.tenant,
        "system_assigned": identity.system_assigned,
    })
}
