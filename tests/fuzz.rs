//! Property-based fuzzing of the parsers that face attacker-controlled input, on the stable
//! toolchain: the bearer-token extractor and parser, the JWKS parser and the config loader (the
//! path normalizer, route matcher and header stripper are in `tests/fuzz_edges.rs`).
//!
//! Each target runs `AADGATE_FUZZ_CASES` cases (default 10,000) as part of the test suite.
//! A longer run is one command (docs/security.md):
//!
//! ```sh
//! AADGATE_FUZZ_CASES=1000000 AADGATE_FUZZ_SEED=random cargo test --release --test fuzz --test fuzz_edges
//! ```
//!
//! Every failure found is kept below as a named regression test.

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::HeaderValue;
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use serde_json::{Map, Value};

use aadgate_core::auth::token;
use aadgate_core::jwks::{KeySet, KeySource};

fn cases() -> u32 {
    std::env::var("AADGATE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// The suite runs a fixed seed (deterministic); `AADGATE_FUZZ_SEED=random` or a number explores
/// further in a long run.
fn seed() -> RngSeed {
    match std::env::var("AADGATE_FUZZ_SEED").ok().as_deref() {
        Some("random") => RngSeed::Random,
        Some(n) => n.parse().map_or(RngSeed::Fixed(0xaad6a7e), RngSeed::Fixed),
        None => RngSeed::Fixed(0xaad6a7e),
    }
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        rng_seed: seed(),
        ..ProptestConfig::default()
    }
}

/// The strict reading of a JWS compact token, written independently of the gateway's parser:
/// exactly three segments of unpadded base64url; header and payload JSON objects without
/// duplicate keys; `alg` a string; `kid`/`x5t` strings when present; no `crit`; numeric
/// `exp`/`nbf`/`iat` when present.
fn strictly_valid(t: &str) -> bool {
    let segs: Vec<&str> = t.split('.').collect();
    if segs.len() != 3 {
        return false;
    }
    let b64 = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && URL_SAFE_NO_PAD.decode(s).is_ok()
    };
    if !segs.iter().all(|s| b64(s)) {
        return false;
    }
    let object = |s: &str| -> Option<Map<String, Value>> {
        let bytes = URL_SAFE_NO_PAD.decode(s).ok()?;
        let text = std::str::from_utf8(&bytes).ok()?;
        let v: Value = serde_json::from_str(text).ok()?;
        let map = v.as_object()?.clone();
        // serde_json keeps the last of duplicate keys: count the keys of the text another way.
        if top_level_key_count(text)? != map.len() {
            return None;
        }
        Some(map)
    };
    let (Some(h), Some(c)) = (object(segs[0]), object(segs[1])) else {
        return false;
    };
    if h.contains_key("crit") || !h.get("alg").is_some_and(Value::is_string) {
        return false;
    }
    if ["kid", "x5t"]
        .iter()
        .any(|k| h.get(*k).is_some_and(|v| !v.is_string()))
    {
        return false;
    }
    !["exp", "nbf", "iat"]
        .iter()
        .any(|k| c.get(*k).is_some_and(|v| !v.is_number()))
}

/// Number of members of the top-level JSON object in `text`, duplicates counted.
fn top_level_key_count(text: &str) -> Option<usize> {
    // A small scanner over the JSON text: a string that starts a member at depth 1 is a key.
    let mut depth = 0i32;
    let mut in_str = false;
    let mut escaped = false;
    let mut count = 0usize;
    let mut expect_key = false;
    for ch in text.chars() {
        if in_str {
            if escaped {
                escaped = false;
            } else if ch == '\\' {
                escaped = true;
            } else if ch == '"' {
                in_str = false;
            }
            continue;
        }
        match ch {
            '"' => {
                if depth == 1 && expect_key {
                    count += 1;
                    expect_key = false;
                }
                in_str = true;
            }
            '{' | '[' => {
                depth += 1;
                if depth == 1 {
                    expect_key = true;
                }
            }
            '}' | ']' => depth -= 1,
            ',' if depth == 1 => expect_key = true,
            _ => {}
        }
    }
    (depth == 0).then_some(count)
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).expect("json"))
}

