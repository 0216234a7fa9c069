//! Stage 5 (tenant policy): deny-list first, then the allow-list, any tenant, or the tenant hook.

use crate::config::{TenantMode, TenantSettings};
use crate::reason::{Reason, Rejection};
use crate::registry::{Registry, TenantState};

/// What the pure part of the tenant policy decided.
#[derive(Debug, PartialEq, Eq)]
pub enum TenantDecision {
    /// The tenant passes: not denied, and in the allow-list or admitted by `mode = "any"`.
    Allowed,
    /// Ask the named tenant hook.
    AskHook(String),
}

/// Applies the deny-list, the static modes and the tenant registry (`mode = "registry"`) to the
/// (lower-case) tenant id.
pub fn check(
    tid: &str,
    settings: &TenantSettings,
    registry: Option<&Registry>,
) -> Result<TenantDecision, Rejection> {
    if settings.deny.contains(tid) {
        return Err(Rejection::new(
            Reason::TenantDenied,
            format!("tenant {tid} is denied by this gateway"),
        ));
    }
    match &settings.mode {
        TenantMode::Any => Ok(TenantDecision::Allowed),
        TenantMode::AllowList if settings.allow.contains(tid) => Ok(TenantDecision::Allowed),
        TenantMode::AllowList => Err(Rejection::new(
            Reason::TenantNotAllowed,
            format!("tenant {tid} is not allowed; an operator can add it to [tenants] allow (or the tenants file)"),
        )),
        TenantMode::Hook(name) => Ok(TenantDecision::AskHook(name.clone())),
        TenantMode::Registry if settings.allow.contains(tid) => Ok(TenantDecision::Allowed),
        TenantMode::Registry => registry_state(tid, registry.and_then(|r| r.state(tid))),
    }
}

/// The registry's answer for a tenant not in `allow`.
fn registry_state(tid: &str, state: Option<TenantState>) -> Result<TenantDecision, Rejection> {
    let message = match state {
        Some(TenantState::Active) => return Ok(TenantDecision::Allowed),
        Some(TenantState::Revoked) => format!(
            "tenant {tid}: consent withdrawn; its tokens are refused until an administrator of the tenant signs up again (admin consent) or an operator runs `aadgate tenants add {tid}`"
        ),
        Some(TenantState::Pending) => format!(
            "tenant {tid} signed up and awaits approval (`aadgate tenants approve {tid}`)"
        ),
        None => format!(
            "tenant {tid} is not onboarded; an administrator of the tenant can sign up (admin consent), or an operator can run `aadgate tenants add {tid}`"
        ),
    };
    Err(Rejection::new(Reason::TenantNotAllowed, message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn settings(mode: TenantMode, allow: &[&str], deny: &[&str]) -> TenantSettings {
        TenantSettings {
            mode,
            allow: allow.iter().map(|s| s.to_string()).collect::<HashSet<_>>(),
            deny: deny.iter().map(|s| s.to_string()).collect::<HashSet<_>>(),
            issuers: vec![],
            file: None,
            registry: None,
            on_consent_lost: Default::default(),
        }
    }

    #[test]
    fn deny_wins_over_every_mode() {
        for mode in [
            TenantMode::Any,
            TenantMode::AllowList,
            TenantMode::Hook("h".into()),
            TenantMode::Registry,
        ] {
            let s = settings(mode, &["t"], &["t"]);
            assert_eq!(
                check("t", &s, None).map_err(|r| r.reason),
                Err(Reason::TenantDenied)
            );
        }
    }

    #[test]
    fn allow_list_admits_only_listed_tenants() {
        let s = settings(TenantMode::AllowList, &["a"], &[]);
        assert_eq!(check("a", &s, None), Ok(TenantDecision::Allowed));
        assert_eq!(
            check("b", &s, None).map_err(|r| r.reason),
            Err(Reason::TenantNotAllowed)
        );
    }

    #[test]
    fn the_registry_admits_active_and_allowed_tenants_only() {
        let s = settings(TenantMode::Registry, &["a"], &[]);
        let cases = [
            (Some(TenantState::Active), Ok(TenantDecision::Allowed)),
            (Some(TenantState::Pending), Err(Reason::TenantNotAllowed)),
            (Some(TenantState::Revoked), Err(Reason::TenantNotAllowed)),
            (None, Err(Reason::TenantNotAllowed)),
        ];
        for (state, want) in cases {
            assert_eq!(
                registry_state("b", state).map_err(|r| r.reason),
                want,
                "{state:?}"
            );
        }
        // Listed in `allow`: admitted whatever the registry says, even without one.
        assert_eq!(check("a", &s, None), Ok(TenantDecision::Allowed));
        assert_eq!(
            check("b", &s, None).map_err(|r| r.reason),
            Err(Reason::TenantNotAllowed)
        );
    }

    #[test]
    fn any_admits_and_hook_defers() {
        assert_eq!(
            check("x", &settings(TenantMode::Any, &[], &[]), None),
            Ok(TenantDecision::Allowed)
        );
        assert_eq!(
            check(
                "x",
                &settings(TenantMode::Hook("reg".into()), &[], &[]),
                None
            ),
            Ok(TenantDecision::AskHook("reg".into()))
        );
    }
}
