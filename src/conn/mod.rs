//! One connection: its socket, outbound queue and phase (request head, WebSocket, SSE, long-poll, draining), driven by readiness events and timers.

pub mod io;
pub mod out_queue;
mod request;
pub mod tls;
pub mod websocket;

use crate::api;
use crate::broker::{Delivery, EngineAnswer, Event, Publication};
use crate::channel::ChannelName;
use crate::clock::{Millis, millis};
use crate::config::Config;
use crate::error::{CloseReason, HttpError};
use crate::metrics::{Refusal, Transport as ConnKind};
use crate::node::Shared;
use crate::node::local::Local;
use crate::pusher::{self, PusherSession};
use crate::session::{ClientSession, Outbox};
use crate::stream::{self, PollAnswer, StreamSub};
use crate::wire::deflate::{Deflater, fits_window};
use crate::wire::frame::Opcode;
use crate::wire::frame::{PING_FRAME, close_frame};
use crate::wire::sse::SSE_PING;
use bytes::Bytes;
use io::{IoOutcome, Transport};
use out_queue::{Flush, OutQueue};
use request::HttpPhase;
use std::num::NonZeroU64;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tls::{Received, TlsLayer};
use tungstenite::Message;
use websocket::{Handler, Input, WsSession};

/// Reads one connection may do per turn of the loop before the others get
/// theirs. With the 64 KiB scratch buffer that is 1 MiB per turn.
pub const READ_BUDGET: usize = 16;
/// Size of the shard-wide read buffer every socket read goes through.
pub const SCRATCH_BYTES: usize = 64 * 1024;
/// After an error answer or a failed WebSocket, herald half-closes and reads
/// (discarding) for up to this long before closing, so that the peer reads
/// the answer instead of a reset (a "lingering close").
pub const LINGER: Duration = Duration::from_secs(2);
/// Most bytes discarded while lingering before the socket is closed anyway.
pub const LINGER_MAX_BYTES: usize = 256 * 1024;
/// The least a TLS connection reads at once, whatever its phase's limit.
pub const TLS_MIN_READ: usize = 4096;
/// How long herald waits for the peer's close frame after sending its own.
pub const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// What became of a frame handed to [`Conn::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued; it goes out with the next flush.
    Queued,
    /// The connection is not an open WebSocket (closing, or not upgraded).
    Dropped,
    /// The queue was full: the connection is being closed with 4008.
    SlowConsumer,
}

/// What the loop does with a connection after a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Keep it.
    Keep,
    /// Tear it down: deregister, drop the socket, free the slot.
    Close,
}

/// Shard-wide state that connection callbacks use: the shard's state that
/// front ends work with, plus the buffers only connections need.
#[derive(Debug)]
pub struct Ctx {
    /// The shard's state (it also derefs to it).
    pub local: Local,
    /// The read buffer every socket read on this shard goes through.
    pub scratch: Box<[u8]>,
    /// tungstenite contexts kept for reuse, and the inflater.
    pub codecs: websocket::CodecPool,
    /// The compressor of every frame this shard compresses.
    pub deflater: Deflater,
}

impl Deref for Ctx {
    type Target = Local;

    fn deref(&self) -> &Local {
        &self.local
    }
}

impl DerefMut for Ctx {
    fn deref_mut(&mut self) -> &mut Local {
        &mut self.local
    }
}

impl Ctx {
    /// Context for shard `shard`.
    pub fn new(shared: Arc<Shared>, shard: usize) -> Self {
        Ctx {
            local: Local::new(shared, shard),
            scratch: vec![0; SCRATCH_BYTES].into_boxed_slice(),
            codecs: websocket::CodecPool::default(),
            deflater: Deflater::default(),
        }
    }

    fn ping_interval(&self) -> Millis {
        millis(self.config.ping_interval)
    }

    /// Replies to a client's own messages are paced rather than bounded: a
    /// connection whose queue holds this much is not read from until it drains.
    fn read_pause_bytes(&self) -> usize {
        self.config.max_outbound_bytes / 2
    }
}

impl Outbox for OutQueue {
    fn push(&mut self, frame: Bytes) {
        OutQueue::push(self, frame);
    }
}

/// permessage-deflate on one connection: the client's window, the shard's
/// compressor, and the size below which messages go uncompressed.
struct Compress<'a> {
    window_bits: u8,
    deflater: &'a mut Deflater,
    threshold: usize,
}

impl Compress<'_> {
    /// On a connection whose session agreed to compression (`window_bits`),
    /// unless `compression_threshold_bytes` turns it off.
    fn on<'a>(
        deflater: &'a mut Deflater,
        config: &Config,
        window_bits: Option<u8>,
    ) -> Option<Compress<'a>> {
        let threshold = config.compression_threshold_bytes;
        Some(Compress { window_bits: window_bits?, deflater, threshold })
    }

    /// Whether a message of `len` bytes goes compressed: at or above the
    /// threshold, and within the client's window.
    fn takes(&self, len: usize) -> bool {
        len >= self.threshold && fits_window(len, self.window_bits)
    }

    /// The frame of `publication` for this connection: its compressed frame,
    /// built once per node and shared, where that is worth it; else its
    /// plain frame.
    fn publication<'p>(&mut self, publication: &'p Publication) -> &'p Bytes {
        if self.takes(publication.websocket_payload_len())
            && let Some(frame) = publication.deflated_frame(self.deflater)
        {
            return frame;
        }
        publication.websocket_frame()
    }

    /// A message of this connection's own (an echo) compressed, where that
    /// is worth it.
    fn message(&mut self, opcode: Opcode, payload: &[u8]) -> Option<Bytes> {
        if self.takes(payload.len()) { self.deflater.frame(opcode, payload) } else { None }
    }
}

/// A WebSocket's outbound queue as front ends write to it: publications go
/// compressed where the connection agreed to it.
struct Queue<'a> {
    out: &'a mut OutQueue,
    compress: Option<Compress<'a>>,
}

