//! The transfer report of one tenant and period (`residency report`): the
//! record of transfers an auditor asks for under GDPR Art. 30(1)(e) and
//! Art. 44-49, from what the daemon's API serves: each destination country
//! and provider with its transfer basis and condition and the flow counts,
//! the violations with their NIS2 timeline and how they were handled, and
//! the evidence proof (the signed checkpoints that cover the period and how
//! to verify them offline). As HTML (one page, no script), JSON, or PDF:
//! the same page printed by a headless Chromium (`residency report
//! --format pdf`), so the two never differ.

use maud::{DOCTYPE, Markup, html};
use serde::Serialize;
use serde_json::Value;

/// The data of one report, as fetched.
#[derive(Debug, Clone, Serialize)]
pub struct Data {
    pub tenant: String,
    pub from: String,
    pub to: String,
    /// When the report was made (RFC 3339).
    pub made: String,
    /// Rows of `/v1/transfers/summary` for the tenant and period.
    pub transfers: Vec<Value>,
    /// Violations of the tenant in the period (`/v1/violations`).
    pub violations: Vec<Value>,
    /// `/v1/checkpoints/latest` (null before the first).
    pub checkpoint: Value,
    /// `/v1/checkpoints?from=&to=`: the period's first and last flow
    /// records and the checkpoints signed around them.
    pub proof: Value,
}

/// The period a report covers: whole UTC days, `from`'s midnight to the
/// midnight at or after `to`. The transfer counts are kept per day, so a
/// period cut inside a day would count flows its proof and violations do
/// not cover; rounded, all three cover the same flows.
#[must_use]
pub fn whole_days(
    from: jiff::Timestamp,
    to: jiff::Timestamp,
) -> (jiff::Timestamp, jiff::Timestamp) {
    const DAY: i64 = 86_400;
    let floor = |t: jiff::Timestamp| {
        jiff::Timestamp::from_second(t.as_second().div_euclid(DAY) * DAY).unwrap_or(t)
    };
    let start = floor(from);
    let end = if to == floor(to) {
        to
    } else {
        floor(to) + jiff::SignedDuration::from_hours(24)
    };
    (start, end.max(start))
}

/// The totals a reader checks first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub flows: u64,
    pub allowed: u64,
    pub flagged: u64,
    pub blocked: u64,
    /// Bytes sent and received by the tenant's followed flows.
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub countries: usize,
    pub violations: usize,
    pub open_violations: usize,
}

impl Data {
    #[must_use]
    pub fn totals(&self) -> Totals {
        let sum = |k: &str| {
            self.transfers
                .iter()
                .map(|r| r[k].as_u64().unwrap_or(0))
                .sum::<u64>()
        };
        let mut countries: Vec<&str> = self
            .transfers
            .iter()
            .filter_map(|r| r["country"].as_str())
            .collect();
        countries.sort_unstable();
        countries.dedup();
        Totals {
            flows: sum("flows"),
            allowed: sum("allowed"),
            flagged: sum("flagged"),
            blocked: sum("blocked"),
            bytes_out: sum("bytes_out"),
            bytes_in: sum("bytes_in"),
            countries: countries.len(),
            violations: self.violations.len(),
            open_violations: self
                .violations
                .iter()
                .filter(|v| v["state"] == "open")
                .count(),
        }
    }