/// A JSON value of bounded depth with the shapes tokens carry.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[ -~]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A header or payload object: the members the parser looks at, with values of any type.
fn jose_object(names: &'static [&'static str]) -> impl Strategy<Value = Value> {
    prop::collection::btree_map(prop::sample::select(names), json_value(), 0..names.len())
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
}

/// A token built from arbitrary header and payload objects, then mutated at the byte level.
fn token_text() -> impl Strategy<Value = String> {
    let header = jose_object(&["alg", "kid", "x5t", "typ", "crit", "nonce", "jku", "x5c"]);
    let claims = jose_object(&["exp", "nbf", "iat", "aud", "iss", "tid", "appid", "azp"]);
    (
        header,
        claims,
        "[A-Za-z0-9_-]{0,8}",
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        0usize..3,
    )
        .prop_map(|(h, c, sig, edits, extra_dots)| {
            let mut t = format!("{}.{}.{}", b64(&h), b64(&c), sig).into_bytes();
            for (at, byte) in edits {
                if !t.is_empty() {
                    let i = at.index(t.len());
                    t[i] = byte;
                }
            }
            let mut s = String::from_utf8_lossy(&t).into_owned();
            for _ in 0..extra_dots {
                s.push('.');
            }
            s
        })
}

proptest! {
    #![proptest_config(config())]

    /// The parser never panics, and it accepts nothing the strict reading refuses.
    #[test]
    fn the_token_parser_accepts_only_strictly_valid_tokens(t in token_text()) {
        if let Ok(value) = HeaderValue::from_str(&format!("Bearer {t}")) {
            if let Ok(raw) = token::extract_bearer(std::iter::once(&value), 16_384) {
                if token::parse(raw).is_ok() {
                    prop_assert!(strictly_valid(raw), "accepted: {raw}");
                }
            }
        }
    }

    /// Arbitrary bytes in the Authorization header never panic the extractor or the parser.
    #[test]
    fn arbitrary_authorization_headers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(value) = HeaderValue::from_bytes(&bytes) {
            if let Ok(raw) = token::extract_bearer(std::iter::once(&value), 16_384) {
                let _ = token::parse(raw);
            }
        }
    }

    /// Arbitrary documents never panic the JWKS parser; a parsed set always has a usable key.
    #[test]
    fn the_jwks_parser_never_panics(
        keys in prop::collection::vec(
            jose_object(&["kty", "use", "kid", "x5t", "n", "e", "issuer", "alg"]), 0..4),
        wrap in any::<bool>(),
    ) {
        let doc = if wrap { serde_json::json!({ "keys": keys }) } else { Value::Array(keys) };
        if let Ok(set) = KeySet::parse(doc.to_string().as_bytes(), KeySource::Fetched) {
            prop_assert!(!set.is_empty());
        }
    }

    /// Well-formed RSA keys with arbitrary members around them parse or are skipped, never panic.
    #[test]
    fn jwks_with_real_shaped_keys_never_panic(
        n_len in 0usize..600,
        e in prop::collection::vec(any::<u8>(), 0..8),
        kid in prop::option::of("[ -~]{0,10}"),
        kty in prop::sample::select(vec!["RSA", "rsa", "EC", ""]),
    ) {
        let n = URL_SAFE_NO_PAD.encode(vec![0xa5u8; n_len]);
        let mut k = serde_json::json!({"kty": kty, "n": n, "e": URL_SAFE_NO_PAD.encode(e)});
        if let Some(kid) = kid {
            k["kid"] = kid.into();
        }
        let _ = KeySet::parse(serde_json::json!({"keys": [k]}).to_string().as_bytes(), KeySource::Fetched);
    }

    /// Arbitrary bytes as a JWKS document never panic.
    #[test]
    fn arbitrary_bytes_as_jwks_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = KeySet::parse(&bytes, KeySource::Fetched);
    }

    /// The config loader answers every mutation of a valid file with a config or with errors,
    /// never a panic; every error has a 1-based position inside the file.
    #[test]
    fn the_config_loader_never_panics(
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..4, "[ -~\n]{0,6}"), 1..4),
    ) {
        let mut text = VALID_CONFIG.to_string();
        for (at, op, piece) in edits {
            let mut i = at.index(text.len() + 1);
            while !text.is_char_boundary(i) {
                i -= 1;
            }
            match op {
                0 => text.insert_str(i, &piece),
                1 => {
                    let end = (i + piece.len()).min(text.len());
                    let mut end = end;
                    while !text.is_char_boundary(end) {
                        end += 1;
                    }
                    text.replace_range(i..end, "");
                }
                2 => {
                    let end = (i + piece.len()).min(text.len());
                    let mut end = end;
                    while !text.is_char_boundary(end) {
                        end += 1;
                    }
                    text.replace_range(i..end, &piece);
                }
                _ => {
                    // Duplicate a line: duplicate keys and tables.
                    let line = text[i..].lines().next().unwrap_or("").to_string();
                    text.insert_str(i, &format!("{line}\n"));
                }
            }
        }
        let lines = text.lines().count().max(1);
        if let Err(errors) = aadgate_core::config::load_str(Path::new("/nonexistent/aadgate.toml"), &text) {
            prop_assert!(!errors.0.is_empty());
            for e in &errors.0 {
                prop_assert!(e.line >= 1 && e.col >= 1, "{e}");
                prop_assert!(e.line <= lines + 1, "{e} (file has {lines} lines)");
            }
        }
    }
}

