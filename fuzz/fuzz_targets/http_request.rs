//! Any bytes as an HTTP client would send them, in any pieces: request heads, handshake validation, server API requests and bodies. No panic; output and memory stay within the configured limits.
#![no_main]

use herald_fuzz::{ALLOCATION_BOUND, OUTPUT_BOUND, context, drive, measure_from_here, peak_above};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let mut ctx = context();
    let base = measure_from_here();
    let mut conn = drive(&mut ctx, input);
    assert!(conn.queued_bytes() <= OUTPUT_BOUND, "{} bytes queued", conn.queued_bytes());
    conn.release(&mut ctx);
    let peak = peak_above(base);
    assert!(
        peak <= ALLOCATION_BOUND + 2 * input.len(),
        "peak {peak} bytes for {} input",
        input.len()
    );
});
