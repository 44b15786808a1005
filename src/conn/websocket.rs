//! The WebSocket phase: tungstenite's `WebSocketContext` driven over an adapter that reads from the shard's scratch buffer and writes to the connection's `OutQueue`; compressed messages inflated beside it.

use super::out_queue::OutQueue;
use crate::clock::Millis;
use crate::error::{CloseReason, WsFailure};
use crate::wire::deflate::{Agreed, Inflater};
use crate::wire::frame::Opcode;
use crate::wire::frame::{frame_header, small_header};
use crate::wire::scanner::{FrameScanner, Sink};
use bytes::{Bytes, BytesMut};
use std::io::{self, Read, Write};
use std::ops::ControlFlow;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::{CloseFrame, Utf8Bytes};
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Message, error::Error as WsError};

/// tungstenite's read buffer, and the most it reads at once. It is
/// zero-filled before every read, so it stays small (a large frame is read
/// in more steps; they are memory copies from the scratch buffer, not
/// system calls). A connection holds it only while a frame is half-read.
pub const CODEC_READ_BUFFER: usize = 1024;
/// Spare tungstenite contexts a shard keeps for reuse.
pub const CODEC_POOL_SIZE: usize = 64;
/// A context that carried a frame larger than this may hold a large buffer:
/// it is freed rather than kept for reuse.
const POOLABLE_FRAME: u64 = 16 * 1024;
/// The shard's buffer for compressed messages keeps at most this much
/// room after a larger message went through it.
const STAGED_KEEP: usize = 64 * 1024;

/// Queues a frame around a payload without copying it: the header is a
/// chunk of its own (static for small text and binary frames).
pub fn queue_frame(out: &mut OutQueue, opcode: Opcode, payload: Bytes) {
    match small_header(opcode, payload.len()) {
        Some(header) => out.push(Bytes::from_static(header)),
        None => {
            let mut header = BytesMut::with_capacity(10);
            frame_header(opcode, payload.len(), &mut header);
            out.push(header.freeze());
        }
    }
    out.push(payload);
}

/// What a shard keeps for the framing of all its connections: spare
/// tungstenite contexts, and the inflater compressed messages share.
///
/// A context goes back only when quiescent (nothing half-read, no message
/// in progress, not closing): it is then in the same state as a new one,
/// and reusing it saves allocating and freeing its buffers for every burst
/// of messages.
#[derive(Default)]
pub struct CodecPool {
    // Boxed because sessions hold them boxed: taking one out and putting it
    // back moves a pointer, not the context.
    #[allow(clippy::vec_box)]
    spare: Vec<Box<WebSocketContext>>,
    /// Inflates every compressed message of the shard, one at a time.
    inflater: Inflater,
    /// The payload, unmasked, of a compressed message that began in the
    /// read being processed. One that is still unfinished at the end of the
    /// read moves to its connection.
    staged: Vec<u8>,
}

impl std::fmt::Debug for CodecPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodecPool")
            .field("spare", &self.spare.len())
            .field("inflater", &self.inflater)
            .finish()
    }
}

impl CodecPool {
    fn take(&mut self, max_message: usize) -> Box<WebSocketContext> {
        match self.spare.pop() {
            Some(mut codec) => {
                codec.set_config(|config| {
                    config.max_message_size = Some(max_message);
                    config.max_frame_size = Some(max_message);
                });
                codec
            }
            None => {
                let config = WebSocketConfig::default()
                    .read_buffer_size(CODEC_READ_BUFFER)
                    .write_buffer_size(0)
                    .max_write_buffer_size(usize::MAX)
                    .max_message_size(Some(max_message))
                    .max_frame_size(Some(max_message));
                Box::new(WebSocketContext::new(Role::Server, Some(config)))
            }
        }
    }

    fn give(&mut self, codec: Box<WebSocketContext>) {
        if self.spare.len() < CODEC_POOL_SIZE {
            self.spare.push(codec);
        }
    }

    /// Contexts kept for reuse.
    pub fn len(&self) -> usize {
        self.spare.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.spare.is_empty()
    }
}

/// The adapter tungstenite reads and writes through: reads come from bytes
/// already read from the socket, writes land in the outbound queue and
/// never block.
struct Adapter<'a> {
    input: &'a [u8],
    out: &'a mut OutQueue,
}