impl Outbox for Queue<'_> {
    fn push(&mut self, frame: Bytes) {
        self.out.push(frame);
    }

    fn push_publication(&mut self, publication: &Publication) {
        let frame = match &mut self.compress {
            Some(compress) => compress.publication(publication),
            None => publication.websocket_frame(),
        };
        self.out.push(frame.clone());
    }
}

/// The endpoint a WebSocket was opened on.
#[derive(Debug)]
enum Endpoint {
    /// `/echo`: every message comes back.
    Echo,
    /// `/ws`: the JSON client protocol.
    Client(Box<ClientSession>),
    /// `/app/{key}`: the Pusher protocol.
    Pusher(Box<PusherSession>),
}

impl Endpoint {
    /// How long the peer may be quiet before it is pinged, and how long it
    /// then has to answer (a Pusher app's activity and pong timeouts, else
    /// `ping_interval` twice).
    fn liveness(&self, ctx: &Ctx) -> (Millis, Millis) {
        match self {
            Endpoint::Pusher(session) => ctx
                .config
                .apps
                .get(session.app_index())
                .map_or((ctx.ping_interval(), ctx.ping_interval()), |app| {
                    (millis(app.activity_timeout), millis(app.pong_timeout))
                }),
            Endpoint::Echo | Endpoint::Client(_) => (ctx.ping_interval(), ctx.ping_interval()),
        }
    }

    /// A close reason in the endpoint's protocol, and the message that
    /// goes before the close frame (a Pusher client's `pusher:error`).
    fn close_reason(&self, reason: CloseReason) -> (CloseReason, Option<Bytes>) {
        match self {
            Endpoint::Pusher(_) => {
                let reason = pusher::close_reason(reason);
                (reason, pusher::error_before_close(reason))
            }
            Endpoint::Echo | Endpoint::Client(_) => (reason, None),
        }
    }
}

/// Hands each message to its endpoint, with the shard's context.
struct Dispatch<'a> {
    endpoint: &'a mut Endpoint,
    ctx: &'a mut Ctx,
    /// The session's permessage-deflate window, where it agreed to it.
    compression: Option<u8>,
}

impl Handler for Dispatch<'_> {
    fn on_message(&mut self, message: Message, out: &mut OutQueue) -> Result<(), CloseReason> {
        let compress =
            Compress::on(&mut self.ctx.deflater, &self.ctx.local.config, self.compression);
        match (&mut *self.endpoint, message) {
            (Endpoint::Echo, Message::Text(text)) => {
                self.ctx.local.metrics.messages_in.inc();
                self.ctx.local.metrics.messages_out.inc();
                echo(out, compress, Opcode::Text, Bytes::from(text));
            }
            (Endpoint::Echo, Message::Binary(data)) => {
                self.ctx.local.metrics.messages_in.inc();
                self.ctx.local.metrics.messages_out.inc();
                echo(out, compress, Opcode::Binary, data);
            }
            (Endpoint::Client(_), Message::Binary(_)) => return Err(CloseReason::UnsupportedData),
            (Endpoint::Client(session), Message::Text(text)) => {
                self.ctx.local.metrics.messages_in.inc();
                session.on_text(&text, &mut Queue { out, compress }, &mut self.ctx.local)?;
            }
            (Endpoint::Pusher(session), Message::Text(text)) => {
                self.ctx.local.metrics.messages_in.inc();
                session.on_text(&text, &mut Queue { out, compress }, &mut self.ctx.local)?;
            }
            (Endpoint::Pusher(_), Message::Binary(_)) => {
                // Pusher has no binary frames; the connection stays.
                let error = crate::wire::pusher::error(None, "Binary frames are not supported");
                websocket::queue_frame(out, Opcode::Text, Bytes::from(error));
            }
            _ => {}
        }
        Ok(())
    }
}

/// Queues the echo of a message: compressed where the connection agreed to
/// it and that is worth it, else the payload as it came behind a header.
fn echo(out: &mut OutQueue, compress: Option<Compress<'_>>, opcode: Opcode, payload: Bytes) {
    match compress.and_then(|mut compress| compress.message(opcode, &payload)) {
        Some(frame) => out.push(frame),
        None => websocket::queue_frame(out, opcode, payload),
    }
}

/// An open WebSocket.
#[derive(Debug)]
struct WsPhase {
    session: WsSession,
    endpoint: Endpoint,
    /// When the peer last sent anything.
    last_rx: Millis,
    /// A heartbeat ping went out since then.
    pinged: bool,
    /// Set with our close frame: when to stop waiting for the peer's.
    close_deadline: Option<NonZeroU64>,
    /// Control frames in the current window (low 16 bits) and when the
    /// window began (high 16 bits: shard clock seconds, wrapping), packed to
    /// keep every connection's slot small.
    control: u32,
}

/// Control frames (pings, pongs) a peer may send per
/// [`CONTROL_WINDOW_SECS`]; past it: 1008. Browsers send none; client
/// libraries a ping every few seconds at most.
pub const MAX_CONTROL_FRAMES: u16 = 100;
/// The window [`MAX_CONTROL_FRAMES`] is counted over.
pub const CONTROL_WINDOW_SECS: u32 = 10;

/// Sending what is queued, then half-closing and discarding input until the
/// peer closes or the linger time ends.
#[derive(Debug)]
struct Drain {
    deadline: Millis,
    fin_sent: bool,
    peer_done: bool,
    discarded: usize,
    /// What the phase it replaces held outside the connection, released
    /// at teardown. It gets no more pushes (`Conn::push` refuses a
    /// draining connection).
    held: Option<Held>,
}

/// A session or subscription a draining connection still holds.
#[derive(Debug)]
enum Held {
    /// A `/ws` session.
    Client(Box<ClientSession>),
    /// A Pusher session.
    Pusher(Box<PusherSession>),
    /// An `/sse` or `/poll` subscription.
    Stream(Box<StreamSub>),
}

