//! A mock of the Outlook REST API and the Microsoft Graph mail API, as Exchange Online serves
//! them, for the app-only token exchange (SPEC section 5).
//!
//! Serves `GET /api/v2.0/users/{id}/messages`, `GET /api/v2.0/me/messages` (Outlook REST) and
//! `GET /v1.0/users/{id}/messages`, `GET /v1.0/me/messages` (Graph); path literals are
//! case-insensitive, as on Exchange. The bearer token is checked the way Exchange does, against
//! the emulator's current keys (in process, no JWKS fetch), and failures carry Exchange's
//! `x-ms-diagnostics` header:
//!
//! | check | failure |
//! |---|---|
//! | a bearer token is present | 401 with `WWW-Authenticate` only |
//! | the token parses | 401 `2000001;reason="OAuth token submitted with the request cannot be parsed.";error_category="invalid_token"` |
//! | `kid` known and RS256 signature valid | 401 `2000000;reason="The token has an invalid signature.";error_category="invalid_signature"` |
//! | `exp`/`nbf` (5 min skew) | 401 `2000001;reason="The token has expired.";error_category="invalid_token"` (or "…is not yet valid.") |
//! | `aud` = `https://outlook.office365.com` (Outlook) / `https://graph.microsoft.com` or `00000003-0000-0000-c000-000000000000` (Graph) | 401 `2000003;reason="The audience claim value is invalid '…'.";error_category="invalid_resource"` |
//! | `tid` is a GUID | 401 `2000004;reason="The tenant for tenant guid '…' does not exist.";error_category="invalid_tenant"` |
//! | app-only token on `/me` | Outlook: 401 `2000001;reason="No applicable user context claims found.";error_category="invalid_token"`; Graph: 400 `/me request is only valid with delegated authentication flow.` |
//! | app-only: `appidacr`/`azpacr` = 2 (Outlook) or ≥ 1 (Graph, which accepts secrets) | 401 `2000010;reason="The access token is acquired using an authentication method that is too weak to allow access for this application. Presented auth strength was 1, required is 2.";error_category="insufficient_auth_strength"` |
//! | a `roles` (app) or `scp` (user) claim | 401 `2000001;reason="The token is missing the claim type 'roles'.";error_category="invalid_token"` |
//! | `roles` has `Mail.Read`/`Mail.ReadWrite` (app), `scp` has `Mail.Read`/`Mail.ReadWrite` (user) | 403 `2000008;reason="The token contains not enough scope to make this call.";error_category="invalid_grant"` |
//! | user token: the mailbox is the caller's own (`oid`/`upn`), unless a `*.Shared` scope | 403 `2000008;reason="The call should access the mailbox specified in the oauth token.";error_category="invalid_grant"` |
//!
//! The 2000000/2000003/2000004/2000008/2000010 strings are ones Exchange Online is seen
//! answering; the wording of the others comes from Exchange's own OAuth error list, and their
//! numbers follow the same scheme (best effort). Every answer carries a `request-id` GUID and
//! echoes `client-request-id` when the request has `return-client-request-id: true`.

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use jsonwebtoken::Algorithm;
use serde_json::{json, Map, Value};

use super::serve::{base_url, lock, RecordedRequest, ServerTask};
use super::server::EmulatorHandle;
use super::{
    b64url_decode, derived_guid, is_guid, iso_timestamp, new_guid, unix_now, EmulatorError,
    GRAPH_APP_ID, GRAPH_RESOURCE, OUTLOOK_RESOURCE,
};

/// Clock skew Exchange allows on `exp`/`nbf`, seconds.
const SKEW_SECS: i64 = 300;

const OUTLOOK_CHALLENGE: &str = "Bearer client_id=\"00000002-0000-0ff1-ce00-000000000000\", \
    trusted_issuers=\"00000001-0000-0000-c000-000000000000@*\", \
    token_types=\"app_asserted_user_v1 service_asserted_app_v1\", \
    authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", \
    error=\"invalid_token\"";

const GRAPH_CHALLENGE: &str = "Bearer realm=\"\", \
    authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", \
    client_id=\"00000003-0000-0000-c000-000000000000\"";

/// Entry point of the mock mail API; see [`MockOutlook::start`].
#[derive(Debug)]
pub struct MockOutlook;

/// A running mock Outlook/Graph server. Cheap to clone; stops on
/// [`MockOutlookHandle::shutdown`] or when the last clone is dropped. Keeps its emulator alive.
#[derive(Clone)]
pub struct MockOutlookHandle {
    inner: Arc<OutlookInner>,
}

