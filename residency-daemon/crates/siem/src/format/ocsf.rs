//! OCSF 1.8.0 events.
//!
//! | alert      | class (`class_uid`)             | activity (`activity_id`)                                         |
//! |------------|---------------------------------|------------------------------------------------------------------|
//! | flow       | Network Activity (4001)         | 1 Open (connect), 6 Traffic (sendmsg: UDP), 5 Refuse (blocked)   |
//! | violation  | Detection Finding (2004)        | 1 Create                                                         |
//! | checkpoint | Event Log Activity (1008)       | 99 Other, `activity_name` `evidence-checkpoint`                  |
//! | gap        | Event Log Activity (1008)       | 99 Other, `activity_name` the record's action (`events-lost`, `evidence-gap`, `sink-gap`) |
//!
//! The policy's decision is the `security_control` profile's: `action_id`
//! 1 Allowed, 3 Observed (flagged: the flow went ahead and was reported)
//! or 2 Denied, with `disposition_id` 1 Allowed, 15 Detected or 2 Blocked.
//! (The profile's `action_id` descriptions pair Detected with Observed,
//! not with Allowed.) A flow's `status_id` is 1 Success unless it was
//! blocked (2 Failure).
//!
//! Checkpoints and gaps are facts about the evidence log itself, so they
//! are Event Log Activity, the class SIEM content watches for a log being
//! cleared or disabled: a gap is exactly that kind of news for an auditor,
//! and a checkpoint is the log vouching for itself. None of the class's
//! activities (Clear, Delete, Export, Archive, Rotate, Start, Stop,
//! Restart, Enable, Disable) says "records are missing" or "the log was
//! signed", so both use 99 Other with the source's own name in
//! `activity_name`, as OCSF asks for Other. A gap is `status_id` 2
//! Failure, a checkpoint 1 Success; the checkpoint's head, key id and
//! signature are in `unmapped.residency.checkpoint`.
//!
//! Every event carries:
//!
//! - `time`: when the event happened (ms since the epoch), never the send
//!   time; with `count > 1` also `count`, `start_time` and `end_time`;
//! - `metadata`: `version` 1.8.0, `product` residency, `uid` the alert's
//!   [`stable_id`], `original_event_uid` the evidence sequence number,
//!   `correlation_uid` `residency-<seq>` (shared by a flow and the
//!   violation it caused), and the profiles used;
//! - `unmapped.residency`: what OCSF has no attribute for (tenants,
//!   workload, role, rule, policy hash, mode, transfer basis, verdict).
//!
//! The destination's name is `dst_endpoint.hostname` (with a Hostname
//! observable) and its catalog entry's service `dst_endpoint.svc_name`;
//! the rest of `residency.name` (how the name is known, the TLS server
//! name, other names of the address, the catalog entry) is in
//! `unmapped.residency.name`. The TLS server name is not OCSF's `tls.sni`:
//! the `tls` object requires `version`, the negotiated protocol version,
//! and residency sees only the client's `ClientHello`, not what was
//! negotiated.
//!
//! The Kubernetes pod a flow came from: its container is the process's
//! `container` (the `container` profile): `uid` the runtime's container
//! id, `name`, `orchestrator` `Kubernetes`, and `pod_uuid` the pod's UID
//! when it is a UUID (a static pod's is a hash). The rest has no OCSF
//! attribute and is in `unmapped.residency`: `pod` (`namespace`, `name`,
//! `uid`, `labels` as `key:value`) and `container.image`. The image is
//! not the container's `image` object: OCSF requires that object's `uid`
//! (the image id), which the pod's identity does not carry. A flow whose
//! container is not known has no `container` (OCSF requires its `uid` or
//! `name`), only `unmapped.residency.pod`.
//!
//! The evidence sequence number is not `metadata.sequence`: that is an
//! `integer_t`, which some OCSF stores hold in 32 bits.
//!
//! The tests validate every kind of alert against the schema's own
//! definitions (`ocsf-schema/`, generated from the schema repository at
//! tag 1.8.0): required attributes present, no attribute the class or
//! object lacks, enum values and their captions, types, profiles,
//! constraints, `type_uid`, and observables pointing at real values.

use serde_json::{Map, Value};

use residency_common::Verdict;
use residency_record::RecordView;

use super::{Context, Level, PRODUCT, stable_id};
use crate::alert::{Alert, AlertKind, CHECKPOINT_ACTION};

/// The OCSF version of every event.
pub const VERSION: &str = "1.8.0";

/// An OCSF class: `uid`, caption, category uid and caption
/// (`categories.json`).
struct Class {
    uid: u32,
    caption: &'static str,
    category_uid: u32,
    category: &'static str,
}

const NETWORK_ACTIVITY: Class = Class {
    uid: 4001,
    caption: "Network Activity",
    category_uid: 4,
    category: "Network Activity",
};

const DETECTION_FINDING: Class = Class {
    uid: 2004,
    caption: "Detection Finding",
    category_uid: 2,
    category: "Findings",
};

const EVENT_LOG_ACTIVITY: Class = Class {
    uid: 1008,
    caption: "Event Log Activity",
    category_uid: 1,
    category: "System Activity",
};

/// The alert as an OCSF 1.8.0 event (see the module documentation for the
/// classes).
#[must_use]
pub fn ocsf(alert: &Alert, ctx: &Context) -> Value {
    let r = alert.record();
    match alert.kind {
        AlertKind::Flow => network_activity(alert, &r, ctx),
        AlertKind::Violation => detection_finding(alert, &r, ctx),
        AlertKind::Checkpoint | AlertKind::Gap => event_log_activity(alert, &r, ctx),
    }
}

