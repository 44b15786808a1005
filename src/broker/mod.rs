//! The broker (memory engine): each channel's epoch, offsets and history, its presence, and delivery of publications to the shards with subscribers, in offset order.
//!
//! Channels live in a table striped by the hash of their name; each stripe
//! is a short-held mutex. A publication takes its channel's stripe, gets the
//! next offset, enters history, and is pushed into the inbox of every shard
//! that has subscribers, all before the stripe is released: so every shard
//! receives a channel's publications in offset order, whichever shards
//! their publishers run on. Lock order is always stripe, then inbox.

pub mod channel;
pub mod redis;

use crate::config::{Config, NamespaceOptions};
use crate::conn::Millis;
use crate::conn::websocket::{self, Opcode};
use crate::shard::inbox::{Inbox, Work};
use bytes::{BufMut, Bytes, BytesMut};
use channel::ChannelName;
use std::cmp::Reverse;
use std::collections::hash_map::{Entry, RandomState};
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

/// Stripes of the channel table. More stripes, less contention between
/// publishers on different channels; each costs one mutex and one map.
const STRIPES: usize = 256;
/// Expired channels freed per stripe per sweep, so a sweep stays short.
const SWEEP_BUDGET: usize = 4096;

/// A connection, wherever it lives: shard, slab key, generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnRef {
    /// The shard it lives on.
    pub shard: u16,
    /// Its slab key there.
    pub key: u32,
    /// The generation of that slot.
    pub generation: u32,
}

/// A frame for the subscribers of one channel on one shard.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The channel.
    pub channel: Arc<str>,
    /// The publication's offset; `None` for a presence event (join, leave),
    /// which has none and is not kept in history.
    pub offset: Option<u64>,
    /// The encoded push, the same bytes for every subscriber.
    pub frame: Bytes,
    /// A connection that must not get it (`skip_self`, `exclude_client`, the
    /// joiner of its own join).
    pub exclude: Option<ConnRef>,
    /// The channel's epoch changed before this publication (the Redis engine
    /// lost it: Redis restarted or the channel expired there): every
    /// subscriber first gets this `subscribed` push with `recovered:false`
    /// and starts over from this publication's offset.
    pub restart: Option<Bytes>,
}

/// A position a client saw: `since` in `subscribe` and `history`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    /// The channel's epoch then.
    pub epoch: String,
    /// The last offset the client had.
    pub offset: u64,
}

/// A channel's epoch: changes whenever its history is lost (the channel was
/// freed, or the server restarted). Eight hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epoch([u8; 8]);

impl Epoch {
    pub(crate) fn from_u32(value: u32) -> Epoch {
        let mut digits = [0u8; 8];
        for (i, digit) in digits.iter_mut().enumerate() {
            let nibble = (value >> (28 - 4 * i)) & 0xF;
            *digit = b"0123456789abcdef".get(nibble as usize).copied().unwrap_or(b'0');
        }
        Epoch(digits)
    }

    /// An epoch from its text: 8 hex digits.
    pub fn parse(text: &str) -> Option<Epoch> {
        let bytes: [u8; 8] = text.as_bytes().try_into().ok()?;
        bytes.iter().all(u8::is_ascii_hexdigit).then_some(Epoch(bytes))
    }

    /// The epoch as text.
    pub fn as_str(&self) -> &str {
        // Only hex digits are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("00000000")
    }
}

/// Why the broker refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerError {
    /// The channel's namespace is not configured.
    UnknownNamespace(String),
    /// Presence is off in the channel's namespace.
    PresenceOff,
    /// History is off in the channel's namespace.
    HistoryOff,
    /// The node holds `max_channels` channels: a new one cannot be made.
    TooManyChannels(usize),
}

impl BrokerError {
    /// The sentence for the error reply.
    pub fn message(&self) -> String {
        match self {
            BrokerError::UnknownNamespace(namespace) => {
                format!("unknown namespace {namespace:?}: configure [namespaces.{namespace}]")
            }
            BrokerError::PresenceOff => "presence is off for this channel's namespace".into(),
            BrokerError::HistoryOff => "history is off for this channel's namespace".into(),
            BrokerError::TooManyChannels(max) => {
                format!("the node holds its limit of {max} channels (max_channels); try later")
            }
        }
    }
}

/// The answer to a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The channel's epoch.
    pub epoch: Epoch,
    /// The publication's offset.
    pub offset: u64,
}