/// A config that exercises most sections; the loader's fuzz target mutates it.
const VALID_CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:8080"]
admin_listen = "127.0.0.1:9180"
workers = 1
max_token_bytes = 16384
upstream_connect_timeout = "5s"

[identity]
jwks_uri = "http://127.0.0.1:1/common/discovery/v2.0/keys"
refresh_interval = "1h"
min_refetch_interval = "30s"
clock_skew = "5m"
algorithms = ["RS256"]
audiences = ["api://orders", "6e74172b-be56-4843-9ff4-e66a39bb12e3"]

[tenants]
mode = "allow_list"
allow = ["72f988bf-86f1-41af-91ab-2d7cd011db47"]
deny = []

[clients]
allow = ["0f8a6a48-2c1b-4c57-9d4a-8f0c2b8c1d11"]
min_auth_strength = 0

[validators.no-guests]
kind = "cel"
expr = "!has(claims.acct) || claims.acct == 0"
message = "guest accounts are not allowed"

[validators.entitlements]
kind = "http"
url = "http://127.0.0.1:7000/authorize"
timeout = "200ms"
cache_ttl = "60s"
on_error = "deny"

[[routes]]
name = "orders"
path_prefix = "/orders/"
upstream = "http://127.0.0.1:3000"
strip_prefix = "/orders"
auth = "required"
token_kind = "any"
roles_any = ["Orders.Read"]
validators = ["no-guests", "entitlements"]
[routes.claim_headers]
x-auth-tenant-id = "tid"

[[routes]]
name = "public"
path_prefix = "/"
upstream = "http://127.0.0.1:3000"
auth = "anonymous"
"#;

#[test]
fn the_fuzzed_config_is_valid_before_mutation() {
    let loaded =
        aadgate_core::config::load_str(Path::new("/nonexistent/aadgate.toml"), VALID_CONFIG);
    assert!(loaded.is_ok(), "{:?}", loaded.err());
}

/// Found by the token target: a signature segment of one character (not base64url) was
/// accepted by the parser and only failed later as `bad_signature`.
#[test]
fn a_signature_segment_that_is_not_base64url_is_malformed() {
    let t = "eyJhbGciOiIifQ.e30.0";
    assert!(!strictly_valid(t));
    assert!(token::parse(t).is_err());
}

#[test]
fn the_strict_reading_accepts_a_plain_token_and_refuses_duplicates() {
    let h = b64(&serde_json::json!({"alg": "RS256", "kid": "k"}));
    let c = b64(&serde_json::json!({"exp": 1, "aud": "a"}));
    assert!(strictly_valid(&format!("{h}.{c}.c2ln")));
    let dup = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","alg":"none"}"#);
    assert!(!strictly_valid(&format!("{dup}.{c}.c2ln")));
    assert!(token::parse(&format!("{dup}.{c}.c2ln")).is_err());
}
