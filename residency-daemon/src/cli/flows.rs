//! `residency flows`: the decisions the daemon recorded, from its API.

use std::process::ExitCode;

use residency_api::client::Listing;

use super::api::{self, ApiArgs, FilterArgs, PageArgs};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    filters: FilterArgs,
    #[command(flatten)]
    page: PageArgs,
    #[command(flatten)]
    api: ApiArgs,
}

pub fn execute(args: Args) -> ExitCode {
    let query = api::query(args.filters, &args.page, None);
    api::list(Listing::Flows, query, &args.page, &args.api)
}
