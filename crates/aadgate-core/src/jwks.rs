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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};
use async_trait::async_trait;
use aws_lc_rs::digest;
use base64::Engine;
use jsonwebtoken::DecodingKey;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::clock::unix_now;
use crate::config::IdentitySettings;
use crate::metrics::Metrics;

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

/// The schedule of fetches, as pure functions of timestamps and settings.
pub mod schedule {
    use std::time::Duration;

    /// Delay before the next start-up attempt after `failures` consecutive failures (>= 1):
    /// 1 s doubling, capped at `min_refetch`.
    pub fn startup_backoff(failures: u32, min_refetch: Duration) -> Duration {
        let exp = failures.saturating_sub(1).min(20);
        Duration::from_secs(1u64 << exp)
            .min(min_refetch)
            .max(Duration::from_millis(100))
    }

    /// Delay from the last attempt to the next background fetch.
    /// With no keys yet: the start-up backoff. With keys: `refresh` after a success, or
    /// `min_refetch` (but not more than `refresh`) after a failed refresh.
    pub fn next_fetch_delay(
        have_keys: bool,
        last_failed: bool,
        failures: u32,
        refresh: Duration,
        min_refetch: Duration,
    ) -> Duration {
        if !have_keys {
            startup_backoff(failures.max(1), min_refetch)
        } else if last_failed {
            min_refetch.min(refresh)
        } else {
            refresh
        }
    }

    /// Whether a kid-miss refetch may start now: only when `min_refetch` has passed since the
    /// start of the previous fetch (of any kind).
    pub fn may_refetch(since_last_fetch: Option<Duration>, min_refetch: Duration) -> bool {
        since_last_fetch.is_none_or(|d| d >= min_refetch)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Intervals {
    refresh: Duration,
    min_refetch: Duration,
}

/// Largest metadata or JWKS document accepted; a larger one is a failed fetch (SPEC 8). AAD's
/// documents are a few KiB.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// Redirects followed for one metadata or JWKS request (each to the same host).
pub const MAX_REDIRECTS: usize = 5;

/// Why a fetch gave no key set. The text of each variant is what the `JWKS fetch failed` warning
/// logs; it includes the cause, which is therefore not also returned by `source()`.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Neither `metadata_url` nor `jwks_uri` is configured.
    #[error("no metadata_url or jwks_uri")]
    NoSource,
    /// The request failed in transport: DNS, connect, TLS, reset, a timeout of the request.
    #[error("GET {url}: {}", error_chain(.error))]
    Transport {
        /// The URL requested (the metadata or the JWKS).
        url: String,
        /// reqwest's error; its source chain is part of the message.
        error: reqwest::Error,
    },
    /// A redirect was not followed (see [`redirect_allowed`]).
    #[error("GET {url}: redirect refused: {reason}")]
    RedirectRefused {
        /// The URL requested (the metadata or the JWKS).
        url: String,
        /// Which rule the redirect broke.
        reason: RedirectError,
    },
    /// The answer has a status other than 2xx.
    #[error("GET {url}: HTTP {status}")]
    Status {
        /// The URL requested (the metadata or the JWKS).
        url: String,
        /// The status received.
        status: reqwest::StatusCode,
    },
    /// The document is larger than [`MAX_DOCUMENT_BYTES`].
    #[error("GET {url}: the document is larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge {
        /// The URL requested (the metadata or the JWKS).
        url: String,
    },
    /// The OpenID metadata document is not JSON.
    #[error("metadata at {url} is not JSON: {error}")]
    MetadataNotJson {
        /// The metadata URL.
        url: String,
        /// Where and why parsing stopped.
        error: serde_json::Error,
    },
    /// The OpenID metadata document has no `jwks_uri` string (or is not a JSON object).
    #[error("metadata at {url} has no jwks_uri")]
    NoJwksUri {
        /// The metadata URL.
        url: String,
    },
    /// The `jwks_uri` the metadata names is refused (see [`check_jwks_uri`]).
    #[error(transparent)]
    BadJwksUri(#[from] JwksUriError),
    /// The JWKS document was received but gives no key set.
    #[error(transparent)]
    BadJwks(#[from] JwksError),
    /// The whole fetch took longer than [`FETCH_TIMEOUT`].
    #[error("no answer within {} s", FETCH_TIMEOUT.as_secs())]
    Timeout,
    /// A failure of a [`JwksFetch`] implemented outside this crate.
    #[error("{}", error_chain(.0.as_ref()))]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

impl FetchError {
    /// The error of a request to `url` that reqwest gave up on: a refused redirect, or transport.
    fn request(url: &str, error: reqwest::Error) -> Self {
        let mut cause = std::error::Error::source(&error);
        while let Some(c) = cause {
            if let Some(reason) = c.downcast_ref::<RedirectError>() {
                return FetchError::RedirectRefused {
                    url: url.to_string(),
                    reason: reason.clone(),
                };
            }
            cause = c.source();
        }
        FetchError::Transport {
            url: url.to_string(),
            error,
        }
    }
}

/// The OpenID metadata document: only `jwks_uri` is read, other members are ignored.
#[derive(Deserialize)]
struct OpenIdMetadata {
    jwks_uri: String,
    /// The other members; being flattened, they also make serde read the document as an object
    /// only.
    #[serde(flatten)]
    _other: IgnoredAny,
}

/// Where a fetch gets the JWKS document from: [`HttpJwks`] (metadata, then JWKS, over HTTP) in
/// production, a double in tests. The [`KeyStore`]'s background task is its only caller.
#[async_trait]
pub trait JwksFetch: Send + Sync + 'static {
    /// One fetch of the JWKS document as received. An error is a failed fetch.
    async fn fetch(&self) -> Result<Vec<u8>, FetchError>;
}

/// Fetches the JWKS over HTTP: from `jwks_uri` when configured, else from the `jwks_uri` the
/// OpenID metadata names (read again on every fetch, so a moved `jwks_uri` is followed).
pub struct HttpJwks {
    metadata_url: Option<String>,
    jwks_uri: Option<String>,
    /// Built on first use: a store that never fetches never pays for it.
    client: std::sync::OnceLock<reqwest::Client>,
}

impl std::fmt::Debug for HttpJwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpJwks")
            .field("metadata_url", &self.metadata_url)
            .field("jwks_uri", &self.jwks_uri)
            .finish_non_exhaustive()
    }
}

