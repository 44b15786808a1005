//! Follows frame boundaries in what a client sends, ahead of tungstenite: fails bad headers and invalid UTF-8 at the first bad byte, takes compressed messages aside, and knows when nothing is half-read.
//!
//! tungstenite checks a frame when its last byte has arrived. The scanner
//! sees every byte as it is read, so it can refuse a frame from its header
//! (before its payload is buffered) and a text message at its first invalid
//! byte, and it can tell the connection that no partial frame or message is
//! held, so the framing state can be dropped while the connection is idle.
//!
//! tungstenite knows nothing of permessage-deflate (it refuses RSV1). Where
//! the connection negotiated it, the scanner hands the frames of compressed
//! messages to its [`Sink`] apart from the others: their payloads, unmasked,
//! to be inflated by herald; every other byte, in order, for tungstenite.

// Every index and narrowing cast below is bounded by MAX_HEADER, by a header length computed
// from at most MAX_HEADER bytes, or by a `min` with the slice's length; each
// place says which.
#![allow(clippy::indexing_slicing, clippy::cast_possible_truncation)]

use crate::error::CloseReason;
use std::ops::ControlFlow;

/// Longest frame header: 2 bytes, 8 of extended length, 4 of mask key.
const MAX_HEADER: usize = 14;

/// What kind of data message is being assembled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MessageKind {
    Text,
    Binary,
    /// Compressed (RSV1 on its first frame); `true` for text.
    Compressed(bool),
}

/// Where scanned bytes go: the scanner calls it in the order of the bytes.
pub trait Sink {
    /// Bytes of frames that are not part of a compressed message, in
    /// order (tungstenite's share). A frame's header is handed on only
    /// once it is whole.
    fn frames(&mut self, bytes: &[u8]) -> ControlFlow<()>;
    /// Payload bytes of a compressed message, unmasked.
    fn compressed(&mut self, payload: &[u8]);
    /// The compressed message is whole (`text`: a text message).
    fn compressed_end(&mut self, text: bool) -> ControlFlow<()>;
}

/// A sink that keeps nothing (the scanner's verdict alone).
#[derive(Debug)]
pub struct Discard;

impl Sink for Discard {
    fn frames(&mut self, _: &[u8]) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }

    fn compressed(&mut self, _: &[u8]) {}

    fn compressed_end(&mut self, _: bool) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

/// Where the scanner is inside the current frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// Reading a header; `header_len` bytes of it are in `header`.
    Header,
    /// Inside a payload: `left` bytes still to come.
    Payload { left: u64 },
}

/// Frame-boundary tracker for one client connection.
#[derive(Debug)]
pub struct FrameScanner {
    max_message: u64,
    position: Position,
    header: [u8; MAX_HEADER],
    header_len: u8,
    /// RSV1 may start a compressed message (permessage-deflate negotiated).
    compression: bool,
    /// The current frame is a data frame (text, binary or continuation).
    data_frame: bool,
    /// The current frame has FIN set.
    fin: bool,
    mask: [u8; 4],
    /// Offset into the payload modulo 4: where the mask key stands.
    mask_phase: u8,
    /// A data message whose final frame has not arrived.
    message: Option<MessageKind>,
    /// Payload bytes of the unfinished message actually received: what the
    /// connection holds, as opposed to what its headers announce. At a
    /// frame's header every earlier frame is whole, so this plus the new
    /// frame's length is what the message will be.
    message_received: u64,
    /// The largest frame payload seen since the last reset.
    largest_frame: u64,
    utf8: Utf8Stream,
    /// Frames of the data message being assembled.
    fragments: u32,
    /// Control frames (ping, pong, close) seen since the last
    /// [`FrameScanner::take_control_frames`].
    control_frames: u32,
}

/// Most frames one data message may come in (over it: 1008): at least this
/// many, more for endpoints that take large messages (one per 64 bytes of
/// `max_message`). Real clients send a message in one frame, or a few; a
/// message in thousands of tiny fragments only costs the server.
pub const MIN_MAX_FRAGMENTS: u32 = 1024;

