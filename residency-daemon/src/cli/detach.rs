//! `residency detach`: remove the pinned programs a daemon left attached.

use std::process::ExitCode;

use residency_daemon::kernel::{
    config::{DEFAULT_INSTANCE, valid_instance},
    pins,
};

use super::exit;

/// Prints a line; a closed pipe (`| head`) is not an error worth a panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// Options of `residency detach`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The instance to detach (`kernel.instance` of its configuration).
    #[arg(long, value_name = "NAME", default_value = DEFAULT_INSTANCE, conflicts_with = "all")]
    instance: String,
    /// Detach every instance pinned on this host.
    #[arg(long)]
    all: bool,
    /// Remove the pins even while a daemon runs the instance: its programs
    /// then detach when that daemon exits.
    #[arg(long)]
    force: bool,
}

pub fn execute(args: &Args) -> ExitCode {
    if !args.all && !valid_instance(&args.instance) {
        return exit::fail(
            &format!(
                "--instance {}: use 1-64 letters, digits, '.', '_' or '-'",
                args.instance
            ),
            exit::USAGE,
        );
    }
    if !pins::is_bpffs(std::path::Path::new(pins::BPFFS)) {
        say!(
            "bpffs is not mounted at {}: nothing is pinned, no programs were left attached",
            pins::BPFFS
        );
        return ExitCode::SUCCESS;
    }
    let wanted = if args.all {
        pins::instances()
    } else {
        vec![args.instance.clone()]
    };
    let present: Vec<String> = wanted
        .into_iter()
        .filter(|i| std::path::Path::new(pins::ROOT).join(i).is_dir())
        .collect();
    if present.is_empty() {
        say!(
            "nothing to detach: no instance{} pinned under {}",
            if args.all {
                String::new()
            } else {
                format!(" {}", args.instance)
            },
            pins::ROOT
        );
        return ExitCode::SUCCESS;
    }
    let mut failed = false;
    for instance in present {
        match pins::detach(&instance, args.force) {
            Ok(removed) => {
                let by = removed
                    .last_pid
                    .map(|p| format!(", left by pid {p}"))
                    .unwrap_or_default();
                say!("instance {instance} ({}/{instance}{by}):", pins::ROOT);
                if removed.links.is_empty() {
                    say!("  no programs were attached");
                }
                for (program, ids) in &removed.links {
                    if let Some((link, prog)) = ids {
                        say!("  detached {program} (link {link}, program {prog})");
                    } else {
                        say!("  detached {program} (its link was already defunct)");
                    }
                }
                if !removed.maps.is_empty() {
                    say!("  removed maps {}", removed.maps.join(", "));
                }
            }
            Err(e) => {
                eprintln!("error: instance {instance}: {e}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
