//! Starting the shards on one address, and stopping them gracefully.

use crate::auth::{ApiKey, KeyFailures};
use crate::broker::Broker;
use crate::broker::redis::RedisEngine;
use crate::config::{Config, Engine};
use crate::metrics::{self, NodeFigures, ShardMetrics};
use crate::shard::inbox::{Inbox, Work};
use crate::shard::{Shard, WAKER};
use crate::sys;
use mio::net::TcpListener;
use mio::{Poll, Waker};
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::thread::JoinHandle;
use std::time::Instant;

/// Pending connections the kernel queues per listener. Linux caps it at
/// `net.core.somaxconn` (4096 by default).
const LISTEN_BACKLOG: i32 = 4096;

/// State every shard shares.
#[derive(Debug)]
pub struct Shared {
    /// The configuration.
    pub config: Arc<Config>,
    /// This node's id: random per process, the prefix of client ids.
    pub node: Arc<str>,
    /// Open connections on every shard (those counted toward `max_connections`).
    pub connections: AtomicUsize,
    /// Channels, history, presence, and delivery to the shards.
    pub broker: Broker,
    /// The server API key check.
    pub api_key: ApiKey,
    /// Failed API key checks by peer, for the 429 lockout.
    pub key_failures: KeyFailures,
    /// Each shard's counters, by shard index.
    pub metrics: Box<[Arc<ShardMetrics>]>,
    /// When the server started.
    pub started: Instant,
    /// Bytes held in WebSocket messages whose last frame has not arrived,
    /// over all connections (bounded by `max_incomplete_bytes`).
    pub incomplete_bytes: AtomicUsize,
}

impl Shared {
    /// Shards on this node.
    pub fn shard_count(&self) -> usize {
        self.broker.shard_count()
    }

    /// Hands work to a shard.
    pub fn send(&self, shard: usize, work: Work) {
        self.broker.send_work(shard, work);
    }

    /// `/metrics`: every shard's counters, summed, in Prometheus text format.
    pub fn render_metrics(&self) -> String {
        let figures = NodeFigures {
            channels: self.broker.channel_count(),
            uptime_secs: self.started.elapsed().as_secs(),
            incomplete_bytes: self.incomplete_bytes.load(std::sync::atomic::Ordering::Relaxed),
        };
        metrics::render(&self.metrics, &figures)
    }
}

/// Starts herald.
#[derive(Debug)]
pub struct Server;

impl Server {
    /// Binds the listeners and starts one thread per shard. Returns once the
    /// server accepts connections.
    pub fn start(config: Config) -> io::Result<ServerHandle> {
        let soft = sys::raise_open_file_limit();
        if let Err(error) = sys::reserve_descriptor_table(soft) {
            log::debug!("could not pre-size the descriptor table: {error}");
        }
        let threads = config.threads.max(1);
        let listeners = bind_listeners(config.listen, threads, config.send_buffer_bytes)?;
        let local_addr = listeners
            .first()
            .map(TcpListener::local_addr)
            .transpose()?
            .ok_or_else(|| io::Error::other("no listener"))?;
        let node: Arc<str> = Arc::from(node_id());
        let config = Arc::new(config);
        // Every shard's poll and inbox exist before the broker, which
        // delivers into the inboxes, and before any shard runs.
        let mut polls = Vec::with_capacity(threads);
        let mut inboxes = Vec::with_capacity(threads);
        for _ in 0..threads {
            let poll = Poll::new()?;
            let waker = Waker::new(poll.registry(), WAKER)?;
            inboxes.push(Arc::new(Inbox::new(waker)));
            polls.push(poll);
        }
        let broker = Broker::new(config.clone(), inboxes.clone());
        let api_key = ApiKey::new(&config.api_key);
        let metrics = (0..threads).map(|_| Arc::new(ShardMetrics::default())).collect();
        let shared = Arc::new(Shared {
            config,
            node,
            connections: AtomicUsize::new(0),
            broker,
            api_key,
            key_failures: KeyFailures::default(),
            metrics,
            started: Instant::now(),
            incomplete_bytes: AtomicUsize::new(0),
        });
        if shared.config.engine == Engine::Redis {
            let engine = RedisEngine::start(&shared).map_err(io::Error::other)?;
            shared.broker.use_redis(engine);
        }
        let mut shards = Vec::with_capacity(threads);
        for (index, ((poll, listener), inbox)) in
            polls.into_iter().zip(listeners).zip(inboxes.iter().cloned()).enumerate()
        {
            shards.push(Shard::new(index, poll, listener, inbox, shared.clone())?);
        }
        let mut threads = Vec::with_capacity(shards.len());
        for (index, shard) in shards.into_iter().enumerate() {
            let thread = std::thread::Builder::new()
                .name(format!("herald-shard-{index}"))
                .spawn(move || shard.run())?;
            threads.push(thread);
        }
        log::info!(
            "herald {} node {} listening on {local_addr} with {} shards",
            env!("CARGO_PKG_VERSION"),
            shared.node,
            threads.len()
        );
        Ok(ServerHandle { local_addr, inboxes, threads, shared })
    }
}

/// A running server.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    inboxes: Vec<Arc<Inbox>>,
    threads: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl ServerHandle {
    /// The address the server accepts on (the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Open connections across shards.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Channels the broker holds (with subscribers, or with history not yet expired).
    pub fn channel_count(&self) -> usize {
        self.shared.broker.channel_count()
    }

    /// Asks every shard to stop accepting, send 1001 to every WebSocket and
    /// close once flushed (or at `shutdown_timeout`). Returns at once.
    pub fn shutdown(&self) {
        if let Some(engine) = self.shared.broker.redis() {
            engine.stop();
        }
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