impl FrameScanner {
    /// A scanner for a connection whose messages may be `max_message` bytes
    /// (as received, and inflated); `compression`: permessage-deflate was
    /// negotiated.
    pub fn new(max_message: usize, compression: bool) -> Self {
        FrameScanner {
            max_message: max_message as u64,
            position: Position::Header,
            header: [0; MAX_HEADER],
            header_len: 0,
            compression,
            data_frame: false,
            fin: false,
            mask: [0; 4],
            mask_phase: 0,
            message: None,
            message_received: 0,
            largest_frame: 0,
            utf8: Utf8Stream::default(),
            fragments: 0,
            control_frames: 0,
        }
    }

    /// Most frames one message may come in.
    fn max_fragments(&self) -> u32 {
        u32::try_from(self.max_message / 64).unwrap_or(u32::MAX).max(MIN_MAX_FRAGMENTS)
    }

    /// Control frames seen since the last call.
    pub fn take_control_frames(&mut self) -> u32 {
        std::mem::take(&mut self.control_frames)
    }

    /// The largest frame payload seen since [`FrameScanner::reset_largest_frame`].
    pub fn largest_frame(&self) -> u64 {
        self.largest_frame
    }

    /// Starts watching frame sizes afresh.
    pub fn reset_largest_frame(&mut self) {
        self.largest_frame = 0;
    }

    /// No partial frame, no unfinished message: everything scanned so far
    /// forms whole messages.
    pub fn at_rest(&self) -> bool {
        self.position == Position::Header && self.header_len == 0 && self.message.is_none()
    }

    /// The largest message this scanner lets through.
    pub fn max_message(&self) -> usize {
        usize::try_from(self.max_message).unwrap_or(usize::MAX)
    }

    /// Payload bytes of the unfinished data message received so far.
    pub fn message_received(&self) -> u64 {
        self.message_received
    }

    /// Scans newly read bytes and hands them to `sink`. On an error,
    /// returns where the bad frame began in `input` (the bytes before it
    /// were handed on; with the frame begun in an earlier read, 0) and why
    /// the connection fails. When the sink breaks, scanning stops there.
    pub fn scan(&mut self, input: &[u8], sink: &mut impl Sink) -> Result<(), (usize, CloseReason)> {
        let total = input.len();
        let mut rest = input;
        // Offset in `input` where the frame being scanned began; 0 while that
        // frame began in an earlier read.
        let mut frame_start = 0usize;
        // Start of the bytes not handed to the sink yet.
        let mut run = 0usize;
        // Header bytes held back from an earlier read (a header is handed
        // on only once whole).
        let mut carried = usize::from(self.header_len);
        macro_rules! flow {
            ($flow:expr) => {
                if $flow.is_break() {
                    return Ok(());
                }
            };
        }
        while !rest.is_empty() {
            let at = total - rest.len();
            match self.position {
                Position::Header => {
                    let have = usize::from(self.header_len);
                    if have == 0 {
                        frame_start = at;
                    }
                    // Until two bytes are in, the header's length is unknown.
                    // `full > have` always: a complete header starts its
                    // frame and resets `header_len` to 0. `full <= MAX_HEADER`.
                    let full = header_len(&self.header[..have]).unwrap_or(2);
                    let take = (full - have).min(rest.len());
                    let (head, tail) = rest.split_at(take);
                    self.header[have..have + take].copy_from_slice(head);
                    self.header_len = (have + take) as u8;
                    rest = tail;
                    if header_len(&self.header[..have + take]) != Some(have + take) {
                        continue;
                    }
                    let ended = match self.start_frame() {
                        Ok(ended) => ended,
                        Err(reason) => {
                            let _ = sink.frames(&input[run..frame_start.max(run)]);
                            return Err((frame_start, reason));
                        }
                    };
                    if ended.is_some() || self.in_compressed() {
                        // Its header goes nowhere; what came before it goes
                        // first.
                        flow!(sink.frames(&input[run..frame_start.max(run)]));
                        run = at + take;
                    } else if carried > 0 {
                        flow!(sink.frames(&self.header[..carried]));
                    }
                    carried = 0;
                    if let Some(text) = ended {
                        flow!(sink.compressed_end(text));
                    }
                }
                Position::Payload { left } => {
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(rest.len());
                    let (payload, tail) = rest.split_at(take);
                    let compressed = self.in_compressed();
                    if compressed {
                        unmask_into(payload, self.mask, self.mask_phase, |plain| {
                            sink.compressed(plain);
                        });
                        run = at + take;
                    } else if self.data_frame && self.message == Some(MessageKind::Text) {
                        let valid = self.utf8.feed_masked(payload, self.mask, self.mask_phase);
                        if valid.is_err() {
                            let _ = sink.frames(&input[run..frame_start.max(run)]);
                            return Err((frame_start, CloseReason::InvalidUtf8));
                        }
                    }
                    self.mask_phase = ((usize::from(self.mask_phase) + take) % 4) as u8;
                    if self.data_frame {
                        self.message_received += take as u64;
                    }
                    rest = tail;
                    let left = left - take as u64;
                    self.position = Position::Payload { left };
                    if left == 0 {
                        match self.end_frame() {
                            Err(reason) => {
                                let _ = sink.frames(&input[run..frame_start.max(run)]);
                                return Err((frame_start, reason));
                            }
                            Ok(Some(text)) => flow!(sink.compressed_end(text)),
                            Ok(None) => {}
                        }
                    }
                }
            }
        }
        // A header not yet whole waits for its end.
        let held = if self.header_len > 0 { frame_start } else { total };
        let _ = sink.frames(&input[run..held.max(run)]);
        Ok(())
    }

