//! `residency-bench ui`: the dashboard over a store of `--records` records
//! (10 M by default, the synthetic flows of `bench evidence`: 50 tenants,
//! 20 countries, seven of them blocked, so thousands of violations).
//!
//! Each page is asked for `--loads` times over HTTP, a new connection each
//! time, with a session cookie (as a browser's first visit): the time to
//! the last byte, and the page's size. Then Debian's Chromium loads each
//! page five times (`tests/ui/timing.mjs`): the time from navigation to the
//! load event, which includes parsing, the stylesheet and the script, and
//! drawing the SVG.

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};
use residency_evidence::Evidence;

use super::evidence_bench::{Flows, evidence_config, fill, pct, scratch};

/// One answer: status, headers, body.
type Answer = (u16, String, Vec<u8>);

fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    form: Option<&str>,
) -> anyhow::Result<Answer> {
    let mut s = TcpStream::connect(addr)?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(c) = cookie {
        let _ = write!(req, "Cookie: {c}\r\n");
    }
    if let Some(f) = form {
        let _ = write!(
            req,
            "Origin: http://{addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{f}",
            f.len()
        );
    } else {
        req.push_str("\r\n");
    }
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, head, raw[split + 4..].to_vec()))
}

/// The pages timed: (what, path).
fn pages(day: &str, next_day: &str, middle: u64) -> Vec<(&'static str, String)> {
    vec![
        ("Overview, last 7 days", "/ui?days=7".into()),
        ("Overview, last 90 days", "/ui?days=90".into()),
        ("Violations, open", "/ui/violations?state=open".into()),
        ("One violation, with its flows", "/ui/violations/1".into()),
        ("Flows, newest", "/ui/flows".into()),
        (
            "Flows, one tenant and country",
            "/ui/flows?tenant=tenant-07&country=US".into(),
        ),
        ("One flow, explained", format!("/ui/flows/{middle}")),
        ("Policy", "/ui/policy".into()),
        (
            "Transfer report, one tenant, two days",
            format!("/ui/report?tenant=tenant-07&from={day}&to={next_day}"),
        ),
    ]
}

struct Row {
    what: &'static str,
    path: String,
    p50: f64,
    p99: f64,
    bytes: usize,
    chromium: Option<f64>,
}

pub fn run(
    records: u64,
    loads: usize,
    base: Option<PathBuf>,
    write_to: Option<&Path>,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let dir = scratch(base)?;
    let (ev, _) = Evidence::open(&evidence_config(dir.path()))?;
    let flows = Flows::new()?;
    eprintln!("ui: filling the store to {records} records");
    rt.block_on(fill(&ev, 0, records, &flows))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let config = residency_api::ApiConfig {
        listen: Some("127.0.0.1:0".parse()?),
        socket: None,
        token_file: dir.path().join("api.token"),
    };
    let metrics = residency_daemon::metrics::Metrics::new(ev.stats());
    let state = residency_api::ApiState {
        reader: ev.reader().clone(),
        evidence: ev.clone(),
        metrics: metrics.registry.clone(),
        attached: metrics.pipeline.attached.clone(),
    };
    let dashboard: residency_api::Extra =
        Box::new(|state, token| residency_ui::router(state, token, None));
    let serving = rt.block_on(residency_api::serve_with(
        &config,
        dir.path(),
        state,
        Some(dashboard),
        stop_rx,
    ))?;
    let addr = serving.tcp.context("no TCP listener")?;
    let token = std::fs::read_to_string(dir.path().join("api.token"))?;
    let (status, head, _) = http(
        addr,
        "POST",
        "/ui/login",
        None,
        Some(&format!("token={}&name=bench", token.trim())),
    )?;
    if status != 303 {
        bail!("login: {status}\n{head}");
    }
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .context("no session cookie")?
        .to_owned();
    let now = jiff::Timestamp::now();
    let day = (now - jiff::SignedDuration::from_hours(24))
        .strftime("%Y-%m-%d")
        .to_string();
    let next_day = (now + jiff::SignedDuration::from_hours(24))
        .strftime("%Y-%m-%d")
        .to_string();
    let mut rows = Vec::new();
    for (what, path) in pages(&day, &next_day, records / 2) {
        // Once to warm the caches, as a second visitor finds them.
        let (status, _, body) = http(addr, "GET", &path, Some(&cookie), None)?;
        if status != 200 {
            bail!("{path}: {status}: {}", String::from_utf8_lossy(&body));
        }
        let mut times = Vec::with_capacity(loads);
        for _ in 0..loads {
            let t = Instant::now();
            let (status, _, _) = http(addr, "GET", &path, Some(&cookie), None)?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
            if status != 200 {
                bail!("{path}: {status}");
            }
        }
        eprintln!("ui: {path}: p50 {:.1} ms", pct(&mut times, 0.5));
        rows.push(Row {
            what,
            path,
            p50: pct(&mut times, 0.5),
            p99: pct(&mut times, 0.99),
            bytes: body.len(),
            chromium: None,
        });
    }
    chromium(addr, token.trim(), &mut rows)?;
    let _ = stop_tx.send(true);
    rt.block_on(serving.stopped());
    let body = render(records, loads, &rows);
    println!("{body}");
    if let Some(path) = write_to {
        super::write_section(path, "ui", &body)?;
    }
    Ok(())
}

/// Loads in Chromium, when it and playwright-core are installed (`cargo
/// xtask bench ui` installs both).
fn chromium(addr: SocketAddr, token: &str, rows: &mut [Row]) -> anyhow::Result<()> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the repository")?
        .to_owned();
    let ui = repo.join("tests/ui");
    if !Path::new("/usr/bin/chromium").exists() || !ui.join("node_modules/playwright-core").is_dir()
    {
        eprintln!("ui: no Chromium or playwright-core: the browser column stays empty");
        return Ok(());
    }
    let paths: Vec<&str> = rows.iter().map(|r| r.path.as_str()).collect();
    let out = Command::new("node")
        .arg(ui.join("timing.mjs"))
        .env("BASE", format!("http://{addr}"))
        .env("TOKEN", token)
        .env("PATHS", serde_json::to_string(&paths)?)
        .current_dir(&ui)
        .output()?;
    if !out.status.success() {
        bail!("timing.mjs: {}", String::from_utf8_lossy(&out.stderr));
    }
    let times: serde_json::Value =
        serde_json::from_slice(out.stdout.trim_ascii()).context("timing.mjs's answer")?;
    for r in rows {
        r.chromium = times[r.path.as_str()].as_f64();
    }
    Ok(())
}

fn render(records: u64, loads: usize, rows: &[Row]) -> String {
    let mut out = format!(
        "Measured {} by `cargo xtask bench ui` on this 2-core VM: the dashboard over a store of \
         {records} records (the synthetic flows of `bench evidence`: 50 tenants, 20 countries). \
         Server: {loads} requests per page over HTTP, a new connection each, time to the last \
         byte. Chromium: navigation to the load event (stylesheet, script and SVG drawn), \
         median of 5 loads.\n\n\
         | page | server p50 | server p99 | size | Chromium load, median |\n|---|---:|---:|---:|---:|\n",
        jiff::Timestamp::now().strftime("%Y-%m-%d")
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} (`{}`) | {:.1} ms | {:.1} ms | {} KB | {} |",
            r.what,
            r.path,
            r.p50,
            r.p99,
            r.bytes.div_ceil(1024),
            r.chromium
                .map_or("n/a".to_owned(), |c| format!("{c:.0} ms"))
        );
    }
    out
}
