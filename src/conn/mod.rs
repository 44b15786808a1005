//! One connection: its socket, outbound queue and phase (request head, WebSocket, draining), driven by readiness events and timers.

pub mod http;
pub mod io;
pub mod out_queue;
pub mod scanner;
pub mod upgrade;
pub mod websocket;

use crate::config::Config;
use crate::error::{CloseReason, HttpError};
use crate::protocol::{self, Command};
use bytes::Bytes;
use io::{IoOutcome, Transport};
use out_queue::{Flush, OutQueue};
use std::sync::Arc;
use std::time::Duration;
use tungstenite::Message;
use websocket::{Handler, Input, Opcode, WsSession};

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
/// How long herald waits for the peer's close frame after sending its own.
pub const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Milliseconds on a shard's monotonic clock.
pub type Millis = u64;

/// Converts a duration to clock milliseconds (at least 1).
pub fn millis(duration: Duration) -> Millis {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX).max(1)
}

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

/// Shard-wide state that connection callbacks use.
#[derive(Debug)]
pub struct Ctx {
    /// The server's configuration.
    pub config: Arc<Config>,
    /// The read buffer every socket read on this shard goes through.
    pub scratch: Box<[u8]>,
    /// Now, on the shard's clock.
    pub now: Millis,
    /// This node's id, the first part of every client id.
    pub node: Arc<str>,
    /// This shard's index.
    pub shard: usize,
    next_client: u64,
}

impl Ctx {
    /// Context for shard `shard` of node `node`.
    pub fn new(config: Arc<Config>, node: Arc<str>, shard: usize) -> Self {
        Ctx {
            config,
            scratch: vec![0; SCRATCH_BYTES].into_boxed_slice(),
            now: 0,
            node,
            shard,
            next_client: 0,
        }
    }

    /// A client id unique on this node and across restarts (the node id is
    /// random per process).
    fn next_client_id(&mut self) -> String {
        self.next_client += 1;
        format!("{}-{}-{}", self.node, self.shard, self.next_client)
    }

    fn ping_interval(&self) -> Millis {
        millis(self.config.ping_interval)
    }
}

/// The endpoint a WebSocket was opened on.
#[derive(Debug)]
enum Endpoint {
    /// `/echo`: every message comes back.
    Echo,
    /// `/ws`: the JSON client protocol.
    Client,
}

impl Handler for Endpoint {
    fn on_message(&mut self, message: Message, out: &mut OutQueue) -> Result<(), CloseReason> {
        match (self, message) {
            (Endpoint::Echo, Message::Text(text)) => {
                websocket::queue_frame(out, Opcode::Text, Bytes::from(text));
            }
            (Endpoint::Echo, Message::Binary(data)) => {
                websocket::queue_frame(out, Opcode::Binary, data);
            }
            (Endpoint::Client, Message::Binary(_)) => return Err(CloseReason::UnsupportedData),
            (Endpoint::Client, Message::Text(text)) => {
                let reply = match Command::parse(&text) {
                    Ok(Command::Ping { id }) => protocol::pong(id),
                    Err(error) => protocol::error(&error),
                };
                out.push(websocket::encode_frame(Opcode::Text, &reply));
            }
            _ => {}
        }
        Ok(())
    }
}

/// Reading a request head.
#[derive(Debug)]
struct HttpPhase {
    /// Bytes of a head that arrived in pieces; empty while a head arrives
    /// whole in one read (then it is parsed straight from the scratch buffer).
    head: Vec<u8>,
    /// Accept time plus `handshake_timeout`.
    deadline: Millis,
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
    close_deadline: Option<Millis>,
}

/// Sending what is queued, then half-closing and discarding input until the
/// peer closes or the linger time ends.
#[derive(Debug)]
struct Drain {
    deadline: Millis,
    fin_sent: bool,
    peer_done: bool,
    discarded: usize,
}

#[derive(Debug)]
enum Phase {
    Http(HttpPhase),
    WebSocket(WsPhase),
    Draining(Drain),
}

/// What a request head asks for.
enum Route {
    Upgrade { endpoint: Endpoint, accept: String },
    Health,
}

