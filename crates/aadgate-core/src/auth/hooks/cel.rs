//! CEL validator hooks (`kind = "cel"`): an expression compiled when the configuration loads and
//! evaluated per request. `true` allows; `false`, a non-boolean result or an evaluation error
//! denies with the validator's `message` (`403 hook_denied`).
//!
//! Variables:
//!
//! | name | type | value |
//! |---|---|---|
//! | `claims` | map | the verified token's claims (JSON → CEL: integers are `int`, fractions `double`, arrays `list`, objects `map`) |
//! | `request.method` | string | e.g. `"GET"` |
//! | `request.path` | string | as received, before `strip_prefix` |
//! | `request.normalized_path` | string | the normalized path routing used (SPEC section 8) |
//! | `request.host` | string | lower case, without port |
//! | `request.headers` | map | lower-case names → value; repeated headers comma-joined |
//! | `route` | string | the route's name |
//! | `tenant.id`, `tenant.issuer` | string | the token's `tid` and `iss` |
//! | `now` | int | the current time in Unix seconds (compare with `claims.iat`, `claims.exp`) |
//!
//! Any other variable (except those a macro such as `all` or `exists` binds) is an error when
//! the configuration loads, at its position.
//!
//! As the tenant hook (`[tenants] mode = "hook"`), an expression sees `tenant` (and `claims`
//! with only `tid` and `iss`); `request` is an empty map and `route` is `""`. A `false` there is
//! `401 tenant_not_allowed`.
//!
//! Examples:
//!
//! ```text
//! !has(claims.acct) || claims.acct == 0                       # no guest accounts
//! now - claims.iat < 3600                                      # issued in the last hour
//! claims.azp != "CLIENT-ID" || "x-correlation-id" in request.headers
//! !request.path.startsWith("/orders/admin") || "Orders.Admin" in claims.roles
//! ```

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use cel::common::ast::{EntryExpr, Expr};
use cel::common::value::Val;
use cel::objects::{Key, Map as CelMap};
use cel::{Context, Env, IdedExpr, Program, Value};
use http::HeaderMap;
use serde_json::Value as Json;

use super::{count, HookRequest, Outcome};
use crate::metrics::Metrics;
use crate::reason::{Reason, Rejection};

/// The standard CEL environment, built once and shared by every evaluation.
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| Arc::new(Env::stdlib()));

/// The variables an expression may use.
pub const VARIABLES: [&str; 5] = ["claims", "request", "route", "tenant", "now"];

/// CEL's type names, which an expression may use as identifiers (`type(x) == string`).
const TYPE_NAMES: [&str; 11] = [
    "int",
    "uint",
    "double",
    "bool",
    "string",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
    "dyn",
];

/// The first identifier in `expr` that is neither a variable of [`VARIABLES`], a type name, nor
/// bound by an enclosing comprehension (the macros `all`, `exists`, `exists_one`, `map`,
/// `filter`); with its node id.
fn first_unknown_identifier<'a>(
    expr: &'a IdedExpr,
    bound: &mut Vec<&'a str>,
) -> Option<(u64, &'a str)> {
    let walk = |e: &'a IdedExpr, bound: &mut Vec<&'a str>| first_unknown_identifier(e, bound);
    match &expr.expr {
        Expr::Unspecified | Expr::Literal(_) => None,
        Expr::Ident(name) => {
            let known = name.starts_with('@')
                || bound.contains(&name.as_str())
                || VARIABLES.contains(&name.as_str())
                || TYPE_NAMES.contains(&name.as_str());
            (!known).then_some((expr.id, name.as_str()))
        }
        Expr::Select(s) => walk(&s.operand, bound),
        Expr::Call(c) => c
            .target
            .iter()
            .map(|t| &**t)
            .chain(c.args.iter())
            .find_map(|e| walk(e, bound)),
        Expr::List(l) => l.elements.iter().find_map(|e| walk(e, bound)),
        Expr::Map(m) => m.entries.iter().find_map(|e| match &e.expr {
            EntryExpr::MapEntry(me) => walk(&me.key, bound).or_else(|| walk(&me.value, bound)),
            EntryExpr::StructField(f) => walk(&f.value, bound),
        }),
        Expr::Struct(st) => st.entries.iter().find_map(|e| match &e.expr {
            EntryExpr::MapEntry(me) => walk(&me.key, bound).or_else(|| walk(&me.value, bound)),
            EntryExpr::StructField(f) => walk(&f.value, bound),
        }),
        Expr::Comprehension(c) => {
            if let Some(found) = walk(&c.iter_range, bound).or_else(|| walk(&c.accu_init, bound)) {
                return Some(found);
            }
            let depth = bound.len();
            bound.push(&c.iter_var);
            if let Some(v2) = &c.iter_var2 {
                bound.push(v2);
            }
            bound.push(&c.accu_var);
            let found = [&c.loop_cond, &c.loop_step, &c.result]
                .into_iter()
                .find_map(|e| walk(e, bound));
            bound.truncate(depth);
            found
        }
    }
}

