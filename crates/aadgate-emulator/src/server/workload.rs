//! Workload identity federation on the emulator's side: the apps' federated identity
//! credentials (handle methods and a control endpoint shaped like Microsoft Graph's
//! `federatedIdentityCredentials`), and a Kubernetes-style service-account token issuer whose
//! tokens such a credential can trust — what AKS workload identity mounts into a pod as
//! `AZURE_FEDERATED_TOKEN_FILE`.
//!
//! The service-account issuer is `{base}/k8s` ([`EmulatorHandle::service_account_issuer`]). Like
//! a cluster's OIDC issuer (kube-apiserver's `--service-account-issuer`) it serves
//! `GET {base}/k8s/.well-known/openid-configuration` and its `jwks_uri`,
//! `GET {base}/k8s/openid/v1/jwks`, and signs with a key of its own (made on first use). Its
//! tokens carry `iss` = the issuer, `sub` = `system:serviceaccount:<namespace>:<name>`,
//! `aud` = `["api://AzureADTokenExchange"]`, `iat`/`nbf` = now, `exp` = now + 1 hour and the
//! `kubernetes.io` claim, as projected service-account tokens do.
//!
//! | path | what it does | answer |
//! |---|---|---|
//! | `POST /_emulator/apps/{client_id}/federatedIdentityCredentials`, `{"name", "issuer", "subject", "audiences"}` (Graph's shape; `name` and `audiences` optional) | adds a federated credential to a registered app | `201` with the credential, `404` for an unknown app |
//! | `GET /_emulator/apps/{client_id}/federatedIdentityCredentials` | the app's credentials, `{"value": [...]}` | `200`, `404` |
//! | `POST /_emulator/k8s/api/v1/namespaces/{ns}/serviceaccounts/{name}/token`, optional `{"spec": {"audiences": [..], "expirationSeconds": N}}` (Kubernetes' TokenRequest) | mints a service-account token | `201`, `{"kind": "TokenRequest", "status": {"token", "expirationTimestamp"}}` |

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::EmulatorHandle;
use crate::mint::sign_compact;
use crate::serve::{read, write};
use crate::state::{EmuState, FederatedCredential};
use crate::token_endpoint::AadstsError;
use crate::{iso_timestamp, unix_now, EmulatorError, TOKEN_EXCHANGE_AUDIENCE};

/// Lifetime of service-account tokens minted without one, seconds (an hour, as AKS projects
/// them).
pub const SERVICE_ACCOUNT_TOKEN_LIFETIME_SECS: i64 = 3600;

/// Mints a service-account token of `state`'s issuer.
fn mint_service_account(
    state: &EmuState,
    namespace: &str,
    name: &str,
    audiences: &[String],
    lifetime_secs: i64,
) -> Result<(String, i64), EmulatorError> {
    if namespace.is_empty() || name.is_empty() || namespace.contains(':') || name.contains(':') {
        return Err(EmulatorError::Invalid(format!(
            "service account '{namespace}/{name}': namespace and name must be non-empty and \
             without ':'"
        )));
    }
    let key = state.service_account_key()?;
    let now = unix_now();
    let exp = now.saturating_add(lifetime_secs);
    let header = Map::from_iter([
        ("alg".to_string(), Value::from("RS256")),
        ("kid".to_string(), Value::from(key.kid())),
    ]);
    let uid = crate::derived_guid(&["service account", namespace, name]);
    let claims = Map::from_iter([
        ("aud".to_string(), Value::from(audiences.to_vec())),
        ("exp".to_string(), Value::from(exp)),
        ("iat".to_string(), Value::from(now)),
        ("nbf".to_string(), Value::from(now)),
        (
            "iss".to_string(),
            Value::from(state.service_account_issuer()),
        ),
        ("jti".to_string(), Value::from(crate::new_guid())),
        (
            "kubernetes.io".to_string(),
            json!({
                "namespace": namespace,
                "serviceaccount": { "name": name, "uid": uid },
            }),
        ),
        (
            "sub".to_string(),
            Value::from(format!("system:serviceaccount:{namespace}:{name}")),
        ),
    ]);
    Ok((sign_compact(key, &header, &claims)?, exp))
}

