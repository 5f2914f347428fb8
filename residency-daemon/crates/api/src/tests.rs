//! The API through its real router (`oneshot`), over a real evidence store
//! in a temporary directory; and `serve` bound for real, queried with the
//! client.

use std::{
    collections::{BTreeSet, HashSet},
    os::unix::fs::PermissionsExt as _,
    path::Path,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::ConnectInfo,
    http::{HeaderMap, Request, StatusCode, header},
};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use super::{
    ApiState, Peer,
    client::{self, Client, Target},
    params::Kind,
    router, routes, socket_router,
};
use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge},
    registry::Registry,
};

use residency_evidence::{Evidence, EvidenceConfig};

use crate::config::ApiConfig;

const TOKEN: &str = "test-token-0123456789abcdef";
const FLOWS: usize = 30;

struct Fixture {
    dir: tempfile::TempDir,
    evidence: Evidence,
    state: ApiState,
    /// A counter of another component's, registered beside the store's.
    component: Counter,
}

impl Fixture {
    /// An empty store.
    fn empty() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = EvidenceConfig {
            directory: dir.path().join("evidence"),
            checkpoint_records: 1_000_000,
            checkpoint_interval: Duration::from_hours(1),
            retention: None,
            max_bytes: None,
            wal_limit: residency_evidence::WAL_LIMIT,
            dict_samples: 200,
        };
        let (evidence, _) = Evidence::open(&config).unwrap();
        let attached = Gauge::default();
        attached.set(1);
        let component = Counter::default();
        let mut metrics = Registry::with_prefix("residency");
        metrics.register(
            "component_events",
            "What another component counts",
            component.clone(),
        );
        evidence.stats().register(&mut metrics);
        let state = ApiState {
            reader: evidence.reader().clone(),
            evidence: evidence.clone(),
            metrics: Arc::new(metrics),
            attached,
        };
        Fixture {
            dir,
            evidence,
            state,
            component,
        }
    }

    /// A store with a policy load and [`FLOWS`] flows, committed.
    async fn new() -> Self {
        let f = Self::empty();
        f.append(&[policy_line(0, "aaaa"), policy_line(1, "bbbb")])
            .await;
        let lines: Vec<String> = (0..FLOWS).map(flow_line).collect();
        f.append(&lines).await;
        f
    }

    /// Appends and waits until the records are committed (a checkpoint
    /// is queued behind them) and indexed (filters see only what the
    /// indexer covered).
    async fn append(&self, lines: &[String]) {
        self.evidence
            .append(lines.concat().into_bytes())
            .await
            .unwrap();
        self.evidence.checkpoint().await.unwrap();
        assert!(
            self.evidence.wait_indexed(Duration::from_secs(30)).await,
            "the indexer did not catch up"
        );
    }

    fn tcp(&self) -> Router {
        router(self.state.clone(), TOKEN)
    }

    fn socket(&self) -> Router {
        socket_router(self.state.clone())
    }
}

/// Flow `i`: every third blocked (US), flagged (CN) or allowed (DE); even
/// ones from the LLM gateway for acme, odd ones from the CRM sync for acme
/// and globex; one second apart from 10:00:00.
fn flow_line(i: usize) -> String {
    let (verdict, ip, country) = match i % 3 {
        0 => ("blocked", "203.0.113.7", "US"),
        1 => ("allowed", "192.0.2.10", "DE"),
        _ => ("flagged", "2001:db8::9", "CN"),
    };
    let (workload, role, tenants) = if i.is_multiple_of(2) {
        ("llm-gateway", "llm", json!(["acme"]))
    } else {
        ("crm-sync", "crm-sync", json!(["acme", "globex"]))
    };
    let v = json!({
        "@timestamp": format!("2026-11-22T10:00:{i:02}.123456789Z"),
        "event": {"kind": "event", "category": ["network"], "type": ["connection"], "action": "connect",
                  "outcome": "success", "module": "residency", "dataset": "residency.flow"},
        "network": {"transport": "tcp", "type": "ipv4", "direction": "egress"},
        "destination": {"ip": ip, "port": 443},
        "rule": {"id": "0", "name": "geoip", "ruleset": "residency"},
        "residency": {"verdict": verdict, "hook": "connect4", "mode": "enforce", "decided_by": "geoip",
                      "country": country, "policy": {"generation": 1, "hash": "bbbb", "index": 1},
                      "workload": {"name": workload, "role": role}, "tenants": tenants,
                      "transfer_basis": if country == "DE" { "eea" } else { "none" },
                      "cgroup": {"id": 5}, "boot_ns": 123}
    });
    format!("{v}\n")
}

fn policy_line(i: usize, hash: &str) -> String {
    let v = json!({
        "@timestamp": format!("2026-11-22T09:00:{i:02}Z"),
        "event": {"kind": "event", "category": ["configuration"], "type": ["change"],
                  "action": "policy-loaded", "outcome": "success", "module": "residency",
                  "dataset": "residency.lifecycle"},
        "residency": {"policy": {"hash": hash, "source": "/etc/residency/residency.toml",
                                 "text": format!("# policy {hash}\n")}}
    });
    format!("{v}\n")
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The error text, checking the error shape on the way.
    fn error(&self) -> String {
        assert_eq!(
            self.headers[header::CONTENT_TYPE],
            "application/json",
            "errors are JSON"
        );
        let v = self.json();
        assert_eq!(
            v.as_object().map(serde_json::Map::len),
            Some(1),
            "{{\"error\"}} only: {v}"
        );
        v["error"].as_str().expect("error is text").to_owned()
    }
}

async fn send(router: &Router, req: Request<Body>) -> Answer {
    let res = router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body,
    }
}

fn get_req(uri: &str) -> Request<Body> {
    Request::get(uri)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap()
}

