//! AAD's error answers: the AADSTS error shape (`error`, `error_description` with trace and
//! correlation ids, `error_codes`, `timestamp`, `trace_id`, `correlation_id`, `error_uri`) and the
//! ids and headers every token endpoint answer carries. The metadata and keys endpoints answer
//! their `AADSTS90002` with it too, and the admin-consent pages show the same codes and wording
//! in HTML.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::{aad_timestamp, is_guid, new_guid, unix_now, AAD_AUTHORITY_HOST};

/// An AAD error answer: HTTP status, OAuth `error`, AADSTS code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AadstsError {
    pub status: StatusCode,
    pub error: &'static str,
    pub code: u32,
    pub message: String,
}

impl AadstsError {
    pub(crate) fn new(status: StatusCode, error: &'static str, code: u32, message: String) -> Self {
        AadstsError {
            status,
            error,
            code,
            message,
        }
    }

    pub(crate) fn bad_request(error: &'static str, code: u32, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error, code, message.into())
    }

    pub(super) fn invalid_client(code: u32, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            code,
            message.into(),
        )
    }

    /// AADSTS900144, a required parameter is absent or empty.
    pub(crate) fn missing(parameter: &str) -> Self {
        Self::bad_request(
            "invalid_request",
            900_144,
            format!("The request body must contain the following parameter: '{parameter}'."),
        )
    }

    /// AADSTS90002, AAD's answer for a tenant it does not know.
    pub(crate) fn tenant_not_found(tenant: &str) -> Self {
        Self::bad_request(
            "invalid_tenant",
            90_002,
            format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID \
                 and are signing into the correct cloud. Check with your subscription \
                 administrator, this may happen if there are no active subscriptions for the tenant."
            ),
        )
    }

    /// AADSTS700016: no app `client_id` in the directory `tenant` (not registered, or no
    /// service principal there: nobody consented).
    pub(crate) fn app_not_found(client_id: &str, tenant: &str) -> Self {
        Self::bad_request(
            "unauthorized_client",
            700_016,
            format!(
                "Application with identifier '{client_id}' was not found in the directory \
                 '{tenant}'. This can happen if the application has not been installed by \
                 the administrator of the tenant or consented to by any user in the tenant. \
                 You may have sent your authentication request to the wrong tenant."
            ),
        )
    }

    /// The answer of a token endpoint forced to fail with `status`.
    pub(super) fn forced(status: u16) -> Self {
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let (error, aadsts, message) = match code.as_u16() {
            429 => (
                "temporarily_unavailable",
                90_055,
                "There are too many incoming requests. Please try again later.",
            ),
            503 | 504 => (
                "temporarily_unavailable",
                90_006,
                "The service is temporarily unavailable. Please try again later.",
            ),
            500..=599 => (
                "server_error",
                50_000,
                "There was an error issuing a token or an issue with our sign-in service.",
            ),
            401 => ("invalid_client", 50_012, "Authentication failed."),
            _ => (
                "invalid_request",
                90_023,
                "The authentication service request is not valid.",
            ),
        };
        Self::new(code, error, aadsts, message.to_string())
    }

    /// The JSON response, with trace/correlation ids and the `client-request-id` echo.
    pub(crate) fn into_response_for(self, headers: &HeaderMap) -> Response {
        let ids = RequestIds::from_headers(headers);
        let now = unix_now();
        let timestamp = aad_timestamp(now);
        let body = json!({
            "error": self.error,
            "error_description": format!(
                "AADSTS{}: {}\r\nTrace ID: {}\r\nCorrelation ID: {}\r\nTimestamp: {}",
                self.code, self.message, ids.trace_id, ids.correlation_id, timestamp
            ),
            "error_codes": [self.code],
            "timestamp": timestamp,
            "trace_id": ids.trace_id,
            "correlation_id": ids.correlation_id,
            "error_uri": format!("{AAD_AUTHORITY_HOST}/error?code={}", self.code),
        });
        let mut response = (self.status, Json(body)).into_response();
        ids.apply(response.headers_mut());
        response
    }
}

/// `x-ms-request-id` / `trace_id` and the correlation id of one answer.
pub(super) struct RequestIds {
    trace_id: String,
    correlation_id: String,
    client_request_id: Option<HeaderValue>,
}

impl RequestIds {
    pub(super) fn from_headers(headers: &HeaderMap) -> Self {
        let client_request_id = headers.get("client-request-id").cloned();
        let correlation_id = client_request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .filter(|v| is_guid(v))
            .map(|v| v.to_ascii_lowercase())
            .unwrap_or_else(new_guid);
        RequestIds {
            trace_id: new_guid(),
            correlation_id,
            client_request_id,
        }
    }

    pub(super) fn apply(self, headers: &mut HeaderMap) {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store, no-cache"),
        );
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if let Ok(v) = HeaderValue::from_str(&self.trace_id) {
            headers.insert("x-ms-request-id", v);
        }
        if let Some(v) = self.client_request_id {
            headers.insert("client-request-id", v);
        }
    }
}
