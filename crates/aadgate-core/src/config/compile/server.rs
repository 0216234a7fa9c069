//! `[server]`: listeners, limits, path case, timeouts and TLS.

use std::net::SocketAddr;
use std::time::Duration;

use serde_spanned::Spanned;

use super::{Compiler, DEFAULT_MAX_TOKEN_BYTES, DEFAULT_MAX_URI_BYTES};
use crate::config::file;
use crate::config::model::{PathCase, ServerSettings, TlsSettings};

impl Compiler<'_> {
    fn socket_addr(&mut self, s: &Spanned<String>) -> Option<SocketAddr> {
        match s.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.r.error(
                    s.span(),
                    format!(
                        "{:?} is not a socket address; write IP:PORT, e.g. \"127.0.0.1:8080\" or \"[::]:8080\"",
                        s.get_ref()
                    ),
                );
                None
            }
        }
    }

    pub(super) fn server(&mut self, s: &Spanned<file::ServerFile>) -> Option<ServerSettings> {
        let f = s.get_ref();
        let mut listen = Vec::new();
        if f.listen.get_ref().is_empty() {
            self.r
                .error(f.listen.span(), "`listen` needs at least one address");
        }
        for a in f.listen.get_ref() {
            if let Some(a) = self.socket_addr(a) {
                listen.push(a);
            }
        }
        let admin_listen = f.admin_listen.as_ref().and_then(|a| self.socket_addr(a));
        let workers = match &f.workers {
            Some(w) if *w.get_ref() == 0 => {
                self.r.error(w.span(), "`workers` must be at least 1");
                1
            }
            Some(w) => *w.get_ref(),
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let max_token_bytes = match &f.max_token_bytes {
            Some(m) if *m.get_ref() < 64 => {
                self.r
                    .error(m.span(), "`max_token_bytes` must be at least 64");
                DEFAULT_MAX_TOKEN_BYTES
            }
            Some(m) => *m.get_ref(),
            None => DEFAULT_MAX_TOKEN_BYTES,
        };
        let max_uri_bytes = match &f.max_uri_bytes {
            Some(m) if *m.get_ref() < 64 => {
                self.r
                    .error(m.span(), "`max_uri_bytes` must be at least 64");
                DEFAULT_MAX_URI_BYTES
            }
            Some(m) => *m.get_ref(),
            None => DEFAULT_MAX_URI_BYTES,
        };
        self.path_case = match f.path_case.as_ref().map(|p| (p, p.get_ref().as_str())) {
            None | Some((_, "insensitive")) => PathCase::Insensitive,
            Some((_, "sensitive")) => PathCase::Sensitive,
            Some((p, other)) => {
                self.r.error(
                    p.span(),
                    format!("path_case {other:?} is not \"insensitive\" or \"sensitive\""),
                );
                PathCase::Insensitive
            }
        };
        let tls = f.tls.as_ref().map(|t| {
            let t = t.get_ref();
            let cert = self.path(t.cert.get_ref());
            let key = self.path(t.key.get_ref());
            if !cert.is_file() {
                self.r.error(
                    t.cert.span(),
                    format!("TLS certificate {} cannot be read", cert.display()),
                );
            }
            if !key.is_file() {
                self.r.error(
                    t.key.span(),
                    format!("TLS key {} cannot be read", key.display()),
                );
            }
            TlsSettings { cert, key }
        });
        Some(ServerSettings {
            listen,
            admin_listen,
            workers,
            max_token_bytes,
            max_uri_bytes,
            path_case: self.path_case,
            upstream_connect_timeout: self.dur(&f.upstream_connect_timeout, Duration::from_secs(5)),
            upstream_read_timeout: self.dur(&f.upstream_read_timeout, Duration::from_secs(60)),
            shutdown_grace: self.dur(&f.shutdown_grace, Duration::from_secs(30)),
            upgrade_sock: f.upgrade_sock.as_ref().map(|p| self.path(p.get_ref())),
            tls,
            h2c: f.h2c.as_ref().and_then(|b| self.raw(b)).unwrap_or(false),
            tunnel_idle_timeout: self.dur_at_least(
                &f.tunnel_idle_timeout,
                Duration::from_secs(300),
                Duration::from_secs(1),
                "`tunnel_idle_timeout` must be at least 1s",
            ),
        })
    }
}