/// The 1-based line and column of character offset `at` in `source`.
fn line_col(source: &str, at: usize) -> (usize, usize) {
    let mut line = 1;
    let mut col = 1;
    for c in source.chars().take(at) {
        if c == '\n' {
            line += 1;
            col = 1;
        } else {
            col += 1;
        }
    }
    (line, col)
}

/// A compiled CEL validator.
pub(crate) struct CelHook {
    source: String,
    program: Program,
    message: String,
}

impl std::fmt::Debug for CelHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CelHook")
            .field("source", &self.source)
            .field("message", &self.message)
            .finish()
    }
}

/// Why an evaluation did not allow.
#[derive(Debug)]
enum Verdict {
    Allow,
    False,
    NotBool(String),
    Error(String),
}

/// JSON → CEL: integers become `int` (`uint` above `i64::MAX`), other numbers `double`.
pub(crate) fn json_to_cel(v: &Json) -> Value {
    match v {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::String(Arc::new(s.clone())),
        Json::Array(a) => Value::List(Arc::new(a.iter().map(json_to_cel).collect())),
        Json::Object(o) => object_to_cel(o.iter()),
    }
}

fn object_to_cel<'a>(entries: impl Iterator<Item = (&'a String, &'a Json)>) -> Value {
    let map: HashMap<Key, Value> = entries
        .map(|(k, v)| (Key::String(Arc::new(k.clone())), json_to_cel(v)))
        .collect();
    Value::Map(CelMap { map: Arc::new(map) })
}

fn string_map(entries: impl Iterator<Item = (String, Value)>) -> Value {
    let map: HashMap<Key, Value> = entries
        .map(|(k, v)| (Key::String(Arc::new(k)), v))
        .collect();
    Value::Map(CelMap { map: Arc::new(map) })
}

/// `request.headers`: lower-case names (as `http` stores them), values of repeated headers
/// joined with `,`; values that are not visible ASCII are read lossily as UTF-8.
pub(crate) fn headers_to_cel(headers: &HeaderMap) -> Value {
    let mut joined: HashMap<String, String> = HashMap::with_capacity(headers.keys_len());
    for (name, value) in headers {
        let text = String::from_utf8_lossy(value.as_bytes());
        joined
            .entry(name.as_str().to_string())
            .and_modify(|v| {
                v.push(',');
                v.push_str(&text);
            })
            .or_insert_with(|| text.into_owned());
    }
    string_map(
        joined
            .into_iter()
            .map(|(k, v)| (k, Value::String(Arc::new(v)))),
    )
}

fn str_value(s: &str) -> Value {
    Value::String(Arc::new(s.to_string()))
}

/// `tenant`: `{"id": tid, "issuer": iss}`.
fn tenant_value(tid: &str, issuer: &str) -> Value {
    string_map(
        [
            ("id".to_string(), str_value(tid)),
            ("issuer".to_string(), str_value(issuer)),
        ]
        .into_iter(),
    )
}

impl CelHook {
    /// Compiles `expr`. A syntax error or an unknown variable gives its 1-based line and column
    /// within `expr` and a message.
    pub(crate) fn compile(expr: &str, message: String) -> Result<Self, (usize, usize, String)> {
        match ENV.compile(expr) {
            Ok(program) => {
                if let Some((id, name)) =
                    first_unknown_identifier(program.expression(), &mut vec![])
                {
                    let at = program
                        .source_info()
                        .offset_for(id)
                        .map_or(0, |(start, _)| start as usize);
                    let (line, col) = line_col(expr, at);
                    return Err((
                        line,
                        col,
                        format!(
                            "unknown variable `{name}`; an expression can use {}",
                            VARIABLES.join(", ")
                        ),
                    ));
                }
                Ok(CelHook {
                    source: expr.to_string(),
                    program,
                    message,
                })
            }
            Err(errors) => {
                let Some(first) = errors.errors.first() else {
                    return Err((1, 1, "invalid expression".to_string()));
                };
                let (line, col) = first.pos;
                // cel-rust reports 1-based lines and columns ((0, 0) when it has no position).
                let line = usize::try_from(line).unwrap_or(0).max(1);
                let col = usize::try_from(col).unwrap_or(0).max(1);
                Err((line, col, format!("syntax error: {}", first.msg)))
            }
        }
    }

