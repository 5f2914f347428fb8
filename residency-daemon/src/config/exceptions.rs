//! `[[exception]]`: a destination allowed for some workloads despite their
//! policy, on a documented transfer basis, until it expires.

use ipnet::IpNet;
use residency_config::{ConfigError, Locator, Spanned};
use residency_record::TransferBasis;
use serde::Deserialize;

use super::{RawConfig, Role, Tenant, Workload};

/// The legal basis of a transfer an exception allows (GDPR Chapter V).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Basis {
    /// Art. 45 adequacy decision.
    Adequacy,
    /// EU-U.S. Data Privacy Framework certification of the recipient.
    Dpf,
    /// Standard contractual clauses, Art. 46(2)(c).
    Scc,
    /// Binding corporate rules, Art. 47.
    Bcr,
    /// A derogation for a specific situation, Art. 49.
    Art49,
}

impl Basis {
    /// The basis as records name it.
    #[must_use]
    pub fn transfer_basis(self) -> TransferBasis {
        match self {
            Basis::Adequacy => TransferBasis::Adequacy,
            Basis::Dpf => TransferBasis::Dpf,
            Basis::Scc => TransferBasis::Scc,
            Basis::Bcr => TransferBasis::Bcr,
            Basis::Art49 => TransferBasis::Art49,
        }
    }

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Basis::Adequacy => "adequacy",
            Basis::Dpf => "dpf",
            Basis::Scc => "scc",
            Basis::Bcr => "bcr",
            Basis::Art49 => "art49",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawException {
    name: Spanned<String>,
    #[serde(default)]
    destinations: Option<Spanned<Vec<Spanned<String>>>>,
    /// Host names: exact or `*.` suffixes.
    #[serde(default)]
    names: Option<Spanned<Vec<Spanned<String>>>>,
    basis: Basis,
    justification: Spanned<String>,
    expires: Spanned<String>,
    #[serde(default)]
    tenants: Vec<Spanned<String>>,
    #[serde(default)]
    workloads: Vec<Spanned<String>>,
    #[serde(default)]
    roles: Vec<Role>,
}

/// A destination allowed for some workloads despite their policy, on a
/// documented transfer basis, until it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exception {
    pub id: u32,
    pub name: String,
    pub destinations: Vec<IpNet>,
    /// Host names it allows, judged by the name the workload resolved.
    pub names: Vec<residency_catalog::Pattern>,
    pub basis: Basis,
    pub justification: String,
    pub expires: jiff::Timestamp,
    /// Applies to workloads all of whose tenants are listed here...
    pub tenants: Vec<String>,
    /// ...or to these workloads by name...
    pub workloads: Vec<String>,
    /// ...and, if any are listed, only in these roles.
    pub roles: Vec<Role>,
}

impl Exception {
    /// Whether it applies to `w` (ignoring expiry).
    #[must_use]
    pub fn applies_to(&self, w: &Workload) -> bool {
        let scoped = self.workloads.contains(&w.name)
            || (!self.tenants.is_empty() && w.tenants.iter().all(|t| self.tenants.contains(t)));
        scoped && (self.roles.is_empty() || self.roles.contains(&w.role))
    }

    /// Whether it is in force at `now`.
    #[must_use]
    pub fn in_force(&self, now: jiff::Timestamp) -> bool {
        now < self.expires
    }
}

