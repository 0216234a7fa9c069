//! `aadgate explain`: runs the real pipeline on one token and reports every check, the reason
//! code of the first failure and how to fix it.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use http::Method;
use serde_json::{json, Map, Value};

use crate::cli::ExplainArgs;
use aadgate_core::auth::hints::hint;
use aadgate_core::auth::TokenCache;
use aadgate_core::clock::{Clock, FixedClock, SystemClock};
use aadgate_core::config::{self, Config, Route};
use aadgate_core::explain::{explain_request, Report, Request};
use aadgate_core::jwks::{KeySet, KeySource, KeyStore};
use aadgate_core::metrics::Metrics;
use aadgate_core::runtime::Runtime;

/// The report as JSON.
pub(crate) fn to_json(report: &Report) -> Value {
    let checks: Vec<Value> = report
        .trace
        .steps
        .iter()
        .map(|s| match &s.result {
            Ok(d) => json!({"check": s.check, "ok": true, "detail": d}),
            Err(r) => json!({"check": s.check, "ok": false, "reason": r.reason.as_str(), "message": r.message}),
        })
        .collect();
    let failure = report.failure();
    json!({
        "verdict": if report.accepted() { "accepted" } else { "rejected" },
        "route": report.route,
        "evaluated_at": report.now,
        "header": report.header,
        "claims": report.claims,
        "times": report.claims.as_ref().map(|c| times(c, report.now)),
        "checks": checks,
        "reason": failure.map(|r| r.reason.as_str()),
        "status": failure.map(|r| r.status().as_u16()),
        "message": failure.map(|r| r.message.clone()),
        "hint": failure.map(|r| hint(r.reason)),
    })
}

/// The report as text.
pub(crate) fn to_text(report: &Report) -> String {
    let mut out = String::new();
    out.push_str(&format!("route: {}\n", report.route));
    match &report.header {
        Some(h) => out.push_str(&format!("header: {}\n", Value::Object(h.clone()))),
        None => out.push_str("header: (not decodable)\n"),
    }
    if let Some(c) = &report.claims {
        out.push_str("claims:\n");
        for (k, v) in c {
            out.push_str(&format!("  {k}: {v}\n"));
        }
        if let Value::Object(t) = times(c, report.now) {
            for (k, v) in t {
                out.push_str(&format!("  {k} = {}\n", v.as_str().unwrap_or_default()));
            }
        }
    }
    out.push_str("checks:\n");
    for s in &report.trace.steps {
        match &s.result {
            Ok(d) => out.push_str(&format!("  PASS {:<20} {d}\n", s.check)),
            Err(r) => out.push_str(&format!(
                "  FAIL {:<20} {}: {}\n",
                s.check, r.reason, r.message
            )),
        }
    }
    match report.failure() {
        None => out.push_str("verdict: ACCEPTED\n"),
        Some(r) => {
            out.push_str(&format!(
                "verdict: REJECTED ({} {})\n",
                r.status().as_u16(),
                r.reason
            ));
            out.push_str(&format!("fix: {}\n", hint(r.reason)));
        }
    }
    out
}

fn times(claims: &Map<String, Value>, now: i64) -> Value {
    let mut m = Map::new();
    for name in ["iat", "nbf", "exp"] {
        if let Some(t) = aadgate_core::auth::claims::seconds(claims, name) {
            let utc = http_date(t);
            let rel = aadgate_core::auth::time::human_span(now.saturating_sub(t));
            let rel = if t <= now {
                format!("{rel} ago")
            } else {
                format!("in {rel}")
            };
            m.insert(name.to_string(), Value::String(format!("{utc} ({rel})")));
        }
    }
    Value::Object(m)
}

/// The HTTP date of Unix time `t`, for any `t`: times outside what an HTTP date can show
/// (before 1970, after 9999) are described instead.
fn http_date(t: i64) -> String {
    // httpdate refuses (panics on) dates from the year 10000 on.
    const YEAR_10000: i64 = 253_402_300_800;
    match u64::try_from(t) {
        Ok(secs) if t < YEAR_10000 => {
            httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
        }
        Ok(_) => "after the year 9999".to_string(),
        Err(_) => "before 1970".to_string(),
    }
}

/// Why `explain` found no route to explain the token against.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RouteChoiceError {
    /// `--route NAME` names no route.
    #[error("no route named {0:?}")]
    UnknownRoute(String),
    /// `--method` is not an HTTP method.
    #[error("{0:?} is not a method")]
    BadMethod(String),
    /// The gateway would refuse the request before routing, or no route matches it.
    #[error("{}", .0.message)]
    Refused(aadgate_core::reason::Rejection),
}

