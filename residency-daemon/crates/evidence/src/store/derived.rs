//! The derived tables a batch of records updates in the chain's own
//! transaction: violations (opened, or counted on), the per-day
//! transfer counts and bytes, each followed flow's newest totals, and the
//! policy versions. `verify` rebuilds each from the records
//! (`verify/rebuilt.rs`) and compares.

use std::collections::HashMap;

use residency_record::{Index, RecordView};
use rusqlite::{Transaction, params};

use crate::{clock::now_ns, schema::counts_row};

const NS_PER_DAY: i64 = 86_400 * 1_000_000_000;

/// An open violation's identity: repeats of the same breach count up on
/// one violation until it is resolved. The Kubernetes namespace is part
/// of it (the same workload in two namespaces is two deployments, often
/// two tenants' or stages'); the pod is not (pods of one deployment come
/// and go, and each would open a violation of its own).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct ViolationKey {
    pub(super) workload: Option<String>,
    pub(super) namespace: Option<String>,
    pub(super) verdict: String,
    pub(super) dst_ip: Option<String>,
    pub(super) dst_port: Option<u16>,
    pub(super) rule: Option<String>,
}

impl ViolationKey {
    pub(super) fn of(i: &Index) -> Self {
        ViolationKey {
            workload: i.workload.clone(),
            namespace: i.namespace.clone(),
            verdict: i.verdict.clone().unwrap_or_default(),
            dst_ip: i.dst_ip.clone(),
            dst_port: i.dst_port,
            rule: i.rule.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct TransferKey {
    day: i64,
    tenant: String,
    role: String,
    country: String,
    basis: String,
    /// The catalog entry's provider and service; empty: none.
    provider: String,
    service: String,
    /// The Kubernetes namespace; empty: none.
    namespace: String,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct TransferCount {
    allowed: i64,
    flagged: i64,
    blocked: i64,
    first: i64,
    last: i64,
    bytes_out: i64,
    bytes_in: i64,
}

/// Opens a new violation with its first occurrence.
pub(super) fn open_violation(
    open: &mut HashMap<ViolationKey, i64>,
    tx: &Transaction<'_>,
    key: ViolationKey,
    seq: i64,
    index: &Index,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO violations (state, verdict, workload, role, tenants, country, dst_ip, dst_port, dst_name, rule, basis,
                                 count, first_seq, last_seq, first_ts, last_ts, aware_ts, namespace, pod)
         VALUES ('open', ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 1, ?11, ?11, ?12, ?12, ?13, ?14, ?15)",
    )?
    .execute(params![
        index.verdict,
        index.workload,
        index.role,
        index.tenants_column(),
        index.country,
        index.dst_ip,
        index.dst_port,
        index.dst_name,
        index.rule,
        index.basis,
        seq,
        index.ts,
        now_ns(),
        index.namespace,
        index.pod,
    ])?;
    open.insert(key, tx.last_insert_rowid());
    Ok(())
}

pub(super) fn count_transfer(transfers: &mut HashMap<TransferKey, TransferCount>, i: &Index) {
    let tenants: &[String] = if i.tenants.is_empty() {
        &[String::new()]
    } else {
        &i.tenants
    };
    for t in tenants {
        let key = TransferKey {
            day: i.ts.div_euclid(NS_PER_DAY),
            tenant: t.clone(),
            role: i.role.clone().unwrap_or_default(),
            country: i.country.clone().unwrap_or_default(),
            basis: i.basis.clone().unwrap_or_default(),
            provider: i.provider.clone().unwrap_or_default(),
            service: i.service.clone().unwrap_or_default(),
            namespace: i.namespace.clone().unwrap_or_default(),
        };
        let c = transfers.entry(key).or_insert(TransferCount {
            allowed: 0,
            flagged: 0,
            blocked: 0,
            first: i.ts,
            last: i.ts,
            bytes_out: 0,
            bytes_in: 0,
        });
        // A totals record adds the bytes its flow moved since the last
        // one; a decision counts once, by its verdict.
        if let Some(t) = &i.totals {
            let [out, inn, ..] = counts_row(&t.delta);
            c.bytes_out = c.bytes_out.saturating_add(out);
            c.bytes_in = c.bytes_in.saturating_add(inn);
        } else {
            match i.verdict.as_deref() {
                Some("blocked") => c.blocked += 1,
                Some("flagged") => c.flagged += 1,
                _ => c.allowed += 1,
            }
        }
        c.first = c.first.min(i.ts);
        c.last = c.last.max(i.ts);
    }
}

pub(super) fn upsert_transfers(
    tx: &Transaction<'_>,
    transfers: &HashMap<TransferKey, TransferCount>,
) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO transfers (day, tenant, role, country, basis, provider, service, namespace, allowed, flagged, blocked, first_ts, last_ts, bytes_out, bytes_in)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
         ON CONFLICT(day, tenant, role, country, basis, provider, service, namespace) DO UPDATE SET
           allowed = allowed + excluded.allowed,
           flagged = flagged + excluded.flagged,
           blocked = blocked + excluded.blocked,
           first_ts = min(first_ts, excluded.first_ts),
           last_ts = max(last_ts, excluded.last_ts),
           bytes_out = bytes_out + excluded.bytes_out,
           bytes_in = bytes_in + excluded.bytes_in",
    )?;
    for (k, c) in transfers {
        stmt.execute(params![
            k.day,
            k.tenant,
            k.role,
            k.country,
            k.basis,
            k.provider,
            k.service,
            k.namespace,
            c.allowed,
            c.flagged,
            c.blocked,
            c.first,
            c.last,
            c.bytes_out,
            c.bytes_in
        ])?;
    }
    Ok(())
}

/// Each flow's newest totals (they are cumulative, and come in order).
pub(super) fn upsert_flow_totals(
    tx: &Transaction<'_>,
    rows: &[(i64, Index)],
) -> rusqlite::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut stmt = tx.prepare_cached(
        "INSERT INTO flow_totals (flow_id, first_seq, last_seq, last_ts, bytes_out, bytes_in, packets_out, packets_in, calls, ended)
         VALUES (?1, ?2, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT(flow_id) DO UPDATE SET
           last_seq = excluded.last_seq,
           last_ts = excluded.last_ts,
           bytes_out = excluded.bytes_out,
           bytes_in = excluded.bytes_in,
           packets_out = excluded.packets_out,
           packets_in = excluded.packets_in,
           calls = excluded.calls,
           ended = max(ended, excluded.ended)",
    )?;
    for (seq, i) in rows {
        let (Some(id), Some(t)) = (&i.flow_id, &i.totals) else {
            continue;
        };
        let [bytes_out, bytes_in, packets_out, packets_in, calls] = counts_row(&t.totals);
        stmt.execute(params![
            id,
            seq,
            i.ts,
            bytes_out,
            bytes_in,
            packets_out,
            packets_in,
            calls,
            i64::from(t.ended),
        ])?;
    }
    Ok(())
}

pub(super) fn record_policy(
    tx: &Transaction<'_>,
    seq: i64,
    ts: i64,
    body: &[u8],
) -> rusqlite::Result<()> {
    let Ok(doc) = RecordView::parse(body) else {
        return Ok(());
    };
    let Some((hash, source, text)) = doc.policy_loaded() else {
        return Ok(());
    };
    tx.prepare_cached(
        "INSERT INTO policies (hash, first_seq, last_seq, loaded_ts, source, text) VALUES (?1, ?2, ?2, ?3, ?4, ?5)
         ON CONFLICT(hash) DO UPDATE SET last_seq = excluded.last_seq",
    )?
    .execute(params![hash, seq, ts, source, text])?;
    Ok(())
}
