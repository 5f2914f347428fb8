//! The TLS client configuration every network transport shares: which CAs
//! to trust, and the client certificate to present when the receiver asks
//! for one (mutual TLS).

use std::{fs, path::Path, path::PathBuf, sync::Arc};

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{
    CertificateDer, PrivateKeyDer,
    pem::{self, PemObject as _},
};

use super::TransportError;

/// The TLS files of a sink, as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA bundle (PEM, one or more certificates) that signs the receiver's
    /// certificate. Without it, the system's CA certificates are trusted.
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM, leaf first), for receivers that
    /// require mutual TLS. Needs `key`.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// The name the receiver's certificate must carry, when it differs
    /// from the host in the address or URL (e.g. when connecting by IP).
    pub server_name: Option<String>,
}

/// Builds the client configuration for `files`: ring as the crypto
/// provider (named explicitly, so that no process-wide default is needed),
/// TLS 1.2 and 1.3.
///
/// Reads the files now, so that a broken file is reported when the sink
/// starts rather than at its first connection.
///
/// # Errors
/// [`TransportError::TlsFile`] naming the file and what is wrong with it;
/// [`TransportError::Config`] for a certificate without a key (or the
/// reverse), or when no CA file is given and the system has no CA
/// certificates.
pub fn client_tls(files: &TlsFiles) -> Result<Arc<ClientConfig>, TransportError> {
    let roots = match &files.ca {
        Some(path) => ca_file_roots(path)?,
        None => system_roots()?,
    };
    let builder = builder()?.with_root_certificates(roots);
    let config = match (&files.cert, &files.key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = certificates(cert)?;
            let private_key = private_key(key)?;
            builder
                .with_client_auth_cert(chain, private_key)
                .map_err(|e| client_cert_error(cert, key, &e))?
        }
        (Some(cert), None) => {
            return Err(TransportError::Config(format!(
                "client certificate {} is given without its key: set the key file too",
                cert.display()
            )));
        }
        (None, Some(key)) => {
            return Err(TransportError::Config(format!(
                "client key {} is given without its certificate: set the certificate file too",
                key.display()
            )));
        }
    };
    Ok(Arc::new(config))
}

type WantsVerifier = rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>;

fn builder() -> Result<WantsVerifier, TransportError> {
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TransportError::Config(format!("TLS versions: {e}")))
}

/// A configuration that trusts no one: for an HTTP sink that names no CA
/// file on a system without CA certificates, which can still send to
/// `http://` URLs.
pub(super) fn trust_nothing() -> Result<Arc<ClientConfig>, TransportError> {
    Ok(Arc::new(
        builder()?
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth(),
    ))
}

fn file_error(path: &Path, problem: impl Into<String>) -> TransportError {
    TransportError::TlsFile {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TransportError> {
    fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => file_error(path, "does not exist"),
        std::io::ErrorKind::PermissionDenied => {
            file_error(path, "cannot be read (permission denied)")
        }
        _ => file_error(path, format!("cannot be read: {e}")),
    })
}

/// Says what is wrong with a PEM file in words an operator can act on.
fn pem_problem(e: &pem::Error, wanted: &str) -> String {
    match e {
        pem::Error::NoItemsFound => format!("no {wanted} in it (expected PEM)"),
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "a PEM block is cut short (no {} line)",
            String::from_utf8_lossy(end_marker)
        ),
        pem::Error::IllegalSectionStart { line } => {
            format!("malformed PEM line {:?}", String::from_utf8_lossy(line))
        }
        pem::Error::Base64Decode(e) => format!("a PEM block is not valid base64: {e}"),
        other => format!("not readable as PEM: {other}"),
    }
}

/// The certificates in a PEM file, in order.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, pem_problem(&e, "certificate")))?;
    if certs.is_empty() {
        let hint = if bytes.starts_with(&[0x30]) {
            " (it looks like DER: convert it with `openssl x509 -inform der -in FILE -out FILE.pem`)"
        } else {
            " (expected PEM blocks starting with -----BEGIN CERTIFICATE-----)"
        };
        return Err(file_error(path, format!("no certificate in it{hint}")));
    }
    Ok(certs)
}

fn ca_file_roots(path: &Path) -> Result<RootCertStore, TransportError> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in certificates(path)?.into_iter().enumerate() {
        roots.add(cert).map_err(|e| {
            file_error(
                path,
                format!("certificate {} cannot be used as a CA: {e}", i + 1),
            )
        })?;
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, TransportError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return Err(TransportError::Config(format!(
            "no CA file is configured and the system has no CA certificates{why}: \
             set the sink's CA file, or install the system's CA certificates (ca-certificates)"
        )));
    }
    Ok(roots)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TransportError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        let text = String::from_utf8_lossy(&bytes);
        if matches!(e, pem::Error::NoItemsFound) && text.contains("ENCRYPTED") {
            file_error(
                path,
                "the private key is encrypted: give an unencrypted key (e.g. `openssl pkey -in KEY -out KEY.plain`)",
            )
        } else {
            file_error(
                path,
                pem_problem(
                    &e,
                    "private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)",
                ),
            )
        }
    })
}

