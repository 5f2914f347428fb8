//! RFC 5424 syslog messages, and RFC 6587 octet-counting framing.
//!
//! ```text
//! <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [residency@32473 seq="12" ...] BOM MSG
//! ```
//!
//! - PRI is `facility * 8 + severity` (§6.2.1), the severity from
//!   [`Level`];
//! - TIMESTAMP is when the event happened (the alert's time), in UTC with
//!   microseconds (§6.2.3), never when the message is sent: a message
//!   that waited in the spool still says when the flow was decided;
//! - HOSTNAME, APP-NAME, PROCID (the daemon's pid) and MSGID (`flow`,
//!   `violation`, `checkpoint`, `gap`) are printable US-ASCII within the
//!   lengths of §6: anything else in them is replaced with `_`;
//! - one SD-ELEMENT `residency@<PEN>` (§6.3) carries the alert's facts
//!   (see [`rfc5424`] for the parameters);
//! - MSG is what the caller passes (a summary, or a CEF line), after the
//!   UTF-8 BOM that §6.4 asks for when MSG is UTF-8.
//!
//! Over TCP and TLS the messages are framed by octet counting (RFC 6587
//! §3.4.1, RFC 5425 §4.3): [`octet_frame`]. A message may then contain
//! newlines, and structured-data values do (escaped only as §6.3.3 asks).

use std::io::Write as _;

use residency_record::RecordView;

use super::{Context, Level, kind_name, write_rfc3339_micros};
use crate::alert::{Alert, AlertKind};

/// The largest facility (local7), RFC 5424 §6.2.1 table 1.
pub const MAX_FACILITY: u8 = 23;

/// RFC 5424 §6.2 header field limits.
const HOSTNAME_MAX: usize = 255;
const APP_NAME_MAX: usize = 48;
const PROCID_MAX: usize = 128;
const MSGID_MAX: usize = 32;
// A u32 pid (at most 10 digits) always fits in PROCID.
const _: () = assert!(PROCID_MAX >= 10);

