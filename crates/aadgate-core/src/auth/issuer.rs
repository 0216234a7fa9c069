//! Stage 5: the issuer. `tid` must be a GUID; `iss` must equal a configured template with
//! `{tenantid}` replaced by `tid`; and when the verifying key carries an `issuer` (AAD's v2
//! keys do), that too must match after the same substitution.

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::config::is_guid;
use crate::jwks::Jwk;
use crate::reason::{Reason, Rejection};

const TENANT_PLACEHOLDER: &str = "{tenantid}";

/// The token's `tid` (lower-case), or `bad_issuer` when missing or not a GUID.
pub fn tenant_id(claims: &Map<String, Value>) -> Result<String, Rejection> {
    tenant_id_of(claims.get("tid").and_then(Value::as_str)).map(Cow::into_owned)
}

fn tenant_id_of(raw_tid: Option<&str>) -> Result<Cow<'_, str>, Rejection> {
    match raw_tid {
        Some(t) if is_guid(t) && !t.bytes().any(|b| b.is_ascii_uppercase()) => Ok(Cow::Borrowed(t)),
        Some(t) if is_guid(t) => Ok(Cow::Owned(t.to_ascii_lowercase())),
        Some(t) => Err(Rejection::new(
            Reason::BadIssuer,
            format!("the token's tid {t:?} is not a tenant GUID"),
        )),
        None => Err(Rejection::new(
            Reason::BadIssuer,
            "the token has no `tid` claim, so its issuer cannot be tied to a tenant",
        )),
    }
}

fn fill(template: &str, tid: &str) -> String {
    template.replace(TENANT_PLACEHOLDER, tid)
}

/// `fill(template, tid) == candidate`, without building the filled string (this runs on every
/// cache hit).
fn filled_eq(template: &str, tid: &str, candidate: &str) -> bool {
    let (mut t, mut c) = (template, candidate);
    loop {
        let at = t
            .match_indices('{')
            .map(|(i, _)| i)
            .find(|&i| t[i..].starts_with(TENANT_PLACEHOLDER));
        let Some(i) = at else {
            return t == c;
        };
        let Some(rest) = c
            .strip_prefix(&t[..i])
            .and_then(|rest| rest.strip_prefix(tid))
        else {
            return false;
        };
        c = rest;
        t = &t[i + TENANT_PLACEHOLDER.len()..];
    }
}

/// Checks `iss` against the templates and the signing key's issuer. Returns the lower-case tid.
pub fn check(
    claims: &Map<String, Value>,
    key: &Jwk,
    templates: &[String],
) -> Result<String, Rejection> {
    let raw_tid = claims.get("tid").and_then(Value::as_str);
    let iss = claims
        .get("iss")
        .and_then(Value::as_str)
        .unwrap_or_default();
    check_fields(raw_tid, iss, key, templates).map(Cow::into_owned)
}

