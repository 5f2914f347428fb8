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

use crate::{EvidenceError, clock::boot_now_ns, schema, stats::Stats};

/// Past this size a write-ahead log is rewound (by its writer; see
/// [`rewind`]). Each rewind pauses the writer for two fsyncs (measured
/// 28-375 ms on this VM), so the larger the log, the rarer the pause: at
/// 1 GiB, every 8 s at 50k events/s; at 256 MiB, every 2 s.
pub const WAL_LIMIT: u64 = 1 << 30;

/// How often the checkpointer looks at logs that did not grow (a commit
/// wakes it sooner).
const IDLE_CHECKPOINTS: Duration = Duration::from_secs(1);

/// Records indexed per transaction, at most: small enough that the first
/// of them does not wait long for the last (latency), large enough that
/// a commit per chunk costs little.
const CHUNK: i64 = 20_000;

/// What the writer and the indexer share.
#[derive(Debug, Default)]
pub struct Progress {
    /// The newest sequence number committed to the chain.
    committed: Mutex<u64>,
    /// Wakes the indexer and an idle checkpointer (a commit, or stop).
    wake: Condvar,
    /// Wakes the WAL checkpointer early (stop only: it runs on a clock,
    /// not on every commit).
    halt: Condvar,
    /// Records up to here are indexed (queryable).
    pub indexed: AtomicU64,
    /// Records up to here were pruned from the chain.
    pub pruned: AtomicU64,
    stop: AtomicBool,
    /// Set by the checkpointer when a file's log is past [`WAL_LIMIT`]:
    /// that file's writer rewinds it between two transactions. Index 0 is
    /// the chain (`evidence.db`), 1 the index.
    rewind: [AtomicBool; 2],
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

    /// Whether file `which` (0 chain, 1 index) is to be rewound; clears
    /// the request.
    pub fn take_rewind(&self, which: usize) -> bool {
        self.rewind
            .get(which)
            .is_some_and(|r| r.swap(false, Ordering::AcqRel))
    }

    /// Asks again for file `which` to be rewound.
    pub fn request_rewind(&self, which: usize) {
        if let Some(r) = self.rewind.get(which) {
            r.store(true, Ordering::Release);
        }
    }