/// An open `/sse` stream.
#[derive(Debug)]
struct SsePhase {
    sub: StreamSub,
    /// When the next `: ping` comment is due.
    next_ping: Millis,
}

/// A long-poll held until a message arrives or its timeout passes.
#[derive(Debug)]
struct PollPhase {
    sub: StreamSub,
    deadline: Millis,
    /// What the answer will hold.
    answer: PollAnswer,
    keep_alive: bool,
    allow_origin: Option<Box<str>>,
    /// Channels whose position the engine has not sent yet: the poll is
    /// not answered before they are all known.
    awaiting: usize,
    /// `timeout=0`: answer as soon as every channel is subscribed.
    answer_at_once: bool,
}

#[derive(Debug)]
enum Phase {
    Http(HttpPhase),
    WebSocket(WsPhase),
    Sse(Box<SsePhase>),
    Poll(Box<PollPhase>),
    Draining(Drain),
}

/// One connection on a shard.
#[derive(Debug)]
pub struct Conn<S> {
    socket: S,
    /// On the TLS listener: the TLS state between the socket and the phases.
    tls: Option<Box<TlsLayer>>,
    out: OutQueue,
    phase: Phase,
    /// The socket may have input: set by readiness, cleared on WouldBlock.
    readable: bool,
    /// The socket may take output: set by readiness, cleared on WouldBlock.
    writable: bool,
    /// The read budget ran out with input left: drive again next turn.
    more_input: bool,
    /// The poller reported the peer's hang-up (or an error): read until the
    /// socket says end-of-file rather than stopping at a short read.
    hangup: bool,
    /// The connection's slab key on its shard.
    pub key: u32,
    /// The generation half of this connection's token.
    pub generation: u32,
    /// Output was queued by another connection's doing (a delivery) and
    /// the shard will flush it at the end of its turn.
    pub dirty: bool,
    /// The deadline of the timer entry pending for this connection, if any.
    pub armed: Option<NonZeroU64>,
    /// Whether it counts toward `max_connections` (a connection refused for
    /// being over it does not).
    pub counted: bool,
    /// What it is, for the connection gauges.
    transport: ConnKind,
}

impl<S: Transport> Conn<S> {
    /// A just-accepted connection, waiting for its request head.
    pub fn new(socket: S, ctx: &Ctx) -> Self {
        let deadline = ctx.now + millis(ctx.config.handshake_timeout);
        ctx.metrics.connection(ConnKind::Http, 1);
        Conn {
            socket,
            tls: None,
            out: OutQueue::default(),
            phase: Phase::Http(HttpPhase::new(deadline)),
            readable: false,
            writable: false,
            more_input: false,
            hangup: false,
            key: 0,
            generation: 0,
            dirty: false,
            armed: None,
            counted: true,
            transport: ConnKind::Http,
        }
    }

    /// Puts TLS between the socket and the phases (a connection from the
    /// TLS listener, before any byte was read). Returns false if rustls
    /// refused to start one (the connection is then closed).
    pub fn start_tls(&mut self, config: Arc<rustls::ServerConfig>) -> bool {
        match TlsLayer::new(config) {
            Ok(layer) => {
                self.tls = Some(Box::new(layer));
                true
            }
            Err(error) => {
                log::warn!("cannot start TLS on a connection: {error}");
                false
            }
        }
    }

    /// Bytes a TLS connection holds in its own buffers (received
    /// ciphertext, ciphertext to send): none while idle.
    pub fn tls_buffered(&self) -> usize {
        self.tls.as_ref().map_or(0, |tls| tls.buffered_capacity())
    }

    /// What the connection is now (HTTP, `/ws`, `/echo`).
    pub fn transport(&self) -> ConnKind {
        self.transport
    }

    /// Moves the connection to another transport's gauge.
    fn set_transport(&mut self, transport: ConnKind, ctx: &Ctx) {
        ctx.metrics.connection(self.transport, -1);
        ctx.metrics.connection(transport, 1);
        self.transport = transport;
    }

    /// The socket, for registering it with the poller.
    pub fn socket_mut(&mut self) -> &mut S {
        &mut self.socket
    }

    /// The socket, once the connection is done with (at teardown).
    pub fn into_socket(self) -> S {
        self.socket
    }

    /// A connection refused at accept (e.g. over `max_connections`): it gets
    /// the error answer and is closed after it.
    pub fn refused(socket: S, error: &HttpError, ctx: &Ctx) -> Self {
        let mut conn = Conn::new(socket, ctx);
        conn.respond(error.to_response(), ctx);
        conn
    }

    /// Whether the connection has yet to complete its first request.
    pub fn in_first_request(&self) -> bool {
        matches!(&self.phase, Phase::Http(http) if http.is_first())
    }

    /// Whether the connection is an open WebSocket (not closing).
    pub fn is_open_websocket(&self) -> bool {
        matches!(&self.phase, Phase::WebSocket(ws) if ws.close_deadline.is_none())
    }

    /// Bytes queued for sending (with TLS, plaintext waiting to be
    /// encrypted and ciphertext waiting to be written).
    pub fn queued_bytes(&self) -> usize {
        self.out.len() + self.tls.as_ref().map_or(0, |tls| tls.pending_bytes())
    }

    /// Records that the socket takes output again, when nothing waits to
    /// be written (a completed send on the ring): no drive is needed.
    pub fn mark_writable(&mut self) {
        self.writable = true;
    }

    /// Whether the last drive stopped at the read budget with input left.
    pub fn has_more_input(&self) -> bool {
        self.more_input
    }

    /// Records that the poller reported the peer's hang-up or an error.
    pub fn peer_hung_up(&mut self) {
        self.hangup = true;
    }

