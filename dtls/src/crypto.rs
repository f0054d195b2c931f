//! The cipher suites, the TLS 1.2 PRF (RFC 5246 §5) and the key schedule built on it.
//!
//! Everything here is a pure function of its inputs: no I/O, no clock, no randomness (the
//! handshake draws the randoms and the ECDHE keys and passes them in).

use ring::{digest, hmac};

pub use crate::record::{Protection, WrongKeyLength};

/// The cipher suites this crate speaks: the AEAD suites the bridge's device links use (all
/// TLS 1.2 AEAD suites, so no MAC keys and no CBC padding oracle to defend).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Suite {
    /// 0xC0A8 `TLS_PSK_WITH_AES_128_CCM_8` (RFC 6655), the mandatory suite of RFC 7925.
    PskAes128Ccm8,
    /// 0xC0AE `TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8` (RFC 7251).
    EcdheEcdsaAes128Ccm8,
    /// 0x00A8 `TLS_PSK_WITH_AES_128_GCM_SHA256` (RFC 5487).
    PskAes128GcmSha256,
    /// 0xC02B `TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256` (RFC 5289).
    EcdheEcdsaAes128GcmSha256,
    /// 0xC02F `TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256` (RFC 5289).
    EcdheRsaAes128GcmSha256,
    /// 0x00A9 `TLS_PSK_WITH_AES_256_GCM_SHA384` (RFC 5487).
    PskAes256GcmSha384,
    /// 0xC02C `TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384` (RFC 5289).
    EcdheEcdsaAes256GcmSha384,
}

/// How the premaster secret is agreed and the server authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyExchange {
    /// A pre-shared key (RFC 4279 §2), no certificates.
    Psk,
    /// Ephemeral ECDH signed with the server's ECDSA certificate (RFC 8422).
    EcdheEcdsa,
    /// Ephemeral ECDH signed with the server's RSA certificate (RFC 8422).
    EcdheRsa,
}

/// The hash of a suite's PRF and of its handshake transcript.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hash {
    /// SHA-256: the AES-128 suites (the CCM_8 suites too, RFC 6655 §3).
    Sha256,
    /// SHA-384: the AES-256-GCM suites.
    Sha384,
}

/// A name in a cipher list that is not one of [`Suite::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown cipher suite {0:?}")]
pub struct UnknownSuite(pub String);

/// The AEAD cipher of a suite's records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Cipher {
    Aes128Ccm8,
    Aes128Gcm,
    Aes256Gcm,
}

impl Suite {
    /// Every suite, in the bridge's default order of preference: PSK before certificates
    /// (most devices are PSK devices), CCM_8 first (RFC 7925's choice for constrained devices,
    /// and 8 bytes less per record), then the GCM suites.
    pub const ALL: [Self; 7] = [
        Self::PskAes128Ccm8,
        Self::EcdheEcdsaAes128Ccm8,
        Self::PskAes128GcmSha256,
        Self::EcdheEcdsaAes128GcmSha256,
        Self::EcdheRsaAes128GcmSha256,
        Self::PskAes256GcmSha384,
        Self::EcdheEcdsaAes256GcmSha384,
    ];

    /// The IANA identifier, as carried in ClientHello and ServerHello.
    pub fn id(self) -> u16 {
        match self {
            Self::PskAes128Ccm8 => 0xC0A8,
            Self::EcdheEcdsaAes128Ccm8 => 0xC0AE,
            Self::PskAes128GcmSha256 => 0x00A8,
            Self::EcdheEcdsaAes128GcmSha256 => 0xC02B,
            Self::EcdheRsaAes128GcmSha256 => 0xC02F,
            Self::PskAes256GcmSha384 => 0x00A9,
            Self::EcdheEcdsaAes256GcmSha384 => 0xC02C,
        }
    }

