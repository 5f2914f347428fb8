//! The overview: where the data went (flow diagram and map), how much per
//! day, the open violations with their NIS2 clocks, and the state of the
//! evidence.

use std::collections::BTreeMap;

use axum::{
    Extension,
    extract::{Query, State},
    response::{IntoResponse, Response},
};
use maud::{Markup, html};
use residency_evidence::{
    Filter, Page, StoredRecord, ViolationState,
    query::{Checkpoint, TransferRow, Violation, ViolationFilter},
    verify::LastVerify,
};
use serde::Deserialize;

use super::{S, Session, blocking, ui_reader};
use crate::{
    charts::{self, Band},
    layout::{self, num, when},
    map,
};

/// The periods one may pick, in days.
const PERIODS: &[u32] = &[1, 7, 30, 90];
/// Nodes kept per column of the flow diagram; the rest is `other`.
const TOP_NODES: usize = 12;

#[derive(Debug, Deserialize)]
pub(crate) struct Params {
    days: Option<u32>,
}

/// Everything the page shows, read in one go.
struct Data {
    /// The first whole UTC day shown.
    from: jiff::Timestamp,
    rows: Vec<TransferRow>,
    per_day: Vec<(String, u64, u64, u64)>,
    open: Vec<Violation>,
    open_more: bool,
    checkpoint: Option<(Checkpoint, bool)>,
    head: u64,
    first: Option<u64>,
    writable: bool,
    gaps: Vec<StoredRecord>,
    last_verify: Option<LastVerify>,
}

pub(crate) async fn page(
    State(ui): S,
    Extension(session): Extension<Session>,
    Query(p): Query<Params>,
) -> Response {
    let days = p.days.filter(|d| PERIODS.contains(d)).unwrap_or(7);
    let now = jiff::Timestamp::now();
    let reader = ui_reader(&ui);
    let data = blocking(&session, move || {
        let day = jiff::SignedDuration::from_hours(24);
        // Whole UTC days, today included: the transfer counts are per day.
        let today = now
            .to_zoned(jiff::tz::TimeZone::UTC)
            .start_of_day()
            .map_or(now, |z| z.timestamp());
        let from = today
            .checked_sub(day * i32::try_from(days - 1).unwrap_or(0))
            .unwrap_or(today);
        let rows = reader.transfers(&Filter {
            from: Some(from),
            ..Filter::default()
        })?;
        let mut per_day = Vec::new();
        let mut start = from;
        while start <= today {
            let end = start.checked_add(day).unwrap_or(start);
            let r = reader.transfers(&Filter {
                from: Some(start),
                to: Some(end),
                ..Filter::default()
            })?;
            per_day.push((
                start.strftime("%Y-%m-%d").to_string(),
                r.iter().map(|x| x.allowed).sum(),
                r.iter().map(|x| x.flagged).sum(),
                r.iter().map(|x| x.blocked).sum(),
            ));
            start = end;
        }
        let mut open = Vec::new();
        let mut open_more = false;
        for state in [ViolationState::Open, ViolationState::Acknowledged] {
            let page = reader.violations(
                &ViolationFilter {
                    state: Some(state),
                    records: Filter::default(),
                },
                &Page {
                    limit: 10,
                    ..Page::default()
                },
            )?;
            open_more |= page.next.is_some();
            open.extend(page.items);
        }
        let dir = reader
            .path()
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        Ok(Data {
            from,
            rows,
            per_day,
            open,
            open_more,
            checkpoint: reader.check_latest_checkpoint()?,
            head: reader.head_seq(),
            first: reader.first_seq()?,
            writable: reader.writable(),
            gaps: reader.gaps(5)?,
            last_verify: LastVerify::load(&dir),
        })
    })
    .await;
    let data = match data {
        Ok(d) => d,
        Err(r) => return r,
    };
    let body = render(&data, days, now);
    layout::page("Overview", "/ui", &session, &body).into_response()
}

/// Keeps the `TOP_NODES` largest names of a column; the rest become
/// `other`.
fn top(values: &BTreeMap<String, u64>) -> impl Fn(&str) -> String + use<> {
    let mut sorted: Vec<(&String, &u64)> = values.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let kept: Vec<String> = sorted
        .into_iter()
        .take(TOP_NODES)
        .map(|(k, _)| k.clone())
        .collect();
    move |name: &str| {
        if kept.iter().any(|k| k == name) {
            name.to_owned()
        } else {
            "other".to_owned()
        }
    }
}

