//! The indexer: builds `index.db` (what the API filters flows by) from the
//! chain's `records`, on a thread of its own.
//!
//! Appending a record to the chain is one B-tree insert; indexing it by
//! time, country, workload, destination and tenant is six more. Doing both
//! on one thread halves ingest (measured: 50k against 100k records/s), so
//! the writer commits the chain and wakes the indexer, which follows a
//! batch behind on the other core. A flow is *queryable* once indexed; the
//! lag is one batch (milliseconds), reported as the ingest latency.
//!
//! The index is derived state: it records how far it has indexed
//! (`ix_meta.through`), catches up from `records` at start, and can be
//! deleted at any time to be rebuilt.

use std::{
    path::PathBuf,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use rusqlite::{Connection, OpenFlags, OptionalExtension as _, params};
use tracing::{error, info, warn};

use super::{EvidenceError, schema, store::Stats};

/// Past this size a write-ahead log is rewound (checkpoint TRUNCATE).
const WAL_LIMIT: u64 = 64 << 20;

/// Records indexed per transaction, at most: small enough that the first
/// of them does not wait long for the last (latency), large enough that
/// a commit per chunk costs little.
const CHUNK: i64 = 20_000;

/// What the writer and the indexer share.
#[derive(Debug, Default)]
pub struct Progress {
    /// The newest sequence number committed to the chain.
    committed: Mutex<u64>,
    /// Wakes the indexer (a commit, or stop).
    wake: Condvar,
    /// Wakes the WAL checkpointer early (stop only: it runs on a clock,
    /// not on every commit).
    halt: Condvar,
    /// Records up to here are indexed (queryable).
    pub indexed: AtomicU64,
    /// Records up to here were pruned from the chain.
    pub pruned: AtomicU64,
    stop: AtomicBool,
    /// Set by the indexer as it exits.
    done: AtomicBool,
}

impl Progress {
    /// The writer committed up to `seq`.
    pub fn committed(&self, seq: u64) {
        if let Ok(mut c) = self.committed.lock() {
            *c = (*c).max(seq);
        }
        self.wake.notify_all();
    }

    /// Waits until everything committed is indexed, for at most `timeout`.
    pub fn wait_indexed(&self, timeout: Duration) -> bool {
        let target = self.committed.lock().map_or(0, |c| *c);
        let deadline = std::time::Instant::now() + timeout;
        while self.indexed.load(Ordering::Acquire) < target {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    /// Waits (at most `timeout`) for the indexer to have exited.
    pub fn wait_done(&self, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while !self.done.load(Ordering::Acquire) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Asks the indexer to finish.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake.notify_all();
        self.halt.notify_all();
    }
}

/// Opens the index file, creating it if missing. A damaged index file is
/// set aside and rebuilt: it holds nothing the chain does not.
///
/// # Errors
/// If no index file can be created.
pub fn open_index(path: &std::path::Path) -> Result<Connection, EvidenceError> {
    let open = || -> Result<Connection, String> {
        let c = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| e.to_string())?;
        schema::create_index(&c)?;
        c.query_row("SELECT count(*) FROM ix_meta", [], |r| r.get::<_, i64>(0))
            .map_err(|e| e.to_string())?;
        Ok(c)
    };
    match open() {
        Ok(c) => Ok(c),
        Err(e) => {
            warn!(
                index = %path.display(),
                "the index file is damaged ({e}); rebuilding it from the chain"
            );
            for suffix in ["", "-wal", "-shm"] {
                let mut p = path.as_os_str().to_owned();
                p.push(suffix);
                let _ = std::fs::remove_file(PathBuf::from(p));
            }
            open().map_err(|message| EvidenceError::Open {
                path: path.to_owned(),
                message,
            })
        }
    }
}

pub struct Indexer {
    pub(super) records: Connection,
    pub(super) index: Connection,
    pub(super) progress: Arc<Progress>,
    pub(super) stats: Arc<Stats>,
}

impl Indexer {
    /// Opens both files. `records` read-only.
    ///
    /// # Errors
    /// If either file cannot be opened.
    pub fn open(
        db: &std::path::Path,
        index: &std::path::Path,
        progress: Arc<Progress>,
        stats: Arc<Stats>,
    ) -> Result<Self, EvidenceError> {
        let records = Connection::open_with_flags(
            db,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        records.execute_batch(
            "PRAGMA busy_timeout = 5000; PRAGMA cache_size = -16384; PRAGMA mmap_size = 1073741824;",
        )?;
        let index = open_index(index)?;
        // The checkpointer thread folds the WAL back (see `checkpointer`).
        index.execute_batch("PRAGMA wal_autocheckpoint = 0;")?;
        let through: i64 = index
            .query_row("SELECT value FROM ix_meta WHERE key = 'through'", [], |r| {
                r.get(0)
            })
            .optional()?
            .unwrap_or(0);
        progress
            .indexed
            .store(u64::try_from(through).unwrap_or(0), Ordering::Release);
        Ok(Indexer {
            records,
            index,
            progress,
            stats,
        })
    }

    /// Indexes until asked to stop, then catches up once more.
    pub fn run(self) {
        let progress = self.progress.clone();
        self.index_until_stopped();
        progress.done.store(true, Ordering::Release);
    }

    fn index_until_stopped(mut self) {
        let mut pruned_done = 0u64;
        loop {
            let stopping = self.progress.stop.load(Ordering::Acquire);
            let pruned = self.progress.pruned.load(Ordering::Acquire);
            if pruned > pruned_done {
                match self.prune(pruned) {
                    Ok(()) => pruned_done = pruned,
                    Err(e) => error!("cannot prune the index: {e}"),
                }
            }
            match self.step() {
                Ok(0) if stopping => return,
                Ok(0) => self.sleep(),
                Ok(_) => {}
                Err(e) => {
                    error!("indexing failed (retrying): {e}");
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    if stopping {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
    }

    fn sleep(&self) {
        let indexed = self.progress.indexed.load(Ordering::Acquire);
        let Ok(guard) = self.progress.committed.lock() else {
            return;
        };
        if *guard > indexed || self.progress.stop.load(Ordering::Acquire) {
            return;
        }
        let _ = self
            .progress
            .wake
            .wait_timeout(guard, Duration::from_millis(250));
    }

    /// Indexes the next chunk; returns how many records it covered.
    fn step(&mut self) -> Result<u64, EvidenceError> {
        let from = i64::try_from(self.progress.indexed.load(Ordering::Acquire)).unwrap_or(i64::MAX);
        let tx = self.index.transaction()?;
        let mut last = from;
        let mut stamps = Vec::new();
        {
            let mut read = self.records.prepare_cached(
                "SELECT seq, ts, kind, verdict, workload, role, tenants, country, dst_ip, dst_name, boot_ns
                 FROM records WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let mut cols = tx.prepare_cached(
                "INSERT INTO cols (seq, ts, verdict, workload, role, country, dst_ip, dst_name)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            let mut tenants = tx.prepare_cached(
                "INSERT OR IGNORE INTO tenants (tenant, seq, country) VALUES (?1, ?2, ?3)",
            )?;
            let mut rows = read.query(params![from, CHUNK])?;
            while let Some(r) = rows.next()? {
                let seq: i64 = r.get(0)?;
                last = seq;
                let kind = r.get_ref(2)?.as_str().unwrap_or_default();
                if kind != "flow" {
                    continue;
                }
                let country: Option<String> = r.get(7)?;
                cols.execute(params![
                    seq,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    country,
                    r.get::<_, Option<String>>(8)?,
                    r.get::<_, Option<String>>(9)?,
                ])?;
                if let Some(ts) = r.get_ref(6)?.as_str_or_null().ok().flatten() {
                    for t in ts.split(',').filter(|t| !t.is_empty()) {
                        tenants.execute(params![t, seq, country])?;
                    }
                }
                if let Some(b) = r.get::<_, Option<i64>>(10)? {
                    stamps.push(u64::try_from(b).unwrap_or(0));
                }
            }
        }
        if last == from {
            return Ok(0);
        }
        tx.execute(
            "INSERT INTO ix_meta (key, value) VALUES ('through', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [last],
        )?;
        tx.commit()?;
        self.progress
            .indexed
            .store(u64::try_from(last).unwrap_or(0), Ordering::Release);
        let now = super::store::boot_now_ns();
        for b in stamps {
            #[expect(clippy::cast_precision_loss, reason = "seconds for a histogram")]
            self.stats
                .ingest_latency_seconds
                .observe(now.saturating_sub(b) as f64 / 1e9);
        }
        self.stats.indexed_seq.set(u64::try_from(last).unwrap_or(0));
        Ok(u64::try_from(last - from).unwrap_or(0))
    }

    fn prune(&mut self, through: u64) -> Result<(), EvidenceError> {
        let through = i64::try_from(through).unwrap_or(i64::MAX);
        let tx = self.index.transaction()?;
        tx.execute("DELETE FROM cols WHERE seq <= ?1", [through])?;
        tx.execute("DELETE FROM tenants WHERE seq <= ?1", [through])?;
        tx.commit()?;
        info!(through, "index pruned");
        Ok(())
    }
}

/// Folds both files' write-ahead logs back into the databases, every
/// `every`, on a thread of its own.
///
/// `SQLite` runs this checkpoint inside the committing writer by default
/// (every 1,000 pages), and its copy-and-fsync stalls that writer: measured
/// here, commits of 100-250 ms every few seconds, which put a fifth of the
/// flows over 100 ms from decision to queryable at 40k events/s. A passive
/// checkpoint on another connection takes no lock the writers wait for.
///
/// # Errors
/// If the thread cannot be started.
pub fn checkpointer(
    paths: Vec<PathBuf>,
    progress: Arc<Progress>,
    every: Duration,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("evidence-wal".into())
        .spawn(move || {
            let conns: Vec<(Connection, &PathBuf)> = paths
                .iter()
                .filter_map(|p| {
                    match Connection::open_with_flags(
                        p,
                        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    ) {
                        Ok(c) => {
                            // Wait briefly for readers when rewinding the
                            // log; the writer waits as long (a rewind
                            // blocks it), so keep it short.
                            let _ = c.busy_timeout(Duration::from_millis(20));
                            Some((c, p))
                        }
                        Err(e) => {
                            error!(path = %p.display(), "cannot open for WAL checkpoints: {e}");
                            None
                        }
                    }
                })
                .collect();
            loop {
                let stopping = progress.stop.load(Ordering::Acquire);
                for (c, path) in &conns {
                    if let Err(e) = c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                        warn!("WAL checkpoint failed (retried): {e}");
                    }
                    // A passive checkpoint never rewinds the log while a
                    // reader (the indexer, right behind the writer) holds
                    // it, so under steady load it would grow without end
                    // (measured: it filled the disk). Past a bound, rewind
                    // it, waiting at most briefly for readers to let go.
                    // RESTART, not TRUNCATE: freeing a large file's blocks
                    // stalled the writer for hundreds of milliseconds
                    // (p99 to queryable 500 ms against 40 ms with RESTART).
                    let mut wal = path.as_os_str().to_owned();
                    wal.push("-wal");
                    let size = std::fs::metadata(&wal).map_or(0, |m| m.len());
                    if size > WAL_LIMIT
                        && let Err(e) =
                            c.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))
                    {
                        warn!("WAL rewind failed (retried): {e}");
                    }
                }
                if stopping {
                    return;
                }
                let Ok(guard) = progress.committed.lock() else {
                    return;
                };
                let _ = progress.halt.wait_timeout(guard, every);
            }
        })
}
