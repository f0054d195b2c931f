//! The bodies of the handshake messages this implementation sends and reads (RFC 5246 §7.4,
//! RFC 6347 §4.2, RFC 4279 for PSK, RFC 8422 for ECDHE, RFC 7627 for the extended master
//! secret). Each reads what a peer may send and writes what this side sends; unknown
//! extensions are skipped.

use crate::codec::{Malformed, Reader, put_vec8, put_vec16, put_vec24};

pub const DTLS12: u16 = crate::record::DTLS12;

/// Extension numbers.
pub mod ext {
    pub const SUPPORTED_GROUPS: u16 = 10;
    pub const EC_POINT_FORMATS: u16 = 11;
    pub const SIGNATURE_ALGORITHMS: u16 = 13;
    pub const EXTENDED_MASTER_SECRET: u16 = 23;
    pub const RENEGOTIATION_INFO: u16 = 0xff01;
}

/// TLS_EMPTY_RENEGOTIATION_INFO_SCSV (RFC 5746): a client that supports secure renegotiation
/// (and so expects the extension back) may say so by this pseudo suite instead.
pub const RENEGOTIATION_SCSV: u16 = 0x00ff;

/// Named groups (RFC 8422, RFC 7919 numbering).
pub mod group {
    pub const SECP256R1: u16 = 23;
    pub const SECP384R1: u16 = 24;
    pub const X25519: u16 = 29;
}

/// ClientHello (RFC 6347 §4.2.1: with the cookie field).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientHello {
    pub version: u16,
    pub random: [u8; 32],
    pub session_id: Vec<u8>,
    pub cookie: Vec<u8>,
    pub suites: Vec<u16>,
    /// None when the client sent no supported_groups extension.
    pub groups: Option<Vec<u16>>,
    /// None when the client sent no signature_algorithms extension.
    pub signature_schemes: Option<Vec<u16>>,
    pub extended_master_secret: bool,
    /// The client sent renegotiation_info (empty) or the SCSV.
    pub secure_renegotiation: bool,
    pub ec_point_formats: bool,
}

fn u16_list(bytes: &[u8], what: &'static str) -> Result<Vec<u16>, Malformed> {
    if bytes.len() % 2 != 0 {
        return Err(Malformed(what));
    }
    Ok(bytes
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect())
}

fn put_u16_list(out: &mut Vec<u8>, list: &[u16]) {
    let bytes: Vec<u8> = list.iter().flat_map(|v| v.to_be_bytes()).collect();
    put_vec16(out, &bytes);
}

fn put_extension(out: &mut Vec<u8>, kind: u16, body: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    put_vec16(out, body);
}

impl ClientHello {
    pub fn read(body: &[u8]) -> Result<Self, Malformed> {
        let mut r = Reader::new(body);
        let mut hello = Self {
            version: r.u16("ClientHello version")?,
            random: r.array("ClientHello random")?,
            ..Self::default()
        };
        let session_id = r.vec8("ClientHello session id")?;
        if session_id.len() > 32 {
            return Err(Malformed("ClientHello session id"));
        }
        hello.session_id = session_id.to_vec();
        let cookie = r.vec8("ClientHello cookie")?;
        if cookie.len() > 255 {
            return Err(Malformed("ClientHello cookie"));
        }
        hello.cookie = cookie.to_vec();
        hello.suites = u16_list(r.vec16("ClientHello cipher suites")?, "ClientHello suites")?;
        let compression = r.vec8("ClientHello compression methods")?;
        if !compression.contains(&0) {
            return Err(Malformed("ClientHello without null compression"));
        }
        hello.secure_renegotiation = hello.suites.contains(&RENEGOTIATION_SCSV);
        if !r.is_empty() {
            let mut exts = Reader::new(r.vec16("ClientHello extensions")?);
            while !exts.is_empty() {
                let kind = exts.u16("extension type")?;
                let data = exts.vec16("extension data")?;
                let mut d = Reader::new(data);
                match kind {
                    ext::SUPPORTED_GROUPS => {
                        hello.groups = Some(u16_list(d.vec16("supported_groups")?, "groups")?);
                    }
                    ext::SIGNATURE_ALGORITHMS => {
                        hello.signature_schemes =
                            Some(u16_list(d.vec16("signature_algorithms")?, "schemes")?);
                    }
                    ext::EXTENDED_MASTER_SECRET => hello.extended_master_secret = true,
                    ext::RENEGOTIATION_INFO => {
                        // An initial handshake's renegotiation_info is empty.
                        if d.vec8("renegotiation_info")?.is_empty() {
                            hello.secure_renegotiation = true;
                        } else {
                            return Err(Malformed("renegotiation_info not empty"));
                        }
                    }
                    ext::EC_POINT_FORMATS => {
                        let formats = d.vec8("ec_point_formats")?;
                        if !formats.contains(&0) {
                            return Err(Malformed("ec_point_formats without uncompressed"));
                        }
                        hello.ec_point_formats = true;
                    }
                    _ => {}
                }
            }
        }
        r.end("ClientHello")?;
        Ok(hello)
    }