    /// The current frame belongs to a compressed message.
    fn in_compressed(&self) -> bool {
        self.data_frame && matches!(self.message, Some(MessageKind::Compressed(_)))
    }

    /// A complete header is in `self.header`: check it and enter its
    /// payload. `Some(text)`: it was the empty last frame of a compressed
    /// message.
    fn start_frame(&mut self) -> Result<Option<bool>, CloseReason> {
        let [first, second, ..] = self.header;
        let fin = first & 0x80 != 0;
        let opcode = first & 0x0F;
        let rsv1 = first & 0x40 != 0;
        if first & 0x30 != 0 || (rsv1 && !self.compression) {
            return Err(CloseReason::Protocol("reserved bits set"));
        }
        if second & 0x80 == 0 {
            return Err(CloseReason::Protocol("unmasked frame from client"));
        }
        let (length, mask_at) = match second & 0x7F {
            126 => (u64::from(u16::from_be_bytes([self.header[2], self.header[3]])), 4),
            127 => {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&self.header[2..10]);
                let length = u64::from_be_bytes(bytes);
                if length >> 63 != 0 {
                    return Err(CloseReason::Protocol("frame length has its top bit set"));
                }
                (length, 10)
            }
            short => (u64::from(short), 2),
        };
        self.mask.copy_from_slice(&self.header[mask_at..mask_at + 4]);
        self.mask_phase = 0;
        self.fin = fin;
        match opcode {
            0x8..=0xA => {
                if !fin {
                    return Err(CloseReason::Protocol("fragmented control frame"));
                }
                if length > 125 {
                    return Err(CloseReason::Protocol("control frame over 125 bytes"));
                }
                if rsv1 {
                    return Err(CloseReason::Protocol("RSV1 set on a control frame"));
                }
                self.data_frame = false;
                self.control_frames = self.control_frames.saturating_add(1);
            }
            0x0 => {
                if self.message.is_none() {
                    return Err(CloseReason::Protocol("continuation without a message"));
                }
                if rsv1 {
                    return Err(CloseReason::Protocol("RSV1 set on a continuation frame"));
                }
                self.fragments += 1;
                if self.fragments > self.max_fragments() {
                    return Err(CloseReason::Policy("message in too many fragments"));
                }
                self.data_frame = true;
            }
            0x1 | 0x2 => {
                if self.message.is_some() {
                    return Err(CloseReason::Protocol("new message inside a fragmented one"));
                }
                self.message = Some(match (rsv1, opcode == 0x1) {
                    (true, text) => MessageKind::Compressed(text),
                    (false, true) => MessageKind::Text,
                    (false, false) => MessageKind::Binary,
                });
                self.message_received = 0;
                self.fragments = 1;
                self.utf8 = Utf8Stream::default();
                self.data_frame = true;
            }
            _ => return Err(CloseReason::Protocol("reserved opcode")),
        }
        if self.data_frame && self.message_received.saturating_add(length) > self.max_message {
            return Err(CloseReason::MessageTooBig);
        }
        self.header_len = 0;
        self.largest_frame = self.largest_frame.max(length);
        self.position = Position::Payload { left: length };
        if length == 0 { self.end_frame() } else { Ok(None) }
    }

    /// The current frame's payload is complete. `Some(text)`: it ended a
    /// compressed message.
    fn end_frame(&mut self) -> Result<Option<bool>, CloseReason> {
        self.position = Position::Header;
        if self.data_frame && self.fin {
            let message = self.message.take();
            self.message_received = 0;
            match message {
                Some(MessageKind::Text) if !self.utf8.is_complete() => {
                    return Err(CloseReason::InvalidUtf8);
                }
                Some(MessageKind::Compressed(text)) => return Ok(Some(text)),
                _ => {}
            }
        }
        Ok(None)
    }
}

