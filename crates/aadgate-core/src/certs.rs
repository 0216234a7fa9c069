//! Loading the X.509 certificate + private key pairs that sign client assertions, with the
//! checks `aadgate check` reports: readable PEM, RSA key of 2048 bits or more, key matching the
//! certificate, and (as a warning) an expired or not-yet-valid certificate.

use std::path::{Path, PathBuf};

use aws_lc_rs::digest;
use aws_lc_rs::signature::KeyPair;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::EncodingKey;

/// Which half of a pair a loading error is about (so the error points at the right key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertError {
    /// The certificate file cannot be read or parsed; the message names the file and the cause.
    Cert(String),
    /// The key file cannot be read or parsed, is not RSA, is under 2048 bits or does not match the
    /// certificate; the message names the file and the cause.
    Key(String),
}

/// A certificate and its private key, ready to sign assertions.
#[derive(Clone)]
pub struct LoadedCertificate {
    /// The certificate file, as configured (resolved against the config file's folder).
    pub cert_path: PathBuf,
    /// The private key file, as configured (resolved against the config file's folder).
    pub key_path: PathBuf,
    /// The DER of the certificate (the first `CERTIFICATE` block of the file); `x5t` and
    /// `x5t_s256` are computed from it.
    pub cert_der: Vec<u8>,
    /// Every `CERTIFICATE` block of the file in order, the certificate first: the chain sent
    /// as `x5c` with `send_x5c = true`.
    pub chain_der: Vec<Vec<u8>>,
    /// base64url SHA-1 of the certificate DER (AAD's certificate thumbprint, `x5t`).
    pub x5t: String,
    /// base64url SHA-256 of the certificate DER (`x5t#S256`).
    pub x5t_s256: String,
    /// The RSA private key that signs client assertions (RS256). Redacted in `Debug`.
    pub encoding_key: EncodingKey,
    /// The certificate's `notBefore`, Unix seconds.
    pub not_before: i64,
    /// The certificate's `notAfter`, Unix seconds.
    pub not_after: i64,
    /// The certificate's subject, for log and `aadgate check` messages.
    pub subject: String,
    /// The RSA modulus length, in bits (at least 2048).
    pub key_bits: usize,
}

impl std::fmt::Debug for LoadedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedCertificate")
            .field("cert_path", &self.cert_path)
            .field("x5t", &self.x5t)
            .field("subject", &self.subject)
            .field("not_after", &self.not_after)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

impl PartialEq for LoadedCertificate {
    fn eq(&self, other: &Self) -> bool {
        self.cert_path == other.cert_path
            && self.key_path == other.key_path
            && self.x5t_s256 == other.x5t_s256
    }
}

impl LoadedCertificate {
    /// A warning when the certificate is outside its validity period now.
    pub fn expiry_warning(&self) -> Option<String> {
        let now = crate::clock::unix_now();
        if now > self.not_after {
            Some(format!(
                "certificate {} ({}) expired at Unix time {}; Azure AD will reject assertions signed with it",
                self.cert_path.display(),
                self.subject,
                self.not_after
            ))
        } else if now < self.not_before {
            Some(format!(
                "certificate {} is not valid yet (notBefore {})",
                self.cert_path.display(),
                self.not_before
            ))
        } else {
            None
        }
    }
}

/// base64url (no padding) of a SHA-1 or SHA-256 digest of `der`.
pub fn thumbprint(der: &[u8], alg: &'static digest::Algorithm) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(alg, der).as_ref())
}

/// Reads a PEM certificate and PEM private key (PKCS#8 or PKCS#1 RSA) and checks they belong
/// together.
pub fn load_pair(cert_path: &Path, key_path: &Path) -> Result<LoadedCertificate, CertError> {
    let cert_pem = std::fs::read(cert_path).map_err(|e| {
        CertError::Cert(format!(
            "certificate {} cannot be read: {e}",
            cert_path.display()
        ))
    })?;
    let chain_der: Vec<Vec<u8>> = pem::parse_many(&cert_pem)
        .map_err(|e| {
            CertError::Cert(format!(
                "certificate {} is not PEM: {e}",
                cert_path.display()
            ))
        })?
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect();
    let cert_der = chain_der.first().cloned().ok_or_else(|| {
        CertError::Cert(format!("{} has no CERTIFICATE block", cert_path.display()))
    })?;
    let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).map_err(|e| {
        CertError::Cert(format!(
            "certificate {} cannot be parsed: {e}",
            cert_path.display()
        ))
    })?;
    let cert_public = cert.public_key().subject_public_key.data.to_vec();
    // aws-lc refuses to load RSA keys under 2048 bits at all; say so plainly instead of
    // "not an RSA private key".
    if let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = cert.public_key().parsed() {
        let bits = rsa.key_size();
        if bits < 2048 {
            return Err(CertError::Key(format!(
                "the RSA key of {} has {bits} bits; Azure AD requires at least 2048",
                cert_path.display()
            )));
        }
    }

    let key_pem = std::fs::read(key_path).map_err(|e| {
        CertError::Key(format!(
            "private key {} cannot be read: {e}",
            key_path.display()
        ))
    })?;
    let key_block = pem::parse_many(&key_pem)
        .map_err(|e| CertError::Key(format!("private key {} is not PEM: {e}", key_path.display())))?
        .into_iter()
        .find(|p| p.tag() == "PRIVATE KEY" || p.tag() == "RSA PRIVATE KEY")
        .ok_or_else(|| {
            CertError::Key(format!(
                "{} has no PRIVATE KEY or RSA PRIVATE KEY block (an encrypted key must be decrypted first)",
                key_path.display()
            ))
        })?;
    let pair = if key_block.tag() == "PRIVATE KEY" {
        aws_lc_rs::rsa::KeyPair::from_pkcs8(key_block.contents())
    } else {
        aws_lc_rs::rsa::KeyPair::from_der(key_block.contents())
    }
    .map_err(|_| CertError::Key(format!("{} is not an RSA private key", key_path.display())))?;
    let key_bits = pair.public_modulus_len() * 8;
    if key_bits < 2048 {
        return Err(CertError::Key(format!(
            "the RSA key in {} has {key_bits} bits; Azure AD requires at least 2048",
            key_path.display()
        )));
    }
    if pair.public_key().as_ref() != cert_public.as_slice() {
        return Err(CertError::Key(format!(
            "the private key {} does not belong to the certificate {}",
            key_path.display(),
            cert_path.display()
        )));
    }
    let encoding_key = EncodingKey::from_rsa_pem(&key_pem).map_err(|e| {
        CertError::Key(format!(
            "private key {} cannot be used for RS256: {e}",
            key_path.display()
        ))
    })?;
    Ok(LoadedCertificate {
        cert_path: cert_path.to_path_buf(),
        key_path: key_path.to_path_buf(),
        x5t: thumbprint(&cert_der, &digest::SHA1_FOR_LEGACY_USE_ONLY),
        x5t_s256: thumbprint(&cert_der, &digest::SHA256),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        subject: cert.subject().to_string(),
        encoding_key,
        key_bits,
        cert_der,
        chain_der,
    })
}