impl HttpJwks {
    /// A fetcher for the key source of `identity`.
    pub fn new(identity: &IdentitySettings) -> Self {
        HttpJwks {
            metadata_url: identity.metadata_url.clone(),
            jwks_uri: identity.jwks_uri.clone(),
            client: std::sync::OnceLock::new(),
        }
    }

    async fn discover(&self) -> Result<String, FetchError> {
        let Some(metadata_url) = &self.metadata_url else {
            return Err(FetchError::NoSource);
        };
        let body = self.get(metadata_url).await?;
        let url = || metadata_url.clone();
        let doc: OpenIdMetadata =
            serde_json::from_slice(&body).map_err(|e| match e.classify() {
                serde_json::error::Category::Data => FetchError::NoJwksUri { url: url() },
                _ => FetchError::MetadataNotJson {
                    url: url(),
                    error: e,
                },
            })?;
        check_jwks_uri(metadata_url, &doc.jwks_uri)?;
        Ok(doc.jwks_uri)
    }

    /// GET `url`: a success status and a body of at most [`MAX_DOCUMENT_BYTES`], read in chunks
    /// so a larger one is never buffered whole.
    async fn get(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        let client = self.client.get_or_init(|| {
            reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .connect_timeout(Duration::from_secs(5))
                .redirect(same_host_redirects())
                .user_agent(concat!("aadgate/", env!("CARGO_PKG_VERSION")))
                .build()
                .unwrap_or_default()
        });
        let mut resp = client
            .get(url)
            .send()
            .await
            .map_err(|e| FetchError::request(url, e))?;
        if !resp.status().is_success() {
            return Err(FetchError::Status {
                url: url.to_string(),
                status: resp.status(),
            });
        }
        let too_large = || FetchError::TooLarge {
            url: url.to_string(),
        };
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| FetchError::request(url, e))?
        {
            if body.len().saturating_add(chunk.len()) > MAX_DOCUMENT_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

#[async_trait]
impl JwksFetch for HttpJwks {
    async fn fetch(&self) -> Result<Vec<u8>, FetchError> {
        let uri = match &self.jwks_uri {
            Some(uri) => uri.clone(),
            None => self.discover().await?,
        };
        self.get(&uri).await
    }
}

/// The error of parsing a URL (`url::ParseError`, named through `reqwest::Url`).
pub type UrlParseError = <reqwest::Url as std::str::FromStr>::Err;

/// Why the `jwks_uri` a metadata document names is not fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksUriError {
    /// It is not an absolute URL.
    #[error("metadata at {metadata_url} names jwks_uri {jwks_uri:?}, which is not a URL: {error}")]
    NotUrl {
        /// The metadata document's URL.
        metadata_url: String,
        /// The `jwks_uri` value as the metadata wrote it.
        jwks_uri: String,
        /// Why it does not parse as an absolute URL.
        error: UrlParseError,
    },
    /// The metadata came over https, the keys would come over plain http.
    #[error(
        "metadata at {metadata_url} (https) names a jwks_uri over plain http ({jwks_uri}); refused"
    )]
    Downgrade {
        /// The metadata document's URL (https).
        metadata_url: String,
        /// The `jwks_uri` it names (http).
        jwks_uri: String,
    },
    /// Neither http nor https.
    #[error(
        "metadata at {metadata_url} names a jwks_uri with scheme {scheme:?}; only http(s) is fetched"
    )]
    Scheme {
        /// The metadata document's URL.
        metadata_url: String,
        /// The scheme of the `jwks_uri` it names (e.g. `ftp`, `file`).
        scheme: String,
    },
}

