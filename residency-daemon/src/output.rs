//! The output: every record as one JSON line, to standard output or a
//! file (`[output]`), written and flushed a batch at a time. It is the
//! first thing the pipeline's writer hands a batch to; the evidence store
//! gets the same bytes next.

use std::{
    io,
    path::{Path, PathBuf},
};

use residency_config::{ConfigError, Locator, Spanned};
use serde::Deserialize;
use tokio::io::{AsyncWrite, AsyncWriteExt as _, BufWriter};

/// `[output]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutput {
    events: Option<Spanned<String>>,
}

/// Where flow records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Stdout,
    /// Appended to, created if missing.
    File(PathBuf),
}

impl Output {
    /// Validates `[output]`.
    ///
    /// # Errors
    /// A [`ConfigError`] for an empty `events`.
    pub fn validate(raw: &RawOutput, at: &Locator<'_>) -> Result<Self, ConfigError> {
        Ok(match &raw.events {
            None => Output::Stdout,
            Some(s) if s.get_ref() == "-" => Output::Stdout,
            Some(s) if s.get_ref().is_empty() => {
                return Err(at.err(
                    s.span(),
                    "output.events",
                    "is empty; use \"-\" for standard output or a file path",
                ));
            }
            Some(s) => Output::File(PathBuf::from(s.get_ref())),
        })
    }
}

/// Where JSON lines go. Each batch is written and flushed as a whole, so a
/// reader of the file sees complete lines within one batch of the kernel.
pub struct JsonLines {
    out: BufWriter<Box<dyn AsyncWrite + Send + Unpin>>,
    name: String,
}

/// Failure to write records: the daemon stops rather than lose them quietly.
#[derive(Debug, thiserror::Error)]
#[error("cannot write records to {name}: {source}")]
pub struct WriteError {
    pub name: String,
    #[source]
    pub source: io::Error,
}

impl JsonLines {
    /// Opens the configured output (a file is created if missing and
    /// appended to; mode 0640).
    ///
    /// # Errors
    /// If the file cannot be opened.
    pub async fn open(output: &Output) -> Result<Self, WriteError> {
        let (out, name): (Box<dyn AsyncWrite + Send + Unpin>, String) = match output {
            Output::Stdout => (Box::new(tokio::io::stdout()), "standard output".to_owned()),
            Output::File(path) => (
                Box::new(open_append(path).await.map_err(|source| WriteError {
                    name: path.display().to_string(),
                    source,
                })?),
                path.display().to_string(),
            ),
        };
        Ok(JsonLines {
            out: BufWriter::with_capacity(256 * 1024, out),
            name,
        })
    }

    /// Writes a batch of complete lines and flushes it.
    ///
    /// # Errors
    /// If the output refuses the bytes (disk full, closed pipe).
    pub async fn write_batch(&mut self, lines: &[u8]) -> Result<(), WriteError> {
        if lines.is_empty() {
            return Ok(());
        }
        let res = async {
            self.out.write_all(lines).await?;
            self.out.flush().await
        }
        .await;
        res.map_err(|source| WriteError {
            name: self.name.clone(),
            source,
        })
    }
}

async fn open_append(path: &Path) -> io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .await
}
