//! DNS answers as the kernel captured them: the payload of one UDP
//! datagram or the start of one TCP stream, possibly cut short.
//!
//! The wire format is hickory-proto's: its decoder reads the header, the
//! question, every owner name (compression pointers must point strictly
//! backwards, which rules out loops; names are capped at 255 bytes) and the
//! A, AAAA and CNAME data. hickory's own `Message::from_vec` is
//! all-or-nothing: a message cut in the middle of a record is an error, and
//! one record type it cannot read (an odd SVCB) sinks the whole message.
//! So this module walks the records one at a time with hickory's
//! `BinDecoder`, reads the fixed fields of each record header itself, hands
//! hickory only the data of the three types it needs, and skips the data of
//! the others by its length. Where the bytes run out, it keeps what came
//! before and says `cut`.

use std::net::IpAddr;

use hickory_proto::op::{Header, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, DecodeError, Restrict};

use crate::host;

/// At most this many address records are kept from one answer; the rest
/// are counted in [`DnsAnswer::skipped`].
pub const MAX_ADDRESSES: usize = 256;
/// At most this many CNAME records are kept from one answer.
pub const MAX_CNAMES: usize = 32;
/// The longest message read: the TCP length prefix is 16 bits, and
/// hickory's decoder addresses the message with 16-bit offsets.
const MAX_MESSAGE: usize = 65_535;
const CLASS_IN: u16 = 1;

/// How the payload carries the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// One UDP datagram: the payload is the message.
    Udp,
    /// A TCP stream: a 2-byte length, then the message (RFC 1035 section
    /// 4.2.2). Only the first message is read.
    Tcp,
}

/// A DNS response, reduced to what names a flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsAnswer {
    /// The message id.
    pub id: u16,
    /// The name asked for: lower-case, no trailing dot.
    pub qname: String,
    /// The type asked for (1 A, 28 AAAA, 65 HTTPS, ...).
    pub qtype: u16,
    /// The response code (0 `NOERROR`, 3 `NXDOMAIN`, ...); the header's 4
    /// bits, without the EDNS extension.
    pub rcode: u8,
    /// The TC bit: the server said the answer did not fit.
    pub truncated: bool,
    /// The payload ended before the message did: what the counts in the
    /// header promise, or the TCP length prefix, is longer than what we
    /// got. The records here are the whole ones before the cut. Without TCP
    /// framing a cut capture and a header that lies about its counts look
    /// the same; the caller that knows the datagram's length can tell.
    pub cut: bool,
    /// The A and AAAA records of the answer section, in message order.
    pub addresses: Vec<Resolved>,
    /// The CNAME records of the answer section, in message order.
    pub cnames: Vec<Cname>,
    /// The names reached from `qname` through the CNAME records, `qname`
    /// first. An address whose owner is here is attributable to `qname`.
    pub chain: Vec<String>,
    /// Records of the answer section not kept: other types, other classes,
    /// names that are not host names, or past [`MAX_ADDRESSES`] /
    /// [`MAX_CNAMES`].
    pub skipped: usize,
}

/// One A or AAAA record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The address.
    pub addr: IpAddr,
    /// Seconds (a TTL with the top bit set reads as 0, RFC 2181 section 8).
    pub ttl: u32,
    /// The record's owner name.
    pub owner: String,
    /// Whether the owner is reached from the question through the CNAME
    /// chain. An address that is not came from a record the question did
    /// not ask for (a resolver can add anything); it must not be
    /// attributed to the question's name.
    pub in_chain: bool,
}

/// One CNAME record: `owner` is an alias of `target`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cname {
    /// The alias.
    pub owner: String,
    /// The canonical name.
    pub target: String,
    /// Seconds.
    pub ttl: u32,
}

impl DnsAnswer {
    /// The addresses attributable to the question's name.
    pub fn attributable(&self) -> impl Iterator<Item = &Resolved> {
        self.addresses.iter().filter(|r| r.in_chain)
    }

    /// The part of the chain from the question to `owner`, both included;
    /// `None` when `owner` is not reached from the question.
    #[must_use]
    pub fn chain_to(&self, owner: &str) -> Option<&[String]> {
        let end = self.chain.iter().position(|n| n == owner)?;
        self.chain.get(..=end)
    }

    /// The smallest TTL of the CNAME links from the question to `owner`
    /// (`None` for no link): a chain holds only as long as its shortest
    /// link.
    #[must_use]
    pub fn chain_ttl(&self, owner: &str) -> Option<u32> {
        let links = self.chain_to(owner)?;
        links
            .windows(2)
            .filter_map(|w| {
                self.cnames
                    .iter()
                    .find(|c| c.owner == w[0] && c.target == w[1])
                    .map(|c| c.ttl)
            })
            .min()
    }
}

