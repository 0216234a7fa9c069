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
fn a_bad_duration_an_unknown_validator_and_a_duplicate_route_are_all_reported() {
    let path = Path::new("tests/fixtures/three_mistakes.toml");
    let (code, err) = check(path);
    assert_eq!(code, 2, "{err}");
    let p = path.display();
    let lines: Vec<&str> = err.lines().collect();
    let want = [
        (format!("{p}:7:14: "), "unit"),
        (format!("{p}:17:15: "), "no validator named"),
        (format!("{p}:20:8: "), "duplicate route name"),
    ];
    assert_eq!(lines.len(), want.len(), "{err}");
    for (line, (start, fragment)) in lines.iter().zip(want) {
        assert!(
            line.starts_with(&start) && line.contains(fragment),
            "expected {start}… containing {fragment:?}, got {line}"
        );
    }
}

#[test]
fn type_errors_and_unknown_keys_in_different_tables_are_all_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("many.toml");
    let text = std::fs::read_to_string("tests/fixtures/base.toml")
        .expect("base")
        .replace("[server]\n", "[server]\nlisten_port = 1\n")
        .replace(
            "audiences = [\"api://orders\"]\n",
            "audiences = [\"api://orders\"]\ntoken_cache_size = \"many\"\nclock_skew = 300\n",
        )
        + "pass_authorization = \"yes\"\n"
        + "\n[clients]\nmin_auth_strength = 7\n"
        + "\n[validators.v]\nkind = \"http\"\nurl = \"http://127.0.0.1:1/\"\nretries = 3\n"
        + "\n[exchange.x]\nclient_id = 5\n";
    std::fs::write(&path, text).expect("write");
    let (code, err) = check(&path);
    assert_eq!(code, 2);
    let p = path.display();
    let want = [
        (format!("{p}:2:1: "), "unknown field `listen_port`"),
        (format!("{p}:8:20: "), "invalid type"),
        (format!("{p}:9:14: "), "invalid type"),
        (format!("{p}:19:22: "), "invalid type"),
        (format!("{p}:22:21: "), "min_auth_strength"),
        (format!("{p}:27:1: "), "unknown field `retries`"),
        (format!("{p}:30:13: "), "invalid type"),
    ];
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), want.len(), "{err}");
    for (line, (start, fragment)) in lines.iter().zip(want) {
        assert!(
            line.starts_with(&start) && line.contains(fragment),
            "expected {start}… containing {fragment:?}, got {line}"
        );
    }
}

#[test]
fn a_missing_file_is_an_error_with_exit_2() {
    let (code, err) = check(Path::new("tests/fixtures/does-not-exist.toml"));
    assert_eq!(code, 2);
    assert!(err.contains("does-not-exist.toml:1:1:"), "{err}");
}
