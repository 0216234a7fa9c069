//! The workspace keeps its shape: the AAD emulator is a crate of its own that depends on nothing
//! from the gateway, so the tests that pass its tokens through the gateway check the gateway
//! against an independent implementation; and plain `cargo test` covers both packages.

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

use serde_json::Value;

/// `cargo metadata` of this workspace, with the resolved dependency graph (from Cargo.lock).
fn metadata() -> Value {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

/// The id of the workspace package `name`.
fn package_id(meta: &Value, name: &str) -> String {
    let members: BTreeSet<&str> = meta["workspace_members"]
        .as_array()
        .expect("workspace_members")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter(|p| p["name"] == name)
        .filter_map(|p| p["id"].as_str())
        .find(|id| members.contains(id))
        .unwrap_or_else(|| panic!("{name} is a workspace member"))
        .to_string()
}

#[test]
fn the_emulator_depends_on_nothing_from_the_gateway() {
    let meta = metadata();
    let gateway = package_id(&meta, "aadgate");
    let emulator = package_id(&meta, "aadgate-emulator");

    // Every package the emulator reaches through normal, build and dev dependencies.
    let edges: HashMap<&str, Vec<&str>> = meta["resolve"]["nodes"]
        .as_array()
        .expect("resolve.nodes")
        .iter()
        .map(|node| {
            let deps = node["deps"]
                .as_array()
                .expect("deps")
                .iter()
                .filter_map(|d| d["pkg"].as_str())
                .collect();
            (node["id"].as_str().expect("id"), deps)
        })
        .collect();
    let mut reached = BTreeSet::new();
    let mut todo = vec![emulator.as_str()];
    while let Some(id) = todo.pop() {
        for dep in edges.get(id).into_iter().flatten() {
            if reached.insert(*dep) {
                todo.push(dep);
            }
        }
    }
    assert!(
        reached.len() > 10,
        "the graph was read: {} packages",
        reached.len()
    );
    assert!(
        !reached.contains(gateway.as_str()),
        "aadgate-emulator must not depend on aadgate, directly or through another package"
    );
}

#[test]
fn plain_cargo_commands_cover_both_packages() {
    let meta = metadata();
    let defaults: BTreeSet<&str> = meta["workspace_default_members"]
        .as_array()
        .expect("workspace_default_members")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for name in ["aadgate", "aadgate-emulator"] {
        let id = package_id(&meta, name);
        assert!(defaults.contains(id.as_str()), "{name} is a default member");
    }
}
