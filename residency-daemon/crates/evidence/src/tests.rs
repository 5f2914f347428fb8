//! The store against a real `SQLite` database in a temporary directory:
//! appends, queries, lifecycle, retention, export, and tampering of every
//! kind that `verify` must catch.

use std::{path::Path, time::Duration};

use rusqlite::Connection;

use crate::{
    Evidence, EvidenceConfig, Filter, Order, Page, ViolationState, bundle, chain,
    query::ViolationFilter,
    testing::{T0, flow, followed_flow, lines, named_flow, pod_flow, totals_record},
    verify,
};

fn config(dir: &Path) -> EvidenceConfig {
    EvidenceConfig {
        directory: dir.to_owned(),
        checkpoint_records: 100,
        checkpoint_interval: Duration::from_hours(1),
        retention: None,
        max_bytes: None,
        wal_limit: crate::WAL_LIMIT,
        dict_samples: 200,
    }
}

/// 1,000 flows: tenants acme/globex alternating, every 10th to the US
/// (blocked), the rest to Germany.
fn sample() -> Vec<u8> {
    flows_from(0, 1000)
}

async fn filled(dir: &Path) -> Evidence {
    let (ev, opened) = Evidence::open(&config(dir)).unwrap();
    assert!(opened.key_created);
    assert_eq!(opened.next_seq, 1);
    ev.append(sample()).await.unwrap();
    ev
}

fn verify_dir(dir: &Path) -> verify::Report {
    verify::store(dir, None, &[], &mut |_, _| {}).unwrap()
}

fn first_fault(dir: &Path) -> String {
    let r = verify_dir(dir);
    assert!(!r.ok(), "verify found nothing wrong: {r:?}");
    r.faults[0].what.clone()
}

fn db(dir: &Path) -> Connection {
    Connection::open(crate::db_path(dir)).unwrap()
}

/// Every record's sequence number and canonical bytes, decompressed.
fn canonical_rows(c: &Connection) -> Vec<(i64, Vec<u8>)> {
    let dicts = crate::codec::Dicts::default();
    c.prepare("SELECT seq, body, dict FROM records ORDER BY seq")
        .unwrap()
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, Option<i64>>(2)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .map(|(seq, body, dict)| (seq, dicts.decode(c, dict, &body).unwrap().into_owned()))
        .collect()
}

/// Edits with SQL text functions only work on a body stored raw: says so
/// before a test relies on it.
fn assert_raw(c: &Connection, seq: i64) {
    let dict: Option<i64> = c
        .query_row("SELECT dict FROM records WHERE seq = ?1", [seq], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(
        dict, None,
        "record {seq} is compressed: edit it through the codec"
    );
}

#[tokio::test]
async fn a_closed_store_verifies_and_is_signed() {
    let dir = tempfile::tempdir().unwrap();
    let ev = filled(dir.path()).await;
    assert_eq!(ev.close().await.unwrap(), 1000);
    let r = verify_dir(dir.path());
    assert!(r.ok(), "{:?}", r.faults);
    assert_eq!(r.records, 1000);
    // One per 100 records (the batch ends at 1000, so the shutdown
    // checkpoint lands on the same record and is not repeated).
    assert_eq!(r.checkpoints, 1, "{r:?}");
    assert_eq!(r.last_signed_seq, Some(1000));
    assert_eq!(r.unsigned_tail, 0);
    let cp = ev.reader().latest_checkpoint().unwrap().unwrap();
    assert_eq!(cp.seq, 1000);
    assert_eq!(cp.reason, "records");
}

#[tokio::test]
async fn queries_filter_and_paginate() {
    let dir = tempfile::tempdir().unwrap();
    let ev = filled(dir.path()).await;
    ev.checkpoint().await.unwrap(); // a round trip: the batch is committed
    assert!(ev.wait_indexed(Duration::from_secs(10)).await);
    let r = ev.reader();
    let f = Filter {
        tenant: Some("acme".into()),
        country: Some("US".into()),
        ..Filter::default()
    };
    // acme is even i, US is i % 10 == 3 (odd): none.
    assert!(r.flows(&f, &Page::default()).unwrap().items.is_empty());
    let f = Filter {
        tenant: Some("globex".into()),
        country: Some("US".into()),
        ..Filter::default()
    };
    let mut seen = Vec::new();
    let mut page = Page {
        limit: 7,
        ..Page::default()
    };
    loop {
        let p = r.flows(&f, &page).unwrap();
        seen.extend(p.items.iter().map(|i| i.seq));
        match p.next {
            Some(n) => page.cursor = Some(n),
            None => break,
        }
    }
    // seq = i + 1 for i % 10 == 3: 4, 14, ..., 994, newest first.
    let want: Vec<u64> = (0..100).rev().map(|k| k * 10 + 4).collect();
    assert_eq!(seen, want);
    // Ascending, other filters.
    let p = r
        .flows(
            &Filter {
                verdict: Some("blocked".into()),
                dst_ip: Some("203.0.113.7".parse().unwrap()),
                workload: Some("globex-llm".into()),
                ..Filter::default()
            },
            &Page {
                limit: 3,
                order: Order::Asc,
                cursor: None,
            },
        )
        .unwrap();
    assert_eq!(
        p.items.iter().map(|i| i.seq).collect::<Vec<_>>(),
        [4, 14, 24]
    );
    assert_eq!(p.next, Some(24));
    // Time range: records i in [100, 200) by timestamp.
    let at = |i: i64| jiff::Timestamp::from_nanosecond(i128::from(T0 + i * 1_000_000)).unwrap();
    let p = r
        .flows(
            &Filter {
                from: Some(at(100)),
                to: Some(at(200)),
                ..Filter::default()
            },
            &Page {
                limit: 1000,
                ..Page::default()
            },
        )
        .unwrap();
    assert_eq!(p.items.len(), 100);
    assert_eq!(p.items[0].seq, 200);
    // The record is served as stored.
    let rec = r.record(4).unwrap().unwrap();
    assert!(rec.record.get().contains("\"203.0.113.7\""));
    assert_eq!(rec.hash.len(), 64);
    assert!(r.record(5000).unwrap().is_none());
}

#[tokio::test]
async fn violations_have_a_lifecycle_recorded_in_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let ev = filled(dir.path()).await;
    ev.checkpoint().await.unwrap();
    assert!(ev.wait_indexed(Duration::from_secs(10)).await);
    let r = ev.reader();
    let open = r
        .violations(
            &ViolationFilter {
                state: Some(ViolationState::Open),
                ..ViolationFilter::default()
            },
            &Page::default(),
        )
        .unwrap();
    // One per workload and destination: globex-llm -> 203.0.113.7:443.
    assert_eq!(open.items.len(), 1, "{:?}", open.items);
    let v = &open.items[0];
    assert_eq!(v.count, 100);
    assert_eq!(v.first_seq, 4);
    assert_eq!(v.last_seq, 994);
    assert_eq!(v.tenants, ["globex"]);
    assert_eq!(v.destination.country.as_deref(), Some("US"));
    assert_eq!(
        v.nis2.early_warning_due.duration_since(v.nis2.aware_at),
        jiff::SignedDuration::from_hours(24)
    );
    assert_eq!(
        v.nis2.notification_due.duration_since(v.nis2.aware_at),
        jiff::SignedDuration::from_hours(72)
    );
    assert!(
        v.nis2.final_report_due.duration_since(v.nis2.aware_at)
            >= jiff::SignedDuration::from_hours(24 * 28)
    );

    let acked = ev
        .transition(
            v.id,
            ViolationState::Acknowledged,
            "looking into it".into(),
            "token".into(),
        )
        .await
        .unwrap();
    assert_eq!(acked.state, ViolationState::Acknowledged);
    let ack = acked.acknowledged.unwrap();
    assert_eq!(ack.seq, 1001);
    let rec = r.record(ack.seq).unwrap().unwrap();
    assert!(
        rec.record.get().contains("violation-acknowledged"),
        "{}",
        rec.record.get()
    );
    assert!(rec.record.get().contains("looking into it"));
    // Acknowledging twice is a conflict; resolving works once.
    let again = ev
        .transition(
            v.id,
            ViolationState::Acknowledged,
            "x".into(),
            "token".into(),
        )
        .await
        .unwrap_err();
    assert!(again.to_string().contains("acknowledged"), "{again}");
    let resolved = ev
        .transition(
            v.id,
            ViolationState::Resolved,
            "endpoint moved to eu-west".into(),
            "uid:0".into(),
        )
        .await
        .unwrap();
    assert_eq!(resolved.state, ViolationState::Resolved);
    assert!(
        ev.transition(v.id, ViolationState::Resolved, "x".into(), "token".into())
            .await
            .is_err()
    );
    assert!(matches!(
        ev.transition(9999, ViolationState::Resolved, "x".into(), "t".into())
            .await,
        Err(crate::EvidenceError::NoViolation(9999))
    ));
    // A new breach after resolution opens a new violation.
    ev.append(lines([flow(
        2000,
        "globex",
        "US",
        "blocked",
        "203.0.113.7",
    )]))
    .await
    .unwrap();
    ev.close().await.unwrap();
    let all = r
        .violations(&ViolationFilter::default(), &Page::default())
        .unwrap();
    assert_eq!(all.items.len(), 2);
    assert_eq!(all.items[0].state, ViolationState::Open);
    assert!(verify_dir(dir.path()).ok());
}

