//! Where the store is: one Redis server, a Sentinel-managed primary, or a Redis Cluster, all
//! named by one URL so that `AADGATE_STORE_URL` can carry any of them with its credentials.
//!
//! - `redis://[user:password@]host[:port][/db]`, `rediss://…` (TLS): one server;
//! - `redis+sentinel://[user:password@]host[:port][,host[:port]…]/service[/db]`,
//!   `rediss+sentinel://…`: the primary that the Sentinels at those addresses name for `service`
//!   (default port 26379). The credentials are the data nodes'; Sentinels that require their
//!   own are given `?sentinel_username=…&sentinel_password=…`;
//! - `redis+cluster://[user:password@]host[:port][,host[:port]…]`, `rediss+cluster://…`: a
//!   Redis Cluster, reached through any of these seed nodes (default port 6379). A cluster has
//!   only database 0.

use std::fmt;

/// A parsed store URL.
#[derive(Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server; the URL as the `redis` crate reads it.
    Standalone(String),
    /// A primary found through Sentinel.
    Sentinel(Sentinel),
    /// A Redis Cluster.
    Cluster(Cluster),
}

/// `redis+sentinel://`.
#[derive(Clone, PartialEq, Eq)]
pub struct Sentinel {
    /// The Sentinels' addresses.
    pub sentinels: Vec<(String, u16)>,
    /// The monitored service (the `sentinel monitor` name).
    pub service: String,
    /// The database on the primary.
    pub db: i64,
    /// TLS to the Sentinels and to the primary.
    pub tls: bool,
    /// ACL user and password of the data nodes.
    pub auth: Credentials,
    /// ACL user and password of the Sentinels, when they require one.
    pub sentinel_auth: Credentials,
}

/// `redis+cluster://`.
#[derive(Clone, PartialEq, Eq)]
pub struct Cluster {
    /// Seed nodes.
    pub nodes: Vec<(String, u16)>,
    /// TLS to every node.
    pub tls: bool,
    /// ACL user and password.
    pub auth: Credentials,
}

/// An optional ACL user and password.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// The ACL user (none: `default`).
    pub username: Option<String>,
    /// The password.
    pub password: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisTarget::Standalone(url) => {
                f.debug_tuple("Standalone").field(&redact(url)).finish()
            }
            RedisTarget::Sentinel(s) => f
                .debug_struct("Sentinel")
                .field("sentinels", &s.sentinels)
                .field("service", &s.service)
                .field("db", &s.db)
                .field("tls", &s.tls)
                .field("auth", &s.auth)
                .finish(),
            RedisTarget::Cluster(c) => f
                .debug_struct("Cluster")
                .field("nodes", &c.nodes)
                .field("tls", &c.tls)
                .field("auth", &c.auth)
                .finish(),
        }
    }
}

/// What a store URL must look like, for error messages.
pub const URL_FORMS: &str = "redis://[user:password@]host[:port][/db], \
redis+sentinel://[user:password@]host[:port][,host[:port]…]/service[/db] or \
redis+cluster://[user:password@]host[:port][,host[:port]…] (rediss… for TLS)";

impl RedisTarget {
    /// Reads a store URL; the error says what is wrong with it (never repeating a password).
    pub fn parse(url: &str) -> Result<RedisTarget, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("no scheme; use {URL_FORMS}"))?;
        let (tls, topology) = match scheme.to_ascii_lowercase().as_str() {
            "redis" => (false, ""),
            "rediss" => (true, ""),
            "redis+sentinel" => (false, "sentinel"),
            "rediss+sentinel" => (true, "sentinel"),
            "redis+cluster" => (false, "cluster"),
            "rediss+cluster" => (true, "cluster"),
            other => return Err(format!("unknown scheme {other:?}; use {URL_FORMS}")),
        };
        if topology.is_empty() {
            return match reqwest::Url::parse(url) {
                Ok(u) if u.host_str().is_some_and(|h| !h.is_empty()) => {
                    Ok(RedisTarget::Standalone(url.to_string()))
                }
                _ => Err(format!("not a URL with a host; use {URL_FORMS}")),
            };
        }
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, q),
            None => (rest, ""),
        };
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, p),
            None => (rest, ""),
        };
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let auth = credentials(userinfo)?;
        let default_port = if topology == "sentinel" { 26379 } else { 6379 };
        let nodes = hosts
            .split(',')
            .map(|h| host_port(h, default_port))
            .collect::<Result<Vec<_>, _>>()?;
        let mut sentinel_auth = Credentials::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = decode(v)?;
            match (topology, k) {
                ("sentinel", "sentinel_username") => sentinel_auth.username = Some(v),
                ("sentinel", "sentinel_password") => sentinel_auth.password = Some(v),
                _ => return Err(format!("unknown URL parameter {k:?}")),
            }
        }
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        if topology == "cluster" {
            return match segments.as_slice() {
                [] | ["0"] => Ok(RedisTarget::Cluster(Cluster { nodes, tls, auth })),
                _ => Err("a Redis Cluster has only database 0: drop the path".into()),
            };
        }
        let (service, db) = match segments.as_slice() {
            [service] => (*service, 0),
            [service, db] => (
                *service,
                db.parse::<i64>()
                    .ok()
                    .filter(|d| *d >= 0)
                    .ok_or_else(|| format!("database {db:?} is not a number"))?,
            ),
            _ => {
                return Err(
                    "a Sentinel URL names the monitored service after the addresses: \
                     redis+sentinel://host:26379/mymaster[/db]"
                        .into(),
                )
            }
        };
        Ok(RedisTarget::Sentinel(Sentinel {
            sentinels: nodes,
            service: decode(service)?,
            db,
            tls,
            auth,
            sentinel_auth,
        }))
    }
}

