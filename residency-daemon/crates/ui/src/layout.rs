//! The page around every page, and the small formatting every page uses.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use maud::{DOCTYPE, Markup, html};

use super::Session;

/// The pages of the navigation: (path, label).
const NAV: &[(&str, &str)] = &[
    ("/ui", "Overview"),
    ("/ui/violations", "Violations"),
    ("/ui/flows", "Flows"),
    ("/ui/policy", "Policy"),
];

/// A page of the dashboard, with the navigation; `here` is its path.
pub fn page(title: &str, here: &str, session: &Session, body: &Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, true))
            body {
                a.skip href="#main" { "Skip to the content" }
                header.top {
                    span.brand { "residency" }
                    nav aria-label="Pages" {
                        ul {
                            @for (path, label) in NAV {
                                li {
                                    @if *path == here {
                                        a href=(path) aria-current="page" { (label) }
                                    } @else {
                                        a href=(path) { (label) }
                                    }
                                }
                            }
                        }
                    }
                    form.logout method="post" action="/ui/logout" {
                        span.who { (session.who) }
                        button type="submit" { "Log out" }
                    }
                }
                main #main tabindex="-1" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A page without the navigation (the login).
pub fn bare(title: &str, body: &Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, false))
            body { (body) }
        }
    }
}

/// The `<head>`: the stylesheet, the icon, and (on pages with clocks) the
/// script, all from here.
fn head(title: &str, script: bool) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · residency" }
            link rel="stylesheet" href="/ui/assets/ui.css";
            link rel="icon" href="/ui/assets/favicon.svg" type="image/svg+xml";
            @if script { script src="/ui/assets/ui.js" defer {} }
        }
    }
}

/// An error as a page: what went wrong, in words, with its status.
pub fn error(status: StatusCode, session: Option<&Session>, message: &str) -> Response {
    let body = html! {
        p.error role="alert" { (message) }
        p { a href="/ui" { "Overview" } }
    };
    let markup = match session {
        Some(s) => page("Something is wrong", "", s, &body),
        None => bare("Something is wrong", &body),
    };
    (status, markup).into_response()
}

/// The hidden field every form carries.
pub fn csrf(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// Percent-encodes a query value.
pub fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A count with thousands separators: 12,345.
pub fn num(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A time as people read it: 2026-12-07 17:09 UTC.
pub fn when(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%d %H:%M UTC").to_string()
}

/// How long until `due` (negative: overdue), in words: `23 h 5 min left`,
/// `overdue by 2 d 3 h`.
pub fn left(due: jiff::Timestamp, now: jiff::Timestamp) -> String {
    let secs = due.as_second() - now.as_second();
    let span = |s: i64| {
        let (d, h, m) = (s / 86_400, (s % 86_400) / 3600, (s % 3600) / 60);
        if d > 0 {
            format!("{d} d {h} h")
        } else if h > 0 {
            format!("{h} h {m} min")
        } else {
            format!("{m} min")
        }
    };
    if secs >= 0 {
        format!("{} left", span(secs))
    } else {
        format!("overdue by {}", span(-secs))
    }
}

/// A NIS2 deadline: counted down in the page (the script updates it every
/// second; without the script it is right as of the page's making).
pub fn clock(label: &str, due: jiff::Timestamp, now: jiff::Timestamp, done: bool) -> Markup {
    let state = if done {
        "done"
    } else if due < now {
        "overdue"
    } else {
        "running"
    };
    html! {
        span.clock data-state=(state) {
            span.label { (label) }
            " "
            @if done {
                span { "handled" }
            } @else {
                time datetime=(due.to_string()) data-due="" { (left(due, now)) }
            }
        }
    }
}

/// A verdict as a coloured word.
pub fn verdict(v: &str) -> Markup {
    html! { span.verdict data-verdict=(v) { (v) } }
}