#[tokio::test]
async fn transfers_summarise_tenant_role_country_and_basis() {
    let dir = tempfile::tempdir().unwrap();
    let ev = filled(dir.path()).await;
    ev.checkpoint().await.unwrap();
    assert!(ev.wait_indexed(Duration::from_secs(10)).await);
    let rows = ev.reader().transfers(&Filter::default()).unwrap();
    let get = |t: &str, c: &str| {
        rows.iter()
            .find(|r| r.tenant.as_deref() == Some(t) && r.country.as_deref() == Some(c))
            .cloned()
    };
    let de = get("acme", "DE").unwrap();
    assert_eq!((de.flows, de.allowed, de.blocked), (500, 500, 0));
    assert_eq!(de.transfer_basis, "eea");
    let us = get("globex", "US").unwrap();
    assert_eq!((us.flows, us.blocked), (100, 100));
    assert_eq!(us.transfer_basis, "none");
    assert!(get("acme", "US").is_none());
}

#[tokio::test]
async fn transfers_break_down_by_the_catalog_provider_and_service() {
    let dir = tempfile::tempdir().unwrap();
    let (ev, _) = Evidence::open(&config(dir.path())).unwrap();
    ev.append(lines([
        named_flow(0, "acme", "eu.api.openai.com", "OpenAI", "API (EU)"),
        named_flow(1, "acme", "eu.api.openai.com", "OpenAI", "API (EU)"),
        named_flow(2, "acme", "api.mistral.ai", "Mistral", "API"),
        flow(3, "acme", "DE", "allowed", "192.0.2.1"),
    ]))
    .await
    .unwrap();
    ev.checkpoint().await.unwrap();
    assert!(ev.wait_indexed(Duration::from_secs(10)).await);
    let r = ev.reader();
    let rows = r.transfers(&Filter::default()).unwrap();
    let by: Vec<(&str, Option<&str>, u64)> = rows
        .iter()
        .map(|r| (r.provider.as_str(), r.service.as_deref(), r.flows))
        .collect();
    assert_eq!(
        by,
        [
            ("unlisted", None, 1),
            ("Mistral", Some("API"), 1),
            ("OpenAI", Some("API (EU)"), 2),
        ]
    );
    let only = |p: &str| {
        r.transfers(&Filter {
            provider: Some(p.into()),
            ..Filter::default()
        })
        .unwrap()
        .iter()
        .map(|r| r.flows)
        .sum::<u64>()
    };
    assert_eq!(
        (only("OpenAI"), only("unlisted"), only("Nobody")),
        (2, 1, 0)
    );
    // The name is a flow filter (an indexed column).
    let named = r
        .flows(
            &Filter {
                dst_name: Some("eu.api.openai.com".into()),
                ..Filter::default()
            },
            &Page::default(),
        )
        .unwrap();
    assert_eq!(named.items.len(), 2);
    ev.close().await.unwrap();
    let v = verify_dir(dir.path());
    assert!(v.ok(), "{:?}", v.faults);
    // An edit to the breakdown is caught.
    db(dir.path())
        .execute(
            "UPDATE transfers SET provider = 'Other' WHERE provider = 'Mistral'",
            [],
        )
        .unwrap();
    assert!(first_fault(dir.path()).contains("transfer"));
}

#[tokio::test]
async fn a_format_2_store_gains_the_catalog_columns_and_still_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let (ev, _) = Evidence::open(&config(dir.path())).unwrap();
    ev.append(flows_from(0, 20)).await.unwrap();
    ev.close().await.unwrap();
    // Format 2 keyed transfers without provider and service.
    db(dir.path())
        .execute_batch(
            "ALTER TABLE transfers RENAME TO t3;
             CREATE TABLE transfers (day INTEGER NOT NULL, tenant TEXT NOT NULL, role TEXT NOT NULL,
                 country TEXT NOT NULL, basis TEXT NOT NULL, allowed INTEGER NOT NULL,
                 flagged INTEGER NOT NULL, blocked INTEGER NOT NULL, first_ts INTEGER NOT NULL,
                 last_ts INTEGER NOT NULL, PRIMARY KEY (day, tenant, role, country, basis)) WITHOUT ROWID;
             INSERT INTO transfers SELECT day, tenant, role, country, basis, allowed, flagged, blocked, first_ts, last_ts FROM t3;
             DROP TABLE t3;
             UPDATE meta SET value = 2 WHERE key = 'format';",
        )
        .unwrap();
    // `evidence verify` reads it as it is.
    let r = verify_dir(dir.path());
    assert!(r.ok(), "{:?}", r.faults);
    let (ev, _) = Evidence::open(&config(dir.path())).unwrap();
    ev.append(lines([named_flow(
        20,
        "acme",
        "api.mistral.ai",
        "Mistral",
        "API",
    )]))
    .await
    .unwrap();
    ev.close().await.unwrap();
    let rows = ev.reader().transfers(&Filter::default()).unwrap();
    assert_eq!(
        rows.iter().map(|r| r.flows).sum::<u64>(),
        21,
        "the old counts are kept"
    );
    assert!(rows.iter().any(|r| r.provider == "Mistral"));
    assert!(rows.iter().any(|r| r.provider == "unlisted"));
    let r = verify_dir(dir.path());
    assert!(r.ok(), "{:?}", r.faults);
}

