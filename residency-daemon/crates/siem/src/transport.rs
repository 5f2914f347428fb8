//! How messages reach receivers: the client side of the SIEM sinks.
//!
//! A sink formats alerts into messages and hands them here in batches;
//! the transports only move bytes. Syslog goes over UDP, TCP or TLS
//! ([`SyslogSender`]), the JSON formats go by HTTP(S) POST
//! ([`HttpSender`]), and any format can be appended to a local file
//! ([`FileSender`]). Every network operation has a timeout, and every
//! error says whether retrying can help ([`TransportError::retryable`]):
//! the sink retries the whole batch from its cursor, so a transport never
//! retries on its own.

mod file;
mod http;
mod syslog;
mod tls;

#[cfg(test)]
mod testing;

use std::{io, path::PathBuf, time::Duration};

pub use file::FileSender;
pub use http::{HttpReply, HttpSender};
pub use syslog::{SyslogProtocol, SyslogSender};
pub use tls::{TlsFiles, client_tls};

/// Why a batch did not reach its receiver.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The sink's settings cannot work; retrying will not help.
    #[error("{0}")]
    Config(String),
    /// A TLS file (CA bundle, certificate or key) is unusable.
    #[error("TLS file {}: {problem}", path.display())]
    TlsFile { path: PathBuf, problem: String },
    /// The receiver's host name did not resolve.
    #[error("cannot resolve {address}: {source}")]
    Resolve {
        address: String,
        #[source]
        source: io::Error,
    },
    /// No connection could be made.
    #[error("cannot connect to {address}: {detail}")]
    Connect { address: String, detail: String },
    /// The TLS handshake failed (untrusted or misnamed certificate, client
    /// certificate refused, no common protocol version).
    #[error("TLS handshake with {address} failed: {detail}")]
    Tls { address: String, detail: String },
    /// Reading or writing failed after the connection was made (or writing
    /// to a file).
    #[error("sending to {target} failed: {source}")]
    Io {
        target: String,
        #[source]
        source: io::Error,
    },
    /// The receiver did not complete an operation in time.
    #[error("{target}: no progress within {}s while {operation}", after.as_secs_f64())]
    Timeout {
        target: String,
        operation: &'static str,
        after: Duration,
    },
    /// A message that one UDP datagram cannot carry.
    #[error(
        "a syslog message of {size} bytes does not fit in one UDP datagram (at most {limit} bytes): \
         send this sink over TCP or TLS, or shorten the messages"
    )]
    TooLarge { size: usize, limit: usize },
    /// The HTTP request failed outside connecting (the connection broke,
    /// the answer was malformed or too large).
    #[error("HTTP request to {url} failed: {detail}")]
    Request { url: String, detail: String },
    /// The receiver answered, but not with success (2xx). Redirects are
    /// not followed: the configured URL is expected to be the endpoint.
    #[error("{url} answered HTTP {status}{}: {body}", retry_after.map(|d| format!(" (retry after {}s)", d.as_secs())).unwrap_or_default())]
    Http {
        url: String,
        status: u16,
        /// The start of the answer's body (receivers explain refusals
        /// there), lossily decoded.
        body: String,
        /// The receiver's `Retry-After`, when it gave one in seconds.
        retry_after: Option<Duration>,
    },
}

impl TransportError {
    /// Whether sending the same batch again may succeed: not for settings
    /// that cannot work, messages UDP cannot carry, or an HTTP refusal
    /// (4xx other than 408 Request Timeout and 429 Too Many Requests, and
    /// unfollowed 3xx). A TLS handshake failure counts as retryable: the
    /// receiver's certificate may be fixed on its side while the sink
    /// waits, and the error repeats in the log until then.
    #[must_use]
    pub fn retryable(&self) -> bool {
        match self {
            TransportError::Config(_)
            | TransportError::TlsFile { .. }
            | TransportError::TooLarge { .. } => false,
            TransportError::Http { status, .. } => {
                *status >= 500 || *status == 408 || *status == 429
            }
            TransportError::Resolve { .. }
            | TransportError::Connect { .. }
            | TransportError::Tls { .. }
            | TransportError::Io { .. }
            | TransportError::Timeout { .. }
            | TransportError::Request { .. } => true,
        }
    }
}

/// An error and its sources in one line, with a hint when TLS is the
/// cause: library errors put the useful part (e.g. "invalid peer
/// certificate: `UnknownIssuer`") several sources deep.
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        next = e.source();
    }
    if let Some(hint) = rustls_cause(error).and_then(tls_hint) {
        text.push_str(" (");
        text.push_str(hint);
        text.push(')');
    }
    text
}

/// The rustls error behind `error`, if there is one: itself, a source,
/// or the payload of an `io::Error` (as tokio-rustls reports them, and
/// hyper-rustls wraps those in another `io::Error`, whose `source` skips
/// the payload).
fn rustls_cause<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        next = match e.downcast_ref::<io::Error>().and_then(io::Error::get_ref) {
            Some(payload) => Some(payload as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

/// What the operator should check for a TLS failure.
fn tls_hint(error: &rustls::Error) -> Option<&'static str> {
    use rustls::{AlertDescription as Alert, CertificateError};
    Some(match error {
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => {
            "the receiver's certificate does not name this host: set the sink's server name to a name it carries"
        }
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "the receiver's certificate has expired",
        rustls::Error::InvalidCertificate(_) => {
            "the receiver's certificate is not trusted: check the sink's CA file"
        }
        rustls::Error::AlertReceived(
            Alert::CertificateRequired
            | Alert::HandshakeFailure
            | Alert::BadCertificate
            | Alert::UnknownCA
            | Alert::AccessDenied,
        ) => {
            "the receiver refused the handshake: it may require a client certificate it trusts (set the sink's cert and key)"
        }
        _ => return None,
    })
}
