//! The token request itself: one POST of the client-credentials grant to a tenant's token
//! endpoint, and the reading of AAD's answer — a token, or an AADSTS error classified as
//! "not consented", "certificate rejected" or "unavailable".

use std::fmt;
use std::time::Duration;

use http::header::ACCEPT;
use serde::Deserialize;
use serde_json::Value;

/// `client_assertion_type` of a JWT client assertion (RFC 7523).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// AADSTS codes meaning the application is not installed or not consented in the tenant, or
/// disabled there: 700016 (application not found in the directory), 65001 (no consent),
/// 7000112 (application disabled), 500011 (resource principal not found in the tenant).
pub const NOT_CONSENTED_CODES: &[u32] = &[700_016, 65_001, 7_000_112, 500_011];

/// AADSTS codes meaning the assertion's certificate is not accepted: 700027 (key not found or
/// signature check failed), 7000214 (certificate revoked), 1000502 (certificate expired or
/// not yet valid).
pub const CERTIFICATE_REJECTED_CODES: &[u32] = &[700_027, 7_000_214, 1_000_502];

/// AADSTS codes meaning a federated assertion is not accepted: 70021 (no matching federated
/// identity record), 700211 (issuer), 700212 (audience), 700213 (subject), 700024 (the
/// assertion is outside its validity window, e.g. an expired projected token).
pub const FEDERATED_REJECTED_CODES: &[u32] = &[70_021, 700_211, 700_212, 700_213, 700_024];

/// Largest token endpoint answer read, in bytes (AAD's are a few kilobytes).
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// A token the endpoint issued. `Debug` redacts the token.
pub struct Issued {
    /// The app-only token. Redacted in `Debug`; never logged.
    pub access_token: String,
    /// Seconds.
    pub expires_in: i64,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("access_token", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// AAD's error answer: `{"error", "error_description", "error_codes", "trace_id",
/// "correlation_id", …}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct AadError {
    /// `error`: the OAuth error code (`invalid_client`, `unauthorized_client`, …); empty when
    /// absent.
    #[serde(default)]
    pub error: String,
    /// `error_description`: `AADSTSnnnn: text`, with trace and correlation ids on later lines;
    /// empty when absent.
    #[serde(default)]
    pub error_description: String,
    /// `error_codes`: the AADSTS numbers (numbers or numeric strings); empty when absent.
    #[serde(default, deserialize_with = "codes")]
    pub error_codes: Vec<u32>,
    /// `trace_id`, for a support request to Microsoft; `None` when absent.
    #[serde(default)]
    pub trace_id: Option<String>,
    /// `correlation_id`, logged with `trace_id`; `None` when absent.
    #[serde(default)]
    pub correlation_id: Option<String>,
}

fn codes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
    let v = Option::<Vec<Value>>::deserialize(d)?.unwrap_or_default();
    Ok(v.iter()
        .filter_map(|c| match c {
            Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        })
        .collect())
}

impl AadError {
    /// The AADSTS codes: `error_codes`, or when that is empty, every `AADSTSnnnn` in
    /// `error_description`.
    pub fn codes(&self) -> Vec<u32> {
        if !self.error_codes.is_empty() {
            return self.error_codes.clone();
        }
        self.error_description
            .match_indices("AADSTS")
            .filter_map(|(i, m)| {
                let digits: String = self.error_description[i + m.len()..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                digits.parse().ok()
            })
            .collect()
    }

    /// The first line of `error_description` (AAD appends trace id, correlation id and a
    /// timestamp on further lines), at most 300 characters.
    pub fn summary(&self) -> String {
        self.error_description
            .lines()
            .next()
            .unwrap_or_default()
            .chars()
            .take(300)
            .collect()
    }
}

/// Why a token request did not produce a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The request did not complete: connection refused, TLS error, timeout.
    Transport(String),
    /// The endpoint answered with an AAD error body.
    Aad {
        /// The HTTP status of the answer (usually 400 or 401).
        status: u16,
        /// The error body; [`AadError::codes`] decides the [`Class`].
        body: AadError,
    },
    /// Anything else: an answer that is neither a token nor an AAD error.
    BadResponse {
        /// The HTTP status of the answer.
        status: u16,
        /// What was wrong with it (e.g. "no access_token", "a body that is too large").
        detail: String,
    },
}

/// What a failure means for the caller and the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The app is not installed/consented (or is disabled) in the tenant: 403
    /// `tenant_not_consented`, with this AADSTS code.
    NotConsented(u32),
    /// The endpoint rejected the assertion's certificate or federated token (this AADSTS
    /// code): try the next credential.
    CertificateRejected(u32),
    /// Anything else: 503 `exchange_unavailable`.
    Unavailable,
}