    /// Records readiness from the poller and does what it allows.
    pub fn ready(&mut self, readable: bool, writable: bool, ctx: &mut Ctx) -> Next {
        self.readable |= readable;
        self.writable |= writable;
        self.drive(ctx)
    }

    /// Reads (within the budget), processes, and writes, as far as the
    /// socket allows.
    pub fn drive(&mut self, ctx: &mut Ctx) -> Next {
        // The scratch buffer leaves the context for the call, so that input
        // borrowed from it and the context can be used together.
        let mut scratch = std::mem::take(&mut ctx.scratch);
        let next = self.drive_with(&mut scratch, ctx);
        ctx.scratch = scratch;
        next
    }

    fn drive_with(&mut self, scratch: &mut [u8], ctx: &mut Ctx) -> Next {
        // A held poll reads nothing (its client's next request waits in the
        // kernel), so the hang-up the poller reported is all it learns of a
        // client that left: its slot is freed at once, not at its timeout.
        if self.hangup && matches!(self.phase, Phase::Poll(_)) {
            ctx.metrics.streams_left.inc();
            return Next::Close;
        }
        let mut reads = 0;
        loop {
            while self.readable && self.accepts_input(ctx) && reads < READ_BUDGET {
                reads += 1;
                if self.read_once(scratch, ctx) == Next::Close {
                    return Next::Close;
                }
            }
            if self.flush(ctx) == Next::Close {
                return Next::Close;
            }
            // Writing may have lifted backpressure: take up held requests,
            // or read on, if the budget allows.
            if reads < READ_BUDGET && self.resume_held_requests(ctx) {
                reads += 1;
                continue;
            }
            if !(self.readable && self.accepts_input(ctx) && reads < READ_BUDGET) {
                break;
            }
        }
        self.more_input = (self.readable && self.accepts_input(ctx))
            || (self.out.len() < ctx.read_pause_bytes()
                && matches!(&self.phase, Phase::Http(http) if http.is_holding()));
        Next::Keep
    }

    /// Whether the connection takes input now.
    fn accepts_input(&self, ctx: &Ctx) -> bool {
        match &self.phase {
            // Requests and WebSocket commands alike: a connection whose
            // answers pile up (the peer sends but does not read) is not read
            // from until its queue drains below half of `max_outbound_bytes`.
            Phase::Http(http) => http.accepts_input() && self.out.len() < ctx.read_pause_bytes(),
            Phase::WebSocket(_) => self.out.len() < ctx.read_pause_bytes(),
            // An SSE client sends nothing more: what it sends is discarded,
            // and its end-of-file ends the stream.
            Phase::Sse(_) => true,
            // A held poll's next request waits in the kernel.
            Phase::Poll(_) => false,
            // Input is discarded only once the answer is out and the write
            // side is shut: until then it waits in the kernel.
            Phase::Draining(drain) => drain.fin_sent && !drain.peer_done,
        }
    }

    fn read_once(&mut self, scratch: &mut [u8], ctx: &mut Ctx) -> Next {
        let limit = match &self.phase {
            // Never read past the head limit: a huge head is refused after
            // MAX_HEAD_BYTES, not after it has all been read.
            Phase::Http(http) => http.read_limit(),
            _ => scratch.len(),
        };
        if limit == 0 {
            self.respond(HttpError::HeadTooLarge.to_response(), ctx);
            return Next::Keep;
        }
        // Ciphertext is read in reasonable pieces whatever little the phase
        // wants: the plaintext it gives is still bounded (by the limit plus
        // a record), and a record a few bytes at a time would cost a read
        // per few bytes.
        let limit = if self.tls.is_some() { limit.max(TLS_MIN_READ) } else { limit };
        let buf = match scratch.get_mut(..limit) {
            Some(buf) => buf,
            None => &mut *scratch,
        };
        let n = match io::read(&mut self.socket, buf) {
            IoOutcome::Progress(n) => {
                // A short read drained the socket. Linux re-arms an
                // edge-triggered epoll item at every arrival of data, so the
                // next bytes bring a new event: the read that would only say
                // EAGAIN is saved. Not once a hang-up was reported: no event
                // follows it, and the end-of-file must still be read.
                if n < buf.len() && !self.hangup {
                    self.readable = false;
                }
                n
            }
            IoOutcome::WouldBlock => {
                self.readable = false;
                return Next::Keep;
            }
            IoOutcome::Closed | IoOutcome::Error(_) => return self.on_peer_gone(ctx),
        };
        ctx.metrics.bytes_in.add(n as u64);
        let Some(input) = buf.get_mut(..n) else { return Next::Keep };
        match self.tls.take() {
            // A lingering close discards what comes, ciphertext or not.
            Some(tls) if matches!(self.phase, Phase::Draining(_)) => {
                self.tls = Some(tls);
                self.on_input(input, ctx)
            }
            Some(tls) => self.on_ciphertext(tls, input, ctx),
            None => self.on_input(input, ctx),
        }
    }

    /// Ciphertext read on a TLS connection: each record's plaintext goes to
    /// the phase as plain input would. The TLS state is out of `self` for
    /// the call, so that the phases can have `self`.
    fn on_ciphertext(&mut self, mut tls: Box<TlsLayer>, input: &mut [u8], ctx: &mut Ctx) -> Next {
        let was_established = tls.is_established();
        let mut next = Next::Keep;
        let received = tls.receive(input, &mut |plain| {
            next = self.on_input(plain, ctx);
            next == Next::Keep
        });
        if !was_established && tls.is_established() {
            ctx.metrics.tls_handshakes.inc();
        }
        let established = tls.is_established();
        self.tls = Some(tls);
        if next == Next::Close {
            return Next::Close;
        }
        match received {
            Received::More | Received::Stopped => Next::Keep,
            Received::PeerClosed => self.on_peer_gone(ctx),
            Received::Failed(error) => {
                log::debug!("TLS failed: {error}");
                if !established {
                    ctx.metrics.refused(Refusal::TlsHandshake);
                }
                // Nothing more can be encrypted: the alert rustls queued
                // goes out, then the connection lingers and closes.
                self.out = OutQueue::default();
                self.start_drain(ctx);
                Next::Keep
            }
        }
    }

