//! What the store counts, for `/metrics` and `/readyz`.
//!
//! The writer, the indexer and the readers update these with relaxed
//! atomics; [`Stats::register`] adds them to a `prometheus_client`
//! registry, and the REST API renders that registry.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{
        counter::{ConstCounter, Counter},
        gauge::{ConstGauge, Gauge},
        histogram::Histogram,
    },
    registry::Registry,
};

/// Bucket bounds (seconds) of the decision-to-store latency histograms.
pub const LATENCY_BUCKETS: [f64; 13] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// What the store counts, for `/metrics` and `/readyz`.
#[derive(Debug)]
pub struct Stats {
    /// Records appended to the chain.
    pub records: Counter,
    /// Transactions committed.
    pub commits: Counter,
    /// Time to commit one transaction.
    pub commit_seconds: Histogram,
    /// From the kernel's decision to the record being queryable.
    pub ingest_latency_seconds: Histogram,
    /// From the kernel's decision to the record being committed.
    pub committed_latency_seconds: Histogram,
    /// Checkpoints signed.
    pub checkpoints: Counter,
    /// The newest sequence number.
    pub head_seq: Gauge,
    /// Records up to here are indexed (queryable by filter).
    pub indexed_seq: Gauge<u64, std::sync::atomic::AtomicU64>,
    /// Bytes the store holds (pages in use).
    pub size_bytes: Gauge,
    /// Records pruned by retention.
    pub pruned: Counter,
    /// False from a failed write until a retry succeeds (see
    /// `store::Writer::recover`).
    pub writable: AtomicBool,
    /// Unix time (ns) the store stopped taking writes; 0 while it takes
    /// them.
    pub unwritable_since: AtomicI64,
    /// Records made while the store took no writes, and so not stored
    /// (each such stretch ends with an `evidence-gap` record that counts
    /// its own).
    pub not_stored: Counter,
    /// Batches waiting for the writer.
    pub queued: AtomicI64,
    /// Unix time (ns) of the newest record committed.
    pub head_ts: AtomicI64,
    /// Failed writes (transactions, retries included) and failed index
    /// steps.
    pub failures: AtomicU64,
    /// Canonical bytes of the records appended.
    pub record_bytes: Counter,
    /// Bytes those records take in `body` (compressed, see `codec`).
    pub stored_bytes: Counter,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            records: Counter::default(),
            commits: Counter::default(),
            commit_seconds: Histogram::new([
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0,
            ]),
            ingest_latency_seconds: Histogram::new(LATENCY_BUCKETS),
            committed_latency_seconds: Histogram::new(LATENCY_BUCKETS),
            checkpoints: Counter::default(),
            head_seq: Gauge::default(),
            indexed_seq: Gauge::default(),
            size_bytes: Gauge::default(),
            pruned: Counter::default(),
            writable: AtomicBool::new(true),
            unwritable_since: AtomicI64::new(0),
            not_stored: Counter::default(),
            queued: AtomicI64::new(0),
            head_ts: AtomicI64::new(0),
            failures: AtomicU64::new(0),
            record_bytes: Counter::default(),
            stored_bytes: Counter::default(),
        }
    }
}

impl Stats {
    /// Adds the store's series (`store_*`) to a registry; they share
    /// their atomics with the store, so a scrape reads live values.
    pub fn register(self: &Arc<Self>, r: &mut Registry) {
        r.register(
            "store_records",
            "Records appended to the evidence chain",
            self.records.clone(),
        );
        r.register(
            "store_record_bytes",
            "Canonical bytes of the records appended to the chain",
            self.record_bytes.clone(),
        );
        r.register(
            "store_stored_bytes",
            "Bytes the appended records take at rest (compressed against the store's dictionary)",
            self.stored_bytes.clone(),
        );
        r.register(
            "store_commits",
            "Evidence store transactions committed",
            self.commits.clone(),
        );
        r.register(
            "store_commit_seconds",
            "Time to commit one evidence store transaction",
            self.commit_seconds.clone(),
        );
        r.register(
            "store_ingest_latency_seconds",
            "From the kernel's decision to the record being queryable",
            self.ingest_latency_seconds.clone(),
        );
        r.register(
            "store_committed_latency_seconds",
            "From the kernel's decision to the record being committed to the chain",
            self.committed_latency_seconds.clone(),
        );
        r.register(
            "store_checkpoints",
            "Checkpoints signed",
            self.checkpoints.clone(),
        );
        r.register(
            "store_head_seq",
            "The newest sequence number in the chain",
            self.head_seq.clone(),
        );
        r.register(
            "store_indexed_seq",
            "Records up to this sequence number are indexed (queryable by filter)",
            self.indexed_seq.clone(),
        );
        r.register(
            "store_size_bytes",
            "Bytes the evidence store holds",
            self.size_bytes.clone(),
        );
        r.register(
            "store_records_not_stored",
            "Records made while the evidence store took no writes (a full disk), and so not stored",
            self.not_stored.clone(),
        );
        r.register(
            "store_pruned",
            "Records pruned by retention",
            self.pruned.clone(),
        );
        r.register_collector(Box::new(StoreAtomics(self.clone())));
    }
}

/// The store's figures that are plain atomics.
#[derive(Debug)]
struct StoreAtomics(Arc<Stats>);

impl Collector for StoreAtomics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let queued = ConstGauge::new(self.0.queued.load(Ordering::Relaxed));
        queued.encode(encoder.encode_descriptor(
            "store_queued_batches",
            "Batches waiting for the evidence store's writer",
            None,
            queued.metric_type(),
        )?)?;
        let failures = ConstCounter::new(self.0.failures.load(Ordering::Relaxed));
        failures.encode(encoder.encode_descriptor(
            "store_write_failures",
            "Evidence store writes that failed",
            None,
            failures.metric_type(),
        )?)?;
        let writable = ConstGauge::new(i64::from(self.0.writable.load(Ordering::Relaxed)));
        writable.encode(encoder.encode_descriptor(
            "store_writable",
            "1 while the evidence store takes writes",
            None,
            writable.metric_type(),
        )?)?;
        let since =
            ConstGauge::new(self.0.unwritable_since.load(Ordering::Relaxed) / 1_000_000_000);
        since.encode(encoder.encode_descriptor(
            "store_unwritable_since_seconds",
            "Unix time the evidence store stopped taking writes; 0 while it takes them",
            None,
            since.metric_type(),
        )?)?;
        Ok(())
    }
}
