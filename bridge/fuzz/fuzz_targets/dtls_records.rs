//! edge-dtls's decoders on any bytes, and its writers against its readers: record headers and
//! the framing of a datagram into records, the listener's ClientHello reader and its
//! HelloVerifyRequest, handshake fragments and their reassembly, every handshake message body,
//! the AEAD protection of records and the replay window.
//!
//! - Nothing panics, on any input.
//! - What a reader accepts, written again, reads back the same (and is byte for byte the input
//!   where the encoding has one form: headers, fragments, certificates, PSK identities, points,
//!   ServerKeyExchange).
//! - What a writer writes, its reader reads back: ClientHello and ServerHello of any fields,
//!   the datagram of a hello, a HelloVerifyRequest, a message split into fragments at any MTU
//!   and pushed in any order (with duplicates) into a reassembler, a record sealed under any
//!   suite; a sealed record changed in any authenticated byte does not open.
//! - The replay window answers as a set of the sequence numbers seen does.
#![no_main]

use std::collections::BTreeSet;

use arbitrary::Arbitrary;
use edge_dtls::Suite;
use edge_dtls::codec::Reader;
use edge_dtls::cookie;
use edge_dtls::handshake::{self, Fragment, Reassembler, Received, kind};
use edge_dtls::messages::{self as msg, ClientHello, RENEGOTIATION_SCSV, ServerHello};
use edge_dtls::record::{self, ContentType, Header, MAX_PLAINTEXT, Protection, ReplayWindow};
use libfuzzer_sys::fuzz_target;

/// The 48 bits of a record sequence number.
const SEQUENCE_MASK: u64 = (1 << 48) - 1;
/// The highest message_seq of a ClientHello the listener answers (edge-dtls's
/// `cookie::MAX_HELLO_SEQ`: a first hello is 0, the one with the cookie 1, a few more after
/// lost HelloVerifyRequests).
const MAX_HELLO_SEQ: u16 = 16;

#[derive(Arbitrary, Debug)]
enum Case {
    /// Every decoder on the same bytes.
    Bytes(Vec<u8>),
    Hello(Hello),
    ServerHello(ServerHelloFields),
    /// A ClientHello in a datagram, as the listener reads it.
    HelloDatagram {
        hello: Hello,
        message_seq: u16,
        record_seq: u64,
        dtls10: bool,
        /// Bytes after the hello's record (another record, or junk).
        trailing: Vec<u8>,
        cookie: Vec<u8>,
    },
    Reassembly(Reassembly),
    Messages(Messages),
    Seal(Seal),
    Replay(Vec<Replay>),
}

/// The fields of a ClientHello (lists cut to what fits their length fields).
#[derive(Arbitrary, Debug)]
struct Hello {
    version: u16,
    random: [u8; 32],
    session_id: Vec<u8>,
    cookie: Vec<u8>,
    suites: Vec<u16>,
    groups: Option<Vec<u16>>,
    signature_schemes: Option<Vec<u16>>,
    extended_master_secret: bool,
    secure_renegotiation: bool,
    ec_point_formats: bool,
}