    /// The report as one self-contained HTML page (no script, no asset
    /// from anywhere: it prints as it shows).
    #[must_use]
    #[expect(
        clippy::too_many_lines,
        reason = "one page, top to bottom, as it reads"
    )]
    pub fn html(&self) -> String {
        let t = self.totals();
        let page: Markup = html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    // Nothing but its own style, also as a file or when
                    // printed: no script, nothing loaded.
                    meta http-equiv="Content-Security-Policy"
                        content=(format!("default-src 'none'; style-src '{}'", style_hash()));
                    title { "Transfer report: " (self.tenant) ", " (self.from) " to " (self.to) }
                    style { (maud::PreEscaped(STYLE)) }
                }
                body {
                    h1 { "Record of transfers: tenant " (self.tenant) }
                    p.period {
                        "Period " time datetime=(self.from) { (when(&Value::String(self.from.clone()))) } " to " time datetime=(self.to) { (when(&Value::String(self.to.clone()))) }
                        " (whole UTC days, as the transfer counts are kept). Made " (when(&Value::String(self.made.clone()))) " by residency " (env!("CARGO_PKG_VERSION"))
                        " from its evidence store."
                    }
                    h2 { "Summary" }
                    table #totals {
                        tr { th { "Flows" } td data-total="flows" { (t.flows) } }
                        tr { th { "Allowed" } td data-total="allowed" { (t.allowed) } }
                        tr { th { "Flagged" } td data-total="flagged" { (t.flagged) } }
                        tr { th { "Blocked" } td data-total="blocked" { (t.blocked) } }
                        tr { th { "Bytes sent / received" } td data-total="bytes" { (bytes(t.bytes_out)) " / " (bytes(t.bytes_in)) } }
                        tr { th { "Destination countries" } td data-total="countries" { (t.countries) } }
                        tr { th { "Violations (open)" } td data-total="violations" { (t.violations) " (" (t.open_violations) ")" } }
                    }
                    h2 { "Transfers by destination (GDPR Art. 30(1)(e), Art. 44-49)" }
                    table #transfers {
                        tr {
                            th { "Country" } th { "Transfer basis" } th { "Condition" }
                            th { "Provider" } th { "Role" } th { "Flows" } th { "Allowed" }
                            th { "Flagged" } th { "Blocked" } th { "Sent / received" }
                            th { "First seen" } th { "Last seen" }
                        }
                        @for r in &self.transfers {
                            tr {
                                td { (text(&r["country"])) }
                                td { (text(&r["transfer_basis"])) }
                                td { (condition(r)) }
                                td { (text(&r["provider"])) @if let Some(s) = r["service"].as_str() { " (" (s) ")" } }
                                td { (text(&r["role"])) }
                                td.n { (r["flows"].as_u64().unwrap_or(0)) }
                                td.n { (r["allowed"].as_u64().unwrap_or(0)) }
                                td.n { (r["flagged"].as_u64().unwrap_or(0)) }
                                td.n { (r["blocked"].as_u64().unwrap_or(0)) }
                                td.n {
                                    (bytes(r["bytes_out"].as_u64().unwrap_or(0))) " / "
                                    (bytes(r["bytes_in"].as_u64().unwrap_or(0)))
                                }
                                td { (when(&r["first_seen"])) }
                                td { (when(&r["last_seen"])) }
                            }
                        }
                    }
                    h2 { "Where the data went" }
                    p { "Each country the tenant's data went to, coloured by its worst verdict in the period "
                        "(green allowed, amber flagged, red blocked; grey: none)." }
                    (crate::map::world(&self.by_country()))
                    h2 { "Violations and how they were handled (NIS2 Art. 23)" }
                    @if self.violations.is_empty() {
                        p { "None in the period." }
                    } @else {
                        table #violations {
                            tr {
                                th { "#" } th { "State" } th { "Verdict" } th { "Workload" }
                                th { "Destination" } th { "Flows" } th { "Aware" }
                                th { "Early warning due" } th { "Notification due" }
                                th { "Final report due" } th { "Handled" }
                            }
                            @for v in &self.violations {
                                tr {
                                    td { (v["id"].as_i64().unwrap_or(0)) }
                                    td { (text(&v["state"])) }
                                    td { (text(&v["verdict"])) }
                                    td { (text(&v["workload"])) }
                                    td { (destination(&v["destination"])) }
                                    td.n { (v["count"].as_u64().unwrap_or(0)) }
                                    td { (when(&v["nis2"]["aware_at"])) }
                                    td { (when(&v["nis2"]["early_warning_due"])) }
                                    td { (when(&v["nis2"]["notification_due"])) }
                                    td { (when(&v["nis2"]["final_report_due"])) }
                                    td {
                                        @for (what, key) in [("acknowledged", "acknowledged"), ("resolved", "resolved")] {
                                            @if v[key].is_object() {
                                                div {
                                                    (what) " " (when(&v[key]["at"])) " by " (text(&v[key]["by"]))
                                                    ": " (text(&v[key]["note"])) " (record " (v[key]["seq"].as_u64().unwrap_or(0)) ")"
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    h2 { "Evidence" }
                    (self.proof_html())
                    @if self.checkpoint.is_object() {
                        p {
                            "The newest signed checkpoint, when the report was made, covers the chain through record "
                            b { (self.checkpoint["seq"].as_u64().unwrap_or(0)) }
                            ", signed " (when(&self.checkpoint["time"])) ":"
                        }
                        (checkpoint_table("checkpoint", &self.checkpoint))
                    } @else {
                        p { "No signed checkpoint yet: the chain is not yet signed." }
                    }
                    p {
                        "To verify offline: take the export bundle (" code { "GET /v1/evidence/export" }
                        "), and run " code { "residency evidence verify --bundle FILE --public-key KEY" }
                        " with KEY the public key above, kept apart from the host; it checks every record's hash, "
                        "the order, and each checkpoint's signature."
                    }
                }
            }
        };
        page.into_string()
    }

    /// The verdict counts per destination country, for the map.
    fn by_country(&self) -> std::collections::BTreeMap<String, crate::map::Counts> {
        let mut by = std::collections::BTreeMap::new();
        for r in &self.transfers {
            if let Some(c) = r["country"].as_str() {
                let e: &mut crate::map::Counts = by.entry(c.to_owned()).or_default();
                e.allowed += r["allowed"].as_u64().unwrap_or(0);
                e.flagged += r["flagged"].as_u64().unwrap_or(0);
                e.blocked += r["blocked"].as_u64().unwrap_or(0);
            }
        }
        by
    }

    /// The period's proof: where its records are in the chain, and the
    /// checkpoints signed before and after them.
    fn proof_html(&self) -> Markup {
        let p = &self.proof;
        html! {
            @match (p["first_seq"].as_u64(), p["last_seq"].as_u64()) {
                (Some(first), Some(last)) => {
                    p #proof {
                        "The period's flows are records " b { (first) } " to " b { (last) }
                        " of the hash chain (with the other tenants' records between them)."
                        @if p["before"].is_object() {
                            " The chain before them was signed at record " (p["before"]["seq"].as_u64().unwrap_or(0)) "."
                        }
                        @if p["after"].is_object() {
                            " The checkpoint signed at record " b { (p["after"]["seq"].as_u64().unwrap_or(0)) }
                            " covers every one of them: changing, removing or reordering any breaks its signature."
                        } @else {
                            " No checkpoint covers the last of them yet; the next one signed will."
                        }
                    }
                    @if p["before"].is_object() {
                        h3 { "Signed before the period" }
                        (checkpoint_table("proof-before", &p["before"]))
                    }
                    @if p["after"].is_object() {
                        h3 { "Signed over the period" }
                        (checkpoint_table("proof-after", &p["after"]))
                    }
                }
                _ => { p #proof { "No flows in the period, so no records to prove." } }
            }
        }
    }
}

fn checkpoint_table(id: &str, c: &Value) -> Markup {
    html! {
        table id=(id) {
            tr { th { "Record" } td { (c["seq"].as_u64().unwrap_or(0)) } }
            tr { th { "Signed" } td { (when(&c["time"])) } }
            tr { th { "Chain head" } td { code { (text(&c["head"])) } } }
            tr { th { "Key id" } td { code { (text(&c["key_id"])) } } }
            tr { th { "Public key (Ed25519)" } td { code { (text(&c["public_key"])) } } }
            tr { th { "Signature" } td { code { (text(&c["signature"])) } } }
        }
    }
}

pub(crate) const STYLE: &str = "@page{size:A4 landscape;margin:12mm}\
body{font-family:sans-serif;margin:2em;max-width:80em}\
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #999;padding:.3em .5em;\
text-align:left;vertical-align:top}td.n{text-align:right}code{word-break:break-all}\
svg.map{width:100%;max-width:60em;height:auto;border:1px solid #ccc}\
@media print{body{margin:0;font-size:9pt;max-width:none}svg.map{width:auto;height:95mm;max-width:100%;break-inside:avoid}th,td{padding:.2em .35em}\
h2{break-after:avoid}tr{break-inside:avoid}}";

/// The CSP source of the report's one inline style: `sha256-…`.
pub(crate) fn style_hash() -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(STYLE.as_bytes()))
    )
}

