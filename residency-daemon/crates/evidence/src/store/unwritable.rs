//! A store that takes no writes.
//!
//! A write that fails (a full disk, an I/O error) does not stop the daemon:
//! the kernel decides, and the store is only its evidence. Each
//! transaction commits whole or not at all, so what is stored stays as it
//! was. From the failure on, the writer counts the records it is handed
//! instead of storing them, reports itself not writable (`/readyz`), and
//! tries again every [`RETRY`] (after a full disk, once the filesystem has
//! [`ROOM_TO_RETRY`] free). The first write that succeeds is an
//! `evidence-gap` record (`store-unwritable`) that says from when to when
//! and how many records were not stored; then records are stored again.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use residency_record::{EvidenceGap, Index, encode_line};
use tracing::{error, warn};

use super::{Writer, count_lines};
use crate::{EvidenceError, clock::now_ns};

/// How often a store that takes no writes tries again. A try is one small
/// transaction (the gap record), so this costs nothing while the disk is
/// full and ends the gap within seconds of space coming back.
pub const RETRY: Duration = Duration::from_secs(2);
/// After a full disk, a try waits until the filesystem has this much room.
/// The space a failed transaction took in the log stays allocated, so a
/// small write (the gap record) can succeed while the disk is still full,
/// and the next batch fail again: without this the store would flap
/// between writable and not, a gap record each time.
pub const ROOM_TO_RETRY: u64 = 2 << 20;

/// A stretch in which the store takes no writes: what its gap record says.
#[derive(Debug)]
pub(super) struct Unwritable {
    /// The last record stored before it (0: none) and that record's time
    /// (Unix ns).
    pub(super) after_seq: u64,
    pub(super) after_ts: i64,
    /// When the first write failed (Unix ns).
    pub(super) since: i64,
    /// Records handed to the writer since then, not stored.
    pub(super) records: u64,
    /// The failure that began it.
    pub(super) error: String,
    /// The last try to write.
    pub(super) tried: Instant,
    /// The last failure was a full disk (`SQLITE_FULL`).
    pub(super) full: bool,
}

impl Writer {
    /// Stores a batch from the pipeline, or, while the store takes no
    /// writes, counts it for the gap record.
    pub(super) fn append_logged(&mut self, lines: &[u8], index: Vec<Option<Index>>) {
        if !self.recover(false) {
            self.not_stored(count_lines(lines));
            return;
        }
        if let Err(e) = self.append_with(lines, index, None) {
            self.write_failed(&e);
            self.not_stored(count_lines(lines));
        }
    }

    /// A write asked for now (a checkpoint, retention): a store that takes
    /// no writes tries again first, without waiting for [`RETRY`].
    pub(super) fn write_now<T>(
        &mut self,
        write: impl FnOnce(&mut Self) -> Result<T, EvidenceError>,
    ) -> Result<T, EvidenceError> {
        if !self.recover(true) {
            return Err(self.unwritable_error());
        }
        write(self).map_err(|e| {
            self.write_failed(&e);
            EvidenceError::Unwritable(e.to_string())
        })
    }

    pub(super) fn unwritable_error(&self) -> EvidenceError {
        EvidenceError::Unwritable(
            self.unwritable
                .as_ref()
                .map_or_else(String::new, |u| u.error.clone()),
        )
    }

    /// A write failed. The transaction rolled back, so the store is as it
    /// was; the daemon goes on (the kernel decides, this is only the
    /// evidence), and this writer counts what it cannot store until a
    /// retry succeeds. Said once, not per batch.
    pub(super) fn write_failed(&mut self, e: &EvidenceError) {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        let full = matches!(e, EvidenceError::Sqlite(e)
            if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull));
        if let Some(u) = &mut self.unwritable {
            u.tried = Instant::now();
            u.full = full;
            return;
        }
        let since = now_ns();
        let after_seq = self.next_seq.saturating_sub(1);
        error!(
            after_seq,
            "evidence store write failed: {e}. Enforcement and the other outputs go on; \
             the store counts the records it cannot store, tries again every {} s (after a \
             full disk, once {} MiB are free), and records the gap when a write succeeds",
            RETRY.as_secs(),
            ROOM_TO_RETRY >> 20
        );
        self.stats.writable.store(false, Ordering::Relaxed);
        self.stats.unwritable_since.store(since, Ordering::Relaxed);
        self.unwritable = Some(Unwritable {
            after_seq,
            after_ts: self.stats.head_ts.load(Ordering::Relaxed),
            since,
            records: 0,
            error: e.to_string(),
            tried: Instant::now(),
            full,
        });
    }

    pub(super) fn not_stored(&mut self, records: u64) {
        if let Some(u) = &mut self.unwritable {
            u.records += records;
            self.stats.not_stored.inc_by(records);
        }
    }

    /// Whether the store takes writes. If it did not, tries again (once
    /// [`RETRY`] has passed since the last try and, after a full disk,
    /// there is [`ROOM_TO_RETRY`]; or at once with `now`): the first write
    /// is the gap record, and when it commits the store takes records
    /// again.
    pub(super) fn recover(&mut self, now: bool) -> bool {
        let dir = &self.config.directory;
        let Some(u) = &mut self.unwritable else {
            return true;
        };
        if !now {
            if u.tried.elapsed() < RETRY {
                return false;
            }
            if u.full && room(dir).is_some_and(|r| r < ROOM_TO_RETRY) {
                u.tried = Instant::now();
                return false;
            }
        }
        let until = now_ns();
        let time = |ns: i64| {
            jiff::Timestamp::from_nanosecond(i128::from(ns))
                .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
                .to_string()
        };
        let (since, records) = (time(u.since), u.records);
        let milliseconds = u64::try_from((until - u.since) / 1_000_000).unwrap_or(0);
        let record = EvidenceGap {
            reason: EvidenceGap::STORE_UNWRITABLE.to_owned(),
            after_seq: (u.after_seq > 0).then_some(u.after_seq),
            after: (u.after_seq > 0).then(|| time(u.after_ts)),
            until: Some(time(until)),
            milliseconds: Some(milliseconds),
            records_not_stored: Some(records),
            ..EvidenceGap::default()
        }
        .record(format!(
            "the evidence store took no writes from {since} to {} ({}); \
             {records} records made in that time are not in the chain \
             (the output file has them, if it could be written)",
            time(until),
            u.error
        ));
        let mut line = Vec::new();
        let written = encode_line(&record, &mut line)
            .map_err(EvidenceError::from)
            .and_then(|()| self.append_with(&line, Vec::new(), None));
        match written {
            Ok(()) => {
                warn!(
                    records_not_stored = records,
                    milliseconds,
                    gap_seq = self.next_seq - 1,
                    "the evidence store takes writes again; a gap record says what it did not store"
                );
                self.unwritable = None;
                self.stats.unwritable_since.store(0, Ordering::Relaxed);
                self.stats.writable.store(true, Ordering::Relaxed);
                true
            }
            Err(e) => {
                self.write_failed(&e);
                false
            }
        }
    }
}

/// Free bytes on the filesystem of `dir`, for this process (root may use
/// the blocks reserved for it).
fn room(dir: &std::path::Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    let blocks = if nix::unistd::geteuid().is_root() {
        s.blocks_free()
    } else {
        s.blocks_available()
    };
    Some(blocks.saturating_mul(s.fragment_size()))
}

/// Whether a write failed for want of room or of a working disk (rather
/// than for something in what was written).
pub(super) fn out_of_room(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DiskFull | rusqlite::ErrorCode::SystemIoFailure)
    )
}
