//! What a side needs before its first handshake: suites, keys, certificates, trust anchors,
//! and the signature schemes used with them.
//!
//! Certificates are verified by webpki and keys used through rustls's ring signing keys (both
//! already in the bridge for TLS): this crate does the DTLS framing and key schedule, not
//! X.509 or signature arithmetic.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::SignatureScheme;
use rustls::sign::SigningKey;
use rustls_pki_types::SignatureVerificationAlgorithm;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, TrustAnchor, UnixTime};
use webpki::ring as algs;

use crate::crypto::Suite;

/// Looks up the key of a PSK identity; `None` for an unknown identity.
pub type PskLookup = Arc<dyn Fn(&[u8]) -> Option<Vec<u8>> + Send + Sync>;

/// A certificate chain (end entity first) and its private key.
#[derive(Clone, Debug)]
pub struct Certified {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<dyn SigningKey>,
}

/// Trust anchors: the CAs whose certificates a peer's chain must lead to.
#[derive(Clone, Debug)]
pub struct Roots {
    pub anchors: Vec<TrustAnchor<'static>>,
}

/// Why certificates, keys or anchors could not be loaded; names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file cannot be read or holds no PEM object of the kind needed.
    #[error("{}: {source}", path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The file holds no certificate.
    #[error("{}: no certificate in the file", path.display())]
    NoCertificate { path: PathBuf },
    /// The key is of a kind this implementation cannot sign with.
    #[error("{}: unusable private key: {source}", path.display())]
    Key {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    /// The key is not the one of the certificate's public key.
    #[error("{}: the private key does not match the certificate", path.display())]
    KeyMismatch { path: PathBuf },
    /// A certificate cannot be parsed or used as a trust anchor.
    #[error("{}: {source:?}", path.display())]
    Certificate {
        path: PathBuf,
        source: webpki::Error,
    },
}

impl LoadError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Self::Pem { path, .. }
            | Self::NoCertificate { path }
            | Self::Key { path, .. }
            | Self::KeyMismatch { path }
            | Self::Certificate { path, .. } => path,
        }
    }
}

impl Certified {
    /// Reads a PEM chain and a PEM private key (PKCS#8, SEC1 or PKCS#1) and checks that they
    /// belong together.
    pub fn from_pem_files(chain: &Path, key: &Path) -> Result<Self, LoadError> {
        let pem = |path: &Path| {
            let path = path.to_owned();
            move |source| LoadError::Pem { path, source }
        };
        let certs = CertificateDer::pem_file_iter(chain)
            .map_err(pem(chain))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem(chain))?;
        if certs.is_empty() {
            return Err(LoadError::NoCertificate {
                path: chain.to_owned(),
            });
        }
        let der = PrivateKeyDer::from_pem_file(key).map_err(pem(key))?;
        let signing = rustls::crypto::ring::sign::any_supported_type(&der).map_err(|source| {
            LoadError::Key {
                path: key.to_owned(),
                source,
            }
        })?;
        let ee = webpki::EndEntityCert::try_from(&certs[0]).map_err(|source| {
            LoadError::Certificate {
                path: chain.to_owned(),
                source,
            }
        })?;
        let matches = signing
            .public_key()
            .is_some_and(|spki| spki.as_ref() == ee.subject_public_key_info().as_ref());
        if !matches {
            return Err(LoadError::KeyMismatch {
                path: key.to_owned(),
            });
        }
        Ok(Self {
            chain: certs,
            key: signing,
        })
    }

    /// Whether the key signs with ECDSA (else RSA).
    pub fn is_ecdsa(&self) -> bool {
        self.key.algorithm() == rustls::SignatureAlgorithm::ECDSA
    }
}

