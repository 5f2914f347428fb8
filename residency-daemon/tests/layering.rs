//! The workspace's layering, checked against what cargo resolves: the
//! daemon's stages are library crates whose dependencies point one way
//! (common and geoip, then config, then record and the endpoint catalog,
//! then evidence, then SIEM and API, then the dashboard, then the daemon), no library crate
//! depends on the daemon, and the stage crates (and everything below them)
//! build without aya.
//!
//! Runs `cargo metadata` and `cargo tree` offline (both read the lock file
//! and the manifests; nothing is built).

use std::{collections::BTreeMap, process::Command};

use serde_json::Value;

/// Each workspace crate's layer: a crate may depend only on crates of a
/// lower layer.
const LAYERS: &[(&str, u8)] = &[
    ("residency-common", 0),
    ("geoip", 1),
    ("residency-config", 1),
    ("residency-names", 1),
    ("residency-pods", 1),
    ("residency-record", 2),
    ("residency-catalog", 2),
    ("residency-evidence", 3),
    ("residency-siem", 4),
    ("residency-api", 4),
    ("residency-ui", 5),
    ("residency-daemon", 6),
    ("residency-tests", 7),
];

/// The library crates of the daemon's stages.
const STAGES: &[&str] = &[
    "residency-config",
    "residency-catalog",
    "residency-names",
    "residency-pods",
    "residency-record",
    "residency-evidence",
    "residency-siem",
    "residency-api",
    "residency-ui",
];

fn cargo(args: &[&str]) -> String {
    // The cargo that built this test, else the one on the path.
    let cargo = option_env!("CARGO").map_or_else(
        || std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()),
        str::to_owned,
    );
    let out = Command::new(cargo)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("cargo prints UTF-8")
}

#[test]
fn dependencies_point_one_way() {
    let layer: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let meta: Value = serde_json::from_str(&cargo(&[
        "metadata",
        "--offline",
        "--no-deps",
        "--format-version",
        "1",
    ]))
    .expect("cargo metadata is JSON");
    let packages = meta["packages"].as_array().expect("packages");
    let mut seen = 0;
    for p in packages {
        let name = p["name"].as_str().expect("name");
        let Some(&own) = layer.get(name) else {
            continue; // xtask, the kernel programs: not part of the stages
        };
        seen += 1;
        for d in p["dependencies"].as_array().expect("dependencies") {
            let dep = d["name"].as_str().expect("dependency name");
            if dep == name {
                continue; // a crate's own test-support features
            }
            if let Some(&theirs) = layer.get(dep) {
                assert!(
                    theirs < own,
                    "{name} (layer {own}) depends on {dep} (layer {theirs}): dependencies \
                     must point down, from the daemon to the record model"
                );
            }
        }
    }
    assert_eq!(
        seen,
        LAYERS.len(),
        "every layered crate is in the workspace"
    );
}

#[test]
fn stage_crates_need_neither_the_daemon_nor_aya() {
    for stage in STAGES {
        // Resolved for this crate alone, with dev-dependencies: what
        // `cargo test -p` builds.
        let tree = cargo(&[
            "tree",
            "--offline",
            "-p",
            stage,
            "-e",
            "normal,build,dev",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ]);
        for line in tree.lines() {
            let krate = line.split_whitespace().next().unwrap_or_default();
            assert!(
                krate != "residency-daemon",
                "{stage} depends on the daemon crate: {line}"
            );
            assert!(
                !krate.starts_with("aya"),
                "{stage} pulls in {line}: only the daemon's kernel stage may use aya"
            );
        }
    }
}
