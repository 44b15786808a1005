//! permessage-deflate (RFC 7692): the offer a client makes and herald's answer, the compressor a shard shares for every frame it compresses, and the inflater with its hard limit.
//!
//! herald answers every offer it accepts with `server_no_context_takeover`
//! and `client_no_context_takeover`: each message is a deflate stream of its
//! own in both directions. Going out, one compressed frame can then go to
//! every subscriber of a publication; coming in, one inflater per shard,
//! reset for each message, serves every connection, and a connection holds
//! no zlib state between messages.

use super::frame::{Opcode, frame_header};
use crate::error::CloseReason;
use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The extension's name in `Sec-WebSocket-Extensions`.
pub const EXTENSION: &str = "permessage-deflate";

/// zlib's default level. Each publication is compressed once per node,
/// whatever its subscribers; level 1 makes 1 KiB JSON notifications about a
/// fifth larger for a saving nobody would notice (docs/BENCHMARKS.md).
pub const LEVEL: u32 = 6;

/// The window herald compresses with: zlib's largest (32 KiB).
pub const WINDOW_BITS: u8 = 15;

/// What a sender removes from the end of each compressed message and the
/// receiver puts back (RFC 7692 section 7.2.1): the empty stored block of a
/// sync flush.
const TRAILER: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

/// Room for the longest server frame header before a compressed payload.
const HEADER_ROOM: usize = 10;

/// Inflated bytes a shard's inflater holds at once. A message up to this
/// size is inflated once; a longer one is inflated twice, first only to
/// learn its size (so that a message over the limit allocates nothing),
/// then into a buffer of exactly that size. Covers `/ws`'s default 64 KiB
/// limit in one pass.
pub const INFLATE_WINDOW: usize = 64 * 1024;

/// What herald agreed to on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    /// `server_max_window_bits` as the client offered it: herald's answer
    /// repeats it, and compresses for this client only messages that fit
    /// in such a window.
    pub server_max_window_bits: Option<u8>,
}

impl Agreed {
    /// The largest window (as a power of two) the client inflates with.
    pub fn window_bits(&self) -> u8 {
        self.server_max_window_bits.unwrap_or(WINDOW_BITS)
    }

    /// The `Sec-WebSocket-Extensions` value of herald's answer.
    pub fn response(&self) -> String {
        let mut answer =
            format!("{EXTENSION}; server_no_context_takeover; client_no_context_takeover");
        if let Some(bits) = self.server_max_window_bits {
            answer.push_str(&format!("; server_max_window_bits={bits}"));
        }
        answer
    }
}

/// Whether a message of `len` bytes may go compressed to a client whose
/// window is `2^window_bits` bytes. herald compresses every message on its
/// own with a 32 KiB window; a message's deflate stream never reaches back
/// further than the message's own length, so one no longer than the
/// client's window is within it. Longer ones go uncompressed to that client.
pub fn fits_window(len: usize, window_bits: u8) -> bool {
    len <= 1usize << window_bits.min(WINDOW_BITS)
}

/// Picks the first offer in `Sec-WebSocket-Extensions` (all its headers,
/// in order) that herald can honour; `None` answers without the extension.
/// An offer with an unknown, repeated or malformed parameter is declined
/// (RFC 7692 section 7.1); the handshake never fails for it.
pub fn negotiate<'h>(headers: impl IntoIterator<Item = &'h [u8]>) -> Option<Agreed> {
    headers.into_iter().flat_map(|value| value.split(|b| *b == b',')).find_map(accept_offer)
}

/// One extension of an offer: `name; param[=value]; ...`.
fn accept_offer(extension: &[u8]) -> Option<Agreed> {
    let mut parts = extension.split(|b| *b == b';').map(<[u8]>::trim_ascii);
    if !parts.next()?.eq_ignore_ascii_case(EXTENSION.as_bytes()) {
        return None;
    }
    let mut seen = [false; 4];
    let mut server_max_window_bits = None;
    for param in parts {
        let (name, value) = match param.iter().position(|b| *b == b'=') {
            Some(at) => {
                let (name, value) = param.split_at(at);
                (name.trim_ascii(), Some(unquote(value.get(1..)?.trim_ascii())?))
            }
            None => (param, None),
        };
        let index =
            PARAMETERS.iter().position(|known| name.eq_ignore_ascii_case(known.as_bytes()))?;
        if std::mem::replace(seen.get_mut(index)?, true) {
            return None;
        }
        match (index, value) {
            // server_no_context_takeover, client_no_context_takeover: no value.
            (0 | 1, None) => {}
            // server_max_window_bits: a value is required.
            (2, Some(value)) => server_max_window_bits = Some(window_bits(value)?),
            // client_max_window_bits: the client may be asked for a smaller
            // window. herald inflates with the largest, which takes any.
            (3, None) => {}
            (3, Some(value)) => {
                window_bits(value)?;
            }
            _ => return None,
        }
    }
    Some(Agreed { server_max_window_bits })
}

