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

use super::{
    alert::{Alert, AlertKind, CheckpointInfo},
    config::SinkConfig,
    out::Out,
    throttle::Throttle,
};
use crate::{
    evidence::Reader,
    metrics::{PipelineMetrics, SinkLabel},
    sinks::{Note, Record},
};

/// How often an idle sink looks for new records.
const POLL: Duration = Duration::from_millis(100);
/// First retry delay; doubles up to the sink's `retry_max`.
const RETRY_MIN: Duration = Duration::from_millis(250);

/// A sink's place in the chain, saved after every send.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Cursor {
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
    stop: watch::Sender<bool>,
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
        metrics: &Arc<PipelineMetrics>,
    ) -> Result<Sinks, StartError> {
        let (stop, stop_rx) = watch::channel(false);
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
            let out = Out::new(config).map_err(|e| err(e.to_string()))?;
            let path = sinks_dir.join(format!("{}.cursor", config.name));
            let cursor = load_cursor(&path, reader).map_err(err)?;
            let label = SinkLabel {
                sink: config.name.clone(),
            };
            // Every series exists from the start.
            let m = &metrics.sinks;
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
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + drain + Duration::from_secs(1);
        for t in self.tasks {
            let _ = tokio::time::timeout_at(deadline, t).await;
        }
    }
}

fn load_cursor(path: &Path, reader: &Reader) -> Result<Cursor, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            format!(
                "the cursor file {} is damaged ({e}); move it aside to start this sink at the chain's head",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let head = reader.head_seq();
            let signed = reader
                .latest_checkpoint()
                .map_err(|e| format!("cannot read the newest checkpoint: {e}"))?
                .map_or(0, |c| c.seq);
            Ok(Cursor {
                seq: head,
                checkpoint: signed,
                throttle: Throttle::default(),
            })
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn save_cursor(path: &Path, cursor: &Cursor) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp: PathBuf = path.with_extension("cursor.tmp");
    let bytes = serde_json::to_vec(cursor).map_err(std::io::Error::other)?;
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)
}

struct Task {
    /// Records this sink takes, between the cursor and `scanned_to`
    /// (counted only while the receiver fails).
    pending: u64,
    scanned_to: u64,
    config: SinkConfig,
    out: Out,
    path: PathBuf,
    cursor: Cursor,
    reader: Reader,
    notes: UnboundedSender<Record>,
    metrics: Arc<PipelineMetrics>,
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
}