#[tokio::test]
#[expect(
    clippy::too_many_lines,
    reason = "flows, violations, transfers and their edits, in turn"
)]
async fn pods_are_flow_and_violation_filters_and_a_transfer_dimension() {
    let dir = tempfile::tempdir().unwrap();
    let (ev, _) = Evidence::open(&config(dir.path())).unwrap();
    ev.append(lines([
        pod_flow(0, "acme", "blocked", "crm", "sync-0"),
        pod_flow(1, "acme", "blocked", "crm", "sync-1"),
        pod_flow(2, "acme", "blocked", "billing", "invoice-0"),
        pod_flow(3, "acme", "allowed", "crm", "sync-1"),
        flow(4, "acme", "US", "blocked", "198.51.100.7"),
    ]))
    .await
    .unwrap();
    ev.checkpoint().await.unwrap();
    assert!(ev.wait_indexed(Duration::from_secs(10)).await);
    let r = ev.reader();
    let flows = |namespace: Option<&str>, pod: Option<&str>, tenant: Option<&str>| {
        r.flows(
            &Filter {
                namespace: namespace.map(str::to_owned),
                pod: pod.map(str::to_owned),
                tenant: tenant.map(str::to_owned),
                ..Filter::default()
            },
            &Page::default(),
        )
        .unwrap()
        .items
        .iter()
        .map(|f| f.seq)
        .collect::<Vec<_>>()
    };
    assert_eq!(flows(Some("crm"), None, None), [4, 2, 1]);
    assert_eq!(flows(None, Some("sync-1"), None), [4, 2]);
    assert_eq!(
        flows(Some("billing"), Some("sync-1"), None),
        Vec::<u64>::new()
    );
    assert_eq!(
        flows(Some("billing"), None, Some("acme")),
        [3],
        "with the tenant index too"
    );
    assert_eq!(flows(None, None, None).len(), 5);

    // One violation per namespace (pods of one namespace count on one),
    // and the flow of no pod is another.
    let violations = |namespace: Option<&str>, pod: Option<&str>| {
        r.violations(
            &ViolationFilter {
                state: None,
                records: Filter {
                    namespace: namespace.map(str::to_owned),
                    pod: pod.map(str::to_owned),
                    ..Filter::default()
                },
            },
            &Page::default(),
        )
        .unwrap()
        .items
    };
    let all = violations(None, None);
    assert_eq!(all.len(), 3, "{all:?}");
    let crm = violations(Some("crm"), None);
    assert_eq!(crm.len(), 1);
    assert_eq!(crm[0].count, 2);
    assert_eq!(
        (crm[0].namespace.as_deref(), crm[0].pod.as_deref()),
        (Some("crm"), Some("sync-0")),
        "the pod of the first occurrence"
    );
    assert_eq!(violations(None, Some("invoice-0")).len(), 1);
    let json = serde_json::to_value(&all[0]).unwrap();
    assert!(
        json.get("namespace").is_none(),
        "no pod, no namespace: {json}"
    );

    // The transfer summary counts by namespace.
    let rows = r.transfers(&Filter::default()).unwrap();
    let by: Vec<(Option<&str>, u64, u64)> = rows
        .iter()
        .map(|r| (r.namespace.as_deref(), r.flows, r.blocked))
        .collect();
    assert_eq!(
        by,
        [(None, 1, 1), (Some("billing"), 1, 1), (Some("crm"), 3, 2)]
    );
    let crm = r
        .transfers(&Filter {
            namespace: Some("crm".into()),
            ..Filter::default()
        })
        .unwrap();
    assert_eq!(crm.iter().map(|r| r.flows).sum::<u64>(), 3);
    ev.close().await.unwrap();
    let v = verify_dir(dir.path());
    assert!(v.ok(), "{:?}", v.faults);

    // Edits are caught: a record moved to another namespace (column), its
    // index entry, and the summary.
    db(dir.path())
        .execute("UPDATE records SET namespace = 'other' WHERE seq = 1", [])
        .unwrap();
    let v = verify_dir(dir.path());
    assert!(
        v.faults.iter().any(|f| f.what.contains("`namespace`")),
        "{:?}",
        v.faults
    );
    db(dir.path())
        .execute("UPDATE records SET namespace = 'crm' WHERE seq = 1", [])
        .unwrap();
    assert!(verify_dir(dir.path()).ok());
    let ix = Connection::open(crate::index_path(dir.path())).unwrap();
    ix.execute("UPDATE cols SET pod = 'sync-9' WHERE seq = 2", [])
        .unwrap();
    assert!(first_fault(dir.path()).contains("index entry"));
    ix.execute("UPDATE cols SET pod = 'sync-1' WHERE seq = 2", [])
        .unwrap();
    db(dir.path())
        .execute(
            "UPDATE transfers SET namespace = 'other' WHERE namespace = 'billing'",
            [],
        )
        .unwrap();
    assert!(first_fault(dir.path()).contains("transfer"));
}

#[tokio::test]
async fn a_format_3_store_gains_the_pod_columns_and_still_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let (ev, _) = Evidence::open(&config(dir.path())).unwrap();
    ev.append(flows_from(0, 20)).await.unwrap();
    assert!(ev.wait_indexed(Duration::from_secs(10)).await);
    ev.close().await.unwrap();
    // Format 3: no pod columns, transfers keyed without namespace, and an
    // index file without them either.
    db(dir.path())
        .execute_batch(
            "ALTER TABLE records DROP COLUMN namespace;
             ALTER TABLE records DROP COLUMN pod;
             ALTER TABLE violations DROP COLUMN namespace;
             ALTER TABLE violations DROP COLUMN pod;
             ALTER TABLE transfers RENAME TO t4;
             CREATE TABLE transfers (day INTEGER NOT NULL, tenant TEXT NOT NULL, role TEXT NOT NULL,
                 country TEXT NOT NULL, basis TEXT NOT NULL, provider TEXT NOT NULL, service TEXT NOT NULL,
                 allowed INTEGER NOT NULL, flagged INTEGER NOT NULL, blocked INTEGER NOT NULL,
                 first_ts INTEGER NOT NULL, last_ts INTEGER NOT NULL,
                 PRIMARY KEY (day, tenant, role, country, basis, provider, service)) WITHOUT ROWID;
             INSERT INTO transfers SELECT day, tenant, role, country, basis, provider, service,
                 allowed, flagged, blocked, first_ts, last_ts FROM t4;
             DROP TABLE t4;
             UPDATE meta SET value = 3 WHERE key = 'format';",
        )
        .unwrap();
    Connection::open(crate::index_path(dir.path()))
        .unwrap()
        .execute_batch(
            "DROP INDEX cols_namespace; DROP INDEX cols_pod;
             ALTER TABLE cols DROP COLUMN namespace; ALTER TABLE cols DROP COLUMN pod;",
        )
        .unwrap();
    let before = canonical_rows(&db(dir.path()));
    // `evidence verify` reads it as it is.
    let r = verify_dir(dir.path());
    assert!(r.ok(), "{:?}", r.faults);
    let (ev, _) = Evidence::open(&config(dir.path())).unwrap();
    ev.append(lines([pod_flow(20, "acme", "blocked", "crm", "sync-0")]))
        .await
        .unwrap();
    ev.checkpoint().await.unwrap(); // a round trip: the record is committed
    assert!(ev.wait_indexed(Duration::from_secs(10)).await);
    let crm = ev
        .reader()
        .flows(
            &Filter {
                namespace: Some("crm".into()),
                ..Filter::default()
            },
            &Page::default(),
        )
        .unwrap();
    assert_eq!(crm.items.iter().map(|f| f.seq).collect::<Vec<_>>(), [21]);
    ev.close().await.unwrap();
    let format: i64 = db(dir.path())
        .query_row("SELECT value FROM meta WHERE key = 'format'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(format, crate::schema::FORMAT);
    let after = canonical_rows(&db(dir.path()));
    assert_eq!(after[..before.len()], before[..], "every record is kept");
    let rows = ev.reader().transfers(&Filter::default()).unwrap();
    assert_eq!(
        rows.iter().map(|r| r.flows).sum::<u64>(),
        21,
        "the old counts are kept"
    );
    assert!(rows.iter().any(|r| r.namespace.as_deref() == Some("crm")));
    assert!(rows.iter().any(|r| r.namespace.is_none()));
    let r = verify_dir(dir.path());
    assert!(r.ok(), "{:?}", r.faults);
}

/// A followed flow: its decision, an update and its end, the end on the
/// next day.
fn followed() -> Vec<u8> {
    const DAY_MS: u64 = 86_400_000;
    lines([
        followed_flow(0, "acme", "DE", "b00t-7-1"),
        totals_record(1, "acme", "DE", "b00t-7-1", (1000, 50), (1000, 50), false),
        flow(2, "acme", "DE", "allowed", "192.0.2.8"),
        totals_record(
            DAY_MS,
            "acme",
            "DE",
            "b00t-7-1",
            (1500, 80),
            (500, 30),
            true,
        ),
    ])
}

#[tokio::test]
async fn flow_totals_add_bytes_on_the_days_they_moved_and_verify_rebuilds_them() {
    let dir = tempfile::tempdir().unwrap();
    let (ev, _) = Evidence::open(&config(dir.path())).unwrap();
    ev.append(followed()).await.unwrap();
    ev.checkpoint().await.unwrap();
    assert!(ev.wait_indexed(Duration::from_secs(10)).await);
    let r = ev.reader();
    let rows = r.transfers(&Filter::default()).unwrap();
    let sum = |f: fn(&crate::query::TransferRow) -> u64| rows.iter().map(f).sum::<u64>();
    assert_eq!(sum(|r| r.bytes_out), 1500, "{rows:?}");
    assert_eq!(sum(|r| r.bytes_in), 80);
    assert_eq!(sum(|r| r.flows), 2, "totals records are not decisions");
    // The first day holds the update's bytes; the next the end's.
    let day0 = r
        .transfers(&Filter {
            to: jiff::Timestamp::from_nanosecond(i128::from(T0) + 3_600_000_000_000).ok(),
            ..Filter::default()
        })
        .unwrap();
    assert_eq!(day0.iter().map(|r| r.bytes_out).sum::<u64>(), 1000);
    // The listing: two decisions, the followed one with its totals.
    let listed = r.flows(&Filter::default(), &Page::default()).unwrap();
    assert_eq!(listed.items.len(), 2);
    let t = listed
        .items
        .iter()
        .find_map(|i| i.totals.clone())
        .expect("the followed flow's totals");
    assert_eq!(
        (t.bytes_out, t.bytes_in, t.ended, t.last_seq),
        (1500, 80, true, 4)
    );
    assert!(
        r.violations(&ViolationFilter::default(), &Page::default())
            .unwrap()
            .items
            .is_empty()
    );
    ev.close().await.unwrap();
    let report = verify_dir(dir.path());
    assert!(report.ok(), "{:?}", report.faults);

    // Bytes moved from one row to another, or a flow's totals edited,
    // are found.
    db(dir.path())
        .execute(
            "UPDATE transfers SET bytes_out = bytes_out + 1 WHERE bytes_out > 0",
            [],
        )
        .unwrap();
    assert!(first_fault(dir.path()).contains("bytes"));
    db(dir.path())
        .execute(
            "UPDATE transfers SET bytes_out = bytes_out - 1 WHERE bytes_out > 0",
            [],
        )
        .unwrap();
    assert!(verify_dir(dir.path()).ok());
    db(dir.path())
        .execute("UPDATE flow_totals SET bytes_in = 1", [])
        .unwrap();
    assert!(first_fault(dir.path()).contains("flow_totals"));
}

