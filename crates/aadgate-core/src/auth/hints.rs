//! How to fix each rejection, in the caller's or operator's terms. Used by `aadgate explain` and
//! the troubleshooting guide; the gateway's own messages carry the specific part.

use crate::reason::Reason;

/// A concrete next step for `reason`.
pub fn hint(reason: Reason) -> &'static str {
    match reason {
        Reason::BadRequest => "Send an origin-form request target (`/path?query`) or an absolute URL, with a normalised path: no '.' or '..' segments (also not `..;x`), no encoded '/' or '\\', no NUL.",
        Reason::UriTooLong => "The request target is longer than [server] max_uri_bytes; send long parameters in the body, or raise the limit.",
        Reason::RouteNotFound => "No [[routes]] entry matches this host, method and path; add one or fix the path_prefix.",
        Reason::MissingToken => "Send `Authorization: Bearer <access token>`; acquire the token for this API's App ID URI (scope \"<App ID URI>/.default\" for daemons).",
        Reason::MalformedToken => "Send the access token itself (three base64url segments), once, in one Authorization header; not an id_token wrapper, a reference token or an encrypted token.",
        Reason::UnsupportedAlg => "Azure AD signs access tokens with RS256; a token with alg none or HS256 is forged or not from Azure AD.",
        Reason::UnknownKid => "The signing key is not in the configured JWKS. Azure AD rotates keys: the gateway refetches at most once per min_refetch_interval. If it persists, the token comes from another cloud, uses an app-specific signing key (claims mapping), or belongs to another API.",
        Reason::BadSignature => "The token was altered or is not for this API. A token with a `nonce` header is a Microsoft Graph token: only Graph can validate it; request a token for this API instead.",
        Reason::Expired => "Acquire a new token (MSAL does this from its cache); if tokens look fresh, check the clocks (clock_skew allows some drift).",
        Reason::NotYetValid => "The token's nbf/iat lies in the future: synchronise the clocks of the caller and the gateway (NTP).",
        Reason::BadAudience => "Request the token for this API: scope \"<App ID URI>/.default\" (app-only) or \"<App ID URI>/<scope>\" (delegated). Both the App ID URI and the client id may appear as aud; list the one your tokens carry in [identity] audiences.",
        Reason::NotAccessToken => "This is not an access token (it has neither appid nor azp, as ID tokens do): acquire an access token for this API (scope \"<App ID URI>/.default\" or \"<App ID URI>/<scope>\") and send that instead.",
        Reason::BadIssuer => "List the issuer form your tokens use in [tenants] issuers: v1 tokens \"https://sts.windows.net/{tenantid}/\", v2 tokens \"https://login.microsoftonline.com/{tenantid}/v2.0\" (set by accessTokenAcceptedVersion in the API's manifest).",
        Reason::TenantNotAllowed => "Onboard the tenant: add its id to [tenants] allow (or the tenants file), let the tenant hook admit it, or (mode = \"registry\") have an administrator of the tenant sign up, or run `aadgate tenants add`/`approve`.",
        Reason::TenantDenied => "The tenant is in [tenants] deny; remove it there if it should be served.",
        Reason::ClientNotAllowed => "Add the client application's id (appid/azp) to [clients] allow or the route's clients, or add it to the API's knownClientApplications.",
        Reason::WeakClientAuth => "The client authenticated with a secret (strength 1) or none (0); use a certificate (2), a managed identity or a federated credential.",
        Reason::WrongTokenKind => "App-only routes take client-credentials tokens (roles); user routes take delegated tokens (scp). A daemon cannot call /me: use /users/{id}.",
        Reason::MissingRole => "Define the app role on the API, assign it to the client (Application permission) and grant admin consent; then acquire a new token. Delegated tokens carry roles only for assigned users.",
        Reason::MissingScope => "Request the scope when acquiring the delegated token and consent to it; app-only tokens never carry scopes.",
        Reason::HookDenied => "A validator refused the request; its message says why.",
        Reason::HookUnavailable => "A validator hook failed or timed out; check the hook service, or set on_error = \"allow\" to fail open.",
        Reason::KeysUnavailable => "The gateway cannot reach the metadata/JWKS endpoint; check egress to login.microsoftonline.com, or configure [identity] cache_file.",
        Reason::TenantNotConsented => "An administrator of the tenant must grant admin consent to the gateway's application (https://login.microsoftonline.com/{tenant}/adminconsent?client_id={client_id}).",
        Reason::ExchangeUnavailable => "The token endpoint failed; retry after Retry-After. Check the certificate registered on the app and egress to login.microsoftonline.com.",
        Reason::UpstreamUnavailable => "The upstream refused, reset or timed out; check that it runs and that upstream_read_timeout suits it.",
        Reason::RateLimited => "A [[rate_limits]] entry is exhausted for this caller: wait Retry-After seconds (RateLimit says how many requests remain and when the bucket is full again), spread requests out, or have the operator raise the limit or add an override for this tenant/client.",
        Reason::RegistryUnavailable => "The tenant registry cannot be written: check the [tenants] registry file's folder (space, permissions, read-only mount); `aadgate tenants list` shows what it holds.",
    }
}
