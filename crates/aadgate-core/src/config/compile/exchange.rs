//! `[exchange.NAME]`: app-only token exchange settings.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_spanned::Spanned;

use super::{Compiler, DEFAULT_PURGE_INTERVAL};
use crate::certs::{self, LoadedCertificate};
use crate::config::file;
use crate::config::model::{ExchangeSettings, ExchangeTarget};

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
        let certificates = self.certificates(&f.certificates);
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

    /// `certificates`: each { cert, key } pair loaded; a pair close to expiry is a warning, an
    /// unreadable one an error at the file that failed.
    fn certificates(
        &mut self,
        list: &Spanned<Vec<Spanned<file::CertificateFile>>>,
    ) -> Vec<LoadedCertificate> {
        if list.get_ref().is_empty() {
            self.r.error(
                list.span(),
                "`certificates` needs at least one { cert, key } pair",
            );
        }
        let mut certificates = Vec::new();
        for c in list.get_ref() {
            let cert_path = self.path(c.get_ref().cert.get_ref());
            let key_path = self.path(c.get_ref().key.get_ref());
            match certs::load_pair(&cert_path, &key_path) {
                Ok(loaded) => {
                    if let Some(w) = loaded.expiry_warning() {
                        self.r.warn(c.get_ref().cert.span(), w);
                    }
                    certificates.push(loaded);
                }
                Err(certs::CertError::Cert(m)) => self.r.error(c.get_ref().cert.span(), m),
                Err(certs::CertError::Key(m)) => self.r.error(c.get_ref().key.span(), m),
            }
        }
        certificates
    }
}
