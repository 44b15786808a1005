//! One shard: a thread with its own reactor (epoll or io_uring), `SO_REUSEPORT` listener, slab of connections, timers and inbox.

pub mod socket;
pub mod timers;
pub mod uring;

use crate::broker::{Delivery, Event};
use crate::clock::{Millis, millis};
use crate::conn::io::Transport;
use crate::conn::{Conn, Ctx, Next, Pushed};
use crate::error::HttpError;
use crate::metrics::Refusal;
use crate::node::inbox::{Inbox, Work};
use crate::node::local::{MAX_PENDING_DELIVERIES, PENDING};
use crate::node::{Shared, UserTask};
use crate::types::{ConnRef, UserAction};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use socket::{MAX_HELD_INPUT, Socket};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::num::NonZeroU64;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use timers::Timers;
use uring::{Completion, Op, Ring, Sent};

/// The plain listener's token (and the accept pause's timer).
pub const LISTENER: Token = Token(usize::MAX - 1);
/// The TLS listener's token.
pub const TLS_LISTENER: Token = Token(usize::MAX - 3);
/// The inbox waker's token.
pub const WAKER: Token = Token(usize::MAX);
/// The token of the periodic channel sweep.
const SWEEP: Token = Token(usize::MAX - 2);
/// How often a shard frees expired channels in its share of the broker.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Connections accepted per readiness event before others get a turn.
const ACCEPT_BUDGET: usize = 256;
/// First pause of accepting after the process ran out of descriptors; it
/// doubles up to `MAX_ACCEPT_PAUSE` while the shortage lasts.
const MIN_ACCEPT_PAUSE: Duration = Duration::from_millis(10);
/// Longest pause of accepting.
const MAX_ACCEPT_PAUSE: Duration = Duration::from_millis(500);
/// Clients turned away at once through the spare descriptor, per attempt.
const REFUSE_BATCH: usize = 64;
/// Connections answered 503 at once (over `max_connections`) per shard; past
/// it, further ones are closed without an answer.
const MAX_REFUSING: usize = 1024;
/// Events taken from the kernel per `poll`.
const EVENTS_CAPACITY: usize = 1024;

/// A connection token: slab key in the low 32 bits, generation above, so an
/// event or timer for a closed connection never reaches the one that reused
/// its slot.
fn conn_token(key: usize, generation: u32) -> Token {
    Token((generation as usize) << 32 | key)
}

// The shift leaves at most 32 bits: the cast keeps them all.
#[allow(clippy::cast_possible_truncation)]
fn split_token(token: Token) -> (usize, u32) {
    (token.0 & 0xFFFF_FFFF, (token.0 >> 32) as u32)
}

