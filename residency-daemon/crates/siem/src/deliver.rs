//! Delivery: one task per sink, reading the evidence chain from the
//! sink's cursor, sending in order, retrying with backoff and jitter.
//!
//! The chain is the spool. A sink whose receiver is down falls behind and
//! catches up when it returns, in order, exactly once (the cursor moves
//! only past what the receiver accepted, and is saved after each send).
//! A sink that falls more than `spool_max_records` behind skips ahead to
//! half that, and the skip is written into the chain as a `sink-gap`
//! record, counted and logged: a hole in what the SIEM saw is never
//! silent. Each sink runs on its own, so a slow or dead receiver delays
//! no other sink and never the kernel path (which writes to the chain and
//! never waits for a sink).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc::UnboundedSender, watch};
use tracing::{error, info, warn};

use residency_evidence::{EvidenceError, Reader, query::Checkpoint};
use residency_record::{Lifecycle, Record};

use crate::{
    alert::{Alert, AlertKind, CheckpointInfo},
    config::SinkConfig,
    metrics::{SinkLabel, SinkMetrics},
    out::Out,
    throttle::Throttle,
};

/// How often an idle sink looks for new records.
const POLL: Duration = Duration::from_millis(100);
/// First retry delay; doubles up to the sink's `retry_max`.
const RETRY_MIN: Duration = Duration::from_millis(250);

/// A sink's place in the chain, saved after every send.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Cursor {
    /// The store this cursor belongs to (its signing key's id): a cursor
    /// of another store (one made anew beside an old `sinks/`) is not
    /// used.
    #[serde(default)]
    store: String,
    /// Records up to here are sent (or were not for this sink).
    seq: u64,
    /// The newest checkpoint sent (by the sequence number it signs: one
    /// checkpoint per number).
    checkpoint: u64,
    /// Throttling windows still open.
    #[serde(default)]
    throttle: Throttle,
}

/// The running sinks.
pub struct Sinks {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: watch::Sender<Option<Duration>>,
}

