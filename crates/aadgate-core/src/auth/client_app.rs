//! Stage 6: the calling client application (`appid` for v1, `azp` for v2) against the allow-list
//! (the route's, or `[clients]`), and its authentication strength (`appidacr`/`azpacr`).

use std::collections::HashSet;

use super::claims::VerifiedToken;
use crate::config::{ClientSettings, Route};
use crate::reason::{Reason, Rejection};

/// Checks the client id and strength for `route`.
pub fn check(
    token: &VerifiedToken,
    route: &Route,
    global: &ClientSettings,
) -> Result<(), Rejection> {
    let allow: &HashSet<String> = route.clients.as_ref().unwrap_or(&global.allow);
    let client = token.client_id();
    if !allow.is_empty() {
        match client {
            Some(c) if allow.contains(&c.to_ascii_lowercase()) => {}
            Some(c) => {
                return Err(Rejection::new(
                    Reason::ClientNotAllowed,
                    format!("client application {c} is not allowed to call this API; an operator can add it to [clients] allow (or the route's clients)"),
                ))
            }
            None => {
                return Err(Rejection::new(
                    Reason::ClientNotAllowed,
                    "the token names no client application (no appid or azp claim)",
                ))
            }
        }
    }
    let required = route.min_auth_strength;
    if required > 0 {
        let have = token.auth_strength.unwrap_or(0);
        if have < required {
            let claim = token
                .client
                .as_ref()
                .map_or("appidacr", |(c, _)| c.strength_claim());
            let hint = match (have, required) {
                (1, 2) => ": the client authenticated with a client secret; this API requires a certificate (or a managed identity / federated credential)",
                (0, _) => ": the client is a public client (no credential); this API requires a confidential client",
                _ => "",
            };
            return Err(Rejection::new(
                Reason::WeakClientAuth,
                format!("client authentication strength ({claim}) is {have}, this route requires {required}{hint}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::sync::Arc;

    fn token(v: Value) -> VerifiedToken {
        VerifiedToken::from_claims(v.as_object().cloned().unwrap_or_default(), Arc::from("k"))
    }

    fn global(allow: &[&str], min: u8) -> ClientSettings {
        ClientSettings {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            min_auth_strength: min,
        }
    }

    #[test]
    fn an_empty_allow_list_admits_any_client() {
        let r = Route::for_test("r", "/");
        assert!(check(
            &token(json!({"ver": "2.0", "azp": "x"})),
            &r,
            &global(&[], 0)
        )
        .is_ok());
    }

    #[test]
    fn the_client_must_be_listed_case_insensitively() {
        let r = Route::for_test("r", "/");
        let g = global(&["abc"], 0);
        assert!(check(&token(json!({"ver": "1.0", "appid": "ABC"})), &r, &g).is_ok());
        for t in [
            json!({"ver": "1.0", "appid": "other"}),
            json!({"ver": "1.0"}),
        ] {
            assert_eq!(
                check(&token(t), &r, &g).map_err(|e| e.reason),
                Err(Reason::ClientNotAllowed)
            );
        }
    }

    #[test]
    fn a_route_list_replaces_the_global_list() {
        let mut r = Route::for_test("r", "/");
        r.clients = Some(["special".to_string()].into_iter().collect());
        let g = global(&["abc"], 0);
        assert_eq!(
            check(&token(json!({"appid": "abc"})), &r, &g).map_err(|e| e.reason),
            Err(Reason::ClientNotAllowed)
        );
        assert!(check(&token(json!({"appid": "special"})), &r, &g).is_ok());
    }

    #[test]
    fn strength_follows_the_claim_that_named_the_client() {
        let mut r = Route::for_test("r", "/");
        r.min_auth_strength = 2;
        let g = global(&[], 0);
        let table = [
            (json!({"ver": "1.0", "appid": "a", "appidacr": "2"}), true),
            (
                json!({"ver": "1.0", "appid": "a", "appidacr": "1", "azpacr": "2"}),
                false,
            ),
            (json!({"ver": "2.0", "azp": "a", "azpacr": 2}), true),
            (json!({"ver": "2.0", "azp": "a", "azpacr": "0"}), false),
            (json!({"ver": "2.0", "azp": "a"}), false),
        ];
        for (t, ok) in table {
            let got = check(&token(t.clone()), &r, &g).map_err(|e| e.reason);
            assert_eq!(got.is_ok(), ok, "{t}");
            if !ok {
                assert_eq!(got, Err(Reason::WeakClientAuth));
            }
        }
    }
}