impl Read for Adapter<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.input.read(buf)?;
        Ok(n)
    }
}

impl Write for Adapter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.push(Bytes::copy_from_slice(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where the scanner hands a read's bytes: frames to tungstenite, and
/// compressed messages to the shard's inflater, each message to the
/// handler as it completes.
struct Route<'a, H> {
    codec: &'a mut Option<Box<WebSocketContext>>,
    #[allow(clippy::box_collection)]
    compressed: &'a mut Option<Box<Vec<u8>>>,
    pool: &'a mut CodecPool,
    out: &'a mut OutQueue,
    handler: &'a mut H,
    /// herald sent its close frame: messages are no longer handled.
    closing: bool,
    max_message: usize,
    /// Set when the input must not be processed further.
    outcome: Option<Input>,
}

impl<H: Handler> Route<'_, H> {
    fn stop(&mut self, outcome: Input) -> ControlFlow<()> {
        self.outcome = Some(outcome);
        ControlFlow::Break(())
    }

    fn handle(&mut self, message: Message) -> ControlFlow<()> {
        if self.closing {
            return ControlFlow::Continue(());
        }
        match self.handler.on_message(message, self.out) {
            Ok(()) => ControlFlow::Continue(()),
            Err(reason) => self.stop(Input::Fail(reason)),
        }
    }
}

impl<H: Handler> Sink for Route<'_, H> {
    fn frames(&mut self, bytes: &[u8]) -> ControlFlow<()> {
        if bytes.is_empty() {
            return ControlFlow::Continue(());
        }
        let max = self.max_message;
        let pool = &mut *self.pool;
        let codec = self.codec.get_or_insert_with(|| pool.take(max));
        let mut adapter = Adapter { input: bytes, out: &mut *self.out };
        loop {
            let message = match codec.read(&mut adapter) {
                Ok(message @ (Message::Text(_) | Message::Binary(_))) => message,
                // Pings are answered by tungstenite; pongs need nothing more.
                Ok(_) => continue,
                Err(WsError::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) => {
                    let outcome = match WsFailure::from(error) {
                        WsFailure::Finished => Input::Finished,
                        WsFailure::Close(reason) => Input::Fail(reason),
                        WsFailure::Transport => Input::Fail(CloseReason::Internal),
                    };
                    return self.stop(outcome);
                }
            };
            if self.closing {
                continue;
            }
            if let Err(reason) = self.handler.on_message(message, adapter.out) {
                return self.stop(Input::Fail(reason));
            }
        }
        ControlFlow::Continue(())
    }

    fn compressed(&mut self, payload: &[u8]) {
        match self.compressed {
            Some(held) => held.extend_from_slice(payload),
            None => self.pool.staged.extend_from_slice(payload),
        }
    }

    fn compressed_end(&mut self, text: bool) -> ControlFlow<()> {
        let held = self.compressed.take();
        if self.closing {
            self.pool.staged.clear();
            return ControlFlow::Continue(());
        }
        let source = held.as_deref().unwrap_or(&self.pool.staged);
        let inflated = self.pool.inflater.inflate(source, self.max_message);
        self.pool.staged.clear();
        let message = match inflated {
            Ok(bytes) if text => match String::from_utf8(bytes) {
                Ok(text) => Message::Text(Utf8Bytes::from(text)),
                Err(_) => return self.stop(Input::Fail(CloseReason::InvalidUtf8)),
            },
            Ok(bytes) => Message::Binary(Bytes::from(bytes)),
            Err(reason) => return self.stop(Input::Fail(reason)),
        };
        self.handle(message)
    }
}

/// What happened to the input handed to the session.
#[derive(Debug)]
pub enum Input {
    /// All of it was processed.
    Processed,
    /// The connection must be failed with this close code.
    Fail(CloseReason),
    /// The close handshake completed.
    Finished,
}

/// What the endpoint does with each complete message.
pub trait Handler {
    /// A text or binary message arrived. Replies go into `out`; an `Err`
    /// closes the connection with that code.
    fn on_message(&mut self, message: Message, out: &mut OutQueue) -> Result<(), CloseReason>;
}

