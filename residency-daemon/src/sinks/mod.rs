//! The fan-out stage: where records leave the daemon.
//!
//! Today there is one sink, JSON lines with Elastic Common Schema field names
//! ([`ecs`]), written to standard output or a file ([`jsonl`]). SIEM sinks
//! (syslog, CEF, OCSF, Splunk HEC, webhooks) join here, each behind its own
//! spool, so that a slow receiver never slows the kernel path.

pub mod ecs;
pub mod jsonl;

use crate::enrich::Flow;

/// What the pipeline hands to sinks, in order.
#[derive(Debug, Clone)]
pub enum Record {
    /// The programs are attached; records after this one are decisions.
    Started(Box<StartInfo>),
    Flow(Flow),
    /// The kernel made decisions it could not report (ring buffer full).
    /// Losses are never silent: each one becomes a record.
    Lost {
        count: u64,
        total: u64,
    },
    /// A ring-buffer record this build could not read.
    Undecodable {
        reason: String,
    },
    /// Something happened to the daemon itself (a `GeoIP` database loaded,
    /// refused): `event.action` and what to record with it.
    Note(Box<Note>),
    /// The programs are detached and every decision they made is accounted
    /// for above: reported, lost or undecodable.
    Stopped(StopInfo),
}

/// A lifecycle note.
#[derive(Debug, Clone)]
pub struct Note {
    /// `event.action`, e.g. `geoip-loaded`.
    pub action: &'static str,
    /// `event.kind`: `state` for a change, `pipeline_error` for a failure.
    pub kind: &'static str,
    pub message: String,
    /// Goes under `residency.*`.
    pub fields: serde_json::Value,
}

/// Facts about a run, for the `started` record.
#[derive(Debug, Clone)]
pub struct StartInfo {
    pub cgroup_path: String,
    pub cgroup_id: u64,
    pub mode: &'static str,
    pub may_block: bool,
    pub kernel_release: String,
    pub ring_buffer_kib: u32,
    pub deny_rules: usize,
    pub config_source: String,
    /// The `GeoIP` database in force, if any.
    pub geoip: Option<String>,
    pub geoip_generation: u32,
    /// The countries the policy allows, as written.
    pub allowed: Vec<String>,
    /// Conditions attached to sets the policy names (US-DPF).
    pub conditions: Vec<String>,
}

/// Totals for the `stopped` record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StopInfo {
    /// Decisions the kernel wrote to the ring buffer.
    pub kernel_submitted: u64,
    /// Decisions the kernel could not write (ring buffer full).
    pub kernel_dropped: u64,
    /// Records the daemon read from the ring buffer.
    pub received: u64,
    /// Of those, records it could not decode.
    pub undecodable: u64,
    /// Process records (exec, fork, exit) the kernel could not write: those
    /// processes were named from `/proc` instead, where they still ran.
    pub process_dropped: u64,
}
