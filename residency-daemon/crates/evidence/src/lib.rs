//! The evidence store: every record the pipeline writes, kept in canonical
//! bytes in a SHA-256 hash chain with signed checkpoints, queryable for the
//! REST API and verifiable offline.
//!
//! - [`config`]: `[evidence]`, validated;
//! - [`chain`]: the hash chain and the checkpoint signatures;
//! - [`codec`]: record bodies compressed at rest against a trained
//!   dictionary;
//! - [`schema`]: the tables of both files, and upgrades;
//! - [`indexer`]: the second thread that writes `index.db`, and the WAL
//!   checkpointer;
//! - [`store`]: the single writer (a thread of its own: group commit, one
//!   transaction per batch, checkpoints, retention, violation lifecycle);
//! - [`query`]: readers for the API (flows, violations, transfers, policy,
//!   checkpoints);
//! - [`verify`]: re-reads a store or an export bundle and names the first
//!   fault;
//! - [`bundle`]: the export an auditor verifies offline.
//!
//! The store is `SQLite` (through rusqlite, bundled) in WAL mode, in
//! `evidence.directory` with the signing key beside it. Records arrive as
//! the canonical bytes `residency-record` encodes, with the columns
//! ([`residency_record::Index`]) it derives; the store never parses a
//! field of its own.
//!
//! Inside the crate, dependencies point one way too: `clock`, `stats`,
//! `schema` and `chain` use nothing of the others, `codec` only `clock`;
//! `indexer` uses those; `query` (the readers) uses those and the
//! indexer's progress; `store` (the writer, which hands out readers) uses
//! all of them; `verify` and `bundle` read through `query`.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod chain;
pub mod clock;
pub mod codec;
pub mod config;
pub mod indexer;
pub mod query;
pub mod schema;
pub mod stats;
pub mod store;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
pub mod verify;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use config::{DEFAULT_STATE_DIR, EvidenceConfig, RawEvidence};
pub use indexer::WAL_LIMIT;
pub use query::{
    Filter, FlowTotals, Order, Page, PageOf, Reader, StoredRecord, Violation, ViolationState,
};
pub use stats::Stats;
pub use store::{Evidence, Opened};

/// The database file in an evidence directory.
#[must_use]
pub fn db_path(dir: &Path) -> PathBuf {
    dir.join("evidence.db")
}

/// The index file in an evidence directory (derived; rebuilt if missing).
#[must_use]
pub fn index_path(dir: &Path) -> PathBuf {
    dir.join("index.db")
}

/// The signing key in an evidence directory.
#[must_use]
pub fn key_path(dir: &Path) -> PathBuf {
    dir.join("evidence.key")
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error("evidence store {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error("evidence store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("evidence store: {0}")]
    Io(#[from] std::io::Error),
    #[error("violation {0} does not exist")]
    NoViolation(i64),
    #[error("violation {id} is {state}; it cannot become {to}")]
    Transition {
        id: i64,
        state: &'static str,
        to: &'static str,
    },
    /// The writer has ended (the store was closed).
    #[error("the evidence store has stopped")]
    Stopped,
    /// Writes fail (a full disk, an I/O error). The store counts the
    /// records it cannot store, retries, and writes an `evidence-gap`
    /// record when a write succeeds again.
    #[error(
        "the evidence store takes no writes at the moment ({0}); it retries every few seconds and records the gap when writes succeed again"
    )]
    Unwritable(String),
    #[error("no records in that time range")]
    EmptyRange,
    #[error("another export is running; try again when it has finished")]
    ExportBusy,
    #[error(
        "that range holds {count} records; one export holds at most {max}: narrow from/to and export in parts"
    )]
    TooManyRecords { count: u64, max: u64 },
    /// A record could not be encoded (a bug: the record types always
    /// serialise).
    #[error("evidence store: cannot encode a record: {0}")]
    Encode(#[from] serde_json::Error),
    /// A thread of the store's (a verify worker) panicked.
    #[error("evidence store: {0} panicked")]
    Panicked(&'static str),
    /// What was read is not what the store writes (a damaged file, a
    /// bundle that is not one).
    #[error("{0}")]
    Invalid(String),
}
