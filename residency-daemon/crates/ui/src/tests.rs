//! The dashboard through its real router (`oneshot`), over a real evidence
//! store in a temporary directory. The browser's side (the pages rendered
//! by Chromium, the cookie kept by it) is `tests/tests/dashboard.rs`.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    body::Body,
    http::{Request, StatusCode, header},
};
use http_body_util::BodyExt as _;
use prometheus_client::{metrics::gauge::Gauge, registry::Registry};
use residency_api::ApiState;
use residency_evidence::{Evidence, EvidenceConfig, Filter, Reader, testing};
use tower::ServiceExt as _;

use super::{WhatIf, router};

const TOKEN: &str = "ui-test-token-0123456789abcdef";

struct Fixture {
    _dir: tempfile::TempDir,
    evidence: Evidence,
    router: Router,
}

/// Counts the flows it is given; refuses a configuration saying `bad`.
struct Counting;

impl WhatIf for Counting {
    fn replay(
        &self,
        reader: &Reader,
        config: &str,
        filter: &Filter,
        _max: u64,
    ) -> Result<serde_json::Value, String> {
        if config.contains("bad") {
            return Err("line 1: bad is not a setting".into());
        }
        let page = reader
            .flows(filter, &residency_evidence::Page::default())
            .map_err(|e| e.to_string())?;
        Ok(serde_json::json!({
            "flows": page.items.len(), "unchanged": 0, "new_blocks": page.items.len(),
            "unblocked": 0, "skipped": 0, "workloads_gone": [],
            "changes": [{"tenants": ["acme"], "workload": "acme-llm", "from": "allowed",
                         "to": "blocked", "flows": page.items.len(), "examples": []}],
        }))
    }
}

impl Fixture {
    async fn new() -> Self {
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
        // Two policy versions, the second allowing one more country.
        let policy = |hash: &str, text: &str| {
            let v = serde_json::json!({
                "@timestamp": "2026-11-17T09:00:00Z",
                "event": {"kind": "event", "category": ["configuration"], "type": ["change"],
                          "action": "policy-loaded", "outcome": "success", "module": "residency",
                          "dataset": "residency.lifecycle"},
                "residency": {"policy": {"hash": hash, "source": "/etc/residency/residency.toml",
                                         "text": text}}
            });
            format!("{v}\n")
        };
        evidence
            .append(
                [
                    policy(
                        "aaaa1111",
                        "[[tenant]]\nid = \"acme\"\nallowed = [\"EEA\"]\n",
                    ),
                    policy(
                        "bbbb2222",
                        "[[tenant]]\nid = \"acme\"\nallowed = [\"EEA\", \"<US>\"]\n",
                    ),
                ]
                .concat()
                .into_bytes(),
            )
            .await
            .unwrap();
        let lines: Vec<String> = (0..40)
            .map(|i| {
                let (country, verdict) = match i % 4 {
                    0 => ("US", "blocked"),
                    1 => ("FR", "flagged"),
                    _ => ("DE", "allowed"),
                };
                testing::flow(
                    i,
                    if i % 2 == 0 { "acme" } else { "globex" },
                    country,
                    verdict,
                    "198.51.100.7",
                )
            })
            .collect();
        evidence.append(testing::lines(lines)).await.unwrap();
        evidence.checkpoint().await.unwrap();
        assert!(evidence.wait_indexed(Duration::from_secs(30)).await);
        let attached = Gauge::default();
        attached.set(1);
        let state = ApiState {
            reader: evidence.reader().clone(),
            evidence: evidence.clone(),
            metrics: Arc::new(Registry::default()),
            attached,
        };
        let router = router(state, TOKEN, Some(Arc::new(Counting)));
        Fixture {
            _dir: dir,
            evidence,
            router,
        }
    }

