//! The client credentials grant around the credential check: the path tenant, the requested
//! resource (`scope` or `resource`), the app and its service principal in the tenant, the client
//! secret, and the token issued for them.

use std::sync::atomic::Ordering;

use axum::http::StatusCode;
use serde_json::{json, Map, Value};

use super::errors::AadstsError;
use super::TokenForm;
use crate::mint::{issuer_v1, TokenSpec};
use crate::serve::read;
use crate::state::{EmuState, RegisteredApp, TokenEndpointVersion};
use crate::{
    derived_guid, unix_now, DEFAULT_AUDIENCE, GRAPH_APP_ID, GRAPH_RESOURCE, OUTLOOK_RESOURCE,
};

/// Microsoft first-party resources the emulator knows (token version 1, like AAD).
const FIRST_PARTY_RESOURCES: &[&str] = &[
    OUTLOOK_RESOURCE,
    "https://outlook.office.com",
    "00000002-0000-0ff1-ce00-000000000000",
    GRAPH_RESOURCE,
    GRAPH_APP_ID,
    "https://management.azure.com",
    "https://management.core.windows.net",
];

/// What the request asks a token for.
pub(super) struct Target {
    /// The resource id as requested (scope without `/.default`, or `resource`).
    pub(super) resource: String,
}

/// Resolves the path tenant for the client credentials grant; returns it lower-case.
pub(super) fn check_tenant(state: &EmuState, tenant: &str) -> Result<String, AadstsError> {
    let lower = tenant.to_ascii_lowercase();
    match lower.as_str() {
        "common" | "consumers" => Err(AadstsError::bad_request(
            "invalid_request",
            9_001_023,
            "The grant type is not supported over the /common or /consumers endpoints. Please \
             use the /organizations or tenant-specific endpoint.",
        )),
        "organizations" => Err(AadstsError::bad_request(
            "invalid_request",
            50_059,
            "No tenant-identifying information found in either the request or implied by any \
             provided credentials.",
        )),
        // Every tenant GUID exists, as in Entra ID, where the question is not whether the
        // tenant exists but whether the app has a service principal there (AADSTS700016
        // below); a registered name stands for its tenant, as a verified domain does.
        _ => read(&state.directory)
            .resolve_tenant(&lower)
            .ok_or_else(|| AadstsError::tenant_not_found(tenant)),
    }
}

/// Reads `scope` (v2) or `resource` (v1) into the requested resource.
pub(super) fn check_target(
    form: &TokenForm,
    version: TokenEndpointVersion,
) -> Result<Target, AadstsError> {
    match version {
        TokenEndpointVersion::V1 => {
            let resource = form
                .get("resource")
                .ok_or_else(|| AadstsError::missing("resource"))?;
            Ok(Target {
                resource: resource.to_string(),
            })
        }
        TokenEndpointVersion::V2 => {
            if form.get("resource").is_some() {
                return Err(AadstsError::bad_request(
                    "invalid_request",
                    901_002,
                    "The 'resource' request parameter is not supported.",
                ));
            }
            let scope = form
                .get("scope")
                .ok_or_else(|| AadstsError::missing("scope"))?;
            let scopes: Vec<&str> = scope.split_whitespace().collect();
            if scopes.is_empty() {
                return Err(AadstsError::missing("scope"));
            }
            if scopes.iter().any(|s| !s.ends_with("/.default")) {
                return Err(AadstsError::bad_request(
                    "invalid_scope",
                    1_002_012,
                    format!(
                        "The provided value for scope {scope} is not valid. Client credential \
                         flows must have a scope value with /.default suffixed to the resource \
                         identifier (application ID URI)."
                    ),
                ));
            }
            if scopes.len() > 1 {
                return Err(AadstsError::bad_request(
                    "invalid_scope",
                    70_011,
                    format!(
                        "The provided value for the input parameter 'scope' is not valid. The \
                         scope {scope} is not valid."
                    ),
                ));
            }
            let resource = scopes[0].trim_end_matches("/.default");
            Ok(Target {
                resource: resource.to_string(),
            })
        }
    }
}