    /// Evaluates the program with the given variables.
    fn evaluate(&self, vars: [(&str, Value); 5]) -> Verdict {
        let mut ctx = Context::with_env(ENV.clone());
        for (name, value) in vars {
            match Box::<dyn Val>::try_from(value) {
                Ok(v) => ctx.add_variable_as_val(name, v),
                Err(e) => return Verdict::Error(format!("variable {name}: {e}")),
            }
        }
        match self.program.execute(&ctx) {
            Ok(Value::Bool(true)) => Verdict::Allow,
            Ok(Value::Bool(false)) => Verdict::False,
            Ok(other) => Verdict::NotBool(other.type_of().to_string()),
            Err(e) => Verdict::Error(e.to_string()),
        }
    }

    /// Counts and maps a verdict; `deny` is the reason of a denial.
    fn conclude(
        &self,
        validator: &str,
        verdict: Verdict,
        deny: Reason,
        metrics: &Metrics,
    ) -> Result<(), Rejection> {
        let outcome = match &verdict {
            Verdict::Allow => Outcome::Allow,
            Verdict::False => Outcome::Deny,
            Verdict::NotBool(_) | Verdict::Error(_) => Outcome::Error,
        };
        count(metrics, validator, outcome);
        match verdict {
            Verdict::Allow => Ok(()),
            Verdict::False => Err(Rejection::new(deny, self.message.clone())),
            Verdict::NotBool(t) => {
                tracing::debug!(validator, result_type = %t, "CEL validator returned a non-boolean; denying");
                Err(Rejection::new(deny, self.message.clone()))
            }
            Verdict::Error(e) => {
                tracing::debug!(validator, error = %e, "CEL validator failed to evaluate; denying");
                Err(Rejection::new(deny, self.message.clone()))
            }
        }
    }

    pub(crate) fn check_request(
        &self,
        validator: &str,
        req: &HookRequest<'_>,
        metrics: &Metrics,
    ) -> Result<(), Rejection> {
        let request = string_map(
            [
                ("method".to_string(), str_value(req.method)),
                ("path".to_string(), str_value(req.path)),
                (
                    "normalized_path".to_string(),
                    str_value(req.normalized_path),
                ),
                ("host".to_string(), str_value(req.host)),
                ("headers".to_string(), headers_to_cel(req.headers)),
            ]
            .into_iter(),
        );
        let verdict = self.evaluate([
            ("claims", object_to_cel(req.token.claims().iter())),
            ("request", request),
            ("route", str_value(req.route)),
            ("tenant", tenant_value(&req.token.tid, &req.token.iss)),
            ("now", Value::Int(crate::clock::unix_now())),
        ]);
        self.conclude(validator, verdict, Reason::HookDenied, metrics)
    }

    /// The tenant hook: `tenant` holds `id` and `issuer` (and `claims` holds `tid` and `iss`).
    pub(crate) fn check_tenant(
        &self,
        validator: &str,
        tid: &str,
        issuer: &str,
        metrics: &Metrics,
    ) -> Result<(), Rejection> {
        let claims = string_map(
            [
                ("tid".to_string(), str_value(tid)),
                ("iss".to_string(), str_value(issuer)),
            ]
            .into_iter(),
        );
        let verdict = self.evaluate([
            ("claims", claims),
            ("request", string_map(std::iter::empty())),
            ("route", str_value("")),
            ("tenant", tenant_value(tid, issuer)),
            ("now", Value::Int(crate::clock::unix_now())),
        ]);
        self.conclude(validator, verdict, Reason::TenantNotAllowed, metrics)
    }
}

#[cfg(test)]
mod tests {
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
        let claims =
            json!({"tid": "t", "roles": ["Orders.Read"], "n": 3, "f": 1.5, "obj": {"a": "b"}});
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
}
