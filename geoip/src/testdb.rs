//! Tiny MaxMind DB files for tests, written with the `mmdb-writer` crate.
//! Behind the `test-support` feature: nothing in production writes mmdb.

use std::{
    net::IpAddr,
    path::Path,
    time::{Duration, SystemTime},
};

use ipnet::IpNet;
use mmdb_writer::{IpVersion, Writer};
use serde_json::{Value, json};

/// Which record layout to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// MaxMind GeoIP2/GeoLite2: `country.iso_code`, `registered_country`,
    /// `continent.code`, plus ASN fields.
    GeoIp2,
    /// ip-location-db: `country_code`.
    IpLocationDb,
}

/// One network of a test database.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    pub network: &'static str,
    pub country: Option<&'static str>,
    pub registered_country: Option<&'static str>,
    pub continent: Option<&'static str>,
    pub asn: Option<u32>,
    pub as_org: Option<&'static str>,
}

impl Entry {
    /// A network with only a country.
    #[must_use]
    pub fn country(network: &'static str, country: &'static str) -> Self {
        Entry {
            network,
            country: Some(country),
            ..Default::default()
        }
    }
}

/// Builds a database (IPv6 tree with IPv4 aliases, like the real ones).
///
/// # Panics
/// On a malformed network in `entries` (test input).
#[must_use]
pub fn build(layout: Layout, database_type: &str, build_epoch: u64, entries: &[Entry]) -> Vec<u8> {
    let mut w = Writer::builder(database_type)
        .ip_version(IpVersion::V6)
        // maxminddb's verify() wants a non-empty description.
        .description(&[("en", "residency test database")])
        .build_epoch(SystemTime::UNIX_EPOCH + Duration::from_secs(build_epoch))
        .build();
    for e in entries {
        let net: IpNet = e.network.parse().expect("test network");
        w.insert(net, &record(layout, e)).expect("insert");
    }
    w.to_bytes().expect("serialise")
}

/// Like [`build`], written to `path` atomically (a temporary file renamed
/// over it, as real updaters do).
///
/// # Panics
/// If the file cannot be written (test environment).
pub fn write(
    path: &Path,
    layout: Layout,
    database_type: &str,
    build_epoch: u64,
    entries: &[Entry],
) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, build(layout, database_type, build_epoch, entries))
        .expect("write test db");
    std::fs::rename(&tmp, path).expect("rename test db");
}

fn record(layout: Layout, e: &Entry) -> Value {
    let mut v = json!({});
    match layout {
        Layout::GeoIp2 => {
            if let Some(c) = e.country {
                v["country"] = json!({ "iso_code": c, "names": { "en": c } });
            }
            if let Some(c) = e.registered_country {
                v["registered_country"] = json!({ "iso_code": c });
            }
            if let Some(c) = e.continent {
                v["continent"] = json!({ "code": c });
            }
        }
        Layout::IpLocationDb => {
            if let Some(c) = e.country {
                v["country_code"] = json!(c);
            }
        }
    }
    if let Some(n) = e.asn {
        v["autonomous_system_number"] = json!(n);
    }
    if let Some(o) = e.as_org {
        v["autonomous_system_organization"] = json!(o);
    }
    v
}

/// A random address inside `net` drawn from `seed` (for sampling tests).
#[must_use]
pub fn address_in(net: IpNet, seed: u128) -> IpAddr {
    match net {
        IpNet::V4(n) => {
            let host = u32::MAX.checked_shr(u32::from(n.prefix_len())).unwrap_or(0);
            #[expect(clippy::cast_possible_truncation, reason = "masked to 32 bits")]
            let a = u32::from(n.network()) | (seed as u32 & host);
            IpAddr::V4(a.into())
        }
        IpNet::V6(n) => {
            let host = u128::MAX
                .checked_shr(u32::from(n.prefix_len()))
                .unwrap_or(0);
            IpAddr::V6((u128::from(n.network()) | (seed & host)).into())
        }
    }
}

/// A country-only database (ip-location-db layout) from many networks: the
/// benchmark rebuilds a full database plus its own test ranges with this.
///
/// # Errors
/// If the writer refuses a network.
pub fn build_countries(
    database_type: &str,
    build_epoch: u64,
    networks: impl IntoIterator<Item = (IpNet, crate::CountryCode)>,
) -> Result<Vec<u8>, mmdb_writer::Error> {
    // Real data has networks inside the 6to4 and Teredo ranges, which an
    // aliasing writer refuses; residency maps IPv4-mapped addresses itself.
    let mut w = Writer::builder(database_type)
        .ip_version(IpVersion::V6)
        .ipv4_aliasing(mmdb_writer::Ipv4Aliasing::Disabled)
        .description(&[("en", "residency benchmark database")])
        .build_epoch(SystemTime::UNIX_EPOCH + Duration::from_secs(build_epoch))
        .build();
    for (net, country) in networks {
        w.insert(net, &json!({ "country_code": country.as_str() }))?;
    }
    w.to_bytes()
}
