//! TLS towards an external broker: rustls with its ring provider, the broker's CA from a PEM
//! file, and optionally a client certificate for brokers that require one. The PEM readers
//! here serve the TLS device link (`link::tls`) too.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use broker_config::TlsConfig;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why the TLS settings could not be used; names the file or the setting.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A CA, certificate or key file cannot be read or holds no PEM item of the kind wanted.
    #[error("broker.tls: {}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: PemError,
    },
    /// The CA file holds certificates, but none that rustls can use as a CA.
    #[error(
        "broker.tls: {}: none of its {ignored} certificates is a usable CA certificate",
        path.display()
    )]
    NoUsableCa { path: PathBuf, ignored: usize },
    /// rustls refused the settings (a client key that does not match its certificate, …).
    #[error("broker.tls: {0}")]
    Config(String),
}

/// Why a PEM file yields nothing usable; the caller names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PemError {
    /// The file cannot be read, a PEM section in it is malformed, or it holds no item of the
    /// kind wanted (a private key).
    #[error(transparent)]
    Pem(#[from] rustls_pki_types::pem::Error),
    /// The file holds no certificate.
    #[error("no PEM certificate in it")]
    NoCertificate,
}

fn file_error(path: &Path) -> impl FnOnce(PemError) -> TlsError {
    let path = path.to_owned();
    move |source| TlsError::File { path, source }
}

/// The rustls client configuration for `t`, checked now so that a bad file stops the bridge
/// at start with a clear message rather than at every reconnection.
pub fn client_config(t: &TlsConfig) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(certificates(&t.ca_file)?);
    if added == 0 {
        return Err(TlsError::NoUsableCa {
            path: t.ca_file.clone(),
            ignored,
        });
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&t.client_cert, &t.client_key) {
        (Some(cert), Some(key)) => {
            let key = pem_private_key(key).map_err(file_error(key))?;
            builder
                .with_client_auth_cert(certificates(cert)?, key)
                .map_err(|e| TlsError::Config(format!("client certificate: {e}")))?
        }
        // Configuration validation requires both or neither.
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Every certificate of a PEM file; at least one.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    pem_certificates(path).map_err(file_error(path))
}

/// Every certificate of a PEM file (at least one), or why not; the caller names the file.
pub fn pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_file_iter(path)?.collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate);
    }
    Ok(certs)
}

/// The first private key of a PEM file, or why not; the caller names the file.
pub fn pem_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    Ok(PrivateKeyDer::from_pem_file(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = TlsConfig {
            ca_file: dir.path().join("nope.pem"),
            client_cert: None,
            client_key: None,
        };
        let e = client_config(&missing).unwrap_err().to_string();
        assert!(e.contains("nope.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = client_config(&TlsConfig {
            ca_file: empty,
            client_cert: None,
            client_key: None,
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("empty.pem") && e.contains("no PEM certificate"),
            "{e}"
        );
    }

    #[test]
    fn a_ca_file_without_a_usable_certificate_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("not-a-ca.pem");
        // A PEM certificate block whose bytes are not a certificate.
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = client_config(&TlsConfig {
            ca_file: ca.clone(),
            client_cert: None,
            client_key: None,
        })
        .unwrap_err();
        assert!(matches!(e, TlsError::NoUsableCa { ignored: 1, .. }), "{e}");
        assert_eq!(
            e.to_string(),
            format!(
                "broker.tls: {}: none of its 1 certificates is a usable CA certificate",
                ca.display()
            )
        );
        let missing = dir.path().join("missing.pem");
        let e = client_config(&TlsConfig {
            ca_file: missing,
            client_cert: None,
            client_key: None,
        })
        .unwrap_err();
        assert!(matches!(e, TlsError::File { .. }), "{e}");
        assert!(std::error::Error::source(&e).is_some());
    }
}
