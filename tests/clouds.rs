//! End-to-end: `[identity] cloud` (SPEC section 12). Each national cloud's default issuers
//! accept that cloud's tokens and refuse the other clouds'; Entra External ID issuers with
//! `{tenantid}` twice; `aadgate check` shows the defaults a cloud implies.

mod common;

use aadgate_emulator::TokenSpec;
use common::*;
use serde_json::json;

/// The emulator's key set without the per-key `issuer` AAD puts on its v2 keys (those name the
/// public cloud's issuer, which a national cloud's keys would not).
const KEYS: &str = "jwks_uri = \"{idp}/common/discovery/keys\"";

/// A gateway for `cloud`, its keys from the emulator (an explicit key source overrides the
/// cloud's; the issuers stay the cloud's defaults).
fn config(cloud: &str) -> String {
    base_config(
        &format!("cloud = \"{cloud}\"\n{KEYS}"),
        &format!("mode = \"allow_list\"\nallow = [\"{TENANT_A}\"]"),
    ) + "[[routes]]\nname = \"orders\"\npath_prefix = \"/orders/\"\nupstream = \"{echo}\"\n"
}

fn token_with_issuer(w: &World, issuer: &str) -> String {
    let iss = issuer.replace("{tenantid}", TENANT_A);
    let mut spec = TokenSpec::app(TENANT_A, AUD, &["Orders.Read"]).with_claim("iss", json!(iss));
    if issuer.starts_with("https://sts.") {
        spec = spec.with_ver(1);
    }
    w.idp.mint(&spec)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_cloud_accepts_its_own_issuers_and_refuses_the_others() {
    let w = World::start().await;
    let public = [
        "https://sts.windows.net/{tenantid}/",
        "https://login.microsoftonline.com/{tenantid}/v2.0",
    ];
    let usgov = [
        "https://sts.windows.net/{tenantid}/",
        "https://login.microsoftonline.us/{tenantid}/v2.0",
    ];
    let china = [
        "https://sts.chinacloudapi.cn/{tenantid}/",
        "https://login.partner.microsoftonline.cn/{tenantid}/v2.0",
        "https://login.chinacloudapi.cn/{tenantid}/v2.0",
    ];
    let all: Vec<&str> = public.iter().chain(&usgov).chain(&china).copied().collect();
    for (cloud, own) in [
        ("public", &public[..]),
        ("usgov", &usgov[..]),
        ("china", &china[..]),
    ] {
        let gw = Gateway::start(&config(cloud), &w).await;
        gw.wait_ready().await;
        for issuer in &all {
            let (status, reason) =
                get_status_and_reason(&gw, "/orders/1", &token_with_issuer(&w, issuer)).await;
            if own.contains(issuer) {
                assert_eq!(status, 200, "{cloud} accepts {issuer}: {reason:?}");
            } else {
                assert_eq!(
                    (status, reason.as_deref()),
                    (401, Some("bad_issuer")),
                    "{cloud} refuses {issuer}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_id_issuers_name_the_tenant_twice() {
    let w = World::start().await;
    let template = base_config(
        KEYS,
        &format!(
            "mode = \"allow_list\"\nallow = [\"{TENANT_A}\", \"{TENANT_B}\"]\nissuers = [\"https://{{tenantid}}.ciamlogin.com/{{tenantid}}/v2.0\"]"
        ),
    ) + "[[routes]]\nname = \"orders\"\npath_prefix = \"/orders/\"\nupstream = \"{echo}\"\n";
    let gw = Gateway::start(&template, &w).await;
    gw.wait_ready().await;
    let ciam = |host_tenant: &str, path_tenant: &str| {
        w.idp
            .mint(&TokenSpec::app(TENANT_A, AUD, &["Orders.Read"]).with_claim(
                "iss",
                json!(format!(
                    "https://{host_tenant}.ciamlogin.com/{path_tenant}/v2.0"
                )),
            ))
    };
    assert_eq!(
        get_status_and_reason(&gw, "/orders/1", &ciam(TENANT_A, TENANT_A))
            .await
            .0,
        200
    );
    for forged in [ciam(TENANT_B, TENANT_A), ciam(TENANT_A, TENANT_B)] {
        assert_eq!(
            get_status_and_reason(&gw, "/orders/1", &forged).await,
            (401, Some("bad_issuer".to_string())),
            "both occurrences must be the token's own tenant"
        );
    }
}

#[test]
fn a_cloud_sets_the_metadata_url_issuers_and_authority_it_implies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gov.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = [\"127.0.0.1:8080\"]\n[identity]\ncloud = \"usgov\"\naudiences = [\"api://orders\"]\n[tenants]\nmode = \"any\"\n[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"http://127.0.0.1:3000\"\n",
    )
    .expect("write");
    let config = aadgate_core::config::load(&path).expect("valid");
    assert_eq!(
        config.identity.metadata_url.as_deref(),
        Some("https://login.microsoftonline.us/common/v2.0/.well-known/openid-configuration")
    );
    assert_eq!(
        config.tenants.issuers,
        [
            "https://sts.windows.net/{tenantid}/",
            "https://login.microsoftonline.us/{tenantid}/v2.0"
        ]
    );
    std::fs::write(
        &path,
        std::fs::read_to_string(&path)
            .expect("read")
            .replace("usgov", "germany"),
    )
    .expect("write");
    let err = aadgate_core::config::load(&path)
        .expect_err("unknown cloud")
        .to_string();
    assert!(
        err.contains("4:9") && err.contains("\"public\", \"usgov\", \"china\""),
        "{err}"
    );
}
