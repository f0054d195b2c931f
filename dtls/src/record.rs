//! DTLS 1.2 records (RFC 6347 §4.1): headers, splitting a datagram into records, AEAD
//! protection of one direction, and the anti-replay window.

use aes::Aes128Enc;
use ccm::{
    AeadInOut, KeyInit,
    consts::{U8, U12},
};
use ring::aead::{self, LessSafeKey, UnboundKey};

use crate::crypto::{Cipher, Suite};

/// The length of a DTLS record header: type, version, epoch, 48-bit sequence number, length.
pub const HEADER_LEN: usize = 13;
/// DTLS 1.2 on the wire (the one's complement of 1.2, RFC 6347 §4.1).
pub const DTLS12: u16 = 0xFEFD;
/// DTLS 1.0: clients put it in the record carrying their ClientHello, as they do not know yet
/// what the server speaks (RFC 6347 §4.1, "version").
pub const DTLS10: u16 = 0xFEFF;
/// The longest plaintext of a record (RFC 6347 §4.1 via RFC 5246 §6.2.1: 2^14).
pub const MAX_PLAINTEXT: usize = 1 << 14;
/// The explicit part of the AEAD nonce, sent in each record (RFC 5288 §3, RFC 6655 §3).
const EXPLICIT_NONCE_LEN: usize = 8;
/// Sequence numbers are 48 bits on the wire.
const SEQUENCE_MASK: u64 = (1 << 48) - 1;

/// The record content types of DTLS 1.2 (heartbeat, 24, is not spoken).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ContentType {
    ChangeCipherSpec = 20,
    Alert = 21,
    Handshake = 22,
    ApplicationData = 23,
}

impl ContentType {
    /// The content type of a header's byte, `None` for any other value.
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            20 => Some(Self::ChangeCipherSpec),
            21 => Some(Self::Alert),
            22 => Some(Self::Handshake),
            23 => Some(Self::ApplicationData),
            _ => None,
        }
    }
}

/// A record header, as on the wire (RFC 6347 §4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    /// Kept raw: an unknown type must still be framed (and then dropped by the caller), so
    /// the header does not decide what is valid; see [`ContentType::from_u8`].
    pub content_type: u8,
    /// Kept raw for the same reason: ClientHello records may carry [`DTLS10`].
    pub version: u16,
    /// Incremented at each ChangeCipherSpec; 0 is the unprotected handshake.
    pub epoch: u16,
    /// 48 bits on the wire; the upper 16 bits are always zero after [`Header::parse`] and
    /// ignored by [`Header::write`].
    pub sequence: u64,
    /// The length of the fragment that follows.
    pub length: u16,
}

impl Header {
    /// Reads a header from the start of `b`; `None` if `b` is shorter than [`HEADER_LEN`].
    pub fn parse(b: &[u8]) -> Option<Self> {
        let b: &[u8; HEADER_LEN] = b.get(..HEADER_LEN)?.try_into().ok()?;
        let mut sequence = [0; 8];
        sequence[2..].copy_from_slice(&b[5..11]);
        Some(Self {
            content_type: b[0],
            version: u16::from_be_bytes([b[1], b[2]]),
            epoch: u16::from_be_bytes([b[3], b[4]]),
            sequence: u64::from_be_bytes(sequence),
            length: u16::from_be_bytes([b[11], b[12]]),
        })
    }

    /// Appends the header's [`HEADER_LEN`] bytes to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.push(self.content_type);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&(self.sequence & SEQUENCE_MASK).to_be_bytes()[2..]);
        out.extend_from_slice(&self.length.to_be_bytes());
    }
}

/// Splits a datagram into its records (a datagram may carry several, RFC 6347 §4.1.1).
///
/// Stops at the first record whose header or fragment is cut short, yielding the records
/// before it: what follows a broken length cannot be framed. Content type and version are
/// not checked here; see [`Header`].
pub fn records(datagram: &[u8]) -> Records<'_> {
    Records { rest: datagram }
}

/// The records of a datagram: see [`records`].
#[derive(Clone, Debug)]
pub struct Records<'a> {
    /// What has not been framed yet; emptied at the first truncated record so the iterator
    /// stays finished.
    rest: &'a [u8],
}

