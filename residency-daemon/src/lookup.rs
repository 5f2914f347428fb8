//! Decisions made in userspace, as the kernel would make them, for the
//! commands that explain policy without loading anything: `residency
//! lookup`, `explain` and `test-policy`. The same rules and the same
//! flattened `GeoIP` tables as the kernel (see [`crate::policy::decide`]),
//! and the full database for detail.

use std::{path::PathBuf, sync::Arc};

use residency_record::{GeoDetail, verdict_str};

use crate::{
    config::{Config, ConfigError},
    geodb, policy,
};

/// Why a lookup could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The cases file of `test-policy` is not valid.
    #[error(transparent)]
    Cases(ConfigError),
    #[error("GeoIP: {0}")]
    Geo(#[from] geodb::GeoError),
    #[error("there is no workload \"{name}\" in the configuration (workloads: {known})")]
    UnknownWorkload { name: String, known: String },
}

/// The policy index of a workload by name (`None`: the default policy, 0).
///
/// # Errors
/// [`LookupError::UnknownWorkload`], listing the workloads there are.
pub fn workload_index(config: &Config, workload: Option<&str>) -> Result<u16, LookupError> {
    let Some(name) = workload else {
        return Ok(0);
    };
    config
        .workload(name)
        .map(|(i, _)| i)
        .ok_or_else(|| LookupError::UnknownWorkload {
            name: name.to_owned(),
            known: config
                .workloads
                .iter()
                .map(|w| w.name.clone())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// What `residency lookup` says about one address.
#[derive(Debug, Clone)]
pub struct LookupReport {
    pub ip: std::net::IpAddr,
    pub decision: policy::Decision,
    /// The rule that decided, by name.
    pub rule: Option<String>,
    /// What the full database says.
    pub detail: Option<GeoDetail>,
    /// The database consulted, as `type@build_epoch`, and its path.
    pub database: Option<(String, PathBuf)>,
}

/// Decides about addresses as the running daemon would with `config`,
/// without touching the kernel: the same rules, the same flattened `GeoIP`
/// tables, and the full database for detail.
///
/// # Errors
/// If the workload is unknown or the `GeoIP` database cannot be prepared.
pub fn lookup(
    config: &Config,
    geoip_path: Option<&std::path::Path>,
    workload: Option<&str>,
    ips: &[std::net::IpAddr],
) -> Result<Vec<LookupReport>, LookupError> {
    Lookup::new(config, geoip_path)?.decide(workload, ips)
}

/// A configuration and its `GeoIP` database, prepared once for many
/// lookups.
pub struct Lookup<'a> {
    config: &'a Config,
    prepared: Option<geodb::Prepared>,
    generation: Option<geodb::Generation>,
}

impl<'a> Lookup<'a> {
    /// Finds and prepares the database as the daemon would.
    ///
    /// # Errors
    /// If the `GeoIP` database cannot be prepared.
    pub fn new(
        config: &'a Config,
        geoip_path: Option<&std::path::Path>,
    ) -> Result<Self, LookupError> {
        let explicit = geoip_path
            .map(std::path::Path::to_path_buf)
            .or_else(|| config.geoip.database.clone());
        let path = geodb::discover(explicit.as_deref());
        let asn = geodb::discover_asn(config.geoip.asn_database.as_deref());
        let prepared = match &path {
            Some(p) => Some(geodb::prepare(p, asn.as_deref())?),
            None => None,
        };
        let generation = prepared
            .as_ref()
            .zip(path.as_ref())
            .map(|(p, path)| geodb::Generation {
                number: 1,
                version: Arc::new(p.db.version().clone()),
                path: path.clone(),
                db: p.db.clone(),
                asn: p.asn.clone(),
            });
        Ok(Lookup {
            config,
            prepared,
            generation,
        })
    }

    /// The decision for each address, for `workload` (`None`: the default
    /// policy).
    ///
    /// # Errors
    /// If there is no such workload.
    pub fn decide(
        &self,
        workload: Option<&str>,
        ips: &[std::net::IpAddr],
    ) -> Result<Vec<LookupReport>, LookupError> {
        let config = self.config;
        let index = workload_index(config, workload)?;
        let mut cache = geodb::DetailCache::new(ips.len());
        Ok(ips
            .iter()
            .map(|&ip| {
                let decision = policy::decide(config, index, ip, jiff::Timestamp::now(), |a| {
                    self.prepared.as_ref().and_then(|p| p.kernel_country(a))
                });
                let detail = (decision.kind != residency_common::DestKind::Local)
                    .then(|| {
                        self.generation
                            .as_ref()
                            .map(|g| (*cache.get(g, ip)).clone())
                    })
                    .flatten();
                LookupReport {
                    ip,
                    // Rules and exceptions by name; 0 is the GeoIP tables.
                    rule: (decision.rule_id != 0)
                        .then(|| config.rule_name(decision.rule_id).map(str::to_owned))
                        .flatten(),
                    decision,
                    detail,
                    database: self
                        .generation
                        .as_ref()
                        .map(|g| (g.version.label(), g.path.clone())),
                }
            })
            .collect())
    }
}

/// One expected verdict, from a `residency test-policy` cases file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    /// Omitted: the default policy (a process no workload selects).
    workload: Option<toml::Spanned<String>>,
    destination: toml::Spanned<String>,
    port: Option<u16>,
    expect: toml::Spanned<String>,
    #[serde(default)]
    note: String,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCases {
    #[serde(default)]
    case: Vec<RawCase>,
}

/// The outcome of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub label: String,
    pub expected: String,
    pub got: String,
    pub reasons: Vec<String>,
}

impl CaseResult {
    #[must_use]
    pub fn passed(&self) -> bool {
        self.expected == self.got
    }
}

/// Runs a cases file against a configuration and `GeoIP` database, as a
/// CI/CD pipeline does before deploying a configuration change.
///
/// # Errors
/// [`LookupError::Cases`] (file, line, field) for a malformed cases file,
/// or a `GeoIP` error.
pub fn test_policy(
    config: &Config,
    geoip_path: Option<&std::path::Path>,
    cases_text: &str,
    cases_source: &str,
) -> Result<Vec<CaseResult>, LookupError> {
    let line_of = |span: std::ops::Range<usize>| {
        cases_text
            .get(..span.start)
            .map_or(0, |t| t.matches('\n').count())
            + 1
    };
    let bad = |span: Option<std::ops::Range<usize>>, field: String, message: String| {
        LookupError::Cases(ConfigError {
            file: cases_source.to_owned(),
            line: span.map(line_of),
            field,
            message,
        })
    };
    let raw: RawCases = toml::from_str(cases_text)
        .map_err(|e| bad(e.span(), String::new(), e.message().trim().to_owned()))?;
    if raw.case.is_empty() {
        return Err(bad(
            None,
            "case".into(),
            "no [[case]] entries: nothing to test".into(),
        ));
    }
    let mut parsed = Vec::new();
    for (i, c) in raw.case.iter().enumerate() {
        let ip: std::net::IpAddr = c.destination.get_ref().parse().map_err(|_| {
            bad(
                Some(c.destination.span()),
                format!("case[{i}].destination"),
                format!("\"{}\" is not an IP address", c.destination.get_ref()),
            )
        })?;
        let expect = c.expect.get_ref().as_str();
        if !matches!(expect, "allowed" | "flagged" | "blocked") {
            return Err(bad(
                Some(c.expect.span()),
                format!("case[{i}].expect"),
                format!("\"{expect}\" is not a verdict: allowed, flagged or blocked"),
            ));
        }
        if let Some(w) = &c.workload
            && config.workload(w.get_ref()).is_none()
        {
            return Err(bad(
                Some(w.span()),
                format!("case[{i}].workload"),
                format!("\"{}\" is not a workload of {}", w.get_ref(), config.source),
            ));
        }
        parsed.push((c, ip));
    }
    // The database is prepared once for all the cases.
    let lookup = Lookup::new(config, geoip_path)?;
    let mut out = Vec::new();
    for (c, ip) in parsed {
        let workload = c.workload.as_ref().map(|w| w.get_ref().as_str());
        let report = lookup
            .decide(workload, &[ip])?
            .pop()
            .ok_or_else(|| bad(None, "case".into(), "no decision".into()))?;
        let port = c.port.map_or(String::new(), |p| format!(":{p}"));
        let note = if c.note.is_empty() {
            String::new()
        } else {
            format!(" ({})", c.note)
        };
        out.push(CaseResult {
            label: format!(
                "{} -> {ip}{port}{note}",
                workload.unwrap_or("<no workload>")
            ),
            expected: c.expect.get_ref().clone(),
            got: verdict_str(report.decision.verdict).to_owned(),
            reasons: report.decision.reasons,
        });
    }
    Ok(out)
}
