//! The TLS device link: TLS over TCP (rustls with its ring provider) carrying the same
//! framing as plain TCP, with a client certificate required.
//!
//! A device proves its id with a certificate that chains to the link's `client_ca_file`; the
//! names it proves are the certificate's subject CN and DNS subject alternative names
//! ([`identity`]). The byte-stream driver then checks the id in the device's `Hello` against
//! them (see [`super::Identity`]). A handshake that fails or does not finish within the
//! configured deadline closes the connection with a warning naming the peer (within the
//! [`Throttle`] of remote events). At most `max_handshakes` run at once; a connection beyond
//! that waits for a slot, and the wait counts in its deadline.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use x509_cert::Certificate;
use x509_cert::der::oid::db::rfc4519;
use x509_cert::der::{Any, Decode, Tag, Tagged};
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;

use super::listener::{self, Caps};
use super::{Identity, LinkEvent, LinkId, stream};
use crate::throttle::Throttle;
use crate::tls::{PemError, pem_certificates, pem_private_key};

/// Names the credential in logs and in the reason a link closed.
const CREDENTIAL: &str = "TLS client certificate";

/// Why a TLS link's settings cannot be used; names the link, the setting and the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkTlsError {
    /// A file named by the link's configuration cannot be read or holds no PEM item of the
    /// kind wanted.
    #[error("link {listen}: {field} {}: {source}", path.display())]
    File {
        listen: SocketAddr,
        field: &'static str,
        path: PathBuf,
        #[source]
        source: PemError,
    },
    /// The client CA file holds certificates, but none that rustls can use as a CA.
    #[error(
        "link {listen}: client_ca_file {}: none of its {ignored} certificates is a usable CA \
         certificate",
        path.display()
    )]
    NoUsableCa {
        listen: SocketAddr,
        path: PathBuf,
        ignored: usize,
    },
    /// rustls refused the settings (a key that does not match the certificate, …).
    #[error("link {listen}: {reason}")]
    Config { listen: SocketAddr, reason: String },
}

/// Why a verified client certificate names no device.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertNameError {
    /// rustls verified it, but it does not parse as an X.509 certificate here.
    #[error("unparsable certificate: {0}")]
    Parse(#[from] x509_cert::der::Error),
    /// Neither a subject CN nor a DNS subject alternative name.
    #[error("the certificate has no subject CN and no DNS subject alternative name")]
    NoName,
}