/// The parameters an offer may carry, in the order of `seen` above.
const PARAMETERS: [&str; 4] = [
    "server_no_context_takeover",
    "client_no_context_takeover",
    "server_max_window_bits",
    "client_max_window_bits",
];

/// A parameter's value without its quotes (a quoted value must still be a
/// token, so it has no escapes to undo).
fn unquote(value: &[u8]) -> Option<&[u8]> {
    match value {
        [b'"', inner @ .., b'"'] if !inner.contains(&b'"') && !inner.contains(&b'\\') => {
            Some(inner)
        }
        [b'"', ..] | [.., b'"'] => None,
        plain => Some(plain),
    }
}

/// A window size: 8 to 15, without leading zeros.
fn window_bits(value: &[u8]) -> Option<u8> {
    match value {
        [digit @ b'8'..=b'9'] => Some(digit - b'0'),
        [b'1', digit @ b'0'..=b'5'] => Some(10 + digit - b'0'),
        _ => None,
    }
}

/// Whether a `User-Agent` is Safari 15.0 to 15.3 (or another browser on its
/// engine, as on iOS 15). These versions offer permessage-deflate but do not
/// honour `client_no_context_takeover`: their second compressed message
/// refers to the first, which herald's per-message inflater cannot follow.
/// herald does not negotiate compression with them; Safari 15.4 fixed it.
pub fn breaks_no_context_takeover(user_agent: &[u8]) -> bool {
    const VERSION: &[u8] = b" Version/15.";
    let Some(at) = user_agent.windows(VERSION.len()).position(|w| w == VERSION) else {
        return false;
    };
    let rest = user_agent.get(at + VERSION.len()..).unwrap_or_default();
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let minor = rest.get(..digits).and_then(|d| std::str::from_utf8(d).ok()?.parse::<u8>().ok());
    let after = rest.get(digits..).unwrap_or_default();
    minor.is_some_and(|minor| minor <= 3)
        && after.first() == Some(&b' ')
        && after.windows(8).any(|w| w == b" Safari/")
}

/// A shard's compressor: every message it compresses is a stream of its
/// own (`server_no_context_takeover`), so one compressor serves every
/// connection and every publication. zlib's state (about 260 KiB) is
/// allocated on first use.
#[derive(Default)]
pub struct Deflater {
    compress: Option<Box<Compress>>,
}

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflater").field("allocated", &self.compress.is_some()).finish()
    }
}

impl Deflater {
    /// One final frame holding `payload` compressed, RSV1 set; `None` when
    /// compressing would not make the frame smaller.
    pub fn frame(&mut self, opcode: Opcode, payload: &[u8]) -> Option<Bytes> {
        let compress = self
            .compress
            .get_or_insert_with(|| Box::new(Compress::new(Compression::new(LEVEL), false)));
        compress.reset();
        // Worth it only below the payload's own length; the trailer is
        // written and then cut.
        let mut out = Vec::with_capacity(HEADER_ROOM + payload.len() + TRAILER.len());
        out.resize(HEADER_ROOM, 0);
        let mut input = payload;
        while !input.is_empty() {
            let (before_in, before_out) = (compress.total_in(), out.len());
            let status = compress.compress_vec(input, &mut out, FlushCompress::Sync).ok()?;
            let used = usize::try_from(compress.total_in() - before_in).unwrap_or(usize::MAX);
            input = input.get(used..)?;
            // Out of room: the frame would not be smaller. No progress: give up.
            if out.len() == out.capacity()
                || (status == Status::BufError && out.len() == before_out)
            {
                return None;
            }
        }
        if !out.ends_with(&TRAILER) {
            return None;
        }
        out.truncate(out.len() - TRAILER.len());
        let compressed = out.len() - HEADER_ROOM;
        if compressed >= payload.len() {
            return None;
        }
        let mut header = [0u8; HEADER_ROOM];
        let free = {
            let mut room: &mut [u8] = &mut header;
            frame_header(opcode, compressed, &mut room);
            room.len()
        };
        let header = header.get_mut(..HEADER_ROOM - free)?;
        let first = header.first_mut()?;
        *first |= super::frame::RSV1;
        let start = HEADER_ROOM - header.len();
        out.get_mut(start..HEADER_ROOM)?.copy_from_slice(header);
        Some(Bytes::from(out).slice(start..))
    }
}

/// A shard's inflater: reset for each message
/// (`client_no_context_takeover`), so one serves every connection. zlib's
/// state (about 40 KiB) and the [`INFLATE_WINDOW`] are allocated on first
/// use and kept.
#[derive(Default)]
pub struct Inflater {
    decompress: Option<Box<Decompress>>,
    window: Vec<u8>,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater").field("allocated", &self.decompress.is_some()).finish()
    }
}

