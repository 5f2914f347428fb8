//! Opening MaxMind DB files and looking addresses up.
//!
//! Supported layouts, detected per record rather than by database type so
//! that unusual builds still work: MaxMind GeoIP2/GeoLite2 Country and City
//! (`country.iso_code`, `registered_country.iso_code`, `continent.code`),
//! the CC0 ip-location-db country files (`country_code`), and ASN data
//! (`autonomous_system_number`, `autonomous_system_organization`), whether
//! in the same file or in a separate ASN database.

use std::{
    fs::File,
    net::IpAddr,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use maxminddb::Reader;
use serde::Deserialize;

use crate::country::CountryCode;

/// Why a database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum GeoIpError {
    #[error("cannot open GeoIP database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a usable MaxMind DB file: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("GeoIP lookup of {ip} in {path} failed: {reason}")]
    Lookup {
        ip: IpAddr,
        path: PathBuf,
        reason: String,
    },
}

/// What identifies one build of a database: evidence and events carry it so
/// that every verdict says which data decided it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DbVersion {
    /// `database_type` from the file's metadata, e.g. `GeoLite2-Country`.
    pub database_type: String,
    /// Build time, seconds since the Unix epoch.
    pub build_epoch: u64,
    /// 4 or 6.
    pub ip_version: u16,
    /// Size of the search tree, as a cheap fingerprint of the build.
    pub node_count: u32,
}

impl DbVersion {
    /// A short label: `type@build_epoch`.
    #[must_use]
    pub fn label(&self) -> String {
        format!("{}@{}", self.database_type, self.build_epoch)
    }
}

/// Everything the database says about one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeoInfo {
    /// The most specific network in the database that holds the address.
    pub network: IpNet,
    /// Where the address is located (`country`, or `country_code`).
    pub country: Option<CountryCode>,
    /// Where the network is registered, when the database says.
    pub registered_country: Option<CountryCode>,
    /// Two-letter continent code (`EU`, `NA`, ...), when the database says.
    pub continent: Option<String>,
    pub asn: Option<u32>,
    pub as_org: Option<String>,
}

impl GeoInfo {
    /// The country residency judges by: the located country, or failing that
    /// the registered one (some blocks carry only the latter).
    #[must_use]
    pub fn effective_country(&self) -> Option<CountryCode> {
        self.country.or(self.registered_country)
    }
}

#[derive(Deserialize)]
struct Named<'a> {
    #[serde(borrow)]
    iso_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct Continent<'a> {
    #[serde(borrow)]
    code: Option<&'a str>,
}

/// The fields residency reads, from any supported layout. Unknown fields
/// are ignored.
#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    country: Option<Named<'a>>,
    #[serde(borrow)]
    registered_country: Option<Named<'a>>,
    #[serde(borrow)]
    continent: Option<Continent<'a>>,
    #[serde(borrow)]
    country_code: Option<&'a str>,
    /// u64: MaxMind writes uint32, other writers uint64.
    autonomous_system_number: Option<u64>,
    #[serde(borrow)]
    autonomous_system_organization: Option<&'a str>,
}

/// The bytes behind a reader: a memory map of the file, or a buffer.
pub enum Source {
    Mmap(memmap2::Mmap),
    Bytes(Vec<u8>),
}

impl AsRef<[u8]> for Source {
    fn as_ref(&self) -> &[u8] {
        match self {
            Source::Mmap(m) => m,
            Source::Bytes(b) => b,
        }
    }
}