impl std::fmt::Debug for MockOutlookHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockOutlookHandle")
            .field("base_url", &self.inner.base_url)
            .finish_non_exhaustive()
    }
}

struct OutlookInner {
    state: Arc<OutlookState>,
    server: ServerTask,
    base_url: String,
}

struct OutlookState {
    emulator: EmulatorHandle,
    requests: Mutex<Vec<RecordedRequest>>,
    fail_next_401: AtomicU64,
}

/// Which API a path belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Outlook,
    Graph,
}

/// Whose mailbox a path names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mailbox {
    Me,
    User(String),
}

/// Why a request is refused.
struct Refusal {
    status: StatusCode,
    diagnostics: Option<String>,
    code: &'static str,
    message: String,
}

impl Refusal {
    fn unauthorized(diagnostics: Option<String>, graph_message: &str) -> Self {
        Refusal {
            status: StatusCode::UNAUTHORIZED,
            diagnostics,
            code: "InvalidAuthenticationToken",
            message: graph_message.to_string(),
        }
    }

    fn forbidden(diagnostics: String) -> Self {
        Refusal {
            status: StatusCode::FORBIDDEN,
            diagnostics: Some(diagnostics),
            code: "ErrorAccessDenied",
            message: "Access is denied. Check credentials and try again.".to_string(),
        }
    }
}

fn diag(code: u32, reason: &str, category: &str) -> String {
    format!("{code};reason=\"{reason}\";error_category=\"{category}\"")
}

impl MockOutlook {
    /// Binds `listen` (port 0 picks a free port), then serves on the current tokio runtime,
    /// verifying tokens against `emulator`'s keys.
    pub async fn start(
        listen: SocketAddr,
        emulator: EmulatorHandle,
    ) -> Result<MockOutlookHandle, EmulatorError> {
        let state = Arc::new(OutlookState {
            emulator,
            requests: Mutex::new(Vec::new()),
            fail_next_401: AtomicU64::new(0),
        });
        let router_state = state.clone();
        let server = ServerTask::spawn(listen, "mock-outlook", move |_| {
            Router::new().fallback(serve).with_state(router_state)
        })
        .await?;
        let base_url = base_url(server.addr());
        Ok(MockOutlookHandle {
            inner: Arc::new(OutlookInner {
                state,
                server,
                base_url,
            }),
        })
    }
}

impl MockOutlookHandle {
    /// `http://127.0.0.1:PORT` (use as the upstream of an Outlook exchange route).
    pub fn base_url(&self) -> String {
        self.inner.base_url.clone()
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.server.addr()
    }

    /// Every request received so far (method, path, query, headers), oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.inner.state.requests).clone()
    }

    /// Number of requests received so far.
    pub fn request_count(&self) -> u64 {
        lock(&self.inner.state.requests).len() as u64
    }

    /// Makes the next `n` requests answer 401 (`The token has expired.`) whatever their token,
    /// e.g. to test that the gateway drops a cached app-only token on an upstream 401.
    pub fn fail_next_with_401(&self, n: u64) {
        self.inner.state.fail_next_401.store(n, Ordering::SeqCst);
    }

    /// Stops the server gracefully and waits for it.
    pub async fn shutdown(&self) {
        self.inner.server.shutdown().await;
    }
}

/// Splits a path into (API, mailbox) if it is one of the served message paths.
fn route(path: &str) -> Option<(Api, Mailbox)> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let lit = |s: &str, want: &str| s.eq_ignore_ascii_case(want);
    let user = |id: &str| {
        Mailbox::User(
            percent_encoding::percent_decode_str(id)
                .decode_utf8_lossy()
                .into_owned(),
        )
    };
    match segments.as_slice() {
        [a, v, u, id, m]
            if lit(a, "api") && lit(v, "v2.0") && lit(u, "users") && lit(m, "messages") =>
        {
            Some((Api::Outlook, user(id)))
        }
        [a, v, me, m] if lit(a, "api") && lit(v, "v2.0") && lit(me, "me") && lit(m, "messages") => {
            Some((Api::Outlook, Mailbox::Me))
        }
        [v, u, id, m] if lit(v, "v1.0") && lit(u, "users") && lit(m, "messages") => {
            Some((Api::Graph, user(id)))
        }
        [v, me, m] if lit(v, "v1.0") && lit(me, "me") && lit(m, "messages") => {
            Some((Api::Graph, Mailbox::Me))
        }
        _ => None,
    }
}

