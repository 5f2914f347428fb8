//! The export bundle: a tar archive an auditor verifies offline with
//! `residency evidence verify --bundle FILE`.
//!
//! It holds `manifest.json` (range, base hash, public key),
//! `records.jsonl` (`{"seq", "hash", "record"}` per line, the record's
//! canonical bytes verbatim), `checkpoints.jsonl`, `public-key.txt` and a
//! `README.txt`. The range is extended to the next signed checkpoint, so
//! that every record exported is covered by a signature when one exists.

use std::io::Write as _;

use rusqlite::{Connection, OptionalExtension as _};
use serde::Serialize;

use crate::{
    EvidenceError, chain,
    codec::Dicts,
    query::Reader,
    verify::{BUNDLE_FORMAT, Manifest},
};

/// The most records one export may hold; narrow the time range beyond.
pub const MAX_EXPORT_RECORDS: u64 = 1_000_000;

/// What an export held.
#[derive(Debug, Clone, Serialize)]
pub struct ExportSummary {
    pub first_seq: u64,
    pub last_seq: u64,
    pub records: u64,
    pub checkpoints: u64,
    pub bytes: u64,
}

const README: &str = "\
residency evidence bundle
=========================

This archive is an extract of a residency evidence store: every record
(connection decision, lifecycle event, gap, violation acknowledgement) in a
time range, in the exact bytes that were hash-chained when it was written,
with the Ed25519-signed checkpoints that cover them.

