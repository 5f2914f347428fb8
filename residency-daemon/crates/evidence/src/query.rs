//! Reading the store: what the REST API serves.
//!
//! Readers have connections of their own (WAL: they never block the
//! writer, and see only committed batches). Every call is blocking; the API
//! runs them on tokio's blocking pool.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use ed25519_dalek::VerifyingKey;
use rusqlite::{Connection, OpenFlags, OptionalExtension as _, Row, ToSql, params};
use serde::Serialize;
use serde_json::value::RawValue;

use residency_record::EvidenceGap;

use crate::{EvidenceError, chain, codec::Dicts, indexer::Progress, schema, stats::Stats};

/// Largest page a caller may ask for.
pub const MAX_PAGE: u32 = 1000;
/// Page size when none is asked for.
pub const DEFAULT_PAGE: u32 = 100;

/// Which records: every field is optional and they combine with AND.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Event time at or after.
    pub from: Option<jiff::Timestamp>,
    /// Event time before.
    pub to: Option<jiff::Timestamp>,
    pub tenant: Option<String>,
    pub workload: Option<String>,
    pub role: Option<String>,
    /// ISO alpha-2 country the kernel judged.
    pub country: Option<String>,
    /// `allowed`, `flagged` or `blocked`.
    pub verdict: Option<String>,
    pub dst_ip: Option<IpAddr>,
    pub dst_name: Option<String>,
    /// The provider of the destination's catalog entry (`unlisted`: none).
    /// The transfer summary only: flows are not indexed by it.
    pub provider: Option<String>,
    /// The Kubernetes namespace of the flow's pod.
    pub namespace: Option<String>,
    /// The name of the flow's pod. Flows and violations only: the
    /// transfer summary counts by namespace, not by pod.
    pub pod: Option<String>,
}

/// Newest first (the default) or oldest first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Order {
    #[default]
    Desc,
    Asc,
}

/// A page request: `cursor` is the `next` of the previous page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub cursor: Option<u64>,
    pub limit: u32,
    pub order: Order,
}

impl Default for Page {
    fn default() -> Self {
        Page {
            cursor: None,
            limit: DEFAULT_PAGE,
            order: Order::Desc,
        }
    }
}

/// One page of results.
#[derive(Debug, Serialize)]
pub struct PageOf<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
}

/// A record as stored: its place in the chain and its canonical bytes
/// (served as the JSON document they are).
#[derive(Debug, Serialize)]
pub struct StoredRecord {
    pub seq: u64,
    /// Chain hash, hex.
    pub hash: String,
    pub record: Box<RawValue>,
    /// A followed flow's totals so far (from its newest totals record),
    /// on the flow listing; absent where the flow has none yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub totals: Option<FlowTotals>,
}

/// What a followed flow has moved, from its newest totals record
/// (`flow-update` or `flow-end`, record `last_seq`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowTotals {
    pub flow_id: String,
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub packets_in: u64,
    /// Calls the decision covered (repeated datagrams to the same
    /// destination included).
    pub calls: u64,
    /// The socket was closed, or turned to another flow.
    pub ended: bool,
    pub last_seq: u64,
    pub updated: jiff::Timestamp,
}

/// Where a violation is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ViolationState {
    Open,
    Acknowledged,
    Resolved,
}

impl ViolationState {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ViolationState::Open => "open",
            ViolationState::Acknowledged => "acknowledged",
            ViolationState::Resolved => "resolved",
        }
    }

    /// Parses `open`, `acknowledged` or `resolved`.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "open" => Some(ViolationState::Open),
            "acknowledged" => Some(ViolationState::Acknowledged),
            "resolved" => Some(ViolationState::Resolved),
            _ => None,
        }
    }
}

/// A state change, by whom and why.
#[derive(Debug, Clone, Serialize)]
pub struct Transition {
    pub at: jiff::Timestamp,
    pub by: String,
    pub note: String,
    /// The chain record of the change.
    pub seq: u64,
}

/// NIS2 Art. 23 deadlines, from the moment of awareness.
#[derive(Debug, Clone, Serialize)]
pub struct Nis2 {
    /// When residency became aware (recorded the first occurrence).
    pub aware_at: jiff::Timestamp,
    /// Early warning: within 24 hours.
    pub early_warning_due: jiff::Timestamp,
    /// Incident notification: within 72 hours.
    pub notification_due: jiff::Timestamp,
    /// Final report: within one month.
    pub final_report_due: jiff::Timestamp,
}

/// Where a violating flow went.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Repeated breaches of policy by one workload towards one destination:
/// blocked (enforce) or flagged (monitor).
#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    pub id: i64,
    pub state: ViolationState,
    pub verdict: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The Kubernetes namespace of the violating flows' pods.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The pod of its first occurrence (repeats from other pods of the
    /// namespace count on the same violation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    pub tenants: Vec<String>,
    pub destination: Target,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer_basis: Option<String>,
    /// Occurrences so far.
    pub count: u64,
    pub first_seen: jiff::Timestamp,
    pub last_seen: jiff::Timestamp,
    pub first_seq: u64,
    pub last_seq: u64,
    pub nis2: Nis2,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acknowledged: Option<Transition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved: Option<Transition>,
}

/// Filters for violations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ViolationFilter {
    pub state: Option<ViolationState>,
    pub records: Filter,
}