impl Task {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut stopping_since: Option<Instant> = None;
        let drain = Duration::from_secs(3);
        loop {
            if stopping_since.is_none() && *stop.borrow() {
                stopping_since = Some(Instant::now());
            }
            let batch = match self.read().await {
                Ok(b) => b,
                Err(e) => {
                    error!(sink = %self.config.name, "cannot read the evidence chain: {e}");
                    if stopping_since.is_some() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let idle = batch.alerts.is_empty() && batch.reached == self.cursor.seq;
            if idle {
                if stopping_since.is_some() {
                    break;
                }
                tokio::select! {
                    () = tokio::time::sleep(POLL) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            if !self
                .send(batch, &mut stop, stopping_since.map(|t| t + drain))
                .await
            {
                break;
            }
            if stopping_since.is_some_and(|t| t.elapsed() > drain) {
                break;
            }
        }
        if let Err(e) = save_cursor(&self.path, &self.cursor) {
            error!(sink = %self.config.name, "cannot save the cursor: {e}");
        }
    }

    /// The next alerts after the cursor, throttled, with the summaries of
    /// windows that closed.
    async fn read(&mut self) -> Result<Batch, crate::evidence::EvidenceError> {
        let r = self.config.receives;
        let reader = self.reader.clone();
        let (after, ckpt_after, limit) = (
            self.cursor.seq,
            self.cursor.checkpoint,
            self.config.batch_max,
        );
        let (records, reached, checkpoints) = tokio::task::spawn_blocking(move || {
            let (records, reached) =
                reader.records_for_sink(after, limit, r.flows, r.violations, r.gaps)?;
            let checkpoints = if r.checkpoints {
                reader.checkpoints_between(ckpt_after, reached)?
            } else {
                Vec::new()
            };
            Ok::<_, crate::evidence::EvidenceError>((records, reached, checkpoints))
        })
        .await
        .map_err(|e| crate::evidence::EvidenceError::Invalid(format!("reader task: {e}")))??;
        let head = self.reader.head_seq();
        self.metrics
            .sinks
            .queued
            .get_or_create(&self.label)
            .set(i64::try_from(head.saturating_sub(reached)).unwrap_or(i64::MAX));
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
        if let Some(window) = self.config.throttle {
            let (mut passed, folded) = self.cursor.throttle.filter(alerts, window);
            if folded > 0 {
                self.metrics
                    .sinks
                    .throttled
                    .get_or_create(&self.label)
                    .inc_by(folded);
            }
            passed.extend(self.cursor.throttle.expire(jiff::Timestamp::now(), window));
            alerts = passed;
        }
        Ok(Batch {
            alerts,
            records: count,
            reached,
            checkpoint,
        })
    }

    /// Sends a batch until the receiver takes it (or the sink stops, or
    /// skips ahead). False when the sink should stop.
    async fn send(
        &mut self,
        batch: Batch,
        stop: &mut watch::Receiver<bool>,
        deadline: Option<Instant>,
    ) -> bool {
        let mut delay = RETRY_MIN;
        let mut attempts = 0u32;
        let started = Instant::now();
        // Alerts the receiver took already (a sender that sends one by one
        // may fail part way; those are not sent again).
        let mut done = 0;
        loop {
            if done >= batch.alerts.len() {
                break;
            }
            let sent =
                tokio::time::timeout(self.config.timeout, self.out.send(&batch.alerts[done..]))
                    .await;
            let e = match sent {
                Ok(Ok(())) => {
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
                Ok(Err(partial)) => {
                    done += partial.delivered;
                    partial.error.to_string()
                }
                Err(_) => format!("no answer within {:?}", self.config.timeout),
            };
            attempts += 1;
            self.metrics.sinks.failed.get_or_create(&self.label).inc();
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
            match self.overflowed().await {
                Ok(true) => return true,
                Ok(false) => {}
                Err(e) => error!(sink = %self.config.name, "cannot measure the backlog: {e}"),
            }
            if deadline.is_some_and(|d| Instant::now() >= d)
                || (*stop.borrow() && deadline.is_none())
            {
                return false;
            }
            // Full jitter in [delay/2, delay]: many sinks failing at once
            // do not retry in step.
            let jittered = delay / 2 + delay.mul_f64(fastrand_unit() / 2.0);
            tokio::select! {
                () = tokio::time::sleep(jittered) => {}
                _ = stop.changed() => {}
            }
            delay = (delay * 2).min(self.config.retry_max);
        }
        let now = jiff::Timestamp::now();
        let sent = self.metrics.sinks.sent.get_or_create(&self.label);
        sent.inc_by(batch.alerts.len() as u64);
        let latency = self
            .metrics
            .sinks
            .latency_seconds
            .get_or_create(&self.label);
        for a in &batch.alerts {
            latency.observe(now.duration_since(a.time).as_secs_f64().max(0.0));
        }
        if batch.reached >= self.scanned_to {
            self.pending = 0;
            self.scanned_to = batch.reached;
        } else {
            self.pending = self.pending.saturating_sub(batch.records);
        }
        self.cursor.seq = self.cursor.seq.max(batch.reached);
        self.cursor.checkpoint = self.cursor.checkpoint.max(batch.checkpoint);
        if let Err(e) = save_cursor(&self.path, &self.cursor) {
            error!(sink = %self.config.name, "cannot save the cursor (a restart would resend): {e}");
        }
        true
    }

    /// If the sink is further behind than its spool allows (counted in
    /// records it takes), skips ahead to keep the newest half of the
    /// limit, and records the gap in the chain. True if it skipped.
    async fn overflowed(&mut self) -> Result<bool, crate::evidence::EvidenceError> {
        let head = self.reader.head_seq();
        let r = self.config.receives;
        let kinds = (r.flows, r.violations, r.gaps);
        let limit = self.config.spool_max_records;
        let from = self.scanned_to.max(self.cursor.seq);
        if head > from {
            let reader = self.reader.clone();
            let (n, _) =
                tokio::task::spawn_blocking(move || reader.count_for_sink(from, head, kinds, None))
                    .await
                    .map_err(|e| {
                        crate::evidence::EvidenceError::Invalid(format!("reader task: {e}"))
                    })??;
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
        .await
        .map_err(|e| crate::evidence::EvidenceError::Invalid(format!("reader task: {e}")))??;
        let to = first_kept.map_or(head, |s| s - 1);
        let from = self.cursor.seq + 1;
        self.metrics
            .sinks
            .dropped
            .get_or_create(&self.label)
            .inc_by(skip);
        error!(
            sink = %self.config.name,
            from,
            to,
            skipped = skip,
            "the receiver is too far behind: {skip} alerts in records {from}..={to} are not sent (the spool holds {limit}); a sink-gap record says so in the chain"
        );
        let _ = self.notes.send(Record::Note(Box::new(Note {
            action: "sink-gap",
            kind: "pipeline_error",
            message: format!(
                "SIEM sink {} skipped {skip} alerts in evidence records {from} to {to}: its receiver was unreachable for longer than its spool of {limit} alerts",
                self.config.name
            ),
            fields: serde_json::json!({
                "sink": {
                    "name": self.config.name,
                    "type": self.config.kind(),
                    "skipped_from": from,
                    "skipped_to": to,
                    "skipped": skip,
                    "spool_max_records": limit,
                }
            }),
        })));
        self.pending -= skip;
        self.cursor.seq = to;
        self.cursor.checkpoint = self.cursor.checkpoint.max(to);
        if let Err(e) = save_cursor(&self.path, &self.cursor) {
            error!(sink = %self.config.name, "cannot save the cursor: {e}");
        }
        Ok(true)
    }
}

fn checkpoint_info(c: crate::evidence::query::Checkpoint) -> CheckpointInfo {
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
fn fastrand_unit() -> f64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return 0.5;
    }
    #[expect(clippy::cast_precision_loss, reason = "53 bits are plenty for jitter")]
    let unit = (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64;
    unit
}