/// Why a payload is not a usable DNS answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// Not even the header and the question are there.
    #[error("{len} bytes: too short for a DNS header and question")]
    TooShort {
        /// The length of the message read.
        len: usize,
    },
    /// The QR bit is clear.
    #[error("not a response")]
    NotResponse,
    /// A response to something other than a standard query.
    #[error("not a standard query (opcode {0})")]
    NotQuery(u8),
    /// `QDCOUNT` is not 1.
    #[error("{0} questions, expected one")]
    Questions(u16),
    /// The question's name is the root or holds bytes a host name does not.
    #[error("the question is not a host name")]
    BadQuestion,
    /// The message breaks the wire format where its bytes are present.
    #[error("malformed at byte {offset}: {what}")]
    Malformed {
        /// Where the record or name being read starts, from the first byte
        /// of the message (after the TCP length prefix).
        offset: usize,
        /// What is wrong, in a few words.
        what: &'static str,
    },
}

impl DnsError {
    /// Every [`DnsError::reason`], for metrics that list all their labels.
    pub const REASONS: [&'static str; 6] = [
        "too_short",
        "not_response",
        "not_query",
        "question_count",
        "bad_question",
        "malformed",
    ];

    /// A stable label for metrics.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        Self::REASONS[self.reason_index()]
    }

    pub(crate) fn reason_index(&self) -> usize {
        match self {
            Self::TooShort { .. } => 0,
            Self::NotResponse => 1,
            Self::NotQuery(_) => 2,
            Self::Questions(_) => 3,
            Self::BadQuestion => 4,
            Self::Malformed { .. } => 5,
        }
    }
}

/// Parses one DNS response.
///
/// Only responses to a standard query with exactly one question are
/// accepted. The answer section gives the addresses and CNAMEs; the
/// authority and additional sections are only walked to learn whether the
/// message is whole (their addresses are never used: they answer no
/// question).
///
/// # Errors
///
/// [`DnsError`] when the payload is not such a response or breaks the wire
/// format where its bytes are present. Running out of bytes after the
/// question is not an error: the answer comes back with `cut` set.
pub fn parse_dns(payload: &[u8], framing: Framing) -> Result<DnsAnswer, DnsError> {
    let (msg, framing_cut) = match framing {
        Framing::Udp => (payload, false),
        Framing::Tcp => {
            let [hi, lo, rest @ ..] = payload else {
                return Err(DnsError::TooShort { len: 0 });
            };
            let want = usize::from(u16::from_be_bytes([*hi, *lo]));
            match rest.get(..want) {
                Some(whole) => (whole, false),
                None => (rest, true),
            }
        }
    };
    let msg = msg.get(..MAX_MESSAGE).unwrap_or(msg);
    let mut dec = BinDecoder::new(msg);
    let too_short = DnsError::TooShort { len: msg.len() };

    let header = Header::read(&mut dec).map_err(|_| too_short.clone())?;
    let meta = &header.metadata;
    if meta.message_type != MessageType::Response {
        return Err(DnsError::NotResponse);
    }
    if meta.op_code != OpCode::Query {
        return Err(DnsError::NotQuery(u8::from(meta.op_code)));
    }
    if header.counts.queries != 1 {
        return Err(DnsError::Questions(header.counts.queries));
    }
    let query = Query::read(&mut dec).map_err(|e| match e {
        DecodeError::InsufficientBytes => too_short.clone(),
        other => malformed(QUESTION_OFFSET, &other),
    })?;
    let qname = host::from_labels(query.name.iter()).ok_or(DnsError::BadQuestion)?;

    let mut answer = DnsAnswer {
        id: meta.id,
        qname,
        qtype: u16::from(query.query_type),
        rcode: meta.response_code.low(),
        truncated: meta.truncation,
        cut: false,
        addresses: Vec::new(),
        cnames: Vec::new(),
        chain: Vec::new(),
        skipped: 0,
    };

    let answers = usize::from(header.counts.answers);
    let rest = usize::from(header.counts.authorities) + usize::from(header.counts.additionals);
    let mut read = 0;
    let mut cut = false;
    // Each record takes at least 11 bytes, so the bytes end every loop
    // long before a lying count does.
    while read < answers + rest && !cut {
        let in_answers = read < answers;
        read += 1;
        match read_record(&mut dec, in_answers) {
            Ok(Some(record)) if in_answers => keep(&mut answer, record),
            Ok(_) => {}
            Err(Stop::Cut) => cut = true,
            Err(Stop::Malformed { offset, what }) => {
                return Err(DnsError::Malformed { offset, what });
            }
        }
    }
    answer.cut = cut || framing_cut;
    link_chain(&mut answer);
    Ok(answer)
}

const QUESTION_OFFSET: usize = 12;

/// A record of the answer section that may be kept.
enum Record {
    Address(Resolved),
    Cname(Cname),
    Other,
}

