//! The server's stateless cookie exchange (RFC 6347 §4.2.1), before any connection exists: a
//! ClientHello without a valid cookie gets a HelloVerifyRequest and is forgotten, so a
//! spoofed source costs one small reply and no memory. The cookie itself (what it binds, how
//! it expires) is the caller's: this module reads hellos and writes the request.

use crate::codec::Reader;
use crate::handshake::{self, Fragment, kind};
use crate::messages;
use crate::record::{self, ContentType, Header};

/// The highest message_seq a ClientHello may carry to be answered.
const MAX_HELLO_SEQ: u16 = 16;

/// What the cookie exchange needs of a ClientHello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The cookie it carries (empty on a first hello).
    pub cookie: Vec<u8>,
    /// Its handshake message_seq: the server's answer uses the same.
    pub message_seq: u16,
    /// Its record's sequence number: the HelloVerifyRequest's record takes it.
    pub record_seq: u64,
}

/// The ClientHello a datagram starts with: an epoch-0 handshake record holding the whole
/// message in one fragment. Anything else is `None` (hellos split over datagrams are not
/// taken statelessly; clients keep them whole).
pub fn client_hello(datagram: &[u8]) -> Option<Hello> {
    let (header, fragment) = record::records(datagram).next()?;
    if header.epoch != 0 || header.content_type != ContentType::Handshake as u8 {
        return None;
    }
    let f = Fragment::read(&mut Reader::new(fragment)).ok()?;
    if f.kind != kind::CLIENT_HELLO || f.offset != 0 || f.body.len() != f.length as usize {
        return None;
    }
    // A first hello is message 0 and the one returning the cookie 1 (a client that lost a
    // HelloVerifyRequest may count a few more); a server numbers its messages on from it.
    if f.seq > MAX_HELLO_SEQ {
        return None;
    }
    let hello = messages::ClientHello::read(f.body).ok()?;
    Some(Hello {
        cookie: hello.cookie,
        message_seq: f.seq,
        record_seq: header.sequence,
    })
}

/// Whether a datagram starts with an epoch-0 ClientHello record (whole or not): a new
/// handshake from its source.
pub fn is_client_hello(datagram: &[u8]) -> bool {
    record::records(datagram).next().is_some_and(|(h, f)| {
        h.epoch == 0
            && h.content_type == ContentType::Handshake as u8
            && f.first() == Some(&kind::CLIENT_HELLO)
    })
}

/// The epoch of a datagram's first record.
pub fn epoch(datagram: &[u8]) -> Option<u16> {
    Header::parse(datagram).map(|h| h.epoch)
}

/// The HelloVerifyRequest datagram answering `hello` with `cookie`.
pub fn hello_verify_request(hello: &Hello, cookie: &[u8]) -> Vec<u8> {
    let body = messages::hello_verify_request(cookie);
    let message = handshake::whole(kind::HELLO_VERIFY_REQUEST, hello.message_seq, &body);
    let mut out = Vec::with_capacity(record::HEADER_LEN + message.len());
    Header {
        content_type: ContentType::Handshake as u8,
        version: record::DTLS10,
        epoch: 0,
        sequence: hello.record_seq,
        length: message.len() as u16,
    }
    .write(&mut out);
    out.extend_from_slice(&message);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_hellos_are_told_from_other_records() {
        let mut hello = vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 1, 0, 50, 1];
        hello.extend_from_slice(&[0; 50]);
        assert!(is_client_hello(&hello));
        let mut later_epoch = hello.clone();
        later_epoch[4] = 1;
        assert!(!is_client_hello(&later_epoch));
        let mut application_data = hello.clone();
        application_data[0] = 23;
        assert!(!is_client_hello(&application_data));
        let mut server_hello = hello.clone();
        server_hello[13] = 2;
        assert!(!is_client_hello(&server_hello));
        assert!(!is_client_hello(&hello[..13]));
    }
}
