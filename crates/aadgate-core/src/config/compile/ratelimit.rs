//! `[[rate_limits]]`: GCRA limits per tenant, client, tenant and client, or user (SPEC
//! section 11).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_spanned::Spanned;

use super::{is_guid, Compiler};
use crate::config::file::{RateLimitFile, RateOverrideFile, Raw};
use crate::config::model::{AuthMode, RateLimitKey, RateLimitSettings, Route};

impl Compiler<'_> {
    /// Every `[[rate_limits]]` entry, in file order; every mistake is reported and the entry
    /// left out.
    pub(super) fn rate_limits(
        &mut self,
        list: &[Spanned<RateLimitFile>],
        routes: &[Arc<Route>],
    ) -> Vec<RateLimitSettings> {
        let mut names = HashSet::new();
        let mut out = Vec::new();
        for entry in list {
            let f = entry.get_ref();
            let name = f.name.get_ref();
            if !valid_limit_name(name) {
                self.r.error(
                    f.name.span(),
                    format!("rate limit name {name:?} must be non-empty and use only letters, digits, '-', '_' and '.' (it is a metrics label and a header value)"),
                );
            } else if !names.insert(name.clone()) {
                self.r
                    .error(f.name.span(), format!("duplicate rate limit name {name:?}"));
            }
            if let Some(limit) = self.rate_limit(f, routes) {
                out.push(limit);
            }
        }
        out
    }

    /// One entry; `None` when something in it is wrong (reported).
    fn rate_limit(
        &mut self,
        f: &RateLimitFile,
        routes: &[Arc<Route>],
    ) -> Option<RateLimitSettings> {
        let errors = self.r.errors.len();
        let key = match f.key.get_ref().as_str() {
            "tenant" => Some(RateLimitKey::Tenant),
            "client" => Some(RateLimitKey::Client),
            "tenant_client" => Some(RateLimitKey::TenantClient),
            "user" => Some(RateLimitKey::User),
            other => {
                self.r.error(
                    f.key.span(),
                    format!("rate limit key {other:?} is not one of \"tenant\", \"client\", \"tenant_client\", \"user\""),
                );
                None
            }
        };
        let rate = self.at_least_one(&f.rate, "rate");
        let period = self.raw(&f.period).map(|d| d.get());
        if let Some(p) = period.filter(|p| *p < Duration::from_millis(1)) {
            self.r.error(
                f.period.span(),
                format!("`period` must be at least \"1ms\", not {p:?}"),
            );
        }
        let burst = match &f.burst {
            Some(b) => self.at_least_one(b, "burst"),
            None => rate,
        };
        let limit_routes = f.routes.as_ref().map(|l| self.limit_routes(l, routes));
        let overrides = match (&f.overrides, key, rate, burst) {
            (Some(o), Some(key), Some(rate), Some(_)) => self.overrides(o, key, rate),
            _ => BTreeMap::new(),
        };
        if self.r.errors.len() > errors {
            return None;
        }
        Some(RateLimitSettings {
            name: f.name.get_ref().clone(),
            key: key?,
            rate: rate?,
            period: period?,
            burst: burst?,
            routes: limit_routes,
            overrides,
        })
    }

    /// A count that must be at least 1.
    fn at_least_one(&mut self, v: &Raw<u64>, what: &str) -> Option<u64> {
        match self.raw(v)? {
            0 => {
                self.r
                    .error(v.span(), format!("`{what}` must be at least 1"));
                None
            }
            n => Some(n),
        }
    }

    /// `routes`: names of authenticated routes, at least one.
    fn limit_routes(
        &mut self,
        list: &Spanned<Vec<Spanned<String>>>,
        routes: &[Arc<Route>],
    ) -> Vec<String> {
        if list.get_ref().is_empty() {
            self.r.error(
                list.span(),
                "`routes` is empty: list at least one route, or leave `routes` out to limit every authenticated route",
            );
        }
        let mut out = Vec::new();
        for name in list.get_ref() {
            match routes.iter().find(|r| *r.name == **name.get_ref()) {
                None => self.r.error(
                    name.span(),
                    format!("no route named {:?} (routes are [[routes]] tables with `name = …`)", name.get_ref()),
                ),
                Some(r) if r.auth == AuthMode::Anonymous => self.r.error(
                    name.span(),
                    format!("route {:?} is anonymous: rate limits count verified callers, so they apply only to routes with auth = \"required\"", name.get_ref()),
                ),
                Some(_) => out.push(name.get_ref().clone()),
            }
        }
        out
    }

    /// `[rate_limits.overrides]`: each key value in its canonical form with its `(rate, burst)`.
    fn overrides(
        &mut self,
        table: &Spanned<BTreeMap<Spanned<String>, Spanned<RateOverrideFile>>>,
        key: RateLimitKey,
        rate: u64,
    ) -> BTreeMap<String, (u64, u64)> {
        let mut out = BTreeMap::new();
        for (value, o) in table.get_ref() {
            let canonical = match canonical_key_value(key, value.get_ref()) {
                Some(c) => c,
                None => {
                    self.r.error(
                        value.span(),
                        format!(
                            "override key {:?} is not a {} key value: write {}",
                            value.get_ref(),
                            key_name(key),
                            key_form(key)
                        ),
                    );
                    continue;
                }
            };
            let f = o.get_ref();
            if f.rate.is_none() && f.burst.is_none() {
                self.r
                    .error(o.span(), "an override sets `rate`, `burst` or both");
                continue;
            }
            let o_rate = f.rate.as_ref().and_then(|r| self.at_least_one(r, "rate"));
            let o_burst = f.burst.as_ref().and_then(|b| self.at_least_one(b, "burst"));
            let pair = match (o_rate, o_burst) {
                (Some(r), Some(b)) => (r, b),
                (Some(r), None) if f.burst.is_none() => (r, r),
                (None, Some(b)) if f.rate.is_none() => (rate, b),
                _ => continue,
            };
            if out.insert(canonical.clone(), pair).is_some() {
                self.r.error(
                    value.span(),
                    format!(
                        "duplicate override for {canonical:?} (key values compare in lower case)"
                    ),
                );
            }
        }
        out
    }
}

