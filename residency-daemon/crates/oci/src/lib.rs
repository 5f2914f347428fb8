//! OCI image archives built from host files: how residency ships as a
//! container image (`cargo xtask image`) and how the end-to-end tests get
//! images for a real containerd, on machines where no base image can be
//! pulled.
//!
//! An [`Image`] is a list of files (host path, path in the image, mode),
//! symlinks and directories, and an [`ImageConfig`] (entrypoint, command,
//! environment, working directory, labels). [`Image::write_archive`] writes
//! one uncompressed layer and an OCI image layout in a tar: `oci-layout`,
//! `index.json` and `blobs/sha256/<digest>` for the layer, the config and
//! the manifest (OCI image spec v1.1, `image-layout.md`). The output is
//! deterministic: entries sorted by path, mtime 0, owner 0:0, and no
//! creation time in the config, so the same inputs give the same digest.
//!
//! `index.json` names the manifest the way `docker save` does: the
//! `io.containerd.image.name` annotation holds the full reference
//! (`docker.io/library/residency:dev`), which `ctr images import` uses as
//! the image's name, and `org.opencontainers.image.ref.name` holds the tag.
//!
//! [`linked_libraries`] lists the shared libraries a dynamic ELF binary
//! loads (the loader included), so an image can hold only the binary and
//! what it links.
#![forbid(unsafe_code)]

pub mod daemon;

use std::{
    collections::BTreeMap,
    fmt, fs,
    io::{self, Write as _},
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// The media types of the OCI image spec v1.1.
pub mod media {
    pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// An uncompressed layer: its digest is also its diff id.
    pub const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
}

/// The annotation containerd's importer reads as the image name.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The OCI annotation for a manifest's reference (the tag).
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("building the archive: {0}")]
    Tar(#[source] io::Error),
    #[error(
        "path in image {0:?} must be absolute, without `.`, `..` or empty components, and not `/`"
    )]
    BadPath(String),
    #[error("{0:?} is both a directory and a file or symlink in the image")]
    Conflict(String),
    #[error(
        "image name {0:?} is not a valid reference (like `residency:dev` or `registry.example/app:1`)"
    )]
    BadName(String),
    #[error("cannot run ldd on {binary}: {source} (ldd comes with libc-bin)")]
    Ldd { binary: PathBuf, source: io::Error },
    #[error("{binary} links {library}, which ldd cannot find on this host")]
    MissingLibrary { binary: PathBuf, library: String },
    #[error("ldd {binary} failed: {message}")]
    LddFailed { binary: PathBuf, message: String },
}

/// The runtime configuration of an image (the `config` object of the OCI
/// image configuration).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `NAME=value` pairs.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// `user[:group]`; empty means root.
    pub user: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    File { source: PathBuf, mode: u32 },
    Bytes { data: Vec<u8>, mode: u32 },
    Symlink { target: String },
    Dir { mode: u32 },
}

/// An image of one layer, built from host files.
#[derive(Debug, Clone)]
pub struct Image {
    entries: BTreeMap<String, Entry>,
    config: ImageConfig,
    architecture: String,
    os: String,
}

/// What [`Image::write_archive`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub path: PathBuf,
    /// The full reference the image is imported under.
    pub name: String,
    /// The manifest's digest (`sha256:...`): the image's digest once
    /// imported.
    pub manifest_digest: String,
    /// The config's digest: the image id containerd's CRI reports.
    pub config_digest: String,
    /// The archive's size in bytes.
    pub size: u64,
}

impl fmt::Display for Written {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}, {}, {} bytes)",
            self.path.display(),
            self.name,
            self.manifest_digest,
            self.size
        )
    }
}

/// The OCI name of this machine's architecture (Go's GOARCH names).
#[must_use]
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

impl Image {
    /// An empty image for this machine's architecture, Linux.
    #[must_use]
    pub fn new(config: ImageConfig) -> Self {
        Image {
            entries: BTreeMap::new(),
            config,
            architecture: host_architecture().to_owned(),
            os: "linux".to_owned(),
        }
    }

    /// Adds a host file (its content, read when the archive is written;
    /// a symlink on the host is followed) at `path` in the image.
    ///
    /// # Errors
    /// If `path` is not a clean absolute path.
    pub fn file(
        &mut self,
        host: impl Into<PathBuf>,
        path: &str,
        mode: u32,
    ) -> Result<&mut Self, OciError> {
        let source = host.into();
        self.insert(path, Entry::File { source, mode })
    }

