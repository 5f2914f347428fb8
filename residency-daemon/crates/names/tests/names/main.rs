//! The parsers and the cache against real messages, hostile ones, and a
//! seeded fuzz run.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a bad literal in a test should panic there"
)]

mod cache;
mod dns;
mod fuzz;
mod tls;
mod wire;
