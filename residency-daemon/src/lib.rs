//! residency: an eBPF egress monitor for data residency.
//!
//! The daemon crate: the stages that need the kernel or the host, and the
//! wiring of every stage into the running daemon. The stages with a
//! boundary of their own are crates under `residency-daemon/crates/`:
//! `residency-record` (what a record is), `residency-evidence` (the
//! store), `residency-siem` (alerts to SIEMs) and `residency-api` (the
//! REST API); `residency-config` holds what their configurations share.
//! See `docs/architecture.md` for the data flow. Here:
//!
//! - [`config`]: the TOML file, parsed, each component handed its section,
//!   and the policy sections validated;
//! - [`policy`]: the configuration compiled for the kernel, the same
//!   decision made in userspace for explanations, and the policy view each
//!   generation's records are explained with;
//! - [`geodb`]: the `GeoIP` database at run time: found, flattened into
//!   kernel tables, watched for new versions, and looked up for enrichment;
//! - [`kernel`]: loads, fills and attaches the kernel programs, swaps the
//!   `GeoIP` tables and policies, and reads the ring buffer and counters
//!   (the only module that uses aya);
//! - [`pipeline`]: moves records from the kernel to the output and the
//!   evidence store;
//! - [`enrich`]: turns kernel records into explained flows;
//! - [`identity`]: the executable, command line and cgroup of each call;
//! - [`workloads`]: which cgroups select which workload, kept current;
//! - [`control`]: policy reloads, expiry and new cgroups at run time;
//! - [`trust`]: which files may decide policy when the daemon runs locked;
//! - [`output`]: the JSON-lines output;
//! - [`metrics`]: the pipeline's counters for `/metrics`;
//! - [`watchdog`]: systemd's watchdog, fed by the pipeline's progress;
//! - [`mod@lookup`]: decisions made in userspace for `lookup`, `explain` and
//!   `test-policy`;
//! - [`mod@run`]: the daemon's life, start-up step by step, and shutdown.
//!
//! The binary, the tests and the benchmarks all call [`run::run`]. Only
//! [`kernel`] (reading the ring buffer's records) and [`memory`] (one call
//! to glibc's `malloc_trim`) have unsafe code.

pub mod config;
pub mod control;
pub mod enrich;
pub mod geodb;
pub mod identity;
pub mod kernel;
pub mod kube;
pub mod lookup;
pub mod memory;
pub mod metrics;
pub mod names;
pub mod naming;
pub mod output;
pub mod pipeline;
pub mod pods;
pub mod policy;
pub mod replay;
pub mod run;
pub mod trust;
pub mod watchdog;
pub mod workloads;

pub use lookup::{CaseResult, Lookup, LookupError, LookupReport, lookup, test_policy};
pub use run::{RunError, RunOptions, run};