    /// The suite of an IANA identifier, `None` for any suite this crate does not speak.
    pub fn from_id(id: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|suite| suite.id() == id)
    }

    /// The OpenSSL name: what the bridge's configuration used before this crate replaced
    /// OpenSSL, and what its logs print.
    pub fn name(self) -> &'static str {
        match self {
            Self::PskAes128Ccm8 => "PSK-AES128-CCM8",
            Self::EcdheEcdsaAes128Ccm8 => "ECDHE-ECDSA-AES128-CCM8",
            Self::PskAes128GcmSha256 => "PSK-AES128-GCM-SHA256",
            Self::EcdheEcdsaAes128GcmSha256 => "ECDHE-ECDSA-AES128-GCM-SHA256",
            Self::EcdheRsaAes128GcmSha256 => "ECDHE-RSA-AES128-GCM-SHA256",
            Self::PskAes256GcmSha384 => "PSK-AES256-GCM-SHA384",
            Self::EcdheEcdsaAes256GcmSha384 => "ECDHE-ECDSA-AES256-GCM-SHA384",
        }
    }

    /// The IANA (RFC) name.
    pub fn iana_name(self) -> &'static str {
        match self {
            Self::PskAes128Ccm8 => "TLS_PSK_WITH_AES_128_CCM_8",
            Self::EcdheEcdsaAes128Ccm8 => "TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8",
            Self::PskAes128GcmSha256 => "TLS_PSK_WITH_AES_128_GCM_SHA256",
            Self::EcdheEcdsaAes128GcmSha256 => "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            Self::EcdheRsaAes128GcmSha256 => "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            Self::PskAes256GcmSha384 => "TLS_PSK_WITH_AES_256_GCM_SHA384",
            Self::EcdheEcdsaAes256GcmSha384 => "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        }
    }

    /// The suite named by its OpenSSL or its IANA name (exact spelling: OpenSSL accepts
    /// nothing looser, and configurations are written for OpenSSL).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|suite| suite.name() == name || suite.iana_name() == name)
    }

    /// Parses an OpenSSL-style colon-separated cipher list, keeping its order (the order of
    /// preference) and the first of any duplicates. Empty entries (`"A::B"`, a trailing `:`)
    /// are skipped as OpenSSL does, and blanks around an entry are trimmed; a list with no
    /// suite at all is an error, since a link that can agree on nothing is a configuration
    /// mistake.
    pub fn parse_list(list: &str) -> Result<Vec<Self>, UnknownSuite> {
        let mut suites = Vec::new();
        for entry in list.split(':').map(str::trim).filter(|e| !e.is_empty()) {
            let suite = Self::from_name(entry).ok_or_else(|| UnknownSuite(entry.to_owned()))?;
            if !suites.contains(&suite) {
                suites.push(suite);
            }
        }
        if suites.is_empty() {
            return Err(UnknownSuite(list.to_owned()));
        }
        Ok(suites)
    }

    /// How this suite agrees on the premaster secret.
    pub fn key_exchange(self) -> KeyExchange {
        match self {
            Self::PskAes128Ccm8 | Self::PskAes128GcmSha256 | Self::PskAes256GcmSha384 => {
                KeyExchange::Psk
            }
            Self::EcdheEcdsaAes128Ccm8
            | Self::EcdheEcdsaAes128GcmSha256
            | Self::EcdheEcdsaAes256GcmSha384 => KeyExchange::EcdheEcdsa,
            Self::EcdheRsaAes128GcmSha256 => KeyExchange::EcdheRsa,
        }
    }

    /// The hash of this suite's PRF and handshake transcript.
    pub fn hash(self) -> Hash {
        match self {
            Self::PskAes256GcmSha384 | Self::EcdheEcdsaAes256GcmSha384 => Hash::Sha384,
            _ => Hash::Sha256,
        }
    }

    /// The length of each direction's record key: 16 for AES-128, 32 for AES-256.
    pub fn key_len(self) -> usize {
        match self.cipher() {
            Cipher::Aes128Ccm8 | Cipher::Aes128Gcm => 16,
            Cipher::Aes256Gcm => 32,
        }
    }

    pub(crate) fn cipher(self) -> Cipher {
        match self {
            Self::PskAes128Ccm8 | Self::EcdheEcdsaAes128Ccm8 => Cipher::Aes128Ccm8,
            Self::PskAes128GcmSha256
            | Self::EcdheEcdsaAes128GcmSha256
            | Self::EcdheRsaAes128GcmSha256 => Cipher::Aes128Gcm,
            Self::PskAes256GcmSha384 | Self::EcdheEcdsaAes256GcmSha384 => Cipher::Aes256Gcm,
        }
    }
}