    /// Adds a file with the given content.
    ///
    /// # Errors
    /// If `path` is not a clean absolute path.
    pub fn bytes(
        &mut self,
        path: &str,
        data: impl Into<Vec<u8>>,
        mode: u32,
    ) -> Result<&mut Self, OciError> {
        let data = data.into();
        self.insert(path, Entry::Bytes { data, mode })
    }

    /// Adds a symlink at `path` pointing to `target` (kept as written).
    ///
    /// # Errors
    /// If `path` is not a clean absolute path.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<&mut Self, OciError> {
        let target = target.to_owned();
        self.insert(path, Entry::Symlink { target })
    }

    /// Adds a directory (parents of other entries are added with mode
    /// 0755 anyway; this is for empty ones or other modes).
    ///
    /// # Errors
    /// If `path` is not a clean absolute path.
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<&mut Self, OciError> {
        self.insert(path, Entry::Dir { mode })
    }

    /// Adds a binary and every shared library it links, each at its host
    /// path (see [`linked_libraries`]).
    ///
    /// # Errors
    /// If ldd fails or a library is missing.
    pub fn binary_with_libraries(
        &mut self,
        host: &Path,
        path: &str,
        mode: u32,
    ) -> Result<&mut Self, OciError> {
        self.file(host, path, mode)?;
        for lib in linked_libraries(host)? {
            let in_image = lib.to_string_lossy().into_owned();
            self.file(lib, &in_image, 0o755)?;
        }
        Ok(self)
    }

    fn insert(&mut self, path: &str, entry: Entry) -> Result<&mut Self, OciError> {
        let rel = clean(path)?;
        // Parents are directories; a later explicit dir() may set a mode.
        let mut parent = String::new();
        let parts: Vec<&str> = rel.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            match self.entries.get(&parent) {
                None => {
                    self.entries
                        .insert(parent.clone(), Entry::Dir { mode: 0o755 });
                }
                Some(Entry::Dir { .. }) => {}
                Some(_) => return Err(OciError::Conflict(format!("/{parent}"))),
            }
        }
        if let Some(old) = self.entries.get(&rel) {
            let both_dirs = matches!(old, Entry::Dir { .. }) && matches!(entry, Entry::Dir { .. });
            let is_dir = matches!(old, Entry::Dir { .. }) || matches!(entry, Entry::Dir { .. });
            if is_dir && !both_dirs {
                return Err(OciError::Conflict(path.to_owned()));
            }
        }
        self.entries.insert(rel, entry);
        Ok(self)
    }

    /// The layer: a tar of every entry, sorted, mtime 0, owner 0:0.
    ///
    /// # Errors
    /// If a host file cannot be read.
    pub fn layer(&self) -> Result<Vec<u8>, OciError> {
        let mut tar = tar::Builder::new(Vec::new());
        tar.mode(tar::HeaderMode::Deterministic);
        for (path, entry) in &self.entries {
            match entry {
                Entry::Dir { mode } => {
                    let mut h = header(tar::EntryType::Directory, *mode, 0);
                    tar.append_data(&mut h, format!("{path}/"), io::empty())
                        .map_err(OciError::Tar)?;
                }
                Entry::Symlink { target } => {
                    let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                    tar.append_link(&mut h, path, target)
                        .map_err(OciError::Tar)?;
                }
                Entry::File { source, mode } => {
                    let data = fs::read(source).map_err(|e| OciError::Read {
                        path: source.clone(),
                        source: e,
                    })?;
                    append_file(&mut tar, path, &data, *mode)?;
                }
                Entry::Bytes { data, mode } => append_file(&mut tar, path, data, *mode)?,
            }
        }
        tar.into_inner().map_err(OciError::Tar)
    }

    /// The image configuration JSON for a layer of the given diff id.
    fn config_json(&self, diff_id: &str) -> Value {
        let c = &self.config;
        let mut config = serde_json::Map::new();
        if !c.entrypoint.is_empty() {
            config.insert("Entrypoint".into(), json!(c.entrypoint));
        }
        if !c.cmd.is_empty() {
            config.insert("Cmd".into(), json!(c.cmd));
        }
        if !c.env.is_empty() {
            config.insert("Env".into(), json!(c.env));
        }
        if let Some(dir) = &c.working_dir {
            config.insert("WorkingDir".into(), json!(dir));
        }
        if !c.labels.is_empty() {
            config.insert("Labels".into(), json!(c.labels));
        }
        if let Some(user) = &c.user {
            config.insert("User".into(), json!(user));
        }
        json!({
            "architecture": self.architecture,
            "os": self.os,
            "config": config,
            "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        })
    }

    /// Writes the OCI archive for `name` (normalised as Docker does:
    /// `residency:dev` becomes `docker.io/library/residency:dev`) to
    /// `out`, through a temporary file renamed into place.
    ///
    /// # Errors
    /// If the name is not a reference, a host file cannot be read, or
    /// `out` cannot be written.
    pub fn write_archive(&self, name: &str, out: &Path) -> Result<Written, OciError> {
        let name = normalize_name(name)?;
        let tag = name
            .rsplit_once(':')
            .map(|(_, t)| t)
            .filter(|t| !t.contains('/'))
            .unwrap_or("latest")
            .to_owned();
        let layer = self.layer()?;
        let layer_digest = digest(&layer);
        let config = to_bytes(&self.config_json(&layer_digest));
        let config_digest = digest(&config);
        let manifest = to_bytes(&json!({
            "schemaVersion": 2,
            "mediaType": media::MANIFEST,
            "config": { "mediaType": media::CONFIG, "digest": config_digest, "size": config.len() },
            "layers": [ { "mediaType": media::LAYER, "digest": layer_digest, "size": layer.len() } ],
        }));
        let manifest_digest = digest(&manifest);
        let index = to_bytes(&json!({
            "schemaVersion": 2,
            "mediaType": media::INDEX,
            "manifests": [ {
                "mediaType": media::MANIFEST,
                "digest": manifest_digest,
                "size": manifest.len(),
                "platform": { "architecture": self.architecture, "os": self.os },
                "annotations": {
                    ANNOTATION_CONTAINERD_NAME: name,
                    ANNOTATION_REF_NAME: tag,
                },
            } ],
        }));
        let layout = to_bytes(&json!({ "imageLayoutVersion": "1.0.0" }));

        let mut blobs = vec![
            (layer_digest, layer),
            (config_digest.clone(), config),
            (manifest_digest.clone(), manifest),
        ];
        blobs.sort();
        let mut tar = tar::Builder::new(Vec::new());
        for dir in ["blobs/", "blobs/sha256/"] {
            let mut h = header(tar::EntryType::Directory, 0o755, 0);
            tar.append_data(&mut h, dir, io::empty())
                .map_err(OciError::Tar)?;
        }
        for (d, data) in &blobs {
            let hex = d.trim_start_matches("sha256:");
            append_file(&mut tar, &format!("blobs/sha256/{hex}"), data, 0o644)?;
        }
        append_file(&mut tar, "index.json", &index, 0o644)?;
        append_file(&mut tar, "oci-layout", &layout, 0o644)?;
        let bytes = tar.into_inner().map_err(OciError::Tar)?;

        let write_err = |source| OciError::Write {
            path: out.to_path_buf(),
            source,
        };
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(write_err)?;
        }
        let tmp = out.with_extension("partial");
        let mut f = fs::File::create(&tmp).map_err(write_err)?;
        f.write_all(&bytes).map_err(write_err)?;
        f.sync_all().map_err(write_err)?;
        drop(f);
        fs::rename(&tmp, out).map_err(write_err)?;
        Ok(Written {
            path: out.to_path_buf(),
            name,
            manifest_digest,
            config_digest,
            size: bytes.len() as u64,
        })
    }
}

