//! Common Event Format (CEF) lines, as `ArcSight` defined them.
//!
//! ```text
//! CEF:0|residency|residency|<version>|<SignatureID>|<Name>|<Severity>|<extension>
//! ```
//!
//! The header's `SignatureID` is the rule id for flows and violations, and
//! `checkpoint` or `gap` otherwise; Name is the alert's one-line summary;
//! Severity comes from [`Level`] (0-10). Header fields escape `\` and `|`
//! with a backslash; a header cannot carry a newline, so CR and LF there
//! become spaces. Extension values escape `\` and `=` with a backslash and
//! write LF and CR as `\n` and `\r`, so any value reads back exactly.
//!
//! CEF has no keys for country, tenant or policy, so those travel in the
//! labelled custom strings (`csN` with `csNLabel`). The extension keys:
//!
//! | key                    | flow, violation                         | checkpoint      | gap                  |
//! |------------------------|-----------------------------------------|-----------------|----------------------|
//! | `rt`                   | event time, ms since the epoch          | signing time    | time of the record   |
//! | `cat`                  | `flow` or `violation`                   | `checkpoint`    | `gap`                |
//! | `externalId`           | evidence sequence number                | last signed seq | seq                  |
//! | `dvchost`              | this host                               | this host       | this host            |
//! | `act`                  | `allowed`, `flagged` or `blocked`       |                 |                      |
//! | `dst` / `c6a3`         | destination IPv4 / IPv6 (`c6a3Label=Destination IPv6 Address`) | | |
//! | `dpt`                  | destination port                        |                 |                      |
//! | `dhost`                | destination name (`destination.domain`) |                 |                      |
//! | `destinationServiceName` | the catalog entry's service           |                 |                      |
//! | `proto`                | `TCP` or `UDP`                          |                 |                      |
//! | `spid`, `sproc`        | process id and name                     |                 |                      |
//! | `suid`                 | the process's user id                   |                 |                      |
//! | `cnt`                  | occurrences (1, or more when throttled) |                 |                      |
//! | `start`, `end`         | first and last occurrence, when throttled |               |                      |
//! | `cs1Label`, `cs1`      | `country`: ISO 3166-1 alpha-2           | `head`          | `action`             |
//! | `cs2Label`, `cs2`      | `tenant`: tenants, comma-separated      | `keyId`         | `reason`             |
//! | `cs3Label`, `cs3`      | `role`                                  | `signature`     |                      |
//! | `cs4Label`, `cs4`      | `rule`: the rule's name                 | `reason`        |                      |
//! | `cs5Label`, `cs5`      | `workload`                              |                 |                      |
//! | `cs6Label`, `cs6`      | `policy`: the policy's hash             |                 |                      |
//! | `flexString1Label`, `flexString1` | `executable`                 |                 |                      |
//! | `flexString2Label`, `flexString2` | `transferBasis`              |                 |                      |
//! | `cn1Label`, `cn1`      |                                         |                 | `lost`: events lost  |
//! | `msg`                  |                                         |                 | the record's message |
//!
//! `dst` is an IPv4 field in CEF; IPv6 destinations go in `c6a3`, which
//! `ArcSight` uses for the destination's IPv6 address.
//!
//! The extension dictionary has no key for a TLS server name, a cloud
//! provider or a catalog entry, and a flow already fills all six custom
//! strings and both flex strings. (`requestClientApplication` is the user
//! agent and `requestUrl` a URL: neither means the server name.) So these
//! go in custom extensions, which the CEF standard allows where no
//! dictionary key fits, named `VendornameProductnameExplanatoryKeyName`;
//! `ArcSight` keeps them as "Additional Data", other receivers as extra
//! keys. Each is there only when the record has a value:
//!
//! | key                            | flow, violation                              |
//! |--------------------------------|----------------------------------------------|
//! | `ResidencyResidencyServerName` | the TLS server name (`tls.client.server_name`) |
//! | `ResidencyResidencyNameSource` | how the name is known: `dns`, `sni`, `none`  |
//! | `ResidencyResidencyProvider`   | the catalog entry's provider                 |
//! | `ResidencyResidencyEndpoint`   | the catalog entry's id                       |
//! | `ResidencyResidencyNamespace`  | the Kubernetes namespace of the flow's pod (`orchestrator.namespace`) |
//! | `ResidencyResidencyPod`        | the pod's name (`orchestrator.resource.name`) |
//! | `ResidencyResidencyPodUid`     | the pod's UID (`orchestrator.resource.id`)   |
//! | `ResidencyResidencyPodLabels`  | the pod's labels, `key:value`, comma-separated (a label has no comma) |
//! | `ResidencyResidencyContainerId` | the container's id (`container.id`)         |
//! | `ResidencyResidencyContainer`  | the container's name (`container.name`)      |
//! | `ResidencyResidencyImage`      | its image (`container.image.name`)           |
//!
//! The pod has no dictionary key either (the `csN` are taken, and
//! `sourceServiceName` is a service, not a pod), hence the custom keys.

