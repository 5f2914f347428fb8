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
    /// Start of the period (RFC 3339, e.g. 2026-11-01T00:00:00Z).
    #[arg(long, value_name = "TIME")]
    from: String,
    /// End of the period, not included (RFC 3339).
    #[arg(long, value_name = "TIME")]
    to: String,
    /// `html`: one self-contained page, to read or print; `json`: the
    /// same numbers for machines. (PDF: not yet; print the HTML.)
    #[arg(long, default_value = "html", value_parser = ["html", "json"])]
    format: String,
    /// Write the report here instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    out: Option<PathBuf>,
    #[command(flatten)]
    api: ApiArgs,
}

pub fn execute(args: &Args) -> ExitCode {
    let period = [
        ("tenant".to_owned(), args.tenant.clone()),
        ("from".to_owned(), args.from.clone()),
        ("to".to_owned(), args.to.clone()),
    ];
    let (tenant, from, to, format, out) = (
        args.tenant.clone(),
        args.from.clone(),
        args.to.clone(),
        args.format.clone(),
        args.out.clone(),
    );
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
        let data = Data {
            tenant,
            from,
            to,
            made: jiff::Timestamp::now().to_string(),
            transfers,
            violations,
            checkpoint,
        };
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