fn post_req(uri: &str, body: &str) -> Request<Body> {
    Request::post(uri)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

async fn get(router: &Router, uri: &str) -> Answer {
    send(router, get_req(uri)).await
}

async fn get_ok(router: &Router, uri: &str) -> Value {
    let a = get(router, uri).await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "{uri}: {}",
        String::from_utf8_lossy(&a.body)
    );
    a.json()
}

/// Walks every page of `uri` (which has a `?`), returning the items.
async fn walk(router: &Router, uri: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<u64> = None;
    for _ in 0..100 {
        let page = match cursor {
            Some(c) => get_ok(router, &format!("{uri}&cursor={c}")).await,
            None => get_ok(router, uri).await,
        };
        items.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next"].as_u64() {
            Some(n) => cursor = Some(n),
            None => return items,
        }
    }
    panic!("{uri}: more than 100 pages");
}

fn seqs(items: &[Value]) -> Vec<u64> {
    items.iter().map(|i| i["seq"].as_u64().unwrap()).collect()
}

#[tokio::test]
async fn pages_walk_every_flow_once_in_either_order() {
    let f = Fixture::new().await;
    let r = f.tcp();
    let desc = seqs(&walk(&r, "/v1/flows?limit=7").await);
    assert_eq!(desc.len(), FLOWS, "{desc:?}");
    assert_eq!(
        desc.iter().collect::<HashSet<_>>().len(),
        FLOWS,
        "no duplicates"
    );
    assert!(
        desc.windows(2).all(|w| w[0] > w[1]),
        "newest first: {desc:?}"
    );
    let asc = seqs(&walk(&r, "/v1/flows?limit=4&order=asc").await);
    assert!(asc.windows(2).all(|w| w[0] < w[1]), "oldest first: {asc:?}");
    let mut reversed = desc.clone();
    reversed.reverse();
    assert_eq!(asc, reversed);
    // The default page, and a last page that says so.
    let page = get_ok(&r, "/v1/flows").await;
    assert_eq!(page["items"].as_array().unwrap().len(), FLOWS);
    assert!(page.get("next").is_none(), "one page holds all: {page}");
}

