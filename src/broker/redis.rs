//! The Redis engine: offsets, history and fan-out between nodes kept in Redis, reached only from engine threads, with results handed back through shard inboxes.
//!
//! Two threads per node. The command thread owns one Redis connection and
//! runs jobs (a publication is one Lua script: next offset, history,
//! `PUBLISH`, atomically); the pub/sub thread owns one subscriber connection
//! and hands every publication of a channel this node has subscribers for
//! to the broker, which fans it out to its shards in offset order. Both
//! reconnect with backoff. No shard ever waits for either.

use super::channel::ChannelName;
use super::{ConnRef, Member, Since};
use crate::api::{TaskReply, UserAction};
use crate::conn::client::parse_client_id;
use crate::conn::millis;
use crate::server::Shared;
use crate::shard::inbox::Work;
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

/// First wait before reconnecting to Redis; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long one Redis call may take before the connection counts as lost.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a subscribe waits for the node's Redis subscription.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(2);
/// How long a channel without history keeps its epoch and offset in Redis
/// after its last publication or subscription.
const IDLE_CHANNEL_TTL_MS: u64 = 24 * 3600 * 1000;
/// How long a presence entry lives in Redis without being refreshed: a node
/// that dies without cleaning up leaves entries that go after this.
pub const PRESENCE_TTL: Duration = Duration::from_secs(60);
/// How often each node refreshes its clients' presence entries.
const PRESENCE_REFRESH: Duration = Duration::from_secs(20);
/// How long a disconnect or unsubscribe waits for every node's count; past
/// it, the answer counts the nodes that reported.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);

/// A publication: next offset, history, and `PUBLISH` to the nodes.
/// KEYS: meta hash, history stream. ARGV: data, history size, history TTL
/// in ms, epoch for a new channel, pub/sub channel, exclude, idle TTL in ms.
const PUBLISH_SCRIPT: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[4]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'top', 0)
end
local offset = redis.call('HINCRBY', KEYS[1], 'top', 1)
local size = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
if size > 0 then
  redis.call('XADD', KEYS[2], '*', 'o', offset, 'd', ARGV[1], 'x', ARGV[6])
  redis.call('XTRIM', KEYS[2], 'MAXLEN', size)
  local now = redis.call('TIME')
  local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  redis.call('XTRIM', KEYS[2], 'MINID', now_ms - ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
  redis.call('PEXPIRE', KEYS[1], ttl)
else
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[7]))
end
redis.call('PUBLISH', ARGV[5], epoch .. ':' .. offset .. ':' .. ARGV[6] .. ':' .. ARGV[1])
return {epoch, offset}
";

/// A channel's position, and what history holds after a client's position.
/// KEYS: meta hash, history stream. ARGV: epoch for a new channel, since
/// epoch (empty: none), since offset, TTL in ms to keep the channel for.
/// Returns `{epoch, top}` without a position; with one,
/// `{epoch, top, recovered, offset1, data1, ...}`.
const POSITION_SCRIPT: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local top = 0
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'top', 0)
else
  top = tonumber(redis.call('HGET', KEYS[1], 'top'))
end
local keep = tonumber(ARGV[4])
if redis.call('PTTL', KEYS[1]) < keep then
  redis.call('PEXPIRE', KEYS[1], keep)
end
if ARGV[2] == '' then
  return {epoch, top}
end
local since = tonumber(ARGV[3])
if (ARGV[2] ~= epoch and since ~= 0) or since > top then
  return {epoch, top, 0}
end
if since == top then
  return {epoch, top, 1}
end
local out = {epoch, top, 1}
local first = true
for _, entry in ipairs(redis.call('XRANGE', KEYS[2], '-', '+')) do
  local offset = tonumber(entry[2][2])
  if offset > since then
    if first and offset > since + 1 then
      return {epoch, top, 0}
    end
    first = false
    table.insert(out, entry[2][2])
    table.insert(out, entry[2][4])
  end
end
if first then
  return {epoch, top, 0}
end
return out
";

/// Where an answer goes.
#[derive(Debug, Clone, Copy)]
pub enum ReplyTo {
    /// A server API request on this connection: `Work::Answer`.
    Api(ConnRef),
    /// A `/ws` client's command with this id: `Work::ClientReply`.
    Client {
        /// The client.
        to: ConnRef,
        /// The command's id.
        id: Option<u64>,
    },
}

