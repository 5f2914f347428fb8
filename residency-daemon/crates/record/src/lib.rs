//! What a record is: the one definition every stage shares.
//!
//! A record is a decision the kernel made (a flow) or an event of the
//! daemon's own life (started, a policy loaded, a gap in the evidence). It
//! is built once, encoded once into canonical bytes, and those bytes are
//! what the output, the evidence chain, the REST API and the SIEM sinks all
//! carry. This crate holds, in one place:
//!
//! - [`model`]: the record as the pipeline builds it ([`Record`], [`Flow`]);
//! - [`action`]: the lifecycle kinds, an enum with [`Lifecycle::is_gap`];
//! - [`policy`]: the policy of a generation as records name it
//!   ([`PolicyView`]: names, modes, the configuration hash, the transfer
//!   basis), so that encoding a flow needs the flow alone;
//! - [`notes`]: the lifecycle details readers act on (gaps, pruning,
//!   violation changes, policy versions), typed on both sides;
//! - [`encode`]: the canonical encoding, one line of ECS JSON;
//! - [`index`]: the columns the evidence store filters by, derived from
//!   the bytes;
//! - [`view`]: the typed read view of the bytes, for every reader.
//!
//! It sits just above `residency-common` (the kernel's types) and `geoip`;
//! everything that handles records sits above it.
#![forbid(unsafe_code)]

pub mod action;
pub mod encode;
pub mod index;
pub mod model;
pub mod notes;
pub mod policy;
pub mod view;

pub use action::Lifecycle;
pub use encode::{encode_flow_indexed, encode_line};
pub use index::Index;
pub use model::{
    ContainerInfo, Decider, DestName, EndpointInfo, Flow, FlowCounts, FlowReport, FlowStage,
    GeoDetail, NameSource, Note, PodInfo, ProcessInfo, Record, StartInfo, StopInfo, Transport,
    hook_str, kind_str, tcp_state_str, verdict_str,
};
pub use notes::{EvidenceGap, PolicyLoaded, Pruned, ViolationChange};
pub use policy::{PolicyView, TransferBasis};
pub use view::RecordView;

/// `event.module` of every record.
pub const MODULE: &str = "residency";
/// `event.dataset` of a flow.
pub const FLOW_DATASET: &str = "residency.flow";
/// `event.dataset` of a lifecycle record.
pub const LIFECYCLE_DATASET: &str = "residency.lifecycle";
/// `event.dataset` of a signed checkpoint as SIEM sinks receive it (a
/// checkpoint is not a record of the chain; it signs them).
pub const CHECKPOINT_DATASET: &str = "residency.checkpoint";
