//! Federated identity credentials (workload identity federation) on the token endpoint: a
//! `client_assertion` issued by an external identity provider — a Kubernetes service-account
//! token, a GitHub Actions token, a managed identity's token — that the app registration
//! trusts through a federated identity credential
//! (<https://learn.microsoft.com/entra/workload-id/workload-identity-federation>).
//!
//! An assertion is taken as federated when its `iss` is not the client id and either its
//! header names no certificate (`x5t`, `x5t#S256`, `x5c`) or its `iss` is a URL; every other
//! assertion is checked as a certificate assertion ([`super::assertion`]).
//!
//! Checks, in order, with the answers Entra ID gives (texts as Entra ID words them in its
//! answers quoted in Azure/azure-workload-identity#616, #642 and #1200):
//!
//! | check | failure |
//! |---|---|
//! | parses as a JWS with `iss`, `sub` | 401 `invalid_client` 50027 |
//! | the app has federated credentials at all | 400 `invalid_request` 70021 ("No matching federated identity record found for presented assertion. Assertion Issuer: …") |
//! | one credential has the assertion's issuer | 401 `invalid_client` 700211 |
//! | one of those has its subject (case-sensitive) | 401 `invalid_client` 700213 |
//! | one of those lists an audience of the assertion | 401 `invalid_client` 700212 |
//! | an Entra-issued assertion is a managed identity's token | 401 `invalid_client` 700226 |
//! | the issuer's OpenID metadata and JWKS can be fetched | 400 `invalid_request` 50166 ("Request to External OIDC endpoint failed.") |
//! | `alg` is RS256/RS384/RS512/PS256 | 401 `invalid_client` 5002738 |
//! | the key (`kid`) is published and the signature verifies | 401 `invalid_client` 50013 |
//! | `exp` not past, `nbf` not future (5 min skew) | 401 `invalid_client` 700024 |
//!
//! Keys: the emulator's own issuers are resolved without HTTP — its service-account issuer
//! (`{base}/k8s`, see [`crate::server`]) and its Entra issuers
//! (`https://login.microsoftonline.com/{tid}/v2.0`, `https://sts.windows.net/{tid}/`, whose
//! tokens for `api://AzureADTokenExchange` are managed identities' assertions). Any other
//! issuer's `{iss}/.well-known/openid-configuration` is fetched, then its `jwks_uri`; the keys
//! are cached per issuer for an hour, and fetched again at once when an assertion names a
//! `kid` the cached set lacks (a rotated key).

use std::sync::atomic::Ordering;

use jsonwebtoken::DecodingKey;
use serde_json::Value;

use super::assertion::{check_time_window, parse_jws, Jws};
use super::errors::AadstsError;
use crate::serve::{lock, read};
use crate::state::{CachedJwks, EmuState, FederatedCredential, RegisteredApp, RsaJwk};
use crate::{b64url_decode, unix_now};

/// How long fetched keys of an external issuer are used before they are fetched again, seconds.
const JWKS_CACHE_SECS: i64 = 3600;

/// How long one fetch of an external issuer's document may take.
const FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

const FIC_DOCS: &str = "https://learn.microsoft.com/entra/workload-id/workload-identity-federation";

/// Whether `assertion` is to be checked as a federated assertion for `app` (see the module
/// docs); `false` for anything that does not parse (the certificate path reports it).
pub(super) fn is_federated(assertion: &str, app: &RegisteredApp) -> bool {
    let Some(jws) = parse_jws(assertion) else {
        return false;
    };
    let Some(iss) = jws.claims.get("iss").and_then(Value::as_str) else {
        return false;
    };
    if iss.eq_ignore_ascii_case(&app.client_id) {
        return false;
    }
    let names_certificate = ["x5t", "x5t#S256", "x5c"]
        .iter()
        .any(|h| jws.header.contains_key(*h));
    !names_certificate || iss.starts_with("https://") || iss.starts_with("http://")
}

