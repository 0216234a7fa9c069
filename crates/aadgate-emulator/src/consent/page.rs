//! The HTML of the admin-consent flow: the consent page (app, permissions, organization picker,
//! Accept and Cancel) and the error page that replaces it when the request is refused (AADSTS
//! code and message, trace and correlation ids, no redirect). No script; every value written
//! into a page goes through [`escape`].

use std::fmt::Write as _;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::token_endpoint::AadstsError;
use crate::{aad_timestamp, new_guid, unix_now};

/// Name of the text input where an admin types a tenant GUID (or registered name) instead of
/// picking one; a non-empty value wins over the `<select name="tenant">`.
pub(super) const OTHER_TENANT_FIELD: &str = "tenant_other";

/// What the consent page shows.
pub(super) struct ConsentView<'a> {
    /// Path the form posts back to (the request's own path).
    pub action: &'a str,
    /// The app's display name.
    pub app_name: &'a str,
    /// The app's client id.
    pub client_id: &'a str,
    /// The `scope` values of the request (delegated or `.default` permissions).
    pub scopes: Vec<&'a str>,
    /// `resource` of a v1 authorize request, if any.
    pub resource: Option<&'a str>,
    /// The application permissions (app roles) the app asks for.
    pub app_roles: &'a [String],
    /// The organizations offered, as (tenant GUID, label).
    pub tenants: &'a [(String, String)],
    /// The tenant GUID preselected, if any.
    pub selected: Option<&'a str>,
    /// The request's parameters, carried in hidden fields.
    pub hidden: &'a [(&'static str, &'a str)],
}

/// Escapes `text` for HTML text and double- or single-quoted attribute values.
pub(super) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:'Segoe UI',Arial,sans-serif;background:#f2f2f2;margin:0}\
main{max-width:440px;margin:48px auto;background:#fff;padding:44px;box-shadow:0 2px 6px rgba(0,0,0,.2)}\
h1{font-size:1.5rem;font-weight:600}ul{padding-left:1.2rem}.muted{color:#555;font-size:.85rem}\
label{display:block;margin-top:1rem}select,input[type=text]{width:100%;padding:6px;margin-top:4px}\
.buttons{margin-top:1.5rem;text-align:right}button{padding:6px 20px;margin-left:8px}\
#accept{background:#0067b8;color:#fff;border:1px solid #0067b8}\
pre{white-space:pre-wrap;word-break:break-all;background:#f8f8f8;padding:8px}";

fn open_document(out: &mut String, title: &str) {
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n",
        escape(title)
    );
}

fn close_document(out: &mut String) {
    out.push_str("<p class=\"muted\">aadgate emulator — not Microsoft Entra ID</p>\n</main>\n</body>\n</html>\n");
}

/// The consent page, `200 text/html`.
pub(super) fn consent_page(view: &ConsentView<'_>) -> Response {
    let mut out = String::with_capacity(4096);
    open_document(&mut out, "Permissions requested");
    let _ = write!(
        out,
        "<h1>Permissions requested</h1>\n<p><strong id=\"app-name\">{}</strong></p>\n\
         <p class=\"muted\">Application (client) ID: <span id=\"client-id\">{}</span></p>\n\
         <p>This app would like to:</p>\n<ul id=\"permissions\">\n",
        escape(view.app_name),
        escape(view.client_id)
    );
    for scope in &view.scopes {
        let _ = writeln!(out, "<li class=\"scope\">{}</li>", escape(scope));
    }
    if let Some(resource) = view.resource {
        let _ = writeln!(out, "<li class=\"resource\">{}</li>", escape(resource));
    }
    for role in view.app_roles {
        let _ = writeln!(
            out,
            "<li class=\"app-role\">{} (application permission)</li>",
            escape(role)
        );
    }
    out.push_str("</ul>\n");
    let _ = writeln!(
        out,
        "<form method=\"post\" action=\"{}\">",
        escape(view.action)
    );
    for (name, value) in view.hidden {
        let _ = writeln!(
            out,
            "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
            escape(name),
            escape(value)
        );
    }
    write_picker(&mut out, view);
    out.push_str(
        "<p class=\"muted\">Accepting grants these permissions for the whole organization.</p>\n\
         <div class=\"buttons\">\n\
         <button type=\"submit\" name=\"decision\" value=\"cancel\" id=\"cancel\">Cancel</button>\n\
         <button type=\"submit\" name=\"decision\" value=\"accept\" id=\"accept\">Accept</button>\n\
         </div>\n</form>\n",
    );
    close_document(&mut out);
    html(StatusCode::OK, out)
}

fn write_picker(out: &mut String, view: &ConsentView<'_>) {
    out.push_str(
        "<label for=\"tenant\">Organization</label>\n<select name=\"tenant\" id=\"tenant\">\n",
    );
    for (tid, label) in view.tenants {
        let selected = if view.selected == Some(tid.as_str()) {
            " selected"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "<option value=\"{}\"{selected}>{}</option>",
            escape(tid),
            escape(label)
        );
    }
    out.push_str("</select>\n");
    let _ = writeln!(
        out,
        "<label for=\"{OTHER_TENANT_FIELD}\">Or another organization (tenant ID)</label>\n\
         <input type=\"text\" name=\"{OTHER_TENANT_FIELD}\" id=\"{OTHER_TENANT_FIELD}\" \
         placeholder=\"00000000-0000-0000-0000-000000000000\" autocomplete=\"off\">"
    );
}

/// The error page of a refused request: `error.status` (400), the AADSTS code and message, the
/// trace and correlation ids and the time, as Entra ID's sign-in error page shows them. No
/// redirect.
pub(super) fn error_page(error: &AadstsError) -> Response {
    let trace_id = new_guid();
    let correlation_id = new_guid();
    let timestamp = aad_timestamp(unix_now());
    let mut out = String::with_capacity(2048);
    open_document(&mut out, "Sign in to your account");
    let _ = write!(
        out,
        "<h1>Sorry, but we’re having trouble signing you in.</h1>\n\
         <p id=\"error\" data-code=\"{code}\">AADSTS{code}: {message}</p>\n\
         <pre>Error code: {error}\nRequest Id: {trace_id}\nCorrelation Id: {correlation_id}\n\
         Timestamp: {timestamp}</pre>\n",
        code = error.code,
        message = escape(&error.message),
        error = escape(error.error),
    );
    close_document(&mut out);
    let status = if error.status.is_client_error() {
        error.status
    } else {
        StatusCode::BAD_REQUEST
    };
    html(status, out)
}

fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // No script, no frames; `form-action` stays open because Accept and Cancel post here and
    // are then redirected to the app.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}