impl<'a> Iterator for Records<'a> {
    type Item = (Header, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let framed = Header::parse(self.rest).and_then(|header| {
            let end = HEADER_LEN + usize::from(header.length);
            let fragment = self.rest.get(HEADER_LEN..end)?;
            Some((header, fragment, end))
        });
        match framed {
            Some((header, fragment, end)) => {
                self.rest = &self.rest[end..];
                Some((header, fragment))
            }
            None => {
                self.rest = &[];
                None
            }
        }
    }
}

impl std::iter::FusedIterator for Records<'_> {}

/// A record that could not be opened: too short, too long, or failed authentication. Which
/// of these is deliberately not told (RFC 6347 §4.1.2.7: such records are silently dropped,
/// and telling them apart helps only an attacker).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("record failed authentication")]
pub struct BadRecord;

/// A key of the wrong length for its suite, given to [`Protection::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{suite:?} needs a {expected}-byte key, got {got} bytes")]
pub struct WrongKeyLength {
    /// The suite the key was for.
    pub suite: Suite,
    /// The key length the suite needs.
    pub expected: usize,
    /// The length given.
    pub got: usize,
}

/// AES-128-CCM with an 8-byte tag and a 12-byte nonce (RFC 6655's CCM_8). Built on the
/// encrypt-only AES (CCM never runs the block cipher backwards), which halves the expanded
/// key kept per session.
type Aes128Ccm8 = ccm::Ccm<Aes128Enc, U8, U12>;

/// The record protection of one direction: the AEAD key and the implicit nonce (salt).
///
/// A session keeps two of these for as long as it lives, so it holds only the expanded key
/// and the salt; see the size test.
pub struct Protection {
    aead: Aead,
    /// The implicit first 4 bytes of every nonce, from the key block (RFC 5288 §3).
    salt: [u8; 4],
}

enum Aead {
    Aes128Ccm8(Aes128Ccm8),
    /// AES-128-GCM or AES-256-GCM, told apart by the key's algorithm.
    Gcm(LessSafeKey),
}

impl std::fmt::Debug for Protection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key or the salt: sessions are logged.
        f.debug_struct("Protection")
            .field("cipher", &self.cipher())
            .finish_non_exhaustive()
    }
}

impl Protection {
    /// The protection of `suite` with `key` (16 or 32 bytes, [`Suite::key_len`]) and the
    /// 4-byte implicit nonce `salt`. [`crate::crypto::record_keys`] builds both directions'.
    pub fn new(suite: Suite, key: &[u8], salt: [u8; 4]) -> Result<Self, WrongKeyLength> {
        let wrong = WrongKeyLength {
            suite,
            expected: suite.key_len(),
            got: key.len(),
        };
        if key.len() != suite.key_len() {
            return Err(wrong);
        }
        let aead = match suite.cipher() {
            Cipher::Aes128Ccm8 => {
                Aead::Aes128Ccm8(Aes128Ccm8::new_from_slice(key).map_err(|_| wrong)?)
            }
            Cipher::Aes128Gcm => Aead::Gcm(LessSafeKey::new(
                UnboundKey::new(&aead::AES_128_GCM, key).map_err(|_| wrong)?,
            )),
            Cipher::Aes256Gcm => Aead::Gcm(LessSafeKey::new(
                UnboundKey::new(&aead::AES_256_GCM, key).map_err(|_| wrong)?,
            )),
        };
        Ok(Self { aead, salt })
    }

    fn cipher(&self) -> Cipher {
        match &self.aead {
            Aead::Aes128Ccm8(_) => Cipher::Aes128Ccm8,
            Aead::Gcm(key) if key.algorithm() == &aead::AES_256_GCM => Cipher::Aes256Gcm,
            Aead::Gcm(_) => Cipher::Aes128Gcm,
        }
    }

    fn tag_len(&self) -> usize {
        match self.aead {
            Aead::Aes128Ccm8(_) => 8,
            Aead::Gcm(_) => aead::MAX_TAG_LEN,
        }
    }

    /// The bytes a record's fragment carries beyond its plaintext: the explicit nonce (8)
    /// and the tag (8 for CCM_8, 16 for GCM). The header's 13 are not counted.
    pub fn overhead(&self) -> usize {
        EXPLICIT_NONCE_LEN + self.tag_len()
    }

    /// The full 12-byte nonce: salt || explicit nonce (RFC 5288 §3).
    fn nonce(&self, explicit: &[u8; EXPLICIT_NONCE_LEN]) -> [u8; 12] {
        let mut nonce = [0; 12];
        nonce[..4].copy_from_slice(&self.salt);
        nonce[4..].copy_from_slice(explicit);
        nonce
    }

