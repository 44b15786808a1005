//! The HTTP phase of a connection: request heads and bodies, keep-alive and pipelining, routing to an answer, an upgrade, or the server API.

use super::io::Transport as SocketTransport;
use super::websocket::WsSession;
use super::{Conn, Ctx, Endpoint, Next, Phase, PollPhase, SsePhase, WsPhase};
use crate::api::{self, Reply};
use crate::auth::{self, Credentials, Denied, Identity};
use crate::channel::ChannelName;
use crate::clock::{Millis, millis};
use crate::config::Config;
use crate::error::{HttpError, http_head, http_response, json_response};
use crate::metrics::{Refusal, Transport};
use crate::protocol;
use crate::pusher::{self, PusherSession};
use crate::session::ClientSession;
use crate::stream::{
    self, DEFAULT_POLL_TIMEOUT_SECS, MAX_POLL_TIMEOUT_SECS, MAX_STREAM_CHANNELS, Opened,
    PollAnswer, StreamSub,
};
use crate::types::{ConnRef, Since};
use crate::wire::deflate::Agreed;
use crate::wire::frame::{Opcode, encode_frame};
use crate::wire::http::{self, MAX_HEAD_BYTES, Request};
use crate::wire::router::{self, ApiEndpoint, File, PusherEndpoint, Route};
use crate::wire::sse::{self as sse_wire, parse_cursor};
use crate::wire::upgrade;
use bytes::Bytes;
use std::time::Duration;

/// How long a keep-alive connection may wait for its next request.
pub const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(60);

/// Reading requests: a head, then its body if it has one.
#[derive(Debug)]
pub(super) struct HttpPhase {
    /// A head that arrived in pieces, or the part of a body read so far.
    /// Empty while a head arrives whole in one read (it is then parsed
    /// straight from the scratch buffer).
    buf: Vec<u8>,
    /// When the request must be complete.
    pub(super) deadline: Millis,
    /// The head is parsed; its body is being read.
    body: Option<BodyWait>,
    /// A keep-alive connection between requests: the deadline shortens to
    /// `handshake_timeout` once the next request starts.
    idle: bool,
    /// Requests whose answers come later (from the engine or other
    /// shards), oldest first, and the answers of requests pipelined behind
    /// them that were ready at once: answers go out in request order. Only
    /// complete server API requests are taken up behind a waiting one (at
    /// most [`MAX_CALLS_IN_FLIGHT`]); other input waits in `buf`, unparsed.
    waiting: std::collections::VecDeque<Waiting>,
    /// The tag of the next server API request, for matching its answer.
    next_call: u64,
    /// No request has been answered on this connection yet.
    first: bool,
    /// `buf` holds pipelined requests read but not parsed yet, because the
    /// answers queued before them reached the read pause: they are taken up
    /// once the client has read enough ([`Conn::resume_held_requests`]).
    held: bool,
}

/// A request whose answer is not sent yet: it comes later, or it is ready
/// and waits for the answers before it.
#[derive(Debug)]
struct Waiting {
    call: WaitingCall,
    keep_alive: bool,
    /// When a later answer is given up on (503).
    deadline: Millis,
}

/// What a waiting request waits for.
#[derive(Debug)]
enum WaitingCall {
    /// The engine's answer to server API request `id`.
    Api(ApiEndpoint, u64),
    /// The engine's answers to a Pusher HTTP API request (never pipelined
    /// with others: its answers are tagged by its own calls).
    Pusher(Box<pusher::api::Pending>),
    /// An answer ready now, behind the answers that come later.
    Ready(Bytes),
}

/// Server API requests on one connection that may wait for the engine at
/// once: a backend that pipelines publishes has them carried out together
/// (one Redis round trip or disk commit does not hold up the next), and
/// their answers still go out in order.
const MAX_CALLS_IN_FLIGHT: usize = 64;

/// Which HTTP API a request with a body is for.
#[derive(Debug)]
enum ApiTarget {
    /// herald's server API.
    Herald(ApiEndpoint),
    /// The Pusher HTTP API: its path (prefix stripped, as signed).
    Pusher(PusherEndpoint, Box<str>),
}

impl HttpPhase {
    /// Waiting for a first request until `deadline`.
    pub(super) fn new(deadline: Millis) -> Self {
        HttpPhase {
            buf: Vec::new(),
            deadline,
            body: None,
            idle: false,
            waiting: std::collections::VecDeque::new(),
            next_call: 0,
            first: true,
            held: false,
        }
    }

    /// Whether the connection has yet to complete its first request (a
    /// pending handshake, as far as the slowloris cap is concerned).
    pub(super) fn is_first(&self) -> bool {
        self.first && self.waiting.is_empty()
    }

    /// How much the next read may take: never past the head limit, never
    /// past the body being read.
    pub(super) fn read_limit(&self) -> usize {
        match &self.body {
            Some(wait) => wait.length.saturating_sub(self.buf.len()),
            None => MAX_HEAD_BYTES.saturating_sub(self.buf.len()),
        }
    }

    /// Whether input is read now: not while requests are held back for
    /// their answers to drain, nor while an answer is awaited and a head's
    /// worth of what follows is already buffered.
    pub(super) fn accepts_input(&self) -> bool {
        !self.held && (self.waiting.is_empty() || self.buf.len() < MAX_HEAD_BYTES)
    }

    /// Whether pipelined requests wait for the answers before them to drain.
    pub(super) fn is_holding(&self) -> bool {
        self.held
    }

