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
//! | tenant known | 400 `invalid_tenant` 90002 |
//! | `client_id`, `scope` (v2) / `resource` (v1) present; no `resource` on v2 | 400 `invalid_request` 900144 / 901002 |
//! | scope is one `…/.default` | 400 `invalid_scope` 1002012 / 70011 |
//! | app registered and has a service principal in the tenant | 400 `unauthorized_client` 700016 |
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
//! | resource known (Microsoft first-party, `api://…`, a registered app's id) | 400 `invalid_resource` 500011 |
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

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{json, Map, Value};

use super::mint::{issuer_v1, TokenSpec};
use super::serve::{lock, read};
use super::server::{
    EmuState, RegisteredApp, RegisteredCert, TokenEndpointVersion, TokenOutcome, TokenRequestRecord,
};
use super::{
    aad_timestamp, b64url_decode, derived_guid, is_guid, iso_timestamp, new_guid, unix_now,
    AAD_AUTHORITY_HOST, DEFAULT_AUDIENCE, GRAPH_APP_ID, GRAPH_RESOURCE, OUTLOOK_RESOURCE,
};

/// `client_assertion_type` of a JWT client assertion (RFC 7523).
pub const JWT_BEARER_ASSERTION_TYPE: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Clock skew allowed on client assertion times, seconds.
const ASSERTION_SKEW_SECS: i64 = 300;

/// How far ahead a client assertion's `exp` may be, seconds.
const ASSERTION_MAX_AHEAD_SECS: i64 = 86_400;

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

const CERT_DOCS: &str =
    "Review the documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials .";

/// An AAD error answer: HTTP status, OAuth `error`, AADSTS code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AadError {
    pub status: StatusCode,
    pub error: &'static str,
    pub code: u32,
    pub message: String,
}

impl AadError {
    pub(crate) fn new(status: StatusCode, error: &'static str, code: u32, message: String) -> Self {
        AadError {
            status,
            error,
            code,
            message,
        }
    }

    fn bad_request(error: &'static str, code: u32, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error, code, message.into())
    }

    fn invalid_client(code: u32, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            code,
            message.into(),
        )
    }

    fn missing(parameter: &str) -> Self {
        Self::bad_request(
            "invalid_request",
            900_144,
            format!("The request body must contain the following parameter: '{parameter}'."),
        )
    }

    /// AADSTS90002, AAD's answer for a tenant it does not know.
    pub(crate) fn tenant_not_found(tenant: &str) -> Self {
        Self::bad_request(
            "invalid_tenant",
            90_002,
            format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID \
                 and are signing into the correct cloud. Check with your subscription \
                 administrator, this may happen if there are no active subscriptions for the tenant."
            ),
        )
    }

    /// The answer of a token endpoint forced to fail with `status`.
    fn forced(status: u16) -> Self {
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let (error, aadsts, message) = match code.as_u16() {
            429 => (
                "temporarily_unavailable",
                90_055,
                "There are too many incoming requests. Please try again later.",
            ),
            503 | 504 => (
                "temporarily_unavailable",
                90_006,
                "The service is temporarily unavailable. Please try again later.",
            ),
            500..=599 => (
                "server_error",
                50_000,
                "There was an error issuing a token or an issue with our sign-in service.",
            ),
            401 => ("invalid_client", 50_012, "Authentication failed."),
            _ => (
                "invalid_request",
                90_023,
                "The authentication service request is not valid.",
            ),
        };
        Self::new(code, error, aadsts, message.to_string())
    }

    /// The JSON response, with trace/correlation ids and the `client-request-id` echo.
    pub(crate) fn into_response_for(self, headers: &HeaderMap) -> Response {
        let ids = RequestIds::from_headers(headers);
        let now = unix_now();
        let timestamp = aad_timestamp(now);
        let body = json!({
            "error": self.error,
            "error_description": format!(
                "AADSTS{}: {}\r\nTrace ID: {}\r\nCorrelation ID: {}\r\nTimestamp: {}",
                self.code, self.message, ids.trace_id, ids.correlation_id, timestamp
            ),
            "error_codes": [self.code],
            "timestamp": timestamp,
            "trace_id": ids.trace_id,
            "correlation_id": ids.correlation_id,
            "error_uri": format!("{AAD_AUTHORITY_HOST}/error?code={}", self.code),
        });
        let mut response = (self.status, Json(body)).into_response();
        ids.apply(response.headers_mut());
        response
    }
}

/// `x-ms-request-id` / `trace_id` and the correlation id of one answer.
struct RequestIds {
    trace_id: String,
    correlation_id: String,
    client_request_id: Option<HeaderValue>,
}

impl RequestIds {
    fn from_headers(headers: &HeaderMap) -> Self {
        let client_request_id = headers.get("client-request-id").cloned();
        let correlation_id = client_request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .filter(|v| is_guid(v))
            .map(|v| v.to_ascii_lowercase())
            .unwrap_or_else(new_guid);
        RequestIds {
            trace_id: new_guid(),
            correlation_id,
            client_request_id,
        }
    }

    fn apply(self, headers: &mut HeaderMap) {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store, no-cache"),
        );
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if let Ok(v) = HeaderValue::from_str(&self.trace_id) {
            headers.insert("x-ms-request-id", v);
        }
        if let Some(v) = self.client_request_id {
            headers.insert("client-request-id", v);
        }
    }
}

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
    handle(&state, &tenant, &headers, form, TokenEndpointVersion::V2)
}

/// `POST /{tenant}/oauth2/token`.
pub(crate) async fn token_v1(
    State(state): State<Arc<EmuState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    handle(&state, &tenant, &headers, form, TokenEndpointVersion::V1)
}