/// One row of the data-flow map.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TransferRow {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// `eea` (no transfer under GDPR), `adequacy`, `dpf`, `scc`, `bcr`,
    /// `art49`, `local`, or `none`.
    pub transfer_basis: String,
    /// The provider of the destination's catalog entry
    /// (`residency.name.endpoint.provider`), or [`UNLISTED`].
    pub provider: String,
    /// Its service; absent when the entry names none, or there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The Kubernetes namespace the flows came from; absent for flows of
    /// no pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub flows: u64,
    pub allowed: u64,
    pub flagged: u64,
    pub blocked: u64,
    /// Bytes sent to and received from these destinations (IP packet
    /// lengths), by the day each flow's totals record was written: a
    /// flow's bytes count on the days they moved. 0 where flows are not
    /// followed (`kernel.flows = false`).
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub first_seen: jiff::Timestamp,
    pub last_seen: jiff::Timestamp,
}

/// The provider of transfers to destinations the endpoint catalog does
/// not list (or whose name is not known).
pub const UNLISTED: &str = "unlisted";

/// A signed checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct Checkpoint {
    /// The last record it covers.
    pub seq: u64,
    /// The chain hash of that record, hex.
    pub head: String,
    pub time: jiff::Timestamp,
    /// Why it was signed: `records`, `interval`, `shutdown`, `pruned`,
    /// `requested`.
    pub reason: String,
    pub key_id: String,
    /// Ed25519 signature, base64.
    pub signature: String,
    /// The public key that verifies it, base64.
    pub public_key: String,
}

/// The signed checkpoints that cover the flows of a period: the newest
/// signed before its first flow (where the period's records start in the
/// chain) and the oldest signed at or after its last (whose signature
/// covers every record of the period, through the hash chain).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PeriodProof {
    /// The period's first and last flow records (absent: no flows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<u64>,
    /// Signed before the period's first record (absent: none was, the
    /// chain starts in the period).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<Checkpoint>,
    /// Signed over the period's last record (absent: not signed yet; the
    /// next checkpoint will be).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<Checkpoint>,
}

/// A version of the policy, as loaded.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyVersion {
    /// SHA-256 of the configuration file.
    pub hash: String,
    pub loaded_at: jiff::Timestamp,
    /// The `policy-loaded` records: first and latest.
    pub first_seq: u64,
    pub last_seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// Read access to a store, shared by the API's handlers.
#[derive(Clone)]
pub struct Reader {
    path: PathBuf,
    pool: Arc<Mutex<Vec<Connection>>>,
    public_key: VerifyingKey,
    stats: Arc<Stats>,
    progress: Arc<Progress>,
    /// Held while an export runs: one at a time per store, since each is
    /// built in memory (up to a million records).
    export: Arc<Mutex<()>>,
    /// Compression dictionaries, loaded once.
    dicts: Arc<Dicts>,
}

impl Reader {
    /// Opens a reader on the database at `path`.
    ///
    /// # Errors
    /// If the database cannot be opened.
    pub fn open(
        path: &Path,
        public_key: VerifyingKey,
        stats: Arc<Stats>,
        progress: Arc<Progress>,
    ) -> Result<Self, EvidenceError> {
        let r = Reader {
            path: path.to_owned(),
            pool: Arc::new(Mutex::new(Vec::new())),
            public_key,
            stats,
            progress,
            export: Arc::new(Mutex::new(())),
            dicts: Arc::new(Dicts::default()),
        };
        let conn = r.connect()?;
        r.put(conn);
        Ok(r)
    }