/// Total header length once enough of it is known (2 bytes tell it).
fn header_len(header: &[u8]) -> Option<usize> {
    let second = *header.get(1)?;
    let extended = match second & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    Some(2 + extended + mask)
}

/// Incremental UTF-8 validation over a message that arrives in pieces.
#[derive(Debug, Default)]
struct Utf8Stream {
    /// The start of a character whose remaining bytes have not arrived.
    pending: [u8; 4],
    pending_len: u8,
}

impl Utf8Stream {
    fn is_complete(&self) -> bool {
        self.pending_len == 0
    }

    /// Validates masked payload bytes; `phase` is their position in the
    /// frame's payload modulo 4 (for the mask key rotation).
    fn feed_masked(&mut self, masked: &[u8], mask: [u8; 4], phase: u8) -> Result<(), ()> {
        let mut valid = Ok(());
        unmask_into(masked, mask, phase, |plain| {
            if valid.is_ok() {
                valid = self.feed(plain);
            }
        });
        valid
    }

    fn feed(&mut self, mut input: &[u8]) -> Result<(), ()> {
        if self.pending_len > 0 {
            let have = usize::from(self.pending_len);
            let width = utf8_width(self.pending[0]);
            let take = (width - have).min(input.len());
            self.pending[have..have + take].copy_from_slice(&input[..take]);
            self.pending_len += take as u8;
            input = &input[take..];
            let sequence = &self.pending[..usize::from(self.pending_len)];
            match std::str::from_utf8(sequence) {
                Ok(_) => self.pending_len = 0,
                Err(error) if error.error_len().is_none() => return Ok(()),
                Err(_) => return Err(()),
            }
        }
        match std::str::from_utf8(input) {
            Ok(_) => Ok(()),
            Err(error) if error.error_len().is_none() => {
                let rest = &input[error.valid_up_to()..];
                self.pending[..rest.len()].copy_from_slice(rest);
                self.pending_len = rest.len() as u8;
                Ok(())
            }
            Err(_) => Err(()),
        }
    }
}

/// Unmasks payload bytes in 1 KiB pieces on the stack and hands each to
/// `plain`; `phase` is their position in the frame's payload modulo 4 (for
/// the mask key's rotation).
fn unmask_into(masked: &[u8], mask: [u8; 4], phase: u8, mut plain: impl FnMut(&[u8])) {
    // Rotate the key so that index 0 lines up with `phase`; pieces are
    // multiples of 4 bytes, so the rotation holds for every piece.
    let mut key = mask;
    key.rotate_left(usize::from(phase % 4));
    let mut buf = [0u8; 1024];
    for chunk in masked.chunks(buf.len()) {
        let out = &mut buf[..chunk.len()];
        for (i, (dst, src)) in out.iter_mut().zip(chunk).enumerate() {
            *dst = src ^ key[i & 3];
        }
        plain(out);
    }
}