/// What a subscriber learns when it subscribes.
#[derive(Debug)]
pub struct Subscribed {
    /// The channel's epoch.
    pub epoch: Epoch,
    /// The newest offset: the subscriber gets every publication after it.
    pub offset: u64,
    /// With `since`: whether everything after it could be replayed, and the
    /// frames to replay (oldest first) when it could.
    pub recovery: Option<Recovery>,
}

/// The outcome of recovery on subscribe.
#[derive(Debug)]
pub struct Recovery {
    /// Every publication after `since` is in `missed`.
    pub recovered: bool,
    /// The missed publications' push frames, oldest first.
    pub missed: Vec<Bytes>,
}

/// A page of history.
#[derive(Debug)]
pub struct HistoryPage {
    /// The channel's epoch.
    pub epoch: Epoch,
    /// The newest offset.
    pub offset: u64,
    /// `(offset, data)` of each publication, oldest first.
    pub publications: Vec<(u64, Bytes)>,
}

/// A subscriber's presence: its client id and user.
#[derive(Debug, Clone)]
pub struct Member {
    /// The client id.
    pub client: Arc<str>,
    /// The user id (`""` for anonymous).
    pub user: Arc<str>,
}

struct Publication {
    offset: u64,
    at: Millis,
    frame: Bytes,
    data_start: usize,
}

impl Publication {
    /// The publication's `data`, sliced out of its frame.
    fn data(&self) -> Bytes {
        // The frame ends with the `}` that follows the data.
        self.frame.slice(self.data_start..self.frame.len().saturating_sub(1))
    }
}

struct Channel {
    epoch: Epoch,
    /// The newest offset (0: none yet).
    top: u64,
    options: NamespaceOptions,
    /// Newest at the back, contiguous offsets.
    history: VecDeque<Publication>,
    /// Subscribers on each shard.
    per_shard: Box<[u32]>,
    subscribers: u32,
    presence: HashMap<Arc<str>, Arc<str>>,
    /// An entry for this channel is in its stripe's expiry heap.
    expiry_pending: bool,
    /// With the Redis engine: `epoch` and `top` are Redis's (learnt from a
    /// subscribe), so a different epoch from Redis is a real change.
    remote_position: bool,
    /// With the Redis engine: publications were missed that history no
    /// longer holds; the next delivery tells subscribers they start over.
    restart_pending: bool,
}

impl Channel {
    /// Drops publications older than the namespace's history TTL.
    fn trim(&mut self, now: Millis) {
        let ttl = self.options.history_ttl_secs.saturating_mul(1000);
        if ttl == 0 {
            return;
        }
        while self.history.front().is_some_and(|publication| publication.at + ttl <= now) {
            self.history.pop_front();
        }
    }

    /// When the newest publication leaves history.
    fn history_expires_at(&self) -> Option<Millis> {
        let ttl = self.options.history_ttl_secs.saturating_mul(1000);
        self.history.back().map(|newest| newest.at + ttl)
    }

    fn interested_shards(&self) -> impl Iterator<Item = usize> + '_ {
        self.per_shard.iter().enumerate().filter(|(_, count)| **count > 0).map(|(shard, _)| shard)
    }

    /// Shards with a subscriber other than `who` (for presence events,
    /// which never go to the connection they are about).
    fn shards_besides(&self, who: ConnRef) -> impl Iterator<Item = usize> + '_ {
        let own = usize::from(who.shard);
        self.per_shard
            .iter()
            .enumerate()
            .filter(move |(shard, count)| **count > u32::from(*shard == own))
            .map(|(shard, _)| shard)
    }
}

#[derive(Default)]
struct Stripe {
    channels: HashMap<Arc<str>, Channel>,
    expiry: BinaryHeap<Reverse<(Millis, Arc<str>)>>,
}

/// Channels in the table, over every stripe, against `max_channels`.
struct ChannelCount {
    open: AtomicUsize,
    max: usize,
}

