//! `[onboarding]`: the sign-up pages' application, URLs, consent check and `state` key.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_spanned::Spanned;

use super::{is_guid, Compiler};
use crate::config::file::OnboardingFile;
use crate::config::model::{ExchangeSettings, ExchangeTarget, OnboardingSettings, TenantMode};

/// Default `[onboarding] path_prefix`.
pub const DEFAULT_ONBOARDING_PREFIX: &str = "/.aadgate/onboarding/";
/// Default `[onboarding] authority` (the public cloud).
pub const DEFAULT_AUTHORITY: &str = crate::config::cloud::PUBLIC_AUTHORITY;
/// Default `[onboarding] state_ttl`.
const DEFAULT_STATE_TTL: Duration = Duration::from_secs(600);
/// Shortest accepted `state_key_file` content, in bytes.
const MIN_STATE_KEY_BYTES: usize = 32;

impl Compiler<'_> {
    pub(super) fn onboarding(
        &mut self,
        s: &Spanned<OnboardingFile>,
        mode: Option<&TenantMode>,
        exchanges: &HashMap<String, ExchangeSettings>,
    ) -> Option<OnboardingSettings> {
        let f = s.get_ref();
        if mode.is_some_and(|m| *m != TenantMode::Registry) {
            self.r.error(
                s.span(),
                "[onboarding] records tenants in the tenant registry: set [tenants] mode = \"registry\"",
            );
        }
        let client_id = f.client_id.get_ref().to_ascii_lowercase();
        if !is_guid(&client_id) {
            self.r.error(
                f.client_id.span(),
                "`client_id` must be the application (client) id, a GUID",
            );
        }
        let redirect_uri = self.url(&f.redirect_uri, "`redirect_uri`");
        let path_prefix = match &f.path_prefix {
            None => DEFAULT_ONBOARDING_PREFIX.to_string(),
            Some(p) => {
                let v = p.get_ref();
                if !v.starts_with('/') || !v.ends_with('/') || v.len() < 2 {
                    self.r.error(
                        p.span(),
                        "`path_prefix` must start and end with '/' and not be \"/\" (e.g. \"/.aadgate/onboarding/\")",
                    );
                }
                v.clone()
            }
        };
        if let Some(uri) = redirect_uri
            .as_deref()
            .and_then(|u| reqwest::Url::parse(u).ok())
        {
            let callback = format!("{path_prefix}callback");
            if uri.path() != callback {
                self.r.warn(
                    f.redirect_uri.span(),
                    format!("the path of `redirect_uri` is not {callback:?}: the gateway serves the callback there, so something in front of it must map the path"),
                );
            }
        }
        let authority = match &f.authority {
            None => Some(self.cloud.authority().to_string()),
            Some(a) => self
                .url(a, "`authority`")
                .map(|a| a.trim_end_matches('/').to_string()),
        };
        let verify = self.verify_exchange(f, &client_id, exchanges);
        let scope = self.consent_scope(s, verify.as_ref().map(|(_, x)| *x));
        let state_key_file = self.path(f.state_key_file.get_ref());
        let state_key = self.state_key(&state_key_file, f.state_key_file.span());
        let state_ttl = self.dur_at_least(
            &f.state_ttl,
            DEFAULT_STATE_TTL,
            Duration::from_secs(10),
            "`state_ttl` must be at least 10s (an administrator needs time to read the consent page)",
        );
        let success_url = f
            .success_url
            .as_ref()
            .and_then(|u| self.url(u, "`success_url`"));
        Some(OnboardingSettings {
            client_id,
            redirect_uri: redirect_uri?,
            path_prefix,
            authority: authority?,
            scope: scope?,
            verify_exchange: verify.map(|(name, _)| name),
            state_key_file,
            state_key: state_key?,
            state_ttl,
            success_url,
        })
    }

    /// The `state_key_file` content, at least [`MIN_STATE_KEY_BYTES`] after trimming.
    fn state_key(
        &mut self,
        state_key_file: &std::path::Path,
        span: std::ops::Range<usize>,
    ) -> Option<Arc<[u8]>> {
        match std::fs::read(state_key_file) {
            Ok(bytes) => {
                let key = bytes.trim_ascii();
                if key.len() < MIN_STATE_KEY_BYTES {
                    self.r.error(
                        span.clone(),
                        format!(
                            "state key file {} holds {} bytes; it needs at least {MIN_STATE_KEY_BYTES} (e.g. `openssl rand -base64 48 > {}`)",
                            state_key_file.display(),
                            key.len(),
                            state_key_file.display()
                        ),
                    );
                }
                Some(Arc::from(key))
            }
            Err(e) => {
                self.r.error(
                    span.clone(),
                    format!(
                        "state key file {} cannot be read: {e} (create one with `openssl rand -base64 48 > {}`; every replica needs the same key)",
                        state_key_file.display(),
                        state_key_file.display()
                    ),
                );
                None
            }
        }
    }

    /// `verify_exchange`: the named exchange, which must use `client_id`.
    fn verify_exchange<'e>(
        &mut self,
        f: &OnboardingFile,
        client_id: &str,
        exchanges: &'e HashMap<String, ExchangeSettings>,
    ) -> Option<(String, &'e ExchangeSettings)> {
        f.verify_exchange.as_ref().and_then(|v| {
            let found = exchanges.get(v.get_ref());
            match found {
                None => self.r.error(
                    v.span(),
                    format!("no exchange named {:?} (define [exchange.{}])", v.get_ref(), v.get_ref()),
                ),
                Some(x) if !x.client_id.eq_ignore_ascii_case(client_id) => self.r.error(
                    v.span(),
                    format!(
                        "exchange {:?} uses client_id {}, not the onboarding client_id {client_id}: consent to one application cannot be proven with another",
                        v.get_ref(),
                        x.client_id
                    ),
                ),
                Some(_) => {}
            }
            found.map(|x| (v.get_ref().clone(), x))
        })
    }

    /// `scope`, or the scope of `verify_exchange` when absent.
    fn consent_scope(
        &mut self,
        s: &Spanned<OnboardingFile>,
        verify: Option<&ExchangeSettings>,
    ) -> Option<String> {
        let f = s.get_ref();
        match (&f.scope, verify) {
            (Some(s), _) if s.get_ref().trim().is_empty() => {
                self.r.error(s.span(), "`scope` must not be empty");
                None
            }
            (Some(s), _) => Some(s.get_ref().trim().to_string()),
            (None, Some(x)) => Some(match &x.target {
                ExchangeTarget::Scope(s) => s.clone(),
                ExchangeTarget::Resource(r) => format!("{}/.default", r.trim_end_matches('/')),
            }),
            (None, None) if f.verify_exchange.is_none() => {
                self.r.error(
                    s.span(),
                    "missing field `scope` (the permissions the administrator consents to, e.g. \"https://graph.microsoft.com/.default\"); it defaults to the scope of `verify_exchange` when that is set",
                );
                None
            }
            (None, None) => None,
        }
    }
}
