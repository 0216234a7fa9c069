//! What the proxy changes on a request it forwards with an app-only token: the `/me` path
//! rewrite and the Microsoft-style request headers.

use std::time::SystemTime;

use http::header::{DATE, USER_AGENT};
use http::{HeaderName, HeaderValue};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::auth::VerifiedToken;
use crate::config::is_guid;

/// Characters percent-encoded in a path segment: everything outside RFC 3986 `pchar`
/// (`unreserved / pct-encoded / sub-delims / ":" / "@"`), and `%` itself.
const NOT_PCHAR: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'!')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b';')
    .remove(b'=')
    .remove(b':')
    .remove(b'@');

/// `client-request-id`.
pub const CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("client-request-id");
/// `return-client-request-id`.
pub const RETURN_CLIENT_REQUEST_ID: HeaderName =
    HeaderName::from_static("return-client-request-id");

/// `user_value` as one path segment: characters outside `pchar` percent-encoded (`@` stays);
/// a value of `.` or `..` has its dots encoded so it cannot act as a dot segment.
pub fn encode_segment(user: &str) -> String {
    if user == "." || user == ".." {
        return user.replace('.', "%2E");
    }
    utf8_percent_encode(user, NOT_PCHAR).to_string()
}

fn is_me(segment: &str) -> bool {
    segment.len() <= 6
        && percent_decode_str(segment)
            .decode_utf8()
            .is_ok_and(|s| s.eq_ignore_ascii_case("me"))
}

/// Whether `path` (query ignored) has a `me` segment that [`rewrite_me`] would replace.
pub fn has_me_segment(path: &str) -> bool {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    path.split('/').any(is_me)
}

/// The path with its first `me` segment replaced by `users/<user>`, the query kept:
/// `/api/v2.0/me/messages?$top=1` → `/api/v2.0/users/<user>/messages?$top=1`, `/me` →
/// `/users/<user>`. `me` is matched as a whole segment, ASCII case-insensitively (Outlook and
/// Graph accept `/Me/` too) and after percent-decoding (`/%6De/`), so `/meetings` is left
/// alone; only the first such segment is replaced (a later `me` is an id, not the alias).
/// `user` is encoded as one segment (see [`encode_segment`]).
///
/// Returns `None` when the path has no `me` segment, or `user` is empty: then the path is
/// forwarded unchanged, so the proxy must check [`has_me_segment`] and [`user_value`] first
/// when it needs a user.
pub fn rewrite_me(path: &str, user: &str) -> Option<String> {
    if user.is_empty() {
        return None;
    }
    let (path_part, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let mut replaced = false;
    let segments: Vec<String> = path_part
        .split('/')
        .map(|seg| {
            if !replaced && is_me(seg) {
                replaced = true;
                format!("users/{}", encode_segment(user))
            } else {
                seg.to_string()
            }
        })
        .collect();
    if !replaced {
        return None;
    }
    let mut out = segments.join("/");
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Some(out)
}

/// The headers the proxy sets on a request it forwards with an app-only token:
/// `client-request-id` (the caller's when it is a GUID, else a new UUID v4),
/// `return-client-request-id: true`, `user-agent: aadgate/<version>` and `date` (HTTP-date of
/// `now`).
pub fn exchange_headers(
    caller_client_request_id: Option<&str>,
    now: SystemTime,
) -> Vec<(HeaderName, HeaderValue)> {
    let id = caller_client_request_id
        .map(str::trim)
        .filter(|id| is_guid(id))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), String::from);
    let mut out = Vec::with_capacity(4);
    if let Ok(v) = HeaderValue::from_str(&id) {
        out.push((CLIENT_REQUEST_ID, v));
    }
    out.push((RETURN_CLIENT_REQUEST_ID, HeaderValue::from_static("true")));
    out.push((
        USER_AGENT,
        HeaderValue::from_static(concat!("aadgate/", env!("CARGO_PKG_VERSION"))),
    ));
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(now)) {
        out.push((DATE, v));
    }
    out
}

