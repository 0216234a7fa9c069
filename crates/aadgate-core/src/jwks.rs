//! The signing-key store: fetches the JWKS (through the OpenID metadata or directly), keeps the
//! current key set in an `ArcSwap` for lock-free reads, refreshes it in the background, refetches
//! on an unknown `kid` at most once per `min_refetch_interval`, keeps the last good keys when a
//! fetch fails, and optionally persists them to `cache_file` for a start without the IdP.
//!
//! The request path never waits on a lock held across network I/O: it reads the snapshot, and on
//! a miss asks the background task (the only fetcher) for a fetch and waits until a fetch
//! completes, succeeded or failed. However many requests ask at once, one fetch is made.
//!
//! Every fetch is bounded: a metadata or JWKS document over [`MAX_DOCUMENT_BYTES`] is a failed
//! fetch, redirects are followed only to the same host, and an https `metadata_url` may only name
//! an https `jwks_uri`.
//!
//! The key set and its parsing are here; `fetch` gets the documents (metadata, JWKS) over
//! HTTP with those bounds, `store` keeps the current set and runs the refresh schedule.

use std::collections::HashMap;
use std::sync::Arc;

use aws_lc_rs::digest;
use base64::Engine;
use jsonwebtoken::DecodingKey;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::Value;

use crate::clock::unix_now;

mod fetch;
mod store;

pub use fetch::*;
pub use store::*;

/// One usable RSA signing key.
pub struct Jwk {
    /// The JWK's `kid`, matched against the token header's `kid`; `None` when the key has none.
    pub kid: Option<String>,
    /// The JWK's `x5t` (base64url SHA-1 of its certificate), used to find the key only for a
    /// token without `kid`; `None` when the key has none.
    pub x5t: Option<String>,
    /// AAD's v2 keys carry the issuer (template) they sign for.
    pub issuer: Option<String>,
    /// The public key (`n`, `e`) for algorithms other than RS256, and for RS256 keys that
    /// `rs256` does not hold.
    pub key: DecodingKey,
    /// The key parsed once for RS256 (Azure AD's algorithm), so a verification does not rebuild
    /// it from `n`/`e`; `None` for keys aws-lc will not take for RS256 (under 2048 bits).
    pub rs256: Option<aws_lc_rs::signature::ParsedPublicKey>,
    /// SHA-256 over the key material (`n` and `e`), computed once when the set is parsed: a
    /// cached token is used only while its `kid` still names a key with this fingerprint.
    pub fingerprint: [u8; 32],
}

/// SHA-256 of `len(n) ‖ n ‖ e` (the length makes the split between `n` and `e` unambiguous).
pub fn key_fingerprint(n: &[u8], e: &[u8]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(&(n.len() as u64).to_be_bytes());
    ctx.update(n);
    ctx.update(e);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

impl std::fmt::Debug for Jwk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwk")
            .field("kid", &self.kid)
            .field("x5t", &self.x5t)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// Where the current key set came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// Fetched from `jwks_uri` (or the one the metadata names) by the key store.
    Fetched,
    /// Read at start from `identity.cache_file` because the first fetch failed.
    CacheFile,
    /// Given by the caller, not fetched (`aadgate explain --jwks FILE`, tests).
    Static,
}

/// A snapshot of the signing keys, indexed by `kid` and by `x5t`.
#[derive(Debug)]
pub struct KeySet {
    by_kid: HashMap<String, Arc<Jwk>>,
    by_x5t: HashMap<String, Arc<Jwk>>,
    count: usize,
    /// Where the set came from; `/readyz` says so when it is the cache file.
    pub source: KeySource,
    /// Unix time the set was fetched or loaded.
    pub loaded_at: i64,
    /// The JWKS document as received, for `cache_file`.
    raw: Vec<u8>,
}

/// Decodes base64url, also accepting the padded and standard alphabets some key sets use.
fn lenient_b64(s: &str) -> Option<Vec<u8>> {
    let cleaned: String = s
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cleaned)
        .ok()
}

/// The JWKS document (RFC 7517 section 5): only `keys` is read, other members are ignored. Each
/// key is kept as a JSON value and read on its own ([`JwkMembers`]), so one malformed key is
/// skipped instead of refusing the whole set.
#[derive(Deserialize)]
struct JwksDocument {
    keys: Vec<Value>,
    /// The other members. Being flattened, they also make serde read the document as an object
    /// only (a struct is otherwise also read from an array).
    #[serde(flatten)]
    _other: IgnoredAny,
}

