use http::HeaderValue;
use serde_json::json;

use super::super::Validator;
use super::*;
use crate::auth::claims::VerifiedToken;

fn token(claims: Json) -> VerifiedToken {
    let Json::Object(m) = claims else {
        unreachable!("object literal")
    };
    VerifiedToken::from_claims(m, Arc::from("kid-1"))
}

/// Runs `expr` for a request to `path` with `claims` and `headers`; `Ok` or the reason.
fn run(
    expr: &str,
    claims: Json,
    path: &str,
    headers: &[(&'static str, &'static str)],
) -> Result<(), Reason> {
    let v = Validator::cel("rule", expr, "not allowed by rule".into()).expect("compiles");
    let t = token(claims);
    let mut h = HeaderMap::new();
    for (n, val) in headers {
        h.append(*n, HeaderValue::from_static(val));
    }
    let hash = [0u8; 32];
    let req = HookRequest {
        route: "orders",
        method: "GET",
        path,
        normalized_path: path,
        host: "api.contoso.com",
        headers: &h,
        token: &t,
        token_hash: &hash,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(v.check_request(&req, &Metrics::new()))
        .map(|added| assert!(added.is_empty(), "CEL adds no headers"))
        .map_err(|e| {
            assert_eq!(
                e.message, "not allowed by rule",
                "denials carry the validator's message"
            );
            e.reason
        })
}

const DENIED: Result<(), Reason> = Err(Reason::HookDenied);

#[test]
fn only_true_allows_while_false_errors_and_non_booleans_deny() {
    let claims = json!({"tid": "t", "roles": ["Orders.Read"], "n": 3, "f": 1.5, "obj": {"a": "b"}});
    let table = [
        ("true", Ok(())),
        ("false", DENIED),
        ("claims.n == 3", Ok(())),
        ("claims.f > 1.0", Ok(())),
        ("claims.obj.a == 'b'", Ok(())),
        ("'Orders.Read' in claims.roles", Ok(())),
        ("claims.missing == 1", DENIED),
        ("claims.n / 0 == 1", DENIED),
        ("claims.tid", DENIED),
        ("1 + 1", DENIED),
        (
            "route == 'orders' && request.method == 'GET' && request.host == 'api.contoso.com'",
            Ok(()),
        ),
        ("request.path == '/orders/1'", Ok(())),
        ("now > 1700000000", Ok(())),
    ];
    for (expr, want) in table {
        assert_eq!(run(expr, claims.clone(), "/orders/1", &[]), want, "{expr}");
    }
}

#[test]
fn headers_have_lower_case_names_and_repeated_values_joined() {
    let headers = [("X-Trace", "a"), ("x-trace", "b"), ("Accept", "json")];
    assert_eq!(
        run(
            "request.headers['x-trace'] == 'a,b'",
            json!({}),
            "/",
            &headers
        ),
        Ok(())
    );
    assert_eq!(
        run(
            "'accept' in request.headers && !('Accept' in request.headers)",
            json!({}),
            "/",
            &headers
        ),
        Ok(())
    );
}

#[test]
fn evaluation_errors_and_non_booleans_are_counted_as_errors() {
    let m = Metrics::new();
    let t = token(json!({"n": 1}));
    let h = HeaderMap::new();
    let hash = [0u8; 32];
    let req = HookRequest {
        route: "r",
        method: "GET",
        path: "/",
        normalized_path: "/",
        host: "h",
        headers: &h,
        token: &t,
        token_hash: &hash,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    for (i, (expr, result)) in [
        ("claims.nope", "error"),
        ("'x'", "error"),
        ("false", "deny"),
        ("true", "allow"),
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("rule{i}");
        let v = Validator::cel(&name, expr, "m".into()).expect("compiles");
        let _ = rt.block_on(v.check_request(&req, &m));
        assert_eq!(
            m.validator_requests
                .with_label_values(&[name.as_str(), result])
                .get(),
            1,
            "{expr}"
        );
    }
}

#[test]
fn syntax_errors_carry_a_one_based_position_within_the_expression() {
    let table = [
        ("claims.a ==", 1, 12),
        ("claims.a == 1 &&\n  claims.b ==", 2, 14),
        ("(claims.a", 1, 10),
        ("claims.a = 1", 1, 10),
    ];
    for (expr, line, col) in table {
        let Err((l, c, msg)) = Validator::cel("rule", expr, "m".into()) else {
            panic!("{expr:?} should not compile");
        };
        assert_eq!((l, c), (line, col), "{expr:?}: {msg}");
        assert!(!msg.is_empty());
    }
}

#[test]
fn the_documented_examples_decide_as_described() {
    let now = crate::clock::unix_now();
    let client = "0f8a6a48-2c1b-4c57-9d4a-8f0c2b8c1d11";
    let no_guests = "!has(claims.acct) || claims.acct == 0";
    let last_hour = "now - claims.iat < 3600";
    let header_for_client =
        format!("claims.azp != '{client}' || 'x-correlation-id' in request.headers");
    let roles_by_path = "!request.path.startsWith('/orders/admin') || (has(claims.roles) && 'Orders.Admin' in claims.roles)";
    // (case, expression, claims, path, headers, decision)
    type Case<'a> = (
        &'a str,
        &'a str,
        Json,
        &'a str,
        Vec<(&'static str, &'static str)>,
        Result<(), Reason>,
    );
    let table: Vec<Case<'_>> = vec![
        (
            "a member account passes",
            no_guests,
            json!({"acct": 0}),
            "/",
            vec![],
            Ok(()),
        ),
        (
            "a token without acct passes",
            no_guests,
            json!({}),
            "/",
            vec![],
            Ok(()),
        ),
        (
            "a guest account is denied",
            no_guests,
            json!({"acct": 1}),
            "/",
            vec![],
            DENIED,
        ),
        (
            "a token issued a minute ago passes",
            last_hour,
            json!({"iat": now - 60}),
            "/",
            vec![],
            Ok(()),
        ),
        (
            "a token issued two hours ago is denied",
            last_hour,
            json!({"iat": now - 7200}),
            "/",
            vec![],
            DENIED,
        ),
        (
            "a token without iat is denied",
            last_hour,
            json!({}),
            "/",
            vec![],
            DENIED,
        ),
        (
            "the named client with the header passes",
            &header_for_client,
            json!({"azp": client}),
            "/",
            vec![("x-correlation-id", "1")],
            Ok(()),
        ),
        (
            "the named client without the header is denied",
            &header_for_client,
            json!({"azp": client}),
            "/",
            vec![],
            DENIED,
        ),
        (
            "another client needs no header",
            &header_for_client,
            json!({"azp": "other"}),
            "/",
            vec![],
            Ok(()),
        ),
        (
            "an admin path with the admin role passes",
            roles_by_path,
            json!({"roles": ["Orders.Admin"]}),
            "/orders/admin/x",
            vec![],
            Ok(()),
        ),
        (
            "an admin path without the admin role is denied",
            roles_by_path,
            json!({"roles": ["Orders.Read"]}),
            "/orders/admin/x",
            vec![],
            DENIED,
        ),
        (
            "an admin path without roles is denied",
            roles_by_path,
            json!({}),
            "/orders/admin/x",
            vec![],
            DENIED,
        ),
        (
            "another path needs no role",
            roles_by_path,
            json!({}),
            "/orders/1",
            vec![],
            Ok(()),
        ),
    ];
    for (case, expr, claims, path, headers, want) in table {
        assert_eq!(run(expr, claims, path, &headers), want, "{case}");
    }
}

