//! residency: an eBPF egress monitor for data residency.
//!
//! The library behind the `residency` binary. One module per stage of the
//! data flow (see `docs/architecture.md`):
//!
//! - [`config`]: the TOML file, validated;
//! - [`kernel`]: loads, fills and attaches the kernel programs, and reads
//!   their ring buffer and counters (the only module that uses aya);
//! - [`pipeline`]: moves records from the kernel to the sinks;
//! - [`enrich`]: turns kernel records into explained flows;
//! - [`sinks`]: writes records out (ECS JSON lines today).
//!
//! [`run`] wires them together; the binary, the tests and the benchmarks all
//! call it.

pub mod config;
pub mod enrich;
pub mod kernel;
pub mod pipeline;
pub mod sinks;

use std::{path::PathBuf, sync::Arc};

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};
use tracing::{error, info, warn};

use crate::{
    config::{Config, ConfigError, Output},
    kernel::{CgroupTarget, KernelError},
    pipeline::PipelineError,
    sinks::{
        StartInfo, StopInfo,
        jsonl::{JsonLines, WriteError},
    },
};

/// Settings given on the command line, layered over the file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// cgroup to attach to instead of `kernel.cgroup`: absolute (under the
    /// cgroup2 mount) or relative to the mount.
    pub cgroup: Option<PathBuf>,
    /// Output instead of `output.events`.
    pub output: Option<Output>,
}

/// Why `run` failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Output(#[from] WriteError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Attaches the kernel programs and reports every decision until SIGINT or
/// SIGTERM; then detaches, drains and returns the totals.
///
/// # Errors
/// A [`RunError`] that says in one line why the daemon could not start or
/// had to stop.
pub async fn run(mut config: Config, options: RunOptions) -> Result<StopInfo, RunError> {
    if let Some(output) = options.output {
        config.output = output;
    }
    let features = kernel::probe();
    info!(
        kernel = %features.kernel_release,
        cgroup2 = ?features.cgroup2,
        tracefs = ?features.tracefs,
        btf = features.btf,
        "kernel probed"
    );
    let mount = features.cgroup2.clone().ok_or(KernelError::NoCgroup2)?;
    let requested = options
        .cgroup
        .unwrap_or_else(|| config.kernel.cgroup.clone());
    let target = CgroupTarget::resolve(&mount, &requested)?;
    config.check_enforce_interlock(target.is_root)?;

    // Signals first, so that a SIGTERM during start-up is not lost, and
    // SIGHUP (sent by `systemctl reload`) does not kill the daemon.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut sigint = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(RunError::Signals)?;
    tokio::spawn(async move {
        let mut stopping = false;
        loop {
            let name = tokio::select! {
                _ = sigint.recv() => "SIGINT",
                _ = sigterm.recv() => "SIGTERM",
                _ = sighup.recv() => {
                    warn!("SIGHUP: configuration reload is not supported yet; the running configuration stays in force");
                    continue;
                }
            };
            if stopping {
                // A shutdown that hangs (an output that blocks) must still
                // be interruptible. The kernel detaches the programs when
                // the process ends.
                error!("{name} again: exiting now; records not yet written are lost");
                std::process::exit(130);
            }
            info!("{name}: stopping (send it again to exit at once)");
            stopping = true;
            let _ = stop_tx.send(true);
        }
    });

    // Open the output before attaching, so a bad path fails before anything
    // touches the kernel.
    let output = JsonLines::open(&config.output).await?;
    let start = StartInfo {
        cgroup_path: target.path.display().to_string(),
        cgroup_id: target.id,
        mode: config.mode.as_str(),
        may_block: config.may_block(),
        kernel_release: features.kernel_release.clone(),
        ring_buffer_kib: config.kernel.ring_buffer_bytes / 1024,
        deny_rules: config.deny.len(),
        config_source: config.source.clone(),
    };
    let kernel = kernel::start(&config, target)?;
    Ok(pipeline::run(Arc::new(config), kernel, start, output, stop_rx).await?)
}
