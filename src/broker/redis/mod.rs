//! The Redis engine: offsets, history, presence and fan-out between nodes kept in Redis, reached only from the engine's own threads.
//!
//! Two threads per node. The command thread (`commands.rs`) owns one Redis
//! connection and runs jobs from a bounded queue (a publication is one Lua
//! script, `scripts.rs`: next offset, history, `PUBLISH`, atomically); it
//! also writes the node's `SUBSCRIBE`s. The pub/sub thread (`pubsub.rs`)
//! owns the subscriber connection and hands every publication of a channel
//! this node has subscribers for to the shards, in offset order, through
//! the host. Calls on users' connections travel between nodes on a control
//! channel (`control.rs`). A shard never does Redis I/O and never waits: it
//! queues a job, or is refused at once when the queue is full.

mod cluster;
mod commands;
mod control;
mod feed;
mod presence;
mod pubsub;
mod scripts;

use super::notice::{Notice, NoticeFeed};
use super::table::{Table, deliver_to};
use super::{
    Answer, Delivery, Engine, EngineAnswer, Event, Health, Host, Position, PresenceChange, ReplyTo,
    Subscription,
};
use crate::channel::ChannelName;
use crate::config::Config;
use crate::types::{BrokerError, ConnRef, HistoryPage, Member, Published, Since, UserAction};
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

/// Jobs the shards may have waiting for the command thread at once. Past
/// it, a call is answered `unavailable` at once (and counted in
/// `herald_engine_refusals_total`) rather than queued behind a Redis that
/// does not keep up. Jobs the engine gives itself (leaving a channel,
/// confirmations, replies to other nodes) are not counted: each follows
/// one that was.
pub const QUEUE_BOUND: usize = 16_384;
/// How long one Redis call may take before the connection counts as lost.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a call to a cluster is retried after a `MOVED`, a `TRYAGAIN`
/// or a lost node (a failover takes the cluster's node timeout and more).
const CLUSTER_RETRIES: u32 = 4;
/// How long a publication waits for a replica to confirm it (`WAIT`) in a
/// cluster whose masters have replicas.
const REPLICA_WAIT: Duration = Duration::from_secs(1);

/// A connection for commands: to one instance, or to a cluster (routed by
/// key, following `MOVED` and `ASK`).
enum Commands {
    Single(redis::Connection),
    Cluster {
        connection: Box<redis::cluster::ClusterConnection>,
        /// Which master owns each slot and how many replicas it has, as
        /// the cluster said when connected; read again every refresh
        /// interval and when a replica does not answer in time.
        topology: cluster::Topology,
    },
}

impl Commands {
    fn as_dyn(&mut self) -> &mut dyn redis::ConnectionLike {
        match self {
            Commands::Single(connection) => connection,
            Commands::Cluster { connection, .. } => &mut **connection,
        }
    }

    fn as_ref(&self) -> &dyn redis::ConnectionLike {
        match self {
            Commands::Single(connection) => connection,
            Commands::Cluster { connection, .. } => connection,
        }
    }

    /// In a cluster, reads again which master owns each slot and how many
    /// replicas each has.
    fn read_topology(&mut self) -> redis::RedisResult<()> {
        if let Commands::Cluster { connection, topology } = self {
            *topology = cluster::Topology::read(connection)?;
        }
        Ok(())
    }

    /// In a cluster, waits until a replica of the master that holds `key`
    /// has what this connection wrote there (`WAIT`), for at most
    /// [`REPLICA_WAIT`]: a publication answered is then on two machines,
    /// and a failover that promotes the replica keeps it. A master without
    /// replicas (and a single instance) is not waited for. Returns false
    /// when no replica confirmed in time.
    fn replicate(&mut self, key: &str) -> redis::RedisResult<bool> {
        let Commands::Cluster { connection, topology } = self else { return Ok(true) };
        use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
        let slot = cluster::key_slot(key.as_bytes());
        if topology.replicas_of(slot) == 0 {
            return Ok(true);
        }
        let mut wait = redis::cmd("WAIT");
        wait.arg(1).arg(u64::try_from(REPLICA_WAIT.as_millis()).unwrap_or(u64::MAX));
        let route = Route::new(slot, SlotAddr::Master);
        let value = connection.route_command(
            &wait,
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
        )?;
        let confirmed: usize = redis::from_redis_value(value)?;
        if confirmed == 0 {
            // The replica is gone, or the slot moved: ask again who is where.
            self.read_topology()?;
            return Ok(false);
        }
        Ok(true)
    }
}