impl Inflater {
    /// Inflates one message (its trailer removed, as it came) of at most
    /// `limit` bytes. The limit is checked inside the inflate loop: past it
    /// nothing more is inflated, and a message over it allocates nothing
    /// (1009). A stream that is not deflate fails with 1007.
    pub fn inflate(&mut self, compressed: &[u8], limit: usize) -> Result<Vec<u8>, CloseReason> {
        let decompress = self.decompress.get_or_insert_with(|| Box::new(Decompress::new(false)));
        if self.window.is_empty() {
            self.window = vec![0; INFLATE_WINDOW];
        }
        // First pass: into the window, counting, never past limit + 1. The
        // window fills up first; once full, it is written over from the
        // start and only counts.
        decompress.reset(false);
        let (mut size, mut wrapped) = (0usize, false);
        run(decompress, compressed, |decompress, input| {
            if size == self.window.len() {
                wrapped = true;
            }
            let offset = if wrapped { 0 } else { size };
            let room = (self.window.len() - offset).min((limit - size).saturating_add(1));
            let out = self.window.get_mut(offset..offset + room).unwrap_or_default();
            let before = decompress.total_out();
            let status = decompress.decompress(input, out, FlushDecompress::Sync);
            let produced = usize::try_from(decompress.total_out() - before).unwrap_or(usize::MAX);
            size += produced;
            if size > limit {
                return Err(CloseReason::MessageTooBig);
            }
            Ok((status, produced == room))
        })?;
        if !wrapped {
            return Ok(self.window.get(..size).unwrap_or_default().to_vec());
        }
        // Second pass: into a buffer of exactly the message's size.
        decompress.reset(false);
        let mut message = Vec::with_capacity(size);
        run(decompress, compressed, |decompress, input| {
            let before = message.len();
            let status = decompress.decompress_vec(input, &mut message, FlushDecompress::Sync);
            Ok((status, message.len() == message.capacity() && message.len() > before))
        })?;
        if message.len() == size { Ok(message) } else { Err(CloseReason::InvalidCompressedData) }
    }
}

