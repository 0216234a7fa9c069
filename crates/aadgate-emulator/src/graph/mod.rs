//! A mock of Microsoft Graph v1.0 for app-only calls (and delegated ones), with Graph's token
//! checks, error bodies and continuous access evaluation (SPEC sections 5, 7 and 12).
//!
//! Serves, with path segments case-insensitive as on Graph:
//!
//! | path | answer |
//! |---|---|
//! | `GET /v1.0/users/{id}` | the user: `id`, `displayName`, `mail`, `userPrincipalName`, … |
//! | `GET /v1.0/users/{id}/messages` | `{"@odata.context", "value": [three messages]}` |
//! | `POST /v1.0/users/{id}/sendMail` | `202` with no body, for `{"message": {…}, "saveToSentItems": …}` |
//! | `GET /v1.0/me`, `/v1.0/me/messages`, `POST /v1.0/me/sendMail` | the signed-in user's; `400` with an app-only token |
//!
//! Every `{id}` that is a GUID or a UPN is a user of the token's tenant, with data derived from
//! the id (the same on every call); another id gets `404`. The bearer token is checked as Graph
//! does, against the emulator's current keys in process (no JWKS fetch), in this order, each
//! failure a `401` with `InvalidAuthenticationToken`, Graph's `WWW-Authenticate: Bearer
//! realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize",
//! client_id="00000003-0000-0000-c000-000000000000"` and the message shown:
//!
//! | check | message |
//! |---|---|
//! | a bearer token is present | `Access token is empty.` |
//! | it is a JWS compact token | `CompactToken parsing failed with error code: 80049217` |
//! | RS256, known `kid`, valid signature | `Signature is invalid.` |
//! | `exp` / `nbf` (5 minutes of skew) | `Lifetime validation failed, the token is expired.` (or `… is not yet valid.`) |
//! | `aud` is `https://graph.microsoft.com` or `00000003-0000-0000-c000-000000000000` | `Access token validation failure. Invalid audience.` |
//! | `tid` is a tenant GUID and `iss` that tenant's issuer | `Access token validation failure. Invalid issuer.` |
//! | CAE: see below | `Continuous access evaluation resulted in challenge with result: InteractionRequired and code: TokenIssuedBeforeRevocationTimestamp` |
//! | `roles` (app-only) or `scp` (delegated) present | `Either scp or roles claim need to be present in the token.` |
//!
//! Then the path: `/me` with an app-only token is `400 BadRequest` `/me request is only valid
//! with delegated authentication flow.`; a missing permission is `403`, with
//! `Authorization_RequestDenied` (`Insufficient privileges to complete the operation.`) for
//! users and `ErrorAccessDenied` (`Access is denied. Check credentials and try again.`) for
//! messages and sendMail — app-only tokens need `User.Read.All` (or `Directory.Read.All`, …),
//! `Mail.Read`/`Mail.ReadWrite`, `Mail.Send` (the full table is in `route.rs`). An unknown
//! segment is `400` `Resource not found for the segment '…'.`, another version than `v1.0` is
//! `400` `Invalid version: …` (checked before the token). sendMail bodies are checked as Graph
//! does (`Empty Payload. JSON content expected.`, `ErrorInvalidParameter` without `message`,
//! `ErrorInvalidRecipients` without a usable recipient).
//!
//! Error bodies are Graph's: `{"error": {"code", "message", "innerError": {"date",
//! "request-id", "client-request-id"}}}` (<https://learn.microsoft.com/graph/errors>). Every
//! answer carries a `request-id` GUID and a `Date`; `client-request-id` is echoed when the
//! request has `return-client-request-id: true`. The empty-token, expiry, audience, `/me`,
//! 403 and CAE messages are ones Graph is seen answering; the others are best effort.
//!
//! **Continuous access evaluation.** A token whose `xms_cc` lists `cp1` (a CAE token, see
//! `cae.rs`) is refused when its app (`appid`/`azp`) had a revocation event in its tenant
//! after the token was issued: the app's service principal was removed from the tenant
//! (consent revoked on the emulator, [`EmulatorHandle::revoke_consent`] or its control
//! endpoint), or a critical event was raised with [`MockGraphHandle::revoke_sessions`]. The
//! answer is Graph's claims challenge:
//!
//! ```text
//! 401 Unauthorized
//! WWW-Authenticate: Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize",
//!   client_id="00000003-0000-0000-c000-000000000000", error_description="Continuous access evaluation resulted in
//!   challenge with result: InteractionRequired and code: TokenIssuedBeforeRevocationTimestamp",
//!   error="insufficient_claims", claims="eyJhY2Nlc3NfdG9rZW4iOnsibmJmIjp7ImVzc2VudGlhbCI6dHJ1ZSwgInZhbHVlIjoi…"
//! ```
//!
//! where `claims` is base64 of `{"access_token":{"nbf":{"essential":true, "value":"<unix
//! seconds>"}}}`: a token whose `nbf` reaches that value — the first whole second after the
//! event — passes again. Tokens without `cp1` keep working until they expire, as on Graph.
//! With [`MockGraphHandle::send_pop_challenges`] every 401 also carries the `PoP` challenge
//! Graph sends beside the bearer one, as a second `WWW-Authenticate` value before it.

