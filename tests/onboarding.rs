//! End-to-end: tenant onboarding through the real gateway (SPEC section 9) — the sign-up
//! pages, the tenant registry file, `aadgate tenants`, `GET /tenants`, and revocation when
//! consent is withdrawn — against the AAD emulator's token endpoint.

mod common;

use std::time::{Duration, Instant};
use tokio::process::Command;

use aadgate_emulator::{AppRegistration, SigningKey, TokenSpec};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::browser::Browser;
use common::*;
use serde_json::Value;

/// The multi-tenant application tenants consent to (also the exchange's client).
const APP: &str = "6e74172b-be56-4843-9ff4-e66a39bb12e3";
/// A tenant in `[tenants] deny`.
const DENIED: &str = "44444444-4444-4444-8444-444444444444";
/// The application permissions an administrator's consent grants.
fn roles() -> Vec<String> {
    vec!["User.Read.All".to_string()]
}

/// A throwaway test key for `state` (32+ bytes).
const STATE_KEY: &str = "test-only-onboarding-state-key-0123456789";

struct Setup {
    w: World,
    gw: Gateway,
}

/// A gateway in registry mode with `[onboarding]`; `verify` names the exchange that proves
/// consent ("" for none: sign-ups wait as pending).
async fn setup(verify: bool, extra: &str) -> Setup {
    let w = World::start().await;
    let app_cert = SigningKey::generate().expect("key");
    let verify_line = if verify {
        "verify_exchange = \"graph\""
    } else {
        "scope = \"https://graph.microsoft.com/.default\""
    };
    let tenants = format!(
        "mode = \"registry\"\nregistry = \"{{dir}}/tenants.json\"\ndeny = [\"{DENIED}\"]\n"
    );
    let template = base_config("", &tenants) + &signup_sections(APP, verify_line) + extra;
    let p = Prepared::new(&template, &w);
    // The application as registered in Entra ID: its certificate, the gateway's callback as
    // redirect URI, and the application permission an administrator's consent grants.
    let app = AppRegistration::new(APP)
        .with_display_name("Contoso Orders API")
        .with_certificate(&app_cert)
        .with_redirect_uri(&format!(
            "http://127.0.0.1:{}/.aadgate/onboarding/callback",
            p.port
        ))
        .with_app_roles(roles());
    w.idp.register_app(app).expect("register");
    let dir = p.dir.path();
    std::fs::write(dir.join("app.crt"), app_cert.certificate_pem()).expect("cert");
    std::fs::write(dir.join("app.key"), app_cert.private_key_pem()).expect("key");
    std::fs::write(dir.join("state.key"), STATE_KEY).expect("state key");
    let path = dir.join("aadgate.toml");
    std::fs::write(&path, &p.rendered).expect("config");
    let gw = p.launch(path, &[]).await;
    gw.wait_ready().await;
    Setup { w, gw }
}

impl Setup {
    fn registry_path(&self) -> std::path::PathBuf {
        self.gw.dir.path().join("tenants.json")
    }

