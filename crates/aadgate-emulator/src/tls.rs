//! HTTPS for the emulator, so Microsoft's own client libraries can use it: MSAL (Python, .NET,
//! JS) and Azure.Identity refuse an authority that is not `https://`.
//!
//! [`DevTls::load_or_create`] keeps a local certificate authority and a server certificate it
//! issued in a folder (beside the dev signing key for `aadgate dev-idp --tls`):
//!
//! | file | holds | mode |
//! |---|---|---|
//! | `dev-ca.pem` | the CA certificate: what `SSL_CERT_FILE` / `REQUESTS_CA_BUNDLE` point at | 0644 |
//! | `dev-ca-key.pem` | the CA's private key (ECDSA P-256) | 0600 |
//! | `dev-server.pem` | the server's private key, its certificate and the CA certificate | 0600 |
//!
//! They are created on first use; the server certificate is issued again when it does not name
//! every host asked for (`localhost`, `127.0.0.1`, `::1` and the public URL's host) or expires
//! within a day. [`TlsIdentity`] is what [`crate::EmulatorOptions::tls`] takes; the listener
//! answers TLS 1.2 and 1.3 with ALPN `h2` and `http/1.1`.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::EmulatorError;

/// File name of the local CA certificate.
pub const DEV_CA_FILE: &str = "dev-ca.pem";
/// File name of the local CA's private key.
pub const DEV_CA_KEY_FILE: &str = "dev-ca-key.pem";
/// File name of the server's key and certificate chain.
pub const DEV_SERVER_FILE: &str = "dev-server.pem";

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A server certificate chain and its private key, PEM. `Debug` redacts the key.
#[derive(Clone)]
pub struct TlsIdentity {
    /// The server certificate followed by its issuers, PEM.
    pub cert_chain_pem: String,
    /// The server's private key (PKCS#8, SEC1 or PKCS#1), PEM. A secret.
    pub key_pem: String,
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("cert_chain_pem", &self.cert_chain_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl TlsIdentity {
    /// The rustls server configuration for this identity: TLS 1.2 and 1.3, ALPN `h2` then
    /// `http/1.1`. Fails when the PEM holds no certificate or no usable key.
    pub(crate) fn server_config(&self) -> Result<rustls::ServerConfig, EmulatorError> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_slice_iter(self.cert_chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| EmulatorError::Certificate(format!("TLS certificate chain: {e}")))?;
        if certs.is_empty() {
            return Err(EmulatorError::Certificate(
                "TLS certificate chain: no CERTIFICATE block".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| EmulatorError::Key(format!("TLS private key: {e}")))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| EmulatorError::Certificate(format!("TLS versions: {e}")))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| EmulatorError::Certificate(format!("TLS certificate and key: {e}")))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// The local CA and server certificate of `dev-idp --tls`, as files in one folder.
#[derive(Debug, Clone)]
pub struct DevTls {
    /// `dev-ca.pem`: the CA certificate clients trust (`SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`).
    pub ca_path: PathBuf,
    /// `dev-server.pem`: the server key and certificate chain.
    pub server_path: PathBuf,
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// The server certificate chain and key.
    pub identity: TlsIdentity,
}

impl DevTls {
    /// Reads the CA and server certificate in `dir`, creating what is missing (the folder
    /// included) and issuing the server certificate again when it does not name every one of
    /// `localhost`, `127.0.0.1`, `::1` and `hosts`, or expires within a day.
    pub fn load_or_create(dir: &Path, hosts: &[String]) -> Result<DevTls, EmulatorError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| EmulatorError::io(format!("cannot create folder {}", dir.display()), e))?;
        let ca_path = dir.join(DEV_CA_FILE);
        let ca_key_path = dir.join(DEV_CA_KEY_FILE);
        let server_path = dir.join(DEV_SERVER_FILE);
        let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"]
            .iter()
            .map(|h| h.to_string())
            .collect();
        for host in hosts {
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            if !host.is_empty() && !names.contains(&host) {
                names.push(host);
            }
        }
        let (ca_pem, ca_key) = match (read_opt(&ca_path)?, read_opt(&ca_key_path)?) {
            (Some(cert), Some(key)) => {
                let key = rcgen::KeyPair::from_pem(&key)
                    .map_err(|e| EmulatorError::Key(format!("{}: {e}", ca_key_path.display())))?;
                (cert, key)
            }
            _ => {
                let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                    .map_err(|e| EmulatorError::Key(format!("CA key generation: {e}")))?;
                let cert = ca_params()
                    .self_signed(&key)
                    .map_err(|e| EmulatorError::Certificate(format!("CA certificate: {e}")))?;
                write_file(&ca_key_path, &key.serialize_pem(), true)?;
                write_file(&ca_path, &cert.pem(), false)?;
                (cert.pem(), key)
            }
        };
        let existing = read_opt(&server_path)?.filter(|pem| covers(pem, &names, &ca_pem));
        let server_pem = match existing {
            Some(pem) => pem,
            None => {
                let pem = issue_server(&names, &ca_key, &ca_pem)?;
                write_file(&server_path, &pem, true)?;
                pem
            }
        };
        Ok(DevTls {
            ca_path,
            server_path,
            ca_pem,
            identity: split_server_pem(&server_pem)?,
        })
    }

    /// The shell line that makes Python's `requests` / `ssl` (and so MSAL for Python, the Azure
    /// CLI) and other OpenSSL-based clients trust the CA.
    pub fn env_line(&self) -> String {
        let ca = self.ca_path.display();
        format!("export SSL_CERT_FILE={ca} REQUESTS_CA_BUNDLE={ca}")
    }
}

/// Splits `dev-server.pem` into the certificate chain and the private key.
fn split_server_pem(text: &str) -> Result<TlsIdentity, EmulatorError> {
    let blocks = pem::parse_many(text.as_bytes())
        .map_err(|e| EmulatorError::Certificate(format!("{DEV_SERVER_FILE}: {e}")))?;
    let encode = |block: &pem::Pem| {
        pem::encode_config(
            block,
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        )
    };
    let cert_chain_pem: String = blocks
        .iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(encode)
        .collect();
    let key_pem = blocks
        .iter()
        .find(|b| b.tag().ends_with("PRIVATE KEY"))
        .map(encode)
        .ok_or_else(|| EmulatorError::Key(format!("{DEV_SERVER_FILE}: no private key")))?;
    Ok(TlsIdentity {
        cert_chain_pem,
        key_pem,
    })
}

/// The CA's parameters; rebuilt the same every time, so an issuer made from them and the CA key
/// names the CA certificate on file.
fn ca_params() -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        "aadgate dev-idp local certificate authority",
    );
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let (y, m, d) = ymd_from_now(-1);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = ymd_from_now(3650);
    params.not_after = rcgen::date_time_ymd(y, m, d);
    params
}