/// Work for the command thread.
#[derive(Debug)]
pub enum Job {
    /// Publish `data` to each of `channels` (one for `publish`, several for
    /// `broadcast`: all are answered together).
    Publish {
        /// The channels.
        channels: Vec<ChannelName>,
        /// Raw JSON.
        data: Bytes,
        /// The client id of a connection that must not get it (on any node).
        exclude: Option<String>,
        /// Where the answer goes.
        reply: ReplyTo,
    },
    /// A `/ws` subscribe: the channel's position in Redis (after this node's
    /// subscription is confirmed) and what the client missed.
    Subscribe {
        /// The channel.
        channel: ChannelName,
        /// The client.
        who: ConnRef,
        /// The command's id.
        id: Option<u64>,
        /// The client's position, if it has one.
        since: Option<Since>,
        /// Most bytes to replay.
        replay_limit: usize,
    },
    /// A client entered a channel's presence (and `join` goes to the others).
    PresenceJoin {
        /// The channel.
        channel: ChannelName,
        /// The client and its user.
        member: Member,
        /// Push `join` to the channel's other subscribers.
        announce: bool,
    },
    /// A client left a channel's presence (and `leave` goes to the others).
    PresenceLeave {
        /// The channel.
        channel: ChannelName,
        /// The client and its user.
        member: Member,
        /// Push `leave` to the channel's other subscribers.
        announce: bool,
    },
    /// The channel's presence on every node.
    Presence {
        /// The channel.
        channel: ChannelName,
        /// Where the answer goes.
        reply: ReplyTo,
    },
    /// `disconnect` or `unsubscribe` on every node: published on the control
    /// channel; the answer goes to `to` when every node reported its count.
    UserCall {
        /// The user.
        user: Arc<str>,
        /// What to do.
        action: UserAction,
        /// The API request.
        to: ConnRef,
    },
    /// This node's count for another node's `UserCall`.
    ControlReply {
        /// The node that asked.
        origin: String,
        /// Its request id.
        id: u64,
        /// Connections acted on here.
        count: usize,
    },
    /// A channel's history (server API or `/ws`).
    History {
        /// The channel.
        channel: ChannelName,
        /// After this position.
        since: Option<Since>,
        /// At most this many.
        limit: usize,
        /// Where the answer goes.
        reply: ReplyTo,
    },
}

/// The outcome of a subscribe, for the client's shard.
#[derive(Debug)]
pub struct SubscribeOutcome {
    /// The channel's epoch in Redis.
    pub epoch: String,
    /// Its newest offset.
    pub top: u64,
    /// With a position: whether everything after it is replayed, and the
    /// `(offset, message frame)` to replay, oldest first.
    pub recovery: Option<(bool, Vec<(u64, Bytes)>)>,
}

/// A `UserCall` waiting for the nodes' counts.
#[derive(Debug)]
struct PendingCall {
    to: ConnRef,
    action: UserAction,
    /// Nodes that received the call (known once `PUBLISH` answered).
    expected: Option<u64>,
    reported: u64,
    total: usize,
    deadline: Instant,
}

/// The node's connection to Redis.
#[derive(Debug)]
pub struct RedisEngine {
    client: redis::Client,
    prefix: String,
    node: Arc<str>,
    calls: Mutex<HashMap<u64, PendingCall>>,
    next_call: std::sync::atomic::AtomicU64,
    jobs: Mutex<Sender<Job>>,
    up: AtomicBool,
    subscriptions: Arc<Subscriptions>,
    stop: AtomicBool,
}

/// The Redis channels this node wants, and those Redis confirmed.
#[derive(Debug, Default)]
struct Subscriptions {
    state: Mutex<SubscriptionState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct SubscriptionState {
    wanted: HashSet<String>,
    confirmed: HashSet<String>,
    /// Where SUBSCRIBE and UNSUBSCRIBE are written (the pub/sub thread reads).
    writer: Option<TcpStream>,
}

impl RedisEngine {
    /// Connects lazily: threads start now, and reconnect until Redis answers.
    pub fn start(shared: &Arc<Shared>) -> Result<Arc<RedisEngine>, String> {
        let client = redis::Client::open(shared.config.redis_url.as_str())
            .map_err(|error| format!("redis_url: {error}"))?;
        let (send, receive) = mpsc::channel();
        let engine = Arc::new(RedisEngine {
            client,
            prefix: shared.config.redis_prefix.clone(),
            node: shared.node.clone(),
            calls: Mutex::default(),
            next_call: std::sync::atomic::AtomicU64::new(1),
            jobs: Mutex::new(send),
            up: AtomicBool::new(false),
            subscriptions: Arc::default(),
            stop: AtomicBool::new(false),
        });
        {
            // Every node listens for calls on users' connections, and for
            // the counts answering its own.
            let mut state =
                engine.subscriptions.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.wanted.insert(engine.control_channel());
            state.wanted.insert(engine.reply_channel(&engine.node));
        }
        let weak = Arc::downgrade(shared);
        let commands = engine.clone();
        std::thread::Builder::new()
            .name("herald-redis-commands".into())
            .spawn(move || run_commands(&commands, &weak, &receive))
            .map_err(|e| e.to_string())?;
        let weak = Arc::downgrade(shared);
        let pubsub = engine.clone();
        std::thread::Builder::new()
            .name("herald-redis-pubsub".into())
            .spawn(move || run_pubsub(&pubsub, &weak))
            .map_err(|e| e.to_string())?;
        Ok(engine)
    }

    /// Whether the command connection is up.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Stops the threads (at server shutdown).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let mut state = self.subscriptions.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(writer) = state.writer.take() {
            let _ = writer.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Hands a job to the command thread.
    pub fn submit(&self, job: Job) {
        let jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = jobs.send(job);
    }

    /// The node has its first local subscriber of `channel`: subscribe in Redis.
    pub fn subscribe(&self, channel: &str) {
        let name = self.pubsub_channel(channel);
        let mut state = self.subscriptions.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.wanted.insert(name.clone())
            && let Some(writer) = &mut state.writer
        {
            let _ = writer.write_all(&redis::cmd("SUBSCRIBE").arg(&name).get_packed_command());
        }
    }

    /// The node's last local subscriber of `channel` left.
    pub fn unsubscribe(&self, channel: &str) {
        let name = self.pubsub_channel(channel);
        let mut state = self.subscriptions.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.wanted.remove(&name) {
            state.confirmed.remove(&name);
            if let Some(writer) = &mut state.writer {
                let _ =
                    writer.write_all(&redis::cmd("UNSUBSCRIBE").arg(&name).get_packed_command());
            }
        }
    }

