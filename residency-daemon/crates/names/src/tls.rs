//! The server name and ALPN protocols of a TLS ClientHello, from the first
//! payload bytes of a TCP connection.
//!
//! The ClientHello is a handshake message carried in one or more TLS
//! records, and a record may span several TCP segments. This module reads
//! the 5-byte record headers with tls-parser, joins the handshake
//! fragments, and tells the caller how many bytes it needs when they are
//! not all there yet ([`Hello::NeedMore`]). The ClientHello body and its
//! `server_name` and ALPN extensions are parsed by tls-parser. The
//! extensions are first split by their generic type-length framing, and
//! only those two are parsed further: tls-parser's list parser stops at
//! the first extension whose content it rejects, which would lose a server
//! name that comes after an odd extension.

use tls_parser::{
    SNIType, TlsExtension, TlsExtensionType, TlsRecordType, parse_tls_extension_alpn_content,
    parse_tls_extension_sni_content, parse_tls_extension_unknown, parse_tls_handshake_client_hello,
    parse_tls_record_header,
};

use crate::host;

/// The most bytes a ClientHello may take, record headers included. A
/// ClientHello with a post-quantum key share is about 1.8 KiB; 16 KiB is
/// one full TLS record.
pub const MAX_HELLO: usize = 16 * 1024;
/// At most this many ALPN protocols are kept.
pub const MAX_ALPN: usize = 16;

const RECORD_HEADER: usize = 5;
const HANDSHAKE_HEADER: usize = 4;
const CLIENT_HELLO: u8 = 1;
/// RFC 8446 section 5.1: a plaintext record holds at most 2^14 bytes.
const MAX_RECORD: usize = 1 << 14;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
/// draft-ietf-tls-esni: `encrypted_client_hello`.
const EXT_ECH: u16 = 0xfe0d;

/// What the first bytes of a connection say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hello {
    /// A whole ClientHello.
    Complete(ClientHello),
    /// A ClientHello so far: call again with at least `total_len` bytes
    /// from the start of the connection (the next segment appended). More
    /// may be asked for then, when the handshake spans several records.
    NeedMore {
        /// The least number of bytes, from the first, worth trying again with.
        total_len: usize,
    },
    /// The bytes do not start a TLS handshake (plain HTTP, SSH, ...).
    NotTls,
}

/// What a ClientHello names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// The `server_name` (SNI) host name: lower-case, no trailing dot.
    /// `None` when absent (clients send none for an IP address) or refused.
    pub sni: Option<String>,
    /// A `server_name` was sent but is not a host name (bytes outside
    /// letters, digits, `-`, `_`, or too long); it is not returned.
    pub sni_refused: bool,
    /// The ALPN protocols offered, in order (`h2`, `http/1.1`, ...); at
    /// most [`MAX_ALPN`], bytes that are not UTF-8 replaced.
    pub alpn: Vec<String>,
    /// The client offered Encrypted Client Hello: `sni` is then the outer,
    /// public name, not necessarily the server it reaches.
    pub ech: bool,
}

/// Why bytes that start like TLS are not a usable ClientHello.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// The ClientHello would need more than [`MAX_HELLO`] bytes.
    #[error("the ClientHello needs at least {len} bytes, more than the {MAX_HELLO} kept")]
    TooLong {
        /// The least it would need.
        len: usize,
    },
    /// The first handshake message is something else (a `ServerHello` on
    /// a socket that accepted the connection).
    #[error("the first handshake message is not a ClientHello (type {0})")]
    NotClientHello(u8),
    /// The records or the ClientHello break the format.
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
}

impl HelloError {
    /// Every [`HelloError::reason`], for metrics that list all their labels.
    pub const REASONS: [&'static str; 3] = ["too_long", "not_client_hello", "malformed"];

    /// A stable label for metrics.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        Self::REASONS[self.reason_index()]
    }

    pub(crate) fn reason_index(&self) -> usize {
        match self {
            Self::TooLong { .. } => 0,
            Self::NotClientHello(_) => 1,
            Self::Malformed(_) => 2,
        }
    }
}