mod cae;
mod data;
mod error;
mod route;
#[cfg(test)]
mod tests;
mod token;

pub use data::SentMail;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::{json, Value};

use self::data::Person;
use self::error::GraphError;
use self::route::{Resource, Subject};
use self::token::{Caller, TrustedKey};
use crate::serve::{base_url, lock, RecordedRequest, ServerTask};
use crate::server::EmulatorHandle;
use crate::{b64url, iso_timestamp, new_guid, unix_now, EmulatorError, GRAPH_APP_ID};

/// Largest sendMail body read, bytes (Graph's limit for a JSON request).
const MAX_BODY: usize = 4 * 1024 * 1024;

/// Entry point of the mock Graph; see [`MockGraph::start`].
#[derive(Debug)]
pub struct MockGraph;

/// A running mock Graph. Cheap to clone; stops on [`MockGraphHandle::shutdown`] or when the
/// last clone is dropped. Keeps its emulator alive.
#[derive(Clone)]
pub struct MockGraphHandle {
    inner: Arc<GraphInner>,
}

impl std::fmt::Debug for MockGraphHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockGraphHandle")
            .field("base_url", &self.inner.base_url)
            .finish_non_exhaustive()
    }
}

struct GraphInner {
    state: Arc<GraphState>,
    server: ServerTask,
    base_url: String,
}

struct GraphState {
    emulator: EmulatorHandle,
    requests: Mutex<Vec<RecordedRequest>>,
    sent: Mutex<Vec<SentMail>>,
    revocations: cae::Revocations,
    challenges: AtomicU64,
    fail_next_401: AtomicU64,
    pop_challenges: AtomicBool,
}

impl MockGraph {
    /// Binds `listen` (port 0 picks a free port), then serves on the current tokio runtime,
    /// verifying tokens against `emulator`'s keys and reading its directory for revoked
    /// consents. Fails when the address cannot be bound.
    pub async fn start(
        listen: SocketAddr,
        emulator: EmulatorHandle,
    ) -> Result<MockGraphHandle, EmulatorError> {
        let state = Arc::new(GraphState {
            emulator,
            requests: Mutex::new(Vec::new()),
            sent: Mutex::new(Vec::new()),
            revocations: cae::Revocations::default(),
            challenges: AtomicU64::new(0),
            fail_next_401: AtomicU64::new(0),
            pop_challenges: AtomicBool::new(false),
        });
        let router_state = state.clone();
        let server = ServerTask::spawn(listen, "mock-graph", move |_| {
            Router::new().fallback(serve).with_state(router_state)
        })
        .await?;
        let base_url = base_url(server.addr());
        Ok(MockGraphHandle {
            inner: Arc::new(GraphInner {
                state,
                server,
                base_url,
            }),
        })
    }
}

impl MockGraphHandle {
    fn state(&self) -> &GraphState {
        &self.inner.state
    }

    /// `http://127.0.0.1:PORT`, standing for `https://graph.microsoft.com` (use as the upstream
    /// of a Graph exchange route; paths start with `/v1.0`).
    pub fn base_url(&self) -> String {
        self.inner.base_url.clone()
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.server.addr()
    }

