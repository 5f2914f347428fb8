//! The local REST API: where people and tools read what the daemon saw.
//!
//! It sits at the end of the data flow, beside the sinks: it reads the
//! evidence store (the decisions, or flows; the violations they add up to;
//! the data-flow map of tenant, role, country and transfer basis; the policy
//! versions; the signed checkpoints and the export bundle) and renders the
//! metrics registry every component registered its counters in
//! (`/metrics`; `/readyz` also asks whether the programs are attached). It changes nothing but a violation's
//! state, and each acknowledgement or resolution is itself recorded in the
//! chain; no endpoint changes policy. It listens on 127.0.0.1
//! (`api.listen`), where every route but `/healthz` needs the bearer token
//! from `api.token_file`, and on a unix socket (`api.socket`) for root,
//! checked by peer credentials. Every route is in one table
//! ([`routes::ROUTES`]) from which both the router and the `OpenAPI`
//! document (`/v1/openapi.json`) are built; every error is
//! `{"error": "..."}` naming what was wrong. [`client`] is the other side,
//! for `residency flows` and `residency violations`.
//!
//! The crate reads the store through `residency-evidence` and records
//! through `residency-record`'s typed view; it knows nothing of the
//! kernel or the daemon, and builds and tests without aya.
#![forbid(unsafe_code)]

mod auth;
pub mod client;
pub mod config;
mod errors;
mod handlers;
pub mod openapi;
pub mod params;
pub mod routes;
mod state;
#[cfg(test)]
mod tests;