/// Checks a federated `assertion` for `app` (the table in the module docs).
pub(super) async fn check_federated(
    state: &EmuState,
    app: &RegisteredApp,
    assertion: &str,
) -> Result<(), AadstsError> {
    let jws = parse_jws(assertion)
        .ok_or_else(|| AadstsError::invalid_client(50_027, "JWT token is invalid or malformed."))?;
    let text = |name: &str| jws.claims.get(name).and_then(Value::as_str).unwrap_or("");
    let (iss, sub) = (text("iss"), text("sub"));
    let audiences = audiences(&jws);
    find_credential(app, iss, sub, &audiences)?;
    let local = local_issuer(state, iss);
    if matches!(local, Some(LocalIssuer::Entra)) && jws.claims.get("xms_mirid").is_none() {
        return Err(AadstsError::invalid_client(
            700_226,
            "Only MSI tokens may be used as Federated Identity Credentials for AAD issuer.",
        ));
    }
    let alg = super::assertion::algorithm(&jws)?;
    let kid = jws.header.get("kid").and_then(Value::as_str);
    let key = match local {
        Some(LocalIssuer::ServiceAccounts) => {
            let key = state
                .service_account_key()
                .map_err(|e| issuer_unreachable(&e.to_string()))?;
            (kid.is_none() || kid == Some(key.kid())).then(|| RsaJwk {
                kid: Some(key.kid().to_string()),
                n: b64url_decode(key.n()).unwrap_or_default(),
                e: b64url_decode(key.e()).unwrap_or_default(),
            })
        }
        Some(LocalIssuer::Entra) => read(&state.keys)
            .iter()
            .find(|k| kid.is_none_or(|kid| kid == k.kid()))
            .map(|key| RsaJwk {
                kid: Some(key.kid().to_string()),
                n: b64url_decode(key.n()).unwrap_or_default(),
                e: b64url_decode(key.e()).unwrap_or_default(),
            }),
        None => external_key(state, iss, kid).await?,
    };
    let key = key.ok_or_else(|| {
        AadstsError::invalid_client(
            50_013,
            format!(
                "Assertion failed signature validation. [Reason - The key was not found., Key \
                 id of the assertion: '{}', issuer: '{iss}']",
                kid.unwrap_or("")
            ),
        )
    })?;
    let decoding = DecodingKey::from_rsa_raw_components(&key.n, &key.e);
    let verified = !jws.signature.is_empty()
        && jsonwebtoken::crypto::verify(
            &jws.signature,
            jws.signing_input.as_bytes(),
            &decoding,
            alg,
        )
        .unwrap_or(false);
    if !verified {
        return Err(AadstsError::invalid_client(
            50_013,
            format!(
                "Assertion failed signature validation. [Reason - Key was found, but use of the \
                 key to verify the signature failed., Key id: '{}', issuer: '{iss}']",
                key.kid.as_deref().unwrap_or("")
            ),
        ));
    }
    check_time_window(&jws, unix_now())
}

/// The `aud` claim as a list (a string or an array of strings).
fn audiences(jws: &Jws) -> Vec<String> {
    match jws.claims.get("aud") {
        Some(Value::String(aud)) => vec![aud.clone()],
        Some(Value::Array(auds)) => auds
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// The credential trusting (`iss`, `sub`, one of `audiences`), or the error naming what did
/// not match: issuer first, then subject, then audience.
fn find_credential<'a>(
    app: &'a RegisteredApp,
    iss: &str,
    sub: &str,
    audiences: &[String],
) -> Result<&'a FederatedCredential, AadstsError> {
    let please = format!(
        "Please check your federated identity credential Subject, Audience and Issuer against \
         the presented assertion. {FIC_DOCS}"
    );
    if app.federated.is_empty() {
        return Err(AadstsError::bad_request(
            "invalid_request",
            70_021,
            format!(
                "No matching federated identity record found for presented assertion. Assertion \
                 Issuer: '{iss}'. Assertion Subject: '{sub}'. Assertion Audience: '{}'. {FIC_DOCS}",
                audiences.join(",")
            ),
        ));
    }
    let by_issuer: Vec<&FederatedCredential> =
        app.federated.iter().filter(|f| f.issuer == iss).collect();
    if by_issuer.is_empty() {
        return Err(AadstsError::invalid_client(
            700_211,
            format!(
                "No matching federated identity record found for presented assertion issuer \
                 '{iss}'. {please}"
            ),
        ));
    }
    let by_subject: Vec<&FederatedCredential> =
        by_issuer.into_iter().filter(|f| f.subject == sub).collect();
    if by_subject.is_empty() {
        return Err(AadstsError::invalid_client(
            700_213,
            format!(
                "No matching federated identity record found for presented assertion subject \
                 '{sub}'. {please} The subject matching is done using a case-sensitive comparison."
            ),
        ));
    }
    by_subject
        .into_iter()
        .find(|f| f.audiences.iter().any(|a| audiences.contains(a)))
        .ok_or_else(|| {
            AadstsError::invalid_client(
                700_212,
                format!(
                    "No matching federated identity record found for presented assertion audience \
                     '{}'. {please}",
                    audiences.join(",")
                ),
            )
        })
}