/// Picks the route by name, or by method/path/host.
pub(crate) fn pick_route(
    config: &Config,
    args: &ExplainArgs,
) -> Result<Arc<Route>, RouteChoiceError> {
    if let Some(name) = &args.route {
        return config
            .routes
            .iter()
            .find(|r| &*r.name == name)
            .cloned()
            .ok_or_else(|| RouteChoiceError::UnknownRoute(name.clone()));
    }
    let method = Method::from_bytes(args.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| RouteChoiceError::BadMethod(args.method.clone()))?;
    let path = args.path.clone().unwrap_or_else(|| "/".into());
    let edge = aadgate_core::routing::edge(&config.server, &method, path.as_bytes())
        .map_err(RouteChoiceError::Refused)?;
    let host = aadgate_core::routing::normalize_host(args.host.as_deref().unwrap_or(""));
    aadgate_core::routing::select(&config.routes, &method, &host, &edge.normalized)
        .cloned()
        .map_err(RouteChoiceError::Refused)
}

/// The request `explain` pretends to make: the route's own ([`Request::for_route`]), with
/// `--method/--path/--host` overriding it when the route was not picked by name.
fn request_for(route: &Route, args: &ExplainArgs) -> Request {
    let mut request = Request::for_route(route);
    if args.route.is_none() {
        if let Ok(method) = Method::from_bytes(args.method.to_ascii_uppercase().as_bytes()) {
            request.method = method;
        }
    }
    if let Some(path) = &args.path {
        request.path = path.clone();
    }
    if let Some(host) = args.host.as_deref() {
        request.host = aadgate_core::routing::normalize_host(host).into_owned();
    }
    request
}

/// `aadgate explain`: exit 0 accepted, 1 rejected, 2 usage or configuration error.
pub(crate) fn main(config_path: &Path, args: &ExplainArgs) -> ExitCode {
    let fail = |msg: String| {
        eprintln!("aadgate explain: {msg}");
        ExitCode::from(2)
    };
    let config = match config::load(config_path) {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    let token = if args.token == "-" {
        let mut s = String::new();
        if let Err(e) = std::io::stdin().read_to_string(&mut s) {
            return fail(format!("cannot read the token from stdin: {e}"));
        }
        s
    } else {
        args.token.clone()
    };
    let route = match pick_route(&config, args) {
        Ok(r) => r,
        Err(e) => return fail(e.to_string()),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(e.to_string()),
    };
    let metrics = Arc::new(Metrics::new());
    let clock: Arc<dyn Clock> = match args.at {
        Some(at) => Arc::new(FixedClock(at)),
        None => Arc::new(SystemClock),
    };
    // No token cache: every check runs and is traced.
    let cache = Arc::new(TokenCache::new(0, config.identity.clock_skew));
    let mut builder = Runtime::builder(config)
        .metrics(metrics.clone())
        .clock(clock)
        .token_cache(cache);
    if let Some(path) = &args.jwks {
        let raw = match std::fs::read(path) {
            Ok(r) => r,
            Err(e) => return fail(format!("cannot read {}: {e}", path.display())),
        };
        match KeySet::parse(&raw, KeySource::Static) {
            Ok(set) => builder = builder.key_store(KeyStore::fixed(set, metrics)),
            Err(e) => return fail(format!("{}: {e}", path.display())),
        }
    }
    let runtime = match builder.build() {
        Ok(r) => r,
        Err(e) => return fail(e.to_string()),
    };
    if args.jwks.is_none() {
        runtime.start(rt.handle());
        rt.block_on(runtime.keys().first_load(Duration::from_secs(15)));
    }
    let auth = runtime.authenticator();
    let request = request_for(&route, args);
    let report = rt.block_on(explain_request(auth, &route, &request, &token));
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&to_json(&report)).unwrap_or_default()
        );
    } else {
        print!("{}", to_text(&report));
    }
    if report.accepted() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_of_any_size_are_described_without_a_panic() {
        let now = 1_800_000_000;
        for v in [
            json!(i64::MAX),
            json!(i64::MIN),
            json!(u64::MAX),
            json!(1e300),
            json!(-1e300),
            json!(253_402_300_800i64),
            json!(-1),
            json!(now),
        ] {
            let claims = json!({"exp": v, "nbf": v, "iat": v});
            let t = times(claims.as_object().expect("object"), now);
            assert_eq!(t.as_object().map(Map::len), Some(3), "{v}");
        }
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(-1), "before 1970");
        assert_eq!(http_date(i64::MAX), "after the year 9999");
    }
}
