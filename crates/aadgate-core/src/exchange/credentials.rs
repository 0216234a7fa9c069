//! The credentials of `[exchange.NAME] credentials` (SPEC section 12): each produces the
//! `client_assertion` of one token request.
//!
//! - a certificate signs an assertion (`assertion::sign`);
//! - a federated token file *is* the assertion: its content, read afresh for every request, so
//!   the rotated token (AKS refreshes the projected token file) is always the one sent;
//! - a managed identity's token for the cloud's federated audience (`api://AzureADTokenExchange`
//!   in the public cloud) is the assertion: requested from IMDS, or from `IDENTITY_ENDPOINT` /
//!   `IDENTITY_HEADER` (App Service, Functions, Container Apps), or from
//!   `managed_identity_endpoint`, and kept until five minutes before it expires.
//!
//! Sources: [managed identities' token endpoint](https://learn.microsoft.com/entra/identity/managed-identities-azure-resources/how-to-use-vm-token#get-a-token-using-http),
//! [App Service's](https://learn.microsoft.com/azure/app-service/overview-managed-identity#rest-endpoint-reference),
//! [managed identity as a federated credential](https://learn.microsoft.com/entra/workload-id/workload-identity-federation-config-app-trust-managed-identity).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;

use super::assertion::{self, ClientAssertion};
use crate::config::{Credential, ExchangeSettings};

/// IMDS, the managed-identity endpoint of Azure VMs, VM scale sets and AKS nodes.
pub(super) const IMDS: &str = "http://169.254.169.254";
/// A managed-identity token is used until this long before it expires.
const MI_REFRESH_MARGIN_SECS: i64 = 300;
/// Largest managed-identity answer read, in bytes.
const MAX_MI_RESPONSE_BYTES: usize = 64 * 1024;

/// What the credentials keep between token requests: managed-identity tokens by credential.
pub(super) struct CredentialState {
    http: reqwest::Client,
    timeout: Duration,
    /// Credential index → (token, Unix second from which it is fetched again).
    mi_tokens: Mutex<HashMap<usize, (String, i64)>>,
}

impl CredentialState {
    pub(super) fn new(timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("aadgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        CredentialState {
            http,
            timeout,
            mi_tokens: Mutex::new(HashMap::new()),
        }
    }

    /// The client assertion credential `index` gives for a request to `endpoint` (the
    /// tenant's token endpoint URL), or why its source failed (file unreadable or empty,
    /// managed-identity endpoint unreachable or refusing) — a message without secrets.
    pub(super) async fn assertion(
        &self,
        settings: &ExchangeSettings,
        index: usize,
        endpoint: &str,
    ) -> Result<ClientAssertion, String> {
        match &settings.credentials[index] {
            Credential::Certificate(c) => {
                let cert = settings
                    .certificates
                    .get(*c)
                    .ok_or_else(|| "the certificate is missing".to_string())?;
                assertion::sign(
                    cert,
                    &settings.client_id,
                    endpoint,
                    crate::clock::unix_now(),
                    settings.send_x5c,
                )
                .map_err(|e| format!("certificate {} cannot sign: {e}", cert.cert_path.display()))
            }
            Credential::FederatedTokenFile(path) => read_token_file(path).await,
            Credential::ManagedIdentity {
                client_id,
                endpoint: mi_endpoint,
            } => {
                let now = crate::clock::unix_now();
                if let Some((token, refresh_at)) = self.cached_mi(index) {
                    if now < refresh_at {
                        return Ok(ClientAssertion::from_secret(token));
                    }
                }
                let (token, expires_at) = self
                    .managed_identity_token(
                        client_id.as_deref(),
                        mi_endpoint.as_deref(),
                        &settings.federated_audience,
                        now,
                    )
                    .await?;
                if let Ok(mut cache) = self.mi_tokens.lock() {
                    cache.insert(index, (token.clone(), expires_at - MI_REFRESH_MARGIN_SECS));
                }
                Ok(ClientAssertion::from_secret(token))
            }
        }
    }

    fn cached_mi(&self, index: usize) -> Option<(String, i64)> {
        self.mi_tokens.lock().ok()?.get(&index).cloned()
    }

    /// Forgets a managed-identity token the token endpoint refused (it may have been revoked).
    pub(super) fn forget(&self, index: usize) {
        if let Ok(mut cache) = self.mi_tokens.lock() {
            cache.remove(&index);
        }
    }

    /// A managed identity's token for `audience`, and when it expires (Unix seconds).
    async fn managed_identity_token(
        &self,
        client_id: Option<&str>,
        configured: Option<&str>,
        audience: &str,
        now: i64,
    ) -> Result<(String, i64), String> {
        let app_service = std::env::var("IDENTITY_ENDPOINT")
            .ok()
            .zip(std::env::var("IDENTITY_HEADER").ok())
            .filter(|(e, h)| !e.is_empty() && !h.is_empty());
        // (URL, api-version, the header that proves the caller runs beside the endpoint).
        let (url, api_version, header) = match (configured, app_service) {
            (Some(base), _) => (
                format!("{base}/metadata/identity/oauth2/token"),
                "2018-02-01",
                ("Metadata", "true".to_string()),
            ),
            (None, Some((endpoint, secret))) => {
                (endpoint, "2019-08-01", ("X-IDENTITY-HEADER", secret))
            }
            (None, None) => (
                format!("{IMDS}/metadata/identity/oauth2/token"),
                "2018-02-01",
                ("Metadata", "true".to_string()),
            ),
        };
        let mut url = reqwest::Url::parse(&url)
            .map_err(|_| format!("the managed-identity endpoint {url:?} is not a URL"))?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("api-version", api_version);
            q.append_pair("resource", audience);
            if let Some(id) = client_id {
                q.append_pair("client_id", id);
            }
        }
        let request = self.http.get(url).header(header.0, header.1);
        let response = request.timeout(self.timeout).send().await.map_err(|e| {
            if e.is_timeout() {
                format!(
                    "the managed-identity endpoint did not answer within {}s",
                    self.timeout.as_secs_f64()
                )
            } else {
                "the managed-identity endpoint cannot be reached".to_string()
            }
        })?;
        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .map_err(|_| "the managed-identity endpoint's answer was cut off".to_string())?;
        if body.len() > MAX_MI_RESPONSE_BYTES {
            return Err("the managed-identity endpoint's answer is too large".to_string());
        }
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if status != 200 {
            let error = json
                .get("error_description")
                .or_else(|| json.get("error"))
                .and_then(Value::as_str)
                .unwrap_or("no error description");
            return Err(format!(
                "the managed-identity endpoint answered HTTP {status}: {}",
                error.chars().take(200).collect::<String>()
            ));
        }
        let token = json
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                "the managed-identity endpoint's answer has no access_token".to_string()
            })?;
        let number = |v: Option<&Value>| match v {
            Some(Value::Number(n)) => n.as_i64(),
            Some(Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        };
        let expires_at = number(json.get("expires_on"))
            .or_else(|| number(json.get("expires_in")).map(|s| now + s))
            .unwrap_or(now + 3600);
        Ok((token.to_string(), expires_at))
    }
}

/// The federated token file's content, trimmed: the assertion as the platform last wrote it.
async fn read_token_file(path: &Path) -> Result<ClientAssertion, String> {
    let text = tokio::fs::read_to_string(path).await.map_err(|e| {
        format!(
            "the federated token file {} cannot be read: {e}",
            path.display()
        )
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!(
            "the federated token file {} is empty",
            path.display()
        ));
    }
    Ok(ClientAssertion::from_secret(token.to_string()))
}