    fn pubsub_channel(&self, channel: &str) -> String {
        format!("{}:pub:{channel}", self.prefix)
    }

    fn control_channel(&self) -> String {
        format!("{}:ctl", self.prefix)
    }

    fn reply_channel(&self, node: &str) -> String {
        format!("{}:ctl:{node}", self.prefix)
    }

    /// A node's count for call `id` arrived; answers when all did.
    fn count_reply(&self, shared: &Shared, id: u64, count: usize) {
        let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(call) = calls.get_mut(&id) else { return };
        call.reported += 1;
        call.total += count;
        if call.expected.is_some_and(|expected| call.reported >= expected)
            && let Some(call) = calls.remove(&id)
        {
            answer_call(shared, &call);
        }
    }

    /// Answers calls whose nodes did not all report in time.
    fn expire_calls(&self, shared: &Shared) {
        let now = Instant::now();
        let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        let late: Vec<u64> =
            calls.iter().filter(|(_, call)| call.deadline <= now).map(|(id, _)| *id).collect();
        for id in late {
            if let Some(call) = calls.remove(&id) {
                log::warn!(
                    "redis engine: {} of {:?} nodes reported in time",
                    call.reported,
                    call.expected
                );
                answer_call(shared, &call);
            }
        }
    }

    fn presence_keys(&self, channel: &str) -> (String, String) {
        (format!("{}:pr:{channel}", self.prefix), format!("{}:prz:{channel}", self.prefix))
    }

    fn keys(&self, channel: &str) -> (String, String) {
        (format!("{}:ch:{channel}:m", self.prefix), format!("{}:ch:{channel}:h", self.prefix))
    }

    /// Waits until Redis confirmed the node's subscription to `channel`.
    fn wait_subscribed(&self, channel: &str) -> bool {
        let name = self.pubsub_channel(channel);
        let deadline = Instant::now() + SUBSCRIBE_WAIT;
        let mut state = self.subscriptions.state.lock().unwrap_or_else(PoisonError::into_inner);
        while !state.confirmed.contains(&name) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !state.wanted.contains(&name) {
                return false;
            }
            state = self
                .subscriptions
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }
}

/// Waits `backoff` (or less if the engine stops) and doubles it.
fn back_off(engine: &RedisEngine, backoff: &mut Duration) {
    let until = Instant::now() + *backoff;
    while Instant::now() < until && !engine.stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(20).min(*backoff));
    }
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
}

fn connect(engine: &RedisEngine) -> redis::RedisResult<redis::Connection> {
    let connection = engine.client.get_connection_with_timeout(CALL_TIMEOUT)?;
    connection.set_read_timeout(Some(CALL_TIMEOUT))?;
    connection.set_write_timeout(Some(CALL_TIMEOUT))?;
    Ok(connection)
}