impl Roots {
    /// Every certificate of a PEM file, each a trust anchor.
    pub fn from_pem_file(path: &Path) -> Result<Self, LoadError> {
        let pem = |source| LoadError::Pem {
            path: path.to_owned(),
            source,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(pem)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem)?;
        if certs.is_empty() {
            return Err(LoadError::NoCertificate {
                path: path.to_owned(),
            });
        }
        let anchors = certs
            .iter()
            .map(|c| webpki::anchor_from_trusted_cert(c).map(|a| a.to_owned()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| LoadError::Certificate {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self { anchors })
    }
}

/// The wall clock certificates are checked against (a parameter, so tests can move it).
pub type Clock = fn() -> UnixTime;

/// A server's settings.
#[derive(Clone)]
pub struct ServerConfig {
    /// In preference order.
    pub suites: Vec<Suite>,
    pub psk: Option<PskLookup>,
    /// The server's certificate: the ECDHE suites need it.
    pub certificate: Option<Certified>,
    /// The CAs of client certificates. With certificate suites a client must present a
    /// certificate leading to one of them (the certificate is what names the device).
    pub client_roots: Option<Roots>,
    /// The largest datagram sent.
    pub mtu: u16,
    pub clock: Clock,
}

/// A client's settings.
#[derive(Clone)]
pub struct ClientConfig {
    pub suites: Vec<Suite>,
    /// The PSK identity and key.
    pub psk: Option<(Vec<u8>, Vec<u8>)>,
    /// The client's certificate, sent when the server asks for one.
    pub certificate: Option<Certified>,
    /// The CAs the server's certificate must lead to: the ECDHE suites need them.
    pub server_roots: Option<Roots>,
    /// The name the server's certificate must carry; not checked when `None`.
    pub server_name: Option<ServerName<'static>>,
    pub mtu: u16,
    pub clock: Clock,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("suites", &self.suites)
            .field("psk", &self.psk.is_some())
            .field("certificate", &self.certificate.is_some())
            .field("client_roots", &self.client_roots.is_some())
            .field("mtu", &self.mtu)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("suites", &self.suites)
            .field("psk identity", &self.psk.as_ref().map(|(id, _)| id))
            .field("certificate", &self.certificate.is_some())
            .field("server_name", &self.server_name)
            .field("mtu", &self.mtu)
            .finish_non_exhaustive()
    }
}

/// The signature schemes this side verifies and offers, best first: ECDSA over P-256 and
/// P-384, RSA-PSS, then RSA PKCS#1 (no SHA-1).
pub const SCHEMES: [u16; 8] = [
    0x0403, 0x0503, 0x0804, 0x0805, 0x0806, 0x0401, 0x0501, 0x0601,
];

/// The verification algorithms of chains (every signature a CA may have used).
pub static CHAIN_ALGORITHMS: &[&dyn SignatureVerificationAlgorithm] = &[
    algs::ECDSA_P256_SHA256,
    algs::ECDSA_P256_SHA384,
    algs::ECDSA_P384_SHA256,
    algs::ECDSA_P384_SHA384,
    algs::ED25519,
    algs::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
    algs::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
    algs::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
    algs::RSA_PKCS1_2048_8192_SHA256,
    algs::RSA_PKCS1_2048_8192_SHA384,
    algs::RSA_PKCS1_2048_8192_SHA512,
];

/// The algorithms a TLS 1.2 signature scheme may mean: TLS 1.2's ECDSA schemes name the hash,
/// not the curve, so either curve's key may have signed.
fn algorithms(scheme: u16) -> Vec<&'static dyn SignatureVerificationAlgorithm> {
    match scheme {
        0x0403 => vec![algs::ECDSA_P256_SHA256, algs::ECDSA_P384_SHA256],
        0x0503 => vec![algs::ECDSA_P384_SHA384, algs::ECDSA_P256_SHA384],
        0x0804 => vec![algs::RSA_PSS_2048_8192_SHA256_LEGACY_KEY],
        0x0805 => vec![algs::RSA_PSS_2048_8192_SHA384_LEGACY_KEY],
        0x0806 => vec![algs::RSA_PSS_2048_8192_SHA512_LEGACY_KEY],
        0x0401 => vec![algs::RSA_PKCS1_2048_8192_SHA256],
        0x0501 => vec![algs::RSA_PKCS1_2048_8192_SHA384],
        0x0601 => vec![algs::RSA_PKCS1_2048_8192_SHA512],
        _ => vec![],
    }
}

/// Checks `signature` over `message` by the end-entity certificate `cert` with `scheme`.
pub fn verify_signature(
    cert: &CertificateDer<'_>,
    scheme: u16,
    message: &[u8],
    signature: &[u8],
) -> Result<(), &'static str> {
    let ee = webpki::EndEntityCert::try_from(cert).map_err(|_| "unparsable certificate")?;
    let candidates = algorithms(scheme);
    if candidates.is_empty() {
        return Err("a signature scheme this side did not offer");
    }
    for alg in candidates {
        match ee.verify_signature(alg, message, signature) {
            Ok(()) => return Ok(()),
            Err(webpki::Error::UnsupportedSignatureAlgorithmForPublicKeyContext(_)) => {}
            Err(_) => return Err("the signature does not verify"),
        }
    }
    Err("a signature scheme that does not fit the certificate's key")
}

/// Verifies a peer's chain (end entity first) against `roots` for `usage` at `now`, and
/// against `name` when given.
pub fn verify_chain(
    chain: &[CertificateDer<'static>],
    roots: &Roots,
    client: bool,
    name: Option<&ServerName<'_>>,
    now: UnixTime,
) -> Result<(), String> {
    let (ee, intermediates) = chain.split_first().ok_or("no certificate")?;
    let cert = webpki::EndEntityCert::try_from(ee).map_err(|e| format!("{e}"))?;
    let usage = if client {
        webpki::KeyUsage::client_auth()
    } else {
        webpki::KeyUsage::server_auth()
    };
    cert.verify_for_usage(
        CHAIN_ALGORITHMS,
        &roots.anchors,
        intermediates,
        now,
        usage,
        None,
        None,
    )
    .map_err(|e| format!("{e}"))?;
    if let Some(name) = name {
        cert.verify_is_valid_for_subject_name(name)
            .map_err(|e| format!("{e}"))?;
    }
    Ok(())
}

/// Whether `key` can sign with one of `offered`.
pub fn can_sign(key: &dyn SigningKey, offered: &[u16]) -> bool {
    let offered: Vec<SignatureScheme> = offered
        .iter()
        .filter(|s| SCHEMES.contains(s))
        .map(|&s| SignatureScheme::from(s))
        .collect();
    key.choose_scheme(&offered).is_some()
}

/// Signs `message` with `key` using one of `offered` (the peer's schemes; our own when the
/// peer named none), returning the scheme used and the signature.
pub fn sign(key: &dyn SigningKey, offered: &[u16], message: &[u8]) -> Option<(u16, Vec<u8>)> {
    let offered: Vec<SignatureScheme> = offered
        .iter()
        .filter(|s| SCHEMES.contains(s))
        .map(|&s| SignatureScheme::from(s))
        .collect();
    let signer = key.choose_scheme(&offered)?;
    let signature = signer.sign(message).ok()?;
    Some((u16::from(signer.scheme()), signature))
}