use std::fmt::Write as _;

use residency_record::RecordView;

use super::{Context, Level, PRODUCT, kind_name};
use crate::alert::{Alert, AlertKind};

/// One CEF line (without a trailing newline) for `alert`.
#[must_use]
pub fn cef(alert: &Alert, ctx: &Context) -> String {
    let r = alert.record();
    let mut out = String::with_capacity(512);
    out.push_str("CEF:0|");
    header(&mut out, PRODUCT);
    out.push('|');
    header(&mut out, PRODUCT);
    out.push('|');
    header(&mut out, ctx.version);
    out.push('|');
    let signature = match alert.kind {
        AlertKind::Flow | AlertKind::Violation => r.rule().0.unwrap_or(kind_name(alert.kind)),
        AlertKind::Checkpoint | AlertKind::Gap => kind_name(alert.kind),
    };
    header(&mut out, signature);
    out.push('|');
    header(&mut out, &alert.summary_of(&r));
    // Writing to a String cannot fail.
    let _ = write!(out, "|{}|", Level::of(alert, &r).cef_severity());

    let mut ext = Extension {
        out: &mut out,
        first: true,
    };
    ext.num("rt", alert.time.as_millisecond());
    ext.str("cat", kind_name(alert.kind));
    ext.num("externalId", alert.seq);
    if !ctx.hostname.is_empty() && ctx.hostname != "-" {
        ext.str("dvchost", &ctx.hostname);
    }
    match alert.kind {
        AlertKind::Flow | AlertKind::Violation => flow(alert, &r, &mut ext),
        AlertKind::Checkpoint => {
            if let Some(c) = alert.checkpoint.as_deref() {
                ext.custom("cs1", "head", Some(&c.head));
                ext.custom("cs2", "keyId", Some(&c.key_id));
                ext.custom("cs3", "signature", Some(&c.signature));
                ext.custom("cs4", "reason", Some(&c.reason));
            }
        }
        AlertKind::Gap => {
            ext.custom(
                "cs1",
                "action",
                Some(&*r.event.action).filter(|a| !a.is_empty()),
            );
            ext.custom(
                "cs2",
                "reason",
                r.gap().map(|g| g.reason.as_str()).filter(|g| !g.is_empty()),
            );
            if let Some(lost) = r.lost_count() {
                ext.label("cn1", "lost");
                ext.num("cn1", lost);
            }
            if let Some(m) = r.message() {
                ext.str("msg", m);
            }
        }
    }
    out
}