/// Names: letters, digits, `-`, `_`, `.`; they go unquoted-safe into metrics labels and into
/// the headers' sf-strings.
fn valid_limit_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The key value as the limiter builds it from a verified token: GUIDs in lower case; the
/// user part of a `user` key is lower-cased only when it is an `oid` (a GUID), since a `sub`
/// is case-sensitive. `None` when `value` is not of the key's form.
fn canonical_key_value(key: RateLimitKey, value: &str) -> Option<String> {
    let guid = |s: &str| is_guid(s).then(|| s.to_ascii_lowercase());
    match key {
        RateLimitKey::Tenant | RateLimitKey::Client => guid(value),
        RateLimitKey::TenantClient => {
            let (t, c) = value.split_once(':')?;
            Some(format!("{}:{}", guid(t)?, guid(c)?))
        }
        RateLimitKey::User => {
            let (t, u) = value.split_once(':')?;
            if u.is_empty() {
                return None;
            }
            let user = guid(u).unwrap_or_else(|| u.to_string());
            Some(format!("{}:{user}", guid(t)?))
        }
    }
}

fn key_name(key: RateLimitKey) -> &'static str {
    match key {
        RateLimitKey::Tenant => "tenant",
        RateLimitKey::Client => "client",
        RateLimitKey::TenantClient => "tenant_client",
        RateLimitKey::User => "user",
    }
}

