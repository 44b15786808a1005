//! The broker as a library: one `Engine` trait with the memory and Redis engines behind it, and the `Host` each is handed to deliver through.
//!
//! Front ends call an engine on a shard's thread; it answers at once
//! ([`Answer::Now`], the memory engine) or later through the host
//! ([`Answer::Later`], the Redis engine, whose I/O runs on threads of its
//! own behind a bounded queue). Either way the answer is a typed value:
//! engines never format JSON for a front end nor pick an HTTP status.
//! Publications reach the shards as neutral values ([`Delivery`]) whose
//! encodings are built once per node, on first use.

pub mod durable;
pub mod memory;
pub mod notice;
mod publication;
pub mod redis;
mod table;

pub use durable::StoreFigures;
pub use publication::{
    Delivery, Event, Position, PresenceChange, Publication, Recovery, Relayed, Restart,
};

use crate::channel::ChannelName;
use crate::config::{Config, Engine as EngineKind};
use crate::types::{BrokerError, ConnRef, HistoryPage, Member, Published, Since, UserAction};
use notice::{Notice, NoticeFeed};
use std::sync::Arc;

/// An engine's answer: now, or later through [`Host::answer`].
#[derive(Debug)]
pub enum Answer<T> {
    /// Here it is.
    Now(Result<T, BrokerError>),
    /// It will come to the [`ReplyTo`] given with the call.
    Later,
}

/// Where an answer that comes later goes: the connection that asked, and
/// what it needs to know which request it answers (a `/ws` command's id, a
/// stream's channel index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyTo {
    /// The connection.
    pub conn: ConnRef,
    /// Its tag for the request.
    pub id: Option<u64>,
}

/// An answer that came later, typed: each front end writes it in its wire.
#[derive(Debug)]
pub enum EngineAnswer {
    /// A publish or broadcast: where each publication landed.
    Published(Result<Vec<(ChannelName, Published)>, BrokerError>),
    /// A subscribe: the subscriber's position.
    Subscribed(ChannelName, Result<Position, BrokerError>),
    /// A channel's presence.
    Presence(ChannelName, Result<Vec<Member>, BrokerError>),
    /// A page of a channel's history.
    History(ChannelName, Result<HistoryPage, BrokerError>),
    /// A call on a user's connections: how many it acted on.
    Users(Result<usize, BrokerError>),
}

/// One subscriber joining a channel.
#[derive(Debug, Clone, Copy)]
pub struct Subscription<'a> {
    /// The channel.
    pub channel: &'a ChannelName,
    /// The subscriber.
    pub who: ConnRef,
    /// Its presence entry, where the namespace keeps presence.
    pub member: Option<&'a Member>,
    /// The position it recovers from.
    pub since: Option<&'a Since>,
    /// Most bytes of missed publications to replay (more: not recovered).
    pub replay_limit: usize,
    /// Answer with the channel's members ([`Position::members`]).
    pub members: bool,
    /// Answer with the newest publication kept ([`Position::newest`]).
    pub newest: bool,
    /// Refuse the subscriber (`PresenceFull`) if its user would be one more
    /// than this many distinct users in the channel's presence (0: no
    /// limit). The memory engine enforces it exactly; with Redis the
    /// front end checks the member list it gets back.
    pub member_limit: usize,
}

/// What to call with a count once every shard has acted on a user.
pub type Done = Box<dyn FnOnce(usize) + Send>;

/// The node an engine runs in, as the engine sees it: where deliveries and
/// answers go, and how a call reaches one user's connections. The engine is
/// handed it and does not own it.
pub trait Host: Send + Sync + std::fmt::Debug {
    /// Shards on this node.
    fn shards(&self) -> usize;
    /// Queues `delivery` for the subscribers on `shard`.
    fn deliver(&self, shard: usize, delivery: Delivery);
    /// Sends an answer that came later to the connection that asked.
    fn answer(&self, to: ReplyTo, answer: EngineAnswer);
    /// Carries out `action` on `user`'s connections on every shard of this
    /// node, then calls `done` with how many it acted on.
    fn act_on_user(&self, user: Arc<str>, action: UserAction, done: Done);
}