    fn connect(&self) -> Result<Connection, EvidenceError> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.execute_batch("PRAGMA busy_timeout = 5000; PRAGMA cache_size = -32768;")?;
        // The filter indexes live in their own file (see `indexer`).
        let index = self
            .path
            .parent()
            .map(crate::index_path)
            .unwrap_or_default();
        conn.execute("ATTACH DATABASE ?1 AS ix", [index.to_string_lossy()])?;
        Ok(conn)
    }

    fn take(&self) -> Result<Connection, EvidenceError> {
        let pooled = self.pool.lock().ok().and_then(|mut p| p.pop());
        match pooled {
            Some(c) => Ok(c),
            None => self.connect(),
        }
    }

    fn put(&self, conn: Connection) {
        if let Ok(mut p) = self.pool.lock()
            && p.len() < 8
        {
            p.push(conn);
        }
    }

    /// Runs `f` on a pooled connection.
    pub(crate) fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, EvidenceError>,
    ) -> Result<T, EvidenceError> {
        let conn = self.take()?;
        let out = f(&conn);
        self.put(conn);
        out
    }

    /// The dictionaries bodies are stored against.
    pub(crate) fn dicts(&self) -> &Dicts {
        &self.dicts
    }

    /// The export slot, if free.
    pub(crate) fn export_slot(&self) -> Option<std::sync::MutexGuard<'_, ()>> {
        self.export.try_lock().ok()
    }

    #[must_use]
    pub fn public_key(&self) -> &VerifyingKey {
        &self.public_key
    }

    #[must_use]
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flows (decisions), filtered and paginated by sequence number.
    ///
    /// # Errors
    /// If the database cannot be read.
    pub fn flows(
        &self,
        filter: &Filter,
        page: &Page,
    ) -> Result<PageOf<StoredRecord>, EvidenceError> {
        let indexed = self
            .progress
            .indexed
            .load(std::sync::atomic::Ordering::Acquire);
        self.with(|c| flows(c, &self.dicts, filter, page, indexed))
    }

    /// Any record by sequence number.
    ///
    /// # Errors
    /// If the database cannot be read.
    pub fn record(&self, seq: u64) -> Result<Option<StoredRecord>, EvidenceError> {
        self.with(|c| {
            let seq = i64::try_from(seq).unwrap_or(i64::MAX);
            c.query_row(
                "SELECT seq, hash, body, dict FROM records WHERE seq = ?1",
                [seq],
                |r| stored(r, c, &self.dicts),
            )
            .optional()?
            .transpose()
        })
    }

    /// The newest gap records (events lost in the kernel, records the
    /// chain lacks, alerts a sink did not send), newest first, at most
    /// `limit`: read through the partial index `records_gaps`, so the cost
    /// does not grow with the store.
    ///
    /// # Errors
    /// If the database cannot be read.
    pub fn gaps(&self, limit: u32) -> Result<Vec<StoredRecord>, EvidenceError> {
        let sql = format!(
            "SELECT seq, hash, body, dict FROM records WHERE {} ORDER BY seq DESC LIMIT ?1",
            gap_kinds()
        );
        self.with(|c| {
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt
                .query_map([limit], |r| stored(r, c, &self.dicts))?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().collect()
        })
    }

    /// Violations, newest first.
    ///
    /// # Errors
    /// If the database cannot be read.
    pub fn violations(
        &self,
        filter: &ViolationFilter,
        page: &Page,
    ) -> Result<PageOf<Violation>, EvidenceError> {
        self.with(|c| violations(c, filter, page))
    }

    /// One violation.
    ///
    /// # Errors
    /// If the database cannot be read.
    pub fn violation(&self, id: i64) -> Result<Option<Violation>, EvidenceError> {
        self.with(|c| violation_by_id(c, id))
    }

    /// The data-flow map: tenant x role x country x basis x the catalog's
    /// provider and service x the Kubernetes namespace, counted. Time
    /// bounds apply per UTC day.
    ///
    /// # Errors
    /// If the database cannot be read.
    pub fn transfers(&self, filter: &Filter) -> Result<Vec<TransferRow>, EvidenceError> {
        self.with(|c| transfers(c, filter))
    }

    /// The newest signed checkpoint.
    ///
    /// # Errors
    /// If the database cannot be read.
    pub fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, EvidenceError> {
        let key = chain::public_key_text(&self.public_key);
        self.with(|c| {
            Ok(c.query_row(
                "SELECT seq, ts, head, reason, key_id, signature FROM checkpoints ORDER BY seq DESC LIMIT 1",
                [],
                |r| checkpoint_row(r, &key),
            )
            .optional()?)
        })
    }

    /// The checkpoints that cover the flows between `from` and `to`
    /// ([`PeriodProof`]).
    ///
    /// # Errors
    /// If the database cannot be read.
    pub fn period_proof(
        &self,
        from: Option<jiff::Timestamp>,
        to: Option<jiff::Timestamp>,
    ) -> Result<PeriodProof, EvidenceError> {
        let key = chain::public_key_text(&self.public_key);
        let ns = |t: Option<jiff::Timestamp>, none: i64| {
            t.map_or(none, |t| {
                i64::try_from(t.as_nanosecond()).unwrap_or(if none == 0 { 0 } else { i64::MAX })
            })
        };
        let (lo, hi) = (ns(from, 0), ns(to, i64::MAX));
        self.with(|c| {
            let (first, last): (Option<i64>, Option<i64>) = c.query_row(
                "SELECT min(seq), max(seq) FROM ix.cols WHERE ts >= ?1 AND ts < ?2",
                params![lo, hi],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let (Some(first), Some(last)) = (first, last) else {
                return Ok(PeriodProof::default());
            };
            let one = |sql: &str, seq: i64| {
                c.query_row(sql, [seq], |r| checkpoint_row(r, &key))
                    .optional()
            };
            Ok(PeriodProof {
                first_seq: Some(seq_of(first)),
                last_seq: Some(seq_of(last)),
                before: one(
                    "SELECT seq, ts, head, reason, key_id, signature FROM checkpoints WHERE seq < ?1 ORDER BY seq DESC LIMIT 1",
                    first,
                )?,
                after: one(
                    "SELECT seq, ts, head, reason, key_id, signature FROM checkpoints WHERE seq >= ?1 ORDER BY seq LIMIT 1",
                    last,
                )?,
            })
        })
    }

    /// The newest checkpoint, checked now: does its signature verify under
    /// the store's key, and is the chain hash of the record it covers the
    /// head it signed? Two reads, whatever the store's size (the whole
    /// chain is `residency evidence verify`'s work).
    ///
    /// # Errors
    /// If the database cannot be read.
    pub fn check_latest_checkpoint(&self) -> Result<Option<(Checkpoint, bool)>, EvidenceError> {
        let key = chain::public_key_text(&self.public_key);
        self.with(|c| {
            let row = c
                .query_row(
                    "SELECT seq, ts, head, signature FROM checkpoints ORDER BY seq DESC LIMIT 1",
                    [],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, Vec<u8>>(2)?,
                            r.get::<_, Vec<u8>>(3)?,
                        ))
                    },
                )
                .optional()?;
            let Some((seq, ts, head, signature)) = row else {
                return Ok(None);
            };
            let checkpoint = c.query_row(
                "SELECT seq, ts, head, reason, key_id, signature FROM checkpoints WHERE seq = ?1",
                [seq],
                |r| checkpoint_row(r, &key),
            )?;
            let record_hash: Option<Vec<u8>> = c
                .query_row("SELECT hash FROM records WHERE seq = ?1", [seq], |r| {
                    r.get(0)
                })
                .optional()?;
            let signed = <[u8; 32]>::try_from(head.as_slice())
                .is_ok_and(|h| chain::verify(&self.public_key, seq_of(seq), &h, ts, &signature));
            // A pruned record is no longer there to compare; the
            // signature alone then speaks for the checkpoint.
            let head_matches = record_hash.is_none_or(|h| h == head);
            Ok(Some((checkpoint, signed && head_matches)))
        })
    }

    /// Records after `after`, in order, at most `limit` of them, of the
    /// kinds a SIEM sink takes: flows (all, or only flagged and blocked
    /// ones) and gap records. Returns (seq, bytes) and the newest sequence
    /// number looked at (so a cursor can pass over records no one wants).
    ///
    /// # Errors
    /// If the database cannot be read.
    pub fn records_for_sink(
        &self,
        after: u64,
        limit: u32,
        flows: bool,
        violations: bool,
        gaps: bool,
    ) -> Result<(Vec<SinkRecord>, u64), EvidenceError> {
        let upto = u64::try_from(self.stats.head_seq.get()).unwrap_or(0);
        if upto <= after {
            return Ok((Vec::new(), after));
        }
        let Some(kinds) = sink_kinds(flows, violations, gaps) else {
            return Ok((Vec::new(), upto));
        };
        let sql = format!(
            "SELECT seq, body, dict FROM records WHERE seq > ?1 AND seq <= ?2 AND ({kinds}) ORDER BY seq LIMIT ?3"
        );
        self.with(|c| {
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt
                .query_map(
                    params![
                        i64::try_from(after).unwrap_or(i64::MAX),
                        i64::try_from(upto).unwrap_or(i64::MAX),
                        limit
                    ],
                    |r| {
                        let seq = seq_of(r.get(0)?);
                        let body = body(r, 1, 2, c, &self.dicts)
                            .map_or_else(|e| damaged(seq, &e), std::borrow::Cow::into_owned);
                        Ok((seq, body))
                    },
                )?
                .collect::<Result<Vec<_>, _>>()?;
            // A full page ends at its last record; a short one covers
            // everything up to `upto`.
            let reached = if rows.len() >= limit as usize {
                rows.last().map_or(upto, |r| r.0)
            } else {
                upto
            };
            Ok((rows, reached))
        })
    }

    /// How many records after `after`, up to `upto`, a sink taking these
    /// kinds would send; and, with `nth`, the sequence number of the
    /// `nth` of them (0-based), if there are that many.
    ///
    /// # Errors
    /// If the database cannot be read.
    pub fn count_for_sink(
        &self,
        after: u64,
        upto: u64,
        (flows, violations, gaps): (bool, bool, bool),
        nth: Option<u64>,
    ) -> Result<(u64, Option<u64>), EvidenceError> {
        let Some(kinds) = sink_kinds(flows, violations, gaps) else {
            return Ok((0, None));
        };
        let (a, u) = (
            i64::try_from(after).unwrap_or(i64::MAX),
            i64::try_from(upto).unwrap_or(i64::MAX),
        );
        self.with(|c| {
            let count: i64 = c.query_row(
                &format!("SELECT count(*) FROM records WHERE seq > ?1 AND seq <= ?2 AND ({kinds})"),
                params![a, u],
                |r| r.get(0),
            )?;
            let at = match nth {
                None => None,
                Some(n) => c
                    .query_row(
                        &format!(
                            "SELECT seq FROM records WHERE seq > ?1 AND seq <= ?2 AND ({kinds}) ORDER BY seq LIMIT 1 OFFSET ?3"
                        ),
                        params![a, u, i64::try_from(n).unwrap_or(i64::MAX)],
                        |r| r.get::<_, i64>(0),
                    )
                    .optional()?
                    .map(seq_of),
            };
            Ok((u64::try_from(count).unwrap_or(0), at))
        })
    }

    /// Checkpoints signed over records after `after` up to `upto`, oldest
    /// first.
    ///
    /// # Errors
    /// If the database cannot be read.
    pub fn checkpoints_between(
        &self,
        after: u64,
        upto: u64,
    ) -> Result<Vec<Checkpoint>, EvidenceError> {
        let key = chain::public_key_text(&self.public_key);
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT seq, ts, head, reason, key_id, signature FROM checkpoints WHERE seq > ?1 AND seq <= ?2 ORDER BY seq",
            )?;
            Ok(stmt
                .query_map(
                    params![
                        i64::try_from(after).unwrap_or(i64::MAX),
                        i64::try_from(upto).unwrap_or(i64::MAX)
                    ],
                    |r| checkpoint_row(r, &key),
                )?
                .collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// The oldest sequence number the store still holds (`None`: empty).
    ///
    /// # Errors
    /// If the database cannot be read.
    pub fn first_seq(&self) -> Result<Option<u64>, EvidenceError> {
        self.with(|c| {
            Ok(c.query_row("SELECT min(seq) FROM records", [], |r| {
                r.get::<_, Option<i64>>(0)
            })?
            .map(seq_of))
        })
    }

    /// The newest sequence number committed.
    #[must_use]
    pub fn head_seq(&self) -> u64 {
        u64::try_from(self.stats.head_seq.get()).unwrap_or(0)
    }

    /// Every policy version, newest first.
    ///
    /// # Errors
    /// If the database cannot be read.
    pub fn policies(&self) -> Result<Vec<PolicyVersion>, EvidenceError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT hash, loaded_ts, first_seq, last_seq, source, text FROM policies ORDER BY last_seq DESC",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(PolicyVersion {
                    hash: r.get(0)?,
                    loaded_at: ts(r.get(1)?),
                    first_seq: seq_of(r.get(2)?),
                    last_seq: seq_of(r.get(3)?),
                    source: r.get(4)?,
                    text: r.get(5)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Can the store take writes (for `/readyz`)?
    #[must_use]
    pub fn writable(&self) -> bool {
        self.stats
            .writable
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn seq_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn ts(ns: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_nanosecond(i128::from(ns)).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

fn ns(t: jiff::Timestamp) -> i64 {
    i64::try_from(t.as_nanosecond()).unwrap_or(if t.as_nanosecond() < 0 {
        i64::MIN
    } else {
        i64::MAX
    })
}

/// A record's canonical bytes from columns `at` (body) and `dict_at` of
/// `r`.
///
/// # Errors
/// If the stored bytes do not decode: what was wrong, to be named with the
/// record.
pub(crate) fn body<'r>(
    r: &'r Row<'_>,
    at: usize,
    dict_at: usize,
    c: &Connection,
    dicts: &Dicts,
) -> Result<std::borrow::Cow<'r, [u8]>, String> {
    r.get_ref(at).map_err(|e| e.to_string())?;
    let dict: Option<i64> = r.get(dict_at).map_err(|e| e.to_string())?;
    dicts.decode(c, dict, raw(r, at))
}

/// The bytes of column `at` as stored (empty if it is not a blob or text).
pub(crate) fn raw<'r>(r: &'r Row<'_>, at: usize) -> &'r [u8] {
    match r.get_ref(at) {
        Ok(rusqlite::types::ValueRef::Blob(b) | rusqlite::types::ValueRef::Text(b)) => b,
        _ => &[],
    }
}

fn stored(
    r: &Row<'_>,
    c: &Connection,
    dicts: &Dicts,
) -> rusqlite::Result<Result<StoredRecord, EvidenceError>> {
    let seq: i64 = r.get(0)?;
    let hash: Vec<u8> = r.get(1)?;
    let body = match body(r, 2, 3, c, dicts) {
        Ok(b) => b.into_owned(),
        Err(e) => {
            return Ok(Err(EvidenceError::Invalid(format!(
                "record {seq}: {e} (run `residency evidence verify`)"
            ))));
        }
    };
    Ok(String::from_utf8(body)
        .map_err(|_| {
            EvidenceError::Invalid(format!(
                "record {seq} is not UTF-8 (run `residency evidence verify`)"
            ))
        })
        .and_then(|s| {
            RawValue::from_string(s).map_err(|e| {
                EvidenceError::Invalid(format!(
                    "record {seq} is not JSON ({e}); run `residency evidence verify`"
                ))
            })
        })
        .map(|record| StoredRecord {
            seq: seq_of(seq),
            hash: chain::hex(&hash),
            record,
            totals: None,
        }))
}

fn checkpoint_row(r: &Row<'_>, key: &str) -> rusqlite::Result<Checkpoint> {
    use base64::Engine as _;
    let head: Vec<u8> = r.get(2)?;
    let sig: Vec<u8> = r.get(5)?;
    Ok(Checkpoint {
        seq: seq_of(r.get(0)?),
        time: ts(r.get(1)?),
        head: chain::hex(&head),
        reason: r.get(3)?,
        key_id: r.get(4)?,
        signature: base64::engine::general_purpose::STANDARD.encode(sig),
        public_key: key.to_owned(),
    })
}

/// A record for a SIEM sink: its sequence number and bytes.
pub type SinkRecord = (u64, Vec<u8>);

/// What a sink is given for a record that cannot be read back (damage,
/// which `evidence verify` also reports): a gap record naming it, so the
/// SIEM hears of the hole instead of nothing.
fn damaged(seq: u64, why: &str) -> Vec<u8> {
    tracing::error!("record {seq} cannot be read back: {why}; run `residency evidence verify`");
    let note = EvidenceGap {
        reason: EvidenceGap::DAMAGED_RECORD.to_owned(),
        after_seq: None,
        after: None,
        seq: Some(seq),
        ..EvidenceGap::default()
    }
    .record(format!(
        "record {seq} of the evidence chain cannot be read back ({why}); run `residency evidence verify`"
    ));
    let mut line = Vec::new();
    let _ = residency_record::encode_line(&note, &mut line);
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    line
}

/// The records a sink takes, as an SQL condition (`None`: none).
///
/// The kinds are the record crate's own names (constants, never input),
/// so a new kind of gap is sent to every sink that takes gaps.
fn sink_kinds(flows: bool, violations: bool, gaps: bool) -> Option<String> {
    use residency_common::Verdict;
    use residency_record::{index::FLOW, verdict_str};
    let mut kinds = Vec::new();
    if flows {
        kinds.push(format!("kind = '{FLOW}'"));
    } else if violations {
        kinds.push(format!(
            "(kind = '{FLOW}' AND verdict IN ('{}', '{}'))",
            verdict_str(Verdict::Flagged),
            verdict_str(Verdict::Blocked)
        ));
    }
    if gaps {
        kinds.push(gap_kinds());
    }
    (!kinds.is_empty()).then(|| kinds.join(" OR "))
}

/// The gap records ([`residency_record::Lifecycle::is_gap`]) as an SQL
/// condition on `kind`. The partial index `records_gaps` is made with the
/// same text, so that a query with it reads only the gaps.
pub(crate) fn gap_kinds() -> String {
    use residency_record::Lifecycle;
    let names: Vec<String> = Lifecycle::ALL
        .into_iter()
        .filter(|a| a.is_gap())
        .map(|a| format!("'{a}'"))
        .collect();
    format!("kind IN ({})", names.join(", "))
}

/// SQL conditions and their parameters, built up filter by filter.
#[derive(Default)]
struct Conditions {
    sql: Vec<String>,
    params: Vec<Box<dyn ToSql>>,
}

impl Conditions {
    fn add(&mut self, sql: &str, value: impl ToSql + 'static) {
        self.params.push(Box::new(value));
        self.sql
            .push(sql.replace('?', &format!("?{}", self.params.len())));
    }

    fn clause(&self) -> String {
        if self.sql.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.sql.join(" AND "))
        }
    }
}

