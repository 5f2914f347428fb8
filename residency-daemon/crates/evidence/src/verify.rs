//! `residency evidence verify`: re-reads every record, recomputes the
//! chain, re-derives the indexed columns, and checks every checkpoint's
//! signature and head. It names the first record whose bytes, order or
//! chain do not match, and every checkpoint that fails.
//!
//! The same [`Verifier`] checks a store and an export bundle.

use std::{
    collections::BTreeMap,
    io::Read,
    path::Path,
    time::{Duration, Instant},
};

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use residency_record::{Index, Lifecycle, RecordView};

use crate::{EvidenceError, chain, chain::Hash, query::open_read_only};

use rebuilt::Rebuilt;

mod last;
mod rebuilt;
pub use last::{LAST_VERIFY, LastVerify};

/// At most this many faults are listed (the first is what matters).
const MAX_FAULTS: usize = 50;

/// One thing that does not match.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Fault {
    /// The record (or checkpoint) concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    pub what: String,
}

/// What verification found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub records: u64,
    /// Bytes of record bodies hashed.
    pub bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<u64>,
    /// The chain starts after this record (pruned before it; 0: from the
    /// beginning).
    pub base_seq: u64,
    pub checkpoints: u64,
    pub checkpoints_valid: u64,
    /// The newest checkpoint that verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_signed_seq: Option<u64>,
    /// Records after the newest valid checkpoint: chained, but not yet
    /// covered by a signature.
    pub unsigned_tail: u64,
    /// Where the public key came from.
    pub key_source: String,
    pub faults: Vec<Fault>,
    /// Faults beyond those listed.
    pub more_faults: u64,
    /// Remarks that are not faults (a missing index file, say).
    pub notes: Vec<String>,
    #[serde(skip)]
    pub elapsed: Duration,
}

impl Report {
    #[must_use]
    pub fn ok(&self) -> bool {
        self.faults.is_empty()
    }

    /// Megabytes of records hashed.
    #[must_use]
    pub fn mb(&self) -> f64 {
        #[expect(clippy::cast_precision_loss, reason = "a size for people")]
        let mb = self.bytes as f64 / 1e6;
        mb
    }