/// The flow diagram's bands: tenant → role → country → verdict.
fn bands(rows: &[TransferRow]) -> Vec<Band> {
    let name = |v: Option<&String>, none: &str| v.cloned().unwrap_or_else(|| none.to_owned());
    let mut tenants: BTreeMap<String, u64> = BTreeMap::new();
    let mut roles: BTreeMap<String, u64> = BTreeMap::new();
    let mut countries: BTreeMap<String, u64> = BTreeMap::new();
    for r in rows {
        *tenants
            .entry(name(r.tenant.as_ref(), "(no tenant)"))
            .or_default() += r.flows;
        *roles.entry(name(r.role.as_ref(), "(no role)")).or_default() += r.flows;
        *countries
            .entry(name(r.country.as_ref(), "(unknown)"))
            .or_default() += r.flows;
    }
    let (t, ro, c) = (top(&tenants), top(&roles), top(&countries));
    let mut sums: BTreeMap<(usize, String, String), u64> = BTreeMap::new();
    for r in rows {
        let tenant = t(&name(r.tenant.as_ref(), "(no tenant)"));
        let role = ro(&name(r.role.as_ref(), "(no role)"));
        let country = c(&name(r.country.as_ref(), "(unknown)"));
        *sums.entry((0, tenant, role.clone())).or_default() += r.flows;
        *sums.entry((1, role, country.clone())).or_default() += r.flows;
        for (v, n) in [
            ("allowed", r.allowed),
            ("flagged", r.flagged),
            ("blocked", r.blocked),
        ] {
            if n > 0 {
                *sums.entry((2, country.clone(), v.to_owned())).or_default() += n;
            }
        }
    }
    sums.into_iter()
        .map(|((column, from, to), value)| Band {
            column,
            from,
            to,
            value,
        })
        .collect()
}