async fn serve(State(state): State<Arc<OutlookState>>, req: Request) -> Response {
    lock(&state.requests).push(RecordedRequest::from_parts(
        req.method(),
        req.uri(),
        req.version(),
        req.headers(),
    ));
    let headers = req.headers().clone();
    let api = if req.uri().path().to_ascii_lowercase().starts_with("/api/") {
        Api::Outlook
    } else {
        Api::Graph
    };
    let result = handle(&state, req.method(), req.uri().path(), &headers);
    let mut response = match result {
        Ok(body) => {
            let mut response = (StatusCode::OK, Json(body)).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8",
                ),
            );
            response
                .headers_mut()
                .insert("odata-version", HeaderValue::from_static("4.0"));
            response
        }
        Err(refusal) => render(api, refusal),
    };
    let request_id = new_guid();
    let out = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        out.insert("request-id", v);
    }
    let echo = headers
        .get("return-client-request-id")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    if echo {
        if let Some(v) = headers.get("client-request-id") {
            out.insert("client-request-id", v.clone());
        }
    }
    response
}

fn render(api: Api, refusal: Refusal) -> Response {
    let mut response = match (api, refusal.status) {
        // Exchange answers authentication failures on Outlook REST with an empty body.
        (Api::Outlook, StatusCode::UNAUTHORIZED) => refusal.status.into_response(),
        _ => {
            let mut error = json!({ "code": refusal.code, "message": refusal.message });
            if api == Api::Graph {
                error["innerError"] = json!({ "date": iso_timestamp(unix_now()) });
            }
            (refusal.status, Json(json!({ "error": error }))).into_response()
        }
    };
    let out = response.headers_mut();
    if let Some(d) = refusal
        .diagnostics
        .and_then(|d| HeaderValue::from_str(&d).ok())
    {
        out.insert("x-ms-diagnostics", d);
    }
    if refusal.status == StatusCode::UNAUTHORIZED {
        let challenge = match api {
            Api::Outlook => OUTLOOK_CHALLENGE,
            Api::Graph => GRAPH_CHALLENGE,
        };
        out.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
    }
    response
}

fn handle(
    state: &OutlookState,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Result<Value, Refusal> {
    let forced = state
        .fail_next_401
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if forced {
        return Err(Refusal::unauthorized(
            Some(diag(2_000_001, "The token has expired.", "invalid_token")),
            "Access token has expired or is not yet valid.",
        ));
    }
    let Some((api, mailbox)) = route(path) else {
        return Err(Refusal {
            status: StatusCode::NOT_FOUND,
            diagnostics: None,
            code: "ResourceNotFound",
            message: format!("Resource not found for the segment '{path}'."),
        });
    };
    if method != Method::GET && method != Method::HEAD {
        return Err(Refusal {
            status: StatusCode::METHOD_NOT_ALLOWED,
            diagnostics: None,
            code: "ErrorInvalidRequest",
            message: format!("The OData request is not supported: {method} is not allowed here."),
        });
    }
    let token =
        bearer(headers).ok_or_else(|| Refusal::unauthorized(None, "Access token is empty."))?;
    let claims = verify(state, token)?;
    authorize(api, &mailbox, &claims)?;
    let owner = match &mailbox {
        Mailbox::User(id) => id.clone(),
        Mailbox::Me => ["upn", "preferred_username", "oid"]
            .iter()
            .find_map(|c| claims.get(*c).and_then(Value::as_str))
            .unwrap_or("me")
            .to_string(),
    };
    Ok(messages(api, &owner))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Signature, time, audience-independent checks; returns the claims.
fn verify(state: &OutlookState, token: &str) -> Result<Map<String, Value>, Refusal> {
    let unparsable = || {
        Refusal::unauthorized(
            Some(diag(
                2_000_001,
                "OAuth token submitted with the request cannot be parsed.",
                "invalid_token",
            )),
            "IDX14100: JWT is not well formed.",
        )
    };
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(unparsable());
    };
    let header: Map<String, Value> = b64url_decode(h)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(unparsable)?;
    let claims: Map<String, Value> = b64url_decode(c)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(unparsable)?;
    let bad_signature = || {
        Refusal::unauthorized(
            Some(diag(
                2_000_000,
                "The token has an invalid signature.",
                "invalid_signature",
            )),
            "Access token validation failure.",
        )
    };
    if header.get("alg").and_then(Value::as_str) != Some("RS256") {
        return Err(bad_signature());
    }
    let kid = header
        .get("kid")
        .or_else(|| header.get("x5t"))
        .and_then(Value::as_str)
        .ok_or_else(bad_signature)?;
    let key = state
        .emulator
        .keys()
        .into_iter()
        .find(|k| k.kid() == kid)
        .ok_or_else(bad_signature)?;
    let signing_input = format!("{h}.{c}");
    let valid = !s.is_empty()
        && jsonwebtoken::crypto::verify(
            s,
            signing_input.as_bytes(),
            &key.decoding_key(),
            Algorithm::RS256,
        )
        .unwrap_or(false);
    if !valid {
        return Err(bad_signature());
    }
    let now = unix_now();
    let number = |name: &str| {
        claims
            .get(name)
            .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
    };
    let expired = number("exp").is_none_or(|exp| exp + SKEW_SECS < now);
    if expired {
        return Err(Refusal::unauthorized(
            Some(diag(2_000_001, "The token has expired.", "invalid_token")),
            "Access token has expired or is not yet valid.",
        ));
    }
    if number("nbf").is_some_and(|nbf| nbf - SKEW_SECS > now) {
        return Err(Refusal::unauthorized(
            Some(diag(
                2_000_001,
                "The token is not yet valid.",
                "invalid_token",
            )),
            "Access token has expired or is not yet valid.",
        ));
    }
    Ok(claims)
}

fn claim_str<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    claims.get(name).and_then(Value::as_str)
}

