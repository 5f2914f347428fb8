//! The `GeoIP` stage: finding the database, preparing the kernel's tables
//! from it, keeping each loaded generation for enrichment, and watching the
//! files for a new version.
//!
//! Preparing (open, flatten, lay out) is CPU work done off the async
//! runtime; the kernel module then loads the result as a new generation.
//! Every event names the generation that decided it, and [`Registry`] maps
//! that number back to the database version, so evidence says which data
//! decided each verdict.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    num::NonZeroUsize,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use geoip::{CountryCode, Database, DbVersion, FlattenStats, GeoInfo, layout::V4Layout};
use ipnet::Ipv6Net;
use residency_record::{GeoDetail, Lifecycle, Record};

pub use config::{GeoIpConfig, RawGeoIp};

use crate::trust::TrustError;

pub mod config;

/// Where databases are looked for when the configuration names none, in
/// order: residency's own data directory (put the CC0 default there, e.g.
/// the file `cargo xtask geoip` fetches), the container image's, then
/// geoipupdate's usual
/// directories with MaxMind's file names.
pub const SEARCH_PATHS: &[&str] = &[
    "/var/lib/residency/geoip/geo-whois-asn-country.mmdb",
    // Where the container image (`cargo xtask image`) puts it.
    "/usr/share/residency/geoip/geo-whois-asn-country.mmdb",
    "/usr/share/GeoIP/GeoIP2-Country.mmdb",
    "/usr/share/GeoIP/GeoLite2-Country.mmdb",
    "/usr/share/GeoIP/GeoIP2-City.mmdb",
    "/usr/share/GeoIP/GeoLite2-City.mmdb",
    "/var/lib/GeoIP/GeoIP2-Country.mmdb",
    "/var/lib/GeoIP/GeoLite2-Country.mmdb",
    "/var/lib/GeoIP/GeoIP2-City.mmdb",
    "/var/lib/GeoIP/GeoLite2-City.mmdb",
];

/// ASN databases looked for next to a discovered country database.
pub const ASN_SEARCH_PATHS: &[&str] = &[
    "/usr/share/GeoIP/GeoLite2-ASN.mmdb",
    "/var/lib/GeoIP/GeoLite2-ASN.mmdb",
];

