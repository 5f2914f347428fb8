//! The single writer of the evidence store.
//!
//! It runs on a thread of its own (`SQLite` calls block) and takes whole
//! batches from the pipeline: the same newline-terminated JSON records the
//! other sinks received. Each batch, plus whatever else is already waiting,
//! becomes one transaction (group commit), which is what lets a single
//! `SQLite` writer keep up with the kernel. The channel in front of it is
//! bounded: when the disk is slower than the kernel, the pipeline waits,
//! the hand-off ring fills, and the kernel counts what it cannot report,
//! which then becomes a gap record here. Nothing is dropped silently.
//!
//! A write that fails (a full disk) does not stop the daemon: see
//! [`unwritable`].

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::PathBuf,
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, Instant},
};

use ed25519_dalek::{SigningKey, VerifyingKey};
use rusqlite::{Connection, OptionalExtension as _, Transaction, params};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use residency_record::{EvidenceGap, Index, Lifecycle, Pruned, ViolationChange, encode_line};

mod derived;
mod unwritable;

use derived::{
    TransferCount, TransferKey, ViolationKey, count_transfer, open_violation, record_policy,
    upsert_flow_totals, upsert_transfers,
};
pub use unwritable::{RETRY, ROOM_TO_RETRY};
use unwritable::{Unwritable, out_of_room};

use crate::{
    EvidenceConfig, EvidenceError, chain,
    chain::Hash,
    clock::{boot_now_ns, now_ns},
    codec,
    indexer::{Indexer, Progress},
    query::{Reader, Violation, ViolationState},
    schema,
    stats::Stats,
};

/// Batches that may wait for the writer before the pipeline waits too.
/// One: a crash then loses at most the transaction being committed and
/// the one batch waiting behind it, and under load the pipeline's batches
/// simply grow (up to 1 MiB each), which is group commit by another name.
const QUEUE: usize = 1;
/// A transaction takes at most about this many bytes of records.
const MAX_TXN_BYTES: usize = 32 << 20;
/// How often time-based work (checkpoints, retention, retries) is
/// considered.
const TICK: Duration = Duration::from_millis(250);
enum Command {
    /// Newline-terminated records, in order, with their indexed columns
    /// where the caller has them (`None` or missing: parsed here).
    Append(Vec<u8>, Vec<Option<Index>>),
    Transition {
        id: i64,
        to: ViolationState,
        note: String,
        by: String,
        reply: oneshot::Sender<Result<Violation, EvidenceError>>,
    },
    Checkpoint(oneshot::Sender<Result<(), EvidenceError>>),
    Close(oneshot::Sender<Result<u64, EvidenceError>>),
    /// Time passed: time-based checkpoints and retention.
    Tick,
    /// Apply retention now.
    Prune(oneshot::Sender<Result<(), EvidenceError>>),
    /// Runs on the writer's connection (tests: make writes fail).
    #[cfg(test)]
    OnConnection(Box<dyn FnOnce(&Connection) + Send>, oneshot::Sender<()>),
}

