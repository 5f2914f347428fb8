//! The `DaemonSet` in `kubernetes/`, checked offline (no API server can run
//! on these machines): every manifest against the Kubernetes API schemas
//! with `kubernetes-validate --strict`, the kustomization against the
//! files, and the `ConfigMap`'s `residency.toml` with `residency check`, so
//! the shipped configuration cannot drift out of validity. Needs no root.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};
use residency_tests::workspace_bin;

/// The oldest Kubernetes the manifests are for: `securityContext.appArmorProfile`
/// is GA from 1.30. The tool's newest is checked as well.
const OLDEST_KUBERNETES: &str = "1.30";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

/// The manifests: every `*.yaml` in `kubernetes/` but the kustomization.
fn manifests() -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(root().join("kubernetes"))? {
        let path = entry?.path();
        let yaml = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"));
        if yaml && path.file_name().is_some_and(|n| n != "kustomization.yaml") {
            found.push(path);
        }
    }
    found.sort();
    ensure!(!found.is_empty(), "no manifests in kubernetes/");
    Ok(found)
}

/// `kubernetes-validate`: `$KUBERNETES_VALIDATE`, the venv `cargo xtask test`
/// installs it into, or the PATH. `None` (with a message) when it is
/// missing outside CI; under `CI=true` a skip would hide a failure.
fn kubernetes_validate() -> Option<PathBuf> {
    let candidates = std::env::var_os("KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .into_iter()
        .chain([root().join("target/tools/venv/bin/kubernetes-validate")])
        .chain(std::env::var_os("PATH").into_iter().flat_map(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("kubernetes-validate"))
                .collect::<Vec<_>>()
        }));
    for path in candidates {
        if path.is_file() {
            return Some(path);
        }
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but kubernetes-validate is missing: `cargo xtask test` installs it"
    );
    eprintln!(
        "SKIPPED: kubernetes-validate is not installed; `cargo xtask test` installs it into \
         target/tools/venv (or set KUBERNETES_VALIDATE)"
    );
    None
}

/// Runs `kubernetes-validate --strict` on `file` for each Kubernetes
/// version; a failure, an error or a warning (an unknown kind, say) fails.
fn validate(tool: &Path, file: &Path) -> anyhow::Result<()> {
    for version in [Some(OLDEST_KUBERNETES), None] {
        let mut cmd = Command::new(tool);
        cmd.arg("--strict");
        if let Some(v) = version {
            cmd.args(["--kubernetes-version", v]);
        }
        let out = cmd
            .arg(file)
            .output()
            .context("running kubernetes-validate")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let bad = text
            .lines()
            .any(|l| l.starts_with("ERROR") || l.starts_with("WARN") || l.contains("Traceback"));
        if !out.status.success() || bad || !text.contains("passed") {
            bail!(
                "{} fails kubernetes-validate --strict (Kubernetes {}): {}\n{text}",
                file.display(),
                version.unwrap_or("newest"),
                out.status
            );
        }
    }
    Ok(())
}

#[test]
fn manifests_pass_kubernetes_validate_strict() -> anyhow::Result<()> {
    let Some(tool) = kubernetes_validate() else {
        return Ok(());
    };
    let mut failures = Vec::new();
    let files = manifests()?;
    for file in &files {
        if let Err(e) = validate(&tool, file) {
            failures.push(format!("{e:#}"));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!("{} manifests pass", files.len());
    Ok(())
}

/// `kubectl apply -k kubernetes/` applies what the kustomization lists: it
/// must list every manifest, and only those.
#[test]
fn kustomization_lists_every_manifest() -> anyhow::Result<()> {
    let text = fs::read_to_string(root().join("kubernetes/kustomization.yaml"))?;
    let mut listed: Vec<String> = Vec::new();
    let mut in_resources = false;
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if !line.starts_with(' ') && !line.starts_with('-') {
            in_resources = line.trim_end() == "resources:";
            continue;
        }
        if in_resources && let Some(item) = line.trim().strip_prefix("- ") {
            listed.push(item.trim().to_owned());
        }
    }
    let mut have: Vec<String> = manifests()?
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
        .collect();
    listed.sort();
    have.sort();
    ensure!(
        listed == have,
        "kubernetes/kustomization.yaml lists {listed:?}, the directory has {have:?}"
    );
    Ok(())
}

/// The `residency.toml` literal block of `configmap.yaml`, as the
/// `ConfigMap` will hold it. Only this block form is understood (the test
/// fails if the file stops using it).
fn configmap_toml(yaml: &str) -> anyhow::Result<String> {
    let mut lines = yaml.lines();
    lines
        .by_ref()
        .find(|l| l.trim_end() == "  residency.toml: |")
        .context("configmap.yaml has no `  residency.toml: |` block under data")?;
    let mut toml = String::new();
    for line in lines {
        if line.trim().is_empty() {
            toml.push('\n');
        } else if let Some(rest) = line.strip_prefix("    ") {
            toml.push_str(rest);
            toml.push('\n');
        } else {
            break;
        }
    }
    ensure!(toml.contains("[evidence]"), "the block looks empty");
    Ok(toml)
}

/// `residency check --config` on `toml`; its exit code and output.
fn check(toml: &str) -> anyhow::Result<(bool, String)> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("residency.toml");
    fs::write(&file, toml)?;
    let out = Command::new(workspace_bin("residency")?)
        .arg("check")
        .arg("--config")
        .arg(&file)
        .env("NO_COLOR", "1")
        .output()?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

#[test]
fn configmap_config_passes_residency_check() -> anyhow::Result<()> {
    let yaml = fs::read_to_string(root().join("kubernetes/configmap.yaml"))?;
    let toml = configmap_toml(&yaml)?;
    let (ok, out) = check(&toml)?;
    ensure!(
        ok,
        "the ConfigMap's residency.toml fails `residency check`:\n{out}"
    );
    ensure!(out.contains("valid"), "no summary from check:\n{out}");

    Ok(())
}

/// The extraction above is what the configuration check stands on.
#[test]
fn configmap_block_extraction() -> anyhow::Result<()> {
    let yaml = "data:\n  residency.toml: |\n    mode = \"monitor\"\n\n    [evidence]\n    directory = \"/x\"\n  other: |\n    y\n";
    assert_eq!(
        configmap_toml(yaml)?,
        "mode = \"monitor\"\n\n[evidence]\ndirectory = \"/x\"\n"
    );
    Ok(())
}
