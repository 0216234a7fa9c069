//! Stage 6: the calling client application (`appid` for v1, `azp` for v2) against the allow-list
//! (the route's, or `[clients]`), and its authentication strength (`appidacr`/`azpacr`).

use std::collections::HashSet;

use super::claims::VerifiedToken;
use super::error::{Reason, Rejection};
use crate::config::{ClientSettings, Route};

/// Checks the client id and strength for `route`.
pub fn check(token: &VerifiedToken, route: &Route, global: &ClientSettings) -> Result<(), Rejection> {
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
            let claim = token.client.as_ref().map_or("appidacr", |(c, _)| c.strength_claim());
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