fn flow(alert: &Alert, r: &RecordView<'_>, ext: &mut Extension<'_>) {
    if let Some(v) = r.verdict() {
        ext.str("act", v);
    }
    if let Some(ip) = r.dst_ip() {
        if ip.contains(':') {
            ext.label("c6a3", "Destination IPv6 Address");
            ext.str("c6a3", ip);
        } else {
            ext.str("dst", ip);
        }
    }
    if let Some(p) = r.dst_port() {
        ext.num("dpt", p);
    }
    if let Some(d) = r.dst_domain() {
        ext.str("dhost", d);
    }
    if let Some(s) = r.service() {
        ext.str("destinationServiceName", s);
    }
    for (key, v) in [
        ("ResidencyResidencyServerName", r.server_name()),
        ("ResidencyResidencyNameSource", r.name_source()),
        ("ResidencyResidencyProvider", r.provider()),
        ("ResidencyResidencyEndpoint", r.endpoint_id()),
        ("ResidencyResidencyNamespace", r.namespace()),
        ("ResidencyResidencyPod", r.pod_name()),
        ("ResidencyResidencyPodUid", r.pod_uid()),
    ] {
        if let Some(v) = v {
            ext.str(key, v);
        }
    }
    let mut labels = r.pod_labels().peekable();
    if labels.peek().is_some() {
        ext.key("ResidencyResidencyPodLabels");
        for (i, (k, v)) in labels.enumerate() {
            if i > 0 {
                ext.out.push(',');
            }
            value(ext.out, k);
            ext.out.push(':');
            value(ext.out, v);
        }
    }
    let (container_id, container, image) = r.container();
    for (key, v) in [
        ("ResidencyResidencyContainerId", container_id),
        ("ResidencyResidencyContainer", container),
        ("ResidencyResidencyImage", image),
    ] {
        if let Some(v) = v {
            ext.str(key, v);
        }
    }
    match r.transport() {
        Some("tcp") => ext.str("proto", "TCP"),
        Some("udp") => ext.str("proto", "UDP"),
        Some(other) => ext.str("proto", other),
        None => {}
    }
    let (pid, name, exe) = r.process();
    if let Some(pid) = pid {
        ext.num("spid", pid);
    }
    if let Some(name) = name {
        ext.str("sproc", name);
    }
    if let Some(uid) = r.user_id() {
        ext.str("suid", uid);
    }
    ext.num("cnt", alert.count);
    if alert.count > 1
        && let Some((first, last)) = alert.span
    {
        ext.num("start", first.as_millisecond());
        ext.num("end", last.as_millisecond());
    }
    ext.custom("cs1", "country", r.country());
    let mut tenants = r.tenants().peekable();
    if tenants.peek().is_some() {
        ext.label("cs2", "tenant");
        ext.key("cs2");
        for (i, t) in tenants.enumerate() {
            if i > 0 {
                ext.out.push(',');
            }
            value(ext.out, t);
        }
    }
    ext.custom("cs3", "role", r.role());
    ext.custom("cs4", "rule", r.rule().1);
    ext.custom("cs5", "workload", r.workload());
    ext.custom("cs6", "policy", r.policy_hash());
    ext.custom("flexString1", "executable", exe);
    ext.custom("flexString2", "transferBasis", r.transfer_basis());
}

/// Writes `key=value` pairs, space-separated.
struct Extension<'a> {
    out: &'a mut String,
    first: bool,
}

impl Extension<'_> {
    /// ` <key>=`, without the space before the first pair.
    fn key(&mut self, key: &str) {
        if !self.first {
            self.out.push(' ');
        }
        self.first = false;
        self.out.push_str(key);
        self.out.push('=');
    }

    fn str(&mut self, key: &str, v: &str) {
        self.key(key);
        value(self.out, v);
    }

    fn num(&mut self, key: &str, v: impl std::fmt::Display) {
        self.key(key);
        let _ = write!(self.out, "{v}");
    }

    /// `<key>Label=<label> <key>=<value>`, when there is a value.
    fn custom(&mut self, key: &str, label: &str, v: Option<&str>) {
        if let Some(v) = v {
            self.label(key, label);
            self.str(key, v);
        }
    }

    /// `<key>Label=<label>`.
    fn label(&mut self, key: &str, label: &str) {
        if !self.first {
            self.out.push(' ');
        }
        self.first = false;
        self.out.push_str(key);
        self.out.push_str("Label=");
        value(self.out, label);
    }
}

/// A header field: `\` and `|` escaped, CR and LF as spaces.
fn header(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            '\r' | '\n' => out.push(' '),
            c => out.push(c),
        }
    }
}

