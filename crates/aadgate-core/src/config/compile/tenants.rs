//! `[tenants]`: the tenant mode, allow/deny lists, the tenant file and issuer templates.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde_spanned::Spanned;

use super::{is_guid, Compiler};
use crate::config::error::{ConfigError, Reporter};
use crate::config::file::{self, ConfigFile};
use crate::config::model::{ConsentLost, TenantMode, TenantSettings};

impl Compiler<'_> {
    fn tenant_ids(&mut self, list: &[Spanned<String>], what: &str) -> HashSet<String> {
        let mut out = HashSet::new();
        for t in list {
            if is_guid(t.get_ref()) {
                out.insert(t.get_ref().to_ascii_lowercase());
            } else {
                self.r.error(
                    t.span(),
                    format!(
                        "{what} entry {:?} is not a tenant id; use the tenant's GUID (Azure portal > Microsoft Entra ID > Overview > Tenant ID), not a domain name",
                        t.get_ref()
                    ),
                );
            }
        }
        out
    }

    pub(super) fn tenants(
        &mut self,
        s: &Spanned<file::TenantsFile>,
        whole: &ConfigFile,
        shared: bool,
    ) -> Option<TenantSettings> {
        let f = s.get_ref();
        let mut allow = self.tenant_ids(&f.allow, "`allow`");
        let deny = self.tenant_ids(&f.deny, "`deny`");
        let mode = self.tenant_mode(f, whole, shared);
        if f.hook.is_some() && !matches!(mode, TenantMode::Hook(_)) {
            if let Some(h) = &f.hook {
                self.r
                    .error(h.span(), "`hook` is only used with mode = \"hook\"");
            }
        }
        let registry = f.registry.as_ref().map(|p| {
            if mode != TenantMode::Registry {
                self.r
                    .error(p.span(), "`registry` is only used with mode = \"registry\"");
            } else if shared {
                self.r.warn(p.span(), "with [store] kind = \"redis\" the registry lives in Redis; this file is neither read nor written");
            }
            self.path(p.get_ref())
        });
        let on_consent_lost = self.on_consent_lost(f);
        let file = f.file.as_ref().map(|p| {
            let path = self.path(p.get_ref());
            match load_tenant_file(&path) {
                Ok(extra) => allow.extend(extra),
                Err(e) => self.r.error(p.span(), e.to_string()),
            }
            path
        });
        let issuers: Vec<String> = match &f.issuers {
            None => self.cloud.issuers(),
            Some(list) => {
                if list.get_ref().is_empty() {
                    self.r.error(list.span(), "`issuers` must not be empty");
                }
                list.get_ref()
                    .iter()
                    .map(|i| {
                        if !i.get_ref().starts_with("https://")
                            && !i.get_ref().starts_with("http://")
                        {
                            self.r
                                .error(i.span(), format!("issuer {:?} is not a URL", i.get_ref()));
                        }
                        i.get_ref().clone()
                    })
                    .collect()
            }
        };
        Some(TenantSettings {
            mode,
            allow,
            deny,
            issuers,
            file,
            registry,
            on_consent_lost,
        })
    }

    /// `mode` (with `hook` and `registry` where it needs them).
    fn tenant_mode(
        &mut self,
        f: &file::TenantsFile,
        whole: &ConfigFile,
        shared: bool,
    ) -> TenantMode {
        match f.mode.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
            None | Some(("allow_list", _)) => TenantMode::AllowList,
            Some(("any", _)) => TenantMode::Any,
            Some(("hook", span)) => match &f.hook {
                None => {
                    self.r
                        .error(span, "mode = \"hook\" needs `hook = \"VALIDATOR\"`");
                    TenantMode::Any
                }
                Some(h) => {
                    if !whole.declared_validators.contains(h.get_ref()) {
                        self.r.error(
                            h.span(),
                            format!(
                                "no validator named {:?} (define [validators.{}])",
                                h.get_ref(),
                                h.get_ref()
                            ),
                        );
                    }
                    TenantMode::Hook(h.get_ref().clone())
                }
            },
            Some(("registry", span)) => {
                if f.registry.is_none() && !shared {
                    self.r.error(
                        span,
                        "mode = \"registry\" needs `registry = \"FILE\"` (the tenant registry's JSON file, e.g. /var/lib/aadgate/tenants.json), or [store] kind = \"redis\"",
                    );
                }
                TenantMode::Registry
            }
            Some((other, span)) => {
                self.r.error(
                    span,
                    format!(
                        "unknown tenant mode {other:?}; use \"allow_list\", \"any\", \"hook\" or \"registry\""
                    ),
                );
                TenantMode::AllowList
            }
        }
    }

    /// `on_consent_lost`: `"revoke"` (default) or `"keep"`.
    fn on_consent_lost(&mut self, f: &file::TenantsFile) -> ConsentLost {
        match f
            .on_consent_lost
            .as_ref()
            .map(|v| (v.get_ref().as_str(), v.span()))
        {
            None | Some(("revoke", _)) => ConsentLost::Revoke,
            Some(("keep", _)) => ConsentLost::Keep,
            Some((other, span)) => {
                self.r.error(
                    span,
                    format!("unknown on_consent_lost {other:?}; use \"revoke\" or \"keep\""),
                );
                ConsentLost::Revoke
            }
        }
    }
}

