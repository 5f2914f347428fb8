//! Names for flows: what a workload's DNS answers and TLS `ClientHello`s
//! say about the addresses it connects to.
//!
//! The kernel copies each DNS answer a watched process receives, tagged
//! with the receiving socket's cgroup and a boot-time stamp, and the first
//! payload bytes of each TCP connection. This crate turns those bytes into
//! names:
//!
//! - [`dns`]: [`parse_dns`] reads one response into a [`DnsAnswer`]: the
//!   question, its CNAME chain, and the addresses, each marked whether it
//!   is reached from the question;
//! - [`tls`]: [`parse_client_hello`] reads the server name and ALPN
//!   protocols of a ClientHello, asking for more bytes while it spans
//!   segments;
//! - [`cache`]: [`NameCache`] keeps, per workload and address, the names
//!   its answers gave, with expiry and least-recently-used eviction;
//! - [`stats`]: [`ParseStats`], counters of parsed and rejected payloads.
//!
//! Every byte here may come from a hostile process: any process in a
//! watched cgroup can receive arbitrary bytes on port 53. The parsers
//! never panic, every loop ends with the bytes, and every list is capped
//! ([`MAX_ADDRESSES`], [`MAX_CNAMES`], [`MAX_ALPN`], [`MAX_HELLO`],
//! [`MAX_NAME_LEN`]). Names are returned only when they are host names:
//! lower-case letters, digits, `-` and `_`.
//!
//! It depends on no other crate of the workspace, and not on aya.
#![forbid(unsafe_code)]

pub mod cache;
pub mod dns;
mod host;
pub mod stats;
pub mod tls;

pub use cache::{CacheStats, CachedName, NameCache, NameCacheConfig};
pub use dns::{
    Cname, DnsAnswer, DnsError, Framing, MAX_ADDRESSES, MAX_CNAMES, Resolved, parse_dns,
};
pub use host::MAX_NAME_LEN;
pub use stats::ParseStats;
pub use tls::{ClientHello, Hello, HelloError, MAX_ALPN, MAX_HELLO, parse_client_hello};