#[tokio::test]
async fn a_format_4_store_gains_the_byte_columns_and_still_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let (ev, _) = Evidence::open(&config(dir.path())).unwrap();
    ev.append(flows_from(0, 20)).await.unwrap();
    ev.close().await.unwrap();
    db(dir.path())
        .execute_batch(
            "ALTER TABLE transfers DROP COLUMN bytes_out;
             ALTER TABLE transfers DROP COLUMN bytes_in;
             DROP TABLE flow_totals;
             UPDATE meta SET value = 4 WHERE key = 'format';",
        )
        .unwrap();
    let r = verify_dir(dir.path());
    assert!(r.ok(), "read as it is: {:?}", r.faults);
    let (ev, _) = Evidence::open(&config(dir.path())).unwrap();
    ev.append(followed()).await.unwrap();
    ev.checkpoint().await.unwrap();
    ev.close().await.unwrap();
    let format: i64 = db(dir.path())
        .query_row("SELECT value FROM meta WHERE key = 'format'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(format, crate::schema::FORMAT);
    let rows = ev.reader().transfers(&Filter::default()).unwrap();
    assert_eq!(rows.iter().map(|r| r.flows).sum::<u64>(), 22);
    assert_eq!(rows.iter().map(|r| r.bytes_out).sum::<u64>(), 1500);
    let r = verify_dir(dir.path());
    assert!(r.ok(), "{:?}", r.faults);
}

#[tokio::test]
async fn policy_versions_come_from_policy_loaded_records() {
    let dir = tempfile::tempdir().unwrap();
    let (ev, _) = Evidence::open(&config(dir.path())).unwrap();
    let note = |hash: &str, text: &str| {
        serde_json::json!({
            "@timestamp": "2026-11-22T10:00:00Z",
            "event": {"action": "policy-loaded", "dataset": "residency.lifecycle"},
            "residency": {"policy": {"hash": hash, "source": "/etc/r.toml", "text": text}}
        })
        .to_string()
    };
    ev.append(lines([
        note("h1", "mode = \"monitor\""),
        note("h2", "mode = \"enforce\""),
    ]))
    .await
    .unwrap();
    ev.close().await.unwrap();
    let p = ev.reader().policies().unwrap();
    assert_eq!(p.len(), 2);
    assert_eq!(p[0].hash, "h2");
    assert_eq!(p[0].text.as_deref(), Some("mode = \"enforce\""));
}

#[tokio::test]
async fn verify_catches_an_edited_record() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path()).await.close().await.unwrap();
    assert_raw(&db(dir.path()), 14);
    db(dir.path())
        .execute(
            "UPDATE records SET body = CAST(replace(CAST(body AS TEXT), '\"US\"', '\"DE\"') AS BLOB) WHERE seq = 14",
            [],
        )
        .unwrap();
    let f = first_fault(dir.path());
    assert!(f.starts_with("record 14:"), "{f}");
}

#[tokio::test]
async fn verify_catches_an_edited_column() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path()).await.close().await.unwrap();
    db(dir.path())
        .execute("UPDATE records SET country = 'DE' WHERE seq = 24", [])
        .unwrap();
    let f = first_fault(dir.path());
    assert!(f.starts_with("record 24"), "{f}");
    let r = verify_dir(dir.path());
    assert!(
        r.faults
            .iter()
            .any(|f| f.seq == Some(24) && f.what.contains("`country`")),
        "{:?}",
        r.faults
    );
    // And the tenant index, which a tenant filter reads.
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path()).await.close().await.unwrap();
    Connection::open(crate::index_path(dir.path()))
        .unwrap()
        .execute("DELETE FROM tenants WHERE seq = 34", [])
        .unwrap();
    assert!(first_fault(dir.path()).contains("tenant index"));
    // And an index entry edited to move a flow to another country.
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path()).await.close().await.unwrap();
    Connection::open(crate::index_path(dir.path()))
        .unwrap()
        .execute("UPDATE cols SET country = 'DE' WHERE seq = 44", [])
        .unwrap();
    let f = first_fault(dir.path());
    assert!(f.contains("record 44") && f.contains("index entry"), "{f}");
    // A deleted index file is not a fault: it is rebuilt at start.
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path()).await.close().await.unwrap();
    std::fs::remove_file(crate::index_path(dir.path())).unwrap();
    let r = verify_dir(dir.path());
    assert!(r.ok() && r.notes.len() == 1, "{r:?}");
    let (ev, _) = Evidence::open(&config(dir.path())).unwrap();
    assert!(ev.wait_indexed(Duration::from_secs(10)).await);
    let p = ev
        .reader()
        .flows(
            &Filter {
                tenant: Some("acme".into()),
                ..Filter::default()
            },
            &Page {
                limit: 1000,
                ..Page::default()
            },
        )
        .unwrap();
    assert_eq!(p.items.len(), 500, "rebuilt from the chain");
    ev.close().await.unwrap();
}

#[tokio::test]
async fn verify_catches_a_deleted_record() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path()).await.close().await.unwrap();
    db(dir.path())
        .execute("DELETE FROM records WHERE seq = 500", [])
        .unwrap();
    let f = first_fault(dir.path());
    assert!(f.contains("500") && f.contains("missing"), "{f}");
    // Deleted from the index too: the chain still shows the hole.
    Connection::open(crate::index_path(dir.path()))
        .unwrap()
        .execute("DELETE FROM cols WHERE seq = 500", [])
        .unwrap();
    let f = first_fault(dir.path());
    assert!(f.contains("500") && f.contains("missing"), "{f}");
}

#[tokio::test]
async fn verify_catches_reordered_records() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path()).await.close().await.unwrap();
    let c = db(dir.path());
    // Swap the bodies and hashes of records 300 and 301.
    c.execute_batch(
        "UPDATE records SET seq = -1 WHERE seq = 300;
         UPDATE records SET seq = 300 WHERE seq = 301;
         UPDATE records SET seq = 301 WHERE seq = -1;",
    )
    .unwrap();
    let f = first_fault(dir.path());
    assert!(f.starts_with("record 300:"), "{f}");
}

#[tokio::test]
async fn verify_catches_truncation_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path()).await.close().await.unwrap();
    db(dir.path())
        .execute("DELETE FROM records WHERE seq > 950", [])
        .unwrap();
    let r = verify_dir(dir.path());
    assert!(
        r.faults
            .iter()
            .any(|f| f.what.contains("beyond the last record")),
        "{:?}",
        r.faults
    );
}

