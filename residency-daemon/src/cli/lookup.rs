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
    /// IPv4 or IPv6 addresses, or host names (judged by the endpoint
    /// catalog and the rules that name hosts; names are not resolved).
    #[arg(required = true, value_name = "IP|NAME")]
    targets: Vec<String>,
}

/// An address or a host name, from the command line.
#[derive(Debug, Clone)]
pub enum Target {
    Ip(IpAddr),
    Name(String),
}

impl Target {
    /// An address if it parses as one, else a host name (checked).
    ///
    /// # Errors
    /// A message for something that is neither.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Ok(ip) = s.parse() {
            return Ok(Target::Ip(ip));
        }
        residency_catalog::Pattern::parse(s)
            .ok()
            .filter(|p| !p.is_wildcard())
            .map(|_| Target::Name(s.trim_end_matches('.').to_ascii_lowercase()))
            .ok_or_else(|| {
                format!(
                    "\"{s}\" is neither an IP address nor a host name (e.g. 203.0.113.7 or api.example.com)"
                )
            })
    }
}

pub fn execute(args: &Args) -> ExitCode {
    let mut targets = Vec::new();
    for t in &args.targets {
        match Target::parse(t) {
            Ok(t) => targets.push(t),
            Err(e) => {
                eprintln!("residency lookup: {e}");
                return ExitCode::from(64);
            }
        }
    }
    decide_and_print(
        args.config.as_deref(),
        args.geoip.as_deref(),
        args.workload.as_deref(),
        args.json,
        &targets,
    )
}

/// Decides for each address or name and prints the reports (`explain`
/// too).
pub fn decide_and_print(
    config: Option<&Path>,
    geoip: Option<&Path>,
    workload: Option<&str>,
    json: bool,
    targets: &[Target],
) -> ExitCode {
    let config = match config.map_or_else(Config::builtin, Config::from_file) {
        Ok(c) => c,
        Err(e) => return exit::config(&e),
    };
    let index = match residency_daemon::lookup::workload_index(&config, workload) {
        Ok(i) => i,
        Err(e) => return exit::lookup(&e),
    };
    for t in targets {
        if let Target::Name(name) = t {
            let decided =
                residency_daemon::policy::decide_name(&config, index, name, jiff::Timestamp::now());
            let endpoint = config
                .catalog
                .lookup(name)
                .map(residency_daemon::naming::endpoint_info);
            if json {
                println!("{}", name_json(name, &decided, endpoint.as_deref()));
            } else {
                print!("{}", name_text(name, &decided, endpoint.as_deref()));
            }
        }
    }
    let ips: Vec<IpAddr> = targets
        .iter()
        .filter_map(|t| match t {
            Target::Ip(ip) => Some(*ip),
            Target::Name(_) => None,
        })
        .collect();
    if ips.is_empty() {
        return ExitCode::SUCCESS;
    }
    match residency_daemon::lookup(&config, geoip, workload, &ips) {
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

fn name_text(
    name: &str,
    decided: &Result<residency_daemon::policy::Decision, String>,
    endpoint: Option<&residency_record::EndpointInfo>,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{name}");
    match decided {
        Ok(d) => {
            let _ = writeln!(out, "  verdict:    {}", verdict_str(d.verdict));
            let _ = writeln!(out, "  decided by: {}", kind_str(d.kind));
            if let Some(e) = endpoint {
                let _ = writeln!(
                    out,
                    "  catalog:    {} ({}, {}): {}{}",
                    e.id,
                    e.provider,
                    e.service,
                    e.jurisdiction.join(", "),
                    if e.determines_region {
                        ""
                    } else {
                        " (the name does not fix the region)"
                    }
                );
                let _ = writeln!(out, "  source:     {}", e.source);
            }
            for (i, reason) in d.reasons.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "  {} {reason}",
                    if i == 0 { "why:       " } else { "           " }
                );
            }
        }
        Err(why) => {
            let _ = writeln!(out, "  verdict:    by GeoIP of its addresses");
            let _ = writeln!(out, "  why:        {why}");
        }
    }
    out
}

fn name_json(
    name: &str,
    decided: &Result<residency_daemon::policy::Decision, String>,
    endpoint: Option<&residency_record::EndpointInfo>,
) -> serde_json::Value {
    let endpoint = endpoint.map(|e| {
        serde_json::json!({
            "id": e.id, "pattern": e.pattern, "provider": e.provider, "service": e.service,
            "jurisdiction": e.jurisdiction, "determines_region": e.determines_region,
            "source": e.source, "origin": e.origin,
        })
    });
    match decided {
        Ok(d) => serde_json::json!({
            "name": name,
            "verdict": verdict_str(d.verdict),
            "decided_by": kind_str(d.kind),
            "rule": { "id": d.rule_id },
            "endpoint": endpoint,
            "reasons": d.reasons,
        }),
        Err(why) => serde_json::json!({
            "name": name,
            "verdict": null,
            "decided_by": "geoip",
            "endpoint": endpoint,
            "reasons": [why],
        }),
    }
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
