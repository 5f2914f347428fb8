//! Every answer that is not a success: one JSON shape, `{"error": "..."}`,
//! whose text names what was wrong (the parameter, the header, the body
//! field), with the status that says whose fault it was.
//!
//! axum's own rejections (path, query, body) are mapped here too, so that a
//! client never has to parse two kinds of error. [`ApiError`], beside
//! them, is why the API could not start at all.

use std::{io, net::SocketAddr, path::PathBuf};

use axum::{
    Json,
    extract::{FromRequest, FromRequestParts, Path, Request},
    http::{StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use serde::de::DeserializeOwned;
use tracing::error;

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("api.listen {addr}: port in use: set api.listen to a free address, or \"off\"")]
    PortInUse { addr: SocketAddr },
    #[error("api.listen {addr}: cannot listen: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("api.socket {}: {message}", path.display())]
    Socket { path: PathBuf, message: String },
    #[error("api.token_file {}: {message}", path.display())]
    Token { path: PathBuf, message: String },
    #[error("{}: cannot write the API address: {source}", path.display())]
    AddrFile { path: PathBuf, source: io::Error },
}

use residency_evidence::EvidenceError;

/// Largest request body the API reads (a note is at most 4 KiB).
pub const MAX_BODY: usize = 16 * 1024;

/// A failed request: the status and a message naming what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub status: StatusCode,
    pub message: String,
}

impl Problem {
    /// A problem with any status.
    #[must_use]
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Problem {
            status,
            message: message.into(),
        }
    }

    /// 400: the request itself is wrong.
    #[must_use]
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404: nothing there.
    #[must_use]
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 500, logged: the daemon failed, not the client.
    #[must_use]
    pub fn internal(message: impl Into<String>) -> Self {
        let message = message.into();
        error!("API request failed: {message}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// A store error, with the status it deserves: a missing violation is
    /// 404, a transition its state forbids 409, a stopped store or one
    /// that takes no writes 503, and anything else a logged 500.
    #[must_use]
    pub fn store(e: EvidenceError) -> Self {
        match e {
            EvidenceError::NoViolation(_) => Self::not_found(e.to_string()),
            EvidenceError::Transition { .. } => Self::new(StatusCode::CONFLICT, e.to_string()),
            EvidenceError::Stopped => {
                error!("API request failed: {e}");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{e}: the daemon is shutting down"),
                )
            }
            // Said in the log once, when the writes began to fail.
            EvidenceError::Unwritable(_) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            e => Self::internal(e.to_string()),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"residency\""),
            );
        }
        response
    }
}

/// One path parameter as text, with axum's rejection in our shape (the
/// handler parses it, naming the parameter).
#[derive(Debug)]
pub struct PathParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| PathParam(p))
            .map_err(|e| Problem::new(e.status(), format!("path: {}", e.body_text())))
    }
}

/// A JSON request body of type `T`: `Content-Type: application/json`, at
/// most [`MAX_BODY`] bytes, and no field `T` does not know.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "body: send it as JSON, with Content-Type: application/json",
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    Problem::new(e.status(), format!("body: larger than {MAX_BODY} bytes"))
                } else {
                    Problem::new(e.status(), format!("body: {}", e.body_text()))
                }
            })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| Problem::bad_request(format!("body: {e}")))
    }
}

/// For unknown paths (after authentication: a client without a token
/// learns nothing about which paths exist).
pub async fn not_found(method: axum::http::Method, uri: axum::http::Uri) -> Problem {
    Problem::not_found(format!(
        "there is no endpoint {method} {}; /v1/openapi.json lists them",
        uri.path()
    ))
}

/// For known paths asked with a method they do not take.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} does not take {method}; /v1/openapi.json lists what it takes",
            uri.path()
        ),
    )
}