#[tokio::test]
async fn verify_catches_a_rewritten_chain_by_its_signatures() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path()).await.close().await.unwrap();
    // Edit a record and recompute every hash after it: the chain is
    // consistent again, but the signed head no longer matches.
    let c = db(dir.path());
    assert_raw(&c, 4);
    c.execute(
        "UPDATE records SET body = CAST(replace(CAST(body AS TEXT), '\"blocked\"', '\"allowed\"') AS BLOB),
                            verdict = 'allowed' WHERE seq = 4",
        [],
    )
    .unwrap();
    let real_head: [u8; 32] = c
        .query_row("SELECT hash FROM records WHERE seq = 1000", [], |r| {
            r.get::<_, Vec<u8>>(0)
        })
        .unwrap()
        .try_into()
        .unwrap();
    // A thorough forger fixes the index file too.
    Connection::open(crate::index_path(dir.path()))
        .unwrap()
        .execute("UPDATE cols SET verdict = 'allowed' WHERE seq = 4", [])
        .unwrap();
    let mut prev = chain::GENESIS;
    for (seq, body) in canonical_rows(&c) {
        prev = chain::link(&prev, u64::try_from(seq).unwrap(), &body);
        c.execute(
            "UPDATE records SET hash = ?1 WHERE seq = ?2",
            rusqlite::params![&prev[..], seq],
        )
        .unwrap();
    }
    let f = first_fault(dir.path());
    assert!(
        f.contains("checkpoint at record 1000") && f.contains("signed chain head"),
        "{f}"
    );
    // Re-signing with another key fails against the real public key.
    let other = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let (ts, head): (i64, Vec<u8>) = c
        .query_row(
            "SELECT ts, head FROM checkpoints WHERE seq = 1000",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let _ = head;
    let sig = chain::sign(&other, 1000, &prev, ts);
    c.execute(
        "UPDATE checkpoints SET head = ?1, signature = ?2 WHERE seq = 1000",
        rusqlite::params![&prev[..], &sig[..]],
    )
    .unwrap();
    let f = first_fault(dir.path());
    assert!(f.contains("signature does not verify"), "{f}");
    // Removing the checkpoints instead: a store closed cleanly must end
    // on one.
    c.execute("DELETE FROM checkpoints", []).unwrap();
    let r = verify_dir(dir.path());
    assert!(
        r.faults.iter().any(|f| f.what.contains("closed cleanly")),
        "{:?}",
        r.faults
    );
    // And with the clean mark removed too, only a checkpoint kept
    // elsewhere catches it: pin the real head of record 1000.
    c.execute("UPDATE meta SET value = 0 WHERE key = 'clean'", [])
        .unwrap();
    // The tables the API reports are rebuilt from the chain by verify, so
    // the forger must fix them as well...
    let f = first_fault(dir.path());
    assert!(f.contains("violation 1"), "{f}");
    c.execute_batch(
        "UPDATE violations SET count = count - 1, first_seq = 14 WHERE id = 1;
         UPDATE transfers SET blocked = blocked - 1, allowed = allowed + 1
          WHERE tenant = 'globex' AND country = 'US';",
    )
    .unwrap();
    assert!(
        verify_dir(dir.path()).ok(),
        "the limit of what the host alone can prove"
    );
    let r = verify::store(dir.path(), None, &[(1000, real_head)], &mut |_, _| {}).unwrap();
    assert!(
        r.faults
            .iter()
            .any(|f| f.what.contains("pinned checkpoint")),
        "{:?}",
        r.faults
    );
}

#[tokio::test]
async fn verify_reports_a_damaged_file() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path()).await.close().await.unwrap();
    let path = crate::db_path(dir.path());
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    // Either SQLite refuses the file, or the records it still has do not
    // reach the signed checkpoints: never a clean report.
    match verify::store(dir.path(), None, &[], &mut |_, _| {}) {
        Err(e) => assert!(!e.to_string().is_empty()),
        Ok(r) => assert!(!r.ok(), "a half-truncated store verified: {r:?}"),
    }
}

#[tokio::test]
async fn an_unclean_stop_leaves_a_gap_record() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path()).await.close().await.unwrap();
    // What a kill -9 leaves: the store still marked open.
    db(dir.path())
        .execute("UPDATE meta SET value = 0 WHERE key = 'clean'", [])
        .unwrap();
    let (ev, opened) = Evidence::open(&config(dir.path())).unwrap();
    assert!(opened.unclean);
    assert_eq!(opened.next_seq, 1002, "the gap record is 1001");
    let gap = ev.reader().record(1001).unwrap().unwrap();
    assert!(
        gap.record.get().contains("evidence-gap"),
        "{}",
        gap.record.get()
    );
    assert!(gap.record.get().contains("\"after_seq\":1000"));
    ev.close().await.unwrap();
    assert!(verify_dir(dir.path()).ok());
}

#[tokio::test]
async fn one_daemon_per_store() {
    let dir = tempfile::tempdir().unwrap();
    let (ev, _) = Evidence::open(&config(dir.path())).unwrap();
    let Err(err) = Evidence::open(&config(dir.path())) else {
        panic!("a second writer opened the same store");
    };
    assert!(
        err.to_string().contains("another residency daemon"),
        "{err}"
    );
    ev.close().await.unwrap();
}

#[tokio::test]
async fn retention_prunes_and_what_remains_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    // Records are from 2026-11; keep a day: everything old goes.
    cfg.retention = Some(Duration::from_hours(24));
    let (ev, _) = Evidence::open(&cfg).unwrap();
    ev.append(sample()).await.unwrap();
    // A record of today, which stays.
    let now = jiff::Timestamp::now();
    let mut today = flow(0, "acme", "DE", "allowed", "192.0.2.1");
    let first = today.find("\"@timestamp\":\"").unwrap() + 14;
    let end = today[first..].find('"').unwrap() + first;
    today.replace_range(first..end, &now.to_string());
    ev.append(lines([today])).await.unwrap();
    // Retention runs at the first check after a minute, or now:
    ev.checkpoint().await.unwrap();
    ev.close().await.unwrap();
    // The writer ran retention at open+60 s only; run it through a reopen
    // with a fresh writer instead of waiting: prune directly.
    let (ev, _) = Evidence::open(&cfg).unwrap();
    ev.prune_now().await.unwrap();
    ev.close().await.unwrap();
    let r = verify_dir(dir.path());
    assert!(r.ok(), "{:?}", r.faults);
    assert_eq!(r.base_seq, 1000);
    let c = db(dir.path());
    let kinds: Vec<String> = c
        .prepare("SELECT kind FROM records ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(kinds[0], "flow");
    assert!(kinds.contains(&"evidence-pruned".to_owned()), "{kinds:?}");
    // Deleting more from the start, and moving the base to match, is not
    // a pruning anyone recorded.
    let (hash,): (Vec<u8>,) = c
        .query_row("SELECT hash FROM records WHERE seq = 1001", [], |r| {
            Ok((r.get(0)?,))
        })
        .unwrap();
    c.execute("DELETE FROM records WHERE seq = 1001", [])
        .unwrap();
    c.execute("UPDATE meta SET value = 1001 WHERE key = 'base_seq'", [])
        .unwrap();
    c.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'base_hash'",
        [&hash],
    )
    .unwrap();
    let r = verify_dir(dir.path());
    assert!(
        r.faults
            .iter()
            .any(|f| f.what.contains("pruning record says records up to 1000")),
        "{:?}",
        r.faults
    );
}

#[tokio::test]
async fn an_export_bundle_verifies_offline_and_catches_edits() {
    let dir = tempfile::tempdir().unwrap();
    let ev = filled(dir.path()).await;
    ev.close().await.unwrap();
    let at = |i: i64| jiff::Timestamp::from_nanosecond(i128::from(T0 + i * 1_000_000)).unwrap();
    let mut tar = Vec::new();
    let s = bundle::export(ev.reader(), Some(at(250)), Some(at(260)), &mut tar).unwrap();
    assert_eq!(s.first_seq, 251);
    // Extended to the next checkpoint (at 1000, the only one).
    assert_eq!(s.last_seq, 1000);
    assert_eq!(s.checkpoints, 1);
    let path = dir.path().join("bundle.tar");
    std::fs::write(&path, &tar).unwrap();
    let key = *ev.reader().public_key();
    let r = verify::bundle(&path, Some(key)).unwrap();
    assert!(r.ok(), "{:?}", r.faults);
    assert_eq!(r.records, 750);
    assert_eq!(r.checkpoints_valid, 1);
    // Another key: the signature fails.
    let other = ed25519_dalek::SigningKey::from_bytes(&[3; 32]).verifying_key();
    let r = verify::bundle(&path, Some(other)).unwrap();
    assert!(
        r.faults.iter().any(|f| f.what.contains("signature")),
        "{r:?}"
    );
    // One byte of one record changed.
    let text = String::from_utf8_lossy(&tar).into_owned();
    let at_ip = text.find("203.0.113.7").unwrap();
    let mut edited = tar.clone();
    edited[at_ip] = b'1';
    std::fs::write(&path, &edited).unwrap();
    let r = verify::bundle(&path, Some(key)).unwrap();
    assert!(!r.ok());
    assert!(r.faults[0].what.starts_with("record "), "{:?}", r.faults);
    // A bundle cut before its checkpoint binds nothing to the key.
    let mut cut = Vec::new();
    let s2 = bundle::export(ev.reader(), Some(at(250)), Some(at(260)), &mut cut).unwrap();
    assert_eq!(s2.last_seq, 1000);
    {
        let mut ar = tar::Archive::new(&cut[..]);
        let mut out = tar::Builder::new(Vec::new());
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().into_owned();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            if name.ends_with("checkpoints.jsonl") {
                data.clear();
            }
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            out.append_data(&mut h, &name, &data[..]).unwrap();
        }
        std::fs::write(&path, out.into_inner().unwrap()).unwrap();
    }
    let r = verify::bundle(&path, Some(key)).unwrap();
    assert!(
        r.faults
            .iter()
            .any(|f| f.what.contains("not covered by a valid signed checkpoint")),
        "{:?}",
        r.faults
    );
    // Not a bundle at all.
    std::fs::write(&path, b"hello").unwrap();
    assert!(verify::bundle(&path, Some(key)).is_err());
}

