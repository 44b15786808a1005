//! RFC 6455 frames as the server writes them: headers, whole frames, close frames, the heartbeat ping.

use crate::error::CloseReason;
use bytes::{BufMut, Bytes, BytesMut};

/// Frame opcodes herald sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// A UTF-8 text message.
    Text = 0x1,
    /// A binary message.
    Binary = 0x2,
    /// Close.
    Close = 0x8,
    /// Ping.
    Ping = 0x9,
}

/// RSV1, the first reserved bit: set on the first frame of a compressed
/// message (RFC 7692).
pub const RSV1: u8 = 0x40;

/// An empty ping frame: the heartbeat.
pub const PING_FRAME: &[u8] = b"\x89\x00";

/// The header of an unmasked, final server frame: opcode and length.
// Each cast is within the range its match arm just checked.
#[allow(clippy::cast_possible_truncation)]
pub fn frame_header(opcode: Opcode, len: usize, out: &mut impl BufMut) {
    out.put_u8(0x80 | opcode as u8);
    match len {
        0..=125 => out.put_u8(len as u8),
        126..=0xFFFF => {
            out.put_u8(126);
            out.put_u16(len as u16);
        }
        _ => {
            out.put_u8(127);
            out.put_u64(len as u64);
        }
    }
}

/// One whole server frame in one buffer (header and payload copied).
pub fn encode_frame(opcode: Opcode, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    frame_header(opcode, payload.len(), &mut out);
    out.put_slice(payload);
    out.freeze()
}

/// The payload of a whole frame the server wrote (unmasked, its length as
/// the header says).
pub fn payload_of(frame: &[u8]) -> &[u8] {
    let start = match frame.get(1).map(|second| second & 0x7F) {
        Some(126) => 4,
        Some(127) => 10,
        Some(_) => 2,
        None => frame.len(),
    };
    frame.get(start..).unwrap_or_default()
}

/// Two-byte headers of final text and binary frames of 0 to 125 bytes, so a
/// small frame needs no allocation for its header.
// Built at compile time: `i < 252` indexes the table and `i % 126 < 126` fits a byte.
#[allow(clippy::indexing_slicing, clippy::cast_possible_truncation)]
static SMALL_HEADERS: [[u8; 2]; 2 * 126] = {
    let mut table = [[0u8; 2]; 2 * 126];
    let mut i = 0;
    while i < 2 * 126 {
        let opcode = if i < 126 { 0x81 } else { 0x82 };
        table[i] = [opcode, (i % 126) as u8];
        i += 1;
    }
    table
};

/// The static header of a final text or binary frame of `len` bytes, when
/// it fits in two bytes (`len` up to 125).
pub fn small_header(opcode: Opcode, len: usize) -> Option<&'static [u8; 2]> {
    let index = match opcode {
        Opcode::Text if len < 126 => len,
        Opcode::Binary if len < 126 => 126 + len,
        _ => return None,
    };
    SMALL_HEADERS.get(index)
}

/// A close frame with a code and reason.
pub fn close_frame(reason: CloseReason) -> Bytes {
    let text = reason.reason().as_bytes();
    let mut payload = Vec::with_capacity(2 + text.len());
    payload.extend_from_slice(&reason.code().to_be_bytes());
    payload.extend_from_slice(text);
    encode_frame(Opcode::Close, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_headers_use_the_shortest_length() {
        assert_eq!(&encode_frame(Opcode::Text, b"hi")[..], b"\x81\x02hi");
        assert_eq!(&encode_frame(Opcode::Binary, &[0; 126])[..4], b"\x82\x7e\x00\x7e");
        assert_eq!(
            &encode_frame(Opcode::Binary, &[0; 65536])[..10],
            b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00"
        );
        assert_eq!(&close_frame(CloseReason::ShuttingDown)[..4], b"\x88\x16\x03\xe9");
    }

    #[test]
    fn payloads_are_found_behind_every_header_length() {
        for len in [0, 125, 126, 65535, 65536] {
            let payload = vec![7u8; len];
            assert_eq!(payload_of(&encode_frame(Opcode::Binary, &payload)), &payload[..]);
        }
        assert_eq!(payload_of(b""), b"");
    }

    #[test]
    fn small_headers_match_the_full_encoding() {
        for len in [0, 1, 125] {
            for opcode in [Opcode::Text, Opcode::Binary] {
                let header = small_header(opcode, len).unwrap();
                assert_eq!(&encode_frame(opcode, &vec![0; len])[..2], header);
            }
        }
        assert!(small_header(Opcode::Text, 126).is_none());
        assert!(small_header(Opcode::Close, 2).is_none());
    }
}
