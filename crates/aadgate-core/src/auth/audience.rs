//! Stage 4: `aud` (a string or an array; one accepted entry suffices).

use serde_json::{Map, Value};

use crate::reason::{Reason, Rejection};

const GRAPH_AUDIENCES: [&str; 3] = [
    "https://graph.microsoft.com",
    "00000003-0000-0000-c000-000000000000",
    "https://graph.microsoft.com/",
];

/// Checks that one of the token's audiences is accepted.
pub fn check(claims: &Map<String, Value>, accepted: &[String]) -> Result<(), Rejection> {
    check_list(&super::claims::audiences(claims), accepted)
}

/// The same check on the token's audience list (a cached token keeps only that).
pub fn check_list(auds: &[impl AsRef<str>], accepted: &[String]) -> Result<(), Rejection> {
    if auds
        .iter()
        .any(|a| accepted.iter().any(|x| x == a.as_ref()))
    {
        return Ok(());
    }
    let auds: Vec<&str> = auds.iter().map(AsRef::as_ref).collect();
    let got = if auds.is_empty() {
        "no audience".to_string()
    } else {
        format!("audience {}", auds.join(", "))
    };
    let mut message = format!(
        "the token was issued for {got}; this API accepts {}",
        accepted.join(", ")
    );
    if auds.iter().any(|a| GRAPH_AUDIENCES.contains(a)) {
        message.push_str(". It is a Microsoft Graph token: request a token for this API (scope \"<App ID URI>/.default\"), not for Graph");
    } else {
        message.push_str(". Request the token for this API's App ID URI or client id (scope \"<App ID URI>/.default\" for app-only callers)");
    }
    Err(Rejection::new(Reason::BadAudience, message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn one_accepted_audience_suffices() {
        let accepted = vec![
            "api://orders".to_string(),
            "6e74172b-be56-4843-9ff4-e66a39bb12e3".to_string(),
        ];
        let table = [
            (json!({"aud": "api://orders"}), true),
            (
                json!({"aud": ["x", "6e74172b-be56-4843-9ff4-e66a39bb12e3"]}),
                true,
            ),
            (json!({"aud": "api://other"}), false),
            (json!({"aud": []}), false),
            (json!({"aud": 5}), false),
            (json!({}), false),
        ];
        for (c, ok) in table {
            let m = c.as_object().cloned().unwrap_or_default();
            assert_eq!(check(&m, &accepted).is_ok(), ok, "{c}");
        }
    }
}