fn network_activity(alert: &Alert, r: &RecordView<'_>, ctx: &Context) -> Value {
    let verdict = r.verdict_kind();
    // events/network/network_activity.json activity_id.
    let activity = if verdict == Some(Verdict::Blocked) {
        (5, "Refuse")
    } else if r.is_sendmsg() {
        (6, "Traffic")
    } else {
        (1, "Open")
    };
    let status = match verdict {
        Some(Verdict::Allowed | Verdict::Flagged) => (1, "Success"),
        Some(Verdict::Blocked) => (2, "Failure"),
        None => (0, "Unknown"),
    };
    let process = process(r);
    let observables = observables(r, "");
    base(
        alert,
        r,
        ctx,
        &NETWORK_ACTIVITY,
        activity,
        &with_container(r, &["host", "security_control"]),
    )
    .control(verdict)
    .put("status_id", status.0)
    .put("status", status.1)
    .obj("connection_info", connection_info(r))
    .obj("dst_endpoint", dst_endpoint(r))
    .obj("src_endpoint", this_host(ctx))
    .obj("actor", Obj::new().obj("process", process))
    .obj("device", device(ctx))
    .obj("firewall_rule", rule(r))
    .obj("policy", policy(r))
    .array("observables", observables)
    .obj("unmapped", unmapped(alert, r))
    .into()
}

fn detection_finding(alert: &Alert, r: &RecordView<'_>, ctx: &Context) -> Value {
    let (rule_id, rule_name) = r.rule();
    let analytic = Obj::new()
        .opt("uid", rule_id)
        .opt("name", rule_name)
        .filled()
        .map(|a| a.put("type_id", 1).put("type", "Rule"));
    let mut finding = Obj::new()
        .put("uid", correlation_uid(alert))
        .put("title", alert.summary_of(r))
        .put("types", vec!["Data Residency Violation"]);
    if alert.count > 1
        && let Some((first, last)) = alert.span
    {
        finding = finding
            .put("first_seen_time", first.as_millisecond())
            .put("last_seen_time", last.as_millisecond());
    }
    let evidence = Obj::new()
        .obj("connection_info", connection_info(r))
        .obj("dst_endpoint", dst_endpoint(r))
        .obj("src_endpoint", this_host(ctx))
        .obj("process", process(r));
    let observables = observables(r, "evidences[0].");
    base(
        alert,
        r,
        ctx,
        &DETECTION_FINDING,
        (1, "Create"),
        &with_container(r, &["security_control"]),
    )
    .control(r.verdict_kind())
    .put("is_alert", true)
    // A policy match is certain, not a guess.
    .put("confidence_id", 3)
    .put("confidence", "High")
    .put("status_id", 1)
    .put("status", "New")
    .obj(
        "finding_info",
        finding.obj("analytic", analytic.unwrap_or_default()),
    )
    .array(
        "evidences",
        evidence
            .filled()
            .map(|e| vec![e.into()])
            .unwrap_or_default(),
    )
    .obj("device", device(ctx))
    .obj("policy", policy(r))
    .array("observables", observables)
    .obj("unmapped", unmapped(alert, r))
    .into()
}

fn event_log_activity(alert: &Alert, r: &RecordView<'_>, ctx: &Context) -> Value {
    let action = Some(&*r.event.action)
        .filter(|a| !a.is_empty())
        .unwrap_or(match alert.kind {
            AlertKind::Checkpoint => CHECKPOINT_ACTION,
            _ => "gap",
        });
    // The record's own `residency` part, passed on whole.
    let mut residency = residency_record::view::extension(&alert.doc)
        .cloned()
        .unwrap_or_default();
    residency.insert("seq".to_owned(), alert.seq.into());
    let (status, detail) = match alert.kind {
        AlertKind::Checkpoint => (
            (1, "Success"),
            alert.checkpoint.as_deref().map(|c| c.reason.as_str()),
        ),
        _ => ((2, "Failure"), r.message()),
    };
    base(alert, r, ctx, &EVENT_LOG_ACTIVITY, (99, action), &["host"])
        .put("log_name", "evidence")
        .put("log_provider", PRODUCT)
        .put("log_type_id", 2)
        .put("log_type", "Application")
        .put("status_id", status.0)
        .put("status", status.1)
        .opt("status_detail", detail)
        .obj("device", device(ctx))
        .obj(
            "unmapped",
            Obj::new().put("residency", Value::Object(residency)),
        )
        .into()
}

/// What every class has: classification, severity, time, message,
/// metadata, and the throttling count.
fn base(
    alert: &Alert,
    r: &RecordView<'_>,
    ctx: &Context,
    class: &Class,
    (activity_id, activity): (u32, &str),
    profiles: &[&str],
) -> Obj {
    let (severity_id, severity) = Level::of(alert, r).ocsf_severity();
    let mut o = Obj::new()
        .put("class_uid", class.uid)
        .put("class_name", class.caption)
        .put("category_uid", class.category_uid)
        .put("category_name", class.category)
        .put("activity_id", activity_id)
        .put("activity_name", activity)
        // base_event type_uid: class_uid * 100 + activity_id.
        .put(
            "type_uid",
            u64::from(class.uid) * 100 + u64::from(activity_id),
        )
        // Its caption: 99 Other carries the source's own name in
        // activity_name (dictionary activity_id), but the type is Other.
        .put(
            "type_name",
            format!(
                "{}: {}",
                class.caption,
                if activity_id == 99 { "Other" } else { activity }
            ),
        )
        .put("severity_id", severity_id)
        .put("severity", severity)
        .put("time", alert.time.as_millisecond())
        .put("timezone_offset", 0)
        .put("message", alert.summary_of(r))
        .obj("metadata", metadata(alert, r, ctx, profiles));
    if alert.count > 1 {
        o = o.put("count", alert.count);
        if let Some((first, last)) = alert.span {
            o = o
                .put("start_time", first.as_millisecond())
                .put("end_time", last.as_millisecond());
        }
    }
    o
}