/// Audience, tenant, token kind, strength and permission checks.
fn authorize(api: Api, mailbox: &Mailbox, claims: &Map<String, Value>) -> Result<(), Refusal> {
    check_audience(api, claims)?;
    check_tenant(claims)?;
    let roles: Option<Vec<&str>> = claims
        .get("roles")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect());
    let scopes: Option<Vec<&str>> =
        claim_str(claims, "scp").map(|s| s.split_whitespace().collect());
    let app_only = claim_str(claims, "idtyp") == Some("app")
        || (claims.get("idtyp").is_none() && roles.is_some() && scopes.is_none());
    if app_only {
        authorize_app(api, mailbox, claims, roles)
    } else {
        authorize_user(mailbox, claims, scopes)
    }
}

/// `aud` is the API's resource id.
fn check_audience(api: Api, claims: &Map<String, Value>) -> Result<(), Refusal> {
    let aud_values: Vec<&str> = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let accepted: &[&str] = match api {
        Api::Outlook => &[OUTLOOK_RESOURCE, "https://outlook.office.com"],
        Api::Graph => &[GRAPH_RESOURCE, GRAPH_APP_ID],
    };
    let aud_ok = aud_values.iter().any(|aud| {
        let aud = aud.trim_end_matches('/');
        accepted.iter().any(|a| a.eq_ignore_ascii_case(aud))
    });
    if !aud_ok {
        let shown = aud_values.join(",");
        return Err(Refusal::unauthorized(
            Some(diag(
                2_000_003,
                &format!("The audience claim value is invalid '{shown}'."),
                "invalid_resource",
            )),
            "Access token validation failure. Invalid audience.",
        ));
    }
    Ok(())
}

/// `tid` is a tenant GUID.
fn check_tenant(claims: &Map<String, Value>) -> Result<(), Refusal> {
    let tid = claim_str(claims, "tid").unwrap_or("");
    if !is_guid(tid) {
        return Err(Refusal::unauthorized(
            Some(diag(
                2_000_004,
                &format!("The tenant for tenant guid '{tid}' does not exist."),
                "invalid_tenant",
            )),
            "Access token validation failure. Invalid tenant.",
        ));
    }
    Ok(())
}

/// `Mail.Read` or `Mail.ReadWrite` is among the permissions.
fn mail_permission(list: &[&str]) -> bool {
    list.iter()
        .any(|p| *p == "Mail.Read" || *p == "Mail.ReadWrite")
}

fn not_enough_scope() -> Refusal {
    Refusal::forbidden(diag(
        2_000_008,
        "The token contains not enough scope to make this call.",
        "invalid_grant",
    ))
}

