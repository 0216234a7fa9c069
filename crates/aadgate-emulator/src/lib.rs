//! An Azure AD / Microsoft Entra ID emulator, with the mock APIs around it, for aadgate's demo,
//! its tests and users' CI (SPEC section 7).
//!
//! Serves, on loopback, the AAD endpoints the gateway and an app need — OpenID metadata, JWKS,
//! the client-credentials token endpoint — with AAD's real paths, JSON shapes, issuer strings and
//! AADSTS error codes, so the demo, the gateway's tests and users' CI run without Microsoft.
//!
//! This crate imports nothing from the gateway (the `aadgate` package): it implements AAD's side
//! of the protocol on its own reading of Microsoft's documentation, so a test that passes a token
//! minted here through the gateway checks the gateway against an independent implementation, not
//! against itself. Keep it that way — a shared helper is copied, not imported.
//!
//! The folder reads as the pieces it provides:
//!
//! - [`keys`]: RSA signing keys with self-signed certificates (`kid` = `x5t`), persisted to one
//!   PEM file so `dev-token` and `dev-idp` share a key;
//! - [`mint`]: [`TokenSpec`], a builder for arbitrary AAD-shaped v1/v2 access tokens;
//! - [`server`]: [`Emulator`] — metadata, JWKS and the app/tenant directory, with counters and
//!   switches for tests (key rotation, outage, forced token endpoint failures);
//! - [`token_endpoint`]: the `oauth2/token` and `oauth2/v2.0/token` endpoints, checking client
//!   assertions in AAD's order and answering AAD's errors: certificate assertions in every form
//!   Entra ID accepts, federated identity credentials (external tokens verified against their
//!   issuer's JWKS) and the `claims` parameter;
//! - [`server::workload`] and [`server::managed_identity`]: a Kubernetes-style service-account
//!   token issuer and the managed-identity endpoints (IMDS and `IDENTITY_ENDPOINT`);
//! - [`tls`]: HTTPS with a local CA ([`DevTls`]), so Microsoft's client libraries accept the
//!   emulator as an authority;
//! - `consent`: the admin-consent endpoints (`/{tenant}/v2.0/adminconsent`,
//!   `/{tenant}/oauth2/authorize?prompt=admin_consent`) with their HTML consent page, Accept and
//!   Cancel redirects and AADSTS error pages;
//! - [`outlook`]: [`MockOutlook`], an Outlook REST / Microsoft Graph mail API that checks bearer
//!   tokens the way Exchange Online does and answers its `x-ms-diagnostics`;
//! - [`graph`]: [`MockGraph`], Microsoft Graph v1.0 (`/users/{id}`, `/messages`, `/sendMail`) with
//!   Graph's token checks and error bodies, and continuous access evaluation: claims challenges
//!   for CAE tokens after a revocation event;
//! - [`echo`]: [`EchoServer`], an HTTP/1.1 and h2c upstream that reports what it received
//!   (streaming), echoes bodies, sends trailers, runs a WebSocket echo and can hold requests
//!   until a test releases them;
//! - [`grpc`]: [`GrpcEchoServer`], the gRPC service `aadgate.echo.v1.Echo` (unary, server
//!   streaming, chosen failures) over h2c or TLS, and its clients: [`GrpcEchoClient`],
//!   [`grpc_call`] for the demo and [`grpc_load`] for the benchmarks;
//! - [`dev`]: what the `aadgate dev-idp` and `aadgate dev-token` commands do.
#![forbid(unsafe_code)]

mod consent;
pub mod dev;
pub mod echo;
pub mod graph;
pub mod grpc;
pub mod keys;
pub mod mint;
pub mod outlook;
mod serve;
pub mod server;
mod state;
pub mod tls;
pub mod token_endpoint;

pub use dev::{
    dev_token_spec, run_dev_idp, run_dev_token, start_dev_idp, AppArg, AppRolesArg, ConsentArg,
    DevIdpOptions, DevTokenOptions, FederatedArg, RedirectUriArg, ServiceAccountArg,
};
pub use echo::{download_pattern_byte, EchoHandle, EchoServer, WsConnection, WsEnd};
pub use graph::{MockGraph, MockGraphHandle, SentMail};
pub use grpc::{
    grpc_call, grpc_load, GrpcClientError, GrpcEchoClient, GrpcEchoHandle, GrpcEchoServer,
    LoadReport, LoadStop,
};
pub use keys::{certificate_thumbprint_hex, default_dev_key_path, x5t_of, x5t_s256_of, SigningKey};
pub use mint::{issuer_v1, issuer_v2, TokenSpec};
pub use outlook::{MockOutlook, MockOutlookHandle};
pub use serve::RecordedRequest;
pub use server::{
    AppRegistration, Emulator, EmulatorHandle, EmulatorOptions, FederatedCredential,
    ManagedIdentity, TokenEndpointVersion, TokenOutcome, TokenRequestRecord, TrustedSubject,
};
pub use tls::{DevTls, TlsIdentity};

