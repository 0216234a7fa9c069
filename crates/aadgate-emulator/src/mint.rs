//! Minting AAD-shaped access tokens for tests, the demo and `aadgate dev-token`.
//!
//! A [`TokenSpec`] describes the claims; [`SigningKey::mint`] builds the JWS compact string
//! itself (base64url header . base64url claims . RS256 signature), so the header and claims can
//! be any JSON, including deliberately broken ones (`jku`, `x5c`, `alg: none`, a missing `kid`).

use serde_json::{Map, Value};

use super::keys::SigningKey;
use super::{
    b64url, new_guid, unix_now, EmulatorError, DEFAULT_AUDIENCE, DEFAULT_CLIENT_ID,
    DEFAULT_SERVICE_PRINCIPAL_OID, DEFAULT_TENANT, DEFAULT_USER_OID,
};

/// AAD's v1 issuer for a tenant: `https://sts.windows.net/{tid}/`.
pub fn issuer_v1(tid: &str) -> String {
    format!("https://sts.windows.net/{tid}/")
}

/// AAD's v2 issuer for a tenant: `https://login.microsoftonline.com/{tid}/v2.0`.
pub fn issuer_v2(tid: &str) -> String {
    format!("https://login.microsoftonline.com/{tid}/v2.0")
}

/// What to put in a minted token. All fields are public; the `with_*` methods are shorthands.
///
/// Claims written, in this order (later wins): `aud`, `iss` (AAD's issuer for `ver` and `tid`),
/// `iat`, `nbf`, `exp`, `tid`, `ver` (`"1.0"`/`"2.0"`), `oid`, `sub`, the client id (`appid`
/// for v1, `azp` for v2), the strength (`appidacr` / `azpacr`), `upn` (v1: `upn` and
/// `unique_name`; v2: `preferred_username`), `roles`, `scp`, `idtyp`, a random `uti`, then
/// [`TokenSpec::extra_claims`]. A `null` in `extra_claims` or `extra_header` removes that member.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenSpec {
    /// Tenant id (`tid`, and the issuer's tenant). Default [`DEFAULT_TENANT`].
    pub tid: String,
    /// Audience (`aud`). Default [`DEFAULT_AUDIENCE`].
    pub aud: String,
    /// Token version, 1 or 2 (anything else is treated as 2). Default 2.
    pub ver: u8,
    /// App roles (`roles`); absent when `None`.
    pub roles: Option<Vec<String>>,
    /// Delegated scopes (`scp`, space separated); absent when `None`.
    pub scp: Option<String>,
    /// Client application id: `appid` in v1 tokens, `azp` in v2. Default [`DEFAULT_CLIENT_ID`].
    pub appid: Option<String>,
    /// Client authentication strength: `appidacr` (v1) / `azpacr` (v2), `"0"` public client,
    /// `"1"` secret, `"2"` certificate. Default `"1"`; [`TokenSpec::app`] sets `"2"`.
    pub app_auth_strength: Option<String>,
    /// Object id (`oid`). Default [`DEFAULT_USER_OID`].
    pub oid: Option<String>,
    /// Subject (`sub`). Default: same as the default `oid`.
    pub sub: Option<String>,
    /// User principal name; see the type docs for where it goes. Default absent.
    pub upn: Option<String>,
    /// Identity type (`idtyp`), e.g. `"app"`. Default absent.
    pub idtyp: Option<String>,
    /// `exp` = now + this, in seconds; negative gives an already expired token. Default 3600.
    pub lifetime_secs: i64,
    /// `nbf` = now + this when set (positive = not yet valid); otherwise `nbf` = now.
    pub not_before_offset_secs: Option<i64>,
    /// Fixed "now" (Unix seconds) for deterministic tokens; default the system clock.
    pub now: Option<i64>,
    /// Claims merged last, overriding the computed ones (`null` removes a claim).
    pub extra_claims: Map<String, Value>,
    /// JOSE header members merged last (`jku`, `x5u`, `jwk`, `x5c`, `nonce`, `alg`, a different
    /// `kid`, …; `null` removes one). The signature is always RS256 with the minting key.
    pub extra_header: Map<String, Value>,
}

