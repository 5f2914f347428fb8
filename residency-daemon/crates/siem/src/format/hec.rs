//! Splunk HTTP Event Collector events
//! (`POST /services/collector/event`).
//!
//! ```json
//! {"time": 1800000000.123, "host": "host-1", "source": "residency",
//!  "sourcetype": "residency:ocsf", "index": "security",
//!  "event": { ... },
//!  "fields": {"seq": "13", "kind": "violation", "verdict": "blocked", ...}}
//! ```
//!
//! `time` is the event's time in seconds since the epoch with millisecond
//! decimals (what HEC reads), not the send time. `fields` are indexed
//! fields, which HEC takes only as strings or arrays of strings; they let a
//! search filter on verdict, country or tenant without reading the event.
//! A batch is the events one after another in one POST body, which HEC
//! accepts.

use serde_json::{Map, Value};

use super::{Context, Format, PRODUCT, cef, ecs, kind_name, ocsf, syslog};
use crate::alert::Alert;

/// The facility of an RFC 5424 message carried in a HEC event: user-level
/// (1). Nothing routes on it there.
const HEC_SYSLOG_FACILITY: u8 = 1;

/// One HEC event for `alert`. `event` is, by `inner`: the ECS document,
/// the OCSF event, or the CEF or RFC 5424 line as a string. `index` is
/// left out when `None` (HEC then uses the token's default index).
#[must_use]
pub fn hec_event(
    alert: &Alert,
    ctx: &Context,
    index: Option<&str>,
    sourcetype: &str,
    inner: Format,
) -> Value {
    let mut m = Map::new();
    m.insert("time".to_owned(), epoch_seconds(alert));
    if !ctx.hostname.is_empty() && ctx.hostname != "-" {
        m.insert("host".to_owned(), ctx.hostname.clone().into());
    }
    m.insert("source".to_owned(), PRODUCT.into());
    m.insert("sourcetype".to_owned(), sourcetype.into());
    if let Some(index) = index {
        m.insert("index".to_owned(), index.into());
    }
    let event = match inner {
        Format::Ecs => ecs::ecs(alert),
        Format::Ocsf => ocsf::ocsf(alert, ctx),
        Format::Cef => cef::cef(alert, ctx).into(),
        Format::Rfc5424 => {
            let line = syslog::rfc5424(alert, ctx, HEC_SYSLOG_FACILITY, alert.summary().as_bytes());
            String::from_utf8_lossy(&line).into_owned().into()
        }
    };
    m.insert("event".to_owned(), event);
    m.insert("fields".to_owned(), fields(alert));
    Value::Object(m)
}

/// Appends the HEC events of `alerts` to `out`, one per line: one POST
/// body.
pub fn hec_batch(
    alerts: &[Alert],
    ctx: &Context,
    index: Option<&str>,
    sourcetype: &str,
    inner: Format,
    out: &mut Vec<u8>,
) {
    for alert in alerts {
        // Serialising a JSON value into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, &hec_event(alert, ctx, index, sourcetype, inner));
        out.push(b'\n');
    }
}

/// The event time in seconds, with the milliseconds as decimals. Parsed
/// from its decimal text so that the float is the one nearest to it, which
/// prints back as the same digits.
fn epoch_seconds(alert: &Alert) -> Value {
    let ms = alert.time.as_millisecond();
    let sign = if ms < 0 { "-" } else { "" };
    let abs = ms.unsigned_abs();
    let text = format!("{sign}{}.{:03}", abs / 1000, abs % 1000);
    text.parse::<f64>().map_or(Value::Null, Value::from)
}