pub use residency_api::client::human_bytes as bytes;

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A time as people read it, to the second: `2026-12-07 17:31:07 UTC`
/// (the API's own text when it is not a time).
fn when(v: &Value) -> String {
    match v.as_str().map(str::parse::<jiff::Timestamp>) {
        Some(Ok(t)) => t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
        _ => text(v),
    }
}

fn destination(d: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(n) = d["name"].as_str() {
        parts.push(n.to_owned());
    }
    if let Some(ip) = d["ip"].as_str() {
        parts.push(ip.to_owned());
    }
    if let Some(c) = d["country"].as_str() {
        parts.push(format!("({c})"));
    }
    parts.join(" ")
}

/// The condition a transfer basis holds on, for the country (GDPR adequacy
/// decisions that cover only some recipients).
fn condition(row: &Value) -> String {
    let (Some(country), Some(basis)) = (row["country"].as_str(), row["transfer_basis"].as_str())
    else {
        return String::new();
    };
    let Ok(code) = country.parse::<geoip::CountryCode>() else {
        return String::new();
    };
    let set = match basis {
        "adequacy" => "ADEQUACY",
        "dpf" => "US-DPF",
        _ => return String::new(),
    };
    geoip::sets::condition(code, set)
        .map(ToString::to_string)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn totals_add_up_and_what_the_store_says_is_escaped() {
        let data = Data {
            tenant: "<script>alert(1)</script>".into(),
            from: "2026-11-01T00:00:00Z".into(),
            to: "2026-12-01T00:00:00Z".into(),
            made: "2026-12-07T00:00:00Z".into(),
            transfers: vec![
                json!({ "country": "DE", "transfer_basis": "eea", "provider": "unlisted",
                        "flows": 4, "allowed": 4, "flagged": 0, "blocked": 0 }),
                json!({ "country": "CA", "transfer_basis": "adequacy", "provider": "unlisted",
                        "flows": 3, "allowed": 3, "flagged": 0, "blocked": 0 }),
                json!({ "country": "DE", "transfer_basis": "eea", "provider": "openai",
                        "flows": 2, "allowed": 1, "flagged": 0, "blocked": 1,
                        "bytes_out": 3_097_996, "bytes_in": 402_424 }),
            ],
            violations: vec![json!({ "id": 7, "state": "acknowledged",
                "acknowledged": { "at": "t", "by": "dpo", "note": "<b>ticket</b>", "seq": 9 } })],
            checkpoint: Value::Null,
            proof: Value::Null,
        };
        let t = data.totals();
        assert_eq!((t.flows, t.allowed, t.blocked), (9, 8, 1));
        assert_eq!((t.countries, t.violations, t.open_violations), (2, 1, 0));
        assert_eq!((t.bytes_out, t.bytes_in), (3_097_996, 402_424));
        let page = data.html();
        assert!(page.contains("3.10 MB / 402 kB"), "{page}");
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("&lt;b&gt;ticket&lt;/b&gt;"));
        // Canada's adequacy holds on a condition, and the report cites it.
        assert!(page.contains("PIPEDA"), "{page}");
        // The map: Germany allowed, Canada allowed, nothing blocked but
        // one flow to Germany, which makes Germany red.
        assert!(
            page.contains("data-country=\"DE\" data-verdict=\"blocked\""),
            "{page}"
        );
        assert!(page.contains("data-country=\"CA\" data-verdict=\"allowed\""));
        assert!(page.contains("No signed checkpoint yet"));
        assert!(page.contains("content=\"default-src 'none'; style-src 'sha256-"));
    }

    #[test]
    fn bytes_read_as_people_read_them() {
        let cases = [
            (0, "0 B"),
            (999, "999 B"),
            (1000, "1.00 kB"),
            (402_424, "402 kB"),
            (3_097_996, "3.10 MB"),
            (45_600_000_000, "45.6 GB"),
            (u64::MAX, "18447 PB"),
        ];
        for (n, want) in cases {
            assert_eq!(bytes(n), want, "{n}");
        }
    }

    #[test]
    fn a_report_covers_whole_utc_days() {
        let t = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        assert_eq!(
            whole_days(t("2026-11-01T10:20:00Z"), t("2026-11-03T00:00:01Z")),
            (t("2026-11-01T00:00:00Z"), t("2026-11-04T00:00:00Z"))
        );
        assert_eq!(
            whole_days(t("2026-11-01T00:00:00Z"), t("2026-11-02T00:00:00Z")),
            (t("2026-11-01T00:00:00Z"), t("2026-11-02T00:00:00Z"))
        );
        // Backwards is an empty period, not a negative one.
        let (a, b) = whole_days(t("2026-11-05T10:00:00Z"), t("2026-11-01T00:00:00Z"));
        assert_eq!(a, b);
    }
}