impl Stripe {
    /// The channel, created with `make` if it does not exist and the node
    /// is below `max_channels`, with its expired history dropped.
    fn open(
        &mut self,
        name: &Arc<str>,
        make: impl FnOnce() -> Channel,
        now: Millis,
        count: &ChannelCount,
    ) -> Result<&mut Channel, BrokerError> {
        let channel = match self.channels.entry(name.clone()) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                if count.open.fetch_add(1, Ordering::Relaxed) >= count.max {
                    count.open.fetch_sub(1, Ordering::Relaxed);
                    return Err(BrokerError::TooManyChannels(count.max));
                }
                entry.insert(make())
            }
        };
        channel.trim(now);
        Ok(channel)
    }

    /// After a channel lost its last subscriber or got a publication while
    /// it has none: free it now if it keeps nothing, else make sure it is
    /// freed when its history expires.
    fn settle(&mut self, name: &Arc<str>, count: &ChannelCount) {
        let Some(channel) = self.channels.get_mut(name) else { return };
        if channel.subscribers > 0 {
            return;
        }
        match channel.history_expires_at() {
            None => {
                self.channels.remove(name);
                count.open.fetch_sub(1, Ordering::Relaxed);
            }
            Some(at) if !channel.expiry_pending => {
                channel.expiry_pending = true;
                self.expiry.push(Reverse((at, name.clone())));
            }
            Some(_) => {}
        }
    }
}

/// Channels and their subscribers across the shards of one node.
pub struct Broker {
    config: Arc<Config>,
    stripes: Box<[Mutex<Stripe>]>,
    count: ChannelCount,
    hasher: RandomState,
    inboxes: Box<[Arc<Inbox>]>,
    clock: Instant,
    /// Added to the clock: lets tests move time forward.
    skew: AtomicU64,
    epoch_seed: u64,
    epochs: AtomicU64,
    /// The Redis engine, when `engine = redis`: offsets, history and
    /// delivery between nodes go through it, and this table only tracks the
    /// node's own subscribers.
    redis: OnceLock<Arc<redis::RedisEngine>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("shards", &self.inboxes.len()).finish_non_exhaustive()
    }
}

impl Broker {
    /// A broker delivering to these shard inboxes (index = shard).
    pub fn new(config: Arc<Config>, inboxes: Vec<Arc<Inbox>>) -> Broker {
        let seed = crate::sys::random_bytes(8);
        let mut seed_bytes = [0u8; 8];
        seed_bytes.copy_from_slice(&seed);
        Broker {
            count: ChannelCount { open: AtomicUsize::new(0), max: config.max_channels },
            config,
            stripes: (0..STRIPES).map(|_| Mutex::new(Stripe::default())).collect(),
            hasher: RandomState::new(),
            inboxes: inboxes.into_boxed_slice(),
            clock: Instant::now(),
            skew: AtomicU64::new(0),
            epoch_seed: u64::from_le_bytes(seed_bytes),
            epochs: AtomicU64::new(0),
            redis: OnceLock::new(),
        }
    }

    /// Puts the broker on the Redis engine (once, at start-up).
    pub fn use_redis(&self, engine: Arc<redis::RedisEngine>) {
        let _ = self.redis.set(engine);
    }

    /// The Redis engine, when the node runs on it.
    pub fn redis(&self) -> Option<&Arc<redis::RedisEngine>> {
        self.redis.get()
    }

    /// With the Redis engine: adds a subscriber of this node (its shard
    /// will be sent the channel's publications as they come from Redis) and,
    /// for the node's first, subscribes the node in Redis. The position and
    /// what the client missed come from Redis separately.
    pub fn subscribe_node(
        &self,
        channel: &ChannelName,
        who: ConnRef,
        member: Option<&Member>,
    ) -> Result<(), BrokerError> {
        let mut options = self.options(channel)?.clone();
        // History lives in Redis.
        options.history_size = 0;
        let now = self.now();
        let name = channel.shared();
        let mut stripe = self.stripe(name);
        let state = stripe.open(name, || self.new_channel(&options), now, &self.count)?;
        let first = state.subscribers == 0;
        if let Some(count) = state.per_shard.get_mut(usize::from(who.shard)) {
            *count += 1;
            state.subscribers += 1;
        }
        if let Some(member) = member
            && state.options.presence
        {
            state.presence.insert(member.client.clone(), member.user.clone());
        }
        drop(stripe);
        if first && let Some(engine) = self.redis() {
            engine.subscribe(channel.as_str());
        }
        Ok(())
    }