impl redis::ConnectionLike for Commands {
    fn req_packed_command(&mut self, cmd: &[u8]) -> redis::RedisResult<redis::Value> {
        self.as_dyn().req_packed_command(cmd)
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> redis::RedisResult<Vec<redis::Value>> {
        self.as_dyn().req_packed_commands(cmd, offset, count)
    }

    fn req_command(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
        self.as_dyn().req_command(cmd)
    }

    fn get_db(&self) -> i64 {
        self.as_ref().get_db()
    }

    fn check_connection(&mut self) -> bool {
        self.as_dyn().check_connection()
    }

    fn is_open(&self) -> bool {
        self.as_ref().is_open()
    }
}

impl std::fmt::Debug for Commands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Commands::Single(_) => "Commands::Single",
            Commands::Cluster { .. } => "Commands::Cluster",
        })
    }
}

/// Work for the command thread.
#[derive(Debug)]
enum Job {
    /// Publish `data` to each of `channels` (one for `publish`, several for
    /// `broadcast`: all are answered together).
    Publish {
        channels: Vec<ChannelName>,
        /// Raw JSON.
        data: Bytes,
        /// The client id of a connection that must not get it (on any node).
        exclude: Option<String>,
        reply: ReplyTo,
    },
    /// The node's first subscriber of a channel came: `SUBSCRIBE` in Redis.
    Listen(String),
    /// The node's last subscriber of a channel left: `UNSUBSCRIBE`.
    Unlisten(String),
    /// Redis confirmed the node's subscription to this pub/sub channel.
    Confirmed(String),
    /// A subscriber's position in Redis (once the node's subscription is
    /// confirmed) and what it missed.
    Subscribe { channel: ChannelName, wants: Wants, reply: ReplyTo },
    /// A message that is not kept, for every node's subscribers.
    Relay { channel: ChannelName, text: Bytes, exclude: Option<String> },
    /// A client entered a channel's presence (and `join` goes to the others).
    PresenceJoin { channel: ChannelName, member: Member },
    /// A client left a channel's presence (and `leave` goes to the others).
    PresenceLeave { channel: ChannelName, member: Member },
    /// This node's first subscriber of a channel whose webhooks want its
    /// occupancy came.
    Occupy(ChannelName),
    /// This node's last subscriber of such a channel left.
    Vacate(ChannelName),
    /// A notice a front end found, for its scope's webhooks.
    Notice(Box<Notice>),
    /// The channel's presence on every node.
    Presence { channel: ChannelName, reply: ReplyTo },
    /// A channel's history.
    History { channel: ChannelName, since: Option<Since>, limit: usize, reply: ReplyTo },
    /// `disconnect` or `unsubscribe` on every node, through the control
    /// channel; answered when every node reported its count.
    UserCall { user: Arc<str>, action: UserAction, reply: ReplyTo },
    /// This node's count for another node's call.
    ControlReply { origin: String, id: u64, count: usize },
}

impl Job {
    /// Whether the job counts against [`QUEUE_BOUND`]: one a shard asked for.
    fn is_bounded(&self) -> bool {
        matches!(
            self,
            Job::Publish { .. }
                | Job::Subscribe { .. }
                | Job::Relay { .. }
                | Job::Presence { .. }
                | Job::History { .. }
                | Job::UserCall { .. }
        )
    }
}

/// What a subscribe asks of Redis beside the position.
#[derive(Debug, Clone)]
struct Wants {
    /// Recover from here.
    since: Option<Since>,
    /// Most bytes of missed publications to replay.
    replay_limit: usize,
    /// The channel's members.
    members: bool,
    /// The newest publication kept.
    newest: bool,
}

