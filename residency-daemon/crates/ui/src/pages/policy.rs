//! Policy: the version in force, its history, a diff between two versions,
//! and what-if replay of a pasted configuration over the stored flows.
//! Nothing here changes policy: the pasted text is judged, never loaded.

use axum::{
    Extension, Form,
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use maud::{Markup, html};
use residency_evidence::{Filter, query::PolicyVersion};
use serde::Deserialize;
use serde_json::Value;

use super::{S, Session, blocking, stale_form, ui_reader};
use crate::layout::{self, num, when};

/// Flows a replay from the dashboard judges at most (the CLI has no such
/// bound); the page says when it was reached.
pub const MAX_REPLAY: u64 = 1_000_000;
/// Longest configuration one may paste.
const MAX_CONFIG: usize = 256 * 1024;

#[derive(Debug, Deserialize)]
pub(crate) struct Params {
    a: Option<String>,
    b: Option<String>,
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

pub(crate) async fn page(
    State(ui): S,
    Extension(session): Extension<Session>,
    Query(p): Query<Params>,
) -> Response {
    let reader = ui_reader(&ui);
    let history = match blocking(&session, move || reader.policies()).await {
        Ok(h) => h,
        Err(r) => return r,
    };
    let find = |h: &Option<String>| {
        h.as_ref()
            .and_then(|h| history.iter().find(|v| v.hash.starts_with(h.as_str())))
    };
    let (a, b) = match (find(&p.a), find(&p.b)) {
        (Some(a), Some(b)) => (Some(a), Some(b)),
        // By default: the version before the current one, against it.
        _ => (history.get(1), history.first()),
    };
    let body = html! {
        section #current {
            h2 { "In force" }
            @match history.first() {
                Some(v) => {
                    p { "Version " code { (short(&v.hash)) } ", loaded " (when(v.loaded_at))
                        @if let Some(s) = &v.source { " from " code { (s) } } "." }
                    details { summary { "Its text" } pre { code { (v.text.as_deref().unwrap_or("(not recorded)")) } } }
                }
                None => { p { "No policy version recorded yet." } }
            }
        }
        section #history {
            h2 { "History" }
            (history_form(&history, a, b))
        }
        @if let (Some(a), Some(b)) = (a, b) {
            section #diff {
                h2 { "From " code { (short(&a.hash)) } " to " code { (short(&b.hash)) } }
                (diff(a, b))
            }
        }
        section #what-if {
            h2 { "What if? Replay the stored flows under another configuration" }
            p.hint { "Paste a whole configuration file. It is judged, not loaded: nothing here changes the policy in force. "
                "The same as " code { "residency replay --config NEW.toml" } " (which CI can run with " code { "--fail-on-new-blocks" } ")." }
            @if ui.what_if.is_none() {
                p.error { "Replay is not available in this daemon." }
            } @else {
                (what_if_form(&session, "", "", "", ""))
            }
        }
    };
    layout::page("Policy", "/ui/policy", &session, &body).into_response()
}

