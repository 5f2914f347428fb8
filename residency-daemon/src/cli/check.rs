//! `residency check`: validates a configuration file and summarises it,
//! without loading anything into the kernel.

use std::{fmt::Write as _, path::PathBuf, process::ExitCode};

use residency_daemon::config::{Config, RuleKind};

use super::exit;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(short, long, value_name = "FILE")]
    config: PathBuf,
}

pub fn execute(args: &Args) -> ExitCode {
    let c = match Config::from_file(&args.config) {
        Ok(c) => c,
        Err(e) => return exit::config(&e),
    };
    if let Err(e) = c.check_enforce_interlock(c.kernel.cgroup.as_os_str().is_empty()) {
        return exit::config(&e);
    }
    print!("{}", report(&c));
    for w in c.warnings(jiff::Timestamp::now()) {
        eprintln!("warning: {w}");
    }
    ExitCode::SUCCESS
}

/// What a valid configuration does, in a few lines: mode, cgroup, what is
/// allowed, the rules, each sink and what it receives, the tenants.
fn report(c: &Config) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: valid: mode {}, cgroup /{}, allowed {}, unknown destinations: {}, \
         {} deny rule(s), {} internal network rule(s)",
        c.source,
        c.mode.as_str(),
        c.kernel.cgroup.display(),
        c.policy.allowed_names.join(", "),
        c.policy.unknown.as_str(),
        c.deny_rules().count(),
        c.rules
            .iter()
            .filter(|r| matches!(r.kind, RuleKind::Internal(_)))
            .count(),
    );
    let _ = writeln!(out, "{}", pins_line(c));
    let _ = writeln!(out, "{}", flows_line(c));
    for sink in &c.sinks {
        let r = sink.receives;
        let takes: Vec<&str> = [
            ("violations", r.violations),
            ("flows", r.flows),
            ("checkpoints", r.checkpoints),
            ("gaps", r.gaps),
        ]
        .iter()
        .filter(|(_, on)| *on)
        .map(|(n, _)| *n)
        .collect();
        let _ = writeln!(
            out,
            "sink {}: {} ({}), receives {}",
            sink.name,
            sink.kind(),
            sink.format,
            takes.join(", ")
        );
    }
    if !c.tenants.is_empty() || !c.workloads.is_empty() {
        let by_label = c
            .workloads
            .iter()
            .filter(|w| {
                w.name
                    .starts_with(residency_daemon::config::LABEL_WORKLOAD_PREFIX)
            })
            .count();
        let _ = writeln!(
            out,
            "{} tenant(s), {} workload(s){}, {} exception(s)",
            c.tenants.len(),
            c.workloads.len() - by_label,
            if by_label > 0 {
                format!(
                    " and {by_label} for pods that name their tenant and role by label \
                     ({}=<tenant>, {}=<role>)",
                    c.kubernetes.tenant_label.as_deref().unwrap_or_default(),
                    c.kubernetes.role_label
                )
            } else {
                String::new()
            },
            c.exceptions.len()
        );
    }
    if c.kubernetes.enabled {
        let _ = writeln!(
            out,
            "kubernetes: pods from the runtime at {}; namespace labels: {}",
            c.kubernetes.socket().map_or_else(
                || format!(
                    "(none found yet; tried {})",
                    residency_daemon::config::kubernetes::DEFAULT_CRI_SOCKETS.join(", ")
                ),
                |p| p.display().to_string()
            ),
            match (c.kubernetes.namespace_labels, &c.kubernetes.kubeconfig) {
                (residency_daemon::config::NamespaceWatch::Off, _) => "off".to_owned(),
                (_, Some(k)) => format!("from the API, with {}", k.display()),
                (residency_daemon::config::NamespaceWatch::On, None) => {
                    "from the API, with the service account".to_owned()
                }
                (residency_daemon::config::NamespaceWatch::Auto, None) => {
                    "from the API when running with a service account".to_owned()
                }
            }
        );
    }
    out
}

/// Whether flows are followed.
fn flows_line(c: &Config) -> String {
    if c.kernel.flows {
        format!(
            "flows followed: bytes, packets, TCP establishment and the end of each, \
             reported at least every {} s while they move bytes, for up to {} connected \
             sockets at once (kernel.max_flows); repeated datagrams counted in their flow \
             (kernel.flows)",
            c.kernel.flow_report.as_secs(),
            c.kernel.max_flows
        )
    } else {
        "flows not followed: every call is a record, no bytes are counted (kernel.flows = false)"
            .to_owned()
    }
}

/// What stays pinned, and what a stop and stale tables do.
fn pins_line(c: &Config) -> String {
    let k = &c.kernel;
    let stale = match k.stale_after {
        None => "tables never count as stale".to_owned(),
        Some(d) => format!(
            "after {} s without a daemon the tables are stale and the programs {}",
            d.as_secs(),
            match k.when_stale {
                residency_daemon::kernel::WhenStale::Enforce => "keep enforcing",
                residency_daemon::kernel::WhenStale::Monitor => "stop blocking",
            }
        ),
    };
    format!(
        "programs pinned under {}/{}; a clean stop {}; {stale}",
        residency_daemon::kernel::pins::ROOT,
        k.instance,
        if k.persist {
            "leaves them enforcing (kernel.persist)"
        } else {
            "detaches them (kernel.persist = false)"
        },
    )
}
