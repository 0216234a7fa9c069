//! Property-based fuzzing of the request's edge: the request-target classifier, the path
//! normalizer with the route matcher, and the inbound header rule. Same knobs as
//! `tests/fuzz.rs`: `AADGATE_FUZZ_CASES` (default 10,000 cases per target) and
//! `AADGATE_FUZZ_SEED` (a fixed seed unless set; `random` for a new one each run).

use std::path::Path;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;

use aadgate_core::config::{load_str, Config, Route};
use aadgate_core::routing::{self, normalize_path, parse_target, PathCase, TargetForm};

fn config() -> ProptestConfig {
    let cases = std::env::var("AADGATE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let rng_seed = match std::env::var("AADGATE_FUZZ_SEED").ok().as_deref() {
        Some("random") => RngSeed::Random,
        Some(n) => n.parse().map_or(RngSeed::Fixed(0xed6e), RngSeed::Fixed),
        None => RngSeed::Fixed(0xed6e),
    };
    ProptestConfig {
        cases,
        failure_persistence: None,
        rng_seed,
        ..ProptestConfig::default()
    }
}

/// Route prefixes over the segments `a`, `b`, `c`: a weaker catch-all and stronger nested ones.
const CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:8080"]

[identity]
jwks_uri = "http://127.0.0.1:1/keys"
audiences = ["api://orders"]

[tenants]
mode = "any"

[validators.plans]
kind = "http"
url = "http://127.0.0.1:7000/authorize"
headers = ["x-plan", "x-quota"]

[[routes]]
name = "all"
path_prefix = "/"
upstream = "http://127.0.0.1:3000"
auth = "anonymous"

[[routes]]
name = "a"
path_prefix = "/a/"
upstream = "http://127.0.0.1:3000"
validators = ["plans"]
[routes.claim_headers]
x-user-oid = "oid"

[[routes]]
name = "a-b"
path_prefix = "/a/b/"
upstream = "http://127.0.0.1:3000"
roles_any = ["Admin"]

[[routes]]
name = "b-c-a"
path_prefix = "/b/c/a/"
upstream = "http://127.0.0.1:3000"
roles_any = ["Admin"]
"#;

fn loaded() -> Config {
    load_str(Path::new("/nonexistent/aadgate.toml"), CONFIG).expect("the fuzz config loads")
}

fn route_for(routes: &[Arc<Route>], path: &str) -> Option<String> {
    routing::select(routes, &Method::GET, "api.contoso.com", path)
        .ok()
        .map(|r| r.name.to_string())
}

/// One segment of a canonical path, and how a caller may spell it: case changed per letter,
/// letters percent-encoded, a `;` parameter appended.
fn spelled_segment() -> impl Strategy<Value = (String, String)> {
    (
        prop::sample::select(vec!["a", "b", "c", "ab", "x"]),
        prop::collection::vec((any::<bool>(), any::<bool>()), 3),
        prop::option::of("[a-z=0-9]{0,4}"),
        0usize..3,
    )
        .prop_map(|(canonical, spellings, param, extra_slashes)| {
            let mut spelled = String::new();
            for (i, ch) in canonical.chars().enumerate() {
                let (upper, encode) = spellings.get(i).copied().unwrap_or((false, false));
                let c = if upper { ch.to_ascii_uppercase() } else { ch };
                if encode {
                    spelled.push_str(&format!("%{:02X}", c as u32));
                } else {
                    spelled.push(c);
                }
            }
            if let Some(p) = param {
                spelled.push(';');
                spelled.push_str(&p);
            }
            spelled.push_str(&"/".repeat(extra_slashes));
            (canonical.to_string(), spelled)
        })
}