    /// The registry file's tenants, by id → state.
    fn registry(&self) -> Vec<(String, String)> {
        let Ok(text) = std::fs::read_to_string(self.registry_path()) else {
            return Vec::new();
        };
        let v: Value = serde_json::from_str(&text).expect("registry json");
        v["tenants"]
            .as_array()
            .expect("tenants")
            .iter()
            .map(|t| {
                (
                    t["tenant_id"].as_str().unwrap_or_default().to_string(),
                    t["state"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// `start`: the Location and its `state`.
    async fn start(&self) -> (String, String) {
        let r = client()
            .get(self.gw.url("/.aadgate/onboarding/start"))
            .send()
            .await
            .expect("start");
        assert_eq!(r.status(), 302);
        let location = r.headers()["location"].to_str().expect("ascii").to_string();
        let state = reqwest::Url::parse(&location)
            .expect("url")
            .query_pairs()
            .find(|(k, _)| k == "state")
            .map(|(_, v)| v.into_owned())
            .expect("state");
        (location, state)
    }

    /// `callback` with `query`; returns status, `x-aadgate-reason` and the body.
    async fn callback(&self, query: &str) -> (u16, Option<String>, String) {
        let r = client()
            .get(
                self.gw
                    .url(&format!("/.aadgate/onboarding/callback?{query}")),
            )
            .send()
            .await
            .expect("callback");
        let status = r.status().as_u16();
        let reason = r
            .headers()
            .get("x-aadgate-reason")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        (status, reason, r.text().await.expect("body"))
    }

    /// A request on the catch-all API route with a token of `tid`: status and reason.
    async fn api(&self, tid: &str, path: &str) -> (u16, Option<String>, String) {
        let token = self.w.idp.mint(&TokenSpec::app(tid, AUD, &["Orders.Read"]));
        let r = client()
            .get(self.gw.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("api");
        let status = r.status().as_u16();
        let reason = r
            .headers()
            .get("x-aadgate-reason")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        (status, reason, r.text().await.unwrap_or_default())
    }

    async fn onboarding_count(&self, result: &str) -> f64 {
        let m = self.gw.metrics().await;
        sample(
            &m,
            "aadgate_onboarding_total",
            &[&format!("result=\"{result}\"")],
        )
        .unwrap_or(-1.0)
    }

    /// `aadgate tenants ARGS -c CONFIG`: exit code, stdout and stderr. Awaited, so the
    /// emulator on this test's runtime keeps answering while it runs.
    async fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_aadgate"))
            .arg("tenants")
            .args(args)
            .arg("-c")
            .arg(&self.gw.config_path)
            .output()
            .await
            .expect("cli runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Polls (bounded: the SPEC's 2 s plus slack on a loaded machine) until `tid`'s API status
    /// is `want`.
    async fn until_api(&self, tid: &str, want: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, ..) = self.api(tid, "/orders").await;
            if status == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tenant {tid} still answers {status}, not {want}:\n{}",
                self.gw.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn q(state: &str) -> String {
    url_encode(state)
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A state signed with the test key that expired `ago` seconds ago (the documented format:
/// nonce ‖ expiry, HMAC-SHA256 over a fixed label and both).
fn expired_state(ago: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let mut payload = vec![7u8; 16];
    payload.extend_from_slice(&(now - ago).to_be_bytes());
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, STATE_KEY.as_bytes());
    let mut signed = b"aadgate onboarding state v1\0".to_vec();
    signed.extend_from_slice(&payload);
    let tag = aws_lc_rs::hmac::sign(&key, &signed);
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(&payload),
        URL_SAFE_NO_PAD.encode(tag.as_ref())
    )
}

#[tokio::test]
async fn a_consented_tenant_signs_up_and_its_tokens_are_accepted() {
    let s = setup(true, "").await;
    let (location, state) = s.start().await;
    let want = format!(
        "{}/organizations/v2.0/adminconsent?client_id={APP}&redirect_uri=http%3A%2F%2F127.0.0.1%3A{}%2F.aadgate%2Fonboarding%2Fcallback&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default&state=",
        s.w.idp.base_url(),
        s.gw.addr.port()
    );
    assert!(location.starts_with(&want), "{location}");
    // Before: the tenant is not onboarded.
    let (status, reason, body) = s.api(TENANT_B, "/orders").await;
    assert_eq!(
        (status, reason.as_deref()),
        (401, Some("tenant_not_allowed"))
    );
    assert!(body.contains("not onboarded"), "{body}");
    // The administrator accepts in Entra ID (the service principal appears), which redirects.
    s.w.idp.consent(TENANT_B, APP, roles());
    let (status, reason, body) = s
        .callback(&format!(
            "admin_consent=True&tenant={TENANT_B}&scope=x&state={}",
            q(&state)
        ))
        .await;
    assert_eq!((status, reason), (200, None), "{body}");
    assert!(body.contains("Your organization is signed up") && body.contains(TENANT_B));
    assert!(!body.contains("<script"));
    assert_eq!(
        s.registry(),
        vec![(TENANT_B.to_string(), "active".to_string())]
    );
    // Applied at once by this gateway: the tenant's tokens pass, another tenant's do not.
    assert_eq!(s.api(TENANT_B, "/orders").await.0, 200);
    assert_eq!(s.api(TENANT_C, "/orders").await.0, 401);
    assert_eq!(s.onboarding_count("ok").await, 1.0);
    let m = s.gw.metrics().await;
    assert_eq!(
        sample(&m, "aadgate_tenants", &["state=\"active\""]),
        Some(1.0)
    );
    // The admin listener shows the registry.
    let tenants: Value = reqwest::get(s.gw.admin_url("/tenants"))
        .await
        .expect("tenants")
        .json()
        .await
        .expect("json");
    assert_eq!(tenants["tenants"][0]["tenant_id"], TENANT_B);
    assert_eq!(tenants["tenants"][0]["added_by"], "onboarding");
    assert_eq!(tenants["error"], Value::Null);
    // The same link again is refused and changes nothing.
    let (status, reason, _) = s
        .callback(&format!(
            "admin_consent=True&tenant={TENANT_C}&state={}",
            q(&state)
        ))
        .await;
    assert_eq!((status, reason.as_deref()), (400, Some("bad_request")));
    assert_eq!(s.registry().len(), 1);
}

#[tokio::test]
async fn forged_callbacks_record_nothing() {
    let s = setup(true, "").await;
    s.w.idp.consent(DENIED, APP, roles());
    s.w.idp.add_tenant(TENANT_C);
    let mut cases: Vec<(String, u16, &str, &str, &str)> = vec![
        // (query, status, reason, result, page text)
        (
            format!("admin_consent=True&tenant={TENANT_B}"),
            400,
            "bad_request",
            "bad_state",
            "no state",
        ),
        (
            format!("admin_consent=True&tenant={TENANT_B}&state=AAAA.BBBB"),
            400,
            "bad_request",
            "bad_state",
            "not one this gateway made",
        ),
        (
            format!(
                "admin_consent=True&tenant={TENANT_B}&state={}",
                q(&expired_state(1))
            ),
            400,
            "bad_request",
            "bad_state",
            "expired",
        ),
    ];
    // A tenant that never consented: the unsigned `tenant` parameter is not believed.
    let (_, st) = s.start().await;
    cases.push((
        format!("admin_consent=True&tenant={TENANT_C}&state={}", q(&st)),
        403,
        "tenant_not_consented",
        "not_consented",
        "not consented",
    ));
    // A service principal without application permissions (a user's consent): not admin
    // consent.
    s.w.idp.consent(TENANT_A, APP, vec![]);
    let (_, st) = s.start().await;
    cases.push((
        format!("admin_consent=True&tenant={TENANT_A}&state={}", q(&st)),
        403,
        "tenant_not_consented",
        "not_consented",
        "no application permission",
    ));
    // A denied tenant, even one that consented.
    let (_, st) = s.start().await;
    cases.push((
        format!("admin_consent=True&tenant={DENIED}&state={}", q(&st)),
        401,
        "tenant_denied",
        "denied",
        "denied",
    ));
    // The administrator pressed Cancel; the description carries markup.
    let (_, st) = s.start().await;
    cases.push((format!("error=access_denied&error_subcode=cancel&error_description=AADSTS65004%3A+%3Cscript%3Ealert(1)%3C%2Fscript%3E%3Cb%3Ehi%3C%2Fb%3E&state={}", q(&st)), 403, "tenant_not_consented", "denied", "AADSTS65004: &lt;script&gt;alert(1)&lt;/script&gt;&lt;b&gt;hi&lt;/b&gt;"));
    for (query, status, reason, result, text) in cases {
        let before = s.onboarding_count(result).await;
        let (got, got_reason, body) = s.callback(&query).await;
        assert_eq!(
            (got, got_reason.as_deref()),
            (status, Some(reason)),
            "{query}: {body}"
        );
        assert!(body.contains(text), "{query}: {body}");
        assert!(!body.contains("<script") && !body.contains("<b>"), "{body}");
        assert_eq!(s.onboarding_count(result).await, before + 1.0, "{query}");
        assert!(s.registry().is_empty(), "{query} recorded something");
    }
}

#[tokio::test]
async fn consent_withdrawn_revokes_the_tenant_on_every_route() {
    let s = setup(true, "").await;
    // App-only tokens that are never fresh: every exchange makes a token request.
    s.w.idp.set_token_lifetime(1);
    s.w.idp.consent(TENANT_B, APP, roles());
    let (_, state) = s.start().await;
    s.callback(&format!(
        "admin_consent=True&tenant={TENANT_B}&state={}",
        q(&state)
    ))
    .await;
    assert_eq!(s.api(TENANT_B, "/v1.0/users").await.0, 200);
    // A token verified and cached by the gateway before the revocation.
    let token =
        s.w.idp
            .mint(&TokenSpec::app(TENANT_B, AUD, &["Orders.Read"]));
    let cached = || client().get(s.gw.url("/orders")).bearer_auth(&token).send();
    assert_eq!(cached().await.expect("send").status(), 200);
    // The tenant's administrator deletes the service principal.
    s.w.idp.revoke_consent(TENANT_B, APP);
    let (status, reason, body) = s.api(TENANT_B, "/v1.0/users").await;
    assert_eq!(
        (status, reason.as_deref()),
        (403, Some("tenant_not_consented")),
        "{body}"
    );
    // Revoked at once, on every route, for every token of the tenant.
    let (status, reason, body) = s.api(TENANT_B, "/orders").await;
    assert_eq!(
        (status, reason.as_deref()),
        (401, Some("tenant_not_allowed"))
    );
    assert!(body.contains("consent withdrawn"), "{body}");
    assert_eq!(cached().await.expect("send").status(), 401);
    assert_eq!(
        s.registry(),
        vec![(TENANT_B.to_string(), "revoked".to_string())]
    );
    let m = s.gw.metrics().await;
    assert_eq!(
        sample(&m, "aadgate_tenant_revocations_total", &[]),
        Some(1.0)
    );
    assert!(s.gw.logs().contains("tenant revoked"), "{}", s.gw.logs());
    // `tenants verify` agrees, and changes nothing.
    let (code, out, _) = s.cli(&["verify", TENANT_B, "--json"]).await;
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!((code, v["consented"].as_bool()), (1, Some(false)), "{out}");
    // Consent again and `tenants add`: active again, and the exchange works at once (the
    // failure the exchange cached before is not answered again).
    s.w.idp.consent(TENANT_B, APP, roles());
    let (code, out, err) = s
        .cli(&["add", TENANT_B, "--reason", "consented again"])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = s.cli(&["verify", TENANT_B]).await;
    assert_eq!(code, 0, "{out}");
    s.until_api(TENANT_B, 200).await;
    assert_eq!(s.api(TENANT_B, "/v1.0/users").await.0, 200);
}

#[tokio::test]
async fn without_verification_a_sign_up_waits_for_approval() {
    let s = setup(false, "").await;
    let (_, state) = s.start().await;
    let (status, _, body) = s
        .callback(&format!(
            "admin_consent=True&tenant={TENANT_C}&state={}",
            q(&state)
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("waits for approval"));
    assert_eq!(s.onboarding_count("pending").await, 1.0);
    let (status, _, body) = s.api(TENANT_C, "/orders").await;
    assert_eq!(status, 401);
    assert!(body.contains("awaits approval"), "{body}");
    // The CLI: approve applies to the running gateway without a reload.
    let (code, out, _) = s.cli(&["list", "--json"]).await;
    assert_eq!(code, 0);
    let list: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(list["tenants"][0]["state"], "pending");
    let (code, out, _) = s.cli(&["approve", TENANT_C]).await;
    assert_eq!(
        (code, out.trim()),
        (0, format!("tenant {TENANT_C}: active").as_str())
    );
    s.until_api(TENANT_C, 200).await;
    // Approving twice, unknown tenants, bad ids: exit 2 and nothing changed.
    assert_eq!(s.cli(&["approve", TENANT_C]).await.0, 2);
    assert_eq!(s.cli(&["show", TENANT_A]).await.0, 2);
    assert_eq!(s.cli(&["add", "contoso.onmicrosoft.com"]).await.0, 2);
    let (code, out, _) = s.cli(&["show", TENANT_C, "--json"]).await;
    assert_eq!(code, 0);
    let rec: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        (rec["state"].as_str(), rec["added_by"].as_str()),
        (Some("active"), Some("onboarding"))
    );
    // add and remove from the CLI, seen by the gateway.
    assert_eq!(s.cli(&["add", TENANT_A]).await.0, 0);
    s.until_api(TENANT_A, 200).await;
    assert_eq!(s.cli(&["remove", TENANT_A]).await.0, 0);
    s.until_api(TENANT_A, 401).await;
    // verify without verify_exchange is a usage error.
    assert_eq!(s.cli(&["verify", TENANT_C]).await.0, 2);
}

#[tokio::test]
async fn an_unreadable_registry_loses_nothing() {
    let s = setup(true, "").await;
    assert_eq!(s.cli(&["add", TENANT_A]).await.0, 0);
    s.until_api(TENANT_A, 200).await;
    let path = s.registry_path();
    let saved = std::fs::read_to_string(&path).expect("registry");
    // The file becomes unreadable (a folder where the file was).
    std::fs::remove_file(&path).expect("remove");
    std::fs::create_dir(&path).expect("mkdir");
    // Wait until the gateway has seen it: /tenants reports the error.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t: Value = reqwest::get(s.gw.admin_url("/tenants"))
            .await
            .expect("tenants")
            .json()
            .await
            .expect("json");
        if t["error"].is_string() {
            assert_eq!(t["tenants"][0]["tenant_id"], TENANT_A, "last good kept");
            break;
        }
        assert!(Instant::now() < deadline, "error never reported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Tenants keep being served from the last good registry.
    assert_eq!(s.api(TENANT_A, "/orders").await.0, 200);
    // A sign-up cannot be recorded: a clear page, nothing written.
    s.w.idp.consent(TENANT_B, APP, roles());
    let (_, state) = s.start().await;
    let (status, reason, body) = s
        .callback(&format!(
            "admin_consent=True&tenant={TENANT_B}&state={}",
            q(&state)
        ))
        .await;
    assert_eq!(
        (status, reason.as_deref()),
        (503, Some("registry_unavailable")),
        "{body}"
    );
    assert!(body.contains("nothing was recorded"));
    // The CLI says so and changes nothing.
    let (code, _, err) = s.cli(&["add", TENANT_C]).await;
    assert_eq!(code, 3, "{err}");
    assert!(path.is_dir());
    let m = s.gw.metrics().await;
    assert!(sample(&m, "aadgate_store_errors_total", &["op=\"get\""]).unwrap_or(0.0) >= 1.0);
    // Restored: read again.
    std::fs::remove_dir(&path).expect("rmdir");
    std::fs::write(&path, saved).expect("restore");
    assert_eq!(s.cli(&["add", TENANT_C]).await.0, 0);
    s.until_api(TENANT_C, 200).await;
    assert_eq!(s.api(TENANT_A, "/orders").await.0, 200);
}

#[tokio::test]
async fn the_sign_up_paths_come_before_a_catch_all_route() {
    let s = setup(
        true,
        "success_url = \"https://contoso.example/welcome?from=aadgate\"",
    )
    .await;
    let r = client()
        .get(s.gw.url("/.aadgate/onboarding/other"))
        .send()
        .await
        .expect("other");
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(r.headers()["x-aadgate-reason"], "route_not_found");
    // success_url: a 302 with the tenant, nothing taken from the request.
    s.w.idp.consent(TENANT_A, APP, roles());
    let (_, state) = s.start().await;
    let r = client()
        .get(s.gw.url(&format!(
            "/.aadgate/onboarding/callback?admin_consent=True&tenant={TENANT_A}&state={}&redirect=https://evil.example",
            q(&state)
        )))
        .send()
        .await
        .expect("callback");
    assert_eq!(r.status(), 302);
    assert_eq!(
        r.headers()["location"],
        format!("https://contoso.example/welcome?from=aadgate&tenant={TENANT_A}").as_str()
    );
}

/// The browser of the sign-up test: Chromium when installed; without it the test is skipped,
/// except in CI (`CI` set), where it fails.
async fn browser() -> Option<Browser> {
    let Some(path) = Browser::find() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs Chromium for the browser test (apt-get install chromium)"
        );
        eprintln!("skipped: no Chromium found (install the chromium package, or set CHROMIUM)");
        return None;
    };
    Some(Browser::launch(path).await.expect("chromium starts"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_administrator_signs_up_in_a_real_browser_and_another_cancels() {
    let s = setup(true, "").await;
    s.w.idp.add_tenant_name("fabrikam.example", TENANT_B);
    s.w.idp.add_tenant_name("northwind.example", TENANT_C);
    let Some(browser) = browser().await else {
        return;
    };
    let page = browser.page();
    // The gateway's sign-up link leads to the consent page (Entra ID's, here the emulator's).
    page.goto(&s.gw.url("/.aadgate/onboarding/start"))
        .await
        .expect("start");
    let url = page.url().await.expect("url");
    assert!(
        url.starts_with(&format!(
            "{}/organizations/v2.0/adminconsent?",
            s.w.idp.base_url()
        )),
        "{url}"
    );
    let text = page.text().await.expect("text");
    assert!(
        text.contains("Contoso Orders API") && text.contains("User.Read.All"),
        "{text}"
    );
    assert!(
        text.contains("fabrikam.example"),
        "the picker lists the organizations: {text}"
    );
    // The administrator of Fabrikam picks the organization and accepts.
    page.eval(&format!(
        "document.querySelector('select[name=tenant]').value = '{TENANT_B}'"
    ))
    .await
    .expect("pick");
    page.click_and_wait("#accept").await.expect("accept");
    let url = page.url().await.expect("url");
    assert!(
        url.starts_with(&s.gw.url("/.aadgate/onboarding/callback?admin_consent=True")),
        "{url}"
    );
    let text = page.text().await.expect("text");
    assert!(
        text.contains("Your organization is signed up") && text.contains(TENANT_B),
        "{text}"
    );
    // Fabrikam's callers are accepted from now on; the registry says how it came.
    assert_eq!(s.api(TENANT_B, "/orders").await.0, 200);
    let (code, out, _) = s.cli(&["show", TENANT_B, "--json"]).await;
    let record: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        (code, record["state"].as_str(), record["added_by"].as_str()),
        (0, Some("active"), Some("onboarding"))
    );
    // Northwind's administrator cancels: a page saying so, nothing recorded.
    page.goto(&s.gw.url("/.aadgate/onboarding/start"))
        .await
        .expect("start again");
    page.eval(&format!(
        "document.querySelector('select[name=tenant]').value = '{TENANT_C}'"
    ))
    .await
    .expect("pick");
    page.click_and_wait("#cancel").await.expect("cancel");
    let text = page.text().await.expect("text");
    assert!(
        text.contains("has not granted consent") && text.contains("AADSTS65004"),
        "{text}"
    );
    assert_eq!(s.api(TENANT_C, "/orders").await.0, 401);
    assert!(!s.registry().iter().any(|(t, _)| t == TENANT_C));
    assert!(!s.w.idp.has_service_principal(TENANT_C, APP));
    assert_eq!(s.onboarding_count("ok").await, 1.0);
    assert_eq!(s.onboarding_count("denied").await, 1.0);
    browser.close().await.expect("close");
}
