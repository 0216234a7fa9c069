//! The client assertion of the client-credentials grant (RFC 7523, AAD "certificate
//! credentials"): a JWT signed RS256 with the exchange certificate's private key.
//!
//! Built once per token request, right before the request is sent; it is never cached, logged
//! or printed (`Debug` is redacted).

use std::fmt;

use jsonwebtoken::{Algorithm, Header};
use serde::Serialize;

use super::certs::LoadedCertificate;

/// How long an assertion is valid, in seconds. AAD accepts up to 10 minutes ahead for the
/// `exp` of an assertion it checks strictly; five minutes covers any request timeout.
pub const ASSERTION_LIFETIME_SECS: i64 = 300;
const _: () = assert!(
    ASSERTION_LIFETIME_SECS <= 600,
    "AAD wants exp at most 10 minutes ahead"
);

/// A signed client assertion. The text is a credential: `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct ClientAssertion(String);

impl ClientAssertion {
    /// An assertion obtained elsewhere (a federated token, a managed identity's token).
    pub(crate) fn from_secret(token: String) -> Self {
        ClientAssertion(token)
    }

    /// The compact JWS, for the `client_assertion` form field only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ClientAssertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientAssertion(<redacted>)")
    }
}

/// The claims AAD reads from a client assertion.
#[derive(Debug, Serialize)]
struct AssertionClaims<'a> {
    aud: &'a str,
    iss: &'a str,
    sub: &'a str,
    jti: String,
    iat: i64,
    nbf: i64,
    exp: i64,
}

/// Signs a client assertion for `client_id` addressed to `audience` (the tenant's token
/// endpoint URL, `{tenantid}` already replaced), valid from `now` (Unix seconds) for
/// [`ASSERTION_LIFETIME_SECS`]. The header names the certificate by `x5t` (SHA-1) and
/// `x5t#S256`, and with `send_x5c` carries the certificate chain as `x5c` (subject name and
/// issuer authentication). Fails only when the key cannot sign (which `certs::load_pair`
/// already ruled out).
pub fn sign(
    cert: &LoadedCertificate,
    client_id: &str,
    audience: &str,
    now: i64,
    send_x5c: bool,
) -> Result<ClientAssertion, jsonwebtoken::errors::Error> {
    use base64::Engine as _;
    let mut header = Header::new(Algorithm::RS256);
    header.typ = Some("JWT".to_string());
    header.x5t = Some(cert.x5t.clone());
    header.x5t_s256 = Some(cert.x5t_s256.clone());
    if send_x5c {
        header.x5c = Some(
            cert.chain_der
                .iter()
                .map(|der| base64::engine::general_purpose::STANDARD.encode(der))
                .collect(),
        );
    }
    let claims = AssertionClaims {
        aud: audience,
        iss: client_id,
        sub: client_id,
        jti: uuid::Uuid::new_v4().to_string(),
        iat: now,
        nbf: now,
        exp: now + ASSERTION_LIFETIME_SECS,
    };
    jsonwebtoken::encode(&header, &claims, &cert.encoding_key).map(ClientAssertion)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::certs::load_pair;
    use jsonwebtoken::{DecodingKey, Validation};
    use serde_json::Value;
    use std::path::Path;

    /// A throwaway self-signed RSA-2048 certificate, loaded as the gateway loads its own.
    pub(crate) fn test_certificate(dir: &Path, name: &str) -> LoadedCertificate {
        let key =
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .expect("generate RSA key");
        let params =
            rcgen::CertificateParams::new(vec![format!("{name}.aadgate.test")]).expect("params");
        let cert = params.self_signed(&key).expect("self-sign");
        let cert_path = dir.join(format!("{name}.crt"));
        let key_path = dir.join(format!("{name}.key"));
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        load_pair(&cert_path, &key_path).expect("load pair")
    }

    fn decoding_key(cert: &LoadedCertificate) -> DecodingKey {
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert.cert_der).expect("parse cert");
        DecodingKey::from_rsa_der(&parsed.public_key().subject_public_key.data)
    }

    #[test]
    fn assertion_names_the_certificate_and_verifies_with_its_public_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = test_certificate(dir.path(), "signer");
        let aud = "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/oauth2/v2.0/token";
        let now = crate::clock::unix_now();
        let a = sign(
            &cert,
            "3c2a9b8e-5d4f-4e6a-9b1c-7d8e9f0a1b2c",
            aud,
            now,
            false,
        )
        .expect("sign");

        let header = jsonwebtoken::decode_header(a.expose()).expect("header");
        assert_eq!(header.alg, Algorithm::RS256);
        assert_eq!(header.typ.as_deref(), Some("JWT"));
        assert_eq!(header.x5t.as_deref(), Some(cert.x5t.as_str()));
        assert_eq!(header.x5t_s256.as_deref(), Some(cert.x5t_s256.as_str()));
        assert_eq!(header.kid, None);
        assert_eq!(header.x5c, None, "no chain unless send_x5c");
        let with_chain = sign(
            &cert,
            "3c2a9b8e-5d4f-4e6a-9b1c-7d8e9f0a1b2c",
            aud,
            now,
            true,
        )
        .expect("sign");
        let chain = jsonwebtoken::decode_header(with_chain.expose())
            .expect("header")
            .x5c
            .expect("x5c");
        use base64::Engine as _;
        assert_eq!(
            chain,
            [base64::engine::general_purpose::STANDARD.encode(&cert.cert_der)],
            "send_x5c: the chain, standard base64 DER, certificate first"
        );

        let mut v = Validation::new(Algorithm::RS256);
        v.set_audience(&[aud]);
        v.set_issuer(&["3c2a9b8e-5d4f-4e6a-9b1c-7d8e9f0a1b2c"]);
        v.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
        let data =
            jsonwebtoken::decode::<Value>(a.expose(), &decoding_key(&cert), &v).expect("verifies");
        let c = data.claims;
        assert_eq!(c["sub"], "3c2a9b8e-5d4f-4e6a-9b1c-7d8e9f0a1b2c");
        assert_eq!(c["iat"], now);
        assert_eq!(c["nbf"], now);
        assert_eq!(c["exp"], now + ASSERTION_LIFETIME_SECS);
        let jti = c["jti"].as_str().expect("jti");
        assert_eq!(
            uuid::Uuid::parse_str(jti).map(|u| u.get_version_num()).ok(),
            Some(4)
        );
    }

    #[test]
    fn every_assertion_has_a_fresh_jti() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = test_certificate(dir.path(), "signer");
        let jti = |a: &ClientAssertion| {
            let data =
                jsonwebtoken::dangerous::insecure_decode::<Value>(a.expose()).expect("decode");
            data.claims["jti"].as_str().map(String::from)
        };
        let a = sign(
            &cert,
            "c",
            "https://x/t/oauth2/v2.0/token",
            1_700_000_000,
            false,
        )
        .expect("sign");
        let b = sign(
            &cert,
            "c",
            "https://x/t/oauth2/v2.0/token",
            1_700_000_000,
            false,
        )
        .expect("sign");
        assert_ne!(jti(&a), jti(&b));
    }

    #[test]
    fn debug_of_an_assertion_is_redacted() {
        let a = ClientAssertion("eyJhbGciOiJSUzI1NiJ9.e30.c2ln".to_string());
        assert_eq!(format!("{a:?}"), "ClientAssertion(<redacted>)");
    }
}