    /// Hashing speed, MB/s.
    #[must_use]
    pub fn mb_per_s(&self) -> f64 {
        #[expect(clippy::cast_precision_loss, reason = "a rate for people")]
        let mb = self.bytes as f64 / 1e6;
        mb / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A checkpoint as read back.
#[derive(Debug, Clone)]
pub struct SignedHead {
    pub seq: u64,
    pub time_ns: i64,
    pub head: Hash,
    pub signature: Vec<u8>,
}

/// Checks records one by one, in order.
pub struct Verifier {
    key: VerifyingKey,
    expected: u64,
    prev: Hash,
    checkpoints: BTreeMap<u64, SignedHead>,
    report: Report,
    /// The newest `evidence-pruned` record's claim (through seq, hash).
    pruned_claim: Option<(u64, String)>,
    base_hash: Hash,
    notes: Vec<String>,
    /// Chain heads known from elsewhere (a SIEM's copy of a checkpoint):
    /// (seq, hash, seen).
    pins: Vec<(u64, Hash, bool)>,
}

impl Verifier {
    /// Starts after record `base_seq` with hash `base_hash`.
    #[must_use]
    pub fn new(
        key: VerifyingKey,
        key_source: String,
        base_seq: u64,
        base_hash: Hash,
        checkpoints: Vec<SignedHead>,
    ) -> Self {
        let n = checkpoints.len() as u64;
        Verifier {
            key,
            expected: base_seq + 1,
            prev: base_hash,
            checkpoints: checkpoints.into_iter().map(|c| (c.seq, c)).collect(),
            report: Report {
                records: 0,
                bytes: 0,
                first_seq: None,
                last_seq: None,
                base_seq,
                checkpoints: n,
                checkpoints_valid: 0,
                last_signed_seq: None,
                unsigned_tail: 0,
                key_source,
                faults: Vec::new(),
                more_faults: 0,
                notes: Vec::new(),
                elapsed: Duration::ZERO,
            },
            pruned_claim: None,
            base_hash,
            notes: Vec::new(),
            pins: Vec::new(),
        }
    }

    fn fault(&mut self, seq: Option<u64>, what: String) {
        if self.report.faults.len() < MAX_FAULTS {
            self.report.faults.push(Fault { seq, what });
        } else {
            self.report.more_faults += 1;
        }
    }

    /// Checks the next record. `stored_hash` is the hash kept beside it;
    /// `columns`, when the source has them, the indexed columns as stored.
    pub fn record(&mut self, seq: u64, body: &[u8], stored_hash: &[u8], columns: Option<&Columns>) {
        self.chain(seq, body, stored_hash);
        if let Some(columns) = columns {
            let found = content(seq, body, columns);
            self.absorb(found);
        }
    }

    /// Takes what [`content`] found (possibly on another thread).
    pub fn absorb(&mut self, found: Content) {
        for (seq, what) in found.faults {
            self.fault(Some(seq), what);
        }
        if found.pruned.is_some() {
            self.pruned_claim = found.pruned;
        }
    }

    /// Pins the chain hash of record `seq` to `head`, as a checkpoint kept
    /// outside the host says it was.
    pub fn pin(&mut self, seq: u64, head: Hash) {
        self.pins.push((seq, head, false));
    }

    /// The chain part of checking a record: order, hash, checkpoints.
    pub fn chain(&mut self, seq: u64, body: &[u8], stored_hash: &[u8]) {
        if self.report.first_seq.is_none() {
            self.report.first_seq = Some(seq);
        }
        if seq != self.expected {
            let what = if seq > self.expected {
                format!(
                    "records {}..{} are missing (deleted?): the chain jumps from {} to {seq}",
                    self.expected,
                    seq,
                    self.expected.saturating_sub(1)
                )
            } else {
                format!(
                    "record {seq} is out of order (expected {}): records were reordered or duplicated",
                    self.expected
                )
            };
            self.fault(Some(seq), what);
        }
        let computed = chain::link(&self.prev, seq, body);
        if stored_hash != computed {
            let what = if stored_hash.len() == 32 {
                format!(
                    "record {seq}: its bytes or its place in the chain do not match its hash (the record was edited, or one before it was removed or reordered)"
                )
            } else {
                format!("record {seq}: the stored hash is malformed")
            };
            self.fault(Some(seq), what);
        }
        let mut pinned = Vec::new();
        for (s, head, seen) in &mut self.pins {
            if *s == seq {
                *seen = true;
                if *head != computed {
                    pinned.push(seq);
                }
            }
        }
        for s in pinned {
            self.fault(
                Some(s),
                format!("record {s}: the chain hash differs from the pinned checkpoint (the chain up to it was rewritten)"),
            );
        }
        if let Some(cp) = self.checkpoints.get(&seq).cloned() {
            self.checkpoint(&cp, &computed);
        }
        self.report.records += 1;
        self.report.bytes += body.len() as u64;
        self.report.last_seq = Some(seq);
        // Continue from what is stored, so that later, independent faults
        // are found too.
        self.prev = stored_hash.try_into().unwrap_or(computed);
        self.expected = seq + 1;
    }

    fn checkpoint(&mut self, cp: &SignedHead, computed: &Hash) {
        if cp.head != *computed {
            self.fault(
                Some(cp.seq),
                format!(
                    "checkpoint at record {}: the signed chain head does not match the records (the chain up to it was rewritten)",
                    cp.seq
                ),
            );
        } else if !chain::verify(&self.key, cp.seq, &cp.head, cp.time_ns, &cp.signature) {
            self.fault(
                Some(cp.seq),
                format!(
                    "checkpoint at record {}: the signature does not verify with the public key ({})",
                    cp.seq, self.report.key_source
                ),
            );
        } else {
            self.report.checkpoints_valid += 1;
            self.report.last_signed_seq = Some(cp.seq);
        }
    }

    /// Ends verification: checkpoints that matched no record, and the
    /// pruning claim.
    #[must_use]
    pub fn finish(mut self, started: Instant) -> Report {
        let last = self.report.last_seq.unwrap_or(self.report.base_seq);
        let orphans: Vec<u64> = self
            .checkpoints
            .keys()
            .copied()
            .filter(|&s| s > last || s <= self.report.base_seq)
            .collect();
        for s in orphans {
            let what = if s > last {
                format!(
                    "checkpoint at record {s} is beyond the last record ({last}): records were removed from the end"
                )
            } else {
                format!("checkpoint at record {s} refers to a pruned record")
            };
            self.fault(Some(s), what);
        }
        if self.report.base_seq > 0 {
            let base_hex = chain::hex(&self.base_hash);
            match &self.pruned_claim {
                Some((through, hash)) if *through == self.report.base_seq && *hash == base_hex => {}
                Some((through, _)) => {
                    let what = format!(
                        "the chain starts after record {}, but the newest pruning record says records up to {through} were pruned",
                        self.report.base_seq
                    );
                    self.fault(None, what);
                }
                None => {
                    let what = format!(
                        "the chain starts after record {} but no pruning record says why: records were removed from the start",
                        self.report.base_seq
                    );
                    self.fault(None, what);
                }
            }
        }
        self.report.unsigned_tail =
            last.saturating_sub(self.report.last_signed_seq.unwrap_or(self.report.base_seq));
        let missing: Vec<u64> = self
            .pins
            .iter()
            .filter(|(_, _, seen)| !seen)
            .map(|(s, _, _)| *s)
            .collect();
        for s in missing {
            self.fault(
                Some(s),
                format!("record {s}, pinned by a checkpoint kept elsewhere, is not in the chain: records were removed"),
            );
        }
        // The first fault is the earliest record's; faults about the store
        // as a whole come last.
        self.report
            .faults
            .sort_by_key(|f| f.seq.unwrap_or(u64::MAX));
        self.report.notes = self.notes;
        self.report.elapsed = started.elapsed();
        self.report
    }
}

/// What the stored columns of a record must be checked against.
pub enum Columns {
    /// The indexed columns as stored beside the record.
    Stored(Box<Index>),
    /// None stored (a bundle): only that the bytes are a record.
    None,
}

/// What checking a record's bytes found.
#[derive(Debug, Default)]
pub struct Content {
    pub faults: Vec<(u64, String)>,
    /// An `evidence-pruned` record's claim: (through seq, hash hex).
    pub pruned: Option<(u64, String)>,
}

impl Content {
    fn merge(&mut self, other: Content) {
        self.faults.extend(other.faults);
        if other.pruned.is_some() {
            self.pruned = other.pruned;
        }
    }
}

/// Checks a record's bytes: they parse as a record, and the stored columns
/// match them. Independent of the chain, so it can run on another thread.
#[must_use]
pub fn content(seq: u64, body: &[u8], columns: &Columns) -> Content {
    content_and_index(seq, body, columns).0
}

/// [`content`], and the columns the bytes give, for the derived tables.
fn content_and_index(seq: u64, body: &[u8], columns: &Columns) -> (Content, Option<Index>) {
    let mut out = Content::default();
    match Index::of(body) {
        Err(e) => {
            out.faults.push((seq, format!("record {seq}: {e}")));
            (out, None)
        }
        Ok(derived) => {
            if let Columns::Stored(stored) = columns
                && let Some(col) = differing_column(stored, &derived)
            {
                out.faults.push((
                    seq,
                    format!(
                        "record {seq}: the indexed column `{col}` does not match the record's bytes (edited to change what filters find)"
                    ),
                ));
            }
            if derived.lifecycle() == Some(Lifecycle::EvidencePruned)
                && let Ok(doc) = RecordView::parse(body)
                // (Both fields, as the store writes them: a pruning
                // record without them claims nothing.)
                && let Some(p) = doc.pruned().filter(|p| !p.through_hash.is_empty())
            {
                out.pruned = Some((p.through_seq, p.through_hash.clone()));
            }
            (out, Some(derived))
        }
    }
}

/// The first column that differs, by name.
fn differing_column(stored: &Index, derived: &Index) -> Option<&'static str> {
    if stored.ts != derived.ts {
        return Some("ts");
    }
    if stored.kind != derived.kind {
        return Some("kind");
    }
    if stored.verdict != derived.verdict {
        return Some("verdict");
    }
    if stored.workload != derived.workload {
        return Some("workload");
    }
    if stored.role != derived.role {
        return Some("role");
    }
    if stored.tenants != derived.tenants {
        return Some("tenants");
    }
    if stored.country != derived.country {
        return Some("country");
    }
    if stored.dst_ip != derived.dst_ip {
        return Some("dst_ip");
    }
    if stored.dst_name != derived.dst_name {
        return Some("dst_name");
    }
    if stored.basis != derived.basis {
        return Some("basis");
    }
    if stored.policy != derived.policy {
        return Some("policy");
    }
    if stored.namespace != derived.namespace {
        return Some("namespace");
    }
    if stored.pod != derived.pod {
        return Some("pod");
    }
    None
}

/// Where the public key for a store comes from: given, else the signing
/// key beside the store, else the key the store itself records (which
/// proves the records consistent with their checkpoints, not who signed).
///
/// # Errors
/// If none can be found.
pub fn store_key(
    dir: &Path,
    given: Option<VerifyingKey>,
    recorded: Option<&str>,
) -> Result<(VerifyingKey, String), EvidenceError> {
    if let Some(k) = given {
        return Ok((k, format!("given, key id {}", chain::key_id(&k))));
    }
    let key_file = crate::key_path(dir);
    if let Ok(mut f) = std::fs::File::open(&key_file) {
        let mut seed = [0u8; 32];
        if f.read_exact(&mut seed).is_ok() {
            let k = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
            return Ok((
                k,
                format!("{}, key id {}", key_file.display(), chain::key_id(&k)),
            ));
        }
    }
    if let Some(text) = recorded {
        let k = chain::parse_public_key(text).map_err(EvidenceError::Invalid)?;
        return Ok((
            k,
            format!(
                "recorded in the store itself, key id {} (this proves consistency, not origin: pass --public-key with the key published by /v1/checkpoints/latest or kept by your SIEM)",
                chain::key_id(&k)
            ),
        ));
    }
    Err(EvidenceError::Invalid(
        "no public key: pass --public-key".into(),
    ))
}

/// Verifies the store in `dir` (or the database file `path`).
///
/// # Errors
/// If the store cannot be read at all (missing, not a store, corrupt
/// beyond `SQLite`'s reading). Faults in the records are in the report.
#[expect(clippy::too_many_lines, reason = "one pass over the store, in order")]
pub fn store(
    path: &Path,
    key: Option<VerifyingKey>,
    pins: &[(u64, Hash)],
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Report, EvidenceError> {
    let started = Instant::now();
    let (dir, db) = if path.is_dir() {
        (path.to_owned(), crate::db_path(path))
    } else {
        (
            path.parent().map(Path::to_path_buf).unwrap_or_default(),
            path.to_owned(),
        )
    };
    let conn = open_read_only(&db)?;
    // One read snapshot of both files, the index's taken first: a store in
    // use keeps changing under a verify, and the chain is always ahead of
    // its index, so every record the index covers is in the snapshot.
    let ix_path = crate::index_path(&dir);
    let attached = if ix_path.exists() {
        Some(conn.execute("ATTACH DATABASE ?1 AS ix", [ix_path.to_string_lossy()]))
    } else {
        None
    };
    conn.execute_batch("BEGIN")?;
    let ix_through = attached.map(|a| {
        a.and_then(|_| {
            use rusqlite::OptionalExtension as _;
            conn.query_row(
                "SELECT value FROM ix.ix_meta WHERE key = 'through'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .optional()
        })
    });
    let meta = |k: &str| -> Result<Option<rusqlite::types::Value>, EvidenceError> {
        use rusqlite::OptionalExtension as _;
        Ok(conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [k], |r| r.get(0))
            .optional()?)
    };
    let base_seq = match meta("base_seq")? {
        Some(rusqlite::types::Value::Integer(i)) => u64::try_from(i).unwrap_or(0),
        _ => 0,
    };
    let base_hash: Hash = match meta("base_hash")? {
        Some(rusqlite::types::Value::Blob(b)) => b.try_into().unwrap_or(chain::GENESIS),
        _ => chain::GENESIS,
    };
    let recorded = match meta("public_key")? {
        Some(rusqlite::types::Value::Text(t)) => Some(t),
        _ => None,
    };
    let (key, source) = store_key(&dir, key, recorded.as_deref())?;
    let mut checkpoints = Vec::new();
    {
        let mut stmt =
            conn.prepare("SELECT seq, ts, head, signature FROM checkpoints ORDER BY seq")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, Vec<u8>>(3)?,
            ))
        })?;
        for row in rows {
            let (seq, ts, head, signature) = row?;
            checkpoints.push(SignedHead {
                seq: u64::try_from(seq).unwrap_or(0),
                time_ns: ts,
                head: head.try_into().unwrap_or([0xff; 32]),
                signature,
            });
        }
    }
    let total: i64 = conn.query_row("SELECT count(*) FROM records", [], |r| r.get(0))?;
    let total = u64::try_from(total).unwrap_or(0);
    let mut v = Verifier::new(key, source, base_seq, base_hash, checkpoints);
    for (seq, head) in pins {
        v.pin(*seq, *head);
    }
    let closed_cleanly = matches!(meta("clean")?, Some(rusqlite::types::Value::Integer(1)));
    let index = IndexCheck::open(&ix_path, ix_through, &mut v);
    // Format 1 stores have no `dict` column: every body is raw.
    let dict = if conn.prepare("SELECT dict FROM records LIMIT 0").is_ok() {
        "dict"
    } else {
        "NULL"
    };
    // Stores of format 3 or earlier have no pod columns: none is named.
    let pods = crate::schema::pod_columns(&conn, "records")?;
    let mut stmt = conn.prepare(&format!(
        "SELECT seq, ts, kind, verdict, workload, role, tenants, country, dst_ip, dst_name, basis, policy, body, hash, {dict}, {pods}
         FROM records ORDER BY seq"
    ))?;
    let ix_pods = index
        .as_ref()
        .map(|_| crate::schema::pod_columns(&conn, "ix.cols"))
        .transpose()?;
    let mut cols = ix_pods
        .map(|pods| {
            conn.prepare(&format!(
                "SELECT seq, ts, verdict, workload, role, country, dst_ip, dst_name, {pods} FROM ix.cols ORDER BY seq",
            ))
        })
        .transpose()?;
    let mut cols_rows = cols.as_mut().map(|c| c.query([])).transpose()?;
    let mut pending_col: Option<(u64, Index)> = None;
    let through = index.as_ref().map_or(0, |i| i.through);
    let mut rows = stmt.query([])?;
    let mut last_progress = Instant::now();
    let dicts = crate::codec::Dicts::default();
    // Two threads: this one reads rows, follows the chain and walks the
    // flow index alongside (all in sequence order); the other parses each
    // record's bytes, checks its columns, and sums the tenant index entries
    // the records imply. Measured: one thread reached 92 MB/s over 10 M
    // records, short of the 100 MB/s goal.
    let (to_worker, from_reader) = std::sync::mpsc::sync_channel::<Vec<(u64, Vec<u8>, Columns)>>(4);
    let (found, tenant_sum, rebuilt) = std::thread::scope(
        |scope| -> Result<(Content, TenantSum, Rebuilt), EvidenceError> {
            let worker = scope.spawn(move || {
                let mut found = Content::default();
                let mut sum = TenantSum::default();
                let mut rebuilt = Rebuilt::default();
                for batch in from_reader {
                    for (seq, body, columns) in batch {
                        if let Columns::Stored(c) = &columns
                            && c.is_flow()
                            && seq <= through
                        {
                            for t in &c.tenants {
                                sum.add(t, seq, c.country.as_deref());
                            }
                        }
                        let (c, derived) = content_and_index(seq, &body, &columns);
                        found.merge(c);
                        if let Some(derived) = derived {
                            rebuilt.observe(seq, &derived, &body);
                        }
                    }
                }
                (found, sum, rebuilt)
            });
            let mut batch = Vec::with_capacity(1024);
            let mut batch_bytes = 0;
            while let Some(r) = rows.next()? {
                let seq = u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0);
                let tenants: Option<String> = r.get(6)?;
                let columns = Index {
                    ts: r.get(1)?,
                    kind: r.get(2)?,
                    verdict: r.get(3)?,
                    workload: r.get(4)?,
                    role: r.get(5)?,
                    tenants: tenants
                        .as_deref()
                        .map(|t| t.split(',').map(str::to_owned).collect())
                        .unwrap_or_default(),
                    country: r.get(7)?,
                    dst_ip: r.get(8)?,
                    dst_name: r.get(9)?,
                    basis: r.get(10)?,
                    policy: r.get(11)?,
                    namespace: r.get(15)?,
                    pod: r.get(16)?,
                    ..Index::default()
                };
                if let Some(cols_rows) = cols_rows.as_mut() {
                    walk_index(&mut v, cols_rows, &mut pending_col, seq, &columns, through)?;
                }
                let bytes = |i| -> Result<&[u8], EvidenceError> {
                    match r.get_ref(i)? {
                        rusqlite::types::ValueRef::Blob(b) | rusqlite::types::ValueRef::Text(b) => {
                            Ok(b)
                        }
                        _ => Ok(&[]),
                    }
                };
                let hash = bytes(13)?;
                let body = match crate::query::body(r, 12, 14, &conn, &dicts) {
                    Ok(b) => b,
                    Err(e) => {
                        v.fault(
                            Some(seq),
                            format!("record {seq}: its stored bytes cannot be read back: {e}"),
                        );
                        std::borrow::Cow::Borrowed(bytes(12)?)
                    }
                };
                v.chain(seq, &body, hash);
                batch_bytes += body.len();
                batch.push((seq, body.into_owned(), Columns::Stored(Box::new(columns))));
                // Bounded by count and by bytes: bodies are up to 1 MiB.
                if batch.len() == 1024 || batch_bytes >= 16 << 20 {
                    batch_bytes = 0;
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(1024));
                    if to_worker.send(full).is_err() {
                        break;
                    }
                }
                if last_progress.elapsed() >= Duration::from_secs(1) {
                    last_progress = Instant::now();
                    progress(v.report.records, total);
                }
            }
            let _ = to_worker.send(batch);
            drop(to_worker);
            worker
                .join()
                .map_err(|_| EvidenceError::Panicked("the verify worker"))
        },
    )?;
    v.absorb(found);
    // Index entries left over point at no flow record.
    if let Some(cols_rows) = cols_rows.as_mut() {
        if let Some((seq, _)) = pending_col.take() {
            v.fault(
                Some(seq),
                format!("record {seq} is in the index but missing from the chain: deleted"),
            );
        } else if let Some(r) = cols_rows.next()? {
            let seq = u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0);
            v.fault(
                Some(seq),
                format!("record {seq} is in the index but missing from the chain: deleted"),
            );
        }
    }
    drop(cols_rows);
    // The derived tables can be rebuilt only from a whole chain: pruned
    // records took their share of the counts with them.
    if base_seq == 0 {
        rebuilt.compare(&conn, &mut v)?;
    } else {
        v.notes.push(format!(
            "records up to {base_seq} were pruned, so violations, transfer counts and policy versions were not rebuilt from the chain"
        ));
    }
    let index_covers = index.as_ref().map(|i| i.through);
    if let Some(index) = index {
        index.check_tenants(&conn, &mut v, &tenant_sum)?;
    }
    progress(v.report.records, total);
    let mut report = v.finish(started);
    // A store closed cleanly ends with a signed checkpoint on its last
    // record. Records after the newest checkpoint, or checkpoints removed
    // with the records they covered, show up here. (A store still in use,
    // or one whose daemon was killed, has an unsigned tail; only a copy of
    // a checkpoint kept elsewhere, given with --checkpoint, pins that.)
    if closed_cleanly && report.last_seq.is_some() && report.last_signed_seq != report.last_seq {
        let what = format!(
            "the store was closed cleanly, so its last record ({}) must be signed, but the newest valid checkpoint is at {}: records were added after it, or checkpoints removed",
            report.last_seq.unwrap_or(0),
            report
                .last_signed_seq
                .map_or_else(|| "none".to_owned(), |s| s.to_string())
        );
        report.faults.push(Fault {
            seq: report.last_signed_seq,
            what,
        });
    }
    // A clean close waits for the indexer, so the index then covers every
    // record; one that stops short hides the rest from filters.
    if closed_cleanly
        && let (Some(covers), Some(last)) = (index_covers, report.last_seq)
        && covers < last
    {
        report.faults.push(Fault {
            seq: Some(covers + 1),
            what: format!(
                "the store was closed cleanly but its index covers records only up to {covers} of {last}: filters would hide the rest"
            ),
        });
    }
    Ok(report)
}

