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

fn hello(version: u16) -> Hello {
    Hello {
        version,
        device_id: s("dev-1"),
        boot_id: 0xDEAD_BEEF,
        session_id: 2,
        capabilities: heapless::Vec::from_slice(&[s("echo"), s("sleep")]).unwrap(),
        locks: heapless::Vec::from_slice(&[s("i2c0"), s("bus")]).unwrap(),
        slots: 8,
        max_payload: 256,
        // Version 1 has no masks (they must be 0 to round-trip).
        resumable: if version >= 2 { 0b01 } else { 0 },
        restartable: if version >= 2 { 0b10 } else { 0 },
    }
}

/// Version 1's bytes, unchanged by version 2 (a version 1 device keeps working with a
/// version 2 bridge), and version 2's, which differ in the version byte and the two mask
/// bytes after `max_payload` (`echo` resumes, `sleep` restarts). Version 3 adds a message
/// kind only: its `Hello` is version 2's but for the version byte.
#[test]
fn golden_hello_of_each_version() {
    let frame = |version| Frame {
        seq: 0,
        ack: 0,
        credit: 7,
        message: Message::Hello(hello(version)),
    };
    golden(
        frame(1),
        "010102072b01056465762d31effdb6f50d0202046563686f05736c65657002046932633003627573088002b637792900",
    );
    golden(
        frame(2),
        "010102072d02056465762d31effdb6f50d0202046563686f05736c6565700204693263300362757308800201025277529600",
    );
    golden(
        frame(3),
        "010102072d03056465762d31effdb6f50d0202046563686f05736c65657002046932633003627573088002010215e5163900",
    );
    assert_eq!(PROTOCOL_VERSION, 3);
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

const FRAMES: [(&str, &str); 21] = [
    ("welcome_v1", "0101010c010102d00fd8362dc7325f00"),
    ("welcome_v2", "0101010c010202d00fd83683b5a6d900"),
    ("welcome", "0101010c010302d00fd8362666fa1200"),
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
    ("reject_started", "0d0403010701ac02086aedcffd00"),
    ("preempt", "0203010808ac027c10f9d500"),
    ("suspended", "0705030209ac02010105ffac5f8d00"),
    (
        "suspended_checkpoint",
        "0b06030209ac028201050101010b2a045b312c329e843e9800",
    ),
    ("reject_not_resumable", "0d0503010701ad020955b7a04700"),
    (
        "restore",
        "030401080aad028201050101010b2a045b312c32311651ad00",
    ),
    ("restore_empty", "030501040aae02010105659bb1a400"),
    (
        "suspended_max_handle",
        "2007030209ffffffff0fffffffff0f10ffffffffffffffffffffffffffffffff05e362e49d00",
    ),
    ("reprioritize", "030603040bac02056dd97d4d00"),
    ("reprioritize_back", "030704090bac0204782662f100"),
];

fn frame(name: &str) -> Frame {
    let welcome = |version| Welcome {
        version,
        session_id: 2,
        heartbeat_ms: 2000,
        liveness_ms: 7000,
    };
    let (seq, ack, credit, message) = match name {
        "welcome_v1" => (0, 0, 0, Message::Welcome(welcome(1))),
        "welcome_v2" => (0, 0, 0, Message::Welcome(welcome(2))),
        "welcome" => (0, 0, 0, Message::Welcome(welcome(3))),
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
        "reject_started" => {
            let r = Reject {
                handle: Some(300),
                reason: RejectReason::Started,
            };
            (4, 3, 1, Message::Reject(r))
        }
        "preempt" => (3, 0, 0, Message::Preempt(Preempt { handle: 300 })),
        // What version 2 sends: a task given back unstarted.
        "suspended" => {
            let s = Suspended {
                handle: 300,
                steps: 0,
                scratch: v(b""),
                result: v(b""),
            };
            (5, 3, 2, Message::Suspended(s))
        }
        // What a started task of a `Preemption::Resume` capability is given back with.
        "suspended_checkpoint" => {
            let s = Suspended {
                handle: 300,
                steps: 130,
                scratch: v(&[1, 0, 0, 0, 0x2A]),
                result: v(b"[1,2"),
            };
            (6, 3, 2, Message::Suspended(s))
        }
        "reject_not_resumable" => {
            let r = Reject {
                handle: Some(301),
                reason: RejectReason::NotResumable,
            };
            (5, 3, 1, Message::Reject(r))
        }
        // The checkpoint of "suspended_checkpoint", resumed under handle 301.
        "restore" => {
            let r = Restore {
                handle: 301,
                steps: 130,
                scratch: v(&[1, 0, 0, 0, 0x2A]),
                result: v(b"[1,2"),
            };
            (4, 1, 0, Message::Restore(r))
        }
        "restore_empty" => {
            let r = Restore {
                handle: 302,
                steps: 0,
                scratch: v(b""),
                result: v(b""),
            };
            (5, 1, 0, Message::Restore(r))
        }
        "suspended_max_handle" => {
            let s = Suspended {
                handle: u32::MAX,
                steps: u32::MAX,
                scratch: v(&[0xFF; MAX_SCRATCH]),
                result: v(b""),
            };
            (7, 3, 2, Message::Suspended(s))
        }
        // What version 3 sends: the holder of a resource raised to its waiter's priority...
        "reprioritize" => {
            let r = Reprioritize {
                handle: 300,
                priority: Priority::P0,
            };
            (6, 3, 0, Message::Reprioritize(r))
        }
        // ...and restored to its own (the `Assign`'s) once the waiter is served.
        "reprioritize_back" => {
            let r = Reprioritize {
                handle: 300,
                priority: Priority::P4,
            };
            (7, 4, 0, Message::Reprioritize(r))
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

#[test]
fn version_2_kinds_are_reliable_and_never_sent_to_a_version_1_peer() {
    let preempt = Message::Preempt(Preempt { handle: 1 });
    let suspended = Message::Suspended(Suspended {
        handle: 1,
        steps: 0,
        scratch: v(b""),
        result: v(b""),
    });
    let restore = Message::Restore(Restore {
        handle: 1,
        steps: 0,
        scratch: v(b""),
        result: v(b""),
    });
    for m in [&preempt, &suspended, &restore] {
        assert!(m.is_reliable());
        assert_eq!(m.since(), 2);
    }
    for name in [
        "welcome_v1",
        "welcome_v2",
        "welcome",
        "assign",
        "cancel",
        "report",
        "heartbeat",
        "ack",
        "reject",
    ] {
        assert_eq!(frame(name).message.since(), 1, "{name}");
    }
    assert_eq!(RejectReason::Started.to_string(), "task already started");
    assert_eq!(
        RejectReason::NotResumable.to_string(),
        "capability not resumable from a checkpoint"
    );
}

#[test]
fn reprioritize_is_version_3_and_reliable() {
    for name in ["reprioritize", "reprioritize_back"] {
        let m = frame(name).message;
        assert!(m.is_reliable(), "{name}");
        assert_eq!(m.since(), 3, "{name}");
    }
    for name in ["preempt", "suspended", "restore"] {
        assert_eq!(frame(name).message.since(), 2, "{name}");
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
    // Tag 12 does not exist; a Hello of version 4; a Welcome of version 0.
    assert_eq!(
        decode(&forge(&[0, 0, 0, 12])),
        Err(DecodeError::UnknownMessage(12))
    );
    assert_eq!(
        decode(&forge(&[0, 0, 0, 0, 4, 1, b'x'])),
        Err(DecodeError::UnsupportedVersion(4))
    );
    assert_eq!(
        decode(&forge(&[0, 0, 0, 1, 0])),
        Err(DecodeError::UnsupportedVersion(0))
    );
    // Valid CRC, invalid content: priority 6 (in an Assign, in a Reprioritize), trailing
    // bytes, a truncated body.
    assert_eq!(
        decode(&forge(&[1, 0, 0, 2, 1, 6])),
        Err(DecodeError::Malformed)
    );
    assert_eq!(
        decode(&forge(&[1, 0, 0, 11, 1, 6])),
        Err(DecodeError::Malformed)
    );
    assert_eq!(
        decode(&forge(&[1, 0, 0, 11, 1, 5, 0])),
        Err(DecodeError::Malformed)
    );
    assert_eq!(
        decode(&forge(&[0, 0, 0, 6, 0])),
        Err(DecodeError::Malformed)
    );
    assert_eq!(decode(&forge(&[0, 0, 0, 4])), Err(DecodeError::Malformed));
    // Reject reason 10 does not exist; a checkpoint's scratch beyond MAX_SCRATCH, in a
    // Suspended (tag 9) and in a Restore (tag 10).
    assert_eq!(
        decode(&forge(&[1, 0, 0, 7, 0, 10])),
        Err(DecodeError::Malformed)
    );
    for tag in [9, 10] {
        let mut scratch = vec![1, 0, 0, tag, 1, 0, MAX_SCRATCH as u8 + 1];
        scratch.extend_from_slice(&[0; MAX_SCRATCH + 1]);
        scratch.push(0);
        assert_eq!(decode(&forge(&scratch)), Err(DecodeError::Malformed));
        scratch.remove(7);
        scratch[6] = MAX_SCRATCH as u8;
        assert!(
            matches!(
                decode(&forge(&scratch)).map(|f| f.message),
                Ok(Message::Suspended(s)) if s.scratch.len() == MAX_SCRATCH
            ) || matches!(
                decode(&forge(&scratch)).map(|f| f.message),
                Ok(Message::Restore(r)) if r.scratch.len() == MAX_SCRATCH && tag == 10
            )
        );
    }
    // A version 1 Hello ends at max_payload: the mask bytes of version 2 are trailing bytes.
    let v1 = wire(&Frame {
        seq: 0,
        ack: 0,
        credit: 0,
        message: Message::Hello(hello(1)),
    });
    let mut body = vec![0u8; MAX_MESSAGE + 8];
    let n = cobs::decode(&v1, &mut body).unwrap() - 4;
    let mut with_masks = body[..n].to_vec();
    with_masks.extend_from_slice(&[1, 2]);
    assert_eq!(decode(&forge(&with_masks)), Err(DecodeError::Malformed));
    // Payload length beyond MAX_PAYLOAD.
    let mut big = vec![1, 0, 0, 2, 1, 1, 0, 1, b'e', 0];
    big.extend_from_slice(&[0x81, 0x02]); // 257
    big.extend_from_slice(&[7u8; 257]);
    big.push(0);
    assert_eq!(decode(&forge(&big)), Err(DecodeError::Malformed));
}

#[test]
fn a_hello_naming_more_locks_than_max_locks_is_malformed() {
    let mut body = vec![0, 0, 0, 0, 1, 1, b'd', 1, 1, 0];
    body.push(MAX_LOCKS as u8 + 1);
    for _ in 0..=MAX_LOCKS {
        body.extend_from_slice(&[1, b'l']);
    }
    body.extend_from_slice(&[1, 0]); // slots, max_payload
    assert_eq!(decode(&forge(&body)), Err(DecodeError::Malformed));
    body[10] = MAX_LOCKS as u8;
    body.drain(11..13);
    let frame = decode(&forge(&body)).unwrap();
    let Message::Hello(h) = frame.message else {
        panic!("{frame:?}")
    };
    assert_eq!(h.locks.len(), MAX_LOCKS);
}

#[test]
fn lock_names_are_short_ascii_words() {
    for good in ["bus", "i2c0", "spi-1", "radio_2", "a.b", "sixteen-bytes-16"] {
        assert!(valid_lock_name(good), "{good:?}");
    }
    for bad in [
        "",
        "seventeen-bytes-x",
        "has space",
        "a/b",
        "é",
        "a\0",
        "+",
        "#",
    ] {
        assert!(!valid_lock_name(bad), "{bad:?}");
    }
}

#[test]
fn seal_refuses_bodies_longer_than_max_message() {
    // Found by the frame_decode fuzzer: a body of MAX_MESSAGE + 1..=4 bytes used to index past
    // the CRC scratch buffer.
    let mut out = [0u8; MAX_FRAME + 8];
    for extra in 1..=5 {
        assert_eq!(
            seal(&vec![7u8; MAX_MESSAGE + extra], &mut out),
            Err(EncodeError::Oversize)
        );
    }
    assert!(seal(&[7u8; MAX_MESSAGE], &mut out).is_ok());
    assert_eq!(
        seal(&[7u8; 10], &mut [0u8; 4]),
        Err(EncodeError::BufferTooSmall)
    );
}

/// The figures the README gives for the limits.
#[test]
fn the_limits_are_the_documented_ones() {
    assert_eq!((MAX_PAYLOAD, MAX_SCRATCH, MAX_FRAME), (256, 16, 405));
}

#[test]
fn the_largest_message_of_every_kind_fits_max_frame() {
    fn full<const N: usize>(c: char, n: usize) -> heapless::String<N> {
        let mut t = heapless::String::new();
        (0..n).for_each(|_| t.push(c).unwrap());
        t
    }
    let max_assign = Assign {
        handle: u32::MAX,
        priority: Priority::P5,
        deadline_ms: Some(u32::MAX),
        capability: full('c', MAX_CAPABILITY_NAME),
        locks: v(&[255; MAX_TASK_LOCKS]),
        payload: v(&[0xFF; MAX_PAYLOAD]),
        trace_id: full('t', MAX_TRACE_ID),
    };
    // Any version encodes (only MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION decodes): u16::MAX
    // takes the most bytes.
    let max_hello = Hello {
        version: u16::MAX,
        device_id: full('d', MAX_DEVICE_ID),
        boot_id: u32::MAX,
        capabilities: (0..MAX_CAPABILITIES)
            .map(|_| full('x', MAX_CAPABILITY_NAME))
            .collect(),
        locks: (0..MAX_LOCKS).map(|_| full('l', MAX_LOCK_NAME)).collect(),
        session_id: u32::MAX,
        slots: 255,
        max_payload: u16::MAX,
        resumable: u8::MAX,
        restartable: u8::MAX,
    };
    let max_report = Report {
        handle: u32::MAX,
        state: TaskReport::Cancelled,
        result: v(&[0xFF; MAX_PAYLOAD]),
        error: Some(u16::MAX),
    };
    let max_suspended = Suspended {
        handle: u32::MAX,
        steps: u32::MAX,
        scratch: v(&[0xFF; MAX_SCRATCH]),
        result: v(&[0xFF; MAX_PAYLOAD]),
    };
    let mut largest = 0;
    for message in [
        Message::Assign(max_assign),
        Message::Hello(max_hello),
        Message::Report(max_report),
        Message::Restore(Restore {
            handle: max_suspended.handle,
            steps: max_suspended.steps,
            scratch: max_suspended.scratch.clone(),
            result: max_suspended.result.clone(),
        }),
        Message::Suspended(max_suspended),
        Message::Preempt(Preempt { handle: u32::MAX }),
        Message::Reprioritize(Reprioritize {
            handle: u32::MAX,
            priority: Priority::P5,
        }),
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
        match &frame.message {
            Message::Hello(h) => {
                assert_eq!(
                    decode(&out[..n]),
                    Err(DecodeError::UnsupportedVersion(u16::MAX))
                );
                let current = Hello {
                    version: PROTOCOL_VERSION,
                    ..h.clone()
                };
                let frame = Frame {
                    message: Message::Hello(current),
                    ..frame.clone()
                };
                let n = encode(&frame, &mut out).unwrap();
                assert_eq!(decode(&out[..n]), Ok(frame));
            }
            _ => assert_eq!(decode(&out[..n]), Ok(frame.clone())),
        }
        largest = largest.max(n);
    }
    assert_eq!(
        largest, MAX_FRAME,
        "MAX_FRAME should be tight for the largest Hello"
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

mod same_as_postcard {
    //! The hand-written codec (`wire`) against postcard with the serde derives, which define
    //! the format: identical bytes for every frame, identical verdicts for any bytes.
    use super::*;
    use proptest::prelude::*;

    fn text<const N: usize>(max: usize) -> impl Strategy<Value = heapless::String<N>> {
        proptest::collection::vec(
            prop_oneof![Just('a'), Just('.'), Just('é'), Just('€'), any::<char>()],
            0..=max,
        )
        .prop_map(|cs| {
            let mut s = heapless::String::new();
            for c in cs {
                if s.push(c).is_err() {
                    break;
                }
            }
            s
        })
    }

    fn bytes<const N: usize>() -> impl Strategy<Value = heapless::Vec<u8, N>> {
        proptest::collection::vec(any::<u8>(), 0..=N)
            .prop_map(|b| heapless::Vec::from_slice(&b).unwrap())
    }

    /// Small numbers most of the time, every varint length some of the time.
    fn num() -> impl Strategy<Value = u32> {
        prop_oneof![
            0..200u32,
            any::<u32>(),
            Just(u32::MAX),
            Just(127),
            Just(128),
            Just(16383),
            Just(16384)
        ]
    }

    fn priority() -> impl Strategy<Value = Priority> {
        (0..6u8).prop_map(|p| Priority::from_level(p).unwrap())
    }

    fn message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (
                any::<u16>(),
                text(MAX_DEVICE_ID),
                num(),
                num(),
                proptest::collection::vec(text(MAX_CAPABILITY_NAME), 0..=MAX_CAPABILITIES),
                proptest::collection::vec(text(MAX_LOCK_NAME), 0..=MAX_LOCKS),
                any::<u8>(),
                any::<u16>(),
                any::<(u8, u8)>(),
            )
                .prop_map(
                    |(
                        version,
                        device_id,
                        boot_id,
                        session_id,
                        caps,
                        locks,
                        slots,
                        max_payload,
                        masks,
                    )| {
                        // A Hello before version 2 has no masks: only 0 round-trips.
                        let (resumable, restartable) =
                            if has_masks(version) { masks } else { (0, 0) };
                        Message::Hello(Hello {
                            version,
                            device_id,
                            boot_id,
                            session_id,
                            capabilities: heapless::Vec::from_slice(&caps).unwrap(),
                            locks: heapless::Vec::from_slice(&locks).unwrap(),
                            slots,
                            max_payload,
                            resumable,
                            restartable,
                        })
                    }
                ),
            (any::<u16>(), num(), num(), num()).prop_map(
                |(version, session_id, heartbeat_ms, liveness_ms)| {
                    Message::Welcome(Welcome {
                        version,
                        session_id,
                        heartbeat_ms,
                        liveness_ms,
                    })
                }
            ),
            (
                num(),
                priority(),
                proptest::option::of(num()),
                text(MAX_CAPABILITY_NAME),
                bytes(),
                bytes(),
                text(MAX_TRACE_ID)
            )
                .prop_map(
                    |(handle, priority, deadline_ms, capability, locks, payload, trace_id)| {
                        Message::Assign(Assign {
                            handle,
                            priority,
                            deadline_ms,
                            capability,
                            locks,
                            payload,
                            trace_id,
                        })
                    }
                ),
            num().prop_map(|handle| Message::Cancel(Cancel { handle })),
            (
                num(),
                0..TaskReport::COUNT,
                bytes(),
                proptest::option::of(any::<u16>())
            )
                .prop_map(|(handle, s, result, error)| {
                    Message::Report(Report {
                        handle,
                        state: TaskReport::from_index(s).unwrap(),
                        result,
                        error,
                    })
                }),
            Just(Message::Heartbeat),
            Just(Message::Ack),
            (proptest::option::of(num()), 0..RejectReason::COUNT).prop_map(|(handle, r)| {
                Message::Reject(Reject {
                    handle,
                    reason: RejectReason::from_index(r).unwrap(),
                })
            }),
            num().prop_map(|handle| Message::Preempt(Preempt { handle })),
            (num(), num(), bytes(), bytes()).prop_map(|(handle, steps, scratch, result)| {
                Message::Suspended(Suspended {
                    handle,
                    steps,
                    scratch,
                    result,
                })
            }),
            (num(), num(), bytes(), bytes()).prop_map(|(handle, steps, scratch, result)| {
                Message::Restore(Restore {
                    handle,
                    steps,
                    scratch,
                    result,
                })
            }),
            (num(), priority()).prop_map(|(handle, priority)| {
                Message::Reprioritize(Reprioritize { handle, priority })
            }),
        ]
    }

    fn frame() -> impl Strategy<Value = Frame> {
        (num(), num(), any::<u8>(), message()).prop_map(|(seq, ack, credit, message)| Frame {
            seq,
            ack,
            credit,
            message,
        })
    }

    /// The hand-written encoding of `f`, with whatever faults `plant` sets on the writer.
    fn encode_with(f: &Frame, plant: impl FnOnce(&mut wire::Writer<'_>)) -> Vec<u8> {
        let mut buf = [0u8; MAX_MESSAGE + 16];
        let mut w = wire::Writer::new(&mut buf);
        plant(&mut w);
        wire::write_frame(&mut w, f.seq, f.ack, f.credit, &f.message).unwrap();
        let n = w.written();
        buf[..n].to_vec()
    }

    fn hand_encode(f: &Frame) -> Vec<u8> {
        encode_with(f, |_| {})
    }

    fn hand_decode(body: &[u8]) -> Option<Frame> {
        wire::read_frame(&mut wire::Reader::new(body)).ok()
    }

    fn has_masks(version: u16) -> bool {
        version >= 2
    }

    /// postcard's view of a frame holding a `Hello` older than version 2, which ends at
    /// `max_payload`: serde cannot make a field's presence depend on `version`, so the
    /// reference for those is this mirror (the message tag is the enum's varint index).
    #[derive(serde::Serialize, serde::Deserialize)]
    struct HelloV1Frame {
        seq: u32,
        ack: u32,
        credit: u8,
        tag: u32,
        version: u16,
        device_id: DeviceId,
        boot_id: u32,
        session_id: u32,
        capabilities: heapless::Vec<CapabilityName, MAX_CAPABILITIES>,
        locks: heapless::Vec<LockName, MAX_LOCKS>,
        slots: u8,
        max_payload: u16,
    }

    fn postcard_encode(f: &Frame) -> Vec<u8> {
        match &f.message {
            Message::Hello(h) if !has_masks(h.version) => {
                let v1 = HelloV1Frame {
                    seq: f.seq,
                    ack: f.ack,
                    credit: f.credit,
                    tag: 0,
                    version: h.version,
                    device_id: h.device_id.clone(),
                    boot_id: h.boot_id,
                    session_id: h.session_id,
                    capabilities: h.capabilities.clone(),
                    locks: h.locks.clone(),
                    slots: h.slots,
                    max_payload: h.max_payload,
                };
                postcard::to_allocvec(&v1).unwrap()
            }
            _ => postcard::to_allocvec(f).unwrap(),
        }
    }

    fn postcard_decode(body: &[u8]) -> Option<Frame> {
        if let Ok((v1, rest)) = postcard::take_from_bytes::<HelloV1Frame>(body) {
            if v1.tag == 0 && !has_masks(v1.version) {
                let hello = Hello {
                    version: v1.version,
                    device_id: v1.device_id,
                    boot_id: v1.boot_id,
                    session_id: v1.session_id,
                    capabilities: v1.capabilities,
                    locks: v1.locks,
                    slots: v1.slots,
                    max_payload: v1.max_payload,
                    resumable: 0,
                    restartable: 0,
                };
                return rest.is_empty().then_some(Frame {
                    seq: v1.seq,
                    ack: v1.ack,
                    credit: v1.credit,
                    message: Message::Hello(hello),
                });
            }
        }
        match postcard::take_from_bytes::<Frame>(body) {
            Ok((f, [])) if !matches!(&f.message, Message::Hello(h) if !has_masks(h.version)) => {
                Some(f)
            }
            _ => None,
        }
    }

    /// Corruptions that keep most of a valid body: the interesting inputs for a decoder.
    #[derive(Clone, Debug)]
    enum Mutation {
        Set(usize, u8),
        Insert(usize, u8),
        Remove(usize),
        Truncate(usize),
        /// Overwrite with a boundary varint: over-long, overflowing or non-canonical.
        /// (Offsets below zero count from the end.)
        Varint(isize, &'static [u8]),
    }

    /// Varints at the edges of what u16, u32 and usize accept, and one past the last variant
    /// of each enum (TaskReport 5, Priority 6, RejectReason 10, Message 12), the last of
    /// version 1 (Message and RejectReason 8) and of version 2 (Message 11), and the versions
    /// around the `Hello` masks (1 and 2) and the current one (3).
    const EDGE_VARINTS: [&[u8]; 18] = [
        &[0x01],
        &[0x02],
        &[0x03],
        &[0x05],
        &[0x06],
        &[0x08],
        &[0x09],
        &[0x0A],
        &[0x0B],
        &[0x0C],
        &[0xFF, 0xFF, 0x03],                   // u16::MAX
        &[0xFF, 0xFF, 0x04],                   // u16 overflow
        &[0xFF, 0xFF, 0xFF, 0xFF, 0x0F],       // u32::MAX
        &[0xFF, 0xFF, 0xFF, 0xFF, 0x10],       // u32 overflow
        &[0x80, 0x00],                         // non-canonical 0
        &[0x81, 0x80, 0x00],                   // non-canonical 1
        &[0x80, 0x80, 0x80, 0x80, 0x80, 0x00], // 0 in six bytes: usize only on 64-bit
        &[0x80, 0x80, 0x80],                   // unterminated
    ];

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            (
                any::<usize>(),
                prop_oneof![any::<u8>(), Just(0x80), Just(0xFF), Just(0x00)]
            )
                .prop_map(|(i, b)| Mutation::Set(i, b)),
            (any::<usize>(), prop_oneof![Just(0x80), any::<u8>()])
                .prop_map(|(i, b)| Mutation::Insert(i, b)),
            any::<usize>().prop_map(Mutation::Remove),
            any::<usize>().prop_map(Mutation::Truncate),
            // Fields sit at fixed offsets from the start (header, versions) or the end
            // (options, error codes): aim there more often than anywhere.
            (
                prop_oneof![0..12isize, -8..0isize, any::<isize>()],
                proptest::sample::select(&EDGE_VARINTS[..])
            )
                .prop_map(|(i, v)| Mutation::Varint(i, v)),
        ]
    }

    fn apply(mut body: Vec<u8>, ms: &[Mutation]) -> Vec<u8> {
        for m in ms {
            let n = body.len().max(1);
            match *m {
                Mutation::Set(i, b) if !body.is_empty() => body[i % n] = b,
                Mutation::Insert(i, b) => body.insert(i % (body.len() + 1), b),
                Mutation::Remove(i) if !body.is_empty() => {
                    body.remove(i % n);
                }
                Mutation::Truncate(i) => body.truncate(i % n),
                Mutation::Varint(i, v) => {
                    let at = if i < 0 {
                        n.saturating_sub(i.unsigned_abs())
                    } else {
                        i as usize % n
                    };
                    body.splice(at..(at + v.len()).min(body.len()), v.iter().copied());
                }
                _ => {}
            }
        }
        body
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3_000, ..ProptestConfig::default() })]

        #[test]
        fn encoding_is_byte_for_byte_postcards(f in frame()) {
            let reference = postcard_encode(&f);
            prop_assert_eq!(hand_encode(&f), reference);
            prop_assert_eq!(hand_decode(&hand_encode(&f)), Some(f));
        }

        #[test]
        fn decoding_agrees_with_postcard_on_corrupted_frames(f in frame(), ms in proptest::collection::vec(mutation(), 1..4)) {
            let body = apply(hand_encode(&f), &ms);
            prop_assert_eq!(hand_decode(&body), postcard_decode(&body));
        }

        #[test]
        fn decoding_agrees_with_postcard_on_edge_varints(
            f in frame(),
            k in 0..16usize,
            edge in proptest::sample::select(&EDGE_VARINTS[..]),
        ) {
            let body = encode_with(&f, |w| w.fault = Some((k, edge)));
            prop_assert_eq!(hand_decode(&body), postcard_decode(&body));
        }

        #[test]
        fn decoding_agrees_with_postcard_on_bad_option_tags(f in frame(), k in 0..2usize, tag in 0..4u8) {
            let body = encode_with(&f, |w| w.option_fault = Some((k, tag)));
            prop_assert_eq!(hand_decode(&body), postcard_decode(&body));
        }

        #[test]
        fn decoding_agrees_with_postcard_on_any_bytes(body in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(hand_decode(&body), postcard_decode(&body));
        }
    }
}
