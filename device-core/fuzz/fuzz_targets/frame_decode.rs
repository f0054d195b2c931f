//! Any bytes: the decoder and the stream deframer never panic, and whatever decodes
//! re-encodes to a frame that decodes to the same value. Inputs whose first byte is odd are
//! sealed with a valid CRC first, so that the message parser behind the CRC is fuzzed too.
#![no_main]

use device_core::proto::{Deframer, MAX_FRAME, decode, encode, seal};
use libfuzzer_sys::fuzz_target;

fn round_trip(frame: &device_core::proto::Frame) {
    let mut out = [0u8; MAX_FRAME];
    let n = encode(frame, &mut out).expect("a decoded frame must fit MAX_FRAME");
    assert_eq!(out[n - 1], 0);
    assert!(!out[..n - 1].contains(&0));
    assert_eq!(decode(&out[..n]).as_ref(), Ok(frame));
}

fuzz_target!(|data: &[u8]| {
    if let Some((&first, body)) = data.split_first() {
        if first & 1 == 1 {
            let mut sealed = [0u8; MAX_FRAME];
            if let Ok(n) = seal(body, &mut sealed) {
                if let Ok(frame) = decode(&sealed[..n]) {
                    round_trip(&frame);
                }
            }
        }
    }
    if let Ok(frame) = decode(data) {
        round_trip(&frame);
    }
    // The same bytes as a stream, fed in chunks whose size the first byte chooses.
    let chunk = usize::from(data.first().copied().unwrap_or(1)).max(1);
    let mut d: Deframer<MAX_FRAME> = Deframer::new();
    for piece in data.chunks(chunk) {
        let mut rest = piece;
        while !rest.is_empty() {
            let (used, out) = d.push(rest);
            assert!(used > 0 && used <= rest.len());
            rest = &rest[used..];
            if let Some(Ok(frame)) = out {
                round_trip(&frame);
            }
        }
    }
});
