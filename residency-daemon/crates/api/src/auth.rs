//! Who may ask: a bearer token on TCP, root on the unix socket.
//!
//! The token lives in `api.token_file` (created at first start: 32 random
//! bytes, hex, mode 0600, in a 0700 directory). The socket is for root: its
//! file is mode 0600, and each connection's peer credentials (`SO_PEERCRED`)
//! are checked as well, so that a socket left reachable by a mistaken mode
//! still refuses other users.

use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::Path,
    sync::Arc,
};

use axum::{
    extract::{
        ConnectInfo, FromRequestParts, MatchedPath, Request, State, connect_info::Connected,
    },
    http::{StatusCode, header, request::Parts},
    middleware::Next,
    response::{IntoResponse as _, Response},
    serve::IncomingStream,
};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tokio::net::UnixListener;

use super::{
    errors::{ApiError, Problem},
    routes,
};

/// Shortest token accepted from a file an administrator wrote.
const MIN_TOKEN: usize = 16;

/// How requests are authenticated.
#[derive(Clone)]
pub enum Auth {
    /// TCP: `Authorization: Bearer <token>`; holds the token's SHA-256.
    Token(Arc<[u8; 32]>),
    /// Unix socket: the peer must be root.
    Peer,
}

impl Auth {
    /// Bearer-token authentication against `token`.
    #[must_use]
    pub fn token(token: &str) -> Self {
        Auth::Token(Arc::new(Sha256::digest(token.as_bytes()).into()))
    }

    fn check(&self, req: &Request) -> Result<Caller, Problem> {
        match self {
            Auth::Token(expected) => {
                let unauthorized = |m: &str| Problem::new(StatusCode::UNAUTHORIZED, m);
                let value = req.headers().get(header::AUTHORIZATION).ok_or_else(|| {
                    unauthorized(
                        "missing token: send Authorization: Bearer <token>, with the token from \
                         api.token_file (default /var/lib/residency/api.token)",
                    )
                })?;
                let value = value
                    .to_str()
                    .map_err(|_| unauthorized("Authorization: not text"))?;
                let token = value
                    .split_once(' ')
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                    .map(|(_, t)| t.trim())
                    .ok_or_else(|| unauthorized("Authorization: expected Bearer <token>"))?;
                // Hashing first makes the comparison independent of the
                // length as well as of the content.
                let given: [u8; 32] = Sha256::digest(token.as_bytes()).into();
                if bool::from(given.ct_eq(expected.as_ref())) {
                    Ok(Caller::Token)
                } else {
                    Err(unauthorized("invalid token"))
                }
            }
            Auth::Peer => {
                let peer = req
                    .extensions()
                    .get::<ConnectInfo<Peer>>()
                    .map(|ConnectInfo(p)| *p);
                match peer.and_then(|p| p.uid) {
                    Some(0) => Ok(Caller::Uid(0)),
                    Some(uid) => Err(Problem::new(
                        StatusCode::FORBIDDEN,
                        format!(
                            "the API socket is for root, and you are uid {uid}: use sudo, or the \
                             TCP listener with the token from api.token_file"
                        ),
                    )),
                    None => Err(Problem::new(
                        StatusCode::FORBIDDEN,
                        "the peer's credentials are unknown; the API socket serves root only",
                    )),
                }
            }
        }
    }
}

/// Who made a request, as transitions record it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A TCP client with the token.
    Token,
    /// A socket client, by uid.
    Uid(u32),
}

impl Caller {
    /// `token` or `uid:N`.
    #[must_use]
    pub fn by(self) -> String {
        match self {
            Caller::Token => "token".to_owned(),
            Caller::Uid(uid) => format!("uid:{uid}"),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // Set by `authenticate`; without it the request was not checked.
        parts.extensions.get::<Caller>().copied().ok_or_else(|| {
            Problem::new(
                StatusCode::UNAUTHORIZED,
                "the request was not authenticated",
            )
        })
    }
}

/// The peer of a unix-socket connection (`SO_PEERCRED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Peer {
    /// `None` if the kernel would not say.
    pub uid: Option<u32>,
    pub pid: Option<i32>,
}

impl Connected<IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        stream.io().peer_cred().map_or(Peer::default(), |c| Peer {
            uid: Some(c.uid()),
            pid: c.pid(),
        })
    }
}

/// The middleware: public routes pass; others must authenticate, and then
/// carry their [`Caller`].
pub async fn authenticate(State(auth): State<Auth>, mut req: Request, next: Next) -> Response {
    let public = req
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|m| routes::is_public(m.as_str()));
    if public {
        return next.run(req).await;
    }
    match auth.check(&req) {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(p) => p.into_response(),
    }
}

/// Reads the token from `path`, or creates one there: 32 random bytes as
/// hex, mode 0600, the directory created 0700 if missing.
///
/// # Errors
/// If the file cannot be read or created, is empty or too short, or others
/// than its owner and group can read or write it.
pub fn load_or_create_token(path: &Path) -> Result<String, ApiError> {
    let err = |message: String| ApiError::Token {
        path: path.to_owned(),
        message,
    };
    match fs::read_to_string(path) {
        Ok(text) => {
            let mode = fs::metadata(path)
                .map_err(|e| err(e.to_string()))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(err(format!(
                    "group or others can read or write it (mode {:04o}): they could use the \
                     API; chmod 600 it",
                    mode & 0o7777
                )));
            }
            let token = text.trim();
            if token.len() < MIN_TOKEN {
                return Err(err(format!(
                    "the token is shorter than {MIN_TOKEN} characters; delete the file and a new \
                     one is made at start"
                )));
            }
            Ok(token.to_owned())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => match create_token(path) {
            Ok(token) => Ok(token),
            // Another process made it meanwhile: use theirs.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => fs::read_to_string(path)
                .map(|t| t.trim().to_owned())
                .map_err(|e| err(format!("cannot read it: {e}"))),
            Err(e) => Err(err(format!("cannot create it: {e}"))),
        },
        Err(e) => Err(err(format!("cannot read it: {e}"))),
    }
}

fn create_token(path: &Path) -> io::Result<String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(io::Error::other)?;
    let token = residency_evidence::chain::hex(&bytes);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(format!("{token}\n").as_bytes())?;
    f.sync_all()?;
    Ok(token)
}
