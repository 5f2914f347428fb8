//! Alerts to SIEMs: syslog (RFC 5424, over UDP, TCP and TLS), CEF, OCSF,
//! Elastic ECS, Splunk HEC and signed webhooks.
//!
//! Each sink reads the evidence chain from its own cursor: the chain is
//! the on-disk spool, so a receiver that is down or slow only makes its
//! sink fall behind, in order, and nothing the chain holds is lost.

pub mod alert;
pub mod config;

pub mod deliver;

pub mod format;
pub mod out;
pub mod throttle;
pub mod transport;