/// What the `claims` request parameter asks of the token.
#[derive(Debug, Default)]
pub(super) struct ClaimsRequest {
    /// The client declared capability `cp1` (it handles claims challenges): the token is a
    /// CAE token.
    pub(super) cp1: bool,
    /// `access_token.nbf.value` (a claims challenge after a revocation event): the token's
    /// `nbf` is at least this Unix second, as Entra ID issues a token that satisfies the
    /// challenge.
    pub(super) not_before: Option<i64>,
}

/// Lifetime of CAE tokens (`xms_cc` = `cp1`), seconds: 24 hours (Entra ID's live up to 28).
pub(crate) const CAE_TOKEN_LIFETIME_SECS: i64 = 86_399;

/// Reads the optional `claims` parameter: a JSON object; `access_token.xms_cc.values`
/// containing `cp1` makes the token a CAE token. Other members are accepted as they are.
pub(super) fn check_claims(form: &TokenForm) -> Result<ClaimsRequest, AadstsError> {
    let Some(raw) = form.get("claims") else {
        return Ok(ClaimsRequest::default());
    };
    let invalid = || {
        AadstsError::bad_request(
            "invalid_request",
            90_100,
            "claims parameter is empty or not valid. It must be a JSON object (OpenID Connect \
             Core 1.0, section 5.5).",
        )
    };
    let Ok(Value::Object(claims)) = serde_json::from_str::<Value>(raw) else {
        return Err(invalid());
    };
    let cp1 = claims
        .get("access_token")
        .and_then(|at| at.get("xms_cc"))
        .and_then(|cc| cc.get("values"))
        .and_then(Value::as_array)
        .is_some_and(|values| values.iter().any(|v| v.as_str() == Some("cp1")));
    let not_before = claims
        .get("access_token")
        .and_then(|at| at.get("nbf"))
        .and_then(|nbf| nbf.get("value"))
        .and_then(|v| match v {
            Value::String(s) => s.trim().parse::<i64>().ok(),
            Value::Number(n) => n.as_i64(),
            _ => None,
        });
    Ok(ClaimsRequest { cp1, not_before })
}

/// The app registered as `client_id` and the roles of its service principal in `tenant_id`.
pub(super) fn find_app(
    state: &EmuState,
    tenant_id: &str,
    client_id: &str,
) -> Result<(RegisteredApp, Vec<String>), AadstsError> {
    let dir = read(&state.directory);
    let not_found = || AadstsError::app_not_found(client_id, tenant_id);
    let app = dir
        .apps
        .get(&client_id.to_ascii_lowercase())
        .cloned()
        .ok_or_else(not_found)?;
    // No service principal = nobody in this tenant consented. For the client credentials
    // grant AAD then answers AADSTS700016 ("... has not been installed by the administrator
    // of the tenant or consented to by any user in the tenant"), not 65001 (a delegated,
    // interactive consent prompt) nor 7000112 (a service principal that exists but is
    // disabled, reported below), so the emulator does the same.
    let sp = dir
        .principals
        .get(&(tenant_id.to_string(), client_id.to_ascii_lowercase()))
        .cloned()
        .ok_or_else(not_found)?;
    if sp.disabled {
        return Err(AadstsError::bad_request(
            "unauthorized_client",
            7_000_112,
            format!(
                "Application '{}'({}) is disabled.",
                app.client_id, app.display_name
            ),
        ));
    }
    Ok((app, sp.roles))
}

/// `secret` is one of the app's client secrets.
pub(super) fn check_secret(app: &RegisteredApp, secret: &str) -> Result<(), AadstsError> {
    if !app.secrets.iter().any(|s| s == secret) {
        return Err(AadstsError::invalid_client(
            7_000_215,
            format!(
                "Invalid client secret provided. Ensure the secret being sent in the request \
                 is the client secret value, not the client secret ID, for a secret added to \
                 app '{}'.",
                app.client_id
            ),
        ));
    }
    Ok(())
}

/// The requested resource has a service principal the emulator knows of.
pub(super) fn check_resource(
    state: &EmuState,
    resource: &str,
    tenant_id: &str,
) -> Result<(), AadstsError> {
    if !resource_known(state, resource) {
        return Err(AadstsError::bad_request(
            "invalid_resource",
            500_011,
            format!(
                "The resource principal named {resource} was not found in the tenant named \
                 {tenant_id}. This can happen if the application has not been installed by the \
                 administrator of the tenant or consented to by any user in the tenant. You \
                 might have sent your authentication request to the wrong tenant."
            ),
        ));
    }
    Ok(())
}