    /// Appends one whole protected record to `out`: the header (`content_type`, [`DTLS12`],
    /// `epoch`, `sequence`, length), the explicit nonce, the ciphertext and the tag.
    ///
    /// The explicit nonce is `epoch || sequence` (RFC 6347 §4.1.2.1 recommends it): unique per
    /// key as long as the caller never reuses a sequence number in an epoch, which the
    /// record layer must guarantee anyway. `sequence` must be below 2^48 (it is truncated to
    /// its low 48 bits, as on the wire).
    ///
    /// # Panics
    /// If `plaintext` is longer than [`MAX_PLAINTEXT`]: the caller fragments, since a longer
    /// record is invalid for every peer. This is never input from the link.
    pub fn seal(
        &self,
        content_type: ContentType,
        epoch: u16,
        sequence: u64,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) {
        assert!(
            plaintext.len() <= MAX_PLAINTEXT,
            "a record's plaintext is at most {MAX_PLAINTEXT} bytes, got {}",
            plaintext.len()
        );
        let sequence = sequence & SEQUENCE_MASK;
        let explicit = explicit_nonce(epoch, sequence);
        let length = u16::try_from(self.overhead() + plaintext.len())
            .expect("MAX_PLAINTEXT plus the overhead fits a u16");
        let header = Header {
            content_type: content_type as u8,
            version: DTLS12,
            epoch,
            sequence,
            length,
        };
        let aad = additional_data(&header, plaintext.len());
        let nonce = self.nonce(&explicit);

        out.reserve(HEADER_LEN + usize::from(length));
        header.write(out);
        out.extend_from_slice(&explicit);
        let start = out.len();
        out.extend_from_slice(plaintext);
        let in_out = &mut out[start..];
        // Neither AEAD fails but for lengths far beyond MAX_PLAINTEXT (2^24 bytes for CCM
        // with a 12-byte nonce, 2^36 for GCM), excluded by the assertion above.
        match &self.aead {
            Aead::Aes128Ccm8(ccm) => {
                let tag = ccm
                    .encrypt_inout_detached(&nonce.into(), &aad, in_out.into())
                    .expect("CCM seals any plaintext up to MAX_PLAINTEXT");
                out.extend_from_slice(&tag);
            }
            Aead::Gcm(key) => {
                let tag = key
                    .seal_in_place_separate_tag(
                        aead::Nonce::assume_unique_for_key(nonce),
                        aead::Aad::from(aad),
                        in_out,
                    )
                    .expect("GCM seals any plaintext up to MAX_PLAINTEXT");
                out.extend_from_slice(tag.as_ref());
            }
        }
    }

    /// Opens the fragment of one record (explicit nonce || ciphertext || tag) under its
    /// parsed `header` and returns the plaintext.
    ///
    /// The header's type, version, epoch and sequence number are authenticated (they are
    /// the additional data), so a record replayed under another header fails. The plaintext
    /// length in the additional data is taken from `fragment`, not from `header.length`.
    /// The caller checks freshness against a [`ReplayWindow`] before and marks it after.
    pub fn open(&self, header: &Header, fragment: &[u8]) -> Result<Vec<u8>, BadRecord> {
        let tag_len = self.tag_len();
        let ciphertext_len = fragment
            .len()
            .checked_sub(EXPLICIT_NONCE_LEN + tag_len)
            .ok_or(BadRecord)?;
        let (explicit, rest) = fragment.split_at(EXPLICIT_NONCE_LEN);
        let (ciphertext, tag) = rest.split_at(ciphertext_len);
        let explicit: &[u8; EXPLICIT_NONCE_LEN] = explicit.try_into().map_err(|_| BadRecord)?;
        if ciphertext_len > usize::from(u16::MAX) {
            return Err(BadRecord);
        }
        let aad = additional_data(header, ciphertext_len);
        let nonce = self.nonce(explicit);

        let mut plaintext = ciphertext.to_vec();
        match &self.aead {
            Aead::Aes128Ccm8(ccm) => {
                let tag = ccm::Tag::<U8>::try_from(tag).map_err(|_| BadRecord)?;
                ccm.decrypt_inout_detached(
                    &nonce.into(),
                    &aad,
                    plaintext.as_mut_slice().into(),
                    &tag,
                )
                .map_err(|_| BadRecord)?;
            }
            Aead::Gcm(key) => {
                let tag = aead::Tag::try_from(tag).map_err(|_| BadRecord)?;
                key.open_in_place_separate_tag(
                    aead::Nonce::assume_unique_for_key(nonce),
                    aead::Aad::from(aad),
                    tag,
                    &mut plaintext,
                    0..,
                )
                .map_err(|_| BadRecord)?;
            }
        }
        Ok(plaintext)
    }
}

