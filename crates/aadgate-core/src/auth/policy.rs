//! Stage 7: the route's policy: token kind, `roles` (appRoles) and `scp` (delegated scopes).

use super::claims::{TokenKind, VerifiedToken};
use crate::config::{Route, TokenKindRequirement};
use crate::reason::{Reason, Rejection};

/// Checks token kind, roles and scopes for `route`.
pub fn check(token: &VerifiedToken, route: &Route) -> Result<(), Rejection> {
    match (route.token_kind, token.kind) {
        (TokenKindRequirement::Any, _)
        | (TokenKindRequirement::App, TokenKind::App)
        | (TokenKindRequirement::User, TokenKind::User) => {}
        (TokenKindRequirement::App, TokenKind::User) => {
            return Err(Rejection::new(
                Reason::WrongTokenKind,
                "this route takes app-only tokens, but this is a delegated (user) token; call it with a token from the client-credentials grant",
            ))
        }
        (TokenKindRequirement::User, TokenKind::App) => {
            return Err(Rejection::new(
                Reason::WrongTokenKind,
                "this route needs a user (delegated) token, but this is an app-only token: there are no applicable user context claims (scp); sign the user in and request a delegated scope",
            ))
        }
        (TokenKindRequirement::App | TokenKindRequirement::User, TokenKind::Neither) => {
            return Err(Rejection::new(
                Reason::WrongTokenKind,
                "the token is neither app-only nor delegated: it has no `scp`, no `roles` and no `idtyp`; grant the client a permission on this API (and admin consent)",
            ))
        }
    }
    check_roles(token, route)?;
    check_scopes(token, route)
}

fn check_roles(token: &VerifiedToken, route: &Route) -> Result<(), Rejection> {
    if route.roles_any.is_empty() && route.roles_all.is_empty() {
        return Ok(());
    }
    let has = |r: &String| token.roles.iter().any(|t| t == r);
    if token.roles.is_empty() {
        let hint = if token.kind == TokenKind::User {
            "a delegated token carries app roles only when the user is assigned to them"
        } else {
            "a daemon needs Application permissions (app roles) granted with admin consent, not Delegated permissions"
        };
        return Err(Rejection::new(
            Reason::MissingRole,
            format!(
                "the token has no 'roles' claim; this route requires {}: {hint}",
                describe(&route.roles_any, &route.roles_all)
            ),
        ));
    }
    let any_ok = route.roles_any.is_empty() || route.roles_any.iter().any(has);
    let missing_all: Vec<&String> = route.roles_all.iter().filter(|r| !has(r)).collect();
    if any_ok && missing_all.is_empty() {
        return Ok(());
    }
    Err(Rejection::new(
        Reason::MissingRole,
        format!(
            "the token's roles ({}) do not meet this route's requirement: {}",
            token.roles.join(", "),
            describe(&route.roles_any, &route.roles_all)
        ),
    ))
}

fn check_scopes(token: &VerifiedToken, route: &Route) -> Result<(), Rejection> {
    if route.scopes_any.is_empty() && route.scopes_all.is_empty() {
        return Ok(());
    }
    let has = |s: &String| token.scopes.iter().any(|t| t == s);
    if token.scopes.is_empty() {
        let hint = if token.kind == TokenKind::App {
            "; it is an app-only token, which never carries scopes: give this route role requirements for daemons, or call it with a user's token"
        } else {
            ""
        };
        return Err(Rejection::new(
            Reason::MissingScope,
            format!(
                "the token has no 'scp' claim; this route requires {}{hint}",
                describe(&route.scopes_any, &route.scopes_all)
            ),
        ));
    }
    let any_ok = route.scopes_any.is_empty() || route.scopes_any.iter().any(has);
    let missing_all: Vec<&String> = route.scopes_all.iter().filter(|s| !has(s)).collect();
    if any_ok && missing_all.is_empty() {
        return Ok(());
    }
    Err(Rejection::new(
        Reason::MissingScope,
        format!(
            "the token's scopes ({}) do not meet this route's requirement: {}",
            token.scopes.join(" "),
            describe(&route.scopes_any, &route.scopes_all)
        ),
    ))
}

fn describe(any: &[String], all: &[String]) -> String {
    match (any.is_empty(), all.is_empty()) {
        (false, true) => format!("one of {}", any.join(", ")),
        (true, false) => format!("all of {}", all.join(", ")),
        _ => format!("one of {} and all of {}", any.join(", "), all.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::sync::Arc;

    fn token(v: Value) -> VerifiedToken {
        VerifiedToken::from_claims(v.as_object().cloned().unwrap_or_default(), Arc::from("k"))
    }

    fn route(
        kind: TokenKindRequirement,
        roles_any: &[&str],
        roles_all: &[&str],
        scopes_any: &[&str],
        scopes_all: &[&str],
    ) -> Route {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect();
        let mut r = Route::for_test("r", "/");
        r.token_kind = kind;
        r.roles_any = v(roles_any);
        r.roles_all = v(roles_all);
        r.scopes_any = v(scopes_any);
        r.scopes_all = v(scopes_all);
        r
    }

    #[test]
    fn token_kind_requirements() {
        use TokenKindRequirement::*;
        let app = json!({"idtyp": "app", "roles": ["R"]});
        let user = json!({"scp": "s"});
        let neither = json!({});
        let table = [
            (Any, &app, true),
            (Any, &user, true),
            (Any, &neither, true),
            (App, &app, true),
            (App, &user, false),
            (App, &neither, false),
            (User, &user, true),
            (User, &app, false),
            (User, &neither, false),
        ];
        for (kind, t, ok) in table {
            let got =
                check(&token(t.clone()), &route(kind, &[], &[], &[], &[])).map_err(|e| e.reason);
            assert_eq!(got.is_ok(), ok, "{kind:?} {t}");
            if !ok {
                assert_eq!(got, Err(Reason::WrongTokenKind));
            }
        }
    }

    #[test]
    fn roles_any_and_all() {
        let any = TokenKindRequirement::Any;
        let t = token(json!({"roles": ["A", "B"]}));
        assert!(check(&t, &route(any, &["X", "A"], &[], &[], &[])).is_ok());
        assert!(check(&t, &route(any, &[], &["A", "B"], &[], &[])).is_ok());
        assert_eq!(
            check(&t, &route(any, &["X"], &[], &[], &[])).map_err(|e| e.reason),
            Err(Reason::MissingRole)
        );
        assert_eq!(
            check(&t, &route(any, &["A"], &["C"], &[], &[])).map_err(|e| e.reason),
            Err(Reason::MissingRole)
        );
        assert_eq!(
            check(&token(json!({})), &route(any, &["A"], &[], &[], &[])).map_err(|e| e.reason),
            Err(Reason::MissingRole)
        );
    }

    #[test]
    fn scopes_any_and_all() {
        let any = TokenKindRequirement::Any;
        let t = token(json!({"scp": "read write"}));
        assert!(check(&t, &route(any, &[], &[], &["write"], &[])).is_ok());
        assert!(check(&t, &route(any, &[], &[], &[], &["read", "write"])).is_ok());
        assert_eq!(
            check(&t, &route(any, &[], &[], &["admin"], &[])).map_err(|e| e.reason),
            Err(Reason::MissingScope)
        );
        assert_eq!(
            check(
                &token(json!({"roles": ["A"]})),
                &route(any, &[], &[], &["read"], &[])
            )
            .map_err(|e| e.reason),
            Err(Reason::MissingScope)
        );
    }
}