#[tokio::test]
async fn filters_select_what_they_name() {
    let f = Fixture::new().await;
    let r = f.tcp();
    let count = |v: &Value| v["items"].as_array().unwrap().len();
    let cases: &[(&str, usize)] = &[
        ("verdict=blocked", 10),
        ("country=us", 10),
        ("country=US&verdict=allowed", 0),
        ("tenant=globex", 15),
        ("tenant=acme", 30),
        ("tenant=globex&country=cn", 5),
        ("workload=crm-sync&verdict=flagged", 5),
        ("role=llm", 15),
        ("dst_ip=203.0.113.7", 10),
        ("dst_ip=2001:db8:0:0::9", 10),
        ("dst_name=example.com", 0),
        ("from=2026-11-22T10:00:10Z&to=2026-11-22T10:00:20Z", 10),
        ("from=2026-11-22T11:00:10%2B01:00", 20),
    ];
    for (q, n) in cases {
        let page = get_ok(&r, &format!("/v1/flows?{q}")).await;
        assert_eq!(count(&page), *n, "{q}: {page}");
    }
    for item in get_ok(&r, "/v1/flows?verdict=blocked&tenant=globex").await["items"]
        .as_array()
        .unwrap()
    {
        assert_eq!(item["record"]["residency"]["verdict"], "blocked");
        assert!(
            item["record"]["residency"]["tenants"]
                .as_array()
                .unwrap()
                .contains(&json!("globex"))
        );
    }

    // Two workloads x (blocked, flagged): four violations.
    let vcases: &[(&str, usize)] = &[
        ("", 4),
        ("state=open", 4),
        ("state=resolved", 0),
        ("verdict=blocked", 2),
        ("tenant=globex", 2),
        ("country=cn", 2),
        ("workload=llm-gateway&verdict=flagged", 1),
    ];
    for (q, n) in vcases {
        let page = get_ok(&r, &format!("/v1/violations?{q}")).await;
        assert_eq!(count(&page), *n, "{q}: {page}");
    }
    let v = &get_ok(&r, "/v1/violations?workload=llm-gateway&verdict=blocked").await["items"][0];
    assert_eq!(v["count"], 5, "{v}");
    let ids = walk(&r, "/v1/violations?limit=1").await;
    assert_eq!(ids.len(), 4, "violations page too");

    let sum = |v: &Value| -> u64 {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| row["flows"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(
        sum(&get_ok(&r, "/v1/transfers/summary").await),
        45,
        "30 for acme + 15 for globex"
    );
    assert_eq!(
        sum(&get_ok(&r, "/v1/transfers/summary?tenant=globex").await),
        15
    );
    let de = get_ok(&r, "/v1/transfers/summary?country=de&tenant=acme").await;
    assert_eq!(de["items"][0]["transfer_basis"], "eea", "{de}");
    assert_eq!(sum(&de), 10);
}

/// Flow `i` ([`flow_line`]) to `domain`, which the endpoint catalog lists
/// under `provider` (or does not list: `None`).
fn named_line(i: usize, domain: &str, provider: Option<&str>) -> String {
    let mut v: Value = serde_json::from_str(&flow_line(i)).unwrap();
    v["destination"]["domain"] = domain.into();
    v["residency"]["name"] = json!({ "source": "dns", "value": domain });
    if let Some(p) = provider {
        v["residency"]["name"]["endpoint"] = json!({
            "id": "x", "pattern": domain, "provider": p, "service": "API",
            "jurisdiction": ["EEA"], "determines_region": true,
            "source": "https://example.com", "origin": "built-in",
        });
    }
    format!("{v}\n")
}

#[tokio::test]
async fn names_filter_flows_and_providers_break_the_summary_down() {
    let f = Fixture::empty();
    f.append(&[
        named_line(1, "eu.api.openai.com", Some("OpenAI")),
        named_line(4, "eu.api.openai.com", Some("OpenAI")),
        named_line(7, "db.example", None),
        flow_line(10),
    ])
    .await;
    let r = f.tcp();
    let page = get_ok(&r, "/v1/flows?dst_name=eu.api.openai.com").await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{page}");
    assert!(
        items
            .iter()
            .all(|i| i["record"]["destination"]["domain"] == "eu.api.openai.com")
    );
    assert_eq!(
        get_ok(&r, "/v1/flows?dst_name=nowhere.example").await["items"],
        json!([])
    );

    let summary = get_ok(&r, "/v1/transfers/summary").await;
    let by = |provider: &str| -> u64 {
        summary["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|row| row["provider"] == provider)
            .map(|row| row["flows"].as_u64().unwrap())
            .sum()
    };
    // Flows 1 and 7 carry acme and globex: counted once per tenant.
    assert_eq!((by("OpenAI"), by("unlisted")), (3, 3), "{summary}");
    assert!(
        summary["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|row| (row["provider"] == "unlisted") == row.get("service").is_none()),
        "{summary}"
    );
    let openai = get_ok(&r, "/v1/transfers/summary?provider=OpenAI").await;
    assert!(
        openai["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|row| row["provider"] == "OpenAI" && row["service"] == "API"),
        "{openai}"
    );
    let unlisted = get_ok(&r, "/v1/transfers/summary?provider=unlisted&tenant=globex").await;
    assert_eq!(unlisted["items"][0]["flows"], 1, "{unlisted}");
}

/// Flow `i` ([`flow_line`]) from pod `pod` of `namespace`, named as the
/// record crate's encoder names a pod.
fn pod_line(i: usize, namespace: &str, pod: &str) -> String {
    let mut v: Value = serde_json::from_str(&flow_line(i)).unwrap();
    v["container"] = json!({ "id": "ab".repeat(32), "name": "app", "image": { "name": "registry.example/app:1" } });
    v["orchestrator"] = json!({
        "type": "kubernetes", "namespace": namespace,
        "resource": { "type": "pod", "name": pod, "id": "0b7ae1c5-2f3a-4e5b-9c1d-5a6b7c8d9e0f", "label": ["app:x"] },
    });
    format!("{v}\n")
}

#[tokio::test]
async fn pods_filter_flows_and_violations_and_namespaces_break_the_summary_down() {
    let f = Fixture::empty();
    f.append(&[
        pod_line(0, "crm", "sync-0"),
        pod_line(6, "crm", "sync-1"),
        pod_line(12, "billing", "invoice-0"),
        pod_line(4, "crm", "sync-1"),
        flow_line(18),
    ])
    .await;
    let r = f.tcp();
    let count = |v: &Value| v["items"].as_array().unwrap().len();
    for (q, n) in [
        ("namespace=crm", 3),
        ("namespace=billing", 1),
        ("pod=sync-1", 2),
        ("namespace=crm&pod=sync-1&verdict=blocked", 1),
        ("namespace=other", 0),
        ("", 5),
    ] {
        let page = get_ok(&r, &format!("/v1/flows?{q}")).await;
        assert_eq!(count(&page), n, "{q}: {page}");
    }
    let page = get_ok(&r, "/v1/flows?pod=invoice-0").await;
    assert_eq!(
        page["items"][0]["record"]["orchestrator"]["namespace"],
        "billing"
    );
    assert_eq!(page["items"][0]["record"]["container"]["name"], "app");

    // Flows 0, 6 (crm), 12 (billing) and 18 (no pod) are blocked, same
    // workload and destination: one violation per namespace, and one of
    // no pod.
    for (q, n) in [
        ("", 3),
        ("namespace=crm", 1),
        ("pod=invoice-0", 1),
        ("pod=sync-1", 0),
    ] {
        let page = get_ok(&r, &format!("/v1/violations?{q}")).await;
        assert_eq!(count(&page), n, "{q}: {page}");
    }
    let v = &get_ok(&r, "/v1/violations?namespace=crm").await["items"][0];
    assert_eq!(
        (v["count"].as_u64(), v["pod"].as_str()),
        (Some(2), Some("sync-0")),
        "{v}"
    );

    let summary = get_ok(&r, "/v1/transfers/summary").await;
    let by = |namespace: Option<&str>| -> u64 {
        summary["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|row| row["namespace"].as_str() == namespace)
            .map(|row| row["flows"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(
        (by(Some("crm")), by(Some("billing")), by(None)),
        (3, 1, 1),
        "{summary}"
    );
    let crm = get_ok(&r, "/v1/transfers/summary?namespace=crm").await;
    assert!(
        crm["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|row| row["namespace"] == "crm"),
        "{crm}"
    );
    assert_eq!(
        count(&crm),
        2,
        "blocked to the US, allowed to Germany: {crm}"
    );
}

#[tokio::test]
#[expect(clippy::too_many_lines, reason = "tables of bad requests")]
async fn bad_input_is_a_4xx_json_error_naming_what_was_wrong() {
    let f = Fixture::new().await;
    let r = f.tcp();
    let gets: &[(&str, u16, &str)] = &[
        ("/v1/flows?colour=red", 400, "\"colour\""),
        ("/v1/flows?from=yesterday", 400, "from"),
        ("/v1/flows?to=2026-13-01T00:00:00Z", 400, "to"),
        ("/v1/flows?from=2026-11-22T10:00:00", 400, "from"),
        ("/v1/flows?dst_ip=1.2.3", 400, "dst_ip"),
        ("/v1/flows?verdict=denied", 400, "verdict"),
        ("/v1/flows?country=USA", 400, "country"),
        ("/v1/flows?country=1A", 400, "country"),
        ("/v1/flows?limit=0", 400, "limit"),
        ("/v1/flows?limit=1001", 400, "limit"),
        ("/v1/flows?limit=-1", 400, "limit"),
        ("/v1/flows?limit=99999999999999999999", 400, "limit"),
        ("/v1/flows?cursor=abc", 400, "cursor"),
        ("/v1/flows?cursor=-5", 400, "cursor"),
        ("/v1/flows?order=up", 400, "order"),
        ("/v1/flows?tenant=", 400, "tenant"),
        ("/v1/flows?tenant=a&tenant=b", 400, "tenant"),
        (
            "/v1/flows?from=2026-11-23T00:00:00Z&to=2026-11-22T00:00:00Z",
            400,
            "from",
        ),
        ("/v1/violations?state=closed", 400, "state"),
        (
            "/v1/flows?namespace=Kube-System",
            400,
            "Kubernetes namespace",
        ),
        ("/v1/flows?namespace=-crm", 400, "namespace"),
        ("/v1/flows?namespace=a.b", 400, "namespace"),
        (
            "/v1/flows?namespace=a123456789012345678901234567890123456789012345678901234567890123",
            400,
            "namespace",
        ),
        ("/v1/flows?pod=sync_0", 400, "Kubernetes pod name"),
        ("/v1/flows?pod=sync-0.", 400, "pod"),
        ("/v1/violations?pod=", 400, "pod"),
        ("/v1/transfers/summary?pod=sync-0", 400, "\"pod\""),
        ("/v1/transfers/summary?namespace=CRM", 400, "namespace"),
        ("/v1/transfers/summary?limit=5", 400, "\"limit\""),
        ("/v1/transfers/summary?state=open", 400, "\"state\""),
        ("/v1/policy?x=1", 400, "\"x\""),
        ("/v1/evidence/export?from=nope", 400, "from"),
        (
            "/v1/evidence/export?from=2030-01-01T00:00:00Z",
            400,
            "no records",
        ),
        ("/v1/flows/abc", 400, "seq"),
        ("/v1/flows/-1", 400, "seq"),
        ("/v1/flows/99999", 404, "99999"),
        ("/v1/violations/0", 400, "id"),
        ("/v1/violations/x", 400, "id"),
        ("/v1/violations/999", 404, "999"),
        ("/v1/nothing", 404, "/v1/nothing"),
        ("/v1/flows/1/2", 404, "/v1/flows/1/2"),
    ];
    for (uri, status, needle) in gets {
        let a = get(&r, uri).await;
        assert_eq!(a.status.as_u16(), *status, "{uri}: {:?}", a.body);
        let e = a.error();
        assert!(e.contains(needle), "{uri}: {e:?} should name {needle}");
    }

    let a = send(
        &r,
        Request::delete("/v1/flows")
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(a.error().contains("DELETE"));

    let long = format!("{{\"note\": \"{}\"}}", "x".repeat(4097));
    let huge = format!("{{\"note\": \"{}\"}}", "x".repeat(20_000));
    let posts: &[(&str, &str, u16, &str)] = &[
        ("/v1/violations/1/ack", "{not json", 400, "body"),
        ("/v1/violations/1/ack", "{}", 400, "note"),
        ("/v1/violations/1/ack", "{\"note\": \"  \"}", 400, "note"),
        ("/v1/violations/1/ack", "{\"note\": 5}", 400, "body"),
        (
            "/v1/violations/1/ack",
            "{\"note\": \"x\", \"by\": \"root\"}",
            400,
            "by",
        ),
        ("/v1/violations/1/ack", &long, 400, "note"),
        ("/v1/violations/1/ack", &huge, 413, "body"),
        ("/v1/violations/abc/ack", "{\"note\": \"x\"}", 400, "id"),
        (
            "/v1/violations/999/resolve",
            "{\"note\": \"x\"}",
            404,
            "999",
        ),
    ];
    for (uri, body, status, needle) in posts {
        let a = send(&r, post_req(uri, body)).await;
        assert_eq!(a.status.as_u16(), *status, "{uri} {body:.40}: {:?}", a.body);
        let e = a.error();
        assert!(
            e.contains(needle),
            "{uri} {body:.40}: {e:?} should name {needle}"
        );
    }
    let a = send(
        &r,
        Request::post("/v1/violations/1/ack")
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from("{\"note\": \"x\"}"))
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(a.error().contains("Content-Type"));
    // None of that changed anything.
    let v = get_ok(&r, "/v1/violations/1").await;
    assert_eq!(v["state"], "open");
}

#[tokio::test]
async fn a_token_is_needed_on_tcp_and_root_on_the_socket() {
    let f = Fixture::new().await;
    let r = f.tcp();
    let with = |auth: Option<&str>, uri: &str| {
        let mut b = Request::get(uri);
        if let Some(a) = auth {
            b = b.header(header::AUTHORIZATION, a);
        }
        b.body(Body::empty()).unwrap()
    };
    for (auth, needle) in [
        (None, "missing token"),
        (Some("Bearer wrong-token-0123456789abcdef"), "invalid token"),
        (Some("Bearer "), "invalid token"),
        (Some(&format!("Bearer {TOKEN}x")[..]), "invalid token"),
        (Some(&format!("Basic {TOKEN}")[..]), "Bearer"),
        (Some(TOKEN), "Bearer"),
    ] {
        for uri in ["/v1/flows", "/metrics", "/v1/nothing"] {
            let a = send(&r, with(auth, uri)).await;
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{auth:?} {uri}");
            assert!(a.headers.contains_key(header::WWW_AUTHENTICATE));
            let e = a.error();
            assert!(e.contains(needle), "{auth:?}: {e}");
        }
    }
    let a = send(&r, with(None, "/healthz")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["status"], "ok");
    // Readiness too, for a kubelet probe, which sends no token.
    let a = send(&r, with(None, "/readyz")).await;
    assert_ne!(a.status, StatusCode::UNAUTHORIZED);
    assert!(a.json()["checks"].is_object(), "{}", a.json());
    let a = send(&r, with(Some(&format!("bearer {TOKEN}")), "/v1/flows")).await;
    assert_eq!(a.status, StatusCode::OK, "the scheme is case-insensitive");

    // The socket router: the peer's uid decides; a token does not help.
    let s = f.socket();
    let peer = |uid: Option<u32>, uri: &str| {
        let mut req = get_req(uri);
        if let Some(uid) = uid {
            req.extensions_mut().insert(ConnectInfo(Peer {
                uid: Some(uid),
                pid: None,
            }));
        }
        req
    };
    for (uid, status) in [
        (None, StatusCode::FORBIDDEN),
        (Some(1000), StatusCode::FORBIDDEN),
        (Some(0), StatusCode::OK),
    ] {
        let a = send(&s, peer(uid, "/v1/flows?limit=1")).await;
        assert_eq!(a.status, status, "uid {uid:?}");
        if status == StatusCode::FORBIDDEN {
            assert!(a.error().contains("root"));
        }
        let a = send(&s, peer(uid, "/healthz")).await;
        assert_eq!(a.status, StatusCode::OK, "healthz for uid {uid:?}");
    }
}

#[tokio::test]
async fn ack_then_resolve_are_recorded_in_the_chain() {
    let f = Fixture::new().await;
    let r = f.tcp();
    let violation =
        &get_ok(&r, "/v1/violations?workload=crm-sync&verdict=blocked").await["items"][0];
    let id = violation["id"].as_i64().unwrap();
    let head_before = f.evidence.stats().head_seq.get();

    let a = send(
        &r,
        post_req(
            &format!("/v1/violations/{id}/ack"),
            "{\"note\": \"  seen by on-call; ticket SEC-12  \"}",
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let acked = a.json();
    assert_eq!(acked["state"], "acknowledged");
    assert_eq!(acked["acknowledged"]["by"], "token");
    assert_eq!(
        acked["acknowledged"]["note"],
        "seen by on-call; ticket SEC-12"
    );
    let seq = acked["acknowledged"]["seq"].as_u64().unwrap();
    assert!(
        i64::try_from(seq).unwrap() > head_before,
        "a new record after the flows"
    );

    // The acknowledgement is a record of the chain, with a chain hash.
    let rec = get_ok(&r, &format!("/v1/flows/{seq}")).await;
    assert_eq!(rec["seq"], seq);
    assert_eq!(rec["hash"].as_str().unwrap().len(), 64);
    let body = rec["record"].to_string();
    assert_eq!(
        rec["record"]["event"]["action"], "violation-acknowledged",
        "{rec}"
    );
    assert!(body.contains("SEC-12"), "{body}");
    assert!(body.contains("token"), "{body}");
    assert_eq!(
        get_ok(&r, &format!("/v1/violations/{id}")).await["state"],
        "acknowledged"
    );
    assert_eq!(
        get_ok(&r, "/v1/violations?state=acknowledged").await["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let again = send(
        &r,
        post_req(&format!("/v1/violations/{id}/ack"), "{\"note\": \"x\"}"),
    )
    .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert!(again.error().contains("acknowledged"));

    // Resolving, over the socket as root: recorded with the uid.
    let socket = f.socket();
    let mut req = post_req(
        &format!("/v1/violations/{id}/resolve"),
        "{\"note\": \"firewalled\"}",
    );
    req.extensions_mut().insert(ConnectInfo(Peer {
        uid: Some(0),
        pid: Some(1),
    }));
    let a = send(&socket, req).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let resolved = a.json();
    assert_eq!(resolved["state"], "resolved");
    assert_eq!(resolved["resolved"]["by"], "uid:0");
    assert_eq!(resolved["acknowledged"]["seq"], seq, "the history stays");
    let resolved_seq = resolved["resolved"]["seq"].as_u64().unwrap();
    assert!(resolved_seq > seq);
    let rec = get_ok(&r, &format!("/v1/flows/{resolved_seq}")).await;
    assert_eq!(rec["record"]["event"]["action"], "violation-resolved");

    for action in ["ack", "resolve"] {
        let a = send(
            &r,
            post_req(
                &format!("/v1/violations/{id}/{action}"),
                "{\"note\": \"x\"}",
            ),
        )
        .await;
        assert_eq!(
            a.status,
            StatusCode::CONFLICT,
            "{action} of a resolved violation"
        );
        assert!(a.error().contains("resolved"));
    }
    // An open one may be resolved at once.
    let other = &get_ok(&r, "/v1/violations?state=open&limit=1").await["items"][0];
    let a = send(
        &r,
        post_req(
            &format!("/v1/violations/{}/resolve", other["id"]),
            "{\"note\": \"false positive\"}",
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
}

/// A request that exercises `route` with valid input.
fn sample_request(route: &routes::Route) -> Request<Body> {
    let path = route.path.replace("{seq}", "2").replace("{id}", "1");
    let b = Request::builder()
        .method(route.method.as_str())
        .uri(&path)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
    if route.body.is_some() {
        b.header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{\"note\": \"checked\"}"))
            .unwrap()
    } else {
        b.body(Body::empty()).unwrap()
    }
}

fn sample_value(kind: Kind) -> &'static str {
    match kind {
        Kind::Time => "2026-11-22T10:00:05Z",
        Kind::Text => "acme",
        Kind::Country => "de",
        Kind::Verdict => "blocked",
        Kind::State => "open",
        Kind::Ip => "192.0.2.10",
        Kind::Cursor | Kind::Seq | Kind::Id => "3",
        Kind::Limit => "10",
        Kind::Order => "asc",
        Kind::Namespace => "crm",
        Kind::Pod => "sync-7d9f8b6c4-x2x9q",
    }
}

/// One route of the document against the router: served, answering a
/// documented status, on its documented methods only, taking exactly its
/// documented parameters.
async fn check_route(
    r: &Router,
    doc: &Value,
    documented: &BTreeSet<(String, String)>,
    route: &routes::Route,
) {
    let op = &doc["paths"][route.path][route.method.lower()];
    // Served, and answering one of the statuses documented.
    let a = send(r, sample_request(route)).await;
    let status = a.status.as_u16().to_string();
    assert!(
        op["responses"].get(&status).is_some(),
        "{} {}: {status} is not documented: {:?}",
        route.method.as_str(),
        route.path,
        a.body
    );
    if a.status == StatusCode::NOT_FOUND {
        assert!(
            !a.error().contains("there is no endpoint"),
            "{}: not routed",
            route.path
        );
    }
    assert_ne!(a.status, StatusCode::METHOD_NOT_ALLOWED, "{}", route.path);
    // Only documented methods are served on the path.
    for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
        let listed = documented.contains(&(method.to_owned(), route.path.to_owned()));
        let mut req = sample_request(route);
        *req.method_mut() = method.parse().unwrap();
        let a = send(r, req).await;
        assert_eq!(
            a.status == StatusCode::METHOD_NOT_ALLOWED,
            !listed,
            "{method} {}: {}",
            route.path,
            a.status
        );
    }
    // Every documented parameter is taken, and documented as parsed.
    let params = op["parameters"].as_array().unwrap();
    for p in params.iter().filter(|p| p["in"] == "query") {
        let name = p["name"].as_str().unwrap();
        let param = route.query.iter().find(|q| q.name == name).unwrap();
        let mut req = sample_request(route);
        *req.uri_mut() = format!("{}?{name}={}", req.uri().path(), sample_value(param.kind))
            .parse()
            .unwrap();
        let a = send(r, req).await;
        assert_ne!(
            a.status,
            StatusCode::BAD_REQUEST,
            "{} ?{name}: {:?}",
            route.path,
            a.body
        );
    }
    let path_params: Vec<&str> = params
        .iter()
        .filter(|p| p["in"] == "path")
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    let in_path: Vec<&str> = route
        .path
        .split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .collect();
    assert_eq!(path_params, in_path, "{}", route.path);
    // And nothing else.
    let mut req = sample_request(route);
    *req.uri_mut() = format!("{}?undocumented=1", req.uri().path())
        .parse()
        .unwrap();
    let a = send(r, req).await;
    assert_eq!(
        a.status,
        StatusCode::BAD_REQUEST,
        "{} ?undocumented",
        route.path
    );
    assert!(a.error().contains("undocumented"));
}

#[tokio::test]
async fn the_openapi_document_matches_the_router() {
    let f = Fixture::new().await;
    let r = f.tcp();
    let doc = get_ok(&r, "/v1/openapi.json").await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));

    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    let table: BTreeSet<(String, String)> = routes::ROUTES
        .iter()
        .map(|r| (r.method.as_str().to_owned(), r.path.to_owned()))
        .collect();
    assert_eq!(documented, table, "the document lists the route table");
    assert_eq!(table.len(), routes::ROUTES.len(), "no route twice");

    for route in routes::ROUTES {
        check_route(&r, &doc, &documented, route).await;
    }
    for schema in doc["components"]["schemas"].as_object().unwrap().keys() {
        assert!(
            doc.to_string()
                .contains(&format!("#/components/schemas/{schema}")),
            "{schema} is defined but never used"
        );
    }
    let text = doc.to_string();
    for reference in text.split("#/components/schemas/").skip(1) {
        let name: String = reference
            .chars()
            .take_while(|c| c.is_alphanumeric())
            .collect();
        assert!(
            doc["components"]["schemas"].get(&name).is_some(),
            "{name} is used but not defined"
        );
    }
}

#[tokio::test]
async fn metrics_name_what_they_count() {
    let f = Fixture::new().await;
    // The daemon registers every component's counters (the pipeline's
    // names are checked in the daemon's own tests); the API renders them
    // with the store's.
    f.component.inc_by(2);
    let r = f.tcp();
    let a = get(&r, "/metrics").await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(
        a.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = String::from_utf8(a.body.to_vec()).unwrap();
    let records = FLOWS + 2;
    for needle in [
        "residency_component_events_total 2",
        &format!("residency_store_records_total {records}"),
        "residency_store_commits_total",
        "residency_store_commit_seconds_bucket{le=",
        "residency_store_commit_seconds_count",
        "residency_store_ingest_latency_seconds_count",
        "residency_store_checkpoints_total 2",
        &format!("residency_store_head_seq {records}"),
        "residency_store_size_bytes",
        "residency_store_pruned_total 0",
        "residency_store_queued_batches 0",
        "residency_store_write_failures_total 0",
        "residency_store_writable 1",
        "# EOF",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
}

#[tokio::test]
async fn readiness_names_the_check_that_failed() {
    let f = Fixture::new().await;
    let r = f.tcp();
    let a = get(&r, "/readyz").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["ready"], true);

    f.state.attached.set(0);
    let a = get(&r, "/readyz").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    let v = a.json();
    assert_eq!(v["checks"]["kernel_programs_attached"], false);
    assert_eq!(v["checks"]["evidence_store_writable"], true);
    assert!(v["error"].as_str().unwrap().contains("not attached"), "{v}");

    f.state.attached.set(1);
    f.evidence.stats().writable.store(false, Ordering::Relaxed);
    let a = get(&r, "/readyz").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    let v = a.json();
    assert!(
        v["error"].as_str().unwrap().contains("evidence store"),
        "{v}"
    );
    assert_eq!(
        get(&r, "/healthz").await.status,
        StatusCode::OK,
        "still alive"
    );
}

#[tokio::test]
async fn the_checkpoints_around_a_period_cover_its_flows() {
    let f = Fixture::empty();
    let r = f.tcp();
    // Flows at 10:00:00..05, a checkpoint; then 10:00:06..09, another.
    f.append(&(0..6).map(flow_line).collect::<Vec<_>>()).await;
    f.append(&(6..10).map(flow_line).collect::<Vec<_>>()).await;
    let p = get_ok(
        &r,
        "/v1/checkpoints?from=2026-11-22T10:00:07Z&to=2026-11-22T10:00:09Z",
    )
    .await;
    // Flows 7 and 8 (records 8 and 9), between the two checkpoints.
    assert_eq!(
        (p["first_seq"].as_u64(), p["last_seq"].as_u64()),
        (Some(8), Some(9)),
        "{p}"
    );
    assert_eq!(p["before"]["seq"], 6, "{p}");
    assert_eq!(p["after"]["seq"], 10, "{p}");
    assert_eq!(p["after"]["signature"].as_str().map(str::len), Some(88));
    // A period with no flows proves nothing, and says so by leaving it out.
    let none = get_ok(&r, "/v1/checkpoints?from=2027-01-01T00:00:00Z").await;
    assert_eq!(none, json!({}));
    let bad = get(&r, "/v1/checkpoints?from=yesterday").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn checkpoints_keys_policy_and_export() {
    let f = Fixture::empty();
    let r = f.tcp();
    let a = get(&r, "/v1/checkpoints/latest").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "none signed yet");
    assert!(a.error().contains("checkpoint"));
    let policy = get_ok(&r, "/v1/policy").await;
    assert_eq!(policy, json!({ "current": null, "history": [] }));

    f.append(&[policy_line(0, "aaaa"), flow_line(0), policy_line(1, "bbbb")])
        .await;
    let key = get_ok(&r, "/v1/evidence/public-key").await;
    assert_eq!(key["public_key"].as_str().unwrap().len(), 44, "{key}");
    let cp = get_ok(&r, "/v1/checkpoints/latest").await;
    assert_eq!(cp["seq"], 3);
    assert_eq!(cp["public_key"], key["public_key"]);
    assert_eq!(cp["key_id"], key["key_id"]);

    let policy = get_ok(&r, "/v1/policy").await;
    assert_eq!(policy["current"]["hash"], "bbbb", "{policy}");
    let history: Vec<&str> = policy["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["hash"].as_str().unwrap())
        .collect();
    assert_eq!(history, ["bbbb", "aaaa"]);

    let a = get(&r, "/v1/evidence/export").await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.headers[header::CONTENT_TYPE], "application/x-tar");
    let disposition = a.headers[header::CONTENT_DISPOSITION].to_str().unwrap();
    assert!(
        disposition.starts_with("attachment; filename=\"residency-evidence-")
            && disposition.ends_with(".tar\""),
        "{disposition}"
    );
    assert_eq!(a.headers["x-residency-records"], "3");
    assert_eq!(&a.body[257..262], b"ustar", "a tar archive");
}

#[test]
fn a_created_token_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state/sub/api.token");
    let token = super::load_or_create_token(&path).unwrap();
    assert_eq!(token.len(), 64);
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    assert_eq!(
        super::load_or_create_token(&path).unwrap(),
        token,
        "read back"
    );

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = super::load_or_create_token(&path).unwrap_err().to_string();
    assert!(e.contains("chmod 600"), "{e}");
    std::fs::write(&path, "short\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let e = super::load_or_create_token(&path).unwrap_err().to_string();
    assert!(e.contains("shorter"), "{e}");
}

/// `serve` refuses a port and a socket that another daemon serves.
async fn second_daemon_is_refused(f: &Fixture, addr: std::net::SocketAddr, socket: &Path) {
    let token_file = f.dir.path().join("secret/api.token");
    let clash = ApiConfig {
        listen: Some(addr),
        socket: None,
        token_file: token_file.clone(),
    };
    let (_keep, rx) = tokio::sync::watch::channel(false);
    let e = super::serve(&clash, f.dir.path(), f.state.clone(), rx.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("port in use") && e.contains(&addr.to_string()),
        "{e}"
    );
    let clash = ApiConfig {
        listen: None,
        socket: Some(socket.to_owned()),
        token_file: token_file.clone(),
    };
    let e = super::serve(&clash, f.dir.path(), f.state.clone(), rx)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("another process"), "{e}");
}

#[tokio::test]
async fn serve_binds_tcp_and_the_socket_and_the_client_reaches_both() {
    let f = Fixture::new().await;
    let state_dir = f.dir.path().join("evidence");
    let config = ApiConfig {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        socket: Some(f.dir.path().join("run/api.sock")),
        token_file: f.dir.path().join("secret/api.token"),
    };
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let serving = super::serve(&config, &state_dir, f.state.clone(), shutdown)
        .await
        .unwrap();
    let addr = serving.tcp.unwrap();
    assert_ne!(addr.port(), 0);
    let written = std::fs::read_to_string(state_dir.join(super::ADDR_FILE)).unwrap();
    assert_eq!(written.trim(), addr.to_string());
    let socket = config.socket.clone().unwrap();
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // TCP, with the token the daemon created.
    let token = client::read_token(&config.token_file).unwrap();
    let tcp = Client::new(Target::Tcp(addr.to_string()), Some(token));
    let page = tcp
        .get_json("/v1/flows?limit=5&verdict=blocked")
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 5);
    let mut out = Vec::new();
    let listed = client::list(
        &tcp,
        client::Listing::Flows,
        &client::ListOptions {
            query: vec![("country".into(), "US".into())],
            limit: Some(4),
            all: true,
            json: false,
        },
        &mut out,
    )
    .await
    .unwrap();
    assert_eq!(listed.items, 10);
    assert_eq!(listed.next, None);
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.lines().count(), 11, "a header and ten rows:\n{text}");
    assert!(text.contains("203.0.113.7:443"), "{text}");
    let bad = Client::new(
        Target::Tcp(addr.to_string()),
        Some("nope-nope-nope-nope".into()),
    );
    let e = bad.get_json("/v1/flows").await.unwrap_err();
    assert!(
        matches!(e, client::ClientError::Api { status: 401, .. }),
        "{e}"
    );

    // The socket: root gets in, others are refused by their uid.
    let unix = Client::new(Target::Socket(socket.clone()), None);
    let reply = unix
        .request(hyper::Method::GET, "/v1/flows?limit=1", None)
        .await
        .unwrap();
    if nix::unistd::geteuid().is_root() {
        assert_eq!(reply.status, 200, "{:?}", reply.body);
    } else {
        assert_eq!(reply.status, 403, "{:?}", reply.body);
        let e = reply.check().unwrap_err().to_string();
        assert!(e.contains("root"), "{e}");
    }
    let health = unix.get_json("/healthz").await.unwrap();
    assert_eq!(health["status"], "ok");

    // A second daemon cannot take the port or the socket.
    second_daemon_is_refused(&f, addr, &socket).await;

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), serving.stopped())
        .await
        .expect("the servers stop on the signal");
    assert!(!socket.exists(), "the socket is removed");
    assert!(!state_dir.join(super::ADDR_FILE).exists());
    let e = tcp.get_json("/healthz").await.unwrap_err();
    assert!(e.to_string().contains("is the daemon running?"), "{e}");
    assert!(matches!(e, client::ClientError::Unreachable { .. }), "{e}");
}

#[tokio::test]
async fn serve_replaces_a_stale_socket_and_refuses_a_file() {
    let f = Fixture::empty();
    let path = f.dir.path().join("api.sock");
    // A socket nobody serves any more (a daemon that was killed).
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let config = ApiConfig {
        listen: None,
        socket: Some(path.clone()),
        token_file: f.dir.path().join("api.token"),
    };
    let (stop, rx) = tokio::sync::watch::channel(false);
    let serving = super::serve(&config, f.dir.path(), f.state.clone(), rx.clone())
        .await
        .unwrap();
    assert_eq!(serving.tcp, None);
    assert!(!config.token_file.exists(), "no TCP, no token");
    stop.send(true).unwrap();
    serving.stopped().await;

    std::fs::write(&path, "not a socket").unwrap();
    let e = super::serve(&config, f.dir.path(), f.state.clone(), rx)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a socket"), "{e}");
}

#[test]
fn api_targets_parse() {
    let tcp = |s: &str| Target::Tcp(s.to_owned());
    for (given, want) in [
        (
            "/run/residency/api.sock",
            Target::Socket("/run/residency/api.sock".into()),
        ),
        ("unix:rel.sock", Target::Socket("rel.sock".into())),
        ("./api.sock", Target::Socket("./api.sock".into())),
        ("http://127.0.0.1:7471", tcp("127.0.0.1:7471")),
        ("http://127.0.0.1:7471/", tcp("127.0.0.1:7471")),
        ("http://localhost", tcp("localhost:7470")),
        ("http://[::1]", tcp("[::1]:7470")),
        ("http://[::1]:8000", tcp("[::1]:8000")),
        ("127.0.0.1:9", tcp("127.0.0.1:9")),
    ] {
        assert_eq!(Target::parse(given).unwrap(), want, "{given}");
    }
    for bad in [
        "https://127.0.0.1:7470",
        "http://127.0.0.1:7470/v1",
        "localhost",
        "",
    ] {
        let e = Target::parse(bad).unwrap_err();
        assert!(
            matches!(e, client::ClientError::Target { .. }),
            "{bad}: {e}"
        );
    }
}

#[test]
fn queries_are_percent_encoded() {
    let q = vec![
        ("from".to_owned(), "2026-11-22T10:00:00+01:00".to_owned()),
        ("tenant".to_owned(), "a b&c=d".to_owned()),
    ];
    assert_eq!(
        client::with_query("/v1/flows", &q),
        "/v1/flows?from=2026-11-22T10%3A00%3A00%2B01%3A00&tenant=a%20b%26c%3Dd"
    );
    assert_eq!(client::with_query("/v1/flows", &[]), "/v1/flows");
}

#[test]
fn tables_are_aligned() {
    let items: Vec<Value> = [0, 2, 4]
        .iter()
        .map(|i| {
            let line = if *i == 4 {
                named_line(*i, "eu.api.openai.com", Some("OpenAI"))
            } else {
                flow_line(*i)
            };
            let mut item = json!({ "seq": 10 + i, "hash": "00", "record": serde_json::from_str::<Value>(&line).unwrap() });
            if *i == 4 {
                item["totals"] = json!({ "bytes_out": 3_097_996, "bytes_in": 402_424 });
            }
            item
        })
        .collect();
    let t = client::flows_table(&items);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines.len(), 4, "{t}");
    assert!(lines[0].starts_with("SEQ  TIME (UTC)"), "{t}");
    // Every column starts where its header does.
    let col = lines[0].find("DESTINATION").unwrap();
    assert!(lines[1][col..].starts_with("203.0.113.7:443"), "{t}");
    assert!(lines[2][col..].starts_with("[2001:db8::9]:443"), "{t}");
    let name = lines[0].find("NAME").unwrap();
    assert!(lines[1][name..].starts_with("- "), "{t}");
    assert!(lines[3][name..].starts_with("eu.api.openai.com"), "{t}");
    // A followed flow shows what it moved; the others a dash.
    let moved = lines[0].find("SENT/RECEIVED").unwrap();
    assert_eq!(&lines[3][moved..], "3.10 MB/402 kB", "{t}");
    assert_eq!(&lines[1][moved..], "-", "{t}");
    assert!(lines[1].contains("2026-11-22 10:00:00"), "{t}");
    assert!(lines.iter().all(|l| !l.ends_with(' ')));

    let v = json!({
        "id": 3, "state": "open", "verdict": "blocked", "count": 12, "workload": "llm-gateway",
        "tenants": ["acme"], "destination": {"ip": "203.0.113.7", "port": 443, "country": "US"},
        "first_seen": "2026-11-22T10:00:00Z", "nis2": {"early_warning_due": "2026-11-23T10:00:00Z"}
    });
    let t = client::violations_table(&[v]);
    let lines: Vec<&str> = t.lines().collect();
    let col = lines[0].find("NIS2 EARLY WARNING DUE").unwrap();
    assert_eq!(&lines[1][col..], "2026-11-23 10:00:00", "{t}");
}
