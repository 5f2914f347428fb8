//! The pipeline: from the kernel's ring buffer to the output and the
//! evidence store.
//!
//! Two tasks, joined by a lock-free single-producer single-consumer ring
//! (the `ringbuf` crate):
//!
//! - the **reader** owns the kernel side. It drains the BPF ring buffer when
//!   the kernel wakes it and on a short timer, reads the kernel's drop
//!   counters, and pushes decoded records. It never blocks on a sink: when
//!   the hand-off ring is full it stops taking from the kernel, so that any
//!   loss happens in one place, the kernel, where it is counted.
//! - the **writer** pops records, enriches them and writes them out in
//!   batches.
//!
//! At shutdown the reader detaches the programs first, then drains what they
//! decided up to that moment, reads the final counters and ends the stream
//! with a `stopped` record that accounts for every decision.

use std::{sync::Arc, time::Duration};

use residency_common::ConnectEvent;
use ringbuf::{
    HeapRb,
    traits::{Consumer as _, Observer as _, Producer as _, Split as _},
};
use tokio::{
    sync::{Notify, watch},
    time::{MissedTickBehavior, interval},
};
use tracing::{error, info, warn};

use residency_evidence::Evidence;
use residency_record::{
    Index, Record, StartInfo, StopInfo, encode_flow_indexed, encode_line, verdict_str,
};

use crate::{
    config::Config,
    enrich::{self, Clock, Enricher, Sources},
    kernel::{CounterReader, DecodeError, Decoded, EventRing, Kernel, KernelCounters, KernelError},
    metrics::PipelineMetrics,
    output::{JsonLines, WriteError},
    watchdog::{Heartbeat, Watchdog},
};

/// Addresses whose `GeoIP` detail the writer keeps at hand.
const DETAIL_CACHE: usize = 65_536;

/// What the pipeline writes besides kernel records (lifecycle notes from
/// other tasks, such as a `GeoIP` reload).
pub type Notes = tokio::sync::mpsc::UnboundedReceiver<Record>;

/// Capacity of the hand-off ring between reader and writer, in records.
const HANDOFF_CAPACITY: usize = 64 * 1024;
/// How long shutdown waits for records that calls in flight at detach time
/// are still submitting.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(1);
/// How often the writer checks that the reader is still there when no
/// records arrive.
const READER_CHECK: Duration = Duration::from_millis(500);

/// What crosses the hand-off ring: kernel records stay raw (and `Copy`)
/// until the writer enriches them.
enum Item {
    Event(ConnectEvent),
    /// Exec, fork or exit: for the writer's process table, not written out.
    Process(Decoded),
    Undecodable(DecodeError),
    Lost {
        count: u64,
        total: u64,
    },
    /// Flow totals the kernel could not report (ring buffer full, or
    /// more connected sockets at once than `FLOW_CAPACITY`).
    FlowsLost {
        count: u64,
        total: u64,
    },
    Stopped(StopInfo),
}

/// Why the pipeline stopped early.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("the event reader failed: {0}")]
    Reader(std::io::Error),
    #[error("a pipeline task panicked: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("the event reader stopped without a reason")]
    ReaderGone,
}

/// How the writer ended.
enum WriterEnd {
    /// The reader's `stopped` record was written: a clean end.
    Stopped(StopInfo),
    /// The reader went away without one (it failed or panicked).
    ReaderGone,
}

/// Where the writer puts records: the JSON lines output, the evidence
/// store, and the counters behind `/metrics`.
pub struct Outputs {
    pub lines: JsonLines,
    pub evidence: Evidence,
    pub metrics: Arc<PipelineMetrics>,
    /// The store has stopped taking records (said once).
    pub store_failed: bool,
}