/// What the engine's threads share.
#[derive(Debug)]
struct Inner {
    config: Arc<Config>,
    /// The seeds of `redis_url`: one instance, or nodes of a cluster.
    seeds: Vec<redis::Client>,
    /// Whether the seeds are a Redis Cluster, once one of them answered.
    cluster: OnceLock<bool>,
    prefix: String,
    node: Arc<str>,
    host: Arc<dyn Host>,
    /// This node's subscribers per shard, presence entries, and where it is
    /// in each channel (Redis has the history).
    table: Table,
    jobs: Sender<Job>,
    /// Bounded jobs queued and not yet taken by the command thread.
    queued: AtomicUsize,
    /// Calls refused because the queue was full.
    refused: AtomicU64,
    /// The command connection is up.
    up: AtomicBool,
    /// The pub/sub connection was lost since the command thread last used
    /// its connection: Redis may have restarted, and the command
    /// connection be dead too.
    suspect: AtomicBool,
    subscriptions: pubsub::Subscriptions,
    calls: control::Calls,
    stop: AtomicBool,
    /// Notices dropped because their stream was full.
    notices_dropped: AtomicU64,
    /// Publish scripts run by this node: each one's number, so that a
    /// retried run is recognised (`scripts::PUBLISH_SCRIPT`).
    publications: AtomicU64,
}

impl Inner {
    /// Queues a job a shard asked for, unless the queue is full.
    fn submit(&self, job: Job) -> Result<(), BrokerError> {
        if job.is_bounded() && self.queued.fetch_add(1, Ordering::AcqRel) >= QUEUE_BOUND {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(BrokerError::Unavailable(
                "the engine (Redis) is not keeping up: its queue is full, retry".into(),
            ));
        }
        self.jobs.send(job).map_err(|_| unavailable())
    }

    /// Queues a job the engine gives itself.
    fn submit_internal(&self, job: Job) {
        let _ = self.jobs.send(job);
    }

    /// A channel's pub/sub channel. Every key of a channel carries the
    /// channel's name as its hash tag (`PREFIX:{NAME}:...`): in a cluster
    /// they share a slot, so one script changes them together and the
    /// channel's publications go to the shard that owns them.
    fn pubsub_channel(&self, channel: &str) -> String {
        format!("{}:{{{channel}}}:pub", self.prefix)
    }