proptest! {
    #![proptest_config(config())]

    /// The normalizer never panics, is idempotent, and what it returns has none of the
    /// spellings that frameworks read differently.
    #[test]
    fn the_normalizer_is_idempotent_and_its_output_unambiguous(
        path in "/[a-zA-Z0-9./;%_~\\-\\\\=\u{0}]{0,40}",
        sensitive in any::<bool>(),
    ) {
        let case = if sensitive { PathCase::Sensitive } else { PathCase::Insensitive };
        if let Ok(n) = normalize_path(&path, case) {
            let again = normalize_path(&n, case);
            prop_assert_eq!(again.as_deref().ok(), Some(&*n), "not idempotent for {:?}", path);
            prop_assert!(n.starts_with('/'));
            prop_assert!(!n.contains("//"), "{:?} -> {:?}", path, n);
            prop_assert!(!n.contains(';') && !n.contains('\\') && !n.contains('\0'));
            let lower = n.to_ascii_lowercase();
            prop_assert!(!lower.contains("%2f") && !lower.contains("%5c") && !lower.contains("%00"));
            prop_assert!(!n.split('/').any(|s| s == "." || s == ".."), "{:?} -> {:?}", path, n);
            if !sensitive {
                prop_assert!(!n.bytes().any(|b| b.is_ascii_uppercase()));
            }
        }
    }

    /// Arbitrary bytes as a request target never panic; what is accepted is origin form,
    /// absolute http(s) form, or `*` with OPTIONS.
    #[test]
    fn the_target_classifier_accepts_only_served_forms(
        raw in prop::collection::vec(any::<u8>(), 0..60),
        prefix in prop::sample::select(vec!["", "/", "http://h", "HTTPS://h:1", "x:", "*", "//"]),
        options in any::<bool>(),
    ) {
        let mut target = prefix.as_bytes().to_vec();
        target.extend_from_slice(&raw);
        let method = if options { Method::OPTIONS } else { Method::GET };
        if let Ok(t) = parse_target(&method, &target, 8192) {
            match t.form {
                TargetForm::Origin => prop_assert!(t.path.starts_with('/')),
                TargetForm::Absolute => {
                    let lower = String::from_utf8_lossy(&target).to_ascii_lowercase();
                    prop_assert!(lower.starts_with("http://") || lower.starts_with("https://"));
                    prop_assert!(t.path.starts_with('/'));
                }
                TargetForm::Asterisk => prop_assert!(options && target == b"*"),
            }
        }
    }

    /// However a caller spells a path (case, encoded letters, `;` parameters, doubled
    /// slashes), it reaches the route its canonical form reaches: never a weaker one.
    #[test]
    fn a_path_is_never_matched_to_a_weaker_route_than_its_canonical_form(
        segments in prop::collection::vec(spelled_segment(), 1..5),
        trailing in any::<bool>(),
    ) {
        let cfg = loaded();
        let mut canonical = String::new();
        let mut spelled = String::new();
        for (c, s) in &segments {
            canonical.push('/');
            canonical.push_str(c);
            spelled.push('/');
            spelled.push_str(s);
        }
        if trailing {
            spelled.push('/');
        }
        if spelled.ends_with('/') {
            canonical.push('/');
        }
        let n = normalize_path(&spelled, PathCase::Insensitive);
        prop_assert!(n.is_ok(), "{:?} refused", spelled);
        let n = n.unwrap_or_default();
        prop_assert_eq!(
            route_for(&cfg.routes, &n),
            route_for(&cfg.routes, &canonical),
            "{:?} (normalized {:?}) vs {:?}", spelled, n, canonical
        );
    }

    /// No header a caller sends whose name, read case-insensitively with `_` as `-`, is an
    /// identity header, a claim header or a validator's header survives the strip; every other
    /// header does.
    #[test]
    fn stripped_names_never_reach_the_upstream_and_others_always_do(
        names in prop::collection::vec(
            (
                prop::sample::select(vec![
                    "x-auth-roles", "x-auth-tenant-id", "x-auth-", "x-user-oid", "x-plan",
                    "x-quota", "x-planet", "x-authx", "x-aut-roles", "accept", "x-user", "x-plan-b",
                ]),
                prop::collection::vec(any::<bool>(), 16),
                prop::collection::vec(any::<bool>(), 16),
            ),
            0..8,
        ),
    ) {
        let cfg = loaded();
        let mut headers = HeaderMap::new();
        for (base, upper, underscore) in &names {
            let spelled: String = base
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    let c = if upper.get(i).copied().unwrap_or(false) { c.to_ascii_uppercase() } else { c };
                    if c == '-' && underscore.get(i).copied().unwrap_or(false) { '_' } else { c }
                })
                .collect();
            if let Ok(name) = HeaderName::from_bytes(spelled.as_bytes()) {
                headers.append(name, HeaderValue::from_static("v"));
            }
        }
        let before: Vec<HeaderName> = headers.keys().cloned().collect();
        for name in cfg.spoofable_headers(&headers) {
            headers.remove(&name);
        }
        let forbidden = |n: &str| {
            let canon = n.to_ascii_lowercase().replace('_', "-");
            canon.starts_with("x-auth-")
                || cfg.claim_header_names.iter().any(|h| h.as_str() == canon)
                || cfg.validator_header_names.iter().any(|h| h.as_str() == canon)
        };
        for name in &before {
            prop_assert_eq!(
                headers.contains_key(name),
                !forbidden(name.as_str()),
                "{}", name
            );
        }
    }
}

#[test]
fn the_fuzzed_routes_cover_nested_prefixes() {
    let cfg = loaded();
    assert_eq!(route_for(&cfg.routes, "/a/b/c").as_deref(), Some("a-b"));
    assert_eq!(route_for(&cfg.routes, "/a/x").as_deref(), Some("a"));
    assert_eq!(route_for(&cfg.routes, "/x").as_deref(), Some("all"));
    assert!(cfg.validator_header_names.iter().any(|h| h == "x-plan"));
}
