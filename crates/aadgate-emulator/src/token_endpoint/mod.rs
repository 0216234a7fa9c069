//! The emulator's token endpoints: `POST /{tenant}/oauth2/v2.0/token` and
//! `POST /{tenant}/oauth2/token`, client credentials grant only.
//!
//! Checks run in the order AAD runs them and fail with AAD's codes, HTTP statuses and JSON shape
//! (`error`, `error_description` = `AADSTS…: message\r\nTrace ID: …\r\nCorrelation ID: …\r\nTimestamp: …`,
//! `error_codes`, `timestamp`, `trace_id`, `correlation_id`, `error_uri`). `correlation_id` is
//! the request's `client-request-id` when that is a GUID, as on AAD.
//!
//! | check | failure |
//! |---|---|
//! | forced failure ([`super::EmulatorHandle::set_token_endpoint_failure`]) | that status, AAD body |
//! | `grant_type` present / `client_credentials` | 400 `invalid_request` 900144 / 400 `unsupported_grant_type` 70003 |
//! | tenant not `common`/`consumers` | 400 `invalid_request` 9001023 ("grant type is not supported over the /common or /consumers endpoints") |
//! | tenant not `organizations` | 400 `invalid_request` 50059 ("No tenant-identifying information found") |
//! | tenant is a GUID (any: every tenant GUID exists) or a registered name | 400 `invalid_tenant` 90002 |
//! | `client_id`, `scope` (v2) / `resource` (v1) present; no `resource` on v2 | 400 `invalid_request` 900144 / 901002 |
//! | scope is one `…/.default` | 400 `invalid_scope` 1002012 / 70011 |
//! | app registered and has a service principal in the tenant (a GUID nobody consented in included) | 400 `unauthorized_client` 700016 |
//! | service principal enabled | 400 `unauthorized_client` 7000112 |
//! | a credential is present | 401 `invalid_client` 7000218 |
//! | assertion: `client_assertion_type` | 400 `invalid_request` 900144 / 90100 |
//! | assertion: parses as a JWS | 401 `invalid_client` 50027 |
//! | assertion: `typ` is `JWT` when present | 401 `invalid_client` 5002727 |
//! | assertion: `x5t` or `x5t#S256` present | 401 `invalid_client` 50027 ("No certificate thumbprint specified in token header") |
//! | assertion: `alg` is RS256/RS384/RS512/PS256 | 401 `invalid_client` 5002738 |
//! | assertion: a certificate with that thumbprint is registered | 401 `invalid_client` 700027 ("The key was not found") |
//! | assertion: certificate not revoked / within validity | 401 `invalid_client` 7000214 / 1000502 |
//! | assertion: signature | 401 `invalid_client` 700027 ("Key was found, but use of the key to verify the signature failed") |
//! | assertion: `aud` = this tenant's token endpoint | 401 `invalid_client` 700023 |
//! | assertion: `iss` = `sub` | 401 `invalid_client` 50048 |
//! | assertion: `iss` = `client_id` | 401 `invalid_client` 700021 |
//! | assertion: `exp` not past, ≤ 1 day ahead; `nbf` not future (5 min skew) | 401 `invalid_client` 700024 |
//! | assertion: `jti` not used before | 401 `invalid_client` 50013 (emulator's choice, see below) |
//! | secret matches | 401 `invalid_client` 7000215 |
//! | `claims`, when sent, is a JSON object | 400 `invalid_request` 90100 |
//! | resource known (Microsoft first-party, `api://…`, a registered app's id) | 400 `invalid_resource` 500011 |
//!
//! A `client_assertion` whose `iss` is not the client id and that names no certificate (or
//! whose `iss` is a URL) is an external token presented through a federated identity
//! credential instead: see [`federated`] for those checks (AADSTS70021, 700211, 700212, 700213,
//! 700024). The certificate an assertion names may be given as `x5t` or `x5t#S256`, base64url
//! with or without `=` padding, or as an `x5c` chain whose leaf is a registered certificate or
//! one the app trusts by subject name and issuer ([`sni`]: AADSTS700030, 50017).
//!
//! `claims` (the OAuth claims request parameter, OpenID Connect Core §5.5) is read as Entra ID
//! reads it for client capabilities
//! (<https://learn.microsoft.com/entra/identity-platform/claims-challenge>): with
//! `{"access_token":{"xms_cc":{"values":["cp1"]}}}` the client declares it handles claims
//! challenges, and the token it gets is a continuous access evaluation (CAE) token: it carries
//! `xms_cc: ["cp1"]` and lives 24 hours (Entra ID's CAE tokens live up to 28 hours,
//! <https://learn.microsoft.com/entra/identity/conditional-access/concept-continuous-access-evaluation>).
//! Other members (such as a claims challenge's `{"nbf":{"essential":true,"value":"…"}}`) are
//! accepted; a fresh token's `iat`/`nbf` are now, which satisfies them. No Microsoft page
//! documents the code for a `claims` value that is not JSON; the emulator answers Entra ID's
//! generic "parameter is empty or not valid" (AADSTS90100).
//!
//! The assertion `aud` may be AAD's own URL (`https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token`,
//! or the v1 `…/oauth2/token`) or the emulator's URL for the same path (by its base URL or the
//! request's `Host`), so a gateway computing `token_endpoint` from its config passes.
//!
//! Issued tokens are app-only: `tid` = path tenant, `roles` = the consented roles (absent when
//! none, as AAD does), `idtyp = "app"`, `oid` = `sub` = a GUID stable per (tenant, app), and
//! strength `"2"` with an assertion, `"1"` with a secret. The v1 endpoint issues v1 tokens; the
//! v2 endpoint issues v1 tokens for Microsoft first-party resources (Outlook/Exchange, Graph,
//! Azure management) — the resource decides the version, which is why real Outlook tokens are v1
//! even from the v2 endpoint — and v2 tokens otherwise. v1 answers carry `expires_in`,
//! `ext_expires_in`, `expires_on`, `not_before` as strings plus `resource`, as AAD's v1 endpoint
//! does; v2 answers carry numbers.