Files
  manifest.json      range, first/last sequence number, the chain hash of the
                     record before the first (base_hash), the public key
  records.jsonl      one record per line: {\"seq\", \"hash\", \"record\"}
  checkpoints.jsonl  signed checkpoints: {\"seq\", \"head\", \"time_ns\", \"signature\"}
  public-key.txt     the Ed25519 public key (base64) that signed them

How the chain is built
  hash(n) = SHA-256(\"residency-record-v1\\0\" || n (u64 big-endian)
                    || hash(n-1) || record bytes)
  A checkpoint signs \"residency-checkpoint-v1\\0\" || seq (u64 BE)
                    || hash(seq) || time_ns (i64 BE).

How to verify it offline
  residency evidence verify --bundle THIS_FILE.tar \\
      --public-key <key published by the operator or kept by your SIEM>

  The command recomputes every hash from base_hash, checks that sequence
  numbers are contiguous, and checks every checkpoint's signature and head.
  It names the first record that does not match and exits non-zero on any
  fault. Without --public-key it uses public-key.txt from this archive,
  which proves the bundle is consistent but not who signed it: compare the
  key with one obtained independently (GET /v1/checkpoints/latest on the
  host, or the checkpoints your SIEM received).
";

/// Writes a bundle of the records with event time in `[from, to)` to
/// `out`.
///
/// # Errors
/// If another export of this store is running, the store cannot be read,
/// the range is empty, or it holds more than
/// [`MAX_EXPORT_RECORDS`].
pub fn export(
    reader: &Reader,
    from: Option<jiff::Timestamp>,
    to: Option<jiff::Timestamp>,
    out: &mut Vec<u8>,
) -> Result<ExportSummary, EvidenceError> {
    let key = *reader.public_key();
    let _slot = reader.export_slot().ok_or(EvidenceError::ExportBusy)?;
    reader.with(|c| export_from(c, reader.dicts(), &key, from, to, out))
}

fn ns(t: jiff::Timestamp) -> i64 {
    i64::try_from(t.as_nanosecond()).unwrap_or(i64::MAX)
}

/// The first record at or after `at` (`first`), or the last before it.
///
/// The flow index finds a record near the edge by time; records are in
/// time order but for the jitter of a batch, so a short walk along the
/// chain from there finds the exact edge. Without flows near the edge,
/// the chain itself is searched.
fn edge(c: &Connection, at: i64, first: bool) -> rusqlite::Result<Option<i64>> {
    let anchor: Option<i64> = if first {
        c.query_row(
            "SELECT seq FROM ix.cols WHERE ts >= ?1 ORDER BY ts LIMIT 1",
            [at],
            |r| r.get(0),
        )
        .optional()?
    } else {
        c.query_row(
            "SELECT seq FROM ix.cols WHERE ts < ?1 ORDER BY ts DESC LIMIT 1",
            [at],
            |r| r.get(0),
        )
        .optional()?
    };
    let Some(mut edge) = anchor else {
        return if first {
            c.query_row("SELECT min(seq) FROM records WHERE ts >= ?1", [at], |r| {
                r.get(0)
            })
        } else {
            c.query_row("SELECT max(seq) FROM records WHERE ts < ?1", [at], |r| {
                r.get(0)
            })
        };
    };
    // Walk outwards while the neighbours are still inside the range.
    let sql = if first {
        "SELECT seq, ts FROM records WHERE seq < ?1 ORDER BY seq DESC LIMIT 4096"
    } else {
        "SELECT seq, ts FROM records WHERE seq > ?1 ORDER BY seq LIMIT 4096"
    };
    let mut stmt = c.prepare_cached(sql)?;
    let mut rows = stmt.query([edge])?;
    while let Some(r) = rows.next()? {
        let ts: i64 = r.get(1)?;
        let inside = if first { ts >= at } else { ts < at };
        if !inside {
            break;
        }
        edge = r.get(0)?;
    }
    Ok(Some(edge))
}

fn export_from(
    c: &Connection,
    dicts: &Dicts,
    key: &ed25519_dalek::VerifyingKey,
    from: Option<jiff::Timestamp>,
    to: Option<jiff::Timestamp>,
    out: &mut Vec<u8>,
) -> Result<ExportSummary, EvidenceError> {
    // A read transaction: one consistent snapshot while the writer goes on.
    c.execute_batch("BEGIN")?;
    let result = export_in(c, dicts, key, from, to, out);
    let _ = c.execute_batch("COMMIT");
    result
}

#[expect(clippy::too_many_lines, reason = "one archive, file by file")]
fn export_in(
    c: &Connection,
    dicts: &Dicts,
    key: &ed25519_dalek::VerifyingKey,
    from: Option<jiff::Timestamp>,
    to: Option<jiff::Timestamp>,
    out: &mut Vec<u8>,
) -> Result<ExportSummary, EvidenceError> {
    let first = match from {
        Some(f) => edge(c, ns(f), true)?,
        None => c.query_row("SELECT min(seq) FROM records", [], |r| r.get(0))?,
    };
    let last = match to {
        Some(t) => edge(c, ns(t), false)?,
        None => c.query_row("SELECT max(seq) FROM records", [], |r| r.get(0))?,
    };
    let (Some(first), Some(mut last)) = (first, last) else {
        return Err(EvidenceError::EmptyRange);
    };
    if last < first {
        return Err(EvidenceError::EmptyRange);
    }
    // Extend to the next checkpoint, so the last records are signed too.
    let next_cp: Option<i64> = c.query_row(
        "SELECT min(seq) FROM checkpoints WHERE seq >= ?1",
        [last],
        |r| r.get(0),
    )?;
    if let Some(cp) = next_cp {
        last = cp;
    }
    let count = u64::try_from(last - first + 1).unwrap_or(0);
    if count > MAX_EXPORT_RECORDS {
        return Err(EvidenceError::TooManyRecords {
            count,
            max: MAX_EXPORT_RECORDS,
        });
    }
    let base_seq = first - 1;
    let base_hash: Vec<u8> = if base_seq == 0 {
        chain::GENESIS.to_vec()
    } else {
        match c
            .query_row("SELECT hash FROM records WHERE seq = ?1", [base_seq], |r| {
                r.get(0)
            })
            .optional()?
        {
            Some(h) => h,
            None => c
                .query_row("SELECT value FROM meta WHERE key = 'base_hash'", [], |r| {
                    r.get(0)
                })
                .optional()?
                .unwrap_or_else(|| chain::GENESIS.to_vec()),
        }
    };

    let mut records = Vec::with_capacity(usize::try_from(count).unwrap_or(0) * 1024);
    let mut n = 0u64;
    {
        let mut stmt = c.prepare(
            "SELECT seq, hash, body, dict FROM records WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq",
        )?;
        let mut rows = stmt.query([first, last])?;
        while let Some(r) = rows.next()? {
            let seq: i64 = r.get(0)?;
            let hash: Vec<u8> = r.get(1)?;
            // Undecodable (damaged) bytes go out as stored, and
            // verification names the record.
            let body = crate::query::body(r, 2, 3, c, dicts)
                .unwrap_or_else(|_| std::borrow::Cow::Borrowed(crate::query::raw(r, 2)));
            let body = &body[..];
            write!(
                records,
                "{{\"seq\":{seq},\"hash\":\"{}\",\"record\":",
                chain::hex(&hash)
            )?;
            if serde_json::from_slice::<&serde_json::value::RawValue>(body).is_ok() {
                records.extend_from_slice(body);
            } else {
                // Not JSON (damaged): export it as a string so the bundle
                // stays readable and verification names the record.
                serde_json::to_writer(&mut records, &String::from_utf8_lossy(body))
                    .map_err(|e| EvidenceError::Invalid(e.to_string()))?;
            }
            records.extend_from_slice(b"}\n");
            n += 1;
        }
    }
    let mut checkpoints = Vec::new();
    let mut cps = 0u64;
    {
        use base64::Engine as _;
        let mut stmt = c.prepare(
            "SELECT seq, head, ts, signature, reason FROM checkpoints WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq",
        )?;
        let mut rows = stmt.query([first, last])?;
        while let Some(r) = rows.next()? {
            let head: Vec<u8> = r.get(1)?;
            let sig: Vec<u8> = r.get(3)?;
            let line = serde_json::json!({
                "seq": r.get::<_, i64>(0)?,
                "head": chain::hex(&head),
                "time_ns": r.get::<_, i64>(2)?,
                "signature": base64::engine::general_purpose::STANDARD.encode(sig),
                "reason": r.get::<_, String>(4)?,
            });
            serde_json::to_writer(&mut checkpoints, &line)
                .map_err(|e| EvidenceError::Invalid(e.to_string()))?;
            checkpoints.push(b'\n');
            cps += 1;
        }
    }
    let manifest = Manifest {
        format: BUNDLE_FORMAT.to_owned(),
        exported_at: jiff::Timestamp::now(),
        from,
        to,
        first_seq: u64::try_from(first).unwrap_or(0),
        last_seq: u64::try_from(last).unwrap_or(0),
        records: n,
        base_seq: u64::try_from(base_seq).unwrap_or(0),
        base_hash: chain::hex(&base_hash),
        public_key: chain::public_key_text(key),
        key_id: chain::key_id(key),
    };
    let manifest =
        serde_json::to_vec_pretty(&manifest).map_err(|e| EvidenceError::Invalid(e.to_string()))?;
    let start = out.len();
    {
        let mut tar = tar::Builder::new(&mut *out);
        let mtime = u64::try_from(jiff::Timestamp::now().as_second()).unwrap_or(0);
        let mut add = |name: &str, data: &[u8]| -> std::io::Result<()> {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(mtime);
            h.set_cksum();
            tar.append_data(&mut h, format!("residency-evidence/{name}"), data)
        };
        add("README.txt", README.as_bytes())?;
        add("manifest.json", &manifest)?;
        add("records.jsonl", &records)?;
        add("checkpoints.jsonl", &checkpoints)?;
        add(
            "public-key.txt",
            format!("{}\n", chain::public_key_text(key)).as_bytes(),
        )?;
        tar.finish()?;
    }
    Ok(ExportSummary {
        first_seq: u64::try_from(first).unwrap_or(0),
        last_seq: u64::try_from(last).unwrap_or(0),
        records: n,
        checkpoints: cps,
        bytes: (out.len() - start) as u64,
    })
}