/// An order-independent sum over the tenant index's entries (tenant, seq,
/// country): SHA-256 of each, added lane by lane. The records' sum and the
/// index's sum match only if they hold the same entries; computing it needs
/// no sort, so the index (keyed by tenant) can be read in its own order.
#[derive(Debug, Default, PartialEq, Eq)]
struct TenantSum {
    lanes: [u64; 4],
    count: u64,
}

impl TenantSum {
    fn add(&mut self, tenant: &str, seq: u64, country: Option<&str>) {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(tenant.as_bytes());
        h.update([0]);
        h.update(seq.to_be_bytes());
        h.update(country.unwrap_or("").as_bytes());
        let d = h.finalize();
        for (lane, chunk) in self.lanes.iter_mut().zip(d.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            *lane = lane.wrapping_add(u64::from_le_bytes(b));
        }
        self.count += 1;
    }
}

/// Advances the flow index (`ix.cols`, in sequence order) to `seq` and
/// checks its entry against the record's stored columns.
fn walk_index(
    v: &mut Verifier,
    rows: &mut rusqlite::Rows<'_>,
    pending: &mut Option<(u64, Index)>,
    seq: u64,
    record: &Index,
    through: u64,
) -> Result<(), EvidenceError> {
    loop {
        if pending.is_none() {
            *pending = match rows.next()? {
                None => None,
                Some(r) => Some((
                    u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                    Index {
                        ts: r.get(1)?,
                        verdict: r.get(2)?,
                        workload: r.get(3)?,
                        role: r.get(4)?,
                        country: r.get(5)?,
                        dst_ip: r.get(6)?,
                        dst_name: r.get(7)?,
                        namespace: r.get(8)?,
                        pod: r.get(9)?,
                        ..Index::default()
                    },
                )),
            };
        }
        let expect = record.is_flow() && seq <= through;
        match pending.take() {
            Some((s, _)) if s < seq => {
                v.fault(
                    Some(s),
                    format!("record {s} is in the index but missing from the chain: deleted"),
                );
            }
            Some((s, entry)) if s == seq => {
                let same = expect
                    && entry.ts == record.ts
                    && entry.verdict == record.verdict
                    && entry.workload == record.workload
                    && entry.role == record.role
                    && entry.country == record.country
                    && entry.dst_ip == record.dst_ip
                    && entry.dst_name == record.dst_name
                    && entry.namespace == record.namespace
                    && entry.pod == record.pod;
                if !same {
                    v.fault(
                        Some(seq),
                        format!(
                            "record {seq}: its index entry does not match the record (edited to change what filters find)"
                        ),
                    );
                }
                return Ok(());
            }
            other => {
                *pending = other;
                if expect {
                    v.fault(
                        Some(seq),
                        format!("record {seq} is missing from the index: filters would hide it"),
                    );
                }
                return Ok(());
            }
        }
    }
}