impl Hash {
    /// The digest, for the handshake transcript.
    pub fn algorithm(self) -> &'static digest::Algorithm {
        match self {
            Self::Sha256 => &digest::SHA256,
            Self::Sha384 => &digest::SHA384,
        }
    }

    /// The HMAC the PRF is built on.
    pub fn hmac(self) -> hmac::Algorithm {
        match self {
            Self::Sha256 => hmac::HMAC_SHA256,
            Self::Sha384 => hmac::HMAC_SHA384,
        }
    }

    /// The digest length in bytes: 32 or 48.
    #[allow(clippy::len_without_is_empty, reason = "a digest length, never empty")]
    pub fn len(self) -> usize {
        self.algorithm().output_len()
    }
}

/// The TLS 1.2 PRF (RFC 5246 §5): `P_hash(secret, label || seed)` filling `out`.
///
/// The seed comes in parts so callers need not concatenate randoms into a buffer first.
pub fn prf(hash: Hash, secret: &[u8], label: &[u8], seed: &[&[u8]], out: &mut [u8]) {
    let key = hmac::Key::new(hash.hmac(), secret);
    // A(1) = HMAC(secret, label || seed); A(i) = HMAC(secret, A(i-1)).
    let mut a = {
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(label);
        seed.iter().for_each(|part| ctx.update(part));
        ctx.sign()
    };
    for chunk in out.chunks_mut(hash.len()) {
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(a.as_ref());
        ctx.update(label);
        seed.iter().for_each(|part| ctx.update(part));
        let block = ctx.sign();
        chunk.copy_from_slice(&block.as_ref()[..chunk.len()]);
        a = hmac::sign(&key, a.as_ref());
    }
}

/// The extended master secret (RFC 7627 §4): `PRF(pms, "extended master secret",
/// session_hash)`, where the session hash covers the handshake up to and including the
/// ClientKeyExchange. It binds the master secret to the whole handshake, which closes the
/// triple-handshake attack the classic derivation leaves open.
pub fn extended_master_secret(hash: Hash, pre_master: &[u8], session_hash: &[u8]) -> [u8; 48] {
    let mut master = [0; 48];
    prf(
        hash,
        pre_master,
        b"extended master secret",
        &[session_hash],
        &mut master,
    );
    master
}

/// The classic master secret (RFC 5246 §8.1): `PRF(pms, "master secret", client_random ||
/// server_random)`, for peers that do not offer the extended master secret.
pub fn master_secret(
    hash: Hash,
    pre_master: &[u8],
    client_random: &[u8; 32],
    server_random: &[u8; 32],
) -> [u8; 48] {
    let mut master = [0; 48];
    prf(
        hash,
        pre_master,
        b"master secret",
        &[client_random, server_random],
        &mut master,
    );
    master
}

/// The longest PSK a premaster secret can carry (its length is a `u16`). RFC 4279 §5.3 asks
/// for at least 64 bytes; configuration should reject anything longer than this.
pub const MAX_PSK_LEN: usize = u16::MAX as usize;

/// The premaster secret of a plain PSK suite (RFC 4279 §2): `u16` length N, N zero bytes,
/// `u16` length N, the PSK.
///
/// # Panics
/// If `psk` is longer than [`MAX_PSK_LEN`]: the PSK comes from configuration, never from the
/// link, and a longer one cannot be encoded.
pub fn psk_pre_master(psk: &[u8]) -> Vec<u8> {
    let len = u16::try_from(psk.len())
        .expect("PSKs longer than MAX_PSK_LEN are rejected by configuration");
    let mut pms = Vec::with_capacity(4 + 2 * psk.len());
    pms.extend_from_slice(&len.to_be_bytes());
    pms.resize(2 + psk.len(), 0);
    pms.extend_from_slice(&len.to_be_bytes());
    pms.extend_from_slice(psk);
    pms
}

/// The `verify_data` of a Finished message (RFC 5246 §7.4.9): `PRF(master, "client
/// finished" or "server finished", transcript_hash)`, 12 bytes.
pub fn verify_data(
    hash: Hash,
    master: &[u8; 48],
    client: bool,
    transcript_hash: &[u8],
) -> [u8; 12] {
    let label: &[u8] = if client {
        b"client finished"
    } else {
        b"server finished"
    };
    let mut data = [0; 12];
    prf(hash, master, label, &[transcript_hash], &mut data);
    data
}

