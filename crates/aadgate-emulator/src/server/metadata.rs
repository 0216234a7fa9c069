//! The OpenID metadata and JWKS endpoints (v1 and v2, per tenant path), with the outage switch
//! and fetch counters tests use; see the table in [`super`].

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::is_guid;
use crate::mint::{issuer_v1, issuer_v2};
use crate::serve::read;
use crate::state::EmuState;
use crate::token_endpoint::AadstsError;

/// The consumers (personal Microsoft accounts) tenant id, used in the `consumers` issuer.
const CONSUMERS_TENANT: &str = "9188040d-6c67-4c5b-b112-36a304b66dad";

/// How a `{tenant}` path segment resolves for metadata and keys.
enum TenantPath {
    /// `common` / `organizations`: issuers stay templated.
    Multi,
    /// `consumers`.
    Consumers,
    /// A tenant GUID (lower-case): any GUID, or the tenant of a registered name.
    Tenant(String),
}

/// What the metadata and keys endpoints do first: count the request, answer 503 while the
/// keys are switched off, and resolve the tenant segment (AADSTS90002 for an unknown name).
fn admit(
    state: &EmuState,
    counter: &std::sync::atomic::AtomicU64,
    tenant: &str,
    headers: &HeaderMap,
) -> Result<TenantPath, Box<Response>> {
    counter.fetch_add(1, Ordering::SeqCst);
    if !state.keys_available.load(Ordering::SeqCst) {
        return Err(Box::new(unavailable()));
    }
    resolve_tenant(state, tenant).map_err(|e| Box::new(e.into_response_for(headers)))
}

fn resolve_tenant(state: &EmuState, tenant: &str) -> Result<TenantPath, AadstsError> {
    let lower = tenant.to_ascii_lowercase();
    match lower.as_str() {
        "common" | "organizations" => Ok(TenantPath::Multi),
        "consumers" => Ok(TenantPath::Consumers),
        // Entra ID serves metadata and keys for any tenant id; so does the emulator, so that
        // tokens minted offline for any tenant verify.
        _ if is_guid(&lower) => Ok(TenantPath::Tenant(lower)),
        _ => match read(&state.directory).tenant_names.get(&lower) {
            Some(tid) => Ok(TenantPath::Tenant(tid.clone())),
            None => Err(AadstsError::tenant_not_found(tenant)),
        },
    }
}

fn tenant_issuer(path: &TenantPath, v2: bool) -> String {
    let tid = match path {
        TenantPath::Multi => "{tenantid}",
        TenantPath::Consumers => CONSUMERS_TENANT,
        TenantPath::Tenant(t) => t.as_str(),
    };
    if v2 {
        issuer_v2(tid)
    } else {
        issuer_v1(tid)
    }
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [("content-type", "text/plain; charset=utf-8")],
        "Service Unavailable (aadgate emulator: keys made unavailable by the test)",
    )
        .into_response()
}

fn json_ok(doc: Value) -> Response {
    (
        [
            ("cache-control", "max-age=86400, private"),
            ("access-control-allow-origin", "*"),
        ],
        Json(doc),
    )
        .into_response()
}

pub(super) async fn metadata_v2(
    State(state): State<Arc<EmuState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    metadata(&state, &tenant, &headers, true)
}

pub(super) async fn metadata_v1(
    State(state): State<Arc<EmuState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    metadata(&state, &tenant, &headers, false)
}

fn metadata(state: &EmuState, tenant: &str, headers: &HeaderMap, v2: bool) -> Response {
    let path = match admit(state, &state.metadata_fetches, tenant, headers) {
        Ok(path) => path,
        Err(response) => return *response,
    };
    let segment = match &path {
        TenantPath::Tenant(t) => t.clone(),
        _ => tenant.to_ascii_lowercase(),
    };
    let base = format!("{}/{segment}", state.base_url);
    let region: Value = match path {
        TenantPath::Tenant(_) => Value::from("NA"),
        _ => Value::Null,
    };
    let issuer = tenant_issuer(&path, v2);
    let doc = if v2 {
        json!({
            "token_endpoint": format!("{base}/oauth2/v2.0/token"),
            "token_endpoint_auth_methods_supported":
                ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": format!("{base}/discovery/v2.0/keys"),
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": issuer,
            "request_uri_parameter_supported": false,
            "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
            "authorization_endpoint": format!("{base}/oauth2/v2.0/authorize"),
            "device_authorization_endpoint": format!("{base}/oauth2/v2.0/devicecode"),
            "http_logout_supported": true,
            "frontchannel_logout_supported": true,
            "end_session_endpoint": format!("{base}/oauth2/v2.0/logout"),
            "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name",
                "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr",
                "nonce", "preferred_username", "name", "tid", "ver", "at_hash", "c_hash", "email"],
            "kerberos_endpoint": format!("{base}/kerberos"),
            "tenant_region_scope": region,
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
            "rbac_url": "https://pas.windows.net"
        })
    } else {
        json!({
            "token_endpoint": format!("{base}/oauth2/token"),
            "token_endpoint_auth_methods_supported":
                ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": format!("{base}/discovery/keys"),
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "token id_token", "token"],
            "scopes_supported": ["openid"],
            "issuer": issuer,
            "microsoft_multi_refresh_token": true,
            "authorization_endpoint": format!("{base}/oauth2/authorize"),
            "device_authorization_endpoint": format!("{base}/oauth2/devicecode"),
            "http_logout_supported": true,
            "frontchannel_logout_supported": true,
            "end_session_endpoint": format!("{base}/oauth2/logout"),
            "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name",
                "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr",
                "amr", "nonce", "email", "given_name", "family_name", "nickname"],
            "check_session_iframe": format!("{base}/oauth2/checksession"),
            "userinfo_endpoint": format!("{base}/openid/userinfo"),
            "kerberos_endpoint": format!("{base}/kerberos"),
            "tenant_region_scope": region,
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
            "rbac_url": "https://pas.windows.net"
        })
    };
    json_ok(doc)
}

pub(super) async fn jwks_v1(
    State(state): State<Arc<EmuState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    jwks(&state, &tenant, &headers, false)
}

pub(super) async fn jwks_v2(
    State(state): State<Arc<EmuState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    jwks(&state, &tenant, &headers, true)
}

fn jwks(state: &EmuState, tenant: &str, headers: &HeaderMap, v2: bool) -> Response {
    let path = match admit(state, &state.jwks_fetches, tenant, headers) {
        Ok(path) => path,
        Err(response) => return *response,
    };
    let issuer = v2.then(|| tenant_issuer(&path, true));
    let keys: Vec<Value> = read(&state.keys)
        .iter()
        .map(|k| k.jwk(issuer.as_deref()))
        .collect();
    json_ok(json!({ "keys": keys }))
}