fn flows(
    c: &Connection,
    dicts: &Dicts,
    f: &Filter,
    page: &Page,
    indexed: u64,
) -> Result<PageOf<StoredRecord>, EvidenceError> {
    let mut w = Conditions::default();
    // With a tenant, the tenant index leads (it holds the tenant's seqs in
    // order, with the country); the columns and the record are joined by
    // primary key.
    let from = if let Some(t) = &f.tenant {
        w.add("t.tenant = ?", t.clone());
        if let Some(country) = &f.country {
            w.add("t.country = ?", country.clone());
        }
        "ix.tenants t CROSS JOIN ix.cols c ON c.seq = t.seq CROSS JOIN main.records r ON r.seq = t.seq"
    } else {
        if let Some(country) = &f.country {
            w.add("c.country = ?", country.clone());
        }
        "ix.cols c CROSS JOIN main.records r ON r.seq = c.seq"
    };
    let seq_col = if f.tenant.is_some() { "t.seq" } else { "c.seq" };
    // Only what the indexer has covered: the same answer on every page.
    w.add(
        &format!("{seq_col} <= ?"),
        i64::try_from(indexed).unwrap_or(i64::MAX),
    );
    common(&mut w, f);
    if let Some(cursor) = page.cursor {
        let cursor = i64::try_from(cursor).unwrap_or(i64::MAX);
        match page.order {
            Order::Desc => w.add(&format!("{seq_col} < ?"), cursor),
            Order::Asc => w.add(&format!("{seq_col} > ?"), cursor),
        }
    }
    let dir = match page.order {
        Order::Desc => "DESC",
        Order::Asc => "ASC",
    };
    let limit = page.limit.clamp(1, MAX_PAGE);
    let sql = format!(
        "SELECT r.seq, r.hash, r.body, r.dict FROM {from}{} ORDER BY {seq_col} {dir} LIMIT {}",
        w.clause(),
        limit + 1
    );
    let mut stmt = c.prepare_cached(&sql)?;
    let params: Vec<&dyn ToSql> = w.params.iter().map(AsRef::as_ref).collect();
    let mut items = stmt
        .query_map(params.as_slice(), |r| stored(r, c, dicts))?
        .collect::<Result<Result<Vec<_>, _>, _>>()??;
    let next = paginate(&mut items, limit, |r| r.seq);
    attach_totals(c, &mut items)?;
    Ok(PageOf { items, next })
}

