//! TEMPORARY stub (replaced by the runtime branch's CRI reader).
#![allow(clippy::unused_async, clippy::missing_errors_doc)]
use std::{collections::BTreeMap, path::Path, time::Duration};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pod {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub sandbox_id: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub created_ns: i64,
}
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    pub pod_uid: String,
    pub sandbox_id: String,
    pub name: String,
    pub image: String,
}
#[derive(Debug)]
pub struct CriError(pub String);
impl std::fmt::Display for CriError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for CriError {}
pub struct Cri;
impl Cri {
    pub async fn connect(_socket: &Path, _timeout: Duration) -> Result<Cri, CriError> {
        Err(CriError("stub".into()))
    }
    pub async fn version(&mut self) -> Result<String, CriError> {
        Err(CriError("stub".into()))
    }
    pub async fn pods(&mut self) -> Result<Vec<Pod>, CriError> {
        Err(CriError("stub".into()))
    }
    pub async fn containers(&mut self) -> Result<Vec<Container>, CriError> {
        Err(CriError("stub".into()))
    }
}