/// The explicit nonce a record carries: `epoch || sequence` (48 bits).
fn explicit_nonce(epoch: u16, sequence: u64) -> [u8; EXPLICIT_NONCE_LEN] {
    ((u64::from(epoch) << 48) | (sequence & SEQUENCE_MASK)).to_be_bytes()
}

/// The AEAD additional data (RFC 6347 §4.1.2.1 with RFC 5246 §6.2.3.3): `epoch || sequence
/// || type || version || plaintext length`. `plaintext_len` is at most `u16::MAX` (checked
/// by both callers).
fn additional_data(header: &Header, plaintext_len: usize) -> [u8; 13] {
    let mut aad = [0; 13];
    aad[..8].copy_from_slice(&explicit_nonce(header.epoch, header.sequence));
    aad[8] = header.content_type;
    aad[9..11].copy_from_slice(&header.version.to_be_bytes());
    aad[11..].copy_from_slice(&(plaintext_len as u16).to_be_bytes());
    aad
}

/// The anti-replay window of one epoch (RFC 6347 §4.1.2.6): the highest sequence number
/// authenticated so far and which of the 63 below it were seen too.
///
/// Check [`is_fresh`](Self::is_fresh) before opening and [`mark`](Self::mark) only after the
/// record authenticated, or forged records could move the window. A new epoch starts a new
/// window.
#[derive(Clone, Debug, Default)]
pub struct ReplayWindow {
    /// The highest sequence number marked (0 before any).
    top: u64,
    /// Bit `i` set: `top - i` was marked. Bit 0 is clear only before the first mark.
    seen: u64,
}

impl ReplayWindow {
    /// The width of the window: RFC 6347's suggested minimum, enough for the reordering a
    /// device link sees.
    pub const WIDTH: u64 = 64;

    /// A window that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a record with this sequence number may still be accepted: newer than any
    /// seen, or within the window and not seen. Older than the window is refused, as a
    /// replay cannot be told apart from a very late record there.
    pub fn is_fresh(&self, sequence: u64) -> bool {
        if sequence > self.top {
            return true;
        }
        let age = self.top - sequence;
        age < Self::WIDTH && self.seen & (1 << age) == 0
    }

