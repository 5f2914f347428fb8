//! Elastic Common Schema: the evidence record's own document, and
//! Elasticsearch `_bulk` bodies.
//!
//! The evidence chain already holds each record as an ECS document
//! (`residency_record::encode`), so the ECS format is that document, with what only the
//! alert knows added: `event.sequence` is the evidence sequence number, and
//! `residency.alert` says which kind of alert this is and, when throttling
//! folded repeats into it, how many and over which span. ECS has no field
//! for "this event stands for N events", hence `residency.alert.count`.

use serde_json::{Map, Value};

use super::{kind_name, rfc3339_micros, stable_id};
use crate::alert::Alert;

/// The alert as an ECS document:
///
/// - the record's document (for a checkpoint, [`Alert::checkpoint`]'s);
/// - `event.sequence`: the evidence sequence number;
/// - `residency.alert.kind`: `flow`, `violation`, `checkpoint` or `gap`;
/// - with `count > 1`, `residency.alert.count`, `.first` and `.last`
///   (RFC 3339).
#[must_use]
pub fn ecs(alert: &Alert) -> Value {
    let mut doc = match &alert.doc {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    if let Value::Object(event) = doc
        .entry("event")
        .or_insert_with(|| Value::Object(Map::new()))
    {
        event.insert("sequence".to_owned(), alert.seq.into());
    }
    let residency = doc
        .entry("residency")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(residency) = residency {
        let mut info = Map::new();
        info.insert("kind".to_owned(), kind_name(alert.kind).into());
        if alert.count > 1 {
            info.insert("count".to_owned(), alert.count.into());
            if let Some((first, last)) = alert.span {
                info.insert("first".to_owned(), rfc3339_micros(first).into());
                info.insert("last".to_owned(), rfc3339_micros(last).into());
            }
        }
        residency.insert("alert".to_owned(), Value::Object(info));
    }
    Value::Object(doc)
}

/// Appends an Elasticsearch `_bulk` body for `alerts` to `out`: for each,
///
/// ```text
/// {"create":{"_index":"<index>","_id":"<kind>-<seq>"}}
/// <ECS document>
/// ```
///
/// (NDJSON, each line ending in `\n`, as `_bulk` requires). `create` with a
/// stable `_id` ([`stable_id`]) makes a resend idempotent: a document that
/// is already there fails with 409 for that item alone, and the deliverer
/// counts a 409 as delivered. `create` is also the one operation data
/// streams accept.
pub fn es_bulk(alerts: &[Alert], index: &str, store: &str, out: &mut Vec<u8>) {
    for alert in alerts {
        out.extend_from_slice(b"{\"create\":{\"_index\":");
        // Serialising strings and JSON values into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, index);
        out.extend_from_slice(b",\"_id\":");
        let _ = serde_json::to_writer(&mut *out, &stable_id(alert, store));
        out.extend_from_slice(b"}}\n");
        let _ = serde_json::to_writer(&mut *out, &ecs(alert));
        out.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::fixtures::{self, HOSTILE};

    #[test]
    fn the_document_plus_what_the_alert_knows() {
        let a = fixtures::blocked();
        let v = ecs(&a);
        assert_eq!(v["event"]["sequence"], 13);
        assert_eq!(
            v["residency"]["alert"],
            serde_json::json!({ "kind": "violation" })
        );
        // Everything else is the record, untouched.
        let mut back = v.clone();
        back["event"].as_object_mut().unwrap().remove("sequence");
        back["residency"].as_object_mut().unwrap().remove("alert");
        assert_eq!(back, a.doc);

        let v = ecs(&fixtures::throttled());
        assert_eq!(v["residency"]["alert"]["count"], 42);
        assert_eq!(
            v["residency"]["alert"]["first"],
            "2027-01-15T08:00:00.123456Z"
        );
        assert_eq!(
            v["residency"]["alert"]["last"],
            "2027-01-15T08:05:00.500000Z"
        );

        let c = fixtures::checkpoint();
        let v = ecs(&c);
        assert_eq!(v["event"]["dataset"], "residency.checkpoint");
        assert_eq!(v["event"]["sequence"], 120_000);
        assert_eq!(
            v["residency"]["checkpoint"],
            c.doc["residency"]["checkpoint"]
        );
        assert_eq!(v["residency"]["alert"]["kind"], "checkpoint");
    }

    #[test]
    fn a_pod_is_passed_on_in_ecs_names() {
        let a = fixtures::pod();
        let v = ecs(&a);
        assert_eq!(v["orchestrator"]["namespace"], "crm");
        assert_eq!(v["orchestrator"]["resource"]["type"], "pod");
        assert_eq!(v["orchestrator"]["resource"]["name"], "sync-7d9f-x2x");
        assert_eq!(v["orchestrator"]["resource"]["id"], fixtures::POD_UID);
        assert_eq!(
            v["orchestrator"]["resource"]["label"],
            serde_json::json!(["app.kubernetes.io/name:sync", "tier:batch"])
        );
        assert_eq!(v["container"]["name"], "sync");
        assert_eq!(
            v["container"]["image"]["name"],
            "registry.example/crm/sync:1.4"
        );
        assert!(ecs(&fixtures::blocked()).get("orchestrator").is_none());
    }

    #[test]
    fn bulk_is_ndjson_with_stable_ids() {
        let alerts = [
            fixtures::blocked_flow(),
            fixtures::blocked(),
            fixtures::gap(),
        ];
        let mut out = Vec::new();
        es_bulk(&alerts, "resi\"dency-\u{e9}", "", &mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        let lines: Vec<serde_json::Value> = out
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 6);
        let ids: Vec<&str> = lines
            .iter()
            .step_by(2)
            .map(|l| l["create"]["_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["flow-13", "violation-13", "gap-18"]);
        assert_eq!(lines[0]["create"]["_index"], "resi\"dency-\u{e9}");
        assert_eq!(lines[1], ecs(&alerts[0]));
        assert_eq!(lines[5], ecs(&alerts[2]));

        // The same alerts give the same body: resending is idempotent.
        let mut again = Vec::new();
        es_bulk(&alerts, "resi\"dency-\u{e9}", "", &mut again);
        assert_eq!(again, out);
    }

    #[test]
    fn hostile_values_round_trip() {
        let a = fixtures::hostile();
        let mut out = Vec::new();
        es_bulk(std::slice::from_ref(&a), "i", "", &mut out);
        assert_eq!(
            out.split(|&b| b == b'\n').count() - 1,
            2,
            "newlines escaped"
        );
        let doc: serde_json::Value =
            serde_json::from_slice(out.split(|&b| b == b'\n').nth(1).unwrap()).unwrap();
        assert_eq!(doc["process"]["name"], HOSTILE);
        assert_eq!(doc["rule"]["name"], HOSTILE);
        assert_eq!(doc["residency"]["tenants"][0], HOSTILE);
        assert_eq!(doc["residency"]["workload"]["name"], HOSTILE);
    }
}
