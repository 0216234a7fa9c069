//! Stage 3–4: the algorithm allow-list and the signature check.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;

use super::keys::FoundKey;
use super::token::{JoseHeader, ParsedToken};
use crate::reason::{Reason, Rejection};

/// Refuses any `alg` not in `allowed` (which never contains `none` or an HMAC algorithm).
pub fn check_algorithm(header: &JoseHeader, allowed: &[Algorithm]) -> Result<Algorithm, Rejection> {
    let alg = match header.alg.as_str() {
        "RS256" => Some(Algorithm::RS256),
        "RS384" => Some(Algorithm::RS384),
        "RS512" => Some(Algorithm::RS512),
        "PS256" => Some(Algorithm::PS256),
        "PS384" => Some(Algorithm::PS384),
        "PS512" => Some(Algorithm::PS512),
        _ => None,
    };
    match alg {
        Some(a) if allowed.contains(&a) => Ok(a),
        _ => Err(Rejection::new(
            Reason::UnsupportedAlg,
            format!(
                "the token is signed with alg {:?}; this gateway accepts {}",
                header.alg,
                allowed
                    .iter()
                    .map(|a| format!("{a:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// Verifies the signature over `header.payload` with the found key.
pub fn verify(token: &ParsedToken<'_>, key: &FoundKey, alg: Algorithm) -> Result<(), Rejection> {
    let bad = || {
        if token.header.has_nonce {
            Rejection::new(
                Reason::BadSignature,
                "the token has a `nonce` header: it is a Microsoft Graph token, issued for Graph and verifiable only by Graph. Request a token for this API instead (scope \"<this API's App ID URI>/.default\")",
            )
        } else {
            Rejection::new(
                Reason::BadSignature,
                "the token's signature does not verify",
            )
        }
    };
    if token.signature.is_empty() {
        return Err(bad());
    }
    let verified = match (&key.jwk.rs256, alg) {
        // The common case: the key parsed once when the key set was loaded.
        (Some(parsed), Algorithm::RS256) => URL_SAFE_NO_PAD
            .decode(token.signature)
            .ok()
            .is_some_and(|sig| {
                parsed
                    .verify_sig(token.signing_input.as_bytes(), &sig)
                    .is_ok()
            }),
        _ => jsonwebtoken::crypto::verify(
            token.signature,
            token.signing_input.as_bytes(),
            &key.jwk.key,
            alg,
        )
        .unwrap_or(false),
    };
    if verified {
        Ok(())
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(alg: &str) -> JoseHeader {
        JoseHeader {
            alg: alg.into(),
            kid: Some("k".into()),
            x5t: None,
            has_nonce: false,
        }
    }

    #[test]
    fn only_configured_asymmetric_algorithms_pass() {
        let allowed = [Algorithm::RS256];
        assert_eq!(
            check_algorithm(&header("RS256"), &allowed),
            Ok(Algorithm::RS256)
        );
        for alg in [
            "none", "None", "NONE", "HS256", "HS512", "RS512", "ES256", "", "rs256",
        ] {
            assert_eq!(
                check_algorithm(&header(alg), &allowed).map_err(|r| r.reason),
                Err(Reason::UnsupportedAlg),
                "{alg}"
            );
        }
    }
}