#[tokio::test]
async fn retention_by_age_takes_only_the_leading_run_of_old_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.retention = Some(Duration::from_hours(24));
    let (ev, _) = Evidence::open(&cfg).unwrap();
    let now = jiff::Timestamp::now();
    let stamped = |i: u64, t: jiff::Timestamp| {
        let mut f = flow(i, "acme", "DE", "allowed", "192.0.2.1");
        let a = f.find("\"@timestamp\":\"").unwrap() + 14;
        let b = f[a..].find('"').unwrap() + a;
        f.replace_range(a..b, &t.to_string());
        f
    };
    // 1-10 old, 11-20 new, 21 old again (a clock stepped back), 22 new.
    let old = now - jiff::SignedDuration::from_hours(24 * 10);
    let mut recs: Vec<String> = (0..10).map(|i| stamped(i, old)).collect();
    recs.extend((10..20).map(|i| stamped(i, now)));
    recs.push(stamped(20, old));
    recs.push(stamped(21, now));
    ev.append(lines(recs)).await.unwrap();
    ev.prune_now().await.unwrap();
    ev.close().await.unwrap();
    let r = verify_dir(dir.path());
    assert!(r.ok(), "{:?}", r.faults);
    assert_eq!(
        r.base_seq, 10,
        "only 1-10 go; 11-20 stay although 21 is old"
    );
}

#[tokio::test]
async fn retention_by_size_prunes_the_oldest_and_stays_verifiable() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_bytes = Some(1); // always over: prune the oldest quarter
    let (ev, _) = Evidence::open(&cfg).unwrap();
    ev.append(sample()).await.unwrap();
    ev.prune_now().await.unwrap();
    ev.close().await.unwrap();
    let r = verify_dir(dir.path());
    assert!(r.ok(), "{:?}", r.faults);
    assert_eq!(r.base_seq, 250, "a quarter of 1..=1000: {r:?}");
    assert_eq!(r.first_seq, Some(251));
    let c = db(dir.path());
    let seq: i64 = c
        .query_row(
            "SELECT seq FROM records WHERE kind = 'evidence-pruned'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let pruned = ev
        .reader()
        .record(u64::try_from(seq).unwrap())
        .unwrap()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_str(pruned.record.get()).unwrap();
    assert_eq!(doc["residency"]["evidence"]["pruned"]["reason"], "size");
    assert_eq!(doc["residency"]["evidence"]["pruned"]["through_seq"], 250);
    // The index followed.
    let n: i64 = Connection::open(crate::index_path(dir.path()))
        .unwrap()
        .query_row("SELECT count(*) FROM cols WHERE seq <= 250", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn verify_rebuilds_what_the_api_reports_and_catches_edits_to_it() {
    for (edit, says) in [
        (
            "UPDATE violations SET state = 'resolved' WHERE id = 1",
            "violation 1",
        ),
        ("DELETE FROM violations", "violation 1"),
        (
            "UPDATE transfers SET blocked = 0, allowed = allowed + blocked WHERE country = 'US'",
            "transfer counts",
        ),
        (
            "UPDATE policies SET text = 'mode = \"monitor\"'",
            "policy version",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let ev = filled(dir.path()).await;
        let policy = serde_json::json!({
            "@timestamp": "2026-11-22T10:00:00Z",
            "event": {"action": "policy-loaded", "dataset": "residency.lifecycle"},
            "residency": {"policy": {"hash": "h1", "source": "/etc/r.toml", "text": "mode = \"enforce\""}}
        });
        ev.append(lines([policy.to_string()])).await.unwrap();
        ev.close().await.unwrap();
        assert!(verify_dir(dir.path()).ok(), "honest store");
        db(dir.path()).execute(edit, []).unwrap();
        let r = verify_dir(dir.path());
        assert!(
            r.faults.iter().any(|f| f.what.contains(says)),
            "{edit}: {:?}",
            r.faults
        );
    }
}

/// Under steady appends the write-ahead log stays near its limit: the
/// writer rewinds it when the checkpointer asks. (Without rewinds it grew
/// until the disk was full; a passive checkpoint alone cannot restart a
/// log its writer keeps appending to.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_ahead_log_stays_bounded_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.checkpoint_records = 1_000_000;
    cfg.wal_limit = 1 << 20;
    let (ev, _) = Evidence::open(&cfg).unwrap();
    let wal = dir.path().join("evidence.db-wal");
    let batch = sample();
    let mut largest = 0;
    // About 40 MiB of records, 40 times the limit, sent as fast as the
    // writer takes them, a transaction each (a checkpoint after each keeps
    // group commit from making one large transaction of them, which the
    // log must hold whole).
    for _ in 0..100 {
        ev.append(batch.clone()).await.unwrap();
        ev.checkpoint().await.unwrap();
        largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
    }
    let total = 100 * batch.len() as u64;
    assert!(total > 32 << 20, "the test writes {total} bytes");
    assert!(
        largest < 8 << 20,
        "the log reached {largest} bytes with a limit of 1 MiB"
    );
    ev.close().await.unwrap();
    let r = verify_dir(dir.path());
    assert!(r.ok(), "{r:?}");
}

/// Flows `from..from + n`, as `sample` makes them.
fn flows_from(from: u64, n: u64) -> Vec<u8> {
    lines((from..from + n).map(sample_flow))
}

fn sample_flow(i: u64) -> String {
    let tenant = if i.is_multiple_of(2) {
        "acme"
    } else {
        "globex"
    };
    if i % 10 == 3 {
        flow(i, tenant, "US", "blocked", "203.0.113.7")
    } else {
        flow(i, tenant, "DE", "allowed", "192.0.2.1")
    }
}

/// A store whose later records are compressed: the first 250 records give
/// the dictionary its samples; once it is trained, 500 more go in.
/// Returns how many records it holds (sequence numbers 1..=n).
async fn compressed(dir: &Path) -> (Evidence, u64) {
    let (ev, _) = Evidence::open(&config(dir)).unwrap();
    ev.append(flows_from(0, 250)).await.unwrap();
    let mut n = 250;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    // Training runs on its own thread; records stay raw until it is done.
    while ev.stats().stored_bytes.get() == ev.stats().record_bytes.get() {
        assert!(
            std::time::Instant::now() < deadline,
            "no dictionary was trained within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        ev.append(flows_from(n, 10)).await.unwrap();
        n += 10;
    }
    ev.append(flows_from(n, 500)).await.unwrap();
    // Behind the appends in the writer's queue: all of them are committed.
    ev.checkpoint().await.unwrap();
    assert!(ev.wait_indexed(Duration::from_secs(10)).await);
    (ev, n + 500)
}

/// Copies a closed store's files into a new directory.
fn copy_store(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.path().join(e.file_name())).unwrap();
        }
    }
    to
}

#[tokio::test]
async fn compressed_records_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (ev, n) = compressed(dir.path()).await;
    let (last, packed) = last_compressed(dir.path());
    assert!(packed >= 500, "only {packed} of {n} records compressed");
    // Every record reads back as exactly the bytes that went in.
    for seq in 1..=n {
        let rec = ev.reader().record(seq).unwrap().unwrap();
        assert_eq!(rec.record.get(), sample_flow(seq - 1), "record {seq}");
    }
    // The compressed ones are the last `packed`, and take far less room.
    let stored: i64 = db(dir.path())
        .query_row(
            "SELECT sum(length(body)) FROM records WHERE dict IS NOT NULL AND seq > ?1",
            [i64::try_from(last - packed).unwrap()],
            |r| r.get(0),
        )
        .unwrap();
    let raw: usize = (last - packed + 1..=last)
        .map(|s| sample_flow(s - 1).len())
        .sum();
    assert!(
        usize::try_from(stored).unwrap() * 4 < raw,
        "{packed} records take {stored} bytes compressed, against {raw} raw"
    );
    // So does what a SIEM sink reads.
    let (sent, reached) = ev
        .reader()
        .records_for_sink(0, 10_000, true, false, false)
        .unwrap();
    assert_eq!(reached, n);
    assert_eq!(sent.len(), usize::try_from(n).unwrap());
    for (seq, bytes) in &sent {
        assert_eq!(bytes, sample_flow(seq - 1).as_bytes(), "record {seq}");
    }
    // Filtered queries and exports read them too.
    let page = ev
        .reader()
        .flows(
            &Filter {
                tenant: Some("globex".into()),
                country: Some("US".into()),
                ..Filter::default()
            },
            &Page::default(),
        )
        .unwrap();
    assert!(!page.items.is_empty());
    for r in &page.items {
        assert_eq!(r.record.get(), sample_flow(r.seq - 1));
    }
    ev.close().await.unwrap();
    let mut tar = Vec::new();
    bundle::export(ev.reader(), None, None, &mut tar).unwrap();
    let path = dir.path().join("bundle.tar");
    std::fs::write(&path, &tar).unwrap();
    let r = verify::bundle(&path, Some(*ev.reader().public_key())).unwrap();
    assert!(r.ok(), "{:?}", r.faults);
    assert_eq!(r.records, n);
    std::fs::remove_file(&path).unwrap();
    let r = verify_dir(dir.path());
    assert!(r.ok(), "{:?}", r.faults);
}

