//! Message formats: how one [`Alert`] reads in each SIEM's language.
//!
//! A sink takes an alert from the evidence chain, formats it here, and
//! hands the bytes to a transport. Everything here is a pure function of
//! the alert and a [`Context`] (who is sending): no I/O, no clock. A
//! message therefore carries the event's own time, never the time it was
//! sent, and formatting the same alert twice gives the same bytes, which
//! is what makes the stable ids ([`stable_id`]) safe to deduplicate on.
//!
//! - [`syslog`]: RFC 5424 messages with structured data, and RFC 6587
//!   octet-counting framing;
//! - [`cef`]: Common Event Format (CEF) lines;
//! - [`ocsf`]: OCSF 1.8.0 events (Network Activity, Detection Finding,
//!   Event Log Activity), validated in its tests against the schema;
//! - [`ecs`]: the evidence record's own ECS document, and Elasticsearch
//!   `_bulk` bodies;
//! - [`hec`]: Splunk HTTP Event Collector events;
//! - [`webhook`]: Standard Webhooks payloads and signatures.
//!
//! Every format maps severity from one ladder, [`Level`].

use std::{
    fmt::{self, Write as _},
    io::Write as _,
    str::FromStr,
};

use jiff::{Timestamp, tz::TimeZone};
use residency_common::Verdict;
use residency_record::RecordView;

use crate::alert::{Alert, AlertKind};

pub mod cef;
pub mod ecs;
pub mod hec;
pub mod ocsf;
pub mod syslog;
pub mod webhook;

/// The product name every format reports, whatever the syslog APP-NAME:
/// SIEM parsers select on it.
pub const PRODUCT: &str = "residency";

/// Who is sending: the same for every message of a daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// This host's name (syslog HOSTNAME, OCSF `device.hostname`, HEC
    /// `host`).
    pub hostname: String,
    /// Syslog APP-NAME: `residency` unless the operator says otherwise.
    pub app_name: String,
    /// The daemon's version.
    pub version: &'static str,
    /// The private enterprise number in syslog SD-IDs
    /// (`residency@<number>`). By default 32473, the number RFC 5612
    /// reserves for documentation; an operator with a number of their own
    /// (IANA assigns them free of charge) sets it.
    pub enterprise_number: u32,
    /// Which evidence store the alerts come from (the key id of its
    /// signing key): part of every stable id, so that two hosts, or a
    /// store made anew, never share one. Empty: ids without it.
    pub store: String,
}

/// RFC 5612's private enterprise number for documentation and examples.
pub const DOCUMENTATION_PEN: u32 = 32473;

impl Default for Context {
    /// The kernel's host name (`/proc/sys/kernel/hostname`, or `-` when it
    /// cannot be read), app `residency`, PEN 32473.
    fn default() -> Self {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "-".to_owned());
        Context {
            hostname,
            app_name: PRODUCT.to_owned(),
            version: env!("CARGO_PKG_VERSION"),
            enterprise_number: DOCUMENTATION_PEN,
            store: String::new(),
        }
    }
}

/// A message format, as configuration names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// RFC 5424 syslog, the summary as MSG ([`syslog::rfc5424`]).
    Rfc5424,
    /// Common Event Format ([`cef::cef`]).
    Cef,
    /// OCSF 1.8.0 JSON ([`ocsf::ocsf`]).
    Ocsf,
    /// Elastic Common Schema JSON ([`ecs::ecs`]).
    Ecs,
}

impl Format {
    /// The configuration name: `rfc5424`, `cef`, `ocsf` or `ecs`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Format::Rfc5424 => "rfc5424",
            Format::Cef => "cef",
            Format::Ocsf => "ocsf",
            Format::Ecs => "ecs",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A format name that configuration does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown format \"{0}\" (expected rfc5424, cef, ocsf or ecs)")]
pub struct UnknownFormat(pub String);

impl FromStr for Format {
    type Err = UnknownFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "rfc5424" => Ok(Format::Rfc5424),
            "cef" => Ok(Format::Cef),
            "ocsf" => Ok(Format::Ocsf),
            "ecs" => Ok(Format::Ecs),
            other => Err(UnknownFormat(other.to_owned())),
        }
    }
}

