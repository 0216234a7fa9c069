//! The verified token: its claims, and the facts derived from them once (version, client id,
//! strength, kind, roles, scopes), so the per-request checks and the cache read plain fields.

use std::sync::Arc;

use serde_json::{Map, Value};

/// `ver` of an AAD token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenVersion {
    /// v1 (`ver = "1.0"`, or no `ver` and an `https://sts.windows.net/` issuer): `appid` names the
    /// client.
    V1,
    /// v2 (`ver = "2.0"`, or no `ver` and any other issuer): `azp` names the client.
    V2,
}

/// What the token represents (SPEC section 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// App-only (client credentials): `idtyp == "app"`, or `roles` without `scp`.
    App,
    /// Delegated: has `scp` and `idtyp != "app"`.
    User,
    /// Neither: no `scp`, no `roles`, no `idtyp` (e.g. a `.default` token with nothing granted).
    Neither,
}

impl TokenKind {
    /// `app`, `user`, or `None` for a token of neither kind.
    pub fn header_value(self) -> Option<&'static str> {
        match self {
            TokenKind::App => Some("app"),
            TokenKind::User => Some("user"),
            TokenKind::Neither => None,
        }
    }
}

/// Which claim named the client application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientClaim {
    /// `appid` (v1 tokens; strength in `appidacr`).
    Appid,
    /// `azp` (v2 tokens; strength in `azpacr`).
    Azp,
}

impl ClientClaim {
    /// The claim name (`appid` or `azp`).
    pub fn name(self) -> &'static str {
        match self {
            ClientClaim::Appid => "appid",
            ClientClaim::Azp => "azp",
        }
    }

    /// The matching strength claim (`appidacr` or `azpacr`).
    pub fn strength_claim(self) -> &'static str {
        match self {
            ClientClaim::Appid => "appidacr",
            ClientClaim::Azp => "azpacr",
        }
    }
}

/// A token whose signature, lifetime, audience and issuer have been verified. Shared (in an
/// `Arc`) between the verified-token cache and the requests that use it.
///
/// Compact on purpose (a cache holds up to `token_cache_size` of them): the claims are kept as
/// the JSON text the token carried, and only the facts the per-request checks and the default
/// claim headers read are held parsed. [`VerifiedToken::claims`] parses the rest on demand (hooks,
/// CEL, custom claim headers).
#[derive(Debug)]
pub struct VerifiedToken {
    raw_claims: Box<str>,
    /// The `kid` (or `x5t`) of the key that verified the signature.
    pub kid: Arc<str>,
    /// `exp`, Unix seconds (fractions dropped, saturating); always present once verified (a token
    /// without `exp` is `expired`).
    pub exp: i64,
    /// `nbf`, Unix seconds; `None` when absent (no not-before limit).
    pub nbf: Option<i64>,
    /// `iat`, Unix seconds; `None` when absent (not checked).
    pub iat: Option<i64>,
    /// `aud`, as a list (a string audience is a list of one).
    pub aud: Box<[Box<str>]>,
    /// v1 or v2, from `ver` or, without it, from the issuer.
    pub version: TokenVersion,
    /// Lower-case tenant GUID (empty when the token had none).
    pub tid: String,
    /// `tid` exactly as the token spelled it (for issuer comparison).
    pub raw_tid: Box<str>,
    /// `iss` exactly as the token carried it (empty when absent, which fails the issuer check).
    pub iss: String,
    /// The client application: `appid` for v1, `azp` for v2, the other claim when the expected one
    /// is absent or empty; `None` when the token has neither (`not_access_token`).
    pub client: Option<(ClientClaim, String)>,
    /// `appidacr`/`azpacr` of the claim that named the client; `None` when absent.
    pub auth_strength: Option<u8>,
    /// App-only, user or neither, from `idtyp`, `roles` and `scp` (SPEC section 8).
    pub kind: TokenKind,
    /// `roles` (app roles, v1 and v2; a single string is a list of one); empty when absent.
    pub roles: Vec<String>,
    /// `scp` split on spaces (delegated scopes, user tokens only); empty when absent.
    pub scopes: Vec<String>,
    oid: Option<Box<str>>,
    sub: Option<Box<str>>,
    upn: Option<Box<str>>,
    preferred_username: Option<Box<str>>,
}