/// The country database to use: the explicit one, or the first that exists
/// in [`SEARCH_PATHS`].
#[must_use]
pub fn discover(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    SEARCH_PATHS.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// The ASN database: the explicit one, or a discovered one.
#[must_use]
pub fn discover_asn(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    ASN_SEARCH_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// A database opened and turned into kernel tables, ready to load.
pub struct Prepared {
    pub db: Arc<Database>,
    pub asn: Option<Arc<Database>>,
    pub v4: V4Layout,
    pub v6: Vec<(Ipv6Net, CountryCode)>,
    pub stats: FlattenStats,
    /// Opening, flattening and laying out.
    pub elapsed: Duration,
    /// What identifies the file on disk, to notice a new version.
    pub identity: FileIdentity,
}

/// Why a database could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error(transparent)]
    GeoIp(#[from] geoip::GeoIpError),
    #[error(transparent)]
    Layout(#[from] geoip::layout::LayoutOverflow),
    /// The daemon runs locked and the file could be changed by others
    /// than root: whoever can write it decides what is blocked.
    #[error("{}: {error}", path.display())]
    Untrusted { path: PathBuf, error: TrustError },
}

impl Prepared {
    /// The country the kernel's tables give an address: the same data and
    /// the same IPv4 layout the programs read.
    #[must_use]
    pub fn kernel_country(&self, ip: IpAddr) -> Option<CountryCode> {
        match geoip::db::canonical(ip) {
            IpAddr::V4(a) => CountryCode::from_index(self.v4.lookup(a)),
            IpAddr::V6(a) => {
                let i = self.v6.partition_point(|(n, _)| n.network() <= a);
                let (n, c) = self.v6.get(i.checked_sub(1)?)?;
                n.contains(&a).then_some(*c)
            }
        }
    }
}

/// Opens, checks and flattens a database (and opens the ASN one).
///
/// # Errors
/// If either file is missing, malformed, or does not fit the kernel layout.
pub fn prepare(path: &Path, asn: Option<&Path>) -> Result<Prepared, GeoError> {
    let started = Instant::now();
    let identity = FileIdentity::of(path);
    let db = Database::open(path)?;
    let tables = geoip::flatten(&db)?;
    let v4 = V4Layout::build(&tables.v4)?;
    let asn = match asn {
        Some(p) => {
            let a = Database::open(p)?;
            // Walk it once: a damaged ASN file must fail here, not per event.
            geoip::flatten(&a)?;
            Some(Arc::new(a))
        }
        None => None,
    };
    Ok(Prepared {
        db: Arc::new(db),
        asn,
        v4,
        v6: tables.v6,
        stats: tables.stats,
        elapsed: started.elapsed(),
        identity,
    })
}

/// Device, inode, size and modification time: a file replaced by rename or
/// rewritten in place differs in at least one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileIdentity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl FileIdentity {
    /// The identity now (all zero if the file cannot be read).
    #[must_use]
    pub fn of(path: &Path) -> Self {
        std::fs::metadata(path).map_or(FileIdentity::default(), |m| FileIdentity {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        })
    }
}

/// One loaded generation of `GeoIP` data.
#[derive(Debug)]
pub struct Generation {
    pub number: u32,
    pub version: Arc<DbVersion>,
    pub path: PathBuf,
    pub db: Arc<Database>,
    pub asn: Option<Arc<Database>>,
}

/// The generations the kernel may still report, by number.
#[derive(Debug, Default)]
pub struct Registry {
    generations: RwLock<BTreeMap<u32, Arc<Generation>>>,
}

/// Generations kept: the current one and those events in flight may name.
const KEEP: usize = 4;

impl Registry {
    /// Records a newly installed generation.
    pub fn add(&self, generation: Generation) {
        let mut map = self
            .generations
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.insert(generation.number, Arc::new(generation));
        while map.len() > KEEP {
            let Some(&oldest) = map.keys().next() else {
                break;
            };
            map.remove(&oldest);
        }
    }

    /// Forgets a generation (one whose install failed).
    pub fn remove(&self, number: u32) {
        self.generations
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&number);
    }

    /// A generation by number, exactly; 0 (no tables consulted) gives the
    /// newest. A number it no longer holds gives `None`: better no version
    /// than a wrong one in the evidence.
    #[must_use]
    pub fn get(&self, number: u32) -> Option<Arc<Generation>> {
        let map = self
            .generations
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if number == 0 {
            map.values().next_back().cloned()
        } else {
            map.get(&number).cloned()
        }
    }
}

/// What the full database (and the ASN one) says about a destination.
fn detail(info: Option<GeoInfo>, asn: Option<GeoInfo>) -> GeoDetail {
    let mut d = info.map_or_else(GeoDetail::default, |g| GeoDetail {
        country: g.country,
        registered_country: g.registered_country,
        continent: g.continent,
        asn: g.asn,
        as_org: g.as_org,
    });
    if let Some(a) = asn {
        d.asn = d.asn.or(a.asn);
        d.as_org = d.as_org.or(a.as_org);
    }
    d
}

/// Full-database lookups for enrichment, cached per generation and address:
/// the same destinations recur, and a cached lookup is a hash probe.
pub struct DetailCache {
    cache: lru::LruCache<(u32, IpAddr), Arc<GeoDetail>>,
}

impl DetailCache {
    /// A cache of `capacity` entries (at least one).
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        DetailCache {
            cache: lru::LruCache::new(NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN)),
        }
    }

    /// The detail for `ip` in `generation`. Lookup errors (a damaged record
    /// the walk at load time could not see) give an empty detail.
    pub fn get(&mut self, generation: &Generation, ip: IpAddr) -> Arc<GeoDetail> {
        let key = (generation.number, ip);
        if let Some(d) = self.cache.get(&key) {
            return d.clone();
        }
        let info = generation.db.lookup(ip).ok().flatten();
        let asn = generation
            .asn
            .as_ref()
            .and_then(|a| a.lookup(ip).ok().flatten());
        let d = Arc::new(detail(info, asn));
        self.cache.put(key, d.clone());
        d
    }
}

