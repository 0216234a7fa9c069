//! The admin-consent flow (SPEC section 7; the emulator's side of tenant onboarding, section 9):
//! the consent page an administrator sees, and the redirect back to the app that Entra ID makes
//! after Accept or Cancel.
//!
//! | path | answer |
//! |---|---|
//! | `GET /{tenant}/v2.0/adminconsent?client_id&redirect_uri&scope&state` | the consent page |
//! | `GET /{tenant}/oauth2/authorize?prompt=admin_consent&client_id&redirect_uri&state` (also `/oauth2/v2.0/authorize`) | the same page (`scope`/`resource`, `response_type` may be present) |
//! | `POST` to either path, `decision=accept` | service principal created, `302` to `redirect_uri?admin_consent=True&tenant=<tid>&scope=<scope>&state=<state>` |
//! | `POST` to either path, `decision=cancel` | `302` to `redirect_uri?error=access_denied&error_subcode=cancel&error_description=AADSTS65004…&state=<state>` |
//!
//! `{tenant}` is `organizations`, `common`, any tenant GUID or a registered tenant name. The
//! page (`text/html`, no script, every value HTML-escaped) shows the app's display name, the
//! permissions asked — the `scope` values, a v1 `resource`, and the app roles registered with
//! [`crate::AppRegistration::with_app_roles`] — an organization picker (`<select name="tenant">`
//! of the tenants the directory has seen, labelled with a registered name where there is one;
//! preselected by a specific `{tenant}`, else by the domain of `login_hint`), a text input
//! (`tenant_other`) for any tenant GUID, and the buttons `decision=accept` (`#accept`) and
//! `decision=cancel` (`#cancel`) in a form that posts the request's parameters back in hidden
//! fields. A POST checks everything again: the hidden fields are input like any other.
//!
//! Accept creates (or keeps) the app's service principal in the chosen tenant with the app's
//! requested roles, so client-credentials grants there succeed from then on, and makes the tenant
//! seen. Redirect parameters are form-encoded and appended with `&` when the redirect URI
//! already has a query; `state` is left out when the request had none, `scope` likewise.
//!
//! A request that cannot be redirected safely is refused on the page, `400`, with no
//! `Location`, in the order checked:
//!
//! | check | AADSTS |
//! |---|---|
//! | `/oauth2/authorize` carries `prompt=admin_consent` (interactive sign-in is not emulated) | 90023 |
//! | `{tenant}` is `organizations`, `common`, a GUID or a registered name | 90002 |
//! | `client_id` present | 900144 ("The request body must contain the following parameter: 'client_id'.") |
//! | the app is registered | 700016 |
//! | `redirect_uri` present | 900144 |
//! | `redirect_uri` is one of the app's, compared exactly | 50011 ("The redirect URI '…' specified in the request does not match the redirect URIs configured for the application '<client_id>'…") |
//! | `scope` present (`/v2.0/adminconsent`) | 900144 |
//! | POST: `decision` is `accept` or `cancel` | 900144 |
//! | Accept: the picked tenant is a GUID or a registered name | 90002 |
//!
//! Sources, Microsoft's own pages:
//! - the admin consent endpoint, its parameters and its success redirect
//!   (`admin_consent=True&tenant=…&scope=…&state=…`):
//!   <https://learn.microsoft.com/en-us/entra/identity-platform/v2-admin-consent>;
//! - `/authorize` with admin consent grants the same as `/adminconsent`:
//!   <https://learn.microsoft.com/en-us/answers/a/1507836>;
//! - AADSTS50011, the exact redirect URI comparison and its wording:
//!   <https://learn.microsoft.com/en-us/troubleshoot/azure/active-directory/error-code-aadsts50011-redirect-uri-mismatch>;
//! - AADSTS65004 (`UserDeclinedConsent`, "User declined to consent to access the app."),
//!   700016, 90002 and 900144: <https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes>.
//!
//! The v2 admin consent page documents a cancelled consent as `error=permission_denied`; what
//! Entra ID sends today, and what SPEC section 7 asks for, is `error=access_denied` with
//! `error_subcode=cancel` and AADSTS65004, so the emulator sends that.

mod page;
#[cfg(test)]
mod tests;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::serve::{read, write};
use crate::state::EmuState;
use crate::token_endpoint::AadstsError;
use page::{ConsentView, OTHER_TENANT_FIELD};

/// The request parameters the form carries back in hidden fields, in this order.
const CARRIED: &[&str] = &[
    "client_id",
    "redirect_uri",
    "scope",
    "resource",
    "state",
    "login_hint",
    "prompt",
    "response_type",
];

/// `error_description` of a cancelled consent.
const DECLINED: &str = "AADSTS65004: User declined to consent to access the app.";

/// Which admin-consent endpoint a request hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    /// `/{tenant}/v2.0/adminconsent`.
    AdminConsent,
    /// `/{tenant}/oauth2/authorize` or `/{tenant}/oauth2/v2.0/authorize`.
    Authorize,
}