    /// With the Redis engine: a publication of `channel` from Redis, for this
    /// node's subscribers. Arrives in offset order (one Redis connection, one
    /// reader); repeats and older ones are dropped.
    pub fn deliver_remote(
        &self,
        channel: &str,
        epoch: &str,
        offset: u64,
        exclude: Option<ConnRef>,
        data: &[u8],
    ) {
        self.deliver_from_redis(channel, epoch, offset, exclude, data, false);
    }

    /// With the Redis engine: a `join` or `leave` (JSON text) from any node,
    /// for this node's subscribers of `channel` (but `exclude`).
    pub fn deliver_presence_remote(&self, channel: &str, exclude: Option<ConnRef>, event: &[u8]) {
        let stripe = self.stripe(channel);
        let Some((name, state)) = stripe.channels.get_key_value(channel) else { return };
        let frame = websocket::encode_frame(Opcode::Text, event);
        self.deliver_to(
            state.interested_shards(),
            &Delivery { channel: name.clone(), offset: None, frame, exclude, restart: None },
        );
    }

    /// With the Redis engine: this node's presence entries, by channel (to
    /// refresh them in Redis).
    pub fn local_presence(&self) -> Vec<(Arc<str>, Vec<Member>)> {
        let mut entries = Vec::new();
        for stripe in &self.stripes {
            let stripe = stripe.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for (name, state) in &stripe.channels {
                if !state.presence.is_empty() {
                    let members = state
                        .presence
                        .iter()
                        .map(|(client, user)| Member { client: client.clone(), user: user.clone() })
                        .collect();
                    entries.push((name.clone(), members));
                }
            }
        }
        entries
    }

    /// With the Redis engine: where the node is in `channel` (epoch and
    /// newest offset delivered), once a publication from Redis set it.
    pub fn remote_top(&self, channel: &str) -> Option<(Epoch, u64)> {
        let stripe = self.stripe(channel);
        let state = stripe.channels.get(channel)?;
        (state.remote_position && state.top > 0).then_some((state.epoch, state.top))
    }

    /// [`Broker::deliver_remote`]; with `restart`, every subscriber is
    /// first told that it missed publications history no longer holds.
    pub fn deliver_from_redis(
        &self,
        channel: &str,
        epoch: &str,
        offset: u64,
        exclude: Option<ConnRef>,
        data: &[u8],
        restart: bool,
    ) {
        let mut stripe = self.stripe(channel);
        let Some(name) = stripe.channels.get_key_value(channel).map(|(name, _)| name.clone())
        else {
            return;
        };
        let Some(state) = stripe.channels.get_mut(channel) else { return };
        let restart = restart || std::mem::take(&mut state.restart_pending);
        let mut notice = None;
        match Epoch::parse(epoch) {
            Some(epoch) if epoch != state.epoch || restart => {
                if state.remote_position || restart {
                    log::info!("channel {channel}: epoch changed in Redis; subscribers start over");
                    let text = crate::protocol::subscribed(
                        None,
                        channel,
                        epoch.as_str(),
                        offset.saturating_sub(1),
                        Some((false, 0)),
                    );
                    notice = Some(websocket::encode_frame(Opcode::Text, &text));
                }
                state.epoch = epoch;
                state.top = offset.saturating_sub(1);
                state.remote_position = true;
            }
            _ => {}
        }
        if offset <= state.top {
            return;
        }
        state.top = offset;
        let (frame, _) = encode_message(channel, offset, data);
        self.deliver_to(
            state.interested_shards(),
            &Delivery {
                channel: name.clone(),
                offset: Some(offset),
                frame,
                exclude,
                restart: notice,
            },
        );
    }

    /// With the Redis engine: publications of `channel` were missed and
    /// cannot be read back; its next delivery says so to every subscriber.
    pub fn mark_remote_restart(&self, channel: &str) {
        let mut stripe = self.stripe(channel);
        if let Some(state) = stripe.channels.get_mut(channel) {
            state.restart_pending = true;
        }
    }

    /// With the Redis engine: a subscribe read the channel's epoch in Redis.
    /// From now on another epoch from Redis means the channel was lost
    /// there. (Its offset is not taken: publications below it may still be
    /// on their way to other subscribers of this node.)
    pub fn note_remote_epoch(&self, channel: &str, epoch: &str) {
        let Some(epoch) = Epoch::parse(epoch) else { return };
        let mut stripe = self.stripe(channel);
        let Some(state) = stripe.channels.get_mut(channel) else { return };
        if !state.remote_position {
            state.epoch = epoch;
            state.top = 0;
            state.remote_position = true;
        }
    }

