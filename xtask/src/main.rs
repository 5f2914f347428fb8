//! `cargo xtask`: build, run, test and benchmark residency on a fresh machine.
//!
//! Every command first installs what it needs and finds missing: the
//! `rust-src` component and `bpf-linker` (to build the kernel programs),
//! the Debian packages the tests use, and `kubernetes-validate` (from the
//! Python package index, into a venv under `target/`) for the manifests in
//! `kubernetes/`. Nothing depends on a tool installed by hand.
#![forbid(unsafe_code)]

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

/// The bpf-linker release that works with this machine's stable rustc and
/// its own LLVM (later releases need a system LLVM these machines lack).
const BPF_LINKER_VERSION: &str = "0.10.3";

/// Debian packages the end-to-end tests use: bpftool independently checks
/// what is attached to a cgroup; iproute2 makes the test hosts' network
/// namespaces; rsyslog, with its TLS driver (gtls), is the real syslog
/// receiver of the SIEM sink tests (UDP, TCP and TLS); dnsmasq answers the
/// DNS queries of the name tests; containerd (with its CRI plugin) and
/// runc run the pods of the pod identity tests, whose image is made from
/// busybox-static; systemd-nspawn (systemd-container) boots the real
/// systemd the unit's tests run under.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("bpftool", "bpftool"),
    ("ip", "iproute2"),
    ("rsyslogd", "rsyslog"),
    // A plugin, not a command: found under the multiarch directory.
    ("/usr/lib/*/rsyslog/lmnsd_gtls.so", "rsyslog-gnutls"),
    // The real DNS server of the name tests (the binary only, no service).
    ("dnsmasq", "dnsmasq-base"),
    // A real container runtime for the pod tests, driven through the CRI.
    ("containerd", "containerd"),
    ("runc", "runc"),
    // The test image's only binary (static: no libraries to copy).
    ("busybox", "busybox-static"),
    // Debian's package checker, run on the .deb `cargo xtask package` makes.
    ("lintian", "lintian"),
    // Boots the machine the systemd unit is tested in (tests/src/machine.rs).
    ("systemd-nspawn", "systemd-container"),
    // The browser the dashboard is tested in (tests/ui/dashboard.mjs), and
    // Node.js to drive it with playwright-core.
    ("chromium", "chromium"),
    ("node", "nodejs"),
    ("npm", "npm"),
    // pdftoppm: the report's PDF, rendered to pictures.
    ("pdftoppm", "poppler-utils"),
    // The nftables country set `cargo xtask bench flows` compares with.
    ("nft", "nftables"),
];

/// The offline Kubernetes manifest checker the tests run on `kubernetes/`
/// (Python package index; pinned, bump deliberately), installed into a venv
/// under `target/`.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
/// Where that venv lives, relative to the workspace root; the tests look
/// for the tool there too.
const TOOLS_VENV: &str = "target/tools/venv";

/// Debian packages every build of the daemon needs: `protoc` compiles the
/// CRI's protobuf definitions (the k8s-cri crate's build script).
const BUILD_PACKAGES: &[(&str, &str)] = &[("protoc", "protobuf-compiler")];

/// `cargo xtask package` makes the Debian package with cargo-deb (pinned;
/// bump deliberately), installed with `cargo install` when missing.
const CARGO_DEB_VERSION: &str = "3.8.0";
/// Debian packages `cargo xtask package` needs: dpkg-shlibdeps computes the
/// package's Depends from the libraries the binary links.
const PACKAGE_PACKAGES: &[(&str, &str)] = &[("dpkg-shlibdeps", "dpkg-dev")];

