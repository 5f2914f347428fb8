//! `residency-bench systemd`: how long `systemctl start residency` takes to
//! come back ready, under a real systemd, with the full `GeoIP` database
//! and without one.
//!
//! One machine ([`Machine`]: systemd-nspawn booting an overlay of this
//! host's root) gets the release `residency` as /usr/bin/residency, the unit
//! from `systemd/` and an enforcing configuration for a cgroup inside it.
//! Each run starts the unit and stops it again, the two cases alternating
//! (the order turns each run). The unit is `Type=notify` and the daemon
//! sends READY=1 once the `GeoIP` tables and the policy are in the kernel
//! and the programs attached, so `systemctl start` returning is the moment
//! enforcement is in force. Two times per start:
//!
//! - `systemctl start` to its return, as an operator or a unit ordered
//!   after residency waits (the `ExecStartPre` lines included: the bpffs
//!   check and `residency check`);
//! - the main process's start to READY=1, from systemd's own timestamps
//!   (`ExecMainStartTimestampMonotonic`, `ActiveEnterTimestampMonotonic`).
//!
//! Pins left by a stop (with the default `kernel.persist`) are removed
//! before each start, so each start is a cold one.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, bail, ensure};
use residency_tests::{machine::Machine, read_records, workspace_bin};

use super::write_section;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Case {
    FullGeoip,
    NoGeoip,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::FullGeoip => "full default GeoIP database",
            Case::NoGeoip => "no GeoIP database",
        }
    }
}

fn config(case: Case) -> String {
    let geoip = match case {
        Case::FullGeoip => "[geoip]\ndatabase = \"/etc/residency/geoip.mmdb\"\n",
        Case::NoGeoip => "",
    };
    format!(
        r#"mode = "enforce"

[kernel]
cgroup = "/restest"

{geoip}
[output]
events = "/var/log/residency/events.jsonl"

[api]
listen = "off"
socket = "off"

[[deny]]
name = "forbidden"
destinations = ["127.0.0.2/32"]
"#
    )
}

/// Where the daemon looks for a database when none is configured: none of
/// them may exist in the machine for the no-`GeoIP` case.
const SEARCHED: &str = "/var/lib/residency/geoip/*.mmdb /usr/share/residency/geoip/*.mmdb \
                        /usr/share/GeoIP/*.mmdb /var/lib/GeoIP/*.mmdb";

struct Sample {
    start_ms: f64,
    main_to_ready_ms: f64,
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index into a short vector"
    )]
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)]
}

fn monotonic_us(m: &Machine, property: &str) -> anyhow::Result<f64> {
    let v = m.unit_property("residency", property)?;
    let us: u64 = v.parse().with_context(|| format!("{property} = {v:?}"))?;
    #[expect(clippy::cast_precision_loss, reason = "microseconds since boot")]
    Ok(us as f64)
}

fn one_start(m: &Machine, case: Case) -> anyhow::Result<Sample> {
    m.write("/etc/residency/residency.toml", &config(case), 0o640)?;
    // A cold start: no pins from the last run, a fresh output.
    m.sh_ok("rm -rf /sys/fs/bpf/residency /var/log/residency/events.jsonl")?;
    let t = Instant::now();
    m.systemctl(&["start", "residency"])
        .with_context(|| m.journal("residency"))?;
    let start_ms = t.elapsed().as_secs_f64() * 1000.0;
    ensure!(m.unit_property("residency", "ActiveState")? == "active");
    let main_to_ready_ms = (monotonic_us(m, "ActiveEnterTimestampMonotonic")?
        - monotonic_us(m, "ExecMainStartTimestampMonotonic")?)
        / 1000.0;
    // The daemon says which database it put in the kernel.
    let records = read_records(&m.path("/var/log/residency/events.jsonl"))?;
    let started = records
        .iter()
        .find(|r| r["event"]["action"] == "started")
        .context("no started record")?;
    let version = &started["residency"]["geoip"]["version"];
    match case {
        Case::FullGeoip => ensure!(
            version.is_string(),
            "the full database was not loaded: {started}"
        ),
        Case::NoGeoip => ensure!(version.is_null(), "a database was loaded: {started}"),
    }
    m.systemctl(&["stop", "residency"])?;
    Ok(Sample {
        start_ms,
        main_to_ready_ms,
    })
}