/// The bytes of the last compressed record, and how many are compressed.
fn last_compressed(dir: &Path) -> (u64, u64) {
    let (last, packed): (i64, i64) = db(dir)
        .query_row(
            "SELECT max(seq), count(*) FROM records WHERE dict IS NOT NULL",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    (u64::try_from(last).unwrap(), u64::try_from(packed).unwrap())
}

#[tokio::test]
async fn tampering_with_compressed_records_or_their_dictionary_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let (ev, _) = compressed(dir.path()).await;
    ev.close().await.unwrap();
    let (compressed_seq, packed) = last_compressed(dir.path());
    let victim = compressed_seq - 3;
    let victim_i = i64::try_from(victim).unwrap();

    // An edit made with the store's own dictionary: decompress, change,
    // compress again. The bytes decode fine, but not to what was hashed.
    let copy = copy_store(dir.path());
    let c = db(copy.path());
    let (dict_id, dict): (i64, Vec<u8>) = c
        .query_row(
            "SELECT d.id, d.bytes FROM dicts d JOIN records r ON r.dict = d.id WHERE r.seq = ?1",
            [victim_i],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let text = sample_flow(victim - 1)
        .replace("\"DE\"", "\"FR\"")
        .replace("\"US\"", "\"FR\"");
    let mut forged = Vec::with_capacity(zstd::zstd_safe::compress_bound(text.len()));
    zstd::zstd_safe::CCtx::create()
        .compress_using_cdict(
            &mut forged,
            text.as_bytes(),
            &zstd::zstd_safe::CDict::create(&dict, 3),
        )
        .unwrap();
    c.execute(
        "UPDATE records SET body = ?1 WHERE seq = ?2 AND dict = ?3",
        rusqlite::params![forged, victim_i, dict_id],
    )
    .unwrap();
    let f = first_fault(copy.path());
    assert!(f.starts_with(&format!("record {victim}:")), "{f}");

    // Damaged compressed bytes.
    let copy = copy_store(dir.path());
    db(copy.path())
        .execute(
            "UPDATE records SET body = substr(body, 1, 6) || X'5a5a5a5a' || substr(body, 11) WHERE seq = ?1",
            [victim_i],
        )
        .unwrap();
    let r = verify_dir(copy.path());
    assert!(!r.ok());
    assert!(
        r.faults[0].what.contains("cannot be read back"),
        "{:?}",
        r.faults
    );
    assert!(
        r.faults.iter().all(|f| f.seq.is_none_or(|s| s == victim)),
        "only the damaged record is named: {:?}",
        r.faults
    );
    // A SIEM sink reading past it is told of the hole.
    let (ev, _) = Evidence::open(&config(copy.path())).unwrap();
    let (sent, _) = ev
        .reader()
        .records_for_sink(victim - 1, 1, true, false, true)
        .unwrap();
    ev.close().await.unwrap();
    let text = String::from_utf8_lossy(&sent[0].1).into_owned();
    assert_eq!(sent[0].0, victim);
    // (It reads as a gap, so SIEM sinks send it to their `gaps`.)
    let view = residency_record::RecordView::parse(&sent[0].1).unwrap();
    assert!(view.is_gap(), "{text}");
    assert_eq!(
        view.gap().map(|g| (g.reason.as_str(), g.seq)),
        Some(("damaged-record", Some(victim))),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "record {victim} of the evidence chain cannot be read back"
        )),
        "{text}"
    );

    // A damaged dictionary: every record compressed with it is named.
    let copy = copy_store(dir.path());
    db(copy.path())
        .execute("UPDATE dicts SET bytes = substr(bytes, 1, 100)", [])
        .unwrap();
    let r = verify_dir(copy.path());
    assert!(!r.ok());
    assert_eq!(r.faults[0].seq, Some(compressed_seq + 1 - packed));
    assert!(
        r.faults
            .iter()
            .filter(|f| f.what.starts_with("record "))
            .all(|f| f.seq.is_some_and(|s| s > compressed_seq - packed)),
        "records stored raw are not named: {:?}",
        r.faults
    );
    let faults = u64::try_from(r.faults.len()).unwrap() + r.more_faults;
    assert!(faults >= packed, "{faults} faults for {packed} records");
    assert!(!r.ok());
    assert_eq!(r.faults[0].seq, Some(compressed_seq + 1 - packed));

    // A missing dictionary says so.
    let copy = copy_store(dir.path());
    db(copy.path()).execute("DELETE FROM dicts", []).unwrap();
    let f = first_fault(copy.path());
    assert!(f.contains("dictionary") && f.contains("missing"), "{f}");
}

#[tokio::test]
async fn a_restarted_store_compresses_with_its_dictionary_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (ev, n) = compressed(dir.path()).await;
    ev.close().await.unwrap();
    let (ev, opened) = Evidence::open(&config(dir.path())).unwrap();
    let next = opened.next_seq;
    ev.append(flows_from(n, 20)).await.unwrap();
    ev.close().await.unwrap();
    let raw_after_restart: i64 = db(dir.path())
        .query_row(
            "SELECT count(*) FROM records WHERE seq >= ?1 AND kind = 'flow' AND dict IS NULL",
            [i64::try_from(next).unwrap()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        raw_after_restart, 0,
        "flows after a restart were stored raw"
    );
    let r = verify_dir(dir.path());
    assert!(r.ok(), "{:?}", r.faults);
}

#[tokio::test]
async fn a_format_1_store_is_upgraded_in_place_and_still_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let (ev, _) = Evidence::open(&config(dir.path())).unwrap();
    ev.append(flows_from(0, 50)).await.unwrap();
    ev.close().await.unwrap();
    // Format 1 had no dictionaries: bodies as they are.
    db(dir.path())
        .execute_batch(
            "ALTER TABLE records DROP COLUMN dict; DROP TABLE dicts; UPDATE meta SET value = 1 WHERE key = 'format';",
        )
        .unwrap();
    // `evidence verify` reads it as it is, before any daemon upgrades it.
    let r = verify_dir(dir.path());
    assert!(r.ok(), "{:?}", r.faults);
    assert_eq!(r.records, 50);
    let (ev, opened) = Evidence::open(&config(dir.path())).unwrap();
    assert_eq!(opened.next_seq, 51);
    ev.append(flows_from(50, 10)).await.unwrap();
    ev.close().await.unwrap();
    assert_eq!(
        ev.reader().record(3).unwrap().unwrap().record.get(),
        sample_flow(2)
    );
    let format: i64 = db(dir.path())
        .query_row("SELECT value FROM meta WHERE key = 'format'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(format, crate::schema::FORMAT);
    let r = verify_dir(dir.path());
    assert!(r.ok(), "{:?}", r.faults);
    assert_eq!(r.records, 60);
}

/// The `residency.evidence.gap` of record `seq`.
fn gap_of(ev: &Evidence, seq: u64) -> serde_json::Value {
    let r = ev.reader().record(seq).unwrap().unwrap();
    let v: serde_json::Value = serde_json::from_str(r.record.get()).unwrap();
    assert_eq!(v["event"]["action"], "evidence-gap", "{v}");
    v["residency"]["evidence"]["gap"].clone()
}

/// Every row of the chain as (seq, hash, stored body, dict).
type RawRow = (i64, Vec<u8>, Vec<u8>, Option<i64>);