    pub fn write(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.random);
        put_vec8(&mut out, &self.session_id);
        put_vec8(&mut out, &self.cookie);
        put_u16_list(&mut out, &self.suites);
        put_vec8(&mut out, &[0]);
        let mut exts = Vec::new();
        if let Some(groups) = &self.groups {
            let mut d = Vec::new();
            put_u16_list(&mut d, groups);
            put_extension(&mut exts, ext::SUPPORTED_GROUPS, &d);
        }
        if self.ec_point_formats {
            put_extension(&mut exts, ext::EC_POINT_FORMATS, &[1, 0]);
        }
        if let Some(schemes) = &self.signature_schemes {
            let mut d = Vec::new();
            put_u16_list(&mut d, schemes);
            put_extension(&mut exts, ext::SIGNATURE_ALGORITHMS, &d);
        }
        if self.extended_master_secret {
            put_extension(&mut exts, ext::EXTENDED_MASTER_SECRET, &[]);
        }
        if self.secure_renegotiation {
            put_extension(&mut exts, ext::RENEGOTIATION_INFO, &[0]);
        }
        put_vec16(&mut out, &exts);
        out
    }
}

/// ServerHello. The session id is always empty: this implementation resumes no sessions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerHello {
    pub version: u16,
    pub random: [u8; 32],
    pub suite: u16,
    pub extended_master_secret: bool,
    pub secure_renegotiation: bool,
    pub ec_point_formats: bool,
}

impl ServerHello {
    pub fn read(body: &[u8]) -> Result<Self, Malformed> {
        let mut r = Reader::new(body);
        let mut hello = Self {
            version: r.u16("ServerHello version")?,
            random: r.array("ServerHello random")?,
            ..Self::default()
        };
        r.vec8("ServerHello session id")?;
        hello.suite = r.u16("ServerHello cipher suite")?;
        if r.u8("ServerHello compression")? != 0 {
            return Err(Malformed("ServerHello compression"));
        }
        if !r.is_empty() {
            let mut exts = Reader::new(r.vec16("ServerHello extensions")?);
            while !exts.is_empty() {
                let kind = exts.u16("extension type")?;
                exts.vec16("extension data")?;
                match kind {
                    ext::EXTENDED_MASTER_SECRET => hello.extended_master_secret = true,
                    ext::RENEGOTIATION_INFO => hello.secure_renegotiation = true,
                    ext::EC_POINT_FORMATS => hello.ec_point_formats = true,
                    // The server may only answer what the client asked.
                    _ => return Err(Malformed("ServerHello extension the client did not offer")),
                }
            }
        }
        r.end("ServerHello")?;
        Ok(hello)
    }

    pub fn write(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.random);
        put_vec8(&mut out, &[]);
        out.extend_from_slice(&self.suite.to_be_bytes());
        out.push(0);
        let mut exts = Vec::new();
        if self.secure_renegotiation {
            put_extension(&mut exts, ext::RENEGOTIATION_INFO, &[0]);
        }
        if self.extended_master_secret {
            put_extension(&mut exts, ext::EXTENDED_MASTER_SECRET, &[]);
        }
        if self.ec_point_formats {
            put_extension(&mut exts, ext::EC_POINT_FORMATS, &[1, 0]);
        }
        if !exts.is_empty() {
            put_vec16(&mut out, &exts);
        }
        out
    }
}

