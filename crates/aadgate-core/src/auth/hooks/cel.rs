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
mod tests;
