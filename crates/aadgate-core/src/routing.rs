//! Step 1 of SPEC section 1: classify the request target, normalize the path (refusing
//! ambiguous ones), then pick the route (host, methods, longest `path_prefix`, first listed on
//! ties). The pingora adapter and the tower layer both call [`edge`] and the header rule
//! [`crate::config::Config::spoofable_headers`], so they refuse and strip the same requests.

mod table;

use std::borrow::Cow;
use std::sync::Arc;

use http::Method;

pub use crate::target::{normalize_path, parse_target, strip_prefix, PathCase, Target, TargetForm};
pub use table::RouteTable;

use crate::config::{Route, ServerSettings};
use crate::reason::{Reason, Rejection};

/// What the edge of the gateway made of a request line: the classified target and the
/// normalized path routes are matched on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge<'a> {
    /// The request target as received, with its form, path and query.
    pub target: Target<'a>,
    /// The normalized path ([`normalize_path`]); `/` for `OPTIONS *`.
    pub normalized: Cow<'a, str>,
}

/// Runs on every request before routing: the target checks of [`parse_target`]
/// (`max_uri_bytes` → 414, other forms → 400) and the path normalization of
/// [`normalize_path`] with `[server] path_case` (ambiguous paths → 400). `raw_target` is the
/// request target as received on the wire. `OPTIONS *` is routed as `/`.
pub fn edge<'a>(
    server: &ServerSettings,
    method: &Method,
    raw_target: &'a [u8],
) -> Result<Edge<'a>, Rejection> {
    let target = parse_target(method, raw_target, server.max_uri_bytes)?;
    let normalized = match target.form {
        TargetForm::Asterisk => Cow::Borrowed("/"),
        TargetForm::Origin | TargetForm::Absolute => normalize_path(target.path, server.path_case)?,
    };
    Ok(Edge { target, normalized })
}

/// The origin-form target sent upstream, or `None` when the request's own target goes as it
/// is (origin form on a route that neither strips a prefix nor may rewrite `/me`, and
/// `OPTIONS *`). The path is the one received with the route's `strip_prefix` removed
/// ([`strip_prefix`]); the query follows byte for byte.
pub fn upstream_target(route: &Route, edge: &Edge<'_>, case: PathCase) -> Option<String> {
    let t = &edge.target;
    match t.form {
        TargetForm::Asterisk => return None,
        TargetForm::Origin if route.strip_prefix.is_none() && route.exchange.is_none() => {
            return None
        }
        TargetForm::Origin | TargetForm::Absolute => {}
    }
    let path = match &route.strip_prefix {
        Some(sp) => strip_prefix(t.path, sp, case),
        None => Cow::Borrowed(t.path),
    };
    let mut out = String::with_capacity(path.len() + t.query.map_or(0, |q| q.len() + 1));
    out.push_str(&path);
    if let Some(q) = t.query {
        out.push('?');
        out.push_str(q);
    }
    Some(out)
}

/// The request host for matching: lower case, without port (borrowed when already so).
pub fn normalize_host(host: &str) -> std::borrow::Cow<'_, str> {
    let h = host.trim();
    let without_port = if let Some(rest) = h.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        match h.rsplit_once(':') {
            Some((name, port))
                if port.chars().all(|c| c.is_ascii_digit()) && !name.contains(':') =>
            {
                name
            }
            _ => h,
        }
    };
    if without_port.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(without_port.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(without_port)
    }
}

/// True when `path` falls under `prefix`. A prefix ending in `/` also covers the path without
/// that slash (`/admin/` covers `/admin`): frameworks serve `/admin` and `/admin/` alike, so the
/// bare form must not fall through to a weaker route.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
        || prefix
            .strip_suffix('/')
            .is_some_and(|bare| !bare.is_empty() && path == bare)
}

