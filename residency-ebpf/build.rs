//! The eBPF binary is linked by `bpf-linker`, a dependency cargo cannot see.
//! Rebuild when that binary changes, so a new linker is never ignored.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!(
            "cargo:warning=bpf-linker not found on PATH ({err}); `cargo xtask` installs it"
        ),
    }
}