/// Runs the benchmark and writes its table.
///
/// # Errors
/// If the machine does not boot or a start fails.
pub fn run(db: &Path, runs: usize, write: Option<PathBuf>) -> anyhow::Result<()> {
    ensure!(db.is_file(), "no GeoIP database at {}", db.display());
    let unit = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../systemd/residency.service");
    let binary = workspace_bin("residency")?;
    let m = Machine::boot("bench")?;
    m.copy_in(&binary, "/usr/bin/residency", 0o755)?;
    m.copy_in(&unit, "/etc/systemd/system/residency.service", 0o644)?;
    m.sh_ok("install -d -m 0755 /etc/residency && mkdir /sys/fs/cgroup/restest")?;
    m.copy_in(db, "/etc/residency/geoip.mmdb", 0o644)?;
    let found = m.sh(&format!("ls {SEARCHED} 2>/dev/null"));
    if !found.stdout.is_empty() {
        bail!(
            "a GeoIP database the daemon would find by itself is in the machine: {}",
            String::from_utf8_lossy(&found.stdout)
        );
    }
    m.systemctl(&["daemon-reload"])?;

    // One start of each, not counted: the first reads the binary and the
    // database from disk into the page cache.
    for case in [Case::FullGeoip, Case::NoGeoip] {
        one_start(&m, case)?;
    }
    let mut samples: Vec<(Case, Sample)> = Vec::new();
    for i in 0..runs {
        let order = if i % 2 == 0 {
            [Case::FullGeoip, Case::NoGeoip]
        } else {
            [Case::NoGeoip, Case::FullGeoip]
        };
        for case in order {
            let s = one_start(&m, case)?;
            eprintln!(
                "run {}: {}: systemctl start {:.0} ms, main process to READY {:.0} ms",
                i + 1,
                case.name(),
                s.start_ms,
                s.main_to_ready_ms
            );
            samples.push((case, s));
        }
    }

    let db_size = std::fs::metadata(db)?.len();
    let mut table = String::new();
    writeln!(
        table,
        "Measured by `cargo xtask bench systemd` (`residency-bench systemd --runs {runs}`): the \
         release build under systemd {} in a container booted by systemd-nspawn, `Type=notify`, \
         enforce mode, the unit's own sandbox. Full database: `{}` ({:.1} MiB). Each start is \
         cold (no pins left), after one unmeasured start of each case.\n",
        systemd_version(&m),
        db.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        db_size as f64 / (1024.0 * 1024.0)
    )?;
    writeln!(
        table,
        "| case | runs | `systemctl start` to ready, p50 | max | main process to READY=1, p50 | max |"
    )?;
    writeln!(table, "|---|---|---|---|---|---|")?;
    let mut p50s = Vec::new();
    for case in [Case::FullGeoip, Case::NoGeoip] {
        let start: Vec<f64> = samples
            .iter()
            .filter(|(c, _)| *c == case)
            .map(|(_, s)| s.start_ms)
            .collect();
        let main: Vec<f64> = samples
            .iter()
            .filter(|(c, _)| *c == case)
            .map(|(_, s)| s.main_to_ready_ms)
            .collect();
        p50s.push(percentile(start.clone(), 50.0));
        writeln!(
            table,
            "| {} | {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms |",
            case.name(),
            start.len(),
            percentile(start.clone(), 50.0),
            percentile(start, 100.0),
            percentile(main.clone(), 50.0),
            percentile(main, 100.0)
        )?;
    }
    writeln!(
        table,
        "\nThe full database makes `systemctl start` {:.1}× as long (p50).",
        p50s[0] / p50s[1]
    )?;
    print!("{table}");
    if let Some(path) = write {
        write_section(&path, "systemd", &table)?;
        println!("written to {}", path.display());
    }
    Ok(())
}

fn systemd_version(m: &Machine) -> String {
    m.sh_ok("systemctl --version")
        .ok()
        .and_then(|v| v.split_whitespace().nth(1).map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}