/// Picks the route for a request. `path` is the normalized path ([`Edge::normalized`]); the
/// routes' prefixes were normalized the same way when the configuration was compiled.
///
/// This is the rule, one route at a time; the request path uses [`RouteTable::select`], which
/// gives the same answer in time independent of the number of routes.
pub fn select<'r>(
    routes: &'r [Arc<Route>],
    method: &Method,
    host: &str,
    path: &str,
) -> Result<&'r Arc<Route>, Rejection> {
    let mut best: Option<&Arc<Route>> = None;
    for r in routes {
        if r.host.as_deref().is_some_and(|h| h != host) {
            continue;
        }
        if r.methods.as_ref().is_some_and(|ms| !ms.contains(method)) {
            continue;
        }
        if !prefix_matches(&r.path_prefix, path) {
            continue;
        }
        if best.is_none_or(|b| r.path_prefix.len() > b.path_prefix.len()) {
            best = Some(r);
        }
    }
    best.ok_or_else(|| {
        Rejection::new(
            Reason::RouteNotFound,
            format!("no route for {method} {path}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(
        name: &str,
        prefix: &str,
        host: Option<&str>,
        methods: Option<Vec<Method>>,
    ) -> Arc<Route> {
        let mut r = Route::for_test(name, prefix);
        r.host = host.map(String::from);
        r.methods = methods;
        Arc::new(r)
    }

    #[test]
    fn longest_prefix_wins_and_ties_go_to_the_first() {
        let routes = vec![
            route("all", "/", None, None),
            route("orders", "/orders/", None, None),
            route("orders-post", "/orders/", None, Some(vec![Method::POST])),
            route("orders-api-host", "/orders/", Some("api.contoso.com"), None),
            route("orders-v2", "/orders/v2/", None, None),
        ];
        let pick = |m: Method, host: &str, p: &str| {
            select(&routes, &m, host, p)
                .map(|r| r.name.to_string())
                .ok()
        };
        assert_eq!(
            pick(Method::GET, "x", "/orders/1").as_deref(),
            Some("orders")
        );
        assert_eq!(
            pick(Method::POST, "x", "/orders/1").as_deref(),
            Some("orders")
        );
        assert_eq!(
            pick(Method::GET, "x", "/orders/v2/1").as_deref(),
            Some("orders-v2")
        );
        assert_eq!(pick(Method::GET, "x", "/other").as_deref(), Some("all"));
    }

    #[test]
    fn a_prefix_ending_in_a_slash_also_covers_the_path_without_it() {
        let routes = vec![
            route("all", "/", None, None),
            route("admin", "/admin/", None, None),
        ];
        let pick = |p: &str| {
            select(&routes, &Method::GET, "x", p)
                .map(|r| r.name.to_string())
                .ok()
        };
        assert_eq!(pick("/admin").as_deref(), Some("admin"));
        assert_eq!(pick("/admin/").as_deref(), Some("admin"));
        assert_eq!(pick("/admin/users").as_deref(), Some("admin"));
        assert_eq!(pick("/administrator").as_deref(), Some("all"));
        assert_eq!(pick("/").as_deref(), Some("all"));
    }

    #[test]
    fn host_and_method_filter_routes() {
        let routes = vec![
            route("api", "/", Some("api.contoso.com"), None),
            route("post-only", "/p/", None, Some(vec![Method::POST])),
        ];
        assert!(select(&routes, &Method::GET, "api.contoso.com", "/x").is_ok());
        assert_eq!(
            select(&routes, &Method::GET, "other", "/x")
                .map_err(|r| r.reason)
                .err(),
            Some(Reason::RouteNotFound)
        );
        assert_eq!(
            select(&routes, &Method::GET, "other", "/p/1")
                .map_err(|r| r.reason)
                .err(),
            Some(Reason::RouteNotFound)
        );
        assert!(select(&routes, &Method::POST, "other", "/p/1").is_ok());
    }

    fn server(case: PathCase) -> ServerSettings {
        ServerSettings {
            max_uri_bytes: 8192,
            path_case: case,
            ..ServerSettings::for_test()
        }
    }

    #[test]
    fn a_request_is_never_matched_to_a_weaker_route_than_its_framework_would_serve() {
        let routes = vec![
            route("public", "/", None, None),
            route("admin", "/admin/", None, None),
            route("orders", "/orders/", None, None),
            route("orders-sync", "/orders/sync/", None, None),
        ];
        let s = server(PathCase::Insensitive);
        let pick = |target: &str| {
            let e = edge(&s, &Method::GET, target.as_bytes()).expect("served");
            select(&routes, &Method::GET, "x", &e.normalized)
                .map(|r| r.name.to_string())
                .expect("a route")
        };
        for (target, want) in [
            ("/admin/users", "admin"),
            ("/ADMIN/users", "admin"),
            ("/%61dmin/users", "admin"),
            ("//admin/users", "admin"),
            ("/admin;x/users", "admin"),
            ("http://h/Admin/users", "admin"),
            ("/orders/sync/run", "orders-sync"),
            ("/orders//sync/run", "orders-sync"),
            ("/orders/sync;x/run", "orders-sync"),
            ("/Orders/SYNC/run", "orders-sync"),
            ("/orders/42", "orders"),
            ("/other", "public"),
        ] {
            assert_eq!(pick(target), want, "{target}");
        }
        let e = edge(&s, &Method::OPTIONS, b"*").expect("OPTIONS *");
        assert_eq!(e.normalized, "/");
    }

    #[test]
    fn with_path_case_sensitive_only_the_exact_case_matches() {
        let routes = vec![
            route("public", "/", None, None),
            route("admin", "/admin/", None, None),
        ];
        let s = server(PathCase::Sensitive);
        let e = edge(&s, &Method::GET, b"/ADMIN/users").expect("served");
        assert_eq!(e.normalized, "/ADMIN/users");
        let r = select(&routes, &Method::GET, "x", &e.normalized).expect("a route");
        assert_eq!(&*r.name, "public");
    }

    #[test]
    fn edge_refuses_bad_targets_and_ambiguous_paths_before_routing() {
        let s = server(PathCase::Insensitive);
        for (m, target, want) in [
            (Method::GET, "x:/admin/users", Reason::BadRequest),
            (Method::GET, "admin/users", Reason::BadRequest),
            (Method::GET, "*", Reason::BadRequest),
            (Method::GET, "/admin/..;x/users", Reason::BadRequest),
            (Method::GET, "http://h/a/../b", Reason::BadRequest),
        ] {
            assert_eq!(
                edge(&s, &m, target.as_bytes()).map_err(|r| r.reason),
                Err(want),
                "{target}"
            );
        }
        let s = ServerSettings {
            max_uri_bytes: 10,
            ..s
        };
        assert_eq!(
            edge(&s, &Method::GET, b"/0123456789").map_err(|r| r.reason),
            Err(Reason::UriTooLong)
        );
    }

    #[test]
    fn the_upstream_always_gets_origin_form_with_the_query_as_received() {
        let plain = Route::for_test("plain", "/");
        let mut stripped = Route::for_test("svc", "/svc/");
        stripped.strip_prefix = Some("/svc".into());
        let s = server(PathCase::Insensitive);
        for (route, method, target, want) in [
            (&plain, Method::GET, "/a/b?q=%20", None),
            (
                &plain,
                Method::GET,
                "http://h/a/b?q=%20",
                Some("/a/b?q=%20"),
            ),
            (&plain, Method::GET, "HTTPS://h", Some("/")),
            (&plain, Method::OPTIONS, "*", None),
            (
                &stripped,
                Method::GET,
                "/SVC//x;v=1/y?z=%41",
                Some("/x;v=1/y?z=%41"),
            ),
            (&stripped, Method::GET, "http://h/svc/x", Some("/x")),
            (&stripped, Method::GET, "/svc", Some("/")),
        ] {
            let e = edge(&s, &method, target.as_bytes()).expect("served");
            assert_eq!(
                upstream_target(route, &e, s.path_case).as_deref(),
                want,
                "{target}"
            );
        }
    }

    #[test]
    fn hosts_are_lower_cased_without_port() {
        assert_eq!(normalize_host("API.Contoso.com:8443"), "api.contoso.com");
        assert_eq!(normalize_host("[::1]:80"), "::1");
        assert_eq!(normalize_host("example"), "example");
    }
}