/// The TLS settings of a link, checked now so that a bad file stops the bridge at start
/// with a message naming it.
pub fn acceptor(
    listen: SocketAddr,
    cert_file: &Path,
    key_file: &Path,
    client_ca_file: &Path,
) -> Result<TlsAcceptor, LinkTlsError> {
    let file_error = |field: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| LinkTlsError::File {
            listen,
            field,
            path,
            source,
        }
    };
    let config_error = |reason: String| LinkTlsError::Config { listen, reason };
    let chain = pem_certificates(cert_file).map_err(file_error("cert_file", cert_file))?;
    let key = pem_private_key(key_file).map_err(file_error("key_file", key_file))?;
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(
        pem_certificates(client_ca_file).map_err(file_error("client_ca_file", client_ca_file))?,
    );
    if added == 0 {
        return Err(LinkTlsError::NoUsableCa {
            listen,
            path: client_ca_file.to_owned(),
            ignored,
        });
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Client authentication is mandatory: the builder is not told to allow anonymous peers.
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| config_error(format!("client_ca_file: {e}")))?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| config_error(format!("cert_file and key_file: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The device ids a client certificate proves: its subject CN(s) and DNS subject
/// alternative names, in that order, without duplicates. Other kinds of names (IP
/// addresses, e-mail, URIs) name no device.
pub fn identity(cert: &CertificateDer<'_>) -> Result<Identity, CertNameError> {
    let cert = Certificate::from_der(cert.as_ref())?;
    let tbs = &cert.tbs_certificate;
    let mut names: Vec<String> = Vec::new();
    let common_names = tbs.subject.0.iter().flat_map(|rdn| rdn.0.iter());
    for attribute in common_names.filter(|a| a.oid == rfc4519::CN) {
        if let Some(name) = directory_string(&attribute.value) {
            names.push(name.to_owned());
        }
    }
    if let Some((_, SubjectAltName(alt))) = tbs.get::<SubjectAltName>()? {
        for name in alt {
            if let GeneralName::DnsName(dns) = name {
                names.push(dns.as_str().to_owned());
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| !n.is_empty() && seen.insert(n.clone()));
    if names.is_empty() {
        return Err(CertNameError::NoName);
    }
    Ok(Identity {
        credential: CREDENTIAL,
        names,
    })
}

/// The text of a DirectoryString as certificates use it for a CN (UTF8String,
/// PrintableString, IA5String; each is valid UTF-8); `None` for the obsolete encodings.
fn directory_string(value: &Any) -> Option<&str> {
    match value.tag() {
        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String => {
            std::str::from_utf8(value.value()).ok()
        }
        _ => None,
    }
}

/// Failed handshakes and certificates naming no device, for every TLS listener of the process:
/// anyone who can connect can cause them.
static HANDSHAKE_FAILURES: Throttle = Throttle::remote_events();

/// What every connection of one TLS listener shares.
#[derive(Clone)]
pub struct Handshakes {
    /// The link's TLS settings (see [`acceptor`]).
    pub acceptor: TlsAcceptor,
    /// From accept to the end of the handshake, waiting for a slot included.
    pub timeout: Duration,
    /// Slots for handshakes in progress (`max_handshakes`): handshakes cost CPU and buffers,
    /// so a flood of them waits here instead of running all at once. Waiting is fair (first
    /// come, first served), and bounded by `timeout`.
    pub slots: Arc<Semaphore>,
}

impl std::fmt::Debug for Handshakes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshakes")
            .field("timeout", &self.timeout)
            .field("free_slots", &self.slots.available_permits())
            .finish_non_exhaustive()
    }
}

impl Handshakes {
    /// `max` handshakes at once, each within `timeout`.
    pub fn new(acceptor: TlsAcceptor, timeout: Duration, max: usize) -> Self {
        Self {
            acceptor,
            timeout,
            slots: Arc::new(Semaphore::new(max)),
        }
    }
}

/// Accepts connections on `listener` forever within `caps`, one task each: handshake (see
/// [`Handshakes`]), then [`stream::run`] with the proven identity. Link ids follow `base`.
pub async fn serve(
    listener: TcpListener,
    base: LinkId,
    caps: Caps,
    core: mpsc::Sender<LinkEvent>,
    handshakes: Handshakes,
) {
    // The handshake runs in the connection's own task, so a slow peer never delays the next
    // accept.
    listener::serve(listener, base, caps, "TLS", move |tcp, peer, link| {
        connection(tcp, peer, link, core.clone(), handshakes.clone())
    })
    .await;
}

/// One connection: a handshake slot, the handshake, identity, then the byte-stream driver.
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    link: LinkId,
    core: mpsc::Sender<LinkEvent>,
    handshakes: Handshakes,
) {
    let timeout = handshakes.timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let failed = |why: &dyn std::fmt::Display, what: &str| {
        crate::metrics::handshake_failed(crate::metrics::LinkKind::Tls);
        if let Some(suppressed) = HANDSHAKE_FAILURES.admit(std::time::Instant::now()) {
            tracing::warn!(link, %peer, error = %why, suppressed, "{what}; connection closed");
        }
    };
    let Ok(Ok(slot)) = tokio::time::timeout_at(deadline, handshakes.slots.acquire_owned()).await
    else {
        failed(
            &format!("all TLS handshake slots busy for {timeout:?} (max_handshakes)"),
            "TLS handshake with a device not finished in time",
        );
        return;
    };
    let tls = match tokio::time::timeout_at(deadline, handshakes.acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            failed(&e, "TLS handshake with a device failed");
            return;
        }
        Err(_) => {
            failed(
                &format!("handshake_timeout {timeout:?}"),
                "TLS handshake with a device not finished in time",
            );
            return;
        }
    };
    drop(slot);
    // The verifier requires a certificate, so a finished handshake has one.
    let proven = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(<[_]>::first)
        .map(identity);
    let identity = match proven {
        Some(Ok(identity)) => identity,
        Some(Err(e)) => {
            failed(&e, "device certificate names no device");
            return;
        }
        None => {
            failed(
                &"no client certificate",
                "TLS handshake with a device failed",
            );
            return;
        }
    };
    tracing::info!(link, %peer, names = ?identity.names, "device certificate verified");
    let config = device_core::link::Config::default();
    stream::run(tls, link, peer.to_string(), Some(identity), core, config).await;
}

#[cfg(test)]
mod tests {
    use rustls_pki_types::pem::PemObject;

    use super::*;

    fn certificate(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    #[test]
    fn the_identity_is_the_subject_cn_and_the_dns_names() {
        let id = identity(&certificate(include_str!("testdata/cn-and-sans.pem"))).unwrap();
        // The IP address and e-mail alternative names are not device ids.
        assert_eq!(id.names, ["dev-a", "dev-a.example", "dev-a-alias"]);
        assert_eq!(id.credential, CREDENTIAL);
        let id = identity(&certificate(include_str!("testdata/san-only.pem"))).unwrap();
        assert_eq!(id.names, ["dev-s"]);
    }

    #[test]
    fn a_certificate_without_a_name_proves_no_identity() {
        let e = identity(&certificate(include_str!("testdata/no-name.pem"))).unwrap_err();
        assert!(matches!(e, CertNameError::NoName), "{e}");
        let e = identity(&CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01])).unwrap_err();
        assert!(matches!(e, CertNameError::Parse(_)), "{e}");
    }

    #[test]
    fn unusable_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let listen = SocketAddr::from(([127, 0, 0, 1], 0));
        let cert = dir.path().join("link.pem");
        std::fs::write(&cert, include_str!("testdata/cn-and-sans.pem")).unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not pem\n").unwrap();
        let missing = dir.path().join("missing.key");
        let error = |cert_file: &Path, key_file: &Path| match acceptor(
            listen, cert_file, key_file, &cert,
        ) {
            Ok(_) => panic!(
                "{} and {} were accepted",
                cert_file.display(),
                key_file.display()
            ),
            Err(e) => e.to_string(),
        };
        let e = error(&garbage, &missing);
        assert!(e.contains("cert_file") && e.contains("garbage.pem"), "{e}");
        let e = error(&cert, &missing);
        assert!(e.contains("key_file") && e.contains("missing.key"), "{e}");
        let e = error(&cert, &garbage);
        assert!(e.contains("key_file") && e.contains("garbage.pem"), "{e}");
    }
}
