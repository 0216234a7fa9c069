//! Why the mock Graph refuses a request, and the one mapping from a reason to Graph's answer:
//! status, `error.code`, `error.message` and the `WWW-Authenticate` challenge.
//!
//! Graph's error body is `{"error":{"code","message","innerError":{"date","request-id",
//! "client-request-id"}}}` (<https://learn.microsoft.com/graph/errors>). The codes are the ones
//! Graph answers: `InvalidAuthenticationToken` for every token failure (401), `BadRequest` for
//! `/me` with an app-only token, `Authorization_RequestDenied` when the directory side (users)
//! refuses a permission and `ErrorAccessDenied` when the mailbox side (Exchange: messages,
//! sendMail) does (403, <https://learn.microsoft.com/graph/resolve-auth-errors>).

use axum::http::StatusCode;

use super::cae;
use crate::GRAPH_APP_ID;

/// Graph's message when a revocation event invalidated a CAE token, as Graph puts it in the
/// challenge's `error_description` and the body's `message`.
pub(super) const CAE_REVOKED: &str = "Continuous access evaluation resulted in challenge with \
     result: InteractionRequired and code: TokenIssuedBeforeRevocationTimestamp";

/// One reason for refusing a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum GraphError {
    /// No `Authorization: Bearer …` header.
    EmptyToken,
    /// The token is not a JWS compact token with JSON header and claims.
    Unparsable,
    /// Not RS256, an unknown `kid`, or a signature the emulator's keys do not verify.
    BadSignature,
    /// `exp` is past (5 minutes of skew).
    Expired,
    /// `nbf` is ahead (5 minutes of skew).
    NotYetValid,
    /// `aud` is not Graph.
    InvalidAudience,
    /// `tid` is not a tenant GUID, or `iss` is not an issuer of that tenant.
    InvalidTenant,
    /// Neither `roles` (app) nor `scp` (delegated).
    NoPermissionClaims,
    /// A CAE token issued before a revocation event: the claims challenge, asking for a token
    /// whose `nbf` is at least this Unix time.
    ClaimsChallenge {
        /// The `nbf` the new token needs.
        not_before: i64,
    },
    /// `/me` with an app-only token.
    MeWithAppOnly,
    /// The path's first segment is not `v1.0`.
    InvalidVersion(String),
    /// A segment the mock does not serve.
    UnknownSegment(String),
    /// A method the resource does not take.
    MethodNotAllowed(String),
    /// `GET /users/{id}` with an id that is neither a GUID nor a UPN.
    UserNotFound(String),
    /// A mailbox path with an id that is neither a GUID nor a UPN.
    InvalidMailbox(String),
    /// The directory (users) refuses: the token lacks a permission.
    DirectoryDenied,
    /// Exchange (messages, sendMail) refuses: the token lacks a permission.
    MailDenied,
    /// sendMail without a body.
    EmptyPayload,
    /// sendMail with a body that is not a JSON object.
    InvalidJson,
    /// sendMail without a `message` object.
    MissingMessage,
    /// sendMail without any recipient.
    NoRecipients,
    /// sendMail with a recipient without a usable address.
    InvalidRecipient(String),
    /// sendMail with a `saveToSentItems` that is not a boolean.
    InvalidSaveToSentItems,
}

/// Graph's plain bearer challenge, sent with every 401 (no `error` parameter).
const BEARER_CHALLENGE: &str = "Bearer realm=\"\", \
    authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", \
    client_id=\"00000003-0000-0000-c000-000000000000\"";

impl GraphError {
    /// HTTP status of the answer.
    pub(super) fn status(&self) -> StatusCode {
        match self {
            GraphError::EmptyToken
            | GraphError::Unparsable
            | GraphError::BadSignature
            | GraphError::Expired
            | GraphError::NotYetValid
            | GraphError::InvalidAudience
            | GraphError::InvalidTenant
            | GraphError::NoPermissionClaims
            | GraphError::ClaimsChallenge { .. } => StatusCode::UNAUTHORIZED,
            GraphError::MeWithAppOnly
            | GraphError::InvalidVersion(_)
            | GraphError::UnknownSegment(_)
            | GraphError::EmptyPayload
            | GraphError::InvalidJson
            | GraphError::MissingMessage
            | GraphError::NoRecipients
            | GraphError::InvalidRecipient(_)
            | GraphError::InvalidSaveToSentItems => StatusCode::BAD_REQUEST,
            GraphError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            GraphError::UserNotFound(_) | GraphError::InvalidMailbox(_) => StatusCode::NOT_FOUND,
            GraphError::DirectoryDenied | GraphError::MailDenied => StatusCode::FORBIDDEN,
        }
    }

