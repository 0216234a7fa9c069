//! RSA signing keys with self-signed certificates, as AAD publishes them.
//!
//! A key's `kid` equals its `x5t`: the base64url SHA-1 of the certificate's DER, which is what
//! AAD's keys look like. Keys persist to one PEM file (PKCS#8 private key, then the certificate)
//! so `aadgate dev-token` and `aadgate dev-idp` sign with the same key in different processes.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use aws_lc_rs::digest;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde_json::{json, Value};

use super::{b64url, EmulatorError};

/// A UTC calendar date: (year, month, day).
type Ymd = (i32, u8, u8);

/// An RSA-2048 signing key and its self-signed certificate.
///
/// Built by [`SigningKey::generate`], [`SigningKey::load_or_create`] or
/// [`SigningKey::from_pem`]; every constructor checks that the key signs and that the
/// certificate holds the matching public key, so [`SigningKey::mint`] cannot fail later.
/// `Debug` never prints the private key.
#[derive(Clone)]
pub struct SigningKey {
    private_key_pem: String,
    cert_der: Vec<u8>,
    kid: String,
    x5t_s256: String,
    thumbprint_hex: String,
    n: String,
    e: String,
    not_before: i64,
    not_after: i64,
    encoding_key: EncodingKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("thumbprint", &self.thumbprint_hex)
            .field("private_key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Uppercase hex SHA-1 of a certificate's DER: the "thumbprint" AAD shows in its messages and
/// the portal lists.
pub fn certificate_thumbprint_hex(cert_der: &[u8]) -> String {
    digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, cert_der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect()
}

/// The JOSE `x5t` of a certificate: base64url SHA-1 of its DER.
pub fn x5t_of(cert_der: &[u8]) -> String {
    b64url(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, cert_der).as_ref())
}

/// The JOSE `x5t#S256` of a certificate: base64url SHA-256 of its DER.
pub fn x5t_s256_of(cert_der: &[u8]) -> String {
    b64url(digest::digest(&digest::SHA256, cert_der).as_ref())
}

/// Where `dev-token` and `dev-idp` keep their shared key when `--key` is not given:
/// `$XDG_CACHE_HOME/aadgate/dev-key.pem`, else `~/.cache/aadgate/dev-key.pem`, else (no home
/// folder) the same under the system temp folder.
pub fn default_dev_key_path() -> PathBuf {
    let from_env = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    let cache = from_env("XDG_CACHE_HOME")
        .or_else(|| from_env("HOME").map(|home| home.join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache.join("aadgate").join("dev-key.pem")
}

/// Parses one PEM certificate (the first `CERTIFICATE` block) into DER.
pub fn certificate_der_from_pem(text: &str) -> Result<Vec<u8>, EmulatorError> {
    let blocks = pem::parse_many(text.as_bytes())
        .map_err(|e| EmulatorError::Certificate(format!("bad PEM: {e}")))?;
    blocks
        .into_iter()
        .find(|b| b.tag() == "CERTIFICATE")
        .map(|b| b.into_contents())
        .ok_or_else(|| EmulatorError::Certificate("no CERTIFICATE block in PEM".into()))
}

/// PEM with `\n` line endings (the `pem` crate defaults to CRLF).
fn pem_lf(tag: &str, contents: Vec<u8>) -> String {
    pem::encode_config(
        &pem::Pem::new(tag, contents),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// RSA public key and validity window read from a certificate.
pub(crate) struct CertInfo {
    /// Modulus, big-endian, without a leading zero.
    pub n: Vec<u8>,
    /// Public exponent, big-endian, without a leading zero.
    pub e: Vec<u8>,
    /// `notBefore` as a Unix timestamp.
    pub not_before: i64,
    /// `notAfter` as a Unix timestamp.
    pub not_after: i64,
}

/// Reads the RSA public key and validity of a DER certificate.
pub(crate) fn cert_info(cert_der: &[u8]) -> Result<CertInfo, EmulatorError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| EmulatorError::Certificate(format!("cannot parse certificate: {e}")))?;
    let parsed = cert
        .public_key()
        .parsed()
        .map_err(|e| EmulatorError::Certificate(format!("cannot parse public key: {e}")))?;
    let x509_parser::public_key::PublicKey::RSA(rsa) = parsed else {
        return Err(EmulatorError::Certificate(
            "certificate key is not RSA".into(),
        ));
    };
    let strip = |bytes: &[u8]| {
        let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        bytes[start..].to_vec()
    };
    Ok(CertInfo {
        n: strip(rsa.modulus),
        e: strip(rsa.exponent),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

impl SigningKey {
    /// Generates a fresh RSA-2048 key with a self-signed certificate (valid 1975–4096).
    pub fn generate() -> Result<Self, EmulatorError> {
        Self::generate_inner(None)
    }

    /// Generates a key whose certificate is valid only between two dates given as
    /// `(year, month, day)` UTC — for "certificate outside its validity window" tests.
    pub fn generate_with_validity(
        not_before: (i32, u8, u8),
        not_after: (i32, u8, u8),
    ) -> Result<Self, EmulatorError> {
        Self::generate_inner(Some((not_before, not_after)))
    }

    fn generate_inner(validity: Option<(Ymd, Ymd)>) -> Result<Self, EmulatorError> {
        let key_pair =
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .map_err(|e| EmulatorError::Key(format!("RSA key generation failed: {e}")))?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "aadgate dev-idp signing key");
        if let Some(((y1, m1, d1), (y2, m2, d2))) = validity {
            params.not_before = rcgen::date_time_ymd(y1, m1, d1);
            params.not_after = rcgen::date_time_ymd(y2, m2, d2);
        }
        let cert = params
            .self_signed(&key_pair)
            .map_err(|e| EmulatorError::Certificate(format!("self-signing failed: {e}")))?;
        Self::from_parts(&key_pair.serialize_pem(), cert.der().to_vec())
    }

    /// Builds a key from a PEM private key (PKCS#8 `PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`)
    /// and a PEM certificate. Fails when they do not belong together.
    pub fn from_pem(private_key_pem: &str, certificate_pem: &str) -> Result<Self, EmulatorError> {
        let cert_der = certificate_der_from_pem(certificate_pem)?;
        let blocks = pem::parse_many(private_key_pem.as_bytes())
            .map_err(|e| EmulatorError::Key(format!("bad PEM: {e}")))?;
        let key = blocks
            .iter()
            .find(|b| b.tag() == "PRIVATE KEY" || b.tag() == "RSA PRIVATE KEY")
            .ok_or_else(|| EmulatorError::Key("no PRIVATE KEY block in PEM".into()))?;
        Self::from_parts(&pem_lf(key.tag(), key.contents().to_vec()), cert_der)
    }

    /// Parses the one-file form written by [`SigningKey::to_pem_bundle`]: a private key block
    /// and a certificate block, in any order.
    pub fn from_pem_bundle(text: &str) -> Result<Self, EmulatorError> {
        Self::from_pem(text, text)
    }

    fn from_parts(private_key_pem: &str, cert_der: Vec<u8>) -> Result<Self, EmulatorError> {
        let info = cert_info(&cert_der)?;
        let encoding_key = EncodingKey::from_rsa_pem(private_key_pem.as_bytes())
            .map_err(|e| EmulatorError::Key(format!("not an RSA private key: {e}")))?;
        let key = SigningKey {
            private_key_pem: private_key_pem.to_string(),
            kid: x5t_of(&cert_der),
            x5t_s256: x5t_s256_of(&cert_der),
            thumbprint_hex: certificate_thumbprint_hex(&cert_der),
            n: b64url(&info.n),
            e: b64url(&info.e),
            not_before: info.not_before,
            not_after: info.not_after,
            cert_der,
            encoding_key,
        };
        // Prove the key signs and matches the certificate, so minting cannot fail later.
        let probe = b"aadgate key probe";
        let signature = key.sign(probe)?;
        let verified =
            jsonwebtoken::crypto::verify(&signature, probe, &key.decoding_key(), Algorithm::RS256)
                .map_err(|e| {
                    EmulatorError::Key(format!("cannot verify with certificate key: {e}"))
                })?;
        if !verified {
            return Err(EmulatorError::Key(
                "private key does not match the certificate".into(),
            ));
        }
        Ok(key)
    }

    /// Reads the key file at `path`, or creates it (with a fresh key, parent folders included,
    /// mode 0600) when it does not exist. Two processes racing to create it end up with the same
    /// key: the file appears atomically and the loser reads the winner's.
    pub fn load_or_create(path: &Path) -> Result<Self, EmulatorError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_pem_bundle(&text)
                .map_err(|e| EmulatorError::Key(format!("key file {}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::create_file(path),
            Err(e) => Err(EmulatorError::io(
                format!("cannot read key file {}", path.display()),
                e,
            )),
        }
    }

    fn create_file(path: &Path) -> Result<Self, EmulatorError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::DirBuilderExt as _;
                builder.mode(0o700);
            }
            builder.create(parent).map_err(|e| {
                EmulatorError::io(format!("cannot create folder {}", parent.display()), e)
            })?;
        }
        let key = Self::generate()?;
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "dev-key.pem".into());
        let tmp = path.with_file_name(format!(
            ".{file_name}.{}.{}.tmp",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let write = || -> std::io::Result<()> {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt as _;
                options.mode(0o600);
            }
            let mut file = options.open(&tmp)?;
            file.write_all(key.to_pem_bundle().as_bytes())?;
            file.sync_all()
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(EmulatorError::io(
                format!("cannot write key file {}", tmp.display()),
                e,
            ));
        }
        // A hard link publishes the complete file atomically and never replaces one that a
        // concurrent process created first.
        let linked = std::fs::hard_link(&tmp, path);
        match linked {
            Ok(()) => {
                let _ = std::fs::remove_file(&tmp);
                Ok(key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let _ = std::fs::remove_file(&tmp);
                let text = std::fs::read_to_string(path).map_err(|e| {
                    EmulatorError::io(format!("cannot read key file {}", path.display()), e)
                })?;
                Self::from_pem_bundle(&text)
            }
            Err(_) => {
                // File systems without hard links: fall back to an (atomic) rename.
                std::fs::rename(&tmp, path).map_err(|e| {
                    let _ = std::fs::remove_file(&tmp);
                    EmulatorError::io(format!("cannot write key file {}", path.display()), e)
                })?;
                Ok(key)
            }
        }
    }

    /// The one-file PEM form: PKCS#8 private key followed by the certificate.
    pub fn to_pem_bundle(&self) -> String {
        let mut out = self.private_key_pem.clone();
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&self.certificate_pem());
        out
    }

    /// The key id published in the JWKS and put in token headers (equal to [`Self::x5t`]).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// base64url SHA-1 of the certificate DER.
    pub fn x5t(&self) -> &str {
        &self.kid
    }

    /// base64url SHA-256 of the certificate DER (`x5t#S256`).
    pub fn x5t_s256(&self) -> &str {
        &self.x5t_s256
    }

    /// Uppercase hex SHA-1 of the certificate DER, as AAD's messages and the portal show it.
    pub fn thumbprint_hex(&self) -> &str {
        &self.thumbprint_hex
    }

    /// RSA modulus, base64url without padding.
    pub fn n(&self) -> &str {
        &self.n
    }

    /// RSA public exponent, base64url without padding.
    pub fn e(&self) -> &str {
        &self.e
    }

    /// The certificate, DER.
    pub fn certificate_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The certificate, PEM.
    pub fn certificate_pem(&self) -> String {
        pem_lf("CERTIFICATE", self.cert_der.clone())
    }

    /// The private key, PEM. A secret: only for writing dev/test key files.
    pub fn private_key_pem(&self) -> &str {
        &self.private_key_pem
    }

    /// Certificate `notBefore`, Unix seconds.
    pub fn not_before(&self) -> i64 {
        self.not_before
    }

    /// Certificate `notAfter`, Unix seconds.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// A `jsonwebtoken` key that verifies this key's RS256 signatures.
    pub fn decoding_key(&self) -> DecodingKey {
        let n = super::b64url_decode(&self.n).unwrap_or_default();
        let e = super::b64url_decode(&self.e).unwrap_or_default();
        DecodingKey::from_rsa_raw_components(&n, &e)
    }

    /// Signs `message` with RS256 and returns the base64url signature.
    pub fn sign(&self, message: &[u8]) -> Result<String, EmulatorError> {
        jsonwebtoken::crypto::sign(message, &self.encoding_key, Algorithm::RS256)
            .map_err(|e| EmulatorError::Signing(e.to_string()))
    }

    /// The key as a JWK, shaped like AAD's: `kty`, `use`, `kid`, `x5t`, `n`, `e`, `x5c`
    /// (standard base64 DER), plus `issuer` when given (AAD's v2 keys carry one).
    pub fn jwk(&self, issuer: Option<&str>) -> Value {
        let mut jwk = json!({
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "x5t": self.kid,
            "n": self.n,
            "e": self.e,
            "x5c": [base64::engine::general_purpose::STANDARD.encode(&self.cert_der)],
        });
        if let (Some(issuer), Some(map)) = (issuer, jwk.as_object_mut()) {
            map.insert("issuer".into(), Value::String(issuer.to_string()));
        }
        jwk
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_has_aad_shaped_ids_and_redacted_debug() {
        let key = SigningKey::generate().expect("generate");
        assert_eq!(key.kid(), x5t_of(key.certificate_der()));
        assert_eq!(key.kid().len(), 27, "base64url of 20 bytes");
        assert_eq!(key.thumbprint_hex().len(), 40);
        assert_eq!(key.e(), "AQAB");
        let debug = format!("{key:?}");
        assert!(debug.contains("redacted"));
        assert!(!debug.contains("PRIVATE"));
        let jwk = key.jwk(Some("https://login.microsoftonline.com/{tenantid}/v2.0"));
        assert_eq!(jwk["kty"], "RSA");
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["x5t"], jwk["kid"]);
        assert_eq!(
            jwk["issuer"],
            "https://login.microsoftonline.com/{tenantid}/v2.0"
        );
        assert!(key.jwk(None).get("issuer").is_none());
    }

    #[test]
    fn key_file_is_created_once_and_reloaded_with_the_same_kid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nested").join("dev-key.pem");
        let first = SigningKey::load_or_create(&path).expect("create");
        let second = SigningKey::load_or_create(&path).expect("load");
        assert_eq!(first.kid(), second.kid());
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(text.contains("-----BEGIN CERTIFICATE-----"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().expect("parent"))
            .expect("list")
            .collect();
        assert_eq!(leftovers.len(), 1, "temp file removed");
    }

    #[test]
    fn mismatched_or_garbage_key_files_are_errors_not_panics() {
        let a = SigningKey::generate().expect("a");
        let b = SigningKey::generate().expect("b");
        let mixed = format!("{}{}", a.private_key_pem(), b.certificate_pem());
        assert!(matches!(
            SigningKey::from_pem_bundle(&mixed),
            Err(EmulatorError::Key(_))
        ));
        assert!(SigningKey::from_pem_bundle("not pem at all").is_err());
        assert!(SigningKey::from_pem_bundle(&a.certificate_pem()).is_err());
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.pem");
        std::fs::write(&path, "garbage").expect("write");
        assert!(SigningKey::load_or_create(&path).is_err());
    }
}