use std::{
    fs,
    io::{self, Write as _},
    net::SocketAddr,
    os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use axum::{
    Router,
    extract::DefaultBodyLimit,
    routing::{MethodRouter, on},
};
use tokio::{
    net::{TcpListener, UnixListener},
    sync::watch,
    task::JoinHandle,
};
use tracing::{error, info};

pub use auth::{Caller, Peer, load_or_create_token};
pub use errors::{ApiError, Problem};
pub use handlers::MAX_NOTE;
pub use state::ApiState;
use state::Shared;

pub use config::{ADDR_FILE, ApiConfig, DEFAULT_API_PORT, DEFAULT_API_SOCKET, RawApi};

/// The router for TCP clients: every route but the public ones needs
/// `Authorization: Bearer <token>`.
pub fn router(state: ApiState, token: &str) -> Router {
    build(state, auth::Auth::token(token))
}

/// The router for the unix socket: the peer (from
/// `into_make_service_with_connect_info::<Peer>()`) must be root.
pub fn socket_router(state: ApiState) -> Router {
    build(state, auth::Auth::Peer)
}

fn build(state: ApiState, auth: auth::Auth) -> Router {
    let openapi = serde_json::to_vec_pretty(&openapi::document()).unwrap_or_default();
    let shared = Arc::new(Shared {
        api: state,
        openapi,
    });
    let mut router = Router::new();
    for route in routes::ROUTES {
        router = router.route(route.path, handler(route));
    }
    router
        .method_not_allowed_fallback(errors::method_not_allowed)
        .fallback(errors::not_found)
        .layer(axum::middleware::from_fn_with_state(
            auth,
            auth::authenticate,
        ))
        .layer(DefaultBodyLimit::max(errors::MAX_BODY))
        .with_state(shared)
}

/// The handler of a route, for the route's method.
fn handler(route: &routes::Route) -> MethodRouter<Arc<Shared>> {
    use routes::Endpoint as E;
    let m = route.method.filter();
    match route.endpoint {
        E::Healthz => on(m, handlers::healthz),
        E::Readyz => on(m, handlers::readyz),
        E::Metrics => on(m, handlers::metrics),
        E::OpenApi => on(m, handlers::openapi),
        E::Flows => on(m, handlers::flows),
        E::Flow => on(m, handlers::flow),
        E::Violations => on(m, handlers::violations),
        E::Violation => on(m, handlers::violation),
        E::Acknowledge => on(m, handlers::acknowledge),
        E::Resolve => on(m, handlers::resolve),
        E::Transfers => on(m, handlers::transfers),
        E::Policy => on(m, handlers::policy),
        E::Checkpoint => on(m, handlers::checkpoint),
        E::Proof => on(m, handlers::proof),
        E::PublicKey => on(m, handlers::public_key),
        E::Export => on(m, handlers::export),
    }
}

/// The API, serving.
#[derive(Debug)]
pub struct Serving {
    /// The bound TCP address (the real port when `api.listen` asked for 0).
    pub tcp: Option<SocketAddr>,
    /// The socket's path.
    pub socket: Option<PathBuf>,
    tasks: Vec<JoinHandle<()>>,
}

impl Serving {
    /// Waits until every listener has stopped (after the shutdown signal,
    /// once open requests are answered).
    pub async fn stopped(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Binds the TCP listener and the socket as `config` says, writes the bound
/// TCP address to `<state_dir>/api.addr`, and serves both until `shutdown`
/// turns true (or its sender is dropped). Everything is bound before this
/// returns, so a port in use or a bad socket path is a start-up error.
///
/// # Errors
/// An [`ApiError`] naming the setting and what is wrong with it.
pub async fn serve(
    config: &ApiConfig,
    state_dir: &Path,
    state: ApiState,
    shutdown: watch::Receiver<bool>,
) -> Result<Serving, ApiError> {
    serve_with(config, state_dir, state, None, shutdown).await
}

/// More routes for the TCP listener, made from the API's state and its
/// bearer token: the dashboard (`residency-ui`), which keeps its own
/// session and checks.
pub type Extra = Box<dyn FnOnce(ApiState, &str) -> Router + Send>;

/// [`serve`], with `extra` routes merged into the TCP listener's router
/// (never the socket's: the dashboard is for browsers).
///
/// # Errors
/// An [`ApiError`] naming the setting and what is wrong with it.
pub async fn serve_with(
    config: &ApiConfig,
    state_dir: &Path,
    state: ApiState,
    extra: Option<Extra>,
    shutdown: watch::Receiver<bool>,
) -> Result<Serving, ApiError> {
    let tcp = match config.listen {
        Some(addr) => {
            let token = load_or_create_token(&config.token_file)?;
            let listener = TcpListener::bind(addr).await.map_err(|e| {
                if e.kind() == io::ErrorKind::AddrInUse {
                    ApiError::PortInUse { addr }
                } else {
                    ApiError::Listen { addr, source: e }
                }
            })?;
            let bound = listener
                .local_addr()
                .map_err(|e| ApiError::Listen { addr, source: e })?;
            Some((listener, bound, token))
        }
        None => None,
    };
    let unix = match &config.socket {
        Some(path) => Some((bind_socket(path)?, path.clone())),
        None => None,
    };
    let addr_file = state_dir.join(ADDR_FILE);
    match &tcp {
        Some((_, bound, _)) => write_addr(&addr_file, *bound)?,
        None => {
            let _ = fs::remove_file(&addr_file);
        }
    }

    let mut tasks = Vec::new();
    let bound = tcp.as_ref().map(|(_, b, _)| *b);
    if let Some((listener, bound, token)) = tcp {
        let mut app = router(state.clone(), &token);
        if let Some(extra) = extra {
            app = app.merge(extra(state.clone(), &token));
            info!("dashboard at http://{bound}/ui (log in with the API token)");
        }
        let stop = stopped(shutdown.clone());
        info!(
            address = %bound,
            token = %config.token_file.display(),
            "REST API listening (bearer token required)"
        );
        tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
            {
                error!("REST API on {bound} failed: {e}");
            }
            let _ = fs::remove_file(&addr_file);
        }));
    }
    let socket = unix.as_ref().map(|(_, p)| p.clone());
    if let Some((listener, path)) = unix {
        let app = socket_router(state).into_make_service_with_connect_info::<Peer>();
        let stop = stopped(shutdown);
        info!(socket = %path.display(), "REST API listening (root only)");
        tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
            {
                error!("REST API on {} failed: {e}", path.display());
            }
            let _ = fs::remove_file(&path);
        }));
    }
    Ok(Serving {
        tcp: bound,
        socket,
        tasks,
    })
}

/// Resolves when `shutdown` turns true or its sender goes away.
async fn stopped(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Binds the socket: its directory made (0700) if missing, a stale socket
/// file removed, a live one refused; the socket file is mode 0600.
fn bind_socket(path: &Path) -> Result<UnixListener, ApiError> {
    let err = |message: String| ApiError::Socket {
        path: path.to_owned(),
        message,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
    }
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(err(
                    "another process is serving on it (another residency daemon?); stop it, or \
                     set api.socket to another path, or \"off\""
                        .to_owned(),
                ));
            }
            fs::remove_file(path)
                .map_err(|e| err(format!("cannot remove the stale socket: {e}")))?;
        }
        Ok(_) => {
            return Err(err(
                "exists and is not a socket; remove it, or set api.socket to another path"
                    .to_owned(),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e.to_string())),
    }
    let listener = UnixListener::bind(path).map_err(|e| err(format!("cannot listen: {e}")))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(|e| err(format!("cannot make it mode 0600: {e}")))?;
    Ok(listener)
}

/// Writes `addr` to `path` (replaced whole, so readers never see half).
fn write_addr(path: &Path, addr: SocketAddr) -> Result<(), ApiError> {
    let err = |source| ApiError::AddrFile {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("addr.tmp");
    let mut f = fs::File::create(&tmp).map_err(err)?;
    f.write_all(format!("{addr}\n").as_bytes()).map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}
