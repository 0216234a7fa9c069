//! `aadgate explain`: runs the real pipeline on one token and reports every check, the reason
//! code of the first failure and how to fix it.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::{HeaderMap, HeaderValue, Method};
use serde_json::{json, Map, Value};

use crate::auth::hints::hint;
use crate::auth::{Authenticator, Clock, FixedClock, RequestParts, SystemClock, TokenCache, Trace};
use crate::cli::ExplainArgs;
use crate::config::{self, Config, Route};
use crate::jwks::{KeySet, KeySource, KeyStore};
use crate::metrics::Metrics;

/// The outcome of explaining one token.
#[derive(Debug, Clone)]
pub struct Report {
    pub route: String,
    pub header: Option<Map<String, Value>>,
    pub claims: Option<Map<String, Value>>,
    pub trace: Trace,
    pub now: i64,
}

impl Report {
    /// True when every check passed.
    pub fn accepted(&self) -> bool {
        self.trace.steps.iter().all(|s| s.result.is_ok())
    }

    fn failure(&self) -> Option<&crate::auth::Rejection> {
        self.trace
            .steps
            .iter()
            .find_map(|s| s.result.as_ref().err())
    }

    /// The report as JSON.
    pub fn to_json(&self) -> Value {
        let checks: Vec<Value> = self
            .trace
            .steps
            .iter()
            .map(|s| match &s.result {
                Ok(d) => json!({"check": s.check, "ok": true, "detail": d}),
                Err(r) => json!({"check": s.check, "ok": false, "reason": r.reason.as_str(), "message": r.message}),
            })
            .collect();
        let failure = self.failure();
        json!({
            "verdict": if self.accepted() { "accepted" } else { "rejected" },
            "route": self.route,
            "evaluated_at": self.now,
            "header": self.header,
            "claims": self.claims,
            "times": self.claims.as_ref().map(|c| times(c, self.now)),
            "checks": checks,
            "reason": failure.map(|r| r.reason.as_str()),
            "status": failure.map(|r| r.status().as_u16()),
            "message": failure.map(|r| r.message.clone()),
            "hint": failure.map(|r| hint(r.reason)),
        })
    }