    /// Whether the connection waits for a server API answer.
    pub(super) fn is_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// An engine answer for the request it belongs to: made its HTTP
    /// answer (kept in order) once complete. Returns whether the oldest
    /// request is now answered, so that answers can go out.
    pub(super) fn answer_waiting(
        &mut self,
        id: Option<u64>,
        answer: crate::broker::EngineAnswer,
        ctx: &Ctx,
    ) -> bool {
        let Some(at) = self.waiting.iter().position(|waiting| match &waiting.call {
            WaitingCall::Api(_, call) => id == Some(*call),
            WaitingCall::Pusher(_) => true,
            WaitingCall::Ready(_) => false,
        }) else {
            return false;
        };
        let Some(waiting) = self.waiting.get_mut(at) else { return false };
        let keep_alive = waiting.keep_alive;
        let (status, body) = match &mut waiting.call {
            WaitingCall::Api(endpoint, _) => {
                let (status, body) = api::answer(*endpoint, answer);
                ctx.metrics.api_request(Some(*endpoint), status);
                (status, body)
            }
            WaitingCall::Pusher(pending) => {
                let Some((status, body)) = pending.on_answer(id, answer, &ctx.shared) else {
                    return false;
                };
                ctx.metrics.pusher_api_request(status);
                (status, body)
            }
            WaitingCall::Ready(_) => return false,
        };
        waiting.call = WaitingCall::Ready(json_response(status, "", &body, keep_alive));
        at == 0
    }

    /// Whether a request is under way (not an idle keep-alive connection,
    /// not one waiting for its answer): a deadline then refuses it.
    pub(super) fn mid_request(&self) -> bool {
        !self.idle && self.waiting.is_empty()
    }

    /// Whether the complete request at the start of `data` may be taken up
    /// behind those waiting: room in flight, answers ready behind them
    /// under `room` bytes (what may still queue before reading pauses),
    /// nothing but server API calls waiting (a Pusher call's answers are
    /// tagged by its own calls), a complete head for a server API endpoint,
    /// and its body all there.
    fn may_pipeline(&self, data: &[u8], room: usize, config: &Config) -> bool {
        let ready: usize = self
            .waiting
            .iter()
            .map(|w| match &w.call {
                WaitingCall::Ready(answer) => answer.len(),
                _ => 0,
            })
            .sum();
        if self.waiting.len() >= MAX_CALLS_IN_FLIGHT
            || ready >= room
            || self.waiting.iter().any(|w| matches!(w.call, WaitingCall::Pusher(_)))
            || self.waiting.back().is_some_and(|w| !w.keep_alive)
        {
            return false;
        }
        let Some((head, body)) =
            http::find_head_end(data, 0).and_then(|end| Some((data.get(..end)?, data.get(end..)?)))
        else {
            return false;
        };
        let complete = http::parse(head, |request| {
            let path = pusher_path_of(request.path(), &config.pusher_path_prefix);
            matches!(router::route(request.method, path), Ok(Route::Api(_)))
                && body_length(request).is_ok_and(|length| body.len() >= length)
        });
        complete.unwrap_or(false)
    }
}

/// A body still to come.
#[derive(Debug)]
struct BodyWait {
    endpoint: ApiTarget,
    query: Option<Box<str>>,
    length: usize,
    keep_alive: bool,
}

/// Which WebSocket endpoint an upgrade is for.
enum Upgrade {
    Echo,
    Client(Credentials),
    /// A Pusher client of an app (by index), or why it is refused once
    /// the socket is open (Pusher clients read refusals as close codes).
    Pusher(Result<usize, pusher::Refusal>),
}

/// What a request head asks for, once checked.
enum Action {
    Upgrade {
        upgrade: Upgrade,
        accept: String,
        /// permessage-deflate, where agreed.
        deflate: Option<Agreed>,
    },
    Health,
    Metrics,
    /// A CORS preflight, from this allowed origin (if it named one).
    Preflight(Option<Box<str>>),
    /// A file built into the binary: content type and bytes.
    Static(&'static str, &'static [u8]),
    Stream(Box<StreamRequest>),
    Api {
        endpoint: ApiTarget,
        query: Option<Box<str>>,
        length: usize,
        expect_continue: bool,
    },
}

/// An `/sse` or `/poll` request, checked.
struct StreamRequest {
    /// `None` for `/sse`; the timeout in seconds for `/poll`.
    poll_timeout: Option<u64>,
    channels: Vec<ChannelName>,
    cursor: Option<Vec<Option<Since>>>,
    /// A cross-origin browser's allowed `Origin`, for CORS.
    allow_origin: Option<Box<str>>,
}

/// A routed head: where it goes, and whether the connection may carry
/// another request after the answer.
struct Decision {
    route: Result<Action, HttpError>,
    keep_alive: bool,
    /// The request announced a body (answering before reading it means the
    /// connection cannot continue).
    has_body: bool,
    /// `Some` for a path under `/api/`, with the endpoint when there is one
    /// (for the API request counters).
    api: Option<Option<ApiEndpoint>>,
}

