//! Stage 4 (after the audience): the token must be an access token. Access tokens name the
//! client application they were issued to (`appid` in v1, `azp` in v2); ID tokens, and tokens of
//! other kinds, carry neither, and are refused with `not_access_token` before the issuer check.

use serde_json::{Map, Value};

use crate::reason::{Reason, Rejection};

/// Checks that the token has a non-empty `appid` or `azp`. Returns the client id found.
pub fn check(claims: &Map<String, Value>) -> Result<&str, Rejection> {
    let named = |name: &str| {
        claims
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    named("appid").or_else(|| named("azp")).ok_or_else(|| {
        Rejection::new(
            Reason::NotAccessToken,
            "the token has neither `appid` nor `azp`, so it is not an access token (an ID token, or a token of another kind); request an access token for this API (scope \"<App ID URI>/.default\" or \"<App ID URI>/<scope>\") and send that",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_tokens_naming_a_client_application_are_access_tokens() {
        let table = [
            (json!({"appid": "c"}), Ok("c")),
            (json!({"azp": "c"}), Ok("c")),
            (json!({"appid": "a", "azp": "b"}), Ok("a")),
            (json!({"appid": "", "azp": "b"}), Ok("b")),
            // An ID token: aud = the client id, roles, but no appid/azp.
            (
                json!({"aud": "6e74172b-be56-4843-9ff4-e66a39bb12e3", "roles": ["Admin"], "nonce": "n"}),
                Err(Reason::NotAccessToken),
            ),
            (json!({}), Err(Reason::NotAccessToken)),
            (json!({"appid": ""}), Err(Reason::NotAccessToken)),
            (
                json!({"appid": 5, "azp": null}),
                Err(Reason::NotAccessToken),
            ),
            (json!({"appid": ["c"]}), Err(Reason::NotAccessToken)),
        ];
        for (c, want) in table {
            let m = c.as_object().cloned().unwrap_or_default();
            assert_eq!(check(&m).map_err(|r| r.reason), want, "{c}");
        }
    }
}