/// One connection on a shard.
#[derive(Debug)]
pub struct Conn<S> {
    socket: S,
    out: OutQueue,
    phase: Phase,
    /// The socket may have input: set by readiness, cleared on WouldBlock.
    readable: bool,
    /// The socket may take output: set by readiness, cleared on WouldBlock.
    writable: bool,
    /// The read budget ran out with input left: drive again next turn.
    more_input: bool,
    /// The generation half of this connection's token.
    pub generation: u32,
    /// The deadline of the timer entry pending for this connection, if any.
    pub armed: Option<Millis>,
    /// Whether it counts toward `max_connections` (a connection refused for
    /// being over it does not).
    pub counted: bool,
}

impl<S: Transport> Conn<S> {
    /// A just-accepted connection, waiting for its request head.
    pub fn new(socket: S, ctx: &Ctx) -> Self {
        let deadline = ctx.now + millis(ctx.config.handshake_timeout);
        Conn {
            socket,
            out: OutQueue::default(),
            phase: Phase::Http(HttpPhase { head: Vec::new(), deadline }),
            readable: false,
            writable: false,
            more_input: false,
            generation: 0,
            armed: None,
            counted: true,
        }
    }

    /// The socket, for registering it with the poller.
    pub fn socket_mut(&mut self) -> &mut S {
        &mut self.socket
    }

    /// A connection refused at accept (e.g. over `max_connections`): it gets
    /// the error answer and is closed after it.
    pub fn refused(socket: S, error: &HttpError, ctx: &Ctx) -> Self {
        let mut conn = Conn::new(socket, ctx);
        conn.respond(error.to_response(), ctx);
        conn
    }

    /// Whether the connection is an open WebSocket (not closing).
    pub fn is_open_websocket(&self) -> bool {
        matches!(&self.phase, Phase::WebSocket(ws) if ws.close_deadline.is_none())
    }

    /// Bytes queued for sending.
    pub fn queued_bytes(&self) -> usize {
        self.out.len()
    }

    /// Whether the last drive stopped at the read budget with input left.
    pub fn has_more_input(&self) -> bool {
        self.more_input
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
        let mut reads = 0;
        loop {
            while self.readable && self.accepts_input(ctx) && reads < READ_BUDGET {
                reads += 1;
                if self.read_once(scratch, ctx) == Next::Close {
                    return Next::Close;
                }
            }
            if self.flush() == Next::Close {
                return Next::Close;
            }
            // Writing may have lifted backpressure: read on if the budget allows.
            if !(self.readable && self.accepts_input(ctx) && reads < READ_BUDGET) {
                break;
            }
        }
        self.more_input = self.readable && self.accepts_input(ctx);
        Next::Keep
    }

    /// Whether the connection takes input now. A WebSocket whose replies
    /// pile up (the peer sends but does not read) is not read from until
    /// its queue drains below `max_outbound_bytes`.
    fn accepts_input(&self, ctx: &Ctx) -> bool {
        match &self.phase {
            Phase::Http(_) => true,
            Phase::WebSocket(_) => self.out.len() < ctx.config.max_outbound_bytes,
            // Input is discarded only once the answer is out and the write
            // side is shut: until then it waits in the kernel.
            Phase::Draining(drain) => drain.fin_sent && !drain.peer_done,
        }
    }

    fn read_once(&mut self, scratch: &mut [u8], ctx: &mut Ctx) -> Next {
        let limit = match &self.phase {
            // Never read past the head limit: a huge head is refused after
            // MAX_HEAD_BYTES, not after it has all been read.
            Phase::Http(http) => http::MAX_HEAD_BYTES.saturating_sub(http.head.len()),
            _ => scratch.len(),
        };
        if limit == 0 {
            self.respond(HttpError::HeadTooLarge.to_response(), ctx);
            return Next::Keep;
        }
        let buf = match scratch.get_mut(..limit) {
            Some(buf) => buf,
            None => &mut *scratch,
        };
        let n = match io::read(&mut self.socket, buf) {
            IoOutcome::Progress(n) => n,
            IoOutcome::WouldBlock => {
                self.readable = false;
                return Next::Keep;
            }
            IoOutcome::Closed | IoOutcome::Error(_) => return self.on_peer_gone(),
        };
        let input = buf.get(..n).unwrap_or_default();
        match &mut self.phase {
            Phase::Http(_) => self.on_head_bytes(input, ctx),
            Phase::WebSocket(ws) => {
                ws.last_rx = ctx.now;
                ws.pinged = false;
                self.on_ws_input(input, ctx);
                Next::Keep
            }
            Phase::Draining(drain) => {
                drain.discarded += n;
                if drain.discarded > LINGER_MAX_BYTES { Next::Close } else { Next::Keep }
            }
        }
    }