mod assertion;
mod errors;
mod federated;
mod grant;
mod sni;
#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod tests_federated;
#[cfg(test)]
mod tests_forms;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

pub(crate) use errors::AadstsError;
use errors::RequestIds;

use crate::serve::lock;
use crate::state::{
    EmuState, RegisteredApp, TokenEndpointVersion, TokenOutcome, TokenRequestRecord,
};

/// `client_assertion_type` of a JWT client assertion (RFC 7523).
pub const JWT_BEARER_ASSERTION_TYPE: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The form fields of a token request (first value of each name wins).
struct TokenForm {
    fields: Vec<(String, String)>,
}

impl TokenForm {
    fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }
}

/// `POST /{tenant}/oauth2/v2.0/token`.
pub(crate) async fn token_v2(
    State(state): State<Arc<EmuState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    handle(&state, &tenant, &headers, form, TokenEndpointVersion::V2).await
}

/// `POST /{tenant}/oauth2/token`.
pub(crate) async fn token_v1(
    State(state): State<Arc<EmuState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    handle(&state, &tenant, &headers, form, TokenEndpointVersion::V1).await
}

/// Any other method on a token endpoint: AADSTS900561, like AAD.
pub(crate) async fn not_post(method: Method, headers: HeaderMap) -> Response {
    AadstsError::bad_request(
        "invalid_request",
        900_561,
        format!("The endpoint only accepts POST, OPTIONS requests. Received a {method} request."),
    )
    .into_response_for(&headers)
}