    /// Input for the phase: bytes read from a plain socket, or one TLS
    /// record's plaintext.
    fn on_input(&mut self, input: &[u8], ctx: &mut Ctx) -> Next {
        let n = input.len();
        match &mut self.phase {
            Phase::Http(_) => {
                self.on_http_bytes(input, ctx);
                Next::Keep
            }
            Phase::WebSocket(ws) => {
                ws.last_rx = ctx.now;
                ws.pinged = false;
                self.on_ws_input(input, ctx);
                Next::Keep
            }
            Phase::Sse(_) | Phase::Poll(_) => Next::Keep,
            Phase::Draining(drain) => {
                drain.discarded += n;
                if drain.discarded > LINGER_MAX_BYTES { Next::Close } else { Next::Keep }
            }
        }
    }

    /// The peer closed or reset its side.
    fn on_peer_gone(&mut self, ctx: &Ctx) -> Next {
        self.readable = false;
        match &mut self.phase {
            Phase::Sse(_) | Phase::Poll(_) => {
                ctx.metrics.streams_left.inc();
                Next::Close
            }
            // Queued output (an error answer) may still reach a peer that
            // only half-closed.
            Phase::Draining(drain)
                if !self.out.is_empty()
                    || self.tls.as_ref().is_some_and(|tls| tls.has_pending()) =>
            {
                drain.peer_done = true;
                Next::Keep
            }
            _ => Next::Close,
        }
    }

    fn on_ws_input(&mut self, input: &[u8], ctx: &mut Ctx) {
        let Phase::WebSocket(ws) = &mut self.phase else { return };
        // The pool leaves the context while the dispatcher holds it.
        let mut codecs = std::mem::take(&mut ctx.codecs);
        let compression = ws.session.compression();
        let mut dispatch = Dispatch { endpoint: &mut ws.endpoint, ctx, compression };
        let incomplete_before = ws.session.incomplete_bytes();
        let input = ws.session.on_input(input, &mut self.out, &mut dispatch, &mut codecs);
        ctx.codecs = codecs;
        // Floods: control frames by rate, unfinished messages by a budget
        // over all connections.
        let window = control_window(ctx.now);
        let (mut started, mut frames) = (ws.control >> 16, ws.control & 0xFFFF);
        if window.wrapping_sub(started) & 0xFFFF >= CONTROL_WINDOW_SECS {
            (started, frames) = (window, 0);
        }
        frames = (frames + ws.session.take_control_frames()).min(0xFFFF);
        ws.control = started << 16 | frames;
        let flooding = frames > u32::from(MAX_CONTROL_FRAMES);
        let incomplete = ws.session.incomplete_bytes();
        let total = move_incomplete(&ctx.shared.incomplete_bytes, incomplete_before, incomplete);
        ws.session.note_message_start(ctx.now);
        let over_budget = incomplete > 0 && total > ctx.config.max_incomplete_bytes;
        if matches!(input, Input::Processed) && flooding {
            self.fail(CloseReason::Policy("too many control frames"), ctx);
            return;
        }
        if matches!(input, Input::Processed) && over_budget {
            self.fail(
                CloseReason::Policy("server busy: too much data in unfinished messages"),
                ctx,
            );
            return;
        }
        match input {
            Input::Processed => {}
            Input::Finished => self.start_drain(ctx),
            Input::Fail(reason) => self.fail(reason, ctx),
        }
    }

    /// Queues an HTTP answer and closes after it.
    fn respond(&mut self, response: Bytes, ctx: &Ctx) {
        self.out.push(response);
        self.start_drain(ctx);
    }

    /// Fails the WebSocket: a close frame with `reason` (unless one was sent
    /// already), then the connection drains and closes.
    fn fail(&mut self, reason: CloseReason, ctx: &Ctx) {
        if let Phase::WebSocket(ws) = &self.phase {
            log::debug!("closing websocket: {} {}", reason.code(), reason.reason());
            if !ws.session.is_closing() {
                if reason == CloseReason::SlowConsumer {
                    self.out.discard_unstarted();
                }
                let (reason, before) = ws.endpoint.close_reason(reason);
                if let Some(message) = before {
                    self.out.push(message);
                }
                self.out.push(close_frame(reason));
                ctx.metrics.closed(reason);
            }
        }
        self.start_drain(ctx);
    }

    fn start_drain(&mut self, ctx: &Ctx) {
        if matches!(self.phase, Phase::Draining(_)) {
            return;
        }
        let deadline = ctx.now + millis(LINGER);
        let drain = Drain { deadline, fin_sent: false, peer_done: false, discarded: 0, held: None };
        // The drain is built from the parts of the phase it replaces: a
        // `/ws` session or a stream subscription moves along, to be
        // released at teardown.
        let previous = std::mem::replace(&mut self.phase, Phase::Draining(drain));
        if let Phase::WebSocket(ws) = &previous {
            move_incomplete(&ctx.shared.incomplete_bytes, ws.session.incomplete_bytes(), 0);
        }
        let Phase::Draining(drain) = &mut self.phase else { return };
        match previous {
            Phase::WebSocket(WsPhase { endpoint: Endpoint::Client(session), .. }) => {
                drain.held = Some(Held::Client(session));
            }
            Phase::WebSocket(WsPhase { endpoint: Endpoint::Pusher(session), .. }) => {
                drain.held = Some(Held::Pusher(session));
            }
            Phase::Sse(sse) => drain.held = Some(Held::Stream(Box::new(sse.sub))),
            Phase::Poll(poll) => drain.held = Some(Held::Stream(Box::new(poll.sub))),
            _ => {}
        }
    }