/// The value that names the user in the `/me` rewrite: the `user_claim` claim of the caller's
/// token (`oid`, or `upn` — falling back to `preferred_username` as the `x-auth-upn` header
/// does, since v2 tokens carry `upn` only as an optional claim). `None` when absent or empty.
pub fn user_value(token: &VerifiedToken, user_claim: &str) -> Option<String> {
    let value = token.claim_text(user_claim).filter(|v| !v.is_empty());
    match value {
        None if user_claim == "upn" => token
            .claim_text("preferred_username")
            .filter(|v| !v.is_empty()),
        v => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn me_segments_become_users_and_everything_else_is_kept() {
        let oid = "9b5c1f6e-1c44-4a0b-8d5e-3f1f0f2b7a11";
        let table: &[(&str, &str, Option<&str>)] = &[
            (
                "/api/v2.0/me/messages",
                oid,
                Some("/api/v2.0/users/9b5c1f6e-1c44-4a0b-8d5e-3f1f0f2b7a11/messages"),
            ),
            (
                "/v1.0/me/mailFolders",
                oid,
                Some("/v1.0/users/9b5c1f6e-1c44-4a0b-8d5e-3f1f0f2b7a11/mailFolders"),
            ),
            (
                "/me",
                oid,
                Some("/users/9b5c1f6e-1c44-4a0b-8d5e-3f1f0f2b7a11"),
            ),
            (
                "/me/",
                oid,
                Some("/users/9b5c1f6e-1c44-4a0b-8d5e-3f1f0f2b7a11/"),
            ),
            ("/Me/events", "u", Some("/users/u/events")),
            ("/%6De/events", "u", Some("/users/u/events")),
            (
                "/api/v2.0/me/messages?$top=5&$select=subject",
                "u",
                Some("/api/v2.0/users/u/messages?$top=5&$select=subject"),
            ),
            ("/me?x=/me", "u", Some("/users/u?x=/me")),
            ("/me/contacts/me", "u", Some("/users/u/contacts/me")),
            (
                "/v1.0/me/messages",
                "adele vance@contoso.com",
                Some("/v1.0/users/adele%20vance@contoso.com/messages"),
            ),
            (
                "/v1.0/me",
                "a/b?c#d%e",
                Some("/v1.0/users/a%2Fb%3Fc%23d%25e"),
            ),
            ("/v1.0/me", "..", Some("/v1.0/users/%2E%2E")),
            ("/v1.0/me", "o'neil+x=y:z", Some("/v1.0/users/o'neil+x=y:z")),
            ("/v1.0/me", "zoë", Some("/v1.0/users/zo%C3%AB")),
            ("/meetings", "u", None),
            ("/v1.0/users/me2/messages", "u", None),
            ("/", "u", None),
            ("/messages?filter=me", "u", None),
            ("/me", "", None),
        ];
        for (path, user, expected) in table {
            assert_eq!(
                rewrite_me(path, user).as_deref(),
                *expected,
                "{path} as {user:?}"
            );
            assert_eq!(
                has_me_segment(path),
                rewrite_me(path, "x").is_some(),
                "{path}"
            );
        }
    }

    #[test]
    fn exchange_headers_are_well_formed() {
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let caller = "4c6e1a9d-2f0b-4c87-9e5a-0d3b2a1c8f77";
        let h = exchange_headers(Some(caller), now);
        let get = |h: &[(HeaderName, HeaderValue)], n: &str| {
            h.iter()
                .find(|(k, _)| k.as_str() == n)
                .and_then(|(_, v)| v.to_str().ok())
                .map(String::from)
        };
        assert_eq!(get(&h, "client-request-id").as_deref(), Some(caller));
        assert_eq!(get(&h, "return-client-request-id").as_deref(), Some("true"));
        assert_eq!(
            get(&h, "user-agent"),
            Some(format!("aadgate/{}", env!("CARGO_PKG_VERSION")))
        );
        assert_eq!(
            get(&h, "date").as_deref(),
            Some("Tue, 14 Nov 2023 22:13:20 GMT")
        );
        assert_eq!(h.len(), 4);

        for bad in [
            None,
            Some("not-a-guid"),
            Some(""),
            Some("4c6e1a9d2f0b4c879e5a0d3b2a1c8f77"),
        ] {
            let h = exchange_headers(bad, now);
            let id = get(&h, "client-request-id").expect("client-request-id");
            assert_eq!(
                uuid::Uuid::parse_str(&id).map(|u| u.get_version_num()).ok(),
                Some(4),
                "{bad:?}"
            );
            assert_eq!(id.len(), 36);
        }
        let a = get(&exchange_headers(None, now), "client-request-id");
        let b = get(&exchange_headers(None, now), "client-request-id");
        assert_ne!(a, b, "a new id each time");
    }

    #[test]
    fn the_user_value_comes_from_the_configured_claim() {
        let claims = |v: serde_json::Value| {
            let serde_json::Value::Object(m) = v else {
                panic!("object")
            };
            VerifiedToken::from_claims(m, Arc::from("kid"))
        };
        let v1 = claims(
            serde_json::json!({"oid": "o-1", "upn": "adele@contoso.com", "scp": "Mail.Read"}),
        );
        assert_eq!(user_value(&v1, "oid").as_deref(), Some("o-1"));
        assert_eq!(user_value(&v1, "upn").as_deref(), Some("adele@contoso.com"));
        let v2 =
            claims(serde_json::json!({"oid": "o-2", "preferred_username": "megan@contoso.com"}));
        assert_eq!(user_value(&v2, "upn").as_deref(), Some("megan@contoso.com"));
        let none = claims(serde_json::json!({"oid": ""}));
        assert_eq!(user_value(&none, "oid"), None);
        assert_eq!(user_value(&none, "upn"), None);
    }
}

/// The claims of a continuous-access-evaluation challenge in an upstream's
/// `WWW-Authenticate` values (`Bearer … error="insufficient_claims", claims="<base64 JSON>"`,
/// [claims challenges](https://learn.microsoft.com/entra/identity-platform/claims-challenge)):
/// the decoded JSON object, or `None` when no value is such a challenge.
pub fn claims_challenge<'a>(
    values: impl IntoIterator<Item = &'a str>,
) -> Option<serde_json::Value> {
    use base64::Engine as _;
    values.into_iter().find_map(|v| {
        let params = auth_params(v);
        let error = params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("error"))?;
        if error.1 != "insufficient_claims" {
            return None;
        }
        let claims = params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("claims"))?;
        let text = claims.1.trim();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(text)
            .or_else(|_| {
                base64::engine::general_purpose::STANDARD_NO_PAD.decode(text.trim_end_matches('='))
            })
            .or_else(|_| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text.trim_end_matches('='))
            })
            .ok()
            // Some resources send the JSON itself rather than its base64.
            .unwrap_or_else(|| text.as_bytes().to_vec());
        serde_json::from_slice::<serde_json::Value>(&decoded)
            .ok()
            .filter(serde_json::Value::is_object)
    })
}

