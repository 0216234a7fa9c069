//! `[validators.NAME]`: http and CEL hooks, and the headers they may add upstream.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use http::HeaderName;
use serde_spanned::Spanned;

use super::{is_hop_or_reserved, Compiler};
use crate::config::file::{self, ConfigFile};
use crate::config::model::{
    CelValidatorSettings, HttpValidatorSettings, OnError, SourcePosition, ValidatorKind,
    ValidatorSettings,
};

impl Compiler<'_> {
    /// Every `[validators.NAME]`; an invalid one is reported and left out.
    pub(super) fn validators(
        &mut self,
        map: &BTreeMap<String, Spanned<file::ValidatorFile>>,
    ) -> HashMap<String, ValidatorSettings> {
        let mut out = HashMap::new();
        for (name, v) in map {
            let f = v.get_ref();
            let validator = match f.kind.get_ref().as_str() {
                "http" => self.http_validator(name, v).map(ValidatorKind::Http),
                "cel" => self.cel_validator(name, v).map(ValidatorKind::Cel),
                other => {
                    self.r.error(
                        f.kind.span(),
                        format!("unknown validator kind {other:?}; use \"http\" or \"cel\""),
                    );
                    None
                }
            };
            if let Some(kind) = validator {
                let name = name.clone();
                out.insert(name.clone(), ValidatorSettings { name, kind });
            }
        }
        out
    }

    /// A kind = "http" validator.
    fn http_validator(
        &mut self,
        name: &str,
        v: &Spanned<file::ValidatorFile>,
    ) -> Option<HttpValidatorSettings> {
        let f = v.get_ref();
        for (present, key) in [(f.expr.is_some(), "expr"), (f.message.is_some(), "message")] {
            if present {
                self.r.error(
                    v.span(),
                    format!("`{key}` is for kind = \"cel\" validators"),
                );
            }
        }
        let Some(url) = &f.url else {
            self.r.error(
                v.span(),
                format!("validator {name:?} (kind = \"http\") needs `url`"),
            );
            return None;
        };
        let url_s = self.url(url, "url")?;
        let on_error = match f
            .on_error
            .as_ref()
            .map(|o| (o.get_ref().as_str(), o.span()))
        {
            None | Some(("deny", _)) => OnError::Deny,
            Some(("allow", _)) => OnError::Allow,
            Some((other, span)) => {
                self.r.error(
                    span,
                    format!("on_error must be \"deny\" or \"allow\", not {other:?}"),
                );
                OnError::Deny
            }
        };
        let headers = self.hook_headers(f.headers.as_ref());
        Some(HttpValidatorSettings {
            url: url_s,
            headers,
            timeout: self.dur(&f.timeout, Duration::from_millis(500)),
            cache_ttl: self.dur(&f.cache_ttl, Duration::from_secs(60)),
            on_error,
        })
    }

    /// A kind = "cel" validator, with the position of its expression in the file (the runtime
    /// compiles it and reports a compile error there).
    fn cel_validator(
        &mut self,
        name: &str,
        v: &Spanned<file::ValidatorFile>,
    ) -> Option<CelValidatorSettings> {
        let f = v.get_ref();
        for (present, key) in [
            (f.url.is_some(), "url"),
            (f.timeout.is_some(), "timeout"),
            (f.cache_ttl.is_some(), "cache_ttl"),
            (f.on_error.is_some(), "on_error"),
            (f.headers.is_some(), "headers"),
        ] {
            if present {
                self.r.error(
                    v.span(),
                    format!("`{key}` is for kind = \"http\" validators"),
                );
            }
        }
        let Some(expr) = &f.expr else {
            self.r.error(
                v.span(),
                format!("validator {name:?} (kind = \"cel\") needs `expr`"),
            );
            return None;
        };
        let message = f.message.as_ref().map_or_else(
            || format!("denied by validator {name:?}"),
            |m| m.get_ref().clone(),
        );
        let (line, col) = self.r.position(self.cel_error_offset(expr, 1, 1));
        Some(CelValidatorSettings {
            expr: expr.get_ref().clone(),
            message,
            at: SourcePosition {
                file: self.r.file().to_path_buf(),
                line,
                col,
            },
        })
    }

    /// The source offset of (`line`, `col`) of `expr`: the expression starts
    /// after the opening quote (or triple quote) of the TOML string.
    fn cel_error_offset(&self, expr: &Spanned<String>, line: usize, col: usize) -> usize {
        let raw_start = expr.span().start;
        let mut quote_len = self.quote_len(raw_start);
        // TOML drops a newline right after an opening triple quote.
        if quote_len == 3 {
            let rest = &self.r.source()[raw_start + 3..];
            if rest.starts_with("\r\n") {
                quote_len += 2;
            } else if rest.starts_with('\n') {
                quote_len += 1;
            }
        }
        self.offset_in_expr(raw_start + quote_len, expr.get_ref(), line, col)
    }

    /// A validator's `headers`: lower-case header names the hook may add upstream. `x-auth-*`,
    /// hop-by-hop and framing headers, and names with `_` (read as `-` by CGI/WSGI servers, so
    /// ambiguous) are errors at their position. Claim headers are checked once every route is
    /// known ([`Compiler::validator_headers`]).
    fn hook_headers(&mut self, list: Option<&Spanned<Vec<Spanned<String>>>>) -> Vec<HeaderName> {
        let mut out = Vec::new();
        for h in list.map(|l| l.get_ref().as_slice()).unwrap_or_default() {
            let lower = h.get_ref().to_ascii_lowercase();
            let Ok(name) = HeaderName::from_bytes(lower.as_bytes()) else {
                self.r.error(
                    h.span(),
                    format!("{:?} is not a valid header name", h.get_ref()),
                );
                continue;
            };
            if lower.contains('_') {
                self.r.error(
                    h.span(),
                    format!(
                        "header {lower:?} contains '_'; many servers read it as '-', so write {:?}",
                        lower.replace('_', "-")
                    ),
                );
            } else if lower.starts_with("x-auth-") {
                self.r.error(
                    h.span(),
                    format!("{lower:?} cannot be a validator header: x-auth-* headers carry the verified identity and come from the token only"),
                );
            } else if is_hop_or_reserved(&lower) || lower == "proxy-connection" {
                self.r.error(
                    h.span(),
                    format!("{lower:?} cannot be a validator header: the proxy owns it"),
                );
            } else if !out.contains(&name) {
                out.push(name);
            }
        }
        out
    }

    /// Every header any validator may add (`Config::validator_header_names`); a name that is
    /// also a claim header of some route (or a default claim header) is an error at its position.
    pub(super) fn validator_headers(
        &mut self,
        whole: &ConfigFile,
        claim_headers: &HashSet<HeaderName>,
    ) -> HashSet<HeaderName> {
        let mut out = HashSet::new();
        for v in whole.validators.values() {
            let Some(list) = &v.get_ref().headers else {
                continue;
            };
            for h in list.get_ref() {
                let lower = h.get_ref().to_ascii_lowercase();
                let Ok(name) = HeaderName::from_bytes(lower.as_bytes()) else {
                    continue; // reported by hook_headers
                };
                if claim_headers.contains(&name) {
                    self.r.error(
                        h.span(),
                        format!(
                            "{lower:?} is a claim header; a validator cannot set identity headers"
                        ),
                    );
                } else {
                    out.insert(name);
                }
            }
        }
        out
    }

    fn quote_len(&self, at: usize) -> usize {
        let src = self.r.source();
        let rest = &src[at.min(src.len())..];
        if rest.starts_with("\"\"\"") || rest.starts_with("'''") {
            3
        } else {
            1
        }
    }

    fn offset_in_expr(&self, start: usize, expr: &str, line: usize, col: usize) -> usize {
        // CEL positions are 1-based line and column within the expression.
        let mut off = 0usize;
        for (i, l) in expr.split_inclusive('\n').enumerate() {
            if i + 1 == line {
                let c = l
                    .char_indices()
                    .nth(col.saturating_sub(1))
                    .map_or(l.len(), |(b, _)| b);
                return start + off + c;
            }
            off += l.len();
        }
        start
    }
}