fn metadata(alert: &Alert, r: &RecordView<'_>, ctx: &Context, profiles: &[&str]) -> Obj {
    let flow = matches!(alert.kind, AlertKind::Flow | AlertKind::Violation);
    Obj::new()
        .put("version", VERSION)
        .obj(
            "product",
            Obj::new()
                .put("name", PRODUCT)
                .put("vendor_name", PRODUCT)
                .put("version", ctx.version),
        )
        .put("uid", stable_id(alert, &ctx.store))
        .put("original_event_uid", alert.seq.to_string())
        .opt("correlation_uid", flow.then(|| correlation_uid(alert)))
        .opt(
            "event_code",
            Some(&*r.event.action).filter(|a| !a.is_empty()),
        )
        .opt(
            "original_time",
            Some(&*r.timestamp).filter(|t| !t.is_empty()),
        )
        .put("profiles", profiles.to_vec())
}

/// `residency-<seq>`: the same for a flow and the violation it caused.
fn correlation_uid(alert: &Alert) -> String {
    format!("residency-{}", alert.seq)
}

impl Obj {
    /// The policy's decision as the `security_control` profile puts it
    /// (see the module documentation).
    fn control(self, verdict: Option<Verdict>) -> Obj {
        let (action_id, action, disposition_id, disposition) = match verdict {
            Some(Verdict::Allowed) => (1, "Allowed", 1, "Allowed"),
            Some(Verdict::Flagged) => (3, "Observed", 15, "Detected"),
            Some(Verdict::Blocked) => (2, "Denied", 2, "Blocked"),
            None => (0, "Unknown", 0, "Unknown"),
        };
        self.put("action_id", action_id)
            .put("action", action)
            .put("disposition_id", disposition_id)
            .put("disposition", disposition)
    }
}

fn connection_info(r: &RecordView<'_>) -> Obj {
    let v6 = r.is_ipv6();
    let protocol_num = match r.transport() {
        Some("tcp") => Some(6),
        Some("udp") => Some(17),
        _ => None,
    };
    Obj::new()
        // Egress, always: the hooks see outgoing connections and datagrams.
        .put("direction_id", 2)
        .put("direction", "Outbound")
        .opt("protocol_name", r.transport())
        .opt("protocol_num", protocol_num)
        .put("protocol_ver_id", if v6 { 6 } else { 4 })
}

fn dst_endpoint(r: &RecordView<'_>) -> Obj {
    let asn = r.autonomous_system();
    let autonomous_system = Obj::new()
        .opt("number", asn.map(|(n, _)| n))
        .opt("name", asn.and_then(|(_, org)| org));
    Obj::new()
        .opt("ip", r.dst_ip())
        .opt("port", r.dst_port())
        .opt("hostname", r.dst_domain())
        .opt("svc_name", r.service())
        .obj("location", Obj::new().opt("country", r.country()))
        .obj("autonomous_system", autonomous_system)
}

/// This host as a network endpoint: the flow's source.
fn this_host(ctx: &Context) -> Obj {
    Obj::new().opt("hostname", known_hostname(ctx))
}

/// This host as the device that reports. `type_id` is required; residency
/// does not know whether it runs on a server, a VM or a laptop: 0 Unknown.
fn device(ctx: &Context) -> Obj {
    match known_hostname(ctx) {
        Some(h) => Obj::new().put("hostname", h).put("type_id", 0),
        None => Obj::new(),
    }
}

fn known_hostname(ctx: &Context) -> Option<&str> {
    Some(ctx.hostname.as_str()).filter(|h| !h.is_empty() && *h != "-")
}