/// What the watcher needs to load new versions.
pub struct Watch {
    /// `None` only if a load was cut short at shutdown.
    pub maps: Option<crate::kernel::GeoMaps>,
    /// The file in force (`None`: none found yet; the search is repeated).
    pub path: Option<PathBuf>,
    /// Whether `path` came from the configuration or the command line (then
    /// it is not searched for again).
    pub explicit: bool,
    pub asn: Option<PathBuf>,
    pub identity: FileIdentity,
    pub interval: Duration,
    pub registry: Arc<Registry>,
    pub notes: tokio::sync::mpsc::UnboundedSender<Record>,
    /// Changes on SIGHUP.
    pub reload: tokio::sync::watch::Receiver<u64>,
    /// Refuse databases that anyone but root can change ([`crate::trust`]).
    pub locked: bool,
}

/// Watches the database file and reloads it when it changes or on SIGHUP.
/// A file that fails to load leaves the tables in force untouched, and is
/// tried again only when it changes again.
pub async fn watch(mut w: Watch, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        let forced = tokio::select! {
            _ = shutdown.changed() => return,
            r = w.reload.changed() => {
                if r.is_err() {
                    return;
                }
                true
            }
            () = tokio::time::sleep(w.interval) => false,
        };
        if w.path.is_none() && !w.explicit {
            w.path = discover(None);
        }
        let Some(path) = w.path.clone() else {
            if forced {
                tracing::warn!(
                    "reload asked, but there is no GeoIP database (searched {SEARCH_PATHS:?})"
                );
            }
            continue;
        };
        let identity = FileIdentity::of(&path);
        if !forced && identity == w.identity {
            continue;
        }
        w.identity = identity;
        w = reload(w, path).await;
    }
}

async fn reload(mut w: Watch, path: PathBuf) -> Watch {
    let untrusted = if w.locked {
        [Some(&path), w.asn.as_ref()]
            .into_iter()
            .flatten()
            .find_map(|p| crate::trust::check(p).err())
            .map(|e| e.to_string())
    } else {
        None
    };
    if let Some(e) = untrusted {
        refused(&w, &path, &e);
        return w;
    }
    let asn = w.asn.clone();
    let p = path.clone();
    let prepared = tokio::task::spawn_blocking(move || prepare(&p, asn.as_deref())).await;
    let prepared = match prepared {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            refused(&w, &path, &e.to_string());
            return w;
        }
        Err(e) => {
            refused(&w, &path, &format!("the loader failed: {e}"));
            return w;
        }
    };
    let Some(maps) = w.maps.take() else {
        return w;
    };
    // Known before the switch: the first records of the new generation
    // must already find its version.
    let number = maps.next_generation();
    let version = Arc::new(prepared.db.version().clone());
    w.registry.add(Generation {
        number,
        version: version.clone(),
        path: path.clone(),
        db: prepared.db.clone(),
        asn: prepared.asn.clone(),
    });
    let v4 = prepared.v4.clone();
    let v6 = prepared.v6.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mut maps = maps;
        // A panic must not take the maps with it: the programs keep the
        // tables in force either way, but later reloads need the maps.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| maps.install(&v4, &v6)));
        (maps, r)
    })
    .await;
    let installed = match result {
        Ok((maps, r)) => {
            w.maps = Some(maps);
            if let Ok(r) = r {
                r
            } else {
                w.registry.remove(number);
                refused(&w, &path, "the loader panicked");
                return w;
            }
        }
        // Cancelled: the runtime is shutting down.
        Err(_) => return w,
    };
    match installed {
        Ok(installed) => {
            w.identity = prepared.identity;
            crate::memory::release();
            let _ = w
                .notes
                .send(loaded_note(&path, &version, &prepared, &installed));
        }
        Err(e) => {
            w.registry.remove(number);
            refused(&w, &path, &e.to_string());
        }
    }
    w
}

fn refused(w: &Watch, path: &Path, error: &str) {
    tracing::warn!(path = %path.display(), "new GeoIP database refused, the tables in force stay: {error}");
    let _ = w.notes.send(Record::note(
        Lifecycle::GeoipRefused,
        format!(
            "GeoIP database {} was refused; the tables in force stay: {error}",
            path.display()
        ),
        serde_json::json!({ "geoip": { "path": path.display().to_string(), "error": error } }),
    ));
}

