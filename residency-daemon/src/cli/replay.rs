//! `residency replay`: the recorded flows of a period judged again under
//! another configuration, to see what a change would do before it is made.

use std::{path::PathBuf, process::ExitCode};

use residency_api::client::{self, ClientError};
use residency_daemon::{control, lookup::Lookup, replay};

use super::{
    api::{self, ApiArgs, FilterArgs, PageArgs},
    exit,
};

/// Options of `residency replay`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The configuration to judge the flows by (not loaded anywhere).
    #[arg(short, long, value_name = "FILE")]
    config: PathBuf,
    /// GeoIP database (.mmdb) instead of the one the configuration names
    /// or the usual places hold.
    #[arg(long, value_name = "FILE")]
    geoip: Option<PathBuf>,
    /// Exit 1 if any flow would be blocked that was not: for a CI/CD
    /// pipeline, before a configuration is deployed.
    #[arg(long)]
    fail_on_new_blocks: bool,
    /// Example flows shown per workload and change.
    #[arg(long, value_name = "N", default_value_t = replay::DEFAULT_EXAMPLES)]
    examples: usize,
    #[command(flatten)]
    filters: FilterArgs,
    #[command(flatten)]
    api: ApiArgs,
}

pub fn execute(args: Args) -> ExitCode {
    // Read as given: a candidate configuration, not the one in force, so
    // the file's owner is not checked.
    let config = match control::read_config(&args.config, false) {
        Ok(c) => c,
        Err(e) => return exit::config(&e),
    };
    let lookup = match Lookup::new(&config, args.geoip.as_deref()) {
        Ok(l) => l,
        Err(e) => return exit::lookup(&e),
    };
    let page = PageArgs {
        limit: Some(1000),
        all: true,
        cursor: None,
        asc: true,
    };
    let query = api::query(args.filters, &page, None);
    let mut replay = replay::Replay::new(&config, lookup, args.examples);
    let json = args.api.json;
    let mut report = None;
    // Progress on a terminal: a long period is many pages.
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let code = api::with_api(&args.api, async |c| {
        let mut cursor: Option<u64> = None;
        let mut judged = 0u64;
        loop {
            let mut q = query.clone();
            q.retain(|(k, _)| k != "cursor");
            q.push(("limit".into(), "1000".into()));
            if let Some(n) = cursor {
                q.push(("cursor".into(), n.to_string()));
            }
            let page = c.get_json(&client::with_query("/v1/flows", &q)).await?;
            for item in page["items"].as_array().into_iter().flatten() {
                replay.add(item["seq"].as_u64().unwrap_or(0), &item["record"]);
                judged += 1;
            }
            if progress {
                eprint!("\rreplayed {judged} flows");
            }
            match page["next"].as_u64() {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        if progress {
            eprintln!();
        }
        let r = replay.finish();
        let text = if json {
            serde_json::to_string_pretty(&r)
                .map_err(|e| ClientError::Output(std::io::Error::other(e)))?
                + "\n"
        } else {
            r.text()
        };
        {
            use std::io::Write as _;
            std::io::stdout()
                .lock()
                .write_all(text.as_bytes())
                .map_err(ClientError::Output)?;
        }
        report = Some(r);
        Ok(())
    });
    if code != ExitCode::SUCCESS {
        return code;
    }
    match report {
        Some(r) if args.fail_on_new_blocks && r.new_blocks > 0 => {
            eprintln!(
                "residency replay: {} flows would be newly blocked (--fail-on-new-blocks)",
                r.new_blocks
            );
            ExitCode::FAILURE
        }
        _ => ExitCode::SUCCESS,
    }
}