    /// Releases what the connection holds outside itself (subscriptions,
    /// presence). The shard calls it when tearing the connection down.
    pub fn release(&mut self, ctx: &mut Ctx) {
        if let Phase::WebSocket(ws) = &self.phase {
            move_incomplete(&ctx.shared.incomplete_bytes, ws.session.incomplete_bytes(), 0);
        }
        match &mut self.phase {
            Phase::WebSocket(WsPhase { endpoint: Endpoint::Client(session), .. }) => {
                session.release(ctx);
            }
            Phase::Draining(Drain { held: Some(Held::Client(session)), .. }) => {
                session.release(ctx);
            }
            Phase::WebSocket(WsPhase { endpoint: Endpoint::Pusher(session), .. })
            | Phase::Draining(Drain { held: Some(Held::Pusher(session)), .. }) => {
                session.release(ctx);
                if let Some(count) = ctx.shared.app_connections.get(session.app_index()) {
                    count.fetch_sub(1, Ordering::Relaxed);
                }
            }
            Phase::Sse(sse) => sse.sub.release(ctx),
            Phase::Poll(poll) => poll.sub.release(ctx),
            Phase::Draining(Drain { held: Some(Held::Stream(sub)), .. }) => sub.release(ctx),
            _ => {}
        }
    }

    /// Queues a delivery for this connection, in its transport's form: the
    /// shared frame on a WebSocket, an event on an SSE stream, a message in
    /// a held poll's answer.
    pub fn deliver(&mut self, delivery: &Delivery, ctx: &mut Ctx) -> Pushed {
        match &mut self.phase {
            Phase::WebSocket(ws) => {
                let frame = match (&ws.endpoint, &delivery.event) {
                    (_, Event::Publication(publication)) => {
                        let window_bits = ws.session.compression();
                        match Compress::on(&mut ctx.deflater, &ctx.local.config, window_bits) {
                            Some(mut compress) => compress.publication(publication),
                            None => publication.websocket_frame(),
                        }
                    }
                    (Endpoint::Pusher(_), Event::Presence(change)) => {
                        let Some(frame) = change.pusher_frame() else { return Pushed::Dropped };
                        frame
                    }
                    (Endpoint::Pusher(_), Event::Restart(restart)) => restart.pusher_frame(),
                    (Endpoint::Pusher(_), Event::Relay(relayed)) => relayed.frame(),
                    (_, Event::Presence(change)) => change.ws_frame(),
                    (_, Event::Restart(restart)) => restart.ws_frame(),
                    (_, Event::Relay(_)) => return Pushed::Dropped,
                };
                self.push(frame.clone(), ctx)
            }
            Phase::Sse(sse) => {
                let Some(event) =
                    stream::sse_delivered(&mut sse.sub, &delivery.channel, &delivery.event)
                else {
                    return Pushed::Dropped;
                };
                if self.out.len() + event.len() > ctx.config.max_outbound_bytes {
                    log::debug!("closing an SSE stream: slow consumer");
                    ctx.metrics.slow_consumers.inc();
                    self.out.discard_unstarted();
                    self.start_drain(ctx);
                    return Pushed::SlowConsumer;
                }
                self.out.push(event);
                Pushed::Queued
            }
            Phase::Poll(poll) => {
                if poll.answer.delivered(&mut poll.sub, &delivery.channel, &delivery.event) {
                    Pushed::Queued
                } else {
                    Pushed::Dropped
                }
            }
            _ => Pushed::Dropped,
        }
    }

    /// An engine's answer to a request of this connection that it answered
    /// later: a server API request waiting for it, a `/ws` command (`id` is
    /// the command's), or a channel of an `/sse` or `/poll` request (`id`
    /// is its index).
    pub fn on_engine_answer(
        &mut self,
        id: Option<u64>,
        answer: EngineAnswer,
        ctx: &mut Ctx,
    ) -> Next {
        match &mut self.phase {
            Phase::Http(http) if http.is_waiting() => {
                if !http.answer_waiting(id, answer, ctx) {
                    return Next::Keep;
                }
                return self.send_ready_answers(ctx);
            }
            Phase::WebSocket(ws) => {
                let compress =
                    Compress::on(&mut ctx.deflater, &ctx.local.config, ws.session.compression());
                let mut out = Queue { out: &mut self.out, compress };
                match &mut ws.endpoint {
                    Endpoint::Client(session) => {
                        let sent = session.on_answer(id, answer, &mut out, &mut ctx.local);
                        ctx.local.metrics.messages_out.add(sent);
                    }
                    Endpoint::Pusher(session) => {
                        session.on_answer(answer, &mut out, &mut ctx.local)
                    }
                    Endpoint::Echo => {}
                }
            }
            Phase::Sse(_) | Phase::Poll(_) => {
                if let EngineAnswer::Subscribed(channel, result) = answer {
                    let index = id.and_then(|id| usize::try_from(id).ok()).unwrap_or(usize::MAX);
                    self.on_stream_subscribed(index, &channel, result, ctx);
                }
            }
            _ => {
                if let EngineAnswer::Subscribed(channel, _) = answer {
                    ctx.pending.remove(&(self.key, channel.shared().clone()));
                }
            }
        }
        Next::Keep
    }

