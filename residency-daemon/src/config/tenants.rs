//! `[[tenant]]`: whose data it is, and where it may go.

use geoip::{CountrySet, Sets};
use residency_config::{ConfigError, Locator, Spanned};
use serde::Deserialize;

use super::{Choice, Mode, PolicyConfig, RawConfig};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTenant {
    id: Spanned<String>,
    #[serde(default)]
    name: String,
    allowed: Spanned<Vec<Spanned<String>>>,
    mode: Option<Mode>,
    unknown: Option<Choice>,
}

/// A tenant: whose data it is, and where it may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub allowed: CountrySet,
    pub allowed_names: Vec<String>,
    pub mode: Mode,
    pub unknown: Choice,
}

pub(super) fn validate_tenants(
    raw: &RawConfig,
    policy: &PolicyConfig,
    sets: &Sets,
    at: &Locator<'_>,
) -> Result<Vec<Tenant>, ConfigError> {
    let mut tenants: Vec<Tenant> = Vec::new();
    for (i, t) in raw.tenant.iter().enumerate() {
        let field = format!("tenant[{i}]");
        let id = t.id.get_ref().trim();
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(at.err(
                t.id.span(),
                &format!("{field}.id"),
                &format!("\"{id}\" is not a tenant id: use letters, digits, '-' or '_'"),
            ));
        }
        if tenants.iter().any(|x| x.id == id) {
            return Err(at.err(
                t.id.span(),
                &format!("{field}.id"),
                &format!("\"{id}\" is already a tenant"),
            ));
        }
        if t.allowed.get_ref().is_empty() {
            return Err(at.err(
                t.allowed.span(),
                &format!("{field}.allowed"),
                "is empty; name the jurisdiction sets or countries the tenant's contract allows, e.g. [\"EEA\"]",
            ));
        }
        let mut allowed = CountrySet::EMPTY;
        let mut names = Vec::new();
        for (j, n) in t.allowed.get_ref().iter().enumerate() {
            let set = sets
                .resolve(n.get_ref())
                .map_err(|e| at.err(n.span(), &format!("{field}.allowed[{j}]"), &e.to_string()))?;
            allowed = allowed.union(&set);
            names.push(n.get_ref().clone());
        }
        tenants.push(Tenant {
            id: id.to_owned(),
            name: if t.name.is_empty() {
                id.to_owned()
            } else {
                t.name.clone()
            },
            allowed,
            allowed_names: names,
            mode: t.mode.unwrap_or(raw.mode),
            unknown: t.unknown.unwrap_or(policy.unknown),
        });
    }
    Ok(tenants)
}

pub(super) fn strictest(a: Choice, b: Choice) -> Choice {
    let rank = |c| match c {
        Choice::Allow => 0,
        Choice::Flag => 1,
        Choice::Block => 2,
    };
    if rank(b) > rank(a) { b } else { a }
}