    /// The engine channel of a pub/sub channel named by [`Self::pubsub_channel`].
    fn channel_of<'n>(&self, pubsub: &'n str) -> Option<&'n str> {
        pubsub.strip_prefix(self.prefix.as_str())?.strip_prefix(":{")?.strip_suffix("}:pub")
    }

    fn control_channel(&self) -> String {
        format!("{}:{{ctl}}", self.prefix)
    }

    fn reply_channel(&self, node: &str) -> String {
        format!("{}:{{ctl}}:{node}", self.prefix)
    }

    /// A channel's members (client to user and info), and the connections
    /// each user has there.
    fn presence_keys(&self, channel: &str) -> (String, String) {
        (self.channel_key(channel, "pr"), self.channel_key(channel, "pru"))
    }

    /// A key of one channel: `PREFIX:{NAME}:WHAT`.
    fn channel_key(&self, channel: &str, what: &str) -> String {
        format!("{}:{{{channel}}}:{what}", self.prefix)
    }

    /// A key of the deployment: `PREFIX:NAME`.
    fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    /// The nodes that have subscribers of a channel (where webhooks want
    /// its occupancy).
    fn occupancy_key(&self, channel: &str) -> String {
        self.channel_key(channel, "oc")
    }

    /// What the scripts need of a channel's options (`presence::channel_flags`).
    fn channel_flags_key(&self, channel: &str) -> String {
        self.channel_key(channel, "chf")
    }

    /// The stream a scope's notices wait in for its webhooks; its readers'
    /// keys share its hash tag.
    fn notice_stream(&self, scope: &str) -> String {
        format!("{}:{{wh:{scope}}}", self.prefix)
    }

    /// Counts notices dropped because a stream was full.
    fn dropped(&self, count: u64) {
        if count > 0 {
            let before = self.notices_dropped.fetch_add(count, Ordering::Relaxed);
            log::warn!("webhook notices dropped: a queue is full ({} so far)", before + count);
        }
    }

    fn keys(&self, channel: &str) -> (String, String) {
        (self.channel_key(channel, "m"), self.channel_key(channel, "h"))
    }

    /// Whether the seeds are a Redis Cluster (asked once, of the first seed
    /// that answers).
    fn is_cluster(&self) -> redis::RedisResult<bool> {
        if let Some(cluster) = self.cluster.get() {
            return Ok(*cluster);
        }
        let mut failure = None;
        for seed in &self.seeds {
            match cluster::is_cluster(seed, CALL_TIMEOUT) {
                Ok(cluster) => return Ok(*self.cluster.get_or_init(|| cluster)),
                Err(error) => failure = Some(error),
            }
        }
        Err(failure.unwrap_or_else(|| (redis::ErrorKind::Io, "no redis_url").into()))
    }

    /// The command that publishes on a pub/sub channel: `SPUBLISH` (to the
    /// shard that owns it) in a cluster.
    fn publish_command(&self) -> &'static str {
        if self.cluster.get() == Some(&true) { "SPUBLISH" } else { "PUBLISH" }
    }

    /// A connection for commands, with every call bounded in time: to the
    /// first seed that answers, or to the whole cluster.
    fn connect(&self) -> redis::RedisResult<Commands> {
        if self.is_cluster()? {
            let client = redis::cluster::ClusterClientBuilder::new(
                self.seeds.iter().map(|seed| seed.get_connection_info().clone()),
            )
            .connection_timeout(CALL_TIMEOUT)
            .response_timeout(CALL_TIMEOUT)
            .retries(CLUSTER_RETRIES)
            .min_retry_wait(100)
            .max_retry_wait(1_000)
            .build()?;
            let mut connection = client.get_connection()?;
            let topology = cluster::Topology::read(&mut connection)?;
            return Ok(Commands::Cluster { connection: Box::new(connection), topology });
        }
        // One instance: the first URL only, so that commands and pub/sub
        // never go to two different servers.
        let seed = self.seeds.first().ok_or((redis::ErrorKind::Io, "no redis_url"))?;
        let connection = seed.get_connection_with_timeout(CALL_TIMEOUT)?;
        connection.set_read_timeout(Some(CALL_TIMEOUT))?;
        connection.set_write_timeout(Some(CALL_TIMEOUT))?;
        Ok(Commands::Single(connection))
    }

    /// Hands a publication or presence change from Redis to this node's
    /// shards that have subscribers of `channel`.
    fn deliver(&self, channel: &str, make: impl FnOnce(Arc<str>) -> (Event, Option<ConnRef>)) {
        let mut stripe = self.table.lock(channel);
        let Some((name, state)) = stripe.get_named(channel) else { return };
        let (event, exclude) = make(name.clone());
        deliver_to(
            &*self.host,
            state.interested_shards(),
            &Delivery { channel: name, event, exclude },
        );
    }
}

/// The answer for a Redis that cannot be reached.
fn unavailable() -> BrokerError {
    BrokerError::Unavailable("the engine (Redis) is unavailable, retry".into())
}

/// The Redis engine of one node.
#[derive(Debug)]
pub struct RedisEngine {
    inner: Arc<Inner>,
}