/// A numeric claim as whole seconds (fractions rounded down). Saturates: an integer or float
/// beyond the `i64` range becomes `i64::MAX` / `i64::MIN`; `None` when absent or not a number.
pub fn seconds(claims: &Map<String, Value>, name: &str) -> Option<i64> {
    let Value::Number(n) = claims.get(name)? else {
        return None;
    };
    if let Some(i) = n.as_i64() {
        return Some(i);
    }
    if n.as_u64().is_some() {
        return Some(i64::MAX);
    }
    // `as` from f64 saturates at the i64 bounds (and maps NaN, which JSON cannot carry, to 0).
    n.as_f64().map(|f| f.floor() as i64)
}

/// `aud` as a list of strings.
pub fn audiences(claims: &Map<String, Value>) -> Vec<&str> {
    match claims.get("aud") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

impl VerifiedToken {
    /// Derives the typed facts from verified claims. `kid` is the key that verified them.
    pub fn from_claims(claims: Map<String, Value>, kid: Arc<str>) -> Self {
        let text = serde_json::to_string(&claims).unwrap_or_default();
        Self::from_parts(claims, text, kid)
    }

    /// Like [`VerifiedToken::from_claims`], keeping `claims_json` (the JSON text `claims` was
    /// parsed from) instead of serialising the claims again.
    pub fn from_parts(claims: Map<String, Value>, claims_json: String, kid: Arc<str>) -> Self {
        let str_claim = |name: &str| claims.get(name).and_then(Value::as_str);
        let boxed = |name: &str| str_claim(name).map(Box::<str>::from);
        let iss = str_claim("iss").unwrap_or_default().to_string();
        let version = match str_claim("ver") {
            Some("1.0") => TokenVersion::V1,
            Some("2.0") => TokenVersion::V2,
            _ if iss.starts_with("https://sts.windows.net/") => TokenVersion::V1,
            _ => TokenVersion::V2,
        };
        let (first, second) = match version {
            TokenVersion::V1 => (ClientClaim::Appid, ClientClaim::Azp),
            TokenVersion::V2 => (ClientClaim::Azp, ClientClaim::Appid),
        };
        let client = [first, second].into_iter().find_map(|c| {
            str_claim(c.name())
                .filter(|v| !v.is_empty())
                .map(|v| (c, v.to_string()))
        });
        let auth_strength =
            client
                .as_ref()
                .and_then(|(c, _)| match claims.get(c.strength_claim()) {
                    Some(Value::String(s)) => s.parse::<u8>().ok(),
                    Some(Value::Number(n)) => n.as_u64().and_then(|n| u8::try_from(n).ok()),
                    _ => None,
                });
        let roles: Vec<String> = match claims.get("roles") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect(),
            Some(Value::String(s)) => vec![s.clone()],
            _ => Vec::new(),
        };
        let scopes: Vec<String> = str_claim("scp")
            .map(|s| {
                s.split(' ')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        let idtyp = str_claim("idtyp");
        let has_scp = claims.contains_key("scp");
        let kind = if idtyp == Some("app") {
            TokenKind::App
        } else if has_scp {
            TokenKind::User
        } else if idtyp.is_none() && claims.contains_key("roles") {
            TokenKind::App
        } else {
            TokenKind::Neither
        };
        let raw_tid = str_claim("tid").unwrap_or_default();
        VerifiedToken {
            raw_claims: claims_json.into_boxed_str(),
            kid,
            exp: seconds(&claims, "exp").unwrap_or(0),
            nbf: seconds(&claims, "nbf"),
            iat: seconds(&claims, "iat"),
            aud: audiences(&claims).into_iter().map(Box::from).collect(),
            version,
            tid: raw_tid.to_ascii_lowercase(),
            raw_tid: raw_tid.into(),
            iss,
            client,
            auth_strength,
            kind,
            roles,
            scopes,
            oid: boxed("oid"),
            sub: boxed("sub"),
            upn: boxed("upn"),
            preferred_username: boxed("preferred_username"),
        }
    }

    /// Every claim of the token, parsed from the kept JSON text (for hooks, CEL and custom
    /// claim headers; the default checks and headers never need it).
    pub fn claims(&self) -> Map<String, Value> {
        serde_json::from_str(&self.raw_claims).unwrap_or_default()
    }

    /// The client id (`appid`/`azp`), if any.
    pub fn client_id(&self) -> Option<&str> {
        self.client.as_ref().map(|(_, id)| id.as_str())
    }

    /// A claim as header text: strings as is, numbers and booleans printed, lists comma-joined
    /// (`scp` split on spaces). `None` when absent or an object.
    pub fn claim_text(&self, name: &str) -> Option<String> {
        let kept = |v: &Option<Box<str>>| v.as_deref().map(String::from);
        match name {
            "scp" => return (!self.scopes.is_empty()).then(|| self.scopes.join(",")),
            "roles" if !self.roles.is_empty() => return Some(self.roles.join(",")),
            "tid" => return (!self.raw_tid.is_empty()).then(|| self.raw_tid.to_string()),
            "oid" => return kept(&self.oid),
            "sub" => return kept(&self.sub),
            "upn" => return kept(&self.upn),
            "preferred_username" => return kept(&self.preferred_username),
            _ => {}
        }
        match self.claims().get(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Array(a) => {
                let items: Vec<String> = a
                    .iter()
                    .filter_map(|v| match v {
                        Value::String(s) => Some(s.clone()),
                        Value::Number(n) => Some(n.to_string()),
                        Value::Bool(b) => Some(b.to_string()),
                        _ => None,
                    })
                    .collect();
                (!items.is_empty()).then(|| items.join(","))
            }
            Value::Null | Value::Object(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn token(v: Value) -> VerifiedToken {
        let Value::Object(m) = v else {
            panic!("object")
        };
        VerifiedToken::from_claims(m, Arc::from("k"))
    }

    #[test]
    fn kind_follows_idtyp_then_scp_then_roles() {
        let table = [
            (json!({"idtyp": "app", "scp": "x"}), TokenKind::App),
            (json!({"roles": ["a"]}), TokenKind::App),
            (json!({"roles": ["a"], "scp": "x"}), TokenKind::User),
            (json!({"scp": "x", "idtyp": "user"}), TokenKind::User),
            (json!({"roles": ["a"], "idtyp": "user"}), TokenKind::Neither),
            (json!({}), TokenKind::Neither),
        ];
        for (claims, want) in table {
            assert_eq!(token(claims.clone()).kind, want, "{claims}");
        }
    }

    #[test]
    fn client_id_comes_from_appid_for_v1_and_azp_for_v2_with_fallback() {
        let t =
            token(json!({"ver": "1.0", "appid": "a", "azp": "b", "appidacr": "2", "azpacr": "0"}));
        assert_eq!(t.client, Some((ClientClaim::Appid, "a".into())));
        assert_eq!(t.auth_strength, Some(2));
        let t = token(json!({"ver": "2.0", "appid": "a", "azp": "b", "azpacr": 1}));
        assert_eq!(t.client, Some((ClientClaim::Azp, "b".into())));
        assert_eq!(t.auth_strength, Some(1));
        let t = token(json!({"ver": "2.0", "appid": "a", "appidacr": "1"}));
        assert_eq!(t.client, Some((ClientClaim::Appid, "a".into())));
        assert_eq!(t.auth_strength, Some(1));
        let t = token(json!({"iss": "https://sts.windows.net/x/", "appid": "a"}));
        assert_eq!(t.version, TokenVersion::V1);
    }

    #[test]
    fn time_claims_saturate_at_the_i64_bounds() {
        let m = json!({"a": 1e300, "b": -1e300, "c": u64::MAX, "d": i64::MIN, "e": 12.9,
            "f": -0.5, "g": "12", "h": i64::MAX});
        let m = m.as_object().cloned().unwrap_or_default();
        let table = [
            ("a", Some(i64::MAX)),
            ("b", Some(i64::MIN)),
            ("c", Some(i64::MAX)),
            ("d", Some(i64::MIN)),
            ("e", Some(12)),
            ("f", Some(-1)),
            ("g", None),
            ("h", Some(i64::MAX)),
            ("absent", None),
        ];
        for (name, want) in table {
            assert_eq!(seconds(&m, name), want, "{name}");
        }
    }

    #[test]
    fn list_claims_are_comma_joined_and_scp_is_split_on_spaces() {
        let t = token(json!({"roles": ["A", "B"], "scp": "read  write", "n": 3, "o": {"x": 1}}));
        assert_eq!(t.claim_text("roles").as_deref(), Some("A,B"));
        assert_eq!(t.claim_text("scp").as_deref(), Some("read,write"));
        assert_eq!(t.claim_text("n").as_deref(), Some("3"));
        assert_eq!(t.claim_text("o"), None);
        assert_eq!(t.claim_text("missing"), None);
    }
}
