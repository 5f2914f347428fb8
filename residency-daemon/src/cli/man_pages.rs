//! `residency man-pages DIR` (hidden): writes the manual pages, residency(1)
//! and one page per subcommand (residency-run(1), residency-evidence-verify(1),
//! ...), from the same clap definitions as `--help`, so the two cannot drift.
//! `cargo xtask package` runs it and installs the pages, compressed, in
//! /usr/share/man/man1.

use std::{path::PathBuf, process::ExitCode};

use clap::CommandFactory as _;
use clap_mangen::roff::{Roff, bold, roman};

use super::{Cli, exit};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The directory to write the pages into (created if missing).
    #[arg(value_name = "DIR")]
    dir: PathBuf,
}

pub fn execute(args: &Args) -> ExitCode {
    match write(args) {
        Ok(n) => {
            println!("{n} manual pages in {}", args.dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => exit::fail(
            &format!(
                "cannot write the manual pages to {}: {e}",
                args.dir.display()
            ),
            exit::CANTCREAT,
        ),
    }
}

/// The files a packaged installation uses, for residency(1).
const FILES: &[(&str, &str)] = &[
    (
        "/etc/residency/residency.toml",
        "The configuration (the Debian package installs one in monitor mode). \
         `residency default-config` prints every setting with its default; \
         `residency check --config FILE` validates a change before \
         `systemctl reload residency` applies it.",
    ),
    (
        "/usr/share/residency/geoip/geo-whois-asn-country.mmdb",
        "The default GeoIP database (CC0, geo-whois-asn-country), which the \
         packaged configuration names in geoip.database.",
    ),
    (
        "/var/lib/residency",
        "The evidence store (evidence.db, index.db), the key that signs its \
         checkpoints (evidence.key) and the API token (api.token). \
         `dpkg --purge` keeps the store and its key.",
    ),
    (
        "/run/residency/api.sock",
        "The REST API for root (`residency flows`, `residency violations`).",
    ),
    (
        "/var/log/residency",
        "Where output.events may write records to a file.",
    ),
    (
        "/sys/fs/bpf/residency",
        "The pinned kernel programs, links and maps that keep enforcing while \
         the daemon restarts; `residency detach` removes them.",
    ),
    (
        "/usr/lib/systemd/system/residency.service",
        "The systemd unit.",
    ),
];

fn write(args: &Args) -> std::io::Result<usize> {
    std::fs::create_dir_all(&args.dir)?;
    // Hidden subcommands (this one) get no page.
    clap_mangen::generate_to(Cli::command(), &args.dir)?;
    // The installed files, which `--help` has no place for, close residency(1).
    let mut files = Roff::new();
    files.control("SH", ["FILES"]);
    for (path, what) in FILES {
        files
            .control("TP", [])
            .text([bold(*path)])
            .text([roman(*what)]);
    }
    let mut page = std::fs::OpenOptions::new()
        .append(true)
        .open(args.dir.join("residency.1"))?;
    files.to_writer(&mut page)?;
    Ok(std::fs::read_dir(&args.dir)?
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "1"))
        .count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_visible_subcommand_gets_a_page_and_the_hidden_one_none() {
        let dir = tempfile::tempdir().unwrap();
        let n = write(&Args {
            dir: dir.path().to_path_buf(),
        })
        .unwrap();
        let main = std::fs::read_to_string(dir.path().join("residency.1")).unwrap();
        assert!(main.starts_with(".ie"), "not roff: {}", &main[..40]);
        assert!(main.contains(".TH residency 1"), "{main}");
        assert!(
            main.contains("residency\\-run(1)"),
            "no SEE ALSO / subcommand list"
        );
        for page in [
            "residency-run.1",
            "residency-check.1",
            "residency-evidence-verify.1",
        ] {
            assert!(dir.path().join(page).is_file(), "{page} missing");
        }
        assert!(!dir.path().join("residency-man-pages.1").exists());
        assert!(main.contains(".SH FILES"), "{main}");
        assert!(main.contains("/etc/residency/residency.toml"), "{main}");
        assert!(n > 10, "only {n} pages");
    }
}
