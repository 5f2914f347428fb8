//! Records for the tests of this crate and of the crates that read the
//! store (the SIEM sinks, the API), without a daemon to make them.

/// The time of the first sample flow, Unix nanoseconds.
pub const T0: i64 = 1_795_000_000_000_000_000;

/// Flow `i` (a millisecond after `T0` per `i`), shaped as the record
/// crate's encoder writes it: the fields the store reads.
///
/// # Panics
/// Never for the times these tests use.
#[must_use]
pub fn flow(i: u64, tenant: &str, country: &str, verdict: &str, ip: &str) -> String {
    let ts = jiff::Timestamp::from_nanosecond(i128::from(T0) + i128::from(i) * 1_000_000)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    serde_json::json!({
        "@timestamp": ts.to_string(),
        "event": {"kind": "event", "action": "connect", "dataset": "residency.flow"},
        "destination": {"ip": ip, "port": 443},
        "rule": {"id": "0", "name": "geoip", "ruleset": "residency"},
        "residency": {
            "verdict": verdict,
            "country": country,
            "policy": {"generation": 1, "hash": "abc", "index": 1},
            "workload": {"name": format!("{tenant}-llm"), "role": "llm"},
            "tenants": [tenant],
            "transfer_basis": if country == "DE" { "eea" } else { "none" },
            "boot_ns": 1,
        }
    })
    .to_string()
}

/// Flow `i` to `domain`, which the endpoint catalog lists under
/// `provider` and `service` (`residency.name.endpoint`).
///
/// # Panics
/// Never: [`flow`] writes an object.
#[must_use]
pub fn named_flow(i: u64, tenant: &str, domain: &str, provider: &str, service: &str) -> String {
    let mut v: serde_json::Value =
        serde_json::from_str(&flow(i, tenant, "DE", "allowed", "192.0.2.80")).unwrap_or_default();
    v["destination"]["domain"] = domain.into();
    v["residency"]["decided_by"] = "catalog".into();
    v["residency"]["name"] = serde_json::json!({
        "source": "dns",
        "value": domain,
        "endpoint": {
            "id": format!("{provider}-{service}"),
            "pattern": domain,
            "provider": provider,
            "service": service,
            "jurisdiction": ["EEA"],
            "determines_region": true,
            "source": "https://example.com/docs",
            "origin": "built-in",
        },
    });
    v.to_string()
}

/// Flow `i` of pod `pod` in `namespace`, shaped as the record crate's
/// encoder names a pod (`container.*`, `orchestrator.*`).
///
/// # Panics
/// Never: [`flow`] writes an object.
#[must_use]
pub fn pod_flow(i: u64, tenant: &str, verdict: &str, namespace: &str, pod: &str) -> String {
    let mut v: serde_json::Value =
        serde_json::from_str(&flow(i, tenant, "US", verdict, "198.51.100.7")).unwrap_or_default();
    v["container"] = serde_json::json!({
        "id": "ab".repeat(32),
        "name": "sync",
        "image": {"name": "registry.example/sync:1"},
    });
    v["orchestrator"] = serde_json::json!({
        "type": "kubernetes",
        "namespace": namespace,
        "resource": {
            "type": "pod",
            "name": pod,
            "id": "0b7ae1c5-2f3a-4e5b-9c1d-5a6b7c8d9e0f",
            "label": ["app:sync"],
        },
    });
    v.to_string()
}

/// Records as newline-terminated lines, as the pipeline hands them over.
#[must_use]
pub fn lines(records: impl IntoIterator<Item = String>) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        out.extend_from_slice(r.as_bytes());
        out.push(b'\n');
    }
    out
}

/// Flow `i` as a followed flow's decision: [`flow`] naming `id`
/// (`residency.flow.id`).
///
/// # Panics
/// Never: [`flow`] writes an object.
#[must_use]
pub fn followed_flow(i: u64, tenant: &str, country: &str, id: &str) -> String {
    let mut v: serde_json::Value =
        serde_json::from_str(&flow(i, tenant, country, "allowed", "192.0.2.7")).unwrap_or_default();
    v["residency"]["flow"] = serde_json::json!({ "id": id });
    v.to_string()
}

/// A totals record of flow `id` at `i` (as the record crate writes one):
/// `totals` and `delta` are (bytes out, bytes in); `end` makes it a
/// `flow-end`.
///
/// # Panics
/// Never: [`flow`] writes an object.
#[must_use]
pub fn totals_record(
    i: u64,
    tenant: &str,
    country: &str,
    id: &str,
    totals: (u64, u64),
    delta: (u64, u64),
    end: bool,
) -> String {
    let mut v: serde_json::Value =
        serde_json::from_str(&flow(i, tenant, country, "allowed", "192.0.2.7")).unwrap_or_default();
    v["event"]["action"] = serde_json::json!(if end { "flow-end" } else { "flow-update" });
    v["source"] = serde_json::json!({ "bytes": totals.0, "packets": 1 });
    v["destination"]["bytes"] = serde_json::json!(totals.1);
    v["destination"]["packets"] = serde_json::json!(1);
    v["residency"]["flow"] = serde_json::json!({
        "id": id,
        "stage": if end { "closed" } else { "update" },
        "calls": 1,
        "delta": {
            "bytes_out": delta.0, "bytes_in": delta.1,
            "packets_out": 0, "packets_in": 0, "calls": 0,
        },
    });
    v.to_string()
}