const HEALTH_BODY: &[u8] = br#"{"status":"ok"}"#;
/// The browser client, served at `/herald.js`.
pub const HERALD_JS: &[u8] = include_bytes!("../../web/herald.js");
/// Its TypeScript declarations, at `/herald.d.ts`.
pub const HERALD_DTS: &[u8] = include_bytes!("../../web/herald.d.ts");
/// The recovery module for pusher-js and Laravel Echo, at `/herald-pusher.js`.
pub const HERALD_PUSHER_JS: &[u8] = include_bytes!("../../web/herald-pusher.js");
/// Its TypeScript declarations, at `/herald-pusher.d.ts`.
pub const HERALD_PUSHER_DTS: &[u8] = include_bytes!("../../web/herald-pusher.d.ts");
/// The demo page, at `/` in `--dev`.
pub const DEMO_PAGE: &[u8] = include_bytes!("../../web/index.html");
/// How long a server API request waits for the shards that carry it out.
/// In-process shards answer within a loop turn; this bounds a stuck one.
const API_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

impl<S: SocketTransport> Conn<S> {
    /// Bytes read in the HTTP phase: completes heads and bodies and answers
    /// every complete request in them, in order.
    pub(super) fn on_http_bytes(&mut self, input: &[u8], ctx: &mut Ctx) {
        let Phase::Http(http) = &mut self.phase else { return };
        if http.idle {
            http.idle = false;
            http.deadline = http.deadline.min(ctx.now + millis(ctx.config.handshake_timeout));
        }
        if http.held || (http.is_waiting() && !http.buf.is_empty()) {
            http.buf.extend_from_slice(input);
            if http.is_waiting() && !http.held {
                let buffered = std::mem::take(&mut http.buf);
                self.process_http(&buffered, 0, ctx);
            }
        } else if http.buf.is_empty() && http.body.is_none() {
            self.process_http(input, 0, ctx);
        } else {
            let from = http.buf.len();
            http.buf.extend_from_slice(input);
            let buffered = std::mem::take(&mut http.buf);
            self.process_http(&buffered, from, ctx);
        }
    }

    /// Answers every complete request in `data`, in order; keeps the rest.
    /// Bytes before `scan_from` were scanned for a head's end already.
    /// Answers are bounded like a WebSocket's replies: once those queued
    /// reach the read pause, the requests that follow are held, unparsed,
    /// until the client has read enough, so a client that pipelines
    /// requests and never reads holds at most the pause plus one answer.
    fn process_http(&mut self, mut data: &[u8], mut scan_from: usize, ctx: &mut Ctx) {
        while !data.is_empty() {
            let answers_pile_up = self.out.len() >= ctx.read_pause_bytes();
            let room = ctx.read_pause_bytes().saturating_sub(self.out.len());
            let Phase::Http(http) = &mut self.phase else { return };
            if http.is_waiting() && !http.may_pipeline(data, room, &ctx.config) {
                http.buf.extend_from_slice(data);
                return;
            }
            if answers_pile_up && http.body.is_none() {
                http.buf.extend_from_slice(data);
                http.held = true;
                return;
            }
            if let Some(wait) = http.body.take() {
                if data.len() < wait.length {
                    http.buf.extend_from_slice(data);
                    http.body = Some(wait);
                    return;
                }
                let (body, rest) = data.split_at(wait.length);
                self.answer_api(&wait.endpoint, wait.query.as_deref(), body, wait.keep_alive, ctx);
                data = rest;
                scan_from = 0;
                continue;
            }
            match http::find_head_end(data, scan_from) {
                Some(end) => {
                    let (head, rest) = data.split_at(end);
                    let consumed = self.on_head(head, rest, ctx);
                    data = rest.get(consumed..).unwrap_or_default();
                    scan_from = 0;
                }
                None if data.len() >= MAX_HEAD_BYTES => {
                    self.respond(HttpError::HeadTooLarge.to_response(), ctx);
                    return;
                }
                None => {
                    http.buf.extend_from_slice(data);
                    return;
                }
            }
        }
    }

    /// Takes up pipelined requests that were held while their answers
    /// drained, once the queue is below the read pause again. Returns
    /// whether it did.
    pub(super) fn resume_held_requests(&mut self, ctx: &mut Ctx) -> bool {
        if self.out.len() >= ctx.read_pause_bytes() {
            return false;
        }
        let Phase::Http(http) = &mut self.phase else { return false };
        if !http.held {
            return false;
        }
        http.held = false;
        let held = std::mem::take(&mut http.buf);
        self.process_http(&held, 0, ctx);
        true
    }

    /// Sends the answers that are ready at the front of those waiting, in
    /// request order; once none waits, takes up the requests pipelined
    /// behind them.
    pub(super) fn send_ready_answers(&mut self, ctx: &mut Ctx) -> Next {
        loop {
            let Phase::Http(http) = &mut self.phase else { return Next::Keep };
            if !matches!(http.waiting.front(), Some(w) if matches!(w.call, WaitingCall::Ready(_))) {
                break;
            }
            let Some(Waiting { call: WaitingCall::Ready(response), keep_alive, .. }) =
                http.waiting.pop_front()
            else {
                break;
            };
            if let Some(next) = http.waiting.front() {
                http.deadline = next.deadline;
            }
            if !keep_alive {
                self.respond(response, ctx);
                return self.drive(ctx);
            }
            if http.waiting.is_empty() {
                let buffered = std::mem::take(&mut http.buf);
                self.answer(response, true, ctx);
                if !buffered.is_empty() {
                    self.process_http(&buffered, 0, ctx);
                }
                break;
            }
            self.out.push(response);
        }
        self.drive(ctx)
    }

