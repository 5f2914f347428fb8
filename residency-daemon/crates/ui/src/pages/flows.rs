//! Flows: the filters of `GET /v1/flows`, a page at a time, each record's
//! decision in plain words; and one record in full.

use axum::{
    Extension,
    extract::{Path, RawQuery, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use maud::{Markup, html};
use residency_api::params;
use residency_evidence::StoredRecord;

use super::{S, Session, bad_filter, blocking, ui_reader};
use crate::{explain, layout};

/// The filter fields, as `GET /v1/flows` names them: (name, label, kind).
const FIELDS: &[(&str, &str, &str)] = &[
    ("from", "From", "date"),
    ("to", "To (included)", "date"),
    ("tenant", "Tenant", "text"),
    ("workload", "Workload", "text"),
    ("role", "Role", "text"),
    ("country", "Country", "text"),
    ("dst_ip", "Address", "text"),
    ("dst_name", "Host name", "text"),
    ("namespace", "Namespace", "text"),
    ("pod", "Pod", "text"),
];

/// Records as a table: time, who, where, verdict, why.
pub(crate) fn table(items: &[StoredRecord]) -> Markup {
    html! {
        @if items.is_empty() {
            p { "No flow matches." }
        } @else {
            table.flows {
                thead { tr {
                    th { "Record" } th { "Time" } th { "Tenants" } th { "Workload" }
                    th { "Destination" } th { "Country" } th { "Verdict" } th { "Why" }
                } }
                tbody {
                    @for item in items {
                        @let r: serde_json::Value = serde_json::from_str(item.record.get()).unwrap_or_default();
                        @let res = &r["residency"];
                        tr {
                            td { a href=(format!("/ui/flows/{}", item.seq)) { (item.seq) } }
                            td { (r["@timestamp"].as_str().unwrap_or("").get(..19).unwrap_or("").replace('T', " ")) }
                            td { (res["tenants"].as_array().map(|t| t.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(", ")).unwrap_or_default()) }
                            td { (res["workload"]["name"].as_str().unwrap_or("")) }
                            td { (explain::destination(&r)) }
                            td { (res["country"].as_str().unwrap_or("")) }
                            td {
                                (layout::verdict(res["verdict"].as_str().unwrap_or("")))
                                @if let Some(t) = &item.totals {
                                    br;
                                    small.moved title="sent / received (IP bytes)" {
                                        (crate::report::bytes(t.bytes_out)) " / " (crate::report::bytes(t.bytes_in))
                                    }
                                }
                            }
                            td.why { (explain::why(&r)) }
                        }
                    }
                }
            }
        }
    }
}

pub(crate) async fn list(
    State(ui): S,
    Extension(session): Extension<Session>,
    RawQuery(raw): RawQuery,
) -> Response {
    let (q, shown) = match super::filter_query(raw.as_deref(), params::FLOWS) {
        Ok(q) => q,
        Err(p) => return bad_filter(&session, &p),
    };
    let (filter, page) = (q.filter(), q.page());
    let get = |k: &str| super::value(&shown, k);
    let reader = ui_reader(&ui);
    let found = match blocking(&session, move || reader.flows(&filter, &page)).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let next = found.next.map(|n| super::next_page("/ui/flows", &shown, n));
    let body = html! {
        form.filters method="get" action="/ui/flows" {
            @for (name, label, kind) in FIELDS {
                @let value = get(name);
                @let value = if *kind == "date" { super::date_field(name, &value) } else { value };
                label { (label) " " input type=(kind) name=(name) value=(value); }
            }
            label { "Verdict "
                select name="verdict" {
                    @for s in ["", "allowed", "flagged", "blocked"] {
                        option value=(s) selected[get("verdict") == s] { (if s.is_empty() { "any" } else { s }) }
                    }
                }
            }
            button type="submit" { "Filter" }
        }
        (table(&found.items))
        @if let Some(n) = &next { p { a href=(n) rel="next" { "Older flows" } } }
    };
    layout::page("Flows", "/ui/flows", &session, &body).into_response()
}

pub(crate) async fn one(
    State(ui): S,
    Extension(session): Extension<Session>,
    Path(seq): Path<String>,
) -> Response {
    let Ok(seq) = seq.parse::<u64>() else {
        return layout::error(
            StatusCode::BAD_REQUEST,
            Some(&session),
            &format!("{seq:?} is not a record's sequence number"),
        );
    };
    let reader = ui_reader(&ui);
    let found = match blocking(&session, move || reader.record(seq)).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            return layout::error(
                StatusCode::NOT_FOUND,
                Some(&session),
                &format!("There is no record {seq} (never written, or pruned by retention)."),
            );
        }
        Err(r) => return r,
    };
    let r: serde_json::Value = serde_json::from_str(found.record.get()).unwrap_or_default();
    let pretty = serde_json::to_string_pretty(&r).unwrap_or_default();
    let is_flow = r["event"]["dataset"] == "residency.flow";
    let body = html! {
        @if is_flow {
            p.why #why { (explain::why(&r)) }
            p #versions { (explain::versions(&r)) }
            dl.facts {
                dt { "Destination" } dd { (explain::destination(&r)) }
                dt { "Process" } dd { (r["process"]["executable"].as_str().unwrap_or("")) " (pid " (r["process"]["pid"]) ")" }
                dt { "Command line" } dd { code { (r["process"]["command_line"].as_str().unwrap_or("")) } }
            }
        } @else {
            p {
                @match r["message"].as_str() {
                    Some(m) => { (m) }
                    None => { "A " code { (r["event"]["action"].as_str().unwrap_or("lifecycle")) } " record." }
                }
            }
        }
        dl.facts {
            dt { "Chain hash" } dd { code { (found.hash) } }
        }
        details open[!is_flow] {
            summary { "The record as stored (its canonical JSON)" }
            pre { code { (pretty) } }
        }
    };
    layout::page(&format!("Record {seq}"), "/ui/flows", &session, &body).into_response()
}