/// A GNU header (long names) with the fixed owner and time.
fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(size);
    h
}

fn append_file(
    tar: &mut tar::Builder<Vec<u8>>,
    path: &str,
    data: &[u8],
    mode: u32,
) -> Result<(), OciError> {
    let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
    tar.append_data(&mut h, path, data).map_err(OciError::Tar)
}

fn to_bytes(v: &Value) -> Vec<u8> {
    // A Value always serialises (its map keys are strings).
    v.to_string().into_bytes()
}

/// `sha256:<hex>` of `data`.
#[must_use]
pub fn digest(data: &[u8]) -> String {
    use std::fmt::Write as _;
    let sum = Sha256::digest(data);
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    for b in sum {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A path in the image, relative to `/`, without `.`/`..`/empty parts.
fn clean(path: &str) -> Result<String, OciError> {
    let bad = || OciError::BadPath(path.to_owned());
    let rel = path.strip_prefix('/').ok_or_else(bad)?;
    let rel = rel.strip_suffix('/').unwrap_or(rel);
    if rel.is_empty()
        || rel
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
    {
        return Err(bad());
    }
    Ok(rel.to_owned())
}

/// A reference in the form containerd stores and the CRI looks up, as
/// Docker normalises it: a first component without `.` or `:` (and not
/// `localhost`) is a Docker Hub name, so `busybox` becomes
/// `docker.io/library/busybox:latest`.
///
/// # Errors
/// If `name` is empty, has upper case letters in its path, whitespace, or
/// an empty component.
pub fn normalize_name(name: &str) -> Result<String, OciError> {
    let bad = || OciError::BadName(name.to_owned());
    if name.is_empty()
        || name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '\\')
    {
        return Err(bad());
    }
    let (first, rest) = name.split_once('/').unwrap_or(("", name));
    let domain_given =
        !first.is_empty() && (first.contains('.') || first.contains(':') || first == "localhost");
    let mut full = if domain_given {
        name.to_owned()
    } else if first.is_empty() {
        format!("docker.io/library/{rest}")
    } else {
        format!("docker.io/{name}")
    };
    // The path part (after the domain) must be lower case, non-empty parts.
    let (_, path) = full.split_once('/').ok_or_else(bad)?;
    let repo = path.split(['@', ':']).next().unwrap_or_default();
    if repo.is_empty()
        || repo.split('/').any(str::is_empty)
        || repo.chars().any(|c| c.is_ascii_uppercase())
    {
        return Err(bad());
    }
    let last = full.rsplit('/').next().unwrap_or_default();
    if !last.contains(':') && !last.contains('@') {
        full.push_str(":latest");
    }
    Ok(full)
}

/// The shared libraries `binary` links, the dynamic loader included, as
/// absolute host paths (sorted, without duplicates), from `ldd`. A static
/// binary links none. The vDSO, which the kernel provides, is left out.
///
/// glibc's ldd runs the binary's loader with `LD_TRACE_LOADED_OBJECTS`,
/// which loads but does not run the program: use it on binaries you
/// trust (your own build, the distribution's).
///
/// # Errors
/// If ldd cannot run or fails, or a library is not found on this host.
pub fn linked_libraries(binary: &Path) -> Result<Vec<PathBuf>, OciError> {
    let out = Command::new("ldd")
        .arg(binary)
        .env("LC_ALL", "C")
        .output()
        .map_err(|source| OciError::Ldd {
            binary: binary.to_path_buf(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stdout.contains("not a dynamic executable")
        || stderr.contains("not a dynamic executable")
        || stdout.contains("statically linked")
    {
        return Ok(Vec::new());
    }
    if !out.status.success() {
        return Err(OciError::LddFailed {
            binary: binary.to_path_buf(),
            message: format!("{} {}", stderr.trim(), stdout.trim()),
        });
    }
    parse_ldd(binary, &stdout)
}

/// The paths in ldd's output.
fn parse_ldd(binary: &Path, text: &str) -> Result<Vec<PathBuf>, OciError> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        // `name => /path (0x...)`, `name => not found`, `/path (0x...)`,
        // or `linux-vdso.so.1 (0x...)`.
        let path_part = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    return Err(OciError::MissingLibrary {
                        binary: binary.to_path_buf(),
                        library: name.trim().to_owned(),
                    });
                }
                rest
            }
            None => line,
        };
        let path = path_part.split(" (").next().unwrap_or_default().trim();
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    libs.sort();
    libs.dedup();
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    fn entries(tar_bytes: &[u8]) -> BTreeMap<String, (tar::EntryType, Vec<u8>, String)> {
        let mut a = tar::Archive::new(tar_bytes);
        let mut out = BTreeMap::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let link = e
                .link_name()
                .unwrap()
                .map(|l| l.to_string_lossy().into_owned())
                .unwrap_or_default();
            let h = e.header();
            assert_eq!(h.mtime().unwrap(), 0, "{path}");
            assert_eq!(h.uid().unwrap(), 0, "{path}");
            assert_eq!(h.gid().unwrap(), 0, "{path}");
            let kind = h.entry_type();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            out.insert(path, (kind, data, link));
        }
        out
    }

    fn sample(dir: &Path) -> Image {
        let host = dir.join("tool");
        fs::write(&host, b"#!/bin/sh\necho hi\n").unwrap();
        let mut img = Image::new(ImageConfig {
            entrypoint: vec!["/bin/tool".into()],
            cmd: vec!["--flag".into()],
            env: vec!["PATH=/bin".into()],
            working_dir: Some("/".into()),
            labels: BTreeMap::from([("org.example".into(), "yes".into())]),
            user: None,
        });
        img.file(&host, "/bin/tool", 0o755).unwrap();
        img.symlink("/bin/alias", "tool").unwrap();
        img.bytes("/etc/residency/residency.toml", "x = 1\n", 0o644)
            .unwrap();
        img.dir("/tmp", 0o1777).unwrap();
        // A path longer than the 100 bytes of a plain tar header.
        let deep = format!("/{}/file", "d".repeat(120));
        img.bytes(&deep, "deep", 0o600).unwrap();
        img
    }

    #[test]
    fn the_layout_is_what_the_oci_spec_says_and_every_digest_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out/img.oci.tar");
        let written = sample(dir.path())
            .write_archive("residency:dev", &out)
            .unwrap();
        assert_eq!(written.name, "docker.io/library/residency:dev");
        let bytes = fs::read(&out).unwrap();
        assert_eq!(written.size, bytes.len() as u64);
        let files = entries(&bytes);

        let layout: Value = serde_json::from_slice(&files["oci-layout"].1).unwrap();
        assert_eq!(layout, json!({"imageLayoutVersion": "1.0.0"}));

        // Every blob is stored under its own digest.
        for (path, (kind, data, _)) in &files {
            if let Some(hex) = path.strip_prefix("blobs/sha256/")
                && !hex.is_empty()
            {
                assert_eq!(*kind, tar::EntryType::Regular);
                assert_eq!(digest(data), format!("sha256:{hex}"), "{path}");
            }
        }
        let blob = |d: &str| &files[&format!("blobs/sha256/{}", &d["sha256:".len()..])].1;

        let index: Value = serde_json::from_slice(&files["index.json"].1).unwrap();
        assert_eq!(index["schemaVersion"], 2);
        assert_eq!(index["mediaType"], media::INDEX);
        let desc = &index["manifests"][0];
        assert_eq!(desc["mediaType"], media::MANIFEST);
        assert_eq!(desc["digest"], written.manifest_digest.as_str());
        assert_eq!(
            desc["annotations"][ANNOTATION_CONTAINERD_NAME],
            "docker.io/library/residency:dev"
        );
        assert_eq!(desc["annotations"][ANNOTATION_REF_NAME], "dev");
        assert_eq!(desc["platform"]["os"], "linux");
        let manifest_bytes = blob(desc["digest"].as_str().unwrap());
        assert_eq!(desc["size"], manifest_bytes.len());

        let manifest: Value = serde_json::from_slice(manifest_bytes).unwrap();
        assert_eq!(manifest["schemaVersion"], 2);
        assert_eq!(manifest["config"]["mediaType"], media::CONFIG);
        assert_eq!(manifest["config"]["digest"], written.config_digest.as_str());
        let config_bytes = blob(manifest["config"]["digest"].as_str().unwrap());
        assert_eq!(manifest["config"]["size"], config_bytes.len());
        let layer_desc = &manifest["layers"][0];
        assert_eq!(layer_desc["mediaType"], media::LAYER);
        let layer = blob(layer_desc["digest"].as_str().unwrap());
        assert_eq!(layer_desc["size"], layer.len());

        let config: Value = serde_json::from_slice(config_bytes).unwrap();
        assert_eq!(config["os"], "linux");
        assert_eq!(config["architecture"], host_architecture());
        // Uncompressed: the diff id is the layer's digest.
        assert_eq!(config["rootfs"]["type"], "layers");
        assert_eq!(config["rootfs"]["diff_ids"][0], layer_desc["digest"]);
        assert_eq!(config["config"]["Entrypoint"], json!(["/bin/tool"]));
        assert_eq!(config["config"]["Cmd"], json!(["--flag"]));
        assert_eq!(config["config"]["Env"], json!(["PATH=/bin"]));
        assert_eq!(config["config"]["WorkingDir"], "/");
        assert_eq!(config["config"]["Labels"]["org.example"], "yes");

        // The layer: parents first, sorted, the right kinds and content.
        let layer_files = entries(layer);
        let names: Vec<&String> = layer_files.keys().collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert_eq!(layer_files["bin/"].0, tar::EntryType::Directory);
        assert_eq!(layer_files["bin/tool"].1, b"#!/bin/sh\necho hi\n");
        assert_eq!(layer_files["bin/alias"].0, tar::EntryType::Symlink);
        assert_eq!(layer_files["bin/alias"].2, "tool");
        assert_eq!(layer_files["etc/"].0, tar::EntryType::Directory);
        assert_eq!(layer_files["etc/residency/residency.toml"].1, b"x = 1\n");
        assert_eq!(layer_files["tmp/"].0, tar::EntryType::Directory);
        assert_eq!(layer_files[&format!("{}/file", "d".repeat(120))].1, b"deep");
        let mut a = tar::Archive::new(&layer[..]);
        for e in a.entries().unwrap() {
            let e = e.unwrap();
            let p = e.path().unwrap().to_string_lossy().into_owned();
            let mode = e.header().mode().unwrap();
            match p.as_str() {
                "bin/tool" => assert_eq!(mode, 0o755),
                "tmp/" => assert_eq!(mode, 0o1777),
                "etc/residency/residency.toml" => assert_eq!(mode, 0o644),
                _ => {}
            }
        }
    }

    #[test]
    fn the_same_inputs_give_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let a = sample(dir.path())
            .write_archive("x:1", &dir.path().join("a.tar"))
            .unwrap();
        let b = sample(dir.path())
            .write_archive("x:1", &dir.path().join("b.tar"))
            .unwrap();
        assert_eq!(a.manifest_digest, b.manifest_digest);
        assert_eq!(
            fs::read(dir.path().join("a.tar")).unwrap(),
            fs::read(dir.path().join("b.tar")).unwrap()
        );
        assert!(!dir.path().join("a.partial").exists());
    }

    #[test]
    fn bad_paths_and_conflicts_are_refused() {
        let mut img = Image::new(ImageConfig::default());
        for p in ["", "/", "rel/x", "/a/../b", "/a//b", "/./a"] {
            assert!(
                matches!(img.bytes(p, "", 0o644), Err(OciError::BadPath(_))),
                "{p}"
            );
        }
        img.bytes("/a/f", "", 0o644).unwrap();
        assert!(matches!(
            img.bytes("/a/f/g", "", 0o644),
            Err(OciError::Conflict(_))
        ));
        assert!(matches!(img.dir("/a/f", 0o755), Err(OciError::Conflict(_))));
        assert!(matches!(
            img.bytes("/a", "", 0o644),
            Err(OciError::Conflict(_))
        ));
        // Replacing a file by a file is fine; so is re-adding a directory.
        img.bytes("/a/f", "new", 0o644).unwrap();
        img.dir("/a", 0o700).unwrap();
        let missing = Image::new(ImageConfig::default())
            .file("/nonexistent/residency-oci-test", "/x", 0o644)
            .unwrap()
            .layer();
        assert!(matches!(missing, Err(OciError::Read { .. })));
    }

    #[test]
    fn names_are_normalised_as_docker_does() {
        for (given, want) in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("residency:dev", "docker.io/library/residency:dev"),
            ("me/app:1", "docker.io/me/app:1"),
            ("residency.test/busybox:1", "residency.test/busybox:1"),
            ("localhost/x", "localhost/x:latest"),
            ("localhost:5000/x:2", "localhost:5000/x:2"),
        ] {
            assert_eq!(normalize_name(given).unwrap(), want, "{given}");
        }
        for bad in ["", "Busybox", "a b", "x//y", "docker.io/"] {
            assert!(normalize_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ldd_output_is_parsed() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f1)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f3)\n";
        assert_eq!(
            parse_ldd(Path::new("/bin/x"), text).unwrap(),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        let missing = "\tlibnope.so.9 => not found\n";
        assert!(matches!(
            parse_ldd(Path::new("/bin/x"), missing),
            Err(OciError::MissingLibrary { library, .. }) if library == "libnope.so.9"
        ));
    }

    #[test]
    fn a_real_dynamic_binary_links_libc_and_the_loader() {
        // The test binary itself is dynamic (glibc) on these machines.
        let me = std::env::current_exe().unwrap();
        let libs = linked_libraries(&me).unwrap();
        assert!(
            libs.iter().any(|l| l.to_string_lossy().contains("libc.so")),
            "{libs:?}"
        );
        assert!(
            libs.iter()
                .any(|l| l.to_string_lossy().contains("ld-linux")),
            "{libs:?}"
        );
        assert!(libs.iter().all(|l| l.is_absolute() && l.exists()));
    }
}