/// An extension value: `\` and `=` escaped, CR and LF as `\r` and `\n`.
fn value(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '=' => out.push_str("\\="),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::format::fixtures::{self, HOSTILE};

    /// A CEF line split into its seven header fields (unescaped) and its
    /// extension (keys to unescaped values). Strict: an escape this module
    /// never writes, a newline anywhere, or a repeated key is an error.
    fn parse(line: &str) -> Result<(Vec<String>, BTreeMap<String, String>), String> {
        if line.contains(['\n', '\r']) {
            return Err("raw newline".into());
        }
        let rest = line.strip_prefix("CEF:").ok_or("no CEF:")?;
        let mut header = Vec::new();
        let mut field = String::new();
        let mut chars = rest.chars();
        while header.len() < 7 {
            match chars.next().ok_or("short header")? {
                '\\' => match chars.next() {
                    Some(c @ ('\\' | '|')) => field.push(c),
                    other => return Err(format!("bad header escape {other:?}")),
                },
                '|' => header.push(std::mem::take(&mut field)),
                c => field.push(c),
            }
        }
        let ext: Vec<char> = chars.collect();
        // Keys are found at unescaped '=', reading back to the space
        // before; a value runs up to the space before the next key.
        let mut eqs = Vec::new();
        let mut i = 0;
        while i < ext.len() {
            match ext[i] {
                '\\' => i += 2,
                '=' => {
                    eqs.push(i);
                    i += 1;
                }
                _ => i += 1,
            }
        }
        let mut map = BTreeMap::new();
        let mut starts = Vec::new();
        for &eq in &eqs {
            let start = ext[..eq]
                .iter()
                .rposition(|&c| c == ' ')
                .map_or(0, |s| s + 1);
            let key: String = ext[start..eq].iter().collect();
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(format!("bad key {key:?}"));
            }
            starts.push((start, eq, key));
        }
        for (n, (_, eq, key)) in starts.iter().enumerate() {
            let end = starts.get(n + 1).map_or(ext.len(), |(s, _, _)| s - 1);
            let raw = &ext[eq + 1..end];
            let mut v = String::new();
            let mut it = raw.iter();
            while let Some(&c) = it.next() {
                if c == '\\' {
                    match it.next() {
                        Some('\\') => v.push('\\'),
                        Some('=') => v.push('='),
                        Some('n') => v.push('\n'),
                        Some('r') => v.push('\r'),
                        other => return Err(format!("bad value escape {other:?}")),
                    }
                } else {
                    v.push(c);
                }
            }
            if map.insert(key.clone(), v).is_some() {
                return Err(format!("repeated key {key}"));
            }
        }
        Ok((header, map))
    }

    fn ctx() -> Context {
        Context {
            hostname: "host-1".into(),
            app_name: "residency".into(),
            version: "1.2.3",
            enterprise_number: 32473,
            store: String::new(),
        }
    }

    fn custom<'a>(ext: &'a BTreeMap<String, String>, label: &str) -> Option<&'a str> {
        (1..=6)
            .map(|n| format!("cs{n}"))
            .chain(["flexString1".into(), "flexString2".into(), "cn1".into()])
            .find(|k| ext.get(&format!("{k}Label")).map(String::as_str) == Some(label))
            .and_then(|k| ext.get(&k))
            .map(String::as_str)
    }

    #[test]
    fn a_blocked_violation() {
        let a = fixtures::blocked();
        let line = cef(&a, &ctx());
        let (h, ext) = parse(&line).unwrap();
        assert_eq!(
            h,
            [
                "0",
                "residency",
                "residency",
                "1.2.3",
                "2",
                "blocked egress to api.example.com:443 (US) by crm-sync",
                "8"
            ]
        );
        let get = |k: &str| ext.get(k).map(String::as_str);
        assert_eq!(
            get("rt"),
            Some(a.time.as_millisecond().to_string().as_str())
        );
        assert_eq!(get("cat"), Some("violation"));
        assert_eq!(get("externalId"), Some("13"));
        assert_eq!(get("dvchost"), Some("host-1"));
        assert_eq!(get("act"), Some("blocked"));
        assert_eq!(get("dst"), Some("198.51.100.7"));
        assert_eq!(get("dpt"), Some("443"));
        assert_eq!(get("dhost"), Some("api.example.com"));
        assert_eq!(get("proto"), Some("TCP"));
        assert_eq!(get("spid"), Some("4242"));
        assert_eq!(get("sproc"), Some("python3"));
        assert_eq!(get("suid"), Some("65534"));
        assert_eq!(get("cnt"), Some("1"));
        assert_eq!(get("start"), None);
        assert_eq!(custom(&ext, "country"), Some("US"));
        assert_eq!(custom(&ext, "tenant"), Some("acme,globex"));
        assert_eq!(custom(&ext, "role"), Some("crm-sync"));
        assert_eq!(custom(&ext, "rule"), Some("no-us-llm"));
        assert_eq!(custom(&ext, "workload"), Some("crm-sync"));
        assert_eq!(custom(&ext, "policy"), Some("3f1ce9a0"));
        assert_eq!(custom(&ext, "executable"), Some("/usr/bin/python3.12"));
        assert_eq!(custom(&ext, "transferBasis"), Some("none"));
    }

    #[test]
    fn a_named_flow_cites_its_name_and_catalog_entry() {
        let (_, ext) = parse(&cef(&fixtures::catalog(), &ctx())).unwrap();
        let get = |k: &str| ext.get(k).map(String::as_str);
        assert_eq!(get("dhost"), Some("eu.api.openai.com"));
        assert_eq!(
            get("destinationServiceName"),
            Some("API (EU data residency)")
        );
        assert_eq!(
            get("ResidencyResidencyServerName"),
            Some("eu.api.openai.com")
        );
        assert_eq!(get("ResidencyResidencyNameSource"), Some("dns"));
        assert_eq!(get("ResidencyResidencyProvider"), Some("OpenAI"));
        assert_eq!(get("ResidencyResidencyEndpoint"), Some("openai-api-eu"));

        for a in [fixtures::bare(), fixtures::nameless()] {
            let (_, ext) = parse(&cef(&a, &ctx())).unwrap();
            for k in [
                "dhost",
                "destinationServiceName",
                "ResidencyResidencyServerName",
                "ResidencyResidencyProvider",
                "ResidencyResidencyEndpoint",
            ] {
                assert_eq!(ext.get(k), None, "{k} without a name");
            }
            assert!(ext.values().all(|v| !v.is_empty()), "{ext:?}");
        }
        let (_, ext) = parse(&cef(&fixtures::nameless(), &ctx())).unwrap();
        assert_eq!(ext["ResidencyResidencyNameSource"], "none");
    }

    #[test]
    fn a_pods_flow_names_the_pod_and_container() {
        let (_, ext) = parse(&cef(&fixtures::pod(), &ctx())).unwrap();
        let get = |k: &str| ext.get(k).map(String::as_str);
        assert_eq!(get("ResidencyResidencyNamespace"), Some("crm"));
        assert_eq!(get("ResidencyResidencyPod"), Some("sync-7d9f-x2x"));
        assert_eq!(get("ResidencyResidencyPodUid"), Some(fixtures::POD_UID));
        assert_eq!(
            get("ResidencyResidencyPodLabels"),
            Some("app.kubernetes.io/name:sync,tier:batch")
        );
        let id = "ab".repeat(32);
        assert_eq!(get("ResidencyResidencyContainerId"), Some(id.as_str()));
        assert_eq!(get("ResidencyResidencyContainer"), Some("sync"));
        assert_eq!(
            get("ResidencyResidencyImage"),
            Some("registry.example/crm/sync:1.4")
        );
        let (_, ext) = parse(&cef(&fixtures::blocked(), &ctx())).unwrap();
        assert!(
            !ext.keys().any(|k| k.contains("Pod")
                || k.contains("Namespace")
                || k.contains("Container")
                || k.contains("Image")),
            "no pod, no pod keys: {ext:?}"
        );
    }

    #[test]
    fn severities_signatures_and_kinds() {
        for (a, sev, sig) in [
            (fixtures::allowed_tcp(), "1", "2"),
            (fixtures::flagged(), "6", "2"),
            (fixtures::blocked_flow(), "8", "2"),
            (fixtures::checkpoint(), "3", "checkpoint"),
            (fixtures::gap(), "6", "gap"),
        ] {
            let (h, _) = parse(&cef(&a, &ctx())).unwrap();
            assert_eq!(h[6], sev);
            assert_eq!(h[4], sig);
        }
    }

    #[test]
    fn ipv6_udp_throttled_checkpoint_gap() {
        let (_, ext) = parse(&cef(&fixtures::ipv6(), &ctx())).unwrap();
        assert_eq!(ext.get("dst"), None, "dst is IPv4 only");
        assert_eq!(ext["c6a3"], "2001:db8::1");
        assert_eq!(ext["c6a3Label"], "Destination IPv6 Address");

        let (_, ext) = parse(&cef(&fixtures::udp_sendmsg(), &ctx())).unwrap();
        assert_eq!(ext["proto"], "UDP");

        let a = fixtures::throttled();
        let (h, ext) = parse(&cef(&a, &ctx())).unwrap();
        assert!(h[5].ends_with(", 42 times"));
        assert_eq!(ext["cnt"], "42");
        let (first, last) = a.span.unwrap();
        assert_eq!(ext["start"], first.as_millisecond().to_string());
        assert_eq!(ext["end"], last.as_millisecond().to_string());

        let (_, ext) = parse(&cef(&fixtures::checkpoint(), &ctx())).unwrap();
        assert_eq!(ext["externalId"], "120000");
        assert_eq!(custom(&ext, "signature"), Some("c2lnbmF0dXJl+/8="));
        assert_eq!(custom(&ext, "keyId"), Some("9a7b6c5d4e3f2a1b"));
        assert_eq!(custom(&ext, "reason"), Some("interval"));
        assert_eq!(ext.get("act"), None);

        let (_, ext) = parse(&cef(&fixtures::gap(), &ctx())).unwrap();
        assert_eq!(custom(&ext, "action"), Some("evidence-gap"));
        assert_eq!(custom(&ext, "reason"), Some("unclean-shutdown"));
        assert!(ext["msg"].starts_with("the previous run"));

        let (_, ext) = parse(&cef(&fixtures::bare(), &ctx())).unwrap();
        assert_eq!(custom(&ext, "tenant"), None);
        assert_eq!(custom(&ext, "country"), None);
        assert_eq!(ext.get("cs1Label"), None, "no label without its value");
    }

    #[test]
    fn hostile_values_round_trip() {
        let a = fixtures::hostile();
        let line = cef(&a, &ctx());
        let (h, ext) = parse(&line).unwrap();
        // The header carries everything but newlines.
        assert_eq!(h[4], HOSTILE.replace(['\n', '\r'], " "));
        assert_eq!(h[5], a.summary().replace(['\n', '\r'], " "));
        assert_eq!(ext["sproc"], HOSTILE);
        assert_eq!(ext["dhost"], a.record().dst_domain().unwrap());
        assert_eq!(
            ext["ResidencyResidencyServerName"],
            a.record().server_name().unwrap()
        );
        assert_eq!(ext["ResidencyResidencyProvider"], HOSTILE);
        assert_eq!(ext["ResidencyResidencyEndpoint"], HOSTILE);
        assert_eq!(ext["destinationServiceName"], HOSTILE);
        assert_eq!(custom(&ext, "rule"), Some(HOSTILE));
        assert_eq!(custom(&ext, "role"), Some(HOSTILE));
        assert_eq!(custom(&ext, "workload"), Some(HOSTILE));
        assert_eq!(custom(&ext, "policy"), Some(HOSTILE));
        assert_eq!(custom(&ext, "executable"), a.record().process().2);
        assert_eq!(
            custom(&ext, "tenant"),
            Some(format!("{HOSTILE},plain,").as_str())
        );
        assert_eq!(custom(&ext, "country"), Some("U\"S"));

        // The parser is not fooled: an unescaped '=' makes a bogus key.
        let broken = line.replacen("\\=", "=", 1);
        assert_ne!(parse(&broken).ok().map(|p| p.1), Some(ext));
        let broken = line.replacen("\\|", "|", 1);
        assert_ne!(parse(&broken).ok().map(|p| p.0), Some(h));
    }

    #[test]
    fn the_parser_rejects_what_cef_forbids() {
        assert!(parse("CEF:0|a|b|c|d|e|1|k=a\nb").is_err());
        assert!(parse("CEF:0|a|b|c|d|e|1|k=a\\x").is_err());
        assert_eq!(
            parse("CEF:0|a\\|b|b|c|d|e|1|k=a b\\=c k2=\\\\").unwrap(),
            (
                ["0", "a|b", "b", "c", "d", "e", "1"]
                    .map(String::from)
                    .to_vec(),
                [("k", "a b=c"), ("k2", "\\")]
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .into_iter()
                    .collect()
            )
        );
    }
}
