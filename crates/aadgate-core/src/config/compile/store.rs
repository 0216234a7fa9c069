//! `[store]`: local, or Redis with its URL, key prefix, timeout and encryption key.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_spanned::Spanned;

use super::Compiler;
use crate::config::file::StoreFile;
use crate::config::model::{StoreKind, StoreSettings};
use crate::config::RedisTarget;

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
                self.r.error(span.clone(), format!("kind = \"redis\" needs `url` (redis://, redis+sentinel:// or redis+cluster://; rediss… for TLS) or the {STORE_URL_ENV} environment variable"));
                return None;
            }
        };
        let target = match RedisTarget::parse(&url) {
            Ok(t) => t,
            Err(why) => {
                self.r
                    .error(url_span, format!("the store URL is not usable: {why}"));
                return None;
            }
        };
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
                target: Box::new(target),
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

    /// `[store]` with `url` (the key file in a temporary folder) in an otherwise minimal config.
    fn load(url: &str) -> Result<StoreSettings, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("store.key"), [3u8; 32]).expect("key");
        let toml = format!(
            r#"
[server]
listen = ["127.0.0.1:8080"]
[identity]
jwks_uri = "http://127.0.0.1:1/keys"
audiences = ["api://orders"]
[tenants]
mode = "any"
[[routes]]
name = "orders"
path_prefix = "/"
upstream = "http://127.0.0.1:1"
[store]
kind = "redis"
url = "{url}"
encryption_key_file = "store.key"
"#
        );
        crate::config::load_str(&dir.path().join("t.toml"), &toml)
            .map(|c| c.store)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_store_url_names_a_server_a_sentinel_set_or_a_cluster() {
        let s = load("redis+sentinel://app:hunter2@s1,s2:26380/mymaster/1").expect("sentinel");
        let StoreKind::Redis { target, .. } = &s.kind else {
            panic!("{s:?}")
        };
        assert!(
            matches!(&**target, RedisTarget::Sentinel(t) if t.service == "mymaster" && t.db == 1)
        );
        assert!(!format!("{s:?}").contains("hunter2"));
        let c = load("rediss+cluster://n1:7000,n2:7001").expect("cluster");
        assert!(
            matches!(&c.kind, StoreKind::Redis { target, .. } if matches!(&**target, RedisTarget::Cluster(t) if t.tls && t.nodes.len() == 2))
        );
        assert!(load("redis://127.0.0.1:6379/0").is_ok());
        for (url, says) in [
            ("redis+cluster://:hunter2@n1/2", "only database 0"),
            (
                "redis+sentinel://:hunter2@s1:26379",
                "names the monitored service",
            ),
            ("memcached://:hunter2@h:11211", "unknown scheme"),
            (
                "redis+sentinel://:hunter2@s1:99999/m",
                "the port must be 1 to 65535",
            ),
        ] {
            let e = load(url).expect_err(url);
            assert!(
                e.contains("the store URL is not usable") && e.contains(says),
                "{url}: {e}"
            );
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

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