/// A server certificate for `names`, issued by the CA; returns key + leaf + CA, PEM.
fn issue_server(
    names: &[String],
    ca_key: &rcgen::KeyPair,
    ca_pem: &str,
) -> Result<String, EmulatorError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| EmulatorError::Key(format!("server key generation: {e}")))?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())
        .map_err(|e| EmulatorError::Certificate(format!("server certificate names: {e}")))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "aadgate dev-idp");
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let (y, m, d) = ymd_from_now(-1);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = ymd_from_now(397);
    params.not_after = rcgen::date_time_ymd(y, m, d);
    let issuer = rcgen::Issuer::new(ca_params(), ca_key);
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| EmulatorError::Certificate(format!("server certificate: {e}")))?;
    let mut pem = key.serialize_pem();
    pem.push_str(&cert.pem());
    pem.push_str(ca_pem);
    Ok(pem)
}

/// Whether the server PEM's leaf names every one of `names`, was issued by the CA on file and
/// stays valid for at least a day.
fn covers(server_pem: &str, names: &[String], ca_pem: &str) -> bool {
    let Ok(leaf) = crate::keys::certificate_der_from_pem(server_pem) else {
        return false;
    };
    let Ok(ca) = crate::keys::certificate_der_from_pem(ca_pem) else {
        return false;
    };
    let (Ok((_, leaf)), Ok((_, ca))) = (
        x509_parser::parse_x509_certificate(&leaf),
        x509_parser::parse_x509_certificate(&ca),
    ) else {
        return false;
    };
    if leaf.issuer() != ca.subject()
        || leaf.validity().not_after.timestamp() < crate::unix_now() + 86_400
    {
        return false;
    }
    let Ok(Some(san)) = leaf.subject_alternative_name() else {
        return false;
    };
    let present: Vec<String> = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_string()),
            x509_parser::extensions::GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => <[u8; 4]>::try_from(*bytes)
                    .ok()
                    .map(|b| std::net::IpAddr::from(b).to_string()),
                16 => <[u8; 16]>::try_from(*bytes)
                    .ok()
                    .map(|b| std::net::IpAddr::from(b).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    names.iter().all(|n| present.contains(n))
}