    /// Records an authenticated sequence number, sliding the window when it is the newest.
    pub fn mark(&mut self, sequence: u64) {
        if sequence > self.top {
            let shift = sequence - self.top;
            self.seen = if shift < Self::WIDTH {
                self.seen << shift
            } else {
                0
            };
            self.seen |= 1;
            self.top = sequence;
        } else if self.top - sequence < Self::WIDTH {
            self.seen |= 1 << (self.top - sequence);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::tests::unhex;

    const PLAINTEXT: &[u8] = b"hello, device";
    const SALT: [u8; 4] = [0xA0, 0xA1, 0xA2, 0xA3];
    const EPOCH: u16 = 1;
    const SEQUENCE: u64 = 0x0102_0304_0506;

    /// The key 00 01 02 ... of the suite's length.
    fn protection(suite: Suite) -> Protection {
        let key: Vec<u8> = (0..suite.key_len() as u8).collect();
        Protection::new(suite, &key, SALT).unwrap()
    }

    fn sealed(suite: Suite) -> Vec<u8> {
        let mut record = Vec::new();
        protection(suite).seal(
            ContentType::ApplicationData,
            EPOCH,
            SEQUENCE,
            PLAINTEXT,
            &mut record,
        );
        record
    }

    fn open(p: &Protection, record: &[u8]) -> Result<Vec<u8>, BadRecord> {
        let header = Header::parse(record).ok_or(BadRecord)?;
        p.open(&header, &record[HEADER_LEN..])
    }

    /// NIST SP 800-38C appendix C, example 3: AES-128, 12-byte nonce, 8-byte tag, exactly
    /// the CCM_8 of RFC 6655. Pins the `ccm` type parameters and the encrypt-only AES.
    #[test]
    fn the_ccm8_cipher_matches_nist_sp800_38c_example_3() {
        let ccm = Aes128Ccm8::new_from_slice(&unhex("404142434445464748494a4b4c4d4e4f")).unwrap();
        let nonce: [u8; 12] = unhex("101112131415161718191a1b").try_into().unwrap();
        let aad = unhex("000102030405060708090a0b0c0d0e0f10111213");
        let mut buf = unhex("202122232425262728292a2b2c2d2e2f3031323334353637");
        let tag = ccm
            .encrypt_inout_detached(&nonce.into(), &aad, buf.as_mut_slice().into())
            .unwrap();
        buf.extend_from_slice(&tag);
        let want = unhex("e3b201a9f5b71a7a9b1ceaeccd97e70b6176aad9a4428aa5 484392fbc1b09951");
        assert_eq!(buf, want);
    }

    /// The golden records were computed by Python's `cryptography` (OpenSSL 3 underneath)
    /// with AESCCM(tag_length=8) / AESGCM, key 00 01 02 ..., nonce a0a1a2a3 || epoch ||
    /// sequence, AAD epoch || sequence || 17 fefd 000d. They pin the header layout
    /// (type, version, epoch, 48-bit sequence, length), the explicit nonce, the AAD and the
    /// nonce construction against an independent implementation.
    #[test]
    fn a_sealed_record_matches_the_golden_bytes_of_openssl() {
        let golden = [
            (
                Suite::PskAes128Ccm8,
                "17 fefd 0001 010203040506 001d 0001010203040506
                 4c8dba24f34298cec036b1bf64 1db3413699f98696",
            ),
            (
                Suite::PskAes128GcmSha256,
                "17 fefd 0001 010203040506 0025 0001010203040506
                 50281e50f7006b313377377969 ff066d8938f7c16b18907224689e1745",
            ),
            (
                Suite::PskAes256GcmSha384,
                "17 fefd 0001 010203040506 0025 0001010203040506
                 db13febc85a61cb6e8d40351a2 ac42d0b308b67702464957b70c10f4ca",
            ),
        ];
        for (suite, want) in golden {
            assert_eq!(sealed(suite), unhex(want), "{suite:?}");
        }
    }

    /// The same record sealed by `ccm` directly, with the nonce and AAD built by hand.
    #[test]
    fn a_ccm8_record_is_what_the_ccm_crate_seals_with_the_rfc_nonce_and_aad() {
        let ccm = Aes128Ccm8::new_from_slice(&(0..16).collect::<Vec<u8>>()).unwrap();
        let nonce: [u8; 12] = unhex("a0a1a2a3 0001 010203040506").try_into().unwrap();
        let aad = unhex("0001 010203040506 17 fefd 000d");
        let mut body = PLAINTEXT.to_vec();
        let tag = ccm
            .encrypt_inout_detached(&nonce.into(), &aad, body.as_mut_slice().into())
            .unwrap();
        body.extend_from_slice(&tag);
        assert_eq!(sealed(Suite::PskAes128Ccm8)[HEADER_LEN + 8..], body[..]);
    }

    #[test]
    fn every_suite_opens_what_it_sealed() {
        for suite in Suite::ALL {
            let p = protection(suite);
            for plaintext in [&[][..], PLAINTEXT, &[0x5A; MAX_PLAINTEXT]] {
                let mut record = Vec::new();
                p.seal(ContentType::Handshake, 2, 77, plaintext, &mut record);
                assert_eq!(record.len(), HEADER_LEN + p.overhead() + plaintext.len());
                let header = Header::parse(&record).unwrap();
                assert_eq!(usize::from(header.length), record.len() - HEADER_LEN);
                assert_eq!(p.open(&header, &record[HEADER_LEN..]).unwrap(), plaintext);
            }
        }
    }

    #[test]
    fn the_overhead_is_the_explicit_nonce_and_the_tag() {
        assert_eq!(protection(Suite::PskAes128Ccm8).overhead(), 16);
        assert_eq!(protection(Suite::EcdheEcdsaAes128GcmSha256).overhead(), 24);
        assert_eq!(protection(Suite::EcdheEcdsaAes256GcmSha384).overhead(), 24);
    }

    #[test]
    fn changing_any_byte_of_a_sealed_record_makes_it_fail_to_open() {
        for suite in Suite::ALL {
            let p = protection(suite);
            let record = sealed(suite);
            for at in 0..record.len() {
                // The length field only frames; changing it is a truncation, tested below.
                if (11..13).contains(&at) {
                    continue;
                }
                let mut tampered = record.clone();
                tampered[at] ^= 0x01;
                assert_eq!(open(&p, &tampered), Err(BadRecord), "{suite:?} byte {at}");
            }
        }
    }

    #[test]
    fn a_record_under_another_epoch_sequence_type_or_version_fails_to_open() {
        for suite in Suite::ALL {
            let p = protection(suite);
            let record = sealed(suite);
            let header = Header::parse(&record).unwrap();
            let fragment = &record[HEADER_LEN..];
            assert!(p.open(&header, fragment).is_ok());
            let others = [
                Header {
                    epoch: EPOCH + 1,
                    ..header
                },
                Header {
                    sequence: SEQUENCE + 1,
                    ..header
                },
                Header {
                    content_type: ContentType::Handshake as u8,
                    ..header
                },
                Header {
                    version: DTLS10,
                    ..header
                },
            ];
            for other in others {
                assert_eq!(
                    p.open(&other, fragment),
                    Err(BadRecord),
                    "{suite:?} {other:?}"
                );
            }
        }
    }

    #[test]
    fn a_record_sealed_with_another_key_fails_to_open() {
        let other = Protection::new(Suite::PskAes128Ccm8, &[9; 16], SALT).unwrap();
        assert_eq!(open(&other, &sealed(Suite::PskAes128Ccm8)), Err(BadRecord));
        let other = Protection::new(Suite::PskAes128Ccm8, &(0..16).collect::<Vec<u8>>(), [0; 4]);
        assert_eq!(
            open(&other.unwrap(), &sealed(Suite::PskAes128Ccm8)),
            Err(BadRecord)
        );
    }

    #[test]
    fn a_truncated_fragment_is_an_error_not_a_panic() {
        for suite in Suite::ALL {
            let p = protection(suite);
            let record = sealed(suite);
            let header = Header::parse(&record).unwrap();
            for len in 0..record.len() - HEADER_LEN {
                let fragment = &record[HEADER_LEN..HEADER_LEN + len];
                assert_eq!(p.open(&header, fragment), Err(BadRecord), "{suite:?} {len}");
            }
        }
    }

    #[test]
    fn a_key_of_the_wrong_length_is_refused() {
        let err = Protection::new(Suite::PskAes256GcmSha384, &[0; 16], SALT).unwrap_err();
        assert_eq!((err.expected, err.got), (32, 16));
        assert!(Protection::new(Suite::PskAes128Ccm8, &[0; 32], SALT).is_err());
    }

    /// A session holds two of these for hours; the bridge aims at 16 KiB per idle session.
    #[test]
    fn a_protection_stays_small() {
        let size = std::mem::size_of::<Protection>();
        println!(
            "size_of Protection = {size} (Aes128Ccm8 {}, LessSafeKey {})",
            std::mem::size_of::<Aes128Ccm8>(),
            std::mem::size_of::<LessSafeKey>()
        );
        assert!(size <= 1024, "Protection grew to {size} bytes");
    }

    #[test]
    fn protection_debug_prints_no_key_material() {
        let printed = format!("{:?}", protection(Suite::PskAes256GcmSha384));
        assert_eq!(printed, "Protection { cipher: Aes256Gcm, .. }");
    }

    /// Header layout: type, version, epoch, 48-bit sequence, length, big-endian.
    #[test]
    fn a_header_writes_and_parses_its_golden_bytes() {
        let header = Header {
            content_type: 22,
            version: DTLS10,
            epoch: 0x0102,
            sequence: 0x0304_0506_0708,
            length: 0x090A,
        };
        let mut out = Vec::new();
        header.write(&mut out);
        assert_eq!(out, unhex("16 feff 0102 030405060708 090a"));
        assert_eq!(Header::parse(&out), Some(header));
        assert_eq!(Header::parse(&out[..HEADER_LEN - 1]), None);
    }

    #[test]
    fn a_header_writes_only_the_low_48_bits_of_the_sequence() {
        let mut out = Vec::new();
        let header = Header {
            content_type: 23,
            version: DTLS12,
            epoch: 0,
            sequence: 0xFFFF_0000_0000_0001,
            length: 0,
        };
        header.write(&mut out);
        assert_eq!(Header::parse(&out).unwrap().sequence, 1);
    }

    #[test]
    fn content_types_round_trip_through_their_byte() {
        for t in [
            ContentType::ChangeCipherSpec,
            ContentType::Alert,
            ContentType::Handshake,
            ContentType::ApplicationData,
        ] {
            assert_eq!(ContentType::from_u8(t as u8), Some(t));
        }
        assert_eq!(ContentType::from_u8(24), None);
        assert_eq!(ContentType::from_u8(0), None);
    }

    fn plain_record(content_type: u8, sequence: u64, fragment: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        Header {
            content_type,
            version: DTLS12,
            epoch: 0,
            sequence,
            length: fragment.len() as u16,
        }
        .write(&mut out);
        out.extend_from_slice(fragment);
        out
    }

    #[test]
    fn a_datagram_splits_into_all_its_records() {
        let mut datagram = plain_record(22, 0, b"first");
        datagram.extend(plain_record(20, 1, b"\x01"));
        datagram.extend(plain_record(99, 2, b""));
        let split: Vec<_> = records(&datagram)
            .map(|(h, f)| (h.content_type, h.sequence, f))
            .collect();
        assert_eq!(
            split,
            [(22, 0, &b"first"[..]), (20, 1, b"\x01"), (99, 2, b"")]
        );
    }

    #[test]
    fn splitting_stops_at_a_truncated_record_and_keeps_those_before() {
        let mut datagram = plain_record(22, 0, b"first");
        let second = plain_record(22, 1, b"second");
        for cut in 0..second.len() {
            let mut cut_short = datagram.clone();
            cut_short.extend_from_slice(&second[..cut]);
            cut_short.extend(plain_record(22, 2, b"third"));
            let mut split = records(&cut_short);
            // Whatever follows the cut is misframed; at most it is read as garbage records,
            // but the first record always comes out whole.
            assert_eq!(
                split.next().map(|(_, f)| f),
                Some(&b"first"[..]),
                "cut {cut}"
            );
        }
        datagram.extend_from_slice(&second[..second.len() - 1]);
        let mut split = records(&datagram);
        assert_eq!(split.next().map(|(_, f)| f), Some(&b"first"[..]));
        assert_eq!(split.next(), None);
        assert_eq!(split.next(), None);
        assert_eq!(records(&[]).next(), None);
    }

    #[test]
    fn the_replay_window_refuses_a_duplicate() {
        let mut window = ReplayWindow::new();
        assert!(window.is_fresh(0));
        window.mark(0);
        assert!(!window.is_fresh(0));
        window.mark(5);
        assert!(!window.is_fresh(5));
        assert!(!window.is_fresh(0));
        assert!(
            window.is_fresh(3),
            "an unseen older number in the window is fresh"
        );
        window.mark(3);
        assert!(!window.is_fresh(3));
        assert!(window.is_fresh(4));
    }

    #[test]
    fn the_replay_window_refuses_what_is_older_than_64_behind() {
        let mut window = ReplayWindow::new();
        window.mark(100);
        assert!(window.is_fresh(37), "63 behind is in the window");
        assert!(!window.is_fresh(36), "64 behind is out of it");
        assert!(!window.is_fresh(0));
    }

    #[test]
    fn a_far_future_number_is_accepted_and_slides_the_window() {
        let mut window = ReplayWindow::new();
        for seq in 0..10 {
            window.mark(seq);
        }
        let far = (1 << 48) - 1;
        assert!(window.is_fresh(far));
        window.mark(far);
        assert!(!window.is_fresh(far));
        assert!(
            !window.is_fresh(9),
            "the old numbers fell out of the window"
        );
        assert!(window.is_fresh(far - 1));
        window.mark(far - 1);
        assert!(!window.is_fresh(far - 1));
        assert!(window.is_fresh(far - 63));
        assert!(!window.is_fresh(far - 64));
    }

    /// A slide by less than the width keeps the marks still inside it.
    #[test]
    fn sliding_the_replay_window_keeps_the_marks_still_inside_it() {
        let mut window = ReplayWindow::new();
        window.mark(10);
        window.mark(12);
        window.mark(70);
        assert!(!window.is_fresh(10), "60 behind, still marked");
        assert!(window.is_fresh(11));
        assert!(!window.is_fresh(12));
        window.mark(74);
        assert!(!window.is_fresh(10), "now out of the window");
        assert!(!window.is_fresh(12));
        assert!(window.is_fresh(13));
    }
}