async fn handle(
    state: &EmuState,
    tenant: &str,
    headers: &HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
    version: TokenEndpointVersion,
) -> Response {
    state.token_requests.fetch_add(1, Ordering::SeqCst);
    // A body that is not a form is treated like an empty form: AAD then reports the first
    // missing parameter.
    let form = TokenForm {
        fields: form.map(|Form(f)| f).unwrap_or_default(),
    };
    let mut record = TokenRequestRecord {
        tenant: tenant.to_string(),
        endpoint: version,
        grant_type: form.get("grant_type").map(str::to_string),
        client_id: form.get("client_id").map(str::to_string),
        scope: form.get("scope").map(str::to_string),
        resource: form.get("resource").map(str::to_string),
        used_client_secret: form.get("client_secret").is_some(),
        claims: form.get("claims").map(str::to_string),
        federated: false,
        assertion_thumbprint: None,
        outcome: TokenOutcome::Issued,
    };
    let result = process(state, tenant, headers, &form, version, &mut record).await;
    let response = match result {
        Ok(body) => {
            let mut response = (StatusCode::OK, Json(body)).into_response();
            RequestIds::from_headers(headers).apply(response.headers_mut());
            response
        }
        Err(error) => {
            record.outcome = TokenOutcome::Failed {
                status: error.status.as_u16(),
                error: error.error.to_string(),
                aadsts: error.code,
            };
            error.into_response_for(headers)
        }
    };
    lock(&state.token_log).push(record);
    response
}

/// The checks of the table above, in order; the success body or the first failure.
async fn process(
    state: &EmuState,
    tenant: &str,
    headers: &HeaderMap,
    form: &TokenForm,
    version: TokenEndpointVersion,
    record: &mut TokenRequestRecord,
) -> Result<Value, AadstsError> {
    let forced = *lock(&state.token_failure);
    if let Some(status) = forced {
        return Err(AadstsError::forced(status));
    }
    let grant_type = form
        .get("grant_type")
        .ok_or_else(|| AadstsError::missing("grant_type"))?;
    if grant_type != "client_credentials" {
        return Err(AadstsError::bad_request(
            "unsupported_grant_type",
            70_003,
            format!("The app requested an unsupported grant type '{grant_type}'."),
        ));
    }
    let tenant_id = grant::check_tenant(state, tenant)?;
    let client_id = form
        .get("client_id")
        .ok_or_else(|| AadstsError::missing("client_id"))?;
    let target = grant::check_target(form, version)?;
    let claims = grant::check_claims(form)?;
    // App, then its service principal in this tenant.
    let (app, roles) = grant::find_app(state, &tenant_id, client_id)?;
    let strength = authenticate_client(state, &app, form, tenant, headers, record).await?;
    grant::check_resource(state, &target.resource, &tenant_id)?;
    grant::issue(
        state, &tenant_id, &app, roles, strength, &target, &claims, version,
    )
}

/// Checks the client's credential (an assertion — a certificate's or a federated one — else a
/// secret); returns the authentication strength the token will carry: `"2"` for an assertion,
/// `"1"` for a secret.
async fn authenticate_client(
    state: &EmuState,
    app: &RegisteredApp,
    form: &TokenForm,
    tenant: &str,
    headers: &HeaderMap,
    record: &mut TokenRequestRecord,
) -> Result<&'static str, AadstsError> {
    if let Some(assertion) = form.get("client_assertion") {
        match form.get("client_assertion_type") {
            None => return Err(AadstsError::missing("client_assertion_type")),
            Some(t) if t != JWT_BEARER_ASSERTION_TYPE => {
                return Err(AadstsError::bad_request(
                    "invalid_request",
                    90_100,
                    "client_assertion_type parameter is empty or not valid.",
                ))
            }
            Some(_) => {}
        }
        if federated::is_federated(assertion, app) {
            record.federated = true;
            federated::check_federated(state, app, assertion).await?;
        } else {
            assertion::check_assertion(state, app, assertion, tenant, headers, record)?;
        }
        Ok("2")
    } else if let Some(secret) = form.get("client_secret") {
        grant::check_secret(app, secret)?;
        Ok("1")
    } else {
        Err(AadstsError::invalid_client(
            7_000_218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        ))
    }
}