fn client_cert_error(cert: &Path, key: &Path, e: &rustls::Error) -> TransportError {
    match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            TransportError::TlsFile {
                path: key.to_path_buf(),
                problem: format!("does not match the certificate {}", cert.display()),
            }
        }
        rustls::Error::General(_) => {
            file_error(key, format!("the key cannot be used for TLS: {e}"))
        }
        _ => file_error(
            cert,
            format!("cannot be used with the key {}: {e}", key.display()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::testing::Pki;

    fn file_problem(files: &TlsFiles) -> (PathBuf, String) {
        match client_tls(files).unwrap_err() {
            TransportError::TlsFile { path, problem } => (path, problem),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_ca_file_without_certificates_is_named_and_explained() {
        let pki = Pki::new();
        let ca = pki.dir.path().join("empty-ca.pem");
        fs::write(&ca, "not a certificate\n").unwrap();
        let files = TlsFiles {
            ca: Some(ca.clone()),
            ..TlsFiles::default()
        };
        let (path, problem) = file_problem(&files);
        assert_eq!(path, ca);
        assert!(problem.contains("no certificate in it"), "{problem}");
        let err = client_tls(&files).unwrap_err();
        assert!(!err.retryable());
        assert!(err.to_string().contains(&*ca.to_string_lossy()), "{err}");
    }

    #[test]
    fn a_der_ca_file_gets_a_conversion_hint() {
        let pki = Pki::new();
        let der = pki.dir.path().join("ca.der");
        let pem = fs::read(&pki.ca).unwrap();
        let cert = CertificateDer::pem_slice_iter(&pem)
            .next()
            .unwrap()
            .unwrap();
        fs::write(&der, cert.as_ref()).unwrap();
        let (_, problem) = file_problem(&TlsFiles {
            ca: Some(der),
            ..TlsFiles::default()
        });
        assert!(problem.contains("openssl x509 -inform der"), "{problem}");
    }

    #[test]
    fn a_missing_file_says_so() {
        let pki = Pki::new();
        let gone = pki.dir.path().join("gone.pem");
        let (path, problem) = file_problem(&TlsFiles {
            ca: Some(gone.clone()),
            ..TlsFiles::default()
        });
        assert_eq!((path, problem.as_str()), (gone, "does not exist"));
    }

    #[test]
    fn a_ca_bundle_may_hold_several_certificates() {
        let pki = Pki::new();
        let bundle = pki.dir.path().join("bundle.pem");
        let mut text = fs::read_to_string(pki.other_ca()).unwrap();
        text.push_str(&fs::read_to_string(&pki.ca).unwrap());
        fs::write(&bundle, text).unwrap();
        let roots = ca_file_roots(&bundle).unwrap();
        assert_eq!(roots.len(), 2);
    }

    #[test]
    fn a_key_that_does_not_match_the_certificate_is_named() {
        let pki = Pki::new();
        let other_key = pki.dir.path().join("other.key");
        fs::write(
            &other_key,
            rcgen::KeyPair::generate().unwrap().serialize_pem(),
        )
        .unwrap();
        let (path, problem) = file_problem(&TlsFiles {
            key: Some(other_key.clone()),
            ..pki.files(true)
        });
        assert_eq!(path, other_key);
        assert!(
            problem.contains("does not match the certificate"),
            "{problem}"
        );
    }

    #[test]
    fn a_key_file_without_a_key_is_explained() {
        let pki = Pki::new();
        let (path, problem) = file_problem(&TlsFiles {
            key: Some(pki.client_cert.clone()),
            ..pki.files(true)
        });
        assert_eq!(path, pki.client_cert);
        assert!(problem.contains("no private key"), "{problem}");

        let encrypted = pki.dir.path().join("encrypted.key");
        fs::write(
            &encrypted,
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
        )
        .unwrap();
        let (_, problem) = file_problem(&TlsFiles {
            key: Some(encrypted),
            ..pki.files(true)
        });
        assert!(problem.contains("encrypted"), "{problem}");
    }

    #[test]
    fn a_certificate_needs_its_key_and_the_reverse() {
        let pki = Pki::new();
        for files in [
            TlsFiles {
                key: None,
                ..pki.files(true)
            },
            TlsFiles {
                cert: None,
                ..pki.files(true)
            },
        ] {
            let err = client_tls(&files).unwrap_err();
            assert!(matches!(err, TransportError::Config(_)), "{err:?}");
            assert!(!err.retryable());
        }
    }

    #[test]
    fn a_complete_configuration_loads() {
        let pki = Pki::new();
        let config = client_tls(&pki.files(true)).unwrap();
        assert!(config.client_auth_cert_resolver.has_certs());
        let config = client_tls(&pki.files(false)).unwrap();
        assert!(!config.client_auth_cert_resolver.has_certs());
    }
}
