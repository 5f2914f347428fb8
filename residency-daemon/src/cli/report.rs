//! `residency report`: the record of one tenant's transfers over a period,
//! for an auditor, from the daemon's API.

use std::{io::Write as _, path::PathBuf, process::ExitCode};

use residency_api::client::{self, ClientError};
use residency_ui::report::Data;

use super::api::{self, ApiArgs};

/// Options of `residency report`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The tenant whose transfers the report records.
    #[arg(long)]
    tenant: String,
    /// Start of the period (RFC 3339, e.g. 2026-11-01T00:00:00Z); from
    /// the midnight (UTC) of its day, as the transfer counts are per day.
    #[arg(long, value_name = "TIME")]
    from: jiff::Timestamp,
    /// End of the period, not included (RFC 3339); to the next midnight
    /// (UTC) if it falls inside a day.
    #[arg(long, value_name = "TIME")]
    to: jiff::Timestamp,
    /// `html`: one self-contained page, to read or print; `json`: the
    /// same numbers for machines; `pdf`: the HTML page printed by a
    /// headless Chromium (A4, landscape), to hand to an auditor (needs
    /// `--out`).
    #[arg(long, default_value = "html", value_parser = ["html", "json", "pdf"])]
    format: String,
    /// Write the report here instead of standard output.
    #[arg(long, short, value_name = "FILE", required_if_eq("format", "pdf"))]
    out: Option<PathBuf>,
    /// The Chromium (or Chrome) that prints the PDF [default: the first of
    /// chromium, chromium-browser, google-chrome on PATH].
    #[arg(long, value_name = "PATH", env = "RESIDENCY_BROWSER")]
    browser: Option<PathBuf>,
    #[command(flatten)]
    api: ApiArgs,
}

pub fn execute(args: &Args) -> ExitCode {
    // Whole days: the transfer counts, the violations and the proof then
    // cover the same flows.
    let (from, to) = residency_ui::report::whole_days(args.from, args.to);
    let (from, to) = (from.to_string(), to.to_string());
    let period = [
        ("tenant".to_owned(), args.tenant.clone()),
        ("from".to_owned(), from.clone()),
        ("to".to_owned(), to.clone()),
    ];
    let (tenant, format, out) = (args.tenant.clone(), args.format.clone(), args.out.clone());
    // Found before the API is asked, so that a missing browser costs
    // nothing.
    let browser = if format == "pdf" {
        match pdf::browser(args.browser.as_deref()) {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("residency report: {e}");
                return ExitCode::from(69);
            }
        }
    } else {
        None
    };
    api::with_api(&args.api, async move |c| {
        let transfers = c
            .get_json(&client::with_query("/v1/transfers/summary", &period))
            .await?["items"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut violations = Vec::new();
        let mut cursor: Option<u64> = None;
        loop {
            let mut q = period.to_vec();
            q.push(("limit".into(), "1000".into()));
            if let Some(n) = cursor {
                q.push(("cursor".into(), n.to_string()));
            }
            let page = c
                .get_json(&client::with_query("/v1/violations", &q))
                .await?;
            violations.extend(page["items"].as_array().cloned().unwrap_or_default());
            match page["next"].as_u64() {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        // None signed yet is a fact the report states, not a failure.
        let checkpoint = c
            .get_json("/v1/checkpoints/latest")
            .await
            .unwrap_or(serde_json::Value::Null);
        let proof = c
            .get_json(&client::with_query(
                "/v1/checkpoints",
                &[
                    ("from".to_owned(), from.clone()),
                    ("to".to_owned(), to.clone()),
                ],
            ))
            .await?;
        let data = Data {
            tenant,
            from,
            to,
            made: jiff::Timestamp::now().to_string(),
            transfers,
            violations,
            checkpoint,
            proof,
        };
        if let (Some(browser), Some(path)) = (&browser, &out) {
            return pdf::print(&data.html(), path, browser)
                .map_err(|e| ClientError::Output(std::io::Error::other(e)));
        }
        let text = if format == "json" {
            let mut v = serde_json::to_value(&data)
                .map_err(|e| ClientError::Output(std::io::Error::other(e)))?;
            v["totals"] = serde_json::to_value(data.totals())
                .map_err(|e| ClientError::Output(std::io::Error::other(e)))?;
            serde_json::to_string_pretty(&v)
                .map_err(|e| ClientError::Output(std::io::Error::other(e)))?
                + "\n"
        } else {
            data.html()
        };
        match out {
            Some(path) => std::fs::write(&path, text).map_err(ClientError::Output)?,
            None => std::io::stdout()
                .lock()
                .write_all(text.as_bytes())
                .map_err(ClientError::Output)?,
        }
        Ok(())
    })
}

/// The PDF: the report's page printed by a headless Chromium. The page has
/// no script and loads nothing, and the browser runs with a throw-away
/// profile and its background networking off.
mod pdf {
    use std::{
        path::{Path, PathBuf},
        process::{Command, Stdio},
        time::{Duration, Instant},
    };

    const CANDIDATES: &[&str] = &[
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ];

    /// The browser to print with: `given`, or the first candidate on PATH.
    pub fn browser(given: Option<&Path>) -> Result<PathBuf, String> {
        if let Some(b) = given {
            return if b.is_file() {
                Ok(b.to_owned())
            } else {
                Err(format!("--browser {}: no such file", b.display()))
            };
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        for dir in std::env::split_paths(&path) {
            for name in CANDIDATES {
                let p = dir.join(name);
                if p.is_file() {
                    return Ok(p);
                }
            }
        }
        Err(format!(
            "a PDF is printed by a headless Chromium, and none is on PATH (looked for {}): \
             install one (Debian: apt install chromium) or name it with --browser; or make \
             the report with --format html and print that",
            CANDIDATES.join(", ")
        ))
    }

    /// Prints `html` to the PDF file `out` with `browser`.
    pub fn print(html: &str, out: &Path, browser: &Path) -> Result<(), String> {
        let work = tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
        let page = work.path().join("report.html");
        std::fs::write(&page, html).map_err(|e| format!("{}: {e}", page.display()))?;
        // Printed into the work directory, then moved: a failed print
        // leaves an existing file as it was.
        let printed = work.path().join("report.pdf");
        let mut cmd = Command::new(browser);
        cmd.args([
            "--headless",
            "--disable-gpu",
            "--no-first-run",
            "--no-pdf-header-footer",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--disable-extensions",
        ])
        .arg(format!(
            "--user-data-dir={}",
            work.path().join("profile").display()
        ))
        .arg(format!("--print-to-pdf={}", printed.display()))
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null());
        // To a file, not a pipe: nothing reads a pipe while it prints.
        let log = work.path().join("stderr.log");
        cmd.stderr(std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?);
        // Chromium's sandbox refuses to run as root.
        if nix::unistd::geteuid().is_root() {
            cmd.arg("--no-sandbox");
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", browser.display()))?;
        let deadline = Instant::now() + Duration::from_mins(1);
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("{} did not print within 60 s", browser.display()));
                }
                Err(e) => return Err(e.to_string()),
            }
        };
        let pdf = std::fs::read(&printed).unwrap_or_default();
        if !status.success() || !pdf.starts_with(b"%PDF-") {
            let err = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!(
                "{} did not print the PDF ({status}): {}",
                browser.display(),
                err.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
            ));
        }
        std::fs::write(out, &pdf).map_err(|e| format!("{}: {e}", out.display()))
    }
}
