//! Getting the documents: the OpenID metadata and the JWKS over HTTP, each bounded in size,
//! redirects and time, with the errors that say which step failed.

use std::time::Duration;

use async_trait::async_trait;
use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::config::IdentitySettings;

use super::*;

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