/// A handle on the store's writer thread.
#[derive(Clone)]
pub struct Evidence {
    tx: mpsc::Sender<Command>,
    stats: Arc<Stats>,
    reader: Reader,
    progress: Arc<Progress>,
    indexer: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

/// What opening found.
#[derive(Debug, Clone)]
pub struct Opened {
    pub path: PathBuf,
    /// The next record's sequence number.
    pub next_seq: u64,
    /// The key was created now (first start).
    pub key_created: bool,
    /// The previous run ended without closing the store.
    pub unclean: bool,
    pub public_key: VerifyingKey,
}

impl Evidence {
    /// Opens (or creates) the store in `config.directory`, takes its lock,
    /// loads or creates the signing key, and starts the writer. If the
    /// previous run did not close the store, a gap record says so first.
    ///
    /// # Errors
    /// If the directory, key or database cannot be used, or another daemon
    /// holds the store.
    #[expect(clippy::too_many_lines, reason = "the opening sequence, step by step")]
    pub fn open(config: &EvidenceConfig) -> Result<(Self, Opened), EvidenceError> {
        let dir = &config.directory;
        let open_err = |message: String| EvidenceError::Open {
            path: dir.clone(),
            message,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| open_err(format!("cannot create the directory: {e}")))?;
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("evidence.lock"))
            .map_err(|e| open_err(format!("cannot open the lock file: {e}")))?;
        lock.try_lock().map_err(|_| {
            open_err(
                "another residency daemon is using this store (evidence.lock is held); \
                 give each daemon its own evidence.directory"
                    .to_owned(),
            )
        })?;
        if !crate::key_path(dir).exists() && crate::db_path(dir).exists() {
            // A new key for a store signed by another would make every
            // checkpoint so far fail to verify, silently. Say so instead.
            let signed: i64 = Connection::open_with_flags(
                crate::db_path(dir),
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .and_then(|c| c.query_row("SELECT count(*) FROM checkpoints", [], |r| r.get(0)))
            .unwrap_or(0);
            if signed > 0 {
                return Err(open_err(format!(
                    "{} is missing but the store holds {signed} checkpoints signed with it; \
                     restore the key from backup (a new key could not continue this chain's signatures), \
                     or move the store aside to start a new one",
                    crate::key_path(dir).display()
                )));
            }
        }
        let (key, key_created) = chain::load_or_create_key(&crate::key_path(dir))
            .map_err(|e| open_err(format!("signing key: {e}")))?;
        let public_key = key.verifying_key();
        if key_created {
            info!(
                key = %crate::key_path(dir).display(),
                public_key = %chain::public_key_text(&public_key),
                "created the evidence signing key"
            );
        }
        let path = crate::db_path(dir);
        // One thread uses each connection: no need for SQLite's own locks.
        let conn = Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
                | rusqlite::OpenFlags::SQLITE_OPEN_CREATE
                | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| open_err(e.to_string()))?;
        schema::create(&conn).map_err(open_err)?;
        // The WAL is folded back by the checkpointer thread, not by the
        // committing writer (see `indexer::checkpointer`).
        conn.execute_batch("PRAGMA wal_autocheckpoint = 0;")
            .map_err(|e| open_err(e.to_string()))?;
        let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o600));

        let stats = Arc::new(Stats::default());
        let progress = Arc::new(Progress::default());
        // The index prunes what the chain already has (a crash may have
        // come between the two).
        let base: Option<i64> = meta(&conn, "base_seq").map_err(|e| open_err(e.to_string()))?;
        progress.pruned.store(
            base.and_then(|b| u64::try_from(b).ok()).unwrap_or(0),
            Ordering::Release,
        );
        let mut writer = Writer::new(conn, key, config.clone(), stats.clone(), lock)
            .map_err(|e| open_err(e.to_string()))?;
        writer.progress = progress.clone();
        let unclean = writer.clean_before == Some(false);
        if unclean {
            writer
                .gap_after_crash()
                .map_err(|e| open_err(e.to_string()))?;
        }
        writer
            .set_clean(false)
            .map_err(|e| open_err(e.to_string()))?;
        let opened = Opened {
            path: path.clone(),
            next_seq: writer.next_seq,
            key_created,
            unclean,
            public_key,
        };
        // The indexer starts from what it has and catches up with the
        // chain (after a crash, or a deleted index file).
        let indexer = Indexer::open(
            &path,
            &crate::index_path(dir),
            progress.clone(),
            stats.clone(),
        )?;
        progress.committed(writer.next_seq.saturating_sub(1));
        let indexer = std::thread::Builder::new()
            .name("evidence-index".into())
            .spawn(move || indexer.run())
            .map_err(|e| open_err(format!("cannot start the indexer: {e}")))?;
        crate::indexer::checkpointer(
            vec![path.clone(), crate::index_path(dir)],
            progress.clone(),
            // Measured at 50k events/s: every 50 ms leaves a rewind a few
            // megabytes to copy; every 500 ms, tens.
            Duration::from_millis(50),
            config.wal_limit,
        )
        .map_err(|e| open_err(format!("cannot start the WAL checkpointer: {e}")))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("evidence".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| open_err(format!("cannot start the writer: {e}")))?;
        // Time-based checkpoints need a clock: a ticker that holds only a
        // weak sender, so that dropping every handle still ends the writer.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let weak = tx.downgrade();
            rt.spawn(async move {
                let mut every = tokio::time::interval(TICK);
                loop {
                    every.tick().await;
                    let Some(tx) = weak.upgrade() else { break };
                    let _ = tx.try_send(Command::Tick);
                }
            });
        }
        let reader = Reader::open(&path, public_key, stats.clone(), progress.clone())?;
        Ok((
            Evidence {
                tx,
                stats,
                reader,
                progress,
                indexer: Arc::new(Mutex::new(Some(indexer))),
            },
            opened,
        ))
    }

    /// Appends newline-terminated records in order; waits while the writer
    /// is behind. While the store takes no writes, the writer counts the
    /// records instead (see the module's doc); that is not an error here.
    ///
    /// # Errors
    /// If the writer has stopped (the store was closed).
    pub async fn append(&self, lines: Vec<u8>) -> Result<(), EvidenceError> {
        self.append_indexed(lines, Vec::new()).await
    }

    /// Like [`Evidence::append`], with the columns of each line already
    /// taken from the document it was encoded from (the pipeline has them
    /// for flows), which spares the writer parsing them back. `index[i]`
    /// belongs to line `i`; `None` or a short vector: parsed.
    ///
    /// # Errors
    /// If the writer has stopped (the store was closed).
    pub async fn append_indexed(
        &self,
        lines: Vec<u8>,
        index: Vec<Option<Index>>,
    ) -> Result<(), EvidenceError> {
        if lines.is_empty() {
            return Ok(());
        }
        // Sent even while the store takes no writes: the writer counts
        // what it cannot store, for the gap record.
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        self.tx
            .send(Command::Append(lines, index))
            .await
            .map_err(|_| EvidenceError::Stopped)
    }

    /// Acknowledges or resolves a violation, with a note; the transition is
    /// recorded in the chain.
    ///
    /// # Errors
    /// If there is no such violation or it is already past that state.
    pub async fn transition(
        &self,
        id: i64,
        to: ViolationState,
        note: String,
        by: String,
    ) -> Result<Violation, EvidenceError> {
        self.ask(|reply| Command::Transition {
            id,
            to,
            note,
            by,
            reply,
        })
        .await
    }

    /// Sends a command that answers, and waits for the answer.
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, EvidenceError>>) -> Command,
    ) -> Result<T, EvidenceError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(command(reply))
            .await
            .map_err(|_| EvidenceError::Stopped)?;
        rx.await.map_err(|_| EvidenceError::Stopped)?
    }

    /// Signs a checkpoint now (after what is queued). A store that takes
    /// no writes tries again first, at once.
    ///
    /// # Errors
    /// If the writer has stopped or cannot write.
    pub async fn checkpoint(&self) -> Result<(), EvidenceError> {
        self.ask(Command::Checkpoint).await
    }

    /// Applies retention now (after what is queued), instead of at the
    /// next periodic check.
    ///
    /// # Errors
    /// If the writer has stopped or cannot write.
    pub async fn prune_now(&self) -> Result<(), EvidenceError> {
        self.ask(Command::Prune).await
    }

    /// Writes what is queued, signs a final checkpoint and marks the store
    /// closed cleanly. Returns the last sequence number.
    ///
    /// # Errors
    /// If the writer has stopped or cannot write.
    pub async fn close(&self) -> Result<u64, EvidenceError> {
        let closed = self.ask(Command::Close).await;
        // The writer has told the indexer to finish: wait until it has
        // indexed everything, so the store at rest is whole.
        let handle = self.indexer.lock().ok().and_then(|mut h| h.take());
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        closed
    }

    /// Runs `f` on the writer's connection, after what is queued: tests
    /// make its writes fail (`PRAGMA query_only`, `max_page_count`) and
    /// work again.
    #[cfg(test)]
    pub(crate) async fn on_writer_connection(&self, f: impl FnOnce(&Connection) + Send + 'static) {
        let (reply, rx) = oneshot::channel();
        let _ = self
            .tx
            .send(Command::OnConnection(Box::new(f), reply))
            .await;
        let _ = rx.await;
    }

    /// Waits until every committed record is indexed (queryable by
    /// filter), for at most `timeout`; false on timeout.
    pub async fn wait_indexed(&self, timeout: Duration) -> bool {
        let progress = self.progress.clone();
        tokio::task::spawn_blocking(move || progress.wait_indexed(timeout))
            .await
            .unwrap_or(false)
    }

    #[must_use]
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// A reader for queries (cheap to clone).
    #[must_use]
    pub fn reader(&self) -> &Reader {
        &self.reader
    }
}