    /// The oldest waiting answer did not come within
    /// [`API_ANSWER_TIMEOUT`]: the answers ready before it go out, then a
    /// 503, and the connection closes (the answers of later requests would
    /// be out of order).
    pub(super) fn api_answer_timed_out(&mut self, ctx: &mut Ctx) {
        let Phase::Http(http) = &mut self.phase else { return };
        let error = HttpError::Unavailable("the request was not carried out in time".into());
        while let Some(waiting) = http.waiting.pop_front() {
            match waiting.call {
                WaitingCall::Ready(response) => self.out.push(response),
                WaitingCall::Api(endpoint, _) => {
                    log::warn!("server API {} request: {error}", endpoint.label());
                    ctx.metrics.api_request(Some(endpoint), error.status());
                    break;
                }
                WaitingCall::Pusher(_) => {
                    log::warn!("Pusher API request: {error}");
                    ctx.metrics.pusher_api_request(error.status());
                    break;
                }
            }
        }
        self.respond(error.to_response(), ctx);
    }

    /// A complete head: answer it, upgrade, or start reading its body. `rest`
    /// is what followed the head; returns how much of it was used.
    fn on_head(&mut self, head: &[u8], rest: &[u8], ctx: &mut Ctx) -> usize {
        let socket = &self.socket;
        let decision = match http::parse(head, |request| decide(request, ctx, socket)) {
            Ok(decision) => decision,
            Err(error) => {
                Decision { route: Err(error), keep_alive: false, has_body: false, api: None }
            }
        };
        let keep_alive = decision.keep_alive;
        match decision.route {
            Err(error) => {
                log::debug!("refused request: {error}");
                match decision.api {
                    Some(endpoint) => ctx.metrics.api_request(endpoint, error.status()),
                    None => ctx.metrics.refused(Refusal::Status(error.status())),
                }
                let keep = keep_alive && !decision.has_body && !error.closes_connection();
                self.answer(error.response(keep), keep, ctx);
                0
            }
            Ok(Action::Health) => {
                let health = ctx.shared.engine.health();
                // An engine with nothing outside the process to lose: the
                // short answer.
                let body = match (health.name, health.up) {
                    (_, None) => HEALTH_BODY.to_vec(),
                    (name, Some(true)) => {
                        format!(r#"{{"status":"ok","engine":{{"name":"{name}","state":"up"}}}}"#)
                            .into_bytes()
                    }
                    (name, Some(false)) => format!(
                        r#"{{"status":"degraded","engine":{{"name":"{name}","state":"down"}}}}"#
                    )
                    .into_bytes(),
                };
                self.answer(json_response(200, "", &body, keep_alive), keep_alive, ctx);
                0
            }
            Ok(Action::Preflight(origin)) => {
                self.answer(sse_wire::preflight(origin.as_deref(), keep_alive), keep_alive, ctx);
                0
            }
            Ok(Action::Metrics) => {
                let text = ctx.shared.render_metrics();
                let response = http_response(
                    200,
                    "",
                    "text/plain; version=0.0.4; charset=utf-8",
                    text.as_bytes(),
                    keep_alive,
                );
                self.answer(response, keep_alive, ctx);
                0
            }
            Ok(Action::Static(content_type, body)) => {
                let head = http_head(
                    200,
                    "Cache-Control: no-cache\r\n",
                    content_type,
                    body.len(),
                    keep_alive,
                );
                self.out.push(Bytes::from(head));
                self.answer(Bytes::from_static(body), keep_alive, ctx);
                0
            }
            Ok(Action::Stream(stream)) => {
                self.open_stream(*stream, keep_alive, ctx);
                0
            }
            Ok(Action::Api { endpoint, query, length, expect_continue }) => {
                if rest.len() >= length {
                    let body = rest.get(..length).unwrap_or_default();
                    self.answer_api(&endpoint, query.as_deref(), body, keep_alive, ctx);
                    return length;
                }
                if expect_continue {
                    self.out.push(Bytes::from_static(b"HTTP/1.1 100 Continue\r\n\r\n"));
                }
                if let Phase::Http(http) = &mut self.phase {
                    http.buf = Vec::with_capacity(length);
                    http.buf.extend_from_slice(rest);
                    http.body = Some(BodyWait { endpoint, query, length, keep_alive });
                    // The body gets its own handshake-timeout window.
                    http.deadline = ctx.now + millis(ctx.config.handshake_timeout);
                }
                rest.len()
            }
            Ok(Action::Upgrade { upgrade, accept, deflate }) => {
                self.upgrade(upgrade, &accept, deflate, ctx);
                if !rest.is_empty() {
                    self.on_ws_input(rest, ctx);
                }
                rest.len()
            }
        }
    }

    /// Subscribes an `/sse` or `/poll` request and starts its answer. With
    /// the Redis engine each channel's position comes later
    /// ([`Conn::on_stream_subscribed`]).
    fn open_stream(&mut self, request: StreamRequest, keep_alive: bool, ctx: &mut Ctx) {
        let me = self.conn_ref(ctx);
        let channels = request.channels.len();
        let (sub, opened) = match StreamSub::open(
            me,
            request.channels,
            request.cursor.as_deref(),
            &mut ctx.local,
        ) {
            Ok(opening) => opening,
            Err(error) => {
                ctx.metrics.refused(Refusal::Status(error.status()));
                self.answer(error.response(keep_alive), keep_alive, ctx);
                return;
            }
        };
        // The channels the engine answers later come with their index.
        let awaiting = channels - opened.len();
        match request.poll_timeout {
            None => {
                self.set_transport(Transport::Sse, ctx);
                self.out.push(sse_wire::sse_head(request.allow_origin.as_deref()));
                let next_ping = ctx.now + ctx.ping_interval();
                self.phase = Phase::Sse(Box::new(SsePhase { sub, next_ping }));
            }
            Some(timeout) => {
                self.set_transport(Transport::Poll, ctx);
                self.phase = Phase::Poll(Box::new(PollPhase {
                    sub,
                    deadline: ctx.now + timeout.saturating_mul(1000),
                    answer: PollAnswer::default(),
                    keep_alive,
                    allow_origin: request.allow_origin,
                    awaiting,
                    answer_at_once: timeout == 0,
                }));
            }
        }
        for channel in opened {
            self.stream_opened(channel, ctx);
        }
        self.answer_poll_if_due(ctx);
    }

    /// One channel of a stream is subscribed: the `subscribed` event and
    /// the publications to send now on SSE; the messages and recovery for a
    /// poll's answer.
    pub(super) fn stream_opened(&mut self, opened: Opened, ctx: &Ctx) {
        ctx.metrics.messages_out.add(opened.publications.len() as u64);
        match &mut self.phase {
            Phase::Sse(sse) => {
                for event in stream::sse_opened(&mut sse.sub, opened) {
                    self.out.push(event);
                }
            }
            Phase::Poll(poll) => poll.answer.opened(&mut poll.sub, opened),
            _ => {}
        }
    }

    /// A poll whose channels are all subscribed is answered at once when it
    /// has messages, lost its position, or asked not to wait.
    pub(super) fn answer_poll_if_due(&mut self, ctx: &mut Ctx) {
        if matches!(&self.phase, Phase::Poll(poll) if poll.awaiting == 0
            && (!poll.answer.messages.is_empty() || poll.answer.unrecovered || poll.answer_at_once))
        {
            self.finish_poll(ctx);
        }
    }

    /// Answers a held poll with the messages it has (maybe none), leaves
    /// its channels, and goes back to reading requests.
    pub(super) fn finish_poll(&mut self, ctx: &mut Ctx) {
        let Phase::Poll(_) = &self.phase else { return };
        let Phase::Poll(mut poll) =
            std::mem::replace(&mut self.phase, Phase::Http(HttpPhase::new(ctx.now)))
        else {
            return;
        };
        poll.sub.release(&mut ctx.local);
        let body = poll.answer.body(&poll.sub);
        ctx.metrics.messages_out.add(poll.answer.messages.len() as u64);
        self.set_transport(Transport::Http, ctx);
        let cors = sse_wire::cors_headers(poll.allow_origin.as_deref());
        let response = json_response(200, &cors, &body, poll.keep_alive);
        self.answer(response, poll.keep_alive, ctx);
    }

    /// This connection, as other shards name it.
    fn conn_ref(&self, ctx: &Ctx) -> ConnRef {
        ConnRef {
            shard: u16::try_from(ctx.shard).unwrap_or(u16::MAX),
            key: self.key,
            generation: self.generation,
        }
    }

    fn upgrade(&mut self, upgrade: Upgrade, accept: &str, deflate: Option<Agreed>, ctx: &mut Ctx) {
        self.out.push(Bytes::from(upgrade::switching_protocols(accept, deflate.as_ref())));
        let me = self.conn_ref(ctx);
        let transport = match upgrade {
            Upgrade::Echo => Transport::Echo,
            Upgrade::Client(_) => Transport::WebSocket,
            Upgrade::Pusher(_) => Transport::Pusher,
        };
        self.set_transport(transport, ctx);
        let (endpoint, max_message) = match upgrade {
            Upgrade::Echo => (Endpoint::Echo, ctx.config.max_echo_message_bytes),
            Upgrade::Client(Credentials { identity, expires_at }) => {
                ctx.users.add(&identity.user, me.key, me.generation);
                let token_deadline = expires_at.map(|exp| {
                    let left = exp
                        .saturating_add(auth::TOKEN_LEEWAY_SECS)
                        .saturating_sub(auth::unix_now());
                    ctx.now + left.saturating_mul(1000)
                });
                let session =
                    ClientSession::new(identity, me, token_deadline, ctx.now, &ctx.config);
                let welcome = protocol::welcome(
                    &session.client_id(&ctx.local),
                    session.user(),
                    ctx.config.ping_interval,
                );
                self.out.push(encode_frame(Opcode::Text, &welcome));
                ctx.metrics.messages_out.inc();
                (Endpoint::Client(Box::new(session)), ctx.config.max_message_bytes)
            }
            Upgrade::Pusher(Err(refusal)) => {
                // Opened to say why it closes: pusher-js acts on the code.
                let reason = refusal.close_reason();
                self.phase = Phase::WebSocket(WsPhase {
                    session: WsSession::new(ctx.config.max_message_bytes, deflate),
                    endpoint: Endpoint::Echo,
                    last_rx: ctx.now,
                    pinged: false,
                    close_deadline: None,
                    control: super::control_window(ctx.now) << 16,
                });
                if let Some(message) = pusher::error_before_close(reason) {
                    self.out.push(message);
                }
                self.fail(reason, ctx);
                return;
            }
            Upgrade::Pusher(Ok(app)) => {
                if let Some(count) = ctx.shared.app_connections.get(app) {
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                let (session, established) = PusherSession::open(app, me, &ctx.local);
                self.out.push(established);
                ctx.metrics.messages_out.inc();
                (Endpoint::Pusher(Box::new(session)), ctx.config.max_message_bytes)
            }
        };
        self.phase = Phase::WebSocket(WsPhase {
            session: WsSession::new(max_message, deflate),
            endpoint,
            last_rx: ctx.now,
            pinged: false,
            close_deadline: None,
            control: super::control_window(ctx.now) << 16,
        });
    }

    fn answer_api(
        &mut self,
        target: &ApiTarget,
        query: Option<&str>,
        body: &[u8],
        keep_alive: bool,
        ctx: &mut Ctx,
    ) {
        let endpoint = match target {
            ApiTarget::Herald(endpoint) => *endpoint,
            ApiTarget::Pusher(endpoint, path) => {
                self.answer_pusher_api(*endpoint, path, query, body, keep_alive, ctx);
                return;
            }
        };
        let id = match &mut self.phase {
            Phase::Http(http) => {
                http.next_call += 1;
                http.next_call
            }
            _ => 0,
        };
        let call = api::Call { endpoint, query, body, reply_to: self.conn_ref(ctx), id };
        let (response, keep_alive) = match api::handle(&call, &ctx.shared, &ctx.metrics) {
            Ok(Reply::Now(status, body)) => {
                ctx.metrics.api_request(Some(endpoint), status);
                (json_response(status, "", &body, keep_alive), keep_alive)
            }
            Ok(Reply::Later) => {
                self.wait_for_answer(WaitingCall::Api(endpoint, id), keep_alive, ctx);
                return;
            }
            Err(error) => {
                log::debug!("server API {}: {error}", endpoint.label());
                ctx.metrics.api_request(Some(endpoint), error.status());
                let keep = keep_alive && !error.closes_connection();
                (error.response(keep), keep)
            }
        };
        self.answer(response, keep_alive, ctx);
    }

    /// A Pusher HTTP API request, complete with its body.
    fn answer_pusher_api(
        &mut self,
        endpoint: PusherEndpoint,
        path: &str,
        query: Option<&str>,
        body: &[u8],
        keep_alive: bool,
        ctx: &mut Ctx,
    ) {
        let request = pusher::api::Request {
            method: endpoint.method(),
            path,
            query,
            body,
            reply_to: self.conn_ref(ctx),
        };
        let now = auth::unix_now();
        let (response, keep_alive) =
            match pusher::api::handle(&request, &ctx.shared, &ctx.metrics, now) {
                Ok(pusher::api::Reply::Now(status, body)) => {
                    ctx.metrics.pusher_api_request(status);
                    (json_response(status, "", &body, keep_alive), keep_alive)
                }
                Ok(pusher::api::Reply::Later(pending)) => {
                    self.wait_for_answer(WaitingCall::Pusher(pending), keep_alive, ctx);
                    return;
                }
                Err(error) => {
                    log::debug!("Pusher API {path}: {error}");
                    ctx.metrics.pusher_api_request(error.status());
                    let keep = keep_alive && !error.closes_connection();
                    (error.response(keep), keep)
                }
            };
        self.answer(response, keep_alive, ctx);
    }

    /// The request waits for the engine: later input is buffered (or, for
    /// complete server API requests, taken up), and a timer answers 503 if
    /// the answer does not come.
    fn wait_for_answer(&mut self, call: WaitingCall, keep_alive: bool, ctx: &Ctx) {
        if let Phase::Http(http) = &mut self.phase {
            let deadline = ctx.now + millis(API_ANSWER_TIMEOUT);
            if http.waiting.is_empty() {
                http.deadline = deadline;
            }
            http.idle = false;
            http.waiting.push_back(Waiting { call, keep_alive, deadline });
        }
    }

    /// Queues an answer (behind those still waiting, if any); then either
    /// waits for the next request or closes.
    fn answer(&mut self, response: Bytes, keep_alive: bool, ctx: &Ctx) {
        if let Phase::Http(http) = &mut self.phase
            && http.is_waiting()
        {
            let deadline = http.deadline;
            http.waiting.push_back(Waiting {
                call: WaitingCall::Ready(response),
                keep_alive,
                deadline,
            });
            return;
        }
        if keep_alive {
            self.out.push(response);
            let mut next = HttpPhase::new(ctx.now + millis(KEEP_ALIVE_IDLE));
            next.idle = true;
            next.first = false;
            self.phase = Phase::Http(next);
        } else {
            self.respond(response, ctx);
        }
    }
}

/// Whether the connection may carry another request: HTTP/1.1 unless
/// `Connection: close`, HTTP/1.0 only with `Connection: keep-alive`.
fn keeps_alive(request: &Request<'_>) -> bool {
    if request.version >= 1 {
        !request.has_token("connection", "close")
    } else {
        request.has_token("connection", "keep-alive")
    }
}

/// The announced body length: `Content-Length` once, no `Transfer-Encoding`.
fn body_length(request: &Request<'_>) -> Result<usize, HttpError> {
    if request.headers_named("transfer-encoding").next().is_some() {
        if request.headers_named("content-length").next().is_some() {
            return Err(HttpError::Malformed("Content-Length together with Transfer-Encoding"));
        }
        return Err(HttpError::LengthRequired);
    }
    match request.unique_header("content-length") {
        Ok(None) => Ok(0),
        Ok(Some(value)) => {
            let digits = value.trim_ascii();
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return Err(HttpError::Malformed("Content-Length is not a number"));
            }
            std::str::from_utf8(digits)
                .ok()
                .and_then(|text| text.parse::<usize>().ok())
                .ok_or(HttpError::Malformed("Content-Length is not a number"))
        }
        Err(_) => Err(HttpError::Malformed("more than one Content-Length")),
    }
}

/// A `GET` that announces a body is refused: its framing is suspect.
fn no_body(request: &Request<'_>) -> Result<(), HttpError> {
    if body_length(request)? == 0 {
        Ok(())
    } else {
        Err(HttpError::Malformed("a GET request has no body"))
    }
}

fn decide<S: SocketTransport>(request: &Request<'_>, ctx: &Ctx, socket: &S) -> Decision {
    // A refused upgrade closes: the client will not send another request on
    // a connection it meant to turn into a WebSocket.
    let keep_alive = keeps_alive(request) && !request.has_token("connection", "upgrade");
    let announced = request.headers_named("transfer-encoding").next().is_some()
        || request
            .headers_named("content-length")
            .next()
            .is_some_and(|value| value.trim_ascii() != b"0");
    let path = request.path();
    let api = path.starts_with("/api/").then(|| ApiEndpoint::from_path(path));
    Decision { route: route(request, ctx, socket), keep_alive, has_body: announced, api }
}

/// What the request asks for: the pure router names the endpoint; then
/// what the configuration and the request itself decide.
fn route<S: SocketTransport>(
    request: &Request<'_>,
    ctx: &Ctx,
    socket: &S,
) -> Result<Action, HttpError> {
    let config = &ctx.config;
    let path = pusher_path_of(request.path(), &config.pusher_path_prefix);
    match router::route(request.method, path)? {
        Route::Api(endpoint) => {
            if !request.has_strict_line_ends() {
                return Err(HttpError::Malformed("server API requests need CRLF line ends"));
            }
            let length = body_length(request)?;
            if endpoint.takes_body() && request.headers_named("content-length").next().is_none() {
                return Err(HttpError::LengthRequired);
            }
            if length > config.max_api_body_bytes {
                return Err(HttpError::PayloadTooLarge { limit: config.max_api_body_bytes });
            }
            api::authorize(request, &ctx.shared, || socket.peer_ip())?;
            let expect_continue = request.has_token("expect", "100-continue");
            let query = request.query().filter(|_| !endpoint.takes_body()).map(Box::from);
            Ok(Action::Api {
                endpoint: ApiTarget::Herald(endpoint),
                query,
                length,
                expect_continue,
            })
        }
        Route::PusherApi(endpoint) => {
            // Framing as for the server API; the signature is checked with
            // the body.
            let length = body_length(request)?;
            if endpoint.takes_body() && request.headers_named("content-length").next().is_none() {
                return Err(HttpError::LengthRequired);
            }
            if length > config.max_api_body_bytes {
                return Err(HttpError::PayloadTooLarge { limit: config.max_api_body_bytes });
            }
            let expect_continue = request.has_token("expect", "100-continue");
            let query = request.query().map(Box::from);
            let target = ApiTarget::Pusher(endpoint, Box::from(path));
            Ok(Action::Api { endpoint: target, query, length, expect_continue })
        }
        Route::Pusher => {
            let accept = upgrade::validate_handshake(request)?;
            let origin_allowed = upgrade::check_origin(request, &config.allowed_origins).is_ok();
            let key = path.strip_prefix("/app/").unwrap_or_default();
            let protocol = http::query_value(request.query(), "protocol").ok().flatten();
            let shared = &ctx.shared;
            let opening =
                pusher::opening(key, protocol.as_deref(), origin_allowed, &config.apps, |app| {
                    shared
                        .app_connections
                        .get(app)
                        .map_or(0, |count| count.load(std::sync::atomic::Ordering::Relaxed))
                });
            let deflate = upgrade::compression(request, config.compression);
            Ok(Action::Upgrade { upgrade: Upgrade::Pusher(opening), accept, deflate })
        }
        Route::Health => no_body(request).map(|()| Action::Health),
        Route::Metrics => no_body(request).map(|()| Action::Metrics),
        Route::Sse | Route::Poll => stream_request(request, ctx, request.path() == "/poll"),
        Route::Preflight => {
            no_body(request)?;
            let origin = upgrade::check_origin(request, &config.allowed_origins)?;
            Ok(Action::Preflight(origin.map(Box::from)))
        }
        Route::File(file) => {
            no_body(request)?;
            match file {
                File::HeraldJs => Ok(Action::Static("text/javascript; charset=utf-8", HERALD_JS)),
                File::HeraldDts => {
                    Ok(Action::Static("application/typescript; charset=utf-8", HERALD_DTS))
                }
                File::HeraldPusherJs => {
                    Ok(Action::Static("text/javascript; charset=utf-8", HERALD_PUSHER_JS))
                }
                File::HeraldPusherDts => {
                    Ok(Action::Static("application/typescript; charset=utf-8", HERALD_PUSHER_DTS))
                }
                File::DemoPage if config.dev => {
                    Ok(Action::Static("text/html; charset=utf-8", DEMO_PAGE))
                }
                File::DemoPage => Err(HttpError::NotFound),
            }
        }
        Route::Echo if !config.echo => Err(HttpError::NotFound),
        Route::Echo => {
            let accept = upgrade::validate(request, &config.allowed_origins)?;
            let deflate = upgrade::compression(request, config.compression);
            Ok(Action::Upgrade { upgrade: Upgrade::Echo, accept, deflate })
        }
        Route::Client => {
            let accept = upgrade::validate(request, &config.allowed_origins)?;
            let credentials = identify(request, config)?;
            let deflate = upgrade::compression(request, config.compression);
            Ok(Action::Upgrade { upgrade: Upgrade::Client(credentials), accept, deflate })
        }
    }
}

/// The path to route: with the Pusher mount prefix stripped, where the
/// rest is a Pusher path (a proxy left `/herald` on `/herald/apps/1/...`).
fn pusher_path_of<'p>(path: &'p str, prefix: &str) -> &'p str {
    match path.strip_prefix(prefix) {
        Some(rest)
            if !prefix.is_empty()
                && (rest.starts_with("/app/")
                    || rest.starts_with("/apps/")
                    || rest.starts_with("/users/")) =>
        {
            rest
        }
        _ => path,
    }
}

