//! Starting the shards on one address, and stopping them gracefully.

use crate::config::{Config, Io};
use crate::node::Shared;
use crate::node::inbox::{self, Inbox, Work};
use crate::shard::uring::Ring;
use crate::shard::{Reactor, Shard, WAKER};
use crate::sys;
use crate::tls;
use crate::webhook::Webhooks;
use mio::net::TcpListener;
use mio::{Poll, Waker};
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

/// Pending connections the kernel queues per listener. Linux caps it at
/// `net.core.somaxconn` (4096 by default).
const LISTEN_BACKLOG: i32 = 4096;

/// Starts herald.
#[derive(Debug)]
pub struct Server;

/// Why the server did not start.
#[derive(Debug)]
pub enum StartError {
    /// The listening address could not be bound.
    Listen(io::Error),
    /// The engine could not start (its store refused to open, say); the
    /// message says why and what to do.
    Engine(String),
    /// The system refused something else (a thread, an epoll instance).
    System(io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Listen(error) | StartError::System(error) => write!(f, "{error}"),
            StartError::Engine(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for StartError {}

impl Server {
    /// Binds the listeners and starts one thread per shard. Returns once the
    /// server accepts connections.
    pub fn start(config: Config) -> Result<ServerHandle, StartError> {
        let soft = sys::raise_open_file_limit();
        if let Err(error) = sys::reserve_descriptor_table(soft) {
            log::debug!("could not pre-size the descriptor table: {error}");
        }
        let threads = config.threads.max(1);
        let listeners = bind_listeners(config.listen, threads, config.send_buffer_bytes)
            .map_err(StartError::Listen)?;
        let local_addr = listeners
            .first()
            .map(TcpListener::local_addr)
            .transpose()
            .map_err(StartError::Listen)?
            .ok_or_else(|| StartError::Listen(io::Error::other("no listener")))?;
        let mut tls_listeners: Vec<Option<TcpListener>> = match config.listen_tls {
            Some(addr) if config.tls.is_some() => {
                let listeners =
                    bind_listeners(addr, threads, config.send_buffer_bytes).map_err(|error| {
                        StartError::Listen(io::Error::new(
                            error.kind(),
                            format!("{addr} (TLS): {error}"),
                        ))
                    })?;
                listeners.into_iter().map(Some).collect()
            }
            Some(_) => {
                return Err(StartError::Listen(io::Error::other(
                    "listen_tls is set without a certificate",
                )));
            }
            None => (0..threads).map(|_| None).collect(),
        };
        let tls_addr = tls_listeners
            .first()
            .and_then(Option::as_ref)
            .map(TcpListener::local_addr)
            .transpose()
            .map_err(StartError::Listen)?;
        let node: Arc<str> = Arc::from(node_id());
        // Every shard's reactor and inbox exist before the broker, which
        // delivers into the inboxes, and before any shard runs.
        let mut reactors = Vec::with_capacity(threads);
        let mut inboxes = Vec::with_capacity(threads);
        let mut io = config.io;
        for _ in 0..threads {
            let (reactor, waker) = reactor(&mut io).map_err(StartError::System)?;
            inboxes.push(Arc::new(Inbox::new(waker)));
            reactors.push(reactor);
        }
        let mut config = config;
        config.io = io;
        let config = Arc::new(config);
        let shared =
            Arc::new(Shared::new(config, node, inboxes.clone()).map_err(StartError::Engine)?);
        let webhooks = Some(Webhooks::start(&shared));
        let mut shards = Vec::with_capacity(threads);
        for (index, ((reactor, listener), inbox)) in
            reactors.into_iter().zip(listeners).zip(inboxes.iter().cloned()).enumerate()
        {
            let tls_listener = tls_listeners.get_mut(index).and_then(Option::take);
            shards.push(
                Shard::new(index, reactor, listener, tls_listener, inbox, shared.clone())
                    .map_err(StartError::System)?,
            );
        }
        let mut threads = Vec::with_capacity(shards.len());
        for (index, shard) in shards.into_iter().enumerate() {
            let thread = std::thread::Builder::new()
                .name(format!("herald-shard-{index}"))
                .spawn(move || shard.run())
                .map_err(StartError::System)?;
            threads.push(thread);
        }
        log::info!(
            "herald {} node {} listening on {local_addr}{} with {} shards on {}",
            env!("CARGO_PKG_VERSION"),
            shared.node,
            tls_addr.map(|addr| format!(" and {addr} (TLS)")).unwrap_or_default(),
            threads.len(),
            shared.config.io.name()
        );
        Ok(ServerHandle { local_addr, tls_addr, inboxes, threads, shared, webhooks })
    }
}

/// A shard's reactor and the waker its inbox uses. Where `io_uring` was
/// asked for and the kernel refuses a ring, says why and makes `io` epoll
/// (for this shard and the ones after it).
fn reactor(io: &mut Io) -> io::Result<(Reactor, inbox::Waker)> {
    if *io == Io::IoUring {
        match Ring::new() {
            Ok(ring) => return Ok((Reactor::Ring(Box::new(ring)), inbox::Waker::event_fd()?)),
            Err(error) => {
                log::warn!("io = \"io_uring\" is not available here ({error}); running on epoll");
                *io = Io::Epoll;
            }
        }
    }
    let poll = Poll::new()?;
    let waker = Waker::new(poll.registry(), WAKER)?;
    Ok((Reactor::Epoll(poll), inbox::Waker::Poll(waker)))
}

/// A running server.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    inboxes: Vec<Arc<Inbox>>,
    threads: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
    /// Webhook delivery, stopped once the shards are.
    webhooks: Option<Webhooks>,
}

impl ServerHandle {
    /// The reactor the shards run on (epoll where io_uring was asked for
    /// and the kernel refused it).
    pub fn io(&self) -> Io {
        self.shared.config.io
    }

    /// The address the server accepts on (the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the TLS listener, if there is one.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// Reads the TLS certificate and key again and serves them to new
    /// handshakes if they are good; otherwise the current pair stays and
    /// the error says why. `Ok(None)`: no TLS listener. Reads files: call it
    /// off the shards (the main thread does, on SIGHUP).
    pub fn reload_tls(&self) -> Result<Option<tls::Reloaded>, tls::TlsError> {
        match &self.shared.config.tls {
            Some(tls) => tls.reload().map(Some),
            None => Ok(None),
        }
    }

    /// Open connections across shards.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Channels the engine holds on this node (with subscribers, or with
    /// history not yet expired).
    pub fn channel_count(&self) -> usize {
        self.shared.engine.channel_count()
    }

    /// Asks every shard to stop accepting, send 1001 to every WebSocket and
    /// close once flushed (or at `shutdown_timeout`). Returns at once.
    pub fn shutdown(&self) {
        self.shared.engine.stop();
        for inbox in &self.inboxes {
            inbox.send(Work::Shutdown);
        }
    }

    /// Waits until every shard has stopped.
    pub fn join(mut self) {
        self.join_threads();
    }

    fn join_threads(&mut self) {
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                log::error!("a shard thread panicked");
            }
        }
        if let Some(webhooks) = self.webhooks.take() {
            webhooks.stop();
        }
    }
}

