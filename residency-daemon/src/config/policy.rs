//! `mode`, `[policy]` and `[[jurisdiction]]`: the default policy (the
//! countries data may go to, and what to do with unknown and local
//! destinations) and the named sets of countries every policy is written
//! in.

use geoip::{CountrySet, Sets, sets::Condition};
use residency_config::{ConfigError, Locator, Spanned};
use serde::Deserialize;

/// Monitor reports and never blocks; enforce blocks what the rules deny.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Monitor,
    Enforce,
}

impl Mode {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Monitor => "monitor",
            Mode::Enforce => "enforce",
        }
    }
}

/// What to do with a destination: for unknown destinations and local ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Choice {
    Allow,
    /// Report as a violation, never block.
    Flag,
    /// Block when enforcing, flag when monitoring.
    Block,
}

impl Choice {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Choice::Allow => "allow",
            Choice::Flag => "flag",
            Choice::Block => "block",
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub(super) allowed: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) unknown: Option<Choice>,
    pub(super) local: Option<Choice>,
    pub(super) local_networks: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJurisdiction {
    name: Spanned<String>,
    countries: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    description: String,
}

/// The residency policy (one, for every workload, until tenants and
/// workloads have their own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Countries data may go to.
    pub allowed: CountrySet,
    /// The names the set was written with (sets and countries), for
    /// explanations.
    pub allowed_names: Vec<String>,
    /// The conditions on the transfer bases of the countries `allowed`
    /// holds, one per country in code order (CA's PIPEDA; the US's Data
    /// Privacy Framework when `US-DPF` is named): the basis is the one
    /// flow records name, so a country named by its code (`CA`) carries
    /// the same condition as through `ADEQUACY`.
    pub conditions: Vec<&'static Condition>,
    /// Destinations the `GeoIP` data has no country for.
    pub unknown: Choice,
    /// Loopback, private, link-local and multicast destinations.
    pub local: Choice,
}

pub(super) fn validate_sets(
    raw: &[RawJurisdiction],
    at: &Locator<'_>,
) -> Result<Sets, ConfigError> {
    let mut sets = Sets::new();
    for (i, j) in raw.iter().enumerate() {
        let members: Vec<&str> = j
            .countries
            .get_ref()
            .iter()
            .map(|c| c.get_ref().as_str())
            .collect();
        sets.define(j.name.get_ref(), &members).map_err(|e| {
            // Point at the member at fault when there is one.
            let (span, field) = match &e {
                geoip::sets::SetError::Unknown(bad)
                | geoip::sets::SetError::Country(geoip::country::UnknownCountry(bad)) => j
                    .countries
                    .get_ref()
                    .iter()
                    .enumerate()
                    .find(|(_, c)| c.get_ref() == bad)
                    .map_or(
                        (j.countries.span(), format!("jurisdiction[{i}].countries")),
                        |(k, c)| (c.span(), format!("jurisdiction[{i}].countries[{k}]")),
                    ),
                _ => (j.name.span(), format!("jurisdiction[{i}].name")),
            };
            at.err(span, &field, &e.to_string())
        })?;
        let _ = &j.description;
    }

    Ok(sets)
}

pub(super) fn validate_policy(
    raw: &RawPolicy,
    sets: &Sets,
    at: &Locator<'_>,
) -> Result<PolicyConfig, ConfigError> {
    let (allowed, allowed_names) = match &raw.allowed {
        // Without a list every country is allowed: the policy then only
        // reports, and flags what the other settings say.
        None => (CountrySet::all(), vec!["all countries".to_owned()]),
        Some(list) => {
            if list.get_ref().is_empty() {
                return Err(at.err(
                    list.span(),
                    "policy.allowed",
                    "is empty, which would forbid every country; name sets or countries, e.g. [\"EEA\"], or leave the key out to allow all",
                ));
            }
            let mut set = CountrySet::EMPTY;
            let mut names = Vec::new();
            for (j, name) in list.get_ref().iter().enumerate() {
                let s = sets.resolve(name.get_ref()).map_err(|e| {
                    at.err(name.span(), &format!("policy.allowed[{j}]"), &e.to_string())
                })?;
                set = set.union(&s);
                names.push(name.get_ref().clone());
            }
            (set, names)
        }
    };
    Ok(PolicyConfig {
        allowed,
        conditions: conditions(&allowed, &allowed_names),
        allowed_names,
        unknown: raw.unknown.unwrap_or(Choice::Flag),
        local: raw.local.unwrap_or(Choice::Allow),
    })
}

/// The conditions on the bases of the countries in `allowed` (written as
/// `names`), by the basis a flow record would name for each.
fn conditions(allowed: &CountrySet, names: &[String]) -> Vec<&'static Condition> {
    let dpf = names.iter().any(|n| n.eq_ignore_ascii_case("US-DPF"));
    allowed
        .iter()
        .filter_map(|c| {
            residency_record::policy::basis_without_exception(
                residency_common::DestKind::Geo,
                Some(c),
                dpf,
            )
            .condition(Some(c))
        })
        .collect()
}