/// Any other method on a token endpoint: AADSTS900561, like AAD.
pub(crate) async fn not_post(method: Method, headers: HeaderMap) -> Response {
    AadError::bad_request(
        "invalid_request",
        900_561,
        format!("The endpoint only accepts POST, OPTIONS requests. Received a {method} request."),
    )
    .into_response_for(&headers)
}

fn handle(
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
        assertion_thumbprint: None,
        outcome: TokenOutcome::Issued,
    };
    let result = process(state, tenant, headers, &form, version, &mut record);
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

/// What the request asks a token for.
struct Target {
    /// The resource id as requested (scope without `/.default`, or `resource`).
    resource: String,
}

fn process(
    state: &EmuState,
    tenant: &str,
    headers: &HeaderMap,
    form: &TokenForm,
    version: TokenEndpointVersion,
    record: &mut TokenRequestRecord,
) -> Result<Value, AadError> {
    if let Some(status) = *lock(&state.token_failure) {
        return Err(AadError::forced(status));
    }
    let grant_type = form
        .get("grant_type")
        .ok_or_else(|| AadError::missing("grant_type"))?;
    if grant_type != "client_credentials" {
        return Err(AadError::bad_request(
            "unsupported_grant_type",
            70_003,
            format!("The app requested an unsupported grant type '{grant_type}'."),
        ));
    }
    let tenant_id = check_tenant(state, tenant)?;
    let client_id = form
        .get("client_id")
        .ok_or_else(|| AadError::missing("client_id"))?;
    let target = check_target(form, version)?;

    // App, then its service principal in this tenant.
    let (app, roles) = {
        let dir = read(&state.directory);
        let not_found = || {
            AadError::bad_request(
                "unauthorized_client",
                700_016,
                format!(
                    "Application with identifier '{client_id}' was not found in the directory \
                     '{tenant_id}'. This can happen if the application has not been installed by \
                     the administrator of the tenant or consented to by any user in the tenant. \
                     You may have sent your authentication request to the wrong tenant."
                ),
            )
        };
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
            .get(&(tenant_id.clone(), client_id.to_ascii_lowercase()))
            .cloned()
            .ok_or_else(not_found)?;
        if sp.disabled {
            return Err(AadError::bad_request(
                "unauthorized_client",
                7_000_112,
                format!(
                    "Application '{}'({}) is disabled.",
                    app.client_id, app.display_name
                ),
            ));
        }
        (app, sp.roles)
    };

    let strength = if let Some(assertion) = form.get("client_assertion") {
        match form.get("client_assertion_type") {
            None => return Err(AadError::missing("client_assertion_type")),
            Some(t) if t != JWT_BEARER_ASSERTION_TYPE => {
                return Err(AadError::bad_request(
                    "invalid_request",
                    90_100,
                    "client_assertion_type parameter is empty or not valid.",
                ))
            }
            Some(_) => {}
        }
        check_assertion(state, &app, assertion, tenant, headers, record)?;
        "2"
    } else if let Some(secret) = form.get("client_secret") {
        if !app.secrets.iter().any(|s| s == secret) {
            return Err(AadError::invalid_client(
                7_000_215,
                format!(
                    "Invalid client secret provided. Ensure the secret being sent in the request \
                     is the client secret value, not the client secret ID, for a secret added to \
                     app '{}'.",
                    app.client_id
                ),
            ));
        }
        "1"
    } else {
        return Err(AadError::invalid_client(
            7_000_218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        ));
    };

    if !resource_known(state, &target.resource) {
        return Err(AadError::bad_request(
            "invalid_resource",
            500_011,
            format!(
                "The resource principal named {} was not found in the tenant named {tenant_id}. \
                 This can happen if the application has not been installed by the administrator \
                 of the tenant or consented to by any user in the tenant. You might have sent \
                 your authentication request to the wrong tenant.",
                target.resource
            ),
        ));
    }
    issue(state, &tenant_id, &app, roles, strength, &target, version)
}

/// Resolves the path tenant for the client credentials grant; returns it lower-case.
fn check_tenant(state: &EmuState, tenant: &str) -> Result<String, AadError> {
    let lower = tenant.to_ascii_lowercase();
    match lower.as_str() {
        "common" | "consumers" => Err(AadError::bad_request(
            "invalid_request",
            9_001_023,
            "The grant type is not supported over the /common or /consumers endpoints. Please \
             use the /organizations or tenant-specific endpoint.",
        )),
        "organizations" => Err(AadError::bad_request(
            "invalid_request",
            50_059,
            "No tenant-identifying information found in either the request or implied by any \
             provided credentials.",
        )),
        _ if is_guid(&lower) && read(&state.directory).knows_tenant(&lower) => Ok(lower),
        _ => match read(&state.directory).tenant_names.get(&lower) {
            // A registered tenant name stands for its tenant, as a verified domain does.
            Some(tid) => Ok(tid.clone()),
            None => Err(AadError::tenant_not_found(tenant)),
        },
    }
}

