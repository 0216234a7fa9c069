//! Stage 5 (tenant policy): deny-list first, then the allow-list, any tenant, or the tenant hook.

use crate::config::{TenantMode, TenantSettings};
use crate::reason::{Reason, Rejection};

/// What the pure part of the tenant policy decided.
#[derive(Debug, PartialEq, Eq)]
pub enum TenantDecision {
    /// The tenant passes: not denied, and in the allow-list or admitted by `mode = "any"`.
    Allowed,
    /// Ask the named tenant hook.
    AskHook(String),
}

/// Applies the deny-list and the static modes to the (lower-case) tenant id.
pub fn check(tid: &str, settings: &TenantSettings) -> Result<TenantDecision, Rejection> {
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
    }
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
        }
    }

    #[test]
    fn deny_wins_over_every_mode() {
        for mode in [
            TenantMode::Any,
            TenantMode::AllowList,
            TenantMode::Hook("h".into()),
        ] {
            let s = settings(mode, &["t"], &["t"]);
            assert_eq!(
                check("t", &s).map_err(|r| r.reason),
                Err(Reason::TenantDenied)
            );
        }
    }

    #[test]
    fn allow_list_admits_only_listed_tenants() {
        let s = settings(TenantMode::AllowList, &["a"], &[]);
        assert_eq!(check("a", &s), Ok(TenantDecision::Allowed));
        assert_eq!(
            check("b", &s).map_err(|r| r.reason),
            Err(Reason::TenantNotAllowed)
        );
    }

    #[test]
    fn any_admits_and_hook_defers() {
        assert_eq!(
            check("x", &settings(TenantMode::Any, &[], &[])),
            Ok(TenantDecision::Allowed)
        );
        assert_eq!(
            check("x", &settings(TenantMode::Hook("reg".into()), &[], &[])),
            Ok(TenantDecision::AskHook("reg".into()))
        );
    }
}
