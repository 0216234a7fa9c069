//! `[store]`: local, or Redis with its URL, key prefix, timeout and encryption key.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_spanned::Spanned;

use super::Compiler;
use crate::config::file::StoreFile;
use crate::config::model::{StoreKind, StoreSettings};

/// The environment variable that gives the Redis URL when `[store] url` is absent.
pub const STORE_URL_ENV: &str = "AADGATE_STORE_URL";

impl Compiler<'_> {
    pub(super) fn store(&mut self, s: Option<&Spanned<StoreFile>>) -> StoreSettings {
        let defaults = StoreSettings::default();
        let Some(s) = s else { return defaults };
        let f = s.get_ref();
        let key_prefix = match &f.key_prefix {
            Some(p) if p.get_ref().is_empty() || p.get_ref().len() > 64 => {
                self.r.error(
                    p.span(),
                    "`key_prefix` must be 1 to 64 characters, e.g. \"aadgate:\"",
                );
                defaults.key_prefix.clone()
            }
            Some(p) => p.get_ref().clone(),
            None => defaults.key_prefix.clone(),
        };
        let timeout = self.dur_at_least(
            &f.timeout,
            defaults.timeout,
            Duration::from_millis(1),
            "`timeout` must be at least 1ms",
        );
        let kind = match f.kind.as_ref().map(|k| (k.get_ref().as_str(), k.span())) {
            None | Some(("local", _)) => {
                if let Some(u) = &f.url {
                    self.r
                        .error(u.span(), "`url` is only used with kind = \"redis\"");
                }
                StoreKind::Local
            }
            Some(("redis", span)) => self.redis(f, span).unwrap_or(StoreKind::Local),
            Some((other, span)) => {
                self.r.error(
                    span,
                    format!("unknown store kind {other:?}; use \"local\" or \"redis\""),
                );
                StoreKind::Local
            }
        };
        StoreSettings {
            kind,
            key_prefix,
            timeout,
        }
    }

    fn redis(&mut self, f: &StoreFile, span: std::ops::Range<usize>) -> Option<StoreKind> {
        let from_env = std::env::var(STORE_URL_ENV).ok().filter(|u| !u.is_empty());
        let (url, url_span) = match (&f.url, from_env) {
            (Some(u), _) => (u.get_ref().clone(), u.span()),
            (None, Some(u)) => (u, span.clone()),
            (None, None) => {
                self.r.error(span.clone(), format!("kind = \"redis\" needs `url` (redis:// or rediss://) or the {STORE_URL_ENV} environment variable"));
                return None;
            }
        };
        match reqwest::Url::parse(&url) {
            Ok(u) if matches!(u.scheme(), "redis" | "rediss") && u.host_str().is_some() => {}
            _ => {
                self.r.error(url_span, "the store URL must be redis://[user:password@]host[:port][/db] or rediss://… (TLS)");
                return None;
            }
        }
        let Some(key_file) = &f.encryption_key_file else {
            self.r.error(span, "kind = \"redis\" needs `encryption_key_file` (32 bytes, e.g. `openssl rand -base64 32 > store.key`): app-only tokens are stored encrypted");
            return None;
        };
        let path = self.path(key_file.get_ref());
        let key = match std::fs::read(&path) {
            Ok(bytes) => encryption_key(&bytes),
            Err(e) => Err(format!("cannot be read: {e}")),
        };
        match key {
            Ok(key) => Some(StoreKind::Redis {
                url,
                encryption_key: Arc::new(key),
                encryption_key_file: path,
            }),
            Err(why) => {
                self.r.error(
                    key_file.span(),
                    format!("encryption key file {} {why}", path.display()),
                );
                None
            }
        }
    }
}

/// 32 raw bytes, or base64 text of 32 bytes (surrounding whitespace ignored).
fn encryption_key(bytes: &[u8]) -> Result<[u8; 32], String> {
    if let Ok(raw) = <[u8; 32]>::try_from(bytes) {
        return Ok(raw);
    }
    let text = bytes.trim_ascii();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| {
            format!(
                "holds {} bytes; it needs 32 raw bytes or their base64 (`openssl rand -base64 32`)",
                bytes.len()
            )
        })?;
    <[u8; 32]>::try_from(decoded.as_slice()).map_err(|_| {
        format!(
            "decodes to {} bytes; it needs 32 (`openssl rand -base64 32`)",
            decoded.len()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encryption_key_is_32_raw_bytes_or_their_base64() {
        let raw = [7u8; 32];
        assert_eq!(encryption_key(&raw), Ok(raw));
        let text = base64::engine::general_purpose::STANDARD.encode(raw) + "\n";
        assert_eq!(encryption_key(text.as_bytes()), Ok(raw));
        assert!(encryption_key(b"short").is_err());
        let sixteen = base64::engine::general_purpose::STANDARD.encode([1u8; 16]);
        assert!(encryption_key(sixteen.as_bytes()).is_err());
    }
}