/// Checks an `/sse` or `/poll` request: method, origin, identity, channels
/// and the rules for each, cursor, timeout.
fn stream_request(request: &Request<'_>, ctx: &Ctx, poll: bool) -> Result<Action, HttpError> {
    let config = &ctx.config;
    no_body(request)?;
    let allow_origin = upgrade::check_origin(request, &config.allowed_origins)?.map(Box::from);
    let identity = identify(request, config)?.identity;
    let query = request.query();
    let mut channels: Vec<ChannelName> = Vec::new();
    for name in http::query_values(query, "channel") {
        let name = name?;
        let channel = ChannelName::parse(&name)
            .map_err(|invalid| HttpError::InvalidRequest(format!("channel {name:?}: {invalid}")))?;
        config.options(&channel).map_err(api::refusal)?;
        identity.may_access(&channel).map_err(|denied| match denied {
            Denied::Anonymous => HttpError::Unauthorized(denied.message()),
            Denied::OtherUser | Denied::NoGrant => HttpError::Forbidden(denied.message()),
        })?;
        if channels.contains(&channel) {
            return Err(HttpError::InvalidRequest(format!("channel {name} is named twice")));
        }
        channels.push(channel);
        if channels.len() > MAX_STREAM_CHANNELS {
            return Err(HttpError::InvalidRequest(format!(
                "at most {MAX_STREAM_CHANNELS} channels per request"
            )));
        }
    }
    if channels.is_empty() {
        return Err(HttpError::InvalidRequest("name at least one channel=NAME".into()));
    }
    // A browser's EventSource resends its last event id on reconnect: it is
    // newer than the cursor in the URL it reconnects to.
    let last_event_id = if poll {
        None
    } else {
        request
            .unique_header("last-event-id")
            .map_err(|_| HttpError::Malformed("more than one Last-Event-ID"))?
            .map(|id| String::from_utf8_lossy(id.trim_ascii()).into_owned())
    };
    let cursor_text = match last_event_id.filter(|id| !id.is_empty()) {
        Some(id) => Some(id),
        None => http::query_value(query, "cursor")?.map(|c| c.into_owned()),
    };
    let cursor = cursor_text
        .filter(|text| !text.is_empty())
        .map(|text| parse_cursor(&text, channels.len()))
        .transpose()?;
    let poll_timeout = if poll {
        let timeout = match http::query_value(query, "timeout")? {
            None => DEFAULT_POLL_TIMEOUT_SECS,
            Some(text) => {
                text.parse::<u64>().ok().filter(|t| *t <= MAX_POLL_TIMEOUT_SECS).ok_or_else(
                    || {
                        HttpError::InvalidRequest(format!(
                            "timeout must be 0 to {MAX_POLL_TIMEOUT_SECS} seconds"
                        ))
                    },
                )?
            }
        };
        Some(timeout)
    } else {
        None
    };
    Ok(Action::Stream(Box::new(StreamRequest { poll_timeout, channels, cursor, allow_origin })))
}

