//! The traced run behind `aadgate explain`: the real pipeline on one token for one route, with
//! every check recorded. Rendering the [`Report`] (text, JSON, hints) is the CLI's business.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::{HeaderMap, HeaderValue, Method};
use serde_json::{Map, Value};

use crate::auth::{Authenticator, Rejection, RequestParts, Step, Trace};
use crate::config::{AuthMode, Route};

/// The outcome of explaining one token.
#[derive(Debug, Clone)]
pub struct Report {
    /// The route the token was checked for.
    pub route: String,
    /// The token's JOSE header, when it decodes as a JSON object.
    pub header: Option<Map<String, Value>>,
    /// The token's claims, when they decode as a JSON object.
    pub claims: Option<Map<String, Value>>,
    /// Every check that ran, in order; the run stops at the first failure.
    pub trace: Trace,
    /// The Unix time the checks were evaluated at (the authenticator's clock).
    pub now: i64,
}

impl Report {
    /// True when every check passed.
    pub fn accepted(&self) -> bool {
        self.trace.steps.iter().all(|s| s.result.is_ok())
    }

    /// The first failed check's rejection; `None` when the token was accepted.
    pub fn failure(&self) -> Option<&Rejection> {
        self.trace
            .steps
            .iter()
            .find_map(|s| s.result.as_ref().err())
    }
}

/// The request `explain` pretends to make.
#[derive(Debug, Clone)]
pub struct Request {
    /// The request method.
    pub method: Method,
    /// The request path (also used as the normalized path).
    pub path: String,
    /// The normalized host (`routing::normalize_host`).
    pub host: String,
}

impl Request {
    /// The request a token for `route` would come with: the route's first method (else GET),
    /// its prefix and its host (else empty).
    pub fn for_route(route: &Route) -> Request {
        Request {
            method: route
                .methods
                .as_ref()
                .and_then(|m| m.first().cloned())
                .unwrap_or(Method::GET),
            path: route.path_prefix.clone(),
            host: route.host.clone().unwrap_or_default(),
        }
    }
}

/// Explains `token` for `route` with the given authenticator, as if sent with the route's own
/// request ([`Request::for_route`]).
pub async fn explain(auth: &Authenticator, route: &Arc<Route>, token: &str) -> Report {
    explain_request(auth, route, &Request::for_route(route), token).await
}

/// Explains `token` (with or without its `Bearer ` prefix) for `route` as if sent with
/// `request`. An anonymous route records one passing step and checks nothing.
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
    if route.auth == AuthMode::Anonymous {
        trace.steps.push(Step {
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
        now: auth.clock().now(),
    }
}

/// Segment `i` of a compact JWS as a JSON object, if it decodes as one.
fn decode_segment(token: &str, i: usize) -> Option<Map<String, Value>> {
    let seg = token.split('.').nth(i)?;
    let bytes = URL_SAFE_NO_PAD.decode(seg.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}
