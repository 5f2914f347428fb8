//! What-if replay: stored flows judged again under another configuration,
//! without loading anything into the kernel (`residency replay`).
//!
//! Each flow record is decided as `residency explain` decides: a host name
//! the workload resolved decides when a rule, an exception or the endpoint
//! catalog names it; otherwise the address does, against the same
//! flattened `GeoIP` tables the kernel would get. The flow's workload is
//! looked up by name in the new configuration (a workload it no longer has
//! falls to the default policy, and the replay says so).

use std::collections::BTreeMap;

use residency_record::verdict_str;
use serde::Serialize;
use serde_json::Value;

use crate::{config::Config, lookup::Lookup, policy};

/// How many example flows are kept per workload and change.
pub const DEFAULT_EXAMPLES: usize = 3;

/// One flow whose verdict would change.
#[derive(Debug, Clone, Serialize)]
pub struct Example {
    pub seq: u64,
    pub time: String,
    pub destination: String,
    pub port: u64,
    /// The new decision's reasons after the workload's: what decides now.
    pub because: String,
}

/// The flows of one workload (as recorded) whose verdict goes from one
/// value to another.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub tenants: Vec<String>,
    pub workload: String,
    pub from: String,
    pub to: String,
    pub flows: u64,
    pub examples: Vec<Example>,
}

/// What a replay found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Flow records judged again.
    pub flows: u64,
    /// Of those, flows whose verdict stays.
    pub unchanged: u64,
    /// Flows that would be blocked and were not.
    pub new_blocks: u64,
    /// Flows that were blocked and would not be.
    pub unblocked: u64,
    /// Workloads of the records that the new configuration does not have
    /// (their flows were judged by its default policy).
    pub workloads_gone: Vec<String>,
    /// Records that could not be judged (no destination address).
    pub skipped: u64,
    pub changes: Vec<Change>,
}

/// Judges flow records under a configuration, one at a time.
pub struct Replay<'a> {
    config: &'a Config,
    lookup: Lookup<'a>,
    examples: usize,
    report: Report,
    changes: BTreeMap<(String, String, String), Change>,
}

impl<'a> Replay<'a> {
    #[must_use]
    pub fn new(config: &'a Config, lookup: Lookup<'a>, examples: usize) -> Self {
        Replay {
            config,
            lookup,
            examples,
            report: Report::default(),
            changes: BTreeMap::new(),
        }
    }