fn raw_rows(c: &Connection) -> Vec<RawRow> {
    c.prepare("SELECT seq, hash, body, dict FROM records ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Flows counted in the transfer summary: one per stored flow (each has
/// one tenant), so a batch that did not commit must not be in it.
fn transfers_counted(c: &Connection) -> i64 {
    c.query_row(
        "SELECT coalesce(sum(allowed + flagged + blocked), 0) FROM transfers",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

#[tokio::test]
async fn a_store_whose_writes_fail_counts_what_it_misses_and_records_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let ev = filled(dir.path()).await;
    ev.checkpoint().await.unwrap();
    let before = raw_rows(&db(dir.path()));
    assert_eq!(before.len(), 1000);
    let stats = ev.stats().clone();
    assert!(stats.writable.load(std::sync::atomic::Ordering::Relaxed));

    // Every write fails from here on (the way a full disk fails them).
    ev.on_writer_connection(|c| c.execute_batch("PRAGMA query_only = 1").unwrap())
        .await;
    for b in 0..3 {
        // Not an error for the pipeline: it goes on.
        ev.append(flows_from(1000 + b * 10, 10)).await.unwrap();
    }
    // A requested write tries at once, and says why it cannot.
    let err = ev.checkpoint().await.unwrap_err();
    assert!(matches!(err, crate::EvidenceError::Unwritable(_)), "{err}");
    assert!(err.to_string().contains("takes no writes"), "{err}");
    assert!(!stats.writable.load(std::sync::atomic::Ordering::Relaxed));
    assert!(
        stats
            .unwritable_since
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    assert_eq!(stats.not_stored.get(), 30);
    assert!(stats.failures.load(std::sync::atomic::Ordering::Relaxed) >= 2);
    // A violation cannot change state without its record.
    let open = ev
        .reader()
        .violations(&ViolationFilter::default(), &Page::default())
        .unwrap();
    let id = open.items[0].id;
    assert_eq!(open.items[0].count, 100);
    let err = ev
        .transition(id, ViolationState::Acknowledged, "n".into(), "t".into())
        .await
        .unwrap_err();
    assert!(matches!(err, crate::EvidenceError::Unwritable(_)), "{err}");
    assert_eq!(stats.head_seq.get(), 1000);

    // Writes work again: the writer's own retry (no command asks) ends
    // the gap within its retry interval.
    ev.on_writer_connection(|c| c.execute_batch("PRAGMA query_only = 0").unwrap())
        .await;
    let deadline = std::time::Instant::now() + crate::store::RETRY + Duration::from_secs(3);
    while !stats.writable.load(std::sync::atomic::Ordering::Relaxed) {
        assert!(
            std::time::Instant::now() < deadline,
            "the store did not take writes again on its own"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        stats
            .unwritable_since
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    let gap = gap_of(&ev, 1001);
    assert_eq!(gap["reason"], "store-unwritable", "{gap}");
    assert_eq!(gap["records_not_stored"], 30, "{gap}");
    assert_eq!(gap["after_seq"], 1000, "{gap}");
    assert!(
        gap["after"].is_string() && gap["until"].is_string(),
        "{gap}"
    );
    assert!(gap["milliseconds"].as_u64().unwrap() >= 1000, "{gap}");

    // And records are stored again, the violation counting on.
    ev.append(flows_from(1030, 10)).await.unwrap();
    ev.transition(id, ViolationState::Acknowledged, "n".into(), "t".into())
        .await
        .unwrap();
    let v = ev.reader().violation(id).unwrap().unwrap();
    assert_eq!(v.count, 101, "one blocked flow in 1030..1040: {v:?}");
    assert_eq!(ev.close().await.unwrap(), 1012);
    let c = db(dir.path());
    assert_eq!(transfers_counted(&c), 1010);
    let after = raw_rows(&c);
    assert_eq!(&after[..1000], &before[..], "stored records changed");
    let r = verify_dir(dir.path());
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.records, 1012);
}

#[tokio::test]
async fn a_full_database_rolls_back_whole_batches_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let ev = filled(dir.path()).await;
    ev.checkpoint().await.unwrap();
    let c = db(dir.path());
    let before = raw_rows(&c);
    let transfers = transfers_counted(&c);
    let stats = ev.stats().clone();
    // No page more than the file has now: SQLITE_FULL, as on a full disk.
    ev.on_writer_connection(|c| {
        let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
        c.execute_batch(&format!("PRAGMA max_page_count = {pages}"))
            .unwrap();
    })
    .await;
    // Enough to need new pages, with new violations among them.
    ev.append(flows_from(1000, 5000)).await.unwrap();
    ev.on_writer_connection(|_| {}).await;
    assert!(!stats.writable.load(std::sync::atomic::Ordering::Relaxed));
    assert_eq!(stats.not_stored.get(), 5000);
    // Nothing of the batch is there: not a record, not a count.
    assert_eq!(raw_rows(&c), before);
    assert_eq!(transfers_counted(&c), transfers);
    assert_eq!(stats.head_seq.get(), 1000);

    ev.on_writer_connection(|c| {
        c.execute_batch("PRAGMA max_page_count = 4294967294")
            .unwrap();
    })
    .await;
    // A requested checkpoint retries at once.
    ev.checkpoint().await.unwrap();
    assert!(stats.writable.load(std::sync::atomic::Ordering::Relaxed));
    let gap = gap_of(&ev, 1001);
    assert_eq!(gap["records_not_stored"], 5000, "{gap}");
    ev.append(flows_from(6000, 100)).await.unwrap();
    assert_eq!(ev.close().await.unwrap(), 1101);
    assert_eq!(transfers_counted(&c), transfers + 100);
    assert_eq!(&raw_rows(&c)[..1000], &before[..]);
    let r = verify_dir(dir.path());
    assert!(r.ok(), "{r:?}");
}

#[tokio::test]
async fn a_store_still_unwritable_at_close_is_left_unclean_and_says_so_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let ev = filled(dir.path()).await;
    ev.on_writer_connection(|c| c.execute_batch("PRAGMA query_only = 1").unwrap())
        .await;
    ev.append(flows_from(1000, 10)).await.unwrap();
    let err = ev.close().await.unwrap_err();
    assert!(matches!(err, crate::EvidenceError::Unwritable(_)), "{err}");
    // What was stored verifies; the next start records the gap.
    assert!(verify_dir(dir.path()).ok());
    let (ev, opened) = Evidence::open(&config(dir.path())).unwrap();
    assert!(opened.unclean);
    assert_eq!(gap_of(&ev, 1001)["reason"], "unclean-shutdown");
    ev.close().await.unwrap();
    assert!(verify_dir(dir.path()).ok());
}

/// Retention is three transactions (the `evidence-pruned` record, its
/// checkpoint, the deletion). When the deletion fails, what remains is the
/// record and every record it names: verifiable, and pruned again on the
/// next try.
#[tokio::test]
async fn retention_that_cannot_delete_leaves_a_verifiable_store_and_prunes_later() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    // Records are from 2026-11; keep a day: everything but the newest goes.
    cfg.retention = Some(Duration::from_hours(24));
    let (ev, _) = Evidence::open(&cfg).unwrap();
    ev.append(sample()).await.unwrap();
    // The deletion fails the way a write on a full disk does.
    ev.on_writer_connection(|c| {
        c.execute_batch(
            "CREATE TEMP TRIGGER no_delete BEFORE DELETE ON main.records
             BEGIN SELECT RAISE(FAIL, 'database or disk is full'); END;",
        )
        .unwrap();
    })
    .await;
    let err = ev.prune_now().await.unwrap_err();
    assert!(matches!(err, crate::EvidenceError::Unwritable(_)), "{err}");
    assert!(
        !ev.stats()
            .writable
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    let c = db(dir.path());
    let count = |c: &Connection| -> i64 {
        c.query_row("SELECT count(*) FROM records", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(count(&c), 1001, "the pruned record, and nothing deleted");
    let r = verify_dir(dir.path());
    assert!(r.ok(), "{:?}", r.faults);
    assert_eq!(r.base_seq, 0);

    ev.on_writer_connection(|c| c.execute_batch("DROP TRIGGER no_delete").unwrap())
        .await;
    // Pruning now ends the gap (its record first), then prunes again.
    ev.prune_now().await.unwrap();
    assert_eq!(gap_of(&ev, 1002)["records_not_stored"], 0);
    ev.close().await.unwrap();
    let r = verify_dir(dir.path());
    assert!(r.ok(), "{:?}", r.faults);
    assert!(r.base_seq >= 1000, "{r:?}");
}