impl Drop for ServerHandle {
    /// Dropping the handle shuts the server down and waits for it.
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.shutdown();
            self.join_threads();
        }
    }
}

/// One listener per shard on the same address, with `SO_REUSEPORT` so the
/// kernel spreads incoming connections over them.
/// `send_buffer_bytes` (when not 0) is set on each listener: accepted
/// sockets inherit `SO_SNDBUF` from it, as they do `TCP_NODELAY`.
fn bind_listeners(
    addr: SocketAddr,
    count: usize,
    send_buffer_bytes: usize,
) -> io::Result<Vec<TcpListener>> {
    if addr.port() != 0 {
        // SO_REUSEPORT would let a second herald on the same port silently
        // share it: probe with a plain bind first so that "address in use"
        // is reported as such.
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        probe.set_reuse_address(true)?;
        probe.bind(&addr.into())?;
    }
    let mut listeners = Vec::with_capacity(count);
    let mut bound = addr;
    for _ in 0..count {
        let socket = Socket::new(Domain::for_address(bound), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        // Accepted sockets inherit TCP_NODELAY from the listener on Linux:
        // one setsockopt here instead of one per connection.
        socket.set_tcp_nodelay(true)?;
        if send_buffer_bytes > 0 {
            socket.set_send_buffer_size(send_buffer_bytes)?;
        }
        socket.bind(&bound.into())?;
        socket.listen(LISTEN_BACKLOG)?;
        let listener = TcpListener::from_std(socket.into());
        // With port 0 the first bind picks the port; the others join it.
        bound = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// A random node id: 8 hex digits.
fn node_id() -> String {
    sys::random_bytes(4).iter().map(|b| format!("{b:02x}")).collect()
}
