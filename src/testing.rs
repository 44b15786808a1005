//! Helpers for tests, fuzz targets and benchmarks: building what a client sends. Not part of the server's API.

/// A masked client frame, as a browser sends it: FIN bit, opcode, payload,
/// and the shortest length encoding. The mask key is fixed (any key is
/// valid; tests want repeatable bytes).
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(if fin { 0x80 | opcode } else { opcode });
    let len = payload.len();
    if let Ok(short @ 0..=125) = u8::try_from(len) {
        out.push(0x80 | short);
    } else if let Ok(medium) = u16::try_from(len) {
        out.push(0x80 | 126);
        out.extend_from_slice(&medium.to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(byte, key)| byte ^ key));
    out
}
