//! `[kernel]`: which cgroup the programs attach to, and how the ring
//! buffer between them and the daemon is sized and read.

use std::{path::PathBuf, time::Duration};

use residency_config::{ConfigError, Locator, Spanned};
use serde::Deserialize;

/// `[kernel]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKernel {
    cgroup: Option<Spanned<String>>,
    ring_buffer_kib: Option<Spanned<u32>>,
    wakeup_kib: Option<Spanned<u32>>,
    poll_interval_ms: Option<Spanned<u64>>,
    stats_interval_ms: Option<Spanned<u64>>,
    #[serde(default)]
    allow_enforce_at_root: bool,
    persist: Option<bool>,
    instance: Option<Spanned<String>>,
    stale_after_secs: Option<Spanned<u64>>,
    when_stale: Option<Spanned<String>>,
    flows: Option<bool>,
    flow_report_secs: Option<Spanned<u64>>,
    max_flows: Option<Spanned<u64>>,
}

/// `kernel.when_stale`: what the programs do once no daemon has refreshed
/// their tables for `kernel.stale_after_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenStale {
    /// Keep enforcing the last policy (the default).
    Enforce,
    /// Stop blocking; keep deciding and reporting (flagged, `stale`).
    Monitor,
}

impl WhenStale {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            WhenStale::Enforce => "enforce",
            WhenStale::Monitor => "monitor",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct KernelConfig {
    /// cgroup v2 directory to attach to, relative to the cgroup2 mount
    /// (empty: the mount itself, i.e. every process on the host).
    pub cgroup: PathBuf,
    /// Ring buffer size in bytes: a power of two, at least one page.
    pub ring_buffer_bytes: u32,
    /// Waiting bytes at which the kernel wakes the reader.
    pub wakeup_bytes: u64,
    /// How often the reader drains the ring buffer without a wakeup.
    pub poll_interval: Duration,
    /// How often the kernel's drop counters are read.
    pub stats_interval: Duration,
    /// Safety interlock: a program that can block is attached to the cgroup2
    /// root (every process on the host) only if this is set.
    pub allow_enforce_at_root: bool,
    /// Whether a clean stop leaves the programs attached and deciding
    /// with the last policy (true, the default) or detaches them. A crash
    /// always leaves them: they are pinned.
    pub persist: bool,
    /// The name of the pin directory, `/sys/fs/bpf/residency/<instance>`:
    /// one per daemon on a host.
    pub instance: String,
    /// Tables no daemon has refreshed for this long are stale (`None`:
    /// never).
    pub stale_after: Option<Duration>,
    pub when_stale: WhenStale,
    /// Whether flows are followed (`kernel.flows`, default true): bytes
    /// and packets per socket, TCP establishment, the socket's end, and
    /// repeated datagrams to one destination decided from socket storage
    /// and counted instead of reported one by one.
    pub flows: bool,
    /// A flow that keeps moving bytes is reported at least this often
    /// (`kernel.flow_report_secs`, default 60).
    pub flow_report: Duration,
    /// Connected sockets whose flows the kernel follows at once
    /// (`kernel.max_flows`, default 65,536; entries are allocated as
    /// used). Beyond it a connection is decided and reported as ever, and
    /// its totals are not followed (counted, a `flow-totals-lost` record).
    pub max_flows: u32,
}

/// The default `kernel.instance`.
pub const DEFAULT_INSTANCE: &str = "default";

/// Whether `name` can name a pin directory: 1-64 of `A-Z a-z 0-9 . _ -`,
/// not starting with a dot.
#[must_use]
pub fn valid_instance(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

const PAGE: u32 = 4096;

const DEFAULT_RING_KIB: u32 = 1024;

const MAX_RING_KIB: u32 = 1024 * 1024;

const DEFAULT_POLL_MS: u64 = 10;

const DEFAULT_STATS_MS: u64 = 1000;

const DEFAULT_FLOW_REPORT_SECS: u64 = 60;

const MAX_FLOWS: u64 = 1 << 24;

impl KernelConfig {
    /// Validates `[kernel]`.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the line and field of the first bad value.
    #[expect(clippy::too_many_lines, reason = "one field after another")]
    pub fn validate(raw: &RawKernel, at: &Locator<'_>) -> Result<Self, ConfigError> {
        let cgroup = match &raw.cgroup {
            None => PathBuf::new(),
            Some(s) => {
                normalise_cgroup(s.get_ref()).map_err(|m| at.err(s.span(), "kernel.cgroup", &m))?
            }
        };

        let ring_kib = raw
            .ring_buffer_kib
            .as_ref()
            .map_or(DEFAULT_RING_KIB, |s| *s.get_ref());
        if !(PAGE / 1024..=MAX_RING_KIB).contains(&ring_kib) || !ring_kib.is_power_of_two() {
            let span = raw.ring_buffer_kib.as_ref().map(Spanned::span);
            return Err(at.err_opt(
                span,
                "kernel.ring_buffer_kib",
                &format!(
                    "{ring_kib} is not a power of two between {} and {MAX_RING_KIB} (KiB)",
                    PAGE / 1024
                ),
            ));
        }
        let ring_buffer_bytes = ring_kib * 1024;

        let wakeup_bytes = match &raw.wakeup_kib {
            // A quarter full: the reader wakes long before the ring overflows,
            // and at most a few times per ring's worth of events.
            None => u64::from(ring_buffer_bytes / 4),
            Some(s) if *s.get_ref() > ring_kib => {
                return Err(at.err(
                    s.span(),
                    "kernel.wakeup_kib",
                    &format!(
                        "{} is larger than the ring buffer ({ring_kib} KiB); \
                         set it to {ring_kib} to rely on the poll timer alone",
                        s.get_ref()
                    ),
                ));
            }
            Some(s) => u64::from(*s.get_ref()) * 1024,
        };

        let poll_ms = at
            .ranged(
                raw.poll_interval_ms.as_ref(),
                "kernel.poll_interval_ms",
                Some(DEFAULT_POLL_MS),
                1..=10_000,
            )?
            .unwrap_or(DEFAULT_POLL_MS);
        let stats_ms = at
            .ranged(
                raw.stats_interval_ms.as_ref(),
                "kernel.stats_interval_ms",
                Some(DEFAULT_STATS_MS),
                10..=60_000,
            )?
            .unwrap_or(DEFAULT_STATS_MS);

        let instance = match &raw.instance {
            None => DEFAULT_INSTANCE.to_owned(),
            Some(s) if valid_instance(s.get_ref()) => s.get_ref().clone(),
            Some(s) => {
                return Err(at.err(
                    s.span(),
                    "kernel.instance",
                    &format!(
                        "\"{}\" cannot name a pin directory: use 1-64 letters, digits, '.', '_' or '-'",
                        s.get_ref()
                    ),
                ));
            }
        };
        let stale_secs = at
            .ranged(
                raw.stale_after_secs.as_ref(),
                "kernel.stale_after_secs",
                Some(0),
                0..=u64::from(u32::MAX),
            )?
            .unwrap_or(0);
        let when_stale = match raw
            .when_stale
            .as_ref()
            .map(|s| (s.get_ref().as_str(), s.span()))
        {
            None | Some(("enforce", _)) => WhenStale::Enforce,
            Some(("monitor", _)) => WhenStale::Monitor,
            Some((other, span)) => {
                return Err(at.err(
                    span,
                    "kernel.when_stale",
                    &format!(
                        "\"{other}\" is not a choice: \"enforce\" keeps blocking with the last \
                         policy, \"monitor\" stops blocking and only reports"
                    ),
                ));
            }
        };

        let flow_report_secs = at
            .ranged(
                raw.flow_report_secs.as_ref(),
                "kernel.flow_report_secs",
                Some(DEFAULT_FLOW_REPORT_SECS),
                1..=86_400,
            )?
            .unwrap_or(DEFAULT_FLOW_REPORT_SECS);
        let max_flows = at
            .ranged(
                raw.max_flows.as_ref(),
                "kernel.max_flows",
                Some(u64::from(residency_common::FLOW_CAPACITY)),
                16..=MAX_FLOWS,
            )?
            .unwrap_or(u64::from(residency_common::FLOW_CAPACITY));

        Ok(KernelConfig {
            max_flows: u32::try_from(max_flows).unwrap_or(u32::MAX),
            flows: raw.flows.unwrap_or(true),
            flow_report: Duration::from_secs(flow_report_secs),
            persist: raw.persist.unwrap_or(true),
            instance,
            stale_after: (stale_secs > 0).then(|| Duration::from_secs(stale_secs)),
            when_stale,
            cgroup,
            ring_buffer_bytes,
            wakeup_bytes,
            poll_interval: Duration::from_millis(poll_ms),
            stats_interval: Duration::from_millis(stats_ms),
            allow_enforce_at_root: raw.allow_enforce_at_root,
        })
    }
}

/// A cgroup path relative to the cgroup2 mount: "/" or "" is the root,
/// "/system.slice/x.service" and "system.slice/x.service" are the same.
fn normalise_cgroup(path: &str) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        if part == "." || part == ".." {
            return Err(format!(
                "\"{path}\" contains \"{part}\"; give the path from the cgroup2 mount, e.g. \"/system.slice\""
            ));
        }
        out.push(part);
    }
    Ok(out)
}