/// Reads a ClientHello from the first bytes a connection sent.
///
/// # Errors
///
/// [`HelloError`] when the bytes start a TLS handshake but not a usable
/// ClientHello. Bytes that do not start a TLS handshake are
/// [`Hello::NotTls`], not an error.
pub fn parse_client_hello(data: &[u8]) -> Result<Hello, HelloError> {
    let mut handshake: Vec<u8> = Vec::new();
    let mut pos = 0;
    loop {
        let rest = data.get(pos..).unwrap_or_default();
        let first = pos == 0;
        if rest.len() < RECORD_HEADER {
            if first && !starts_like_tls(rest) {
                return Ok(Hello::NotTls);
            }
            return need(pos + RECORD_HEADER + missing(&handshake));
        }
        let Ok((body, header)) = parse_tls_record_header(rest) else {
            return Err(HelloError::Malformed("record header"));
        };
        let len = usize::from(header.len);
        let sane = header.record_type == TlsRecordType::Handshake
            && header.version.0 >> 8 == 3
            && (1..=MAX_RECORD).contains(&len);
        if !sane {
            return if first {
                Ok(Hello::NotTls)
            } else {
                Err(HelloError::Malformed(
                    "a record that does not continue the handshake",
                ))
            };
        }
        let end = pos + RECORD_HEADER + len;
        let Some(fragment) = body.get(..len) else {
            return need(end.max(pos + RECORD_HEADER + missing(&handshake)));
        };
        handshake.extend_from_slice(fragment);
        pos = end;
        if let Some(&kind) = handshake.first()
            && kind != CLIENT_HELLO
        {
            return Err(HelloError::NotClientHello(kind));
        }
        if let Some(message) = whole_message(&handshake)? {
            return read_hello(message).map(Hello::Complete);
        }
        if pos + RECORD_HEADER + missing(&handshake) > MAX_HELLO {
            return Err(HelloError::TooLong {
                len: pos + RECORD_HEADER + missing(&handshake),
            });
        }
    }
}

/// Whether the bytes so far (fewer than a record header) may start a TLS
/// handshake record.
fn starts_like_tls(bytes: &[u8]) -> bool {
    match bytes {
        [] => true,
        [t] => *t == 0x16,
        [t, major, ..] => *t == 0x16 && *major == 3,
    }
}

/// The handshake bytes still missing, as far as is known yet.
fn missing(handshake: &[u8]) -> usize {
    let wanted = handshake_len(handshake).unwrap_or(HANDSHAKE_HEADER);
    wanted.saturating_sub(handshake.len())
}

/// The length of the first handshake message, header included, once its
/// header is there.
fn handshake_len(handshake: &[u8]) -> Option<usize> {
    let [_, a, b, c, ..] = *handshake else {
        return None;
    };
    let body = usize::try_from(u32::from_be_bytes([0, a, b, c])).ok()?;
    Some(HANDSHAKE_HEADER + body)
}

fn need(total_len: usize) -> Result<Hello, HelloError> {
    if total_len > MAX_HELLO {
        Err(HelloError::TooLong { len: total_len })
    } else {
        Ok(Hello::NeedMore { total_len })
    }
}

/// The first handshake message, once it is all there.
fn whole_message(handshake: &[u8]) -> Result<Option<&[u8]>, HelloError> {
    let Some(len) = handshake_len(handshake) else {
        return Ok(None);
    };
    if len > MAX_HELLO {
        return Err(HelloError::TooLong { len });
    }
    Ok(handshake.get(..len))
}

fn read_hello(message: &[u8]) -> Result<ClientHello, HelloError> {
    let body = message.get(HANDSHAKE_HEADER..).unwrap_or_default();
    let Ok((rest, contents)) = parse_tls_handshake_client_hello(body) else {
        return Err(HelloError::Malformed("ClientHello body"));
    };
    if !rest.is_empty() {
        // tls-parser reads an extensions block whose length overruns the
        // message as no extensions at all; here that is an error.
        return Err(HelloError::Malformed("extensions do not fill the message"));
    }
    let mut hello = ClientHello::default();
    let mut seen_sni = false;
    let mut seen_alpn = false;
    let mut extensions = contents.ext.unwrap_or_default();
    while !extensions.is_empty() {
        let Ok((next, TlsExtension::Unknown(TlsExtensionType(kind), data))) =
            parse_tls_extension_unknown(extensions)
        else {
            return Err(HelloError::Malformed("extension framing"));
        };
        extensions = next;
        match kind {
            EXT_SERVER_NAME => {
                if std::mem::replace(&mut seen_sni, true) {
                    return Err(HelloError::Malformed("two server_name extensions"));
                }
                let Ok((_, TlsExtension::SNI(names))) = parse_tls_extension_sni_content(data)
                else {
                    return Err(HelloError::Malformed("server_name extension"));
                };
                // RFC 6066 section 3: at most one name of each type.
                if let Some((_, name)) = names.iter().find(|(t, _)| *t == SNIType::HostName) {
                    hello.sni = host::from_text(name);
                    hello.sni_refused = hello.sni.is_none();
                }
            }
            EXT_ALPN => {
                if std::mem::replace(&mut seen_alpn, true) {
                    return Err(HelloError::Malformed("two ALPN extensions"));
                }
                let Ok((_, TlsExtension::ALPN(protocols))) = parse_tls_extension_alpn_content(data)
                else {
                    return Err(HelloError::Malformed("ALPN extension"));
                };
                hello.alpn = protocols
                    .iter()
                    .take(MAX_ALPN)
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect();
            }
            EXT_ECH => hello.ech = true,
            _ => {}
        }
    }
    Ok(hello)
}
