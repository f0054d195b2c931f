//! Golden bytes: the exact wire encoding of every message, so that an accidental change of the
//! protocol (field order, types, variant order, CRC, COBS) breaks a test.

use super::*;
use crate::Priority;

fn s<const N: usize>(text: &str) -> heapless::String<N> {
    heapless::String::try_from(text).unwrap()
}

fn v<const N: usize>(bytes: &[u8]) -> heapless::Vec<u8, N> {
    heapless::Vec::from_slice(bytes).unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Encodes, compares with the golden hex, and decodes back.
fn golden(frame: Frame, expected: &str) {
    let mut out = [0u8; MAX_FRAME];
    let n = encode(&frame, &mut out).unwrap();
    assert_eq!(
        hex(&out[..n]),
        expected,
        "wire encoding of {:?} changed",
        frame.message
    );
    assert_eq!(decode(&out[..n]), Ok(frame));
}

fn hello() -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        device_id: s("dev-1"),
        boot_id: 0xDEAD_BEEF,
        session_id: 2,
        capabilities: heapless::Vec::from_slice(&[s("echo"), s("sleep")]).unwrap(),
        slots: 8,
        max_payload: 256,
    }
}

#[test]
fn golden_hello() {
    golden(
        Frame {
            seq: 0,
            ack: 0,
            credit: 7,
            message: Message::Hello(hello()),
        },
        "010102072101056465762d31effdb6f50d0202046563686f05736c656570088002939845af00",
    );
}

fn assign() -> Assign {
    Assign {
        handle: 300,
        priority: Priority::P1,
        deadline_ms: Some(5000),
        capability: s("sensor.read"),
        locks: v(&[0, 2]),
        payload: v(b"{\"ch\":3}"),
        trace_id: s("t-9"),
    }
}

fn report() -> Report {
    Report {
        handle: 300,
        state: TaskReport::Completed,
        result: v(b"21.5"),
        error: None,
    }
}

const FRAMES: [(&str, &str); 9] = [
    ("welcome", "0101010c010102d00fd8362dc7325f00"),
    (
        "assign",
        "0201011502ac02010188270b73656e736f722e72656164021302087b226368223a337d03742d391df3813f00",
    ),
    ("cancel", "0202010803ac02382cf01200"),
    ("report", "0d01020304ac02010432312e3505ba2517d000"),
    ("report_failed", "0802020404ac0202070111e9e1307400"),
    ("heartbeat", "0108020405f93ac63600"),
    ("ack", "01038101060641e9667b00"),
    ("reject", "0303020a0701ad0201f1ee3fe200"),
    ("reject_hello", "0101010207010526b78db400"),
];

fn frame(name: &str) -> Frame {
    let (seq, ack, credit, message) = match name {
        "welcome" => {
            let w = Welcome {
                version: PROTOCOL_VERSION,
                session_id: 2,
                heartbeat_ms: 2000,
                liveness_ms: 7000,
            };
            (0, 0, 0, Message::Welcome(w))
        }
        "assign" => (1, 0, 0, Message::Assign(assign())),
        "cancel" => (2, 0, 0, Message::Cancel(Cancel { handle: 300 })),
        "report" => (1, 2, 3, Message::Report(report())),
        "report_failed" => {
            let r = Report {
                state: TaskReport::Failed,
                result: v(b""),
                error: Some(17),
                ..report()
            };
            (2, 2, 4, Message::Report(r))
        }
        "heartbeat" => (0, 2, 4, Message::Heartbeat),
        "ack" => (0, 129, 0, Message::Ack),
        "reject" => {
            let r = Reject {
                handle: Some(301),
                reason: RejectReason::NoFreeSlot,
            };
            (3, 2, 0, Message::Reject(r))
        }
        "reject_hello" => {
            let r = Reject {
                handle: None,
                reason: RejectReason::UnsupportedVersion,
            };
            (0, 0, 0, Message::Reject(r))
        }
        _ => unreachable!(),
    };
    Frame {
        seq,
        ack,
        credit,
        message,
    }
}

#[test]
fn golden_every_message() {
    for (name, expected) in FRAMES {
        golden(frame(name), expected);
    }
}

/// Encodes `frame` and returns its bytes without the delimiter, for corruption tests.
fn wire(frame: &Frame) -> Vec<u8> {
    let mut out = [0u8; MAX_FRAME];
    let n = encode(frame, &mut out).unwrap();
    out[..n - 1].to_vec()
}

/// COBS-encodes `body` with a valid CRC, bypassing postcard (to forge bad messages).
fn forge(body: &[u8]) -> Vec<u8> {
    let mut raw = body.to_vec();
    raw.extend_from_slice(&crc32(body).to_le_bytes());
    let mut out = vec![0u8; cobs::max_encoded_len(raw.len())];
    let n = cobs::encode(&raw, &mut out).unwrap();
    out.truncate(n);
    out
}