enum Stop {
    Cut,
    Malformed { offset: usize, what: &'static str },
}

fn keep(answer: &mut DnsAnswer, record: Record) {
    match record {
        Record::Address(a) if answer.addresses.len() < MAX_ADDRESSES => answer.addresses.push(a),
        Record::Cname(c) if answer.cnames.len() < MAX_CNAMES => answer.cnames.push(c),
        _ => answer.skipped += 1,
    }
}

/// Reads one record. The data of A, AAAA and CNAME records in the answer
/// section is decoded (`decode`); every other record's data is skipped by
/// its length.
fn read_record(dec: &mut BinDecoder<'_>, decode: bool) -> Result<Option<Record>, Stop> {
    let offset = dec.index();
    let owner = Name::read(dec).map_err(|e| stop(offset, &e))?;
    let rtype = read_u16(dec)?;
    let class = read_u16(dec)?;
    let ttl = dec.read_u32().map_err(|_| Stop::Cut)?.unverified(/* any u32 */);
    // RFC 2181 section 8: a TTL with the top bit set is taken as zero.
    let ttl = if ttl > 0x7fff_ffff { 0 } else { ttl };
    let rdlength = read_u16(dec)?;
    if usize::from(rdlength) > dec.len() {
        return Err(Stop::Cut);
    }
    let rtype = RecordType::from(rtype);
    let wanted = matches!(rtype, RecordType::A | RecordType::AAAA | RecordType::CNAME);
    if !(decode && wanted && class == CLASS_IN) {
        dec.read_slice(usize::from(rdlength))
            .map_err(|_| Stop::Cut)?;
        return Ok(decode.then_some(Record::Other));
    }
    // All `rdlength` bytes are there: from here, a decode error is a
    // malformed record, not a cut one.
    let data_offset = dec.index();
    let data = RData::read(dec, rtype, Restrict::new(rdlength)).map_err(|e| match e {
        DecodeError::InsufficientBytes => Stop::Malformed {
            offset: data_offset,
            what: "record data shorter than its type needs",
        },
        other => stop(data_offset, &other),
    })?;
    let Some(owner) = host::from_labels(owner.iter()) else {
        return Ok(Some(Record::Other));
    };
    Ok(Some(match data {
        RData::A(a) => Record::Address(Resolved {
            addr: IpAddr::V4(a.0),
            ttl,
            owner,
            in_chain: false,
        }),
        RData::AAAA(a) => Record::Address(Resolved {
            addr: IpAddr::V6(a.0),
            ttl,
            owner,
            in_chain: false,
        }),
        RData::CNAME(c) => match host::from_labels(c.0.iter()) {
            Some(target) => Record::Cname(Cname { owner, target, ttl }),
            None => Record::Other,
        },
        // A zero-length record reads as an RFC 2136 update placeholder.
        _ => Record::Other,
    }))
}

fn read_u16(dec: &mut BinDecoder<'_>) -> Result<u16, Stop> {
    Ok(dec.read_u16().map_err(|_| Stop::Cut)?.unverified(/* any u16 */))
}

fn stop(offset: usize, e: &DecodeError) -> Stop {
    match e {
        DecodeError::InsufficientBytes => Stop::Cut,
        other => Stop::Malformed {
            offset,
            what: what(other),
        },
    }
}

fn malformed(offset: usize, e: &DecodeError) -> DnsError {
    DnsError::Malformed {
        offset,
        what: what(e),
    }
}

fn what(e: &DecodeError) -> &'static str {
    match e {
        DecodeError::PointerNotPriorToLabel { .. } | DecodeError::LabelOverlapsWithOther { .. } => {
            "compression pointer does not point back"
        }
        DecodeError::UnrecognizedLabelCode(_) => "reserved label type",
        DecodeError::LabelBytesTooLong(_) => "label longer than 63 bytes",
        DecodeError::DomainNameTooLong(_) => "name longer than 255 bytes",
        DecodeError::IncorrectRDataLengthRead { .. } => "record data length does not match",
        _ => "bad record",
    }
}

/// Follows the CNAME records from the question and marks the addresses
/// whose owner is reached. A name with two different CNAME targets (which
/// RFC 1034 forbids) ends the chain: one of them was injected and there is
/// no telling which.
fn link_chain(answer: &mut DnsAnswer) {
    let mut chain = vec![answer.qname.clone()];
    while chain.len() <= MAX_CNAMES {
        let Some(current) = chain.last() else { break };
        let mut targets = answer
            .cnames
            .iter()
            .filter(|c| &c.owner == current)
            .map(|c| &c.target);
        let Some(next) = targets.next() else { break };
        if targets.any(|t| t != next) || chain.contains(next) {
            break;
        }
        chain.push(next.clone());
    }
    for a in &mut answer.addresses {
        a.in_chain = chain.contains(&a.owner);
    }
    answer.chain = chain;
}