/// The identity of a `/ws` connection: from its token (query `token` or
/// `Authorization: Bearer`), or anonymous where that is allowed.
fn identify(request: &Request<'_>, config: &Config) -> Result<Credentials, HttpError> {
    let from_header = match request.unique_header("authorization") {
        Ok(None) => None,
        Ok(Some(value)) => {
            let value = std::str::from_utf8(value).unwrap_or_default().trim();
            match value.split_once(' ') {
                Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                    Some(token.trim())
                }
                _ => {
                    return Err(HttpError::Unauthorized(
                        "the Authorization header must be: Bearer <token>",
                    ));
                }
            }
        }
        Err(_) => return Err(HttpError::Unauthorized("more than one Authorization header")),
    };
    let from_query = request.query().and_then(|query| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix("token="))
            .filter(|token| !token.is_empty())
    });
    match from_header.or(from_query) {
        Some(token) => auth::verify(token, &config.token_secret, auth::unix_now())
            .map_err(|error| HttpError::Unauthorized(error.message())),
        None if config.allow_anonymous => {
            Ok(Credentials { identity: Identity::anonymous(), expires_at: None })
        }
        None => Err(HttpError::Unauthorized(
            "a token is required: pass ?token=JWT or Authorization: Bearer JWT",
        )),
    }
}