#[test]
fn every_corruption_is_a_typed_error() {
    let good = wire(&frame("assign"));
    let mut flipped = good.clone();
    flipped[10] ^= 0x01;
    assert_eq!(decode(&flipped), Err(DecodeError::BadCrc));
    let mut zero_inside = good.clone();
    zero_inside[5] = 0;
    assert_eq!(decode(&zero_inside), Err(DecodeError::BadCobs));
    assert_eq!(decode(&good[..good.len() - 3]), Err(DecodeError::BadCobs));
    assert_eq!(decode(&[0x02, 0x05]), Err(DecodeError::Truncated));
    assert_eq!(decode(&[0x11; MAX_FRAME]), Err(DecodeError::Oversize));
    // Tag 8 does not exist; a Hello of version 2; a Welcome of version 0.
    assert_eq!(
        decode(&forge(&[0, 0, 0, 8])),
        Err(DecodeError::UnknownMessage(8))
    );
    assert_eq!(
        decode(&forge(&[0, 0, 0, 0, 2, 1, b'x'])),
        Err(DecodeError::UnsupportedVersion(2))
    );
    assert_eq!(
        decode(&forge(&[0, 0, 0, 1, 0])),
        Err(DecodeError::UnsupportedVersion(0))
    );
    // Valid CRC, invalid content: priority 6, trailing bytes, a truncated body.
    assert_eq!(
        decode(&forge(&[1, 0, 0, 2, 1, 6])),
        Err(DecodeError::Malformed)
    );
    assert_eq!(
        decode(&forge(&[0, 0, 0, 6, 0])),
        Err(DecodeError::Malformed)
    );
    assert_eq!(decode(&forge(&[0, 0, 0, 4])), Err(DecodeError::Malformed));
    // Payload length beyond MAX_PAYLOAD.
    let mut big = vec![1, 0, 0, 2, 1, 1, 0, 1, b'e', 0];
    big.extend_from_slice(&[0x81, 0x02]); // 257
    big.extend_from_slice(&[7u8; 257]);
    big.push(0);
    assert_eq!(decode(&forge(&big)), Err(DecodeError::Malformed));
}

#[test]
fn the_largest_message_of_every_kind_fits_max_frame() {
    let full = |c: char, n: usize| {
        let mut t = heapless::String::new();
        (0..n).for_each(|_| t.push(c).unwrap());
        t
    };
    let max_assign = Assign {
        handle: u32::MAX,
        priority: Priority::P5,
        deadline_ms: Some(u32::MAX),
        capability: full('c', MAX_CAPABILITY_NAME),
        locks: v(&[255; MAX_TASK_LOCKS]),
        payload: v(&[0xFF; MAX_PAYLOAD]),
        trace_id: full('t', MAX_TRACE_ID),
    };
    let max_hello = Hello {
        version: PROTOCOL_VERSION,
        device_id: full('d', MAX_DEVICE_ID),
        boot_id: u32::MAX,
        capabilities: (0..MAX_CAPABILITIES)
            .map(|_| full('x', MAX_CAPABILITY_NAME))
            .collect(),
        session_id: u32::MAX,
        slots: 255,
        max_payload: u16::MAX,
    };
    let max_report = Report {
        handle: u32::MAX,
        state: TaskReport::Cancelled,
        result: v(&[0xFF; MAX_PAYLOAD]),
        error: Some(u16::MAX),
    };
    let mut largest = 0;
    for message in [
        Message::Assign(max_assign),
        Message::Hello(max_hello),
        Message::Report(max_report),
    ] {
        let frame = Frame {
            seq: u32::MAX,
            ack: u32::MAX,
            credit: u8::MAX,
            message,
        };
        let mut out = [0u8; MAX_FRAME];
        let n = encode(&frame, &mut out).unwrap();
        assert!(n <= MAX_FRAME);
        assert_eq!(decode(&out[..n]), Ok(frame));
        largest = largest.max(n);
    }
    assert_eq!(
        largest, MAX_FRAME,
        "MAX_FRAME should be tight for the largest Assign"
    );
}

#[test]
fn deframer_splits_streams_and_resynchronises_after_garbage() {
    let a = wire(&frame("assign"));
    let h = wire(&frame("heartbeat"));
    let mut stream = vec![0, 0];
    stream.extend_from_slice(&a);
    stream.push(0);
    stream.extend_from_slice(&[0x11; MAX_FRAME + 10]); // line noise longer than any frame
    stream.push(0);
    stream.extend_from_slice(&[0x03, 0x01]); // a corrupted fragment
    stream.push(0);
    stream.extend_from_slice(&h);
    stream.push(0);
    let mut d: Deframer<MAX_FRAME> = Deframer::new();
    let mut got = vec![];
    // Feed in awkward chunk sizes.
    for chunk in stream.chunks(7) {
        let mut rest = chunk;
        while !rest.is_empty() {
            let (used, out) = d.push(rest);
            rest = &rest[used..];
            got.extend(out);
        }
    }
    assert_eq!(
        got,
        [
            Ok(frame("assign")),
            Err(DecodeError::Oversize),
            Err(DecodeError::BadCobs),
            Ok(frame("heartbeat")),
        ]
    );
}