#[expect(
    clippy::too_many_lines,
    reason = "one page, top to bottom, as it reads"
)]
fn render(d: &Data, days: u32, now: jiff::Timestamp) -> Markup {
    let mut by_country: BTreeMap<String, map::Counts> = BTreeMap::new();
    let mut by_tenant: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for r in &d.rows {
        if let Some(c) = &r.country {
            let e = by_country.entry(c.clone()).or_default();
            e.allowed += r.allowed;
            e.flagged += r.flagged;
            e.blocked += r.blocked;
        }
        let t = by_tenant
            .entry(r.tenant.clone().unwrap_or_default())
            .or_default();
        t.0 += r.flows;
        t.1 += r.flagged;
        t.2 += r.blocked;
    }
    let total: u64 = d.rows.iter().map(|r| r.flows).sum();
    let blocked: u64 = d.rows.iter().map(|r| r.blocked).sum();
    let flagged: u64 = d.rows.iter().map(|r| r.flagged).sum();
    // The report covers the days this page shows, today included.
    let report_from = d.from.strftime("%Y-%m-%d").to_string();
    let report_to = now
        .checked_add(jiff::SignedDuration::from_hours(24))
        .unwrap_or(now)
        .strftime("%Y-%m-%d")
        .to_string();
    html! {
        nav.period aria-label="Period" {
            "Period: "
            @for p in PERIODS {
                @if *p == days {
                    a href=(format!("/ui?days={p}")) aria-current="true" { (p) " d" }
                } @else {
                    a href=(format!("/ui?days={p}")) { (p) " d" }
                }
            }
        }
        section.totals aria-label="Totals" {
            div.total { span.n #total-flows { (num(total)) } span { "tenant transfers" } }
            div.total data-verdict="flagged" { span.n { (num(flagged)) } span { "flagged" } }
            div.total data-verdict="blocked" { span.n { (num(blocked)) } span { "blocked" } }
            div.total { span.n { (by_country.len()) } span { "countries" } }
            div.total { span.n { (d.open.len()) @if d.open_more { "+" } } span { "violations not resolved" } }
        }
        p.hint {
            "Counted as the transfer summary counts: per tenant. A flow of a workload that serves several "
            "tenants is one transfer of each tenant's data, and counts once for each."
        }
        section #where {
            h2 { "Where the data went" }
            p.hint { "Tenant → role → destination country → verdict, last " (days) " d. Point at a band or a node for its count." }
            (charts::sankey(&["Tenant", "Role", "Country", "Verdict"], &bands(&d.rows)))
            h3 { "By country, coloured by the worst verdict" }
            (map::world(&by_country))
            p.legend {
                @for v in ["allowed", "flagged", "blocked"] {
                    span.key data-verdict=(v) { (v) }
                }
                span.key data-verdict="none" { "no flows" }
            }
            details {
                summary { "The same as a table" }
                table {
                    thead { tr { th { "Country" } th.n { "Allowed" } th.n { "Flagged" } th.n { "Blocked" } } }
                    tbody {
                        @for (c, n) in &by_country {
                            tr {
                                td { a href=(format!("/ui/flows?country={c}")) { (c) } }
                                td.n { (num(n.allowed)) } td.n { (num(n.flagged)) } td.n { (num(n.blocked)) }
                            }
                        }
                    }
                }
            }
        }
        section #days {
            h2 { "Tenant transfers per day" }
            (charts::per_day(&d.per_day))
        }
        section #violations {
            h2 { "Violations not resolved, and their NIS2 clocks" }
            @if d.open.is_empty() {
                p { "None open." }
            } @else {
                table {
                    thead { tr {
                        th { "#" } th { "State" } th { "Workload" } th { "Destination" } th.n { "Flows" }
                        th { "Early warning (24 h)" } th { "Notification (72 h)" } th { "Final report (1 month)" }
                    } }
                    tbody {
                        @for v in &d.open {
                            tr {
                                td { a href=(format!("/ui/violations/{}", v.id)) { (v.id) } }
                                td { (v.state.as_str()) }
                                td { (v.workload.as_deref().unwrap_or("(none)")) }
                                td { (super::violations::target(v)) }
                                td.n { (num(v.count)) }
                                td { (layout::clock("", v.nis2.early_warning_due, now, false)) }
                                td { (layout::clock("", v.nis2.notification_due, now, false)) }
                                td { (layout::clock("", v.nis2.final_report_due, now, false)) }
                            }
                        }
                    }
                }
                @if d.open_more {
                    p {
                        "All " a href="/ui/violations?state=open" { "open" } " and "
                        a href="/ui/violations?state=acknowledged" { "acknowledged" } " violations"
                    }
                }
            }
        }
        section #tenants {
            h2 { "Tenants and their transfer reports" }
            @if by_tenant.is_empty() {
                p { "No flows in this period." }
            } @else {
                table {
                    thead { tr { th { "Tenant" } th.n { "Flows" } th.n { "Flagged" } th.n { "Blocked" } th { "Report" } } }
                    tbody {
                        @for (t, (flows, f, b)) in &by_tenant {
                            tr {
                                @if t.is_empty() {
                                    td { "(no tenant)" } td.n { (num(*flows)) } td.n { (num(*f)) } td.n { (num(*b)) } td {}
                                } @else {
                                    td { a href=(format!("/ui/flows?tenant={}", layout::encode(t))) { (t) } }
                                    td.n { (num(*flows)) } td.n { (num(*f)) } td.n { (num(*b)) }
                                    td { a href=(format!("/ui/report?tenant={}&from={report_from}&to={report_to}", layout::encode(t))) { "Transfer report, last " (days) " d" } }
                                }
                            }
                        }
                    }
                }
            }
        }
        section #evidence {
            h2 { "Evidence" }
            dl {
                dt { "Records held" }
                dd { (d.first.map_or("none".to_owned(), |f| format!("{} to {}", num(f), num(d.head)))) }
                dt { "Store" }
                dd {
                    @if d.writable { "taking writes" }
                    @else { strong.bad { "takes no writes (a full disk?): see the log and /readyz" } }
                }
                dt { "Last signed checkpoint" }
                dd #checkpoint {
                    @match &d.checkpoint {
                        Some((c, ok)) => {
                            "record " (num(c.seq)) ", signed " (when(c.time)) " (" (c.reason) "), key " code { (c.key_id) } ": "
                            @if *ok { strong.good data-checked="valid" { "signature and head check out now" } }
                            @else { strong.bad data-checked="invalid" { "DOES NOT VERIFY: run residency evidence verify" } }
                        }
                        None => { "none signed yet" }
                    }
                }
                dt { "Last full verification" }
                dd #last-verify {
                    @match &d.last_verify {
                        Some(v) => {
                            (when(v.at)) ": " (num(v.records)) " records, "
                            @if v.ok { strong.good { "no faults" } }
                            @else { strong.bad { (v.faults) " faults" } @if let Some(f) = &v.first_fault { " (first: " (f) ")" } }
                            " in " (format!("{:.1}", v.seconds)) " s"
                        }
                        None => { "never on this host: run " code { "residency evidence verify" } }
                    }
                }
                dt { "Gaps" }
                dd #gaps {
                    @if d.gaps.is_empty() {
                        "none recorded"
                    } @else {
                        ul {
                            @for g in &d.gaps {
                                li { a href=(format!("/ui/flows/{}", g.seq)) { "record " (g.seq) } ": " (gap_text(g)) }
                            }
                        }
                    }
                }
            }
            p.hint { "Take an export bundle (" code { "GET /v1/evidence/export" } ") and verify it offline with " code { "residency evidence verify --bundle FILE --public-key KEY" } "." }
        }
    }
}

/// A gap record in a line: its message.
fn gap_text(g: &StoredRecord) -> String {
    let v: serde_json::Value = serde_json::from_str(g.record.get()).unwrap_or_default();
    let time = v["@timestamp"].as_str().unwrap_or("");
    let msg = v["message"]
        .as_str()
        .or_else(|| v["event"]["reason"].as_str())
        .unwrap_or("a gap");
    format!("{time} {msg}")
}