fn history_form(
    history: &[PolicyVersion],
    a: Option<&PolicyVersion>,
    b: Option<&PolicyVersion>,
) -> Markup {
    let is = |x: Option<&PolicyVersion>, v: &PolicyVersion| x.is_some_and(|x| x.hash == v.hash);
    html! {
        @if history.is_empty() {
            p { "None." }
        } @else {
            form method="get" action="/ui/policy" {
                table {
                    thead { tr { th { "From" } th { "To" } th { "Version" } th { "Loaded" } th { "Records" } th { "Source" } } }
                    tbody {
                        @for v in history {
                            tr {
                                td { input type="radio" name="a" value=(v.hash) aria-label=(format!("diff from {}", short(&v.hash))) checked[is(a, v)]; }
                                td { input type="radio" name="b" value=(v.hash) aria-label=(format!("diff to {}", short(&v.hash))) checked[is(b, v)]; }
                                td { code { (short(&v.hash)) } }
                                td { (when(v.loaded_at)) }
                                td { a href=(format!("/ui/flows/{}", v.first_seq)) { (v.first_seq) } " to " a href=(format!("/ui/flows/{}", v.last_seq)) { (v.last_seq) } }
                                td { (v.source.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                }
                button type="submit" { "Show the difference" }
            }
        }
    }
}

/// A unified diff of two versions' texts.
fn diff(a: &PolicyVersion, b: &PolicyVersion) -> Markup {
    let (Some(ta), Some(tb)) = (a.text.as_deref(), b.text.as_deref()) else {
        return html! { p { "A version's text was not recorded; nothing to compare." } };
    };
    if a.hash == b.hash {
        return html! { p { "The same version." } };
    }
    let d = similar::TextDiff::from_lines(ta, tb);
    html! {
        pre.diff {
            @for group in d.grouped_ops(3) {
                span.hunk { "@@\n" }
                @for op in group {
                    @for change in d.iter_changes(&op) {
                        @let (tag, sign) = match change.tag() {
                            similar::ChangeTag::Delete => ("del", "-"),
                            similar::ChangeTag::Insert => ("ins", "+"),
                            similar::ChangeTag::Equal => ("eq", " "),
                        };
                        span class=(tag) { (sign) (change.value()) @if change.missing_newline() { "\n" } }
                    }
                }
            }
        }
    }
}

fn what_if_form(session: &Session, config: &str, from: &str, to: &str, tenant: &str) -> Markup {
    html! {
        form.what-if method="post" action="/ui/policy/what-if" {
            (layout::csrf(session))
            label for="config" { "Configuration (TOML)" }
            textarea #config name="config" rows="14" required maxlength=(MAX_CONFIG) spellcheck="false" { (config) }
            div.filters {
                label { "From " input type="date" name="from" value=(from); }
                label { "To (included) " input type="date" name="to" value=(to); }
                label { "Tenant " input type="text" name="tenant" value=(tenant); }
            }
            button type="submit" { "Replay" }
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct WhatIfForm {
    config: String,
    csrf: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    tenant: String,
}

fn day(v: &str, what: &str) -> Result<Option<jiff::Timestamp>, String> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(None);
    }
    let full = if v.len() == 10 {
        format!("{v}T00:00:00Z")
    } else {
        v.to_owned()
    };
    let t: jiff::Timestamp = full
        .parse()
        .map_err(|_| format!("{what}: {v:?} is not a date (2026-12-07) or an RFC 3339 time"))?;
    // A day given as `to` is included: up to the midnight after it.
    Ok(Some(if what == "to" && v.len() == 10 {
        t + jiff::SignedDuration::from_hours(24)
    } else {
        t
    }))
}

pub(crate) async fn what_if(
    State(ui): S,
    Extension(session): Extension<Session>,
    Form(f): Form<WhatIfForm>,
) -> Response {
    if let Some(refused) = stale_form(&session, &f.csrf) {
        return refused;
    }
    let Some(what_if) = ui.what_if.clone() else {
        return layout::error(
            StatusCode::NOT_IMPLEMENTED,
            Some(&session),
            "Replay is not available in this daemon.",
        );
    };
    let again = |error: &str, result: Option<Markup>| {
        let body = html! {
            @if !error.is_empty() { p.error role="alert" { (error) } }
            @if let Some(r) = result { (r) }
            (what_if_form(&session, &f.config, &f.from, &f.to, &f.tenant))
        };
        layout::page("What if?", "/ui/policy", &session, &body)
    };
    if f.config.len() > MAX_CONFIG {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            again(
                &format!("The configuration is longer than {MAX_CONFIG} bytes."),
                None,
            ),
        )
            .into_response();
    }
    let filter = match (day(&f.from, "from"), day(&f.to, "to")) {
        (Ok(from), Ok(to)) => Filter {
            from,
            to,
            tenant: Some(f.tenant.trim().to_owned()).filter(|t| !t.is_empty()),
            ..Filter::default()
        },
        (Err(e), _) | (_, Err(e)) => {
            return (StatusCode::BAD_REQUEST, again(&e, None)).into_response();
        }
    };
    let Ok(_one_at_a_time) = ui.replaying.try_acquire() else {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            again(
                "Another replay is running; send this again when it has finished.",
                None,
            ),
        )
            .into_response();
    };
    let reader = ui_reader(&ui);
    let config = f.config.clone();
    let outcome =
        tokio::task::spawn_blocking(move || what_if.replay(&reader, &config, &filter, MAX_REPLAY))
            .await
            .unwrap_or_else(|e| Err(format!("the replay failed: {e}")));
    match outcome {
        Ok(report) => again("", Some(result(&report))).into_response(),
        Err(e) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            again(&format!("This configuration cannot be judged: {e}"), None),
        )
            .into_response(),
    }
}

/// The replay's report: totals, then each change with examples.
fn result(r: &Value) -> Markup {
    let n = |k: &str| r[k].as_u64().unwrap_or(0);
    html! {
        section #replay-result {
            h2 { "Result" }
            p #replay-summary {
                (num(n("flows"))) " flows judged: "
                strong data-count="new_blocks" { (num(n("new_blocks"))) " newly blocked" } ", "
                strong data-count="unblocked" { (num(n("unblocked"))) " no longer blocked" } ", "
                (num(n("unchanged"))) " unchanged"
                @if n("skipped") > 0 { ", " (num(n("skipped"))) " not judged (no address)" }
                "."
            }
            @if r["truncated"].as_bool() == Some(true) {
                p.error { "Stopped at " (num(MAX_REPLAY)) " flows: narrow the period, or run " code { "residency replay" } " for all." }
            }
            @if let Some(gone) = r["workloads_gone"].as_array().filter(|g| !g.is_empty()) {
                p { "Workloads the new configuration does not have (judged by its default policy): "
                    (gone.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")) }
            }
            @if let Some(changes) = r["changes"].as_array().filter(|c| !c.is_empty()) {
                table #replay-changes {
                    thead { tr { th { "Tenants" } th { "Workload" } th { "From" } th { "To" } th.n { "Flows" } th { "Examples" } } }
                    tbody {
                        @for c in changes {
                            tr {
                                td { (c["tenants"].as_array().map(|t| t.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")).unwrap_or_default()) }
                                td { (c["workload"].as_str().unwrap_or("")) }
                                td { (layout::verdict(c["from"].as_str().unwrap_or(""))) }
                                td { (layout::verdict(c["to"].as_str().unwrap_or(""))) }
                                td.n { (num(c["flows"].as_u64().unwrap_or(0))) }
                                td {
                                    ul {
                                        @for e in c["examples"].as_array().into_iter().flatten() {
                                            li { a href=(format!("/ui/flows/{}", e["seq"])) { (e["destination"].as_str().unwrap_or("")) ":" (e["port"]) } " " (e["because"].as_str().unwrap_or("")) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            } @else {
                p { "No verdict would change." }
            }
        }
    }
}