#[test]
fn variables_are_checked_when_the_expression_compiles() {
    // (case, expression, the unknown variable's position or None when it compiles)
    type Position = Option<(usize, usize)>;
    let table: [(&str, &str, Position); 12] = [
        ("the known variables compile", "claims.a == 1 && request.method == 'GET' && route == 'r' && tenant.id == 'x' && now > 0", None),
        ("request.normalized_path compiles", "request.normalized_path.startsWith('/a/')", None),
        ("a typo is an error at its position", "claims.a == 1 && claim.b == 2", Some((1, 18))),
        ("an unknown variable on a later line", "claims.a == 1 &&\n  reqest.method == 'GET'", Some((2, 3))),
        ("a comprehension binds its variable", "claims.roles.all(r, r != '')", None),
        ("two-variable comprehension", "request.headers.exists(k, k.startsWith('x-'))", None),
        ("nested comprehensions", "claims.groups.exists(g, claims.roles.all(r, r != g))", None),
        ("a bound variable is unknown outside its macro", "claims.roles.all(r, r != '') && r == 'x'", Some((1, 33))),
        ("has() on a known variable", "has(claims.acct)", None),
        ("has() on an unknown one", "has(claimz.acct)", Some((1, 5))),
        ("type names are not variables", "type(claims.a) == string", None),
        ("an unknown variable inside a list", "'a' in [claims.x, foo]", Some((1, 19))),
    ];
    for (case, expr, want) in table {
        let got = Validator::cel("rule", expr, "m".into())
            .err()
            .map(|(line, col, _)| (line, col));
        assert_eq!(got, want, "{case}: {expr}");
    }
}