    /// Waits until records up to `seq` are indexed, for at most `timeout`;
    /// false at once if the indexer is more than a chunk behind.
    pub fn wait_indexed_to(&self, seq: u64, timeout: Duration) -> bool {
        if self.indexed.load(Ordering::Acquire) + CHUNK.unsigned_abs() < seq {
            return false;
        }
        let deadline = std::time::Instant::now() + timeout;
        while self.indexed.load(Ordering::Acquire) < seq {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        true
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
        // Failing since (said once: a full disk fails every try).
        let mut failing = false;
        loop {
            let stopping = self.progress.stop.load(Ordering::Acquire);
            let pruned = self.progress.pruned.load(Ordering::Acquire);
            if pruned > pruned_done {
                match self.prune(pruned) {
                    Ok(()) => pruned_done = pruned,
                    Err(e) => error!("cannot prune the index: {e}"),
                }
            }
            let step = self.step();
            if failing && step.is_ok() {
                info!("indexing resumed");
                failing = false;
            }
            match step {
                Ok(0) if stopping => return,
                Ok(0) => self.sleep(),
                Ok(_) => {}
                Err(e) => {
                    if !failing {
                        error!("indexing failed (retried every 500 ms until it works): {e}");
                        failing = true;
                    }
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
                "SELECT seq, ts, kind, verdict, workload, role, tenants, country, dst_ip, dst_name, boot_ns, namespace, pod
                 FROM records WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let mut cols = tx.prepare_cached(
                "INSERT INTO cols (seq, ts, verdict, workload, role, country, dst_ip, dst_name, namespace, pod)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            let mut tenants = tx.prepare_cached(
                "INSERT OR IGNORE INTO tenants (tenant, seq, country) VALUES (?1, ?2, ?3)",
            )?;
            let mut rows = read.query(params![from, CHUNK])?;
            while let Some(r) = rows.next()? {
                let seq: i64 = r.get(0)?;
                last = seq;
                let kind = r.get_ref(2)?.as_str().unwrap_or_default();
                if kind != residency_record::index::FLOW {
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
                    r.get::<_, Option<String>>(11)?,
                    r.get::<_, Option<String>>(12)?,
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
        if self.progress.take_rewind(1) && !rewind(&self.index) {
            self.progress.request_rewind(1);
        }
        self.progress
            .indexed
            .store(u64::try_from(last).unwrap_or(0), Ordering::Release);
        let now = boot_now_ns();
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

/// Rewinds the write-ahead log of the file `conn` writes, from its own
/// (and only) writer, between two transactions. Returns false if it could
/// not (ask again after the next transaction).
///
/// A log restarts from its beginning when a writer finds every frame in it
/// copied back and no reader still reading from it. Under steady load that
/// never happens by itself: the checkpointer copies while the writer
/// appends. `PRAGMA wal_checkpoint(RESTART)` from another connection forces
/// it but holds the write lock throughout, and the writer sleeps in
/// `SQLite`'s busy handler until it ends (measured: commits stalled up to a
/// second; p99 decision-to-queryable 250-500 ms at 50k events/s). Run
/// here, the passive checkpoint has only the frames since the
/// checkpointer's last pass to copy and waits on no lock, and the writer's
/// next transaction restarts the log. Readers that begin after it read the
/// database file alone and do not hold the log.
pub fn rewind(conn: &Connection) -> bool {
    match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    }) {
        Ok((busy, log, copied)) => busy == 0 && log == copied,
        // The checkpointer's own pass holds the checkpoint lock.
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::DatabaseBusy =>
        {
            false
        }
        Err(e) => {
            warn!("WAL rewind failed (retried): {e}");
            false
        }
    }
}

/// Folds both files' write-ahead logs back into the databases on a thread
/// of its own: every `every` while records arrive, every second when idle.
///
/// `SQLite` runs this checkpoint inside the committing writer by default
/// (every 1,000 pages), and its copy-and-fsync stalls that writer: measured
/// here, commits of 100-250 ms every few seconds, which put a fifth of the
/// flows over 100 ms from decision to queryable at 40k events/s. A passive
/// checkpoint on another connection takes no lock the writers wait for,
/// and run often it leaves little for [`rewind`] to copy.
///
/// # Errors
/// If the thread cannot be started.
pub fn checkpointer(
    paths: Vec<PathBuf>,
    progress: Arc<Progress>,
    every: Duration,
    limit: u64,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("evidence-wal".into())
        .spawn(move || {
            // (which file, connection, its page size)
            let conns: Vec<(usize, Connection, i64)> = paths
                .iter()
                .enumerate()
                .filter_map(|(which, p)| {
                    let opened = Connection::open_with_flags(
                        p,
                        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    )
                    .and_then(|c| {
                        let page = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
                        Ok((which, c, page))
                    });
                    opened
                        .map_err(|e| {
                            error!(path = %p.display(), "cannot open for WAL checkpoints: {e}");
                        })
                        .ok()
                })
                .collect();
            let mut last_frames = vec![-1; conns.len()];
            // Per file, whether checkpoints fail (a full disk: said once).
            let mut failing = vec![false; conns.len()];
            loop {
                let stopping = progress.stop.load(Ordering::Acquire);
                let mut busy = false;
                for (((which, c, page), last), failing) in
                    conns.iter().zip(&mut last_frames).zip(&mut failing)
                {
                    // A passive checkpoint copies frames back but cannot
                    // rewind the log while its writer keeps appending, so
                    // under steady load the log would grow without end
                    // (measured: it filled the disk). Past a bound, the
                    // writer is asked to rewind it.
                    match c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1))
                    {
                        Ok(frames) => {
                            if *failing {
                                info!(path = %paths[*which].display(), "WAL checkpoints work again");
                                *failing = false;
                            }
                            busy |= frames != *last;
                            *last = frames;
                            let bytes = u64::try_from(frames.saturating_mul(*page)).unwrap_or(0);
                            if bytes > limit
                                && let Some(flag) = progress.rewind.get(*which)
                            {
                                flag.store(true, Ordering::Release);
                            }
                        }
                        // The writer's own rewind holds the checkpoint
                        // lock: this pass is simply not needed.
                        Err(rusqlite::Error::SqliteFailure(e, _))
                            if e.code == rusqlite::ErrorCode::DatabaseBusy => {}
                        Err(e) => {
                            if !*failing {
                                warn!(
                                    path = %paths[*which].display(),
                                    "WAL checkpoint failed (retried until it works): {e}"
                                );
                            }
                            *failing = true;
                        }
                    }
                }
                if stopping {
                    return;
                }
                let Ok(guard) = progress.committed.lock() else {
                    return;
                };
                // Busy: on the clock. Idle: until the next commit.
                let _ = if busy {
                    progress.halt.wait_timeout(guard, every)
                } else {
                    progress.wake.wait_timeout(guard, IDLE_CHECKPOINTS)
                };
            }
        })
}