/// `name="value"` / `name=value` pairs of one challenge (the scheme word is skipped).
fn auth_params(value: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = value.trim();
    // Skip the scheme (`Bearer`).
    if let Some((scheme, after)) = rest.split_once(' ') {
        if !scheme.contains('=') {
            rest = after;
        }
    }
    while !rest.is_empty() {
        rest = rest.trim_start_matches([' ', ',']);
        let Some((name, after)) = rest.split_once('=') else {
            break;
        };
        let name = name.trim().to_string();
        let after = after.trim_start();
        let (v, next) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end.min(quoted.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        out.push((name, v));
        rest = next;
    }
    out
}

#[cfg(test)]
mod challenge_tests {
    use super::claims_challenge;
    use base64::Engine as _;

    #[test]
    fn a_cae_challenge_yields_its_claims_and_anything_else_none() {
        let claims = r#"{"access_token":{"nbf":{"essential":true,"value":"1796200000"}}}"#;
        let b64 = base64::engine::general_purpose::STANDARD.encode(claims);
        let header = format!(
            "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", client_id=\"00000003-0000-0000-c000-000000000000\", error=\"insufficient_claims\", claims=\"{b64}\""
        );
        let v = claims_challenge([header.as_str()]).expect("a challenge");
        assert_eq!(v["access_token"]["nbf"]["value"], "1796200000");
        // Among several values, the challenge is found.
        assert!(claims_challenge(["Basic realm=\"x\"", header.as_str()]).is_some());
        for other in [
            "Bearer realm=\"\", error=\"invalid_token\"",
            "Bearer error=\"insufficient_claims\"",
            "Bearer error=\"insufficient_claims\", claims=\"not base64 or json\"",
            "",
        ] {
            assert_eq!(claims_challenge([other]), None, "{other}");
        }
    }
}