/// Indexed fields: flat strings, or arrays of strings.
fn fields(alert: &Alert) -> Value {
    let r = alert.record();
    let mut f = Map::new();
    let mut put = |k: &str, v: Option<&str>| {
        if let Some(v) = v {
            f.insert(k.to_owned(), v.into());
        }
    };
    put("seq", Some(&alert.seq.to_string()));
    put("kind", Some(kind_name(alert.kind)));
    put("verdict", r.verdict());
    put("country", r.country());
    put("role", r.role());
    put("workload", r.workload());
    put("namespace", r.namespace());
    put("pod", r.pod_name());
    put("rule", r.rule().1);
    let tenants: Vec<&str> = r.tenants().collect();
    if !tenants.is_empty() {
        f.insert("tenant".to_owned(), tenants.into());
    }
    if alert.count > 1 {
        f.insert("count".to_owned(), alert.count.to_string().into());
    }
    Value::Object(f)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::format::fixtures::{self, HOSTILE};

    fn ctx() -> Context {
        Context {
            hostname: "host-1".into(),
            app_name: "residency".into(),
            version: "1.2.3",
            enterprise_number: 32473,
            store: String::new(),
        }
    }

    #[test]
    fn an_event_with_indexed_fields() {
        let a = fixtures::blocked();
        let v = hec_event(&a, &ctx(), Some("security"), "residency:ocsf", Format::Ocsf);
        assert_eq!(v["time"].to_string(), "1800000000.123");
        assert_eq!(v["host"], "host-1");
        assert_eq!(v["source"], "residency");
        assert_eq!(v["sourcetype"], "residency:ocsf");
        assert_eq!(v["index"], "security");
        assert_eq!(v["event"], ocsf::ocsf(&a, &ctx()));
        assert_eq!(
            v["fields"],
            json!({
                "seq": "13", "kind": "violation", "verdict": "blocked", "country": "US",
                "role": "crm-sync", "workload": "crm-sync", "rule": "no-us-llm",
                "tenant": ["acme", "globex"],
            })
        );
        // Indexed fields are strings or arrays of strings, and nothing else.
        for a in fixtures::all() {
            let v = hec_event(&a, &ctx(), None, "s", Format::Ecs);
            assert!(v.get("index").is_none());
            for (k, f) in v["fields"].as_object().unwrap() {
                let flat =
                    f.is_string() || f.as_array().is_some_and(|a| a.iter().all(Value::is_string));
                assert!(flat, "{k}: {f}");
            }
        }
    }

    #[test]
    fn a_pods_namespace_and_name_are_indexed_fields() {
        let v = hec_event(&fixtures::pod(), &ctx(), None, "s", Format::Ecs);
        assert_eq!(v["fields"]["namespace"], "crm");
        assert_eq!(v["fields"]["pod"], "sync-7d9f-x2x");
        assert_eq!(v["event"]["orchestrator"]["namespace"], "crm");
    }

    #[test]
    fn inner_formats() {
        let a = fixtures::flagged();
        let ctx = ctx();
        assert_eq!(
            hec_event(&a, &ctx, None, "s", Format::Ecs)["event"],
            ecs::ecs(&a)
        );
        assert_eq!(
            hec_event(&a, &ctx, None, "s", Format::Cef)["event"],
            cef::cef(&a, &ctx)
        );
        let line = hec_event(&a, &ctx, None, "s", Format::Rfc5424)["event"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(line.starts_with("<12>1 2027-01-15T08:00:00.123456Z host-1 residency "));
        assert!(line.ends_with(&a.summary()));
        let v = hec_event(&fixtures::throttled(), &ctx, None, "s", Format::Ecs);
        assert_eq!(v["fields"]["count"], "42");
    }

    #[test]
    fn a_batch_is_events_back_to_back() {
        let alerts = [
            fixtures::allowed_tcp(),
            fixtures::checkpoint(),
            fixtures::hostile(),
        ];
        let mut out = Vec::new();
        hec_batch(&alerts, &ctx(), Some("i"), "s", Format::Ecs, &mut out);
        let events: Vec<Value> = serde_json::Deserializer::from_slice(&out)
            .into_iter::<Value>()
            .map(Result::unwrap)
            .collect();
        assert_eq!(events.len(), 3);
        for (e, a) in events.iter().zip(&alerts) {
            assert_eq!(*e, hec_event(a, &ctx(), Some("i"), "s", Format::Ecs));
        }
        // Hostile values come back exactly.
        assert_eq!(events[2]["event"]["process"]["name"], HOSTILE);
        assert_eq!(events[2]["fields"]["rule"], HOSTILE);
        assert_eq!(events[2]["fields"]["tenant"], json!([HOSTILE, "plain", ""]));
        assert_eq!(events[2]["fields"]["country"], "U\"S");
    }

    #[test]
    fn times_keep_their_milliseconds() {
        let mut a = fixtures::allowed_tcp();
        for (t, want) in [
            ("2027-01-15T08:00:00.001Z", "1800000000.001"),
            ("2027-01-15T08:00:00.999999Z", "1800000000.999"),
            ("1969-12-31T23:59:58.5Z", "-1.5"),
        ] {
            a.time = t.parse().unwrap();
            assert_eq!(epoch_seconds(&a).to_string(), want);
        }
    }
}