/// The index file, if it can be checked.
struct IndexCheck {
    through: u64,
}

impl IndexCheck {
    /// The index file's coverage; `None` (with a note) when it is missing
    /// or unreadable, which is not a fault: it is rebuilt at start.
    fn open(
        index: &Path,
        through: Option<rusqlite::Result<Option<i64>>>,
        v: &mut Verifier,
    ) -> Option<Self> {
        match through {
            None => {
                v.notes.push(format!(
                    "{} is missing; the daemon rebuilds it from the chain at start",
                    index.display()
                ));
                None
            }
            Some(Ok(through)) => Some(IndexCheck {
                through: u64::try_from(through.unwrap_or(0)).unwrap_or(0),
            }),
            Some(Err(e)) => {
                v.notes.push(format!(
                    "{} cannot be read ({e}); the daemon rebuilds it from the chain at start",
                    index.display()
                ));
                None
            }
        }
    }

    /// The tenant index must hold exactly the (tenant, seq, country) entries
    /// the records imply; otherwise a tenant filter hides records.
    fn check_tenants(
        &self,
        conn: &rusqlite::Connection,
        v: &mut Verifier,
        want: &TenantSum,
    ) -> Result<(), EvidenceError> {
        let mut got = TenantSum::default();
        let mut stmt =
            conn.prepare("SELECT tenant, seq, country FROM ix.tenants WHERE seq <= ?1")?;
        let mut rows = stmt.query([i64::try_from(self.through).unwrap_or(i64::MAX)])?;
        while let Some(r) = rows.next()? {
            let tenant = r.get_ref(0)?.as_str().unwrap_or_default();
            let seq = u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0);
            let country = r.get_ref(2)?.as_str_or_null().ok().flatten();
            got.add(tenant, seq, country);
        }
        if got == *want {
            return Ok(());
        }
        // Something differs: name the first entry that does (slow, and
        // only on failure).
        let wrong: Option<i64> = conn.query_row(
            "SELECT min(t.seq) FROM ix.tenants t LEFT JOIN records r ON r.seq = t.seq
             WHERE r.seq IS NULL OR r.country IS NOT t.country
                OR instr(',' || r.tenants || ',', ',' || t.tenant || ',') = 0",
            [],
            |r| r.get(0),
        )?;
        match wrong {
            Some(seq) => {
                let seq = u64::try_from(seq).unwrap_or(0);
                let exists: bool = conn.query_row(
                    "SELECT count(*) > 0 FROM records WHERE seq = ?1",
                    [i64::try_from(seq).unwrap_or(0)],
                    |r| r.get(0),
                )?;
                v.fault(
                    Some(seq),
                    if exists {
                        format!("record {seq}: its tenant index entry does not match the record")
                    } else {
                        format!(
                            "record {seq} is in the tenant index but missing from the chain: deleted"
                        )
                    },
                );
            }
            None => v.fault(
                None,
                format!(
                    "the tenant index holds {} entries where the records up to {} imply {}: tenant filters would hide records",
                    got.count, self.through, want.count
                ),
            ),
        }
        Ok(())
    }
}

