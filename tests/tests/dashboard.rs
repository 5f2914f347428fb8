//! The dashboard in a real browser: Debian's Chromium, driven by
//! playwright-core (`tests/ui/dashboard.mjs`), against a daemon with real
//! kernel programs and a real store of the flows a client in a test cgroup
//! made. The script logs in, reads every page, acknowledges a violation,
//! replays a pasted configuration and opens a tenant's report; this test
//! checks what it saw against the store and the chain, and that
//! `evidence verify` still passes. Screenshots of every page go to
//! `target/screenshots/dashboard/`.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use residency_tests::{AcmeFlows, acme_config, privileged_or_skip, residency_cli};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the repository")
        .to_owned()
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one visit, page by page, as the script makes it"
)]
fn a_compliance_lead_reads_every_page_and_acknowledges_a_violation_in_chromium()
-> anyhow::Result<()> {
    if !privileged_or_skip("a_compliance_lead_reads_every_page_and_acknowledges_a_violation") {
        return Ok(());
    }
    let driver = repo().join("tests/ui/dashboard.mjs");
    let chromium = Path::new("/usr/bin/chromium");
    anyhow::ensure!(
        chromium.exists()
            && repo()
                .join("tests/ui/node_modules/playwright-core")
                .is_dir(),
        "Chromium (/usr/bin/chromium) or playwright-core (tests/ui/node_modules) is missing: \
         `cargo xtask test` installs both"
    );
    let flows = AcmeFlows::start("dashboard")?;
    let daemon = &flows.daemon;
    let api = |args: &[&str]| flows.api(args);
    let from = (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1)).to_string();
    let to = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1)).to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = api(&[
            "report", "--format", "json", "--tenant", "acme", "--from", &from, "--to", &to,
        ])?;
        if r["totals"]["flows"] == 6 && r["checkpoint"]["seq"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the flows never reached the store: {r}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A stricter policy to paste: acme may no longer send to Germany.
    let stricter = flows.dir.path().join("stricter.toml");
    std::fs::write(&stricter, acme_config(&flows.root, "\"FR\""))?;
    let token = std::fs::read_to_string(daemon.state.join("api.token"))?;
    let addr = std::fs::read_to_string(daemon.state.join("api.addr"))?;
    let shots = repo().join("target/screenshots/dashboard");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots)?;
    let run = Command::new("node")
        .arg(&driver)
        .env("BASE", format!("http://{}", addr.trim()))
        .env("TOKEN", token.trim())
        .env("SHOTS", &shots)
        .env("CONFIG", &stricter)
        .env("CHROMIUM", chromium)
        .current_dir(repo().join("tests/ui"))
        .output()?;
    let stdout = String::from_utf8_lossy(&run.stdout);
    anyhow::ensure!(
        run.status.success(),
        "the browser script failed: {}\n{stdout}\ndaemon: {}",
        String::from_utf8_lossy(&run.stderr),
        daemon.stderr_text()
    );
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))?;
    let o = &seen["pages"]["overview"];

    // Nothing left loopback, and no page threw.
    assert_eq!(seen["notLoopback"], serde_json::json!([]), "{seen}");
    assert!(
        seen["requests"].as_array().is_some_and(|r| r.len() > 10),
        "{seen}"
    );
    assert_eq!(seen["errors"], serde_json::json!([]), "{seen}");
    // The session: refused without it; a cookie scripts cannot read, sent
    // to this site's pages only; the JSON API does not take it.
    assert_eq!(seen["refusedWithoutSession"], 401, "{seen}");
    assert_eq!(
        seen["cookie"],
        serde_json::json!({"httpOnly": true, "sameSite": "Strict", "path": "/ui"})
    );
    assert_eq!(seen["apiWithCookieOnly"], 401, "{seen}");
    assert_eq!(seen["afterLogout"], "/ui/login");
    assert_eq!(seen["oldCookieAfterLogout"], 303, "{seen}");
    // The overview draws what the store holds.
    assert_eq!(o["totalFlows"], "6", "{o}");
    assert!(o["bands"].as_u64().unwrap_or(0) >= 4, "{o}");
    assert!(o["countries"].as_u64().unwrap_or(0) > 170, "{o}");
    assert_eq!(o["blocked"], serde_json::json!(["US"]), "{o}");
    assert_eq!(o["allowed"], serde_json::json!(["DE"]), "{o}");
    assert!(
        o["dayBars"].as_u64().unwrap_or(0) >= 2,
        "allowed and blocked: {o}"
    );
    assert!(
        o["checkpoint"]
            .as_str()
            .is_some_and(|c| c.contains("check out now")),
        "{o}"
    );
    assert!(o["clocks"].as_u64().unwrap_or(0) >= 3, "{o}");
    assert_eq!(o["clockTicks"], true, "the NIS2 clocks count down: {o}");
    assert!(
        o["overflow"].as_i64().unwrap_or(1) <= 0,
        "wider than a laptop: {o}"
    );
    assert_eq!(
        seen["keyboard"],
        serde_json::json!(["Skip to the content", "Violations"]),
        "Tab order: {seen}"
    );
    // Flows, filtered, explained; neither list is wider than a laptop.
    assert_eq!(seen["pages"]["flows"]["rows"], 2, "{seen}");
    for page in ["flows", "violations"] {
        assert!(
            seen["pages"][page]["overflow"].as_i64().unwrap_or(1) <= 0,
            "{page} is wider than a laptop: {seen}"
        );
    }
    assert!(
        seen["pages"]["flow"]["why"]
            .as_str()
            .is_some_and(|w| w.starts_with("Blocked because the address is in US")),
        "{seen}"
    );
    assert!(
        seen["pages"]["flow"]["versions"]
            .as_str()
            .is_some_and(|v| v.contains("policy version")),
        "{seen}"
    );
    // What-if: exactly the four flows to Germany would be blocked.
    assert_eq!(
        seen["pages"]["policy"]["newBlocks"], "4 newly blocked",
        "{seen}"
    );
    assert_eq!(seen["pages"]["policy"]["changes"], 1, "{seen}");
    // The report, from the overview's link, counts what the API counts.
    assert_eq!(
        seen["pages"]["report"]["h1"],
        "Record of transfers: tenant acme"
    );
    assert_eq!(seen["pages"]["report"]["flows"], "6");

    // The acknowledgement is in the chain, with who made it.
    let id = seen["pages"]["violation"]["id"].as_i64().unwrap_or(0);
    assert_eq!(
        seen["pages"]["violation"]["state"], "acknowledged",
        "{seen}"
    );
    let listed = api(&["violations", "--tenant", "acme"])?;
    let v = listed["items"]
        .as_array()
        .and_then(|all| all.iter().find(|v| v["id"] == id))
        .cloned()
        .unwrap_or_default();
    assert_eq!(v["state"], "acknowledged", "{v}");
    assert_eq!(v["acknowledged"]["by"], "ui:Dana (DPO) (token)", "{v}");
    assert!(
        v["acknowledged"]["note"]
            .as_str()
            .is_some_and(|n| n.starts_with("SEC-42")),
        "{v}"
    );
    for page in [
        "login",
        "overview",
        "flows",
        "flow",
        "violations",
        "violation",
        "policy",
        "policy-what-if",
        "report",
    ] {
        let shot = shots.join(format!("{page}.png"));
        anyhow::ensure!(
            std::fs::metadata(&shot).is_ok_and(|m| m.len() > 10_000),
            "no screenshot of {page}"
        );
    }
    // The chain with the acknowledgement in it still verifies (a live
    // store: verify reads one snapshot of it).
    let (code, out, err) = residency_cli(&[
        OsStr::new("evidence"),
        OsStr::new("verify"),
        OsStr::new("--store"),
        daemon.state.as_os_str(),
    ])?;
    assert_eq!(code, 0, "evidence verify: {out}{err}");
    flows.daemon.stop()?;
    Ok(())
}
