//! The namespace-label watch against **recorded API responses served over
//! HTTP**, not a real API server: none can be installed on these machines.
//!
//! A local HTTP server on 127.0.0.1 answers `GET /api/v1/namespaces` with
//! recorded answers from `tests/data/` (a list as a real API server returns
//! it, with resourceVersions and labels; watch streams of newline-delimited
//! ADDED, MODIFIED, DELETED and BOOKMARK events; a 410 Gone ERROR event; an
//! HTTP 500 Status; a list cut off mid-answer), in a scripted order, and the
//! client reaches it through a kubeconfig, as a daemon outside the cluster
//! would. Needs no root.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a broken test server should panic there"
)]

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{RawQuery, State},
    http::{HeaderMap, StatusCode, header},
    response::Response,
    routing::get,
};
use futures_util::{StreamExt as _, stream};
use residency_kube::{KubeError, NamespaceLabels, Source, WatchOptions};
use tokio::sync::Semaphore;

fn data(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The recorded API server: which answer each request gets, and gates the
/// test opens to move it on.
struct Recorded {
    lists: AtomicUsize,
    watches: AtomicUsize,
    /// Opened when the first watch may expire (410 Gone).
    expire: Semaphore,
    /// Opened when the fourth list (after a 500 and a cut-off answer) may
    /// answer.
    relist: Semaphore,
    /// What each request asked: query and Authorization header.
    requests: Mutex<Vec<(String, String)>>,
}

fn json(status: StatusCode, body: impl Into<Body>) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .expect("a valid response")
}

async fn namespaces(
    State(server): State<Arc<Recorded>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let query = query.unwrap_or_default();
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    server.requests.lock().unwrap().push((query.clone(), auth));
    let lines = |text: String| -> Vec<Result<Bytes, std::io::Error>> {
        text.lines()
            .map(|l| Ok(Bytes::from(format!("{l}\n"))))
            .collect()
    };
    if query
        .split('&')
        .any(|p| p == "watch=true" || p == "watch=1")
    {
        if server.watches.fetch_add(1, Ordering::SeqCst) == 0 {
            // The events, then (once the test says so) 410 Gone: the
            // resourceVersion is too old, list again.
            let gate = server.clone();
            let expired = stream::once(async move {
                gate.expire.acquire().await.expect("gate").forget();
                Ok(Bytes::from(data("watch-expired.json")))
            });
            let body = stream::iter(lines(data("namespaces-watch.jsonl"))).chain(expired);
            json(StatusCode::OK, Body::from_stream(body))
        } else {
            // After the new list: one change, then the watch stays open.
            let body =
                stream::iter(lines(data("namespaces-rewatch.jsonl"))).chain(stream::pending());
            json(StatusCode::OK, Body::from_stream(body))
        }
    } else {
        match server.lists.fetch_add(1, Ordering::SeqCst) {
            0 => json(StatusCode::OK, data("namespaces-list.json")),
            1 => json(StatusCode::INTERNAL_SERVER_ERROR, data("status-500.json")),
            2 => json(StatusCode::OK, data("garbage.json")),
            _ => {
                server.relist.acquire().await.expect("gate").forget();
                json(StatusCode::OK, data("namespaces-relist.json"))
            }
        }
    }
}

/// Starts the recorded server; its state and a kubeconfig that points at it.
async fn serve(dir: &Path) -> (Arc<Recorded>, PathBuf) {
    let server = Arc::new(Recorded {
        lists: AtomicUsize::new(0),
        watches: AtomicUsize::new(0),
        expire: Semaphore::new(0),
        relist: Semaphore::new(0),
        requests: Mutex::new(Vec::new()),
    });
    let app = Router::new()
        .route("/api/v1/namespaces", get(namespaces))
        .with_state(server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\n\
             clusters:\n- name: recorded\n  cluster:\n    server: http://{addr}\n\
             users:\n- name: residency\n  user:\n    token: recorded-token\n\
             contexts:\n- name: recorded\n  context:\n    cluster: recorded\n    user: residency\n\
             current-context: recorded\n"
        ),
    )
    .unwrap();
    (server, kubeconfig)
}

