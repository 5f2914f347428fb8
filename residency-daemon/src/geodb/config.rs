//! `[geoip]`: which databases, and how often they are checked for a new
//! version.

use std::{path::PathBuf, time::Duration};

use residency_config::{ConfigError, Locator, Spanned};
use serde::Deserialize;

/// `[geoip]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGeoIp {
    database: Option<Spanned<String>>,
    asn_database: Option<Spanned<String>>,
    check_interval_secs: Option<Spanned<u64>>,
}

/// Where the `GeoIP` data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeoIpConfig {
    /// A country (or city) database; `None`: search the usual places.
    pub database: Option<PathBuf>,
    /// A separate ASN database, if the country one has no ASNs.
    pub asn_database: Option<PathBuf>,
    /// How often the files are checked for a new version.
    pub check_interval: Duration,
}

const DEFAULT_GEOIP_CHECK_SECS: u64 = 10;

impl GeoIpConfig {
    /// Validates `[geoip]`.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the line and field of the first bad value.
    pub fn validate(raw: &RawGeoIp, at: &Locator<'_>) -> Result<Self, ConfigError> {
        let path = |p: &Option<Spanned<String>>,
                    field: &str|
         -> Result<Option<PathBuf>, ConfigError> {
            match p {
                None => Ok(None),
                Some(s) if s.get_ref().trim().is_empty() => Err(at.err(
                    s.span(),
                    field,
                    "is empty; give the path of a .mmdb file, or leave the key out to search the usual places",
                )),
                Some(s) => Ok(Some(PathBuf::from(s.get_ref()))),
            }
        };
        let secs = at
            .ranged(
                raw.check_interval_secs.as_ref(),
                "geoip.check_interval_secs",
                Some(DEFAULT_GEOIP_CHECK_SECS),
                1..=86_400,
            )?
            .unwrap_or(DEFAULT_GEOIP_CHECK_SECS);
        Ok(GeoIpConfig {
            database: path(&raw.database, "geoip.database")?,
            asn_database: path(&raw.asn_database, "geoip.asn_database")?,
            check_interval: Duration::from_secs(secs),
        })
    }
}