/// The record protection of both directions, from the key block (RFC 5246 §6.3).
pub struct RecordKeys {
    /// Seals what the client sends; the server opens with it.
    pub client_write: Protection,
    /// Seals what the server sends; the client opens with it.
    pub server_write: Protection,
}

impl std::fmt::Debug for RecordKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Protection's Debug prints only the cipher, never a key.
        f.debug_struct("RecordKeys")
            .field("client_write", &self.client_write)
            .field("server_write", &self.server_write)
            .finish()
    }
}

/// The longest key block: two AES-256 keys and two 4-byte implicit nonces.
const MAX_KEY_BLOCK: usize = 2 * 32 + 2 * 4;

/// Derives both directions' record keys (RFC 5246 §6.3): `PRF(master, "key expansion",
/// server_random || client_random)` cut into client key, server key, client salt, server salt.
/// AEAD suites have no MAC keys; the 4-byte "IV" of each side is the implicit part of the
/// nonce (RFC 5288 §3, RFC 6655 §3).
pub fn record_keys(
    suite: Suite,
    master: &[u8; 48],
    client_random: &[u8; 32],
    server_random: &[u8; 32],
) -> RecordKeys {
    let key_len = suite.key_len();
    let mut block = [0; MAX_KEY_BLOCK];
    let block = &mut block[..2 * key_len + 8];
    prf(
        suite.hash(),
        master,
        b"key expansion",
        &[server_random, client_random],
        block,
    );
    let (client_key, rest) = block.split_at(key_len);
    let (server_key, rest) = rest.split_at(key_len);
    let (client_salt, server_salt) = rest.split_at(4);
    let protection = |key: &[u8], salt: &[u8]| {
        let salt = [salt[0], salt[1], salt[2], salt[3]];
        Protection::new(suite, key, salt).expect("the key block is cut to the suite's key length")
    };
    RecordKeys {
        client_write: protection(client_key, client_salt),
        server_write: protection(server_key, server_salt),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The P_SHA256 vector posted to the IETF TLS list (msg03416), also reproduced with
    /// `openssl kdf -keylen 100 -kdfopt digest:SHA256 ... TLS1-PRF`.
    #[test]
    fn prf_sha256_matches_the_ietf_test_vector() {
        let mut out = [0; 100];
        prf(
            Hash::Sha256,
            &unhex("9bbe436ba940f017b17652849a71db35"),
            b"test label",
            &[&unhex("a0ba9f936cda311827a6f796ffd5198c")],
            &mut out,
        );
        let want = unhex(
            "e3f229ba727be17b8d122620557cd453c2aab21d07c3d495329b52d4e61edb5a
             6b301791e90d35c9c9a46b4e14baf9af0fa022f7077def17abfd3797c0564bab
             4fbc91666e9def9b97fce34f796789baa48082d122ee42c5a72e5a5110fff701
             87347b66",
        );
        assert_eq!(out[..], want[..]);
    }

    /// The P_SHA384 vector from the same post (148 bytes, so the last block is partial),
    /// also reproduced with `openssl kdf -keylen 148 -kdfopt digest:SHA384 ... TLS1-PRF`.
    /// The seed is passed in two parts: how it is split must not matter.
    #[test]
    fn prf_sha384_matches_the_ietf_test_vector_whatever_the_seed_split() {
        let seed = unhex("cd665cf6a8447dd6ff8b27555edb7465");
        let mut out = [0; 148];
        prf(
            Hash::Sha384,
            &unhex("b80b733d6ceefcdc71566ea48e5567df"),
            b"test label",
            &[&seed[..5], &seed[5..]],
            &mut out,
        );
        let want = unhex(
            "7b0c18e9ced410ed1804f2cfa34a336a1c14dffb4900bb5fd7942107e81c83cd
             e9ca0faa60be9fe34f82b1233c9146a0e534cb400fed2700884f9dc236f80edd
             8bfa961144c9e8d792eca722a7b32fc3d416d473ebc2c5fd4abfdad05d918425
             9b5bf8cd4d90fa0d31e2dec479e4f1a26066f2eea9a69236a3e52655c9e9aee6
             91c8f3a26854308d5eaa3be85e0990703d73e56f",
        );
        assert_eq!(out[..], want[..]);
    }

    #[test]
    fn a_shorter_prf_output_is_a_prefix_of_a_longer_one() {
        let mut long = [0; 80];
        let mut short = [0; 33];
        prf(Hash::Sha256, b"secret", b"label", &[b"seed"], &mut long);
        prf(Hash::Sha256, b"secret", b"label", &[b"seed"], &mut short);
        assert_eq!(short[..], long[..33]);
    }

    /// The derivations are the PRF with the RFCs' labels and seeds; pinned against the PRF
    /// itself so a swapped label or random order breaks a test.
    #[test]
    fn master_secrets_and_verify_data_use_the_rfc_labels_and_seed_order() {
        let client_random = [1; 32];
        let server_random = [2; 32];
        let pms = psk_pre_master(b"key");
        let mut want = [0; 48];
        prf(
            Hash::Sha256,
            &pms,
            b"master secret",
            &[&[1; 32], &[2; 32]],
            &mut want,
        );
        let master = master_secret(Hash::Sha256, &pms, &client_random, &server_random);
        assert_eq!(master, want);

        prf(
            Hash::Sha384,
            &pms,
            b"extended master secret",
            &[&[7; 48]],
            &mut want,
        );
        assert_eq!(extended_master_secret(Hash::Sha384, &pms, &[7; 48]), want);

        let mut want = [0; 12];
        prf(
            Hash::Sha256,
            &master,
            b"client finished",
            &[&[9; 32]],
            &mut want,
        );
        assert_eq!(verify_data(Hash::Sha256, &master, true, &[9; 32]), want);
        prf(
            Hash::Sha256,
            &master,
            b"server finished",
            &[&[9; 32]],
            &mut want,
        );
        assert_eq!(verify_data(Hash::Sha256, &master, false, &[9; 32]), want);
    }

    /// The key block is split client key, server key, client salt, server salt, from
    /// `PRF(master, "key expansion", server_random || client_random)`: a record sealed with
    /// keys built by hand from that split opens with the derived keys.
    #[test]
    fn record_keys_split_the_key_block_in_rfc_order() {
        for suite in Suite::ALL {
            let master = [3; 48];
            let (client_random, server_random) = ([4; 32], [5; 32]);
            let keys = record_keys(suite, &master, &client_random, &server_random);
            let n = suite.key_len();
            let mut block = vec![0; 2 * n + 8];
            prf(
                suite.hash(),
                &master,
                b"key expansion",
                &[&server_random, &client_random],
                &mut block,
            );
            let salt = |at: usize| [block[at], block[at + 1], block[at + 2], block[at + 3]];
            let client = Protection::new(suite, &block[..n], salt(2 * n)).unwrap();
            let server = Protection::new(suite, &block[n..2 * n], salt(2 * n + 4)).unwrap();
            for (by_hand, derived) in [(client, &keys.client_write), (server, &keys.server_write)] {
                let mut record = Vec::new();
                by_hand.seal(
                    crate::record::ContentType::ApplicationData,
                    1,
                    0,
                    b"hi",
                    &mut record,
                );
                let header = crate::record::Header::parse(&record).unwrap();
                let opened = derived.open(&header, &record[crate::record::HEADER_LEN..]);
                assert_eq!(opened.unwrap(), b"hi", "{suite:?}");
            }
        }
    }

    #[test]
    fn record_keys_debug_prints_no_key_material() {
        let keys = record_keys(Suite::PskAes128Ccm8, &[0xAB; 48], &[0; 32], &[0; 32]);
        let printed = format!("{keys:?}");
        assert!(printed.contains("Aes128Ccm8"), "{printed}");
        // A derived key or salt would show as a list of numbers.
        assert!(!printed.contains('['), "{printed}");
    }

    #[test]
    fn the_psk_premaster_is_zeros_then_the_psk_each_with_its_length() {
        assert_eq!(
            psk_pre_master(&[0xAA, 0xBB, 0xCC]),
            [0, 3, 0, 0, 0, 0, 3, 0xAA, 0xBB, 0xCC]
        );
    }

    #[test]
    fn the_default_list_parses_to_all_suites_in_order() {
        let list = "PSK-AES128-CCM8:ECDHE-ECDSA-AES128-CCM8:PSK-AES128-GCM-SHA256:\
                    ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:\
                    PSK-AES256-GCM-SHA384:ECDHE-ECDSA-AES256-GCM-SHA384";
        assert_eq!(Suite::parse_list(list).unwrap(), Suite::ALL);
    }

    #[test]
    fn a_list_accepts_iana_names_skips_empty_entries_and_drops_duplicates() {
        let list = "TLS_PSK_WITH_AES_128_CCM_8::PSK-AES256-GCM-SHA384:PSK-AES128-CCM8:";
        assert_eq!(
            Suite::parse_list(list).unwrap(),
            [Suite::PskAes128Ccm8, Suite::PskAes256GcmSha384]
        );
    }

    #[test]
    fn a_list_with_an_unknown_name_is_an_error_naming_it() {
        let err = Suite::parse_list("PSK-AES128-CCM8:PSK-AES128-CCM9").unwrap_err();
        assert_eq!(err, UnknownSuite("PSK-AES128-CCM9".into()));
        assert_eq!(err.to_string(), "unknown cipher suite \"PSK-AES128-CCM9\"");
    }

    #[test]
    fn a_list_with_an_unsupported_openssl_suite_is_an_error() {
        let err = Suite::parse_list("DHE-PSK-AES128-GCM-SHA256").unwrap_err();
        assert_eq!(err, UnknownSuite("DHE-PSK-AES128-GCM-SHA256".into()));
    }

    #[test]
    fn an_empty_list_is_an_error() {
        assert!(Suite::parse_list("").is_err());
        assert!(Suite::parse_list(":::").is_err());
    }

    /// Ids and names as `openssl ciphers -V -stdname` lists them. The CCM_8 suites use the
    /// SHA-256 PRF (RFC 6655 §3, RFC 7251 §2) though their names do not say so.
    #[test]
    fn ids_names_and_hashes_match_the_iana_registry() {
        let table = [
            (0xC0A8, "PSK-AES128-CCM8", "TLS_PSK_WITH_AES_128_CCM_8"),
            (
                0xC0AE,
                "ECDHE-ECDSA-AES128-CCM8",
                "TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8",
            ),
            (
                0x00A8,
                "PSK-AES128-GCM-SHA256",
                "TLS_PSK_WITH_AES_128_GCM_SHA256",
            ),
            (
                0xC02B,
                "ECDHE-ECDSA-AES128-GCM-SHA256",
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            ),
            (
                0xC02F,
                "ECDHE-RSA-AES128-GCM-SHA256",
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            ),
            (
                0x00A9,
                "PSK-AES256-GCM-SHA384",
                "TLS_PSK_WITH_AES_256_GCM_SHA384",
            ),
            (
                0xC02C,
                "ECDHE-ECDSA-AES256-GCM-SHA384",
                "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
            ),
        ];
        for (suite, (id, name, iana)) in Suite::ALL.into_iter().zip(table) {
            assert_eq!(suite.id(), id);
            assert_eq!(Suite::from_id(id), Some(suite));
            assert_eq!(suite.name(), name);
            assert_eq!(suite.iana_name(), iana);
            assert_eq!(Suite::from_name(name), Some(suite));
            assert_eq!(Suite::from_name(iana), Some(suite));
            let hash = if iana.ends_with("SHA384") {
                Hash::Sha384
            } else {
                Hash::Sha256
            };
            assert_eq!(suite.hash(), hash);
            assert_eq!(
                suite.key_len(),
                if iana.contains("AES_256") { 32 } else { 16 }
            );
            let kx = match &iana[4..9] {
                "PSK_W" => KeyExchange::Psk,
                "ECDHE" if iana.contains("ECDSA") => KeyExchange::EcdheEcdsa,
                _ => KeyExchange::EcdheRsa,
            };
            assert_eq!(suite.key_exchange(), kx, "{name}");
        }
        assert_eq!(Suite::from_id(0x00AA), None);
        assert_eq!(Hash::Sha256.len(), 32);
        assert_eq!(Hash::Sha384.len(), 48);
    }
}