struct Writer {
    conn: Connection,
    key: SigningKey,
    key_id: String,
    config: EvidenceConfig,
    stats: Arc<Stats>,
    /// Held for the life of the writer: one daemon per store.
    lock: Option<fs::File>,
    next_seq: u64,
    head: Hash,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    last_retention: Instant,
    open_violations: HashMap<ViolationKey, i64>,
    /// The `clean` flag found at open (`None`: a new store).
    clean_before: Option<bool>,
    /// Set from a failed write until a retry succeeds.
    unwritable: Option<Unwritable>,
    /// Shared with the indexer.
    progress: Arc<Progress>,
    /// Compresses bodies (and trains its dictionary).
    codec: codec::Compressor,
    /// A trained dictionary that could not be stored yet (the disk was
    /// full): stored before the next records instead of trained again.
    pending_dict: Option<Vec<u8>>,
}

impl Writer {
    fn new(
        conn: Connection,
        key: SigningKey,
        config: EvidenceConfig,
        stats: Arc<Stats>,
        lock: fs::File,
    ) -> rusqlite::Result<Self> {
        let last: Option<(i64, Vec<u8>, i64)> = conn
            .query_row(
                "SELECT seq, hash, ts FROM records ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let (next_seq, head) = if let Some((seq, hash, ts)) = last {
            stats.head_ts.store(ts, Ordering::Relaxed);
            (
                u64::try_from(seq).unwrap_or(0) + 1,
                hash.try_into().unwrap_or(chain::GENESIS),
            )
        } else {
            // Everything was pruned, or nothing was ever written.
            let base_seq: Option<i64> = meta(&conn, "base_seq")?;
            let base_hash: Option<Vec<u8>> = meta(&conn, "base_hash")?;
            (
                base_seq.map_or(1, |s| u64::try_from(s).unwrap_or(0) + 1),
                base_hash
                    .and_then(|h| h.try_into().ok())
                    .unwrap_or(chain::GENESIS),
            )
        };
        let clean_before: Option<i64> = meta(&conn, "clean")?;
        let mut open_violations = HashMap::new();
        {
            let mut stmt = conn.prepare(
                "SELECT id, workload, verdict, dst_ip, dst_port, rule, namespace FROM violations WHERE state != 'resolved'",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    ViolationKey {
                        workload: r.get(1)?,
                        verdict: r.get(2)?,
                        dst_ip: r.get(3)?,
                        dst_port: r.get(4)?,
                        rule: r.get(5)?,
                        namespace: r.get(6)?,
                    },
                ))
            })?;
            for row in rows {
                let (id, key) = row?;
                open_violations.insert(key, id);
            }
        }
        stats
            .head_seq
            .set(i64::try_from(next_seq.saturating_sub(1)).unwrap_or(i64::MAX));
        let key_id = chain::key_id(&key.verifying_key());
        let codec = codec::Compressor::new(codec::newest(&conn)?, config.dict_samples);
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('public_key', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [chain::public_key_text(&key.verifying_key())],
        )?;
        let w = Writer {
            conn,
            key,
            key_id,
            config,
            stats,
            lock: Some(lock),
            next_seq,
            head,
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            last_retention: Instant::now(),
            open_violations,
            clean_before: clean_before.map(|c| c != 0),
            unwritable: None,
            progress: Arc::new(Progress::default()),
            codec,
            pending_dict: None,
        };
        w.update_size();
        Ok(w)
    }

    fn set_clean(&self, clean: bool) -> rusqlite::Result<()> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES ('clean', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [i64::from(clean)],
        )?;
        Ok(())
    }

    /// The previous run stopped without closing the store (killed, crashed,
    /// power lost): what it had not committed is gone, and the chain says
    /// so before anything else is added.
    fn gap_after_crash(&mut self) -> Result<(), EvidenceError> {
        let last = self.next_seq.saturating_sub(1);
        let last_ts = self.stats.head_ts.load(Ordering::Relaxed);
        let at = jiff::Timestamp::from_nanosecond(i128::from(last_ts))
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        warn!(
            last_seq = last,
            "the previous run did not close the evidence store: records it had not committed are missing; recording a gap"
        );
        let record = EvidenceGap {
            reason: EvidenceGap::UNCLEAN_SHUTDOWN.to_owned(),
            after_seq: Some(last),
            after: Some(at.to_string()),
            seq: None,
            ..EvidenceGap::default()
        }
        .record(format!(
            "the previous run stopped without closing the evidence store after record {last} ({at}); \
             decisions it had not yet committed, and its count of them, are missing"
        ));
        let mut line = Vec::new();
        encode_line(&record, &mut line)?;
        self.append(&line)?;
        Ok(())
    }

    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(cmd) = rx.blocking_recv() {
            match cmd {
                Command::Tick => {}
                Command::Append(lines, index) => {
                    self.stats.queued.fetch_sub(1, Ordering::Relaxed);
                    // Group commit: take what else is already waiting.
                    let mut batch = lines;
                    let mut indexes = pad(index, &batch);
                    let mut later = None;
                    while batch.len() < MAX_TXN_BYTES {
                        match rx.try_recv() {
                            Ok(Command::Append(more, index)) => {
                                self.stats.queued.fetch_sub(1, Ordering::Relaxed);
                                indexes.extend(pad(index, &more));
                                batch.extend_from_slice(&more);
                            }
                            Ok(other) => {
                                later = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.append_logged(&batch, indexes);
                    if let Some(cmd) = later
                        && !self.command(cmd)
                    {
                        return;
                    }
                }
                cmd => {
                    if !self.command(cmd) {
                        return;
                    }
                }
            }
            self.maintain();
        }
        // The pipeline went away without closing: close anyway.
        if let Err(e) = self.close() {
            error!("cannot close the evidence store: {e}");
        }
        self.progress.stop();
    }

    /// Handles a non-append command; false once closed.
    fn command(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Tick => true,
            Command::Append(lines, index) => {
                self.stats.queued.fetch_sub(1, Ordering::Relaxed);
                self.append_logged(&lines, index);
                true
            }
            Command::Transition {
                id,
                to,
                note,
                by,
                reply,
            } => {
                let _ = reply.send(self.transition(id, to, &note, &by));
                true
            }
            Command::Checkpoint(reply) => {
                let _ = reply.send(self.write_now(|w| w.checkpoint("requested")));
                true
            }
            Command::Prune(reply) => {
                self.update_size();
                let _ = reply.send(self.write_now(Self::retain));
                true
            }
            #[cfg(test)]
            Command::OnConnection(f, reply) => {
                f(&self.conn);
                let _ = reply.send(());
                true
            }
            Command::Close(reply) => {
                let closed = self.close();
                self.progress.stop();
                // The lock goes only once the indexer is done with the
                // index file too.
                self.progress.wait_done(Duration::from_secs(30));
                // Released before the reply: whoever waited on close may
                // open the store again at once.
                self.lock = None;
                let _ = reply.send(closed);
                false
            }
        }
    }

    /// Appends newline-terminated records in one transaction.
    ///
    /// A failure leaves the writer as it was (sequence number, head,
    /// open violations, checkpoint count): only a commit moves them.
    fn append(&mut self, lines: &[u8]) -> Result<(), EvidenceError> {
        self.append_with(lines, Vec::new(), None)
    }

    /// Appends records whose columns are given (or, where not, parsed).
    #[expect(clippy::too_many_lines, reason = "one transaction, record by record")]
    ///
    /// `also` runs in the same transaction, given the first record's
    /// sequence number: a state change commits with the record of it, or
    /// not at all.
    fn append_with(
        &mut self,
        lines: &[u8],
        given: Vec<Option<Index>>,
        also: Option<AlsoInTransaction<'_>>,
    ) -> Result<(), EvidenceError> {
        let mut given = given.into_iter();
        let started = Instant::now();
        if let Some(dict) = self.pending_dict.take().or_else(|| self.codec.trained()) {
            // Stored before any record needs it, in its own transaction. A
            // failure here costs compression, not records. (If the records
            // then fail too, the dictionary stays stored and unused until
            // the next commit: nothing refers to it before that.)
            match codec::store(&self.conn, &dict, self.next_seq) {
                Ok(id) => {
                    self.codec.adopt(id, &dict);
                    info!(
                        dictionary = id,
                        bytes = dict.len(),
                        from_seq = self.next_seq,
                        "evidence store: records are compressed with a new dictionary"
                    );
                }
                // No room: the dictionary is fine, kept for the next try.
                Err(e) if out_of_room(&e) => self.pending_dict = Some(dict),
                Err(e) => self.codec.failed(&format!("storing it failed: {e}")),
            }
        }
        let tx = self.conn.unchecked_transaction()?;
        let (mut record_bytes, mut stored_bytes) = (0, 0);
        let mut transfers: HashMap<TransferKey, TransferCount> = HashMap::new();
        let mut flow_totals: Vec<(i64, Index)> = Vec::new();
        let mut seq = self.next_seq;
        let mut head = self.head;
        let mut newest_ts = 0;
        let mut policy_records = Vec::new();
        let mut violations = Vec::new();
        let mut stamps = Vec::new();
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO records (seq, ts, kind, verdict, workload, role, tenants, country, dst_ip, dst_name, basis, policy, boot_ns, body, hash, dict, namespace, pod)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
            )?;
            for body in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                let index = given.next().flatten().map_or_else(|| Index::of(body), Ok);
                let index = index.unwrap_or_else(|e| {
                    // Our own encoder wrote it, so this is a bug; keep the
                    // bytes anyway (verify will name the record).
                    error!("a record the store cannot index: {e}");
                    Index {
                        ts: now_ns(),
                        kind: residency_record::index::UNINDEXED.into(),
                        ..Index::default()
                    }
                });
                let hash = chain::link(&head, seq, body);
                let seq_i = i64::try_from(seq)
                    .map_err(|_| EvidenceError::Invalid("sequence overflow".into()))?;
                let (dict, stored) = self.codec.encode(body);
                record_bytes += body.len() as u64;
                stored_bytes += stored.len() as u64;
                insert.execute(params![
                    seq_i,
                    index.ts,
                    index.kind,
                    index.verdict,
                    index.workload,
                    index.role,
                    index.tenants_column(),
                    index.country,
                    index.dst_ip,
                    index.dst_name,
                    index.basis,
                    index.policy,
                    index.boot_ns.and_then(|b| i64::try_from(b).ok()),
                    stored,
                    &hash[..],
                    dict,
                    index.namespace,
                    index.pod,
                ])?;
                if index.is_flow() {
                    count_transfer(&mut transfers, &index);
                    stamps.extend(index.boot_ns);
                } else if index.is_totals() {
                    count_transfer(&mut transfers, &index);
                    flow_totals.push((seq_i, index.clone()));
                }
                if index.is_violation() {
                    violations.push((seq_i, index.clone()));
                } else if index.lifecycle() == Some(Lifecycle::PolicyLoaded) {
                    policy_records.push((seq_i, index.ts, body.to_vec()));
                }
                newest_ts = newest_ts.max(index.ts);
                head = hash;
                seq += 1;
            }
        }
        let appended = seq - self.next_seq;
        // Repeats of an open violation in this batch become one update.
        // Violations this batch opens join the writer's only once the
        // batch commits: a rolled-back row must not be counted on.
        let mut repeats: HashMap<i64, (i64, i64, i64)> = HashMap::new();
        let mut opened: HashMap<ViolationKey, i64> = HashMap::new();
        for (seq, index) in violations {
            let key = ViolationKey::of(&index);
            match self.open_violations.get(&key).or_else(|| opened.get(&key)) {
                Some(&id) => {
                    let r = repeats.entry(id).or_insert((0, seq, index.ts));
                    r.0 += 1;
                    r.1 = r.1.max(seq);
                    r.2 = r.2.max(index.ts);
                }
                None => open_violation(&mut opened, &tx, key, seq, &index)?,
            }
        }
        for (id, (count, last_seq, last_ts)) in repeats {
            tx.prepare_cached(
                "UPDATE violations SET count = count + ?2, last_seq = max(last_seq, ?3), last_ts = max(last_ts, ?4) WHERE id = ?1",
            )?
            .execute(params![id, count, last_seq, last_ts])?;
        }
        for (seq, ts, body) in policy_records {
            record_policy(&tx, seq, ts, &body)?;
        }
        upsert_transfers(&tx, &transfers)?;
        upsert_flow_totals(&tx, &flow_totals)?;
        if let Some(also) = also {
            also(&tx, i64::try_from(self.next_seq).unwrap_or(i64::MAX))?;
        }
        let since_checkpoint = self.since_checkpoint + appended;
        let due = since_checkpoint >= self.config.checkpoint_records;
        if due {
            self.sign_in(&tx, seq - 1, &head, "records")?;
        }
        // A failed commit rolls back (rusqlite's transaction does when
        // dropped, if `SQLite` has not already): nothing below has
        // happened then.
        tx.commit()?;
        self.next_seq = seq;
        self.head = head;
        self.open_violations.extend(opened);
        self.since_checkpoint = since_checkpoint;
        if due {
            self.checkpointed();
        }
        if self.progress.take_rewind(0) {
            // The indexer reads the chain right behind this writer, and a
            // reader inside the log keeps it from restarting: let it finish
            // what it was given (if that is little), rewind, and only then
            // hand it this commit, which it then reads from the database
            // file. An indexer far behind (catching up) is not waited for.
            let previous = self.next_seq.saturating_sub(appended).saturating_sub(1);
            if !(self
                .progress
                .wait_indexed_to(previous, Duration::from_millis(20))
                && crate::indexer::rewind(&self.conn))
            {
                self.progress.request_rewind(0);
            }
        }
        self.progress.committed(seq - 1);
        self.stats.records.inc_by(appended);
        self.stats.record_bytes.inc_by(record_bytes);
        self.stats.stored_bytes.inc_by(stored_bytes);
        self.stats.commits.inc();
        self.stats
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        let now = boot_now_ns();
        for b in stamps {
            #[expect(clippy::cast_precision_loss, reason = "seconds for a histogram")]
            self.stats
                .committed_latency_seconds
                .observe(now.saturating_sub(b) as f64 / 1e9);
        }
        self.stats
            .head_seq
            .set(i64::try_from(seq - 1).unwrap_or(i64::MAX));
        if newest_ts > 0 {
            self.stats.head_ts.store(newest_ts, Ordering::Relaxed);
        }
        Ok(())
    }

    fn transition(
        &mut self,
        id: i64,
        to: ViolationState,
        note: &str,
        by: &str,
    ) -> Result<Violation, EvidenceError> {
        if !self.recover(true) {
            return Err(self.unwritable_error());
        }
        let current = self
            .reader_violation(id)?
            .ok_or(EvidenceError::NoViolation(id))?;
        let allowed = matches!(
            (current.state, to),
            (
                ViolationState::Open,
                ViolationState::Acknowledged | ViolationState::Resolved
            ) | (ViolationState::Acknowledged, ViolationState::Resolved)
        );
        if !allowed {
            return Err(EvidenceError::Transition {
                id,
                state: current.state.as_str(),
                to: to.as_str(),
            });
        }
        let action = match to {
            ViolationState::Acknowledged => Lifecycle::ViolationAcknowledged,
            _ => Lifecycle::ViolationResolved,
        };
        let record = ViolationChange {
            id,
            state: to.as_str().to_owned(),
            previous_state: current.state.as_str().to_owned(),
            first_seq: current.first_seq,
            by: by.to_owned(),
            note: note.to_owned(),
        }
        .record(
            action,
            format!("violation {id} {} by {by}: {note}", to.as_str()),
        );
        let mut line = Vec::new();
        encode_line(&record, &mut line)?;
        let now = now_ns();
        let sql = match to {
            ViolationState::Acknowledged => {
                "UPDATE violations SET state = 'acknowledged', ack_ts = ?2, ack_by = ?3, ack_note = ?4, ack_seq = ?5 WHERE id = ?1"
            }
            _ => {
                "UPDATE violations SET state = 'resolved', resolved_ts = ?2, resolved_by = ?3, resolved_note = ?4, resolved_seq = ?5 WHERE id = ?1"
            }
        };
        // The record of the change and the change commit together.
        let update = |tx: &Transaction<'_>, seq: i64| {
            tx.execute(sql, params![id, now, by, note, seq]).map(|_| ())
        };
        if let Err(e) = self.append_with(&line, Vec::new(), Some(&update)) {
            // Not made, so not a record lost: the caller is told.
            self.write_failed(&e);
            return Err(EvidenceError::Unwritable(e.to_string()));
        }
        if to == ViolationState::Resolved {
            self.open_violations.retain(|_, v| *v != id);
        }
        self.reader_violation(id)?
            .ok_or(EvidenceError::NoViolation(id))
    }

    fn reader_violation(&self, id: i64) -> Result<Option<Violation>, EvidenceError> {
        crate::query::violation_by_id(&self.conn, id)
    }

    /// Time-based checkpoints, retention and retries, between batches.
    fn maintain(&mut self) {
        if !self.recover(false) {
            return;
        }
        if self.since_checkpoint > 0
            && self.last_checkpoint.elapsed() >= self.config.checkpoint_interval
            && let Err(e) = self.checkpoint("interval")
        {
            self.write_failed(&e);
            return;
        }
        if self.last_retention.elapsed() >= Duration::from_mins(1)
            || (self.config.max_bytes.is_some()
                && self.last_retention.elapsed() >= Duration::from_secs(5))
        {
            self.last_retention = Instant::now();
            self.update_size();
            if let Err(e) = self.retain() {
                error!("evidence retention failed: {e}");
                self.write_failed(&e);
            }
        }
    }

    fn checkpoint(&mut self, reason: &str) -> Result<(), EvidenceError> {
        if self.next_seq <= 1 {
            return Ok(()); // nothing to sign
        }
        let tx = self.conn.unchecked_transaction()?;
        let seq = self.next_seq - 1;
        let head = self.head;
        self.sign_in(&tx, seq, &head, reason)?;
        tx.commit()?;
        self.checkpointed();
        Ok(())
    }

    fn sign_in(
        &self,
        tx: &Transaction<'_>,
        seq: u64,
        head: &Hash,
        reason: &str,
    ) -> Result<(), EvidenceError> {
        let ts = now_ns();
        let sig = chain::sign(&self.key, seq, head, ts);
        tx.prepare_cached(
            "INSERT INTO checkpoints (seq, ts, head, key_id, signature, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(seq) DO NOTHING",
        )?
        .execute(params![
            i64::try_from(seq).unwrap_or(i64::MAX),
            ts,
            &head[..],
            self.key_id,
            &sig[..],
            reason
        ])?;
        Ok(())
    }

    fn checkpointed(&mut self) {
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        self.stats.checkpoints.inc();
    }

    fn close(&mut self) -> Result<u64, EvidenceError> {
        if !self.recover(true) {
            let u = self.unwritable.as_ref();
            error!(
                records_not_stored = u.map_or(0, |u| u.records),
                after_seq = u.map_or(0, |u| u.after_seq),
                "the evidence store still takes no writes at shutdown: the records counted \
                 since it stopped are not stored, and it cannot be closed cleanly (the next \
                 start records an unclean-shutdown gap after the last stored record)"
            );
            return Err(self.unwritable_error());
        }
        self.checkpoint("shutdown")?;
        self.set_clean(true)?;
        self.fold_wal();
        info!(
            last_seq = self.next_seq - 1,
            "evidence store closed with a signed checkpoint"
        );
        Ok(self.next_seq - 1)
    }

    /// Folds the log back so that the store is one file at rest. The
    /// checkpointer thread may be running a passive checkpoint of its own
    /// at that moment (then `SQLite` answers busy at once), and the indexer
    /// may be inside a read: tried again for up to 5 s.
    fn fold_wal(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let done = self
                .conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    r.get::<_, i64>(0)
                })
                .is_ok_and(|busy| busy == 0);
            if done {
                return;
            }
            if Instant::now() >= deadline {
                warn!(
                    "could not fold the evidence store's write-ahead log back at close; the next start does"
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn update_size(&self) {
        let size: rusqlite::Result<i64> = self.conn.query_row(
            "SELECT (page_count - freelist_count) * page_size FROM pragma_page_count(), pragma_freelist_count(), pragma_page_size()",
            [],
            |r| r.get(0),
        );
        if let Ok(size) = size {
            self.stats.size_bytes.set(size);
        }
    }

    /// Prunes by age or size, then records what was pruned in the chain and
    /// signs a checkpoint over that record, so what remains still verifies
    /// from a signed base.
    fn retain(&mut self) -> Result<(), EvidenceError> {
        let mut through: Option<(i64, &'static str)> = None;
        if let Some(age) = self.config.retention {
            let cutoff = now_ns() - i64::try_from(age.as_nanos()).unwrap_or(i64::MAX);
            // Only the leading run of old records: one record with an old
            // timestamp (a clock stepped back) must not take newer ones
            // before it along.
            let first_young: Option<i64> = self
                .conn
                .query_row(
                    "SELECT seq FROM records WHERE ts >= ?1 ORDER BY seq LIMIT 1",
                    [cutoff],
                    |r| r.get(0),
                )
                .optional()?;
            let newest = i64::try_from(self.next_seq).unwrap_or(i64::MAX) - 1;
            let seq = first_young.map_or(newest, |s| s - 1);
            through = (seq >= 1).then_some((seq, "age"));
        }
        if let Some(max) = self.config.max_bytes {
            let size = self.stats.size_bytes.get();
            if u64::try_from(size).unwrap_or(0) > max {
                // Drop the oldest quarter of what is there.
                let (lo, hi): (Option<i64>, Option<i64>) =
                    self.conn
                        .query_row("SELECT min(seq), max(seq) FROM records", [], |r| {
                            Ok((r.get(0)?, r.get(1)?))
                        })?;
                if let (Some(lo), Some(hi)) = (lo, hi) {
                    let s = lo + (hi - lo) / 4;
                    if through.is_none_or(|(t, _)| s > t) {
                        through = Some((s, "size"));
                    }
                }
            }
        }
        let Some((through, reason)) = through else {
            return Ok(());
        };
        // Never prune the newest record: the chain needs a head.
        let newest = i64::try_from(self.next_seq).unwrap_or(i64::MAX) - 1;
        let through = through.min(newest - 1);
        if through < 1 {
            return Ok(());
        }
        let (hash, ts): (Vec<u8>, i64) = match self.conn.query_row(
            "SELECT hash, ts FROM records WHERE seq = ?1",
            [through],
            |r| Ok((r.get(0)?, r.get(1)?)),
        ) {
            Ok(v) => v,
            Err(rusqlite::Error::QueryReturnedNoRows) => return Ok(()), // already pruned
            Err(e) => return Err(e.into()),
        };
        let first: i64 = self
            .conn
            .query_row("SELECT min(seq) FROM records", [], |r| r.get(0))?;
        let count = through - first + 1;
        // The record of what is pruned, signed, goes in first; then the
        // deletion. A crash in between leaves that record and everything
        // still there (the next run prunes again), never a base that no
        // signed record explains.
        let at =
            jiff::Timestamp::from_nanosecond(i128::from(ts)).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let seq = |s: i64| u64::try_from(s).unwrap_or_default();
        let record = Pruned {
            reason: reason.to_owned(),
            first_seq: seq(first),
            through_seq: seq(through),
            through_hash: chain::hex(&hash),
            records: seq(count),
            through_time: at.to_string(),
        }
        .record(format!(
            "retention ({reason}) pruned records {first}..={through} (up to {at}); the chain continues from record {through}'s hash"
        ));
        let mut line = Vec::new();
        encode_line(&record, &mut line)?;
        self.append(&line)?;
        self.checkpoint("pruned")?;
        let tx = self.conn.unchecked_transaction()?;
        tx.execute("DELETE FROM records WHERE seq <= ?1", [through])?;
        tx.execute("DELETE FROM checkpoints WHERE seq <= ?1", [through])?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('base_seq', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [through],
        )?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('base_hash', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [&hash],
        )?;
        tx.commit()?;
        self.progress
            .pruned
            .store(u64::try_from(through).unwrap_or(0), Ordering::Release);
        self.stats.pruned.inc_by(u64::try_from(count).unwrap_or(0));
        info!(first, through, reason, "evidence pruned");
        self.update_size();
        Ok(())
    }
}

/// Work that commits with an append, given the first record's sequence
/// number.
type AlsoInTransaction<'a> = &'a dyn Fn(&Transaction<'_>, i64) -> rusqlite::Result<()>;

/// One entry per line of `lines`: the given columns, then `None`.
fn pad(mut index: Vec<Option<Index>>, lines: &[u8]) -> Vec<Option<Index>> {
    index.resize(usize::try_from(count_lines(lines)).unwrap_or(0), None);
    index
}

/// Records in newline-terminated `lines`.
fn count_lines(lines: &[u8]) -> u64 {
    // Lines are never empty (each is a JSON document), so newlines count
    // them; a plain count vectorises, where splitting would not.
    #[expect(clippy::naive_bytecount, reason = "once per batch; not worth a crate")]
    let n = lines.iter().filter(|&&b| b == b'\n').count();
    n as u64
}

fn meta<T: rusqlite::types::FromSql>(conn: &Connection, key: &str) -> rusqlite::Result<Option<T>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{flow, lines};

    /// A writer on a new store in `dir`, without the threads around it.
    fn writer(dir: &std::path::Path) -> Writer {
        let conn = Connection::open(crate::db_path(dir)).unwrap();
        schema::create(&conn).unwrap();
        let (key, _) = chain::load_or_create_key(&crate::key_path(dir)).unwrap();
        let lock = fs::File::create(dir.join("evidence.lock")).unwrap();
        let mut config = EvidenceConfig::in_directory(dir.to_owned());
        config.checkpoint_records = 3;
        // Enough for a dictionary of full size, which needs pages of its
        // own (a small one would fit the empty table's first page).
        config.dict_samples = 400;
        Writer::new(conn, key, config, Arc::new(Stats::default()), lock).unwrap()
    }

    fn flows(from: u64, n: u64) -> Vec<u8> {
        lines((from..from + n).map(|i| flow(i, "acme", "DE", "allowed", "192.0.2.1")))
    }

    /// A dictionary trained while the disk is full is kept, and stored
    /// before the first records that commit once there is room: not
    /// counted as a failed training (which would sample again, and give
    /// up after a few).
    #[test]
    fn a_dictionary_that_cannot_be_stored_waits_for_room() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        w.append(&flows(0, 400)).unwrap(); // the samples: training starts
        let pages: i64 = w
            .conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        w.conn
            .execute_batch(&format!("PRAGMA max_page_count = {pages}"))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut n = 400;
        while w.pending_dict.is_none() {
            assert!(Instant::now() < deadline, "no dictionary trained in 30 s");
            assert_eq!(
                count(&w, "dicts"),
                0,
                "the dictionary was stored (it had room)"
            );
            let err = w.append(&flows(n, 100)).unwrap_err();
            assert!(err.to_string().contains("full"), "{err}");
            n += 100;
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(count(&w, "dicts"), 0);
        assert_eq!(count(&w, "records"), 400);

        w.conn
            .execute_batch("PRAGMA max_page_count = 4294967294")
            .unwrap();
        w.append(&flows(n, 10)).unwrap();
        assert!(w.pending_dict.is_none());
        assert_eq!(count(&w, "dicts"), 1);
        let compressed: i64 = w
            .conn
            .query_row(
                "SELECT count(*) FROM records WHERE seq > 400 AND dict IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(compressed, 10, "the batch after it is compressed with it");
    }

    fn count(w: &Writer, table: &str) -> i64 {
        w.conn
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    /// A transaction that fails at its very end (after every insert, the
    /// way a commit on a full disk does) leaves the writer's memory as the
    /// database: no sequence number, head, checkpoint count or violation
    /// of the rolled-back batch.
    #[test]
    fn a_failed_transaction_leaves_the_writer_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        w.append(&lines([flow(0, "acme", "US", "blocked", "203.0.113.7")]))
            .unwrap();
        let (seq, head, since, open) = (
            w.next_seq,
            w.head,
            w.since_checkpoint,
            w.open_violations.clone(),
        );
        assert_eq!(open.len(), 1);
        let batch = lines([
            flow(1, "acme", "US", "blocked", "203.0.113.7"),
            flow(2, "acme", "US", "blocked", "198.51.100.9"),
            flow(3, "acme", "US", "blocked", "198.51.100.9"),
        ]);
        let full = |_: &Transaction<'_>, _: i64| {
            Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                None,
            ))
        };
        assert!(w.append_with(&batch, Vec::new(), Some(&full)).is_err());
        assert_eq!(w.next_seq, seq);
        assert_eq!(w.head, head);
        assert_eq!(w.since_checkpoint, since);
        assert_eq!(
            w.open_violations, open,
            "a rolled-back violation is remembered"
        );
        assert_eq!(count(&w, "records"), 1);
        assert_eq!(count(&w, "violations"), 1);
        assert_eq!(
            count(&w, "checkpoints"),
            0,
            "the due checkpoint rolled back"
        );

        // The same batch, stored: the new violation is opened (not taken
        // for the rolled-back row), the old one counts on.
        w.append(&batch).unwrap();
        assert_eq!(w.next_seq, seq + 3);
        assert_eq!(count(&w, "violations"), 2);
        assert_eq!(count(&w, "checkpoints"), 1);
        let counts: Vec<(String, i64)> = w
            .conn
            .prepare("SELECT dst_ip, count FROM violations ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            counts,
            [
                ("203.0.113.7".to_owned(), 2),
                ("198.51.100.9".to_owned(), 2)
            ]
        );
        for (key, id) in &w.open_violations {
            let state: String = w
                .conn
                .query_row("SELECT state FROM violations WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .unwrap();
            assert_eq!(state, "open", "{key:?}");
        }
    }
}
