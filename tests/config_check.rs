//! `aadgate check`: every file in conf/ is valid, and each bad fixture (exactly one mistake)
//! fails with exit code 2 at the expected FILE:LINE:COL.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

fn check(path: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_aadgate"))
        .arg("check")
        .arg("-c")
        .arg(path)
        .output()
        .expect("aadgate runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_shipped_config_is_valid() {
    let mut n = 0;
    for entry in std::fs::read_dir("conf").expect("conf/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (code, err) = check(&path);
            assert_eq!(code, 0, "{}: {err}", path.display());
            n += 1;
        }
    }
    assert!(n >= 3, "expected the reference, emulator and demo configs");
}

#[test]
fn each_bad_fixture_fails_at_its_line_and_column() {
    let dir = Path::new("tests/fixtures/bad");
    let expected: BTreeMap<String, (String, String)> = serde_json::from_str(
        &std::fs::read_to_string(dir.join("expected.json")).expect("expected.json"),
    )
    .expect("json");
    assert!(expected.len() >= 15);
    let mut failures = Vec::new();
    for (name, (pos, fragment)) in expected {
        let path = dir.join(format!("{name}.toml"));
        let (code, err) = check(&path);
        assert_eq!(code, 2, "{name} should fail: {err}");
        let first = err.lines().next().unwrap_or_default();
        let want = format!("{}:{pos}: ", path.display());
        if !first.starts_with(&want) || !first.to_lowercase().contains(&fragment.to_lowercase()) {
            failures.push(format!(
                "{name}: expected {want}… containing {fragment:?}, got {first}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn all_semantic_errors_of_a_file_are_reported_together() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("two.toml");
    let text = std::fs::read_to_string("tests/fixtures/base.toml")
        .expect("base")
        .replace("mode = \"allow_list\"", "mode = \"everyone\"")
        + "validators = [\"missing\"]\n";
    std::fs::write(&path, text).expect("write");
    let (code, err) = check(&path);
    assert_eq!(code, 2);
    assert_eq!(err.lines().count(), 2, "{err}");
}

#[test]
fn a_missing_file_is_an_error_with_exit_2() {
    let (code, err) = check(Path::new("tests/fixtures/does-not-exist.toml"));
    assert_eq!(code, 2);
    assert!(err.contains("does-not-exist.toml:1:1:"), "{err}");
}
