//! Exit codes, and which error gets which: the one place that decides.
//!
//! sysexits.h codes, so that service managers and scripts can tell a
//! configuration the daemon refuses, an unusable data file and missing
//! privileges apart from a crash (`--help` lists them).

use std::process::ExitCode;

use residency_api::client::ClientError;
use residency_daemon::{LookupError, RunError, config::ConfigError, geodb::GeoError};

/// A command line the daemon cannot act on (clap uses 2 too).
pub const USAGE: u8 = 2;
/// An invalid configuration (or cases file): `EX_CONFIG`.
pub const CONFIG: u8 = 64;
/// An unusable data file (a `GeoIP` database, an evidence store that does
/// not read): `EX_DATAERR`.
pub const DATAERR: u8 = 65;
/// An output or store that cannot be created: `EX_CANTCREAT`.
pub const CANTCREAT: u8 = 73;
/// The daemon cannot be reached: `EX_UNAVAILABLE`.
pub const UNAVAILABLE: u8 = 69;
/// Missing privileges: `EX_NOPERM`.
pub const NOPERM: u8 = 77;

/// Prints the error and returns its exit code.
pub fn fail(e: &dyn std::fmt::Display, code: u8) -> ExitCode {
    eprintln!("error: {e}");
    if code == 1 {
        ExitCode::FAILURE
    } else {
        ExitCode::from(code)
    }
}

/// A configuration the daemon refuses.
pub fn config(e: &ConfigError) -> ExitCode {
    fail(e, CONFIG)
}

/// Why `residency run` stopped.
pub fn run(e: &RunError) -> ExitCode {
    let code = match e {
        // Whoever can change a GeoIP database decides what is blocked: a
        // configuration matter, like a configuration file others can write.
        RunError::Config(_) | RunError::Sink(_) | RunError::Geo(GeoError::Untrusted { .. }) => {
            CONFIG
        }
        RunError::Geo(_) => DATAERR,
        RunError::Output(_) | RunError::Evidence(_) => CANTCREAT,
        RunError::EvidenceNeedsRoot(_) => NOPERM,
        RunError::Kernel(k) if k.is_permission() => NOPERM,
        _ => 1,
    };
    fail(e, code)
}

/// Why `lookup`, `explain` or `test-policy` could not decide.
pub fn lookup(e: &LookupError) -> ExitCode {
    let code = match e {
        LookupError::Cases(_) | LookupError::UnknownWorkload { .. } => CONFIG,
        LookupError::Geo(_) => DATAERR,
    };
    fail(e, code)
}

/// Why an API command failed.
pub fn client(e: &ClientError) -> ExitCode {
    fail(e, client_code(e))
}

fn client_code(e: &ClientError) -> u8 {
    match e {
        ClientError::Unreachable { .. } => UNAVAILABLE,
        ClientError::Api {
            status: 401 | 403, ..
        }
        | ClientError::Token { denied: true, .. } => NOPERM,
        // A malformed --api: sysexits' `EX_USAGE` is 64 too.
        ClientError::Target { .. } => CONFIG,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_have_their_codes() {
        let cases = [
            (
                ClientError::Unreachable {
                    target: "t".into(),
                    reason: "r".into(),
                },
                69,
            ),
            (
                ClientError::Api {
                    status: 401,
                    message: "m".into(),
                },
                77,
            ),
            (
                ClientError::Token {
                    path: "/p".into(),
                    reason: "r".into(),
                    denied: true,
                },
                77,
            ),
            (
                ClientError::Target {
                    given: "g".into(),
                    reason: "r".into(),
                },
                64,
            ),
            (
                ClientError::Api {
                    status: 500,
                    message: "m".into(),
                },
                1,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(client_code(&e), code, "{e}");
        }
    }
}
