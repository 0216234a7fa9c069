//! Subject name + issuer ("SNI") certificate authentication: an app lists trusted certificate
//! subjects (`trustedCertificateSubjects` in its manifest) instead of registering each
//! certificate, and the client assertion carries its certificate chain in `x5c`
//! (<https://learn.microsoft.com/entra/identity-platform/certificate-credentials>). A leaf the
//! app does not have registered is accepted when its subject's common name is a trusted
//! subject and the trusted authority of that subject issued it (signed it directly); its key
//! then checks the assertion's signature like a registered certificate's.
//!
//! | check | failure |
//! |---|---|
//! | the leaf parses | 401 `invalid_client` 50027 |
//! | its common name is a trusted subject | 401 `invalid_client` 700030 ("Invalid certificate - subject name in certificate isn't authorized") |
//! | that subject's authority issued and signed it | 401 `invalid_client` 50017 ("Certificate validation failed … Cannot find issuing certificate in trusted certificates list") |

use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use x509_parser::certificate::X509Certificate;

use super::errors::AadstsError;
use crate::keys::{cert_info, certificate_thumbprint_hex, x5t_of, x5t_s256_of};
use crate::state::{RegisteredApp, RegisteredCert, TrustedSubject};

/// The `x5c` leaf (`chain[0]`) as the certificate of a trusted subject of `app`.
pub(super) fn trusted_leaf(
    app: &RegisteredApp,
    chain: &[Vec<u8>],
) -> Result<RegisteredCert, AadstsError> {
    let bad = || AadstsError::invalid_client(50_027, "JWT token is invalid or malformed.");
    let leaf_der = chain.first().ok_or_else(bad)?;
    let (_, leaf) = x509_parser::parse_x509_certificate(leaf_der).map_err(|_| bad())?;
    let name = common_name(&leaf).unwrap_or_default();
    let subjects: Vec<&TrustedSubject> = app
        .trusted_subjects
        .iter()
        .filter(|t| t.subject_name.trim_start_matches("CN=") == name)
        .collect();
    if subjects.is_empty() {
        return Err(AadstsError::invalid_client(
            700_030,
            format!(
                "Invalid certificate: subject name in certificate is not authorized. \
                 SubjectNames/SubjectAlternativeNames (up to 10) in token certificate are: {name}"
            ),
        ));
    }
    if !subjects.iter().any(|t| issued_by(&leaf, &t.authority_der)) {
        return Err(AadstsError::invalid_client(
            50_017,
            "Certificate validation failed, reasons: Cannot find issuing certificate in trusted \
             certificates list.",
        ));
    }
    let info = cert_info(leaf_der).map_err(|_| bad())?;
    Ok(RegisteredCert {
        thumbprint_hex: certificate_thumbprint_hex(leaf_der),
        x5t: x5t_of(leaf_der),
        x5t_s256: x5t_s256_of(leaf_der),
        n: info.n,
        e: info.e,
        not_before: info.not_before,
        not_after: info.not_after,
        revoked: false,
    })
}

fn common_name(cert: &X509Certificate<'_>) -> Option<String> {
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
}

/// Whether the authority whose certificate is `authority_der` issued `leaf`: its subject is
/// the leaf's issuer and its key verifies the leaf's signature.
fn issued_by(leaf: &X509Certificate<'_>, authority_der: &[u8]) -> bool {
    let Ok((_, authority)) = x509_parser::parse_x509_certificate(authority_der) else {
        return false;
    };
    if leaf.issuer() != authority.subject() {
        return false;
    }
    let algorithm: &'static dyn VerificationAlgorithm =
        match leaf.signature_algorithm.algorithm.to_id_string().as_str() {
            "1.2.840.113549.1.1.11" => &signature::RSA_PKCS1_2048_8192_SHA256,
            "1.2.840.113549.1.1.12" => &signature::RSA_PKCS1_2048_8192_SHA384,
            "1.2.840.113549.1.1.13" => &signature::RSA_PKCS1_2048_8192_SHA512,
            "1.2.840.10045.4.3.2" => &signature::ECDSA_P256_SHA256_ASN1,
            "1.2.840.10045.4.3.3" => &signature::ECDSA_P384_SHA384_ASN1,
            _ => return false,
        };
    let key = UnparsedPublicKey::new(
        algorithm,
        authority.public_key().subject_public_key.data.as_ref(),
    );
    key.verify(
        leaf.tbs_certificate.as_ref(),
        leaf.signature_value.data.as_ref(),
    )
    .is_ok()
}