/// `user:password` (percent-encoded) of a URL.
fn credentials(userinfo: Option<&str>) -> Result<Credentials, String> {
    let Some(userinfo) = userinfo else {
        return Ok(Credentials::default());
    };
    let (user, password) = match userinfo.split_once(':') {
        Some((u, p)) => (u, Some(p)),
        None => (userinfo, None),
    };
    Ok(Credentials {
        username: Some(decode(user)?).filter(|u| !u.is_empty()),
        password: password.map(decode).transpose()?,
    })
}

/// `host[:port]` or `[v6]:port`.
fn host_port(text: &str, default_port: u16) -> Result<(String, u16), String> {
    let (host, port) = if let Some(v6) = text.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{text:?}: an IPv6 address needs its closing ]"))?;
        (host, after.strip_prefix(':'))
    } else {
        match text.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        }
    };
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
    {
        return Err(format!("{text:?} is not a host[:port]"));
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{text:?}: the port must be 1 to 65535"))?,
    };
    Ok((host.to_string(), port))
}

/// Percent-decoding of a URL part.
fn decode(text: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| "a URL part is not UTF-8 once decoded".to_string())
}

/// The URL with every password replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<invalid url>".to_string();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{hosts}"),
            None => format!("{userinfo}@{hosts}"),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if k.contains("password") => format!("{k}=***"),
                    _ => p.to_string(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standalone_url_is_kept_as_the_redis_crate_reads_it() {
        let t = RedisTarget::parse("rediss://app:s3cret@redis.internal:6380/2").unwrap();
        assert_eq!(
            t,
            RedisTarget::Standalone("rediss://app:s3cret@redis.internal:6380/2".into())
        );
        assert!(!format!("{t:?}").contains("s3cret"));
        assert!(RedisTarget::parse("redis://").is_err());
        assert!(RedisTarget::parse("http://x:6379").is_err());
        assert!(RedisTarget::parse("redis.internal:6379").is_err());
    }

    #[test]
    fn a_sentinel_url_lists_the_sentinels_then_the_service() {
        let t = RedisTarget::parse(
            "redis+sentinel://app:p%40ss@s1:26379,s2,[::1]:26380/mymaster/3?sentinel_password=x",
        )
        .unwrap();
        let RedisTarget::Sentinel(s) = t else {
            panic!("{t:?}")
        };
        assert_eq!(
            s.sentinels,
            vec![
                ("s1".to_string(), 26379),
                ("s2".to_string(), 26379),
                ("::1".to_string(), 26380)
            ]
        );
        assert_eq!((s.service.as_str(), s.db, s.tls), ("mymaster", 3, false));
        assert_eq!(s.auth.username.as_deref(), Some("app"));
        assert_eq!(s.auth.password.as_deref(), Some("p@ss"));
        assert_eq!(s.sentinel_auth.password.as_deref(), Some("x"));
        assert!(!format!("{s:?}", s = RedisTarget::Sentinel(s.clone())).contains("p@ss"));
        for bad in [
            "redis+sentinel://s1:26379",
            "redis+sentinel://s1:26379/m/x",
            "redis+sentinel://s1:0/m",
            "redis+sentinel://s1:26379,/m",
            "redis+sentinel://s1/m?password=x",
        ] {
            assert!(RedisTarget::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_cluster_url_lists_seed_nodes_and_has_no_database() {
        let t = RedisTarget::parse("rediss+cluster://:pw@n1,n2:7001").unwrap();
        let RedisTarget::Cluster(c) = t else {
            panic!("{t:?}")
        };
        assert_eq!(
            c.nodes,
            vec![("n1".to_string(), 6379), ("n2".to_string(), 7001)]
        );
        assert!(c.tls);
        assert_eq!(c.auth.username, None);
        assert_eq!(c.auth.password.as_deref(), Some("pw"));
        assert!(RedisTarget::parse("redis+cluster://n1/0").is_ok());
        assert!(RedisTarget::parse("redis+cluster://n1/1").is_err());
    }

    #[test]
    fn redaction_hides_every_password() {
        assert_eq!(
            redact("redis+sentinel://u:secret@s1,s2/m?sentinel_password=other&x=1"),
            "redis+sentinel://u:***@s1,s2/m?sentinel_password=***&x=1"
        );
        assert_eq!(redact("redis://h:6379/0"), "redis://h:6379/0");
        assert_eq!(redact("rediss://:pw@h"), "rediss://:***@h");
        assert_eq!(redact("garbage"), "<invalid url>");
    }
}