/// Framing state of one WebSocket connection.
#[derive(Debug)]
pub struct WsSession {
    /// tungstenite's state, present only while something is half-read or the
    /// close handshake runs: an idle connection holds no framing buffers.
    codec: Option<Box<WebSocketContext>>,
    /// A compressed message begun in an earlier read: its payload so far,
    /// unmasked. Present only while such a message is unfinished. Boxed:
    /// one word in every connection's slot rather than three.
    #[allow(clippy::box_collection)]
    compressed: Option<Box<Vec<u8>>>,
    scanner: FrameScanner,
    /// Set once herald has sent a close frame and waits for the reply.
    closing: bool,
    /// With permessage-deflate: the client's window for herald's
    /// compressed frames, as a power of two; 0 without it.
    window_bits: u8,
    /// When the frame or message now half-received began to arrive, in
    /// shard clock seconds plus one (0: none is). Seconds in 32 bits fit
    /// beside `closing` and keep every connection's slot small.
    message_since: u32,
}

impl WsSession {
    /// Control frames the peer sent since the last call.
    pub fn take_control_frames(&mut self) -> u32 {
        self.scanner.take_control_frames()
    }

    /// Bytes of the data message the peer has begun and not finished, as
    /// received (not as its headers announce them).
    pub fn incomplete_bytes(&self) -> usize {
        usize::try_from(self.scanner.message_received()).unwrap_or(usize::MAX)
    }

    /// Notes, after input at `now`, when the frame or message being
    /// received began (or that none is).
    pub fn note_message_start(&mut self, now: Millis) {
        if self.scanner.at_rest() {
            self.message_since = 0;
        } else if self.message_since == 0 {
            self.message_since = u32::try_from(now / 1000 + 1).unwrap_or(u32::MAX);
        }
    }

    /// When the frame or message being received began to arrive (to the
    /// second), if one is.
    pub fn message_started(&self) -> Option<Millis> {
        self.message_since.checked_sub(1).map(|seconds| u64::from(seconds) * 1000)
    }

    /// A session whose messages may be `max_message` bytes (also once
    /// inflated), with permessage-deflate where it was agreed.
    pub fn new(max_message: usize, deflate: Option<Agreed>) -> Self {
        WsSession {
            codec: None,
            compressed: None,
            scanner: FrameScanner::new(max_message, deflate.is_some()),
            closing: false,
            window_bits: deflate.map_or(0, |agreed| agreed.window_bits()),
            message_since: 0,
        }
    }

    /// With permessage-deflate: the client's window for compressed frames
    /// herald sends, as a power of two.
    pub fn compression(&self) -> Option<u8> {
        (self.window_bits > 0).then_some(self.window_bits)
    }

    /// Whether herald sent a close frame and waits for the peer's.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// Whether the session holds tungstenite state (for tests and metrics).
    pub fn holds_codec(&self) -> bool {
        self.codec.is_some()
    }

    fn codec(&mut self, pool: &mut CodecPool) -> &mut WebSocketContext {
        let max = self.scanner.max_message();
        self.codec.get_or_insert_with(|| pool.take(max))
    }

    /// Processes bytes read from the socket: scans them, lets tungstenite
    /// assemble messages and inflates compressed ones, and hands each
    /// message to `handler`, in order.
    pub fn on_input(
        &mut self,
        input: &[u8],
        out: &mut OutQueue,
        handler: &mut impl Handler,
        pool: &mut CodecPool,
    ) -> Input {
        let mut route = Route {
            codec: &mut self.codec,
            compressed: &mut self.compressed,
            pool: &mut *pool,
            out,
            handler,
            closing: self.closing,
            max_message: self.scanner.max_message(),
            outcome: None,
        };
        let scanned = self.scanner.scan(input, &mut route);
        let outcome = route.outcome;
        // A compressed message this read began and did not finish moves to
        // the connection; the shard's buffer is free for the next one.
        if !pool.staged.is_empty() && outcome.is_none() && scanned.is_ok() {
            self.compressed = Some(Box::new(pool.staged.clone()));
        }
        pool.staged.clear();
        if pool.staged.capacity() > STAGED_KEEP {
            pool.staged = Vec::new();
        }
        if let Some(outcome) = outcome {
            return outcome;
        }
        if let Err((_, reason)) = scanned {
            return Input::Fail(reason);
        }
        if self.scanner.at_rest()
            && !self.closing
            && let Some(codec) = self.codec.take()
        {
            // Nothing half-read: tungstenite's state is that of a new
            // context. An idle connection holds none; the shard keeps it for
            // the next connection that needs one, unless it grew large.
            if self.scanner.largest_frame() <= POOLABLE_FRAME {
                pool.give(codec);
            }
            self.scanner.reset_largest_frame();
        }
        Input::Processed
    }