/// The `jwks_uri` a metadata document names must be an http(s) URL, and https when the metadata
/// came over https (a downgrade would let a network attacker supply the keys).
pub fn check_jwks_uri(metadata_url: &str, jwks_uri: &str) -> Result<(), JwksUriError> {
    let parsed = reqwest::Url::parse(jwks_uri).map_err(|error| JwksUriError::NotUrl {
        metadata_url: metadata_url.to_string(),
        jwks_uri: jwks_uri.to_string(),
        error,
    })?;
    let metadata_https = reqwest::Url::parse(metadata_url).is_ok_and(|u| u.scheme() == "https");
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if !metadata_https => Ok(()),
        "http" => Err(JwksUriError::Downgrade {
            metadata_url: metadata_url.to_string(),
            jwks_uri: jwks_uri.to_string(),
        }),
        other => Err(JwksUriError::Scheme {
            metadata_url: metadata_url.to_string(),
            scheme: other.to_string(),
        }),
    }
}

/// Why a redirect of a metadata or JWKS request is not followed. The URLs are kept as text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedirectError {
    /// More than [`MAX_REDIRECTS`] hops.
    #[error("more than {MAX_REDIRECTS} redirects from {first}")]
    TooMany {
        /// The URL asked for first.
        first: String,
    },
    /// To a host other than the one asked for (`to` is `-` for a URL without a host).
    #[error("{first} redirects to another host ({to}); only same-host redirects are followed")]
    OtherHost {
        /// The URL asked for first.
        first: String,
        /// The host the redirect points at.
        to: String,
    },
    /// From https to anything else.
    #[error("{from} redirects from https to {to}; refused")]
    Downgrade {
        /// The https URL that redirected.
        from: String,
        /// Where it redirected to.
        to: String,
    },
}

/// Whether a redirect from the chain `previous` (first = the URL asked for) to `next` is
/// followed: only to the same host, never from https to http, at most [`MAX_REDIRECTS`].
pub fn redirect_allowed(
    next: &reqwest::Url,
    previous: &[reqwest::Url],
) -> Result<(), RedirectError> {
    let Some(first) = previous.first() else {
        return Ok(());
    };
    if previous.len() > MAX_REDIRECTS {
        return Err(RedirectError::TooMany {
            first: first.to_string(),
        });
    }
    if next.host_str() != first.host_str() {
        return Err(RedirectError::OtherHost {
            first: first.to_string(),
            to: next.host_str().unwrap_or("-").to_string(),
        });
    }
    let last = previous.last().unwrap_or(first);
    if last.scheme() == "https" && next.scheme() != "https" {
        return Err(RedirectError::Downgrade {
            from: last.to_string(),
            to: next.to_string(),
        });
    }
    Ok(())
}