/// How serious an alert is, on one ladder that every format maps from:
///
/// | alert                       | level   | syslog      | CEF | OCSF `severity_id` |
/// |-----------------------------|---------|-------------|-----|--------------------|
/// | flow or violation, blocked  | Error   | 3 err       | 8   | 4 High             |
/// | flow or violation, flagged  | Warning | 4 warning   | 6   | 3 Medium           |
/// | gap                         | Warning | 4 warning   | 6   | 3 Medium           |
/// | checkpoint                  | Notice  | 5 notice    | 3   | 1 Informational    |
/// | flow, allowed               | Info    | 6 info      | 1   | 1 Informational    |
///
/// A blocked transfer is an error rather than a warning although the
/// control worked: the workload tried to send data where it must not go,
/// and someone has to find out why. A gap is a warning: evidence is
/// missing, which an auditor will ask about. A checkpoint is a notice
/// (normal but significant): the SIEM's copy is what makes it worth
/// anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Normal operation (an allowed flow).
    Info,
    /// Normal but significant (a checkpoint).
    Notice,
    /// Needs a look (a flagged flow, a gap in the evidence).
    Warning,
    /// Needs action (a blocked flow).
    Error,
}

impl Level {
    /// The alert's level (see the table on [`Level`]). A flow whose
    /// verdict is missing or unknown is a notice: something to look at,
    /// without claiming it was blocked.
    #[must_use]
    pub fn of(alert: &Alert, r: &RecordView<'_>) -> Level {
        match alert.kind {
            AlertKind::Checkpoint => Level::Notice,
            AlertKind::Gap => Level::Warning,
            AlertKind::Flow | AlertKind::Violation => match r.verdict_kind() {
                Some(Verdict::Blocked) => Level::Error,
                Some(Verdict::Flagged) => Level::Warning,
                Some(Verdict::Allowed) => Level::Info,
                None => Level::Notice,
            },
        }
    }

    /// RFC 5424 §6.2.1 severity (table 2).
    #[must_use]
    pub const fn syslog_severity(self) -> u8 {
        match self {
            Level::Error => 3,
            Level::Warning => 4,
            Level::Notice => 5,
            Level::Info => 6,
        }
    }

    /// CEF severity, 0 to 10 (0-3 low, 4-6 medium, 7-8 high, 9-10 very
    /// high).
    #[must_use]
    pub const fn cef_severity(self) -> u8 {
        match self {
            Level::Info => 1,
            Level::Notice => 3,
            Level::Warning => 6,
            Level::Error => 8,
        }
    }

    /// OCSF `severity_id` and its caption (dictionary `severity_id`).
    #[must_use]
    pub const fn ocsf_severity(self) -> (u8, &'static str) {
        match self {
            Level::Info | Level::Notice => (1, "Informational"),
            Level::Warning => (3, "Medium"),
            Level::Error => (4, "High"),
        }
    }
}

/// The alert kind in the singular, as messages name it: `flow`,
/// `violation`, `checkpoint`, `gap` (syslog MSGID, ids, webhook types).
#[must_use]
pub const fn kind_name(kind: AlertKind) -> &'static str {
    match kind {
        AlertKind::Flow => "flow",
        AlertKind::Violation => "violation",
        AlertKind::Checkpoint => "checkpoint",
        AlertKind::Gap => "gap",
    }
}

/// An id that names this alert and no other, the same every time it is
/// formatted: `<kind>-<seq>`, e.g. `violation-1234`. Receivers deduplicate
/// on it (the Elasticsearch `_id`, OCSF `metadata.uid`), so a batch that is
/// sent again after a timeout does not count twice.
///
/// The kind is part of it because one evidence record can be both a flow
/// and a violation, and a checkpoint names the sequence number of the last
/// record it signs. Two checkpoints of the same record sign the same head,
/// so sharing an id loses nothing.
#[must_use]
pub fn stable_id(alert: &Alert, store: &str) -> String {
    let mut id = String::with_capacity(48);
    // Writing to a String cannot fail.
    if !store.is_empty() {
        let _ = write!(id, "{store}-");
    }
    let _ = write!(id, "{}-{}", kind_name(alert.kind), alert.seq);
    id
}

