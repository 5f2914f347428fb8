//! Violations: the list with the API's filters, one violation with its
//! flows and clocks, and acknowledging or resolving it with a note, which
//! the store records in the chain as the API's routes do.

use std::fmt::Write as _;

use axum::{
    Extension, Form,
    extract::{Path, RawQuery, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use maud::{Markup, html};
use residency_api::params;
use residency_evidence::{
    EvidenceError, Filter, Page, ViolationState,
    query::{Target, Violation},
};
use serde::Deserialize;

use super::{S, Session, bad_filter, blocking, stale_form, ui_reader};
use crate::layout::{self, num, when};

/// Longest note, as the API takes it.
const MAX_NOTE: usize = residency_api::MAX_NOTE;

/// Where a violation's flows went, in a few words.
pub(crate) fn target(v: &Violation) -> String {
    let Target {
        ip,
        port,
        country,
        name,
    } = &v.destination;
    let mut out = String::new();
    if let Some(n) = name {
        out.push_str(n);
        out.push(' ');
    }
    match (ip, port) {
        (Some(ip), Some(p)) => {
            let _ = write!(out, "{ip}:{p}");
        }
        (Some(ip), None) => out.push_str(ip),
        _ => {}
    }
    if let Some(c) = country {
        let _ = write!(out, " ({c})");
    }
    out.trim().to_owned()
}

/// The filter form: the fields of `GET /v1/violations`.
fn filter_form(q: &[(String, String)]) -> Markup {
    let get = |k: &str| super::value(q, k);
    html! {
        form.filters method="get" action="/ui/violations" {
            label { "State "
                select name="state" {
                    @for s in ["", "open", "acknowledged", "resolved"] {
                        option value=(s) selected[get("state") == s] { (if s.is_empty() { "any" } else { s }) }
                    }
                }
            }
            label { "Tenant " input type="text" name="tenant" value=(get("tenant")); }
            label { "Workload " input type="text" name="workload" value=(get("workload")); }
            label { "Country " input type="text" name="country" size="3" maxlength="2" value=(get("country")); }
            label { "Verdict "
                select name="verdict" {
                    @for s in ["", "flagged", "blocked"] {
                        option value=(s) selected[get("verdict") == s] { (if s.is_empty() { "any" } else { s }) }
                    }
                }
            }
            label { "From " input type="date" name="from" value=(super::date_field("from", &get("from"))); }
            label { "To (included) " input type="date" name="to" value=(super::date_field("to", &get("to"))); }
            button type="submit" { "Filter" }
        }
    }
}

pub(crate) async fn list(
    State(ui): S,
    Extension(session): Extension<Session>,
    RawQuery(raw): RawQuery,
) -> Response {
    let (q, shown) = match super::filter_query(raw.as_deref(), params::VIOLATIONS) {
        Ok(q) => q,
        Err(p) => return bad_filter(&session, &p),
    };
    let (filter, page) = (q.violation_filter(), q.page());
    let reader = ui_reader(&ui);
    let found = match blocking(&session, move || reader.violations(&filter, &page)).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let now = jiff::Timestamp::now();
    let next = found
        .next
        .map(|n| super::next_page("/ui/violations", &shown, n));
    let body = html! {
        (filter_form(&shown))
        @if found.items.is_empty() {
            p { "No violation matches." }
        } @else {
            table #violation-list {
                thead { tr {
                    th { "#" } th { "State" } th { "Verdict" } th { "Tenants" } th { "Workload" }
                    th { "Destination" } th { "Rule" } th.n { "Flows" } th { "Last seen" } th { "Next NIS2 deadline" }
                } }
                tbody {
                    @for v in &found.items {
                        tr {
                            td { a href=(format!("/ui/violations/{}", v.id)) { (v.id) } }
                            td { (v.state.as_str()) }
                            td { (layout::verdict(&v.verdict)) }
                            td { (v.tenants.join(", ")) }
                            td { (v.workload.as_deref().unwrap_or("(none)")) }
                            td { (target(v)) }
                            td { (v.rule.as_deref().unwrap_or("")) }
                            td.n { (num(v.count)) }
                            td { (when(v.last_seen)) }
                            td { (next_deadline(v, now)) }
                        }
                    }
                }
            }
            @if let Some(n) = &next { p { a href=(n) rel="next" { "Older violations" } } }
        }
    };
    layout::page("Violations", "/ui/violations", &session, &body).into_response()
}

/// The next NIS2 deadline still to meet (none once resolved).
fn next_deadline(v: &Violation, now: jiff::Timestamp) -> Markup {
    if v.state == ViolationState::Resolved {
        return html! { "resolved" };
    }
    let n = &v.nis2;
    let (label, due) = [
        ("early warning", n.early_warning_due),
        ("notification", n.notification_due),
        ("final report", n.final_report_due),
    ]
    .into_iter()
    .find(|(_, due)| *due > now)
    .unwrap_or(("final report", n.final_report_due));
    layout::clock(label, due, now, false)
}

pub(crate) async fn one(
    State(ui): S,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return layout::error(
            StatusCode::BAD_REQUEST,
            Some(&session),
            &format!("{id:?} is not a violation id (a positive number)"),
        );
    };
    let reader = ui_reader(&ui);
    let found = blocking(&session, move || {
        let Some(v) = reader.violation(id)? else {
            return Ok(None);
        };
        let flows = own_flows(&reader, &v)?;
        Ok(Some((v, flows)))
    })
    .await;
    let (v, flows) = match found {
        Ok(Some(f)) => f,
        Ok(None) => {
            return layout::error(
                StatusCode::NOT_FOUND,
                Some(&session),
                &format!("There is no violation {id}."),
            );
        }
        Err(r) => return r,
    };
    let done = form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "done")
        .map(|(_, v)| v.into_owned())
        // Only what this page itself redirects with, never other words.
        .filter(|d| d == "acknowledged" || d == "resolved");
    let now = jiff::Timestamp::now();
    let resolved = v.state == ViolationState::Resolved;
    let body = html! {
        @if let Some(d) = done {
            p.done role="status" { "Recorded in the evidence chain: " (d) "." }
        }
        dl.facts {
            dt { "State" } dd #state { (v.state.as_str()) }
            dt { "Verdict" } dd { (layout::verdict(&v.verdict)) }
            dt { "Tenants" } dd { (v.tenants.join(", ")) }
            dt { "Workload" } dd { (v.workload.as_deref().unwrap_or("(none)")) @if let Some(r) = &v.role { " (role " (r) ")" } }
            @if let Some(ns) = &v.namespace { dt { "Namespace, pod" } dd { (ns) " " (v.pod.as_deref().unwrap_or("")) } }
            dt { "Destination" } dd { (target(&v)) }
            dt { "Rule" } dd { (v.rule.as_deref().unwrap_or("(none)")) }
            dt { "Transfer basis" } dd { (v.transfer_basis.as_deref().unwrap_or("(none)")) }
            dt { "Flows" } dd { (num(v.count)) ", " (when(v.first_seen)) " to " (when(v.last_seen)) " (records " (v.first_seq) " to " (v.last_seq) ")" }
        }
        h2 { "NIS2 Art. 23 timeline" }
        p { "Aware since " (when(v.nis2.aware_at)) " (the first occurrence was recorded)." }
        ul.clocks {
            li { (layout::clock("Early warning, within 24 h:", v.nis2.early_warning_due, now, resolved)) }
            li { (layout::clock("Incident notification, within 72 h:", v.nis2.notification_due, now, resolved)) }
            li { (layout::clock("Final report, within 1 month:", v.nis2.final_report_due, now, resolved)) }
        }
        h2 { "Handling" }
        @for (what, t) in [("Acknowledged", &v.acknowledged), ("Resolved", &v.resolved)] {
            @if let Some(t) = t {
                p.transition { (what) " " (when(t.at)) " by " (t.by) ": " q { (t.note) } " "
                    a href=(format!("/ui/flows/{}", t.seq)) { "(record " (t.seq) ")" } }
            }
        }
        @if v.state == ViolationState::Open {
            (note_form(&session, v.id, "ack", "Acknowledge", "Who looked, what was found"))
        }
        @if !resolved {
            (note_form(&session, v.id, "resolve", "Resolve", "What was done (a repeat afterwards opens a new violation)"))
        }
        h2 { "Its flows (newest " (flows.len()) ")" }
        (super::flows::table(&flows))
    };
    layout::page(
        &format!("Violation {}", v.id),
        "/ui/violations",
        &session,
        &body,
    )
    .into_response()
}

