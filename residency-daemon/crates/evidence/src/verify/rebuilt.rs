//! The tables the API serves besides the records (violations with their
//! lifecycle, the per-day transfer counts and bytes, each flow's newest
//! totals, the policy versions), rebuilt from the chain as the writer
//! builds them and compared with what the store holds.

use std::collections::HashMap;

use residency_record::{Index, Lifecycle, RecordView};

use super::Verifier;
use crate::{EvidenceError, schema::counts_row};

/// Day, tenant, role, country, basis, then the columns later formats
/// added: provider, service, namespace.
type TransferKey = (i64, String, String, String, String, [String; 3]);

fn transfer_hash(
    day: i64,
    tenant: &str,
    role: &str,
    country: &str,
    basis: &str,
    added: [&str; 3],
) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (day, tenant, role, country, basis, added).hash(&mut h);
    h.finish()
}

/// What identifies an open violation: workload, namespace, verdict,
/// address, port, rule (as the writer keys them).
type ViolationKey = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<u16>,
    Option<String>,
);

/// The tables the API serves besides the records, rebuilt from the chain
/// as the writer builds them: violations (with their lifecycle), the
/// per-day transfer counts, and the policy versions. Compared with the
/// stored tables, an edit to what the API reports (a violation marked
/// resolved, a transfer moved from blocked to allowed, a policy's text
/// changed) is found.
#[derive(Default)]
pub(super) struct Rebuilt {
    /// Violations by id (ids are assigned in order, from 1).
    violations: Vec<RebuiltViolation>,
    open: HashMap<ViolationKey, usize>,
    /// By a hash of (day, tenant, role, country, basis), so that counting
    /// a record allocates nothing; the key is kept for the comparison.
    transfers: HashMap<u64, (TransferKey, [i64; 7])>,
    /// Each followed flow's newest totals, as `flow_totals` keeps them.
    flow_totals: HashMap<String, FlowTotalsRow>,
    policies: HashMap<String, (i64, i64, Option<String>, Option<String>)>,
}

/// A `flow_totals` row: first and last seq, last ts, bytes out and in,
/// packets out and in, calls, ended.
type FlowTotalsRow = [i64; 9];

#[derive(Debug, Clone, PartialEq, Eq)]
struct RebuiltViolation {
    state: &'static str,
    count: i64,
    first_seq: i64,
    last_seq: i64,
    ack_seq: Option<i64>,
    resolved_seq: Option<i64>,
}

impl Rebuilt {
    pub(super) fn observe(&mut self, seq: u64, i: &Index, body: &[u8]) {
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        if i.is_flow() {
            self.flow(seq, i);
            return;
        }
        if let (Some(id), Some(t)) = (&i.flow_id, &i.totals) {
            self.transfer(i);
            let first = self.flow_totals.get(id).map_or(seq, |r| r[0]);
            let ended = self.flow_totals.get(id).map_or(0, |r| r[8]);
            let [bytes_out, bytes_in, packets_out, packets_in, calls] = counts_row(&t.totals);
            self.flow_totals.insert(
                id.clone(),
                [
                    first,
                    seq,
                    i.ts,
                    bytes_out,
                    bytes_in,
                    packets_out,
                    packets_in,
                    calls,
                    ended.max(i64::from(t.ended)),
                ],
            );
            return;
        }
        // Only these change what is rebuilt; the rest are not parsed.
        let Some(
            action @ (Lifecycle::ViolationAcknowledged
            | Lifecycle::ViolationResolved
            | Lifecycle::PolicyLoaded),
        ) = i.lifecycle()
        else {
            return;
        };
        let Ok(doc) = RecordView::parse(body) else {
            return;
        };
        match action {
            Lifecycle::ViolationAcknowledged | Lifecycle::ViolationResolved => {
                let Some(change) = doc.violation_change() else {
                    return;
                };
                let id = change.id;
                let Some(v) = usize::try_from(id - 1)
                    .ok()
                    .and_then(|i| self.violations.get_mut(i))
                else {
                    return;
                };
                if action == Lifecycle::ViolationAcknowledged {
                    v.state = "acknowledged";
                    v.ack_seq = Some(seq);
                } else {
                    v.state = "resolved";
                    v.resolved_seq = Some(seq);
                    let idx = usize::try_from(id - 1).unwrap_or(usize::MAX);
                    self.open.retain(|_, x| *x != idx);
                }
            }
            Lifecycle::PolicyLoaded => {
                if let Some((hash, source, text)) = doc.policy_loaded() {
                    let e = self.policies.entry(hash.to_owned()).or_insert((
                        seq,
                        seq,
                        source.map(str::to_owned),
                        text.map(str::to_owned),
                    ));
                    e.1 = seq;
                }
            }
            _ => {}
        }
    }

