//! The control endpoints under `/_emulator/`: what the handle's directory methods and counters
//! do, over HTTP, for users' CI and for tests that run `aadgate dev-idp` as a separate process
//! (SPEC section 7 "Control endpoints"); see the table in [`super`].
//!
//! Bodies are optional JSON (no `content-type` needed); a body that is not the JSON object the
//! endpoint expects, or a tenant that is neither a GUID nor a registered name, gets an AAD-shaped
//! 400 (`invalid_request` 90023 / `invalid_tenant` 90002).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use crate::is_guid;
use crate::serve::{read, write};
use crate::state::EmuState;
use crate::token_endpoint::AadstsError;

/// The JSON object of a request body; an empty body is an empty object.
fn body_object(body: &[u8]) -> Result<Map<String, Value>, AadstsError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(bad_body("the body must be a JSON object")),
    }
}

fn bad_body(what: &str) -> AadstsError {
    AadstsError::bad_request(
        "invalid_request",
        90_023,
        format!("The authentication service request is not valid: {what}."),
    )
}

/// The tenant GUID a path segment names (a GUID or a registered name).
fn tenant_of(state: &EmuState, tenant: &str) -> Result<String, AadstsError> {
    read(&state.directory)
        .resolve_tenant(tenant)
        .ok_or_else(|| AadstsError::tenant_not_found(tenant))
}

/// `POST /_emulator/tenants/{tid}` with an optional `{"name": "contoso.onmicrosoft.com"}`:
/// makes the tenant seen (and registers the name). `204`.
pub(super) async fn add_tenant(
    State(state): State<Arc<EmuState>>,
    Path(tid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = (|| {
        if !is_guid(tid.trim()) {
            return Err(AadstsError::tenant_not_found(&tid));
        }
        let body = body_object(&body)?;
        let name = match body.get("name") {
            None | Some(Value::Null) => None,
            Some(Value::String(name)) if !name.trim().is_empty() && !is_guid(name.trim()) => {
                Some(name.trim().to_string())
            }
            Some(_) => return Err(bad_body("\"name\" must be a tenant domain name")),
        };
        let mut dir = write(&state.directory);
        dir.add_tenant(tid.trim());
        if let Some(name) = name {
            dir.add_tenant_name(&name, tid.trim());
        }
        Ok(())
    })();
    no_content(result, &headers)
}

/// `PUT /_emulator/tenants/{tid}/apps/{client_id}` with an optional `{"roles": [..]}`: admin
/// consent without the page, as [`super::EmulatorHandle::consent`]. `204`.
pub(super) async fn put_app(
    State(state): State<Arc<EmuState>>,
    Path((tenant, client_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = (|| {
        let tid = tenant_of(&state, &tenant)?;
        let body = body_object(&body)?;
        let roles = match body.get("roles") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| item.as_str().map(str::to_string))
                .collect::<Option<Vec<String>>>()
                .ok_or_else(|| bad_body("\"roles\" must be an array of strings"))?,
            Some(_) => return Err(bad_body("\"roles\" must be an array of strings")),
        };
        write(&state.directory).set_consent(&tid, &client_id, roles);
        Ok(())
    })();
    no_content(result, &headers)
}

/// `DELETE /_emulator/tenants/{tid}/apps/{client_id}`: removes the app's service principal
/// (consent revoked). `204`, or `404` when there was none.
pub(super) async fn delete_app(
    State(state): State<Arc<EmuState>>,
    Path((tenant, client_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    match tenant_of(&state, &tenant) {
        Ok(tid) if write(&state.directory).revoke(&tid, &client_id) => {
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(tid) => not_found(&tid, &client_id),
        Err(error) => error.into_response_for(&headers),
    }
}

/// `GET /_emulator/tenants/{tid}/apps/{client_id}`: the service principal as
/// `{"tenant", "client_id", "roles", "disabled"}`, or `404`.
pub(super) async fn get_app(
    State(state): State<Arc<EmuState>>,
    Path((tenant, client_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let tid = match tenant_of(&state, &tenant) {
        Ok(tid) => tid,
        Err(error) => return error.into_response_for(&headers),
    };
    let dir = read(&state.directory);
    match dir.principal(&tid, &client_id) {
        Some(sp) => Json(json!({
            "tenant": tid,
            "client_id": client_id.to_ascii_lowercase(),
            "roles": sp.roles,
            "disabled": sp.disabled,
        }))
        .into_response(),
        None => not_found(&tid, &client_id),
    }
}

/// `GET /_emulator/counts`: requests per endpoint since start or the last reset.
pub(super) async fn counts(State(state): State<Arc<EmuState>>) -> Response {
    Json(json!({
        "metadata": state.metadata_fetches.load(Ordering::SeqCst),
        "jwks": state.jwks_fetches.load(Ordering::SeqCst),
        "token": state.token_requests.load(Ordering::SeqCst),
        "adminconsent": state.consent_requests.load(Ordering::SeqCst),
        "imds": state.imds_requests.load(Ordering::SeqCst),
        "identity_endpoint": state.identity_endpoint_requests.load(Ordering::SeqCst),
        "service_account": state.service_account_fetches.load(Ordering::SeqCst),
        "federation": state.federation_fetches.load(Ordering::SeqCst),
    }))
    .into_response()
}

fn no_content(result: Result<(), AadstsError>, headers: &HeaderMap) -> Response {
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => error.into_response_for(headers),
    }
}

fn not_found(tid: &str, client_id: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({
            "error": "not_found",
            "error_description": format!(
                "The app '{client_id}' has no service principal in the tenant '{tid}'."
            ),
        })),
    )
        .into_response()
}
