//! `[clients]`: the client-application allow-list and the minimum client authentication strength.

use std::collections::HashSet;

use serde_spanned::Spanned;

use super::Compiler;
use crate::config::file::{self, Raw};
use crate::config::model::ClientSettings;

impl Compiler<'_> {
    pub(super) fn clients(&mut self, s: Option<&Spanned<file::ClientsFile>>) -> ClientSettings {
        let Some(s) = s else {
            return ClientSettings::default();
        };
        let f = s.get_ref();
        let allow = self.client_ids(&f.allow);
        let min_auth_strength = match &f.min_auth_strength {
            Some(m) => self.strength(m),
            None => 0,
        };
        ClientSettings {
            allow,
            min_auth_strength,
        }
    }

    pub(super) fn strength(&mut self, m: &Raw<u8>) -> u8 {
        let Some(v) = self.raw(m) else { return 0 };
        if v > 2 {
            self.r.error(
                m.span(),
                "`min_auth_strength` is 0 (public client), 1 (secret) or 2 (certificate)",
            );
        }
        v
    }

    pub(super) fn client_ids(&mut self, list: &[Spanned<String>]) -> HashSet<String> {
        let mut out = HashSet::new();
        for c in list {
            if c.get_ref().trim().is_empty() {
                self.r.error(c.span(), "a client id must not be empty");
            }
            out.insert(c.get_ref().to_ascii_lowercase());
        }
        out
    }
}
