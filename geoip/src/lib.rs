//! residency's GeoIP layer.
//!
//! - [`db`]: opens MaxMind DB files (GeoIP2/GeoLite2 Country and City, the
//!   CC0 ip-location-db files, ASN databases), verifies them, and looks
//!   addresses up with full detail;
//! - [`flatten`]: turns a database into merged prefix -> country tables for
//!   the kernel;
//! - [`layout`]: the kernel's direct-indexed IPv4 layout of those tables;
//! - [`country`] and [`sets`]: ISO country codes, their kernel indexes, and
//!   jurisdiction sets (EU, EEA, adequacy, custom) as bitmaps.
//!
//! The crate knows nothing of the kernel's maps or of aya: the daemon's
//! `kernel` module loads what this crate computes.

pub mod country;
pub mod db;
pub mod flatten;
pub mod layout;
pub mod sets;
#[cfg(feature = "test-support")]
pub mod testdb;

pub use country::CountryCode;
pub use db::{Database, DbVersion, GeoInfo, GeoIpError};
pub use flatten::{FlattenStats, Tables, flatten};
pub use sets::{CountrySet, Sets};