fn same_host_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        match redirect_allowed(attempt.url(), attempt.previous()) {
            Ok(()) => attempt.follow(),
            Err(e) => attempt.error(e),
        }
    })
}

/// What the background task is doing, published to the requests that wait on it.
#[derive(Debug, Clone, Copy, Default)]
struct FetchState {
    /// Fetches finished (succeeded or failed) since the store was built.
    completed: u64,
    /// A fetch is running.
    in_progress: bool,
    /// When the last fetch (of any kind) started.
    last_start: Option<Instant>,
    /// A kid-miss asks for fetch number `wanted`; pending while `wanted > completed`.
    wanted: u64,
    /// Kid-miss asks the rate limit turned down (wakes their waiters at once).
    refused: u64,
}

/// Fetches and holds signing keys. Cheap to share (`Arc`).
pub struct KeyStore {
    current: ArcSwapOption<KeySet>,
    source: Box<dyn JwksFetch>,
    cache_file: Option<PathBuf>,
    intervals: ArcSwap<Intervals>,
    state: watch::Sender<FetchState>,
    metrics: Arc<Metrics>,
    stopped: AtomicBool,
    first_attempt_done: AtomicBool,
    /// A store built from a fixed key set never fetches, so it never waits for a refetch.
    fixed: AtomicBool,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("keys", &self.current().map(|s| s.len()))
            .field("state", &*self.state.borrow())
            .finish_non_exhaustive()
    }
}

/// Safety bound on how long a request waits for a kid-miss refetch or the first load. Waiters
/// are answered when the fetch completes, which [`FETCH_TIMEOUT`] bounds; this bound only
/// matters when no background task runs.
pub const KID_MISS_WAIT: Duration = Duration::from_secs(11);
/// Timeout of one whole fetch (metadata and JWKS requests together).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

impl KeyStore {
    /// A store for the key source of `identity`. Nothing is fetched until [`KeyStore::run`].
    pub fn new(identity: &IdentitySettings, metrics: Arc<Metrics>) -> Arc<Self> {
        Self::with_fetcher(identity, metrics, Box::new(HttpJwks::new(identity)))
    }

    /// A store that fetches through `source` (the intervals and `cache_file` of `identity`
    /// apply). Nothing is fetched until [`KeyStore::run`].
    pub fn with_fetcher(
        identity: &IdentitySettings,
        metrics: Arc<Metrics>,
        source: Box<dyn JwksFetch>,
    ) -> Arc<Self> {
        Arc::new(KeyStore {
            current: ArcSwapOption::empty(),
            source,
            cache_file: identity.cache_file.clone(),
            intervals: ArcSwap::from_pointee(Intervals {
                refresh: identity.refresh_interval,
                min_refetch: identity.min_refetch_interval,
            }),
            state: watch::channel(FetchState::default()).0,
            metrics,
            stopped: AtomicBool::new(false),
            first_attempt_done: AtomicBool::new(false),
            fixed: AtomicBool::new(false),
        })
    }

    /// A store for a new key source that serves `previous` (the old source's keys) until its
    /// own first load succeeds, so a reload that changes the key source never drops to
    /// `keys_unavailable`.
    pub fn new_seeded(
        identity: &IdentitySettings,
        metrics: Arc<Metrics>,
        previous: Option<Arc<KeySet>>,
    ) -> Arc<Self> {
        let store = KeyStore::new(identity, metrics);
        if let Some(set) = previous {
            store.current.store(Some(set));
        }
        store
    }