/// The UTF-8 byte order mark that begins a UTF-8 MSG (RFC 5424 §6.4).
pub const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One RFC 5424 message for `alert`, with `msg` as its MSG (none when
/// empty). A `facility` above [`MAX_FACILITY`] is taken as 23:
/// configuration rejects such values before they get here.
///
/// The structured data, `[residency@<PEN> ...]`, has these parameters
/// (each only when the alert has a value for it):
///
/// | alert               | parameters                                                        |
/// |---------------------|-------------------------------------------------------------------|
/// | flow, violation     | `seq verdict mode country tenant* role workload namespace pod podUid label* containerId container image ruleId rule dst dport domain sni nameSource nameReason also* endpoint provider service catalogSource proto pid process exe policy basis condition` |
/// | throttled (count>1) | also `count first last`                                           |
/// | checkpoint          | `seq head keyId signature reason`                                 |
/// | gap                 | `seq action reason afterSeq lost`                                 |
///
/// `domain` is the name the process resolved (`destination.domain`), `sni`
/// the TLS server name; `nameSource` says how the name is known (`dns`,
/// `sni`, or `none` with `nameReason`), `also` repeats for each other live
/// name of the address (the name is then ambiguous), and `endpoint`,
/// `provider`, `service` and `catalogSource` (the documentation the entry
/// rests on) cite the endpoint catalog entry of the name.
///
/// `namespace`, `pod` and `podUid` name the Kubernetes pod the flow came
/// from, `label` repeats once per pod label (`key:value`), and
/// `containerId`, `container` and `image` name its container.
///
/// `tenant` repeats, once per tenant, as §6.3.3 allows. Values are UTF-8,
/// with `"`, `\` and `]` escaped by a backslash (§6.3.3).
#[must_use]
pub fn rfc5424(alert: &Alert, ctx: &Context, facility: u8, msg: &[u8]) -> Vec<u8> {
    let r = alert.record();
    let mut out = Vec::with_capacity(512 + msg.len());
    let pri = u16::from(facility.min(MAX_FACILITY)) * 8
        + u16::from(Level::of(alert, &r).syslog_severity());
    // Writing to a Vec cannot fail.
    let _ = write!(out, "<{pri}>1 ");
    write_rfc3339_micros(alert.time, &mut out);
    out.push(b' ');
    header_field(&ctx.hostname, HOSTNAME_MAX, &mut out);
    out.push(b' ');
    header_field(&ctx.app_name, APP_NAME_MAX, &mut out);
    out.push(b' ');
    let _ = write!(out, "{}", std::process::id());
    out.push(b' ');
    header_field(kind_name(alert.kind), MSGID_MAX, &mut out);
    out.push(b' ');
    structured_data(alert, &r, ctx, &mut out);
    if !msg.is_empty() {
        out.push(b' ');
        // MSG-UTF8 starts with the BOM; anything else is MSG-ANY (§6.4).
        if std::str::from_utf8(msg).is_ok() {
            out.extend_from_slice(BOM);
        }
        out.extend_from_slice(msg);
    }
    out
}

/// Appends `msg` framed by octet counting: `MSG-LEN SP SYSLOG-MSG`, the
/// length in bytes (RFC 6587 §3.4.1, RFC 5425 §4.3).
pub fn octet_frame(msg: &[u8], out: &mut Vec<u8>) {
    let _ = write!(out, "{} ", msg.len());
    out.extend_from_slice(msg);
}

/// A header field (§6.2): PRINTUSASCII (33-126) only, at most `max`
/// characters, and NILVALUE `-` when empty. Anything else becomes `_`, one
/// per character, so that the field stays recognisable.
fn header_field(value: &str, max: usize, out: &mut Vec<u8>) {
    if value.is_empty() {
        out.push(b'-');
        return;
    }
    for c in value.chars().take(max) {
        out.push(if c.is_ascii_graphic() {
            // An ASCII graphic character is one byte.
            u8::try_from(c).unwrap_or(b'_')
        } else {
            b'_'
        });
    }
}

fn structured_data(alert: &Alert, r: &RecordView<'_>, ctx: &Context, out: &mut Vec<u8>) {
    // SD-ID "name@<private enterprise number>" (§6.3.2).
    let _ = write!(out, "[residency@{}", ctx.enterprise_number);
    param_u64(out, "seq", alert.seq);
    match alert.kind {
        AlertKind::Flow | AlertKind::Violation => flow_params(alert, r, out),
        AlertKind::Checkpoint => {
            if let Some(c) = alert.checkpoint.as_deref() {
                param(out, "head", &c.head);
                param(out, "keyId", &c.key_id);
                param(out, "signature", &c.signature);
                param(out, "reason", &c.reason);
            }
        }
        AlertKind::Gap => {
            if !r.event.action.is_empty() {
                param(out, "action", &r.event.action);
            }
            if let Some(g) = r.gap() {
                if !g.reason.is_empty() {
                    param(out, "reason", &g.reason);
                }
                if let Some(v) = g.after_seq {
                    param_u64(out, "afterSeq", v);
                }
            }
            if let Some(v) = r.lost_count() {
                param_u64(out, "lost", v);
            }
        }
    }
    out.push(b']');
}

fn flow_params(alert: &Alert, r: &RecordView<'_>, out: &mut Vec<u8>) {
    let opt = |out: &mut Vec<u8>, name: &str, v: Option<&str>| {
        if let Some(v) = v {
            param(out, name, v);
        }
    };
    opt(out, "verdict", r.verdict());
    opt(out, "mode", r.mode());
    opt(out, "country", r.country());
    for t in r.tenants() {
        param(out, "tenant", t);
    }
    opt(out, "role", r.role());
    opt(out, "workload", r.workload());
    opt(out, "namespace", r.namespace());
    opt(out, "pod", r.pod_name());
    opt(out, "podUid", r.pod_uid());
    for (k, v) in r.pod_labels() {
        param(out, "label", &format!("{k}:{v}"));
    }
    let (container_id, container, image) = r.container();
    opt(out, "containerId", container_id);
    opt(out, "container", container);
    opt(out, "image", image);
    let (rule_id, rule) = r.rule();
    opt(out, "ruleId", rule_id);
    opt(out, "rule", rule);
    opt(out, "dst", r.dst_ip());
    if let Some(p) = r.dst_port() {
        param_u64(out, "dport", u64::from(p));
    }
    opt(out, "domain", r.dst_domain());
    opt(out, "sni", r.server_name());
    opt(out, "nameSource", r.name_source());
    opt(out, "nameReason", r.name_reason());
    for name in r.also_names() {
        param(out, "also", name);
    }
    opt(out, "endpoint", r.endpoint_id());
    opt(out, "provider", r.provider());
    opt(out, "service", r.service());
    opt(out, "catalogSource", r.endpoint_source());
    opt(out, "proto", r.transport());
    let (pid, process, exe) = r.process();
    if let Some(pid) = pid {
        param_u64(out, "pid", pid);
    }
    opt(out, "process", process);
    opt(out, "exe", exe);
    opt(out, "policy", r.policy_hash());
    opt(out, "basis", r.transfer_basis());
    opt(out, "condition", r.transfer_condition());
    if alert.count > 1 {
        param_u64(out, "count", alert.count);
        if let Some((first, last)) = alert.span {
            out.extend_from_slice(b" first=\"");
            write_rfc3339_micros(first, out);
            out.extend_from_slice(b"\" last=\"");
            write_rfc3339_micros(last, out);
            out.push(b'"');
        }
    }
}

/// ` name="value"`, the value escaped as §6.3.3 says: `"`, `\` and `]`
/// take a backslash; everything else, newlines and non-ASCII included, is
/// UTF-8 as it is.
fn param(out: &mut Vec<u8>, name: &str, value: &str) {
    debug_assert!(
        name.len() <= 32
            && name
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"=]\"".contains(&b)),
        "SD-NAME rules (§6.3.3)"
    );
    out.push(b' ');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"=\"");
    for b in value.bytes() {
        if matches!(b, b'"' | b'\\' | b']') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// ` name="n"`: digits need no escaping.
fn param_u64(out: &mut Vec<u8>, name: &str, n: u64) {
    let _ = write!(out, " {name}=\"{n}\"");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::fixtures::{self, HOSTILE};

    /// A parsed RFC 5424 message: the header fields, the SD-ELEMENTs
    /// (params in order, repeats kept) and MSG.
    #[derive(Debug)]
    struct Parsed {
        pri: u16,
        header: Vec<String>,
        sd: Vec<(String, Vec<(String, String)>)>,
        msg: Vec<u8>,
    }

    impl Parsed {
        fn params(&self) -> &[(String, String)] {
            &self.sd[0].1
        }

        fn get(&self, name: &str) -> Option<&str> {
            self.params()
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }

        fn all(&self, name: &str) -> Vec<&str> {
            self.params()
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .collect()
        }
    }

    /// An RFC 5424 parser strict about what this module must get right:
    /// the header's character set and lengths, SD-NAMEs, and the escapes
    /// of §6.3.3 (any other backslash is an error here, although §6.3.3
    /// tells receivers to keep it, because we never write one).
    fn parse(m: &[u8]) -> Result<Parsed, String> {
        let rest = m.strip_prefix(b"<").ok_or("no <")?;
        let close = rest.iter().position(|&b| b == b'>').ok_or("no >")?;
        let pri: u16 = std::str::from_utf8(&rest[..close])
            .map_err(|e| e.to_string())?
            .parse()
            .map_err(|e| format!("PRI: {e}"))?;
        if pri > 191 {
            return Err(format!("PRI {pri} > 191"));
        }
        let mut rest = &rest[close + 1..];
        let mut header = Vec::new();
        for (i, max) in [(0, 2), (1, 32), (2, 255), (3, 48), (4, 128), (5, 32)] {
            let sp = rest.iter().position(|&b| b == b' ').ok_or("short header")?;
            let field = &rest[..sp];
            if field.is_empty() || field.len() > max {
                return Err(format!("header field {i} has length {}", field.len()));
            }
            if !field.iter().all(u8::is_ascii_graphic) {
                return Err(format!("header field {i} is not PRINTUSASCII: {field:?}"));
            }
            header.push(String::from_utf8(field.to_vec()).unwrap());
            rest = &rest[sp + 1..];
        }
        if header[0] != "1" {
            return Err("VERSION".into());
        }
        let mut sd = Vec::new();
        if rest.first() == Some(&b'-') {
            rest = &rest[1..];
        } else {
            while rest.first() == Some(&b'[') {
                rest = &rest[1..];
                let end = rest
                    .iter()
                    .position(|&b| b == b' ' || b == b']')
                    .ok_or("SD-ID")?;
                let id = sd_name(&rest[..end])?;
                rest = &rest[end..];
                let mut params = Vec::new();
                while rest.first() == Some(&b' ') {
                    rest = &rest[1..];
                    let eq = rest.iter().position(|&b| b == b'=').ok_or("no =")?;
                    let name = sd_name(&rest[..eq])?;
                    rest = rest[eq + 1..]
                        .strip_prefix(b"\"")
                        .ok_or("no opening quote")?;
                    let mut value = Vec::new();
                    loop {
                        match rest.first().ok_or("unterminated value")? {
                            b'\\' => {
                                let next = *rest.get(1).ok_or("dangling backslash")?;
                                if !matches!(next, b'"' | b'\\' | b']') {
                                    return Err(format!("stray backslash before {next}"));
                                }
                                value.push(next);
                                rest = &rest[2..];
                            }
                            b'"' => {
                                rest = &rest[1..];
                                break;
                            }
                            b']' => return Err("unescaped ] in a value".into()),
                            &b => {
                                value.push(b);
                                rest = &rest[1..];
                            }
                        }
                    }
                    let value = String::from_utf8(value).map_err(|e| e.to_string())?;
                    params.push((name, value));
                }
                rest = rest.strip_prefix(b"]").ok_or("no ]")?;
                sd.push((id, params));
            }
            if sd.is_empty() {
                return Err("no structured data".into());
            }
        }
        let msg = match rest {
            [] => Vec::new(),
            [b' ', msg @ ..] => msg.to_vec(),
            _ => return Err("no space before MSG".into()),
        };
        Ok(Parsed {
            pri,
            header,
            sd,
            msg,
        })
    }

    fn sd_name(b: &[u8]) -> Result<String, String> {
        if b.is_empty()
            || b.len() > 32
            || !b
                .iter()
                .all(|&c| c.is_ascii_graphic() && !b"=]\" ".contains(&c))
        {
            return Err(format!("bad SD-NAME {:?}", String::from_utf8_lossy(b)));
        }
        Ok(String::from_utf8(b.to_vec()).unwrap())
    }

    fn ctx() -> Context {
        Context {
            hostname: "host-1.example".into(),
            app_name: "residency".into(),
            version: "1.2.3",
            enterprise_number: 32473,
            store: String::new(),
        }
    }

    #[test]
    fn a_blocked_violation_reads_back() {
        let a = fixtures::blocked();
        let m = rfc5424(&a, &ctx(), 4, a.summary().as_bytes());
        let p = parse(&m).unwrap();
        assert_eq!(p.pri, 4 * 8 + 3, "auth facility, err severity");
        assert_eq!(
            p.header,
            [
                "1",
                "2027-01-15T08:00:00.123456Z",
                "host-1.example",
                "residency",
                &std::process::id().to_string(),
                "violation"
            ]
        );
        assert_eq!(p.sd.len(), 1);
        assert_eq!(p.sd[0].0, "residency@32473");
        let expect = [
            ("seq", "13"),
            ("verdict", "blocked"),
            ("mode", "enforce"),
            ("country", "US"),
            ("tenant", "acme"),
            ("tenant", "globex"),
            ("role", "crm-sync"),
            ("workload", "crm-sync"),
            ("ruleId", "2"),
            ("rule", "no-us-llm"),
            ("dst", "198.51.100.7"),
            ("dport", "443"),
            ("domain", "api.example.com"),
            ("proto", "tcp"),
            ("pid", "4242"),
            ("process", "python3"),
            ("exe", "/usr/bin/python3.12"),
            ("policy", "3f1ce9a0"),
            ("basis", "none"),
        ];
        let got: Vec<(&str, &str)> = p
            .params()
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        assert_eq!(got, expect);
        assert_eq!(p.msg, [BOM, a.summary().as_bytes()].concat());

        // A basis that holds only on a condition says which, last.
        let mut ca = fixtures::flagged();
        ca.doc["residency"]["transfer_basis"] = serde_json::json!("adequacy");
        ca.doc["residency"]["transfer_condition"] = serde_json::json!(
            "commercial organisations subject to PIPEDA only (Decision 2002/2/EC)"
        );
        let m = rfc5424(&ca, &ctx(), 4, ca.summary().as_bytes());
        let p = parse(&m).unwrap();
        assert_eq!(
            p.params().last().map(|(n, v)| (n.as_str(), v.as_str())),
            Some((
                "condition",
                "commercial organisations subject to PIPEDA only (Decision 2002/2/EC)"
            ))
        );
    }

    #[test]
    fn a_named_flow_cites_its_name_and_catalog_entry() {
        let p = parse(&rfc5424(&fixtures::catalog(), &ctx(), 1, b"")).unwrap();
        let names = [
            "domain",
            "sni",
            "nameSource",
            "also",
            "endpoint",
            "provider",
            "service",
            "catalogSource",
        ];
        let got: Vec<(&str, &str)> = p
            .params()
            .iter()
            .filter(|(n, _)| names.contains(&n.as_str()))
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("domain", "eu.api.openai.com"),
                ("sni", "eu.api.openai.com"),
                ("nameSource", "dns"),
                ("also", "chat.example"),
                ("endpoint", "openai-api-eu"),
                ("provider", "OpenAI"),
                ("service", "API (EU data residency)"),
                (
                    "catalogSource",
                    "https://developers.openai.com/api/docs/guides/data-residency"
                ),
            ]
        );
        assert_eq!(p.get("nameReason"), None);

        // No name: why, and nothing empty.
        let p = parse(&rfc5424(&fixtures::nameless(), &ctx(), 1, b"")).unwrap();
        assert_eq!(p.get("nameSource"), Some("none"));
        assert_eq!(p.get("nameReason"), Some("no-dns-answer"));
        // No name tracking at all: none of the parameters.
        let p = parse(&rfc5424(&fixtures::bare(), &ctx(), 1, b"")).unwrap();
        for a in [fixtures::bare(), fixtures::nameless()] {
            let p2 = parse(&rfc5424(&a, &ctx(), 1, b"")).unwrap();
            for (n, v) in p2.params() {
                assert!(!v.is_empty(), "{n} is empty");
                assert!(
                    ![
                        "domain",
                        "sni",
                        "also",
                        "endpoint",
                        "provider",
                        "service",
                        "catalogSource"
                    ]
                    .contains(&n.as_str()),
                    "{n} without a name"
                );
            }
        }
        assert_eq!(p.get("nameSource"), None);
    }

    #[test]
    fn severities_and_message_ids_per_kind() {
        for (a, sev, msgid) in [
            (fixtures::allowed_tcp(), 6, "flow"),
            (fixtures::blocked_flow(), 3, "flow"),
            (fixtures::flagged(), 4, "violation"),
            (fixtures::checkpoint(), 5, "checkpoint"),
            (fixtures::gap(), 4, "gap"),
        ] {
            let p = parse(&rfc5424(&a, &ctx(), 16, b"x")).unwrap();
            assert_eq!(p.pri, 16 * 8 + sev, "{msgid}");
            assert_eq!(p.header[5], msgid);
        }
        // A facility out of range cannot make PRI out of range.
        let p = parse(&rfc5424(&fixtures::blocked(), &ctx(), 200, b"")).unwrap();
        assert_eq!(p.pri, 23 * 8 + 3);
        assert!(p.msg.is_empty(), "no MSG, and no space before it");
    }

    #[test]
    fn throttled_alerts_say_how_often_and_when() {
        let p = parse(&rfc5424(&fixtures::throttled(), &ctx(), 1, b"")).unwrap();
        assert_eq!(p.get("count"), Some("42"));
        assert_eq!(p.get("first"), Some("2027-01-15T08:00:00.123456Z"));
        assert_eq!(p.get("last"), Some("2027-01-15T08:05:00.500000Z"));
        assert_eq!(p.header[1], "2027-01-15T08:00:00.123456Z", "event time");
        let p = parse(&rfc5424(&fixtures::blocked(), &ctx(), 1, b"")).unwrap();
        assert_eq!(p.get("count"), None, "only when throttled");
    }

    #[test]
    fn checkpoints_and_gaps_carry_their_own_fields() {
        let p = parse(&rfc5424(&fixtures::checkpoint(), &ctx(), 1, b"")).unwrap();
        assert_eq!(p.get("seq"), Some("120000"));
        assert_eq!(
            p.get("head"),
            Some("3f1c00000000000000000000000000000000000000000000000000000000e9a0")
        );
        assert_eq!(p.get("keyId"), Some("9a7b6c5d4e3f2a1b"));
        assert_eq!(p.get("signature"), Some("c2lnbmF0dXJl+/8="));
        assert_eq!(p.get("reason"), Some("interval"));
        assert_eq!(p.get("verdict"), None);

        let p = parse(&rfc5424(&fixtures::gap(), &ctx(), 1, b"")).unwrap();
        assert_eq!(p.get("seq"), Some("18"));
        assert_eq!(p.get("action"), Some("evidence-gap"));
        assert_eq!(p.get("reason"), Some("unclean-shutdown"));
        assert_eq!(p.get("afterSeq"), Some("17"));
    }

    #[test]
    fn a_pods_flow_names_the_pod_and_container() {
        let p = parse(&rfc5424(&fixtures::pod(), &ctx(), 1, b"")).unwrap();
        assert_eq!(p.get("namespace"), Some("crm"));
        assert_eq!(p.get("pod"), Some("sync-7d9f-x2x"));
        assert_eq!(p.get("podUid"), Some(fixtures::POD_UID));
        assert_eq!(
            p.all("label"),
            ["app.kubernetes.io/name:sync", "tier:batch"]
        );
        assert_eq!(p.get("containerId"), Some("ab".repeat(32).as_str()));
        assert_eq!(p.get("container"), Some("sync"));
        assert_eq!(p.get("image"), Some("registry.example/crm/sync:1.4"));
        let p = parse(&rfc5424(&fixtures::blocked(), &ctx(), 1, b"")).unwrap();
        for k in [
            "namespace",
            "pod",
            "podUid",
            "label",
            "containerId",
            "container",
            "image",
        ] {
            assert_eq!(p.get(k), None, "{k} without a pod");
        }
    }

    #[test]
    fn hostile_values_round_trip_through_structured_data() {
        let a = fixtures::hostile();
        let p = parse(&rfc5424(&a, &ctx(), 1, HOSTILE.as_bytes())).unwrap();
        assert_eq!(p.get("process"), Some(HOSTILE));
        assert_eq!(p.get("exe"), a.record().process().2);
        assert_eq!(p.get("domain"), a.record().dst_domain());
        assert_eq!(p.get("sni"), a.record().server_name());
        assert_eq!(p.all("also"), [HOSTILE]);
        assert_eq!(p.get("endpoint"), Some(HOSTILE));
        assert_eq!(p.get("provider"), Some(HOSTILE));
        assert_eq!(p.get("service"), Some(HOSTILE));
        assert_eq!(p.get("catalogSource"), Some(HOSTILE));
        assert_eq!(p.get("rule"), Some(HOSTILE));
        assert_eq!(p.get("ruleId"), Some(HOSTILE));
        assert_eq!(p.get("workload"), Some(HOSTILE));
        assert_eq!(p.get("role"), Some(HOSTILE));
        assert_eq!(p.get("policy"), Some(HOSTILE));
        assert_eq!(p.get("country"), Some("U\"S"));
        assert_eq!(p.all("tenant"), [HOSTILE, "plain", ""]);
        assert_eq!(p.get("namespace"), Some(HOSTILE));
        assert_eq!(p.get("pod"), Some(HOSTILE));
        assert_eq!(p.get("image"), Some(HOSTILE));
        assert_eq!(p.all("label").len(), 2);
        assert_eq!(p.msg, [BOM, HOSTILE.as_bytes()].concat());

        // The parser is not fooled: the unescaped form does not parse.
        let mut broken = rfc5424(&a, &ctx(), 1, b"");
        let at = broken.windows(2).position(|w| w == b"\\]").unwrap();
        broken.remove(at);
        assert!(parse(&broken).is_err());
    }

    #[test]
    fn header_fields_keep_to_rfc_5424() {
        let ctx = Context {
            hostname: format!("bad host\u{e9}{}", "h".repeat(300)),
            app_name: format!("my app{}", "a".repeat(60)),
            version: "1",
            enterprise_number: u32::MAX,
            store: String::new(),
        };
        let p = parse(&rfc5424(&fixtures::allowed_tcp(), &ctx, 1, b"")).unwrap();
        assert_eq!(p.header[2].len(), 255);
        assert!(p.header[2].starts_with("bad_host_hhh"));
        assert_eq!(p.header[3].len(), 48);
        assert!(p.header[3].starts_with("my_app"));
        assert_eq!(p.sd[0].0, "residency@4294967295");

        let empty = Context {
            hostname: String::new(),
            app_name: String::new(),
            ..ctx
        };
        let p = parse(&rfc5424(&fixtures::allowed_tcp(), &empty, 1, b"")).unwrap();
        assert_eq!(p.header[2], "-");
        assert_eq!(p.header[3], "-");
    }

    #[test]
    fn msg_that_is_not_utf8_goes_without_a_bom() {
        let p = parse(&rfc5424(&fixtures::allowed_tcp(), &ctx(), 1, b"\xff\xfe")).unwrap();
        assert_eq!(p.msg, b"\xff\xfe");
    }

    #[test]
    fn octet_framing_counts_bytes() {
        let mut out = b"previous".to_vec();
        octet_frame("é\n1".as_bytes(), &mut out);
        assert_eq!(out, "previous4 é\n1".as_bytes());
        let mut out = Vec::new();
        let m = rfc5424(&fixtures::hostile(), &ctx(), 1, HOSTILE.as_bytes());
        octet_frame(&m, &mut out);
        let sp = out.iter().position(|&b| b == b' ').unwrap();
        let len: usize = std::str::from_utf8(&out[..sp]).unwrap().parse().unwrap();
        assert_eq!(&out[sp + 1..], &m[..]);
        assert_eq!(len, m.len());
    }
}