    fn flow(&mut self, seq: i64, i: &Index) {
        self.transfer(i);
        if !i.is_violation() {
            return;
        }
        let key = (
            i.workload.clone(),
            i.namespace.clone(),
            i.verdict.clone(),
            i.dst_ip.clone(),
            i.dst_port,
            i.rule.clone(),
        );
        if let Some(&v) = self.open.get(&key) {
            let v = &mut self.violations[v];
            v.count += 1;
            v.last_seq = v.last_seq.max(seq);
        } else {
            self.violations.push(RebuiltViolation {
                state: "open",
                count: 1,
                first_seq: seq,
                last_seq: seq,
                ack_seq: None,
                resolved_seq: None,
            });
            self.open.insert(key, self.violations.len() - 1);
        }
    }

    fn transfer(&mut self, i: &Index) {
        const NS_PER_DAY: i64 = 86_400 * 1_000_000_000;
        let none = [String::new()];
        let tenants: &[String] = if i.tenants.is_empty() {
            &none
        } else {
            &i.tenants
        };
        let day = i.ts.div_euclid(NS_PER_DAY);
        let role = i.role.as_deref().unwrap_or_default();
        let country = i.country.as_deref().unwrap_or_default();
        let basis = i.basis.as_deref().unwrap_or_default();
        let added = [
            i.provider.as_deref().unwrap_or_default(),
            i.service.as_deref().unwrap_or_default(),
            i.namespace.as_deref().unwrap_or_default(),
        ];
        for t in tenants {
            let h = transfer_hash(day, t, role, country, basis, added);
            let (_, c) = self.transfers.entry(h).or_insert_with(|| {
                (
                    (
                        day,
                        t.clone(),
                        role.to_owned(),
                        country.to_owned(),
                        basis.to_owned(),
                        added.map(str::to_owned),
                    ),
                    [0, 0, 0, i.ts, i.ts, 0, 0],
                )
            });
            if let Some(t) = &i.totals {
                let [out, inn, ..] = counts_row(&t.delta);
                c[5] = c[5].saturating_add(out);
                c[6] = c[6].saturating_add(inn);
            } else {
                match i.verdict.as_deref() {
                    Some("blocked") => c[2] += 1,
                    Some("flagged") => c[1] += 1,
                    _ => c[0] += 1,
                }
            }
            c[3] = c[3].min(i.ts);
            c[4] = c[4].max(i.ts);
        }
    }

    /// Compares each flow's totals with `flow_totals` (which a store of
    /// format 4 or earlier, read as it is, does not have: then no flow may
    /// have totals).
    fn compare_flow_totals(
        &self,
        conn: &rusqlite::Connection,
        v: &mut Verifier,
    ) -> Result<(), EvidenceError> {
        let exists = conn
            .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'flow_totals'")?
            .exists([])?;
        let mut stored: HashMap<String, FlowTotalsRow> = HashMap::new();
        if exists {
            let mut stmt = conn.prepare(
                "SELECT flow_id, first_seq, last_seq, last_ts, bytes_out, bytes_in, packets_out, packets_in, calls, ended FROM flow_totals",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let mut row = [0i64; 9];
                for (k, x) in row.iter_mut().enumerate() {
                    *x = r.get(k + 1)?;
                }
                stored.insert(r.get(0)?, row);
            }
        }
        let mut ids: Vec<&String> = self.flow_totals.keys().collect();
        ids.sort();
        for id in ids {
            if stored.get(id) != self.flow_totals.get(id) {
                v.fault(
                    None,
                    format!(
                        "the totals of flow {id} in the flow_totals table do not match its last totals record in the chain"
                    ),
                );
                return Ok(());
            }
        }
        if stored.len() != self.flow_totals.len() {
            v.fault(
                None,
                format!(
                    "the flow_totals table holds {} flows where the chain has totals for {}",
                    stored.len(),
                    self.flow_totals.len()
                ),
            );
        }
        Ok(())
    }

