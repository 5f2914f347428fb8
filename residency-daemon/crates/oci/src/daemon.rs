//! residency's own image: the daemon, the libraries it links, its
//! configuration and the CC0 GeoIP database, and nothing else (no base
//! image). `cargo xtask image` writes it from the release build; the
//! end-to-end test that runs the daemon under containerd writes it from the
//! debug build.

use std::{collections::BTreeMap, path::Path};

use crate::{Image, ImageConfig, OciError};

/// The daemon in the image.
pub const BINARY: &str = "/usr/bin/residency";
/// Its configuration: the built-in one, which the Kubernetes manifests
/// replace with their `ConfigMap`'s file.
pub const CONFIG: &str = "/etc/residency/residency.toml";
/// The CC0 database, outside the evidence directory (`/var/lib/residency`,
/// which a `DaemonSet` mounts from the node); the daemon looks here when no
/// database is configured.
pub const GEOIP: &str = "/usr/share/residency/geoip/geo-whois-asn-country.mmdb";
/// The system's CA bundle, for TLS to SIEM receivers.
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// What goes into residency's image.
pub struct DaemonImage<'a> {
    /// The `residency` binary.
    pub binary: &'a Path,
    /// The configuration text put at [`CONFIG`].
    pub config: String,
    /// The GeoIP database put at [`GEOIP`], if any.
    pub geoip: Option<&'a Path>,
    /// The CA bundle put at [`CA_BUNDLE`], if any.
    pub ca_bundle: Option<&'a Path>,
    /// Image labels (`org.opencontainers.image.*`).
    pub labels: BTreeMap<String, String>,
}

impl DaemonImage<'_> {
    /// The image: entrypoint `residency run`, arguments `--config CONFIG`.
    ///
    /// # Errors
    /// If a file cannot be read or the binary's libraries cannot be listed.
    pub fn build(&self) -> Result<Image, OciError> {
        let mut image = Image::new(ImageConfig {
            entrypoint: vec![BINARY.to_owned(), "run".to_owned()],
            cmd: vec!["--config".to_owned(), CONFIG.to_owned()],
            env: vec!["PATH=/usr/bin:/bin".to_owned()],
            working_dir: Some("/".to_owned()),
            labels: self.labels.clone(),
            user: None,
        });
        image.binary_with_libraries(self.binary, BINARY, 0o755)?;
        image.bytes(CONFIG, self.config.clone().into_bytes(), 0o644)?;
        if let Some(db) = self.geoip {
            image.file(db, GEOIP, 0o644)?;
        }
        if let Some(certs) = self.ca_bundle {
            image.file(certs, CA_BUNDLE, 0o644)?;
        }
        image.dir("/var/lib/residency", 0o700)?;
        image.dir("/tmp", 0o1777)?;
        for dir in ["/proc", "/sys", "/dev", "/run"] {
            image.dir(dir, 0o755)?;
        }
        Ok(image)
    }
}
