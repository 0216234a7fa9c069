//! The bearer token checks the mock Graph makes before looking at the path, in Graph's order:
//! the token parses, its signature verifies against the emulator's keys (in process, no JWKS
//! fetch), it is within its lifetime, its audience is Graph and its issuer is its tenant's. The
//! result is the [`Caller`] the authorization and CAE steps read.

use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

use super::error::GraphError;
use crate::{b64url_decode, is_guid, GRAPH_APP_ID, GRAPH_RESOURCE};

/// Clock skew allowed on `exp` and `nbf`, seconds (Microsoft.IdentityModel's default).
const SKEW_SECS: i64 = 300;

/// Who is calling, from a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Caller {
    /// Tenant id (`tid`), lower-case.
    pub tid: String,
    /// Client application id (`appid` or `azp`), if any.
    pub client_id: Option<String>,
    /// An app-only token (`idtyp` = `app`, or `roles` without `scp`).
    pub app_only: bool,
    /// App roles (`roles`), if the claim is present.
    pub roles: Option<Vec<String>>,
    /// Delegated scopes (`scp`), if the claim is present.
    pub scopes: Option<Vec<String>>,
    /// The user's object id (`oid`), if any.
    pub oid: Option<String>,
    /// Every value naming the signed-in user: `oid`, `upn`, `preferred_username`,
    /// `unique_name`.
    pub user_names: Vec<String>,
    /// `nbf` (or `iat` without one), Unix seconds: when the token became valid.
    pub not_before: i64,
    /// `xms_cc` lists `cp1`: the client handles claims challenges (a CAE token).
    pub cae_capable: bool,
}

impl Caller {
    /// Whether `id` (a GUID or UPN from the path) names the signed-in user.
    pub(super) fn is_user(&self, id: &str) -> bool {
        self.user_names.iter().any(|n| n.eq_ignore_ascii_case(id))
    }

    /// The id `/me` stands for: the user's UPN, else its object id.
    pub(super) fn me(&self) -> Option<String> {
        self.user_names
            .iter()
            .find(|n| n.contains('@'))
            .or(self.oid.as_ref())
            .cloned()
    }
}

/// A signing key the token may be signed with: its `kid` and public key.
pub(super) struct TrustedKey {
    pub kid: String,
    pub key: DecodingKey,
}

/// Verifies `token` at `now` (Unix seconds) against `keys`; the caller on success.
pub(super) fn verify(token: &str, keys: &[TrustedKey], now: i64) -> Result<Caller, GraphError> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(GraphError::Unparsable);
    };
    let header = json_object(h).ok_or(GraphError::Unparsable)?;
    let claims = json_object(c).ok_or(GraphError::Unparsable)?;

    if header.get("alg").and_then(Value::as_str) != Some("RS256") {
        return Err(GraphError::BadSignature);
    }
    let kid = header
        .get("kid")
        .or_else(|| header.get("x5t"))
        .and_then(Value::as_str)
        .ok_or(GraphError::BadSignature)?;
    let key = keys
        .iter()
        .find(|k| k.kid == kid)
        .ok_or(GraphError::BadSignature)?;
    let signed = format!("{h}.{c}");
    let verified = !s.is_empty()
        && jsonwebtoken::crypto::verify(s, signed.as_bytes(), &key.key, Algorithm::RS256)
            .unwrap_or(false);
    if !verified {
        return Err(GraphError::BadSignature);
    }

    let exp = number(&claims, "exp").ok_or(GraphError::Expired)?;
    if exp.saturating_add(SKEW_SECS) < now {
        return Err(GraphError::Expired);
    }
    let nbf = number(&claims, "nbf");
    if nbf.is_some_and(|nbf| nbf.saturating_sub(SKEW_SECS) > now) {
        return Err(GraphError::NotYetValid);
    }
    if !audience_is_graph(&claims) {
        return Err(GraphError::InvalidAudience);
    }
    let tid = text(&claims, "tid")
        .filter(|tid| is_guid(tid))
        .map(str::to_ascii_lowercase)
        .ok_or(GraphError::InvalidTenant)?;
    if !issuer_is_tenants(text(&claims, "iss").unwrap_or(""), &tid) {
        return Err(GraphError::InvalidTenant);
    }
    Ok(caller(&claims, tid, nbf))
}

/// Decodes one base64url JWS segment holding a JSON object.
fn json_object(segment: &str) -> Option<Map<String, Value>> {
    b64url_decode(segment).and_then(|bytes| serde_json::from_slice(&bytes).ok())
}

fn number(claims: &Map<String, Value>, name: &str) -> Option<i64> {
    claims
        .get(name)
        .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
}

fn text<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    claims.get(name).and_then(Value::as_str)
}