/// Bytes in the UTF-8 sequence that starts with `first` (1 for anything
/// invalid, which `from_utf8` then refuses).
fn utf8_width(first: u8) -> usize {
    match first {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::client_frame as frame;

    fn scan_bytewise(scanner: &mut FrameScanner, bytes: &[u8]) -> Result<(), CloseReason> {
        for byte in bytes {
            scanner.scan(std::slice::from_ref(byte), &mut Discard).map_err(|(_, reason)| reason)?;
        }
        Ok(())
    }

    #[test]
    fn follows_boundaries_whatever_the_split() {
        let mut stream = frame(true, 1, b"hello");
        stream.extend(frame(false, 2, &[7; 300]));
        stream.extend(frame(true, 9, b"ping"));
        stream.extend(frame(true, 0, &[8; 70000]));
        for split in [1, 2, 3, 7, 64, 4096, stream.len()] {
            let mut scanner = FrameScanner::new(1 << 20, false);
            for chunk in stream.chunks(split) {
                scanner.scan(chunk, &mut Discard).unwrap();
            }
            assert!(scanner.at_rest(), "split {split}");
        }
        let mut scanner = FrameScanner::new(1 << 20, false);
        scanner.scan(&stream[..10], &mut Discard).unwrap();
        assert!(!scanner.at_rest());
    }

    #[test]
    fn a_fragmented_message_is_not_at_rest_until_its_last_frame() {
        let mut scanner = FrameScanner::new(1024, false);
        scanner.scan(&frame(false, 1, b"par"), &mut Discard).unwrap();
        assert!(!scanner.at_rest());
        scanner.scan(&frame(true, 9, b""), &mut Discard).unwrap();
        assert!(!scanner.at_rest(), "a ping between fragments");
        scanner.scan(&frame(true, 0, b"t"), &mut Discard).unwrap();
        assert!(scanner.at_rest());
    }

    #[test]
    fn invalid_utf8_fails_at_the_first_bad_byte() {
        // 6.4.3-like: a frame whose payload turns invalid early; the rest
        // never arrives.
        let payload = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80hello";
        let whole = frame(true, 1, payload);
        let bad_at = whole.len() - payload.len() + 12; // the 0x90 after 0xf4
        let mut scanner = FrameScanner::new(1024, false);
        scanner.scan(&whole[..bad_at], &mut Discard).unwrap();
        assert_eq!(
            scanner.scan(&whole[bad_at..bad_at + 1], &mut Discard).unwrap_err().1,
            CloseReason::InvalidUtf8
        );
    }

    #[test]
    fn a_character_split_across_fragments_is_valid() {
        let mut scanner = FrameScanner::new(1024, false);
        let mut stream = frame(false, 1, b"\xe2\x82");
        stream.extend(frame(true, 0, b"\xac"));
        scan_bytewise(&mut scanner, &stream).unwrap();
        assert!(scanner.at_rest());
        let mut scanner = FrameScanner::new(1024, false);
        let truncated = frame(true, 1, b"ok\xe2\x82");
        assert_eq!(scan_bytewise(&mut scanner, &truncated).unwrap_err(), CloseReason::InvalidUtf8);
    }

    #[test]
    fn binary_payloads_are_not_checked_as_text() {
        let mut scanner = FrameScanner::new(1024, false);
        scanner.scan(&frame(true, 2, b"\xff\xfe"), &mut Discard).unwrap();
        assert!(scanner.at_rest());
    }

    #[test]
    fn header_problems_are_refused_before_the_payload() {
        let cases: [(Vec<u8>, CloseReason); 6] = [
            (vec![0x81, 0x05], CloseReason::Protocol("unmasked frame from client")),
            (vec![0xC1, 0x85], CloseReason::Protocol("reserved bits set")),
            (vec![0x83, 0x80], CloseReason::Protocol("reserved opcode")),
            (vec![0x09, 0x80], CloseReason::Protocol("fragmented control frame")),
            (vec![0x89, 0xFE, 0x00, 0x7E], CloseReason::Protocol("control frame over 125 bytes")),
            (vec![0x80, 0x80], CloseReason::Protocol("continuation without a message")),
        ];
        for (bytes, expected) in cases {
            let mut header = bytes.clone();
            header.extend_from_slice(&[0; 4]);
            let mut scanner = FrameScanner::new(1024, false);
            assert_eq!(scanner.scan(&header, &mut Discard).unwrap_err().1, expected, "{bytes:x?}");
        }
        let mut scanner = FrameScanner::new(1024, false);
        let huge = [0x82, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4];
        assert_eq!(scanner.scan(&huge, &mut Discard).unwrap_err().1, CloseReason::MessageTooBig);
    }

    #[test]
    fn fragments_count_toward_the_message_limit() {
        let mut scanner = FrameScanner::new(10, false);
        scanner.scan(&frame(false, 2, &[0; 6]), &mut Discard).unwrap();
        assert_eq!(scanner.message_received(), 6);
        assert_eq!(
            scanner.scan(&frame(true, 0, &[0; 6]), &mut Discard).unwrap_err().1,
            CloseReason::MessageTooBig
        );
    }

    #[test]
    fn an_announced_length_is_not_counted_as_received() {
        let mut scanner = FrameScanner::new(16 << 20, false);
        // A binary frame announcing 16 MiB - 1 (masked, key 0), then nothing.
        let header = [0x82, 0xFF, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0];
        scanner.scan(&header, &mut Discard).unwrap();
        assert_eq!(scanner.message_received(), 0);
        assert!(!scanner.at_rest());
        scanner.scan(&[0; 100], &mut Discard).unwrap();
        assert_eq!(scanner.message_received(), 100);
    }

    #[test]
    fn good_frames_before_a_bad_one_are_reported() {
        let mut stream = frame(true, 1, b"fine");
        let good = stream.len();
        stream.extend(frame(true, 1, b"\xff"));
        let mut scanner = FrameScanner::new(1024, false);
        let (ok, reason) = scanner.scan(&stream, &mut Discard).unwrap_err();
        assert_eq!(ok, good);
        assert_eq!(reason, CloseReason::InvalidUtf8);
    }

    /// A fuzz finding (fuzz/seeds/frame_scanner/split-position): where an
    /// error is reported depends on the split, but only as far as earlier
    /// pieces were handed on already; the verdict does not.
    #[test]
    fn the_verdict_does_not_depend_on_how_bytes_are_split() {
        let input = include_bytes!("../../fuzz/seeds/frame_scanner/split-position");
        let (split, bytes) = input.split_first().unwrap();
        let whole = FrameScanner::new(1024, false).scan(bytes, &mut Discard).unwrap_err();
        let mut scanner = FrameScanner::new(1024, false);
        let mut offset = 0;
        for piece in bytes.chunks(usize::from(*split) + 1) {
            if let Err((good, reason)) = scanner.scan(piece, &mut Discard) {
                assert_eq!(reason, whole.1);
                assert_eq!(offset + good, whole.0.max(offset));
                return;
            }
            offset += piece.len();
        }
        panic!("the split input was accepted");
    }

    /// What a scan handed on, adjacent pieces of one kind joined.
    #[derive(Debug, Default, PartialEq)]
    struct Record(Vec<Piece>);

    #[derive(Debug, PartialEq)]
    enum Piece {
        Frames(Vec<u8>),
        Compressed(Vec<u8>),
        End(bool),
    }

    impl Sink for Record {
        fn frames(&mut self, bytes: &[u8]) -> ControlFlow<()> {
            match self.0.last_mut() {
                _ if bytes.is_empty() => {}
                Some(Piece::Frames(run)) => run.extend_from_slice(bytes),
                _ => self.0.push(Piece::Frames(bytes.to_vec())),
            }
            ControlFlow::Continue(())
        }

        fn compressed(&mut self, payload: &[u8]) {
            match self.0.last_mut() {
                _ if payload.is_empty() => {}
                Some(Piece::Compressed(run)) => run.extend_from_slice(payload),
                _ => self.0.push(Piece::Compressed(payload.to_vec())),
            }
        }

        fn compressed_end(&mut self, text: bool) -> ControlFlow<()> {
            self.0.push(Piece::End(text));
            ControlFlow::Continue(())
        }
    }

    /// A client frame with RSV1 set.
    fn compressed(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut bytes = frame(fin, opcode, payload);
        bytes[0] |= 0x40;
        bytes
    }

    #[test]
    fn compressed_messages_are_taken_aside_in_order_whatever_the_split() {
        let text = frame(true, 1, b"plain");
        let ping = frame(true, 9, b"p");
        let binary = frame(true, 2, &[9; 200]);
        let mut stream = text.clone();
        stream.extend(compressed(false, 1, b"\xff\xfeDEF"));
        stream.extend(&ping);
        stream.extend(frame(false, 0, &[]));
        stream.extend(frame(true, 0, b"LATE"));
        stream.extend(&binary);
        stream.extend(compressed(true, 2, &[]));
        let mut tail = text.clone();
        tail.extend(&ping);
        let expected = Record(vec![
            Piece::Frames(text),
            Piece::Compressed(b"\xff\xfeDEF".to_vec()),
            Piece::Frames(ping),
            Piece::Compressed(b"LATE".to_vec()),
            Piece::End(true),
            Piece::Frames(binary),
            Piece::End(false),
        ]);
        for split in 1..=stream.len() {
            let mut scanner = FrameScanner::new(1024, true);
            let mut record = Record::default();
            for piece in stream.chunks(split) {
                scanner.scan(piece, &mut record).unwrap();
            }
            assert_eq!(record, expected, "split {split}");
            assert!(scanner.at_rest(), "split {split}");
        }
        let mut scanner = FrameScanner::new(1024, true);
        scanner.scan(&stream[..20], &mut Discard).unwrap();
        assert!(!scanner.at_rest(), "inside a compressed message");
    }

    #[test]
    fn rsv1_is_refused_unless_negotiated_and_only_on_a_message_start() {
        let refuse = |compression: bool, bytes: &[u8]| {
            let mut scanner = FrameScanner::new(1024, compression);
            scanner.scan(bytes, &mut Discard).map_err(|(_, reason)| reason)
        };
        let message = compressed(true, 1, b"x");
        assert_eq!(refuse(false, &message), Err(CloseReason::Protocol("reserved bits set")));
        assert_eq!(refuse(true, &message), Ok(()));
        let mut rsv2 = frame(true, 1, b"x");
        rsv2[0] |= 0x20;
        assert_eq!(refuse(true, &rsv2), Err(CloseReason::Protocol("reserved bits set")));
        assert_eq!(
            refuse(true, &compressed(true, 9, b"")),
            Err(CloseReason::Protocol("RSV1 set on a control frame"))
        );
        let mut continued = frame(false, 1, b"a");
        continued.extend(compressed(true, 0, b"b"));
        assert_eq!(
            refuse(true, &continued),
            Err(CloseReason::Protocol("RSV1 set on a continuation frame"))
        );
    }

    #[test]
    fn compressed_messages_count_toward_the_limit_as_received() {
        let mut scanner = FrameScanner::new(10, true);
        scanner.scan(&compressed(false, 1, &[0; 6]), &mut Discard).unwrap();
        assert_eq!(scanner.message_received(), 6);
        assert_eq!(
            scanner.scan(&frame(true, 0, &[0; 6]), &mut Discard).unwrap_err().1,
            CloseReason::MessageTooBig
        );
    }
}