pub(super) fn validate_exceptions(
    raw: &RawConfig,
    tenants: &[Tenant],
    workloads: &[Workload],
    first_id: u32,
    at: &Locator<'_>,
) -> Result<Vec<Exception>, ConfigError> {
    let mut out: Vec<Exception> = Vec::new();
    for (i, e) in raw.exception.iter().enumerate() {
        let field = format!("exception[{i}]");
        let name = e.name.get_ref().trim();
        if name.is_empty() || out.iter().any(|x| x.name == name) {
            return Err(at.err(
                e.name.span(),
                &format!("{field}.name"),
                "is empty or names another exception",
            ));
        }
        if e.justification.get_ref().trim().is_empty() {
            return Err(at.err(
                e.justification.span(),
                &format!("{field}.justification"),
                "is empty; say why the transfer is lawful (the contract, the clauses, the assessment)",
            ));
        }
        let expires = parse_expiry(e.expires.get_ref())
            .map_err(|m| at.err(e.expires.span(), &format!("{field}.expires"), &m))?;
        if e.tenants.is_empty() && e.workloads.is_empty() {
            return Err(at.err(
                e.name.span(),
                &field,
                "applies to nothing; list the tenants (all of a workload's tenants must be listed) or the workloads it covers",
            ));
        }
        for (j, t) in e.tenants.iter().enumerate() {
            if !tenants.iter().any(|x| x.id == *t.get_ref()) {
                return Err(at.err(
                    t.span(),
                    &format!("{field}.tenants[{j}]"),
                    &format!("\"{}\" is not a tenant", t.get_ref()),
                ));
            }
        }
        for (j, w) in e.workloads.iter().enumerate() {
            if !workloads.iter().any(|x| x.name == *w.get_ref()) {
                return Err(at.err(
                    w.span(),
                    &format!("{field}.workloads[{j}]"),
                    &format!("\"{}\" is not a workload", w.get_ref()),
                ));
            }
        }
        // Within one exception a prefix is listed once; across exceptions
        // only once per workload (the kernel keys exceptions by policy), so
        // two tenants' exceptions may name the same SIEM.
        let names = super::rules::rule_names(e.names.as_ref(), &field, at)?;
        let destinations = super::rules::targets(
            e.destinations.as_ref(),
            &names,
            &e.name,
            &field,
            &mut std::collections::HashMap::new(),
            at,
        )?;
        let exception = Exception {
            id: first_id.saturating_add(u32::try_from(i).unwrap_or(u32::MAX)),
            name: name.to_owned(),
            destinations,
            names,
            basis: e.basis,
            justification: e.justification.get_ref().trim().to_owned(),
            expires,
            tenants: e.tenants.iter().map(|t| t.get_ref().clone()).collect(),
            workloads: e.workloads.iter().map(|w| w.get_ref().clone()).collect(),
            roles: e.roles.clone(),
        };
        for (k, other) in out.iter().enumerate() {
            let Some(w) = workloads
                .iter()
                .find(|w| exception.applies_to(w) && other.applies_to(w))
            else {
                continue;
            };
            if let Some((j, net)) = exception
                .destinations
                .iter()
                .enumerate()
                .find(|(_, n)| other.destinations.contains(n))
            {
                let span = e
                    .destinations
                    .as_ref()
                    .and_then(|d| d.get_ref().get(j))
                    .map_or(0..0, Spanned::span);
                return Err(at.err(
                    span,
                    &format!("{field}.destinations[{j}]"),
                    &format!(
                        "{net} is already an exception for workload \"{}\" (exception[{k}], \"{}\"); \
                         a workload can have one exception per prefix",
                        w.name, other.name
                    ),
                ));
            }
        }
        out.push(exception);
    }
    Ok(out)
}

/// "2027-03-01" (the start of that day, UTC) or an RFC 3339 timestamp.
fn parse_expiry(text: &str) -> Result<jiff::Timestamp, String> {
    if let Ok(ts) = text.parse::<jiff::Timestamp>() {
        return Ok(ts);
    }
    let date: jiff::civil::Date = text.parse().map_err(|_| {
        format!("\"{text}\" is not a date (\"2027-03-01\", the start of that day in UTC) or a timestamp (\"2027-03-01T12:00:00Z\")")
    })?;
    date.to_zoned(jiff::tz::TimeZone::UTC)
        .map(|z| z.timestamp())
        .map_err(|e| e.to_string())
}