impl Default for TokenSpec {
    fn default() -> Self {
        TokenSpec {
            tid: DEFAULT_TENANT.to_string(),
            aud: DEFAULT_AUDIENCE.to_string(),
            ver: 2,
            roles: None,
            scp: None,
            appid: Some(DEFAULT_CLIENT_ID.to_string()),
            app_auth_strength: Some("1".to_string()),
            oid: Some(DEFAULT_USER_OID.to_string()),
            sub: Some(DEFAULT_USER_OID.to_string()),
            upn: None,
            idtyp: None,
            lifetime_secs: 3600,
            not_before_offset_secs: None,
            now: None,
            extra_claims: Map::new(),
            extra_header: Map::new(),
        }
    }
}

impl TokenSpec {
    /// A delegated (user) token for `tid` and `aud` with scopes `scp` (space separated).
    pub fn user(tid: &str, aud: &str, scp: &str) -> Self {
        TokenSpec {
            tid: tid.to_string(),
            aud: aud.to_string(),
            scp: Some(scp.to_string()),
            ..TokenSpec::default()
        }
    }

    /// An app-only token for `tid` and `aud` with app `roles`: `idtyp = "app"`, strength `"2"`
    /// (certificate), `oid` = `sub` = [`DEFAULT_SERVICE_PRINCIPAL_OID`].
    pub fn app(tid: &str, aud: &str, roles: &[&str]) -> Self {
        TokenSpec {
            tid: tid.to_string(),
            aud: aud.to_string(),
            roles: Some(roles.iter().map(|r| r.to_string()).collect()),
            app_auth_strength: Some("2".to_string()),
            oid: Some(DEFAULT_SERVICE_PRINCIPAL_OID.to_string()),
            sub: Some(DEFAULT_SERVICE_PRINCIPAL_OID.to_string()),
            idtyp: Some("app".to_string()),
            ..TokenSpec::default()
        }
    }

    /// Sets the tenant.
    pub fn with_tid(mut self, tid: &str) -> Self {
        self.tid = tid.to_string();
        self
    }

    /// Sets the audience.
    pub fn with_aud(mut self, aud: &str) -> Self {
        self.aud = aud.to_string();
        self
    }

    /// Sets the token version (1 or 2).
    pub fn with_ver(mut self, ver: u8) -> Self {
        self.ver = ver;
        self
    }

    /// Sets the `roles` claim.
    pub fn with_roles(mut self, roles: &[&str]) -> Self {
        self.roles = Some(roles.iter().map(|r| r.to_string()).collect());
        self
    }

    /// Sets the `scp` claim (space separated scopes).
    pub fn with_scp(mut self, scp: &str) -> Self {
        self.scp = Some(scp.to_string());
        self
    }

    /// Sets the client id (`appid` / `azp`).
    pub fn with_appid(mut self, appid: &str) -> Self {
        self.appid = Some(appid.to_string());
        self
    }

    /// Sets the client authentication strength (`appidacr` / `azpacr`).
    pub fn with_auth_strength(mut self, strength: &str) -> Self {
        self.app_auth_strength = Some(strength.to_string());
        self
    }

    /// Sets the object id.
    pub fn with_oid(mut self, oid: &str) -> Self {
        self.oid = Some(oid.to_string());
        self
    }

    /// Sets the subject.
    pub fn with_sub(mut self, sub: &str) -> Self {
        self.sub = Some(sub.to_string());
        self
    }

    /// Sets the user principal name.
    pub fn with_upn(mut self, upn: &str) -> Self {
        self.upn = Some(upn.to_string());
        self
    }

    /// Sets `idtyp`.
    pub fn with_idtyp(mut self, idtyp: &str) -> Self {
        self.idtyp = Some(idtyp.to_string());
        self
    }

    /// Sets the lifetime in seconds (negative: already expired).
    pub fn with_lifetime(mut self, secs: i64) -> Self {
        self.lifetime_secs = secs;
        self
    }

    /// Sets `nbf` to now + `secs`.
    pub fn with_not_before_offset(mut self, secs: i64) -> Self {
        self.not_before_offset_secs = Some(secs);
        self
    }

    /// Fixes "now" (Unix seconds).
    pub fn with_now(mut self, now: i64) -> Self {
        self.now = Some(now);
        self
    }

    /// Adds or overrides a claim (`Value::Null` removes it).
    pub fn with_claim(mut self, name: &str, value: Value) -> Self {
        self.extra_claims.insert(name.to_string(), value);
        self
    }

    /// Removes a claim the spec would otherwise write.
    pub fn without_claim(self, name: &str) -> Self {
        self.with_claim(name, Value::Null)
    }

    /// Adds or overrides a JOSE header member (`Value::Null` removes it).
    pub fn with_header(mut self, name: &str, value: Value) -> Self {
        self.extra_header.insert(name.to_string(), value);
        self
    }