    /// The peer closed or reset its side.
    fn on_peer_gone(&mut self) -> Next {
        self.readable = false;
        match &mut self.phase {
            // Queued output (an error answer) may still reach a peer that
            // only half-closed.
            Phase::Draining(drain) if !self.out.is_empty() => {
                drain.peer_done = true;
                Next::Keep
            }
            _ => Next::Close,
        }
    }

    fn on_head_bytes(&mut self, input: &[u8], ctx: &mut Ctx) -> Next {
        let Phase::Http(http) = &mut self.phase else { return Next::Keep };
        if http.head.is_empty() {
            // The usual case: the whole head in one read, parsed in place.
            if let Some(end) = http::find_head_end(input, 0) {
                let (head, rest) = input.split_at(end);
                return self.on_head(head, rest, ctx);
            }
            http.head.extend_from_slice(input);
            return Next::Keep;
        }
        let from = http.head.len();
        http.head.extend_from_slice(input);
        if let Some(end) = http::find_head_end(&http.head, from) {
            let buffered = std::mem::take(&mut http.head);
            let (head, rest) = buffered.split_at(end);
            return self.on_head(head, rest, ctx);
        }
        Next::Keep
    }

    /// A complete head: answer it or upgrade. `rest` is what followed the head
    /// in the same reads (a client may send its first frame right away).
    fn on_head(&mut self, head: &[u8], rest: &[u8], ctx: &mut Ctx) -> Next {
        let route = http::parse(head, |request| route(request, ctx)).and_then(|route| route);
        match route {
            Err(error) => {
                log::debug!("refused request: {error}");
                self.respond(error.to_response(), ctx);
            }
            Ok(Route::Health) => {
                self.respond(Bytes::from_static(HEALTH_RESPONSE), ctx);
            }
            Ok(Route::Upgrade { endpoint, accept }) => {
                self.out.push(Bytes::from(upgrade::switching_protocols(&accept)));
                let max_message = match endpoint {
                    Endpoint::Echo => ctx.config.max_echo_message_bytes,
                    Endpoint::Client => ctx.config.max_message_bytes,
                };
                if let Endpoint::Client = endpoint {
                    let client = ctx.next_client_id();
                    let welcome = protocol::welcome(&client, "", ctx.config.ping_interval);
                    self.out.push(websocket::encode_frame(Opcode::Text, &welcome));
                }
                self.phase = Phase::WebSocket(WsPhase {
                    session: WsSession::new(max_message),
                    endpoint,
                    last_rx: ctx.now,
                    pinged: false,
                    close_deadline: None,
                });
                if !rest.is_empty() {
                    self.on_ws_input(rest, ctx);
                }
            }
        }
        Next::Keep
    }