impl Hello {
    fn build(&self) -> ClientHello {
        let cut = |v: &[u16]| v[..v.len().min(1000)].to_vec();
        ClientHello {
            version: self.version,
            random: self.random,
            session_id: self.session_id[..self.session_id.len().min(32)].to_vec(),
            cookie: self.cookie[..self.cookie.len().min(255)].to_vec(),
            suites: cut(&self.suites),
            groups: self.groups.as_deref().map(cut),
            signature_schemes: self.signature_schemes.as_deref().map(cut),
            extended_master_secret: self.extended_master_secret,
            secure_renegotiation: self.secure_renegotiation,
            ec_point_formats: self.ec_point_formats,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct ServerHelloFields {
    version: u16,
    random: [u8; 32],
    suite: u16,
    extended_master_secret: bool,
    secure_renegotiation: bool,
    ec_point_formats: bool,
}

/// Messages of consecutive sequence numbers from `start`, split into fragments of at most
/// `room` bytes, pushed in the order `order` picks (some may be dropped: too many pieces with
/// gaps), then all of them in order, twice (the second time completes a message dropped in
/// the first, as the peer's retransmission does).
#[derive(Arbitrary, Debug)]
struct Reassembly {
    start: u16,
    room: u16,
    epoch: bool,
    messages: Vec<(u8, Vec<u8>)>,
    order: Vec<u16>,
}

/// The bodies the writers of `messages` take.
#[derive(Arbitrary, Debug)]
struct Messages {
    cookie: Vec<u8>,
    chain: Vec<Vec<u8>>,
    group: u16,
    point: Vec<u8>,
    scheme: u16,
    signature: Vec<u8>,
    schemes: Vec<u16>,
    identity: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
struct Seal {
    suite: u8,
    key: Vec<u8>,
    salt: [u8; 4],
    content_type: u8,
    epoch: u16,
    sequence: u64,
    plaintext: Vec<u8>,
    /// A byte of the sealed record changed: the byte `% len` xored with the mask (or 1).
    flip: (u16, u8),
    /// Any fragment opened under the record's header.
    forged: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
enum Replay {
    /// The window's newest plus `n` (minus for negative `n`).
    Near(i8),
    Any(u64),
    /// Marked (as after authentication) rather than only checked.
    Mark(Box<Replay>),
}

fn record_bytes(b: &[u8]) {
    // A header reads back to its bytes (the sequence number is 48 bits either way).
    match Header::parse(b) {
        Some(h) => {
            let mut out = Vec::new();
            h.write(&mut out);
            assert_eq!(out, b[..record::HEADER_LEN]);
            assert!(h.sequence <= SEQUENCE_MASK);
            assert_eq!(cookie::epoch(b), Some(h.epoch));
        }
        None => {
            assert!(b.len() < record::HEADER_LEN);
            assert_eq!(cookie::epoch(b), None);
        }
    }
    // Framing: the records are a prefix of the datagram, each its header then as many
    // bytes as the header says, and what follows cannot be framed.
    let mut framed = 0;
    for (h, fragment) in record::records(b) {
        assert_eq!(fragment.len(), usize::from(h.length));
        assert_eq!(Header::parse(&b[framed..]), Some(h));
        assert_eq!(
            &b[framed + record::HEADER_LEN..][..fragment.len()],
            fragment
        );
        framed += record::HEADER_LEN + fragment.len();
    }
    let rest = &b[framed..];
    assert!(
        rest.is_empty()
            || Header::parse(rest)
                .is_none_or(|h| rest.len() < record::HEADER_LEN + usize::from(h.length)),
        "records stopped before a whole record"
    );
}

fn listener_bytes(b: &[u8]) {
    let Some(hello) = cookie::client_hello(b) else {
        return;
    };
    assert!(cookie::is_client_hello(b));
    assert_eq!(cookie::epoch(b), Some(0));
    assert!(hello.cookie.len() <= 255);
    hello_verify_request(&hello, b"a cookie of the listener's");
}

/// The HelloVerifyRequest answering `hello` reads back: one epoch-0 record numbered as the
/// hello's, one whole message numbered as the hello's, the cookie.
fn hello_verify_request(hello: &cookie::Hello, cookie_bytes: &[u8]) {
    let hvr = cookie::hello_verify_request(hello, cookie_bytes);
    let records: Vec<_> = record::records(&hvr).collect();
    assert_eq!(records.len(), 1);
    let (h, fragment) = records[0];
    assert_eq!(
        (h.content_type, h.version, h.epoch, h.sequence),
        (
            ContentType::Handshake as u8,
            record::DTLS10,
            0,
            hello.record_seq
        )
    );
    assert_eq!(record::HEADER_LEN + fragment.len(), hvr.len());
    let mut r = Reader::new(fragment);
    let f = Fragment::read(&mut r).expect("the HelloVerifyRequest's fragment");
    r.end("end").expect("one fragment");
    assert_eq!(
        (f.kind, f.seq, f.offset, f.length as usize),
        (
            kind::HELLO_VERIFY_REQUEST,
            hello.message_seq,
            0,
            f.body.len()
        )
    );
    assert_eq!(
        msg::read_hello_verify_request(f.body).unwrap(),
        cookie_bytes
    );
    assert!(!cookie::is_client_hello(&hvr));
    assert_eq!(cookie::client_hello(&hvr), None);
}

fn fragment_bytes(b: &[u8], epoch: u16) {
    let mut r = Reader::new(b);
    let mut reassembler = Reassembler::starting_at(b.get(4).map_or(0, |&s| u16::from(s)));
    while !r.is_empty() {
        let before = r.rest();
        let Ok(f) = Fragment::read(&mut r) else {
            break;
        };
        let consumed = &before[..before.len() - r.rest().len()];
        assert!(f.offset as usize + f.body.len() <= f.length as usize);
        let mut out = Vec::new();
        f.write(&mut out);
        assert_eq!(out, consumed, "a fragment reads back to its bytes");
        if reassembler.push(&f, epoch).is_err() {
            break;
        }
        while let Some(m) = reassembler.pop() {
            assert_eq!(m.epoch, epoch);
            let whole = m.whole();
            let w = Fragment::read(&mut Reader::new(&whole)).expect("a whole message");
            assert_eq!((w.kind, w.seq, w.body), (m.kind, m.seq, &m.body[..]));
        }
    }
}

fn client_hello_round_trip(h: &ClientHello) {
    let written = h.write();
    let read = ClientHello::read(&written).expect("a ClientHello written reads");
    let mut expected = h.clone();
    // The SCSV says what the extension says (RFC 5746 §3.4).
    expected.secure_renegotiation |= h.suites.contains(&RENEGOTIATION_SCSV);
    assert_eq!(read, expected);
}

fn server_hello_round_trip(h: &ServerHello) {
    let read = ServerHello::read(&h.write()).expect("a ServerHello written reads");
    assert_eq!(&read, h);
}

fn message_bytes(b: &[u8]) {
    if let Ok(h) = ClientHello::read(b) {
        assert!(h.session_id.len() <= 32 && h.cookie.len() <= 255);
        client_hello_round_trip(&h);
    }
    if let Ok(h) = ServerHello::read(b) {
        server_hello_round_trip(&h);
    }
    if let Ok(cookie) = msg::read_hello_verify_request(b) {
        assert_eq!(msg::hello_verify_request(&cookie)[2..], b[2..]);
    }
    if let Ok(chain) = msg::read_certificate(b) {
        assert_eq!(msg::certificate(&chain), b);
    }
    if let Ok(ske) = msg::read_ecdhe_server_key_exchange(b) {
        assert_eq!(msg::ecdhe_params(ske.group, &ske.point), ske.params);
        let mut again = ske.params.clone();
        again.extend_from_slice(&msg::signed(ske.scheme, &ske.signature));
        assert_eq!(again, b);
    }
    let mut r = Reader::new(b);
    if let Ok((scheme, signature)) = msg::read_signed(&mut r) {
        let consumed = b.len() - r.rest().len();
        assert_eq!(msg::signed(scheme, &signature), b[..consumed]);
    }
    if let Ok(schemes) = msg::read_certificate_request(b) {
        let again = msg::read_certificate_request(&msg::certificate_request(&schemes));
        assert_eq!(again.unwrap(), schemes);
    }
    if let Ok(id) = msg::read_psk_identity(b) {
        assert_eq!(msg::psk_identity(&id), b);
    }
    if let Ok(point) = msg::read_ecdhe_point(b) {
        assert_eq!(msg::ecdhe_point(&point), b);
    }
}

fn bytes(b: &[u8]) {
    record_bytes(b);
    listener_bytes(b);
    fragment_bytes(b, 0);
    message_bytes(b);
    // The records of a datagram, as a connection takes them apart.
    for (h, fragment) in record::records(b) {
        if h.content_type == ContentType::Handshake as u8 {
            fragment_bytes(fragment, h.epoch);
            let mut r = Reader::new(fragment);
            if let Ok(f) = Fragment::read(&mut r) {
                message_bytes(f.body);
            }
        }
    }
    let _ = Suite::parse_list(&String::from_utf8_lossy(b));
}

fn reassembly(c: &Reassembly) {
    let start = c.start.min(u16::MAX - 16);
    let epoch = u16::from(c.epoch);
    // Six messages at most: edge-dtls keeps messages up to five ahead of the next one (its
    // largest flight), and 40 KiB of them.
    let messages: Vec<Vec<u8>> = c
        .messages
        .iter()
        .take(6)
        .filter(|(_, body)| body.len() <= 4096)
        .enumerate()
        .map(|(i, (k, body))| handshake::whole(*k, start + i as u16, body))
        .collect();
    let mut pieces = Vec::new();
    for m in &messages {
        handshake::fragments(m, usize::from(c.room), |p| pieces.push(p));
    }
    let mut r = Reassembler::starting_at(start);
    let mut push = |p: &[u8]| {
        let mut rd = Reader::new(p);
        let f = Fragment::read(&mut rd).expect("a fragment written reads");
        rd.end("one fragment").expect("one fragment");
        let got = r.push(&f, epoch);
        assert!(
            matches!(got, Ok(Received::Buffered | Received::Dropped)),
            "{got:?}"
        );
    };
    if !pieces.is_empty() {
        for i in c.order.iter().take(256) {
            push(&pieces[usize::from(*i) % pieces.len()]);
        }
    }
    for p in pieces.iter().chain(&pieces) {
        push(p);
    }
    for (i, m) in messages.iter().enumerate() {
        let got = r.pop().expect("every fragment of the message was pushed");
        assert_eq!((got.seq, got.epoch), (start + i as u16, epoch));
        assert_eq!(&got.whole(), m);
    }
    assert_eq!(r.pop(), None);
    assert_eq!(r.next_seq(), start + messages.len() as u16);
}

fn messages(c: &Messages) {
    let cookie = &c.cookie[..c.cookie.len().min(255)];
    assert_eq!(
        msg::read_hello_verify_request(&msg::hello_verify_request(cookie)).unwrap(),
        cookie
    );
    assert_eq!(
        msg::read_certificate(&msg::certificate(&c.chain)).unwrap(),
        c.chain
    );
    let point = &c.point[..c.point.len().min(255)];
    let params = msg::ecdhe_params(c.group, point);
    let mut ske = params.clone();
    ske.extend_from_slice(&msg::signed(c.scheme, &c.signature));
    let read = msg::read_ecdhe_server_key_exchange(&ske).unwrap();
    assert_eq!(
        (
            read.group,
            &read.point[..],
            read.params,
            read.scheme,
            read.signature
        ),
        (c.group, point, params, c.scheme, c.signature.clone())
    );
    assert_eq!(
        msg::read_certificate_request(&msg::certificate_request(&c.schemes)).unwrap(),
        c.schemes
    );
    assert_eq!(
        msg::read_psk_identity(&msg::psk_identity(&c.identity)).unwrap(),
        c.identity
    );
    assert_eq!(
        msg::read_ecdhe_point(&msg::ecdhe_point(point)).unwrap(),
        point
    );
}

fn seal(c: &Seal) {
    let suite = Suite::ALL[usize::from(c.suite) % Suite::ALL.len()];
    assert_eq!(Suite::from_id(suite.id()), Some(suite));
    assert_eq!(Suite::from_name(suite.name()), Some(suite));
    // A key of the wrong length is refused; one of the right length (the input's bytes,
    // repeated) taken.
    if c.key.len() != suite.key_len() {
        assert!(Protection::new(suite, &c.key, c.salt).is_err());
    }
    let key: Vec<u8> = (0..suite.key_len())
        .map(|i| c.key.get(i % c.key.len().max(1)).copied().unwrap_or(0))
        .collect();
    let p = Protection::new(suite, &key, c.salt).expect("a key of the suite's length");
    let content = [
        ContentType::ChangeCipherSpec,
        ContentType::Alert,
        ContentType::Handshake,
        ContentType::ApplicationData,
    ][usize::from(c.content_type) % 4];
    let plaintext = &c.plaintext[..c.plaintext.len().min(MAX_PLAINTEXT)];
    let mut out = Vec::new();
    p.seal(content, c.epoch, c.sequence, plaintext, &mut out);
    assert_eq!(
        out.len(),
        record::HEADER_LEN + p.overhead() + plaintext.len()
    );
    let h = Header::parse(&out).expect("a header");
    assert_eq!(
        (h.content_type, h.version, h.epoch, h.sequence),
        (
            content as u8,
            record::DTLS12,
            c.epoch,
            c.sequence & SEQUENCE_MASK
        )
    );
    assert_eq!(usize::from(h.length), out.len() - record::HEADER_LEN);
    let fragment = &out[record::HEADER_LEN..];
    assert_eq!(p.open(&h, fragment).as_deref(), Ok(plaintext));
    // Any byte but the length field's is authenticated (the length is the fragment's).
    let at = usize::from(c.flip.0) % out.len();
    if !(11..13).contains(&at) {
        let mut changed = out.clone();
        changed[at] ^= c.flip.1.max(1);
        let h = Header::parse(&changed).expect("a header");
        assert!(
            p.open(&h, &changed[record::HEADER_LEN..]).is_err(),
            "a record with byte {at} changed opened"
        );
    }
    let _ = p.open(&h, &c.forged);
}

fn replay(ops: &[Replay]) {
    let mut window = ReplayWindow::new();
    let mut seen = BTreeSet::new();
    for op in ops.iter().take(256) {
        let (mut op, mut mark) = (op, false);
        while let Replay::Mark(inner) = op {
            (op, mark) = (inner, true);
        }
        let top = seen.last().copied().unwrap_or(0u64);
        let sequence = match op {
            Replay::Near(n) => top.saturating_add_signed(i64::from(*n)) & SEQUENCE_MASK,
            Replay::Any(s) => s & SEQUENCE_MASK,
            Replay::Mark(_) => unreachable!(),
        };
        let fresh =
            sequence > top || (top - sequence < ReplayWindow::WIDTH && !seen.contains(&sequence));
        assert_eq!(
            window.is_fresh(sequence),
            fresh,
            "{sequence} with top {top}"
        );
        if mark {
            window.mark(sequence);
            seen.insert(sequence);
        }
    }
}

fuzz_target!(|case: Case| match case {
    Case::Bytes(b) => bytes(&b),
    Case::Hello(h) => client_hello_round_trip(&h.build()),
    Case::ServerHello(f) => server_hello_round_trip(&ServerHello {
        version: f.version,
        random: f.random,
        suite: f.suite,
        extended_master_secret: f.extended_master_secret,
        secure_renegotiation: f.secure_renegotiation,
        ec_point_formats: f.ec_point_formats,
    }),
    Case::HelloDatagram {
        hello,
        message_seq,
        record_seq,
        dtls10,
        trailing,
        cookie: answer,
    } => {
        // Around MAX_HELLO_SEQ half the time, any number the other half.
        let message_seq = if message_seq & 0x8000 == 0 {
            message_seq % (MAX_HELLO_SEQ + 4)
        } else {
            message_seq
        };
        let hello = hello.build();
        let message = handshake::whole(kind::CLIENT_HELLO, message_seq, &hello.write());
        if message.len() > usize::from(u16::MAX) {
            return;
        }
        let mut datagram = Vec::new();
        Header {
            content_type: ContentType::Handshake as u8,
            version: if dtls10 {
                record::DTLS10
            } else {
                record::DTLS12
            },
            epoch: 0,
            sequence: record_seq,
            length: message.len() as u16,
        }
        .write(&mut datagram);
        datagram.extend_from_slice(&message);
        datagram.extend_from_slice(&trailing);
        assert!(cookie::is_client_hello(&datagram));
        let read = cookie::client_hello(&datagram);
        // A hello numbered beyond what a client counts in a cookie exchange is not answered
        // (edge-dtls's `MAX_HELLO_SEQ`): the server numbers its messages on from it.
        if message_seq > MAX_HELLO_SEQ {
            assert_eq!(read, None, "a hello numbered {message_seq} taken");
            return;
        }
        let read = read.expect("the hello of the datagram");
        assert_eq!(
            read,
            cookie::Hello {
                cookie: hello.cookie.clone(),
                message_seq,
                record_seq: record_seq & SEQUENCE_MASK,
            }
        );
        hello_verify_request(&read, &answer[..answer.len().min(255)]);
    }
    Case::Reassembly(r) => reassembly(&r),
    Case::Messages(m) => messages(&m),
    Case::Seal(s) => seal(&s),
    Case::Replay(ops) => replay(&ops),
});