/// Why the tenant allow-list file gave no list.
#[derive(Debug, thiserror::Error)]
pub enum TenantFileError {
    /// The file cannot be read (missing, no permission, not UTF-8).
    #[error("tenant file {} cannot be read: {error}", path.display())]
    Read {
        /// The tenant file, as named by `[tenants] file` and resolved against the config folder.
        path: PathBuf,
        /// The I/O error reading it (`NotFound`, `PermissionDenied`, `InvalidData` for non-UTF-8).
        error: std::io::Error,
    },
    /// The file is read, but a line of it is wrong (TOML syntax, an entry that is not a GUID):
    /// the first such problem, at its line and column in the tenant file.
    #[error("in tenant file: {0}")]
    Invalid(ConfigError),
}

/// Reads the tenant allow-list file (`allow = ["GUID", …]`); errors name the file's own line.
pub fn load_tenant_file(path: &Path) -> Result<HashSet<String>, TenantFileError> {
    let text = std::fs::read_to_string(path).map_err(|error| TenantFileError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    let mut r = Reporter::new(path, &text);
    let parsed: file::TenantListFile = match toml::from_str(&text) {
        Ok(p) => p,
        Err(e) => {
            let err = r.at(e.span().unwrap_or(0..0), e.message().trim_end().to_string());
            return Err(TenantFileError::Invalid(err));
        }
    };
    let mut out = HashSet::new();
    for t in &parsed.allow {
        if is_guid(t.get_ref()) {
            out.insert(t.get_ref().to_ascii_lowercase());
        } else {
            r.error(
                t.span(),
                format!("{:?} is not a tenant id (GUID)", t.get_ref()),
            );
        }
    }
    match r.errors.into_iter().next() {
        Some(e) => Err(TenantFileError::Invalid(e)),
        None => Ok(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUID: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

    #[derive(Debug)]
    enum Want {
        Loads,
        Unreadable,
        BadLine(usize),
    }

    #[test]
    fn a_tenant_file_error_names_the_file_or_the_line_at_fault() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            path
        };
        let table = [
            (
                write("good.toml", &format!("allow = [\n  \"{GUID}\",\n]\n")),
                Want::Loads,
            ),
            (dir.path().join("missing.toml"), Want::Unreadable),
            (
                write("syntax.toml", "allow = [\n  \"a\"\n  \"b\"\n]\n"),
                Want::BadLine(3),
            ),
            (
                write(
                    "domain.toml",
                    &format!("allow = [\n  \"{GUID}\",\n  \"contoso.com\",\n]\n"),
                ),
                Want::BadLine(3),
            ),
        ];
        for (path, want) in table {
            match (want, load_tenant_file(&path)) {
                (Want::Loads, Ok(set)) => assert!(set.contains(GUID), "{}", path.display()),
                (Want::Unreadable, Err(TenantFileError::Read { path: p, .. })) => {
                    assert_eq!(p, path)
                }
                (Want::BadLine(line), Err(TenantFileError::Invalid(e))) => {
                    assert_eq!((e.file.as_path(), e.line), (path.as_path(), line))
                }
                (want, got) => panic!("{}: want {want:?}, got {got:?}", path.display()),
            }
        }
    }
}