    /// The issuer this spec's token will carry (before `extra_claims`).
    pub fn issuer(&self) -> String {
        if self.ver == 1 {
            issuer_v1(&self.tid)
        } else {
            issuer_v2(&self.tid)
        }
    }

    /// The claims object this spec produces, with "now" = `now`.
    pub fn claims_at(&self, now: i64) -> Map<String, Value> {
        let v1 = self.ver == 1;
        let mut c = Map::new();
        let mut put = |name: &str, value: Value| {
            c.insert(name.to_string(), value);
        };
        put("aud", Value::from(self.aud.clone()));
        put("iss", Value::from(self.issuer()));
        put("iat", Value::from(now));
        put(
            "nbf",
            Value::from(now.saturating_add(self.not_before_offset_secs.unwrap_or(0))),
        );
        put("exp", Value::from(now.saturating_add(self.lifetime_secs)));
        put("tid", Value::from(self.tid.clone()));
        put("ver", Value::from(if v1 { "1.0" } else { "2.0" }));
        if let Some(oid) = &self.oid {
            put("oid", Value::from(oid.clone()));
        }
        if let Some(sub) = &self.sub {
            put("sub", Value::from(sub.clone()));
        }
        if let Some(appid) = &self.appid {
            put(if v1 { "appid" } else { "azp" }, Value::from(appid.clone()));
        }
        if let Some(acr) = &self.app_auth_strength {
            put(
                if v1 { "appidacr" } else { "azpacr" },
                Value::from(acr.clone()),
            );
        }
        if let Some(upn) = &self.upn {
            if v1 {
                put("upn", Value::from(upn.clone()));
                put("unique_name", Value::from(upn.clone()));
            } else {
                put("preferred_username", Value::from(upn.clone()));
            }
        }
        if let Some(roles) = &self.roles {
            put("roles", Value::from(roles.clone()));
        }
        if let Some(scp) = &self.scp {
            put("scp", Value::from(scp.clone()));
        }
        if let Some(idtyp) = &self.idtyp {
            put("idtyp", Value::from(idtyp.clone()));
        }
        put("uti", Value::from(b64url(new_guid().as_bytes())));
        merge(&mut c, &self.extra_claims);
        c
    }

    /// The JOSE header for a token signed by `key`: `{"typ","alg","x5t","kid"}` for v1 like
    /// AAD, `{"typ","alg","kid"}` for v2, then [`TokenSpec::extra_header`].
    pub fn header_for(&self, key: &SigningKey) -> Map<String, Value> {
        let mut h = Map::new();
        h.insert("typ".into(), Value::from("JWT"));
        h.insert("alg".into(), Value::from("RS256"));
        if self.ver == 1 {
            h.insert("x5t".into(), Value::from(key.x5t()));
        }
        h.insert("kid".into(), Value::from(key.kid()));
        merge(&mut h, &self.extra_header);
        h
    }
}

/// Merges `extra` into `target`; a `null` value removes the member.
fn merge(target: &mut Map<String, Value>, extra: &Map<String, Value>) {
    for (name, value) in extra {
        if value.is_null() {
            target.remove(name);
        } else {
            target.insert(name.clone(), value.clone());
        }
    }
}

/// Builds a JWS compact string from any header and claims, signed RS256 with `key`.
pub(crate) fn sign_compact(
    key: &SigningKey,
    header: &Map<String, Value>,
    claims: &Map<String, Value>,
) -> Result<String, EmulatorError> {
    let header_json =
        serde_json::to_vec(header).map_err(|e| EmulatorError::Signing(e.to_string()))?;
    let claims_json =
        serde_json::to_vec(claims).map_err(|e| EmulatorError::Signing(e.to_string()))?;
    let signing_input = format!("{}.{}", b64url(&header_json), b64url(&claims_json));
    let signature = key.sign(signing_input.as_bytes())?;
    Ok(format!("{signing_input}.{signature}"))
}

impl SigningKey {
    /// Mints the token `spec` describes, signed with this key. Like [`SigningKey::mint`] but
    /// returns signing errors instead of panicking.
    pub fn try_mint(&self, spec: &TokenSpec) -> Result<String, EmulatorError> {
        let now = spec.now.unwrap_or_else(unix_now);
        sign_compact(self, &spec.header_for(self), &spec.claims_at(now))
    }

