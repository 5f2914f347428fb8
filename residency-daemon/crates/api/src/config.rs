//! `[api]`: where the REST API listens.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

use residency_config::{ConfigError, Locator, Spanned};
use serde::Deserialize;

/// The default API socket.
pub const DEFAULT_API_SOCKET: &str = "/run/residency/api.sock";
/// The default API port on 127.0.0.1.
pub const DEFAULT_API_PORT: u16 = 7470;
/// The file in the state directory that names the bound TCP address.
pub const ADDR_FILE: &str = "api.addr";

/// `[api]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    listen: Option<Spanned<String>>,
    socket: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
}

/// Where the REST API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// TCP address on loopback (`None`: no TCP listener). Port 0 picks a
    /// free port, written to `api.addr` in the evidence directory.
    pub listen: Option<SocketAddr>,
    /// Unix socket, for root (`None`: none).
    pub socket: Option<PathBuf>,
    /// The bearer token TCP clients present (created at first start).
    pub token_file: PathBuf,
}

impl ApiConfig {
    /// Validates `[api]`; the token lives in `state_dir` (the evidence
    /// directory) unless the file says otherwise.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the line and field of the first bad value.
    pub fn validate(raw: &RawApi, state_dir: &Path, at: &Locator<'_>) -> Result<Self, ConfigError> {
        let off = |s: &Spanned<String>| matches!(s.get_ref().as_str(), "" | "off");
        let listen = match &raw.listen {
            None => Some(SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_API_PORT))),
            Some(s) if off(s) => None,
            Some(s) => {
                let addr: SocketAddr = s.get_ref().parse().map_err(|_| {
                    at.err(
                        s.span(),
                        "api.listen",
                        &format!(
                            "\"{}\" is not an address and port, e.g. \"127.0.0.1:{DEFAULT_API_PORT}\" (or \"off\")",
                            s.get_ref()
                        ),
                    )
                })?;
                if !addr.ip().is_loopback() {
                    return Err(at.err(
                        s.span(),
                        "api.listen",
                        &format!(
                            "{addr} is not a loopback address: the API serves evidence to local clients only (put a proxy with TLS in front to reach it from elsewhere)"
                        ),
                    ));
                }
                Some(addr)
            }
        };
        let path = |v: &Option<Spanned<String>>, field: &str, default: PathBuf| match v {
            None => Ok(Some(default)),
            Some(s) if off(s) => Ok(None),
            Some(s) if !Path::new(s.get_ref()).is_absolute() => {
                Err(at.err(s.span(), field, "must be an absolute path (or \"off\")"))
            }
            Some(s) => Ok(Some(PathBuf::from(s.get_ref()))),
        };
        let socket = path(&raw.socket, "api.socket", PathBuf::from(DEFAULT_API_SOCKET))?;
        let default_token = state_dir.join("api.token");
        let token_file = path(&raw.token_file, "api.token_file", default_token.clone())?
            .unwrap_or(default_token);
        Ok(ApiConfig {
            listen,
            socket,
            token_file,
        })
    }
}
