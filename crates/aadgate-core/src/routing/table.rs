//! The route table: the same choice as [`select`](super::select) — host, methods, longest
//! `path_prefix`, first listed on ties, a prefix ending in `/` also covering the bare path — in
//! time linear in the path's length, whatever the number of routes.
//!
//! Routes are grouped by `host` (one group for routes without one); each group is a byte trie of
//! the normalized prefixes. A request walks its path down the trie of its host and the trie of
//! host-less routes, remembering the deepest node holding a route that allows the method.

use std::collections::HashMap;
use std::sync::Arc;

use http::Method;

use crate::config::Route;
use crate::reason::{Reason, Rejection};

/// Routes indexed for [`RouteTable::select`]. Built once per configuration.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
    by_host: HashMap<String, Trie>,
    any_host: Trie,
}

/// A byte trie of prefixes; node 0 is the root (the empty prefix).
#[derive(Debug)]
struct Trie {
    nodes: Vec<Node>,
}

#[derive(Debug, Default)]
struct Node {
    /// Children by next byte, sorted by byte.
    children: Vec<(u8, u32)>,
    /// The routes (indexes into `RouteTable::routes`, in configuration order) whose prefix ends
    /// here.
    routes: Vec<u32>,
}

impl Default for Trie {
    fn default() -> Self {
        Trie {
            nodes: vec![Node::default()],
        }
    }
}

impl Trie {
    fn child(&self, node: u32, byte: u8) -> Option<u32> {
        let children = &self.nodes[node as usize].children;
        children
            .binary_search_by_key(&byte, |(b, _)| *b)
            .ok()
            .map(|i| children[i].1)
    }

    fn insert(&mut self, prefix: &[u8], route: u32) {
        let mut node = 0u32;
        for &b in prefix {
            node = match self.child(node, b) {
                Some(next) => next,
                None => {
                    let next = self.nodes.len() as u32;
                    self.nodes.push(Node::default());
                    let children = &mut self.nodes[node as usize].children;
                    let at = children.partition_point(|(c, _)| *c < b);
                    children.insert(at, (b, next));
                    next
                }
            };
        }
        self.nodes[node as usize].routes.push(route);
    }

    /// The best route of this trie for `path`: (prefix length, route index), the longest
    /// prefix first and the lowest index on a tie.
    fn best(&self, routes: &[Arc<Route>], method: &Method, path: &[u8]) -> Option<(usize, u32)> {
        let allows = |i: &&u32| {
            routes[**i as usize]
                .methods
                .as_ref()
                .is_none_or(|ms| ms.contains(method))
        };
        let first_allowed = |node: u32| self.nodes[node as usize].routes.iter().find(allows);
        let mut best = first_allowed(0).map(|i| (0, *i));
        let mut node = 0u32;
        for (depth, &b) in path.iter().enumerate() {
            let Some(next) = self.child(node, b) else {
                return best;
            };
            node = next;
            if let Some(i) = first_allowed(node) {
                best = Some((depth + 1, *i));
            }
        }
        // The whole path matched: a prefix one `/` longer also covers it (`/admin/` covers
        // `/admin`), and, being longer, wins.
        if !path.is_empty() {
            if let Some(i) = self.child(node, b'/').and_then(first_allowed) {
                best = Some((path.len() + 1, *i));
            }
        }
        best
    }
}

impl RouteTable {
    /// The table of `routes` (their prefixes are already normalized).
    pub fn new(routes: &[Arc<Route>]) -> Self {
        let mut table = RouteTable {
            routes: routes.to_vec(),
            ..RouteTable::default()
        };
        for (i, r) in routes.iter().enumerate() {
            let trie = match &r.host {
                Some(h) => table.by_host.entry(h.clone()).or_default(),
                None => &mut table.any_host,
            };
            trie.insert(r.path_prefix.as_bytes(), i as u32);
        }
        table
    }

