//! The top-level modules of `aadgate-core` and of `aadgate-emulator` import each other without
//! circles (no module imports one that imports it back), so each can be read and tested on its
//! own: the clock, reasons, request targets and the emulator's shared state sit in leaf modules.
//!
//! Reads the sources: an edge `a -> b` is a `crate::b` path anywhere in the code (comments
//! aside) of module `a` (its file or folder), or a `super::b` path in a top-level file. Tests
//! (`tests.rs`) and the crate root are not modules of the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// Top-level module name → the source texts that make it up.
fn modules(src: &Path) -> BTreeMap<String, Vec<(bool, String)>> {
    let mut out: BTreeMap<String, Vec<(bool, String)>> = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).expect("read src dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(src).expect("under src");
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if path.extension().and_then(|e| e.to_str()) != Some("rs")
                || name == "tests.rs"
                || rel == Path::new("lib.rs")
            {
                continue;
            }
            let first = rel
                .components()
                .next()
                .and_then(|c| c.as_os_str().to_str())
                .unwrap_or("")
                .trim_end_matches(".rs")
                .to_string();
            let top_level = rel.components().count() == 1;
            // Code only: a doc link to another module is not an import.
            let text: String = fs::read_to_string(&path)
                .expect("read source")
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .map(|l| format!("{l}\n"))
                .collect();
            out.entry(first).or_default().push((top_level, text));
        }
    }
    out
}

/// The first identifier of each item of `prefix::name` / `prefix::{a::…, b, …}` paths.
fn targets(text: &str, prefix: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = BTreeSet::new();
    for (at, _) in text.match_indices(prefix) {
        let before = text[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let rest = &text[at + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item_start = 0;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        found.insert(ident(&group[item_start..i]));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.insert(ident(&group[item_start..i]));
                        item_start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(ident(rest));
        }
    }
    found
}

/// Module → the modules it imports, for the crate whose sources are in `crates/{krate}/src`.
fn graph(krate: &str) -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates")
        .join(krate)
        .join("src");
    let modules = modules(&src);
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, files) in &modules {
        let out = edges.entry(name.clone()).or_default();
        for (top_level, text) in files {
            let mut found = targets(text, "crate::");
            if *top_level {
                found.extend(targets(text, "super::"));
            }
            out.extend(found.into_iter().filter(|t| names.contains(t) && t != name));
        }
    }
    edges
}

/// The first circle found in `edges`, as the path that closes it.
fn circle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    // Depth-first search; a grey node met again closes a circle.
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut circle = path[at..].to_vec();
            circle.push(node.to_string());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(circle) = visit(next, edges, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|name| visit(name, edges, &mut Vec::new(), &mut done))
}

#[test]
fn the_cores_modules_import_each_other_without_circles() {
    let edges = graph("aadgate-core");
    assert!(
        edges.get("auth").is_some_and(|e| e.contains("jwks")),
        "the source reader found no import at all: {edges:?}"
    );
    for leaf in ["clock", "reason"] {
        assert_eq!(
            edges.get(leaf).map(BTreeSet::len),
            Some(0),
            "{leaf} is a leaf: {edges:?}"
        );
    }
    if let Some(c) = circle(&edges) {
        panic!("modules import each other in a circle: {}", c.join(" -> "));
    }
    if std::env::var_os("AADGATE_PRINT_GRAPH").is_some() {
        for (m, to) in &edges {
            println!(
                "{m} -> {}",
                to.iter().cloned().collect::<Vec<_>>().join(", ")
            );
        }
    }
}

#[test]
fn the_emulators_modules_import_each_other_without_circles() {
    let edges = graph("aadgate-emulator");
    assert!(
        edges
            .get("token_endpoint")
            .is_some_and(|e| e.contains("state")),
        "the source reader found no import at all: {edges:?}"
    );
    if let Some(c) = circle(&edges) {
        panic!("modules import each other in a circle: {}", c.join(" -> "));
    }
}

#[test]
fn a_circle_is_found() {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")] {
        edges.entry(a.into()).or_default().insert(b.into());
    }
    assert!(circle(&edges).is_some_and(|c| c.len() == 4));
    edges.get_mut("c").map(|e| e.remove("a"));
    assert_eq!(circle(&edges), None);
}