/// An app-only token: not on `/me`, strong enough for the API, with a mail app role.
fn authorize_app(
    api: Api,
    mailbox: &Mailbox,
    claims: &Map<String, Value>,
    roles: Option<Vec<&str>>,
) -> Result<(), Refusal> {
    if *mailbox == Mailbox::Me {
        return Err(match api {
            Api::Outlook => Refusal::unauthorized(
                Some(diag(
                    2_000_001,
                    "No applicable user context claims found.",
                    "invalid_token",
                )),
                "",
            ),
            Api::Graph => Refusal {
                status: StatusCode::BAD_REQUEST,
                diagnostics: None,
                code: "BadRequest",
                message: "/me request is only valid with delegated authentication flow."
                    .to_string(),
            },
        });
    }
    let strength = ["appidacr", "azpacr"]
        .iter()
        .find_map(|c| claims.get(*c))
        .map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .unwrap_or_else(|| "0".to_string());
    let required = match api {
        Api::Outlook => 2,
        Api::Graph => 1,
    };
    if strength.parse::<u8>().map_or(true, |s| s < required) {
        return Err(Refusal::unauthorized(
            Some(diag(
                2_000_010,
                &format!(
                    "The access token is acquired using an authentication method that is too \
                     weak to allow access for this application. Presented auth strength was \
                     {strength}, required is {required}."
                ),
                "insufficient_auth_strength",
            )),
            "Access token validation failure.",
        ));
    }
    let Some(roles) = roles else {
        return Err(Refusal::unauthorized(
            Some(diag(
                2_000_001,
                "The token is missing the claim type 'roles'.",
                "invalid_token",
            )),
            "Either scp or roles claim need to be present in the token.",
        ));
    };
    if !mail_permission(&roles) {
        return Err(not_enough_scope());
    }
    Ok(())
}

/// A user token: a mail scope, and the caller's own mailbox unless a `*.Shared` scope.
fn authorize_user(
    mailbox: &Mailbox,
    claims: &Map<String, Value>,
    scopes: Option<Vec<&str>>,
) -> Result<(), Refusal> {
    let Some(scopes) = scopes else {
        return Err(Refusal::unauthorized(
            Some(diag(
                2_000_001,
                "The token is missing the claim type 'scp'.",
                "invalid_token",
            )),
            "Either scp or roles claim need to be present in the token.",
        ));
    };
    let shared = scopes
        .iter()
        .any(|s| *s == "Mail.Read.Shared" || *s == "Mail.ReadWrite.Shared");
    if !mail_permission(&scopes) && !shared {
        return Err(not_enough_scope());
    }
    if let Mailbox::User(id) = mailbox {
        let own = ["oid", "upn", "preferred_username", "unique_name"]
            .iter()
            .filter_map(|c| claim_str(claims, c))
            .any(|v| v.eq_ignore_ascii_case(id));
        if !own && !shared {
            return Err(Refusal::forbidden(diag(
                2_000_008,
                "The call should access the mailbox specified in the oauth token.",
                "invalid_grant",
            )));
        }
    }
    Ok(())
}

/// A small, deterministic inbox for `owner`.
fn messages(api: Api, owner: &str) -> Value {
    let subjects = ["Quarterly report", "Lunch on Friday?", "Your build passed"];
    let items: Vec<Value> = subjects
        .iter()
        .enumerate()
        .map(|(i, subject)| {
            let id = derived_guid(&["message", owner, &i.to_string()]);
            let created = iso_timestamp(1_700_000_000 + 3600 * i as i64);
            let from = format!("sender{i}@contoso.example");
            match api {
                Api::Outlook => json!({
                    "@odata.id": format!("https://outlook.office365.com/api/v2.0/Users('{owner}')/Messages('{id}')"),
                    "@odata.etag": format!("W/\"{}\"", derived_guid(&["etag", &id])),
                    "Id": id,
                    "CreatedDateTime": created,
                    "Subject": format!("{subject} ({owner})"),
                    "BodyPreview": format!("Message {i} in the mailbox of {owner}."),
                    "From": { "EmailAddress": { "Name": format!("Sender {i}"), "Address": from } },
                    "IsRead": i % 2 == 0,
                }),
                Api::Graph => json!({
                    "@odata.etag": format!("W/\"{}\"", derived_guid(&["etag", &id])),
                    "id": id,
                    "createdDateTime": created,
                    "subject": format!("{subject} ({owner})"),
                    "bodyPreview": format!("Message {i} in the mailbox of {owner}."),
                    "from": { "emailAddress": { "name": format!("Sender {i}"), "address": from } },
                    "isRead": i % 2 == 0,
                }),
            }
        })
        .collect();
    match api {
        Api::Outlook => json!({
            "@odata.context": format!("https://outlook.office365.com/api/v2.0/$metadata#Users('{owner}')/Messages"),
            "value": items,
        }),
        Api::Graph => json!({
            "@odata.context": format!("https://graph.microsoft.com/v1.0/$metadata#users('{owner}')/messages"),
            "value": items,
        }),
    }
}
