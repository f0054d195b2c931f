//! Reading and writing the big-endian, length-prefixed fields of TLS messages.
//!
//! A [`Reader`] never panics: every read past the end, and every length that overruns, is a
//! [`Malformed`] error naming what was being read.

/// A message field that could not be read: the input ended early or a length overran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed {0}")]
pub struct Malformed(pub &'static str);

/// Reads fields from a byte slice.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }

    /// `n` bytes.
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Malformed> {
        if n > self.rest.len() {
            return Err(Malformed(what));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], Malformed> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, Malformed> {
        Ok(self.take(1, what)?[0])
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, Malformed> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    pub fn u24(&mut self, what: &'static str) -> Result<u32, Malformed> {
        let b = self.take(3, what)?;
        Ok(u32::from_be_bytes([0, b[0], b[1], b[2]]))
    }

    /// A vector with a one-byte length.
    pub fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], Malformed> {
        let n = self.u8(what)?;
        self.take(usize::from(n), what)
    }

    /// A vector with a two-byte length.
    pub fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], Malformed> {
        let n = self.u16(what)?;
        self.take(usize::from(n), what)
    }

    /// A vector with a three-byte length.
    pub fn vec24(&mut self, what: &'static str) -> Result<&'a [u8], Malformed> {
        let n = self.u24(what)?;
        self.take(n as usize, what)
    }

    /// Fails unless everything was read.
    pub fn end(&self, what: &'static str) -> Result<(), Malformed> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(Malformed(what))
        }
    }
}

/// Appends `bytes` with a one-byte length (callers keep them under 256 bytes).
pub fn put_vec8(out: &mut Vec<u8>, bytes: &[u8]) {
    debug_assert!(bytes.len() <= 0xff);
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
}

/// Appends `bytes` with a two-byte length (callers keep them under 64 KiB).
pub fn put_vec16(out: &mut Vec<u8>, bytes: &[u8]) {
    debug_assert!(bytes.len() <= 0xffff);
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

pub fn put_u24(out: &mut Vec<u8>, n: usize) {
    debug_assert!(n <= 0xff_ffff);
    out.extend_from_slice(&(n as u32).to_be_bytes()[1..]);
}

/// Appends `bytes` with a three-byte length.
pub fn put_vec24(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u24(out, bytes.len());
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_refuses_every_read_past_the_end() {
        let mut r = Reader::new(&[0, 3, 1, 2]);
        assert_eq!(r.vec16("v"), Err(Malformed("v")));
        let mut r = Reader::new(&[0, 2, 1, 2, 9]);
        assert_eq!(r.vec16("v").unwrap(), &[1, 2]);
        assert_eq!(r.end("end"), Err(Malformed("end")));
        assert_eq!(r.u24("n"), Err(Malformed("n")));
        assert_eq!(r.u8("b").unwrap(), 9);
        assert!(r.is_empty());
        assert_eq!(r.u8("b"), Err(Malformed("b")));
    }

    #[test]
    fn vectors_written_are_read_back() {
        let mut out = Vec::new();
        put_vec8(&mut out, b"ab");
        put_vec16(&mut out, b"cde");
        put_vec24(&mut out, b"f");
        assert_eq!(out, [2, b'a', b'b', 0, 3, b'c', b'd', b'e', 0, 0, 1, b'f']);
        let mut r = Reader::new(&out);
        assert_eq!(r.vec8("a").unwrap(), b"ab");
        assert_eq!(r.vec16("b").unwrap(), b"cde");
        assert_eq!(r.vec24("c").unwrap(), b"f");
        r.end("end").unwrap();
    }
}
