//! `residency lookup`: what the daemon would decide for addresses, and
//! why, without loading anything.

use std::{
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    process::ExitCode,
};

use residency_daemon::{LookupReport, config::Config};
use residency_record::{kind_str, verdict_str};

use super::exit;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Configuration file (default: the built-in one).
    #[arg(short, long, env = "RESIDENCY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// GeoIP database (.mmdb) instead of the configured or found one.
    #[arg(long, value_name = "FILE")]
    geoip: Option<PathBuf>,
    /// One JSON object per address instead of text.
    #[arg(long)]
    json: bool,
    /// Decide as for this workload (default: a process no workload
    /// selects, under the default policy).
    #[arg(long)]
    workload: Option<String>,
    /// IPv4 or IPv6 addresses.
    #[arg(required = true, value_name = "IP")]
    ips: Vec<IpAddr>,
}

pub fn execute(args: &Args) -> ExitCode {
    decide_and_print(
        args.config.as_deref(),
        args.geoip.as_deref(),
        args.workload.as_deref(),
        args.json,
        &args.ips,
    )
}

/// Decides for each address and prints the reports (`explain` too).
pub fn decide_and_print(
    config: Option<&Path>,
    geoip: Option<&Path>,
    workload: Option<&str>,
    json: bool,
    ips: &[IpAddr],
) -> ExitCode {
    let config = match config.map_or_else(Config::builtin, Config::from_file) {
        Ok(c) => c,
        Err(e) => return exit::config(&e),
    };
    match residency_daemon::lookup(&config, geoip, workload, ips) {
        Ok(reports) => {
            for r in &reports {
                if json {
                    println!("{}", report_json(r));
                } else {
                    print!("{}", report_text(r));
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => exit::lookup(&e),
    }
}

fn report_text(r: &LookupReport) -> String {
    let d = &r.decision;
    let mut out = String::new();
    let _ = writeln!(out, "{}", r.ip);
    let _ = writeln!(out, "  verdict:    {}", verdict_str(d.verdict));
    let by = kind_str(d.kind);
    match &r.rule {
        Some(rule) => {
            let _ = writeln!(
                out,
                "  decided by: {by} (rule \"{rule}\", id {})",
                d.rule_id
            );
        }
        None => {
            let _ = writeln!(out, "  decided by: {by}");
        }
    }
    if let Some(c) = d.country {
        let _ = writeln!(out, "  country:    {c} (as the kernel judges it)");
    }
    if let Some(det) = &r.detail {
        let mut parts = Vec::new();
        if let Some(c) = det.country {
            parts.push(format!("located {c}"));
        }
        if let Some(c) = det.registered_country {
            parts.push(format!("registered {c}"));
        }
        if let Some(c) = &det.continent {
            parts.push(format!("continent {c}"));
        }
        if let Some(n) = det.asn {
            parts.push(
                format!("AS{n} {}", det.as_org.as_deref().unwrap_or(""))
                    .trim_end()
                    .to_owned(),
            );
        }
        if !parts.is_empty() {
            let _ = writeln!(out, "  database:   {}", parts.join(", "));
        }
    }
    match &r.database {
        Some((label, path)) => {
            let _ = writeln!(out, "  data:       {label} ({})", path.display());
        }
        None => {
            let _ = writeln!(out, "  data:       no GeoIP database found");
        }
    }
    for (i, reason) in d.reasons.iter().enumerate() {
        let _ = writeln!(
            out,
            "  {} {reason}",
            if i == 0 { "why:       " } else { "           " }
        );
    }
    out
}

fn report_json(r: &LookupReport) -> serde_json::Value {
    let d = &r.decision;
    serde_json::json!({
        "ip": r.ip.to_string(),
        "verdict": verdict_str(d.verdict),
        "decided_by": kind_str(d.kind),
        "rule": { "id": d.rule_id, "name": r.rule },
        "country": d.country.map(|c| c.to_string()),
        "database": r.detail.as_ref().map(|det| serde_json::json!({
            "country": det.country.map(|c| c.to_string()),
            "registered_country": det.registered_country.map(|c| c.to_string()),
            "continent": det.continent,
            "asn": det.asn,
            "as_org": det.as_org,
        })),
        "geoip": r.database.as_ref().map(|(label, path)| serde_json::json!({ "version": label, "path": path.display().to_string() })),
        "reasons": d.reasons,
    })
}