/// The members of one JWK that the gateway reads; others (`alg`, `x5c`, `key_ops`, EC
/// coordinates, ...) are ignored. A member of the wrong JSON type makes the key unreadable, and
/// it is skipped.
#[derive(Deserialize)]
struct JwkMembers<'a> {
    kty: &'a str,
    #[serde(rename = "use", default, borrow)]
    use_: Option<&'a str>,
    #[serde(default, borrow)]
    kid: Option<&'a str>,
    #[serde(default, borrow)]
    x5t: Option<&'a str>,
    #[serde(default, borrow)]
    n: Option<&'a str>,
    #[serde(default, borrow)]
    e: Option<&'a str>,
    #[serde(default, borrow)]
    issuer: Option<&'a str>,
}

impl JwkMembers<'_> {
    /// The usable RSA signing key these members describe, or `None` (not RSA, not for
    /// signatures, `n`/`e` missing or not base64, a modulus under 1024 bits, neither `kid` nor
    /// `x5t`).
    fn usable(&self) -> Option<Jwk> {
        if self.kty != "RSA" || self.use_.is_some_and(|u| u != "sig") {
            return None;
        }
        let n = lenient_b64(self.n?)?;
        let e = lenient_b64(self.e?)?;
        if n.len() < 128 || e.is_empty() || (self.kid.is_none() && self.x5t.is_none()) {
            return None;
        }
        Some(Jwk {
            kid: self.kid.map(String::from),
            x5t: self.x5t.map(String::from),
            issuer: self.issuer.map(String::from),
            key: DecodingKey::from_rsa_raw_components(&n, &e),
            rs256: aws_lc_rs::signature::RsaPublicKeyComponents {
                n: &n[..],
                e: &e[..],
            }
            .to_parsed_public_key(&aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256)
            .ok(),
            fingerprint: key_fingerprint(&n, &e),
        })
    }
}

/// Why a JWKS document gave no key set. A failed fetch, or an unusable `cache_file` /
/// `explain --jwks` document.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The document is not JSON at all.
    #[error("JWKS is not JSON: {0}")]
    NotJson(serde_json::Error),
    /// The document is JSON, but not an object with a `keys` array.
    #[error("JWKS has no `keys` array")]
    NoKeysArray,
    /// Every key was skipped (none is an RSA signing key the gateway can use).
    #[error("JWKS has no usable RSA signing key")]
    NoUsableKey,
}

impl KeySet {
    /// Parses a JWKS document. Keys that are not RSA signing keys, lack both `kid` and `x5t`, or
    /// have a member of the wrong JSON type are skipped; a document with no usable key is an
    /// error.
    pub fn parse(raw: &[u8], source: KeySource) -> Result<KeySet, JwksError> {
        let doc: JwksDocument = serde_json::from_slice(raw).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => JwksError::NoKeysArray,
            _ => JwksError::NotJson(e),
        })?;
        let mut by_kid = HashMap::new();
        let mut by_x5t = HashMap::new();
        let mut count = 0;
        for k in &doc.keys {
            let Some(jwk) = JwkMembers::deserialize(k)
                .ok()
                .and_then(|m| m.usable())
                .map(Arc::new)
            else {
                continue;
            };
            if let Some(kid) = &jwk.kid {
                by_kid.insert(kid.clone(), jwk.clone());
            }
            if let Some(x5t) = &jwk.x5t {
                by_x5t.insert(x5t.clone(), jwk);
            }
            count += 1;
        }
        if count == 0 {
            return Err(JwksError::NoUsableKey);
        }
        Ok(KeySet {
            by_kid,
            by_x5t,
            count,
            source,
            loaded_at: unix_now(),
            raw: raw.to_vec(),
        })
    }

    /// The key with this `kid`.
    pub fn by_kid(&self, kid: &str) -> Option<&Arc<Jwk>> {
        self.by_kid.get(kid)
    }

    /// The key with this `x5t` (only for tokens without `kid`).
    pub fn by_x5t(&self, x5t: &str) -> Option<&Arc<Jwk>> {
        self.by_x5t.get(x5t)
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when the set has no keys (never, for a parsed set).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// True when a key with this id (`kid`, or `x5t` for kid-less tokens) is still present.
    pub fn contains(&self, id: &str) -> bool {
        self.by_kid.contains_key(id) || self.by_x5t.contains_key(id)
    }
}

#[cfg(test)]
mod tests;