/// The totals of each followed flow on a page, by its `residency.flow.id`.
fn attach_totals(c: &Connection, items: &mut [StoredRecord]) -> Result<(), EvidenceError> {
    #[derive(serde::Deserialize)]
    struct Doc<'a> {
        #[serde(borrow)]
        residency: Option<Res<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Res<'a> {
        #[serde(borrow)]
        flow: Option<Id<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Id<'a> {
        #[serde(borrow)]
        id: std::borrow::Cow<'a, str>,
    }
    let mut stmt = c.prepare_cached(
        "SELECT bytes_out, bytes_in, packets_out, packets_in, calls, ended, last_seq, last_ts
         FROM flow_totals WHERE flow_id = ?1",
    )?;
    for item in items {
        let Ok(doc) = serde_json::from_str::<Doc<'_>>(item.record.get()) else {
            continue;
        };
        let Some(id) = doc.residency.and_then(|r| r.flow).map(|f| f.id) else {
            continue;
        };
        item.totals = stmt
            .query_row([id.as_ref()], |r| {
                Ok(FlowTotals {
                    flow_id: id.clone().into_owned(),
                    bytes_out: seq_of(r.get(0)?),
                    bytes_in: seq_of(r.get(1)?),
                    packets_out: seq_of(r.get(2)?),
                    packets_in: seq_of(r.get(3)?),
                    calls: seq_of(r.get(4)?),
                    ended: r.get::<_, i64>(5)? != 0,
                    last_seq: seq_of(r.get(6)?),
                    updated: ts(r.get(7)?),
                })
            })
            .optional()?;
    }
    Ok(())
}

