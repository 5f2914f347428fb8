//! `residency evidence verify`: re-reads the store (or an export bundle)
//! and names the first record or checkpoint that does not match.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use residency_evidence::{
    DEFAULT_STATE_DIR, chain,
    verify::{self, Report},
};

use super::exit;

/// `residency evidence ...`
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Re-read every record and report the first whose bytes, order or
    /// chain do not match, and any checkpoint whose signature fails.
    ///
    /// Recomputes the SHA-256 chain from the first record (or from the
    /// signed pruning point), re-derives every indexed column from the
    /// record's bytes, and checks each Ed25519 checkpoint's signature and
    /// chain head. Exits 0 when everything matches, 1 on any fault.
    #[command(after_help = "Examples:\n  \
        residency evidence verify                       # the installed store, /var/lib/residency\n  \
        residency evidence verify --store /srv/residency --public-key KEY\n  \
        residency evidence verify --bundle evidence-2026-11.tar --public-key KEY\n\n\
        KEY is the base64 public key served at /v1/checkpoints/latest (or kept by your SIEM).\n\
        Without it the key beside the store (or in the bundle) is used, which proves\n\
        consistency but not who signed.")]
    Verify(VerifyArgs),
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Evidence directory or database file.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_STATE_DIR, conflicts_with = "bundle")]
    store: PathBuf,
    /// An export bundle (tar from /v1/evidence/export) instead of a store.
    #[arg(long, value_name = "FILE")]
    bundle: Option<PathBuf>,
    /// The Ed25519 public key to trust (base64 or hex).
    #[arg(long, value_name = "KEY")]
    public_key: Option<String>,
    /// A checkpoint kept outside this host (your SIEM's copy, or
    /// /v1/checkpoints/latest saved earlier), as SEQ:HEAD: the chain
    /// must pass through it. Only this catches records cut from, or
    /// rewritten after, the newest checkpoint on the host. Repeatable.
    #[arg(long, value_name = "SEQ:HEAD")]
    checkpoint: Vec<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn execute(command: Command) -> ExitCode {
    match command {
        Command::Verify(args) => verify(&args),
    }
}

fn verify(args: &VerifyArgs) -> ExitCode {
    let key = match args
        .public_key
        .as_deref()
        .map(chain::parse_public_key)
        .transpose()
    {
        Ok(k) => k,
        Err(e) => return exit::fail(&format!("--public-key: {e}"), exit::USAGE),
    };
    let mut pins = Vec::new();
    for c in &args.checkpoint {
        let parsed = c.split_once(':').and_then(|(seq, head)| {
            Some((seq.trim().parse::<u64>().ok()?, chain::unhex::<32>(head)?))
        });
        let Some(pin) = parsed else {
            return exit::fail(
                &format!(
                    "--checkpoint {c}: expected SEQ:HEAD, the sequence number and the 64 hex digits of the chain head (as /v1/checkpoints/latest gives them)"
                ),
                exit::USAGE,
            );
        };
        pins.push(pin);
    }
    let is_tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let json = args.json;
    let mut progress = |done: u64, total: u64| {
        if is_tty && !json {
            eprint!("\rverifying: {done} of {total} records");
        }
    };
    let bundle = args.bundle.as_deref();
    let report = match bundle {
        Some(b) => verify::bundle(b, key),
        None => verify::store(&args.store, key, &pins, &mut progress),
    };
    if is_tty && !json && bundle.is_none() {
        eprintln!();
    }
    let report = match report {
        Ok(r) => r,
        Err(e) => return exit::fail(&e, exit::DATAERR),
    };
    // A store's directory keeps the outcome, for the dashboard; one that
    // cannot be written to (a read-only copy) only loses that note.
    if bundle.is_none()
        && args.store.is_dir()
        && let Err(e) = verify::LastVerify::of(&report).save(&args.store)
    {
        eprintln!(
            "note: cannot write {} in {}: {e}",
            verify::LAST_VERIFY,
            args.store.display()
        );
    }
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(t) => println!("{t}"),
            Err(e) => eprintln!("error: {e}"),
        }
    } else {
        print_report(&report, bundle.unwrap_or(&args.store));
    }
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_report(report: &Report, what: &Path) {
    println!(
        "{}: {} records ({}..{}), {:.1} MB in {:.2} s ({:.0} MB/s)",
        what.display(),
        report.records,
        report.first_seq.unwrap_or(0),
        report.last_seq.unwrap_or(0),
        report.mb(),
        report.elapsed.as_secs_f64(),
        report.mb_per_s()
    );
    if report.base_seq > 0 {
        println!(
            "  chain starts after record {} (pruned or exported from there)",
            report.base_seq
        );
    }
    println!(
        "  checkpoints: {} of {} valid{}; public key: {}",
        report.checkpoints_valid,
        report.checkpoints,
        report
            .last_signed_seq
            .map_or(String::new(), |s| format!(", newest signed at record {s}")),
        report.key_source
    );
    if report.unsigned_tail > 0 {
        println!(
            "  {} record(s) after the newest checkpoint are chained but not yet signed",
            report.unsigned_tail
        );
    }
    if report.ok() {
        println!("OK: every record and checkpoint matches");
    } else {
        for f in &report.faults {
            println!("FAULT: {}", f.what);
        }
        if report.more_faults > 0 {
            println!("... and {} more faults", report.more_faults);
        }
        if let Some(first) = report.faults.first() {
            eprintln!("error: evidence does not verify: {}", first.what);
        }
    }
}