/// `aud` (a string or a list) names Graph: `https://graph.microsoft.com` (with or without the
/// trailing slash) or Graph's application id.
fn audience_is_graph(claims: &Map<String, Value>) -> bool {
    let graph = |aud: &str| {
        let aud = aud.trim_end_matches('/');
        aud.eq_ignore_ascii_case(GRAPH_RESOURCE) || aud.eq_ignore_ascii_case(GRAPH_APP_ID)
    };
    match claims.get("aud") {
        Some(Value::String(aud)) => graph(aud),
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(graph),
        _ => false,
    }
}

/// `iss` is an https issuer of tenant `tid`: its path starts with the tenant GUID
/// (`https://sts.windows.net/{tid}/`, `https://login.microsoftonline.com/{tid}/v2.0`, and the
/// national clouds' and External ID's hosts alike).
fn issuer_is_tenants(iss: &str, tid: &str) -> bool {
    let Some(rest) = iss.strip_prefix("https://") else {
        return false;
    };
    let mut path = rest.split('/').skip(1);
    path.next()
        .is_some_and(|first| first.eq_ignore_ascii_case(tid))
}

fn caller(claims: &Map<String, Value>, tid: String, nbf: Option<i64>) -> Caller {
    let roles: Option<Vec<String>> = claims.get("roles").and_then(Value::as_array).map(|r| {
        r.iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect()
    });
    let scopes: Option<Vec<String>> =
        text(claims, "scp").map(|s| s.split_whitespace().map(str::to_string).collect());
    let app_only = match text(claims, "idtyp") {
        Some(idtyp) => idtyp == "app",
        None => roles.is_some() && scopes.is_none(),
    };
    let user_names = ["oid", "upn", "preferred_username", "unique_name"]
        .iter()
        .filter_map(|name| text(claims, name))
        .map(str::to_string)
        .collect();
    let cae_capable = match claims.get("xms_cc") {
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .any(|c| c.eq_ignore_ascii_case("cp1")),
        Some(Value::String(c)) => c.eq_ignore_ascii_case("cp1"),
        _ => false,
    };
    Caller {
        tid,
        client_id: text(claims, "appid")
            .or_else(|| text(claims, "azp"))
            .map(str::to_string),
        app_only,
        roles,
        scopes,
        oid: text(claims, "oid").map(str::to_string),
        user_names,
        not_before: nbf.or_else(|| number(claims, "iat")).unwrap_or(0),
        cae_capable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn graph_audiences_are_its_url_and_its_app_id() {
        for aud in [
            json!("https://graph.microsoft.com"),
            json!("https://graph.microsoft.com/"),
            json!("00000003-0000-0000-C000-000000000000"),
            json!(["api://other", "https://graph.microsoft.com"]),
        ] {
            assert!(audience_is_graph(&claims(json!({ "aud": aud }))), "{aud}");
        }
        for aud in [
            json!("https://outlook.office365.com"),
            json!("https://graph.microsoft.com.evil"),
            json!([]),
            json!(3),
        ] {
            assert!(!audience_is_graph(&claims(json!({ "aud": aud }))), "{aud}");
        }
    }

    #[test]
    fn the_issuer_must_name_the_tokens_tenant() {
        let tid = "8b0a5b2e-1c3d-4f5a-9e7b-6c2d1a0f3e4b";
        for iss in [
            format!("https://sts.windows.net/{tid}/"),
            format!("https://login.microsoftonline.com/{tid}/v2.0"),
            format!("https://{tid}.ciamlogin.com/{tid}/v2.0"),
        ] {
            assert!(issuer_is_tenants(&iss, tid), "{iss}");
        }
        for iss in [
            "https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/".to_string(),
            format!("http://sts.windows.net/{tid}/"),
            format!("https://login.microsoftonline.com/common/{tid}"),
            String::new(),
        ] {
            assert!(!issuer_is_tenants(&iss, tid), "{iss}");
        }
    }

    #[test]
    fn cp1_in_xms_cc_makes_a_cae_token_and_nbf_falls_back_to_iat() {
        let tid = "8b0a5b2e-1c3d-4f5a-9e7b-6c2d1a0f3e4b".to_string();
        let c = caller(
            &claims(json!({ "xms_cc": ["CP1"], "iat": 10, "roles": ["Mail.Read"] })),
            tid.clone(),
            None,
        );
        assert!(c.cae_capable && c.app_only);
        assert_eq!(c.not_before, 10);
        let c = caller(
            &claims(json!({ "xms_cc": "cp2", "scp": "User.Read" })),
            tid,
            Some(7),
        );
        assert!(!c.cae_capable && !c.app_only);
        assert_eq!(c.not_before, 7);
    }
}
