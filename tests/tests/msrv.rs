//! Every package's `rust-version` is honest about its dependencies: none of the packages it
//! builds with (as resolved in Cargo.lock) declares a newer `rust-version` of its own. Clippy's
//! `incompatible_msrv` lint (denied in the workspace) covers relock's own code; this covers the
//! rest. Only this toolchain is installed here, so neither can prove an older one builds it.

use std::collections::{HashMap, HashSet};
use std::process::Command;

use serde_json::Value;

/// `"1.88"` or `"1.88.0"` as comparable numbers.
fn version(text: &str) -> Vec<u64> {
    let mut parts: Vec<u64> = text
        .split('.')
        .map(|part| {
            part.parse()
                .unwrap_or_else(|_| panic!("rust-version {text}"))
        })
        .collect();
    parts.resize(3, 0);
    parts
}

/// The triple of the machine the tests run on (`rustc -vV`'s `host:`).
fn host() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let output = Command::new(rustc)
        .arg("-vV")
        .output()
        .expect("run rustc -vV");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .to_owned()
}

/// The workspace's metadata: every feature on, so that optional dependencies count too, for
/// this machine's platform: a build here fetches only its own platform's packages, so the
/// others' (`wasm-bindgen`'s, `windows-sys`'s) may be missing offline.
fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", &host()])
        .args(["--all-features", "--manifest-path"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"))
        .output()
        .expect("run cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("cargo metadata's JSON")
}

/// Whether a dependency edge is one a build of the package needs (normal or build), or also a
/// test build (`dev`) when `dev` is true.
fn needed(dep: &Value, dev: bool) -> bool {
    dep["dep_kinds"]
        .as_array()
        .unwrap()
        .iter()
        .any(|kind| match kind["kind"].as_str() {
            None | Some("build") => true,
            Some("dev") => dev,
            Some(other) => panic!("dependency kind {other}"),
        })
}

#[test]
fn no_dependency_needs_a_newer_rust_than_the_package_declares() {
    let metadata = metadata();
    let packages: HashMap<&str, &Value> = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|package| (package["id"].as_str().unwrap(), package))
        .collect();
    let nodes: HashMap<&str, &Value> = metadata["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|node| (node["id"].as_str().unwrap(), node))
        .collect();
    let deps = |id: &str, dev: bool| -> Vec<&str> {
        nodes[id]["deps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|dep| needed(dep, dev))
            .map(|dep| dep["pkg"].as_str().unwrap())
            .collect()
    };

    let mut problems = Vec::new();
    let members = metadata["workspace_members"].as_array().unwrap();
    assert!(members.len() >= 7, "the workspace's members: {members:?}");
    for member in members {
        let member = member.as_str().unwrap();
        let package = packages[member];
        let name = package["name"].as_str().unwrap();
        let declared = package["rust_version"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} declares no rust-version"));
        // The package's own dev-dependencies count (its tests are built with it); theirs do not.
        let mut stack = deps(member, true);
        let mut seen = HashSet::new();
        while let Some(id) = stack.pop() {
            if !seen.insert(id) {
                continue;
            }
            stack.extend(deps(id, false));
            let dependency = packages[id];
            if let Some(needs) = dependency["rust_version"].as_str() {
                if version(needs) > version(declared) {
                    problems.push(format!(
                        "{name} declares rust-version {declared}, but {} {} needs {needs}",
                        dependency["name"].as_str().unwrap(),
                        dependency["version"].as_str().unwrap()
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