/// An open, verified database.
pub struct Database {
    reader: Reader<Source>,
    path: PathBuf,
    version: DbVersion,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("path", &self.path)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Database {
    /// Copies a database file into a sealed in-memory file, memory-maps
    /// that, and checks its metadata and layout.
    ///
    /// Mapping the file itself would be unsafe in practice: a `cp` over it
    /// (rather than a rename) truncates the mapped inode, and the next read
    /// past the new end kills the daemon with SIGBUS, which would also end
    /// enforcement. The sealed copy can neither shrink nor change, so every
    /// generation the daemon still holds stays readable, whatever happens
    /// to the file on disk.
    ///
    /// The tree and the records are checked when the database is flattened
    /// ([`crate::flatten`] walks every network and decodes every record, and
    /// the daemon flattens every database before using it); lookups are
    /// bounds-checked and report damage as errors. maxminddb's own
    /// `verify()` is not used: it also requires a non-empty description,
    /// which the CC0 ip-location-db files do not have.
    ///
    /// # Errors
    /// If the file cannot be read or is not a valid MaxMind DB.
    pub fn open(path: &Path) -> Result<Self, GeoIpError> {
        let open_err = |source: std::io::Error| GeoIpError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::open(path).map_err(open_err)?;
        let map = sealed_copy(&mut file).map_err(open_err)?;
        Self::from_source(Source::Mmap(map), path)
    }

    /// Verifies a database held in memory; `name` stands for it in errors.
    ///
    /// # Errors
    /// If the bytes are not a valid MaxMind DB.
    pub fn from_bytes(bytes: Vec<u8>, name: &Path) -> Result<Self, GeoIpError> {
        Self::from_source(Source::Bytes(bytes), name)
    }

    fn from_source(source: Source, path: &Path) -> Result<Self, GeoIpError> {
        let invalid = |reason: String| GeoIpError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        // maxminddb reports malformed input as errors; the catch is a second
        // line of defence so that no file, however broken, can take the
        // daemon down (the damaged-file property test exercises this).
        let reader = std::panic::catch_unwind(move || {
            let reader = Reader::from_source(source)?;
            Ok::<_, maxminddb::MaxMindDbError>(reader)
        })
        .map_err(|_| invalid("the reader failed on malformed data".to_owned()))?
        .map_err(|e| invalid(e.to_string()))?;
        let m = reader.metadata();
        if m.database_type.is_empty() || !matches!(m.ip_version, 4 | 6) || m.node_count == 0 {
            return Err(invalid(format!(
                "implausible metadata (type {:?}, IP version {}, {} nodes)",
                m.database_type, m.ip_version, m.node_count
            )));
        }
        let version = DbVersion {
            database_type: m.database_type.clone(),
            build_epoch: m.build_epoch,
            ip_version: m.ip_version,
            node_count: m.node_count,
        };
        Ok(Database {
            reader,
            path: path.to_path_buf(),
            version,
        })
    }

    #[must_use]
    pub fn version(&self) -> &DbVersion {
        &self.version
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn reader(&self) -> &Reader<Source> {
        &self.reader
    }

    /// Looks an address up. IPv4-mapped IPv6 addresses are looked up as the
    /// IPv4 address they stand for, as the kernel judges them. `None` means
    /// the database has no record for the address.
    ///
    /// # Errors
    /// If the record cannot be decoded.
    pub fn lookup(&self, ip: IpAddr) -> Result<Option<GeoInfo>, GeoIpError> {
        let ip = canonical(ip);
        if let IpAddr::V6(v6) = ip
            && (self.version.ip_version == 4 || u128::from(v6) >> 32 == 0)
        {
            // In a MaxMind tree, ::/96 is where the IPv4 space lives: ::1
            // would find the record of 0.0.0.1. No IPv6 data can sit there,
            // and the kernel's tables (which put that subtree in the IPv4
            // table) say so too.
            return Ok(None);
        }
        let err = |e: maxminddb::MaxMindDbError| GeoIpError::Lookup {
            ip,
            path: self.path.clone(),
            reason: e.to_string(),
        };
        let result = self.reader.lookup(ip).map_err(err)?;
        let Some(record) = result.decode::<Record<'_>>().map_err(err)? else {
            return Ok(None);
        };
        let network = result.network().map_err(err)?;
        let network =
            IpNet::new(network.network(), network.prefix()).map_err(|e| GeoIpError::Lookup {
                ip,
                path: self.path.clone(),
                reason: e.to_string(),
            })?;
        Ok(Some(GeoInfo {
            network,
            country: code(
                record
                    .country
                    .and_then(|c| c.iso_code)
                    .or(record.country_code),
            ),
            registered_country: code(record.registered_country.and_then(|c| c.iso_code)),
            continent: record.continent.and_then(|c| c.code).map(str::to_owned),
            asn: record
                .autonomous_system_number
                .and_then(|n| u32::try_from(n).ok()),
            as_org: record.autonomous_system_organization.map(str::to_owned),
        }))
    }
}

/// Copies `file` into a memfd, seals it against any change, and maps it.
fn sealed_copy(file: &mut File) -> std::io::Result<memmap2::Mmap> {
    use nix::{
        fcntl::{FcntlArg, SealFlag, fcntl},
        sys::memfd::{MFdFlags, memfd_create},
    };
    let fd = memfd_create(
        c"residency-geoip",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )?;
    let mut copy = File::from(fd);
    std::io::copy(file, &mut copy)?;
    fcntl(
        &copy,
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_SHRINK
                | SealFlag::F_SEAL_GROW
                | SealFlag::F_SEAL_WRITE
                | SealFlag::F_SEAL_SEAL,
        ),
    )?;
    // SAFETY: the memfd is sealed against writes and size changes, so the
    // mapped bytes can never change or disappear while mapped.
    unsafe { memmap2::Mmap::map(&copy) }
}

/// The effective country of a raw record (see [`GeoInfo::effective_country`]),
/// decoded straight from the data section: the flattener's fast path. Also
/// returns a code from the data that is no country, for the statistics.
pub(crate) fn effective_country_of(
    result: &maxminddb::LookupResult<'_, Source>,
) -> Result<(Option<CountryCode>, Option<String>), maxminddb::MaxMindDbError> {
    let Some(record) = result.decode::<Record<'_>>()? else {
        return Ok((None, None));
    };
    let located = record
        .country
        .and_then(|c| c.iso_code)
        .or(record.country_code);
    let registered = record.registered_country.and_then(|c| c.iso_code);
    // The same rule as GeoInfo::effective_country: the located country if
    // it is a real one, else the registered one.
    let parsed = code(located).or(code(registered));
    let unknown = [located, registered]
        .into_iter()
        .flatten()
        .find(|raw| raw.parse::<CountryCode>().is_err())
        .map(str::to_owned);
    Ok((parsed, unknown))
}

/// A code from the data, if it is a real country code. Data providers also
/// use pseudo-codes ("EU", "AP", "ZZ"), which are no country.
fn code(raw: Option<&str>) -> Option<CountryCode> {
    raw.and_then(|s| s.parse().ok())
}

/// `::ffff:a.b.c.d` as `a.b.c.d`; everything else unchanged.
#[must_use]
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}
