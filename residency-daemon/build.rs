//! Builds the kernel programs (`residency-ebpf`) for the BPF target and leaves
//! the object in `OUT_DIR`, where `kernel.rs` embeds it.
//!
//! Plain `cargo build`/`cargo test` must work on a machine without the eBPF
//! toolchain (bpf-linker, rust-src), so that the unit tests run anywhere. In
//! that case this script warns and embeds an empty object; the daemon then
//! refuses to start with a message that says how to get a full build.
//! `cargo xtask` always installs the toolchain first.
use std::{env, fs, path::PathBuf, process::Command};

use anyhow::{Context as _, anyhow};

const EBPF_PACKAGE: &str = "residency-ebpf";

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let object = out_dir.join(EBPF_PACKAGE);

    if let Err(missing) = toolchain_ready() {
        println!(
            "cargo:warning=building without kernel programs: {missing}. \
             `cargo xtask build` installs what is missing."
        );
        fs::write(&object, []).with_context(|| format!("writing {}", object.display()))?;
        // Naming a file that never exists makes cargo rerun this script on
        // every build, so the programs get built as soon as the toolchain
        // is installed instead of the empty object staying cached.
        println!(
            "cargo:rerun-if-changed={}",
            out_dir.join("toolchain-missing").display()
        );
        return Ok(());
    }

    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let package = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == EBPF_PACKAGE)
        .ok_or_else(|| anyhow!("package {EBPF_PACKAGE} not in the workspace"))?;
    let root_dir = package
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", package.manifest_path))?;

    // The kernel crate needs `-Z build-std=core`, which stable cargo allows
    // only with RUSTC_BOOTSTRAP=1. Setting it here scopes it to the nested
    // cargo that builds the BPF target; the rest of the workspace is built as
    // plain stable Rust.
    // SAFETY: build scripts are single-threaded; nothing else reads the
    // environment concurrently.
    //
    // CARGO_TERM_QUIET: aya-build relays every line the nested cargo prints
    // as a cargo warning; a quiet cargo prints only real problems.
    unsafe {
        env::set_var("RUSTC_BOOTSTRAP", "1");
        env::set_var("CARGO_TERM_QUIET", "true");
    }

    // Build with the toolchain that is building us (rustup sets this), not
    // with nightly, which aya-build would ask for by default.
    let toolchain = env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "stable".to_owned());
    aya_build::build_ebpf(
        [aya_build::Package {
            name: EBPF_PACKAGE,
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
}

/// Says what is missing for a BPF build, if anything.
fn toolchain_ready() -> Result<(), String> {
    println!("cargo:rerun-if-env-changed=RESIDENCY_SKIP_EBPF");
    if env::var_os("RESIDENCY_SKIP_EBPF").is_some_and(|v| v == "1") {
        return Err("RESIDENCY_SKIP_EBPF=1".to_owned());
    }
    which::which("bpf-linker").map_err(|_| "bpf-linker is not on PATH".to_owned())?;
    let sysroot = Command::new(env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| format!("cannot run rustc: {e}"))?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    let core_src = sysroot.join("lib/rustlib/src/rust/library/core");
    if !core_src.is_dir() {
        return Err("the rust-src component is not installed".to_owned());
    }
    Ok(())
}