/// The same check on the token's `tid` (as spelled) and `iss` (a cached token keeps only these).
pub fn check_fields<'a>(
    raw_tid: Option<&'a str>,
    iss: &str,
    key: &Jwk,
    templates: &[String],
) -> Result<Cow<'a, str>, Rejection> {
    let tid = tenant_id_of(raw_tid)?;
    let raw_tid = raw_tid.unwrap_or_default();
    // A GUID in the issuer may use either case; compare with the token's own spelling and ours.
    let matches = |candidate: &str| {
        templates.iter().any(|t| {
            filled_eq(t, &tid, candidate) || (*tid != *raw_tid && filled_eq(t, raw_tid, candidate))
        })
    };
    if !matches(iss) {
        let expected: Vec<String> = templates.iter().map(|t| fill(t, &tid)).collect();
        let mut message = format!(
            "the token's issuer {iss:?} is not one of the accepted issuers for tenant {tid} ({})",
            expected.join(", ")
        );
        if iss.starts_with("https://sts.windows.net/")
            && !templates
                .iter()
                .any(|t| t.starts_with("https://sts.windows.net/"))
        {
            message.push_str(". It is a v1 token: add \"https://sts.windows.net/{tenantid}/\" to [tenants] issuers, or set accessTokenAcceptedVersion = 2 in the API's app manifest");
        } else if iss.contains("/v2.0") && !templates.iter().any(|t| t.contains("/v2.0")) {
            message.push_str(". It is a v2 token: add \"https://login.microsoftonline.com/{tenantid}/v2.0\" to [tenants] issuers");
        }
        return Err(Rejection::new(Reason::BadIssuer, message));
    }
    if let Some(key_issuer) = &key.issuer {
        // The key's issuer, filled with the tenant, must be the token's issuer or an accepted
        // one. A key whose template is itself configured always qualifies (AAD's common keys
        // carry the v2 template); the general comparison builds the filled strings.
        let ok = filled_eq(key_issuer, &tid, iss)
            || filled_eq(key_issuer, raw_tid, iss)
            || templates.iter().any(|t| t == key_issuer)
            || matches(&fill(key_issuer, &tid))
            || matches(&fill(key_issuer, raw_tid));
        if !ok {
            let filled = fill(key_issuer, &tid);
            return Err(Rejection::new(
                Reason::BadIssuer,
                format!("the signing key is for issuer {filled:?}, which does not match the token's issuer {iss:?}"),
            ));
        }
    }
    Ok(tid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TID: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

    fn key(issuer: Option<&str>) -> Jwk {
        Jwk {
            kid: Some("k".into()),
            x5t: None,
            issuer: issuer.map(String::from),
            key: jsonwebtoken::DecodingKey::from_rsa_raw_components(&[1; 256], &[1, 0, 1]),
            rs256: None,
            fingerprint: [0; 32],
        }
    }

    fn templates() -> Vec<String> {
        crate::config::DEFAULT_ISSUERS
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn run(
        claims: Value,
        key_issuer: Option<&str>,
        templates: &[String],
    ) -> Result<String, Reason> {
        check(
            claims.as_object().expect("object"),
            &key(key_issuer),
            templates,
        )
        .map_err(|r| r.reason)
    }

    #[test]
    fn v1_and_v2_issuers_of_the_token_tenant_pass() {
        let v1 = json!({"tid": TID, "iss": format!("https://sts.windows.net/{TID}/")});
        let v2 =
            json!({"tid": TID, "iss": format!("https://login.microsoftonline.com/{TID}/v2.0")});
        assert_eq!(run(v1, None, &templates()), Ok(TID.to_string()));
        assert_eq!(run(v2, None, &templates()), Ok(TID.to_string()));
    }

    #[test]
    fn issuer_of_another_tenant_or_bad_tid_fails() {
        let other = "11111111-1111-1111-1111-111111111111";
        let table = [
            json!({"tid": TID, "iss": format!("https://sts.windows.net/{other}/")}),
            json!({"tid": "contoso.com", "iss": "https://sts.windows.net/contoso.com/"}),
            json!({"iss": format!("https://sts.windows.net/{TID}/")}),
            json!({"tid": TID, "iss": format!("https://sts.windows.net/{TID}")}),
            json!({"tid": TID, "iss": format!("00000001-0000-0000-c000-000000000000@{TID}")}),
            json!({"tid": TID}),
        ];
        for c in table {
            assert_eq!(
                run(c.clone(), None, &templates()),
                Err(Reason::BadIssuer),
                "{c}"
            );
        }
    }

    #[test]
    fn v1_token_only_passes_when_a_v1_template_is_configured() {
        let v1 = json!({"tid": TID, "iss": format!("https://sts.windows.net/{TID}/")});
        let only_v2 = vec!["https://login.microsoftonline.com/{tenantid}/v2.0".to_string()];
        assert_eq!(run(v1, None, &only_v2), Err(Reason::BadIssuer));
    }

    #[test]
    fn signing_key_issuer_must_match_after_substitution() {
        let v2_key = Some("https://login.microsoftonline.com/{tenantid}/v2.0");
        let v1 = json!({"tid": TID, "iss": format!("https://sts.windows.net/{TID}/")});
        let v2 =
            json!({"tid": TID, "iss": format!("https://login.microsoftonline.com/{TID}/v2.0")});
        // A v1 token verified by a key whose issuer is the v2 form passes (same tenant).
        assert!(run(v1, v2_key, &templates()).is_ok());
        assert!(run(v2.clone(), v2_key, &templates()).is_ok());
        let foreign =
            Some("https://login.microsoftonline.com/22222222-2222-2222-2222-222222222222/v2.0");
        assert_eq!(run(v2, foreign, &templates()), Err(Reason::BadIssuer));
    }

    #[test]
    fn filled_eq_agrees_with_filling_the_template() {
        let templates = [
            "https://sts.windows.net/{tenantid}/",
            "https://login.microsoftonline.com/{tenantid}/v2.0",
            "{tenantid}",
            "{tenantid}{tenantid}",
            "https://a/{tenant}/{tenantid}/{",
            "no placeholder",
            "",
        ];
        let tids = [TID, "", "x"];
        let mut candidates: Vec<String> = vec![
            String::new(),
            "https://sts.windows.net/".into(),
            format!("https://sts.windows.net/{TID}"),
            format!("https://sts.windows.net/{TID}//"),
        ];
        for t in templates {
            for tid in tids {
                candidates.push(fill(t, tid));
            }
        }
        for t in templates {
            for tid in tids {
                for c in &candidates {
                    assert_eq!(
                        filled_eq(t, tid, c),
                        fill(t, tid) == *c,
                        "{t:?} {tid:?} {c:?}"
                    );
                }
            }
        }
    }
}