    /// Judges one stored flow (`seq` and the record as the API serves it).
    pub fn add(&mut self, seq: u64, record: &Value) {
        let r = &record["residency"];
        let Some(ip) = record["destination"]["ip"]
            .as_str()
            .and_then(|s| s.parse::<std::net::IpAddr>().ok())
        else {
            self.report.skipped += 1;
            return;
        };
        let old = r["verdict"].as_str().unwrap_or("").to_owned();
        let recorded = r["workload"]["name"].as_str();
        let workload = match recorded {
            Some(w) if self.config.workload(w).is_some() => Some(w),
            Some(w) => {
                if !self.report.workloads_gone.iter().any(|g| g == w) {
                    self.report.workloads_gone.push(w.to_owned());
                }
                None
            }
            None => None,
        };
        let now = jiff::Timestamp::now();
        let by_name = r["name"]["value"].as_str().and_then(|name| {
            let index = crate::lookup::workload_index(self.config, workload).ok()?;
            policy::decide_name(self.config, index, name, now).ok()
        });
        let decision = match by_name {
            Some(d) => d,
            None => match self.lookup.decide(workload, &[ip]) {
                Ok(mut v) if !v.is_empty() => v.remove(0).decision,
                _ => {
                    self.report.skipped += 1;
                    return;
                }
            },
        };
        self.report.flows += 1;
        let new = verdict_str(decision.verdict).to_owned();
        if new == old {
            self.report.unchanged += 1;
            return;
        }
        if new == "blocked" {
            self.report.new_blocks += 1;
        } else if old == "blocked" {
            self.report.unblocked += 1;
        }
        let tenants: Vec<String> = r["tenants"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let name = recorded.unwrap_or("<no workload>").to_owned();
        let change = self
            .changes
            .entry((name.clone(), old.clone(), new.clone()))
            .or_insert_with(|| Change {
                tenants,
                workload: name,
                from: old,
                to: new,
                flows: 0,
                examples: Vec::new(),
            });
        change.flows += 1;
        if change.examples.len() < self.examples {
            let dest = r["name"]["value"]
                .as_str()
                .map_or_else(|| ip.to_string(), |n| format!("{n} ({ip})"));
            change.examples.push(Example {
                seq,
                time: record["@timestamp"].as_str().unwrap_or("").to_owned(),
                destination: dest,
                port: record["destination"]["port"].as_u64().unwrap_or(0),
                because: decision
                    .reasons
                    .iter()
                    .skip(1)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; "),
            });
        }
    }

    /// The report, changes ordered by workload, then by verdicts.
    #[must_use]
    pub fn finish(mut self) -> Report {
        self.report.changes = self.changes.into_values().collect();
        self.report
    }
}

/// What-if replay for the dashboard: a pasted configuration judged over
/// the store's flows, in the daemon's process, against the GeoIP database
/// the daemon itself uses (a path in the pasted text is not opened).
pub struct Replayer {
    /// The daemon's `geoip.database` (`None`: found where the daemon
    /// finds it).
    pub geoip: Option<std::path::PathBuf>,
}

impl residency_ui::WhatIf for Replayer {
    fn replay(
        &self,
        reader: &residency_evidence::Reader,
        config: &str,
        filter: &residency_evidence::Filter,
        max: u64,
    ) -> Result<Value, String> {
        use residency_evidence::{Order, Page, query::MAX_PAGE};
        let config =
            Config::from_toml(config, "<pasted in the dashboard>").map_err(|e| e.to_string())?;
        let geoip = crate::geodb::discover(self.geoip.as_deref());
        let lookup = Lookup::new(&config, geoip.as_deref()).map_err(|e| e.to_string())?;
        let mut replay = Replay::new(&config, lookup, DEFAULT_EXAMPLES);
        let mut cursor = None;
        let mut seen = 0u64;
        let mut truncated = false;
        loop {
            let page = reader
                .flows(
                    filter,
                    &Page {
                        cursor,
                        limit: MAX_PAGE,
                        order: Order::Asc,
                    },
                )
                .map_err(|e| e.to_string())?;
            for item in &page.items {
                let record: Value = serde_json::from_str(item.record.get()).unwrap_or_default();
                replay.add(item.seq, &record);
                seen += 1;
            }
            match page.next {
                Some(_) if seen >= max => {
                    truncated = true;
                    break;
                }
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        let mut out = serde_json::to_value(replay.finish()).map_err(|e| e.to_string())?;
        out["truncated"] = Value::Bool(truncated);
        Ok(out)
    }
}

impl Report {
    /// The report as text: a summary line, then one block per change.
    #[must_use]
    pub fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} flows replayed: {} unchanged, {} would change ({} newly blocked, {} no longer blocked){}",
            self.flows,
            self.unchanged,
            self.flows - self.unchanged,
            self.new_blocks,
            self.unblocked,
            if self.skipped > 0 {
                format!(
                    "; {} records without a destination address skipped",
                    self.skipped
                )
            } else {
                String::new()
            }
        );
        for w in &self.workloads_gone {
            let _ = writeln!(
                out,
                "workload {w} is not in the new configuration: its flows were judged by the default policy"
            );
        }
        for c in &self.changes {
            let tenants = if c.tenants.is_empty() {
                String::new()
            } else {
                format!(" (tenants {})", c.tenants.join(", "))
            };
            let _ = writeln!(
                out,
                "\n{}{tenants}: {} flows {} -> {}",
                c.workload, c.flows, c.from, c.to
            );
            for e in &c.examples {
                let _ = writeln!(
                    out,
                    "  #{} {} {}:{}: {}",
                    e.seq, e.time, e.destination, e.port, e.because
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const CONFIG: &str = r#"
mode = "enforce"
[[deny]]
name = "no-example"
names = ["*.example.com"]
[[deny]]
name = "no-doc-range"
destinations = ["192.0.2.0/24"]
"#;

    fn flow(ip: &str, name: Option<&str>, workload: Option<&str>, verdict: &str) -> Value {
        let mut r = json!({
            "@timestamp": "2026-12-07T00:00:00Z",
            "destination": { "ip": ip, "port": 443 },
            "residency": { "verdict": verdict, "tenants": ["acme"] },
        });
        if let Some(n) = name {
            r["residency"]["name"] = json!({ "source": "dns", "value": n });
        }
        if let Some(w) = workload {
            r["residency"]["workload"] = json!({ "name": w, "role": "llm" });
        }
        r
    }

    #[test]
    fn names_and_addresses_decide_and_what_cannot_be_judged_is_said() {
        let config = Config::from_toml(CONFIG, "new.toml").unwrap();
        let lookup = Lookup::new(&config, None).unwrap();
        let mut replay = Replay::new(&config, lookup, 1);
        // Blocked by name now; it was allowed.
        replay.add(
            1,
            &flow("198.51.100.7", Some("api.example.com"), None, "allowed"),
        );
        replay.add(
            2,
            &flow("198.51.100.8", Some("cdn.example.com"), None, "allowed"),
        );
        // Blocked by address, as it was: unchanged.
        replay.add(3, &flow("192.0.2.9", None, None, "blocked"));
        // A workload the new file does not have: judged by the default.
        replay.add(4, &flow("192.0.2.10", None, Some("old-sync"), "flagged"));
        // No address: skipped, and counted.
        replay.add(5, &json!({ "residency": { "verdict": "allowed" } }));
        let r = replay.finish();
        assert_eq!((r.flows, r.unchanged, r.skipped), (4, 1, 1), "{r:?}");
        assert_eq!(r.new_blocks, 3, "{r:?}");
        assert_eq!(r.workloads_gone, ["old-sync"]);
        let by_name = r
            .changes
            .iter()
            .find(|c| c.workload == "<no workload>" && c.from == "allowed")
            .unwrap();
        assert_eq!((by_name.flows, by_name.to.as_str()), (2, "blocked"));
        assert_eq!(by_name.examples.len(), 1, "examples are capped");
        assert_eq!(
            by_name.examples[0].destination,
            "api.example.com (198.51.100.7)"
        );
        assert!(
            by_name.examples[0].because.contains("no-example"),
            "{:?}",
            by_name.examples[0]
        );
        assert!(
            r.text().contains("would change (3 newly blocked"),
            "{}",
            r.text()
        );
    }
}