    /// Compares with the stored tables; faults name the first difference
    /// of each.
    #[expect(clippy::too_many_lines, reason = "three tables, each compared in turn")]
    pub(super) fn compare(
        &self,
        conn: &rusqlite::Connection,
        v: &mut Verifier,
    ) -> Result<(), EvidenceError> {
        // Violations.
        let mut stmt = conn.prepare(
            "SELECT id, state, count, first_seq, last_seq, ack_seq, resolved_seq FROM violations ORDER BY id",
        )?;
        let stored: Vec<(i64, RebuiltViolation)> = stmt
            .query_map([], |r| {
                let state: String = r.get(1)?;
                Ok((
                    r.get(0)?,
                    RebuiltViolation {
                        state: match state.as_str() {
                            "open" => "open",
                            "acknowledged" => "acknowledged",
                            "resolved" => "resolved",
                            _ => "?",
                        },
                        count: r.get(2)?,
                        first_seq: r.get(3)?,
                        last_seq: r.get(4)?,
                        ack_seq: r.get(5)?,
                        resolved_seq: r.get(6)?,
                    },
                ))
            })?
            .collect::<Result<_, _>>()?;
        let mut bad = None;
        for (n, want) in self.violations.iter().enumerate() {
            let id = i64::try_from(n + 1).unwrap_or(0);
            match stored.iter().find(|(i, _)| *i == id) {
                Some((_, got)) if got == want => {}
                Some(_) => {
                    bad = Some(format!(
                        "violation {id} in the violations table does not match the chain (its state, count or transitions were edited)"
                    ));
                    break;
                }
                None => {
                    bad = Some(format!(
                        "violation {id} is in the chain but missing from the violations table"
                    ));
                    break;
                }
            }
        }
        if bad.is_none() && stored.len() != self.violations.len() {
            bad = Some(format!(
                "the violations table holds {} violations where the chain has {}",
                stored.len(),
                self.violations.len()
            ));
        }
        if let Some(what) = bad {
            v.fault(None, what);
        }
        // Transfers.
        let mut stmt = conn.prepare(&format!(
            "SELECT day, tenant, role, country, basis, {}, allowed, flagged, blocked, first_ts, last_ts, {} FROM transfers",
            crate::schema::transfer_added_columns(conn)?,
            crate::schema::transfer_byte_columns(conn)?
        ))?;
        let mut rows = stmt.query([])?;
        let mut n = 0usize;
        let mut bad = None;
        while let Some(r) = rows.next()? {
            n += 1;
            let key: TransferKey = (
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                [r.get(5)?, r.get(6)?, r.get(7)?],
            );
            let got = [
                r.get(8)?,
                r.get(9)?,
                r.get(10)?,
                r.get(11)?,
                r.get(12)?,
                r.get(13)?,
                r.get(14)?,
            ];
            let h = transfer_hash(
                key.0,
                &key.1,
                &key.2,
                &key.3,
                &key.4,
                [&key.5[0], &key.5[1], &key.5[2]],
            );
            if self.transfers.get(&h) != Some(&(key.clone(), got)) {
                bad = Some(format!(
                    "the transfer counts (or bytes) for tenant \"{}\", country \"{}\", basis \"{}\", namespace \"{}\" do not match the chain",
                    key.1, key.3, key.4, key.5[2]
                ));
                break;
            }
        }
        if bad.is_none() && n != self.transfers.len() {
            bad = Some(format!(
                "the transfer summary holds {n} rows where the chain implies {}",
                self.transfers.len()
            ));
        }
        if let Some(what) = bad {
            v.fault(None, what);
        }
        self.compare_flow_totals(conn, v)?;
        // Policies.
        let mut stmt =
            conn.prepare("SELECT hash, first_seq, last_seq, source, text FROM policies")?;
        let mut rows = stmt.query([])?;
        let mut n = 0usize;
        while let Some(r) = rows.next()? {
            n += 1;
            let hash: String = r.get(0)?;
            let got = (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
            if self.policies.get(&hash) != Some(&got) {
                v.fault(
                    None,
                    format!("policy version {hash} in the policies table does not match its policy-loaded record"),
                );
                return Ok(());
            }
        }
        if n != self.policies.len() {
            v.fault(
                None,
                format!(
                    "the policies table holds {n} versions where the chain has {}",
                    self.policies.len()
                ),
            );
        }
        Ok(())
    }
}