/// Filters on the indexed columns (alias `c`) other than tenant and
/// country.
fn common(w: &mut Conditions, f: &Filter) {
    if let Some(from) = f.from {
        w.add("c.ts >= ?", ns(from));
    }
    if let Some(to) = f.to {
        w.add("c.ts < ?", ns(to));
    }
    if let Some(v) = &f.workload {
        w.add("c.workload = ?", v.clone());
    }
    if let Some(v) = &f.role {
        w.add("c.role = ?", v.clone());
    }
    if let Some(v) = &f.verdict {
        w.add("c.verdict = ?", v.clone());
    }
    if let Some(v) = &f.dst_ip {
        w.add("c.dst_ip = ?", v.to_string());
    }
    if let Some(v) = &f.dst_name {
        w.add("c.dst_name = ?", v.clone());
    }
    if let Some(v) = &f.namespace {
        w.add("c.namespace = ?", v.clone());
    }
    if let Some(v) = &f.pod {
        w.add("c.pod = ?", v.clone());
    }
}

/// Drops the look-ahead item and returns the cursor for the next page.
fn paginate<T>(items: &mut Vec<T>, limit: u32, key: impl Fn(&T) -> u64) -> Option<u64> {
    let limit = limit as usize;
    if items.len() > limit {
        items.truncate(limit);
        items.last().map(key)
    } else {
        None
    }
}