    /// The engine's later answer for channel `index` of a stream.
    fn on_stream_subscribed(
        &mut self,
        index: usize,
        channel: &ChannelName,
        result: Result<crate::broker::Position, crate::types::BrokerError>,
        ctx: &mut Ctx,
    ) {
        let sub = match &mut self.phase {
            Phase::Sse(sse) => &mut sse.sub,
            Phase::Poll(poll) => {
                poll.awaiting = poll.awaiting.saturating_sub(1);
                &mut poll.sub
            }
            _ => return,
        };
        match sub.on_subscribed(index, channel, result, &mut ctx.local) {
            Ok(opened) => {
                // A stream's channels are announced as each one is known.
                self.stream_opened(opened, ctx);
                self.answer_poll_if_due(ctx);
            }
            Err(error) => {
                log::debug!("stream subscription failed: {}", error.message());
                if matches!(self.phase, Phase::Poll(_)) {
                    self.release(ctx);
                    self.set_transport(ConnKind::Http, ctx);
                    self.phase = Phase::Http(HttpPhase::new(ctx.now));
                    self.respond(api::refusal(error).to_response(), ctx);
                } else {
                    // The browser reconnects (and recovers) by itself.
                    self.start_drain(ctx);
                }
            }
        }
    }

    /// Work due before the shard flushes this connection: a held poll that
    /// got messages this turn is answered with all of them. Returns whether
    /// that happened: the connection reads requests again, and one may be
    /// waiting already (drive it rather than only flush it).
    pub fn settle(&mut self, ctx: &mut Ctx) -> bool {
        if matches!(&self.phase, Phase::Poll(poll) if !poll.answer.messages.is_empty()) {
            self.finish_poll(ctx);
            return true;
        }
        false
    }

    /// Queues a frame the server originates (a publication, a presence
    /// event, a heartbeat) on an open WebSocket. If the queue would pass
    /// `max_outbound_bytes`, the peer is a slow consumer: what it has not
    /// started to receive is dropped, it gets close 4008, and nothing more is
    /// queued for it. The caller flushes (at the end of its turn).
    pub fn push(&mut self, frame: Bytes, ctx: &Ctx) -> Pushed {
        match &self.phase {
            Phase::WebSocket(ws) if ws.close_deadline.is_none() => {}
            _ => return Pushed::Dropped,
        }
        if self.out.len() + frame.len() > ctx.config.max_outbound_bytes {
            self.fail(CloseReason::SlowConsumer, ctx);
            return Pushed::SlowConsumer;
        }
        self.out.push(frame);
        Pushed::Queued
    }

    /// Starts a clean close: our close frame now, the peer's reply awaited
    /// for up to `CLOSE_HANDSHAKE_TIMEOUT`.
    pub fn begin_close(&mut self, reason: CloseReason, ctx: &mut Ctx) {
        if let Phase::WebSocket(ws) = &mut self.phase
            && ws.close_deadline.is_none()
        {
            let (reason, before) = ws.endpoint.close_reason(reason);
            if let Some(message) = before {
                self.out.push(message);
            }
            ws.session.begin_close(reason, &mut self.out, &mut ctx.codecs);
            ws.close_deadline = NonZeroU64::new(ctx.now + millis(CLOSE_HANDSHAKE_TIMEOUT));
            ctx.metrics.closed(reason);
        }
    }

    /// Pusher's `terminate_connections`: an open Pusher connection signed
    /// in as the user gets `pusher:error` 4009 and is closed with 4009 (its
    /// client does not reconnect). Returns whether it was.
    pub fn terminate(&mut self, ctx: &mut Ctx) -> bool {
        let open_pusher = matches!(&self.phase, Phase::WebSocket(ws)
            if ws.close_deadline.is_none() && matches!(ws.endpoint, Endpoint::Pusher(_)));
        if open_pusher {
            self.begin_close(pusher::Refusal::Terminated.close_reason(), ctx);
        }
        open_pusher
    }

    /// `/api/disconnect`: an open `/ws` connection is closed with 4000.
    /// Returns whether it was.
    pub fn disconnect(&mut self, ctx: &mut Ctx) -> bool {
        let open_client = matches!(&self.phase, Phase::WebSocket(ws)
            if ws.close_deadline.is_none() && matches!(ws.endpoint, Endpoint::Client(_)));
        if open_client {
            self.begin_close(CloseReason::DisconnectedByApi, ctx);
        }
        open_client
    }

    /// `/api/unsubscribe`: the connection leaves `channel` and is told so
    /// with an `unsubscribed` push. Returns whether it was subscribed.
    pub fn unsubscribe_by_server(&mut self, channel: &ChannelName, ctx: &mut Ctx) -> bool {
        let Phase::WebSocket(ws) = &mut self.phase else { return false };
        let Endpoint::Client(session) = &mut ws.endpoint else { return false };
        if ws.close_deadline.is_some() || !session.unsubscribe(channel, ctx) {
            return false;
        }
        let push = crate::protocol::unsubscribed(None, channel.as_str());
        let frame = crate::wire::frame::encode_frame(Opcode::Text, &push);
        if self.push(frame, ctx) == Pushed::Queued {
            ctx.metrics.messages_out.inc();
        }
        true
    }

    /// The server is shutting down: WebSockets get 1001 and a close
    /// handshake; connections that have not upgraded are closed.
    pub fn shutdown(&mut self, ctx: &mut Ctx) -> Next {
        match &self.phase {
            Phase::Http(_) | Phase::Sse(_) | Phase::Poll(_) => Next::Close,
            Phase::WebSocket(_) => {
                self.begin_close(CloseReason::ShuttingDown, ctx);
                self.drive(ctx)
            }
            Phase::Draining(_) => Next::Keep,
        }
    }

    /// Writes what is queued; a draining connection half-closes once its
    /// queue is empty.
    pub fn flush(&mut self, ctx: &Ctx) -> Next {
        let mut flushed = self.write_out(ctx);
        loop {
            match flushed {
                Flush::Drained => {}
                Flush::WouldBlock => self.writable = false,
                Flush::Closed => return Next::Close,
            }
            let tls_pending = self.tls.as_ref().is_some_and(|tls| tls.has_pending());
            let Phase::Draining(drain) = &mut self.phase else { return Next::Keep };
            if !self.out.is_empty() || tls_pending {
                return Next::Keep;
            }
            if drain.peer_done {
                return Next::Close;
            }
            if drain.fin_sent {
                return Next::Keep;
            }
            // TLS says goodbye with close_notify before the FIN.
            if let Some(tls) = &mut self.tls
                && !tls.is_closing()
                && tls.queue_close_notify()
            {
                flushed = self.write_out(ctx);
                continue;
            }
            drain.fin_sent = true;
            if self.socket.shutdown_write().is_err() {
                return Next::Close;
            }
            return Next::Keep;
        }
    }