impl EmulatorHandle {
    /// `{base}/k8s`: the issuer of the service-account tokens
    /// [`EmulatorHandle::mint_service_account_token`] mints (what an app's federated credential
    /// names to trust them).
    pub fn service_account_issuer(&self) -> String {
        self.state().service_account_issuer()
    }

    /// A Kubernetes-style service-account token for `namespace`/`name`: `sub` =
    /// `system:serviceaccount:<namespace>:<name>`, `aud` = `api://AzureADTokenExchange`, valid
    /// for an hour. Fails for an empty name or one with `:`.
    pub fn mint_service_account_token(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<String, EmulatorError> {
        self.mint_service_account_token_for(
            namespace,
            name,
            TOKEN_EXCHANGE_AUDIENCE,
            SERVICE_ACCOUNT_TOKEN_LIFETIME_SECS,
        )
    }

    /// Like [`EmulatorHandle::mint_service_account_token`] with another audience and lifetime
    /// (negative: already expired).
    pub fn mint_service_account_token_for(
        &self,
        namespace: &str,
        name: &str,
        audience: &str,
        lifetime_secs: i64,
    ) -> Result<String, EmulatorError> {
        mint_service_account(
            self.state(),
            namespace,
            name,
            &[audience.to_string()],
            lifetime_secs,
        )
        .map(|(token, _)| token)
    }

    /// Requests received by the service-account issuer's metadata and JWKS endpoints.
    pub fn service_account_fetch_count(&self) -> u64 {
        self.state().service_account_fetches.load(Ordering::SeqCst)
    }

    /// Documents fetched from external issuers (metadata and JWKS each count) to check
    /// federated assertions; cached keys are not fetched again.
    pub fn federation_fetch_count(&self) -> u64 {
        self.state().federation_fetches.load(Ordering::SeqCst)
    }

    /// Adds a federated identity credential to the registered app `client_id`; `false` when
    /// there is no such app. A credential with the same name is replaced.
    pub fn add_federated_credential(
        &self,
        client_id: &str,
        credential: FederatedCredential,
    ) -> bool {
        let mut dir = write(&self.state().directory);
        let Some(app) = dir.apps.get_mut(&client_id.to_ascii_lowercase()) else {
            return false;
        };
        app.federated.retain(|f| f.name != credential.name);
        app.federated.push(credential);
        true
    }

    /// The federated identity credentials of the app `client_id` (empty for an unknown app).
    pub fn federated_credentials(&self, client_id: &str) -> Vec<FederatedCredential> {
        read(&self.state().directory)
            .apps
            .get(&client_id.to_ascii_lowercase())
            .map(|app| app.federated.clone())
            .unwrap_or_default()
    }
}

/// `GET /k8s/.well-known/openid-configuration`, as kube-apiserver serves it.
pub(super) async fn sa_metadata(State(state): State<Arc<EmuState>>) -> Response {
    state.service_account_fetches.fetch_add(1, Ordering::SeqCst);
    let issuer = state.service_account_issuer();
    Json(json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/openid/v1/jwks"),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    }))
    .into_response()
}

/// `GET /k8s/openid/v1/jwks`.
pub(super) async fn sa_jwks(State(state): State<Arc<EmuState>>) -> Response {
    state.service_account_fetches.fetch_add(1, Ordering::SeqCst);
    match state.service_account_key() {
        Ok(key) => Json(json!({
            "keys": [{
                "use": "sig",
                "kty": "RSA",
                "kid": key.kid(),
                "alg": "RS256",
                "n": key.n(),
                "e": key.e(),
            }]
        }))
        .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// `POST /_emulator/k8s/api/v1/namespaces/{ns}/serviceaccounts/{name}/token`.
pub(super) async fn sa_token_request(
    State(state): State<Arc<EmuState>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = (|| {
        let body = body_object(&body)?;
        let spec = body.get("spec").and_then(Value::as_object);
        let audiences = match spec.and_then(|s| s.get("audiences")) {
            None | Some(Value::Null) => vec![TOKEN_EXCHANGE_AUDIENCE.to_string()],
            Some(Value::Array(items)) if !items.is_empty() => items
                .iter()
                .map(|a| a.as_str().map(str::to_string))
                .collect::<Option<Vec<String>>>()
                .ok_or_else(|| bad_body("\"spec.audiences\" must be an array of strings"))?,
            Some(_) => return Err(bad_body("\"spec.audiences\" must be an array of strings")),
        };
        let lifetime = match spec.and_then(|s| s.get("expirationSeconds")) {
            None | Some(Value::Null) => SERVICE_ACCOUNT_TOKEN_LIFETIME_SECS,
            Some(v) => v
                .as_i64()
                .ok_or_else(|| bad_body("\"spec.expirationSeconds\" must be an integer"))?,
        };
        mint_service_account(&state, &namespace, &name, &audiences, lifetime)
            .map_err(|e| bad_body(&e.to_string()))
    })();
    match result {
        Ok((token, exp)) => (
            StatusCode::CREATED,
            Json(json!({
                "kind": "TokenRequest",
                "apiVersion": "authentication.k8s.io/v1",
                "status": {
                    "token": token,
                    "expirationTimestamp": format!("{}Z", &iso_timestamp(exp)[..19]),
                },
            })),
        )
            .into_response(),
        Err(error) => error.into_response_for(&headers),
    }
}

/// `POST /_emulator/apps/{client_id}/federatedIdentityCredentials`.
pub(super) async fn add_credential(
    State(state): State<Arc<EmuState>>,
    Path(client_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed = (|| {
        let body = body_object(&body)?;
        let text = |name: &str| match body.get(name) {
            Some(Value::String(v)) if !v.trim().is_empty() => Ok(Some(v.trim().to_string())),
            None | Some(Value::Null) => Ok(None),
            Some(_) => Err(bad_body(&format!("\"{name}\" must be a string"))),
        };
        let issuer = text("issuer")?.ok_or_else(|| bad_body("\"issuer\" is required"))?;
        let subject = text("subject")?.ok_or_else(|| bad_body("\"subject\" is required"))?;
        let mut credential = FederatedCredential::new(&issuer, &subject);
        if let Some(name) = text("name")? {
            credential.name = name;
        }
        match body.get("audiences") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) if !items.is_empty() => {
                credential.audiences = items
                    .iter()
                    .map(|a| a.as_str().map(str::to_string))
                    .collect::<Option<Vec<String>>>()
                    .ok_or_else(|| bad_body("\"audiences\" must be an array of strings"))?;
            }
            Some(_) => return Err(bad_body("\"audiences\" must be an array of strings")),
        }
        Ok(credential)
    })();
    let credential = match parsed {
        Ok(credential) => credential,
        Err(error) => return error.into_response_for(&headers),
    };
    let mut dir = write(&state.directory);
    let Some(app) = dir.apps.get_mut(&client_id.to_ascii_lowercase()) else {
        return app_not_found(&client_id);
    };
    app.federated.retain(|f| f.name != credential.name);
    app.federated.push(credential.clone());
    (StatusCode::CREATED, Json(credential_json(&credential))).into_response()
}

/// `GET /_emulator/apps/{client_id}/federatedIdentityCredentials`.
pub(super) async fn list_credentials(
    State(state): State<Arc<EmuState>>,
    Path(client_id): Path<String>,
) -> Response {
    let dir = read(&state.directory);
    match dir.apps.get(&client_id.to_ascii_lowercase()) {
        Some(app) => Json(json!({
            "value": app.federated.iter().map(credential_json).collect::<Vec<_>>()
        }))
        .into_response(),
        None => app_not_found(&client_id),
    }
}

fn credential_json(credential: &FederatedCredential) -> Value {
    json!({
        "name": credential.name,
        "issuer": credential.issuer,
        "subject": credential.subject,
        "audiences": credential.audiences,
    })
}

fn app_not_found(client_id: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({
            "error": "not_found",
            "error_description": format!("No app '{client_id}' is registered with the emulator."),
        })),
    )
        .into_response()
}

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