/// Issuers whose keys the emulator holds itself.
enum LocalIssuer {
    /// The service-account issuer `{base}/k8s`.
    ServiceAccounts,
    /// An Entra ID issuer (v1 or v2) of any tenant: its tokens are signed with the emulator's
    /// published keys.
    Entra,
}

fn local_issuer(state: &EmuState, iss: &str) -> Option<LocalIssuer> {
    if iss == state.service_account_issuer() {
        return Some(LocalIssuer::ServiceAccounts);
    }
    let tenant_of = |prefix: &str, suffix: &str| {
        iss.strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(suffix))
            .filter(|tid| crate::is_guid(tid))
            .is_some()
    };
    (tenant_of(&format!("{}/", crate::AAD_AUTHORITY_HOST), "/v2.0")
        || tenant_of("https://sts.windows.net/", "/"))
    .then_some(LocalIssuer::Entra)
}

fn issuer_unreachable(detail: &str) -> AadstsError {
    tracing::debug!(detail, "federated issuer documents could not be fetched");
    AadstsError::bad_request(
        "invalid_request",
        50_166,
        "Request to External OIDC endpoint failed.",
    )
}

/// The external issuer's key named `kid` (any key when the assertion names none), from the
/// cache or fetched; `None` when the issuer does not publish it.
async fn external_key(
    state: &EmuState,
    iss: &str,
    kid: Option<&str>,
) -> Result<Option<RsaJwk>, AadstsError> {
    let now = unix_now();
    let cached = lock(&state.federation_keys)
        .get(iss)
        .filter(|c| c.fetched_at + JWKS_CACHE_SECS > now)
        .cloned();
    let pick = |jwks: &CachedJwks| {
        jwks.keys
            .iter()
            .find(|k| kid.is_none() || k.kid.as_deref() == kid)
            .cloned()
    };
    if let Some(key) = cached.as_ref().and_then(pick) {
        return Ok(Some(key));
    }
    // Not cached, expired, or a kid the cached set lacks: fetch (no lock held meanwhile).
    let fetched = fetch_jwks(state, iss).await?;
    let key = pick(&fetched);
    lock(&state.federation_keys).insert(iss.to_string(), fetched);
    Ok(key)
}

/// Fetches `{iss}/.well-known/openid-configuration`, then its `jwks_uri`.
async fn fetch_jwks(state: &EmuState, iss: &str) -> Result<CachedJwks, AadstsError> {
    let metadata_url = format!(
        "{}/.well-known/openid-configuration",
        iss.trim_end_matches('/')
    );
    let metadata = get_json(state, &metadata_url).await?;
    let jwks_uri = metadata
        .get("jwks_uri")
        .and_then(Value::as_str)
        .ok_or_else(|| issuer_unreachable("metadata without jwks_uri"))?
        .to_string();
    let jwks = get_json(state, &jwks_uri).await?;
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| issuer_unreachable("JWKS without keys"))?
        .iter()
        .filter(|k| k.get("kty").and_then(Value::as_str) == Some("RSA"))
        .filter_map(|k| {
            Some(RsaJwk {
                kid: k.get("kid").and_then(Value::as_str).map(str::to_string),
                n: b64url_decode(k.get("n")?.as_str()?)?,
                e: b64url_decode(k.get("e")?.as_str()?)?,
            })
        })
        .collect();
    Ok(CachedJwks {
        keys,
        fetched_at: unix_now(),
    })
}

async fn get_json(state: &EmuState, url: &str) -> Result<Value, AadstsError> {
    state.federation_fetches.fetch_add(1, Ordering::SeqCst);
    let response = state
        .http
        .get(url)
        .timeout(FETCH_TIMEOUT)
        .send()
        .await
        .map_err(|e| issuer_unreachable(&e.to_string()))?;
    if !response.status().is_success() {
        return Err(issuer_unreachable(&format!("{url}: {}", response.status())));
    }
    response
        .json::<Value>()
        .await
        .map_err(|e| issuer_unreachable(&e.to_string()))
}