impl Outputs {
    /// Writes a batch of newline-terminated records to the output and then
    /// to the evidence store (with the columns of the lines that have them),
    /// and leaves `buf` and `index` empty.
    async fn write(
        &mut self,
        buf: &mut Vec<u8>,
        index: &mut Vec<Option<Index>>,
    ) -> Result<(), WriteError> {
        if buf.is_empty() {
            return Ok(());
        }
        // The output first; the evidence store gets the batch even when
        // the output failed (the daemon then stops, and the store holds
        // everything decided up to here).
        let written = self.lines.write_batch(buf).await;
        let lines = std::mem::replace(buf, Vec::with_capacity(buf.len().max(4096)));
        let index = std::mem::take(index);
        // The store's queue is bounded: when the disk is behind, this
        // waits, the hand-off ring fills and the kernel counts what it
        // cannot report. A store whose writes fail (a full disk) takes
        // the batch all the same and counts it for its gap record; this
        // fails only when the store has stopped (closed).
        if let Err(e) = self.evidence.append_indexed(lines, index).await {
            if !self.store_failed {
                error!("records are no longer stored as evidence: {e}");
            }
            self.store_failed = true;
        }
        written
    }
}

/// Runs the pipeline until `shutdown` changes, then detaches, drains and
/// returns the final totals.
///
/// # Errors
/// If records cannot be written, or the kernel objects fail.
pub async fn run(
    config: Arc<Config>,
    kernel: Kernel,
    start: StartInfo,
    mut output: Outputs,
    sources: Sources,
    notes: Notes,
    shutdown: watch::Receiver<bool>,
) -> Result<StopInfo, PipelineError> {
    let (producer, consumer) = HeapRb::<Item>::new(HANDOFF_CAPACITY).split();
    let ready = Arc::new(Notify::new());
    let room = Arc::new(Notify::new());

    let Kernel {
        attached,
        events,
        counters,
        state,
        baseline,
        persist,
        logger,
    } = kernel;
    let log_task = logger.map(|l| tokio::spawn(l.forward()));

    // The started record goes out before the reader runs, so it precedes
    // every decision in the stream.
    let mut buf = Vec::with_capacity(4096);
    encode_line(&Record::Started(Box::new(start)), &mut buf).map_err(|e| WriteError {
        name: "encoder".into(),
        source: e.into(),
    })?;
    output.metrics.lifecycle.inc();
    output.write(&mut buf, &mut Vec::new()).await?;
    output.metrics.attached.set(1);
    // Under systemd (Type=notify), the unit counts as started only now that
    // the programs are attached, so units ordered after it are covered.
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        warn!("cannot notify systemd of readiness: {e}");
    }

    // systemd's watchdog hears from the reader, and only while the writer
    // comes round too.
    let beat = Heartbeat::new();
    let watchdog = Watchdog::from_env(beat.clone(), READER_CHECK);
    let reader = Reader {
        events,
        counters,
        attached,
        metrics: output.metrics.clone(),
        producer,
        ready: ready.clone(),
        room: room.clone(),
        state,
        persist,
        reported_lost: baseline.lost_reported,
        flows_lost: baseline.flows_lost_reported,
        received: baseline.consumed,
        undecodable: 0,
        poll: config.kernel.poll_interval,
        stats: config.kernel.stats_interval,
        watchdog,
    };
    let reader = tokio::spawn(reader.run(shutdown));
    let writer = tokio::spawn(write_loop(Writer {
        consumer,
        output,
        ready,
        room,
        sources,
        notes,
        beat,
    }));

    let end = writer.await;
    if let Some(task) = log_task {
        task.abort();
    }
    match end? {
        Ok(WriterEnd::Stopped(stop)) => {
            reader.await??;
            Ok(stop)
        }
        Ok(WriterEnd::ReaderGone) => {
            // The reader's own error says why; the programs are detached
            // (dropping the reader dropped them).
            reader.await??;
            Err(PipelineError::ReaderGone)
        }
        Err(e) => {
            // The writer failed: stop the reader too (it detaches on drop).
            reader.abort();
            Err(e.into())
        }
    }
}

struct Reader {
    events: EventRing,
    counters: CounterReader,
    attached: crate::kernel::Attached,
    /// The pinned state: decisions read and drops reported, and the
    /// heartbeat the programs judge staleness by.
    state: crate::kernel::StateMap,
    /// Whether a clean stop leaves the programs attached.
    persist: bool,
    metrics: Arc<PipelineMetrics>,
    producer: ringbuf::HeapProd<Item>,
    ready: Arc<Notify>,
    room: Arc<Notify>,
    reported_lost: u64,
    /// The kernel's count of flow totals it could not report, as far as
    /// the chain accounts for it (from the daemons before this one too:
    /// what was lost while none ran is recorded by the next).
    flows_lost: u64,
    received: u64,
    undecodable: u64,
    poll: Duration,
    stats: Duration,
    watchdog: Option<Watchdog>,
}