    fn now(&self) -> Millis {
        let elapsed = u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX);
        elapsed.saturating_add(self.skew.load(Ordering::Relaxed))
    }

    /// Moves the broker's clock forward (history TTLs, channel expiry).
    #[doc(hidden)]
    pub fn advance_clock(&self, by: std::time::Duration) {
        let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.skew.fetch_add(by, Ordering::Relaxed);
    }

    /// A fresh epoch: splitmix64 over a random seed and a counter, so epochs
    /// differ across channels, re-creations and restarts.
    fn next_epoch(&self) -> Epoch {
        let n = self.epochs.fetch_add(1, Ordering::Relaxed);
        let mut z = self.epoch_seed.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Epoch::from_u32((z >> 32) as u32)
    }

    /// The options of the channel's namespace.
    pub fn options(&self, channel: &ChannelName) -> Result<&NamespaceOptions, BrokerError> {
        match channel.namespace() {
            None => Ok(&self.config.channels),
            Some(namespace) => self
                .config
                .namespaces
                .get(namespace)
                .ok_or_else(|| BrokerError::UnknownNamespace(namespace.to_string())),
        }
    }

    fn stripe(&self, channel: &str) -> MutexGuard<'_, Stripe> {
        let stripes = self.stripes.len() as u64;
        let index = usize::try_from(self.hasher.hash_one(channel) % stripes).unwrap_or(0);
        match self.stripes.get(index) {
            Some(stripe) => stripe.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
            None => unreachable!("index is taken modulo the stripe count"),
        }
    }

    fn new_channel(&self, options: &NamespaceOptions) -> Channel {
        Channel {
            epoch: self.next_epoch(),
            top: 0,
            options: options.clone(),
            history: VecDeque::new(),
            per_shard: vec![0; self.inboxes.len()].into_boxed_slice(),
            subscribers: 0,
            presence: HashMap::new(),
            expiry_pending: false,
            remote_position: false,
            restart_pending: false,
        }
    }

    /// Hands work to a shard.
    pub fn send_work(&self, shard: usize, work: Work) {
        if let Some(inbox) = self.inboxes.get(shard) {
            inbox.send(work);
        }
    }

    /// Shards this broker delivers to.
    pub fn shard_count(&self) -> usize {
        self.inboxes.len()
    }

    /// Hands `delivery` to each of `shards`: a clone of the same frame each.
    fn deliver_to(&self, shards: impl Iterator<Item = usize>, delivery: &Delivery) {
        for shard in shards {
            self.send_work(shard, Work::Deliver(delivery.clone()));
        }
    }

    /// Publishes `data` (raw JSON, kept byte for byte) to `channel`. When this
    /// returns, the publication has its offset, is in history (where the
    /// namespace keeps history), and is in the inbox of every shard with
    /// subscribers.
    pub fn publish(
        &self,
        channel: &ChannelName,
        data: &[u8],
        exclude: Option<ConnRef>,
    ) -> Result<Published, BrokerError> {
        let options = self.options(channel)?;
        let now = self.now();
        let name = channel.shared();
        let mut stripe = self.stripe(name);
        let state = stripe.open(name, || self.new_channel(options), now, &self.count)?;
        state.top += 1;
        let offset = state.top;
        let (frame, data_start) = encode_message(channel.as_str(), offset, data);
        if state.options.history_size > 0 {
            if state.history.len() >= state.options.history_size {
                state.history.pop_front();
            }
            state.history.push_back(Publication {
                offset,
                at: now,
                frame: frame.clone(),
                data_start,
            });
        }
        self.deliver_to(
            state.interested_shards(),
            &Delivery {
                channel: name.clone(),
                offset: Some(offset),
                frame,
                exclude,
                restart: None,
            },
        );
        let published = Published { epoch: state.epoch, offset };
        if state.subscribers == 0 {
            stripe.settle(name, &self.count);
        }
        Ok(published)
    }

    /// Adds a subscriber on `who.shard`. From now on that shard receives
    /// every publication after the returned offset. With `since`, the
    /// publications after it are returned for replay when history still
    /// holds all of them and they fit in `replay_limit` bytes.
    pub fn subscribe(
        &self,
        channel: &ChannelName,
        who: ConnRef,
        member: Option<&Member>,
        since: Option<&Since>,
        replay_limit: usize,
    ) -> Result<Subscribed, BrokerError> {
        let options = self.options(channel)?;
        let now = self.now();
        let name = channel.shared();
        let mut stripe = self.stripe(name);
        let state = stripe.open(name, || self.new_channel(options), now, &self.count)?;
        if let Some(count) = state.per_shard.get_mut(usize::from(who.shard)) {
            *count += 1;
            state.subscribers += 1;
        }
        let recovery = since.map(|since| recover(state, since, replay_limit));
        if let Some(member) = member
            && state.options.presence
        {
            state.presence.insert(member.client.clone(), member.user.clone());
            if state.options.join_leave {
                let frame = encode_presence_event("join", channel.as_str(), member);
                self.deliver_to(
                    state.shards_besides(who),
                    &Delivery {
                        channel: name.clone(),
                        offset: None,
                        frame,
                        exclude: Some(who),
                        restart: None,
                    },
                );
            }
        }
        Ok(Subscribed { epoch: state.epoch, offset: state.top, recovery })
    }

    /// Removes a subscriber added by [`Broker::subscribe`].
    pub fn unsubscribe(&self, channel: &ChannelName, who: ConnRef, member: Option<&Member>) {
        let name = channel.shared();
        let mut stripe = self.stripe(name);
        let Some(state) = stripe.channels.get_mut(name) else { return };
        if let Some(count) = state.per_shard.get_mut(usize::from(who.shard))
            && *count > 0
        {
            *count -= 1;
            state.subscribers -= 1;
        }
        let removed = member.is_some_and(|member| state.presence.remove(&member.client).is_some());
        let announce = removed && state.options.join_leave;
        if let (Some(engine), Some(member)) = (self.redis(), member)
            && removed
        {
            // Every node's subscribers hear it through Redis.
            engine.submit(redis::Job::PresenceLeave {
                channel: channel.clone(),
                member: member.clone(),
                announce,
            });
        } else if let Some(member) = member
            && announce
        {
            let frame = encode_presence_event("leave", channel.as_str(), member);
            self.deliver_to(
                state.interested_shards(),
                &Delivery {
                    channel: name.clone(),
                    offset: None,
                    frame,
                    exclude: Some(who),
                    restart: None,
                },
            );
        }
        let last = state.subscribers == 0;
        if last {
            stripe.settle(name, &self.count);
        }
        drop(stripe);
        if last && let Some(engine) = self.redis() {
            engine.unsubscribe(channel.as_str());
        }
    }

    /// The clients subscribed to `channel`, on every shard.
    pub fn presence(&self, channel: &ChannelName) -> Result<Vec<Member>, BrokerError> {
        if !self.options(channel)?.presence {
            return Err(BrokerError::PresenceOff);
        }
        let stripe = self.stripe(channel.as_str());
        Ok(stripe
            .channels
            .get(channel.as_str())
            .map(|state| {
                state
                    .presence
                    .iter()
                    .map(|(client, user)| Member { client: client.clone(), user: user.clone() })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Up to `limit` publications of `channel` after `since` (all of history
    /// when `since` is absent or names another epoch), oldest first.
    pub fn history(
        &self,
        channel: &ChannelName,
        since: Option<&Since>,
        limit: usize,
    ) -> Result<HistoryPage, BrokerError> {
        let options = self.options(channel)?;
        if options.history_size == 0 {
            return Err(BrokerError::HistoryOff);
        }
        let now = self.now();
        let name = channel.shared();
        let mut stripe = self.stripe(name);
        let Some(state) = stripe.channels.get_mut(name) else {
            // Nothing was published, or all of it expired: an empty channel
            // with an epoch of its own (not kept: there is nothing to keep).
            return Ok(HistoryPage {
                epoch: self.next_epoch(),
                offset: 0,
                publications: Vec::new(),
            });
        };
        state.trim(now);
        let after = match since {
            Some(since) if since.epoch == state.epoch.as_str() => since.offset,
            _ => 0,
        };
        let publications = state
            .history
            .iter()
            .filter(|publication| publication.offset > after)
            .take(limit)
            .map(|publication| (publication.offset, publication.data()))
            .collect();
        Ok(HistoryPage { epoch: state.epoch, offset: state.top, publications })
    }

    /// Frees channels that have no subscribers and whose history has
    /// expired, in the stripes that belong to `shard` (of `shards`). Called
    /// by each shard on a timer; each stripe is locked briefly.
    pub fn sweep(&self, shard: usize, shards: usize) {
        let now = self.now();
        for index in (shard..self.stripes.len()).step_by(shards.max(1)) {
            let Some(stripe) = self.stripes.get(index) else { continue };
            let mut stripe = stripe.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut budget = SWEEP_BUDGET;
            while budget > 0 && stripe.expiry.peek().is_some_and(|Reverse((at, _))| *at <= now) {
                budget -= 1;
                let Some(Reverse((_, name))) = stripe.expiry.pop() else { break };
                if let Some(state) = stripe.channels.get_mut(&name) {
                    state.expiry_pending = false;
                    state.trim(now);
                    stripe.settle(&name, &self.count);
                }
            }
        }
    }

    /// Channels with subscribers whose names start with `prefix`, with
    /// their subscriber counts (on every shard), in no particular order.
    pub fn subscribed_channels(&self, prefix: &str) -> Vec<(Arc<str>, u32)> {
        let mut found = Vec::new();
        for stripe in &self.stripes {
            let stripe = stripe.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            found.extend(
                stripe
                    .channels
                    .iter()
                    .filter(|(name, state)| state.subscribers > 0 && name.starts_with(prefix))
                    .map(|(name, state)| (name.clone(), state.subscribers)),
            );
        }
        found
    }

    /// Channels currently in the table (for tests and metrics).
    pub fn channel_count(&self) -> usize {
        self.count.open.load(Ordering::Relaxed)
    }
}

/// Replay for a subscribe with `since`.
fn recover(state: &Channel, since: &Since, replay_limit: usize) -> Recovery {
    let unrecoverable = Recovery { recovered: false, missed: Vec::new() };
    // A client at offset 0 had nothing of the channel, whatever its epoch
    // (a quiet channel freed and made again has a new one): it missed
    // exactly what history holds from offset 1 on.
    let other_epoch = since.epoch != state.epoch.as_str() && since.offset != 0;
    if other_epoch || since.offset > state.top {
        return unrecoverable;
    }
    if since.offset == state.top {
        return Recovery { recovered: true, missed: Vec::new() };
    }
    // History is contiguous: it covers the gap when it starts at or before
    // the first missed offset.
    match state.history.front() {
        Some(oldest) if oldest.offset <= since.offset + 1 => {}
        _ => return unrecoverable,
    }
    let skip = usize::try_from(since.offset + 1 - state.history.front().map_or(0, |p| p.offset))
        .unwrap_or(usize::MAX);
    let mut size = 0usize;
    let mut missed = Vec::with_capacity(state.history.len().saturating_sub(skip));
    for publication in state.history.iter().skip(skip) {
        size += publication.frame.len();
        if size > replay_limit {
            return unrecoverable;
        }
        missed.push(publication.frame.clone());
    }
    Recovery { recovered: true, missed }
}

/// The `message` push of a publication, as one WebSocket text frame, and
/// where its `data` starts. Channel names need no JSON escaping.
pub fn encode_message(channel: &str, offset: u64, data: &[u8]) -> (Bytes, usize) {
    let offset_text = offset.to_string();
    let body_len = r#"{"op":"message","channel":"","offset":,"data":}"#.len()
        + channel.len()
        + offset_text.len()
        + data.len();
    let mut out = BytesMut::with_capacity(body_len + 10);
    websocket::frame_header(Opcode::Text, body_len, &mut out);
    out.put_slice(br#"{"op":"message","channel":""#);
    out.put_slice(channel.as_bytes());
    out.put_slice(br#"","offset":"#);
    out.put_slice(offset_text.as_bytes());
    out.put_slice(br#","data":"#);
    let data_start = out.len();
    out.put_slice(data);
    out.put_u8(b'}');
    (out.freeze(), data_start)
}

fn encode_presence_event(op: &str, channel: &str, member: &Member) -> Bytes {
    websocket::encode_frame(Opcode::Text, presence_event_json(op, channel, member).as_bytes())
}

/// A `join` or `leave` push as JSON text.
fn presence_event_json(op: &str, channel: &str, member: &Member) -> String {
    serde_json::json!({
        "op": op, "channel": channel, "client": &*member.client, "user": &*member.user,
    })
    .to_string()
}

#[cfg(test)]
mod tests;