/// The `geoip-loaded` record: which data decides from now on.
#[must_use]
pub fn loaded_note(
    path: &Path,
    version: &DbVersion,
    prepared: &Prepared,
    installed: &crate::kernel::Installed,
) -> Record {
    tracing::info!(
        path = %path.display(),
        version = %version.label(),
        generation = installed.generation,
        prepare_ms = prepared.elapsed.as_millis(),
        load_ms = installed.fill.as_millis(),
        "GeoIP tables loaded"
    );
    Record::note(
        Lifecycle::GeoipLoaded,
        format!(
            "GeoIP database {} ({}) decides from generation {} on",
            path.display(),
            version.label(),
            installed.generation
        ),
        serde_json::json!({ "geoip": {
            "path": path.display().to_string(),
            "database": version.database_type,
            "build_epoch": version.build_epoch,
            "generation": installed.generation,
            "networks_v4": prepared.stats.networks_v4,
            "networks_v6": prepared.stats.networks_v6,
            "prefixes_v4": prepared.stats.prefixes_v4,
            "prefixes_v6": prepared.stats.prefixes_v6,
            "unknown_codes": prepared.stats.unknown_codes,
            "v4_level2_blocks": installed.l2_blocks,
            "v4_level3_blocks": installed.l3_blocks,
            "v4_array_bytes": installed.v4_bytes,
            "prepare_ms": u64::try_from(prepared.elapsed.as_millis()).unwrap_or(u64::MAX),
            "load_ms": u64::try_from(installed.fill.as_millis()).unwrap_or(u64::MAX),
        }}),
    )
}

#[cfg(test)]
mod tests {
    use geoip::testdb::{Entry, Layout, write};

    use super::*;

    #[test]
    fn prepares_caches_and_keeps_generations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.mmdb");
        write(
            &path,
            Layout::GeoIp2,
            "GeoLite2-Country",
            1_800_000_000,
            &[Entry {
                network: "192.0.2.0/24",
                country: Some("DE"),
                continent: Some("EU"),
                asn: Some(64500),
                as_org: Some("Example GmbH"),
                ..Default::default()
            }],
        );
        let p = prepare(&path, None).unwrap();
        assert_eq!(p.stats.networks_v4, 1);
        let registry = Registry::default();
        for number in 1..=6 {
            registry.add(Generation {
                number,
                version: Arc::new(p.db.version().clone()),
                path: path.clone(),
                db: p.db.clone(),
                asn: None,
            });
        }
        assert!(
            registry.get(1).is_none() || registry.get(1).unwrap().number == 6,
            "old ones dropped"
        );
        assert_eq!(registry.get(6).unwrap().number, 6);
        assert_eq!(registry.get(0).unwrap().number, 6, "0 means the newest");
        let generation = registry.get(5).unwrap();
        let mut cache = DetailCache::new(16);
        let d = cache.get(&generation, "192.0.2.7".parse().unwrap());
        assert_eq!(d.country, Some("DE".parse().unwrap()));
        assert_eq!(d.asn, Some(64500));
        assert_eq!(d.as_org.as_deref(), Some("Example GmbH"));
        assert_eq!(d.continent.as_deref(), Some("EU"));
        assert!(
            Arc::ptr_eq(&d, &cache.get(&generation, "192.0.2.7".parse().unwrap())),
            "cached"
        );
        assert_eq!(
            cache.get(&generation, "8.8.8.8".parse().unwrap()).country,
            None
        );
    }

    #[test]
    fn identity_changes_when_the_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.mmdb");
        write(
            &path,
            Layout::IpLocationDb,
            "t",
            1,
            &[Entry::country("10.0.0.0/8", "DE")],
        );
        let a = FileIdentity::of(&path);
        write(
            &path,
            Layout::IpLocationDb,
            "t",
            2,
            &[Entry::country("10.0.0.0/8", "FR")],
        );
        assert_ne!(a, FileIdentity::of(&path));
        assert_eq!(
            FileIdentity::of(&dir.path().join("missing")),
            FileIdentity::default()
        );
    }

    #[test]
    fn discovery_prefers_the_explicit_path() {
        let p = Path::new("/somewhere/x.mmdb");
        assert_eq!(discover(Some(p)), Some(p.to_path_buf()));
    }
}