/// Sorts a failure by its AADSTS codes, whatever the OAuth `error` (AAD answers these with
/// `invalid_client`, `unauthorized_client`, `invalid_grant` or `invalid_resource`).
pub fn classify(failure: &Failure) -> Class {
    let Failure::Aad { body, .. } = failure else {
        return Class::Unavailable;
    };
    let codes = body.codes();
    if let Some(c) = codes.iter().find(|c| NOT_CONSENTED_CODES.contains(c)) {
        return Class::NotConsented(*c);
    }
    if let Some(c) = codes
        .iter()
        .find(|c| CERTIFICATE_REJECTED_CODES.contains(c) || FEDERATED_REJECTED_CODES.contains(c))
    {
        return Class::CertificateRejected(*c);
    }
    Class::Unavailable
}

#[derive(Deserialize)]
struct Success {
    access_token: Option<String>,
    expires_in: Option<Value>,
    token_type: Option<String>,
}

/// Reads a token endpoint answer: status and body.
pub fn parse_response(status: u16, body: &[u8]) -> Result<Issued, Failure> {
    if (200..300).contains(&status) {
        let bad = |detail: &str| Failure::BadResponse {
            status,
            detail: detail.to_string(),
        };
        let s: Success = serde_json::from_slice(body)
            .map_err(|_| bad("a body that is not a JSON token response"))?;
        let access_token = s
            .access_token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| bad("no access_token"))?;
        if s.token_type
            .as_deref()
            .is_some_and(|t| !t.eq_ignore_ascii_case("bearer"))
        {
            return Err(bad("a token_type other than Bearer"));
        }
        let expires_in = match s.expires_in {
            Some(Value::Number(n)) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
            Some(Value::String(t)) => t.trim().parse::<i64>().ok(),
            _ => None,
        }
        .filter(|e| *e > 0)
        .ok_or_else(|| bad("no usable expires_in"))?;
        return Ok(Issued {
            access_token,
            expires_in,
        });
    }
    match serde_json::from_slice::<AadError>(body) {
        Ok(e) if !e.error.is_empty() || !e.codes().is_empty() => {
            Err(Failure::Aad { status, body: e })
        }
        _ => Err(Failure::BadResponse {
            status,
            detail: "a body that is not an AAD error".to_string(),
        }),
    }
}

/// The HTTP client of one exchanger (rustls, no redirects, no cookies).
#[derive(Debug, Clone)]
pub struct TokenClient {
    http: reqwest::Client,
    timeout: Duration,
}

impl TokenClient {
    /// A client whose requests time out after `timeout` (connect, send and read together).
    pub fn new(timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("aadgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        TokenClient { http, timeout }
    }

    /// POSTs `form` to `endpoint` with `client-request-id`, and reads the answer.
    pub async fn request(
        &self,
        endpoint: &str,
        form: &[(&str, &str)],
        client_request_id: &str,
    ) -> Result<Issued, Failure> {
        let mut response = self
            .http
            .post(endpoint)
            .timeout(self.timeout)
            .header(ACCEPT, "application/json")
            .header("client-request-id", client_request_id)
            .header("return-client-request-id", "true")
            .form(form)
            .send()
            .await
            .map_err(|e| Failure::Transport(transport_detail(e, self.timeout)))?;
        let status = response.status().as_u16();
        if response
            .content_length()
            .is_some_and(|l| l > MAX_RESPONSE_BYTES as u64)
        {
            return Err(Failure::BadResponse {
                status,
                detail: "a body that is too large".to_string(),
            });
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| Failure::Transport(transport_detail(e, self.timeout)))?
        {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(Failure::BadResponse {
                    status,
                    detail: "a body that is too large".to_string(),
                });
            }
            body.extend_from_slice(&chunk);
        }
        parse_response(status, &body)
    }
}