    async fn send(&self, req: Request<Body>) -> (StatusCode, header::HeaderMap, String) {
        let res = self.router.clone().oneshot(req).await.unwrap();
        let (status, headers) = (res.status(), res.headers().clone());
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    async fn get(
        &self,
        path: &str,
        cookie: Option<&str>,
    ) -> (StatusCode, header::HeaderMap, String) {
        let mut req = Request::get(path).header(header::HOST, "127.0.0.1:7070");
        if let Some(c) = cookie {
            req = req.header(header::COOKIE, c);
        }
        self.send(req.body(Body::empty()).unwrap()).await
    }

    async fn post(
        &self,
        path: &str,
        cookie: Option<&str>,
        origin: &str,
        form: &str,
    ) -> (StatusCode, header::HeaderMap, String) {
        let mut req = Request::post(path)
            .header(header::HOST, "127.0.0.1:7070")
            .header(header::ORIGIN, origin)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(c) = cookie {
            req = req.header(header::COOKIE, c);
        }
        self.send(req.body(Body::from(form.to_owned())).unwrap())
            .await
    }

    /// Logs in; returns the cookie (name=value) and the form token.
    async fn login(&self) -> (String, String) {
        let (status, headers, _) = self
            .post(
                "/ui/login",
                None,
                "http://127.0.0.1:7070",
                &format!("token={TOKEN}&name=Dana+DPO&next=%2Fui%2Fflows"),
            )
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(headers[header::LOCATION], "/ui/flows");
        let set = headers[header::SET_COOKIE].to_str().unwrap().to_owned();
        for attr in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age="] {
            assert!(set.contains(attr), "{attr} missing from {set}");
        }
        let cookie = set.split(';').next().unwrap().to_owned();
        let (_, _, page) = self.get("/ui/policy", Some(&cookie)).await;
        let csrf = page
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .expect("a form token on the policy page")
            .to_owned();
        (cookie, csrf)
    }
}

#[tokio::test]
async fn without_a_session_pages_send_you_to_the_login_and_forms_are_refused() {
    let f = Fixture::new().await;
    let (status, headers, _) = f.get("/ui/violations?state=open", None).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        headers[header::LOCATION],
        "/ui/login?next=%2Fui%2Fviolations%3Fstate%3Dopen"
    );
    // A made-up cookie is no session.
    let (status, _, _) = f.get("/ui", Some("residency_ui=00ff")).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, _, _) = f
        .post(
            "/ui/violations/1/ack",
            None,
            "http://127.0.0.1:7070",
            "note=x&csrf=y",
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The wrong token: no cookie, and it says so.
    let (status, headers, body) = f
        .post(
            "/ui/login",
            None,
            "http://127.0.0.1:7070",
            "token=nope&name=x",
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers.get(header::SET_COOKIE).is_none());
    assert!(body.contains("That is not the API token"), "{body}");
    // The login page itself is open, and sends the policy that keeps it to
    // this origin.
    let (status, headers, body) = f.get("/ui/login", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("type=\"password\""));
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(headers["x-frame-options"], "DENY");
}

