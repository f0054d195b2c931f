//! TLS towards an external broker: rustls with its ring provider, the broker's CA from a PEM
//! file, and optionally a client certificate for brokers that require one. The PEM readers
//! here serve the TLS device link (`link::tls`) too.

use std::path::Path;
use std::sync::Arc;

use broker_config::TlsConfig;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why the TLS settings could not be used; names the file or the setting.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("broker.tls: {path}: {reason}")]
    File { path: String, reason: String },
    #[error("broker.tls: {0}")]
    Config(String),
}

fn file_error(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// The rustls client configuration for `t`, checked now so that a bad file stops the bridge
/// at start with a clear message rather than at every reconnection.
pub fn client_config(t: &TlsConfig) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(certificates(&t.ca_file)?);
    if added == 0 {
        return Err(file_error(
            &t.ca_file,
            format!("none of its {ignored} certificates is a usable CA certificate"),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&t.client_cert, &t.client_key) {
        (Some(cert), Some(key)) => {
            let key = pem_private_key(key).map_err(|e| file_error(key, e))?;
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
    pem_certificates(path).map_err(|e| file_error(path, e))
}

/// Every certificate of a PEM file (at least one), or why not; the caller names the file.
pub fn pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    Ok(certs)
}

/// The first private key of a PEM file, or why not; the caller names the file.
pub fn pem_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| e.to_string())
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
}
