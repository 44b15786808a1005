//! Any bytes through the TLS front of a connection: as ciphertext before and inside a ClientHello (garbage, alerts, truncated or oversized records, in any pieces), or, after a real handshake with an in-memory client, as plaintext requests and frames carried in records. No panic; output and memory stay within the limits.
#![no_main]

use herald_fuzz::{
    ALLOCATION_BOUND, OUTPUT_BOUND, context, drive_tls_plaintext, drive_tls_raw, measure_from_here,
    peak_above, tls_configs,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else { return };
    let _ = tls_configs();
    let mut ctx = context();
    let base = measure_from_here();
    let mut conn = if mode & 1 == 0 {
        drive_tls_raw(&mut ctx, rest)
    } else {
        drive_tls_plaintext(&mut ctx, rest)
    };
    assert!(conn.queued_bytes() <= OUTPUT_BOUND + 70_000, "{} bytes queued", conn.queued_bytes());
    // Ciphertext held between reads: at most one record, or a handshake's
    // worth while it lasts.
    assert!(conn.tls_buffered() <= 160 * 1024, "{} bytes buffered", conn.tls_buffered());
    conn.release(&mut ctx);
    let peak = peak_above(base);
    assert!(
        peak <= ALLOCATION_BOUND + 4 * input.len(),
        "peak {peak} bytes for {} input",
        input.len()
    );
});