/// The default GeoIP data: the CC0 geo-whois-asn-country database, as the
/// npm registry ships it (pinned; bump deliberately).
const GEOIP_PACKAGE: &str = "@ip-location-db/geo-whois-asn-country-mmdb@2.3.2026061719";
/// The file used from that package (IPv4 and IPv6 in one).
const GEOIP_FILE: &str = "geo-whois-asn-country.mmdb";

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, run, test and benchmark residency",
    long_about = "Build, run, test and benchmark residency.\n\n\
                  Each command installs what it needs that is missing (rust-src, bpf-linker, \
                  Debian packages) before it starts."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the daemon (with its kernel programs embedded) and the test tools.
    Build {
        /// Optimised build.
        #[arg(long)]
        release: bool,
    },
    /// Build and run the daemon (needs root); without arguments it uses the
    /// built-in configuration: monitor mode on the whole host.
    ///
    /// Arguments after `--` go to `residency run`, e.g.
    /// `cargo xtask run -- --config my.toml --output /tmp/flows.jsonl`.
    Run {
        /// Arguments for `residency run`.
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Run every test: formatting, clippy, unit tests, then the privileged
    /// end-to-end tests (as root; without root they skip, and under CI=true
    /// they fail instead of skipping).
    Test {
        /// Skip `cargo fmt --check` and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Fetch the default GeoIP database (CC0, from the npm registry) into
    /// data/geoip/, if it is not there yet, and print its path.
    Geoip,
    /// Build the release daemon and write an OCI image archive of it.
    #[command(long_about = IMAGE_HELP)]
    Image {
        /// Where to write the archive [default: target/oci/residency-<version>.oci.tar].
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
        /// The image's name, as `ctr images import` will name it (normalised
        /// as Docker does: `residency:dev` is docker.io/library/residency:dev)
        /// [default: residency:<version>].
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Leave the GeoIP database out: set `geoip.database` in the
        /// configuration to one you mount instead.
        #[arg(long)]
        no_geoip: bool,
    },
    /// Build the Debian package (.deb) of the daemon, with cargo-deb.
    #[command(long_about = PACKAGE_HELP)]
    Package {
        /// Where to write the .deb [default: target/debian/].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Package the dev build (target/debug, stripped) instead of the
        /// release build: quicker, for tests.
        #[arg(long)]
        debug: bool,
        /// The package's version, with its revision [default: the crate's
        /// version, revision 1, e.g. 0.1.0-1].
        #[arg(long, value_name = "V")]
        deb_version: Option<String>,
        /// Package the binary target/ already holds, without `cargo build`
        /// (the package test does: the binary it tests is built).
        #[arg(long)]
        no_build: bool,
    },
    /// Run a benchmark and write its table into BENCHMARKS.md.
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// The evidence store: ingest rate with the hash chain, decision to
    /// queryable latency with the daemon at 50k events/s, query latency
    /// over 10 M records (HTTP and direct), verify speed, and size. Needs
    /// about 6 GB free in /var/tmp (`-- --scratch DIR` to choose;
    /// `-- --latency-only` for the latency case alone).
    Evidence {
        /// Arguments for the benchmark binary (see `--help` there).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Loopback connect and sendto storms in a child cgroup: without
    /// programs, with the programs attached, and with the full daemon.
    Connect {
        /// Arguments for the benchmark binary (see `--help` there).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// SIEM sinks: alerts per second per sink type to real receivers on
    /// loopback (rsyslog, HTTPS), and connect latency with a dead sink.
    Siem {
        /// Arguments for the benchmark binary (see `--help` there).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// 1,000 workload policies with the full GeoIP tables: connect cost
    /// and policy reload time.
    Policy {
        /// Arguments for the benchmark binary (see `--help` there).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Name tracking: `connect()` right after a DNS answer (dnsmasq) with and
    /// without the name programs, DNS answers per second with no name
    /// lost, and the kernel name map at 100,000 names.
    Names {
        /// Arguments for the benchmark binary (see `--help` there).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Pods on a real containerd (Debian's, started by the bench): from a
    /// pod's cgroup appearing to its policy in the kernel, p50 and p99 over
    /// 100 pods, and the daemon's memory with 500 pods on the node.
    Pods {
        /// Arguments for the benchmark binary (see `--help` there).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Start and upgrade with the full GeoIP tables: from spawning the
    /// daemon to its programs in force, and from an upgrade's start to the
    /// new build's programs and policy in force (pinned links updated in
    /// place), with a connect storm checking nothing gets through.
    Upgrade {
        /// Arguments for the benchmark binary (see `--help` there).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// The daemon's resident memory (`VmRSS`), idle with the full GeoIP
    /// tables and the API up, and after 1 M flows.
    Memory {
        /// Arguments for the benchmark binary (see `--help` there).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Following flows: `connect()` and `sendto()` latency and bulk TCP
    /// throughput with flows off and on, with the daemon, and with the
    /// nftables country set users deploy today; then the evidence 1 M
    /// datagrams to 10 destinations leave, with flows off and on.
    Flows {
        /// Arguments for the benchmark binary (see `--help` there).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// The dashboard over a store of 10 M records: each page's answer
    /// time over HTTP, its size, and its load time in Chromium.
    Ui {
        /// Arguments for the benchmark binary (see `--help` there).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Under a real systemd (a container booted by systemd-nspawn): the
    /// time from `systemctl start` to ready, with the full default GeoIP
    /// database and without one.
    Systemd {
        /// Arguments for the benchmark binary (see `--help` there).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Process tracking: what the exec, fork and exit tracepoints cost a
    /// process starting inside the watched cgroup and one outside it.
    Process {
        /// Arguments for the benchmark binary (see `--help` there).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// The full default GeoIP database: flatten and load time, kernel
    /// memory, userspace lookups per second, and the cost of connect with the
    /// tables loaded and during a hot swap.
    Geoip {
        /// Arguments for the benchmark binary (see `--help` there).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
}

const IMAGE_HELP: &str = "\
Build the release daemon and write an OCI image archive of it.

The image has no base image: it holds the daemon (/usr/bin/residency), the
shared libraries it links (found with ldd, the loader included), the default
GeoIP database (the CC0 geo-whois-asn-country file, fetched like `cargo xtask
geoip` does) at /usr/share/residency/geoip/geo-whois-asn-country.mmdb, where
the daemon looks when no database is configured, the built-in configuration
(`residency default-config`) at /etc/residency/residency.toml, and the
system's CA certificates for TLS to SIEM receivers. It is built
deterministically: the same inputs give the same digest.

Entrypoint: `/usr/bin/residency run`; arguments: `--config
/etc/residency/residency.toml`. Mount a ConfigMap's file over
/etc/residency/residency.toml to configure it, and the node's evidence
directory at /var/lib/residency (kubernetes/daemonset.yaml does both).

The daemon still needs what a DaemonSet gives it: root with CAP_BPF,
CAP_PERFMON, CAP_NET_ADMIN and CAP_SYS_ADMIN (see kubernetes/README.md), the
host's cgroup2 mount, /sys/fs/bpf and tracefs, and, for pod identity, the
container runtime's CRI socket.

Load it with containerd:
  ctr -n k8s.io images import target/oci/residency-<version>.oci.tar

Examples:
  cargo xtask image
  cargo xtask image --name registry.example/residency:1.2 --out /tmp/r.oci.tar";

const PACKAGE_HELP: &str = "\
Build the Debian package (.deb) of the daemon, with cargo-deb (installed
with `cargo install` when missing), and print its path.

The package (residency-daemon/Cargo.toml, [package.metadata.deb], and
residency-daemon/debian/) holds:
  /usr/bin/residency
  /usr/lib/systemd/system/residency.service   (from systemd/)
  /etc/residency/residency.toml               (a conffile, mode 0640:
                                               monitor mode)
  /usr/share/residency/geoip/geo-whois-asn-country.mmdb  (CC0, fetched like
                                               `cargo xtask geoip` does)
  /usr/share/man/man1/residency*.1.gz         (`residency man-pages`)
  /usr/share/doc/residency/                   (copyright, README.md)
Installing it enables the unit but does not start it; an upgrade restarts
the service only if it was running; removal stops it and detaches the
pinned kernel programs; purge keeps the evidence store in /var/lib/residency.

Examples:
  cargo xtask package
  cargo xtask package --deb-version 0.1.0-2 --out /tmp/debs
  sudo dpkg -i target/debian/residency_0.1.0-1_amd64.deb";

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let root = workspace_root()?;
    env::set_current_dir(&root)?;
    match cli.command {
        Cmd::Build { release } => {
            ensure_build_tools()?;
            cargo(&build_args(release))
        }
        Cmd::Image {
            out,
            name,
            no_geoip,
        } => image(&root, out, name, no_geoip),
        Cmd::Package {
            out,
            debug,
            deb_version,
            no_build,
        } => package(&root, out, debug, deb_version.as_deref(), no_build),
        Cmd::Run { args } => {
            ensure_build_tools()?;
            let geoip = ensure_geoip(&root)?;
            cargo(&build_args(true))?;
            if !is_root() {
                bail!(
                    "residency loads BPF programs and needs root; the build is done, so run \
                     `sudo target/release/residency run --geoip {}` (sudo's PATH usually lacks cargo)",
                    geoip.display()
                );
            }
            let mut cmd = Command::new(root.join("target/release/residency"));
            cmd.arg("run");
            if !args.iter().any(|a| a == "--geoip") {
                cmd.arg("--geoip").arg(&geoip);
            }
            cmd.args(args);
            eprintln!("xtask: running {cmd:?} (Ctrl-C to stop)");
            status(&mut cmd)
        }
        Cmd::Test { no_lint, args } => test(no_lint, &args),
        Cmd::Geoip => {
            println!("{}", ensure_geoip(&root)?.display());
            Ok(())
        }
        Cmd::Bench {
            which: Bench::Connect { args },
        } => bench(&root, "connect", &args),
        Cmd::Bench {
            which: Bench::Evidence { args },
        } => bench(&root, "evidence", &args),
        Cmd::Bench {
            which: Bench::Geoip { args },
        } => bench(&root, "geoip", &args),
        Cmd::Bench {
            which: Bench::Policy { args },
        } => bench(&root, "policy", &args),
        Cmd::Bench {
            which: Bench::Process { args },
        } => bench(&root, "process", &args),
        Cmd::Bench {
            which: Bench::Names { args },
        } => bench(&root, "names", &args),
        Cmd::Bench {
            which: Bench::Siem { args },
        } => bench(&root, "siem", &args),
        Cmd::Bench {
            which: Bench::Pods { args },
        } => bench(&root, "pods", &args),
        Cmd::Bench {
            which: Bench::Upgrade { args },
        } => bench(&root, "upgrade", &args),
        Cmd::Bench {
            which: Bench::Systemd { args },
        } => bench(&root, "systemd", &args),
        Cmd::Bench {
            which: Bench::Memory { args },
        } => bench(&root, "memory", &args),
        Cmd::Bench {
            which: Bench::Flows { args },
        } => bench(&root, "flows", &args),
        Cmd::Bench {
            which: Bench::Ui { args },
        } => {
            ensure_browser_driver(&root)?;
            bench(&root, "ui", &args)
        }
    }
}

fn bench(root: &Path, which: &str, args: &[OsString]) -> anyhow::Result<()> {
    ensure_build_tools()?;
    ensure_packages(TEST_PACKAGES)?;
    let geoip = ensure_geoip(root)?;
    cargo(&build_args(true))?;
    if !is_root() {
        bail!("the benchmark attaches BPF programs and needs root");
    }
    let mut cmd = Command::new(root.join("target/release/residency-bench"));
    cmd.arg(which)
        .arg("--write")
        .arg(root.join("BENCHMARKS.md"))
        .env("RESIDENCY_DEFAULT_GEOIP", &geoip)
        .args(args);
    status(&mut cmd)
}

/// The default GeoIP database in `data/geoip/`, fetched with `npm pack`
/// when missing (the npm registry is where the CC0 files are published).
fn ensure_geoip(root: &Path) -> anyhow::Result<PathBuf> {
    let dir = root.join("data/geoip");
    let file = dir.join(GEOIP_FILE);
    if file.is_file() {
        return Ok(file);
    }
    if !on_path("npm") {
        ensure_packages(&[("npm", "npm")])?;
    }
    eprintln!(
        "xtask: fetching the default GeoIP database ({GEOIP_PACKAGE}) into {}",
        dir.display()
    );
    std::fs::create_dir_all(&dir)?;
    let work = dir.join(".fetch");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let packed = output(
        Command::new("npm")
            .args(["pack", "--silent", GEOIP_PACKAGE])
            .current_dir(&work),
    )
    .context("npm pack (the npm registry must be reachable)")?;
    let tarball = work.join(packed.trim().lines().last().unwrap_or_default());
    status(
        Command::new("tar")
            .arg("-xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(&work)
            .arg(format!("package/{GEOIP_FILE}")),
    )?;
    // Rename into place: a reader never sees half a file.
    std::fs::rename(work.join("package").join(GEOIP_FILE), &file)?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(file)
}

/// playwright-core (pinned in tests/ui/package-lock.json), which drives
/// Debian's Chromium through the dashboard, installed with `npm ci` when
/// missing. It never downloads a browser of its own.
fn ensure_browser_driver(root: &Path) -> anyhow::Result<()> {
    let dir = root.join("tests/ui");
    if dir
        .join("node_modules/playwright-core/package.json")
        .is_file()
    {
        return Ok(());
    }
    eprintln!("xtask: installing playwright-core into {}", dir.display());
    status(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
            .current_dir(&dir),
    )
    .context("npm ci in tests/ui (the npm registry must be reachable)")
}

/// `kubernetes-validate`, pip-installed into [`TOOLS_VENV`] when missing
/// (Debian's python3 needs python3-venv for that).
fn ensure_kubernetes_validate(root: &Path) -> anyhow::Result<()> {
    let venv = root.join(TOOLS_VENV);
    if venv.join("bin/kubernetes-validate").is_file() {
        return Ok(());
    }
    if !on_path("python3") {
        ensure_packages(&[("python3", "python3")])?;
    }
    eprintln!(
        "xtask: installing {KUBERNETES_VALIDATE} into {} (checks the manifests in kubernetes/)",
        venv.display()
    );
    let make_venv = || {
        Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv)
            .status()
    };
    if !make_venv().is_ok_and(|st| st.success()) {
        // Debian's python3 has no venv module without python3-venv.
        let _ = std::fs::remove_dir_all(&venv);
        ensure_packages(&[("/usr/share/doc/python3-venv/copyright", "python3-venv")])?;
        status(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    }
    status(Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        KUBERNETES_VALIDATE,
    ]))
    .context("pip install (the PyPI index must be reachable)")
}

fn build_args(release: bool) -> Vec<&'static str> {
    let mut args = vec!["build", "-p", "residency-daemon", "-p", "residency-tests"];
    if release {
        args.push("--release");
    }
    args
}

fn test(no_lint: bool, extra: &[OsString]) -> anyhow::Result<()> {
    ensure_build_tools()?;
    ensure_packages(TEST_PACKAGES)?;
    // The end-to-end tests load the real default database too.
    ensure_geoip(&env::current_dir()?)?;
    ensure_kubernetes_validate(&env::current_dir()?)?;
    ensure_browser_driver(&env::current_dir()?)?;
    // The package test runs `cargo xtask package`: install its tools now,
    // not inside the test's time.
    ensure_packages(PACKAGE_PACKAGES)?;
    ensure_cargo_deb()?;
    let ci = env::var("CI").as_deref() == Ok("true");
    if ci && !is_root() {
        bail!("CI=true but not root: the privileged end-to-end tests must run in CI");
    }
    if !no_lint {
        cargo(&["fmt", "--all", "--check"]).context("formatting: run `cargo fmt --all`")?;
        cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])?;
    }
    // The end-to-end tests run the real binaries, so build them first, in
    // the profile the tests use.
    cargo(&build_args(false))?;
    if !is_root() {
        eprintln!(
            "xtask: not root: the privileged end-to-end tests will skip; run `sudo -E cargo xtask test` to run them"
        );
    }
    // Unit tests first, then the end-to-end crate, so that the run closes on
    // the tests that exercise the kernel. Doc tests are left out: there are
    // none, and their empty runs would close the log.
    let mut totals = Totals::default();
    let suites: [&[&str]; 2] = [
        &[
            "test",
            "--workspace",
            "--exclude",
            "residency-tests",
            "--all-targets",
        ],
        &["test", "-p", "residency-tests", "--all-targets"],
    ];
    for suite in suites {
        let mut cmd = cargo_command();
        cmd.args(suite).args(extra);
        run_counting(&mut cmd, &mut totals)?;
    }
    println!("xtask: {} passed, {} failed", totals.passed, totals.failed);
    if totals.failed > 0 {
        bail!("{} test(s) failed", totals.failed);
    }
    Ok(())
}

#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
}

/// Runs a `cargo test`, passing its output through while adding up the
/// `test result:` lines.
fn run_counting(cmd: &mut Command, totals: &mut Totals) -> anyhow::Result<()> {
    use std::io::{BufRead as _, BufReader, Write as _};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        writeln!(out, "{line}")?;
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| {
                rest.split(';')
                    .find_map(|part| {
                        part.trim()
                            .strip_suffix(word)?
                            .trim()
                            .rsplit(' ')
                            .next()?
                            .parse::<u64>()
                            .ok()
                    })
                    .unwrap_or(0)
            };
            totals.passed += count(" passed");
            totals.failed += count(" failed");
        }
    }
    drop(out);
    let st = child.wait()?;
    if !st.success() {
        println!(
            "xtask: {} passed, {} failed",
            totals.passed,
            totals.failed.max(1)
        );
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

/// `cargo xtask image`: the release daemon and what it needs at run time,
/// in an OCI archive.
fn image(
    root: &Path,
    out: Option<PathBuf>,
    name: Option<String>,
    no_geoip: bool,
) -> anyhow::Result<()> {
    let version = env!("CARGO_PKG_VERSION");
    let out = out.unwrap_or_else(|| root.join(format!("target/oci/residency-{version}.oci.tar")));
    let name = name.unwrap_or_else(|| format!("residency:{version}"));
    // Checked before the long build.
    let full_name = residency_oci::normalize_name(&name)?;
    ensure_build_tools()?;
    let geoip = if no_geoip {
        None
    } else {
        Some(ensure_geoip(root)?)
    };
    cargo(&build_args(true))?;
    let binary = root.join("target/release/residency");
    let default_config = output(Command::new(&binary).arg("default-config"))
        .context("`residency default-config` (the configuration put in the image)")?;

    let mut labels = std::collections::BTreeMap::new();
    for (k, v) in [
        ("org.opencontainers.image.title", "residency"),
        ("org.opencontainers.image.version", version),
        (
            "org.opencontainers.image.description",
            "eBPF egress monitor for data residency",
        ),
        ("org.opencontainers.image.licenses", "Apache-2.0"),
    ] {
        labels.insert(k.to_owned(), v.to_owned());
    }
    if geoip.is_some() {
        labels.insert("io.residency.geoip".to_owned(), GEOIP_PACKAGE.to_owned());
    }
    // rustls-native-certs reads the system bundle for TLS to receivers.
    let certs = Path::new(residency_oci::daemon::CA_BUNDLE);
    if !certs.is_file() {
        eprintln!(
            "xtask: no {} here: TLS sinks in the image will need their own CA",
            certs.display()
        );
    }
    let image = residency_oci::daemon::DaemonImage {
        binary: &binary,
        config: default_config,
        geoip: geoip.as_deref(),
        ca_bundle: certs.is_file().then_some(certs),
        labels,
    }
    .build()?;
    let written = image.write_archive(&name, &out)?;
    println!("{}", written.path.display());
    println!("name:   {full_name}");
    println!("digest: {}", written.manifest_digest);
    println!("size:   {} bytes", written.size);
    eprintln!(
        "xtask: load it with `ctr -n k8s.io images import {}`",
        written.path.display()
    );
    Ok(())
}

/// `cargo xtask package`: the daemon's .deb. cargo-deb runs with
/// `--no-build`: the binary is built here first (unless `--no-build`), and
/// its man pages written, so that cargo-deb only gathers the files.
fn package(
    root: &Path,
    out: Option<PathBuf>,
    debug: bool,
    deb_version: Option<&str>,
    no_build: bool,
) -> anyhow::Result<()> {
    ensure_packages(PACKAGE_PACKAGES)?;
    ensure_cargo_deb()?;
    ensure_geoip(root)?;
    let profile_dir = root
        .join("target")
        .join(if debug { "debug" } else { "release" });
    if no_build {
        if !profile_dir.join("residency").is_file() {
            bail!(
                "{} is not built: run without --no-build",
                profile_dir.join("residency").display()
            );
        }
    } else {
        ensure_build_tools()?;
        // With the same packages as every other build (features are
        // unified over the packages built): building the daemon alone would
        // make a different binary, and the next test build would make it
        // again.
        cargo(&build_args(!debug))?;
    }

    // The man pages, where the assets' `target/release/man/` finds them.
    let man = profile_dir.join("man");
    let _ = std::fs::remove_dir_all(&man);
    status(
        Command::new(profile_dir.join("residency"))
            .arg("man-pages")
            .arg(&man)
            .stdout(std::process::Stdio::null()),
    )?;
    for page in std::fs::read_dir(&man)? {
        // -n: no name or time stamp in the header, so the same page gives
        // the same bytes.
        status(Command::new("gzip").arg("-9n").arg(page?.path()))?;
    }

    let out = out.unwrap_or_else(|| root.join("target/debian"));
    std::fs::create_dir_all(&out)?;
    let mut cmd = cargo_command();
    cmd.args(["deb", "-p", "residency-daemon", "--no-build", "--output"])
        .arg(&out);
    if debug {
        // The dev build carries 300 MB of debug information: strip it, and
        // compress quickly. (cargo-deb warns that it is meant for release
        // builds; the test package is the one exception.)
        cmd.args(["--profile", "dev", "--strip", "--fast"]);
    }
    if let Some(v) = deb_version {
        cmd.args(["--deb-version", v]);
    }
    // cargo-deb prints the package's path on standard output.
    let made = output(cmd.stderr(std::process::Stdio::inherit()))?;
    let deb = made
        .lines()
        .rev()
        .find(|l| {
            Path::new(l.trim())
                .extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("deb"))
        })
        .context("cargo deb printed no .deb path")?;
    println!("{}", deb.trim());
    Ok(())
}

/// cargo-deb, `cargo install`ed when missing or another version.
fn ensure_cargo_deb() -> anyhow::Result<()> {
    let have = cargo_command()
        .args(["deb", "--version"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    if !have
        .as_deref()
        .is_some_and(|v| v.split_whitespace().any(|w| w == CARGO_DEB_VERSION))
    {
        eprintln!(
            "xtask: installing cargo-deb {CARGO_DEB_VERSION} (makes the Debian package; takes a minute or two)"
        );
        status(cargo_command().args([
            "install",
            "--locked",
            &format!("cargo-deb@{CARGO_DEB_VERSION}"),
        ]))?;
    }
    Ok(())
}

/// What every build of the daemon needs: the eBPF toolchain and `protoc`.
fn ensure_build_tools() -> anyhow::Result<()> {
    ensure_ebpf_toolchain()?;
    ensure_packages(BUILD_PACKAGES)
}

/// rust-src and bpf-linker, installed when missing.
fn ensure_ebpf_toolchain() -> anyhow::Result<()> {
    let sysroot = output(Command::new("rustc").args(["--print", "sysroot"]))?;
    let core_src = Path::new(sysroot.trim()).join("lib/rustlib/src/rust/library/core");
    if !core_src.is_dir() {
        eprintln!(
            "xtask: installing the rust-src component (the kernel programs build core from source)"
        );
        status(Command::new("rustup").args(["component", "add", "rust-src"]))?;
    }
    let have = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    if !have
        .as_deref()
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION))
    {
        eprintln!(
            "xtask: installing bpf-linker {BPF_LINKER_VERSION} (links the kernel programs; takes a minute)"
        );
        status(cargo_command().args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
        ]))?;
    }
    Ok(())
}

/// Debian packages, by (command, package), installed when the command is
/// missing; a "command" that starts with `/` is a file the package
/// installs, where `*` stands for any one directory. Without root, says
/// what to install instead of failing.
fn ensure_packages(packages: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(cmd, _)| {
            if cmd.starts_with('/') {
                !file_matches(Path::new("/"), cmd.trim_start_matches('/'))
            } else {
                !on_path(cmd)
            }
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() || !on_path("apt-get") {
        eprintln!(
            "xtask: missing Debian packages {missing:?}; some checks will be skipped (install them as root)"
        );
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages {missing:?}");
    status(Command::new("apt-get").args(["update", "-qq"]))?;
    status(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn on_path(cmd: &str) -> bool {
    env::var_os("PATH")
        .is_some_and(|paths| env::split_paths(&paths).any(|dir| dir.join(cmd).is_file()))
        || Path::new("/usr/sbin").join(cmd).is_file()
}

/// Whether a file matches `pattern` (relative to `dir`; a `*` component
/// matches any one directory).
fn file_matches(dir: &Path, pattern: &str) -> bool {
    let (first, rest) = pattern.split_once('/').unwrap_or((pattern, ""));
    let next = |path: PathBuf| {
        if rest.is_empty() {
            path.is_file()
        } else {
            file_matches(&path, rest)
        }
    };
    if first == "*" {
        std::fs::read_dir(dir).is_ok_and(|entries| entries.flatten().any(|e| next(e.path())))
    } else {
        next(dir.join(first))
    }
}

fn is_root() -> bool {
    // The effective uid, without unsafe code: /proc/self/status "Uid:" line.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn cargo_bin() -> OsString {
    env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// A `cargo` command without the variables `cargo run` set for this xtask
/// (`CARGO_MANIFEST_DIR`, `CARGO_PKG_NAME`, ...). Build scripts that read
/// them (ring's does, with rerun-if-env-changed) would otherwise see other
/// values than under a `cargo build` from a shell or a test, and cargo would
/// rebuild them, and everything above them, each time the two alternate.
fn cargo_command() -> Command {
    let mut cmd = Command::new(cargo_bin());
    for (key, _) in env::vars_os() {
        if let Some(key) = key.to_str()
            && (key.starts_with("CARGO_PKG_")
                || matches!(
                    key,
                    "CARGO_MANIFEST_DIR"
                        | "CARGO_MANIFEST_PATH"
                        | "CARGO_CRATE_NAME"
                        | "CARGO_BIN_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                ))
        {
            cmd.env_remove(key);
        }
    }
    cmd
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    status(cargo_command().args(args))
}

fn status(cmd: &mut Command) -> anyhow::Result<()> {
    let st = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn workspace_root() -> anyhow::Result<PathBuf> {
    let manifest = env::var_os("CARGO_MANIFEST_DIR").context("run through `cargo xtask`")?;
    Ok(Path::new(&manifest)
        .parent()
        .context("xtask has no parent directory")?
        .to_path_buf())
}