    fn on_ws_input(&mut self, input: &[u8], ctx: &mut Ctx) {
        let Phase::WebSocket(ws) = &mut self.phase else { return };
        match ws.session.on_input(input, &mut self.out, &mut ws.endpoint) {
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
                self.out.push(websocket::close_frame(reason));
            }
        }
        self.start_drain(ctx);
    }

    fn start_drain(&mut self, ctx: &Ctx) {
        if !matches!(self.phase, Phase::Draining(_)) {
            let deadline = ctx.now + millis(LINGER);
            self.phase = Phase::Draining(Drain {
                deadline,
                fin_sent: false,
                peer_done: false,
                discarded: 0,
            });
        }
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
    pub fn begin_close(&mut self, reason: CloseReason, ctx: &Ctx) {
        if let Phase::WebSocket(ws) = &mut self.phase
            && ws.close_deadline.is_none()
        {
            ws.session.begin_close(reason, &mut self.out);
            ws.close_deadline = Some(ctx.now + millis(CLOSE_HANDSHAKE_TIMEOUT));
        }
    }

    /// The server is shutting down: WebSockets get 1001 and a close
    /// handshake; connections that have not upgraded are closed.
    pub fn shutdown(&mut self, ctx: &mut Ctx) -> Next {
        match &self.phase {
            Phase::Http(_) => Next::Close,
            Phase::WebSocket(_) => {
                self.begin_close(CloseReason::ShuttingDown, ctx);
                self.drive(ctx)
            }
            Phase::Draining(_) => Next::Keep,
        }
    }

    /// Writes what is queued; a draining connection half-closes once its
    /// queue is empty.
    pub fn flush(&mut self) -> Next {
        if !self.out.is_empty() && self.writable {
            match self.out.write_to(&mut self.socket) {
                Flush::Drained => {}
                Flush::WouldBlock => self.writable = false,
                Flush::Closed => return Next::Close,
            }
        }
        if let Phase::Draining(drain) = &mut self.phase
            && self.out.is_empty()
        {
            if drain.peer_done {
                return Next::Close;
            }
            if !drain.fin_sent {
                drain.fin_sent = true;
                if self.socket.shutdown_write().is_err() {
                    return Next::Close;
                }
            }
        }
        Next::Keep
    }

    /// The next moment this connection has something to do on its own.
    pub fn deadline(&self, ctx: &Ctx) -> Millis {
        match &self.phase {
            Phase::Http(http) => http.deadline,
            Phase::WebSocket(ws) => ws.close_deadline.unwrap_or_else(|| {
                let intervals = if ws.pinged { 2 } else { 1 };
                ws.last_rx + intervals * ctx.ping_interval()
            }),
            Phase::Draining(drain) => drain.deadline,
        }
    }

    /// A timer fired: handshake deadline, heartbeat, or the end of a close.
    pub fn on_timer(&mut self, ctx: &mut Ctx) -> Next {
        let now = ctx.now;
        let interval = ctx.ping_interval();
        match &mut self.phase {
            Phase::Http(http) if now >= http.deadline => {
                log::debug!("request head not complete within the handshake timeout");
                return Next::Close;
            }
            Phase::Http(_) => {}
            Phase::WebSocket(ws) => match ws.close_deadline {
                Some(deadline) if now >= deadline => return Next::Close,
                Some(_) => {}
                None if now >= ws.last_rx + 2 * interval => {
                    self.fail(CloseReason::Policy("no traffic for two ping intervals"), ctx);
                }
                None if now >= ws.last_rx + interval && !ws.pinged => {
                    ws.pinged = true;
                    self.push(Bytes::from_static(PING_FRAME), ctx);
                }
                None => {}
            },
            Phase::Draining(drain) if now >= drain.deadline => return Next::Close,
            Phase::Draining(_) => {}
        }
        self.flush()
    }
}

/// An empty ping frame: the heartbeat.
const PING_FRAME: &[u8] = b"\x89\x00";

const HEALTH_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
Content-Length: 15\r\nConnection: close\r\n\r\n{\"status\":\"ok\"}";

fn route(request: &http::Request<'_>, ctx: &Ctx) -> Result<Route, HttpError> {
    let config = &ctx.config;
    let endpoint = match request.path() {
        "/ws" => Endpoint::Client,
        "/echo" if config.echo => Endpoint::Echo,
        "/health" if request.method == "GET" => return Ok(Route::Health),
        "/health" => return Err(HttpError::MethodNotAllowed { allow: "GET" }),
        _ => return Err(HttpError::NotFound),
    };
    if request.method != "GET" {
        return Err(HttpError::MethodNotAllowed { allow: "GET" });
    }
    let accept = upgrade::validate(request, &config.allowed_origins)?;
    if let Endpoint::Client = endpoint {
        authorize(request, config)?;
    }
    Ok(Route::Upgrade { endpoint, accept })
}

/// Connection tokens are verified by the channels layer; until then only
/// anonymous connections exist, and only where `allow_anonymous` is set.
fn authorize(request: &http::Request<'_>, config: &Config) -> Result<(), HttpError> {
    let has_token = request
        .query()
        .is_some_and(|query| query.split('&').any(|pair| pair.split('=').next() == Some("token")))
        || request.unique_header("authorization").ok().flatten().is_some();
    if has_token {
        return Err(HttpError::Unauthorized(
            "connection tokens are not accepted by this server yet",
        ));
    }
    if !config.allow_anonymous {
        return Err(HttpError::Unauthorized(
            "a token is required: pass ?token=JWT or Authorization: Bearer JWT",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