/// Why a sink could not read the chain this time (it tries again).
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error(transparent)]
    Store(#[from] EvidenceError),
    #[error("the reader task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Why the sinks could not start.
#[derive(Debug, thiserror::Error)]
#[error("sink \"{sink}\": {message}")]
pub struct StartError {
    pub sink: String,
    pub message: String,
}

impl Sinks {
    /// Starts a task per sink. A sink new to this store starts at the
    /// chain's head (it is not sent the history).
    ///
    /// # Errors
    /// If a sink's secrets, certificates or cursor cannot be read.
    pub fn start(
        configs: &[SinkConfig],
        dir: &Path,
        reader: &Reader,
        notes: &UnboundedSender<Record>,
        metrics: &Arc<SinkMetrics>,
    ) -> Result<Sinks, StartError> {
        let (stop, stop_rx) = watch::channel(None);
        let store = residency_evidence::chain::key_id(reader.public_key());
        let sinks_dir = dir.join("sinks");
        if !configs.is_empty() {
            std::fs::create_dir_all(&sinks_dir).map_err(|e| StartError {
                sink: String::new(),
                message: format!("cannot create {}: {e}", sinks_dir.display()),
            })?;
        }
        let mut tasks = Vec::new();
        for config in configs {
            let err = |message: String| StartError {
                sink: config.name.clone(),
                message,
            };
            let out = Out::new(config, &store).map_err(|e| err(e.to_string()))?;
            let path = sinks_dir.join(format!("{}.cursor", config.name));
            let cursor = load_cursor(&path, reader, &store, &config.name).map_err(err)?;
            let label = SinkLabel {
                sink: config.name.clone(),
            };
            // Every series exists from the start.
            let m = &**metrics;
            let _ = (
                m.sent.get_or_create(&label),
                m.failed.get_or_create(&label),
                m.dropped.get_or_create(&label),
                m.throttled.get_or_create(&label),
                m.queued.get_or_create(&label),
            );
            info!(
                sink = %config.name,
                kind = config.kind(),
                format = %config.format,
                from_seq = cursor.seq,
                "SIEM sink started"
            );
            let task = Task {
                pending: 0,
                scanned_to: cursor.seq,
                saved: Instant::now(),
                dirty: false,
                config: config.clone(),
                out,
                path,
                cursor,
                reader: reader.clone(),
                notes: notes.clone(),
                metrics: metrics.clone(),
                label,
            };
            tasks.push(tokio::spawn(task.run(stop_rx.clone())));
        }
        Ok(Sinks { tasks, stop })
    }

    /// Stops every sink: each delivers what the chain holds for up to
    /// `drain` (the final records and checkpoint, when the receiver is
    /// up), then saves its cursor.
    pub async fn stop(self, drain: Duration) {
        let _ = self.stop.send(Some(drain));
        let deadline = tokio::time::Instant::now() + drain + Duration::from_secs(1);
        for t in self.tasks {
            let _ = tokio::time::timeout_at(deadline, t).await;
        }
    }
}

fn load_cursor(path: &Path, reader: &Reader, store: &str, name: &str) -> Result<Cursor, String> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let cursor: Cursor = serde_json::from_slice(&bytes).map_err(|e| {
                format!(
                    "the cursor file {} is damaged ({e}); move it aside to start this sink at the chain's head",
                    path.display()
                )
            })?;
            let head = reader.head_seq();
            if cursor.store == store && cursor.seq <= head {
                return Ok(cursor);
            }
            // The store was made anew (or restored from an older copy):
            // this cursor says nothing about it.
            warn!(
                sink = name,
                cursor_seq = cursor.seq,
                head,
                "the sink's cursor belongs to another store; the sink starts at this store's head"
            );
            fresh(reader, store)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fresh(reader, store),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// A cursor at the chain's head: a new sink is not sent the history.
fn fresh(reader: &Reader, store: &str) -> Result<Cursor, String> {
    let head = reader.head_seq();
    let signed = reader
        .latest_checkpoint()
        .map_err(|e| format!("cannot read the newest checkpoint: {e}"))?
        .map_or(0, |c| c.seq);
    Ok(Cursor {
        store: store.to_owned(),
        seq: head,
        checkpoint: signed,
        throttle: Throttle::default(),
    })
}

fn save_cursor(path: &Path, cursor: &Cursor) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp: PathBuf = path.with_extension("cursor.tmp");
    let bytes = serde_json::to_vec(cursor).map_err(std::io::Error::other)?;
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

struct Task {
    /// Records this sink takes, between the cursor and `scanned_to`
    /// (counted only while the receiver fails).
    pending: u64,
    scanned_to: u64,
    /// When the cursor was last saved, and whether it moved since.
    saved: Instant,
    dirty: bool,
    config: SinkConfig,
    out: Out,
    path: PathBuf,
    cursor: Cursor,
    reader: Reader,
    notes: UnboundedSender<Record>,
    metrics: Arc<SinkMetrics>,
    label: SinkLabel,
}

/// What one round read from the chain.
struct Batch {
    alerts: Vec<Alert>,
    /// Chain records it was made from.
    records: u64,
    /// The cursor after it is sent.
    reached: u64,
    /// The checkpoint cursor after it is sent.
    checkpoint: u64,
    /// The throttle's state once it is sent (`None`: no throttling). It
    /// replaces the cursor's only then, so a batch that is not delivered
    /// leaves no trace in the windows.
    throttle: Option<Throttle>,
}

/// How often a cursor that moved without sending (records no one wanted)
/// is saved.
const SAVE_IDLE: Duration = Duration::from_secs(1);

impl Task {
    async fn run(mut self, mut stop: watch::Receiver<Option<Duration>>) {
        // Once stopping: until when it may still deliver.
        let mut until: Option<Instant> = None;
        loop {
            if until.is_none()
                && let Some(drain) = *stop.borrow()
            {
                until = Some(Instant::now() + drain);
            }
            let batch = match self.read().await {
                Ok(b) => b,
                Err(e) => {
                    error!(sink = %self.config.name, "cannot read the evidence chain: {e}");
                    if until.is_some() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let idle = batch.alerts.is_empty() && batch.reached == self.cursor.seq;
            if idle {
                if until.is_some() {
                    break;
                }
                self.persist(false).await;
                tokio::select! {
                    () = tokio::time::sleep(POLL) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            if !self.send(batch, &mut stop, until).await {
                break;
            }
            if until.is_some_and(|t| Instant::now() >= t) {
                break;
            }
        }
        self.dirty = true;
        self.persist(true).await;
    }

    /// Saves the cursor off the runtime's threads: at once after alerts
    /// were delivered (`now`), else at most every [`SAVE_IDLE`].
    async fn persist(&mut self, now: bool) {
        if !self.dirty || !(now || self.saved.elapsed() >= SAVE_IDLE) {
            return;
        }
        let (path, cursor) = (self.path.clone(), self.cursor.clone());
        let saved = tokio::task::spawn_blocking(move || save_cursor(&path, &cursor)).await;
        match saved {
            Ok(Ok(())) => {
                self.dirty = false;
                self.saved = Instant::now();
            }
            Ok(Err(e)) => {
                error!(sink = %self.config.name, "cannot save the cursor (a restart would resend): {e}");
            }
            Err(e) => error!(sink = %self.config.name, "cannot save the cursor: {e}"),
        }
    }

    /// The next alerts after the cursor, throttled, with the summaries of
    /// windows that closed.
    async fn read(&mut self) -> Result<Batch, ReadError> {
        let r = self.config.receives;
        let reader = self.reader.clone();
        let (after, ckpt_after, limit) = (
            self.cursor.seq,
            self.cursor.checkpoint,
            self.config.batch_max,
        );
        let (records, reached, checkpoints, first) = tokio::task::spawn_blocking(move || {
            let (records, reached) =
                reader.records_for_sink(after, limit, r.flows, r.violations, r.gaps)?;
            let checkpoints = if r.checkpoints {
                reader.checkpoints_between(ckpt_after, reached)?
            } else {
                Vec::new()
            };
            let first = reader.first_seq()?;
            Ok::<_, EvidenceError>((records, reached, checkpoints, first))
        })
        .await??;
        if let Some(first) = first
            && first > self.cursor.seq + 1
        {
            // Retention pruned records this sink had not sent.
            let (from, to) = (self.cursor.seq + 1, first - 1);
            self.gap(
                from,
                to,
                None,
                "the evidence store's retention pruned them before the receiver took them",
            );
            // Said once: the cursor moves past the hole.
            self.cursor.seq = to;
            self.scanned_to = self.scanned_to.max(to);
            self.dirty = true;
        }
        let head = self.reader.head_seq();
        self.queued(head.saturating_sub(reached));
        let count = records.len() as u64;
        let mut alerts = Vec::with_capacity(records.len() + checkpoints.len());
        // A checkpoint may be signed over a record after the sink read
        // past it: the checkpoint cursor is its own.
        let checkpoint = checkpoints.last().map_or(self.cursor.checkpoint, |c| c.seq);
        let mut cps = checkpoints.into_iter().peekable();
        for (seq, body) in records {
            while let Some(c) = cps.next_if(|c| c.seq < seq) {
                alerts.push(Alert::checkpoint(&checkpoint_info(c)));
            }
            alerts.extend(
                Alert::from_record(seq, &body)
                    .into_iter()
                    .filter(|a| match a.kind {
                        AlertKind::Flow => r.flows,
                        AlertKind::Violation => r.violations,
                        AlertKind::Gap => r.gaps,
                        AlertKind::Checkpoint => r.checkpoints,
                    }),
            );
        }
        alerts.extend(cps.map(|c| Alert::checkpoint(&checkpoint_info(c))));
        let mut throttle = None;
        if let Some(window) = self.config.throttle {
            let mut t = self.cursor.throttle.clone();
            let (mut passed, folded) = t.filter(alerts, window);
            if folded > 0 {
                self.metrics
                    .throttled
                    .get_or_create(&self.label)
                    .inc_by(folded);
            }
            passed.extend(t.expire(jiff::Timestamp::now(), window));
            alerts = passed;
            throttle = Some(t);
        }
        Ok(Batch {
            alerts,
            records: count,
            reached,
            checkpoint,
            throttle,
        })
    }

    fn queued(&self, records: u64) {
        self.metrics
            .queued
            .get_or_create(&self.label)
            .set(i64::try_from(records).unwrap_or(i64::MAX));
    }

    /// Sends a batch until the receiver takes it (or the sink stops, or
    /// skips ahead). False when the sink should stop.
    async fn send(
        &mut self,
        batch: Batch,
        stop: &mut watch::Receiver<Option<Duration>>,
        until: Option<Instant>,
    ) -> bool {
        let mut delay = RETRY_MIN;
        let mut attempts = 0u32;
        let started = Instant::now();
        // Alerts the receiver took already (a sender that sends one by one
        // may fail part way; those are not sent again). Every transport
        // bounds its own connects, writes and requests.
        let mut done = 0;
        while done < batch.alerts.len() {
            let (e, asked) = match self.out.send(&batch.alerts[done..]).await {
                Ok(()) => {
                    if attempts > 0 {
                        info!(
                            sink = %self.config.name,
                            attempts,
                            after_secs = started.elapsed().as_secs(),
                            "the receiver is back: delivered"
                        );
                    }
                    break;
                }
                Err(partial) => {
                    done += partial.delivered;
                    (partial.error.to_string(), partial.error.retry_after())
                }
            };
            attempts += 1;
            self.metrics.failed.get_or_create(&self.label).inc();
            self.queued(self.reader.head_seq().saturating_sub(self.cursor.seq));
            // The first failure, then every tenth: a dead receiver should
            // not flood the log.
            if attempts == 1 || attempts.is_multiple_of(10) {
                warn!(
                    sink = %self.config.name,
                    attempts,
                    retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "cannot deliver (kept, in order, and retried): {e}"
                );
            }
            let stopping = stop.borrow().is_some();
            if until.is_some_and(|d| Instant::now() >= d) || (stopping && until.is_none()) {
                return false;
            }
            // Not while stopping: the chain is closed then, and a skip
            // could not be recorded in it. The next start measures again.
            if until.is_none() {
                match self.overflowed().await {
                    Ok(true) => return true,
                    Ok(false) => {}
                    Err(e) => error!(sink = %self.config.name, "cannot measure the backlog: {e}"),
                }
            }
            // Full jitter in [delay/2, delay]: many sinks failing at once
            // do not retry in step.
            // A receiver's Retry-After (bounded by `retry_max`) wins.
            let jittered = asked.map_or_else(
                || delay / 2 + delay.mul_f64(unit_random() / 2.0),
                |a| a.min(self.config.retry_max),
            );
            tokio::select! {
                () = tokio::time::sleep(jittered) => {}
                _ = stop.changed() => {}
            }
            delay = (delay * 2).min(self.config.retry_max);
        }
        {
            let now = jiff::Timestamp::now();
            self.metrics
                .sent
                .get_or_create(&self.label)
                .inc_by(batch.alerts.len() as u64);
            let latency = self.metrics.latency_seconds.get_or_create(&self.label);
            for a in &batch.alerts {
                latency.observe(now.duration_since(a.time).as_secs_f64().max(0.0));
            }
        }
        if batch.reached >= self.scanned_to {
            self.pending = 0;
            self.scanned_to = batch.reached;
        } else {
            self.pending = self.pending.saturating_sub(batch.records);
        }
        self.cursor.seq = self.cursor.seq.max(batch.reached);
        self.cursor.checkpoint = self.cursor.checkpoint.max(batch.checkpoint);
        if let Some(t) = batch.throttle {
            self.cursor.throttle = t;
        }
        self.dirty = true;
        self.persist(!batch.alerts.is_empty()).await;
        true
    }

    /// Records a gap in what this sink delivered: logged, counted, and a
    /// `sink-gap` record in the chain.
    fn gap(&self, from: u64, to: u64, skipped: Option<u64>, why: &str) {
        if let Some(n) = skipped {
            self.metrics.dropped.get_or_create(&self.label).inc_by(n);
        }
        error!(
            sink = %self.config.name,
            from,
            to,
            skipped,
            "alerts in evidence records {from}..={to} are not sent: {why}; a sink-gap record says so in the chain"
        );
        let _ = self.notes.send(Record::note(
            Lifecycle::SinkGap,
            format!(
                "SIEM sink {} did not send the alerts in evidence records {from} to {to}: {why}",
                self.config.name
            ),
            serde_json::json!({
                "sink": {
                    "name": self.config.name,
                    "type": self.config.kind(),
                    "skipped_from": from,
                    "skipped_to": to,
                    "skipped": skipped,
                    "reason": why,
                    "spool_max_records": self.config.spool_max_records,
                }
            }),
        ));
    }

    /// If the sink is further behind than its spool allows (counted in
    /// records it takes), skips ahead to keep the newest half of the
    /// limit, and records the gap in the chain. True if it skipped.
    async fn overflowed(&mut self) -> Result<bool, ReadError> {
        let head = self.reader.head_seq();
        let r = self.config.receives;
        let kinds = (r.flows, r.violations, r.gaps);
        let limit = self.config.spool_max_records;
        let from = self.scanned_to.max(self.cursor.seq);
        if head > from {
            let reader = self.reader.clone();
            let (n, _) =
                tokio::task::spawn_blocking(move || reader.count_for_sink(from, head, kinds, None))
                    .await??;
            self.pending += n;
            self.scanned_to = head;
        }
        if self.pending <= limit {
            return Ok(false);
        }
        // Keep the newest limit/2: skip to just before the record that
        // starts them.
        let skip = self.pending - limit / 2;
        let (after, upto) = (self.cursor.seq, head);
        let reader = self.reader.clone();
        let (_, first_kept) = tokio::task::spawn_blocking(move || {
            reader.count_for_sink(after, upto, kinds, Some(skip))
        })
        .await??;
        let to = first_kept.map_or(head, |s| s - 1);
        let from = self.cursor.seq + 1;
        self.gap(
            from,
            to,
            Some(skip),
            &format!(
                "the receiver was unreachable for longer than the sink's spool of {limit} alerts"
            ),
        );
        self.pending -= skip;
        self.cursor.seq = to;
        self.cursor.checkpoint = self.cursor.checkpoint.max(to);
        self.dirty = true;
        self.persist(true).await;
        Ok(true)
    }
}

fn checkpoint_info(c: Checkpoint) -> CheckpointInfo {
    CheckpointInfo {
        seq: c.seq,
        time: c.time,
        head: c.head,
        key_id: c.key_id,
        signature: c.signature,
        public_key: c.public_key,
        reason: c.reason,
    }
}

/// A number in [0, 1) for jitter (not for secrets).
fn unit_random() -> f64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return 0.5;
    }
    #[expect(clippy::cast_precision_loss, reason = "53 bits are plenty for jitter")]
    let unit = (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64;
    unit
}

#[cfg(test)]
mod tests {
    use residency_evidence::{
        Evidence, EvidenceConfig,
        testing::{flow, lines},
    };

    use super::*;
    use crate::config::{Destination, Receives, Tls};

    fn file_sink(path: PathBuf) -> SinkConfig {
        SinkConfig {
            name: "lines".into(),
            destination: Destination::File { path },
            format: "ecs".into(),
            receives: Receives {
                violations: true,
                gaps: true,
                ..Receives::default()
            },
            tls: Tls::default(),
            batch_max: 500,
            spool_max_records: 1_000,
            throttle: None,
            timeout: Duration::from_secs(5),
            retry_max: Duration::from_secs(1),
        }
    }

    /// Records that retention pruned before a sink sent them are a
    /// `sink-gap`, said once, and the sink goes on from what is left.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_pruned_before_they_were_sent_are_a_gap_said_once() {
        let dir = tempfile::tempdir().unwrap();
        let config = EvidenceConfig {
            directory: dir.path().to_owned(),
            checkpoint_records: 1_000_000,
            checkpoint_interval: Duration::from_hours(1),
            // The sample flows are days old: all of them go.
            retention: Some(Duration::from_hours(1)),
            max_bytes: None,
            wal_limit: residency_evidence::WAL_LIMIT,
            dict_samples: 200,
        };
        let (ev, _) = Evidence::open(&config).unwrap();
        ev.append(lines(
            (0..50).map(|i| flow(i, "acme", "US", "blocked", "203.0.113.7")),
        ))
        .await
        .unwrap();
        // A sink that had sent nothing of this store yet.
        let store = residency_evidence::chain::key_id(ev.reader().public_key());
        std::fs::create_dir_all(dir.path().join("sinks")).unwrap();
        std::fs::write(
            dir.path().join("sinks/lines.cursor"),
            serde_json::json!({"store": store, "seq": 0, "checkpoint": 0}).to_string(),
        )
        .unwrap();
        ev.prune_now().await.unwrap();
        assert!(
            ev.reader().first_seq().unwrap() > Some(1),
            "records were pruned"
        );

        let (notes_tx, mut notes_rx) = tokio::sync::mpsc::unbounded_channel();
        let out = dir.path().join("alerts.json");
        let sinks = Sinks::start(
            &[file_sink(out.clone())],
            dir.path(),
            ev.reader(),
            &notes_tx,
            &Arc::new(SinkMetrics::default()),
        )
        .unwrap();
        let note = tokio::time::timeout(Duration::from_secs(5), notes_rx.recv())
            .await
            .unwrap()
            .unwrap();
        let Record::Note(note) = note else {
            panic!("not a note")
        };
        assert_eq!(note.action, Lifecycle::SinkGap);
        assert_eq!(note.fields["sink"]["skipped_from"], 1, "{}", note.fields);
        assert!(note.message.contains("retention"), "{}", note.message);
        // Said once: nothing more while the sink keeps polling.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(notes_rx.try_recv().is_err(), "the gap was said again");
        sinks.stop(Duration::from_secs(1)).await;
        ev.close().await.unwrap();
    }
}