    /// `error.code` of the body.
    pub(super) fn code(&self) -> &'static str {
        match self {
            GraphError::EmptyToken
            | GraphError::Unparsable
            | GraphError::BadSignature
            | GraphError::Expired
            | GraphError::NotYetValid
            | GraphError::InvalidAudience
            | GraphError::InvalidTenant
            | GraphError::NoPermissionClaims
            | GraphError::ClaimsChallenge { .. } => "InvalidAuthenticationToken",
            GraphError::MeWithAppOnly
            | GraphError::InvalidVersion(_)
            | GraphError::UnknownSegment(_)
            | GraphError::MethodNotAllowed(_)
            | GraphError::EmptyPayload
            | GraphError::InvalidJson => "BadRequest",
            GraphError::UserNotFound(_) => "Request_ResourceNotFound",
            GraphError::InvalidMailbox(_) => "ErrorInvalidUser",
            GraphError::DirectoryDenied => "Authorization_RequestDenied",
            GraphError::MailDenied => "ErrorAccessDenied",
            GraphError::MissingMessage | GraphError::InvalidSaveToSentItems => {
                "ErrorInvalidParameter"
            }
            GraphError::NoRecipients | GraphError::InvalidRecipient(_) => "ErrorInvalidRecipients",
        }
    }

    /// `error.message` of the body.
    pub(super) fn message(&self) -> String {
        match self {
            GraphError::EmptyToken => "Access token is empty.".to_string(),
            GraphError::Unparsable => {
                "CompactToken parsing failed with error code: 80049217".to_string()
            }
            GraphError::BadSignature => "Signature is invalid.".to_string(),
            GraphError::Expired => "Lifetime validation failed, the token is expired.".to_string(),
            GraphError::NotYetValid => {
                "Lifetime validation failed, the token is not yet valid.".to_string()
            }
            GraphError::InvalidAudience => {
                "Access token validation failure. Invalid audience.".to_string()
            }
            GraphError::InvalidTenant => {
                "Access token validation failure. Invalid issuer.".to_string()
            }
            GraphError::NoPermissionClaims => {
                "Either scp or roles claim need to be present in the token.".to_string()
            }
            GraphError::ClaimsChallenge { .. } => CAE_REVOKED.to_string(),
            GraphError::MeWithAppOnly => {
                "/me request is only valid with delegated authentication flow.".to_string()
            }
            GraphError::InvalidVersion(version) => format!("Invalid version: {version}"),
            GraphError::UnknownSegment(segment) => {
                format!("Resource not found for the segment '{segment}'.")
            }
            GraphError::MethodNotAllowed(method) => {
                format!("The HTTP method '{method}' is not allowed on this resource.")
            }
            GraphError::UserNotFound(id) => format!(
                "Resource '{id}' does not exist or one of its queried reference-property \
                 objects are not present."
            ),
            GraphError::InvalidMailbox(id) => format!("The requested user '{id}' is invalid."),
            GraphError::DirectoryDenied => {
                "Insufficient privileges to complete the operation.".to_string()
            }
            GraphError::MailDenied => {
                "Access is denied. Check credentials and try again.".to_string()
            }
            GraphError::EmptyPayload => "Empty Payload. JSON content expected.".to_string(),
            GraphError::InvalidJson => "Unable to read JSON request payload. Please ensure \
                 Content-Type header is set and payload is of valid JSON format."
                .to_string(),
            GraphError::MissingMessage => {
                "The value of the parameter 'Message' is empty.".to_string()
            }
            GraphError::NoRecipients => "At least one recipient isn't valid., A message can't \
                 be sent because it contains no recipients."
                .to_string(),
            GraphError::InvalidRecipient(address) => format!(
                "At least one recipient isn't valid., Recipient '{address}' isn't resolved. \
                 All recipients must be resolved before a message can be submitted."
            ),
            GraphError::InvalidSaveToSentItems => {
                "The value of the parameter 'SaveToSentItems' is not a boolean.".to_string()
            }
        }
    }

    /// The `WWW-Authenticate` value: Graph's bearer challenge on every 401, with
    /// `error="insufficient_claims"` and the base64 claims request for a CAE challenge.
    pub(super) fn challenge(&self) -> Option<String> {
        match self {
            GraphError::ClaimsChallenge { not_before } => Some(format!(
                "Bearer realm=\"\", \
                 authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", \
                 client_id=\"{GRAPH_APP_ID}\", error_description=\"{CAE_REVOKED}\", \
                 error=\"insufficient_claims\", claims=\"{}\"",
                cae::encoded_claims_request(*not_before)
            )),
            GraphError::EmptyToken
            | GraphError::Unparsable
            | GraphError::BadSignature
            | GraphError::Expired
            | GraphError::NotYetValid
            | GraphError::InvalidAudience
            | GraphError::InvalidTenant
            | GraphError::NoPermissionClaims => Some(BEARER_CHALLENGE.to_string()),
            GraphError::MeWithAppOnly
            | GraphError::InvalidVersion(_)
            | GraphError::UnknownSegment(_)
            | GraphError::MethodNotAllowed(_)
            | GraphError::UserNotFound(_)
            | GraphError::InvalidMailbox(_)
            | GraphError::DirectoryDenied
            | GraphError::MailDenied
            | GraphError::EmptyPayload
            | GraphError::InvalidJson
            | GraphError::MissingMessage
            | GraphError::NoRecipients
            | GraphError::InvalidRecipient(_)
            | GraphError::InvalidSaveToSentItems => None,
        }
    }
}
