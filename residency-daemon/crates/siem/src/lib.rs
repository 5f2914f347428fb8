//! Alerts to SIEMs: syslog (RFC 5424, over UDP, TCP and TLS), CEF, OCSF,
//! Elastic ECS, Splunk HEC and signed webhooks.
//!
//! Each sink reads the evidence chain from its own cursor: the chain is
//! the on-disk spool, so a receiver that is down or slow only makes its
//! sink fall behind, in order, and nothing the chain holds is lost.
//!
//! - [`config`]: the `[[sink]]` tables, validated;
//! - [`deliver`]: a task per sink: read after the cursor, throttle, send,
//!   retry, save the cursor;
//! - [`alert`]: a record (or a signed checkpoint) classified as a flow,
//!   violation, checkpoint or gap alert, read through the record crate's
//!   typed view;
//! - [`throttle`]: repeats of a violation folded into one count per window;
//! - [`out`]: a batch encoded ([`mod@format`]) and sent ([`transport`]);
//! - [`metrics`]: what each sink counts, for `/metrics`.
//!
//! The crate sits above the evidence store (it reads the chain) and the
//! record crate; it knows nothing of the kernel or the daemon, and builds
//! and tests without aya.
#![forbid(unsafe_code)]

pub mod alert;
pub mod config;
pub mod deliver;
pub mod format;
pub mod metrics;
pub mod out;
pub mod throttle;
pub mod transport;

pub use config::{RawSink, SinkConfig};
pub use deliver::{Sinks, StartError};
pub use metrics::SinkMetrics;