const VIOLATION_COLUMNS: &str =
    "id, state, verdict, workload, role, tenants, country, dst_ip, dst_port, dst_name, rule, basis,
     count, first_seq, last_seq, first_ts, last_ts, aware_ts,
     ack_ts, ack_by, ack_note, ack_seq, resolved_ts, resolved_by, resolved_note, resolved_seq,
     namespace, pod";

fn violation_row(r: &Row<'_>) -> rusqlite::Result<Violation> {
    let state: String = r.get(1)?;
    let tenants: Option<String> = r.get(5)?;
    let aware = ts(r.get(17)?);
    let transition = |at: usize| -> rusqlite::Result<Option<Transition>> {
        let t: Option<i64> = r.get(at)?;
        Ok(match t {
            None => None,
            Some(t) => Some(Transition {
                at: ts(t),
                by: r.get::<_, Option<String>>(at + 1)?.unwrap_or_default(),
                note: r.get::<_, Option<String>>(at + 2)?.unwrap_or_default(),
                seq: seq_of(r.get::<_, Option<i64>>(at + 3)?.unwrap_or(0)),
            }),
        })
    };
    Ok(Violation {
        id: r.get(0)?,
        state: ViolationState::parse(&state).unwrap_or(ViolationState::Open),
        verdict: r.get(2)?,
        workload: r.get(3)?,
        role: r.get(4)?,
        namespace: r.get(26)?,
        pod: r.get(27)?,
        tenants: tenants
            .map(|t| t.split(',').map(str::to_owned).collect())
            .unwrap_or_default(),
        destination: Target {
            country: r.get(6)?,
            ip: r.get(7)?,
            port: r.get(8)?,
            name: r.get(9)?,
        },
        rule: r.get(10)?,
        transfer_basis: r.get(11)?,
        count: seq_of(r.get(12)?),
        first_seq: seq_of(r.get(13)?),
        last_seq: seq_of(r.get(14)?),
        first_seen: ts(r.get(15)?),
        last_seen: ts(r.get(16)?),
        nis2: nis2(aware),
        acknowledged: transition(18)?,
        resolved: transition(22)?,
    })
}

/// NIS2 Art. 23(4): early warning within 24 hours of becoming aware,
/// notification within 72 hours, final report within one month.
fn nis2(aware: jiff::Timestamp) -> Nis2 {
    let utc = aware.to_zoned(jiff::tz::TimeZone::UTC);
    let plus = |span: jiff::Span| utc.checked_add(span).map_or(aware, |z| z.timestamp());
    Nis2 {
        aware_at: aware,
        early_warning_due: plus(jiff::Span::new().hours(24)),
        notification_due: plus(jiff::Span::new().hours(72)),
        // Art. 23(4)(d): within one month after the incident notification,
        // itself due within 72 hours of awareness.
        final_report_due: plus(jiff::Span::new().hours(72).months(1)),
    }
}

/// One violation by id, on any connection (the writer uses it too).
///
/// # Errors
/// If the database cannot be read.
pub fn violation_by_id(c: &Connection, id: i64) -> Result<Option<Violation>, EvidenceError> {
    Ok(c.query_row(
        &format!("SELECT {VIOLATION_COLUMNS} FROM violations WHERE id = ?1"),
        [id],
        violation_row,
    )
    .optional()?)
}

