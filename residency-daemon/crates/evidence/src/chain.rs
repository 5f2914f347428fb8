//! The hash chain and the signed checkpoints: the two things that make the
//! store tamper-evident.
//!
//! Record `n` is stored with
//! `hash(n) = SHA-256("residency-record-v1\0" || n as u64 BE || hash(n-1) || body)`,
//! where `body` is the record's canonical bytes (the exact JSON document the
//! sinks received) and `hash(0)` is 32 zero bytes. Editing, removing,
//! inserting or reordering any record changes every hash after it.
//!
//! A checkpoint signs (Ed25519) the message
//! `"residency-checkpoint-v1\0" || seq as u64 BE || hash(seq) || unix ns as i64 BE`,
//! so the chain head at `seq` cannot be rewritten without the key, and a
//! copy of the checkpoint kept elsewhere (a SIEM) pins it.

use std::{
    fs,
    io::{self, Read as _, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::Path,
};

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest as _, Sha256};

/// A SHA-256 value.
pub type Hash = [u8; 32];

/// The hash before the first record.
pub const GENESIS: Hash = [0; 32];

const RECORD_DOMAIN: &[u8] = b"residency-record-v1\0";
const CHECKPOINT_DOMAIN: &[u8] = b"residency-checkpoint-v1\0";

/// The chain hash of record `seq` with canonical bytes `body`, following
/// `prev`.
#[must_use]
pub fn link(prev: &Hash, seq: u64, body: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(RECORD_DOMAIN);
    h.update(seq.to_be_bytes());
    h.update(prev);
    h.update(body);
    h.finalize().into()
}

/// What a checkpoint signs.
#[must_use]
pub fn checkpoint_message(seq: u64, head: &Hash, time_ns: i64) -> Vec<u8> {
    let mut m = Vec::with_capacity(CHECKPOINT_DOMAIN.len() + 8 + 32 + 8);
    m.extend_from_slice(CHECKPOINT_DOMAIN);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(head);
    m.extend_from_slice(&time_ns.to_be_bytes());
    m
}

/// Signs a checkpoint.
#[must_use]
pub fn sign(key: &SigningKey, seq: u64, head: &Hash, time_ns: i64) -> [u8; 64] {
    key.sign(&checkpoint_message(seq, head, time_ns)).to_bytes()
}

/// Checks a checkpoint's signature.
#[must_use]
pub fn verify(key: &VerifyingKey, seq: u64, head: &Hash, time_ns: i64, signature: &[u8]) -> bool {
    let Ok(sig) = Signature::from_slice(signature) else {
        return false;
    };
    key.verify(&checkpoint_message(seq, head, time_ns), &sig)
        .is_ok()
}

/// A short name for a public key: the first 8 bytes of its SHA-256, hex.
#[must_use]
pub fn key_id(key: &VerifyingKey) -> String {
    hex(&Sha256::digest(key.as_bytes())[..8])
}

/// Lower-case hex.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Parses lower- or upper-case hex of a fixed length.
#[must_use]
pub fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.trim();
    if s.len() != N * 2 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The public key as it is published: standard base64 of its 32 bytes.
#[must_use]
pub fn public_key_text(key: &VerifyingKey) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(key.as_bytes())
}

/// Parses a published public key (base64 or hex of 32 bytes).
///
/// # Errors
/// If the text is neither, or not a valid Ed25519 point.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    use base64::Engine as _;
    let text = text.trim();
    let bytes: [u8; 32] = match unhex::<32>(text) {
        Some(b) => b,
        None => base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| {
                "not a public key: expected 32 bytes in base64 (as /v1/checkpoints/latest serves it) or hex".to_owned()
            })?,
    };
    VerifyingKey::from_bytes(&bytes).map_err(|e| format!("not a valid Ed25519 public key: {e}"))
}

/// Loads the signing key from `path`, or creates one there (mode 0600) if
/// there is none. The file holds the 32-byte secret seed.
///
/// # Errors
/// If the file cannot be read or created, is not 32 bytes, or others than
/// its owner can read it (a key others can read proves nothing).
pub fn load_or_create_key(path: &Path) -> io::Result<(SigningKey, bool)> {
    match fs::File::open(path) {
        Ok(mut f) => {
            let mode = f.metadata()?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{} is readable by group or others (mode {:o}); a signing key others can read proves nothing. Fix it with chmod 600",
                        path.display(),
                        mode & 0o777
                    ),
                ));
            }
            let mut seed = [0u8; 32];
            let mut rest = Vec::new();
            f.read_exact(&mut seed).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("{} is not a residency signing key: {e}", path.display()),
                )
            })?;
            f.read_to_end(&mut rest)?;
            if !rest.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} is not a residency signing key (longer than 32 bytes)",
                        path.display()
                    ),
                ));
            }
            Ok((SigningKey::from_bytes(&seed), false))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| io::Error::other(e.to_string()))?;
            let tmp = path.with_extension("key.new");
            let _ = fs::remove_file(&tmp);
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&seed)?;
            f.sync_all()?;
            fs::rename(&tmp, path)?;
            Ok((SigningKey::from_bytes(&seed), true))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_depends_on_every_input() {
        let a = link(&GENESIS, 1, b"x");
        assert_ne!(a, link(&GENESIS, 2, b"x"), "sequence number");
        assert_ne!(a, link(&[1; 32], 1, b"x"), "previous hash");
        assert_ne!(a, link(&GENESIS, 1, b"y"), "body");
        assert_eq!(a, link(&GENESIS, 1, b"x"));
    }

    #[test]
    fn checkpoints_sign_and_verify() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let head = link(&GENESIS, 1, b"x");
        let sig = sign(&key, 1, &head, 42);
        let public = key.verifying_key();
        assert!(verify(&public, 1, &head, 42, &sig));
        assert!(!verify(&public, 2, &head, 42, &sig));
        assert!(!verify(&public, 1, &GENESIS, 42, &sig));
        assert!(!verify(&public, 1, &head, 43, &sig));
        assert!(!verify(&public, 1, &head, 42, &sig[..63]));
        let text = public_key_text(&public);
        assert_eq!(parse_public_key(&text).unwrap(), public);
        assert_eq!(parse_public_key(&hex(public.as_bytes())).unwrap(), public);
        assert!(parse_public_key("nope").is_err());
    }

    #[test]
    fn key_is_created_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("evidence.key");
        let (k1, created) = load_or_create_key(&path).unwrap();
        assert!(created);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (k2, created) = load_or_create_key(&path).unwrap();
        assert!(!created);
        assert_eq!(k1.to_bytes(), k2.to_bytes());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create_key(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
