//! The emulator's top-level modules import each other as a tree (no module imports one that
//! imports it back), so each can be read on its own: shared state sits in leaf modules.
//!
//! Reads the sources: an edge `a -> b` is a `crate::b` path anywhere in module `a` (its file or
//! folder), or a `super::b` path in a top-level file. Tests (`tests.rs`) and the crate root are
//! not modules of the graph.

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
            let text = fs::read_to_string(&path).expect("read source");
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

#[test]
fn top_level_modules_import_each_other_without_circles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
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
    assert!(
        edges
            .get("token_endpoint")
            .is_some_and(|e| e.contains("state")),
        "the source reader found no import at all: {edges:?}"
    );

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
    for name in &names {
        let circle = visit(name, &edges, &mut Vec::new(), &mut done);
        assert!(
            circle.is_none(),
            "modules import each other in a circle: {}",
            circle.unwrap_or_default().join(" -> ")
        );
    }
}