impl RedisEngine {
    /// Starts the engine's threads; they connect lazily, and reconnect until
    /// Redis answers.
    pub fn start(
        config: Arc<Config>,
        node: Arc<str>,
        host: Arc<dyn Host>,
    ) -> Result<RedisEngine, String> {
        let seeds = config
            .redis_url
            .split(',')
            .map(|url| {
                redis::Client::open(url.trim()).map_err(|error| format!("redis_url: {error}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (send, receive) = mpsc::channel();
        let inner = Arc::new(Inner {
            seeds,
            cluster: OnceLock::new(),
            prefix: config.redis_prefix.clone(),
            table: Table::new(config.clone()),
            config,
            node,
            host,
            jobs: send,
            queued: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            up: AtomicBool::new(false),
            suspect: AtomicBool::new(false),
            subscriptions: pubsub::Subscriptions::default(),
            calls: control::Calls::default(),
            stop: AtomicBool::new(false),
            notices_dropped: AtomicU64::new(0),
            publications: AtomicU64::new(0),
        });
        // Every node listens for calls on users' connections, and for the
        // counts answering its own.
        inner.subscriptions.want(inner.control_channel());
        inner.subscriptions.want(inner.reply_channel(&inner.node));
        let commands = inner.clone();
        std::thread::Builder::new()
            .name("herald-redis-commands".into())
            .spawn(move || commands::run(&commands, &receive))
            .map_err(|e| e.to_string())?;
        let reader = inner.clone();
        std::thread::Builder::new()
            .name("herald-redis-pubsub".into())
            .spawn(move || pubsub::run(&reader))
            .map_err(|e| e.to_string())?;
        Ok(RedisEngine { inner })
    }
}

impl Engine for RedisEngine {
    fn publish(
        &self,
        channels: &[ChannelName],
        data: &[u8],
        exclude: Option<&str>,
        reply: ReplyTo,
    ) -> Answer<Vec<(ChannelName, Published)>> {
        let job = Job::Publish {
            channels: channels.to_vec(),
            data: Bytes::copy_from_slice(data),
            exclude: exclude.map(str::to_string),
            reply,
        };
        match self.inner.submit(job) {
            Ok(()) => Answer::Later,
            Err(error) => Answer::Now(Err(error)),
        }
    }

    fn subscribe(&self, subscription: Subscription<'_>, reply: ReplyTo) -> Answer<Position> {
        let Subscription { channel, who, member, since, replay_limit, .. } = subscription;
        let inner = &self.inner;
        // History lives in Redis: the node's table keeps none.
        let mut options = match inner.table.options(channel) {
            Ok(options) => options.clone(),
            Err(error) => return Answer::Now(Err(error)),
        };
        options.history_size = 0;
        let name = channel.shared();
        let mut stripe = inner.table.lock(name);
        let state = match stripe.open(name, &options) {
            Ok(state) => state,
            Err(error) => return Answer::Now(Err(error)),
        };
        let first = state.add_subscriber(who);
        let joined = member.filter(|_| state.options.presence);
        if let Some(member) = joined {
            state.join(member);
        }
        drop(stripe);
        // The position comes from Redis; the client's deliveries are held
        // back until it does.
        let wants = Wants {
            since: since.cloned(),
            replay_limit,
            members: subscription.members,
            newest: subscription.newest,
        };
        let job = Job::Subscribe { channel: channel.clone(), wants, reply };
        if let Err(error) = inner.submit(job) {
            // Refused at once: as if it had never come.
            let mut stripe = inner.table.lock(name);
            if let Some(state) = stripe.get(name) {
                state.remove_subscriber(who);
                if let Some(member) = joined {
                    state.leave(&member.client);
                }
                if state.subscribers == 0 {
                    stripe.settle(name);
                }
            }
            return Answer::Now(Err(error));
        }
        if first && inner.subscriptions.want(inner.pubsub_channel(name)) {
            inner.submit_internal(Job::Listen(inner.pubsub_channel(name)));
        }
        if first && options.notices.occupancy() {
            inner.submit_internal(Job::Occupy(channel.clone()));
        }
        if let Some(member) = joined {
            inner.submit_internal(Job::PresenceJoin {
                channel: channel.clone(),
                member: member.clone(),
            });
        }
        Answer::Later
    }

    fn unsubscribe(&self, channel: &ChannelName, who: ConnRef, member: Option<&Member>) {
        let inner = &self.inner;
        let name = channel.shared();
        let mut stripe = inner.table.lock(name);
        let Some(state) = stripe.get(name) else { return };
        state.remove_subscriber(who);
        let removed = member.and_then(|member| state.leave(&member.client)).map(|(left, _)| left);
        let last = state.subscribers == 0;
        let occupancy = state.options.notices.occupancy();
        if last {
            stripe.settle(name);
        }
        drop(stripe);
        if let Some(member) = removed {
            // Every node's subscribers hear it through Redis.
            inner.submit_internal(Job::PresenceLeave { channel: channel.clone(), member });
        }
        if last && occupancy {
            inner.submit_internal(Job::Vacate(channel.clone()));
        }
        if last && inner.subscriptions.unwant(&inner.pubsub_channel(name)) {
            inner.submit_internal(Job::Unlisten(inner.pubsub_channel(name)));
        }
    }

    fn relay(
        &self,
        channel: &ChannelName,
        text: &[u8],
        exclude: Option<&str>,
    ) -> Result<(), BrokerError> {
        self.inner.submit(Job::Relay {
            channel: channel.clone(),
            text: Bytes::copy_from_slice(text),
            exclude: exclude.map(str::to_string),
        })
    }

    fn notify(&self, notice: Notice) {
        self.inner.submit_internal(Job::Notice(Box::new(notice)));
    }

    fn notice_feed(&self, scope: &str, reader: &str) -> Box<dyn NoticeFeed> {
        Box::new(feed::RedisFeed::new(self.inner.clone(), scope, reader))
    }

    fn presence(&self, channel: &ChannelName, reply: ReplyTo) -> Answer<Vec<Member>> {
        match self.inner.table.options(channel) {
            Err(error) => Answer::Now(Err(error)),
            Ok(options) if !options.presence => Answer::Now(Err(BrokerError::PresenceOff)),
            Ok(_) => match self.inner.submit(Job::Presence { channel: channel.clone(), reply }) {
                Ok(()) => Answer::Later,
                Err(error) => Answer::Now(Err(error)),
            },
        }
    }

    fn history(
        &self,
        channel: &ChannelName,
        since: Option<&Since>,
        limit: usize,
        reply: ReplyTo,
    ) -> Answer<HistoryPage> {
        match self.inner.table.options(channel) {
            Err(error) => Answer::Now(Err(error)),
            Ok(options) if options.history_size == 0 => Answer::Now(Err(BrokerError::HistoryOff)),
            Ok(_) => {
                let job =
                    Job::History { channel: channel.clone(), since: since.cloned(), limit, reply };
                match self.inner.submit(job) {
                    Ok(()) => Answer::Later,
                    Err(error) => Answer::Now(Err(error)),
                }
            }
        }
    }

    fn act_on_user(&self, user: Arc<str>, action: UserAction, reply: ReplyTo) -> Answer<usize> {
        match self.inner.submit(Job::UserCall { user, action, reply }) {
            Ok(()) => Answer::Later,
            Err(error) => Answer::Now(Err(error)),
        }
    }

    fn subscribed_channels(&self, prefix: &str) -> Vec<(Arc<str>, u32)> {
        self.inner.table.subscribed_channels(prefix)
    }

    fn channel_count(&self) -> usize {
        self.inner.table.channel_count()
    }

    fn sweep(&self, shard: usize, shards: usize) {
        self.inner.table.sweep(shard, shards);
    }

    fn health(&self) -> Health {
        Health {
            name: "redis",
            up: Some(self.inner.up.load(Ordering::Acquire)),
            refused: self.inner.refused.load(Ordering::Relaxed),
            notices_dropped: self.inner.notices_dropped.load(Ordering::Relaxed),
            store: None,
        }
    }

    fn stop(&self) {
        self.inner.stop.store(true, Ordering::Release);
        self.inner.subscriptions.close();
    }
}

/// Sends `answer` to `reply` through the host.
fn answer(inner: &Inner, reply: ReplyTo, answer: EngineAnswer) {
    inner.host.answer(reply, answer);
}

/// A presence change from Redis for this node's subscribers of
/// `channel`, but that client.
fn deliver_presence(
    inner: &Inner,
    channel: &str,
    (joined, user_changed): (bool, bool),
    member: Member,
    exclude: Option<ConnRef>,
) {
    inner.deliver(channel, |name| {
        (Event::Presence(PresenceChange::new(joined, name, member, user_changed)), exclude)
    });
}

/// The lock of a mutex whose holder panicked is still usable: every
/// critical section here leaves the data consistent.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