fn key_form(key: RateLimitKey) -> &'static str {
    match key {
        RateLimitKey::Tenant => "the tenant id (a GUID)",
        RateLimitKey::Client => "the client application id (appid/azp, a GUID)",
        RateLimitKey::TenantClient => "\"<tenant id>:<client id>\"",
        RateLimitKey::User => {
            "\"<tenant id>:<oid>\" (or \"<tenant id>:<sub>\" for tokens without oid)"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    const C: &str = "0F8A6A48-2C1B-4C57-9D4A-8F0C2B8C1D11";

    #[test]
    fn key_values_are_canonical_or_refused() {
        let c = C.to_ascii_lowercase();
        let table: [(RateLimitKey, String, Option<String>); 9] = [
            (RateLimitKey::Tenant, T.to_uppercase(), Some(T.into())),
            (RateLimitKey::Tenant, "contoso.com".into(), None),
            (RateLimitKey::Client, C.into(), Some(c.clone())),
            (
                RateLimitKey::TenantClient,
                format!("{T}:{C}"),
                Some(format!("{T}:{c}")),
            ),
            (RateLimitKey::TenantClient, T.into(), None),
            (
                RateLimitKey::User,
                format!("{T}:{C}"),
                Some(format!("{T}:{c}")),
            ),
            (
                RateLimitKey::User,
                format!("{T}:AbC-sub"),
                Some(format!("{T}:AbC-sub")),
            ),
            (RateLimitKey::User, format!("{T}:"), None),
            (RateLimitKey::User, "x:y".into(), None),
        ];
        for (key, value, want) in table {
            assert_eq!(canonical_key_value(key, &value), want, "{key:?} {value}");
        }
    }

    fn load(limits: &str) -> Result<Vec<RateLimitSettings>, crate::config::ConfigErrors> {
        let toml = format!(
            r#"
[server]
listen = ["127.0.0.1:8080"]
[identity]
jwks_uri = "http://127.0.0.1:1/keys"
audiences = ["api://orders"]
[tenants]
mode = "any"
[[routes]]
name = "orders"
path_prefix = "/orders/"
upstream = "http://127.0.0.1:1"
[[routes]]
name = "public"
path_prefix = "/public/"
upstream = "http://127.0.0.1:1"
auth = "anonymous"
{limits}"#
        );
        crate::config::load_str(std::path::Path::new("t.toml"), &toml).map(|c| c.rate_limits)
    }

    #[test]
    fn a_limit_defaults_burst_to_rate_and_routes_to_every_authenticated_route() {
        let limits =
            load("[[rate_limits]]\nname = \"t\"\nkey = \"tenant\"\nrate = 10\nperiod = \"1s\"\n")
                .expect("valid");
        assert_eq!(limits.len(), 1);
        assert_eq!(limits[0].burst, 10);
        assert_eq!(limits[0].routes, None);
        assert_eq!(limits[0].period, Duration::from_secs(1));
    }

    #[test]
    fn overrides_are_kept_by_canonical_key_value_with_defaults_filled_in() {
        let limits = load(&format!(
            "[[rate_limits]]\nname = \"t\"\nkey = \"tenant\"\nrate = 10\nperiod = \"1s\"\nburst = 20\n[rate_limits.overrides]\n\"{}\" = {{ rate = 100 }}\n\"11111111-1111-4111-8111-111111111111\" = {{ burst = 5 }}\n",
            T.to_uppercase()
        ))
        .expect("valid");
        let o = &limits[0].overrides;
        assert_eq!(o.get(T), Some(&(100, 100)));
        assert_eq!(
            o.get("11111111-1111-4111-8111-111111111111"),
            Some(&(10, 5))
        );
    }

    #[test]
    fn each_mistake_is_reported_at_its_value() {
        let table = [
            ("name = \"t\"\nkey = \"ip\"\nrate = 1\nperiod = \"1s\"", "key \"ip\""),
            ("name = \"t\"\nkey = \"tenant\"\nrate = 0\nperiod = \"1s\"", "`rate` must be at least 1"),
            ("name = \"t\"\nkey = \"tenant\"\nrate = 1\nperiod = \"0s\"", "at least \"1ms\""),
            ("name = \"t\"\nkey = \"tenant\"\nrate = 1\nperiod = \"1s\"\nburst = 0", "`burst` must be at least 1"),
            ("name = \"t t\"\nkey = \"tenant\"\nrate = 1\nperiod = \"1s\"", "letters, digits"),
            ("name = \"t\"\nkey = \"tenant\"\nrate = 1\nperiod = \"1s\"\nroutes = [\"nope\"]", "no route named"),
            ("name = \"t\"\nkey = \"tenant\"\nrate = 1\nperiod = \"1s\"\nroutes = [\"public\"]", "anonymous"),
            ("name = \"t\"\nkey = \"tenant\"\nrate = 1\nperiod = \"1s\"\nroutes = []", "is empty"),
            ("name = \"t\"\nkey = \"tenant\"\nrate = 1\nperiod = \"1s\"\n[rate_limits.overrides]\n\"contoso\" = { rate = 2 }", "not a tenant key value"),
            ("name = \"t\"\nkey = \"tenant\"\nrate = 1\nperiod = \"1s\"\n[rate_limits.overrides]\n\"72f988bf-86f1-41af-91ab-2d7cd011db47\" = {}", "sets `rate`, `burst`"),
            ("name = \"t\"\nkey = \"tenant\"\nperiod = \"1s\"", "missing field `rate`"),
            ("name = \"t\"\nkey = \"tenant\"\nrate = 1\nperiod = \"1s\"\nwindow = 3", "unknown field `window`"),
        ];
        for (body, want) in table {
            let err = load(&format!("[[rate_limits]]\n{body}\n")).expect_err(body);
            let first = &err.0[0];
            assert!(first.message.contains(want), "{body}: {}", first.message);
            assert!(first.line >= 18, "{body}: at {}:{}", first.line, first.col);
        }
    }

    #[test]
    fn two_limits_with_one_name_are_refused() {
        let one = "[[rate_limits]]\nname = \"t\"\nkey = \"tenant\"\nrate = 1\nperiod = \"1s\"\n";
        let err = load(&format!("{one}{one}")).expect_err("duplicate");
        assert!(err.0[0].message.contains("duplicate rate limit name"));
        assert_eq!(err.0[0].line, 24);
    }
}
