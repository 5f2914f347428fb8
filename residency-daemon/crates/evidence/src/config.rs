//! `[evidence]`: where the store lives, how often it is signed, how long
//! records are kept.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use residency_config::{ConfigError, Locator, Spanned};
use serde::Deserialize;

/// The default evidence directory of an installed daemon.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/residency";

/// `[evidence]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEvidence {
    directory: Option<Spanned<String>>,
    checkpoint_records: Option<Spanned<u64>>,
    checkpoint_interval_secs: Option<Spanned<u64>>,
    retention_days: Option<Spanned<u64>>,
    max_size_mib: Option<Spanned<u64>>,
}

/// The evidence store's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceConfig {
    /// Holds the store (`evidence.db`), its signing key (`evidence.key`)
    /// and the API token (`api.token`).
    pub directory: PathBuf,
    /// Sign a checkpoint after this many records...
    pub checkpoint_records: u64,
    /// ...or this long after the last one, whichever comes first.
    pub checkpoint_interval: Duration,
    /// Prune records older than this (`None`: keep them).
    pub retention: Option<Duration>,
    /// Prune the oldest records when the store grows past this many bytes.
    pub max_bytes: Option<u64>,
    /// Rewind a write-ahead log past this many bytes (not configurable:
    /// [`crate::WAL_LIMIT`]; tests use less).
    pub wal_limit: u64,
    /// Records sampled to train the store's compression dictionary (not
    /// configurable: [`crate::codec::SAMPLES`]; tests use fewer).
    pub dict_samples: usize,
}

impl EvidenceConfig {
    /// The defaults, in `directory` (for tests and tools that open a store
    /// without a configuration file).
    #[must_use]
    pub fn in_directory(directory: PathBuf) -> Self {
        EvidenceConfig {
            directory,
            checkpoint_records: 10_000,
            checkpoint_interval: Duration::from_mins(1),
            retention: None,
            max_bytes: None,
            wal_limit: crate::WAL_LIMIT,
            dict_samples: crate::codec::SAMPLES,
        }
    }

    /// Validates `[evidence]`.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the line and field of the first bad value.
    pub fn validate(raw: &RawEvidence, at: &Locator<'_>) -> Result<Self, ConfigError> {
        let directory = match &raw.directory {
            None => PathBuf::from(DEFAULT_STATE_DIR),
            Some(s) if !Path::new(s.get_ref()).is_absolute() => {
                return Err(at.err(
                    s.span(),
                    "evidence.directory",
                    "must be an absolute path, e.g. \"/var/lib/residency\"",
                ));
            }
            Some(s) => PathBuf::from(s.get_ref()),
        };
        let defaults = EvidenceConfig::in_directory(directory);
        let records = at.ranged(
            raw.checkpoint_records.as_ref(),
            "evidence.checkpoint_records",
            Some(defaults.checkpoint_records),
            1..=100_000_000,
        )?;
        let secs = at.ranged(
            raw.checkpoint_interval_secs.as_ref(),
            "evidence.checkpoint_interval_secs",
            Some(defaults.checkpoint_interval.as_secs()),
            1..=86_400,
        )?;
        let days = at.ranged(
            raw.retention_days.as_ref(),
            "evidence.retention_days",
            None,
            1..=36_500,
        )?;
        let mib = at.ranged(
            raw.max_size_mib.as_ref(),
            "evidence.max_size_mib",
            None,
            16..=16 * 1024 * 1024,
        )?;
        Ok(EvidenceConfig {
            checkpoint_records: records.unwrap_or(defaults.checkpoint_records),
            checkpoint_interval: secs.map_or(defaults.checkpoint_interval, Duration::from_secs),
            retention: days.map(|d| Duration::from_secs(d * 86_400)),
            max_bytes: mib.map(|m| m * 1024 * 1024),
            ..defaults
        })
    }
}
