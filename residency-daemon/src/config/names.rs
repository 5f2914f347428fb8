//! `[names]`: whether the kernel follows the DNS answers and TLS server
//! names of watched workloads, how long a name holds for an address, and
//! what an ambiguous name or a resolver bypass is judged as.

use std::collections::BTreeMap;

use residency_catalog::{Catalog, CatalogError, JurisdictionSpec, RawEndpoint};
use residency_config::{ConfigError, Locator, Spanned};
use serde::Deserialize;

use super::Choice;

/// `[catalog]` as written: whether the built-in entries are used, and
/// per-deployment settings for names that do not fix their region.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCatalog {
    builtin: Option<bool>,
    #[serde(default)]
    deployments: BTreeMap<String, JurisdictionSpec>,
}

/// The endpoint catalog: built in, then `[[endpoint]]` entries and
/// `[catalog.deployments]` from the configuration.
pub(super) fn validate_catalog(
    raw: &RawCatalog,
    endpoints: &[Spanned<RawEndpoint>],
    sets: &geoip::Sets,
    at: &Locator<'_>,
) -> Result<Catalog, ConfigError> {
    let plain: Vec<RawEndpoint> = endpoints.iter().map(|e| e.get_ref().clone()).collect();
    Catalog::with(raw.builtin.unwrap_or(true), &plain, &raw.deployments, sets)
        .map_err(|e| catalog_error(&e, endpoints, at))
}

/// A catalog error at the line of the entry it is about.
fn catalog_error(
    e: &CatalogError,
    endpoints: &[Spanned<RawEndpoint>],
    at: &Locator<'_>,
) -> ConfigError {
    match e {
        CatalogError::Endpoint {
            origin: residency_catalog::Origin::Config,
            index,
            field,
            ..
        } => {
            let span = endpoints.get(*index).map(Spanned::span);
            at.err_opt(span, &format!("endpoint[{index}].{field}"), &e.to_string())
        }
        CatalogError::Deployment { name, .. } => at.err_opt(
            None,
            &format!("catalog.deployments.\"{name}\""),
            &e.to_string(),
        ),
        _ => at.err_opt(None, "catalog", &e.to_string()),
    }
}

/// `[names]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNames {
    track: Option<bool>,
    sni: Option<bool>,
    ambiguous: Option<Choice>,
    resolver_bypass: Option<Choice>,
    min_ttl_secs: Option<Spanned<u64>>,
    max_ttl_secs: Option<Spanned<u64>>,
    max_entries: Option<Spanned<u64>>,
}

/// Name tracking, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamesConfig {
    /// Attach the DNS-answer program and judge by names (default on).
    pub track: bool,
    /// Capture TLS server names on egress (default on; needs `track`).
    pub sni: bool,
    /// An address this workload resolved from names judged differently.
    pub ambiguous: Choice,
    /// DNS over TLS (port 853) and known DNS-over-HTTPS resolvers.
    pub resolver_bypass: Choice,
    /// A name holds for an address at least this long, whatever its TTL:
    /// applications and their libraries cache answers beyond it.
    pub min_ttl_secs: u64,
    /// And at most this long.
    pub max_ttl_secs: u64,
    /// Kernel name map capacity (addresses per workload, summed); the least
    /// recently used entry is evicted when it is full.
    pub max_entries: u32,
}

/// Default floor: an hour, as long-lived clients keep connection pools.
pub const DEFAULT_MIN_TTL_SECS: u64 = 3600;
/// Default ceiling: a week.
pub const DEFAULT_MAX_TTL_SECS: u64 = 7 * 86_400;
/// Default name map capacity.
pub const DEFAULT_MAX_ENTRIES: u32 = 131_072;

impl Default for NamesConfig {
    fn default() -> Self {
        NamesConfig {
            track: true,
            sni: true,
            ambiguous: Choice::Flag,
            resolver_bypass: Choice::Flag,
            min_ttl_secs: DEFAULT_MIN_TTL_SECS,
            max_ttl_secs: DEFAULT_MAX_TTL_SECS,
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }
}

pub(super) fn validate_names(raw: &RawNames, at: &Locator<'_>) -> Result<NamesConfig, ConfigError> {
    let d = NamesConfig::default();
    let min_ttl_secs = at
        .ranged(
            raw.min_ttl_secs.as_ref(),
            "names.min_ttl_secs",
            Some(d.min_ttl_secs),
            0..=30 * 86_400,
        )?
        .unwrap_or(d.min_ttl_secs);
    let max_ttl_secs = at
        .ranged(
            raw.max_ttl_secs.as_ref(),
            "names.max_ttl_secs",
            Some(d.max_ttl_secs),
            1..=365 * 86_400,
        )?
        .unwrap_or(d.max_ttl_secs);
    if max_ttl_secs < min_ttl_secs {
        let span = raw.max_ttl_secs.as_ref().map(Spanned::span);
        return Err(at.err_opt(
            span,
            "names.max_ttl_secs",
            &format!("{max_ttl_secs} is below names.min_ttl_secs ({min_ttl_secs})"),
        ));
    }
    let max_entries = at
        .ranged(
            raw.max_entries.as_ref(),
            "names.max_entries",
            Some(u64::from(d.max_entries)),
            1024..=16_777_216,
        )?
        .map_or(d.max_entries, |n| u32::try_from(n).unwrap_or(u32::MAX));
    let track = raw.track.unwrap_or(d.track);
    Ok(NamesConfig {
        track,
        sni: track && raw.sni.unwrap_or(d.sni),
        ambiguous: raw.ambiguous.unwrap_or(d.ambiguous),
        resolver_bypass: raw.resolver_bypass.unwrap_or(d.resolver_bypass),
        min_ttl_secs,
        max_ttl_secs,
        max_entries,
    })
}