    /// Writes what is queued, through TLS where there is TLS, as far as the
    /// socket takes it.
    fn write_out(&mut self, ctx: &Ctx) -> Flush {
        if !self.writable {
            return Flush::Drained;
        }
        match &mut self.tls {
            None if self.out.is_empty() => Flush::Drained,
            None => {
                let before = self.out.len();
                let flushed = self.out.write_to(&mut self.socket);
                ctx.metrics.bytes_out.add((before - self.out.len()) as u64);
                flushed
            }
            Some(tls) if self.out.is_empty() && !tls.has_pending() => Flush::Drained,
            Some(tls) => {
                let (flushed, written) = tls.flush(&mut self.out, &mut self.socket);
                ctx.metrics.bytes_out.add(written as u64);
                flushed
            }
        }
    }

    /// The next moment this connection has something to do on its own.
    pub fn deadline(&self, ctx: &Ctx) -> Millis {
        match &self.phase {
            Phase::Http(http) => http.deadline,
            Phase::WebSocket(ws) => ws.close_deadline.map(NonZeroU64::get).unwrap_or_else(|| {
                let (quiet, answer) = ws.endpoint.liveness(ctx);
                let mut heartbeat = ws.last_rx + quiet + if ws.pinged { answer } else { 0 };
                if let Some(due) = message_due(&ws.session, ctx) {
                    heartbeat = heartbeat.min(due);
                }
                match &ws.endpoint {
                    Endpoint::Client(session) => {
                        session.token_deadline().map_or(heartbeat, |expiry| expiry.min(heartbeat))
                    }
                    Endpoint::Echo | Endpoint::Pusher(_) => heartbeat,
                }
            }),
            Phase::Sse(sse) => sse.next_ping,
            Phase::Poll(poll) => poll.deadline,
            Phase::Draining(drain) => drain.deadline,
        }
    }

    /// A timer fired: handshake deadline, heartbeat, or the end of a close.
    pub fn on_timer(&mut self, ctx: &mut Ctx) -> Next {
        let now = ctx.now;
        let interval = ctx.ping_interval();
        let (quiet, answer) = match &self.phase {
            Phase::WebSocket(ws) => ws.endpoint.liveness(ctx),
            _ => (interval, interval),
        };
        match &mut self.phase {
            Phase::Http(http) if now >= http.deadline && http.is_waiting() => {
                self.api_answer_timed_out(ctx);
            }
            Phase::Http(http) if now >= http.deadline => {
                if http.mid_request() {
                    log::debug!("request not complete within the handshake timeout");
                    ctx.metrics.refused(Refusal::HandshakeTimeout);
                }
                return Next::Close;
            }
            Phase::Http(_) => {}
            Phase::WebSocket(ws) => match ws.close_deadline.map(NonZeroU64::get) {
                Some(deadline) if now >= deadline => return Next::Close,
                Some(_) => {}
                None if matches!(&ws.endpoint, Endpoint::Client(session)
                    if session.token_deadline().is_some_and(|expiry| now >= expiry)) =>
                {
                    self.begin_close(CloseReason::Policy("token expired"), ctx);
                }
                None if message_due(&ws.session, ctx).is_some_and(|due| now >= due) => {
                    self.fail(CloseReason::Policy("message not completed in time"), ctx);
                }
                None if ws.pinged && now >= ws.last_rx + quiet + answer => {
                    self.fail(CloseReason::Policy("no traffic for two ping intervals"), ctx);
                }
                None if now >= ws.last_rx + quiet && !ws.pinged => {
                    ws.pinged = true;
                    let pusher = matches!(ws.endpoint, Endpoint::Pusher(_));
                    self.push(Bytes::from_static(PING_FRAME), ctx);
                    if pusher {
                        // pusher-js answers this; browsers answer the frame.
                        let ping = Bytes::from_static(crate::wire::pusher::PING);
                        self.push(crate::wire::frame::encode_frame(Opcode::Text, &ping), ctx);
                    }
                }
                None => {}
            },
            Phase::Sse(sse) if now >= sse.next_ping => {
                sse.next_ping = now + interval;
                if self.out.len() < ctx.config.max_outbound_bytes {
                    self.out.push(Bytes::from_static(SSE_PING));
                }
            }
            Phase::Sse(_) => {}
            Phase::Poll(poll) if now >= poll.deadline => {
                self.finish_poll(ctx);
                return self.drive(ctx);
            }
            Phase::Poll(_) => {}
            Phase::Draining(drain) if now >= drain.deadline => return Next::Close,
            Phase::Draining(_) => {}
        }
        self.flush(ctx)
    }
}

/// When the frame or message a session is receiving must be whole.
fn message_due(session: &WsSession, ctx: &Ctx) -> Option<Millis> {
    Some(session.message_started()? + millis(ctx.config.message_timeout))
}

/// The control-frame window a moment falls in: shard clock seconds,
/// wrapping at 16 bits.
fn control_window(now: Millis) -> u32 {
    u32::try_from((now / 1000) & 0xFFFF).unwrap_or(0)
}

/// Moves a connection's share of the unfinished-message bytes from
/// `before` to `after`; returns the new total over all connections.
fn move_incomplete(total: &AtomicUsize, before: usize, after: usize) -> usize {
    if after >= before {
        total.fetch_add(after - before, Ordering::Relaxed) + (after - before)
    } else {
        total.fetch_sub(before - after, Ordering::Relaxed).saturating_sub(before - after)
    }
}

#[cfg(test)]
mod tests;