/// Query or form fields: the first value of each name, a blank one counting as absent.
struct Params {
    fields: Vec<(String, String)>,
}

impl Params {
    fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.trim().is_empty())
    }
}

/// A request that passed the checks of the table above.
struct Checked {
    client_id: String,
    app_name: String,
    app_roles: Vec<String>,
    redirect_uri: String,
    /// The tenant the path names, when it names one (not `organizations`/`common`).
    path_tenant: Option<String>,
}

/// `GET /{tenant}/v2.0/adminconsent`.
pub(crate) async fn adminconsent_page(
    State(state): State<Arc<EmuState>>,
    Path(tenant): Path<String>,
    uri: Uri,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let params = Params {
        fields: query.map(|Query(q)| q).unwrap_or_default(),
    };
    show(&state, Endpoint::AdminConsent, &tenant, uri.path(), &params)
}

/// `POST /{tenant}/v2.0/adminconsent`: the admin's decision.
pub(crate) async fn adminconsent_decision(
    State(state): State<Arc<EmuState>>,
    Path(tenant): Path<String>,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let params = Params {
        fields: form.map(|Form(f)| f).unwrap_or_default(),
    };
    decide(&state, Endpoint::AdminConsent, &tenant, &params)
}

/// `GET /{tenant}/oauth2/authorize?prompt=admin_consent` (and `/oauth2/v2.0/authorize`).
pub(crate) async fn authorize_page(
    State(state): State<Arc<EmuState>>,
    Path(tenant): Path<String>,
    uri: Uri,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let params = Params {
        fields: query.map(|Query(q)| q).unwrap_or_default(),
    };
    show(&state, Endpoint::Authorize, &tenant, uri.path(), &params)
}

/// `POST /{tenant}/oauth2/authorize` (and `/oauth2/v2.0/authorize`): the admin's decision.
pub(crate) async fn authorize_decision(
    State(state): State<Arc<EmuState>>,
    Path(tenant): Path<String>,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let params = Params {
        fields: form.map(|Form(f)| f).unwrap_or_default(),
    };
    decide(&state, Endpoint::Authorize, &tenant, &params)
}

/// The consent page, or the error page of the first failed check.
fn show(
    state: &EmuState,
    endpoint: Endpoint,
    tenant: &str,
    path: &str,
    params: &Params,
) -> Response {
    state.consent_requests.fetch_add(1, Ordering::SeqCst);
    let checked = match check(state, endpoint, tenant, params) {
        Ok(checked) => checked,
        Err(error) => return page::error_page(&error),
    };
    let (mut tenants, hinted) = {
        let dir = read(&state.directory);
        let hinted = params
            .get("login_hint")
            .and_then(|hint| hint.rsplit_once('@'))
            .and_then(|(_, domain)| dir.tenant_names.get(&domain.trim().to_ascii_lowercase()))
            .cloned();
        (dir.seen_tenants(), hinted)
    };
    let selected = checked.path_tenant.clone().or(hinted);
    if let Some(tid) = &selected {
        if !tenants.iter().any(|(t, _)| t == tid) {
            tenants.push((tid.clone(), tid.clone()));
        }
    }
    let hidden: Vec<(&'static str, &str)> = CARRIED
        .iter()
        .filter_map(|name| params.get(name).map(|value| (*name, value)))
        .collect();
    page::consent_page(&ConsentView {
        action: path,
        app_name: &checked.app_name,
        client_id: &checked.client_id,
        scopes: params
            .get("scope")
            .map(|s| s.split_whitespace().collect())
            .unwrap_or_default(),
        resource: params.get("resource"),
        app_roles: &checked.app_roles,
        tenants: &tenants,
        selected: selected.as_deref(),
        hidden: &hidden,
    })
}

/// The checks of the table in the module docs, in order.
fn check(
    state: &EmuState,
    endpoint: Endpoint,
    tenant: &str,
    params: &Params,
) -> Result<Checked, AadstsError> {
    if endpoint == Endpoint::Authorize && params.get("prompt") != Some("admin_consent") {
        return Err(AadstsError::bad_request(
            "invalid_request",
            90_023,
            "The authentication service request is not valid: the aadgate emulator serves \
             /oauth2/authorize only for admin consent (prompt=admin_consent); interactive \
             sign-in is not emulated.",
        ));
    }
    let dir = read(&state.directory);
    let path_tenant = match tenant.to_ascii_lowercase().as_str() {
        "organizations" | "common" => None,
        _ => Some(
            dir.resolve_tenant(tenant)
                .ok_or_else(|| AadstsError::tenant_not_found(tenant))?,
        ),
    };
    let client_id = params
        .get("client_id")
        .ok_or_else(|| AadstsError::missing("client_id"))?;
    let app = dir
        .apps
        .get(&client_id.trim().to_ascii_lowercase())
        .ok_or_else(|| AadstsError::app_not_found(client_id, tenant))?;
    let redirect_uri = params
        .get("redirect_uri")
        .ok_or_else(|| AadstsError::missing("redirect_uri"))?;
    if !app.redirect_uris.iter().any(|r| r == redirect_uri) {
        return Err(redirect_uri_mismatch(redirect_uri, client_id));
    }
    if endpoint == Endpoint::AdminConsent && params.get("scope").is_none() {
        return Err(AadstsError::missing("scope"));
    }
    Ok(Checked {
        client_id: app.client_id.clone(),
        app_name: app.display_name.clone(),
        app_roles: app.app_roles.clone(),
        redirect_uri: redirect_uri.to_string(),
        path_tenant,
    })
}

/// AADSTS50011, Entra ID's answer for a `redirect_uri` the app did not register.
fn redirect_uri_mismatch(redirect_uri: &str, client_id: &str) -> AadstsError {
    AadstsError::bad_request(
        "invalid_request",
        50_011,
        format!(
            "The redirect URI '{redirect_uri}' specified in the request does not match the \
             redirect URIs configured for the application '{client_id}'. Make sure the redirect \
             URI sent in the request matches one added to your application in the Azure portal. \
             Navigate to https://aka.ms/redirectUriMismatchError to learn more about how to fix \
             this."
        ),
    )
}

/// The admin's decision: the redirect of Accept or Cancel, or the error page.
fn decide(state: &EmuState, endpoint: Endpoint, tenant: &str, params: &Params) -> Response {
    state.consent_requests.fetch_add(1, Ordering::SeqCst);
    let result = check(state, endpoint, tenant, params).and_then(|checked| {
        let location = match params.get("decision") {
            Some("accept") => accept(state, &checked, params)?,
            Some("cancel") => with_query(
                &checked.redirect_uri,
                &[
                    ("error", Some("access_denied")),
                    ("error_subcode", Some("cancel")),
                    ("error_description", Some(DECLINED)),
                    ("state", params.get("state")),
                ],
            ),
            _ => return Err(AadstsError::missing("decision")),
        };
        HeaderValue::from_str(&location)
            .map_err(|_| redirect_uri_mismatch(&checked.redirect_uri, &checked.client_id))
    });
    match result {
        Ok(location) => {
            let mut response = StatusCode::FOUND.into_response();
            response.headers_mut().insert(header::LOCATION, location);
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("no-store, no-cache"),
            );
            response
        }
        Err(error) => page::error_page(&error),
    }
}

