//! The admin-consent flow through real HTTP (redirects not followed) against a started emulator.

use reqwest::redirect::Policy;
use reqwest::Url;
use serde_json::{json, Value};

use super::{form_encode, with_query};
use crate::keys::SigningKey;
use crate::server::{AppRegistration, Emulator, EmulatorHandle, EmulatorOptions};
use crate::token_endpoint::tests::{aad_token_url, assertion, claims_of, CLIENT};
use crate::token_endpoint::JWT_BEARER_ASSERTION_TYPE;
use crate::{DEFAULT_TENANT, GRAPH_RESOURCE};

const REDIRECT: &str = "https://api.contoso.example/.aadgate/onboarding/callback";
const SCOPE: &str = "https://graph.microsoft.com/.default";
/// A tenant named `contoso.onmicrosoft.com`.
const CONTOSO: &str = "5c7f2a9e-3b1d-4e6f-8a2c-9d0e1f2a3b4c";
/// A seen tenant without a name.
const FABRIKAM: &str = "7e6d5c4b-3a2f-4e1d-9c8b-7a6f5e4d3c2b";
/// A tenant nobody mentioned before the test consents in it.
const NEW_TENANT: &str = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d";

type Fields = Vec<(&'static str, String)>;
/// (case, path, GET query or POST fields, POST?, AADSTS code, text shown)
type Case = (&'static str, &'static str, Fields, bool, u32, String);

struct Fixture {
    emu: EmulatorHandle,
    app_key: SigningKey,
    http: reqwest::Client,
}

async fn fixture() -> Fixture {
    let emu = Emulator::start(
        "127.0.0.1:0".parse().expect("addr"),
        EmulatorOptions::default(),
    )
    .await
    .expect("emulator");
    let app_key = SigningKey::generate().expect("app key");
    emu.register_app(
        AppRegistration::new(CLIENT)
            .with_display_name("Contoso Orders API")
            .with_certificate(&app_key)
            .with_redirect_uri(REDIRECT)
            .with_redirect_uri("https://localhost:8443/cb?app=orders")
            .with_app_roles(["Mail.Read", "Mail.Send"]),
    )
    .expect("register");
    emu.add_tenant_name("contoso.onmicrosoft.com", CONTOSO);
    emu.add_tenant(FABRIKAM);
    let http = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .expect("client");
    Fixture { emu, app_key, http }
}

struct Answer {
    status: u16,
    content_type: String,
    location: Option<String>,
    body: String,
}

async fn answer(response: reqwest::Response) -> Answer {
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (content_type, location) = (header("content-type"), header("location"));
    Answer {
        status: response.status().as_u16(),
        content_type: content_type.unwrap_or_default(),
        location,
        body: response.text().await.unwrap_or_default(),
    }
}

impl Fixture {
    fn url(&self, path: &str, query: &[(&str, &str)]) -> String {
        let mut url = Url::parse(&format!("{}{path}", self.emu.base_url())).expect("url");
        url.query_pairs_mut().extend_pairs(query);
        url.to_string()
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Answer {
        let response = self.http.get(self.url(path, query)).send().await;
        answer(response.expect("get")).await
    }

    async fn post(&self, path: &str, fields: &[(&str, &str)]) -> Answer {
        let url = format!("{}{path}", self.emu.base_url());
        let response = self.http.post(url).form(fields).send().await;
        answer(response.expect("post")).await
    }

    /// A client-credentials request of the app in `tenant`: (status, body).
    async fn token(&self, tenant: &str) -> (u16, Value) {
        let a = assertion(&self.app_key, &aad_token_url(tenant), |_, _| {});
        let fields = [
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT),
            ("scope", SCOPE),
            ("client_assertion_type", JWT_BEARER_ASSERTION_TYPE),
            ("client_assertion", a.as_str()),
        ];
        let response = self
            .http
            .post(self.emu.token_endpoint(tenant))
            .form(&fields)
            .send()
            .await
            .expect("token request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

/// The request parameters of a v2 admin consent request, with `state`.
fn request(state: &str) -> Vec<(&'static str, String)> {
    vec![
        ("client_id", CLIENT.to_string()),
        ("redirect_uri", REDIRECT.to_string()),
        ("scope", SCOPE.to_string()),
        ("state", state.to_string()),
    ]
}

fn pairs<'a>(fields: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    fields.iter().map(|(n, v)| (*n, v.as_str())).collect()
}

/// `fields` with `name` set to `value` (or removed).
fn with(
    mut fields: Vec<(&'static str, String)>,
    name: &'static str,
    value: Option<&str>,
) -> Vec<(&'static str, String)> {
    fields.retain(|(n, _)| *n != name);
    if let Some(value) = value {
        fields.push((name, value.to_string()));
    }
    fields
}

/// The redirect target of `location` split into (URL without query, query pairs in order).
fn split_location(location: &str) -> (String, Vec<(String, String)>) {
    let url = Url::parse(location).expect("location is a URL");
    let query = url.query_pairs().into_owned().collect();
    let mut base = url.clone();
    base.set_query(None);
    (base.to_string(), query)
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

/// Asserts an error page: 400, HTML, no redirect, the AADSTS code shown.
fn assert_error_page(answer: &Answer, code: u32, case: &str) {
    assert_eq!(answer.status, 400, "{case}: {}", answer.body);
    assert_eq!(answer.location, None, "{case}");
    assert_eq!(answer.content_type, "text/html; charset=utf-8", "{case}");
    assert!(
        answer.body.contains(&format!("AADSTS{code}: ")),
        "{case}: {}",
        answer.body
    );
    assert!(!answer.body.contains("<script"), "{case}");
}

#[tokio::test]
async fn the_page_shows_the_app_its_permissions_the_organizations_and_accept_and_cancel() {
    let f = fixture().await;
    let page = f
        .get("/organizations/v2.0/adminconsent", &pairs(&request("s1")))
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(page.content_type, "text/html; charset=utf-8");
    let body = &page.body;
    for expected in [
        "<strong id=\"app-name\">Contoso Orders API</strong>",
        "<li class=\"scope\">https://graph.microsoft.com/.default</li>",
        "<li class=\"app-role\">Mail.Read (application permission)</li>",
        "<li class=\"app-role\">Mail.Send (application permission)</li>",
        "<form method=\"post\" action=\"/organizations/v2.0/adminconsent\">",
        "<select name=\"tenant\" id=\"tenant\">",
        &format!("<option value=\"{CONTOSO}\">contoso.onmicrosoft.com</option>"),
        &format!("<option value=\"{FABRIKAM}\">{FABRIKAM}</option>"),
        &format!("<option value=\"{DEFAULT_TENANT}\">{DEFAULT_TENANT}</option>"),
        "<input type=\"text\" name=\"tenant_other\"",
        "<button type=\"submit\" name=\"decision\" value=\"accept\" id=\"accept\">Accept</button>",
        "<button type=\"submit\" name=\"decision\" value=\"cancel\" id=\"cancel\">Cancel</button>",
        &format!("<input type=\"hidden\" name=\"client_id\" value=\"{CLIENT}\">"),
        &format!("<input type=\"hidden\" name=\"redirect_uri\" value=\"{REDIRECT}\">"),
        &format!("<input type=\"hidden\" name=\"scope\" value=\"{SCOPE}\">"),
        "<input type=\"hidden\" name=\"state\" value=\"s1\">",
    ] {
        assert!(body.contains(expected), "missing {expected} in {body}");
    }
    assert!(
        !body.contains(" selected>"),
        "organizations preselects nothing"
    );
    assert!(!body.contains("<script"));
    assert!(
        !f.emu.has_service_principal(CONTOSO, CLIENT),
        "a page view grants nothing"
    );
    assert_eq!(f.emu.consent_page_count(), 1);
}

#[tokio::test]
async fn accept_redirects_like_entra_id_creates_the_service_principal_and_tokens_then_succeed() {
    let f = fixture().await;
    let (status, body) = f.token(NEW_TENANT).await;
    assert_eq!(
        (status, body["error_codes"].clone()),
        (400, json!([700016])),
        "before: {body}"
    );

    let fields = with(request("st-42"), "decision", Some("accept"));
    let fields = with(fields, "tenant", Some(NEW_TENANT));
    let answer = f
        .post("/organizations/v2.0/adminconsent", &pairs(&fields))
        .await;
    assert_eq!(answer.status, 302, "{}", answer.body);
    let location = answer.location.expect("location");
    assert_eq!(
        location,
        format!(
            "{REDIRECT}?admin_consent=True&tenant={NEW_TENANT}\
             &scope=https%3A%2F%2Fgraph.microsoft.com%2F.default&state=st-42"
        )
    );
    let (base, query) = split_location(&location);
    assert_eq!(base, REDIRECT);
    assert_eq!(
        query,
        owned(&[
            ("admin_consent", "True"),
            ("tenant", NEW_TENANT),
            ("scope", SCOPE),
            ("state", "st-42"),
        ])
    );
    assert!(f.emu.has_service_principal(NEW_TENANT, CLIENT));
    assert_eq!(
        f.emu.service_principal_roles(NEW_TENANT, CLIENT),
        Some(vec!["Mail.Read".to_string(), "Mail.Send".to_string()])
    );
    assert!(f.emu.known_tenants().iter().any(|(t, _)| t == NEW_TENANT));

    let (status, body) = f.token(NEW_TENANT).await;
    assert_eq!(status, 200, "{body}");
    let claims = claims_of(body["access_token"].as_str().expect("token"));
    assert_eq!(claims["tid"], NEW_TENANT);
    assert_eq!(claims["roles"], json!(["Mail.Read", "Mail.Send"]));
}

#[tokio::test]
async fn accept_keeps_an_existing_service_principal_and_adds_the_roles_it_lacks() {
    let f = fixture().await;
    f.emu.consent(
        CONTOSO,
        CLIENT,
        vec!["Orders.Read".into(), "Mail.Read".into()],
    );
    let fields = with(request("s"), "decision", Some("accept"));
    let fields = with(fields, "tenant", Some(CONTOSO));
    let answer = f
        .post("/organizations/v2.0/adminconsent", &pairs(&fields))
        .await;
    assert_eq!(answer.status, 302, "{}", answer.body);
    assert_eq!(
        f.emu.service_principal_roles(CONTOSO, CLIENT),
        Some(vec![
            "Orders.Read".to_string(),
            "Mail.Read".to_string(),
            "Mail.Send".to_string()
        ])
    );
}

#[tokio::test]
async fn the_typed_tenant_wins_over_the_list_and_may_be_a_registered_name() {
    let f = fixture().await;
    for (typed, expected) in [
        (NEW_TENANT.to_uppercase(), NEW_TENANT),
        ("Contoso.onmicrosoft.com".to_string(), CONTOSO),
    ] {
        let fields = with(request("s"), "decision", Some("accept"));
        let fields = with(fields, "tenant", Some(FABRIKAM));
        let fields = with(fields, "tenant_other", Some(&format!(" {typed} ")));
        let answer = f.post("/common/v2.0/adminconsent", &pairs(&fields)).await;
        assert_eq!(answer.status, 302, "{typed}: {}", answer.body);
        let (_, query) = split_location(&answer.location.expect("location"));
        assert_eq!(
            query[1],
            ("tenant".to_string(), expected.to_string()),
            "{typed}"
        );
        assert!(f.emu.has_service_principal(expected, CLIENT), "{typed}");
    }
    assert!(!f.emu.has_service_principal(FABRIKAM, CLIENT));
}

#[tokio::test]
async fn cancel_redirects_with_access_denied_and_creates_nothing() {
    let f = fixture().await;
    let declined = "error=access_denied&error_subcode=cancel\
                    &error_description=AADSTS65004%3A+User+declined+to+consent+to+access+the+app.";
    // (case, redirect_uri, state, expected Location)
    let cases = [
        (
            "with state",
            REDIRECT,
            Some("st 1&x=y"),
            format!("{REDIRECT}?{declined}&state=st+1%26x%3Dy"),
        ),
        (
            "without state",
            REDIRECT,
            None,
            format!("{REDIRECT}?{declined}"),
        ),
        (
            "a redirect URI with a query",
            "https://localhost:8443/cb?app=orders",
            Some("s"),
            format!("https://localhost:8443/cb?app=orders&{declined}&state=s"),
        ),
    ];
    for (case, redirect, state, expected) in cases {
        let fields = with(request(""), "state", state);
        let fields = with(fields, "redirect_uri", Some(redirect));
        let fields = with(fields, "decision", Some("cancel"));
        let fields = with(fields, "tenant", Some(CONTOSO));
        let answer = f
            .post("/organizations/v2.0/adminconsent", &pairs(&fields))
            .await;
        assert_eq!(answer.status, 302, "{case}: {}", answer.body);
        let location = answer.location.expect("location");
        assert_eq!(location, expected, "{case}");
        let (_, query) = split_location(&location);
        let param = |name: &str| {
            query
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(param("error").as_deref(), Some("access_denied"), "{case}");
        assert_eq!(
            param("error_description").as_deref(),
            Some("AADSTS65004: User declined to consent to access the app."),
            "{case}"
        );
        assert_eq!(param("state").as_deref(), state, "{case}");
    }
    assert!(!f.emu.has_service_principal(CONTOSO, CLIENT));
    let (status, body) = f.token(CONTOSO).await;
    assert_eq!(
        (status, body["error_codes"].clone()),
        (400, json!([700016]))
    );
}

#[tokio::test]
async fn an_unregistered_redirect_uri_is_aadsts50011_on_the_page_on_get_and_on_a_tampered_post() {
    let f = fixture().await;
    let evil = "https://evil.example/cb";
    for (case, redirect) in [
        ("another host", evil),
        ("a trailing slash", &format!("{REDIRECT}/")),
        ("another case", &REDIRECT.to_uppercase()),
    ] {
        let query = with(request("s"), "redirect_uri", Some(redirect));
        let page = f
            .get("/organizations/v2.0/adminconsent", &pairs(&query))
            .await;
        assert_error_page(&page, 50011, case);
    }
    let page = f
        .get(
            "/organizations/v2.0/adminconsent",
            &pairs(&with(request("s"), "redirect_uri", Some(evil))),
        )
        .await;
    assert!(page.body.contains(&format!(
        "The redirect URI &#39;{evil}&#39; specified in the request does not match the redirect \
         URIs configured for the application &#39;{CLIENT}&#39;."
    )));

    // The page was fine; the hidden field is changed before Accept and before Cancel.
    for decision in ["accept", "cancel"] {
        let fields = with(request("s"), "redirect_uri", Some(evil));
        let fields = with(fields, "decision", Some(decision));
        let fields = with(fields, "tenant", Some(CONTOSO));
        let answer = f
            .post("/organizations/v2.0/adminconsent", &pairs(&fields))
            .await;
        assert_error_page(&answer, 50011, decision);
    }
    assert!(!f.emu.has_service_principal(CONTOSO, CLIENT));
}

#[tokio::test]
async fn bad_requests_are_refused_on_the_page_with_aads_codes() {
    let f = fixture().await;
    let unknown_app = "99999999-9999-4999-8999-999999999999";
    let accept = |fields: Vec<(&'static str, String)>| with(fields, "decision", Some("accept"));
    let cases: Vec<Case> = vec![
        (
            "no client_id",
            "/organizations/v2.0/adminconsent",
            with(request("s"), "client_id", None),
            false,
            900144,
            "The request body must contain the following parameter: &#39;client_id&#39;.".into(),
        ),
        (
            "unknown client_id",
            "/organizations/v2.0/adminconsent",
            with(request("s"), "client_id", Some(unknown_app)),
            false,
            700016,
            format!("Application with identifier &#39;{unknown_app}&#39; was not found"),
        ),
        (
            "no redirect_uri",
            "/organizations/v2.0/adminconsent",
            with(request("s"), "redirect_uri", None),
            false,
            900144,
            "&#39;redirect_uri&#39;".into(),
        ),
        (
            "no scope",
            "/organizations/v2.0/adminconsent",
            with(request("s"), "scope", None),
            false,
            900144,
            "&#39;scope&#39;".into(),
        ),
        (
            "an unknown tenant name in the path",
            "/fabrikam.example/v2.0/adminconsent",
            request("s"),
            false,
            90002,
            "Tenant &#39;fabrikam.example&#39; not found.".into(),
        ),
        (
            "a picked tenant that is neither a GUID nor a known name",
            "/organizations/v2.0/adminconsent",
            with(accept(request("s")), "tenant", Some("not-a-tenant")),
            true,
            90002,
            "Tenant &#39;not-a-tenant&#39; not found.".into(),
        ),
        (
            "Accept without a tenant",
            "/organizations/v2.0/adminconsent",
            accept(request("s")),
            true,
            900144,
            "&#39;tenant&#39;".into(),
        ),
        (
            "no decision",
            "/organizations/v2.0/adminconsent",
            with(request("s"), "tenant", Some(CONTOSO)),
            true,
            900144,
            "&#39;decision&#39;".into(),
        ),
        (
            "an unknown client_id on POST",
            "/organizations/v2.0/adminconsent",
            with(
                with(accept(request("s")), "tenant", Some(CONTOSO)),
                "client_id",
                Some(unknown_app),
            ),
            true,
            700016,
            "was not found".into(),
        ),
    ];
    for (case, path, fields, is_post, code, text) in cases {
        let answer = if is_post {
            f.post(path, &pairs(&fields)).await
        } else {
            f.get(path, &pairs(&fields)).await
        };
        assert_error_page(&answer, code, case);
        assert!(answer.body.contains(&text), "{case}: {}", answer.body);
    }
    assert!(!f.emu.has_service_principal(CONTOSO, CLIENT));
    assert!(f
        .emu
        .known_tenants()
        .iter()
        .all(|(_, label)| label != "not-a-tenant"));
    let answer = f.post("/organizations/v2.0/adminconsent", &[]).await;
    assert_error_page(&answer, 900144, "an empty POST");
}

#[tokio::test]
async fn login_hint_or_a_specific_tenant_in_the_path_preselects_the_organization() {
    let f = fixture().await;
    let selected =
        |tid: &str, label: &str| format!("<option value=\"{tid}\" selected>{label}</option>");
    // (case, path, login_hint, expected option)
    let cases = [
        (
            "login_hint of a named tenant",
            "/organizations/v2.0/adminconsent",
            Some("admin@Contoso.onmicrosoft.com"),
            selected(CONTOSO, "contoso.onmicrosoft.com"),
        ),
        (
            "the tenant name in the path",
            "/contoso.onmicrosoft.com/v2.0/adminconsent",
            None,
            selected(CONTOSO, "contoso.onmicrosoft.com"),
        ),
        (
            "the path wins over login_hint",
            &format!("/{FABRIKAM}/v2.0/adminconsent"),
            Some("admin@contoso.onmicrosoft.com"),
            selected(FABRIKAM, FABRIKAM),
        ),
        (
            "a GUID nobody mentioned is offered and preselected",
            &format!("/{NEW_TENANT}/v2.0/adminconsent"),
            None,
            selected(NEW_TENANT, NEW_TENANT),
        ),
    ];
    for (case, path, hint, expected) in cases {
        let query = with(request("s"), "login_hint", hint);
        let page = f.get(path, &pairs(&query)).await;
        assert_eq!(page.status, 200, "{case}: {}", page.body);
        assert!(page.body.contains(&expected), "{case}: {}", page.body);
        assert_eq!(page.body.matches(" selected>").count(), 1, "{case}");
    }
    let page = f
        .get(
            "/organizations/v2.0/adminconsent",
            &pairs(&with(
                request("s"),
                "login_hint",
                Some("admin@unknown.example"),
            )),
        )
        .await;
    assert!(
        !page.body.contains(" selected>"),
        "an unknown domain preselects nothing"
    );
}

#[tokio::test]
async fn hostile_state_scope_and_redirect_uri_are_escaped_everywhere() {
    let f = fixture().await;
    let hostile = "\"><script>alert(1)</script>'";
    let scope = format!("<script>x</script> {SCOPE}");
    let query = with(
        with(request(hostile), "scope", Some(&scope)),
        "login_hint",
        Some(hostile),
    );
    let page = f
        .get("/organizations/v2.0/adminconsent", &pairs(&query))
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(!page.body.contains("<script"), "{}", page.body);
    assert!(page.body.contains(
        "<input type=\"hidden\" name=\"state\" value=\"&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;&#39;\">"
    ));
    assert!(page
        .body
        .contains("<li class=\"scope\">&lt;script&gt;x&lt;/script&gt;</li>"));

    // The escaped hidden field comes back verbatim and is redirected form-encoded.
    let fields = with(
        with(query.clone(), "decision", Some("accept")),
        "tenant",
        Some(CONTOSO),
    );
    let answer = f
        .post("/organizations/v2.0/adminconsent", &pairs(&fields))
        .await;
    let (_, got) = split_location(&answer.location.expect("location"));
    assert_eq!(got[2], ("scope".to_string(), scope.clone()));
    assert_eq!(got[3], ("state".to_string(), hostile.to_string()));

    let evil = format!("{REDIRECT}?<script>alert(2)</script>");
    let page = f
        .get(
            "/organizations/v2.0/adminconsent",
            &pairs(&with(request(hostile), "redirect_uri", Some(&evil))),
        )
        .await;
    assert_error_page(&page, 50011, "a hostile redirect_uri");
    assert!(page.body.contains("&lt;script&gt;alert(2)&lt;/script&gt;"));
    let page = f
        .get("/<script>/v2.0/adminconsent", &pairs(&request(hostile)))
        .await;
    assert_error_page(&page, 90002, "a hostile tenant");
}

#[tokio::test]
async fn authorize_with_prompt_admin_consent_works_like_adminconsent() {
    let f = fixture().await;
    for path in [
        "/organizations/oauth2/authorize",
        "/organizations/oauth2/v2.0/authorize",
    ] {
        let query = vec![
            ("client_id", CLIENT.to_string()),
            ("response_type", "code".to_string()),
            ("redirect_uri", REDIRECT.to_string()),
            ("resource", GRAPH_RESOURCE.to_string()),
            ("prompt", "admin_consent".to_string()),
            ("state", "az".to_string()),
        ];
        let page = f.get(path, &pairs(&query)).await;
        assert_eq!(page.status, 200, "{path}: {}", page.body);
        assert!(page
            .body
            .contains(&format!("<form method=\"post\" action=\"{path}\">")));
        assert!(page
            .body
            .contains("<input type=\"hidden\" name=\"prompt\" value=\"admin_consent\">"));
        assert!(page
            .body
            .contains("<li class=\"resource\">https://graph.microsoft.com</li>"));

        let tenant = if path.contains("v2.0") {
            NEW_TENANT
        } else {
            CONTOSO
        };
        let fields = with(
            with(query.clone(), "decision", Some("accept")),
            "tenant",
            Some(tenant),
        );
        let answer = f.post(path, &pairs(&fields)).await;
        assert_eq!(
            answer.location.as_deref(),
            Some(format!("{REDIRECT}?admin_consent=True&tenant={tenant}&state=az").as_str()),
            "{path}: no scope asked, none returned"
        );
        assert!(f.emu.has_service_principal(tenant, CLIENT), "{path}");

        let with_scope = with(fields, "scope", Some(SCOPE));
        let answer = f.post(path, &pairs(&with_scope)).await;
        let (_, got) = split_location(&answer.location.expect("location"));
        assert_eq!(got[2], ("scope".to_string(), SCOPE.to_string()), "{path}");

        let sign_in = with(query.clone(), "prompt", None);
        assert_error_page(&f.get(path, &pairs(&sign_in)).await, 90023, "no prompt");
        let tampered = with(
            with(
                with(query, "prompt", Some("consent")),
                "decision",
                Some("accept"),
            ),
            "tenant",
            Some(FABRIKAM),
        );
        assert_error_page(
            &f.post(path, &pairs(&tampered)).await,
            90023,
            "prompt=consent",
        );
    }
    assert!(!f.emu.has_service_principal(FABRIKAM, CLIENT));
}

#[test]
fn redirect_parameters_are_form_encoded_and_appended_to_an_existing_query() {
    assert_eq!(form_encode("a b&c=d/é*-._~"), "a+b%26c%3Dd%2F%C3%A9*-._%7E");
    let pairs = [("state", Some("x")), ("scope", None)];
    let cases = [
        ("https://a.example/cb", "https://a.example/cb?state=x"),
        ("https://a.example/cb?", "https://a.example/cb?state=x"),
        (
            "https://a.example/cb?k=v",
            "https://a.example/cb?k=v&state=x",
        ),
        (
            "https://a.example/cb?k=v&",
            "https://a.example/cb?k=v&state=x",
        ),
        (
            "https://a.example/cb#frag",
            "https://a.example/cb?state=x#frag",
        ),
    ];
    for (redirect, expected) in cases {
        assert_eq!(with_query(redirect, &pairs), expected, "{redirect}");
    }
}
