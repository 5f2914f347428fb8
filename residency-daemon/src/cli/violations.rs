//! `residency violations`: lists violations, or acknowledges or resolves
//! one (recorded in the evidence chain by the daemon).

use std::process::ExitCode;

use residency_api::client::{self, Listing};

use super::{
    api::{self, ApiArgs, FilterArgs, PageArgs},
    exit,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Option<Action>,
    #[command(flatten)]
    filters: FilterArgs,
    /// Only violations in this state.
    #[arg(long, value_parser = ["open", "acknowledged", "resolved"])]
    state: Option<String>,
    #[command(flatten)]
    page: PageArgs,
    #[command(flatten)]
    api: ApiArgs,
}

/// `residency violations ack|resolve`.
#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Acknowledge an open violation: someone is on it.
    Ack {
        /// The violation's id (the ID column).
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        id: i64,
        /// Why: who looked and what happens next (at most 4096 bytes).
        #[arg(long)]
        note: String,
    },
    /// Resolve an open or acknowledged violation: it is dealt with. A
    /// repeat of the same breach afterwards opens a new violation.
    Resolve {
        /// The violation's id (the ID column).
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        id: i64,
        /// What was done (at most 4096 bytes).
        #[arg(long)]
        note: String,
    },
}

pub fn execute(args: Args) -> ExitCode {
    let Args {
        action,
        filters,
        state,
        page,
        api,
    } = args;
    let (id, resolve, note) = match action {
        None => {
            let query = api::query(filters, &page, state);
            return api::list(Listing::Violations, query, &page, &api);
        }
        Some(Action::Ack { id, note }) => (id, false, note),
        Some(Action::Resolve { id, note }) => (id, true, note),
    };
    if !api::query(filters, &page, state).is_empty() || page.limit.is_some() || page.all {
        return exit::fail(
            &"filters and paging apply to the list; `ack` and `resolve` take an id and --note",
            exit::USAGE,
        );
    }
    let json = api.json;
    api::with_api(&api, async |client| {
        let mut out = std::io::stdout().lock();
        client::transition(&client, id, resolve, &note, json, &mut out).await?;
        Ok(())
    })
}