impl Reader {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), PipelineError> {
        let mut poll = interval(self.poll);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut stats = interval(self.stats);
        stats.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut dog = interval(self.watchdog.as_ref().map_or(self.poll, Watchdog::every));
        dog.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
                    break;
                }
                r = self.events.readable() => r.map_err(PipelineError::Reader)?,
                _ = poll.tick() => {}
                _ = stats.tick() => self.check_losses()?,
                _ = dog.tick(), if self.watchdog.is_some() => {}
            }
            self.drain().await;
            if let Some(watchdog) = &mut self.watchdog {
                watchdog.progress();
            }
        }

        let (totals, enforcement_kept) = if self.persist {
            // The programs stay attached and keep deciding: read what they
            // have decided so far; what they decide from now on waits in
            // the pinned ring for the next daemon, which accounts for it.
            self.drain().await;
            let totals = self.counters.read()?;
            self.report_losses(totals).await;
            (totals, true)
        } else {
            // Detach first: from here on no new call reaches the programs.
            // Calls already inside them (on other CPUs) may still submit,
            // and a record reserved but not yet submitted stops the drain,
            // so drain until what was read matches what the kernel counted,
            // for a while.
            self.attached.detach();
            self.metrics.attached.set(0);
            let deadline = tokio::time::Instant::now() + SHUTDOWN_DRAIN;
            let mut totals = self.counters.read()?;
            loop {
                self.drain().await;
                totals = self.counters.read().unwrap_or(totals);
                if self.received >= totals.submitted || tokio::time::Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            self.report_losses(totals).await;
            let unread = totals.submitted.saturating_sub(self.received);
            if unread > 0 {
                warn!(
                    unread,
                    "records submitted by the kernel but not readable before shutdown"
                );
                self.push_waiting(Item::Lost {
                    count: unread,
                    total: totals.dropped + unread,
                })
                .await;
            }
            (totals, false)
        };
        if enforcement_kept {
            // Said last, for the next daemon: everything up to here is read
            // and accounted for.
            self.state.state.consumed = self.received;
            self.state.state.lost_reported = self.reported_lost;
            self.state.state.flows_lost_reported = self.flows_lost;
            self.state.state.clean_stop = 1;
            self.state.write();
            let pins = self
                .attached
                .pin_dir()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            self.attached.release();
            info!(
                pins,
                "programs left attached and deciding with the policy in force (kernel.persist); \
                 `residency detach` removes them"
            );
        }
        self.push_waiting(Item::Stopped(StopInfo {
            kernel_submitted: totals.submitted,
            kernel_dropped: totals.dropped,
            received: self.received,
            undecodable: self.undecodable,
            process_dropped: totals.process_dropped,
            enforcement_kept,
        }))
        .await;
        Ok(())
    }

    /// Moves everything waiting in the kernel ring to the hand-off ring,
    /// waiting for room when the writer is behind.
    async fn drain(&mut self) {
        loop {
            let room = self.producer.vacant_len();
            let mut received = 0;
            let mut undecodable = 0;
            let producer = &mut self.producer;
            let moved = self.events.drain(room, |rec| {
                // Only decisions (and what might have been one) count
                // against the kernel's count of decisions submitted.
                let item = match rec {
                    Ok(Decoded::Connect(ev)) => {
                        received += 1;
                        Item::Event(ev)
                    }
                    Ok(other) => Item::Process(other),
                    Err(e) => {
                        received += 1;
                        undecodable += 1;
                        Item::Undecodable(e)
                    }
                };
                // Cannot fail: `drain` takes at most `room` records.
                let _ = producer.try_push(item);
            });
            self.received += received;
            self.undecodable += undecodable;
            if moved > 0 {
                self.ready.notify_one();
                // What the next daemon must not count as waiting for it.
                self.state.state.consumed = self.received;
                self.state.write();
            }
            if moved < room {
                return; // the kernel ring is empty
            }
            // The hand-off ring is full: wait for the writer.
            self.ready.notify_one();
            self.room.notified().await;
        }
    }

    fn check_losses(&mut self) -> Result<(), PipelineError> {
        let totals = self.counters.read()?;
        self.metrics
            .kernel_submitted
            .set(i64::try_from(totals.submitted).unwrap_or(i64::MAX));
        self.metrics
            .kernel_dropped
            .set(i64::try_from(totals.dropped).unwrap_or(i64::MAX));
        self.metrics
            .kernel_names_dropped
            .set(i64::try_from(totals.names_dropped).unwrap_or(i64::MAX));
        self.metrics
            .kernel_flows_dropped
            .set(i64::try_from(totals.flows_dropped).unwrap_or(i64::MAX));
        if self.producer.vacant_len() > 0
            && let Some(item) = self.flows_lost_since(totals.flows_dropped)
        {
            let _ = self.producer.try_push(item);
            self.ready.notify_one();
        }
        if totals.dropped > self.reported_lost && self.producer.vacant_len() > 0 {
            let count = totals.dropped - self.reported_lost;
            warn!(
                count,
                total = totals.dropped,
                "kernel ring buffer full: decisions not reported"
            );
            let _ = self.producer.try_push(Item::Lost {
                count,
                total: totals.dropped,
            });
            self.reported_lost = totals.dropped;
            self.ready.notify_one();
        }
        // The heartbeat: the programs count the tables stale from it.
        self.state.state.lost_reported = self.reported_lost;
        self.state.state.flows_lost_reported = self.flows_lost;
        self.state.write();
        Ok(())
    }

    async fn report_losses(&mut self, totals: KernelCounters) {
        if totals.dropped > self.reported_lost {
            let count = totals.dropped - self.reported_lost;
            warn!(
                count,
                total = totals.dropped,
                "kernel ring buffer full: decisions not reported"
            );
            self.push_waiting(Item::Lost {
                count,
                total: totals.dropped,
            })
            .await;
            self.reported_lost = totals.dropped;
        }
        if let Some(item) = self.flows_lost_since(totals.flows_dropped) {
            self.push_waiting(item).await;
        }
    }

    /// The record of flow totals the kernel has not reported since the
    /// chain last accounted for them (`total`: its counter now), if any;
    /// from here on they count as accounted for.
    fn flows_lost_since(&mut self, total: u64) -> Option<Item> {
        if total <= self.flows_lost {
            return None;
        }
        let count = total - self.flows_lost;
        warn!(
            count,
            total,
            "flow totals not reported (kernel ring buffer full, or more connected sockets than \
             the kernel follows at once)"
        );
        self.flows_lost = total;
        Some(Item::FlowsLost { count, total })
    }

    async fn push_waiting(&mut self, mut item: Item) {
        loop {
            match self.producer.try_push(item) {
                Ok(()) => {
                    self.ready.notify_one();
                    return;
                }
                Err(back) => {
                    item = back;
                    self.ready.notify_one();
                    self.room.notified().await;
                }
            }
        }
    }
}

