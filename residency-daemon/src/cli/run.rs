//! `residency run`: the daemon, until SIGINT or SIGTERM.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use residency_daemon::{RunOptions, config::Config, control, output::Output};

use super::exit;

/// Options of `residency run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Configuration file (TOML). Without it, the built-in default
    /// (`residency default-config` prints it) is used: monitor mode on
    /// the whole host.
    #[arg(short, long, env = "RESIDENCY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// cgroup v2 directory to watch instead of `kernel.cgroup`: a path
    /// under the cgroup2 mount, or relative to it.
    #[arg(long, value_name = "PATH")]
    cgroup: Option<PathBuf>,
    /// Where to write records instead of `output.events`: a file
    /// (appended to) or `-` for standard output.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// GeoIP database (.mmdb) instead of `geoip.database` and the
    /// search of the usual places.
    #[arg(long, value_name = "FILE")]
    geoip: Option<PathBuf>,
    /// Accept a configuration file that others than root can write. The
    /// daemon refuses one otherwise: whoever can write it controls the
    /// policy. For development only.
    #[arg(long)]
    allow_insecure_config: bool,
    /// Evidence directory instead of `evidence.directory` (the store,
    /// its signing key and the API token live there).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// API address on loopback instead of `api.listen` (`off`: none; port
    /// 0: any free port, written to api.addr in the evidence directory).
    #[arg(long, value_name = "ADDR")]
    api_listen: Option<String>,
    /// API unix socket instead of `api.socket` (`off`: none).
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// Pin directory name instead of `kernel.instance`: the programs and
    /// the maps they keep are pinned under /sys/fs/bpf/residency/NAME.
    /// One per daemon on a host.
    #[arg(long, value_name = "NAME")]
    instance: Option<String>,
}

pub fn execute(args: Args) -> ExitCode {
    let Args {
        config,
        cgroup,
        output,
        geoip,
        allow_insecure_config,
        state_dir,
        api_listen,
        api_socket,
        instance,
    } = args;
    if let Some(name) = &instance
        && !residency_daemon::kernel::config::valid_instance(name)
    {
        return exit::fail(
            &format!("--instance {name}: use 1-64 letters, digits, '.', '_' or '-'"),
            exit::USAGE,
        );
    }
    let api_listen = match api_listen.as_deref() {
        None => None,
        Some("off") => Some(None),
        Some(a) => match a.parse::<SocketAddr>() {
            Ok(addr) if addr.ip().is_loopback() => Some(Some(addr)),
            _ => {
                return exit::fail(
                    &format!(
                        "--api-listen {a}: expected a loopback address and port, e.g. 127.0.0.1:7470, or off"
                    ),
                    exit::USAGE,
                );
            }
        },
    };
    let api_socket = api_socket.map(|p| (p.as_os_str() != "off").then_some(p));
    // The file is checked and read once, here; reloads do the same.
    let parsed = match config.as_deref().map_or_else(Config::builtin, |p| {
        control::read_config(p, !allow_insecure_config)
    }) {
        Ok(c) => c,
        Err(e) => return exit::config(&e),
    };
    let options = RunOptions {
        cgroup,
        output: output.map(|p| {
            if p.as_os_str() == "-" {
                Output::Stdout
            } else {
                Output::File(p)
            }
        }),
        geoip,
        config_path: config,
        allow_insecure_config,
        state_dir,
        api_listen,
        api_socket,
        instance,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return exit::fail(&format!("cannot start the async runtime: {e}"), 1),
    };
    match runtime.block_on(residency_daemon::run(parsed, options)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => exit::run(&e),
    }
}
