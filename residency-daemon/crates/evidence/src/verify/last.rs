//! The note a verification of a store leaves beside it
//! (`last-verify.json`), which the dashboard shows: when, how many records,
//! and whether any fault was found.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Report;

/// The file, in the store's directory, where the last verification of the
/// store left its outcome (the dashboard shows it).
pub const LAST_VERIFY: &str = "last-verify.json";

/// The outcome of the last `residency evidence verify` of a store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LastVerify {
    pub at: jiff::Timestamp,
    pub ok: bool,
    pub records: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_signed_seq: Option<u64>,
    pub faults: u64,
    /// The first fault, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_fault: Option<String>,
    pub seconds: f64,
}

impl LastVerify {
    #[must_use]
    pub fn of(report: &Report) -> Self {
        LastVerify {
            at: jiff::Timestamp::now(),
            ok: report.ok(),
            records: report.records,
            first_seq: report.first_seq,
            last_seq: report.last_seq,
            last_signed_seq: report.last_signed_seq,
            faults: report.faults.len() as u64 + report.more_faults,
            first_fault: report.faults.first().map(|f| match f.seq {
                Some(seq) => format!("record {seq}: {}", f.what),
                None => f.what.clone(),
            }),
            seconds: report.elapsed.as_secs_f64(),
        }
    }

    /// Writes it to `dir` (replaced whole).
    ///
    /// # Errors
    /// If the file cannot be written.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let tmp = dir.join(format!("{LAST_VERIFY}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, dir.join(LAST_VERIFY))
    }

    /// What the last verification of the store in `dir` left (`None`:
    /// never verified, or the file is unreadable).
    #[must_use]
    pub fn load(dir: &Path) -> Option<Self> {
        serde_json::from_slice(&std::fs::read(dir.join(LAST_VERIFY)).ok()?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_verify_leaves_is_read_back_and_a_bad_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(LastVerify::load(dir.path()), None, "never verified");
        let v = LastVerify {
            at: "2026-12-07T18:00:00Z".parse().unwrap(),
            ok: false,
            records: 10,
            first_seq: Some(1),
            last_seq: Some(10),
            last_signed_seq: Some(8),
            faults: 2,
            first_fault: Some("record 4: hash".into()),
            seconds: 0.5,
        };
        v.save(dir.path()).unwrap();
        assert_eq!(LastVerify::load(dir.path()), Some(v));
        std::fs::write(dir.path().join(LAST_VERIFY), "{not json").unwrap();
        assert_eq!(LastVerify::load(dir.path()), None);
    }
}
