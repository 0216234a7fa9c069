//! `[identity]`: where the signing keys come from, algorithms, audiences and key refresh.

use std::time::Duration;

use serde_spanned::Spanned;

use super::{
    Compiler, DEFAULT_CLOCK_SKEW, DEFAULT_MIN_REFETCH_INTERVAL, DEFAULT_REFRESH_INTERVAL,
    DEFAULT_TOKEN_CACHE_SIZE,
};
use crate::config::file;
use crate::config::model::IdentitySettings;

impl Compiler<'_> {
    pub(super) fn identity(&mut self, s: &Spanned<file::IdentityFile>) -> Option<IdentitySettings> {
        let f = s.get_ref();
        if let Some(c) = &f.cloud {
            match crate::config::Cloud::from_name(c.get_ref()) {
                Some(cloud) => self.cloud = cloud,
                None => self.r.error(
                    c.span(),
                    format!(
                        "cloud {:?} must be one of {}",
                        c.get_ref(),
                        crate::config::Cloud::NAMES
                            .map(|n| format!("\"{n}\""))
                            .join(", ")
                    ),
                ),
            }
        }
        // Without either key the keys come from the cloud's `common` metadata.
        let metadata_url = match (&f.metadata_url, &f.jwks_uri) {
            (Some(u), _) => self.url(u, "metadata_url"),
            (None, Some(_)) => None,
            (None, None) => Some(self.cloud.metadata_url()),
        };
        let jwks_uri = f.jwks_uri.as_ref().and_then(|u| self.url(u, "jwks_uri"));
        let mut algorithms = Vec::new();
        match &f.algorithms {
            None => algorithms.push(jsonwebtoken::Algorithm::RS256),
            Some(list) => {
                if list.get_ref().is_empty() {
                    self.r.error(list.span(), "`algorithms` must not be empty");
                }
                for a in list.get_ref() {
                    match a.get_ref().as_str() {
                        "RS256" => algorithms.push(jsonwebtoken::Algorithm::RS256),
                        "RS384" => algorithms.push(jsonwebtoken::Algorithm::RS384),
                        "RS512" => algorithms.push(jsonwebtoken::Algorithm::RS512),
                        "PS256" => algorithms.push(jsonwebtoken::Algorithm::PS256),
                        "PS384" => algorithms.push(jsonwebtoken::Algorithm::PS384),
                        "PS512" => algorithms.push(jsonwebtoken::Algorithm::PS512),
                        other => self.r.error(
                            a.span(),
                            format!("algorithm {other:?} is not supported; Azure AD signs with RS256 (allowed: RS256, RS384, RS512, PS256, PS384, PS512)"),
                        ),
                    }
                }
            }
        }
        let audiences: Vec<String> = f
            .audiences
            .get_ref()
            .iter()
            .map(|a| a.get_ref().clone())
            .collect();
        if audiences.is_empty() {
            self.r.error(
                f.audiences.span(),
                "`audiences` must name at least one audience (your API's App ID URI and/or client id)",
            );
        }
        for a in f.audiences.get_ref() {
            if a.get_ref().trim().is_empty() {
                self.r.error(a.span(), "an audience must not be empty");
            }
        }
        let refresh_interval = self.dur_at_least(
            &f.refresh_interval,
            DEFAULT_REFRESH_INTERVAL,
            Duration::from_secs(1),
            "`refresh_interval` must be at least 1s",
        );
        let min_refetch_interval = self.dur_at_least(
            &f.min_refetch_interval,
            DEFAULT_MIN_REFETCH_INTERVAL,
            Duration::from_secs(1),
            "`min_refetch_interval` must be at least 1s",
        );
        let token_cache_size = f
            .token_cache_size
            .as_ref()
            .and_then(|v| self.raw(v))
            .unwrap_or(DEFAULT_TOKEN_CACHE_SIZE);
        let clock_skew = self.dur(&f.clock_skew, DEFAULT_CLOCK_SKEW);
        Some(IdentitySettings {
            cloud: self.cloud,
            metadata_url,
            jwks_uri,
            refresh_interval,
            min_refetch_interval,
            cache_file: f.cache_file.as_ref().map(|p| self.path(p.get_ref())),
            token_cache_size,
            clock_skew,
            algorithms,
            audiences,
        })
    }
}