/// A violation's newest flows: the same workload, verdict and destination,
/// from its last occurrence back to its first.
fn own_flows(
    reader: &residency_evidence::Reader,
    v: &Violation,
) -> Result<Vec<residency_evidence::StoredRecord>, EvidenceError> {
    // Its flows: the same workload, verdict and destination, from its
    // last occurrence back to its first.
    let filter = Filter {
        workload: v.workload.clone(),
        verdict: Some(v.verdict.clone()),
        dst_ip: v.destination.ip.as_deref().and_then(|ip| ip.parse().ok()),
        namespace: v.namespace.clone(),
        ..Filter::default()
    };
    let page = reader.flows(
        &filter,
        &Page {
            cursor: Some(v.last_seq + 1),
            limit: 200,
            ..Page::default()
        },
    )?;
    // The rest of its key, which the index does not hold: the port,
    // the rule, and no workload when it has none.
    let own = |r: &residency_evidence::StoredRecord| {
        let doc: serde_json::Value = serde_json::from_str(r.record.get()).unwrap_or_default();
        let port = doc["destination"]["port"].as_u64();
        let rule = doc["rule"]["name"].as_str();
        let workload = doc["residency"]["workload"]["name"].as_str();
        r.seq >= v.first_seq
            && (v.destination.port.is_none() || port == v.destination.port.map(u64::from))
            && (v.rule.is_none() || rule == v.rule.as_deref())
            && (v.workload.is_some() || workload.is_none())
    };
    Ok(page.items.into_iter().filter(own).take(20).collect())
}