    /// The routes, in configuration order.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// Picks the route for a request, as [`select`](super::select) does. `host` is lower case
    /// without port; `path` is the normalized path.
    pub fn select(
        &self,
        method: &Method,
        host: &str,
        path: &str,
    ) -> Result<&Arc<Route>, Rejection> {
        let path_bytes = path.as_bytes();
        let own = self
            .by_host
            .get(host)
            .and_then(|t| t.best(&self.routes, method, path_bytes));
        let any = self.any_host.best(&self.routes, method, path_bytes);
        let best = match (own, any) {
            (Some(a), Some(b)) => Some(
                if (a.0, std::cmp::Reverse(a.1)) >= (b.0, std::cmp::Reverse(b.1)) {
                    a
                } else {
                    b
                },
            ),
            (a, b) => a.or(b),
        };
        best.map(|(_, i)| &self.routes[i as usize]).ok_or_else(|| {
            Rejection::new(
                Reason::RouteNotFound,
                format!("no route for {method} {path}"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::select;

    fn route(
        i: usize,
        prefix: &str,
        host: Option<&str>,
        methods: Option<Vec<Method>>,
    ) -> Arc<Route> {
        let mut r = Route::for_test(&format!("r{i}"), prefix);
        r.host = host.map(String::from);
        r.methods = methods;
        Arc::new(r)
    }

    /// A small deterministic generator (xorshift), so the comparison covers the same cases on
    /// every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[(self.next() % from.len() as u64) as usize]
        }
    }

    #[test]
    fn the_table_picks_the_same_route_as_the_linear_rule() {
        let prefixes = [
            "/", "/a", "/a/", "/a/b", "/a/b/", "/ab", "/b/", "/a/bc", "/api/v1/", "",
        ];
        let paths = [
            "/",
            "/a",
            "/a/",
            "/a/b",
            "/a/b/c",
            "/ab",
            "/abc",
            "/b",
            "/b/x",
            "/api/v1",
            "/api/v1/x",
            "/c",
        ];
        let hosts = ["x", "y"];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..400 {
            let n = 1 + (rng.next() % 8) as usize;
            let routes: Vec<Arc<Route>> = (0..n)
                .map(|i| {
                    let host = match rng.next() % 3 {
                        0 => Some(rng.pick(&hosts)),
                        _ => None,
                    };
                    let methods = match rng.next() % 3 {
                        0 => Some(vec![Method::POST]),
                        _ => None,
                    };
                    route(i, rng.pick(&prefixes), host, methods)
                })
                .collect();
            let table = RouteTable::new(&routes);
            for path in paths {
                for host in ["x", "y", "z"] {
                    for method in [Method::GET, Method::POST] {
                        let linear = select(&routes, &method, host, path).map(|r| r.name.clone());
                        let indexed = table.select(&method, host, path).map(|r| r.name.clone());
                        assert_eq!(
                            linear.as_ref().ok(),
                            indexed.as_ref().ok(),
                            "{method} {host} {path} over {:?}",
                            routes
                                .iter()
                                .map(|r| (&*r.name, &r.path_prefix, &r.host, &r.methods))
                                .collect::<Vec<_>>()
                        );
                        assert_eq!(linear.is_err(), indexed.is_err());
                    }
                }
            }
        }
    }

    #[test]
    fn ten_thousand_routes_pick_the_longest_prefix_of_the_right_host() {
        let routes: Vec<Arc<Route>> = (0..10_000)
            .map(|i| {
                let host = format!("h{}.example", i % 100);
                route(i, &format!("/svc{}/", i / 100), Some(&host), None)
            })
            .chain(std::iter::once(route(10_000, "/", None, None)))
            .collect();
        let table = RouteTable::new(&routes);
        let r = table
            .select(&Method::GET, "h7.example", "/svc42/orders")
            .expect("a route");
        assert_eq!(&*r.name, "r4207");
        let fallback = table
            .select(&Method::GET, "h7.example", "/elsewhere")
            .expect("the catch-all");
        assert_eq!(&*fallback.name, "r10000");
    }
}