/// The UTC date `days` from now, as rcgen wants it.
fn ymd_from_now(days: i64) -> (i32, u8, u8) {
    let (y, m, d, ..) = crate::civil(crate::unix_now() + days * 86_400);
    (
        i32::try_from(y).unwrap_or(9999),
        u8::try_from(m).unwrap_or(1),
        u8::try_from(d).unwrap_or(1),
    )
}

fn read_opt(path: &Path) -> Result<Option<String>, EmulatorError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(EmulatorError::io(
            format!("cannot read {}", path.display()),
            e,
        )),
    }
}

/// Writes `text` to `path` through a temporary file and a rename; mode 0600 when `secret`.
fn write_file(path: &Path, text: &str, secret: bool) -> Result<(), EmulatorError> {
    use std::io::Write as _;
    let tmp = path.with_extension(format!("{}.tmp", uuid::Uuid::new_v4().simple()));
    let write = || -> io::Result<()> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(if secret { 0o600 } else { 0o644 });
        }
        let mut file = options.open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        EmulatorError::io(format!("cannot write {}", path.display()), e)
    })
}

/// A TCP listener whose connections are TLS: handshakes run on their own tasks (a client that
/// stalls its handshake holds up nobody), and [`axum::serve`] gets the finished streams.
pub(crate) struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
}

impl TlsListener {
    pub(crate) fn new(tcp: TcpListener, config: rustls::ServerConfig) -> Self {
        TlsListener {
            tcp,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            handshakes: JoinSet::new(),
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                accepted = self.tcp.accept() => match accepted {
                    Ok((stream, addr)) => {
                        let acceptor = self.acceptor.clone();
                        self.handshakes.spawn(async move {
                            let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                            match tls.await {
                                Ok(Ok(stream)) => Some((stream, addr)),
                                Ok(Err(e)) => {
                                    tracing::debug!(%addr, error = %e, "TLS handshake failed");
                                    None
                                }
                                Err(_) => None,
                            }
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: let the system recover.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    if let Ok(Some(connection)) = done {
                        return connection;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf_names(pem: &str) -> Vec<String> {
        let der = crate::keys::certificate_der_from_pem(pem).expect("leaf");
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parse");
        let san = cert
            .subject_alternative_name()
            .expect("san")
            .expect("present");
        san.value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect()
    }

    #[test]
    fn the_ca_and_server_certificate_are_made_once_and_reissued_for_a_new_host() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = DevTls::load_or_create(dir.path(), &[]).expect("create");
        assert!(first.ca_path.ends_with(DEV_CA_FILE));
        assert!(dir.path().join(DEV_CA_KEY_FILE).exists());
        assert!(first.identity.server_config().is_ok());
        let loopback: Vec<String> = ["localhost", "127.0.0.1", "::1"]
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert!(covers(
            &first.identity.cert_chain_pem,
            &loopback,
            &first.ca_pem
        ));
        assert!(!covers(
            &first.identity.cert_chain_pem,
            &["idp.aadgate.test".to_string()],
            &first.ca_pem
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode(&dir.path().join(DEV_CA_KEY_FILE)), 0o600);
            assert_eq!(mode(&first.server_path), 0o600);
        }

        let again = DevTls::load_or_create(dir.path(), &[]).expect("load");
        assert_eq!(again.ca_pem, first.ca_pem);
        assert_eq!(
            again.identity.cert_chain_pem, first.identity.cert_chain_pem,
            "the server certificate is kept"
        );

        let other =
            DevTls::load_or_create(dir.path(), &["idp.aadgate.test".into()]).expect("reissue");
        assert_eq!(other.ca_pem, first.ca_pem, "same CA");
        assert_ne!(other.identity.cert_chain_pem, first.identity.cert_chain_pem);
        assert!(leaf_names(&other.identity.cert_chain_pem)
            .join(" ")
            .contains("idp.aadgate.test"));
        assert!(covers(
            &other.identity.cert_chain_pem,
            &["idp.aadgate.test".to_string(), "::1".to_string()],
            &other.ca_pem
        ));
        assert!(other.env_line().starts_with("export SSL_CERT_FILE="));
        assert!(!format!("{:?}", other.identity).contains("PRIVATE KEY"));
    }

    #[test]
    fn a_bad_identity_is_an_error() {
        let bad = TlsIdentity {
            cert_chain_pem: "nothing".into(),
            key_pem: "nothing".into(),
        };
        assert!(bad.server_config().is_err());
    }
}