/// The answer sent through the spare descriptor when the process has none
/// left: short, and written without waiting.
const NO_DESCRIPTORS_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\
Content-Type: application/json\r\nContent-Length: 83\r\nConnection: close\r\n\r\n\
{\"error\":{\"code\":\"unavailable\",\"message\":\"server out of file descriptors, retry\"}}";

/// How a shard learns what its sockets can do, and does their I/O.
#[derive(Debug)]
pub enum Reactor {
    /// Readiness from epoll; the connections read and write with system
    /// calls.
    Epoll(Poll),
    /// Completions from an io_uring; the connections read and write
    /// through it.
    Ring(Box<Ring>),
}

/// A shard before its thread starts: everything that can fail at start-up
/// is done here, on the caller's thread.
#[derive(Debug)]
pub struct Shard {
    reactor: Reactor,
    /// The plain listener, then the TLS one if there is one; emptied at
    /// shutdown.
    listeners: Vec<Listener>,
    conns: Slab<Conn<Socket>>,
    ctx: Ctx,
    timers: Timers,
    inbox: Arc<Inbox>,
    shared: Arc<Shared>,
    epoch: Instant,
    next_generation: u32,
    /// Accepting is paused until this time (out of descriptors).
    accept_paused_until: Option<Millis>,
    accept_pause: Duration,
    /// The last accept ran out of descriptors (logged once per shortage).
    out_of_descriptors: bool,
    /// A descriptor kept open to be closed when the process runs out, so
    /// that waiting clients can be accepted and told 503 instead of hanging.
    spare_fd: Option<File>,
    /// Connections answered 503 and not yet closed.
    refusing: usize,
    /// Connections whose read budget ran out with input left.
    more_input: Vec<Token>,
    /// Set when shutting down: the time to give up on open connections.
    stopping: Option<Millis>,
    work: Vec<Work>,
    /// Connections in the order they were accepted, for the slowloris cap:
    /// those still in their first request are the pending handshakes.
    /// (Key and generation: eight bytes an entry, and up to the shard's
    /// share of `max_pending_handshakes` entries.)
    handshakes: VecDeque<(u32, u32)>,
    /// Pending handshakes this shard may hold (its share of
    /// `max_pending_handshakes`).
    max_handshakes: usize,
    /// Connections that got deliveries this turn, to flush at its end.
    dirty: Vec<usize>,
    /// On the ring: connections with output for the end-of-turn submission.
    to_send: Vec<Token>,
}

/// One listening socket of a shard.
#[derive(Debug)]
struct Listener {
    socket: TcpListener,
    /// For the TLS listener: the configuration its connections start with.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Connections may be waiting (an event came, the budget ran out, or a
    /// pause ended); on the ring: its accept is to be posted.
    ready: bool,
    /// On the ring: a multishot accept (or a wait for a client) is posted.
    posted: bool,
    /// On the ring: the accept failed for lack of descriptors; the next
    /// attempt waits for a client to arrive.
    await_client: bool,
}

impl Shard {
    /// Builds shard `index` around its reactor, listeners (the plain one,
    /// and the TLS one when `listen_tls` is set) and inbox (whose waker the
    /// reactor listens to).
    pub fn new(
        index: usize,
        mut reactor: Reactor,
        mut listener: TcpListener,
        tls_listener: Option<TcpListener>,
        inbox: Arc<Inbox>,
        shared: Arc<Shared>,
    ) -> io::Result<Shard> {
        let on_ring = matches!(reactor, Reactor::Ring(_));
        if let Reactor::Epoll(poll) = &reactor {
            poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        }
        let config = shared.config.clone();
        let mut listeners = vec![Listener {
            socket: listener,
            tls: None,
            ready: on_ring,
            posted: false,
            await_client: false,
        }];
        if let Some(mut socket) = tls_listener {
            let tls = config
                .tls
                .as_ref()
                .map(|tls| tls.server_config().clone())
                .ok_or_else(|| io::Error::other("a TLS listener without a certificate"))?;
            if let Reactor::Epoll(poll) = &reactor {
                poll.registry().register(&mut socket, TLS_LISTENER, Interest::READABLE)?;
            }
            listeners.push(Listener {
                socket,
                tls: Some(tls),
                ready: on_ring,
                posted: false,
                await_client: false,
            });
        }
        if let Reactor::Ring(ring) = &mut reactor {
            let event_fd = inbox
                .event_fd()
                .ok_or_else(|| io::Error::other("a shard on io_uring needs an eventfd waker"))?;
            ring.wait_for_wake(event_fd);
        }
        // Slots for this shard's share of max_connections, reserved up front:
        // untouched pages cost no memory, and the slab never moves under load.
        let share = config.max_connections / config.threads.max(1) + 64;
        let mut timers = Timers::default();
        timers.schedule(millis(SWEEP_INTERVAL), SWEEP);
        Ok(Shard {
            reactor,
            listeners,
            conns: Slab::with_capacity(share.min(1 << 20)),
            ctx: Ctx::new(shared.clone(), index),
            timers,
            inbox,
            shared,
            epoch: Instant::now(),
            next_generation: 0,
            accept_paused_until: None,
            accept_pause: MIN_ACCEPT_PAUSE,
            out_of_descriptors: false,
            spare_fd: File::open("/dev/null").ok(),
            refusing: 0,
            more_input: Vec::new(),
            stopping: None,
            work: Vec::new(),
            handshakes: VecDeque::new(),
            max_handshakes: config.max_pending_handshakes.div_ceil(config.threads.max(1)).max(1),
            dirty: Vec::new(),
            to_send: Vec::new(),
        })
    }

    fn clock(&self) -> Millis {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Runs the loop until shutdown completes.
    pub fn run(mut self) {
        self.inbox.claim();
        let mut events = Events::with_capacity(match self.reactor {
            Reactor::Epoll(_) => EVENTS_CAPACITY,
            Reactor::Ring(_) => 0,
        });
        let mut completions = Vec::new();
        loop {
            self.submit_sends();
            let timeout = self.poll_timeout();
            let waited = match &mut self.reactor {
                Reactor::Epoll(poll) => poll.poll(&mut events, timeout),
                Reactor::Ring(ring) => ring.wait(timeout),
            };
            if let Err(error) = waited {
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("shard {}: waiting for I/O failed: {error}", self.ctx.shard);
                break;
            }
            let turn_started = Instant::now();
            self.ctx.now = self.clock();
            match &mut self.reactor {
                Reactor::Epoll(_) => {
                    for event in events.iter() {
                        match event.token() {
                            LISTENER => self.set_accept_ready(Some(0)),
                            TLS_LISTENER => self.set_accept_ready(Some(1)),
                            // The inbox is drained below, every turn.
                            WAKER => {}
                            token => self.on_conn_event(token, event),
                        }
                    }
                }
                Reactor::Ring(ring) => {
                    ring.completions(&mut completions);
                    for completion in completions.drain(..) {
                        self.on_completion(completion);
                    }
                }
            }
            if self.accept_pending() {
                self.accept();
            }
            self.continue_input();
            // Everything that arrived this turn, from other shards or from
            // this one's own connections, goes out together: one write per
            // connection for all of it.
            self.drain_inbox();
            self.fire_timers();
            self.ctx.metrics.turn(turn_started.elapsed());
            if let Some(deadline) = self.stopping {
                if self.conns.is_empty() {
                    break;
                }
                if self.ctx.now >= deadline {
                    log::info!(
                        "shard {}: shutdown timeout, dropping {} connections",
                        self.ctx.shard,
                        self.conns.len()
                    );
                    break;
                }
            }
        }
        let remaining: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in remaining {
            self.teardown(key);
        }
        if let Reactor::Ring(ring) = &mut self.reactor {
            ring.flush();
        }
    }

    /// On the ring: submits the output every connection wrote this turn,
    /// one send per connection (they go to the kernel with the next wait).
    fn submit_sends(&mut self) {
        let Reactor::Ring(ring) = &mut self.reactor else { return };
        for token in self.to_send.drain(..) {
            let (key, generation) = split_token(token);
            let Some(conn) = self.conns.get_mut(key) else { continue };
            if conn.generation != generation {
                continue;
            }
            let socket = conn.socket_mut();
            if let Some(bytes) = socket.take_output() {
                ring.send(socket.fd(), token.0 as u64, bytes);
            }
        }
    }

    fn on_completion(&mut self, completion: Completion) {
        match completion.op {
            Op::Recv(token) => self.on_received(token, completion),
            Op::Send(slot) => self.on_sent(slot, completion.result),
            Op::Accept(index) => self.on_accepted(index as usize, completion),
            Op::Listen(index) => {
                let index = index as usize;
                if let Some(listener) = self.listeners.get_mut(index) {
                    listener.posted = false;
                }
                if self.accept_paused_until.is_none() && self.stopping.is_none() {
                    self.set_accept_ready(Some(index));
                }
            }
            // The inbox is drained at the end of the turn; the next wake-up
            // needs the read posted again.
            Op::Wake => {
                if let (Reactor::Ring(ring), Some(event_fd)) =
                    (&mut self.reactor, self.inbox.event_fd())
                {
                    ring.wait_for_wake(event_fd);
                }
            }
            Op::Ignored => {}
        }
    }

    /// A receive completed: bytes (copied out of the ring's buffer, which
    /// goes straight back), the peer's end-of-file, or an error.
    fn on_received(&mut self, token: u64, completion: Completion) {
        let Reactor::Ring(ring) = &mut self.reactor else { return };
        let (key, generation) = split_token(Token(usize::try_from(token).unwrap_or(usize::MAX)));
        let conn = self.conns.get_mut(key).filter(|conn| conn.generation == generation);
        let Some(conn) = conn else {
            if let Some(id) = completion.buffer() {
                ring.recycle(id);
            }
            return;
        };
        let socket = conn.socket_mut();
        if !completion.more() {
            socket.set_receiving(false);
        }
        let before = socket.held_input();
        match completion.result {
            count if count > 0 => {
                if let Some(id) = completion.buffer() {
                    let count = usize::try_from(count).unwrap_or(0);
                    socket.received(ring.received(id, count));
                    ring.recycle(id);
                }
            }
            0 => {
                socket.received_end();
                conn.peer_hung_up();
            }
            // Out of buffers, or stopped for holding too much: posted
            // again once it may (see `after`).
            ENOBUFS | ECANCELED => {}
            error => {
                conn.socket_mut().failed(-error);
                conn.peer_hung_up();
            }
        }
        let socket = conn.socket_mut();
        // A connection that does not read what it is sent stops receiving
        // (as on epoll, where it would stop calling recv).
        if before < MAX_HELD_INPUT && socket.held_input() >= MAX_HELD_INPUT && socket.is_receiving()
        {
            ring.cancel_recv(token);
        }
        let next = conn.ready(true, false, &mut self.ctx);
        self.after(key, next);
    }

    /// A send completed, all of it, part of it, or not at all.
    fn on_sent(&mut self, slot: u32, result: i32) {
        let Reactor::Ring(ring) = &mut self.reactor else { return };
        let token = ring.send_token(slot).unwrap_or(u64::MAX);
        let (key, generation) = split_token(Token(usize::try_from(token).unwrap_or(usize::MAX)));
        let conn = self.conns.get_mut(key).filter(|conn| conn.generation == generation);
        match (ring.sent(slot, result), conn) {
            (Sent::Partial, Some(_)) => ring.resume_send(slot),
            (Sent::Partial, None) => ring.drop_send(slot),
            (Sent::Done(bytes), conn) => {
                socket::reuse_bytes(bytes);
                if let Some(conn) = conn {
                    conn.socket_mut().send_done();
                    // Most sends find nothing queued behind them (a turn's
                    // output went in one): then there is nothing to drive.
                    if conn.queued_bytes() == 0 {
                        conn.mark_writable();
                        return;
                    }
                    let next = conn.ready(false, true, &mut self.ctx);
                    self.after(key, next);
                }
            }
            (Sent::Failed(errno, bytes), conn) => {
                socket::reuse_bytes(bytes);
                if let Some(conn) = conn {
                    conn.socket_mut().send_failed(errno);
                    let next = conn.ready(false, true, &mut self.ctx);
                    self.after(key, next);
                }
            }
        }
    }

    /// An accept completed on listener `index`: a connection, or an error.
    fn on_accepted(&mut self, index: usize, completion: Completion) {
        let more = completion.more();
        let wire_index = u32::try_from(index).unwrap_or(u32::MAX);
        match uring::accepted(completion.result) {
            Some(fd) => {
                let tls = self.listeners.get(index).map(|listener| listener.tls.clone());
                // Shutting down (the accept's cancel was not through yet):
                // the socket is closed as it came.
                let Some(tls) = tls.filter(|_| self.stopping.is_none()) else { return };
                self.accept_pause = MIN_ACCEPT_PAUSE;
                self.out_of_descriptors = false;
                let stream = TcpStream::from_std(std::net::TcpStream::from(fd));
                self.admit(stream, tls.as_ref());
            }
            None if completion.result == ECANCELED => {}
            None => {
                let error = io::Error::from_raw_os_error(-completion.result);
                let stop = if is_out_of_descriptors(&error) {
                    self.out_of_descriptors(&error, index);
                    // A ring's accept fails at once while descriptors are
                    // short, whether a client waits or not: the next one
                    // waits for a client first.
                    if let Some(listener) = self.listeners.get_mut(index) {
                        listener.await_client = true;
                    }
                    true
                } else if matches!(
                    error.kind(),
                    io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::Interrupted
                ) {
                    false
                } else {
                    log::warn!("shard {}: accept failed: {error}; pausing accept", self.ctx.shard);
                    self.pause_accept();
                    true
                };
                if stop
                    && more
                    && let Reactor::Ring(ring) = &mut self.reactor
                {
                    ring.cancel_accept(wire_index);
                }
            }
        }
        if more {
            return;
        }
        let Some(listener) = self.listeners.get_mut(index) else { return };
        listener.posted = false;
        if self.accept_paused_until.is_some() || self.stopping.is_some() {
            return;
        }
        match &mut self.reactor {
            Reactor::Ring(ring) if listener.await_client => {
                listener.await_client = false;
                listener.posted = true;
                ring.wait_for_client(listener.socket.as_fd(), wire_index);
            }
            _ => self.set_accept_ready(Some(index)),
        }
    }

    /// How long `poll` may sleep: until the next timer, or not at all when
    /// work is left over from this turn.
    fn poll_timeout(&self) -> Option<Duration> {
        if self.accept_pending() || !self.more_input.is_empty() || self.inbox.has_local_work() {
            return Some(Duration::ZERO);
        }
        let next = match (self.timers.next_deadline(), self.stopping) {
            (Some(timer), Some(stop)) => Some(timer.min(stop)),
            (timer, stop) => timer.or(stop),
        }?;
        Some(Duration::from_millis(next.saturating_sub(self.clock())))
    }

    fn drain_inbox(&mut self) {
        let mut work = std::mem::take(&mut self.work);
        self.inbox.drain(&mut work);
        for item in work.drain(..) {
            match item {
                Work::Deliver(delivery) => self.deliver(&delivery),
                Work::Shutdown => self.begin_shutdown(),
                Work::ForUser(task) => {
                    let count = self.for_user(&task);
                    task.finish(count);
                }
                Work::Answer { to, answer } => {
                    let key = to.conn.key as usize;
                    let Some(conn) = self.conns.get_mut(key) else { continue };
                    if conn.generation != to.conn.generation {
                        if let crate::broker::EngineAnswer::Subscribed(channel, _) = answer {
                            self.ctx.pending.remove(&(to.conn.key, channel.shared().clone()));
                        }
                        continue;
                    }
                    let next = conn.on_engine_answer(to.id, answer, &mut self.ctx);
                    self.after(key, next);
                    if next == Next::Keep {
                        self.mark_dirty(key);
                    }
                }
            }
        }
        self.work = work;
        self.flush_dirty();
    }

    /// Carries out a server API call on this shard's connections of one
    /// user; returns how many it acted on. Their output goes out with the
    /// turn's flush.
    fn for_user(&mut self, task: &UserTask) -> usize {
        let mut count = 0;
        let connections = match task.action {
            UserAction::Terminate => self.ctx.signed_in.of(&task.user),
            UserAction::Disconnect | UserAction::Unsubscribe(_) => self.ctx.users.of(&task.user),
        };
        for (key, generation) in connections {
            let key = key as usize;
            let Some(conn) = self.conns.get_mut(key) else { continue };
            if conn.generation != generation {
                continue;
            }
            let acted = match &task.action {
                UserAction::Disconnect => conn.disconnect(&mut self.ctx),
                UserAction::Terminate => conn.terminate(&mut self.ctx),
                UserAction::Unsubscribe(channel) => {
                    conn.unsubscribe_by_server(channel, &mut self.ctx)
                }
            };
            if acted {
                count += 1;
                if !conn.dirty {
                    conn.dirty = true;
                    self.dirty.push(key);
                }
            }
        }
        count
    }

    /// Lists a connection for the end-of-turn flush.
    fn mark_dirty(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key)
            && !conn.dirty
        {
            conn.dirty = true;
            self.dirty.push(key);
        }
    }

    fn deliver(&mut self, delivery: &Delivery) {
        fan_out(&mut self.conns, &mut self.ctx, delivery, &mut self.dirty);
    }

    fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &key in &dirty {
            let Some(conn) = self.conns.get_mut(key) else { continue };
            conn.dirty = false;
            let next = if conn.settle(&mut self.ctx) {
                conn.drive(&mut self.ctx)
            } else {
                conn.flush(&self.ctx)
            };
            self.after(key, next);
        }
        let mut dirty = dirty;
        dirty.clear();
        self.dirty = dirty;
    }

    fn on_conn_event(&mut self, token: Token, event: &mio::event::Event) {
        let (key, generation) = split_token(token);
        let Some(conn) = self.conns.get_mut(key) else { return };
        if conn.generation != generation {
            return;
        }
        let hangup = event.is_read_closed() || event.is_error();
        if hangup {
            conn.peer_hung_up();
        }
        let readable = event.is_readable() || hangup;
        let writable = event.is_writable() || event.is_write_closed() || event.is_error();
        let next = conn.ready(readable, writable, &mut self.ctx);
        self.after(key, next);
    }

    /// Bookkeeping after a connection callback: tear it down, or make sure
    /// its next deadline has a timer and leftover input a next turn.
    fn after(&mut self, key: usize, next: Next) {
        if next == Next::Close {
            self.teardown(key);
            return;
        }
        let Some(conn) = self.conns.get_mut(key) else { return };
        let token = conn_token(key, conn.generation);
        // A deadline already past fires on the next turn, never in this one,
        // so a connection cannot keep its shard busy through its timer.
        let deadline = conn.deadline(&self.ctx).max(self.ctx.now + 1);
        if conn.armed.is_none_or(|armed| deadline < armed.get()) {
            self.timers.schedule(deadline, token);
            conn.armed = NonZeroU64::new(deadline);
        }
        if conn.has_more_input() {
            self.more_input.push(token);
        }
        if let Reactor::Ring(ring) = &mut self.reactor {
            let socket = conn.socket_mut();
            if socket.list_for_send() {
                self.to_send.push(token);
            }
            if socket.wants_receive() {
                ring.recv(socket.fd(), token.0 as u64);
                socket.set_receiving(true);
            }
        }
    }

    fn continue_input(&mut self) {
        if self.more_input.is_empty() {
            return;
        }
        let tokens = std::mem::take(&mut self.more_input);
        for token in tokens {
            let (key, generation) = split_token(token);
            let Some(conn) = self.conns.get_mut(key) else { continue };
            if conn.generation != generation {
                continue;
            }
            let next = conn.drive(&mut self.ctx);
            self.after(key, next);
        }
    }

    fn fire_timers(&mut self) {
        let now = self.ctx.now;
        while let Some((at, token)) = self.timers.pop_due(now) {
            if token == LISTENER {
                self.accept_paused_until = None;
                self.set_accept_ready(None);
                continue;
            }
            if token == SWEEP {
                self.shared.engine.sweep(self.ctx.shard, self.ctx.config.threads);
                self.timers.schedule(now + millis(SWEEP_INTERVAL), SWEEP);
                continue;
            }
            let (key, generation) = split_token(token);
            let Some(conn) = self.conns.get_mut(key) else { continue };
            if conn.generation != generation || conn.armed != NonZeroU64::new(at) {
                continue;
            }
            conn.armed = None;
            let next = conn.on_timer(&mut self.ctx);
            self.after(key, next);
        }
    }

    /// Notes that listener `index` (`None`: every listener) may have
    /// connections waiting.
    fn set_accept_ready(&mut self, index: Option<usize>) {
        for (i, listener) in self.listeners.iter_mut().enumerate() {
            if index.is_none_or(|index| index == i) {
                listener.ready = true;
            }
        }
    }

    /// Whether some listener may have connections waiting.
    fn accept_pending(&self) -> bool {
        self.listeners.iter().any(|listener| listener.ready)
    }

    fn accept(&mut self) {
        if self.accept_paused_until.is_some() || self.stopping.is_some() {
            for listener in &mut self.listeners {
                listener.ready = false;
            }
            return;
        }
        for index in 0..self.listeners.len() {
            if self.listeners.get(index).is_some_and(|listener| listener.ready) {
                self.accept_from(index);
            }
        }
    }

    /// Accepts from listener `index` until it has no more connections, the
    /// budget runs out, or descriptors do.
    fn accept_from(&mut self, index: usize) {
        let Some(listener) = self.listeners.get_mut(index) else { return };
        listener.ready = false;
        if let Reactor::Ring(ring) = &mut self.reactor {
            if !listener.posted {
                ring.accept(listener.socket.as_fd(), u32::try_from(index).unwrap_or(u32::MAX));
                listener.posted = true;
            }
            return;
        }
        let tls = listener.tls.clone();
        for _ in 0..ACCEPT_BUDGET {
            if self.accept_paused_until.is_some() {
                return;
            }
            let Some(listener) = self.listeners.get(index) else { return };
            match listener.socket.accept() {
                Ok((stream, _)) => {
                    self.accept_pause = MIN_ACCEPT_PAUSE;
                    self.out_of_descriptors = false;
                    self.admit(stream, tls.as_ref());
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) if is_out_of_descriptors(&error) => {
                    self.out_of_descriptors(&error, index);
                    return;
                }
                // The client gave up between SYN and accept, or a signal
                // interrupted: try the next one.
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(error) => {
                    log::warn!("shard {}: accept failed: {error}; pausing accept", self.ctx.shard);
                    self.pause_accept();
                    return;
                }
            }
        }
        // Budget used up: more may be waiting; continue next turn.
        self.set_accept_ready(Some(index));
    }

    /// Accepting on listener `index` failed for lack of descriptors.
    fn out_of_descriptors(&mut self, error: &io::Error, index: usize) {
        if !self.out_of_descriptors {
            self.out_of_descriptors = true;
            log::warn!(
                "shard {}: accept failed: {error}; refusing new clients with 503 until \
                 descriptors free up (raise the open-file limit or lower max_connections)",
                self.ctx.shard
            );
        }
        // Waiting clients are told 503 at once. If that emptied the backlog,
        // the next arrival wakes the listener again; if not, retry after a
        // pause rather than spin.
        if !self.refuse_through_spare(index) {
            self.pause_accept();
        }
    }

    fn pause_accept(&mut self) {
        let pause = self.accept_pause;
        let until = self.clock() + millis(pause);
        self.accept_paused_until = Some(until);
        self.timers.schedule(until, LISTENER);
        self.accept_pause = (pause * 2).min(MAX_ACCEPT_PAUSE);
    }

    /// Out of descriptors: close the spare one, and use the slot it frees to
    /// accept waiting clients of listener `index` one at a time and tell
    /// them 503 (a TLS client cannot read a plain answer: it is closed), so
    /// they do not hang in the backlog. Returns whether the backlog was
    /// emptied.
    fn refuse_through_spare(&mut self, index: usize) -> bool {
        let Some(spare) = self.spare_fd.take() else {
            self.spare_fd = File::open("/dev/null").ok();
            return false;
        };
        drop(spare);
        let mut refused = 0;
        let mut emptied = false;
        if let Some(listener) = self.listeners.get(index) {
            while refused < REFUSE_BATCH {
                match listener.socket.accept() {
                    Ok((mut stream, _)) => {
                        // Best effort: a non-blocking write into an empty
                        // socket buffer; the socket closes right after.
                        if listener.tls.is_none() {
                            let _ = stream.write(NO_DESCRIPTORS_RESPONSE);
                        }
                        refused += 1;
                        self.ctx.metrics.refused(Refusal::OutOfDescriptors);
                    }
                    Err(error) => {
                        emptied = error.kind() == io::ErrorKind::WouldBlock;
                        break;
                    }
                }
            }
        }
        self.spare_fd = File::open("/dev/null").ok();
        log::debug!("shard {}: refused {refused} clients for lack of descriptors", self.ctx.shard);
        emptied && self.spare_fd.is_some()
    }

    fn admit(&mut self, stream: TcpStream, tls: Option<&Arc<rustls::ServerConfig>>) {
        // TCP_NODELAY comes from the listener (see `bind_listeners`).
        self.ctx.metrics.accepted.inc();
        let socket = match self.reactor {
            Reactor::Epoll(_) => Socket::epoll(stream),
            Reactor::Ring(_) => Socket::ring(stream),
        };
        let live = self.shared.connections.fetch_add(1, Ordering::AcqRel) + 1;
        let mut conn = if live > self.ctx.config.max_connections {
            self.shared.connections.fetch_sub(1, Ordering::AcqRel);
            self.ctx.metrics.refused(Refusal::AtCapacity);
            if self.refusing >= MAX_REFUSING {
                return;
            }
            self.refusing += 1;
            let mut conn = Conn::refused(socket, &HttpError::AtCapacity, &self.ctx);
            conn.counted = false;
            conn
        } else {
            Conn::new(socket, &self.ctx)
        };
        // A TLS connection's answers (a 503 too) wait for its handshake.
        if let Some(config) = tls
            && !conn.start_tls(config.clone())
        {
            self.uncount(&conn);
            return;
        }
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        self.next_generation = (self.next_generation + 1) & 0x7FFF_FFFF;
        conn.generation = self.next_generation;
        let Ok(slot) = u32::try_from(key) else {
            self.uncount(&conn);
            return;
        };
        conn.key = slot;
        let token = conn_token(key, conn.generation);
        match &mut self.reactor {
            Reactor::Epoll(poll) => {
                if let Err(error) = poll.registry().register(
                    conn.socket_mut().stream_mut(),
                    token,
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    log::warn!("could not register a connection: {error}");
                    self.uncount(&conn);
                    return;
                }
            }
            Reactor::Ring(ring) => {
                let socket = conn.socket_mut();
                ring.recv(socket.fd(), token.0 as u64);
                socket.set_receiving(true);
            }
        }
        let deadline = conn.deadline(&self.ctx).max(1);
        conn.armed = NonZeroU64::new(deadline);
        self.timers.schedule(deadline, token);
        let generation = conn.generation;
        entry.insert(conn);
        // On the ring the socket may take output at once (epoll says so
        // with its first event).
        if let Reactor::Ring(_) = self.reactor
            && let Some(conn) = self.conns.get_mut(key)
        {
            let next = conn.ready(false, true, &mut self.ctx);
            self.after(key, next);
        }
        self.handshakes.push_back((slot, generation));
        self.limit_handshakes();
    }

    /// Keeps the connections still in their first request under this
    /// shard's share of `max_pending_handshakes`, closing the ones waiting
    /// longest: a slow client cannot hold the server's doors shut, and a
    /// fresh one is always let in.
    fn limit_handshakes(&mut self) {
        if self.handshakes.len() <= self.max_handshakes {
            return;
        }
        let conns = &self.conns;
        let pending = |(key, generation): &(u32, u32)| {
            conns
                .get(*key as usize)
                .is_some_and(|c| c.generation == *generation && c.in_first_request())
        };
        // Forget the connections that are past their first request (the
        // list then holds only pending ones, so this runs again only after
        // that many more accepts).
        self.handshakes.retain(pending);
        while self.handshakes.len() > self.max_handshakes {
            let Some((key, _)) = self.handshakes.pop_front() else { break };
            let key = key as usize;
            log::debug!(
                "shard {}: too many pending handshakes; closing the oldest",
                self.ctx.shard
            );
            self.ctx.metrics.refused(Refusal::PendingHandshakes);
            self.teardown(key);
        }
    }

    /// Gives back what a connection held in the shared counts.
    fn uncount(&mut self, conn: &Conn<Socket>) {
        self.ctx.metrics.connection(conn.transport(), -1);
        if conn.counted {
            self.shared.connections.fetch_sub(1, Ordering::AcqRel);
        } else {
            self.refusing -= 1;
        }
    }

    fn teardown(&mut self, key: usize) {
        if let Some(mut conn) = self.conns.try_remove(key) {
            conn.release(&mut self.ctx);
            self.uncount(&conn);
            let token = conn_token(key, conn.generation);
            match &mut self.reactor {
                // Dropping the socket closes it, which also removes it from
                // epoll.
                Reactor::Epoll(_) => drop(conn),
                // Output written this turn goes first, then the ring cancels
                // what is posted on the socket and closes it.
                Reactor::Ring(ring) => {
                    let (fd, output) = conn.into_socket().into_parts();
                    if let Some(bytes) = output {
                        ring.send(fd.as_raw_fd(), token.0 as u64, bytes);
                    }
                    ring.close(fd);
                }
            }
            // A descriptor came free: if accepting paused for lack of them,
            // try again now rather than at the end of the pause.
            if self.accept_paused_until.is_some() && self.stopping.is_none() {
                self.accept_paused_until = None;
                self.set_accept_ready(None);
            }
        }
    }

    fn begin_shutdown(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        let now = self.clock();
        self.ctx.now = now;
        self.stopping = Some(now + millis(self.ctx.config.shutdown_timeout));
        for (index, mut listener) in self.listeners.drain(..).enumerate() {
            match &mut self.reactor {
                Reactor::Epoll(poll) => {
                    let _ = poll.registry().deregister(&mut listener.socket);
                }
                Reactor::Ring(ring) if listener.posted => {
                    ring.cancel_accept(u32::try_from(index).unwrap_or(u32::MAX));
                }
                Reactor::Ring(_) => {}
            }
        }
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            if let Some(conn) = self.conns.get_mut(key) {
                let next = conn.shutdown(&mut self.ctx);
                self.after(key, next);
            }
        }
    }
}