fn is_first_party(resource: &str) -> bool {
    let trimmed = resource.trim_end_matches('/');
    FIRST_PARTY_RESOURCES
        .iter()
        .any(|r| r.eq_ignore_ascii_case(trimmed))
}

fn resource_known(state: &EmuState, resource: &str) -> bool {
    let trimmed = resource.trim_end_matches('/');
    if is_first_party(resource) || trimmed.eq_ignore_ascii_case(DEFAULT_AUDIENCE) {
        return true;
    }
    let dir = read(&state.directory);
    dir.apps.values().any(|app| {
        trimmed.eq_ignore_ascii_case(&app.client_id)
            || trimmed.eq_ignore_ascii_case(&format!("api://{}", app.client_id))
    }) || trimmed.starts_with("api://")
}

/// Mints the app-only token and answers the v1 or v2 success body; with `cp1` in `claims` the
/// token carries `xms_cc` and lives [`CAE_TOKEN_LIFETIME_SECS`].
#[allow(clippy::too_many_arguments)]
pub(super) fn issue(
    state: &EmuState,
    tenant_id: &str,
    app: &RegisteredApp,
    roles: Vec<String>,
    strength: &str,
    target: &Target,
    claims: &ClaimsRequest,
    version: TokenEndpointVersion,
) -> Result<Value, AadstsError> {
    let v1_token = version == TokenEndpointVersion::V1 || is_first_party(&target.resource);
    let aud = if target
        .resource
        .trim_end_matches('/')
        .eq_ignore_ascii_case(GRAPH_APP_ID)
    {
        GRAPH_RESOURCE.to_string()
    } else {
        target.resource.clone()
    };
    let lifetime = if claims.cp1 {
        CAE_TOKEN_LIFETIME_SECS
    } else {
        state.token_lifetime.load(Ordering::SeqCst)
    };
    let sp_oid = derived_guid(&[
        "service-principal",
        tenant_id,
        &app.client_id.to_ascii_lowercase(),
    ]);
    let now = unix_now();
    let spec = TokenSpec {
        tid: tenant_id.to_string(),
        aud: aud.clone(),
        ver: if v1_token { 1 } else { 2 },
        roles: (!roles.is_empty()).then_some(roles),
        scp: None,
        appid: Some(app.client_id.to_ascii_lowercase()),
        app_auth_strength: Some(strength.to_string()),
        oid: Some(sp_oid.clone()),
        sub: Some(sp_oid),
        upn: None,
        idtyp: Some("app".to_string()),
        lifetime_secs: lifetime,
        // A challenge's `nbf` in the same second as "now" is met by starting the token there.
        not_before_offset_secs: claims.not_before.map(|nbf| (nbf - now).clamp(0, 300)),
        now: Some(now),
        extra_claims: Map::from_iter([
            (
                "app_displayname".to_string(),
                Value::from(app.display_name.clone()),
            ),
            ("idp".to_string(), Value::from(issuer_v1(tenant_id))),
        ]),
        extra_header: Map::new(),
    };
    let mut spec = spec;
    if claims.cp1 {
        spec.extra_claims
            .insert("xms_cc".to_string(), Value::from(vec!["cp1"]));
    }
    let key = state.active_key().ok_or_else(|| {
        AadstsError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            50_000,
            "There was an error issuing a token: no signing key.".into(),
        )
    })?;
    let token = key.try_mint(&spec).map_err(|e| {
        AadstsError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            50_000,
            format!("There was an error issuing a token: {e}."),
        )
    })?;
    Ok(match version {
        TokenEndpointVersion::V2 => json!({
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": token,
        }),
        TokenEndpointVersion::V1 => json!({
            "token_type": "Bearer",
            "expires_in": lifetime.to_string(),
            "ext_expires_in": lifetime.to_string(),
            "expires_on": now.saturating_add(lifetime).to_string(),
            "not_before": now.to_string(),
            "resource": target.resource,
            "access_token": token,
        }),
    })
}
