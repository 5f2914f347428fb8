//! Counters of what the parsers saw, for metrics.
//!
//! The parsers are plain functions; the caller that owns a `ParseStats`
//! passes each result to it. Every label is a `&'static str` from a fixed
//! list, so a metrics registry can create all series up front.

use crate::dns::{DnsAnswer, DnsError};
use crate::tls::{Hello, HelloError};

/// How many payloads were parsed, and why the others were rejected.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParseStats {
    /// DNS answers parsed (cut ones included).
    pub dns_parsed: u64,
    /// DNS answers parsed from a payload that ended before the message.
    pub dns_cut: u64,
    dns_rejected: [u64; DnsError::REASONS.len()],
    /// Whole `ClientHello`s read.
    pub hello_complete: u64,
    /// `ClientHello`s that needed more bytes.
    pub hello_need_more: u64,
    /// Connections whose first bytes are not TLS.
    pub hello_not_tls: u64,
    hello_rejected: [u64; HelloError::REASONS.len()],
}

impl ParseStats {
    /// Counts one result of [`crate::parse_dns`].
    pub fn count_dns(&mut self, result: &Result<DnsAnswer, DnsError>) {
        match result {
            Ok(answer) => {
                self.dns_parsed += 1;
                self.dns_cut += u64::from(answer.cut);
            }
            Err(e) => self.dns_rejected[e.reason_index()] += 1,
        }
    }

    /// Counts one result of [`crate::parse_client_hello`].
    pub fn count_hello(&mut self, result: &Result<Hello, HelloError>) {
        match result {
            Ok(Hello::Complete(_)) => self.hello_complete += 1,
            Ok(Hello::NeedMore { .. }) => self.hello_need_more += 1,
            Ok(Hello::NotTls) => self.hello_not_tls += 1,
            Err(e) => self.hello_rejected[e.reason_index()] += 1,
        }
    }

    /// DNS payloads rejected, by [`DnsError::reason`], every reason listed.
    pub fn dns_rejected(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        DnsError::REASONS
            .into_iter()
            .zip(self.dns_rejected.iter().copied())
    }

    /// `ClientHello`s rejected, by [`HelloError::reason`], every reason listed.
    pub fn hello_rejected(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        HelloError::REASONS
            .into_iter()
            .zip(self.hello_rejected.iter().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Framing, parse_client_hello, parse_dns};

    #[test]
    fn counts_by_reason() {
        let mut stats = ParseStats::default();
        stats.count_dns(&parse_dns(&[], Framing::Udp));
        stats.count_dns(&parse_dns(&[0; 12], Framing::Udp));
        // A response with one question and a promise of one answer: cut.
        let mut cut = vec![0, 1, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        cut.extend_from_slice(b"\x01x\x07example\x00\x00\x01\x00\x01");
        stats.count_dns(&parse_dns(&cut, Framing::Udp));
        stats.count_hello(&parse_client_hello(b"GET /"));
        stats.count_hello(&parse_client_hello(b"\x16\x03\x01\x00\x04\x02\x00\x00\x00"));
        assert_eq!((stats.dns_parsed, stats.dns_cut), (1, 1));
        let rejected: Vec<_> = stats.dns_rejected().filter(|(_, n)| *n > 0).collect();
        assert_eq!(rejected, [("too_short", 1), ("not_response", 1)]);
        assert_eq!(stats.dns_rejected().count(), DnsError::REASONS.len());
        assert_eq!(stats.hello_not_tls, 1);
        let rejected: Vec<_> = stats.hello_rejected().filter(|(_, n)| *n > 0).collect();
        assert_eq!(rejected, [("not_client_hello", 1)]);
    }
}
