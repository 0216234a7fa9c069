//! `[exchange.NAME]`: app-only token exchange settings.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_spanned::Spanned;

use super::{Compiler, DEFAULT_PURGE_INTERVAL};
use crate::certs::{self, LoadedCertificate};
use crate::config::file;
use crate::config::model::{Credential, ExchangeSettings, ExchangeTarget};
use std::path::PathBuf;

impl Compiler<'_> {
    /// Every `[exchange.NAME]`; one without a target is reported and left out.
    pub(super) fn exchanges(
        &mut self,
        map: &BTreeMap<String, Spanned<file::ExchangeFile>>,
    ) -> HashMap<String, ExchangeSettings> {
        let mut out = HashMap::new();
        for (name, e) in map {
            if let Some(settings) = self.exchange_settings(name, e) {
                out.insert(name.clone(), settings);
            }
        }
        out
    }

    /// One exchange's settings; `None` when it names neither or both of `scope` and `resource`.
    fn exchange_settings(
        &mut self,
        name: &str,
        e: &Spanned<file::ExchangeFile>,
    ) -> Option<ExchangeSettings> {
        let f = e.get_ref();
        let client_id = f.client_id.get_ref().trim().to_string();
        if client_id.is_empty() {
            self.r
                .error(f.client_id.span(), "`client_id` must not be empty");
        }
        let endpoint = self.token_endpoint(&f.token_endpoint);
        let target = self.exchange_target(e)?;
        let (certificates, credentials) = self.credentials(e);
        let client_capabilities: Vec<String> = f
            .client_capabilities
            .as_ref()
            .map(|list| {
                list.get_ref()
                    .iter()
                    .filter_map(|c| {
                        let v = c.get_ref().trim();
                        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_alphanumeric()) {
                            self.r.error(
                                c.span(),
                                format!("client capability {v:?} must be a word such as \"cp1\""),
                            );
                            None
                        } else {
                            Some(v.to_string())
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let user_claim = match &f.user_claim {
            None => "oid".to_string(),
            Some(u) if u.get_ref() == "oid" || u.get_ref() == "upn" => u.get_ref().clone(),
            Some(u) => {
                self.r.error(u.span(), "`user_claim` is \"oid\" or \"upn\"");
                "oid".to_string()
            }
        };
        let max_tenants = match f.max_tenants.as_ref().map(|m| (self.raw(m), m.span())) {
            None | Some((None, _)) => 10_000,
            Some((Some(0), span)) => {
                self.r.error(span, "`max_tenants` must be at least 1");
                10_000
            }
            Some((Some(n), _)) => n,
        };
        let rewrite_me = f
            .rewrite_me
            .as_ref()
            .and_then(|b| self.raw(b))
            .unwrap_or(false);
        Some(ExchangeSettings {
            name: name.to_string(),
            client_id,
            token_endpoint: endpoint,
            target,
            certificates,
            credentials,
            send_x5c: f
                .send_x5c
                .as_ref()
                .and_then(|b| self.raw(b))
                .unwrap_or(false),
            client_capabilities,
            federated_audience: self.cloud.federated_audience().to_string(),
            timeout: self.dur(&f.timeout, Duration::from_secs(10)),
            refresh_before_expiry: self.dur(&f.refresh_before_expiry, Duration::from_secs(300)),
            failure_cache: self.dur(&f.failure_cache, Duration::from_secs(30)),
            purge_interval: self.dur(&f.purge_interval, DEFAULT_PURGE_INTERVAL),
            max_tenants,
            rewrite_me,
            user_claim,
        })
    }

    /// `token_endpoint`, as written: it must contain `{tenantid}` and be an http(s) URL once
    /// that is filled in.
    fn token_endpoint(&mut self, s: &Spanned<String>) -> String {
        let endpoint = s.get_ref().clone();
        if !endpoint.contains("{tenantid}") {
            self.r.error(
                s.span(),
                "`token_endpoint` must contain {tenantid}: the app-only token is requested from the caller's tenant, never from common/organizations",
            );
        }
        let probe = endpoint.replace("{tenantid}", "00000000-0000-0000-0000-000000000000");
        if reqwest::Url::parse(&probe)
            .map(|u| u.scheme() != "https" && u.scheme() != "http")
            .unwrap_or(true)
        {
            self.r.error(
                s.span(),
                format!("`token_endpoint` {endpoint:?} is not an http(s) URL"),
            );
        }
        endpoint
    }

    /// `scope` (v2 endpoint) or `resource` (v1 endpoint): exactly one of them.
    fn exchange_target(&mut self, e: &Spanned<file::ExchangeFile>) -> Option<ExchangeTarget> {
        let f = e.get_ref();
        match (&f.scope, &f.resource) {
            (Some(s), None) => Some(ExchangeTarget::Scope(s.get_ref().clone())),
            (None, Some(r)) => Some(ExchangeTarget::Resource(r.get_ref().clone())),
            (Some(s), Some(_)) => {
                self.r.error(
                    s.span(),
                    "set `scope` (v2 token endpoint) or `resource` (v1 endpoint), not both",
                );
                None
            }
            (None, None) => {
                self.r.error(
                    e.span(),
                    "[exchange] needs `scope` (v2 endpoint, e.g. \"https://outlook.office365.com/.default\") or `resource` (v1 endpoint)",
                );
                None
            }
        }
    }

    /// `certificates` or `credentials` (exactly one): the certificates loaded, and the
    /// credentials in order.
    fn credentials(
        &mut self,
        e: &Spanned<file::ExchangeFile>,
    ) -> (Vec<LoadedCertificate>, Vec<Credential>) {
        let f = e.get_ref();
        let mut certificates = Vec::new();
        let mut credentials = Vec::new();
        match (&f.certificates, &f.credentials) {
            (Some(list), None) => {
                if list.get_ref().is_empty() {
                    self.r.error(
                        list.span(),
                        "`certificates` needs at least one { cert, key } pair",
                    );
                }
                for c in list.get_ref() {
                    let (cert, key) = (&c.get_ref().cert, &c.get_ref().key);
                    if let Some(loaded) = self.certificate(cert, key) {
                        credentials.push(Credential::Certificate(certificates.len()));
                        certificates.push(loaded);
                    }
                }
            }
            (None, Some(list)) => {
                if list.get_ref().is_empty() {
                    self.r.error(list.span(), "`credentials` needs at least one entry");
                }
                for c in list.get_ref() {
                    if let Some(credential) = self.credential(c, &mut certificates) {
                        credentials.push(credential);
                    }
                }
            }
            (Some(_), Some(list)) => self.r.error(
                list.span(),
                "set `credentials` or its shorthand `certificates`, not both",
            ),
            (None, None) => self.r.error(
                e.span(),
                "[exchange] needs `credentials` (certificate, federated_token_file or managed_identity) or `certificates`",
            ),
        }
        (certificates, credentials)
    }

    /// One { cert, key } pair loaded; a pair close to expiry is a warning, an unreadable one an
    /// error at the file that failed.
    fn certificate(
        &mut self,
        cert: &Spanned<String>,
        key: &Spanned<String>,
    ) -> Option<LoadedCertificate> {
        let cert_path = self.path(cert.get_ref());
        let key_path = self.path(key.get_ref());
        match certs::load_pair(&cert_path, &key_path) {
            Ok(loaded) => {
                if let Some(w) = loaded.expiry_warning() {
                    self.r.warn(cert.span(), w);
                }
                Some(loaded)
            }
            Err(certs::CertError::Cert(m)) => {
                self.r.error(cert.span(), m);
                None
            }
            Err(certs::CertError::Key(m)) => {
                self.r.error(key.span(), m);
                None
            }
        }
    }

    /// One `credentials` entry: exactly one kind, with only the keys that kind takes.
    fn credential(
        &mut self,
        c: &Spanned<file::CredentialFile>,
        certificates: &mut Vec<LoadedCertificate>,
    ) -> Option<Credential> {
        let f = c.get_ref();
        let kinds = [
            f.certificate.is_some(),
            f.federated_token_file.is_some(),
            f.managed_identity.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            self.r.error(
                c.span(),
                "a credential is one of { certificate = …, key = … }, { federated_token_file = … } or { managed_identity = \"system\" | \"<client id>\" }",
            );
            return None;
        }
        if let (Some(k), None) = (&f.key, &f.certificate) {
            self.r.error(k.span(), "`key` goes with `certificate`");
        }
        if let (Some(ep), None) = (&f.managed_identity_endpoint, &f.managed_identity) {
            self.r.error(
                ep.span(),
                "`managed_identity_endpoint` goes with `managed_identity`",
            );
        }
        if let Some(cert) = &f.certificate {
            let Some(key) = &f.key else {
                self.r
                    .error(cert.span(), "a `certificate` credential needs its `key`");
                return None;
            };
            let loaded = self.certificate(cert, key)?;
            certificates.push(loaded);
            return Some(Credential::Certificate(certificates.len() - 1));
        }
        if let Some(file) = &f.federated_token_file {
            let written = file.get_ref().trim();
            let var = match written.strip_prefix('$') {
                Some(v) => Some(v),
                None if written.is_empty() => Some("AZURE_FEDERATED_TOKEN_FILE"),
                None => None,
            };
            let path = match var {
                None => self.path(written),
                Some(v) => match std::env::var_os(v).filter(|p| !p.is_empty()) {
                    Some(p) => PathBuf::from(p),
                    None => {
                        self.r.error(file.span(), format!("the environment variable {v} that should name the federated token file is not set (AKS workload identity sets AZURE_FEDERATED_TOKEN_FILE when the pod's service account is annotated)"));
                        return None;
                    }
                },
            };
            if !path.is_file() {
                self.r.warn(
                    file.span(),
                    format!("the federated token file {} does not exist yet; token requests fail with this credential until it does", path.display()),
                );
            }
            return Some(Credential::FederatedTokenFile(path));
        }
        let mi = f.managed_identity.as_ref()?;
        let client_id = match mi.get_ref().trim() {
            "system" => None,
            id if super::is_guid(id) => Some(id.to_ascii_lowercase()),
            other => {
                self.r.error(
                    mi.span(),
                    format!("managed_identity {other:?} must be \"system\" or a user-assigned identity's client id (a GUID)"),
                );
                return None;
            }
        };
        let endpoint = f
            .managed_identity_endpoint
            .as_ref()
            .and_then(|u| self.url(u, "managed_identity_endpoint"))
            .map(|u| u.trim_end_matches('/').to_string());
        Some(Credential::ManagedIdentity {
            client_id,
            endpoint,
        })
    }
}