/// HelloVerifyRequest: the cookie the client must return. Its version is DTLS 1.0's
/// (RFC 6347 §4.2.1 says servers should send it whatever version they negotiate).
pub fn hello_verify_request(cookie: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 + cookie.len());
    out.extend_from_slice(&crate::record::DTLS10.to_be_bytes());
    put_vec8(&mut out, cookie);
    out
}

/// The cookie of a HelloVerifyRequest.
pub fn read_hello_verify_request(body: &[u8]) -> Result<Vec<u8>, Malformed> {
    let mut r = Reader::new(body);
    r.u16("HelloVerifyRequest version")?;
    let cookie = r.vec8("HelloVerifyRequest cookie")?.to_vec();
    r.end("HelloVerifyRequest")?;
    Ok(cookie)
}

/// Certificate: a chain, end entity first.
pub fn certificate(chain: &[impl AsRef<[u8]>]) -> Vec<u8> {
    let mut list = Vec::new();
    for cert in chain {
        put_vec24(&mut list, cert.as_ref());
    }
    let mut out = Vec::with_capacity(3 + list.len());
    put_vec24(&mut out, &list);
    out
}

pub fn read_certificate(body: &[u8]) -> Result<Vec<Vec<u8>>, Malformed> {
    let mut r = Reader::new(body);
    let mut list = Reader::new(r.vec24("Certificate list")?);
    r.end("Certificate")?;
    let mut chain = Vec::new();
    while !list.is_empty() {
        chain.push(list.vec24("certificate")?.to_vec());
    }
    Ok(chain)
}

/// The signed part of an ECDHE ServerKeyExchange: curve type `named_curve`, the group, the
/// server's public point.
pub fn ecdhe_params(group: u16, point: &[u8]) -> Vec<u8> {
    let mut out = vec![3];
    out.extend_from_slice(&group.to_be_bytes());
    put_vec8(&mut out, point);
    out
}

/// A `DigitallySigned`: the scheme, then the signature.
pub fn signed(scheme: u16, signature: &[u8]) -> Vec<u8> {
    let mut out = scheme.to_be_bytes().to_vec();
    put_vec16(&mut out, signature);
    out
}

/// An ECDHE ServerKeyExchange read: the group, the point, the signed params' bytes, and the
/// signature's scheme and bytes.
#[derive(Debug)]
pub struct EcdheServerKeyExchange {
    pub group: u16,
    pub point: Vec<u8>,
    pub params: Vec<u8>,
    pub scheme: u16,
    pub signature: Vec<u8>,
}

pub fn read_ecdhe_server_key_exchange(body: &[u8]) -> Result<EcdheServerKeyExchange, Malformed> {
    let mut r = Reader::new(body);
    if r.u8("ServerKeyExchange curve type")? != 3 {
        return Err(Malformed("ServerKeyExchange: not a named curve"));
    }
    let group = r.u16("ServerKeyExchange group")?;
    let point = r.vec8("ServerKeyExchange point")?.to_vec();
    let params = body[..body.len() - r.rest().len()].to_vec();
    let (scheme, signature) = read_signed(&mut r)?;
    r.end("ServerKeyExchange")?;
    Ok(EcdheServerKeyExchange {
        group,
        point,
        params,
        scheme,
        signature,
    })
}

pub fn read_signed(r: &mut Reader<'_>) -> Result<(u16, Vec<u8>), Malformed> {
    let scheme = r.u16("signature scheme")?;
    let signature = r.vec16("signature")?.to_vec();
    Ok((scheme, signature))
}

/// Certificate types of a CertificateRequest (RFC 5246 §7.4.4).
const RSA_SIGN: u8 = 1;
const ECDSA_SIGN: u8 = 64;

/// CertificateRequest: any RSA or ECDSA certificate, signed with one of `schemes`; no CA
/// names (the client sends the one certificate it has).
pub fn certificate_request(schemes: &[u16]) -> Vec<u8> {
    let mut out = Vec::new();
    put_vec8(&mut out, &[ECDSA_SIGN, RSA_SIGN]);
    put_u16_list(&mut out, schemes);
    put_vec16(&mut out, &[]);
    out
}