/// Writes `ts` as RFC 3339 in UTC with microseconds (`2027-01-15T08:00:00.000000Z`):
/// RFC 5424 §6.2.3 allows at most six fractional digits. Years outside
/// 0000-9999, which RFC 3339 cannot write, come out as RFC 5424's NILVALUE
/// `-`.
pub(crate) fn write_rfc3339_micros(ts: Timestamp, out: &mut Vec<u8>) {
    let dt = TimeZone::UTC.to_datetime(ts);
    if !(0..=9999).contains(&dt.year()) {
        out.push(b'-');
        return;
    }
    // Writing to a Vec cannot fail.
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        dt.subsec_nanosecond() / 1000
    );
}

/// [`write_rfc3339_micros`] as a `String`.
pub(crate) fn rfc3339_micros(ts: Timestamp) -> String {
    let mut out = Vec::with_capacity(27);
    write_rfc3339_micros(ts, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Realistic alerts for the format tests: documents shaped like the
    //! evidence chain's (`residency_record::encode`, `Alert::checkpoint`).

    use jiff::Timestamp;
    use serde_json::{Value, json};

    use super::{Alert, AlertKind};
    use crate::alert::CheckpointInfo;

    /// Every character the formats must escape, and what the daemon makes
    /// of a process name that is not UTF-8 (U+FFFD), and more non-ASCII.
    pub const HOSTILE: &str = "a\"b\\c]d|e=f\ng\rh \u{FFFD}\u{e9}\u{6f22}\u{1F600}[x] k=v";

    pub fn time() -> Timestamp {
        "2027-01-15T08:00:00.123456789Z".parse().unwrap()
    }

    /// A flow document as the record crate's encoder writes it.
    pub fn flow_doc(verdict: &str, hook: &str, transport: &str, ip: &str) -> Value {
        let (kind_type, outcome) = if verdict == "blocked" {
            (["connection", "denied"], "failure")
        } else {
            (["connection", "allowed"], "success")
        };
        let action = if hook.starts_with("sendmsg") {
            "sendmsg"
        } else {
            "connect"
        };
        json!({
            "@timestamp": "2027-01-15T08:00:00.123456789Z",
            "event": {
                "kind": "event",
                "category": ["network"],
                "type": kind_type,
                "action": action,
                "outcome": outcome,
                "module": "residency",
                "dataset": "residency.flow",
            },
            "network": {
                "transport": transport,
                "type": if ip.contains(':') { "ipv6" } else { "ipv4" },
                "direction": "egress",
            },
            "destination": {
                "ip": ip,
                "port": 443,
                "domain": "api.example.com",
                "geo": { "country_iso_code": "US", "continent_code": "NA" },
                "as": { "number": 15169, "organization": { "name": "Example LLC" } },
            },
            "process": {
                "pid": 4242,
                "name": "python3",
                "thread": { "id": "4243" },
                "executable": "/usr/bin/python3.12",
                "command_line": "python3 sync.py --tenant acme",
                "args": ["python3", "sync.py", "--tenant", "acme"],
            },
            "user": { "id": "65534" },
            "group": { "id": "65533" },
            "rule": { "id": "2", "name": "no-us-llm", "ruleset": "residency" },
            "residency": {
                "verdict": verdict,
                "hook": hook,
                "mode": "enforce",
                "decided_by": "geoip",
                "country": "US",
                "policy": { "generation": 1, "hash": "3f1ce9a0", "index": 0 },
                "workload": { "name": "crm-sync", "role": "crm-sync" },
                "tenants": ["acme", "globex"],
                "cgroup": { "id": 77, "path": "/system.slice/crm.service" },
                "transfer_basis": "none",
                "boot_ns": 5,
            },
        })
    }

    fn alert(kind: AlertKind, seq: u64, doc: Value) -> Alert {
        Alert {
            kind,
            seq,
            time: time(),
            doc,
            checkpoint: None,
            count: 1,
            span: None,
        }
    }

    pub fn allowed_tcp() -> Alert {
        alert(
            AlertKind::Flow,
            11,
            flow_doc("allowed", "connect4", "tcp", "198.51.100.7"),
        )
    }

    pub fn flagged() -> Alert {
        alert(
            AlertKind::Violation,
            12,
            flow_doc("flagged", "connect4", "tcp", "198.51.100.7"),
        )
    }

    pub fn blocked() -> Alert {
        alert(
            AlertKind::Violation,
            13,
            flow_doc("blocked", "connect4", "tcp", "198.51.100.7"),
        )
    }

    pub fn blocked_flow() -> Alert {
        alert(
            AlertKind::Flow,
            13,
            flow_doc("blocked", "connect4", "tcp", "198.51.100.7"),
        )
    }

    pub fn udp_sendmsg() -> Alert {
        alert(
            AlertKind::Flow,
            14,
            flow_doc("allowed", "sendmsg4", "udp", "192.0.2.53"),
        )
    }

    pub fn ipv6() -> Alert {
        alert(
            AlertKind::Violation,
            15,
            flow_doc("flagged", "connect6", "tcp", "2001:db8::1"),
        )
    }

    /// A flow with nothing but what the kernel knows: no workload,
    /// tenants, geo, executable or domain.
    pub fn bare() -> Alert {
        let mut doc = flow_doc("allowed", "connect4", "tcp", "203.0.113.9");
        let d = doc.as_object_mut().unwrap();
        d["destination"] = json!({ "ip": "203.0.113.9", "port": 80 });
        d["process"] = json!({ "pid": 1, "name": "curl", "thread": { "id": "1" } });
        let r = d["residency"].as_object_mut().unwrap();
        for k in ["workload", "tenants", "country", "policy"] {
            r.remove(k);
        }
        alert(AlertKind::Flow, 16, doc)
    }

    /// An allowed flow the endpoint catalog decided: a name from DNS,
    /// the TLS server name, another live name for the address, and the
    /// catalog entry.
    pub fn catalog() -> Alert {
        let mut doc = flow_doc("allowed", "connect4", "tcp", "198.51.100.20");
        let d = doc.as_object_mut().unwrap();
        d["destination"]["domain"] = "eu.api.openai.com".into();
        d.insert(
            "tls".into(),
            json!({ "client": { "server_name": "eu.api.openai.com" } }),
        );
        let r = d["residency"].as_object_mut().unwrap();
        r.remove("country");
        r["decided_by"] = "catalog".into();
        r["transfer_basis"] = "eea".into();
        r.insert(
            "name".into(),
            json!({
                "source": "dns",
                "value": "eu.api.openai.com",
                "cnames": ["eu.api.openai.com.cdn.example"],
                "also": ["chat.example"],
                "endpoint": {
                    "id": "openai-api-eu",
                    "pattern": "eu.api.openai.com",
                    "provider": "OpenAI",
                    "service": "API (EU data residency)",
                    "jurisdiction": ["EEA", "CH"],
                    "determines_region": true,
                    "source": "https://developers.openai.com/api/docs/guides/data-residency",
                    "origin": "built-in",
                },
            }),
        );
        alert(AlertKind::Flow, 20, doc)
    }

    /// A flow whose name is not known, and why.
    pub fn nameless() -> Alert {
        let mut a = bare();
        a.seq = 21;
        a.doc["residency"]["name"] = json!({ "source": "none", "reason": "no-dns-answer" });
        a
    }

    pub fn throttled() -> Alert {
        let mut a = blocked();
        a.seq = 17;
        a.count = 42;
        a.span = Some((time(), "2027-01-15T08:05:00.5Z".parse().unwrap()));
        a
    }

    pub fn checkpoint() -> Alert {
        Alert::checkpoint(&CheckpointInfo {
            seq: 120_000,
            time: time(),
            head: "3f1c00000000000000000000000000000000000000000000000000000000e9a0".into(),
            key_id: "9a7b6c5d4e3f2a1b".into(),
            signature: "c2lnbmF0dXJl+/8=".into(),
            public_key: "cHVibGljIGtleQ==".into(),
            reason: "interval".into(),
        })
    }

    /// A gap record as the store writes it after an unclean shutdown.
    pub fn gap() -> Alert {
        alert(
            AlertKind::Gap,
            18,
            json!({
                "@timestamp": "2027-01-15T08:00:00.123456789Z",
                "event": {
                    "kind": "pipeline_error",
                    "action": "evidence-gap",
                    "module": "residency",
                    "dataset": "residency.lifecycle",
                },
                "message": "the previous run stopped without closing the evidence store after record 17",
                "residency": { "evidence": { "gap": {
                    "reason": "unclean-shutdown", "after_seq": 17, "after": "2027-01-15T07:59:00Z"
                }}},
            }),
        )
    }

    /// A violation whose every free-text field is [`HOSTILE`].
    pub fn hostile() -> Alert {
        let mut doc = flow_doc("blocked", "connect4", "tcp", "198.51.100.7");
        let d = doc.as_object_mut().unwrap();
        d["process"]["name"] = HOSTILE.into();
        d["process"]["executable"] = format!("/opt/{HOSTILE}/bin").into();
        d["destination"]["domain"] = format!("{HOSTILE}.example").into();
        d["rule"]["name"] = HOSTILE.into();
        d["rule"]["id"] = HOSTILE.into();
        d["residency"]["workload"]["name"] = HOSTILE.into();
        d["residency"]["workload"]["role"] = HOSTILE.into();
        d["residency"]["tenants"] = json!([HOSTILE, "plain", ""]);
        d["residency"]["policy"]["hash"] = HOSTILE.into();
        d["residency"]["country"] = "U\"S".into();
        d.insert(
            "tls".into(),
            json!({ "client": { "server_name": format!("{HOSTILE}.sni") } }),
        );
        d["residency"]["name"] = json!({
            "source": "sni",
            "value": format!("{HOSTILE}.example"),
            "also": [HOSTILE],
            "endpoint": {
                "id": HOSTILE, "pattern": HOSTILE, "provider": HOSTILE, "service": HOSTILE,
                "jurisdiction": [HOSTILE], "determines_region": false, "source": HOSTILE,
                "origin": "config",
            },
        });
        d.insert(
            "container".into(),
            json!({ "id": HOSTILE, "name": HOSTILE, "image": { "name": HOSTILE } }),
        );
        d.insert(
            "orchestrator".into(),
            json!({
                "type": "kubernetes",
                "namespace": HOSTILE,
                "resource": { "type": "pod", "name": HOSTILE, "id": HOSTILE, "label": [HOSTILE, "k:v"] },
            }),
        );
        alert(AlertKind::Violation, 19, doc)
    }

    /// A violation by a container of a Kubernetes pod, named as the
    /// record crate's encoder names it (`container.*`, `orchestrator.*`).
    pub fn pod() -> Alert {
        let mut doc = flow_doc("blocked", "connect4", "tcp", "198.51.100.7");
        let d = doc.as_object_mut().unwrap();
        d.insert(
            "container".into(),
            json!({
                "id": "ab".repeat(32),
                "name": "sync",
                "image": { "name": "registry.example/crm/sync:1.4" },
            }),
        );
        d.insert(
            "orchestrator".into(),
            json!({
                "type": "kubernetes",
                "namespace": "crm",
                "resource": {
                    "type": "pod",
                    "name": "sync-7d9f-x2x",
                    "id": POD_UID,
                    "label": ["app.kubernetes.io/name:sync", "tier:batch"],
                },
            }),
        );
        alert(AlertKind::Violation, 23, doc)
    }

    /// The pod UID of [`pod`].
    pub const POD_UID: &str = "0b7ae1c5-2f3a-4e5b-9c1d-5a6b7c8d9e0f";

    /// Every alert above.
    pub fn all() -> Vec<Alert> {
        vec![
            allowed_tcp(),
            flagged(),
            blocked(),
            blocked_flow(),
            udp_sendmsg(),
            ipv6(),
            bare(),
            catalog(),
            nameless(),
            throttled(),
            checkpoint(),
            gap(),
            hostile(),
            pod(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pod fixture names the pod as the record crate's encoder does,
    /// so that the formats' pod tests test what the daemon sends.
    #[test]
    fn the_pod_fixture_is_what_the_encoder_writes() {
        use std::sync::Arc;

        use residency_common::{DestKind, Hook};
        use residency_record::{ContainerInfo, Flow, PodInfo, Record, Transport};

        let flow = Flow {
            time: jiff::Timestamp::UNIX_EPOCH,
            boot_ns: 0,
            cgroup_id: 0,
            cgroup_path: None,
            pid: 1,
            tid: 1,
            uid: 0,
            gid: 0,
            process_name: "sync".into(),
            process: None,
            hook: Hook::Connect4,
            transport: Transport::Tcp,
            dest_ip: "198.51.100.7".parse().unwrap(),
            dest_port: 443,
            v4_mapped: false,
            stale: false,
            verdict: Verdict::Blocked,
            rule_id: 0,
            dest_kind: DestKind::Geo,
            country: None,
            geo_gen: 0,
            geo_version: None,
            detail: None,
            policy: 0,
            policy_gen: 0,
            policy_view: None,
            name: None,
            cookie: 0,
            pod: Some(Arc::new(PodInfo {
                namespace: "crm".into(),
                name: "sync-7d9f-x2x".into(),
                uid: fixtures::POD_UID.into(),
                labels: [("tier", "batch"), ("app.kubernetes.io/name", "sync")]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
                container: Some(ContainerInfo {
                    id: "ab".repeat(32),
                    name: "sync".into(),
                    image: "registry.example/crm/sync:1.4".into(),
                }),
            })),
            flow_id: None,
            totals: None,
        };
        let mut line = Vec::new();
        residency_record::encode_line(&Record::Flow(flow), &mut line).unwrap();
        let encoded: serde_json::Value = serde_json::from_slice(&line).unwrap();
        let fixture = fixtures::pod().doc;
        for key in ["container", "orchestrator"] {
            assert_eq!(encoded[key], fixture[key], "{key}");
        }
    }

    #[test]
    fn formats_parse_by_their_configuration_names() {
        for f in [Format::Rfc5424, Format::Cef, Format::Ocsf, Format::Ecs] {
            assert_eq!(f.as_str().parse::<Format>(), Ok(f));
            assert_eq!(f.to_string(), f.as_str());
        }
        assert_eq!(
            "json".parse::<Format>(),
            Err(UnknownFormat("json".to_owned()))
        );
    }

    #[test]
    fn levels_follow_the_ladder() {
        let level = |a: Alert| Level::of(&a, &a.record());
        assert_eq!(level(fixtures::blocked()), Level::Error);
        assert_eq!(level(fixtures::blocked_flow()), Level::Error);
        assert_eq!(level(fixtures::flagged()), Level::Warning);
        assert_eq!(level(fixtures::allowed_tcp()), Level::Info);
        assert_eq!(level(fixtures::checkpoint()), Level::Notice);
        assert_eq!(level(fixtures::gap()), Level::Warning);
        assert_eq!(Level::Error.syslog_severity(), 3);
        assert_eq!(Level::Info.syslog_severity(), 6);
    }

    #[test]
    fn ids_are_stable_and_distinct_per_kind() {
        let blocked = fixtures::blocked();
        assert_eq!(stable_id(&blocked, ""), "violation-13");
        assert_eq!(stable_id(&blocked, ""), stable_id(&blocked.clone(), ""));
        assert_eq!(stable_id(&fixtures::blocked_flow(), ""), "flow-13");
        assert_eq!(stable_id(&fixtures::checkpoint(), ""), "checkpoint-120000");
        // Another store, another id.
        assert_eq!(
            stable_id(&blocked, "2afc91ff1b439f4f"),
            "2afc91ff1b439f4f-violation-13"
        );
    }

    #[test]
    fn times_have_microseconds_in_utc() {
        assert_eq!(
            rfc3339_micros(fixtures::time()),
            "2027-01-15T08:00:00.123456Z"
        );
        assert_eq!(
            rfc3339_micros(Timestamp::UNIX_EPOCH),
            "1970-01-01T00:00:00.000000Z"
        );
        assert_eq!(rfc3339_micros(Timestamp::MIN), "-");
    }

    #[test]
    fn default_context_names_this_host() {
        let c = Context::default();
        assert!(!c.hostname.is_empty());
        assert_eq!(c.app_name, "residency");
        assert_eq!(c.enterprise_number, 32473);
        assert_eq!(c.version, env!("CARGO_PKG_VERSION"));
    }
}