#[tokio::test]
async fn another_origin_or_another_host_name_gets_nothing() {
    let f = Fixture::new().await;
    let (cookie, csrf) = f.login().await;
    // A form posted from another site, even with the cookie (which a
    // browser would not send: SameSite=Strict).
    let (status, _, body) = f
        .post(
            "/ui/violations/1/ack",
            Some(&cookie),
            "http://evil.example",
            &format!("note=x&csrf={csrf}"),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // The right origin but a stale form token.
    let (status, _, body) = f
        .post(
            "/ui/violations/1/ack",
            Some(&cookie),
            "http://127.0.0.1:7070",
            "note=x&csrf=0000",
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("out of date"));
    // DNS rebinding: a name that resolves here is not this dashboard.
    let req = Request::get("/ui/login")
        .header(header::HOST, "rebind.example:7070")
        .body(Body::empty())
        .unwrap();
    let (status, _, _) = f.send(req).await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
    // Logged out, the cookie is no longer a session.
    let (status, _, _) = f
        .post("/ui/logout", Some(&cookie), "http://127.0.0.1:7070", "")
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, _, _) = f.get("/ui", Some(&cookie)).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn every_page_renders_from_the_store() {
    let f = Fixture::new().await;
    let (cookie, _) = f.login().await;
    let (status, _, page) = f.get("/ui?days=90", Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("<svg class=\"chart sankey\""), "{page}");
    assert!(
        page.contains("acme (20)"),
        "the tenant node counts its flows"
    );
    assert!(page.contains("data-country=\"US\" data-verdict=\"blocked\""));
    assert!(page.contains("data-country=\"FR\" data-verdict=\"flagged\""));
    assert!(page.contains("data-country=\"DE\" data-verdict=\"allowed\""));
    assert!(page.contains("id=\"total-flows\">40<"), "totals: {page}");
    assert!(page.contains("signature and head check out now"), "{page}");
    assert!(page.contains("/ui/report?tenant=acme"));

    let (status, _, page) = f
        .get("/ui/flows?country=US&verdict=blocked", Some(&cookie))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page.matches("<td class=\"why\">").count(), 10, "{page}");
    assert!(page.contains("Blocked because workload acme-llm"), "{page}");
    // The API's own checks, with its words.
    let (status, _, page) = f.get("/ui/flows?country=USA", Some(&cookie)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(page.contains("country"), "{page}");
    // A date from a date field is midnight UTC.
    let (status, _, _) = f.get("/ui/flows?from=2026-01-01&to=", Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK);

    let (status, _, page) = f.get("/ui/flows/3", Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("Decided by the kernel under policy version abc"),
        "{page}"
    );
    let (status, _, _) = f.get("/ui/flows/999999", Some(&cookie)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, _, page) = f.get("/ui/violations", Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("id=\"violation-list\""), "{page}");
    // The policy page: the newest version in force, and by default the
    // difference from the one before, line by line, escaped.
    let (status, _, page) = f.get("/ui/policy", Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("What if?"));
    assert!(page.contains("Version <code>bbbb2222</code>"), "{page}");
    assert!(
        page.contains("<span class=\"del\">-allowed = [&quot;EEA&quot;]\n</span>"),
        "{page}"
    );
    assert!(page.contains(
        "<span class=\"ins\">+allowed = [&quot;EEA&quot;, &quot;&lt;US&gt;&quot;]\n</span>"
    ));
    // Chosen versions, by a prefix of their hash, the other way round.
    let (_, _, page) = f.get("/ui/policy?a=bbbb&b=aaaa", Some(&cookie)).await;
    assert!(
        page.contains("<span class=\"ins\">+allowed = [&quot;EEA&quot;]\n</span>"),
        "{page}"
    );
    let (status, _, page) = f
        .get(
            "/ui/report?tenant=acme&from=2026-01-01&to=2027-01-01",
            Some(&cookie),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Record of transfers: tenant acme"), "{page}");
    assert!(page.contains("data-total=\"flows\">20<"), "{page}");
    // Assets are served from here, the rest is not found.
    let (status, headers, _) = f.get("/ui/assets/ui.css", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
    let (status, _, _) = f.get("/ui/assets/other.js", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn acknowledging_from_the_dashboard_is_recorded_in_the_chain_with_who() {
    let f = Fixture::new().await;
    let (cookie, csrf) = f.login().await;
    let (_, _, page) = f.get("/ui/violations?state=open", Some(&cookie)).await;
    let id: i64 = page
        .split("href=\"/ui/violations/")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|s| s.parse().ok())
        .expect("an open violation");
    let (status, headers, body) = f
        .post(
            &format!("/ui/violations/{id}/ack"),
            Some(&cookie),
            "http://127.0.0.1:7070",
            &format!("note=Ticket+SEC-42%3A+looking&csrf={csrf}"),
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    assert_eq!(
        headers[header::LOCATION],
        format!("/ui/violations/{id}?done=acknowledged")
    );
    let v = f.evidence.reader().violation(id).unwrap().unwrap();
    let ack = v.acknowledged.expect("acknowledged");
    assert_eq!(ack.by, "ui:Dana DPO (token)");
    assert_eq!(ack.note, "Ticket SEC-42: looking");
    let record = f.evidence.reader().record(ack.seq).unwrap().unwrap();
    assert!(
        record.record.get().contains("violation-acknowledged"),
        "{}",
        record.record.get()
    );
    // Twice is a conflict, said in words.
    let (status, _, body) = f
        .post(
            &format!("/ui/violations/{id}/ack"),
            Some(&cookie),
            "http://127.0.0.1:7070",
            &format!("note=again&csrf={csrf}"),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body.contains("was not acknowledged"), "{body}");
    // Resolved, with its own note and record; the page then offers no
    // form, and its clocks say handled.
    let (status, headers, body) = f
        .post(
            &format!("/ui/violations/{id}/resolve"),
            Some(&cookie),
            "http://127.0.0.1:7070",
            &format!("note=Bucket+moved+to+eu-west-1&csrf={csrf}"),
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    assert_eq!(
        headers[header::LOCATION],
        format!("/ui/violations/{id}?done=resolved")
    );
    let v = f.evidence.reader().violation(id).unwrap().unwrap();
    let resolved = v.resolved.expect("resolved");
    assert_eq!(
        (resolved.by.as_str(), resolved.note.as_str()),
        ("ui:Dana DPO (token)", "Bucket moved to eu-west-1")
    );
    assert!(resolved.seq > ack.seq);
    let (_, _, page) = f
        .get(&format!("/ui/violations/{id}?done=resolved"), Some(&cookie))
        .await;
    assert!(
        page.contains("Recorded in the evidence chain: resolved."),
        "{page}"
    );
    assert!(!page.contains("<form class=\"note\""), "{page}");
    assert!(page.contains("data-state=\"done\""), "{page}");
    // Words other than the two outcomes are not put on the page.
    let (_, _, page) = f
        .get(&format!("/ui/violations/{id}?done=hacked"), Some(&cookie))
        .await;
    assert!(!page.contains("hacked"), "{page}");
}

#[tokio::test]
async fn what_if_shows_the_replay_and_refuses_a_bad_configuration_in_words() {
    let f = Fixture::new().await;
    let (cookie, csrf) = f.login().await;
    let (status, _, page) = f
        .post(
            "/ui/policy/what-if",
            Some(&cookie),
            "http://127.0.0.1:7070",
            &format!("config=%5Bpolicy%5D&tenant=acme&from=&to=&csrf={csrf}"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("id=\"replay-changes\""), "{page}");
    assert!(page.contains("20 newly blocked"), "{page}");
    // The pasted text is kept in the form, to fix and send again.
    assert!(page.contains(">[policy]</textarea>"), "{page}");
    let (status, _, page) = f
        .post(
            "/ui/policy/what-if",
            Some(&cookie),
            "http://127.0.0.1:7070",
            &format!("config=bad&csrf={csrf}"),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.contains("bad is not a setting"), "{page}");
}

#[tokio::test]
async fn hostile_input_gets_a_clear_answer_and_changes_nothing() {
    let f = Fixture::new().await;
    // After login, only a path of these pages is somewhere to go.
    for next in [
        "%2F%2Fevil.example%2Fui",
        "https%3A%2F%2Fevil.example",
        "%2Fui%5C..%5Cx",
    ] {
        let (status, headers, _) = f
            .post(
                "/ui/login",
                None,
                "http://127.0.0.1:7070",
                &format!("token={TOKEN}&next={next}"),
            )
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(headers[header::LOCATION], "/ui", "next={next}");
    }
    let (cookie, csrf) = f.login().await;
    let (status, _, body) = f.get("/ui/violations/abc", Some(&cookie)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("is not a violation id"), "{body}");
    let (status, _, _) = f.get("/ui/violations/999", Some(&cookie)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = f
        .post(
            "/ui/violations/1/delete",
            Some(&cookie),
            "http://127.0.0.1:7070",
            &format!("note=x&csrf={csrf}"),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // An empty note says why it is refused, and the violation stays open.
    let (status, _, body) = f
        .post(
            "/ui/violations/1/resolve",
            Some(&cookie),
            "http://127.0.0.1:7070",
            &format!("note=+++&csrf={csrf}"),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("The note must say why"), "{body}");
    let v = f.evidence.reader().violation(1).unwrap().unwrap();
    assert_eq!(v.state, residency_evidence::ViolationState::Open);
    // A configuration larger than the page takes.
    let big = "x".repeat(300 * 1024);
    let (status, _, body) = f
        .post(
            "/ui/policy/what-if",
            Some(&cookie),
            "http://127.0.0.1:7070",
            &format!("config={big}&csrf={csrf}"),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        &body[..body.len().min(300)]
    );
    let (status, _, body) = f
        .post(
            "/ui/policy/what-if",
            Some(&cookie),
            "http://127.0.0.1:7070",
            &format!("config=x&from=last+week&csrf={csrf}"),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("is not a date"), "{body}");
    // A report needs its tenant, and says so.
    let (status, _, body) = f.get("/ui/report?from=2026-01-01", Some(&cookie)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("which tenant"), "{body}");
}