/// `profiles`, and `container` when the process has one.
fn with_container<'p>(r: &RecordView<'_>, profiles: &[&'p str]) -> Vec<&'p str> {
    let mut out = profiles.to_vec();
    if container(r).is_some() {
        out.push("container");
    }
    out
}

/// `process.container`: the container of the flow's pod, when it is
/// known (OCSF requires its `uid` or `name`).
fn container(r: &RecordView<'_>) -> Option<Obj> {
    let (id, name, _) = r.container();
    if id.is_none() && name.is_none() {
        return None;
    }
    let pod_uuid = r.pod_uid().filter(|u| is_uuid(u));
    Some(
        Obj::new()
            .opt("uid", id)
            .opt("name", name)
            .put("orchestrator", "Kubernetes")
            .opt("pod_uuid", pod_uuid),
    )
}

/// 8-4-4-4-12 hexadecimal digits.
fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                *c == b'-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// `unmapped.residency.pod`: what OCSF has no attribute for.
fn pod(r: &RecordView<'_>) -> Obj {
    let labels: Vec<String> = r.pod_labels().map(|(k, v)| format!("{k}:{v}")).collect();
    Obj::new()
        .opt("namespace", r.namespace())
        .opt("name", r.pod_name())
        .opt("uid", r.pod_uid())
        .opt("labels", (!labels.is_empty()).then_some(labels))
}

fn process(r: &RecordView<'_>) -> Obj {
    let (pid, name, exe) = r.process();
    let Some(pid) = pid else {
        // objects/process.json: at least one of pid, uid, cpid.
        return Obj::new();
    };
    let file = exe.map(|path| {
        let base = path
            .rsplit('/')
            .next()
            .filter(|b| !b.is_empty())
            .unwrap_or(path);
        Obj::new()
            .put("name", base)
            .put("path", path)
            .put("type_id", 1)
            .put("type", "Regular File")
    });
    let user = Obj::new().opt("uid", r.user_id());
    Obj::new()
        .put("pid", pid)
        .opt("name", name)
        .opt("cmd_line", r.command_line())
        .obj("file", file.unwrap_or_default())
        .obj("user", user)
        .obj("container", container(r).unwrap_or_default())
}

fn rule(r: &RecordView<'_>) -> Obj {
    let (id, name) = r.rule();
    Obj::new().opt("uid", id).opt("name", name)
}

fn policy(r: &RecordView<'_>) -> Obj {
    Obj::new().opt("uid", r.policy_hash())
}

/// The values an analyst pivots on, by their path in the event
/// (`prefix` for where the endpoint and process are).
fn observables(r: &RecordView<'_>, prefix: &str) -> Vec<Value> {
    let (pid, process_name, _) = r.process();
    let process_path = if prefix.is_empty() {
        "actor.process.name"
    } else {
        "process.name"
    };
    // objects/observable.json type_id.
    [
        ("dst_endpoint.ip", 2, "IP Address", r.dst_ip()),
        ("dst_endpoint.hostname", 1, "Hostname", r.dst_domain()),
        ("dst_endpoint.location.country", 14, "Country", r.country()),
        (
            process_path,
            9,
            "Process Name",
            process_name.filter(|_| pid.is_some()),
        ),
    ]
    .into_iter()
    .filter_map(|(path, type_id, caption, value)| {
        value.map(|v| {
            Obj::new()
                .put("name", format!("{prefix}{path}"))
                .put("type_id", type_id)
                .put("type", caption)
                .put("value", v)
                .into()
        })
    })
    .collect()
}

fn unmapped(alert: &Alert, r: &RecordView<'_>) -> Obj {
    let (rule_id, rule_name) = r.rule();
    let tenants: Vec<&str> = r.tenants().collect();
    let workload = Obj::new().opt("name", r.workload()).opt("role", r.role());
    let residency = Obj::new()
        .put("seq", alert.seq)
        .opt("verdict", r.verdict())
        .opt("mode", r.mode())
        .opt("country", r.country())
        .opt("tenants", (!tenants.is_empty()).then_some(tenants))
        .obj("workload", workload)
        .obj("rule", Obj::new().opt("id", rule_id).opt("name", rule_name))
        .opt("policy_hash", r.policy_hash())
        .opt("transfer_basis", r.transfer_basis())
        .opt("transfer_condition", r.transfer_condition())
        .opt("decided_by", r.decided_by())
        .obj("name", name(r))
        .obj("pod", pod(r))
        .obj("container", Obj::new().opt("image", r.container().2));
    Obj::new().obj("residency", residency)
}

/// `residency.name` as far as OCSF has no place for it.
fn name(r: &RecordView<'_>) -> Obj {
    fn list(v: Vec<&str>) -> Option<Vec<&str>> {
        (!v.is_empty()).then_some(v)
    }
    let endpoint = Obj::new()
        .opt("id", r.endpoint_id())
        .opt("provider", r.provider())
        .opt("service", r.service())
        .opt("jurisdiction", list(r.endpoint_jurisdiction().collect()))
        .opt(
            "determines_region",
            r.endpoint().map(|e| e.determines_region),
        )
        .opt("source", r.endpoint_source())
        .opt(
            "origin",
            r.endpoint().map(|e| &*e.origin).filter(|o| !o.is_empty()),
        );
    Obj::new()
        .opt("source", r.name_source())
        .opt("value", r.dst_domain())
        .opt("server_name", r.server_name())
        .opt("reason", r.name_reason())
        .opt("cnames", list(r.cnames().collect()))
        .opt("also", list(r.also_names().collect()))
        .obj("endpoint", endpoint)
}

/// A JSON object under construction; empty objects are left out, since
/// OCSF objects mostly need at least one attribute.
#[derive(Default)]
struct Obj(Map<String, Value>);

impl Obj {
    fn new() -> Self {
        Obj(Map::new())
    }

    fn put(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.0.insert(key.to_owned(), value.into());
        self
    }

    fn opt(self, key: &str, value: Option<impl Into<Value>>) -> Self {
        match value {
            Some(v) => self.put(key, v),
            None => self,
        }
    }

    fn obj(self, key: &str, value: Obj) -> Self {
        if value.0.is_empty() {
            self
        } else {
            self.put(key, value)
        }
    }

    fn array(self, key: &str, values: Vec<Value>) -> Self {
        if values.is_empty() {
            self
        } else {
            self.put(key, values)
        }
    }

    fn filled(self) -> Option<Obj> {
        (!self.0.is_empty()).then_some(self)
    }
}

impl From<Obj> for Value {
    fn from(o: Obj) -> Value {
        Value::Object(o.0)
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use serde_json::json;

    use super::*;
    use crate::format::fixtures::{self, HOSTILE};

    const SUBSET: &str = include_str!("ocsf-schema/ocsf-1.8.0-subset.json");

    fn ctx() -> Context {
        Context {
            hostname: "host-1.example".into(),
            app_name: "residency".into(),
            version: "1.2.3",
            enterprise_number: 32473,
            store: String::new(),
        }
    }

    /// Validates an event against the vendored OCSF 1.8.0 definitions,
    /// with the rules of the OCSF server's validator (ocsf-server
    /// `lib/schema/validator2.ex`), stricter where it only warns: a
    /// sibling that does not match its enum's caption and a deprecated
    /// attribute are errors here. Returns every problem found.
    fn validate(event: &Value) -> Vec<String> {
        let schema: Value = serde_json::from_str(SUBSET).unwrap();
        let mut v = Validator {
            schema: &schema,
            profiles: Vec::new(),
            errors: Vec::new(),
        };
        let Some(class_uid) = event.get("class_uid").and_then(Value::as_u64) else {
            return vec!["class_uid: missing".into()];
        };
        let Some((name, class)) = schema["classes"]
            .as_object()
            .unwrap()
            .iter()
            .find(|(_, c)| c["uid"] == class_uid)
        else {
            return vec![format!("class_uid: {class_uid} is not a vendored class")];
        };
        let known: Vec<&str> = schema["profiles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        if let Some(ps) = event
            .pointer("/metadata/profiles")
            .and_then(Value::as_array)
        {
            for p in ps {
                match p.as_str() {
                    Some(p) if known.contains(&p) => v.profiles.push(p.to_owned()),
                    _ => v
                        .errors
                        .push(format!("metadata.profiles: unknown profile {p}")),
                }
            }
        }
        v.item(event, class, name, "");
        // base_event type_uid: class_uid * 100 + activity_id.
        let activity = event.get("activity_id").and_then(Value::as_u64);
        let type_uid = event.get("type_uid").and_then(Value::as_u64);
        if let (Some(a), Some(t)) = (activity, type_uid)
            && t != class_uid * 100 + a
        {
            v.errors.push(format!(
                "type_uid: {t} is not class_uid * 100 + activity_id"
            ));
        }
        if event.get("category_uid") != Some(&class["category_uid"]) {
            v.errors
                .push("category_uid: not the class's category".into());
        }
        if event.pointer("/metadata/version") != Some(&schema["version"]) {
            v.errors
                .push("metadata.version: not the vendored version".into());
        }
        // Observables name attributes by path, and carry their values.
        for (i, o) in event
            .get("observables")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let name = o["name"].as_str().unwrap_or_default();
            let at = resolve(event, name);
            let as_text = |x: &Value| match x {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if at.map(as_text) != o.get("value").map(as_text) {
                v.errors.push(format!(
                    "observables[{i}]: {name} does not hold the value {}",
                    o["value"]
                ));
            }
        }
        v.errors
    }

    /// The value at an observable's path (`a.b[0].c`).
    fn resolve<'a>(event: &'a Value, path: &str) -> Option<&'a Value> {
        path.split('.')
            .try_fold(event, |v, part| match part.split_once('[') {
                Some((key, index)) => {
                    let i: usize = index.strip_suffix(']')?.parse().ok()?;
                    v.get(key)?.get(i)
                }
                None => v.get(part),
            })
    }

    struct Validator<'a> {
        schema: &'a Value,
        profiles: Vec<String>,
        errors: Vec<String>,
    }

    impl Validator<'_> {
        fn item(&mut self, value: &Value, def: &Value, def_name: &str, path: &str) {
            let Some(map) = value.as_object() else {
                self.errors.push(format!("{path}: not an object"));
                return;
            };
            let attributes = def["attributes"].as_object().unwrap();
            if attributes.is_empty() {
                // The open object ("object", as in unmapped): anything goes.
                return;
            }
            let at = |name: &str| {
                if path.is_empty() {
                    name.to_owned()
                } else {
                    format!("{path}.{name}")
                }
            };
            for (name, attribute) in attributes {
                let profiles = attribute.get("profiles").and_then(Value::as_array);
                let active = profiles.is_none_or(|ps| {
                    ps.iter()
                        .any(|p| self.profiles.iter().any(|q| Some(q.as_str()) == p.as_str()))
                });
                match map.get(name) {
                    None | Some(Value::Null) => {
                        if active && attribute["requirement"] == "required" {
                            self.errors
                                .push(format!("{}: required attribute missing", at(name)));
                        }
                    }
                    Some(_) if !active => self.errors.push(format!(
                        "{}: belongs to profile {}, which metadata.profiles does not name",
                        at(name),
                        json!(profiles)
                    )),
                    Some(v) => {
                        if attribute.get("deprecated").is_some() {
                            self.errors.push(format!("{}: deprecated", at(name)));
                        }
                        self.attribute(v, attribute, &at(name), map);
                    }
                }
            }
            for key in map.keys() {
                if !attributes.contains_key(key) {
                    self.errors
                        .push(format!("{}: {def_name} has no such attribute", at(key)));
                }
            }
            // Constraints (at_least_one, just_one) of the class or object.
            for (kind, keys) in def
                .get("constraints")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                let present = keys
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|k| map.contains_key(k.as_str().unwrap()))
                    .count();
                let ok = match kind.as_str() {
                    "at_least_one" => present >= 1,
                    "just_one" => present == 1,
                    other => panic!("unknown constraint {other}"),
                };
                if !ok {
                    self.errors.push(format!(
                        "{path}: constraint {kind} {keys} of {def_name} fails"
                    ));
                }
            }
        }

        fn attribute(
            &mut self,
            v: &Value,
            attribute: &Value,
            path: &str,
            parent: &Map<String, Value>,
        ) {
            let values: Vec<&Value> = if attribute.get("is_array").is_some() {
                let Some(a) = v.as_array() else {
                    self.errors.push(format!("{path}: not an array"));
                    return;
                };
                a.iter().collect()
            } else {
                vec![v]
            };
            for (i, x) in values.iter().enumerate() {
                let here = if attribute.get("is_array").is_some() {
                    format!("{path}[{i}]")
                } else {
                    path.to_owned()
                };
                self.value(x, attribute, &here);
                if let Some(e) = attribute.get("enum").and_then(Value::as_object) {
                    let key = match x {
                        Value::Number(n) => n.to_string(),
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    match e.get(&key) {
                        None => self.errors.push(format!(
                            "{here}: {x} is not one of {:?}",
                            e.keys().collect::<Vec<_>>()
                        )),
                        Some(caption) => {
                            let sibling = attribute
                                .get("sibling")
                                .and_then(Value::as_str)
                                .and_then(|s| parent.get(s).map(|v| (s, v)));
                            if let Some((s, sv)) = sibling
                                && key != "99"
                                && sv != caption
                            {
                                self.errors.push(format!(
                                    "{s}: {sv} is not the caption {caption} of {here} {key}"
                                ));
                            }
                        }
                    }
                }
            }
        }

        fn value(&mut self, v: &Value, attribute: &Value, path: &str) {
            let ty = attribute["type"].as_str().unwrap();
            if ty == "object_t" {
                let name = attribute["object_type"].as_str().unwrap();
                match self.schema["objects"].get(name) {
                    Some(def) => self.item(v, def, name, path),
                    None => self.errors.push(format!(
                        "{path}: object {name} is not vendored (add it to generate.py)"
                    )),
                }
                return;
            }
            let def = &self.schema["types"][ty];
            let base = def.get("type").and_then(Value::as_str).unwrap_or(ty);
            let ok = match base {
                "string_t" => v.is_string(),
                "integer_t" | "long_t" => v.is_i64() || v.is_u64(),
                "float_t" => v.is_number(),
                "boolean_t" => v.is_boolean(),
                "json_t" => true,
                other => {
                    self.errors.push(format!("{path}: unknown type {other}"));
                    return;
                }
            };
            if !ok {
                self.errors.push(format!("{path}: {v} is not a {ty}"));
                return;
            }
            if let Some(r) = def.get("range").and_then(Value::as_array) {
                let n = v.as_i64().unwrap_or(i64::MAX);
                if n < r[0].as_i64().unwrap() || n > r[1].as_i64().unwrap() {
                    self.errors
                        .push(format!("{path}: {v} is out of range {r:?}"));
                }
            }
            if let Some(max) = def.get("max_len").and_then(Value::as_u64)
                && v.as_str().unwrap().chars().count() > usize::try_from(max).unwrap()
            {
                self.errors.push(format!("{path}: longer than {max}"));
            }
            if ty == "ip_t" && v.as_str().unwrap().parse::<IpAddr>().is_err() {
                self.errors
                    .push(format!("{path}: {v} is not an IP address"));
            }
        }
    }

    #[test]
    fn every_kind_of_alert_is_valid_ocsf_1_8() {
        for a in fixtures::all() {
            let event = ocsf(&a, &ctx());
            let errors = validate(&event);
            assert!(
                errors.is_empty(),
                "{:?} seq {}: {errors:#?}\n{event:#}",
                a.kind,
                a.seq
            );
        }
        // A host whose name is unknown leaves device and source out.
        let nameless = Context {
            hostname: "-".into(),
            ..ctx()
        };
        for a in fixtures::all() {
            let event = ocsf(&a, &nameless);
            assert_eq!(validate(&event), Vec::<String>::new(), "{event:#}");
            assert!(event.get("device").is_none());
        }
    }

    #[test]
    fn a_named_flow_cites_its_name_and_catalog_entry() {
        let v = ocsf(&fixtures::catalog(), &ctx());
        assert!(validate(&v).is_empty(), "{:#?}", validate(&v));
        assert_eq!(v["dst_endpoint"]["hostname"], "eu.api.openai.com");
        assert_eq!(v["dst_endpoint"]["svc_name"], "API (EU data residency)");
        assert!(v.get("tls").is_none(), "tls needs the negotiated version");
        assert!(v["observables"].as_array().unwrap().iter().any(|o| {
            o["name"] == "dst_endpoint.hostname" && o["value"] == "eu.api.openai.com"
        }));
        let r = &v["unmapped"]["residency"];
        assert_eq!(r["decided_by"], "catalog");
        assert_eq!(
            r["name"],
            json!({
                "source": "dns",
                "value": "eu.api.openai.com",
                "server_name": "eu.api.openai.com",
                "cnames": ["eu.api.openai.com.cdn.example"],
                "also": ["chat.example"],
                "endpoint": {
                    "id": "openai-api-eu",
                    "provider": "OpenAI",
                    "service": "API (EU data residency)",
                    "jurisdiction": ["EEA", "CH"],
                    "determines_region": true,
                    "source": "https://developers.openai.com/api/docs/guides/data-residency",
                    "origin": "built-in",
                },
            })
        );

        let v = ocsf(&fixtures::bare(), &ctx());
        assert!(v["dst_endpoint"].get("hostname").is_none());
        assert!(v["dst_endpoint"].get("svc_name").is_none());
        assert!(v["unmapped"]["residency"].get("name").is_none());
        let v = ocsf(&fixtures::nameless(), &ctx());
        assert!(v["dst_endpoint"].get("hostname").is_none());
        assert_eq!(
            v["unmapped"]["residency"]["name"],
            json!({ "source": "none", "reason": "no-dns-answer" })
        );
    }

    #[test]
    fn a_pods_container_is_the_process_container_and_the_pod_is_unmapped() {
        for a in [fixtures::pod(), {
            let mut flow = fixtures::pod();
            flow.kind = AlertKind::Flow;
            flow
        }] {
            let v = ocsf(&a, &ctx());
            assert!(validate(&v).is_empty(), "{:#?}", validate(&v));
            let process = if a.kind == AlertKind::Flow {
                &v["actor"]["process"]
            } else {
                &v["evidences"][0]["process"]
            };
            assert_eq!(
                process["container"],
                json!({
                    "uid": "ab".repeat(32),
                    "name": "sync",
                    "orchestrator": "Kubernetes",
                    "pod_uuid": fixtures::POD_UID,
                })
            );
            assert!(
                v["metadata"]["profiles"]
                    .as_array()
                    .unwrap()
                    .contains(&json!("container"))
            );
            assert_eq!(
                v["unmapped"]["residency"]["pod"],
                json!({
                    "namespace": "crm",
                    "name": "sync-7d9f-x2x",
                    "uid": fixtures::POD_UID,
                    "labels": ["app.kubernetes.io/name:sync", "tier:batch"],
                })
            );
            assert_eq!(
                v["unmapped"]["residency"]["container"]["image"],
                "registry.example/crm/sync:1.4"
            );
        }

        // Without the container: no process.container, no profile; the
        // pod is still named.
        let mut a = fixtures::pod();
        a.doc.as_object_mut().unwrap().remove("container");
        a.doc["orchestrator"]["resource"]["id"] = "3a0d5b1c9e8f7a6b5c4d3e2f1a0b9c8d".into();
        let v = ocsf(&a, &ctx());
        assert!(validate(&v).is_empty(), "{:#?}", validate(&v));
        assert!(v["evidences"][0]["process"].get("container").is_none());
        assert!(
            !v["metadata"]["profiles"]
                .as_array()
                .unwrap()
                .contains(&json!("container"))
        );
        assert_eq!(v["unmapped"]["residency"]["pod"]["name"], "sync-7d9f-x2x");

        // A static pod's UID is not a UUID: no pod_uuid.
        let mut a = fixtures::pod();
        a.doc["orchestrator"]["resource"]["id"] = "3a0d5b1c9e8f7a6b5c4d3e2f1a0b9c8d".into();
        let v = ocsf(&a, &ctx());
        assert!(
            v["evidences"][0]["process"]["container"]
                .get("pod_uuid")
                .is_none()
        );

        // No pod: none of it.
        let v = ocsf(&fixtures::blocked(), &ctx());
        assert!(v["evidences"][0]["process"].get("container").is_none());
        assert!(v["unmapped"]["residency"].get("pod").is_none());
        assert!(v["unmapped"]["residency"].get("container").is_none());
    }

    #[test]
    fn a_transfer_condition_is_passed_on() {
        let ctx = ctx();
        let get = |a: &Alert| ocsf(a, &ctx);
        let none = get(&fixtures::allowed_tcp());
        assert!(
            none["unmapped"]["residency"]
                .get("transfer_condition")
                .is_none()
        );
        let mut ca = fixtures::allowed_tcp();
        ca.doc["residency"]["transfer_basis"] = json!("adequacy");
        ca.doc["residency"]["transfer_condition"] =
            json!("commercial organisations subject to PIPEDA only (Decision 2002/2/EC)");
        assert_eq!(
            get(&ca)["unmapped"]["residency"]["transfer_condition"],
            "commercial organisations subject to PIPEDA only (Decision 2002/2/EC)"
        );
    }

    #[test]
    fn classes_activities_and_decisions() {
        let ctx = ctx();
        let get = |a: &Alert| ocsf(a, &ctx);
        let shape = |v: &Value| {
            (
                v["class_uid"].as_u64().unwrap(),
                v["activity_id"].as_u64().unwrap(),
                v["action_id"].as_u64(),
                v["disposition_id"].as_u64(),
                v["status_id"].as_u64().unwrap(),
                v["severity_id"].as_u64().unwrap(),
            )
        };
        assert_eq!(
            shape(&get(&fixtures::allowed_tcp())),
            (4001, 1, Some(1), Some(1), 1, 1)
        );
        assert_eq!(
            shape(&get(&fixtures::blocked_flow())),
            (4001, 5, Some(2), Some(2), 2, 4)
        );
        assert_eq!(
            shape(&get(&fixtures::udp_sendmsg())),
            (4001, 6, Some(1), Some(1), 1, 1)
        );
        assert_eq!(
            shape(&get(&fixtures::flagged())),
            (2004, 1, Some(3), Some(15), 1, 3)
        );
        assert_eq!(
            shape(&get(&fixtures::blocked())),
            (2004, 1, Some(2), Some(2), 1, 4)
        );
        assert_eq!(
            shape(&get(&fixtures::checkpoint())),
            (1008, 99, None, None, 1, 1)
        );
        assert_eq!(shape(&get(&fixtures::gap())), (1008, 99, None, None, 2, 3));

        let v = get(&fixtures::allowed_tcp());
        assert_eq!(v["type_uid"], 400_101);
        assert_eq!(v["time"], fixtures::time().as_millisecond());
        assert_eq!(v["metadata"]["uid"], "flow-11");
        assert_eq!(v["metadata"]["original_event_uid"], "11");
        assert_eq!(v["metadata"]["correlation_uid"], "residency-11");
        assert_eq!(v["metadata"]["product"]["version"], "1.2.3");
        assert_eq!(v["connection_info"]["protocol_num"], 6);
        assert_eq!(v["connection_info"]["protocol_ver_id"], 4);
        assert_eq!(v["dst_endpoint"]["ip"], "198.51.100.7");
        assert_eq!(v["dst_endpoint"]["port"], 443);
        assert_eq!(v["dst_endpoint"]["location"]["country"], "US");
        assert_eq!(v["dst_endpoint"]["autonomous_system"]["number"], 15169);
        assert_eq!(v["actor"]["process"]["pid"], 4242);
        assert_eq!(v["actor"]["process"]["file"]["name"], "python3.12");
        assert_eq!(v["actor"]["process"]["user"]["uid"], "65534");
        assert_eq!(
            v["firewall_rule"],
            json!({ "uid": "2", "name": "no-us-llm" })
        );
        assert_eq!(
            v["unmapped"]["residency"]["tenants"],
            json!(["acme", "globex"])
        );
        assert_eq!(v["unmapped"]["residency"]["transfer_basis"], "none");
        assert!(v.get("count").is_none());

        let v = get(&fixtures::ipv6());
        assert_eq!(v["evidences"][0]["connection_info"]["protocol_ver_id"], 6);
        assert_eq!(v["evidences"][0]["dst_endpoint"]["ip"], "2001:db8::1");
        assert_eq!(
            get(&fixtures::udp_sendmsg())["connection_info"]["protocol_num"],
            17
        );

        let a = fixtures::throttled();
        let v = get(&a);
        let (first, last) = a.span.unwrap();
        assert_eq!(v["count"], 42);
        assert_eq!(v["start_time"], first.as_millisecond());
        assert_eq!(v["end_time"], last.as_millisecond());
        assert_eq!(v["finding_info"]["first_seen_time"], first.as_millisecond());
        assert_eq!(v["finding_info"]["last_seen_time"], last.as_millisecond());
        assert_eq!(v["finding_info"]["uid"], "residency-17");
        assert_eq!(v["finding_info"]["analytic"]["name"], "no-us-llm");
        assert_eq!(v["metadata"]["correlation_uid"], "residency-17");

        let v = get(&fixtures::checkpoint());
        assert_eq!(v["activity_name"], "evidence-checkpoint");
        assert_eq!(v["type_uid"], 100_899);
        assert_eq!(
            v["unmapped"]["residency"]["checkpoint"]["key_id"],
            "9a7b6c5d4e3f2a1b"
        );
        assert_eq!(v["unmapped"]["residency"]["seq"], 120_000);
        let v = get(&fixtures::gap());
        assert_eq!(v["activity_name"], "evidence-gap");
        assert!(
            v["status_detail"]
                .as_str()
                .unwrap()
                .starts_with("the previous run")
        );
    }

    #[test]
    fn the_validator_catches_what_is_wrong() {
        let good = ocsf(&fixtures::blocked(), &ctx());
        assert!(validate(&good).is_empty());
        let broken = |f: &dyn Fn(&mut Value)| {
            let mut v = good.clone();
            f(&mut v);
            validate(&v)
        };
        let has = |errors: Vec<String>, needle: &str| {
            assert!(
                errors.iter().any(|e| e.contains(needle)),
                "{needle:?} not in {errors:#?}"
            );
        };
        has(
            broken(&|v| drop(v["finding_info"].as_object_mut().unwrap().remove("uid"))),
            "finding_info.uid: required attribute missing",
        );
        has(
            broken(&|v| drop(v.as_object_mut().unwrap().remove("severity_id"))),
            "severity_id: required attribute missing",
        );
        has(
            broken(&|v| v["disposition_id"] = 77.into()),
            "disposition_id: 77 is not one of",
        );
        has(
            broken(&|v| v["disposition"] = "Allowed".into()),
            "disposition: \"Allowed\" is not the caption",
        );
        has(
            broken(&|v| v["evidences"][0]["dst_endpoint"]["prot"] = 443.into()),
            "evidences[0].dst_endpoint.prot: network_endpoint has no such attribute",
        );
        has(
            broken(&|v| v["evidences"][0]["dst_endpoint"]["port"] = 70_000.into()),
            "out of range",
        );
        has(
            broken(&|v| v["evidences"][0]["dst_endpoint"]["ip"] = "not-an-ip".into()),
            "is not an IP address",
        );
        has(
            broken(&|v| v["time"] = "yesterday".into()),
            "time: \"yesterday\" is not a timestamp_t",
        );
        has(broken(&|v| v["type_uid"] = 200_402.into()), "type_uid");
        has(
            broken(&|v| v["metadata"]["profiles"] = json!([])),
            "action_id: belongs to profile",
        );
        has(
            broken(&|v| v["tls"] = json!({ "version": "1.3" })),
            "tls: detection_finding has no such attribute",
        );
        has(
            broken(&|v| v["evidences"][0]["tls"] = json!({ "version": "1.3" })),
            "object tls is not vendored",
        );
        has(
            broken(&|v| v["observables"][0]["value"] = "192.0.2.1".into()),
            "does not hold the value",
        );
        has(
            broken(&|v| v["finding_info"]["analytic"] = json!({ "type_id": 1 })),
            "constraint at_least_one",
        );
    }

    #[test]
    fn a_flow_with_nowhere_to_go_from_nowhere_is_caught() {
        // No destination address and a host with no name: Network
        // Activity's constraint (a source or a destination) cannot hold.
        let mut a = fixtures::bare();
        a.doc["destination"] = json!({});
        let nameless = Context {
            hostname: String::new(),
            ..ctx()
        };
        let errors = validate(&ocsf(&a, &nameless));
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(errors[0].contains("at_least_one"), "{errors:#?}");
    }

    #[test]
    fn hostile_values_round_trip() {
        let a = fixtures::hostile();
        let text = serde_json::to_string(&ocsf(&a, &ctx())).unwrap();
        assert!(!text.contains('\n'), "one line");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert!(validate(&v).is_empty(), "{:#?}", validate(&v));
        let e = &v["evidences"][0];
        assert_eq!(e["process"]["name"], HOSTILE);
        assert_eq!(
            e["process"]["file"]["path"],
            a.record().process().2.unwrap()
        );
        assert_eq!(
            e["dst_endpoint"]["hostname"],
            a.record().dst_domain().unwrap()
        );
        assert_eq!(v["finding_info"]["analytic"]["name"], HOSTILE);
        assert_eq!(v["finding_info"]["analytic"]["uid"], HOSTILE);
        assert_eq!(v["finding_info"]["title"], a.summary());
        assert_eq!(v["policy"]["uid"], HOSTILE);
        let r = &v["unmapped"]["residency"];
        assert_eq!(r["tenants"], json!([HOSTILE, "plain", ""]));
        assert_eq!(r["workload"]["name"], HOSTILE);
        assert_eq!(r["workload"]["role"], HOSTILE);
        assert_eq!(r["country"], "U\"S");
        assert_eq!(e["dst_endpoint"]["svc_name"], HOSTILE);
        assert_eq!(r["name"]["endpoint"]["provider"], HOSTILE);
        assert_eq!(r["name"]["server_name"], a.record().server_name().unwrap());
    }
}