/// Queues a delivery's frame to every local subscriber of its channel that
/// has not had it: one `Bytes` clone per subscriber, no encoding, no write.
/// Each connection that got output is listed once in `dirty`, for one write
/// at the end of the turn.
pub fn fan_out<S: Transport>(
    conns: &mut Slab<Conn<S>>,
    ctx: &mut Ctx,
    delivery: &Delivery,
    dirty: &mut Vec<usize>,
) {
    let mut locals = std::mem::take(&mut ctx.locals);
    let mut delivered = 0;
    if let Some(subscribers) = locals.get_mut(&delivery.channel) {
        let shard = ctx.shard_id();
        for (&key, subscriber) in subscribers.iter_mut() {
            let who = ConnRef { shard, key, generation: subscriber.generation };
            match &delivery.event {
                // Its subscribe waits for the engine: publications are held
                // back, the rest it will not miss.
                Event::Publication(publication) if subscriber.last_offset == PENDING => {
                    if delivery.exclude != Some(who) {
                        let held = ctx.pending.entry((key, delivery.channel.clone())).or_default();
                        if held.len() >= MAX_PENDING_DELIVERIES {
                            held.remove(0);
                        }
                        held.push(publication.clone());
                    }
                    continue;
                }
                _ if subscriber.last_offset == PENDING => continue,
                Event::Publication(publication) => {
                    if publication.offset() <= subscriber.last_offset {
                        continue; // a duplicate: had it already (recovery)
                    }
                    subscriber.last_offset = publication.offset();
                }
                // The channel's epoch changed: start over, and say so.
                Event::Restart(restart) => subscriber.last_offset = restart.top,
                Event::Presence(_) | Event::Relay(_) => {}
            }
            if delivery.exclude == Some(who) {
                continue;
            }
            let Some(conn) = conns.get_mut(key as usize) else { continue };
            if conn.generation != subscriber.generation {
                continue;
            }
            match conn.deliver(delivery, ctx) {
                Pushed::Dropped => continue,
                Pushed::Queued => delivered += 1,
                Pushed::SlowConsumer => {}
            }
            if !conn.dirty {
                conn.dirty = true;
                dirty.push(key as usize);
            }
        }
    }
    ctx.locals = locals;
    ctx.metrics.deliveries.add(delivered);
    ctx.metrics.messages_out.add(delivered);
}

/// Results of ring operations that are no error: out of receive buffers
/// (the receive is posted again), cancelled (by herald).
const ENOBUFS: i32 = -105;
const ECANCELED: i32 = -125;

fn is_out_of_descriptors(error: &io::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM: the process or the system is out of
    // descriptors or socket memory; retrying at once would spin.
    matches!(error.raw_os_error(), Some(24 | 23 | 105 | 12))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The socket both reactors share adds two words to a connection's
    /// slot (its ring state, and the pointer to what it holds between the
    /// ring and the state machine, empty while idle).
    #[test]
    fn a_connection_on_either_reactor_stays_small() {
        let size = size_of::<Conn<Socket>>();
        assert!(size <= size_of::<Conn<TcpStream>>() + 16, "{size}");
        assert!(size_of::<Socket>() <= size_of::<TcpStream>() + 16, "{}", size_of::<Socket>());
    }

    #[test]
    fn tokens_carry_key_and_generation() {
        let token = conn_token(12345, 0x7FFF_FFFF);
        assert_eq!(split_token(token), (12345, 0x7FFF_FFFF));
        assert_ne!(token, LISTENER);
        assert_ne!(token, WAKER);
        assert_ne!(conn_token(7, 1), conn_token(7, 2));
    }
}
