//! Which files may decide policy: the configuration and the `GeoIP`
//! databases, when the daemon runs locked (the default for a configuration
//! file; `--allow-insecure-config` turns it off for development).
//!
//! A file is trusted when root owns it and neither its group nor others can
//! write it, and the same holds for every directory on the way to it, both
//! as named and after symlinks are followed (whoever can write a directory
//! can rename another file into place). A sticky directory such as `/tmp`
//! passes: others cannot rename or remove root's files there. The checks
//! run on the open file, so it cannot be swapped between check and read.

use std::{
    fs::File,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

/// Why a file is not trusted.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot read the file: {source}")]
    Io { source: std::io::Error },
    #[error("cannot check directory {}: {source}", path.display())]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{what} is owned by uid {uid}, not root: its owner can change the policy; \
         `chown root:root` it, or keep the file in a root-owned directory such as /etc/residency \
         (or pass --allow-insecure-config while developing)"
    )]
    Owner { what: String, uid: u32 },
    #[error(
        "{what} is writable by its group or by everyone (mode {mode:o}), so they can change the \
         policy; `chmod go-w` it (or pass --allow-insecure-config while developing)"
    )]
    Writable { what: String, mode: u32 },
}

fn io(source: std::io::Error) -> TrustError {
    TrustError::Io { source }
}

/// Opens `path` for reading if it is trusted.
///
/// # Errors
/// A [`TrustError`] naming the file or directory at fault and the fix.
pub fn open(path: &Path) -> Result<File, TrustError> {
    let absolute = std::path::absolute(path).map_err(io)?;
    let resolved = std::fs::canonicalize(path).map_err(io)?;
    for chain in [&absolute, &resolved] {
        for dir in chain.ancestors().skip(1) {
            let meta = std::fs::metadata(dir).map_err(|source| TrustError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
            let what = || format!("directory {}", dir.display());
            if meta.uid() != 0 {
                return Err(TrustError::Owner {
                    what: what(),
                    uid: meta.uid(),
                });
            }
            let mode = meta.permissions().mode();
            if mode & 0o022 != 0 && mode & 0o1000 == 0 {
                return Err(TrustError::Writable {
                    what: what(),
                    mode: mode & 0o7777,
                });
            }
        }
    }
    let file = File::open(&resolved).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if meta.uid() != 0 {
        return Err(TrustError::Owner {
            what: "the file".to_owned(),
            uid: meta.uid(),
        });
    }
    let mode = meta.permissions().mode();
    if mode & 0o022 != 0 {
        return Err(TrustError::Writable {
            what: "the file".to_owned(),
            mode: mode & 0o7777,
        });
    }
    Ok(file)
}

/// Checks `path` without keeping it open (for files another library maps).
///
/// # Errors
/// As [`open`].
pub fn check(path: &Path) -> Result<(), TrustError> {
    open(path).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_others_can_change() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("residency.toml");
        std::fs::write(&file, "x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        if nix::unistd::Uid::effective().is_root() {
            open(&file).expect("root's file in root's directory under sticky /tmp");
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o664)).unwrap();
            assert!(matches!(open(&file), Err(TrustError::Writable { .. })));
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
            let e = open(&file).unwrap_err();
            assert!(
                e.to_string().contains(&dir.path().display().to_string()),
                "names the directory: {e}"
            );
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
            nix::unistd::chown(&file, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
            assert!(matches!(
                open(&file),
                Err(TrustError::Owner { uid: 65534, .. })
            ));
        } else {
            // Not root: the temporary directory is ours, not root's.
            assert!(matches!(open(&file), Err(TrustError::Owner { .. })));
        }
        assert!(matches!(
            open(&dir.path().join("missing.toml")),
            Err(TrustError::Io { .. })
        ));
    }
}
