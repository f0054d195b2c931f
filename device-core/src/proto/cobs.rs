//! Consistent Overhead Byte Stuffing: removes every `0x00` from a frame so that `0x00` can
//! delimit frames on byte streams. Overhead is one byte per 254 bytes of input, plus one.
//! Both directions check every bound and report failure instead of panicking.

/// Worst-case encoded length of `n` input bytes (without the delimiter).
pub(crate) const fn max_encoded_len(n: usize) -> usize {
    n + n / 254 + 1
}

/// Encodes `src` into `dst`; returns the encoded length, or `None` if `dst` is too small.
pub(crate) fn encode(src: &[u8], dst: &mut [u8]) -> Option<usize> {
    let mut code_at = 0; // where the current block's length code goes
    let mut out = 1;
    let mut code: u8 = 1;
    for &b in src {
        if b == 0 {
            *dst.get_mut(code_at)? = code;
            code_at = out;
            out += 1;
            code = 1;
        } else {
            *dst.get_mut(out)? = b;
            out += 1;
            code += 1;
            if code == 0xFF {
                *dst.get_mut(code_at)? = code;
                code_at = out;
                out += 1;
                code = 1;
            }
        }
    }
    *dst.get_mut(code_at)? = code;
    Some(out)
}

/// Why a COBS block could not be decoded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum CobsError {
    /// A zero byte inside the frame, or a length code running past its end.
    Malformed,
    /// The decoded frame does not fit in the destination.
    TooLong,
}

/// Decodes `src` (no delimiter) into `dst`; returns the decoded length.
pub(crate) fn decode(src: &[u8], dst: &mut [u8]) -> Result<usize, CobsError> {
    let mut i = 0;
    let mut out = 0;
    while i < src.len() {
        let code = src[i];
        if code == 0 {
            return Err(CobsError::Malformed);
        }
        let end = i + code as usize;
        if end > src.len() {
            return Err(CobsError::Malformed);
        }
        for &b in &src[i + 1..end] {
            if b == 0 {
                return Err(CobsError::Malformed);
            }
            *dst.get_mut(out).ok_or(CobsError::TooLong)? = b;
            out += 1;
        }
        i = end;
        // A block shorter than 254 data bytes stands for data followed by a zero, except at
        // the very end, where that zero is the implicit one COBS appends.
        if code != 0xFF && i < src.len() {
            *dst.get_mut(out).ok_or(CobsError::TooLong)? = 0;
            out += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(data: &[u8]) -> Vec<u8> {
        let mut enc = vec![0u8; max_encoded_len(data.len())];
        let n = encode(data, &mut enc).unwrap();
        assert!(!enc[..n].contains(&0), "encoded form must not contain zero");
        let mut dec = vec![0u8; data.len()];
        let m = decode(&enc[..n], &mut dec).unwrap();
        assert_eq!(&dec[..m], data);
        enc.truncate(n);
        enc
    }

    #[test]
    fn known_encodings() {
        assert_eq!(round_trip(&[]), [0x01]);
        assert_eq!(round_trip(&[0x00]), [0x01, 0x01]);
        assert_eq!(round_trip(&[0x00, 0x00]), [0x01, 0x01, 0x01]);
        assert_eq!(
            round_trip(&[0x11, 0x22, 0x00, 0x33]),
            [0x03, 0x11, 0x22, 0x02, 0x33]
        );
        assert_eq!(
            round_trip(&[0x11, 0x00, 0x00, 0x00]),
            [0x02, 0x11, 0x01, 0x01, 0x01]
        );
    }

    #[test]
    fn long_runs_without_zero() {
        for n in [253, 254, 255, 508, 600] {
            let data: Vec<u8> = (0..n).map(|i| (i % 255 + 1) as u8).collect();
            let enc = round_trip(&data);
            assert!(enc.len() <= max_encoded_len(n));
        }
    }

    #[test]
    fn bad_input_is_refused_not_panicked() {
        let mut dst = [0u8; 8];
        assert_eq!(decode(&[0x05, 0x01], &mut dst), Err(CobsError::Malformed));
        assert_eq!(decode(&[0x02, 0x00], &mut dst), Err(CobsError::Malformed));
        assert_eq!(decode(&[0x00], &mut dst), Err(CobsError::Malformed));
        assert_eq!(
            decode(&[0x0A, 1, 2, 3, 4, 5, 6, 7, 8, 9], &mut dst),
            Err(CobsError::TooLong)
        );
        assert_eq!(encode(&[1, 2, 3], &mut [0u8; 3]), None);
    }
}
