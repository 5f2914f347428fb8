//! The transfer report of a tenant and period, made from a daemon's store
//! of real flows: its numbers are the API's for the same tenant and period,
//! and the HTML page holds the tables an auditor reads.

use std::{
    ffi::OsStr,
    time::{Duration, Instant},
};

use residency_tests::privileged_or_skip;
use serde_json::Value;

fn residency(args: &[&OsStr]) -> anyhow::Result<(i32, String, String)> {
    residency_tests::residency_cli(args)
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "flows, the API, the JSON report, the page"
)]
fn the_report_numbers_are_the_apis_and_the_page_has_its_tables() -> anyhow::Result<()> {
    if !privileged_or_skip("the_report_numbers_are_the_apis_and_the_page_has_its_tables") {
        return Ok(());
    }
    let from = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(60);
    let flows = residency_tests::AcmeFlows::start("report")?;
    let (daemon, dir) = (&flows.daemon, &flows.dir);
    let socket = daemon.socket.clone();
    let api = |args: &[&str]| flows.api(args);
    let to = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(60);
    let (from, to) = (from.to_string(), to.to_string());
    let period = [
        "--tenant",
        "acme",
        "--from",
        from.as_str(),
        "--to",
        to.as_str(),
    ];
    // Wait for the six flows and a checkpoint over them.
    let deadline = Instant::now() + Duration::from_secs(10);
    let report = loop {
        let mut args = vec!["report", "--format", "json"];
        args.extend(period);
        let r = api(&args)?;
        // A checkpoint signed over the last of them (one a second).
        if r["totals"]["flows"] == 6
            && r["proof"]["after"]["seq"].as_u64() >= r["proof"]["last_seq"].as_u64()
            && r["proof"]["after"].is_object()
        {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the flows never reached the store: {r}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let t = &report["totals"];
    assert_eq!(
        (t["allowed"].as_u64(), t["blocked"].as_u64()),
        (Some(4), Some(2)),
        "{t}"
    );
    assert_eq!(t["countries"], 2, "{t}");
    assert_eq!(t["violations"], 1, "{t}");

    // The same numbers as the API's, for the same tenant and period.
    // `flows --all --json` prints one object per line.
    let (code, out, err) = residency(&[
        OsStr::new("flows"),
        OsStr::new("--tenant"),
        OsStr::new("acme"),
        OsStr::new("--from"),
        OsStr::new(&from),
        OsStr::new("--to"),
        OsStr::new(&to),
        OsStr::new("--all"),
        OsStr::new("--json"),
        OsStr::new("--api"),
        socket.as_os_str(),
    ])?;
    assert_eq!(code, 0, "{err}");
    let listed: Vec<Value> = out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(listed.len(), 6, "{out}");
    let violations = api(&[
        "violations",
        "--tenant",
        "acme",
        "--from",
        &from,
        "--to",
        &to,
    ])?;
    assert_eq!(
        violations["items"].as_array().map(Vec::len),
        Some(1),
        "{violations}"
    );
    for row in report["transfers"].as_array().into_iter().flatten() {
        let country = row["country"].as_str().unwrap_or("");
        // The country the kernel judged, as the summary counts it.
        let n = listed
            .iter()
            .filter(|f| f["record"]["residency"]["country"] == country)
            .count();
        assert_eq!(
            row["flows"].as_u64(),
            Some(u64::try_from(n)?),
            "{country}: {row}"
        );
    }

    // The page: the totals, the transfer and violation tables, the proof.
    let page = dir.path().join("acme.html");
    let mut args: Vec<&OsStr> = ["report", "--out"].iter().map(OsStr::new).collect();
    args.push(page.as_os_str());
    args.extend(period.iter().map(OsStr::new));
    args.extend([OsStr::new("--api"), socket.as_os_str()]);
    let (code, _, err) = residency(&args)?;
    assert_eq!(code, 0, "{err}");
    let html = std::fs::read_to_string(&page)?;
    for needle in [
        "<td data-total=\"flows\">6</td>",
        "<td data-total=\"blocked\">2</td>",
        "<table id=\"transfers\">",
        "<table id=\"violations\">",
        "<table id=\"checkpoint\">",
        "127.0.0.33",
        "residency evidence verify --bundle FILE --public-key KEY",
    ] {
        assert!(html.contains(needle), "the page lacks {needle}: {html}");
    }
    assert!(!html.contains("<script"), "the report carries no script");
    // The period's proof: where its flows are in the chain, and the
    // checkpoint whose signature covers them.
    assert!(html.contains("<p id=\"proof\">"), "{html}");
    assert!(html.contains("<table id=\"proof-after\">"), "{html}");

    // The PDF: Chromium prints the same page; pdftoppm renders its pages
    // (kept under target/screenshots/report to look at) and pdftotext
    // reads its tables back.
    let pdf = dir.path().join("acme.pdf");
    let mut args: Vec<&OsStr> = ["report", "--format", "pdf", "--out"]
        .iter()
        .map(OsStr::new)
        .collect();
    args.push(pdf.as_os_str());
    args.extend(period.iter().map(OsStr::new));
    args.extend([OsStr::new("--api"), socket.as_os_str()]);
    let (code, _, err) = residency(&args)?;
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::read(&pdf)?.starts_with(b"%PDF-"));
    let shots =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots/report");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots)?;
    let rendered = std::process::Command::new("pdftoppm")
        .args(["-png", "-r", "70"])
        .arg(&pdf)
        .arg(shots.join("page"))
        .output()?;
    assert!(
        rendered.status.success(),
        "pdftoppm: {}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let pages = std::fs::read_dir(&shots)?.count();
    assert!((1..=4).contains(&pages), "{pages} pages");
    let text = std::process::Command::new("pdftotext")
        .args(["-layout"])
        .arg(&pdf)
        .arg("-")
        .output()?;
    let text = String::from_utf8_lossy(&text.stdout);
    for needle in [
        "Record of transfers: tenant acme",
        "Transfers by destination",
        "Violations and how they were handled",
        "Signed over the period",
        "127.0.0.33",
    ] {
        assert!(text.contains(needle), "the PDF lacks {needle}: {text}");
    }
    // The totals table: 6 flows, 2 blocked, as the API counted them.
    let number_after = |label: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(label))
            .and_then(|l| l.split_whitespace().last())
            .map(str::to_owned)
    };
    assert_eq!(number_after("Flows").as_deref(), Some("6"), "{text}");
    assert_eq!(number_after("Blocked").as_deref(), Some("2"), "{text}");
    flows.daemon.stop()?;
    Ok(())
}
