//! The dashboard at `/ui`, on the API's TCP listener, and the transfer
//! report: what a compliance lead, a DPO or an engineer about to enforce
//! opens to see where each tenant's data went, what broke the rules and how
//! it was handled, and what a policy change would do.
//!
//! Every page is rendered here, on the server, from the evidence store's
//! indexed queries (the same [`Reader`](residency_evidence::Reader) the
//! REST API answers from); the charts are SVG drawn in [`charts`] and
//! [`map`], so a page needs no script to show its numbers, and the report
//! (HTML and PDF) draws the same map. One small script, served from
//! here, counts the NIS2 clocks down. Nothing comes from elsewhere: the
//! world map's shapes (world-atlas 2.0.2, from the npm registry) and the
//! stylesheet are compiled in.
//!
//! Access: the API's bearer token, given once on `/ui/login`, is exchanged
//! for a session cookie (`HttpOnly`, `SameSite=Strict`, path `/ui`). The
//! session is only for these pages: the JSON API still takes the token
//! alone. Every page sends a content security policy that allows nothing
//! from another origin; a form must carry its session's token and come
//! from this origin; a request whose `Host` is not an address or
//! `localhost` is refused (DNS rebinding).
#![forbid(unsafe_code)]

pub mod charts;
mod explain;
mod layout;
pub mod map;
mod pages;
pub mod report;
mod session;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::{
    Router,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use residency_api::ApiState;
use residency_evidence::{Filter, Reader};

pub use session::Session;

/// What-if replay of stored flows under another configuration, which the
/// daemon provides (it owns the configuration and the decision).
pub trait WhatIf: Send + Sync + 'static {
    /// Judges the stored flows that `filter` selects (oldest first, at most
    /// `max` of them) under the configuration in `config` (TOML text),
    /// without loading it. Returns the replay's report as JSON, or a
    /// message saying what is wrong with the configuration.
    ///
    /// # Errors
    /// The configuration's own error, or the store's.
    fn replay(
        &self,
        reader: &Reader,
        config: &str,
        filter: &Filter,
        max: u64,
    ) -> Result<serde_json::Value, String>;
}

/// What the pages share.
pub(crate) struct Ui {
    pub(crate) api: ApiState,
    pub(crate) sessions: session::Sessions,
    pub(crate) what_if: Option<Arc<dyn WhatIf>>,
    /// One what-if replay at a time: each may judge a million flows.
    pub(crate) replaying: tokio::sync::Semaphore,
}

type S = State<Arc<Ui>>;

/// The dashboard's routes, for the TCP listener whose bearer token is
/// `token`; merge them into the API's router.
pub fn router(api: ApiState, token: &str, what_if: Option<Arc<dyn WhatIf>>) -> Router {
    let ui = Arc::new(Ui {
        api,
        sessions: session::Sessions::new(token),
        what_if,
        replaying: tokio::sync::Semaphore::new(1),
    });
    Router::new()
        .route("/ui", get(pages::overview::page))
        .route("/ui/", get(pages::overview::page))
        .route("/ui/login", get(session::login_page).post(session::login))
        .route("/ui/logout", post(session::logout))
        .route("/ui/violations", get(pages::violations::list))
        .route("/ui/violations/{id}", get(pages::violations::one))
        .route(
            "/ui/violations/{id}/{action}",
            post(pages::violations::transition),
        )
        .route("/ui/flows", get(pages::flows::list))
        .route("/ui/flows/{seq}", get(pages::flows::one))
        .route("/ui/policy", get(pages::policy::page))
        .route("/ui/policy/what-if", post(pages::policy::what_if))
        .route("/ui/report", get(pages::report))
        .route("/ui/assets/{file}", get(asset))
        // Browsers ask for it on every page they show, the report's too.
        .route(
            "/favicon.ico",
            get(|| asset(axum::extract::Path("favicon.svg".to_owned()))),
        )
        .layer(axum::middleware::from_fn_with_state(ui.clone(), guard))
        .with_state(ui)
}

/// The stylesheet and the script: compiled in, served from here only.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "ui.css",
        "text/css; charset=utf-8",
        include_str!("../assets/ui.css"),
    ),
    (
        "ui.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/ui.js"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("../assets/favicon.svg"),
    ),
];

async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, media, body)) => (
            [
                (header::CONTENT_TYPE, *media),
                (header::CACHE_CONTROL, "private, max-age=3600"),
            ],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

/// Allows nothing from another origin: scripts, styles and images from
/// here only, no inline script, no framing, forms posted here only. The one
/// inline style allowed, by its hash, is the transfer report's (a page
/// that must also stand alone as a file).
fn csp() -> &'static str {
    static CSP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CSP.get_or_init(|| {
        let report = report::style_hash();
        format!(
            "default-src 'none'; script-src 'self'; style-src 'self' '{report}'; \
             img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
             base-uri 'none'"
        )
    })
}

/// Is `Host` an address literal or `localhost`? A name that resolves to
/// this host (DNS rebinding) would make another site same-origin with
/// these pages; the cookie would not go there, but the login form would.
fn host_ok(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.rsplit_once(':') {
        // [v6]:port, v4:port, name:port
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// A form must come from this origin: `Origin` (which browsers send on
/// every POST) must name the host the request went to.
fn same_origin(headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin = headers.get(header::ORIGIN).and_then(|h| h.to_str().ok());
    match (host, origin) {
        (Some(host), Some(origin)) => {
            origin == format!("http://{host}") || origin == format!("https://{host}")
        }
        // No Origin: not a browser's cross-site form (they all send it on
        // POST); the session's form token still has to match.
        (Some(_), None) => true,
        _ => false,
    }
}

/// Every request: the host check, the origin check for forms, the
/// session (but for the login page and the assets), and the headers that
/// keep the pages to this origin.
async fn guard(State(ui): S, mut req: Request, next: Next) -> Response {
    let mut response = if !host_ok(req.headers()) {
        (
            StatusCode::MISDIRECTED_REQUEST,
            "the dashboard answers on an address (http://127.0.0.1:PORT/ui) or localhost, not \
             under another name",
        )
            .into_response()
    } else if req.method() == Method::POST && !same_origin(req.headers()) {
        (
            StatusCode::FORBIDDEN,
            "this form was sent from another origin; open the dashboard and send it from there",
        )
            .into_response()
    } else {
        let path = req.uri().path();
        let open = path == "/ui/login" || path.starts_with("/ui/assets/") || path == "/favicon.ico";
        match ui.sessions.of_request(req.headers()) {
            Some(s) => {
                req.extensions_mut().insert(s);
                next.run(req).await
            }
            None if open => next.run(req).await,
            None if req.method() == Method::GET => {
                // A page asked for without a session: to the login, and
                // back here after it.
                let back = req
                    .uri()
                    .path_and_query()
                    .map_or("/ui", axum::http::uri::PathAndQuery::as_str);
                let to = format!("/ui/login?next={}", layout::encode(back));
                (
                    StatusCode::SEE_OTHER,
                    [(header::LOCATION, to)],
                    "log in first",
                )
                    .into_response()
            }
            None => (
                StatusCode::UNAUTHORIZED,
                "no session: log in at /ui/login with the API token",
            )
                .into_response(),
        }
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(csp()) {
        h.insert("content-security-policy", v);
    }
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        // Not `no-referrer`: with it, Chromium sends `Origin: null` on a
        // form post, and the origin check could not tell this site from none.
        ("referrer-policy", "same-origin"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}
