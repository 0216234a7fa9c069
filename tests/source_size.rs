//! The sources stay readable in one sitting: no source file over 800 lines and no function
//! over 100 lines, outside tests (`tests.rs` files and `#[cfg(test)] mod` blocks), in the
//! binary and in every crate of the workspace.

use std::fs;
use std::path::{Path, PathBuf};

const MAX_FILE_LINES: usize = 800;
const MAX_FN_LINES: usize = 100;

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).expect("read source dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().and_then(|e| e.to_str()) == Some("rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn sources() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![root.join("src")];
    for entry in fs::read_dir(root.join("crates")).expect("read crates") {
        dirs.push(entry.expect("dir entry").path().join("src"));
    }
    dirs.iter()
        .flat_map(|d| rust_files(d))
        .filter(|p| p.file_name().and_then(|n| n.to_str()) != Some("tests.rs"))
        .collect()
}

fn indent(line: &str) -> &str {
    &line[..line.len() - line.trim_start().len()]
}

/// The line (0-based) closing the block opened at `start`'s indentation, if any.
fn block_end(lines: &[&str], start: usize) -> Option<usize> {
    let close = format!("{}}}", indent(lines[start]));
    (start + 1..lines.len()).find(|&j| lines[j] == close)
}

/// The functions of `text` outside test modules, as (name, first line, length in lines).
fn functions(text: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let t = lines[i].trim_start();
        if t.starts_with("#[cfg(test)]")
            && lines
                .get(i + 1)
                .is_some_and(|n| n.trim_start().starts_with("mod "))
        {
            i = block_end(&lines, i + 1).map_or(lines.len(), |e| e + 1);
            continue;
        }
        let after_vis = t
            .trim_start_matches("pub(crate) ")
            .trim_start_matches("pub(super) ")
            .trim_start_matches("pub ")
            .trim_start_matches("const ")
            .trim_start_matches("async ");
        if let Some(rest) = after_vis.strip_prefix("fn ") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            // The signature ends at `{` (a body) or `;` (a declaration).
            let sig_end = (i..lines.len())
                .find(|&j| {
                    let l = lines[j].trim_end();
                    l.ends_with('{') || l.ends_with(';') || l.ends_with('}')
                })
                .unwrap_or(i);
            if lines[sig_end].trim_end().ends_with('{') {
                if let Some(end) = block_end(&lines, i) {
                    out.push((name, i + 1, end - i + 1));
                }
            }
        }
        i += 1;
    }
    out
}

#[test]
fn no_source_file_is_over_800_lines() {
    let files = sources();
    assert!(files.len() > 50, "the sources were not found: {files:?}");
    let long: Vec<String> = files
        .iter()
        .filter_map(|p| {
            let n = fs::read_to_string(p).expect("read source").lines().count();
            (n > MAX_FILE_LINES).then(|| format!("{} ({n} lines)", p.display()))
        })
        .collect();
    assert!(long.is_empty(), "split these files: {long:#?}");
}

#[test]
fn no_function_outside_tests_is_over_100_lines() {
    let mut long = Vec::new();
    let mut seen = 0;
    for p in sources() {
        let text = fs::read_to_string(&p).expect("read source");
        for (name, line, len) in functions(&text) {
            seen += 1;
            if len > MAX_FN_LINES {
                long.push(format!("{}:{line} fn {name} ({len} lines)", p.display()));
            }
        }
    }
    assert!(
        seen > 500,
        "the function reader found only {seen} functions"
    );
    assert!(long.is_empty(), "split these functions: {long:#?}");
}

#[test]
fn the_function_reader_measures_bodies_and_skips_declarations_and_tests() {
    let text = "\
fn one() {}
pub async fn two(
    a: u8,
) -> u8 {
    a
}
trait T {
    fn decl(&self);
}
#[cfg(test)]
mod tests {
    fn in_test() {
        let _ = 1;
    }
}
";
    assert_eq!(functions(text), vec![("two".to_string(), 2, 5)]);
}