/// How an engine is doing, for `/health`, `/api/info` and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// `memory` or `redis`.
    pub name: &'static str,
    /// Whether what it depends on outside the process is reachable now;
    /// `None` for an engine that depends on nothing outside (memory).
    pub up: Option<bool>,
    /// Calls refused at once because the engine's queue was full.
    pub refused: u64,
    /// Notices dropped because their scope's queue was full.
    pub notices_dropped: u64,
    /// With durable history (`data_dir`): the store's figures.
    pub store: Option<StoreFigures>,
}

/// Channels, offsets, history, presence and delivery between nodes.
pub trait Engine: Send + Sync + std::fmt::Debug {
    /// Publishes `data` (raw JSON, kept byte for byte) to each of `channels`
    /// (more than one: a broadcast, answered together). `exclude` is the
    /// client id of a connection that must not get it, on any node.
    fn publish(
        &self,
        channels: &[ChannelName],
        data: &[u8],
        exclude: Option<&str>,
        reply: ReplyTo,
    ) -> Answer<Vec<(ChannelName, Published)>>;
    /// Adds a subscriber: from the answer on, its shard receives every
    /// publication after the position's offset (or, until a later answer
    /// comes, holds them back).
    fn subscribe(&self, subscription: Subscription<'_>, reply: ReplyTo) -> Answer<Position>;
    /// Removes a subscriber (and its presence entry).
    fn unsubscribe(&self, channel: &ChannelName, who: ConnRef, member: Option<&Member>);
    /// Queues a notice a front end found (a client event, a cache miss)
    /// for its scope's webhooks. Transitions of channels and presence the
    /// engine notices itself, where it sees the whole cluster.
    fn notify(&self, notice: Notice);
    /// Reader `reader` (a webhook's name) of the notices of `scope`.
    fn notice_feed(&self, scope: &str, reader: &str) -> Box<dyn NoticeFeed>;
    /// Hands `text` (one frame's text) to the channel's subscribers on
    /// every node, but `exclude` (a client id): not kept, no offset (a
    /// Pusher client event).
    fn relay(
        &self,
        channel: &ChannelName,
        text: &[u8],
        exclude: Option<&str>,
    ) -> Result<(), BrokerError>;
    /// The channel's members, on every node.
    fn presence(&self, channel: &ChannelName, reply: ReplyTo) -> Answer<Vec<Member>>;
    /// Up to `limit` publications after `since` (all of history when it is
    /// absent or names another epoch), oldest first.
    fn history(
        &self,
        channel: &ChannelName,
        since: Option<&Since>,
        limit: usize,
        reply: ReplyTo,
    ) -> Answer<HistoryPage>;
    /// Carries out `action` on `user`'s connections on every node.
    fn act_on_user(&self, user: Arc<str>, action: UserAction, reply: ReplyTo) -> Answer<usize>;
    /// This node's channels with subscribers whose names start with
    /// `prefix`, with their subscriber counts, in no particular order.
    fn subscribed_channels(&self, prefix: &str) -> Vec<(Arc<str>, u32)>;
    /// Channels this node holds.
    fn channel_count(&self) -> usize;
    /// Frees channels that expired, in the part of the table that belongs
    /// to `shard` of `shards` (each shard calls it on a timer).
    fn sweep(&self, shard: usize, shards: usize);
    /// How the engine is doing.
    fn health(&self) -> Health;
    /// Stops the engine's threads (at shutdown).
    fn stop(&self);
}

/// Starts the engine the configuration names, delivering through `host`.
/// The one place that chooses between them.
pub fn start(
    config: Arc<Config>,
    node: Arc<str>,
    host: Arc<dyn Host>,
) -> Result<Box<dyn Engine>, String> {
    Ok(match config.engine {
        EngineKind::Memory => Box::new(memory::MemoryEngine::start(config, node, host)?),
        EngineKind::Redis => Box::new(redis::RedisEngine::start(config, node, host)?),
    })
}
