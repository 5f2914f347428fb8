//! Appending to a local file, for a SIEM agent that tails it (or for
//! operators who want alerts on disk).

use std::{
    fs::{File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use super::TransportError;

/// The open file and the identity (device, inode) it had when opened.
#[derive(Debug)]
struct Open {
    file: File,
    id: (u64, u64),
}

impl Open {
    fn new(path: &Path) -> io::Result<Open> {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            // Alerts name hosts and processes: not for every local user.
            .mode(0o640)
            .open(path)?;
        let meta = file.metadata()?;
        Ok(Open {
            file,
            id: (meta.dev(), meta.ino()),
        })
    }

    /// Whether `path` still names this file: logrotate (or an operator)
    /// may have renamed or deleted it, and writing on would go nowhere
    /// anyone reads.
    fn still_at(&self, path: &Path) -> bool {
        std::fs::metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == self.id)
    }
}

/// Appends lines to a file.
#[derive(Debug)]
pub struct FileSender {
    path: PathBuf,
    fsync: bool,
    open: Option<Open>,
}

impl FileSender {
    /// A sender to `path`, created (mode 0640, less the umask) if it does
    /// not exist. Nothing is opened until the first
    /// [`send`](Self::send).
    #[must_use]
    pub fn new(path: PathBuf) -> Self {
        FileSender {
            path,
            fsync: false,
            open: None,
        }
    }

    /// Whether each batch is synced to disk before [`send`](Self::send)
    /// returns (slower; survives a crash of the machine, not just of the
    /// daemon).
    #[must_use]
    pub fn with_fsync(mut self, fsync: bool) -> Self {
        self.fsync = fsync;
        self
    }

    /// Appends one batch: each line followed by a newline (unless it ends
    /// with one already), all in one write to a file opened with
    /// `O_APPEND`, so that lines of other writers never land inside a
    /// batch. If the file was rotated away (renamed or deleted) since the
    /// last batch, a new one is created at the path.
    ///
    /// A failed write (e.g. the disk filled up) may have left part of the
    /// batch in the file; the retried batch then follows it in full.
    ///
    /// # Errors
    /// [`TransportError::Io`] if the file cannot be opened or written.
    pub async fn send(&mut self, lines: &[Vec<u8>]) -> Result<(), TransportError> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut batch = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
        for line in lines {
            batch.extend_from_slice(line);
            if !line.ends_with(b"\n") {
                batch.push(b'\n');
            }
        }
        let open = self.open.take();
        let path = self.path.clone();
        let fsync = self.fsync;
        let (result, open) =
            tokio::task::spawn_blocking(move || write_batch(&path, open, &batch, fsync))
                .await
                .map_err(|e| TransportError::Io {
                    target: self.path.display().to_string(),
                    source: io::Error::other(e),
                })?;
        self.open = open;
        result.map_err(|source| TransportError::Io {
            target: self.path.display().to_string(),
            source,
        })
    }
}

/// Writes on a blocking thread; gives back the open file unless it failed.
fn write_batch(
    path: &Path,
    open: Option<Open>,
    batch: &[u8],
    fsync: bool,
) -> (io::Result<()>, Option<Open>) {
    let open = match open {
        Some(open) if open.still_at(path) => Ok(open),
        _ => Open::new(path),
    };
    let mut open = match open {
        Ok(open) => open,
        Err(e) => return (Err(e), None),
    };
    let written = open
        .file
        .write_all(batch)
        .and_then(|()| if fsync { open.file.sync_data() } else { Ok(()) });
    match written {
        Ok(()) => (Ok(()), Some(open)),
        Err(e) => (Err(e), None),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[tokio::test]
    async fn appends_lines_to_a_new_file_readable_only_by_owner_and_group() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerts.log");
        let mut sender = FileSender::new(path.clone()).with_fsync(true);
        sender
            .send(&[b"one".to_vec(), b"two\n".to_vec()])
            .await
            .unwrap();
        sender.send(&[b"three".to_vec()]).await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\ntwo\nthree\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & !0o640, 0, "mode {mode:o}");
    }

    #[tokio::test]
    async fn appends_to_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerts.log");
        std::fs::write(&path, "earlier\n").unwrap();
        FileSender::new(path.clone())
            .send(&[b"later".to_vec()])
            .await
            .unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "earlier\nlater\n");
    }

    #[tokio::test]
    async fn a_rotated_or_deleted_file_is_created_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerts.log");
        let rotated = dir.path().join("alerts.log.1");
        let mut sender = FileSender::new(path.clone());
        sender.send(&[b"first".to_vec()]).await.unwrap();
        std::fs::rename(&path, &rotated).unwrap();
        sender.send(&[b"second".to_vec()]).await.unwrap();
        assert_eq!(std::fs::read_to_string(&rotated).unwrap(), "first\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "second\n");
        std::fs::remove_file(&path).unwrap();
        sender.send(&[b"third".to_vec()]).await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "third\n");
    }

    #[tokio::test]
    async fn a_file_that_cannot_be_opened_is_an_io_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-dir").join("alerts.log");
        let err = FileSender::new(path.clone())
            .send(&[b"x".to_vec()])
            .await
            .unwrap_err();
        assert!(matches!(err, TransportError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
    }
}