/// Log lines, captured.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        std::io::stderr().write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Waits (up to 10 s) until `cond` holds of the map, re-checking on every
/// change.
async fn until(
    labels: &NamespaceLabels,
    changes: &mut tokio::sync::watch::Receiver<u64>,
    what: &str,
    cond: impl Fn(&NamespaceLabels) -> bool,
) {
    let wait = async {
        while !cond(labels) {
            changes.changed().await.expect("the watch task runs");
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .is_err()
    {
        panic!("timed out waiting for: {what}");
    }
}

fn label(labels: &NamespaceLabels, ns: &str, key: &str) -> Option<String> {
    labels.get(ns)?.get(key).cloned()
}

#[tokio::test(flavor = "current_thread")]
async fn the_map_follows_list_watch_and_survives_bad_answers() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("residency_kube=debug,kube_runtime=debug")
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // The runtime has one thread, so the watch task logs through this too.
    let _guard = tracing::subscriber::set_default(subscriber);

    let dir = tempfile::tempdir().unwrap();
    let (server, kubeconfig) = serve(dir.path()).await;
    let options = WatchOptions {
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..WatchOptions::default()
    };
    let (labels, mut changes) =
        residency_kube::watch_namespaces_with(Source::Kubeconfig(kubeconfig), options)
            .await
            .unwrap();

    // The list.
    until(
        &labels,
        &mut changes,
        "the first list",
        NamespaceLabels::synced,
    )
    .await;
    assert_eq!(labels.len(), 6);
    assert_eq!(
        label(&labels, "acme-prod", "residency.io/tenant").as_deref(),
        Some("acme")
    );
    assert_eq!(
        label(&labels, "kube-system", "kubernetes.io/metadata.name").as_deref(),
        Some("kube-system")
    );
    assert_eq!(label(&labels, "acme-prod", "residency.io/region"), None);

    // The watch: a label added, a namespace added, one deleted.
    until(&labels, &mut changes, "the watch events", |l| {
        l.get("globex-prod").is_none()
    })
    .await;
    assert_eq!(
        label(&labels, "acme-prod", "residency.io/region").as_deref(),
        Some("eu")
    );
    assert_eq!(
        label(&labels, "acme-staging", "residency.io/tenant").as_deref(),
        Some("acme")
    );
    assert_eq!(labels.len(), 6);

    // 410 Gone, then a 500 and a cut-off list: each an error, logged and
    // retried; the labels already known stay.
    server.expire.add_permits(1);
    let retried = async {
        while server.lists.load(Ordering::SeqCst) < 4 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), retried)
        .await
        .unwrap_or_else(|_| panic!("no retry after the errors; logs:\n{}", logs.text()));
    assert!(labels.synced());
    assert_eq!(labels.len(), 6, "nothing lost to the errors");
    assert_eq!(
        label(&labels, "acme-prod", "residency.io/region").as_deref(),
        Some("eu")
    );
    let log = logs.text();
    let failures = log.matches("namespace watch failed").count();
    assert!(
        failures >= 3,
        "410, 500 and the cut-off list each logged ({failures} seen):\n{log}"
    );
    assert!(
        log.contains("410") || log.contains("too old resource version"),
        "{log}"
    );
    assert!(log.contains("etcdserver: request timed out"), "{log}");
    // Failing lists back off: the waits grow.
    assert!(log.contains("retry_in_ms=40"), "backoff doubles:\n{log}");

    // The list that works replaces the map; the new watch goes on from it.
    server.relist.add_permits(1);
    until(&labels, &mut changes, "the new list and watch", |l| {
        label(l, "initech-prod", "team").as_deref() == Some("ml")
    })
    .await;
    assert_eq!(labels.len(), 7);
    assert!(labels.get("globex-prod").is_none());

    let requests = server.requests.lock().unwrap().clone();
    assert!(
        requests
            .iter()
            .all(|(_, auth)| auth == "Bearer recorded-token"),
        "the kubeconfig's token on every request: {requests:?}"
    );
    let watches: Vec<_> = requests
        .iter()
        .filter(|(q, _)| q.contains("watch=true"))
        .collect();
    assert!(
        watches[0].0.contains("resourceVersion=1000")
            && watches.last().unwrap().0.contains("resourceVersion=2000"),
        "each watch starts from its list's resourceVersion: {watches:?}"
    );
}

#[tokio::test]
async fn a_missing_kubeconfig_is_an_error_naming_it() {
    let path = PathBuf::from("/nonexistent/residency/kubeconfig");
    let err = residency_kube::watch_namespaces(Source::Kubeconfig(path))
        .await
        .unwrap_err();
    assert!(matches!(err, KubeError::Kubeconfig { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("/nonexistent/residency/kubeconfig")
    );
}

#[test]
fn not_in_cluster_without_a_service_account() {
    if !Path::new("/var/run/secrets/kubernetes.io/serviceaccount/token").exists() {
        assert!(!residency_kube::in_cluster());
    }
}

#[test]
fn the_recorded_answers_are_what_an_api_server_sends() {
    // Each watch line is one JSON event of a known type; the lists are
    // NamespaceLists with a resourceVersion; the cut-off one does not parse.
    for file in [
        "namespaces-watch.jsonl",
        "namespaces-rewatch.jsonl",
        "watch-expired.json",
    ] {
        for line in data(file).lines() {
            let kind = line
                .split_once("\"type\":\"")
                .and_then(|(_, rest)| rest.split('"').next())
                .unwrap_or_default();
            assert!(
                ["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"].contains(&kind),
                "{file}: {line}"
            );
        }
    }
    for file in ["namespaces-list.json", "namespaces-relist.json"] {
        let text = data(file);
        assert!(text.contains("\"kind\": \"NamespaceList\""), "{file}");
        assert!(text.contains("\"resourceVersion\""), "{file}");
    }
    assert!(!data("garbage.json").trim_end().ends_with('}'), "cut off");
}