/// The manifest of an export bundle.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub exported_at: jiff::Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<jiff::Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<jiff::Timestamp>,
    pub first_seq: u64,
    pub last_seq: u64,
    pub records: u64,
    /// The record before the first one: its seq and chain hash (hex), from
    /// which the chain is recomputed.
    pub base_seq: u64,
    pub base_hash: String,
    pub public_key: String,
    pub key_id: String,
}

/// The format name in a bundle's manifest.
pub const BUNDLE_FORMAT: &str = "residency-evidence-bundle-1";

#[derive(Deserialize)]
struct BundleRecord<'a> {
    seq: u64,
    hash: &'a str,
    #[serde(borrow)]
    record: &'a serde_json::value::RawValue,
}

#[derive(Deserialize)]
struct BundleCheckpoint {
    seq: u64,
    head: String,
    time_ns: i64,
    signature: String,
}

/// Verifies an export bundle (a tar from `/v1/evidence/export`).
///
/// # Errors
/// If the file is not a bundle. Faults in its records are in the report.
#[expect(clippy::too_many_lines, reason = "read the archive, then check it")]
pub fn bundle(path: &Path, key: Option<VerifyingKey>) -> Result<Report, EvidenceError> {
    use base64::Engine as _;
    let started = Instant::now();
    let bad = |m: String| EvidenceError::Invalid(format!("{}: {m}", path.display()));
    let file = std::fs::File::open(path)?;
    let mut archive = tar::Archive::new(file);
    let mut manifest = None;
    let mut records = None;
    let mut checkpoints = None;
    for entry in archive
        .entries()
        .map_err(|e| bad(format!("not a bundle: {e}")))?
    {
        let mut entry = entry.map_err(|e| bad(format!("not a bundle: {e}")))?;
        let name = entry
            .path()
            .map_err(|e| bad(e.to_string()))?
            .to_string_lossy()
            .into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        match name.rsplit('/').next().unwrap_or_default() {
            "manifest.json" => manifest = Some(data),
            "records.jsonl" => records = Some(data),
            "checkpoints.jsonl" => checkpoints = Some(data),
            _ => {}
        }
    }
    let manifest: Manifest = serde_json::from_slice(
        &manifest.ok_or_else(|| bad("no manifest.json: not a residency evidence bundle".into()))?,
    )
    .map_err(|e| bad(format!("manifest.json: {e}")))?;
    if manifest.format != BUNDLE_FORMAT {
        return Err(bad(format!(
            "format {} is not {BUNDLE_FORMAT}",
            manifest.format
        )));
    }
    let records = records.ok_or_else(|| bad("no records.jsonl".into()))?;
    let (key, source) = if let Some(k) = key {
        (k, format!("given, key id {}", chain::key_id(&k)))
    } else {
        let k = chain::parse_public_key(&manifest.public_key).map_err(bad)?;
        (
            k,
            format!(
                "the bundle's own manifest, key id {} (compare it with the key the operator published, or pass --public-key)",
                chain::key_id(&k)
            ),
        )
    };
    let base_hash = chain::unhex::<32>(&manifest.base_hash)
        .ok_or_else(|| bad("manifest.json: base_hash is not 32 bytes of hex".into()))?;
    let mut heads = Vec::new();
    for (i, line) in checkpoints
        .unwrap_or_default()
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        let c: BundleCheckpoint = serde_json::from_slice(line)
            .map_err(|e| bad(format!("checkpoints.jsonl line {}: {e}", i + 1)))?;
        heads.push(SignedHead {
            seq: c.seq,
            time_ns: c.time_ns,
            head: chain::unhex::<32>(&c.head).unwrap_or([0xff; 32]),
            signature: base64::engine::general_purpose::STANDARD
                .decode(&c.signature)
                .unwrap_or_default(),
        });
    }
    let mut v = Verifier::new(key, source, manifest.base_seq, base_hash, heads);
    // A bundle starts wherever the export began: no pruning claim needed.
    v.report.base_seq = 0;
    v.expected = manifest.base_seq + 1;
    for (i, line) in records
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        let r: BundleRecord<'_> = match serde_json::from_slice(line) {
            Ok(r) => r,
            Err(e) => {
                v.fault(
                    None,
                    format!("records.jsonl line {}: not a record: {e}", i + 1),
                );
                continue;
            }
        };
        let hash = chain::unhex::<32>(r.hash).map_or_else(Vec::new, |h| h.to_vec());
        v.record(
            r.seq,
            r.record.get().as_bytes(),
            &hash,
            Some(&Columns::None),
        );
    }
    let last = v.report.last_seq;
    if v.report.first_seq != Some(manifest.first_seq) || last != Some(manifest.last_seq) {
        let what = format!(
            "the manifest says records {}..={} but the bundle holds {:?}..={:?}",
            manifest.first_seq, manifest.last_seq, v.report.first_seq, last
        );
        v.fault(None, what);
    }
    if v.report.records != manifest.records {
        let what = format!(
            "the manifest lists {} records but the bundle holds {}",
            manifest.records, v.report.records
        );
        v.fault(None, what);
    }
    let mut report = v.finish(started);
    report.base_seq = manifest.base_seq;
    // An export ends on a signed checkpoint: without one nothing in the
    // bundle is bound to the key, and records could have been cut off its
    // end.
    if report.last_seq.is_none() || report.last_signed_seq != report.last_seq {
        report.faults.push(Fault {
            seq: report.last_seq,
            what: format!(
                "the bundle's last record ({}) is not covered by a valid signed checkpoint: nothing binds it to the key",
                report.last_seq.map_or_else(|| "none".to_owned(), |s| s.to_string())
            ),
        });
    }
    Ok(report)
}