    /// The report as text.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!("route: {}\n", self.route));
        match &self.header {
            Some(h) => out.push_str(&format!("header: {}\n", Value::Object(h.clone()))),
            None => out.push_str("header: (not decodable)\n"),
        }
        if let Some(c) = &self.claims {
            out.push_str("claims:\n");
            for (k, v) in c {
                out.push_str(&format!("  {k}: {v}\n"));
            }
            if let Value::Object(t) = times(c, self.now) {
                for (k, v) in t {
                    out.push_str(&format!("  {k} = {}\n", v.as_str().unwrap_or_default()));
                }
            }
        }
        out.push_str("checks:\n");
        for s in &self.trace.steps {
            match &s.result {
                Ok(d) => out.push_str(&format!("  PASS {:<20} {d}\n", s.check)),
                Err(r) => out.push_str(&format!(
                    "  FAIL {:<20} {}: {}\n",
                    s.check, r.reason, r.message
                )),
            }
        }
        match self.failure() {
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
}

fn times(claims: &Map<String, Value>, now: i64) -> Value {
    let mut m = Map::new();
    for name in ["iat", "nbf", "exp"] {
        if let Some(t) = crate::auth::claims::seconds(claims, name) {
            let utc = http_date(t);
            let rel = crate::auth::time::human_span(now.saturating_sub(t));
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

fn decode_segment(token: &str, i: usize) -> Option<Map<String, Value>> {
    let seg = token.split('.').nth(i)?;
    let bytes = URL_SAFE_NO_PAD.decode(seg.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Picks the route by name, or by method/path/host.
pub fn pick_route(config: &Config, args: &ExplainArgs) -> Result<Arc<Route>, String> {
    if let Some(name) = &args.route {
        return config
            .routes
            .iter()
            .find(|r| &*r.name == name)
            .cloned()
            .ok_or_else(|| format!("no route named {name:?}"));
    }
    let method = Method::from_bytes(args.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("{:?} is not a method", args.method))?;
    let path = args.path.clone().unwrap_or_else(|| "/".into());
    let edge =
        crate::routing::edge(&config.server, &method, path.as_bytes()).map_err(|r| r.message)?;
    let host = crate::routing::normalize_host(args.host.as_deref().unwrap_or(""));
    crate::routing::select(&config.routes, &method, &host, &edge.normalized)
        .cloned()
        .map_err(|r| r.message)
}

/// The request `explain` pretends to make: from `--method/--path/--host`, or else the route's
/// first method, its prefix and its host.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub path: String,
    pub host: String,
}

impl Request {
    /// The request for `route`, with any of `args`' method/path/host overriding the defaults.
    pub fn for_route(route: &Route, args: Option<&ExplainArgs>) -> Request {
        let method = args
            .filter(|a| a.route.is_none())
            .and_then(|a| Method::from_bytes(a.method.to_ascii_uppercase().as_bytes()).ok())
            .or_else(|| route.methods.as_ref().and_then(|m| m.first().cloned()))
            .unwrap_or(Method::GET);
        Request {
            method,
            path: args
                .and_then(|a| a.path.clone())
                .unwrap_or_else(|| route.path_prefix.clone()),
            host: args
                .and_then(|a| a.host.as_deref())
                .map(crate::routing::normalize_host)
                .or_else(|| route.host.clone())
                .unwrap_or_default(),
        }
    }
}

/// Explains `token` for `route` with the given authenticator.
pub async fn explain(auth: &Authenticator, route: &Arc<Route>, token: &str) -> Report {
    explain_request(auth, route, &Request::for_route(route, None), token).await
}

/// Explains `token` for `route` as if sent with `request`.
pub async fn explain_request(
    auth: &Authenticator,
    route: &Arc<Route>,
    request: &Request,
    token: &str,
) -> Report {
    let token = token.trim();
    let token = token
        .strip_prefix("Bearer ")
        .or_else(|| token.strip_prefix("bearer "))
        .unwrap_or(token)
        .trim();
    let mut headers = HeaderMap::new();
    let value = HeaderValue::from_str(&format!("Bearer {token}"))
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer -"));
    headers.insert(http::header::AUTHORIZATION, value);
    let parts = RequestParts {
        method: &request.method,
        path: &request.path,
        normalized_path: &request.path,
        host: &request.host,
        headers: &headers,
    };
    let mut trace = Trace::default();
    if route.auth == crate::config::AuthMode::Anonymous {
        trace.steps.push(crate::auth::Step {
            check: "route",
            result: Ok(format!(
                "route {} is anonymous: the gateway does not look at tokens on it",
                route.name
            )),
        });
    } else {
        let _ = auth.authenticate_traced(route, &parts, &mut trace).await;
    }
    Report {
        route: route.name.to_string(),
        header: decode_segment(token, 0),
        claims: decode_segment(token, 1),
        trace,
        now: auth.clock.now(),
    }
}

/// `aadgate explain`: exit 0 accepted, 1 rejected, 2 usage or configuration error.
pub fn main(config_path: &Path, args: &ExplainArgs) -> ExitCode {
    let fail = |msg: String| {
        eprintln!("aadgate explain: {msg}");
        ExitCode::from(2)
    };
    let config = match config::load(config_path, None) {
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
        Err(e) => return fail(e),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(e.to_string()),
    };
    let metrics = Arc::new(Metrics::new());
    let keys = match &args.jwks {
        Some(path) => {
            let raw = match std::fs::read(path) {
                Ok(r) => r,
                Err(e) => return fail(format!("cannot read {}: {e}", path.display())),
            };
            match KeySet::parse(&raw, KeySource::Static) {
                Ok(set) => KeyStore::fixed(set, metrics.clone()),
                Err(e) => return fail(format!("{}: {e}", path.display())),
            }
        }
        None => {
            let store = KeyStore::new(&config.identity, metrics.clone());
            rt.spawn(store.clone().run());
            rt.block_on(store.first_load(Duration::from_secs(15)));
            store
        }
    };
    let clock: Arc<dyn Clock> = match args.at {
        Some(at) => Arc::new(FixedClock(at)),
        None => Arc::new(SystemClock),
    };
    let auth = Authenticator {
        cache: Arc::new(TokenCache::new(0, config.identity.clock_skew)),
        config: Arc::new(config),
        keys,
        metrics,
        clock,
    };
    let request = Request::for_route(&route, Some(args));
    let report = rt.block_on(explain_request(&auth, &route, &request, &token));
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report.to_json()).unwrap_or_default()
        );
    } else {
        print!("{}", report.to_text());
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
