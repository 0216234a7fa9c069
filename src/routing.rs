//! Step 1 of SPEC section 1: refuse ambiguous paths, then pick the route (host, methods,
//! longest `path_prefix`, first listed on ties).

use std::sync::Arc;

use http::Method;

use crate::auth::{Reason, Rejection};
use crate::config::Route;

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn bad(message: &str) -> Rejection {
    Rejection::new(Reason::BadRequest, message)
}

/// The path used for route matching: unreserved characters percent-decoded, everything else as
/// received. Refuses `.`/`..` segments (also encoded), encoded `/` or `\`, a raw `\`, and NUL.
pub fn match_path(raw: &str) -> Result<std::borrow::Cow<'_, str>, Rejection> {
    if !raw.starts_with('/') {
        return Err(bad("the request path must start with '/'"));
    }
    let bytes = raw.as_bytes();
    let mut decoded: Option<Vec<u8>> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            0 => return Err(bad("the request path contains a NUL byte")),
            b'\\' => return Err(bad("the request path contains a backslash")),
            b'%' => {
                let (Some(h), Some(l)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(bad("the request path has a malformed percent-encoding"));
                };
                let c = h * 16 + l;
                match c {
                    0 => return Err(bad("the request path contains an encoded NUL")),
                    b'/' => return Err(bad("the request path contains an encoded '/' (%2F)")),
                    b'\\' => return Err(bad("the request path contains an encoded '\\' (%5C)")),
                    _ => {}
                }
                let out = decoded.get_or_insert_with(|| bytes[..i].to_vec());
                if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                    out.push(c);
                } else {
                    out.extend_from_slice(&bytes[i..i + 3]);
                }
                i += 3;
                continue;
            }
            _ => {
                if let Some(out) = decoded.as_mut() {
                    out.push(b);
                }
            }
        }
        i += 1;
    }
    let path: std::borrow::Cow<'_, str> = match decoded {
        None => std::borrow::Cow::Borrowed(raw),
        Some(v) => std::borrow::Cow::Owned(
            String::from_utf8(v).map_err(|_| bad("the request path is not UTF-8"))?,
        ),
    };
    if path.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(bad("the request path contains a '.' or '..' segment"));
    }
    Ok(path)
}

/// The request host for matching: lower case, without port.
pub fn normalize_host(host: &str) -> String {
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
    without_port.to_ascii_lowercase()
}

/// Picks the route for a request. `path` is the result of [`match_path`].
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
        if !path.starts_with(r.path_prefix.as_str()) {
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

/// The path sent upstream: `strip_prefix` removed from the path as received (the result always
/// starts with '/'), query kept. When the prefix only matches after decoding (`/%6Frders/…`),
/// it is removed from the decoded `match_path` instead, so a route's prefix is never forwarded
/// by accident.
pub fn upstream_path(
    route: &Route,
    raw_path: &str,
    match_path: &str,
    query: Option<&str>,
) -> String {
    let mut p = match &route.strip_prefix {
        Some(sp) => match raw_path
            .strip_prefix(sp.as_str())
            .or_else(|| match_path.strip_prefix(sp.as_str()))
        {
            Some(rest) if rest.starts_with('/') => rest.to_string(),
            Some(rest) => format!("/{rest}"),
            None => raw_path.to_string(),
        },
        None => raw_path.to_string(),
    };
    if let Some(q) = query {
        p.push('?');
        p.push_str(q);
    }
    p
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
    fn ambiguous_paths_are_refused() {
        for p in [
            "/a/../b",
            "/a/./b",
            "/..",
            "/a/%2e%2e/b",
            "/a/%2E/b",
            "/a/.%2e/b",
            "/a%2fb",
            "/a%2Fb",
            "/a%5cb",
            "/a\\b",
            "/a%00b",
            "/a\0b",
            "relative",
            "/a%zz",
            "/a%2",
        ] {
            assert_eq!(
                match_path(p).map_err(|r| r.reason),
                Err(Reason::BadRequest),
                "{p}"
            );
        }
    }

    #[test]
    fn unreserved_characters_are_decoded_for_matching_only() {
        assert_eq!(match_path("/orders/%41bc").as_deref(), Ok("/orders/Abc"));
        assert_eq!(match_path("/a%20b").as_deref(), Ok("/a%20b"));
        assert_eq!(match_path("/a/...b/c.d").as_deref(), Ok("/a/...b/c.d"));
        assert_eq!(match_path("/").as_deref(), Ok("/"));
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

    #[test]
    fn strip_prefix_applies_to_raw_and_to_decoded_paths() {
        let mut r = Route::for_test("r", "/orders/");
        r.strip_prefix = Some("/orders".into());
        assert_eq!(
            upstream_path(&r, "/orders/42", "/orders/42", Some("a=1")),
            "/42?a=1"
        );
        let raw = "/%6Frders/42";
        let decoded = match_path(raw).expect("safe");
        assert_eq!(upstream_path(&r, raw, &decoded, None), "/42");
        assert_eq!(upstream_path(&r, "/orders", "/orders", None), "/");
        r.strip_prefix = None;
        assert_eq!(
            upstream_path(&r, raw, &decoded, None),
            raw,
            "no strip: the path as received"
        );
    }

    #[test]
    fn hosts_are_lower_cased_without_port() {
        assert_eq!(normalize_host("API.Contoso.com:8443"), "api.contoso.com");
        assert_eq!(normalize_host("[::1]:80"), "::1");
        assert_eq!(normalize_host("example"), "example");
    }
}