struct Writer {
    consumer: ringbuf::HeapCons<Item>,
    output: Outputs,
    ready: Arc<Notify>,
    room: Arc<Notify>,
    sources: Sources,
    notes: Notes,
    /// Beats each time round the loop, for the watchdog.
    beat: Arc<Heartbeat>,
}

#[expect(
    clippy::too_many_lines,
    reason = "one loop: wait, take a batch, enrich, encode, write"
)]
async fn write_loop(w: Writer) -> Result<WriterEnd, WriteError> {
    let Writer {
        mut consumer,
        mut output,
        ready,
        room,
        sources,
        mut notes,
        beat,
    } = w;
    let mut buf = Vec::with_capacity(1 << 20);
    // The columns of each line in `buf`, for the evidence store.
    let mut index: Vec<Option<Index>> = Vec::with_capacity(4096);
    let mut enricher = Enricher::new(sources, DETAIL_CACHE);
    let mut memos = enrich::flow_memos();
    let mut notes_open = true;
    loop {
        beat.beat();
        let woke = tokio::select! {
            () = ready.notified() => true,
            note = notes.recv(), if notes_open => {
                match note {
                    Some(note) => {
                        output.metrics.lifecycle.inc();
                        match encode_line(&note, &mut buf) {
                            Ok(()) => index.push(None),
                            Err(e) => error!("cannot encode a record: {e}"),
                        }
                    }
                    None => notes_open = false,
                }
                true
            }
            () = tokio::time::sleep(READER_CHECK) => false,
        };
        if !woke && !consumer.write_is_held() && consumer.is_empty() {
            error!("the event reader stopped; no more records will come");
            output.write(&mut buf, &mut index).await?;
            return Ok(WriterEnd::ReaderGone);
        }
        let clock = Clock::now();
        let mut stop = None;
        let metrics = output.metrics.clone();
        metrics
            .ring_lag
            .set(i64::try_from(consumer.occupied_len()).unwrap_or(i64::MAX));
        // Bounded batches keep memory flat and let the reader refill.
        while buf.len() < (1 << 20) {
            let Some(item) = consumer.try_pop() else {
                break;
            };
            let record = match item {
                Item::Event(ev) => match enrich::decode(&ev, &clock) {
                    Ok(mut flow) => {
                        enricher.enrich(&mut flow);
                        enricher.name(&mut flow, &ev);
                        enrich::remember_decision(&mut memos, &flow, &ev);
                        metrics.decision(verdict_str(flow.verdict));
                        Record::Flow(flow)
                    }
                    Err(e) => Record::Undecodable {
                        reason: format!("kernel record: {e}"),
                    },
                },
                Item::Process(Decoded::Flow(ev)) => {
                    match enrich::decode_totals(&ev, &clock, &mut memos) {
                        Ok((mut flow, name)) => {
                            enricher.enrich(&mut flow);
                            if let Some(name) = name {
                                flow.name = Some(name);
                            } else {
                                // Not remembered (the daemon started after
                                // the decision): named as the decision
                                // was, where names still hold.
                                let mut d = ev.decision;
                                d.flags &= !residency_common::FLAG_TLS_WATCHED;
                                enricher.name(&mut flow, &d);
                            }
                            metrics.flow_totals(&flow);
                            Record::Flow(flow)
                        }
                        Err(e) => Record::Undecodable {
                            reason: format!("kernel flow totals: {e}"),
                        },
                    }
                }
                Item::Process(p) => {
                    enricher.observe(&p);
                    match enricher.observe_names(&p, &metrics) {
                        Some(record) => record,
                        None => continue,
                    }
                }
                Item::Undecodable(e) => {
                    metrics.undecodable.inc();
                    Record::Undecodable {
                        reason: format!("ring buffer record: {e}"),
                    }
                }
                Item::Lost { count, total } => Record::Lost { count, total },
                Item::FlowsLost { count, total } => Record::note(
                    residency_record::Lifecycle::FlowTotalsLost,
                    format!(
                        "{count} flow totals reports were lost (kernel ring buffer full, or more \
                         connected sockets at once than kernel.max_flows): a lost update is \
                         carried by the flow's next report; a lost end, or a flow not followed, \
                         loses the bytes it moved after its last report"
                    ),
                    serde_json::json!({ "count": count, "total": total }),
                ),
                Item::Stopped(info) => {
                    // Notes still queued (a gap found at start, a reload
                    // just before the stop) go in before the last record.
                    while let Ok(note) = notes.try_recv() {
                        metrics.lifecycle.inc();
                        match encode_line(&note, &mut buf) {
                            Ok(()) => index.push(None),
                            Err(e) => error!("cannot encode a record: {e}"),
                        }
                    }
                    stop = Some(info);
                    Record::Stopped(info)
                }
            };
            if !matches!(record, Record::Flow(_)) {
                metrics.lifecycle.inc();
            }
            let encoded = match &record {
                Record::Flow(flow) => encode_flow_indexed(flow, &mut buf).map(Some),
                other => encode_line(other, &mut buf).map(|()| None),
            };
            match encoded {
                Ok(i) => index.push(i),
                Err(e) => error!("cannot encode a record: {e}"),
            }
        }
        room.notify_one();
        output.write(&mut buf, &mut index).await?;
        if let Some(stop) = stop {
            info!(
                received = stop.received,
                kernel_submitted = stop.kernel_submitted,
                kernel_dropped = stop.kernel_dropped,
                "stopped"
            );
            return Ok(WriterEnd::Stopped(stop));
        }
        if !consumer.is_empty() {
            ready.notify_one();
        }
    }
}