fn run_commands(engine: &Arc<RedisEngine>, shared: &Weak<Shared>, jobs: &Receiver<Job>) {
    let publish = redis::Script::new(PUBLISH_SCRIPT);
    let position = redis::Script::new(POSITION_SCRIPT);
    let mut connection: Option<redis::Connection> = None;
    let mut backoff = MIN_BACKOFF;
    let mut next_attempt = Instant::now();
    let mut next_refresh = Instant::now() + PRESENCE_REFRESH;
    while !engine.stop.load(Ordering::Acquire) {
        if Instant::now() >= next_refresh {
            next_refresh = Instant::now() + PRESENCE_REFRESH;
            if let (Some(con), Some(shared)) = (&mut connection, shared.upgrade())
                && let Err(error) = refresh_presence(engine, &shared, con)
            {
                log::warn!("redis engine: presence refresh failed: {error}");
            }
        }
        if connection.is_none() && Instant::now() >= next_attempt {
            match connect(engine) {
                Ok(connected) => {
                    log::info!("redis engine: connected");
                    connection = Some(connected);
                    engine.up.store(true, Ordering::Release);
                    backoff = MIN_BACKOFF;
                }
                Err(error) => {
                    if engine.up.swap(false, Ordering::AcqRel) || backoff == MIN_BACKOFF {
                        log::warn!("redis engine: cannot connect: {error}");
                    }
                    next_attempt = Instant::now() + backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        if let Some(shared) = shared.upgrade() {
            engine.expire_calls(&shared);
        }
        let job = match jobs.recv_timeout(Duration::from_millis(50)) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let Some(shared) = shared.upgrade() else { return };
        let outcome = match &mut connection {
            Some(con) => run_job(engine, &shared, con, &job, &publish, &position),
            None => Err(JobError::Down),
        };
        if let Err(error) = outcome {
            if let JobError::Lost(cause) = &error {
                log::warn!("redis engine: connection lost: {cause}");
                connection = None;
                engine.up.store(false, Ordering::Release);
                next_attempt = Instant::now();
            }
            fail_job(&shared, job, &error);
        }
    }
}

#[derive(Debug)]
enum JobError {
    /// No connection to Redis.
    Down,
    /// The connection failed during the job.
    Lost(redis::RedisError),
    /// Redis answered with an error, or the node is not subscribed in time.
    Failed(String),
}

impl From<redis::RedisError> for JobError {
    fn from(error: redis::RedisError) -> Self {
        if error.is_io_error() || error.is_connection_dropped() || error.is_timeout() {
            JobError::Lost(error)
        } else {
            JobError::Failed(error.to_string())
        }
    }
}

fn run_job(
    engine: &RedisEngine,
    shared: &Shared,
    con: &mut redis::Connection,
    job: &Job,
    publish: &redis::Script,
    position: &redis::Script,
) -> Result<(), JobError> {
    match job {
        Job::Publish { channels, data, exclude, reply } => {
            let exclude = exclude.as_deref().unwrap_or_default();
            let mut results = Vec::with_capacity(channels.len());
            for channel in channels {
                let options = shared.broker.options(channel).cloned().unwrap_or_default();
                let (meta, history) = engine.keys(channel.as_str());
                let ttl_ms = options.history_ttl_secs.saturating_mul(1000).max(1);
                let (epoch, offset): (String, u64) = publish
                    .key(meta)
                    .key(history)
                    .arg(data.as_ref())
                    .arg(options.history_size)
                    .arg(ttl_ms)
                    .arg(shared.broker.next_epoch().as_str())
                    .arg(engine.pubsub_channel(channel.as_str()))
                    .arg(exclude)
                    .arg(IDLE_CHANNEL_TTL_MS)
                    .invoke(con)?;
                results.push((channel, epoch, offset));
            }
            match *reply {
                ReplyTo::Api(to) => {
                    let body = if let [(_, epoch, offset)] = results.as_slice() {
                        format!(r#"{{"epoch":"{epoch}","offset":{offset}}}"#)
                    } else {
                        let items: Vec<String> = results
                            .iter()
                            .map(|(channel, epoch, offset)| {
                                format!(
                                    r#"{{"channel":"{}","epoch":"{epoch}","offset":{offset}}}"#,
                                    channel.as_str()
                                )
                            })
                            .collect();
                        format!(r#"{{"results":[{}]}}"#, items.join(","))
                    };
                    shared.send(
                        usize::from(to.shard),
                        Work::Answer { to, status: 200, body: body.into_bytes() },
                    );
                }
                ReplyTo::Client { to, id } => {
                    if let Some((channel, epoch, offset)) = results.first() {
                        let reply =
                            crate::protocol::published_text(id, channel.as_str(), epoch, *offset);
                        shared.send(usize::from(to.shard), Work::ClientReply { to, text: reply });
                    }
                }
            }
            Ok(())
        }
        Job::Subscribe { channel, who, id, since, replay_limit } => {
            if !engine.wait_subscribed(channel.as_str()) {
                return Err(JobError::Failed(
                    "the node's Redis subscription was not confirmed".into(),
                ));
            }
            let options = shared.broker.options(channel).cloned().unwrap_or_default();
            let keep_ms = if options.history_size > 0 {
                options.history_ttl_secs.saturating_mul(1000)
            } else {
                IDLE_CHANNEL_TTL_MS
            };
            let (meta, history) = engine.keys(channel.as_str());
            let values: Vec<redis::Value> = position
                .key(meta)
                .key(history)
                .arg(shared.broker.next_epoch().as_str())
                .arg(since.as_ref().map_or("", |s| s.epoch.as_str()))
                .arg(since.as_ref().map_or(0, |s| s.offset))
                .arg(keep_ms.max(1))
                .invoke(con)?;
            let outcome = parse_position(channel.as_str(), &values, since.is_some(), *replay_limit)
                .ok_or_else(|| JobError::Failed("unexpected answer from Redis".into()))?;
            shared.broker.note_remote_epoch(channel.as_str(), &outcome.epoch);
            shared.send(
                usize::from(who.shard),
                Work::Subscribed {
                    to: *who,
                    id: *id,
                    channel: channel.clone(),
                    outcome: Ok(outcome),
                },
            );
            Ok(())
        }
        Job::PresenceJoin { channel, member, announce } => {
            let mut pipe = redis::pipe();
            pipe.atomic();
            add_presence(
                &mut pipe,
                engine,
                channel.as_str(),
                member,
                now_ms() + millis(PRESENCE_TTL),
            );
            keep_presence(&mut pipe, engine, channel.as_str());
            if *announce {
                announce_presence(&mut pipe, engine, "join", channel.as_str(), member);
            }
            pipe.query::<()>(con)?;
            Ok(())
        }
        Job::PresenceLeave { channel, member, announce } => {
            let (hash, scores) = engine.presence_keys(channel.as_str());
            let mut pipe = redis::pipe();
            pipe.atomic()
                .cmd("HDEL")
                .arg(&hash)
                .arg(member.client.as_ref())
                .ignore()
                .cmd("ZREM")
                .arg(&scores)
                .arg(member.client.as_ref())
                .ignore();
            if *announce {
                announce_presence(&mut pipe, engine, "leave", channel.as_str(), member);
            }
            pipe.query::<()>(con)?;
            Ok(())
        }
        Job::Presence { channel, reply } => {
            let (hash, scores) = engine.presence_keys(channel.as_str());
            let now = now_ms();
            // Entries of nodes that died without cleaning up have expired.
            let expired: Vec<String> =
                redis::cmd("ZRANGEBYSCORE").arg(&scores).arg("-inf").arg(now).query(con)?;
            if !expired.is_empty() {
                redis::pipe()
                    .cmd("ZREM")
                    .arg(&scores)
                    .arg(&expired)
                    .ignore()
                    .cmd("HDEL")
                    .arg(&hash)
                    .arg(&expired)
                    .ignore()
                    .query::<()>(con)?;
            }
            let clients: Vec<String> =
                redis::cmd("ZRANGEBYSCORE").arg(&scores).arg(now).arg("+inf").query(con)?;
            let users: Vec<Option<String>> = if clients.is_empty() {
                Vec::new()
            } else {
                redis::cmd("HMGET").arg(&hash).arg(&clients).query(con)?
            };
            let members: Vec<Member> = clients
                .iter()
                .zip(users)
                .filter_map(|(client, user)| {
                    Some(Member {
                        client: Arc::from(client.as_str()),
                        user: Arc::from(user?.as_str()),
                    })
                })
                .collect();
            match *reply {
                ReplyTo::Api(to) => {
                    let list: Vec<serde_json::Value> = members
                        .iter()
                        .map(|m| serde_json::json!({"client": &*m.client, "user": &*m.user}))
                        .collect();
                    let body = serde_json::json!({"channel": channel.as_str(), "clients": list});
                    shared.send(
                        usize::from(to.shard),
                        Work::Answer { to, status: 200, body: body.to_string().into_bytes() },
                    );
                }
                ReplyTo::Client { to, id } => {
                    let text = crate::protocol::presence(id, channel.as_str(), &members);
                    let text = String::from_utf8(text).unwrap_or_default();
                    shared.send(usize::from(to.shard), Work::ClientReply { to, text });
                }
            }
            Ok(())
        }
        Job::UserCall { user, action, to } => {
            let id = engine.next_call.fetch_add(1, Ordering::Relaxed);
            let (action_name, channel) = match action {
                UserAction::Disconnect => ("disconnect", None),
                UserAction::Unsubscribe(channel) => ("unsubscribe", Some(channel.as_str())),
            };
            let message = serde_json::json!({
                "origin": &*engine.node, "id": id, "user": &**user,
                "action": action_name, "channel": channel,
            });
            engine.calls.lock().unwrap_or_else(PoisonError::into_inner).insert(
                id,
                PendingCall {
                    to: *to,
                    action: action.clone(),
                    expected: None,
                    reported: 0,
                    total: 0,
                    deadline: Instant::now() + CONTROL_TIMEOUT,
                },
            );
            let receivers: u64 = match redis::cmd("PUBLISH")
                .arg(engine.control_channel())
                .arg(message.to_string())
                .query(con)
            {
                Ok(receivers) => receivers,
                Err(error) => {
                    engine.calls.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
                    return Err(error.into());
                }
            };
            let mut calls = engine.calls.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(call) = calls.get_mut(&id) {
                call.expected = Some(receivers);
                if call.reported >= receivers
                    && let Some(call) = calls.remove(&id)
                {
                    answer_call(shared, &call);
                }
            }
            Ok(())
        }
        Job::ControlReply { origin, id, count } => {
            let message = serde_json::json!({"id": id, "count": count});
            redis::cmd("PUBLISH")
                .arg(engine.reply_channel(origin))
                .arg(message.to_string())
                .query::<u64>(con)?;
            Ok(())
        }
        Job::History { channel, since, limit, reply } => {
            let (meta, history) = engine.keys(channel.as_str());
            let (position, entries): ((Option<String>, Option<u64>), Vec<redis::Value>) =
                redis::pipe()
                    .atomic()
                    .cmd("HMGET")
                    .arg(&meta)
                    .arg("epoch")
                    .arg("top")
                    .cmd("XRANGE")
                    .arg(&history)
                    .arg("-")
                    .arg("+")
                    .query(con)?;
            let epoch =
                position.0.unwrap_or_else(|| shared.broker.next_epoch().as_str().to_string());
            // With the channel's epoch, only what follows the position;
            // otherwise all of history.
            let after = match since {
                Some(since) if since.epoch == epoch => since.offset,
                _ => 0,
            };
            let publications = entries
                .iter()
                .filter_map(stream_entry)
                .filter(|(offset, _, _)| *offset > after)
                .take(*limit)
                .map(|(offset, data, _)| (offset, Bytes::copy_from_slice(data)))
                .collect();
            let page = super::HistoryPage {
                epoch: super::Epoch::parse(&epoch).unwrap_or(super::Epoch::from_u32(0)),
                offset: position.1.unwrap_or(0),
                publications,
            };
            match *reply {
                ReplyTo::Api(to) => {
                    let body = crate::api::history_body(channel.as_str(), &page);
                    shared.send(usize::from(to.shard), Work::Answer { to, status: 200, body });
                }
                ReplyTo::Client { to, id } => {
                    let text = crate::protocol::history(id, channel.as_str(), &page);
                    let text = String::from_utf8(text).unwrap_or_default();
                    shared.send(usize::from(to.shard), Work::ClientReply { to, text });
                }
            }
            Ok(())
        }
    }
}

/// Tells whoever waits for `job` that it failed.
fn fail_job(shared: &Shared, job: Job, error: &JobError) {
    let message = match error {
        JobError::Down | JobError::Lost(_) => {
            "the engine (Redis) is unavailable, retry".to_string()
        }
        JobError::Failed(what) => format!("the engine failed: {what}"),
    };
    match job {
        Job::Publish { reply, .. } | Job::History { reply, .. } | Job::Presence { reply, .. } => {
            send_unavailable(shared, reply, message);
        }
        Job::UserCall { to, .. } => send_unavailable(shared, ReplyTo::Api(to), message),
        Job::Subscribe { channel, who, id, .. } => {
            shared.send(
                usize::from(who.shard),
                Work::Subscribed { to: who, id, channel, outcome: Err(message) },
            );
        }
        // Presence entries are refreshed from the node's own table every
        // PRESENCE_REFRESH: a join lost now is written then; a leave lost
        // now expires with PRESENCE_TTL.
        Job::PresenceJoin { .. } | Job::PresenceLeave { .. } => {}
        // The asking node answers with the counts it got at its timeout.
        Job::ControlReply { .. } => {}
    }
}

/// `503 unavailable` to an API request, an `unavailable` error reply to a
/// `/ws` command.
fn send_unavailable(shared: &Shared, reply: ReplyTo, message: String) {
    match reply {
        ReplyTo::Api(to) => {
            let body = serde_json::json!({"error": {"code": "unavailable", "message": message}});
            shared.send(
                usize::from(to.shard),
                Work::Answer { to, status: 503, body: body.to_string().into_bytes() },
            );
        }
        ReplyTo::Client { to, id } => {
            let error = crate::protocol::CommandError::new(
                id,
                crate::protocol::ErrorCode::Unavailable,
                message,
            );
            let text = String::from_utf8(crate::protocol::error(&error)).unwrap_or_default();
            shared.send(usize::from(to.shard), Work::ClientReply { to, text });
        }
    }
}

/// `(offset, data, exclude)` of a history stream entry
/// (`[id, ["o", N, "d", DATA, "x", CLIENT]]`).
fn stream_entry(entry: &redis::Value) -> Option<(u64, &[u8], &[u8])> {
    let redis::Value::Array(parts) = entry else { return None };
    let Some(redis::Value::Array(fields)) = parts.get(1) else { return None };
    let offset = number(fields.get(1)?)?;
    let data = bytes_of(fields.get(3)?)?;
    let exclude = fields.get(5).and_then(bytes_of).unwrap_or_default();
    Some((offset, data, exclude))
}

fn answer_call(shared: &Shared, call: &PendingCall) {
    let body = crate::api::user_answer(&call.action, call.total);
    shared.send(
        usize::from(call.to.shard),
        Work::Answer { to: call.to, status: 200, body: body.into_bytes() },
    );
}

/// A call from the control channel: carried out on this node's shards,
/// the count reported back to the node that asked.
fn on_control(shared: &Shared, payload: &[u8]) {
    #[derive(serde::Deserialize)]
    struct Call {
        origin: String,
        id: u64,
        user: String,
        action: String,
        channel: Option<String>,
    }
    let Ok(call) = serde_json::from_slice::<Call>(payload) else { return };
    let action = match (call.action.as_str(), call.channel) {
        ("disconnect", _) => UserAction::Disconnect,
        ("unsubscribe", Some(channel)) => match ChannelName::parse(&channel) {
            Ok(channel) => UserAction::Unsubscribe(channel),
            Err(_) => return,
        },
        _ => return,
    };
    crate::api::fan_out_to_shards(
        Arc::from(call.user),
        action,
        TaskReply::Node { origin: call.origin, id: call.id },
        shared,
    );
}

/// Writes this node's presence entries again with a fresh expiry.
fn refresh_presence(
    engine: &RedisEngine,
    shared: &Shared,
    con: &mut redis::Connection,
) -> redis::RedisResult<()> {
    let entries = shared.broker.local_presence();
    if entries.is_empty() {
        return Ok(());
    }
    let expires = now_ms() + millis(PRESENCE_TTL);
    let mut pipe = redis::pipe();
    for (channel, members) in &entries {
        for member in members {
            add_presence(&mut pipe, engine, channel, member, expires);
        }
        keep_presence(&mut pipe, engine, channel);
    }
    pipe.query(con)
}

/// Writes (or renews) `member`'s presence entry in `channel`, expiring at
/// `expires` (Unix milliseconds).
fn add_presence(
    pipe: &mut redis::Pipeline,
    engine: &RedisEngine,
    channel: &str,
    member: &Member,
    expires: u64,
) {
    let (hash, scores) = engine.presence_keys(channel);
    pipe.cmd("HSET").arg(&hash).arg(member.client.as_ref()).arg(member.user.as_ref()).ignore();
    pipe.cmd("ZADD").arg(&scores).arg(expires).arg(member.client.as_ref()).ignore();
}

/// Keeps a channel's presence keys for two presence lifetimes.
fn keep_presence(pipe: &mut redis::Pipeline, engine: &RedisEngine, channel: &str) {
    let (hash, scores) = engine.presence_keys(channel);
    let keep_ms = 2 * millis(PRESENCE_TTL);
    pipe.cmd("PEXPIRE").arg(&hash).arg(keep_ms).ignore();
    pipe.cmd("PEXPIRE").arg(&scores).arg(keep_ms).ignore();
}

/// Publishes a `join` or `leave` for every node's subscribers of `channel`
/// (`J:CLIENT:JSON`: the client is left out on its own node).
fn announce_presence(
    pipe: &mut redis::Pipeline,
    engine: &RedisEngine,
    op: &str,
    channel: &str,
    member: &Member,
) {
    let event = super::presence_event_json(op, channel, member);
    pipe.cmd("PUBLISH")
        .arg(engine.pubsub_channel(channel))
        .arg(format!("J:{}:{event}", member.client))
        .ignore();
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, millis)
}

fn text(value: &redis::Value) -> Option<String> {
    match value {
        redis::Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        redis::Value::SimpleString(text) => Some(text.clone()),
        redis::Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn number(value: &redis::Value) -> Option<u64> {
    match value {
        redis::Value::Int(n) => u64::try_from(*n).ok(),
        other => text(other)?.parse().ok(),
    }
}

fn bytes_of(value: &redis::Value) -> Option<&[u8]> {
    match value {
        redis::Value::BulkString(bytes) => Some(bytes),
        _ => None,
    }
}

fn parse_position(
    channel: &str,
    values: &[redis::Value],
    with_since: bool,
    replay_limit: usize,
) -> Option<SubscribeOutcome> {
    let epoch = text(values.first()?)?;
    let top = number(values.get(1)?)?;
    if !with_since {
        return Some(SubscribeOutcome { epoch, top, recovery: None });
    }
    let mut recovered = number(values.get(2)?)? == 1;
    let mut missed = Vec::new();
    let mut size = 0usize;
    for pair in values.get(3..)?.chunks(2) {
        let [offset, data] = pair else { return None };
        let offset = number(offset)?;
        let (frame, _) = super::encode_message(channel, offset, bytes_of(data)?);
        size += frame.len();
        if size > replay_limit {
            recovered = false;
            missed.clear();
            break;
        }
        missed.push((offset, frame));
    }
    Some(SubscribeOutcome { epoch, top, recovery: Some((recovered, missed)) })
}

fn run_pubsub(engine: &Arc<RedisEngine>, shared: &Weak<Shared>) {
    let mut backoff = MIN_BACKOFF;
    while !engine.stop.load(Ordering::Acquire) {
        let Some(alive) = shared.upgrade() else { return };
        let node = alive.node.clone();
        drop(alive);
        match open_pubsub(engine) {
            Ok(reader) => {
                log::debug!("redis engine: pub/sub connected");
                backoff = MIN_BACKOFF;
                read_pubsub(engine, shared, &node, reader);
            }
            Err(error) => log::debug!("redis engine: pub/sub connection failed: {error}"),
        }
        let mut state = engine.subscriptions.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.writer = None;
        state.confirmed.clear();
        drop(state);
        back_off(engine, &mut backoff);
    }
}

/// Opens the subscriber connection, authenticates, and subscribes to every
/// channel the node wants.
fn open_pubsub(engine: &RedisEngine) -> std::io::Result<TcpStream> {
    let info = engine.client.get_connection_info();
    let addr = match info.addr() {
        redis::ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
        other => return Err(std::io::Error::other(format!("unsupported Redis address {other}"))),
    };
    let mut stream = std::net::ToSocketAddrs::to_socket_addrs(&addr)?
        .next()
        .map(|addr| TcpStream::connect_timeout(&addr, CALL_TIMEOUT))
        .ok_or_else(|| std::io::Error::other("Redis address resolves to nothing"))??;
    stream.set_nodelay(true)?;
    let settings = info.redis_settings();
    if let Some(password) = settings.password() {
        let mut auth = redis::cmd("AUTH");
        if let Some(user) = settings.username() {
            auth.arg(user);
        }
        stream.write_all(&auth.arg(password).get_packed_command())?;
    }
    let mut state = engine.subscriptions.state.lock().unwrap_or_else(PoisonError::into_inner);
    for name in &state.wanted {
        stream.write_all(&redis::cmd("SUBSCRIBE").arg(name).get_packed_command())?;
    }
    state.writer = Some(stream.try_clone()?);
    Ok(stream)
}

/// Reads until the connection fails: subscription confirmations, and
/// publications handed to the broker.
fn read_pubsub(engine: &RedisEngine, shared: &Weak<Shared>, node: &str, stream: TcpStream) {
    let mut reader = BufReader::new(stream);
    let mut parser = redis::Parser::new();
    // A command connection for reading history when publications were
    // missed (the pub/sub connection itself can only listen).
    let mut catch_up: Option<redis::Connection> = None;
    let prefix = format!("{}:pub:", engine.prefix);
    let control = engine.control_channel();
    let replies = engine.reply_channel(node);
    loop {
        let value = match parser.parse_value(&mut reader) {
            Ok(value) => value,
            Err(error) => {
                if !engine.stop.load(Ordering::Acquire) {
                    log::warn!("redis engine: pub/sub connection lost: {error}");
                }
                return;
            }
        };
        let redis::Value::Array(items) = value else { continue };
        let kind = items.first().and_then(text).unwrap_or_default();
        let name = items.get(1).and_then(text).unwrap_or_default();
        match kind.as_str() {
            "subscribe" => {
                log::debug!("redis engine: subscribed to {name}");
                let mut state =
                    engine.subscriptions.state.lock().unwrap_or_else(PoisonError::into_inner);
                if state.wanted.contains(&name) {
                    state.confirmed.insert(name.clone());
                }
                engine.subscriptions.changed.notify_all();
                drop(state);
                // Subscribed again after a lost connection: what was
                // published meanwhile comes from history, before anything
                // newer is read from this connection.
                if let (Some(channel), Some(shared)) =
                    (name.strip_prefix(&prefix), shared.upgrade())
                    && shared.broker.remote_top(channel).is_some()
                    && !catch_up_to_redis(engine, &shared, &mut catch_up, node, channel)
                {
                    shared.broker.mark_remote_restart(channel);
                }
            }
            "message" if name == control || name == replies => {
                let (Some(shared), Some(payload)) =
                    (shared.upgrade(), items.get(2).and_then(bytes_of))
                else {
                    continue;
                };
                if name == control {
                    on_control(&shared, payload);
                } else if let Ok(reply) = serde_json::from_slice::<serde_json::Value>(payload)
                    && let (Some(id), Some(count)) = (
                        reply.get("id").and_then(serde_json::Value::as_u64),
                        reply.get("count").and_then(serde_json::Value::as_u64),
                    )
                {
                    engine.count_reply(&shared, id, usize::try_from(count).unwrap_or(0));
                }
            }
            "message" => {
                let (Some(channel), Some(payload)) =
                    (name.strip_prefix(&prefix), items.get(2).and_then(bytes_of))
                else {
                    continue;
                };
                let Some(shared) = shared.upgrade() else { return };
                if let Some(event) = payload.strip_prefix(b"J:") {
                    // `J:CLIENT:JSON`: a join or leave, for everyone but that client.
                    let Some(colon) = event.iter().position(|b| *b == b':') else { continue };
                    let (client, json) = event.split_at(colon);
                    let client = std::str::from_utf8(client).unwrap_or_default();
                    let exclude = parse_client_id(node, client);
                    let json = json.get(1..).unwrap_or_default();
                    shared.broker.deliver_presence_remote(channel, exclude, json);
                    continue;
                }
                if let Some((epoch, offset, exclude, data)) = split_payload(payload) {
                    let filled =
                        fill_gap(engine, &shared, &mut catch_up, node, channel, epoch, offset);
                    let exclude = parse_client_id(node, exclude);
                    shared
                        .broker
                        .deliver_from_redis(channel, epoch, offset, exclude, data, !filled);
                }
            }
            _ => {}
        }
    }
}

/// Before publication `offset` of `channel` is delivered: if the node
/// delivered an earlier one of the same epoch and some between were missed
/// (the pub/sub connection was down), delivers them from history, in
/// order. Returns false when history no longer holds them all: subscribers
/// are then told they start over.
fn fill_gap(
    engine: &RedisEngine,
    shared: &Shared,
    catch_up: &mut Option<redis::Connection>,
    node: &str,
    channel: &str,
    epoch: &str,
    offset: u64,
) -> bool {
    let Some((known, top)) = shared.broker.remote_top(channel) else { return true };
    if known.as_str() != epoch || offset <= top + 1 {
        return true;
    }
    log::info!(
        "channel {channel}: publications {} to {} came not through pub/sub; reading history",
        top + 1,
        offset - 1
    );
    if catch_up.is_none() {
        *catch_up = connect(engine).ok();
    }
    let Some(con) = catch_up else { return false };
    let history = engine.keys(channel).1;
    let entries: Vec<redis::Value> =
        match redis::cmd("XRANGE").arg(&history).arg("-").arg("+").query(con) {
            Ok(entries) => entries,
            Err(_) => {
                *catch_up = None;
                return false;
            }
        };
    let mut missed = Vec::new();
    let mut next = top + 1;
    for (entry_offset, data, exclude) in entries.iter().filter_map(stream_entry) {
        if entry_offset < next || entry_offset >= offset {
            continue;
        }
        if entry_offset != next {
            break;
        }
        let exclude = std::str::from_utf8(exclude).unwrap_or_default().to_string();
        missed.push((entry_offset, exclude, data));
        next += 1;
    }
    if next != offset {
        return false;
    }
    for (entry_offset, exclude, data) in missed {
        let exclude = parse_client_id(node, &exclude);
        shared.broker.deliver_remote(channel, epoch, entry_offset, exclude, data);
    }
    true
}

/// After a re-subscription: delivers whatever the node missed of `channel`
/// up to its newest offset in Redis. False when history no longer holds it.
fn catch_up_to_redis(
    engine: &RedisEngine,
    shared: &Shared,
    catch_up: &mut Option<redis::Connection>,
    node: &str,
    channel: &str,
) -> bool {
    if catch_up.is_none() {
        *catch_up = connect(engine).ok();
    }
    let Some(con) = catch_up else { return false };
    let meta = engine.keys(channel).0;
    let position: redis::RedisResult<(Option<String>, Option<u64>)> =
        redis::cmd("HMGET").arg(&meta).arg("epoch").arg("top").query(con);
    match position {
        Ok((Some(epoch), Some(top))) => {
            fill_gap(engine, shared, catch_up, node, channel, &epoch, top + 1)
        }
        // The channel is gone from Redis: its next publication has a new epoch.
        Ok(_) => true,
        Err(_) => {
            *catch_up = None;
            false
        }
    }
}

/// `EPOCH:OFFSET:EXCLUDE:DATA`.
fn split_payload(payload: &[u8]) -> Option<(&str, u64, &str, &[u8])> {
    let mut parts = payload.splitn(4, |b| *b == b':');
    let epoch = std::str::from_utf8(parts.next()?).ok()?;
    let offset = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let exclude = std::str::from_utf8(parts.next()?).ok()?;
    Some((epoch, offset, exclude, parts.next()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_split_at_the_first_three_colons() {
        assert_eq!(
            split_payload(br#"5e0c1a2b:46:n1-0-3-9:{"a":"b:c"}"#),
            Some(("5e0c1a2b", 46, "n1-0-3-9", &br#"{"a":"b:c"}"#[..]))
        );
        assert_eq!(split_payload(b"5e0c1a2b:46::1"), Some(("5e0c1a2b", 46, "", &b"1"[..])));
        assert_eq!(split_payload(b"5e0c1a2b:x::1"), None);
    }
}