    /// A store holding a fixed key set, never fetching (for `explain --jwks` and tests).
    pub fn fixed(set: KeySet, metrics: Arc<Metrics>) -> Arc<Self> {
        let identity = IdentitySettings {
            metadata_url: None,
            jwks_uri: None,
            refresh_interval: Duration::from_secs(3600),
            min_refetch_interval: Duration::from_secs(3600),
            cache_file: None,
            token_cache_size: 0,
            clock_skew: Duration::ZERO,
            algorithms: vec![],
            audiences: vec![],
        };
        let store = KeyStore::new(&identity, metrics);
        store.install(set);
        store.first_attempt_done.store(true, Ordering::SeqCst);
        store.fixed.store(true, Ordering::SeqCst);
        store
    }

    /// Applies new intervals from a reload that kept the same key source.
    pub fn update_intervals(&self, identity: &IdentitySettings) {
        self.intervals.store(Arc::new(Intervals {
            refresh: identity.refresh_interval,
            min_refetch: identity.min_refetch_interval,
        }));
    }

    /// The current key set, if any was ever loaded.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.current.load_full()
    }

    /// Stops the background task at its next wake-up (used when a reload replaces the store);
    /// requests waiting on this store are answered at once.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.state.send_modify(|_| {});
    }

    /// Replaces the current key set (the waiters are told when the fetch completes).
    fn install(&self, set: KeySet) {
        self.metrics.jwks_keys.set(set.len() as i64);
        self.current.store(Some(Arc::new(set)));
    }

    /// Fetches finished so far, succeeded or failed (for tests and diagnostics).
    pub fn fetches_completed(&self) -> u64 {
        self.state.borrow().completed
    }

    /// Called by a request when no key set is loaded: waits (at most `wait`) while the very
    /// first load is still in progress, then returns whatever is loaded.
    pub async fn first_load(&self, wait: Duration) -> Option<Arc<KeySet>> {
        let mut rx = self.state.subscribe();
        let _ = tokio::time::timeout(
            wait,
            rx.wait_for(|_| {
                self.current.load().is_some()
                    || self.first_attempt_done.load(Ordering::SeqCst)
                    || self.stopped.load(Ordering::SeqCst)
            }),
        )
        .await;
        self.current()
    }

    /// True once the first load attempt (including the `cache_file` fallback) has finished.
    pub fn first_attempt_done(&self) -> bool {
        self.first_attempt_done.load(Ordering::SeqCst)
    }

    /// Called by a request whose key is not in `looked_in`, the set it searched. Returns the key
    /// set to search again:
    /// - at once, when the current set is no longer `looked_in` (a fetch completed meanwhile);
    /// - when the fetch in progress completes, succeeded or failed;
    /// - when a fetch it asked for completes, if `min_refetch_interval` has passed since the
    ///   previous fetch started (however many requests ask, one fetch is made);
    /// - else at once (the rate limit refuses a refetch).
    ///
    /// `wait` is only a safety bound (no background task running).
    pub async fn refetch_for_unknown_kid(
        &self,
        looked_in: &Arc<KeySet>,
        wait: Duration,
    ) -> Option<Arc<KeySet>> {
        if self.fixed.load(Ordering::SeqCst) {
            return self.current();
        }
        let mut rx = self.state.subscribe();
        let seen = *rx.borrow_and_update();
        let now = self.current();
        if now.as_ref().is_some_and(|set| !Arc::ptr_eq(set, looked_in)) {
            return now;
        }
        if !seen.in_progress {
            let min_refetch = self.intervals.load().min_refetch;
            if !schedule::may_refetch(seen.last_start.map(|t| t.elapsed()), min_refetch) {
                return now;
            }
            let want = seen.completed.saturating_add(1);
            self.state.send_if_modified(|s| {
                let ask = s.wanted < want;
                if ask {
                    s.wanted = want;
                }
                ask
            });
        }
        let _ = tokio::time::timeout(
            wait,
            rx.wait_for(|s| {
                s.completed > seen.completed
                    || s.refused > seen.refused
                    || self.stopped.load(Ordering::SeqCst)
            }),
        )
        .await;
        self.current()
    }

    /// The background task, the store's only fetcher: loads keys at start (falling back to
    /// `cache_file`), refreshes every `refresh_interval`, and serves kid-miss asks within the
    /// refetch limit. Runs until [`KeyStore::stop`].
    pub async fn run(self: Arc<Self>) {
        let mut rx = self.state.subscribe();
        let mut failures: u32 = 0;
        let mut last_failed;
        let mut tried_cache_file = false;
        loop {
            if self.stopped.load(Ordering::SeqCst) {
                return;
            }
            self.state.send_modify(|s| {
                s.in_progress = true;
                s.last_start = Some(Instant::now());
            });
            let ok = self.fetch_once().await;
            if ok {
                failures = 0;
                last_failed = false;
            } else {
                failures = failures.saturating_add(1);
                last_failed = true;
                if self.current().is_none() && !tried_cache_file {
                    tried_cache_file = true;
                    self.load_cache_file();
                }
            }
            self.first_attempt_done.store(true, Ordering::SeqCst);
            // Waiters wake here, after the new keys (if any) are installed.
            self.state.send_modify(|s| {
                s.in_progress = false;
                s.completed = s.completed.saturating_add(1);
            });
            // Wait for the scheduled time or a kid-miss ask that the rate limit allows.
            loop {
                if self.stopped.load(Ordering::SeqCst) {
                    return;
                }
                let iv = **self.intervals.load();
                let st = *rx.borrow_and_update();
                let since = st.last_start.map(|t| t.elapsed());
                if st.wanted > st.completed {
                    if schedule::may_refetch(since, iv.min_refetch) {
                        break;
                    }
                    // Refused (the interval grew since the ask): answer the waiters now.
                    self.state.send_modify(|s| {
                        s.wanted = s.completed;
                        s.refused = s.refused.saturating_add(1);
                    });
                    continue;
                }
                let delay = schedule::next_fetch_delay(
                    self.current().is_some(),
                    last_failed,
                    failures,
                    iv.refresh,
                    iv.min_refetch,
                );
                let remaining = delay.saturating_sub(since.unwrap_or(Duration::ZERO));
                tokio::select! {
                    _ = tokio::time::sleep(remaining) => break,
                    changed = rx.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }

    fn load_cache_file(&self) {
        let Some(path) = &self.cache_file else { return };
        match std::fs::read(path) {
            Ok(raw) => match KeySet::parse(&raw, KeySource::CacheFile) {
                Ok(mut set) => {
                    set.loaded_at = file_mtime(path).unwrap_or(set.loaded_at);
                    tracing::warn!(
                        path = %path.display(),
                        keys = set.len(),
                        "identity provider unreachable; serving with the last-known-good keys from cache_file"
                    );
                    self.install(set);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cache_file is unusable")
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cache_file cannot be read")
            }
        }
    }

    /// One fetch through the source, bounded by [`FETCH_TIMEOUT`]. Returns whether new keys were
    /// installed.
    async fn fetch_once(&self) -> bool {
        let result = match tokio::time::timeout(FETCH_TIMEOUT, self.source.fetch()).await {
            Ok(raw) => raw.and_then(|raw| Ok(KeySet::parse(&raw, KeySource::Fetched)?)),
            Err(_) => Err(FetchError::Timeout),
        };
        match result {
            Ok(set) => {
                self.metrics.jwks_fetch.with_label_values(&["ok"]).inc();
                self.metrics.jwks_last_success.set(set.loaded_at as f64);
                tracing::info!(keys = set.len(), "signing keys loaded");
                if let Some(path) = &self.cache_file {
                    if let Err(e) = write_atomically(path, &set.raw) {
                        tracing::warn!(path = %path.display(), error = %e, "cannot write cache_file");
                    }
                }
                self.install(set);
                true
            }
            Err(e) => {
                self.metrics.jwks_fetch.with_label_values(&["error"]).inc();
                tracing::warn!(error = %e, have_keys = self.current().is_some(), "JWKS fetch failed");
                false
            }
        }
    }
}

/// `e`'s text followed by the text of each error in its `source()` chain, joined by `: `. The
/// one place that formats a chain: for errors of other crates (reqwest, hyper, io) whose
/// `Display` leaves out the cause. The errors of this crate include their cause in their own
/// text and do not return it again from `source()`, so this never repeats a cause.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn file_mtime(path: &Path) -> Option<i64> {
    let m = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(m.duration_since(UNIX_EPOCH).ok()?.as_secs() as i64)
}

fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests;
