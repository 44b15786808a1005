//! The inflate path: any bytes as a compressed message under any limit (no panic, nothing past the limit, memory bounded by the limit and not by what the bytes would inflate to), and anything herald compresses inflates back to itself.
#![no_main]

use herald::wire::deflate::{Deflater, INFLATE_WINDOW, Inflater};
use herald::wire::frame::{Opcode, payload_of};
use herald_fuzz::{measure_from_here, peak_above};
use libfuzzer_sys::fuzz_target;

/// What inflating may allocate beside the message itself: the inflater's
/// window, zlib's state and its 32 KiB window, with room to spare.
const INFLATER_BOUND: usize = INFLATE_WINDOW + 128 * 1024;

fuzz_target!(|input: &[u8]| {
    let Some((&selector, bytes)) = input.split_first() else { return };
    // 128 bytes to 256 KiB.
    let limit = 128usize << (selector % 12);
    let mut inflater = Inflater::default();
    let base = measure_from_here();
    let inflated = inflater.inflate(bytes, limit);
    let peak = peak_above(base);
    if let Ok(message) = &inflated {
        assert!(
            message.len() <= limit,
            "{} bytes inflated under a limit of {limit}",
            message.len()
        );
    }
    assert!(peak <= INFLATER_BOUND + limit, "peak {peak} bytes under a limit of {limit}");

    if selector & 0x80 != 0 {
        let mut deflater = Deflater::default();
        if let Some(frame) = deflater.frame(Opcode::Binary, bytes) {
            let back = inflater.inflate(payload_of(&frame), bytes.len());
            assert_eq!(back.as_deref(), Ok(bytes), "a round trip");
        }
    }
});
