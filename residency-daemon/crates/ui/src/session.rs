//! Logging in: the API token, given once, exchanged for a session cookie.
//!
//! A session is 32 random bytes; the cookie carries them, the daemon keeps
//! only their SHA-256 (so its memory holds nothing a cookie can be made
//! from), with who logged in (recorded with what they acknowledge or
//! resolve), a form token, and when the session ends. Sessions live in
//! memory: a restart logs everyone out.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Form,
    extract::{Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use cookie::{Cookie, SameSite};
use maud::html;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use super::{S, layout};

/// The cookie's name.
pub const COOKIE: &str = "residency_ui";
/// How long a session lasts.
const LIFETIME: Duration = Duration::from_hours(8);
/// At most this many sessions at once; the oldest goes first.
const MAX_SESSIONS: usize = 256;
/// Longest name one may give at login.
const MAX_NAME: usize = 64;

/// A logged-in user of the dashboard.
#[derive(Debug, Clone)]
pub struct Session {
    /// As they gave it at login (or `dashboard`).
    pub who: Arc<str>,
    /// Forms carry it (hidden `csrf` field) and it must match.
    pub csrf: Arc<str>,
}

impl Session {
    /// How a transition records who made it.
    #[must_use]
    pub fn by(&self) -> String {
        format!("ui:{} (token)", self.who)
    }
}

struct Entry {
    session: Session,
    ends: Instant,
}

pub(crate) struct Sessions {
    /// SHA-256 of the API token.
    token: [u8; 32],
    /// By the SHA-256 of the session's cookie value.
    live: Mutex<HashMap<[u8; 32], Entry>>,
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    // The OS's generator failing leaves no safe way to make a session.
    getrandom::fill(&mut bytes).expect("the OS random number generator failed");
    residency_evidence::chain::hex(&bytes)
}

impl Sessions {
    pub(crate) fn new(token: &str) -> Self {
        Sessions {
            token: Sha256::digest(token.trim().as_bytes()).into(),
            live: Mutex::new(HashMap::new()),
        }
    }

    fn token_ok(&self, given: &str) -> bool {
        let given: [u8; 32] = Sha256::digest(given.trim().as_bytes()).into();
        bool::from(given.ct_eq(&self.token))
    }

    /// A new session for `who`; returns the cookie's value.
    fn open(&self, who: &str) -> String {
        let value = random_hex();
        let key: [u8; 32] = Sha256::digest(value.as_bytes()).into();
        let now = Instant::now();
        let mut live = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        live.retain(|_, e| e.ends > now);
        if live.len() >= MAX_SESSIONS
            && let Some(oldest) = live.iter().min_by_key(|(_, e)| e.ends).map(|(k, _)| *k)
        {
            live.remove(&oldest);
        }
        live.insert(
            key,
            Entry {
                session: Session {
                    who: who.into(),
                    csrf: random_hex().into(),
                },
                ends: now + LIFETIME,
            },
        );
        value
    }

    fn key_of(headers: &HeaderMap) -> Option<[u8; 32]> {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(Cookie::split_parse)
            .filter_map(Result::ok)
            .find(|c| c.name() == COOKIE)
            .map(|c| Sha256::digest(c.value().as_bytes()).into())
    }

    /// The live session the request's cookie names.
    pub(crate) fn of_request(&self, headers: &HeaderMap) -> Option<Session> {
        let key = Self::key_of(headers)?;
        let live = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        live.get(&key)
            .filter(|e| e.ends > Instant::now())
            .map(|e| e.session.clone())
    }

    fn close(&self, headers: &HeaderMap) {
        if let Some(key) = Self::key_of(headers) {
            self.live
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&key);
        }
    }
}

/// Only a path of these pages is a place to go back to after logging in.
fn next_of(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with("/ui") && !n.contains('\\') && !n.chars().any(char::is_control) =>
        {
            n.to_owned()
        }
        _ => "/ui".to_owned(),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct NextQuery {
    next: Option<String>,
}

pub(crate) async fn login_page(Query(q): Query<NextQuery>) -> Response {
    login_form(StatusCode::OK, None, &next_of(q.next.as_deref()))
}

fn login_form(status: StatusCode, error: Option<&str>, next: &str) -> Response {
    let body = html! {
        main.login {
            h1 { "residency" }
            p { "The evidence of where each tenant's data went. Log in with the API token." }
            @if let Some(e) = error {
                p.error role="alert" { (e) }
            }
            form method="post" action="/ui/login" {
                input type="hidden" name="next" value=(next);
                label for="token" { "API token" }
                input #token type="password" name="token" required autocomplete="off" autofocus;
                p.hint {
                    "It is in " code { "api.token_file" } " (by default "
                    code { "sudo cat /var/lib/residency/api.token" } ")."
                }
                label for="name" { "Your name" }
                input #name type="text" name="name" maxlength=(MAX_NAME) autocomplete="name";
                p.hint { "Recorded in the evidence with what you acknowledge or resolve." }
                button type="submit" { "Log in" }
            }
        }
    };
    (status, layout::bare("Log in", &body)).into_response()
}

#[derive(Debug, Deserialize)]
pub(crate) struct LoginForm {
    token: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    next: Option<String>,
}

pub(crate) async fn login(State(ui): S, Form(f): Form<LoginForm>) -> Response {
    let next = next_of(f.next.as_deref());
    if !ui.sessions.token_ok(&f.token) {
        tracing::warn!("dashboard: a login with a wrong token");
        return login_form(
            StatusCode::UNAUTHORIZED,
            Some("That is not the API token."),
            &next,
        );
    }
    let name: String = f
        .name
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME)
        .collect();
    let who = if name.is_empty() {
        "dashboard".to_owned()
    } else {
        name
    };
    let value = ui.sessions.open(&who);
    tracing::info!(who = %who, "dashboard: logged in");
    let cookie = Cookie::build((COOKIE, value))
        .http_only(true)
        .same_site(SameSite::Strict)
        .path("/ui")
        .max_age(cookie::time::Duration::seconds(
            i64::try_from(LIFETIME.as_secs()).unwrap_or(i64::MAX),
        ))
        .build();
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, cookie.to_string()),
            (header::LOCATION, next),
        ],
    )
        .into_response()
}

pub(crate) async fn logout(State(ui): S, headers: HeaderMap) -> Response {
    ui.sessions.close(&headers);
    let gone = Cookie::build((COOKIE, ""))
        .http_only(true)
        .same_site(SameSite::Strict)
        .path("/ui")
        .max_age(cookie::time::Duration::ZERO)
        .build();
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, gone.to_string()),
            (header::LOCATION, "/ui/login".to_owned()),
        ],
    )
        .into_response()
}