    /// Every request received so far (method, path, query, headers), oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state().requests).clone()
    }

    /// Number of requests received so far.
    pub fn request_count(&self) -> u64 {
        lock(&self.state().requests).len() as u64
    }

    /// Every message accepted by `sendMail` so far, oldest first.
    pub fn sent_mail(&self) -> Vec<SentMail> {
        lock(&self.state().sent).clone()
    }

    /// Number of CAE claims challenges answered so far.
    pub fn challenge_count(&self) -> u64 {
        self.state().challenges.load(Ordering::SeqCst)
    }

    /// Raises a critical event (a password reset, an admin revoking sessions) for the app
    /// `client_id` in `tenant`, now, without touching its consent: from now on the app's CAE
    /// tokens (`xms_cc` with `cp1`) issued before this moment get the claims challenge, while
    /// its tokens without `cp1` keep working. Returns the event's time.
    pub fn revoke_sessions(&self, tenant: &str, client_id: &str) -> SystemTime {
        let now = SystemTime::now();
        self.state().revocations.record(tenant, client_id, now);
        now
    }

    /// The `nbf` (Unix seconds) a CAE token of `client_id` in `tenant` needs to pass — the
    /// value the claims challenge asks for — given the latest revocation event (raised here or
    /// a consent removed on the emulator); `None` when there was none.
    pub fn required_not_before(&self, tenant: &str, client_id: &str) -> Option<i64> {
        self.state()
            .revoked_at(tenant, client_id)
            .map(cae::required_not_before)
    }

    /// Makes the next `n` requests answer 401 (`Lifetime validation failed, the token is
    /// expired.`) whatever their token, e.g. to test that the gateway drops a cached app-only
    /// token on an upstream 401.
    pub fn fail_next_with_401(&self, n: u64) {
        self.state().fail_next_401.store(n, Ordering::SeqCst);
    }

    /// `true` makes every 401 carry, before the `Bearer` challenge, the `PoP` challenge Graph
    /// also sends (`PoP realm="", authorization_uri=…, client_id=…, nonce="…"`) as a second
    /// `WWW-Authenticate` value; `false` (the default) sends the `Bearer` one alone.
    pub fn send_pop_challenges(&self, on: bool) {
        self.state().pop_challenges.store(on, Ordering::SeqCst);
    }

    /// Stops the server gracefully and waits for it.
    pub async fn shutdown(&self) {
        self.inner.server.shutdown().await;
    }
}

impl GraphState {
    /// The latest revocation event for (tenant, app): raised here, or the service principal's
    /// removal from the emulator's directory.
    fn revoked_at(&self, tenant: &str, client_id: &str) -> Option<SystemTime> {
        let raised = self.revocations.latest(tenant, client_id);
        let removed = self.emulator.consent_revoked_at(tenant, client_id);
        raised.max(removed)
    }

    /// `Err` with the claims challenge when `caller` is a CAE token issued before a revocation
    /// event of its app in its tenant.
    fn evaluate(&self, caller: &Caller) -> Result<(), GraphError> {
        if !caller.cae_capable {
            return Ok(());
        }
        let Some(client_id) = &caller.client_id else {
            return Ok(());
        };
        let revoked = self.revoked_at(&caller.tid, client_id);
        match cae::challenge_for(true, caller.not_before, revoked) {
            Some(not_before) => Err(GraphError::ClaimsChallenge { not_before }),
            None => Ok(()),
        }
    }

    fn trusted_keys(&self) -> Vec<TrustedKey> {
        self.emulator
            .keys()
            .into_iter()
            .map(|k| TrustedKey {
                kid: k.kid().to_string(),
                key: k.decoding_key(),
            })
            .collect()
    }
}

/// What a served request answers.
enum Answer {
    /// `200` with a JSON body.
    Json(Value),
    /// `202` with no body (sendMail).
    Accepted,
}