use std::time::{SystemTime, UNIX_EPOCH};

/// Tenant id used when a [`TokenSpec`] or the emulator is not told otherwise. The emulator always
/// knows this tenant.
pub const DEFAULT_TENANT: &str = "8b0a5b2e-1c3d-4f5a-9e7b-6c2d1a0f3e4b";

/// Audience of tokens minted by [`TokenSpec::default`] (the demo API).
pub const DEFAULT_AUDIENCE: &str = "api://aadgate-demo";

/// Client application id (`appid`/`azp`) of tokens minted by [`TokenSpec::default`].
pub const DEFAULT_CLIENT_ID: &str = "0f8a6a48-2c1b-4c57-9d4a-8f0c2b8c1d11";

/// Object id (`oid`) and subject of user tokens minted by [`TokenSpec::default`].
pub const DEFAULT_USER_OID: &str = "4a3c2b1d-6e5f-4a7b-8c9d-0e1f2a3b4c5d";

/// Object id (`oid`) of app-only tokens minted by [`TokenSpec::app`] (a service principal).
pub const DEFAULT_SERVICE_PRINCIPAL_OID: &str = "9d8c7b6a-5f4e-4d3c-2b1a-0f9e8d7c6b5a";

/// Resource id of the Outlook REST / Exchange Online API (`aud` of its app-only tokens).
pub const OUTLOOK_RESOURCE: &str = "https://outlook.office365.com";

/// Resource id of Microsoft Graph.
pub const GRAPH_RESOURCE: &str = "https://graph.microsoft.com";

/// Application id of Microsoft Graph (also accepted as its resource id).
pub const GRAPH_APP_ID: &str = "00000003-0000-0000-c000-000000000000";

/// The audience of tokens exchanged through a federated identity credential in Entra ID's
/// public cloud (the default audience of a credential).
pub const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";

/// Host AAD's real token endpoints live on; client assertions addressed to
/// `https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token` are accepted by the emulator.
pub const AAD_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";

/// Errors of the emulator, the mock APIs and the dev CLI commands.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// A file could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A key or key file is unusable (bad PEM, not RSA, key and certificate do not match, …).
    #[error("signing key: {0}")]
    Key(String),
    /// A certificate could not be parsed or generated.
    #[error("certificate: {0}")]
    Certificate(String),
    /// Signing a token failed.
    #[error("signing failed: {0}")]
    Signing(String),
    /// A command-line value or registration is invalid.
    #[error("invalid argument: {0}")]
    Invalid(String),
}

impl EmulatorError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        EmulatorError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Seconds since the Unix epoch, from the system clock (0 if the clock is before 1970).
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// base64url without padding, the JOSE encoding.
pub(crate) fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url without padding; `None` on any bad character or padding.
pub(crate) fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.as_bytes())
        .ok()
}

/// True for a GUID in the 8-4-4-4-12 hex form AAD uses for tenant and client ids.
pub(crate) fn is_guid(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// A fresh random GUID string.
pub(crate) fn new_guid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A GUID derived from `parts` (stable across runs), e.g. a service principal's object id.
pub(crate) fn derived_guid(parts: &[&str]) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in parts {
        ctx.update(part.as_bytes());
        ctx.update(&[0]);
    }
    let digest = ctx.finish();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest.as_ref()[..16]);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// Civil UTC date and time of a Unix timestamp: (year, month, day, hour, minute, second).
fn civil(secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        (rem / 3600) as u32,
        ((rem % 3600) / 60) as u32,
        (rem % 60) as u32,
    )
}

/// AAD's error timestamp format: `2016-01-09 02:02:12Z`.
pub(crate) fn aad_timestamp(secs: i64) -> String {
    let (y, mo, d, h, mi, s) = civil(secs);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}Z")
}

/// ISO 8601 with AAD's seven fractional digits: `2024-10-02T22:05:03.0000000Z`.
pub(crate) fn iso_timestamp(secs: i64) -> String {
    let (y, mo, d, h, mi, s) = civil(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.0000000Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_formatted_like_aad() {
        assert_eq!(aad_timestamp(1_452_304_932), "2016-01-09 02:02:12Z");
        assert_eq!(iso_timestamp(0), "1970-01-01T00:00:00.0000000Z");
        assert_eq!(aad_timestamp(951_782_400), "2000-02-29 00:00:00Z");
    }

    #[test]
    fn guid_shape_is_checked() {
        assert!(is_guid(DEFAULT_TENANT));
        assert!(!is_guid("common"));
        assert!(!is_guid("8b0a5b2e-1c3d-4f5a-9e7b-6c2d1a0f3e4"));
        assert_eq!(derived_guid(&["a", "b"]), derived_guid(&["a", "b"]));
        assert_ne!(derived_guid(&["a", "b"]), derived_guid(&["ab"]));
        assert!(is_guid(&derived_guid(&["x"])));
    }
}