#[test]
fn request_normalized_path_and_tenant_are_set_for_requests() {
    let claims = json!({"tid": "t1", "iss": "https://sts.windows.net/t1/"});
    assert_eq!(
        run(
            "request.normalized_path == '/orders/1' && tenant.id == 't1' && tenant.issuer == 'https://sts.windows.net/t1/'",
            claims,
            "/orders/1",
            &[]
        ),
        Ok(())
    );
}

#[test]
fn a_cel_tenant_hook_sees_tenant_id_and_issuer() {
    let v = Validator::cel(
        "t",
        "tenant.id == 'abc' && tenant.issuer.startsWith('https://sts.windows.net/')",
        "m".into(),
    )
    .expect("compiles");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let m = Metrics::new();
    // (case, tid, issuer, allowed)
    let table = [
        (
            "the named tenant passes",
            "abc",
            "https://sts.windows.net/abc/",
            true,
        ),
        (
            "another tenant is refused",
            "xyz",
            "https://sts.windows.net/xyz/",
            false,
        ),
        (
            "another issuer is refused",
            "abc",
            "https://login.microsoftonline.com/abc/v2.0",
            false,
        ),
    ];
    for (case, tid, iss, allowed) in table {
        let got = rt.block_on(v.check_tenant(tid, iss, &m));
        match got {
            Ok(()) => assert!(allowed, "{case}"),
            Err(e) => {
                assert!(!allowed, "{case}");
                assert_eq!(e.reason, Reason::TenantNotAllowed, "{case}");
            }
        }
    }
}

#[test]
fn large_and_fractional_numbers_convert() {
    assert_eq!(json_to_cel(&json!(u64::MAX)), Value::UInt(u64::MAX));
    assert_eq!(json_to_cel(&json!(-3)), Value::Int(-3));
    assert_eq!(json_to_cel(&json!(0.5)), Value::Float(0.5));
    assert_eq!(json_to_cel(&json!(null)), Value::Null);
}

#[test]
fn a_cel_tenant_hook_sees_tid_and_iss() {
    let v = Validator::cel("t", "claims.tid == 'abc'", "m".into()).expect("compiles");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    assert!(rt
        .block_on(v.check_tenant("abc", "iss", &Metrics::new()))
        .is_ok());
    let e = rt
        .block_on(v.check_tenant("xyz", "iss", &Metrics::new()))
        .expect_err("denied");
    assert_eq!(e.reason, Reason::TenantNotAllowed);
}
