//! What `flows` and `violations` share: how to reach the daemon's API,
//! the filters and paging they pass to it, and running one request.

use std::{future::Future, net::IpAddr, path::PathBuf, process::ExitCode};

use residency_api::client::{self, Client, ClientError, ListOptions, Listing};

use super::exit;

/// Filters of `residency flows` and `residency violations`, passed to the
/// API as they are (it checks them and names any that is wrong).
#[derive(Debug, clap::Args)]
pub struct FilterArgs {
    /// Only at or after this time (RFC 3339, e.g. 2026-11-22T00:00:00Z).
    #[arg(long, value_name = "TIME")]
    from: Option<String>,
    /// Only before this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    to: Option<String>,
    /// Only flows carrying this tenant's data.
    #[arg(long)]
    tenant: Option<String>,
    /// Only this workload, by name.
    #[arg(long)]
    workload: Option<String>,
    /// Only workloads of this role (llm, crm-sync, logging, backup, ...).
    #[arg(long)]
    role: Option<String>,
    /// Only destinations in this country (ISO 3166 alpha-2, any case).
    #[arg(long, value_name = "CC")]
    country: Option<String>,
    /// Only this verdict.
    #[arg(long, value_parser = ["allowed", "flagged", "blocked"])]
    verdict: Option<String>,
    /// Only this destination address.
    #[arg(long, value_name = "IP")]
    dst_ip: Option<IpAddr>,
    /// Only this destination host name.
    #[arg(long, value_name = "NAME")]
    dst_name: Option<String>,
    /// Only flows from pods of this Kubernetes namespace.
    #[arg(long, value_name = "NAMESPACE")]
    namespace: Option<String>,
    /// Only flows from this Kubernetes pod, by name (violations: the pod
    /// of the first occurrence).
    #[arg(long, value_name = "POD")]
    pod: Option<String>,
}

/// Paging of `residency flows` and `residency violations`.
#[derive(Debug, clap::Args)]
pub struct PageArgs {
    /// Rows per page (1 to 1000; the API's default is 100).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: Option<u32>,
    /// Follow the pages to the end (with --json: one JSON object per line).
    #[arg(long)]
    pub all: bool,
    /// Continue after this cursor (the `next` of a previous page).
    #[arg(long, value_name = "N")]
    pub cursor: Option<u64>,
    /// Oldest first instead of newest first.
    #[arg(long)]
    pub asc: bool,
}

/// How the API commands reach the daemon.
#[derive(Debug, clap::Args)]
pub struct ApiArgs {
    /// The API: a unix socket path, or http://HOST:PORT. Default: the
    /// socket /run/residency/api.sock when run as root and it exists, else
    /// <http://127.0.0.1:7470> (the port in /var/lib/residency/api.addr).
    #[arg(long, env = "RESIDENCY_API", value_name = "SOCKET|URL", global = true)]
    api: Option<String>,
    /// The bearer token for TCP (default /var/lib/residency/api.token).
    #[arg(
        long,
        env = "RESIDENCY_API_TOKEN_FILE",
        value_name = "FILE",
        global = true
    )]
    token_file: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The query parameters the filters and paging stand for.
pub fn query(filters: FilterArgs, page: &PageArgs, state: Option<String>) -> Vec<(String, String)> {
    let FilterArgs {
        from,
        to,
        tenant,
        workload,
        role,
        country,
        verdict,
        dst_ip,
        dst_name,
        namespace,
        pod,
    } = filters;
    [
        ("from", from),
        ("to", to),
        ("tenant", tenant),
        ("workload", workload),
        ("role", role),
        ("country", country),
        ("verdict", verdict),
        ("dst_ip", dst_ip.map(|ip| ip.to_string())),
        ("dst_name", dst_name),
        ("namespace", namespace),
        ("pod", pod),
        ("state", state),
        ("cursor", page.cursor.map(|c| c.to_string())),
        ("order", page.asc.then(|| "asc".to_owned())),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
    .collect()
}

/// Runs one API command: finds the API, runs `f` on a small runtime, and
/// turns its error into a message and an exit code.
pub fn with_api<F, Fut>(api: &ApiArgs, f: F) -> ExitCode
where
    F: FnOnce(Client) -> Fut,
    Fut: Future<Output = Result<(), ClientError>>,
{
    let client = match Client::discover(api.api.as_deref(), api.token_file.as_deref()) {
        Ok(c) => c,
        Err(e) => return exit::client(&e),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return exit::fail(&format!("cannot start the async runtime: {e}"), 1),
    };
    match runtime.block_on(f(client)) {
        Ok(()) => ExitCode::SUCCESS,
        // `residency flows | head`: not an error.
        Err(ClientError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(e) => exit::client(&e),
    }
}

/// Lists flows or violations, page by page as asked.
pub fn list(
    what: Listing,
    query: Vec<(String, String)>,
    page: &PageArgs,
    api: &ApiArgs,
) -> ExitCode {
    let opts = ListOptions {
        query,
        limit: page.limit,
        all: page.all,
        json: api.json,
    };
    with_api(api, async |client| {
        let mut out = std::io::stdout().lock();
        let listed = client::list(&client, what, &opts, &mut out).await?;
        if let (Some(next), false) = (listed.next, opts.json) {
            eprintln!("(more: --cursor {next} for the next page, or --all)");
        }
        Ok(())
    })
}