async fn serve(State(state): State<Arc<GraphState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    lock(&state.requests).push(RecordedRequest::from_parts(
        &parts.method,
        &parts.uri,
        parts.version,
        &parts.headers,
    ));
    let request_id = new_guid();
    let sent_client_request_id = parts
        .headers
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut response = match handle(&state, &parts, body).await {
        Ok(Answer::Json(value)) => {
            let mut response = (StatusCode::OK, Json(value)).into_response();
            let out = response.headers_mut();
            out.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8",
                ),
            );
            out.insert("odata-version", HeaderValue::from_static("4.0"));
            response
        }
        Ok(Answer::Accepted) => StatusCode::ACCEPTED.into_response(),
        Err(error) => {
            if matches!(error, GraphError::ClaimsChallenge { .. }) {
                state.challenges.fetch_add(1, Ordering::SeqCst);
            }
            let client_request_id = sent_client_request_id.as_deref().unwrap_or(&request_id);
            let pop = state.pop_challenges.load(Ordering::SeqCst);
            render(&error, &request_id, client_request_id, pop)
        }
    };
    let out = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        out.insert("request-id", v);
    }
    let echo = parts
        .headers
        .get("return-client-request-id")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    if echo {
        if let Some(v) = parts.headers.get("client-request-id") {
            out.insert("client-request-id", v.clone());
        }
    }
    response
}

/// Graph's error answer for `error`.
fn render(error: &GraphError, request_id: &str, client_request_id: &str, pop: bool) -> Response {
    let date = iso_timestamp(unix_now());
    let body = json!({
        "error": {
            "code": error.code(),
            "message": error.message(),
            "innerError": {
                "date": &date[..19],
                "request-id": request_id,
                "client-request-id": client_request_id,
            },
        }
    });
    let mut response = (error.status(), Json(body)).into_response();
    if let Some(challenge) = error.challenge() {
        let out = response.headers_mut();
        if pop {
            let nonce = b64url(new_guid().as_bytes());
            let pop_challenge = format!(
                "PoP realm=\"\", \
                 authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", \
                 client_id=\"{GRAPH_APP_ID}\", nonce=\"{nonce}\""
            );
            if let Ok(v) = HeaderValue::from_str(&pop_challenge) {
                out.append(header::WWW_AUTHENTICATE, v);
            }
        }
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            out.append(header::WWW_AUTHENTICATE, v);
        }
    }
    response
}

/// The checks in order (version, token, CAE, path, permission), then the answer.
async fn handle(state: &GraphState, parts: &Parts, body: Body) -> Result<Answer, GraphError> {
    let path = parts.uri.path();
    route::check_version(path)?;
    let forced = state
        .fail_next_401
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if forced {
        return Err(GraphError::Expired);
    }
    let token = bearer(&parts.headers).ok_or(GraphError::EmptyToken)?;
    let caller = token::verify(token, &state.trusted_keys(), unix_now())?;
    state.evaluate(&caller)?;
    let route = route::parse(path)?;
    if !route.resource.allows(&parts.method) {
        return Err(GraphError::MethodNotAllowed(parts.method.to_string()));
    }
    let (id, own) = match &route.subject {
        Subject::Me if caller.app_only => return Err(GraphError::MeWithAppOnly),
        Subject::Me => (caller.me().ok_or(GraphError::MeWithAppOnly)?, true),
        Subject::User(id) => (id.clone(), caller.is_user(id)),
    };
    route::authorize(&caller, route.resource, own)?;
    let person = signed_in_person(&caller, own).or_else(|| Person::resolve(&caller.tid, &id));
    match route.resource {
        Resource::User => person
            .map(|p| Answer::Json(p.to_json()))
            .ok_or(GraphError::UserNotFound(id)),
        Resource::Messages => person
            .map(|p| Answer::Json(p.messages()))
            .ok_or(GraphError::InvalidMailbox(id)),
        Resource::SendMail => {
            let person = person.ok_or(GraphError::InvalidMailbox(id))?;
            let bytes = axum::body::to_bytes(body, MAX_BODY)
                .await
                .map_err(|_| GraphError::InvalidJson)?;
            let mail = data::parse_send_mail(&bytes)?;
            lock(&state.sent).push(SentMail {
                tenant: caller.tid.clone(),
                mailbox: person.upn,
                client_id: caller.client_id.clone(),
                subject: mail.subject,
                recipients: mail.recipients,
                save_to_sent_items: mail.save_to_sent_items,
                message: mail.message,
            });
            Ok(Answer::Accepted)
        }
    }
}

/// The signed-in user as its token describes it (object id and UPN), when the path names it.
fn signed_in_person(caller: &Caller, own: bool) -> Option<Person> {
    if !own || caller.app_only {
        return None;
    }
    let oid = caller.oid.as_deref()?;
    let upn = caller.me().filter(|name| name.contains('@'))?;
    Person::resolve(&caller.tid, &upn).map(|p| p.with_id(oid))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}