/// Reads `scope` (v2) or `resource` (v1) into the requested resource.
fn check_target(form: &TokenForm, version: TokenEndpointVersion) -> Result<Target, AadError> {
    match version {
        TokenEndpointVersion::V1 => {
            let resource = form
                .get("resource")
                .ok_or_else(|| AadError::missing("resource"))?;
            Ok(Target {
                resource: resource.to_string(),
            })
        }
        TokenEndpointVersion::V2 => {
            if form.get("resource").is_some() {
                return Err(AadError::bad_request(
                    "invalid_request",
                    901_002,
                    "The 'resource' request parameter is not supported.",
                ));
            }
            let scope = form
                .get("scope")
                .ok_or_else(|| AadError::missing("scope"))?;
            let scopes: Vec<&str> = scope.split_whitespace().collect();
            if scopes.is_empty() {
                return Err(AadError::missing("scope"));
            }
            if scopes.iter().any(|s| !s.ends_with("/.default")) {
                return Err(AadError::bad_request(
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
                return Err(AadError::bad_request(
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

fn issue(
    state: &EmuState,
    tenant_id: &str,
    app: &RegisteredApp,
    roles: Vec<String>,
    strength: &str,
    target: &Target,
    version: TokenEndpointVersion,
) -> Result<Value, AadError> {
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
    let lifetime = state.token_lifetime.load(Ordering::SeqCst);
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
        not_before_offset_secs: None,
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
    let key = state.active_key().ok_or_else(|| {
        AadError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            50_000,
            "There was an error issuing a token: no signing key.".into(),
        )
    })?;
    let token = key.try_mint(&spec).map_err(|e| {
        AadError::new(
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

/// A parsed (not yet trusted) JWS.
struct Jws {
    header: Map<String, Value>,
    claims: Map<String, Value>,
    signing_input: String,
    signature: String,
}

fn parse_jws(token: &str) -> Option<Jws> {
    let mut parts = token.split('.');
    let (h, c, s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let header: Map<String, Value> = serde_json::from_slice(&b64url_decode(h)?).ok()?;
    let claims: Map<String, Value> = serde_json::from_slice(&b64url_decode(c)?).ok()?;
    Some(Jws {
        header,
        claims,
        signing_input: format!("{h}.{c}"),
        signature: s.to_string(),
    })
}

fn numeric(value: Option<&Value>) -> Option<i64> {
    let v = value?;
    v.as_i64().or_else(|| v.as_f64().map(|f| f as i64))
}

/// "Start=MM/DD/YYYY HH:MM:SS, End=…" as AAD prints a found key's validity.
fn key_window(cert: &RegisteredCert) -> String {
    let us = |secs: i64| {
        let iso = iso_timestamp(secs);
        // iso: YYYY-MM-DDTHH:MM:SS.0000000Z
        format!(
            "{}/{}/{} {}",
            &iso[5..7],
            &iso[8..10],
            &iso[0..4],
            &iso[11..19]
        )
    };
    format!("Start={}, End={}", us(cert.not_before), us(cert.not_after))
}

fn key_docs(client_id: &str) -> String {
    format!(
        "Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured \
         keys for app Id '{client_id}'. Review the documentation at \
         https://docs.microsoft.com/en-us/graph/deployments to determine the corresponding \
         service endpoint and \
         https://docs.microsoft.com/en-us/graph/api/application-get?view=graph-rest-1.0&tabs=http \
         to build a query request URL, such as \
         'https://graph.microsoft.com/beta/applications/{client_id}'"
    )
}

fn check_assertion(
    state: &EmuState,
    app: &RegisteredApp,
    assertion: &str,
    tenant: &str,
    headers: &HeaderMap,
    record: &mut TokenRequestRecord,
) -> Result<(), AadError> {
    let jws = parse_jws(assertion)
        .ok_or_else(|| AadError::invalid_client(50_027, "JWT token is invalid or malformed."))?;

    if let Some(typ) = jws.header.get("typ") {
        let ok = typ.as_str().is_some_and(|t| {
            t.eq_ignore_ascii_case("JWT") || t == "http://openid.net/specs/jwt/1.0"
        });
        if !ok {
            return Err(AadError::invalid_client(
                5_002_727,
                "Invalid JWT header type specified, must be 'JWT' or 'http://openid.net/specs/jwt/1.0'.",
            ));
        }
    }

    let x5t = jws.header.get("x5t").and_then(Value::as_str);
    let x5t_s256 = jws.header.get("x5t#S256").and_then(Value::as_str);
    if x5t.is_none() && x5t_s256.is_none() {
        return Err(AadError::invalid_client(
            50_027,
            "Invalid JWT token. No certificate thumbprint specified in token header.",
        ));
    }
    let presented_hex = x5t
        .or(x5t_s256)
        .and_then(b64url_decode)
        .map(|bytes| bytes.iter().map(|b| format!("{b:02X}")).collect::<String>())
        .unwrap_or_else(|| x5t.or(x5t_s256).unwrap_or_default().to_string());
    record.assertion_thumbprint = Some(presented_hex.clone());

    let alg = match jws.header.get("alg").and_then(Value::as_str) {
        Some("RS256") => Algorithm::RS256,
        Some("RS384") => Algorithm::RS384,
        Some("RS512") => Algorithm::RS512,
        Some("PS256") => Algorithm::PS256,
        other => {
            return Err(AadError::invalid_client(
                5_002_738,
                format!(
                    "Invalid JWT token. '{}' is not a supported signature algorithm. Supported \
                     signing algorithms are: 'RS256, RS384, RS512, PS256'",
                    other.unwrap_or("")
                ),
            ))
        }
    };

    // x5t#S256 first (AAD's preferred thumbprint), then x5t.
    let cert = x5t_s256
        .and_then(|t| app.certs.iter().find(|c| c.x5t_s256 == t))
        .or_else(|| x5t.and_then(|t| app.certs.iter().find(|c| c.x5t == t)))
        .ok_or_else(|| {
            AadError::invalid_client(
                700_027,
                format!(
                    "Client assertion contains an invalid signature. [Reason - The key was not \
                     found., Thumbprint of key used by client: '{presented_hex}', {}]",
                    key_docs(&app.client_id)
                ),
            )
        })?;
    record.assertion_thumbprint = Some(cert.thumbprint_hex.clone());
    let now = unix_now();
    if cert.revoked {
        return Err(AadError::invalid_client(
            7_000_214,
            format!(
                "Certificate has been revoked. Thumbprint of key used by client: '{}'.",
                cert.thumbprint_hex
            ),
        ));
    }
    if now < cert.not_before || now > cert.not_after {
        return Err(AadError::invalid_client(
            1_000_502,
            format!(
                "The certificate used to sign the client assertion is outside its validity \
                 window. [Thumbprint of key used by client: '{}', Found key '{}']",
                cert.thumbprint_hex,
                key_window(cert)
            ),
        ));
    }

    let key = DecodingKey::from_rsa_raw_components(&cert.n, &cert.e);
    let verified = !jws.signature.is_empty()
        && jsonwebtoken::crypto::verify(&jws.signature, jws.signing_input.as_bytes(), &key, alg)
            .unwrap_or(false);
    if !verified {
        return Err(AadError::invalid_client(
            700_027,
            format!(
                "Client assertion contains an invalid signature. [Reason - Key was found, but use \
                 of the key to verify the signature failed., Thumbprint of key used by client: \
                 '{}', Found key '{}', {}]",
                cert.thumbprint_hex,
                key_window(cert),
                key_docs(&app.client_id)
            ),
        ));
    }

    // aud: this tenant's token endpoint, as AAD names it or as the emulator serves it.
    let mut hosts = vec![AAD_AUTHORITY_HOST.to_string(), state.base_url.clone()];
    if let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        hosts.push(format!("http://{host}"));
    }
    let accepted: Vec<String> = hosts
        .iter()
        .flat_map(|h| {
            [
                format!("{h}/{tenant}/oauth2/v2.0/token"),
                format!("{h}/{tenant}/oauth2/token"),
            ]
        })
        .collect();
    let aud_ok = |aud: &str| accepted.iter().any(|a| a.eq_ignore_ascii_case(aud));
    let aud_matches = match jws.claims.get("aud") {
        Some(Value::String(aud)) => aud_ok(aud),
        Some(Value::Array(auds)) => auds.iter().filter_map(Value::as_str).any(aud_ok),
        _ => false,
    };
    if !aud_matches {
        return Err(AadError::invalid_client(
            700_023,
            format!("Client assertion audience claim does not match Realm issuer. {CERT_DOCS}"),
        ));
    }

    let iss = jws.claims.get("iss").and_then(Value::as_str);
    let sub = jws.claims.get("sub").and_then(Value::as_str);
    if iss != sub {
        return Err(AadError::invalid_client(
            50_048,
            "Subject mismatches Issuer claim in the client assertion.",
        ));
    }
    if !iss.is_some_and(|iss| iss.eq_ignore_ascii_case(&app.client_id)) {
        return Err(AadError::invalid_client(
            700_021,
            format!("Client assertion application identifier doesn't match 'client_id' parameter. {CERT_DOCS}"),
        ));
    }

    let exp = numeric(jws.claims.get("exp"));
    let nbf = numeric(jws.claims.get("nbf"));
    let in_range = exp.is_some_and(|exp| {
        exp + ASSERTION_SKEW_SECS >= now
            && exp <= now + ASSERTION_MAX_AHEAD_SECS + ASSERTION_SKEW_SECS
    }) && nbf.is_none_or(|nbf| nbf <= now + ASSERTION_SKEW_SECS);
    if !in_range {
        return Err(AadError::invalid_client(
            700_024,
            format!(
                "Client assertion is not within its valid time range. Current time: {}, \
                 assertion valid from {}, expiry time of assertion {}. {CERT_DOCS}",
                iso_timestamp(now),
                iso_timestamp(nbf.unwrap_or(0)),
                iso_timestamp(exp.unwrap_or(0))
            ),
        ));
    }

    // Replay: AAD does not document a jti check or its code for client assertions; the emulator
    // rejects a reused `jti` (RFC 7523 §3 allows it) with AADSTS50013 "InvalidAssertion", the
    // code AAD uses for assertions that are otherwise well formed but not acceptable.
    if let Some(jti) = jws.claims.get("jti").and_then(Value::as_str) {
        let key = format!("{}|{jti}", app.client_id.to_ascii_lowercase());
        let mut used = lock(&state.used_jtis);
        used.retain(|_, exp| *exp + ASSERTION_SKEW_SECS >= now);
        if used.contains_key(&key) {
            return Err(AadError::invalid_client(
                50_013,
                format!(
                    "Assertion is invalid: the client assertion with jti '{jti}' has already been \
                     used. Send a new assertion with a fresh 'jti' for every request."
                ),
            ));
        }
        used.insert(key, exp.unwrap_or(now));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SigningKey;
    use crate::server::{AppRegistration, Emulator, EmulatorHandle, EmulatorOptions};
    use crate::{b64url, DEFAULT_TENANT};

    const CLIENT: &str = "3c2a9b8e-5d4f-4e6a-9b1c-7d8e9f0a1b2c";
    const CORRELATION: &str = "0b6a3c2d-1e4f-4a5b-8c7d-9e0f1a2b3c4d";
    const OUTLOOK_SCOPE: &str = "https://outlook.office365.com/.default";

    type Tweak<'a> = dyn Fn(&mut Map<String, Value>, &mut Map<String, Value>) + 'a;
    type Fields = Vec<(&'static str, String)>;
    /// (name, URL, form, expected status, `error`, AADSTS code)
    type Case = (&'static str, String, Fields, u16, &'static str, u32);

    struct Fixture {
        emu: EmulatorHandle,
        app_key: SigningKey,
        other_key: SigningKey,
    }

    async fn fixture() -> Fixture {
        let emu = Emulator::start(
            "127.0.0.1:0".parse().expect("addr"),
            EmulatorOptions::default(),
        )
        .await
        .expect("emulator");
        let app_key = SigningKey::generate().expect("app key");
        let other_key = SigningKey::generate().expect("other key");
        emu.register_app(
            AppRegistration::new(CLIENT)
                .with_display_name("aadgate exchange")
                .with_certificate(&app_key)
                .with_secret("s3cret"),
        )
        .expect("register");
        emu.consent(DEFAULT_TENANT, CLIENT, vec!["Mail.Read".into()]);
        Fixture {
            emu,
            app_key,
            other_key,
        }
    }

    fn aad_token_url(tenant: &str) -> String {
        format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token")
    }

    /// A client assertion as the gateway builds it (SPEC section 5), then `tweak`ed.
    fn assertion(
        key: &SigningKey,
        aud: &str,
        tweak: impl FnOnce(&mut Map<String, Value>, &mut Map<String, Value>),
    ) -> String {
        let now = unix_now();
        let mut header = Map::new();
        header.insert("alg".into(), json!("RS256"));
        header.insert("typ".into(), json!("JWT"));
        header.insert("x5t".into(), json!(key.x5t()));
        header.insert("x5t#S256".into(), json!(key.x5t_s256()));
        let mut claims = Map::new();
        claims.insert("aud".into(), json!(aud));
        claims.insert("iss".into(), json!(CLIENT));
        claims.insert("sub".into(), json!(CLIENT));
        claims.insert("jti".into(), json!(new_guid()));
        claims.insert("iat".into(), json!(now));
        claims.insert("nbf".into(), json!(now));
        claims.insert("exp".into(), json!(now + 600));
        tweak(&mut header, &mut claims);
        let input = format!(
            "{}.{}",
            b64url(&serde_json::to_vec(&header).expect("header")),
            b64url(&serde_json::to_vec(&claims).expect("claims"))
        );
        let signature = key.sign(input.as_bytes()).expect("sign");
        format!("{input}.{signature}")
    }

    fn form(scope: &str, assertion: &str) -> Vec<(&'static str, String)> {
        vec![
            ("grant_type", "client_credentials".into()),
            ("client_id", CLIENT.into()),
            ("scope", scope.into()),
            ("client_assertion_type", JWT_BEARER_ASSERTION_TYPE.into()),
            ("client_assertion", assertion.into()),
        ]
    }

    async fn post(url: &str, fields: &[(&str, String)]) -> (u16, Value) {
        let resp = reqwest::Client::new()
            .post(url)
            .header("client-request-id", CORRELATION)
            .form(fields)
            .send()
            .await
            .expect("post");
        let status = resp.status().as_u16();
        (status, resp.json::<Value>().await.unwrap_or(Value::Null))
    }

    fn claims_of(token: &str) -> Value {
        let part = token.split('.').nth(1).expect("claims");
        serde_json::from_slice(&b64url_decode(part).expect("b64")).expect("json")
    }

    fn verifies_with_published_key(emu: &EmulatorHandle, token: &str) -> bool {
        let jwk = emu.signing_key().jwk(None);
        let key = DecodingKey::from_rsa_components(
            jwk["n"].as_str().expect("n"),
            jwk["e"].as_str().expect("e"),
        )
        .expect("key");
        let (input, sig) = token.rsplit_once('.').expect("dot");
        jsonwebtoken::crypto::verify(sig, input.as_bytes(), &key, Algorithm::RS256).unwrap_or(false)
    }

    #[tokio::test]
    async fn v2_certificate_grant_issues_v1_outlook_token_with_consented_roles() {
        let f = fixture().await;
        let url = f.emu.token_endpoint(DEFAULT_TENANT);
        let a = assertion(&f.app_key, &aad_token_url(DEFAULT_TENANT), |_, _| {});
        let (status, body) = post(&url, &form(OUTLOOK_SCOPE, &a)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 3599);
        assert_eq!(body["ext_expires_in"], 3599);
        let token = body["access_token"].as_str().expect("token");
        assert!(verifies_with_published_key(&f.emu, token));
        let claims = claims_of(token);
        assert_eq!(claims["aud"], OUTLOOK_RESOURCE);
        assert_eq!(claims["iss"], issuer_v1(DEFAULT_TENANT));
        assert_eq!(claims["ver"], "1.0");
        assert_eq!(claims["tid"], DEFAULT_TENANT);
        assert_eq!(claims["appid"], CLIENT);
        assert_eq!(claims["appidacr"], "2");
        assert_eq!(claims["idtyp"], "app");
        assert_eq!(claims["roles"], json!(["Mail.Read"]));
        assert_eq!(claims["oid"], claims["sub"]);

        // The emulator's own URL is an accepted audience too, and the service principal's oid is
        // stable.
        f.emu.set_token_lifetime(120);
        let a = assertion(&f.app_key, &url, |_, _| {});
        let (status, body) = post(&url, &form(OUTLOOK_SCOPE, &a)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["expires_in"], 120);
        let second = claims_of(body["access_token"].as_str().expect("token"));
        assert_eq!(second["oid"], claims["oid"]);

        assert_eq!(f.emu.token_request_count(), 2);
        let records = f.emu.token_requests();
        assert_eq!(records[0].tenant, DEFAULT_TENANT);
        assert_eq!(records[0].endpoint, TokenEndpointVersion::V2);
        assert_eq!(records[0].client_id.as_deref(), Some(CLIENT));
        assert_eq!(records[0].scope.as_deref(), Some(OUTLOOK_SCOPE));
        assert_eq!(
            records[0].assertion_thumbprint.as_deref(),
            Some(f.app_key.thumbprint_hex())
        );
        assert_eq!(records[0].outcome, TokenOutcome::Issued);
    }

    #[tokio::test]
    async fn v1_endpoint_answers_strings_and_resource_and_v2_custom_resource_gets_v2_token() {
        let f = fixture().await;
        let url = f.emu.token_endpoint_v1(DEFAULT_TENANT);
        let a = assertion(
            &f.app_key,
            &format!("https://login.microsoftonline.com/{DEFAULT_TENANT}/oauth2/token"),
            |_, _| {},
        );
        let fields = vec![
            ("grant_type", "client_credentials".to_string()),
            ("client_id", CLIENT.into()),
            ("resource", OUTLOOK_RESOURCE.into()),
            ("client_assertion_type", JWT_BEARER_ASSERTION_TYPE.into()),
            ("client_assertion", a),
        ];
        let (status, body) = post(&url, &fields).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["expires_in"], "3599");
        assert_eq!(body["resource"], OUTLOOK_RESOURCE);
        assert!(body["expires_on"]
            .as_str()
            .is_some_and(|s| s.parse::<i64>().is_ok()));
        assert_eq!(f.emu.token_requests()[0].endpoint, TokenEndpointVersion::V1);

        let a = assertion(&f.app_key, &aad_token_url(DEFAULT_TENANT), |_, _| {});
        let (status, body) = post(
            &f.emu.token_endpoint(DEFAULT_TENANT),
            &form("api://aadgate-demo/.default", &a),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let claims = claims_of(body["access_token"].as_str().expect("token"));
        assert_eq!(claims["ver"], "2.0");
        assert_eq!(claims["azp"], CLIENT);
        assert_eq!(claims["azpacr"], "2");
        assert_eq!(claims["iss"], crate::issuer_v2(DEFAULT_TENANT));
    }

    #[tokio::test]
    async fn client_secret_is_accepted_with_strength_1() {
        let f = fixture().await;
        let url = f.emu.token_endpoint(DEFAULT_TENANT);
        let fields = |secret: &str| {
            vec![
                ("grant_type", "client_credentials".to_string()),
                ("client_id", CLIENT.into()),
                ("scope", OUTLOOK_SCOPE.into()),
                ("client_secret", secret.into()),
            ]
        };
        let (status, body) = post(&url, &fields("s3cret")).await;
        assert_eq!(status, 200, "{body}");
        let claims = claims_of(body["access_token"].as_str().expect("token"));
        assert_eq!(claims["appidacr"], "1");
        let (status, body) = post(&url, &fields("wrong")).await;
        assert_eq!(
            (status, body["error_codes"][0].as_u64()),
            (401, Some(7_000_215))
        );
        assert!(f.emu.token_requests()[1].used_client_secret);
    }

    #[tokio::test]
    async fn a_registered_tenant_name_stands_for_its_tenant_and_an_unknown_name_is_90002() {
        let f = fixture().await;
        f.emu
            .add_tenant_name("contoso.onmicrosoft.com", DEFAULT_TENANT);
        let fields = vec![
            ("grant_type", "client_credentials".to_string()),
            ("client_id", CLIENT.into()),
            ("scope", OUTLOOK_SCOPE.into()),
            ("client_secret", "s3cret".into()),
        ];
        let url = f.emu.token_endpoint("Contoso.onmicrosoft.com");
        let (status, body) = post(&url, &fields).await;
        assert_eq!(status, 200, "{body}");
        let claims = claims_of(body["access_token"].as_str().expect("token"));
        assert_eq!(claims["tid"], DEFAULT_TENANT);
        let url = f.emu.token_endpoint("fabrikam.onmicrosoft.com");
        let (status, body) = post(&url, &fields).await;
        assert_eq!(
            (status, body["error_codes"][0].as_u64()),
            (400, Some(90_002))
        );
    }

    #[tokio::test]
    async fn error_answers_have_aad_shape_and_correlation_id() {
        let f = fixture().await;
        let url = f.emu.token_endpoint("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee");
        let a = assertion(&f.app_key, &aad_token_url(DEFAULT_TENANT), |_, _| {});
        let (status, body) = post(&url, &form(OUTLOOK_SCOPE, &a)).await;
        assert_eq!(status, 400);
        assert_eq!(body["error"], "invalid_tenant");
        assert_eq!(body["error_codes"], json!([90002]));
        assert_eq!(body["correlation_id"], CORRELATION);
        let description = body["error_description"].as_str().expect("description");
        assert!(description.starts_with("AADSTS90002: Tenant 'aaaaaaaa-"));
        assert!(description.contains(&format!("\r\nCorrelation ID: {CORRELATION}\r\n")));
        assert!(description.contains(&format!(
            "Trace ID: {}",
            body["trace_id"].as_str().expect("trace")
        )));
        assert!(body["timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && t.len() == 20));
        assert_eq!(
            body["error_uri"],
            "https://login.microsoftonline.com/error?code=90002"
        );
    }

    #[tokio::test]
    async fn each_failure_gets_aads_code() {
        let f = fixture().await;
        let emu = &f.emu;
        let tenant_url = emu.token_endpoint(DEFAULT_TENANT);
        let aad_aud = aad_token_url(DEFAULT_TENANT);
        let good = |tweak: &Tweak<'_>| assertion(&f.app_key, &aad_aud, |h, c| tweak(h, c));
        let other_tenant = "11111111-2222-3333-4444-555555555555";
        emu.add_tenant(other_tenant);
        let disabled_tenant = "22222222-3333-4444-5555-666666666666";
        emu.consent(disabled_tenant, CLIENT, vec![]);
        emu.set_app_disabled(disabled_tenant, CLIENT, true);

        let with =
            |mut fields: Vec<(&'static str, String)>, name: &'static str, value: Option<&str>| {
                fields.retain(|(n, _)| *n != name);
                if let Some(v) = value {
                    fields.push((name, v.to_string()));
                }
                fields
            };
        let base = || form(OUTLOOK_SCOPE, &good(&|_, _| {}));
        // Names the app's certificate but is signed by another key: only the signature is wrong.
        let signed_by_other_with_app_thumbprint = assertion(&f.other_key, &aad_aud, |h, _| {
            h.insert("x5t".into(), json!(f.app_key.x5t()));
            h.insert("x5t#S256".into(), json!(f.app_key.x5t_s256()));
        });
        let now = unix_now();

        let cases: Vec<Case> = vec![
            (
                "common",
                emu.token_endpoint("common"),
                base(),
                400,
                "invalid_request",
                9_001_023,
            ),
            (
                "organizations",
                emu.token_endpoint("organizations"),
                base(),
                400,
                "invalid_request",
                50_059,
            ),
            (
                "no grant_type",
                tenant_url.clone(),
                with(base(), "grant_type", None),
                400,
                "invalid_request",
                900_144,
            ),
            (
                "password grant",
                tenant_url.clone(),
                with(base(), "grant_type", Some("password")),
                400,
                "unsupported_grant_type",
                70_003,
            ),
            (
                "no client_id",
                tenant_url.clone(),
                with(base(), "client_id", None),
                400,
                "invalid_request",
                900_144,
            ),
            (
                "unknown app",
                tenant_url.clone(),
                with(
                    base(),
                    "client_id",
                    Some("99999999-9999-4999-8999-999999999999"),
                ),
                400,
                "unauthorized_client",
                700_016,
            ),
            (
                "not consented in tenant",
                emu.token_endpoint(other_tenant),
                form(
                    OUTLOOK_SCOPE,
                    &assertion(&f.app_key, &aad_token_url(other_tenant), |_, _| {}),
                ),
                400,
                "unauthorized_client",
                700_016,
            ),
            (
                "disabled",
                emu.token_endpoint(disabled_tenant),
                form(
                    OUTLOOK_SCOPE,
                    &assertion(&f.app_key, &aad_token_url(disabled_tenant), |_, _| {}),
                ),
                400,
                "unauthorized_client",
                7_000_112,
            ),
            (
                "no credential",
                tenant_url.clone(),
                with(
                    with(base(), "client_assertion", None),
                    "client_assertion_type",
                    None,
                ),
                401,
                "invalid_client",
                7_000_218,
            ),
            (
                "no assertion type",
                tenant_url.clone(),
                with(base(), "client_assertion_type", None),
                400,
                "invalid_request",
                900_144,
            ),
            (
                "bad assertion type",
                tenant_url.clone(),
                with(base(), "client_assertion_type", Some("urn:x")),
                400,
                "invalid_request",
                90_100,
            ),
            (
                "malformed",
                tenant_url.clone(),
                with(base(), "client_assertion", Some("abc.def")),
                401,
                "invalid_client",
                50_027,
            ),
            (
                "typ",
                tenant_url.clone(),
                form(
                    OUTLOOK_SCOPE,
                    &good(&|h, _| {
                        h.insert("typ".into(), json!("JOSE"));
                    }),
                ),
                401,
                "invalid_client",
                5_002_727,
            ),
            (
                "no thumbprint",
                tenant_url.clone(),
                form(
                    OUTLOOK_SCOPE,
                    &good(&|h, _| {
                        h.remove("x5t");
                        h.remove("x5t#S256");
                    }),
                ),
                401,
                "invalid_client",
                50_027,
            ),
            (
                "alg",
                tenant_url.clone(),
                form(
                    OUTLOOK_SCOPE,
                    &good(&|h, _| {
                        h.insert("alg".into(), json!("HS256"));
                    }),
                ),
                401,
                "invalid_client",
                5_002_738,
            ),
            (
                "unknown certificate",
                tenant_url.clone(),
                form(OUTLOOK_SCOPE, &assertion(&f.other_key, &aad_aud, |_, _| {})),
                401,
                "invalid_client",
                700_027,
            ),
            (
                "bad signature",
                tenant_url.clone(),
                form(OUTLOOK_SCOPE, &signed_by_other_with_app_thumbprint),
                401,
                "invalid_client",
                700_027,
            ),
            (
                "aud is common",
                tenant_url.clone(),
                form(
                    OUTLOOK_SCOPE,
                    &good(&|_, c| {
                        c.insert("aud".into(), json!(aad_token_url("common")));
                    }),
                ),
                401,
                "invalid_client",
                700_023,
            ),
            (
                "iss != sub",
                tenant_url.clone(),
                form(
                    OUTLOOK_SCOPE,
                    &good(&|_, c| {
                        c.insert("sub".into(), json!("someone-else"));
                    }),
                ),
                401,
                "invalid_client",
                50_048,
            ),
            (
                "iss = sub != client",
                tenant_url.clone(),
                form(
                    OUTLOOK_SCOPE,
                    &good(&|_, c| {
                        c.insert("iss".into(), json!("x"));
                        c.insert("sub".into(), json!("x"));
                    }),
                ),
                401,
                "invalid_client",
                700_021,
            ),
            (
                "expired",
                tenant_url.clone(),
                form(
                    OUTLOOK_SCOPE,
                    &good(&|_, c| {
                        c.insert("exp".into(), json!(now - 3600));
                    }),
                ),
                401,
                "invalid_client",
                700_024,
            ),
            (
                "exp too far ahead",
                tenant_url.clone(),
                form(
                    OUTLOOK_SCOPE,
                    &good(&|_, c| {
                        c.insert("exp".into(), json!(now + 3 * 86_400));
                    }),
                ),
                401,
                "invalid_client",
                700_024,
            ),
            (
                "nbf in future",
                tenant_url.clone(),
                form(
                    OUTLOOK_SCOPE,
                    &good(&|_, c| {
                        c.insert("nbf".into(), json!(now + 3600));
                    }),
                ),
                401,
                "invalid_client",
                700_024,
            ),
            (
                "scope without .default",
                tenant_url.clone(),
                form("https://outlook.office365.com/Mail.Read", &good(&|_, _| {})),
                400,
                "invalid_scope",
                1_002_012,
            ),
            (
                "two resources",
                tenant_url.clone(),
                form(
                    "https://outlook.office365.com/.default https://graph.microsoft.com/.default",
                    &good(&|_, _| {}),
                ),
                400,
                "invalid_scope",
                70_011,
            ),
            (
                "resource on v2",
                tenant_url.clone(),
                with(base(), "resource", Some(OUTLOOK_RESOURCE)),
                400,
                "invalid_request",
                901_002,
            ),
            (
                "unknown resource",
                tenant_url.clone(),
                form("https://unknown.example/.default", &good(&|_, _| {})),
                400,
                "invalid_resource",
                500_011,
            ),
        ];
        let mut expected_count = 0;
        for (name, url, fields, status, error, code) in cases {
            let (got_status, body) = post(&url, &fields).await;
            expected_count += 1;
            assert_eq!(got_status, status, "{name}: {body}");
            assert_eq!(body["error"], error, "{name}: {body}");
            assert_eq!(body["error_codes"], json!([code]), "{name}: {body}");
            let description = body["error_description"].as_str().unwrap_or("");
            assert!(
                description.starts_with(&format!("AADSTS{code}: ")),
                "{name}: {description}"
            );
        }
        assert_eq!(emu.token_request_count(), expected_count);
        let last = emu.token_requests().pop().expect("record");
        assert_eq!(
            last.outcome,
            TokenOutcome::Failed {
                status: 400,
                error: "invalid_resource".into(),
                aadsts: 500_011
            }
        );
    }

    #[tokio::test]
    async fn key_not_found_and_signature_failures_name_the_thumbprint() {
        let f = fixture().await;
        let url = f.emu.token_endpoint(DEFAULT_TENANT);
        let aud = aad_token_url(DEFAULT_TENANT);
        let (_, body) = post(
            &url,
            &form(OUTLOOK_SCOPE, &assertion(&f.other_key, &aud, |_, _| {})),
        )
        .await;
        let description = body["error_description"].as_str().expect("description");
        assert!(
            description.contains("[Reason - The key was not found."),
            "{description}"
        );
        assert!(
            description.contains(f.other_key.thumbprint_hex()),
            "{description}"
        );
        assert_eq!(
            f.emu.token_requests()[0].assertion_thumbprint.as_deref(),
            Some(f.other_key.thumbprint_hex())
        );
    }

    #[tokio::test]
    async fn replayed_jti_removed_revoked_and_expired_certificates_are_refused() {
        let f = fixture().await;
        let url = f.emu.token_endpoint(DEFAULT_TENANT);
        let aud = aad_token_url(DEFAULT_TENANT);
        let a = assertion(&f.app_key, &aud, |_, _| {});
        assert_eq!(post(&url, &form(OUTLOOK_SCOPE, &a)).await.0, 200);
        let (status, body) = post(&url, &form(OUTLOOK_SCOPE, &a)).await;
        assert_eq!(
            (status, body["error_codes"][0].as_u64()),
            (401, Some(50_013))
        );

        let second = SigningKey::generate().expect("second key");
        let expired =
            SigningKey::generate_with_validity((2000, 1, 1), (2001, 1, 1)).expect("old key");
        f.emu
            .register_app(
                AppRegistration::new(CLIENT)
                    .with_certificate(&f.app_key)
                    .with_certificate(&second)
                    .with_certificate(&expired),
            )
            .expect("re-register");
        assert!(f
            .emu
            .revoke_app_certificate(CLIENT, second.thumbprint_hex()));
        let (_, body) = post(
            &url,
            &form(OUTLOOK_SCOPE, &assertion(&second, &aud, |_, _| {})),
        )
        .await;
        assert_eq!(body["error_codes"][0], 7_000_214);
        let (_, body) = post(
            &url,
            &form(OUTLOOK_SCOPE, &assertion(&expired, &aud, |_, _| {})),
        )
        .await;
        assert_eq!(body["error_codes"][0], 1_000_502);

        // Rollover: remove the first certificate by its colon-separated lower-case thumbprint.
        let colon: String = f
            .app_key
            .thumbprint_hex()
            .to_ascii_lowercase()
            .as_bytes()
            .chunks(2)
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect::<Vec<_>>()
            .join(":");
        assert!(f.emu.remove_app_certificate(CLIENT, &colon));
        let (status, body) = post(
            &url,
            &form(OUTLOOK_SCOPE, &assertion(&f.app_key, &aud, |_, _| {})),
        )
        .await;
        assert_eq!(
            (status, body["error_codes"][0].as_u64()),
            (401, Some(700_027))
        );
        assert!(!f.emu.remove_app_certificate(CLIENT, &colon));
    }

    #[tokio::test]
    async fn forced_failure_and_wrong_method() {
        let f = fixture().await;
        let url = f.emu.token_endpoint(DEFAULT_TENANT);
        let aud = aad_token_url(DEFAULT_TENANT);
        f.emu.set_token_endpoint_failure(Some(503));
        let (status, body) = post(
            &url,
            &form(OUTLOOK_SCOPE, &assertion(&f.app_key, &aud, |_, _| {})),
        )
        .await;
        assert_eq!(status, 503);
        assert_eq!(body["error"], "temporarily_unavailable");
        assert_eq!(body["error_codes"], json!([90006]));
        f.emu.set_token_endpoint_failure(Some(500));
        let (status, body) = post(
            &url,
            &form(OUTLOOK_SCOPE, &assertion(&f.app_key, &aud, |_, _| {})),
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (500, Some("server_error"))
        );
        f.emu.set_token_endpoint_failure(None);
        let (status, _) = post(
            &url,
            &form(OUTLOOK_SCOPE, &assertion(&f.app_key, &aud, |_, _| {})),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(f.emu.token_request_count(), 3);

        let resp = reqwest::get(&url).await.expect("get");
        assert_eq!(resp.status(), 400);
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["error_codes"], json!([900561]));
        assert_eq!(
            f.emu.token_request_count(),
            3,
            "only POSTs are token requests"
        );
    }
}