fn transport_detail(e: reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        format!("no answer within {}s", timeout.as_secs_f64())
    } else if e.is_connect() {
        "connection failed".to_string()
    } else {
        // Without the URL: it is known to the caller, and keeps the text short.
        e.without_url().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aad(status: u16, body: &str) -> Failure {
        parse_response(status, body.as_bytes()).expect_err("an error answer")
    }

    #[test]
    fn aadsts_bodies_are_classified_by_code() {
        let table: &[(&str, u16, &str, Class)] = &[
            (
                "app not in tenant",
                400,
                r#"{"error":"unauthorized_client","error_description":"AADSTS700016: Application with identifier 'x' was not found in the directory 'y'.","error_codes":[700016],"trace_id":"t","correlation_id":"c"}"#,
                Class::NotConsented(700_016),
            ),
            (
                "no consent",
                400,
                r#"{"error":"invalid_grant","error_description":"AADSTS65001: The user or administrator has not consented","error_codes":[65001]}"#,
                Class::NotConsented(65_001),
            ),
            (
                "app disabled",
                400,
                r#"{"error":"unauthorized_client","error_codes":[7000112]}"#,
                Class::NotConsented(7_000_112),
            ),
            (
                "resource principal missing",
                400,
                r#"{"error":"invalid_resource","error_codes":[500011]}"#,
                Class::NotConsented(500_011),
            ),
            (
                "invalid_client with a consent code",
                401,
                r#"{"error":"invalid_client","error_codes":[700016]}"#,
                Class::NotConsented(700_016),
            ),
            (
                "codes only in the description",
                400,
                r#"{"error":"unauthorized_client","error_description":"AADSTS700016: not found\r\nTrace ID: t"}"#,
                Class::NotConsented(700_016),
            ),
            (
                "codes as strings",
                400,
                r#"{"error":"invalid_grant","error_codes":["65001"]}"#,
                Class::NotConsented(65_001),
            ),
            (
                "key not found",
                401,
                r#"{"error":"invalid_client","error_description":"AADSTS700027: The key was not found.","error_codes":[700027]}"#,
                Class::CertificateRejected(700_027),
            ),
            (
                "certificate revoked",
                401,
                r#"{"error":"invalid_client","error_codes":[7000214]}"#,
                Class::CertificateRejected(7_000_214),
            ),
            (
                "certificate expired",
                401,
                r#"{"error":"invalid_client","error_codes":[1000502]}"#,
                Class::CertificateRejected(1_000_502),
            ),
            (
                "server error",
                500,
                r#"{"error":"server_error","error_codes":[50000]}"#,
                Class::Unavailable,
            ),
            (
                "throttled",
                429,
                r#"{"error":"temporarily_unavailable","error_codes":[90055]}"#,
                Class::Unavailable,
            ),
            (
                "unknown tenant",
                400,
                r#"{"error":"invalid_tenant","error_codes":[90002]}"#,
                Class::Unavailable,
            ),
            (
                "bad audience",
                401,
                r#"{"error":"invalid_client","error_codes":[700023]}"#,
                Class::Unavailable,
            ),
            (
                "html error page",
                502,
                "<html>Bad gateway</html>",
                Class::Unavailable,
            ),
            ("empty body", 503, "", Class::Unavailable),
        ];
        for (name, status, body, class) in table {
            assert_eq!(classify(&aad(*status, body)), *class, "{name}");
        }
    }

    #[test]
    fn trace_and_correlation_ids_are_read_from_aad_errors() {
        let Failure::Aad { body, .. } = aad(
            400,
            r#"{"error":"unauthorized_client","error_description":"AADSTS700016: nope\r\nTrace ID: t1\r\nCorrelation ID: c1","error_codes":[700016],"trace_id":"t1","correlation_id":"c1"}"#,
        ) else {
            panic!("an AAD error")
        };
        assert_eq!(body.trace_id.as_deref(), Some("t1"));
        assert_eq!(body.correlation_id.as_deref(), Some("c1"));
        assert_eq!(body.summary(), "AADSTS700016: nope");
    }

    #[test]
    fn success_answers_take_expires_in_as_number_or_string() {
        let table: &[(&str, Option<i64>)] = &[
            (
                r#"{"token_type":"Bearer","expires_in":3599,"access_token":"a.b.c"}"#,
                Some(3599),
            ),
            (
                r#"{"token_type":"Bearer","expires_in":"3599","ext_expires_in":"3599","access_token":"a.b.c"}"#,
                Some(3599),
            ),
            (
                r#"{"access_token":"a.b.c","expires_in":3599.0}"#,
                Some(3599),
            ),
            (r#"{"token_type":"Bearer","access_token":"a.b.c"}"#, None),
            (
                r#"{"token_type":"Bearer","expires_in":"soon","access_token":"a.b.c"}"#,
                None,
            ),
            (
                r#"{"token_type":"Bearer","expires_in":3599,"access_token":""}"#,
                None,
            ),
            (
                r#"{"token_type":"pop","expires_in":3599,"access_token":"a.b.c"}"#,
                None,
            ),
            ("not json", None),
        ];
        for (body, expected) in table {
            let got = parse_response(200, body.as_bytes())
                .ok()
                .map(|i| i.expires_in);
            assert_eq!(got, *expected, "{body}");
        }
    }

    #[test]
    fn debug_of_an_issued_token_is_redacted() {
        let i = Issued {
            access_token: "secret.token.value".into(),
            expires_in: 1,
        };
        assert!(!format!("{i:?}").contains("secret"));
    }
}