/// Accept: resolves the picked tenant (the typed one wins over the list), creates or keeps the
/// service principal with the app's roles, and returns the success redirect.
fn accept(state: &EmuState, checked: &Checked, params: &Params) -> Result<String, AadstsError> {
    let picked = params
        .get(OTHER_TENANT_FIELD)
        .or_else(|| params.get("tenant"))
        .ok_or_else(|| AadstsError::missing("tenant"))?;
    let mut dir = write(&state.directory);
    let tid = dir
        .resolve_tenant(picked)
        .ok_or_else(|| AadstsError::tenant_not_found(picked.trim()))?;
    dir.grant(&tid, &checked.client_id, &checked.app_roles);
    Ok(with_query(
        &checked.redirect_uri,
        &[
            ("admin_consent", Some("True")),
            ("tenant", Some(tid.as_str())),
            ("scope", params.get("scope")),
            ("state", params.get("state")),
        ],
    ))
}

/// `{base}/{tenant}/v2.0/adminconsent?client_id=…&redirect_uri=…&scope=…`, form-encoded.
pub(crate) fn admin_consent_url(
    base: &str,
    tenant: &str,
    client_id: &str,
    redirect_uri: &str,
    scope: &str,
) -> String {
    with_query(
        &format!("{base}/{}/v2.0/adminconsent", form_encode(tenant)),
        &[
            ("client_id", Some(client_id)),
            ("redirect_uri", Some(redirect_uri)),
            ("scope", Some(scope)),
        ],
    )
}

/// `redirect_uri` with `pairs` (those with a value) appended to its query, form-encoded, before
/// any fragment.
fn with_query(redirect_uri: &str, pairs: &[(&str, Option<&str>)]) -> String {
    let (base, fragment) = match redirect_uri.split_once('#') {
        Some((base, fragment)) => (base, Some(fragment)),
        None => (redirect_uri, None),
    };
    let query: Vec<String> = pairs
        .iter()
        .filter_map(|(name, value)| {
            value.map(|v| format!("{}={}", form_encode(name), form_encode(v)))
        })
        .collect();
    let separator = match base.find('?') {
        None => "?",
        Some(_) if base.ends_with('?') || base.ends_with('&') => "",
        Some(_) => "&",
    };
    let mut out = format!("{base}{separator}{}", query.join("&"));
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

/// `application/x-www-form-urlencoded` encoding of one name or value: ASCII letters, digits and
/// `*-._` stay, a space becomes `+`, every other byte `%XX`.
fn form_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(byte))
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}
