//! Any bytes as WebSocket frames after a valid upgrade, on /ws (JSON commands) or /echo, with or without permessage-deflate, in any pieces: framing through herald's scanner and tungstenite adapter, compressed messages through the shard's inflater, and the client commands. No panic; output and memory stay within the limits.
#![no_main]

use herald_fuzz::{ALLOCATION_BOUND, OUTPUT_BOUND, context, drive, measure_from_here, peak_above};
use libfuzzer_sys::fuzz_target;

const UPGRADE: &str = "GET {PATH} HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{EXTENSIONS}\r\n";

/// A client's offer of permessage-deflate, as browsers make it.
const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

fuzz_target!(|input: &[u8]| {
    let Some((&selector, frames)) = input.split_first() else { return };
    let path = if selector & 1 == 0 { "/ws" } else { "/echo" };
    let extensions = if selector & 2 == 0 { "" } else { OFFER };
    let mut bytes = vec![selector >> 2];
    let upgrade = UPGRADE.replace("{PATH}", path).replace("{EXTENSIONS}", extensions);
    bytes.extend_from_slice(upgrade.as_bytes());
    bytes.extend_from_slice(frames);
    let mut ctx = context();
    let base = measure_from_here();
    let mut conn = drive(&mut ctx, &bytes);
    assert!(conn.queued_bytes() <= OUTPUT_BOUND, "{} bytes queued", conn.queued_bytes());
    conn.release(&mut ctx);
    assert_eq!(ctx.locals.channel_count(), 0, "a released connection leaves no subscription");
    let peak = peak_above(base);
    assert!(
        peak <= ALLOCATION_BOUND + 2 * bytes.len(),
        "peak {peak} bytes for {} input",
        bytes.len()
    );
});