fn violations(
    c: &Connection,
    f: &ViolationFilter,
    page: &Page,
) -> Result<PageOf<Violation>, EvidenceError> {
    let mut w = Conditions::default();
    if let Some(s) = f.state {
        w.add("state = ?", s.as_str().to_owned());
    }
    let r = &f.records;
    if let Some(t) = &r.tenant {
        w.add(
            "instr(',' || tenants || ',', ',' || ? || ',') > 0",
            t.clone(),
        );
    }
    if let Some(v) = &r.country {
        w.add("country = ?", v.clone());
    }
    if let Some(v) = r.from {
        w.add("last_ts >= ?", ns(v));
    }
    if let Some(v) = r.to {
        w.add("first_ts < ?", ns(v));
    }
    if let Some(v) = &r.workload {
        w.add("workload = ?", v.clone());
    }
    if let Some(v) = &r.role {
        w.add("role = ?", v.clone());
    }
    if let Some(v) = &r.verdict {
        w.add("verdict = ?", v.clone());
    }
    if let Some(v) = &r.dst_ip {
        w.add("dst_ip = ?", v.to_string());
    }
    if let Some(v) = &r.dst_name {
        w.add("dst_name = ?", v.clone());
    }
    if let Some(v) = &r.namespace {
        w.add("namespace = ?", v.clone());
    }
    if let Some(v) = &r.pod {
        w.add("pod = ?", v.clone());
    }
    if let Some(cursor) = page.cursor {
        let cursor = i64::try_from(cursor).unwrap_or(i64::MAX);
        match page.order {
            Order::Desc => w.add("id < ?", cursor),
            Order::Asc => w.add("id > ?", cursor),
        }
    }
    let dir = match page.order {
        Order::Desc => "DESC",
        Order::Asc => "ASC",
    };
    let limit = page.limit.clamp(1, MAX_PAGE);
    let sql = format!(
        "SELECT {VIOLATION_COLUMNS} FROM violations{} ORDER BY id {dir} LIMIT {}",
        w.clause(),
        limit + 1
    );
    let mut stmt = c.prepare_cached(&sql)?;
    let params: Vec<&dyn ToSql> = w.params.iter().map(AsRef::as_ref).collect();
    let mut items = stmt
        .query_map(params.as_slice(), violation_row)?
        .collect::<Result<Vec<_>, _>>()?;
    let next = paginate(&mut items, limit, |v| seq_of(v.id));
    Ok(PageOf { items, next })
}

const NS_PER_DAY: i64 = 86_400 * 1_000_000_000;

fn transfers(c: &Connection, f: &Filter) -> Result<Vec<TransferRow>, EvidenceError> {
    let mut w = Conditions::default();
    if let Some(v) = f.from {
        w.add("day >= ?", ns(v).div_euclid(NS_PER_DAY));
    }
    if let Some(v) = f.to {
        // `to` is exclusive: the day holding its last nanosecond.
        w.add("day <= ?", (ns(v) - 1).div_euclid(NS_PER_DAY));
    }
    if let Some(v) = &f.tenant {
        w.add("tenant = ?", v.clone());
    }
    if let Some(v) = &f.role {
        w.add("role = ?", v.clone());
    }
    if let Some(v) = &f.country {
        w.add("country = ?", v.clone());
    }
    if let Some(v) = &f.verdict {
        let col = match v.as_str() {
            "allowed" => "allowed",
            "flagged" => "flagged",
            _ => "blocked",
        };
        w.sql.push(format!("{col} > 0"));
    }
    if let Some(v) = &f.provider {
        let v = if v == UNLISTED {
            String::new()
        } else {
            v.clone()
        };
        w.add("provider = ?", v);
    }
    if let Some(v) = &f.namespace {
        w.add("namespace = ?", v.clone());
    }
    let sql = format!(
        "SELECT tenant, role, country, basis, sum(allowed), sum(flagged), sum(blocked), min(first_ts), max(last_ts), provider, service, namespace, sum(bytes_out), sum(bytes_in)
         FROM transfers{} GROUP BY tenant, role, country, basis, provider, service, namespace
         ORDER BY tenant, role, country, basis, provider, service, namespace",
        w.clause()
    );
    let mut stmt = c.prepare_cached(&sql)?;
    let params: Vec<&dyn ToSql> = w.params.iter().map(AsRef::as_ref).collect();
    let rows = stmt.query_map(params.as_slice(), |r| {
        let some = |s: String| (!s.is_empty()).then_some(s);
        let allowed = seq_of(r.get(4)?);
        let flagged = seq_of(r.get(5)?);
        let blocked = seq_of(r.get(6)?);
        Ok(TransferRow {
            tenant: some(r.get(0)?),
            role: some(r.get(1)?),
            country: some(r.get(2)?),
            transfer_basis: some(r.get(3)?).unwrap_or_else(|| "none".to_owned()),
            provider: some(r.get(9)?).unwrap_or_else(|| UNLISTED.to_owned()),
            service: some(r.get(10)?),
            namespace: some(r.get(11)?),
            flows: allowed + flagged + blocked,
            bytes_out: seq_of(r.get(12)?),
            bytes_in: seq_of(r.get(13)?),
            allowed,
            flagged,
            blocked,
            first_seen: ts(r.get(7)?),
            last_seen: ts(r.get(8)?),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Opens a store read-only for `verify` or export, outside a daemon.
///
/// # Errors
/// If the file is missing or not a store.
pub fn open_read_only(path: &Path) -> Result<Connection, EvidenceError> {
    if !path.exists() {
        return Err(EvidenceError::Open {
            path: path.to_owned(),
            message: "no such file".into(),
        });
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.execute_batch("PRAGMA busy_timeout = 5000;")?;
    let format: Option<i64> = conn
        .query_row("SELECT value FROM meta WHERE key = 'format'", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(|e| EvidenceError::Open {
            path: path.to_owned(),
            message: format!("not a residency evidence store: {e}"),
        })?;
    // Format 1 (bodies never compressed) is read as it is: an archived
    // store verifies without a daemon upgrading it first.
    if !matches!(format, Some(1..=schema::FORMAT)) {
        return Err(EvidenceError::Open {
            path: path.to_owned(),
            message: format!(
                "not a residency evidence store of format 1 to {} (found {format:?})",
                schema::FORMAT
            ),
        });
    }
    Ok(conn)
}