    /// Mints the token `spec` describes, signed with this key.
    ///
    /// Cannot fail in practice: every `SigningKey` constructor has already signed and verified
    /// a probe message with this very key.
    pub fn mint(&self, spec: &TokenSpec) -> String {
        match self.try_mint(spec) {
            Ok(token) => token,
            // Unreachable by construction (see above); keep the invariant loud if it ever breaks.
            Err(e) => panic!("signing with a validated key failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::b64url_decode;
    use jsonwebtoken::Algorithm;

    fn decode_part(part: &str) -> Map<String, Value> {
        let bytes = b64url_decode(part).expect("base64url");
        serde_json::from_slice(&bytes).expect("json object")
    }

    fn split(token: &str) -> (Map<String, Value>, Map<String, Value>, String) {
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        (
            decode_part(parts[0]),
            decode_part(parts[1]),
            parts[2].to_string(),
        )
    }

    #[test]
    fn v2_user_token_has_aad_claims_and_verifies_with_published_n_e() {
        let key = SigningKey::generate().expect("key");
        let spec = TokenSpec::user(DEFAULT_TENANT, "api://orders", "Orders.Read User.Read")
            .with_upn("alice@contoso.example")
            .with_now(1_700_000_000);
        let token = key.mint(&spec);
        let (header, claims, sig) = split(&token);
        assert_eq!(header.get("typ"), Some(&Value::from("JWT")));
        assert_eq!(header.get("alg"), Some(&Value::from("RS256")));
        assert_eq!(header.get("kid"), Some(&Value::from(key.kid())));
        assert!(header.get("x5t").is_none(), "v2 headers carry kid only");
        assert_eq!(claims["iss"], issuer_v2(DEFAULT_TENANT));
        assert_eq!(claims["ver"], "2.0");
        assert_eq!(claims["azp"], DEFAULT_CLIENT_ID);
        assert_eq!(claims["azpacr"], "1");
        assert_eq!(claims["scp"], "Orders.Read User.Read");
        assert_eq!(claims["preferred_username"], "alice@contoso.example");
        assert_eq!(claims["iat"], 1_700_000_000);
        assert_eq!(claims["nbf"], 1_700_000_000);
        assert_eq!(claims["exp"], 1_700_003_600);
        let jwk = key.jwk(None);
        let decoding = jsonwebtoken::DecodingKey::from_rsa_components(
            jwk["n"].as_str().expect("n"),
            jwk["e"].as_str().expect("e"),
        )
        .expect("decoding key");
        let signing_input = token.rsplit_once('.').expect("dot").0;
        assert!(jsonwebtoken::crypto::verify(
            &sig,
            signing_input.as_bytes(),
            &decoding,
            Algorithm::RS256
        )
        .expect("verify"));
    }

    #[test]
    fn v1_app_token_uses_sts_issuer_appid_and_x5t_header() {
        let key = SigningKey::generate().expect("key");
        let token = key.mint(
            &TokenSpec::app(
                DEFAULT_TENANT,
                "https://outlook.office365.com",
                &["Mail.Read"],
            )
            .with_ver(1),
        );
        let (header, claims, _) = split(&token);
        assert_eq!(header["x5t"], key.x5t());
        assert_eq!(header["kid"], key.kid());
        assert_eq!(
            claims["iss"],
            format!("https://sts.windows.net/{DEFAULT_TENANT}/")
        );
        assert_eq!(claims["ver"], "1.0");
        assert_eq!(claims["appid"], DEFAULT_CLIENT_ID);
        assert_eq!(claims["appidacr"], "2");
        assert_eq!(claims["idtyp"], "app");
        assert_eq!(claims["roles"], serde_json::json!(["Mail.Read"]));
        assert!(claims.get("azp").is_none());
    }

    #[test]
    fn extra_claims_and_header_override_and_null_removes() {
        let key = SigningKey::generate().expect("key");
        let spec = TokenSpec::default()
            .with_lifetime(-60)
            .with_not_before_offset(600)
            .with_now(1_000)
            .with_claim("iss", Value::from("https://evil.example/"))
            .without_claim("oid")
            .with_header("jku", Value::from("https://evil.example/keys"))
            .with_header("kid", Value::Null)
            .with_header("alg", Value::from("none"));
        let (header, claims, _) = split(&key.mint(&spec));
        assert_eq!(claims["iss"], "https://evil.example/");
        assert!(claims.get("oid").is_none());
        assert_eq!(claims["exp"], 940);
        assert_eq!(claims["nbf"], 1_600);
        assert_eq!(header["jku"], "https://evil.example/keys");
        assert!(header.get("kid").is_none());
        assert_eq!(header["alg"], "none");
    }
}
