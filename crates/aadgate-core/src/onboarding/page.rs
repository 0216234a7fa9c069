//! The answers of the sign-up paths: a redirect, or a small HTML page for a person's browser.
//!
//! Pages hold escaped text only: no script, no form, no link or redirect taken from the request.
//! Their headers forbid scripts, framing and sniffing, keep the page out of caches, and send no
//! `Referer` (the callback URL carries the `state`). An error page carries the status and the
//! `x-aadgate-reason` of SPEC section 4, like the gateway's JSON refusals.

use http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use http::{HeaderName, HeaderValue, StatusCode};

use crate::reason::{Reason, Rejection};

/// What the gateway answers on a sign-up path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The status.
    pub status: StatusCode,
    /// Every header of the answer (`content-length` aside).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body (HTML, or empty for a redirect).
    pub body: String,
    /// The reason code of an error page (for logs and metrics); `None` for a success.
    pub reason: Option<Reason>,
}

/// Headers every answer carries.
fn common_headers() -> Vec<(HeaderName, HeaderValue)> {
    vec![
        (CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (
            HeaderName::from_static("referrer-policy"),
            HeaderValue::from_static("no-referrer"),
        ),
    ]
}

/// `302` to `location` (a URL the gateway built from its configuration).
pub fn redirect(location: &str) -> Page {
    let mut headers = common_headers();
    match HeaderValue::from_str(location) {
        Ok(v) => headers.push((LOCATION, v)),
        Err(_) => {
            return error(
                &Rejection::new(
                    Reason::BadRequest,
                    "the sign-up redirect could not be built",
                ),
                "",
            )
        }
    }
    Page {
        status: StatusCode::FOUND,
        headers,
        body: String::new(),
        reason: None,
    }
}

/// A `200` page with a title and paragraphs (escaped here).
pub fn info(title: &str, paragraphs: &[&str]) -> Page {
    html(StatusCode::OK, title, paragraphs, None)
}

/// The error page of `rejection`: its status, `x-aadgate-reason`, `WWW-Authenticate` and
/// `Retry-After` (as the JSON refusals have them) and its message, with the request id.
pub fn error(rejection: &Rejection, request_id: &str) -> Page {
    let title = match rejection.reason {
        Reason::BadRequest => "This sign-up link is not valid",
        Reason::TenantNotConsented => "The organization has not granted consent",
        Reason::TenantDenied => "This organization cannot sign up",
        Reason::RouteNotFound => "Page not found",
        _ => "The sign-up could not be completed",
    };
    let id = format!("Reason: {} · request id {request_id}", rejection.reason);
    let mut page = html(
        rejection.status(),
        title,
        &[rejection.message.as_str(), id.as_str()],
        Some(rejection.reason),
    );
    // Same headers as a JSON refusal (reason, WWW-Authenticate, Retry-After, request id),
    // except its content type.
    for (name, value) in rejection.headers(request_id) {
        if name == "content-type" || name == "cache-control" {
            continue;
        }
        if let Ok(value) = HeaderValue::from_str(&value) {
            page.headers.push((HeaderName::from_static(name), value));
        }
    }
    page
}

fn html(status: StatusCode, title: &str, paragraphs: &[&str], reason: Option<Reason>) -> Page {
    let mut body = String::with_capacity(1024);
    body.push_str("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    body.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    body.push_str("<title>");
    escape_into(&mut body, title);
    body.push_str("</title>\n<style>body{font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;line-height:1.5;color:#222}p.detail{color:#666;font-size:.9rem}</style>\n");
    body.push_str("</head>\n<body>\n<main>\n<h1>");
    escape_into(&mut body, title);
    body.push_str("</h1>\n");
    for (i, p) in paragraphs.iter().enumerate() {
        let last = reason.is_some() && i + 1 == paragraphs.len();
        body.push_str(if last { "<p class=\"detail\">" } else { "<p>" });
        escape_into(&mut body, p);
        body.push_str("</p>\n");
    }
    body.push_str("</main>\n</body>\n</html>\n");
    let mut headers = common_headers();
    headers.extend([
        (
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        ),
        (
            HeaderName::from_static("content-security-policy"),
            HeaderValue::from_static(
                "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            ),
        ),
        (
            HeaderName::from_static("x-content-type-options"),
            HeaderValue::from_static("nosniff"),
        ),
        (
            HeaderName::from_static("x-frame-options"),
            HeaderValue::from_static("DENY"),
        ),
    ]);
    Page {
        status,
        headers,
        body,
        reason,
    }
}

/// Appends `text` with `& < > " '` as character references.
pub fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_text_is_escaped_and_the_page_has_no_script() {
        let r = Rejection::new(
            Reason::TenantNotConsented,
            "<script>alert('x')</script> & \"more\"",
        );
        let page = error(&r, "rid<1>");
        assert!(!page.body.contains("<script"), "{}", page.body);
        assert!(page
            .body
            .contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;more&quot;"));
        assert!(page.body.contains("rid&lt;1&gt;"));
        assert_eq!(page.status, StatusCode::FORBIDDEN);
        let header = |n: &str| {
            page.headers
                .iter()
                .find(|(k, _)| k.as_str() == n)
                .map(|(_, v)| v.to_str().unwrap_or_default().to_string())
        };
        assert_eq!(
            header("x-aadgate-reason").as_deref(),
            Some("tenant_not_consented")
        );
        assert_eq!(
            header("content-type").as_deref(),
            Some("text/html; charset=utf-8")
        );
        assert!(
            header("content-security-policy").is_some_and(|v| v.starts_with("default-src 'none'"))
        );
    }

    #[test]
    fn a_redirect_that_is_not_a_header_value_becomes_an_error_page() {
        assert_eq!(redirect("https://a.example/x").status, StatusCode::FOUND);
        assert_eq!(
            redirect("https://a.example/\nx").status,
            StatusCode::BAD_REQUEST
        );
    }
}