/// Feeds a message and then the trailer to `step` (one call of zlib with
/// some output room) until both are used up, zlib has nothing more to
/// give, or the stream ended. `step` answers zlib's status and whether the
/// output room was filled (then there may be more to give).
fn run(
    decompress: &mut Decompress,
    compressed: &[u8],
    mut step: impl FnMut(
        &mut Decompress,
        &[u8],
    ) -> Result<(Result<Status, flate2::DecompressError>, bool), CloseReason>,
) -> Result<(), CloseReason> {
    for mut input in [compressed, &TRAILER[..]] {
        loop {
            let before = decompress.total_in();
            let (status, filled) = step(decompress, input)?;
            let used = usize::try_from(decompress.total_in() - before).unwrap_or(usize::MAX);
            input = input.get(used..).unwrap_or_default();
            match status.map_err(|_| CloseReason::InvalidCompressedData)? {
                Status::StreamEnd => return Ok(()),
                // No progress possible: this input is used up.
                Status::BufError => break,
                Status::Ok if input.is_empty() && !filled => break,
                Status::Ok => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::payload_of;

    fn offer(value: &str) -> Option<Agreed> {
        negotiate([value.as_bytes()])
    }

    #[test]
    fn browser_offers_are_accepted() {
        let chromium = offer("permessage-deflate; client_max_window_bits").unwrap();
        assert_eq!(chromium.server_max_window_bits, None);
        assert_eq!(
            chromium.response(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        let firefox = offer("permessage-deflate").unwrap();
        assert_eq!(firefox.window_bits(), 15);
        // Python websockets' default offer.
        assert!(offer("permessage-deflate; client_max_window_bits=12").is_some());
    }

    #[test]
    fn a_server_window_is_repeated_and_honoured() {
        let small = offer("permessage-deflate; server_max_window_bits=10").unwrap();
        assert_eq!(small.window_bits(), 10);
        assert!(small.response().ends_with("; server_max_window_bits=10"), "{}", small.response());
        assert!(fits_window(1024, 10));
        assert!(!fits_window(1025, 10));
        assert!(fits_window(32768, 15));
        let quoted = offer("permessage-deflate; server_max_window_bits=\"9\"").unwrap();
        assert_eq!(quoted.window_bits(), 9);
    }

    #[test]
    fn offers_herald_cannot_honour_are_declined_and_the_next_one_taken() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=1x",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; mystery",
            "permessage-deflate; server_max_window_bits=\"9",
            "x-webkit-deflate-frame",
            "",
        ] {
            assert_eq!(offer(bad), None, "{bad:?}");
        }
        let second = offer(
            "permessage-deflate; mystery, permessage-deflate; server_max_window_bits=12, \
             permessage-deflate",
        );
        assert_eq!(second.unwrap().window_bits(), 12);
        // Offers spread over several headers are read in order.
        let agreed = negotiate([&b"foo"[..], b"permessage-deflate; client_no_context_takeover"]);
        assert!(agreed.is_some());
    }

    #[test]
    fn safari_15_0_to_15_3_is_recognised() {
        let safari = |version: &str| {
            format!(
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 \
                 (KHTML, like Gecko) Version/{version} Safari/605.1.15"
            )
        };
        for broken in ["15.0", "15.1", "15.2", "15.3"] {
            assert!(breaks_no_context_takeover(safari(broken).as_bytes()), "{broken}");
        }
        for fine in ["15.4", "15.6.1", "16.0", "14.1.2", "15.10"] {
            assert!(!breaks_no_context_takeover(safari(fine).as_bytes()), "{fine}");
        }
        let ios = "Mozilla/5.0 (iPhone; CPU iPhone OS 15_2 like Mac OS X) AppleWebKit/605.1.15 \
                   (KHTML, like Gecko) Version/15.2 Mobile/15E148 Safari/604.1";
        assert!(breaks_no_context_takeover(ios.as_bytes()));
        let chrome = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
                      Chrome/126.0.0.0 Safari/537.36";
        assert!(!breaks_no_context_takeover(chrome.as_bytes()));
        assert!(!breaks_no_context_takeover(b"Version/15.1"));
    }

    #[test]
    fn frames_round_trip_with_rsv1_set() {
        let mut deflater = Deflater::default();
        let mut inflater = Inflater::default();
        for size in [200, 5_000, 70_000, 200_000] {
            let pattern = b"{\"op\":\"message\",\"n\":12345}";
            let json: Vec<u8> = (0..size).map(|i| pattern[i % pattern.len()]).collect();
            let frame = deflater.frame(Opcode::Text, &json).unwrap();
            assert_eq!(frame[0], 0xC1, "FIN, RSV1, text");
            assert!(frame.len() < json.len() / 4, "{size}: {} bytes", frame.len());
            assert_eq!(inflater.inflate(payload_of(&frame), 1 << 20).unwrap(), json, "{size}");
        }
    }

    #[test]
    fn incompressible_payloads_are_not_compressed() {
        let mut deflater = Deflater::default();
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[0]
            })
            .collect();
        assert_eq!(deflater.frame(Opcode::Binary, &noise), None);
        assert_eq!(deflater.frame(Opcode::Text, b"a"), None);
    }

    /// 1 KiB of deflate that inflates to about a megabyte.
    fn zip_bomb() -> Vec<u8> {
        let mut deflater = Deflater::default();
        let frame = deflater.frame(Opcode::Binary, &vec![0u8; 1 << 20]).unwrap();
        payload_of(&frame).to_vec()
    }

    #[test]
    fn a_zip_bomb_stops_at_the_limit() {
        let bomb = zip_bomb();
        assert!(bomb.len() <= 1100, "{}", bomb.len());
        let mut inflater = Inflater::default();
        assert_eq!(inflater.inflate(&bomb, 64 * 1024), Err(CloseReason::MessageTooBig));
        assert_eq!(inflater.inflate(&bomb, (1 << 20) - 1), Err(CloseReason::MessageTooBig));
        assert_eq!(inflater.inflate(&bomb, 1 << 20).unwrap().len(), 1 << 20);
        // The inflater is reset between messages: it serves the next one.
        let mut deflater = Deflater::default();
        let frame = deflater.frame(Opcode::Text, &[b'x'; 300]).unwrap();
        assert_eq!(inflater.inflate(payload_of(&frame), 300).unwrap(), vec![b'x'; 300]);
    }

    #[test]
    fn corrupt_and_odd_streams() {
        let mut inflater = Inflater::default();
        // A block type of 3 is reserved.
        assert_eq!(
            inflater.inflate(&[0xFF, 0xFF, 0xFF], 1024),
            Err(CloseReason::InvalidCompressedData)
        );
        // An empty message is an empty stream: nothing but the trailer.
        assert_eq!(inflater.inflate(&[], 1024).unwrap(), b"");
        // A message that ends with a final block (BFINAL) needs no trailer.
        let mut compress = Compress::new(Compression::default(), false);
        let mut out = Vec::with_capacity(64);
        compress.compress_vec(b"hello", &mut out, FlushCompress::Finish).unwrap();
        assert_eq!(inflater.inflate(&out, 1024).unwrap(), b"hello");
        assert_eq!(inflater.inflate(&out, 4), Err(CloseReason::MessageTooBig));
    }
}
