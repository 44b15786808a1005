//! Zip bombs against a connection in memory, under the fuzz targets' allocation counter: a 1 KiB compressed message that would inflate to 1 MiB (or 16 KiB to 16 MiB) is closed 1009, and what the server allocates meanwhile is bounded by `/ws`'s 64 KiB limit, not by what the message would inflate to.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

// The fuzz targets' allocator (the global allocator of this test binary
// alone: it holds no other test, so nothing else allocates meanwhile).
#[path = "../../fuzz/src/tracking.rs"]
mod tracking;

use herald::Config;
use herald::conn::{Conn, Ctx};
use herald::testing::{MemorySocket, client_frame, compressed_client_frame, deflate};
use herald::wire::deflate::INFLATE_WINDOW;
use tracking::{measure_from_here, peak_above};

/// What the shard's inflater keeps once used, beside its window: zlib's
/// state with its own 32 KiB window, rounded up.
const INFLATER_STATE: usize = 64 * 1024;

/// A `/ws` connection that agreed to permessage-deflate, and the bytes
/// herald wrote so far.
fn compressed_connection(ctx: &mut Ctx) -> Conn<MemorySocket> {
    let socket = MemorySocket { output: Some(Vec::new()), ..MemorySocket::default() };
    let mut conn = Conn::new(socket, ctx);
    conn.socket_mut().input.extend_from_slice(
        b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n",
    );
    let _ = conn.ready(true, true, ctx);
    let answer = String::from_utf8_lossy(&output(&mut conn)).into_owned();
    assert!(answer.starts_with("HTTP/1.1 101 "), "{answer}");
    assert!(answer.contains("\r\nSec-WebSocket-Extensions: permessage-deflate; "), "{answer}");
    conn
}

/// What herald wrote since the last call.
fn output(conn: &mut Conn<MemorySocket>) -> Vec<u8> {
    std::mem::take(conn.socket_mut().output.as_mut().unwrap())
}

/// The close code of the last frame in `written`, if it is a close frame.
fn close_code(written: &[u8]) -> Option<u16> {
    let mut rest = written;
    let mut last = None;
    while rest.len() >= 2 {
        let (opcode, short) = (rest[0] & 0x0F, usize::from(rest[1] & 0x7F));
        let (len, at) = match short {
            126 => (usize::from(u16::from_be_bytes([rest[2], rest[3]])), 4),
            127 => {
                (usize::try_from(u64::from_be_bytes(rest[2..10].try_into().unwrap())).unwrap(), 10)
            }
            len => (len, 2),
        };
        let payload = &rest[at..at + len];
        last = (opcode == 8 && len >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
        rest = &rest[at + len..];
    }
    last
}

/// Sends one compressed message of `inflated` zero bytes (as JSON text,
/// whatever its content) and answers herald's close code and the peak of
/// what it allocated while reading it.
fn bomb(ctx: &mut Ctx, conn: &mut Conn<MemorySocket>, inflated: usize) -> (Option<u16>, usize) {
    let compressed = deflate(&vec![b' '; inflated]);
    let frame = compressed_client_frame(true, 1, &compressed);
    conn.socket_mut().input.extend_from_slice(&frame);
    drop((compressed, frame));
    let base = measure_from_here();
    let _ = conn.ready(true, true, ctx);
    let peak = peak_above(base);
    (close_code(&output(conn)), peak)
}

#[test]
fn zip_bombs_close_1009_within_the_limit() {
    let limit = 64 * 1024;
    let mut ctx = herald::testing::context(Config { max_message_bytes: limit, ..Config::dev() });
    assert_eq!(ctx.local.config.max_message_bytes, limit);

    // The first compressed message of the shard allocates its inflater.
    let mut conn = compressed_connection(&mut ctx);
    let (code, first) = bomb(&mut ctx, &mut conn, 1 << 20);
    assert_eq!(code, Some(1009), "1 KiB inflating to 1 MiB");
    assert!(
        first <= limit + INFLATE_WINDOW + INFLATER_STATE,
        "peak {first} bytes for a 1 MiB bomb under a {limit} byte limit"
    );
    conn.release(&mut ctx);

    // Once it is there, a bomb costs next to nothing more, however far it
    // would inflate: the limit is checked inside the inflate loop.
    for inflated in [1 << 20, 16 << 20] {
        let mut conn = compressed_connection(&mut ctx);
        let (code, peak) = bomb(&mut ctx, &mut conn, inflated);
        assert_eq!(code, Some(1009), "a bomb of {inflated} bytes");
        assert!(peak <= limit, "peak {peak} bytes for a bomb of {inflated} bytes");
        conn.release(&mut ctx);
    }

    // A message just within the limit still goes through, and a plain
    // message after it.
    let mut conn = compressed_connection(&mut ctx);
    let command = br#"{"op":"subscribe","id":1,"channel":"news"}"#;
    let mut padded = command.to_vec();
    padded.resize(limit, b' ');
    conn.socket_mut().input.extend_from_slice(&compressed_client_frame(true, 1, &deflate(&padded)));
    conn.socket_mut().input.extend_from_slice(&client_frame(
        true,
        1,
        br#"{"op":"unsubscribe","id":2,"channel":"news"}"#,
    ));
    let _ = conn.ready(true, true, &mut ctx);
    let written = String::from_utf8_lossy(&output(&mut conn)).into_owned();
    assert!(written.contains(r#""op":"subscribed""#), "{written}");
    assert!(written.contains(r#""op":"unsubscribed""#), "{written}");
    conn.release(&mut ctx);
}
