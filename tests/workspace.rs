//! The workspace keeps its shape: three packages — the `aadgate` binary, `aadgate-core` (the
//! decision, which knows neither pingora nor clap nor notify, so a library user builds it without
//! cmake) and the AAD emulator, a crate of its own that depends on nothing from the gateway, so
//! the tests that pass its tokens through the gateway check the gateway against an independent
//! implementation; and plain `cargo test` covers all three packages.

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

/// The resolved dependency graph: package id → ids of its dependencies, with the kinds of each
/// edge (`"normal"`, `"dev"`, `"build"`).
fn edges(meta: &Value) -> HashMap<&str, Vec<(&str, BTreeSet<&str>)>> {
    meta["resolve"]["nodes"]
        .as_array()
        .expect("resolve.nodes")
        .iter()
        .map(|node| {
            let deps = node["deps"]
                .as_array()
                .expect("deps")
                .iter()
                .filter_map(|d| {
                    let kinds = d["dep_kinds"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|k| k["kind"].as_str().unwrap_or("normal"))
                        .collect();
                    Some((d["pkg"].as_str()?, kinds))
                })
                .collect();
            (node["id"].as_str().expect("id"), deps)
        })
        .collect()
}

/// Every package `from` reaches through edges of the kinds `follow` accepts.
fn reached<'a>(
    edges: &HashMap<&'a str, Vec<(&'a str, BTreeSet<&'a str>)>>,
    from: &'a str,
    follow: impl Fn(&BTreeSet<&str>) -> bool,
) -> BTreeSet<&'a str> {
    let mut reached = BTreeSet::new();
    let mut todo = vec![from];
    while let Some(id) = todo.pop() {
        for (dep, kinds) in edges.get(id).into_iter().flatten() {
            if follow(kinds) && reached.insert(*dep) {
                todo.push(dep);
            }
        }
    }
    assert!(
        reached.len() > 10,
        "the graph was read: {} packages",
        reached.len()
    );
    reached
}

/// The name of the package with id `id`.
fn name_of<'a>(meta: &'a Value, id: &str) -> &'a str {
    meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| p["id"] == id)
        .and_then(|p| p["name"].as_str())
        .unwrap_or_default()
}

#[test]
fn the_workspace_has_the_binary_the_decision_and_the_emulator() {
    let meta = metadata();
    let members = meta["workspace_members"].as_array().expect("members");
    assert_eq!(members.len(), 3, "{members:?}");
    for name in ["aadgate", "aadgate-core", "aadgate-emulator"] {
        package_id(&meta, name);
    }
    let gateway = package_id(&meta, "aadgate");
    let targets: Vec<(&str, &str)> = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| p["id"] == gateway.as_str())
        .and_then(|p| p["targets"].as_array())
        .expect("targets")
        .iter()
        .flat_map(|t| {
            let name = t["name"].as_str().unwrap_or_default();
            t["kind"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(move |k| (k, name))
        })
        .collect();
    assert!(targets.contains(&("bin", "aadgate")), "{targets:?}");
    assert!(
        !targets.iter().any(|(k, _)| *k == "lib"),
        "aadgate is the binary alone: {targets:?}"
    );
}

#[test]
fn the_decision_builds_without_pingora_clap_or_notify() {
    let meta = metadata();
    let core = package_id(&meta, "aadgate-core");
    let graph = edges(&meta);
    // What a library user compiles: normal dependencies, and what they build with.
    let normal = reached(&graph, &core, |kinds| {
        kinds.contains("normal") || kinds.contains("build")
    });
    let names: BTreeSet<&str> = normal.iter().map(|id| name_of(&meta, id)).collect();
    assert!(names.contains("jsonwebtoken"), "{names:?}");
    for banned in ["aadgate", "aadgate-emulator", "clap", "notify"] {
        assert!(
            !names.contains(banned),
            "aadgate-core must not depend on {banned}"
        );
    }
    let pingora: Vec<&&str> = names.iter().filter(|n| n.starts_with("pingora")).collect();
    assert!(pingora.is_empty(), "aadgate-core reaches {pingora:?}");
}

#[test]
fn the_emulator_depends_on_nothing_from_the_gateway() {
    let meta = metadata();
    let gateway = package_id(&meta, "aadgate");
    let core = package_id(&meta, "aadgate-core");
    let emulator = package_id(&meta, "aadgate-emulator");

    // Every package the emulator reaches through normal, build and dev dependencies.
    let reached = reached(&edges(&meta), &emulator, |_| true);
    assert!(
        !reached.contains(gateway.as_str()),
        "aadgate-emulator must not depend on aadgate, directly or through another package"
    );
    assert!(
        !reached.contains(core.as_str()),
        "aadgate-emulator must not depend on aadgate-core, directly or through another package"
    );
}

#[test]
fn plain_cargo_commands_cover_every_package() {
    let meta = metadata();
    let defaults: BTreeSet<&str> = meta["workspace_default_members"]
        .as_array()
        .expect("workspace_default_members")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for name in ["aadgate", "aadgate-core", "aadgate-emulator"] {
        let id = package_id(&meta, name);
        assert!(defaults.contains(id.as_str()), "{name} is a default member");
    }
}