    /// Starts the close handshake with `reason`: the close frame is queued
    /// and input is read until the peer's close frame comes back.
    pub fn begin_close(&mut self, reason: CloseReason, out: &mut OutQueue, pool: &mut CodecPool) {
        if self.closing {
            return;
        }
        self.closing = true;
        let frame = CloseFrame {
            code: CloseCode::from(reason.code()),
            reason: Utf8Bytes::from_static(reason.reason()),
        };
        let mut adapter = Adapter { input: &[], out };
        // Writing to the adapter cannot fail; an error here means the codec
        // had already finished its close handshake, and then nothing is owed.
        let _ = self.codec(pool).close(&mut adapter, Some(frame));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{client_frame as frame, compressed_client_frame, deflate};
    use crate::wire::deflate::negotiate;

    struct Echo;

    impl Handler for Echo {
        fn on_message(&mut self, message: Message, out: &mut OutQueue) -> Result<(), CloseReason> {
            match message {
                Message::Text(text) => queue_frame(out, Opcode::Text, Bytes::from(text)),
                Message::Binary(data) => queue_frame(out, Opcode::Binary, data),
                _ => {}
            }
            Ok(())
        }
    }

    fn drain(out: &mut OutQueue) -> Vec<u8> {
        let mut written = Vec::new();
        out.write_to(&mut written);
        written
    }

    #[test]
    fn echoes_and_drops_the_codec_when_idle() {
        let mut session = WsSession::new(1 << 20, None);
        let mut out = OutQueue::default();
        let input = frame(true, 1, b"hello");
        assert!(matches!(
            session.on_input(&input, &mut out, &mut Echo, &mut CodecPool::default()),
            Input::Processed
        ));
        assert_eq!(drain(&mut out), b"\x81\x05hello");
        assert!(!session.holds_codec());
        // Half a header is the scanner's alone; half a frame keeps the
        // codec and its bytes.
        assert!(matches!(
            session.on_input(&input[..3], &mut out, &mut Echo, &mut CodecPool::default()),
            Input::Processed
        ));
        assert!(!session.holds_codec());
        assert!(matches!(
            session.on_input(&input[3..8], &mut out, &mut Echo, &mut CodecPool::default()),
            Input::Processed
        ));
        assert!(session.holds_codec());
        assert!(matches!(
            session.on_input(&input[8..], &mut out, &mut Echo, &mut CodecPool::default()),
            Input::Processed
        ));
        assert_eq!(drain(&mut out), b"\x81\x05hello");
        assert!(!session.holds_codec());
    }

    #[test]
    fn pings_are_answered_with_pongs() {
        let mut session = WsSession::new(1024, None);
        let mut out = OutQueue::default();
        session.on_input(&frame(true, 9, b"abc"), &mut out, &mut Echo, &mut CodecPool::default());
        assert_eq!(drain(&mut out), b"\x8a\x03abc");
    }

    #[test]
    fn peer_close_is_answered_and_finishes() {
        let mut session = WsSession::new(1024, None);
        let mut out = OutQueue::default();
        let input = frame(true, 8, b"\x03\xe8bye");
        assert!(matches!(
            session.on_input(&input, &mut out, &mut Echo, &mut CodecPool::default()),
            Input::Finished
        ));
        assert_eq!(drain(&mut out), b"\x88\x05\x03\xe8bye");
    }

    #[test]
    fn our_close_waits_for_the_reply() {
        let mut session = WsSession::new(1024, None);
        let mut out = OutQueue::default();
        session.begin_close(CloseReason::ShuttingDown, &mut out, &mut CodecPool::default());
        assert_eq!(drain(&mut out), crate::wire::frame::close_frame(CloseReason::ShuttingDown));
        // Data after our close is not echoed.
        assert!(matches!(
            session.on_input(
                &frame(true, 1, b"late"),
                &mut out,
                &mut Echo,
                &mut CodecPool::default()
            ),
            Input::Processed
        ));
        assert!(out.is_empty());
        let reply = frame(true, 8, b"\x03\xe9");
        assert!(matches!(
            session.on_input(&reply, &mut out, &mut Echo, &mut CodecPool::default()),
            Input::Finished
        ));
    }

    #[test]
    fn scanner_errors_fail_after_the_good_frames() {
        let mut session = WsSession::new(1024, None);
        let mut out = OutQueue::default();
        let mut input = frame(true, 1, b"ok");
        input.extend(frame(true, 1, b"\xc3\x28"));
        let result = session.on_input(&input, &mut out, &mut Echo, &mut CodecPool::default());
        assert!(matches!(result, Input::Fail(CloseReason::InvalidUtf8)), "{result:?}");
        assert_eq!(drain(&mut out), b"\x81\x02ok");
    }

    fn compressing(max_message: usize) -> WsSession {
        WsSession::new(max_message, negotiate([&b"permessage-deflate"[..]]))
    }

    #[test]
    fn compressed_messages_are_inflated_in_order_with_the_others() {
        let mut session = compressing(1 << 20);
        assert_eq!(session.compression(), Some(15));
        let mut input = frame(true, 1, b"one");
        input.extend(compressed_client_frame(true, 1, &deflate(b"two")));
        input.extend(frame(true, 9, b"p"));
        input.extend(compressed_client_frame(true, 2, &deflate(&[3; 5000])));
        input.extend(frame(true, 1, b"four"));
        let mut pool = CodecPool::default();
        let result = session.on_input(&input, &mut OutQueue::default(), &mut Echo, &mut pool);
        assert!(matches!(result, Input::Processed), "{result:?}");
        let mut out = OutQueue::default();
        session.on_input(&input, &mut out, &mut Echo, &mut pool);
        let mut expected = b"\x81\x03one\x81\x03two\x8a\x01p\x82\x7e\x13\x88".to_vec();
        expected.extend([3; 5000]);
        expected.extend(b"\x81\x04four");
        assert_eq!(drain(&mut out), expected);
        assert!(!session.holds_codec());
    }

    #[test]
    fn a_compressed_message_split_over_reads_is_held_by_its_connection_alone() {
        let mut session = compressing(1 << 20);
        let input = compressed_client_frame(true, 1, &deflate(&b"hello ".repeat(400)));
        for split in [1, 5, input.len() / 2, input.len() - 1] {
            let mut pool = CodecPool::default();
            let mut out = OutQueue::default();
            session.on_input(&input[..split], &mut out, &mut Echo, &mut pool);
            assert!(out.is_empty());
            assert!(pool.staged.is_empty(), "the shard's buffer is free again");
            assert_eq!(session.incomplete_bytes() > 0, split > 14, "split {split}");
            session.on_input(&input[split..], &mut out, &mut Echo, &mut pool);
            let echoed = drain(&mut out);
            assert!(echoed.ends_with(&b"hello ".repeat(400)), "split {split}");
            assert!(session.compressed.is_none(), "split {split}");
        }
    }

    #[test]
    fn bad_compressed_messages_close_as_plain_ones_would() {
        let cases: [(Vec<u8>, CloseReason); 4] = [
            // 1 KiB that inflates to a megabyte, against a 64 KiB limit.
            (deflate(&vec![0; 1 << 20]), CloseReason::MessageTooBig),
            (vec![0xFF, 0xFF], CloseReason::InvalidCompressedData),
            (deflate(b"ok \xc3\x28"), CloseReason::InvalidUtf8),
            // Over the limit as received already (refused from the header).
            (vec![0; 70_000], CloseReason::MessageTooBig),
        ];
        for (payload, reason) in cases {
            let mut session = compressing(64 * 1024);
            let mut out = OutQueue::default();
            let input = compressed_client_frame(true, 1, &payload);
            let result = session.on_input(&input, &mut out, &mut Echo, &mut CodecPool::default());
            assert!(matches!(result, Input::Fail(r) if r == reason), "{result:?} for {reason:?}");
        }
        // Without the extension, RSV1 is a protocol error.
        let mut plain = WsSession::new(1024, None);
        let input = compressed_client_frame(true, 1, &deflate(b"x"));
        let result =
            plain.on_input(&input, &mut OutQueue::default(), &mut Echo, &mut CodecPool::default());
        assert!(matches!(result, Input::Fail(CloseReason::Protocol(_))), "{result:?}");
    }
}