fn note_form(session: &Session, id: i64, action: &str, label: &str, hint: &str) -> Markup {
    let field = format!("note-{action}");
    html! {
        form.note method="post" action=(format!("/ui/violations/{id}/{action}")) {
            (layout::csrf(session))
            label for=(field) { (label) " with a note" }
            textarea id=(field) name="note" required maxlength=(MAX_NOTE) rows="2" placeholder=(hint) {}
            button type="submit" { (label) }
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct NoteForm {
    note: String,
    csrf: String,
}

pub(crate) async fn transition(
    State(ui): S,
    Extension(session): Extension<Session>,
    Path((id, action)): Path<(String, String)>,
    Form(f): Form<NoteForm>,
) -> Response {
    if let Some(refused) = stale_form(&session, &f.csrf) {
        return refused;
    }
    let (to, done) = match action.as_str() {
        "ack" => (ViolationState::Acknowledged, "acknowledged"),
        "resolve" => (ViolationState::Resolved, "resolved"),
        _ => {
            return layout::error(
                StatusCode::NOT_FOUND,
                Some(&session),
                "A violation is acknowledged (ack) or resolved (resolve).",
            );
        }
    };
    let Ok(id) = id.parse::<i64>() else {
        return layout::error(
            StatusCode::BAD_REQUEST,
            Some(&session),
            "Not a violation id.",
        );
    };
    let note = f.note.trim();
    if note.is_empty() || note.len() > MAX_NOTE {
        return layout::error(
            StatusCode::BAD_REQUEST,
            Some(&session),
            &format!("The note must say why, in 1 to {MAX_NOTE} bytes."),
        );
    }
    match ui
        .api
        .evidence
        .transition(id, to, note.to_owned(), session.by())
        .await
    {
        Ok(_) => (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, format!("/ui/violations/{id}?done={done}"))],
        )
            .into_response(),
        Err(EvidenceError::NoViolation(_)) => layout::error(
            StatusCode::NOT_FOUND,
            Some(&session),
            &format!("There is no violation {id}."),
        ),
        Err(e) => {
            let message = e.to_string();
            let status = residency_api::Problem::store(e).status;
            layout::error(
                status,
                Some(&session),
                &format!(
                    "The violation was not {done}: {} ({message}).",
                    explain_store(status)
                ),
            )
        }
    }
}

fn explain_store(status: StatusCode) -> &'static str {
    match status {
        StatusCode::CONFLICT => {
            "its state does not allow it (it was acknowledged or resolved meanwhile); reload it"
        }
        StatusCode::SERVICE_UNAVAILABLE => {
            "the evidence store takes no writes now (a full disk?); nothing was recorded"
        }
        _ => "the evidence store failed; the daemon's log says why",
    }
}