/// The signature schemes of a CertificateRequest.
pub fn read_certificate_request(body: &[u8]) -> Result<Vec<u16>, Malformed> {
    let mut r = Reader::new(body);
    r.vec8("CertificateRequest types")?;
    let schemes = u16_list(r.vec16("CertificateRequest schemes")?, "schemes")?;
    r.vec16("CertificateRequest authorities")?;
    r.end("CertificateRequest")?;
    Ok(schemes)
}

/// A PSK ClientKeyExchange or ServerKeyExchange: one identity (or hint) with a two-byte length.
pub fn psk_identity(identity: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + identity.len());
    put_vec16(&mut out, identity);
    out
}

pub fn read_psk_identity(body: &[u8]) -> Result<Vec<u8>, Malformed> {
    let mut r = Reader::new(body);
    let id = r.vec16("PSK identity")?.to_vec();
    r.end("PSK identity")?;
    Ok(id)
}

/// An ECDHE ClientKeyExchange: the client's public point.
pub fn ecdhe_point(point: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + point.len());
    put_vec8(&mut out, point);
    out
}

pub fn read_ecdhe_point(body: &[u8]) -> Result<Vec<u8>, Malformed> {
    let mut r = Reader::new(body);
    let point = r.vec8("ECDHE point")?.to_vec();
    r.end("ClientKeyExchange")?;
    Ok(point)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_hello_reads_back_what_was_written() {
        let hello = ClientHello {
            version: DTLS12,
            random: [7; 32],
            session_id: vec![],
            cookie: vec![1, 2, 3],
            suites: vec![0xc0a8, 0xc0ae],
            groups: Some(vec![group::SECP256R1]),
            signature_schemes: Some(vec![0x0403]),
            extended_master_secret: true,
            secure_renegotiation: true,
            ec_point_formats: true,
        };
        assert_eq!(ClientHello::read(&hello.write()).unwrap(), hello);
    }

    #[test]
    fn a_server_hello_reads_back_what_was_written() {
        let hello = ServerHello {
            version: DTLS12,
            random: [9; 32],
            suite: 0xc0a8,
            extended_master_secret: true,
            secure_renegotiation: true,
            ec_point_formats: false,
        };
        assert_eq!(ServerHello::read(&hello.write()).unwrap(), hello);
    }

    #[test]
    fn a_server_hello_with_an_extension_nobody_asked_for_is_malformed() {
        let mut body = ServerHello::default().write();
        body.extend_from_slice(&[0, 4, 0, 0x2a, 0, 0]);
        assert!(ServerHello::read(&body).is_err());
    }

    #[test]
    fn every_truncation_of_a_client_hello_is_malformed_not_a_panic() {
        let body = ClientHello {
            suites: vec![0xc0a8],
            groups: Some(vec![23]),
            extended_master_secret: true,
            ..ClientHello::default()
        }
        .write();
        // Cutting the whole extensions block leaves a valid hello without extensions.
        let without_extensions = body.len() - 14;
        for n in (0..body.len()).filter(|&n| n != without_extensions) {
            assert!(
                ClientHello::read(&body[..n]).is_err(),
                "{n} of {}",
                body.len()
            );
        }
    }

    #[test]
    fn a_certificate_chain_reads_back() {
        let chain = vec![vec![1u8; 300], vec![2u8; 5]];
        assert_eq!(read_certificate(&certificate(&chain)).unwrap(), chain);
    }

    #[test]
    fn an_ecdhe_server_key_exchange_keeps_its_signed_params() {
        let params = ecdhe_params(group::X25519, &[5; 32]);
        let mut body = params.clone();
        body.extend_from_slice(&signed(0x0403, &[6; 70]));
        let ske = read_ecdhe_server_key_exchange(&body).unwrap();
        assert_eq!(
            (ske.group, ske.point, ske.params, ske.scheme, ske.signature),
            (group::X25519, vec![5; 32], params, 0x0403, vec![6; 70])
        );
    }
}
