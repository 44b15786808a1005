//! The channel table both engines keep on each node: per channel its epoch, newest offset, history, presence and subscribers per shard, striped by name behind short-held mutexes.

use super::publication::{Kept, Publication, Recovery};
use super::{Delivery, Event, Host};
use crate::channel::ChannelName;
use crate::clock::Millis;
use crate::config::{Config, NamespaceOptions};
use crate::types::{BrokerError, ConnRef, Epoch, Member, Published, Since};
use std::cmp::Reverse;
use std::collections::hash_map::{Entry, RandomState};
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// Stripes of the channel table. More stripes, less contention between
/// publishers on different channels; each costs one mutex and one map.
const STRIPES: usize = 256;
/// Expired channels freed per stripe per sweep, so a sweep stays short.
const SWEEP_BUDGET: usize = 4096;

/// One channel on this node.
#[derive(Debug)]
pub(super) struct Channel {
    pub(super) epoch: Epoch,
    /// The newest offset (0: none yet).
    pub(super) top: u64,
    pub(super) options: NamespaceOptions,
    /// Newest at the back, contiguous offsets.
    pub(super) history: VecDeque<Kept>,
    /// Subscribers on each shard.
    pub(super) per_shard: Box<[u32]>,
    pub(super) subscribers: u32,
    /// Members by client id.
    pub(super) presence: HashMap<Arc<str>, Member>,
    /// Connections in `presence` per user.
    presence_users: HashMap<Arc<str>, u32>,
    /// An entry for this channel is in its stripe's expiry heap.
    expiry_pending: bool,
    /// With the Redis engine: `epoch` and `top` are Redis's (learnt from a
    /// subscribe or a publication), so a different epoch from Redis is a
    /// real change.
    pub(super) remote_position: bool,
    /// With the Redis engine: publications were missed that history no
    /// longer holds; the next delivery tells subscribers they start over.
    pub(super) restart_pending: bool,
    /// With durable history: offsets after `top` handed to the store's
    /// writer and not yet committed (nor visible: `top` is the newest
    /// committed offset). The channel is not freed while any are.
    pub(super) reserved: u64,
}

impl Channel {
    /// Drops publications older than the namespace's history TTL.
    pub(super) fn trim(&mut self, now: Millis) {
        let ttl = self.options.history_ttl_secs.saturating_mul(1000);
        if ttl == 0 {
            return;
        }
        while self.history.front().is_some_and(|kept| kept.at + ttl <= now) {
            self.history.pop_front();
        }
    }

    /// When the newest publication leaves history.
    fn history_expires_at(&self) -> Option<Millis> {
        let ttl = self.options.history_ttl_secs.saturating_mul(1000);
        self.history.back().map(|newest| newest.at + ttl)
    }

    /// Makes `publication`, the channel's next offset, part of it: `top`,
    /// history (the oldest leaves past `history_size`), and a delivery to
    /// every shard with subscribers, which the caller's stripe lock keeps
    /// in offset order.
    pub(super) fn append(
        &mut self,
        host: &dyn Host,
        name: &Arc<str>,
        at: Millis,
        publication: Arc<Publication>,
        exclude: Option<ConnRef>,
    ) {
        self.top = publication.offset();
        if self.options.history_size > 0 {
            if self.history.len() >= self.options.history_size {
                self.history.pop_front();
            }
            self.history.push_back(Kept { at, publication: publication.clone() });
        }
        deliver_to(
            host,
            self.interested_shards(),
            &Delivery { channel: name.clone(), event: Event::Publication(publication), exclude },
        );
    }

    /// The oldest offset history still holds (`top + 1` when it holds none).
    pub(super) fn oldest_kept(&self) -> u64 {
        self.history.front().map_or(self.top.saturating_add(1), |kept| kept.publication.offset())
    }

    /// Shards with subscribers.
    pub(super) fn interested_shards(&self) -> impl Iterator<Item = usize> + '_ {
        self.per_shard.iter().enumerate().filter(|(_, count)| **count > 0).map(|(shard, _)| shard)
    }

    /// Shards with a subscriber other than `who` (for presence events,
    /// which never go to the connection they are about).
    pub(super) fn shards_besides(&self, who: ConnRef) -> impl Iterator<Item = usize> + '_ {
        let own = usize::from(who.shard);
        self.per_shard
            .iter()
            .enumerate()
            .filter(move |(shard, count)| **count > u32::from(*shard == own))
            .map(|(shard, _)| shard)
    }

    /// Counts a subscriber on `who`'s shard; returns whether it is the
    /// channel's first on this node.
    pub(super) fn add_subscriber(&mut self, who: ConnRef) -> bool {
        let first = self.subscribers == 0;
        if let Some(count) = self.per_shard.get_mut(usize::from(who.shard)) {
            *count += 1;
            self.subscribers += 1;
        }
        first
    }

    /// Uncounts a subscriber on `who`'s shard.
    pub(super) fn remove_subscriber(&mut self, who: ConnRef) {
        if let Some(count) = self.per_shard.get_mut(usize::from(who.shard))
            && *count > 0
        {
            *count -= 1;
            self.subscribers -= 1;
        }
    }

    /// The members of its presence.
    pub(super) fn members(&self) -> Vec<Member> {
        self.presence.values().cloned().collect()
    }

    /// Distinct users in its presence.
    pub(super) fn user_count(&self) -> usize {
        self.presence_users.len()
    }

    /// Whether `user` has a connection in its presence.
    pub(super) fn has_user(&self, user: &str) -> bool {
        self.presence_users.contains_key(user)
    }

    /// Enters `member` into its presence; returns whether it is the user's
    /// first connection there.
    pub(super) fn join(&mut self, member: &Member) -> bool {
        if let Some(previous) = self.presence.insert(member.client.clone(), member.clone()) {
            // The same connection again (a refresh): no new connection.
            self.presence_users.entry(previous.user).or_insert(1);
            return false;
        }
        let count = self.presence_users.entry(member.user.clone()).or_insert(0);
        *count += 1;
        *count == 1
    }

    /// Takes `client` out of its presence; returns its entry and whether
    /// it was the user's last connection there.
    pub(super) fn leave(&mut self, client: &str) -> Option<(Member, bool)> {
        let member = self.presence.remove(client)?;
        let last = match self.presence_users.get_mut(&member.user) {
            Some(count) if *count > 1 => {
                *count -= 1;
                false
            }
            _ => {
                self.presence_users.remove(&member.user);
                true
            }
        };
        Some((member, last))
    }
}

/// One stripe of the table.
#[derive(Debug, Default)]
pub(super) struct Stripe {
    pub(super) channels: HashMap<Arc<str>, Channel>,
    expiry: BinaryHeap<Reverse<(Millis, Arc<str>)>>,
}

/// Channels in the table, over every stripe, against `max_channels`.
#[derive(Debug)]
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
        if channel.subscribers > 0 || channel.reserved > 0 {
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

/// A locked stripe, with the table's count for making and freeing channels.
pub(super) struct Locked<'a> {
    stripe: MutexGuard<'a, Stripe>,
    table: &'a Table,
}

impl Locked<'_> {
    /// The channel, if it exists.
    pub(super) fn get(&mut self, name: &str) -> Option<&mut Channel> {
        self.stripe.channels.get_mut(name)
    }

    /// The channel and its shared name, if it exists.
    pub(super) fn get_named(&mut self, name: &str) -> Option<(Arc<str>, &mut Channel)> {
        let shared = self.stripe.channels.get_key_value(name).map(|(name, _)| name.clone())?;
        self.stripe.channels.get_mut(name).map(|channel| (shared, channel))
    }

    /// The channel, made with `options` if new (see [`Stripe::open`]).
    pub(super) fn open(
        &mut self,
        name: &Arc<str>,
        options: &NamespaceOptions,
    ) -> Result<&mut Channel, BrokerError> {
        let table = self.table;
        self.stripe.open(name, || table.new_channel(options), table.now(), &table.count)
    }

    /// See [`Stripe::settle`].
    pub(super) fn settle(&mut self, name: &Arc<str>) {
        self.stripe.settle(name, &self.table.count);
    }
}

/// The table.
#[derive(Debug)]
pub(super) struct Table {
    pub(super) config: Arc<Config>,
    stripes: Box<[Mutex<Stripe>]>,
    count: ChannelCount,
    hasher: RandomState,
    shards: usize,
    /// Unix milliseconds when the table was made: the clock reads as Unix
    /// time (so stored publications keep their age across restarts) but
    /// moves with the monotonic clock.
    base: u64,
    clock: Instant,
    /// Added to the clock: lets tests move time forward.
    skew: AtomicU64,
    epoch_seed: u64,
    epochs: AtomicU64,
}

impl Table {
    /// An empty table for a node of `config.threads` shards.
    pub(super) fn new(config: Arc<Config>) -> Table {
        let seed = crate::sys::random_bytes(8);
        let mut seed_bytes = [0u8; 8];
        seed_bytes.copy_from_slice(&seed);
        Table {
            count: ChannelCount { open: AtomicUsize::new(0), max: config.max_channels },
            shards: config.threads.max(1),
            config,
            stripes: (0..STRIPES).map(|_| Mutex::new(Stripe::default())).collect(),
            hasher: RandomState::new(),
            base: crate::clock::unix_millis(),
            clock: Instant::now(),
            skew: AtomicU64::new(0),
            epoch_seed: u64::from_le_bytes(seed_bytes),
            epochs: AtomicU64::new(0),
        }
    }

    /// The stripe `channel` lives in, locked.
    pub(super) fn lock(&self, channel: &str) -> Locked<'_> {
        let stripes = self.stripes.len() as u64;
        let index = usize::try_from(self.hasher.hash_one(channel) % stripes).unwrap_or(0);
        let stripe = match self.stripes.get(index) {
            Some(stripe) => stripe.lock().unwrap_or_else(PoisonError::into_inner),
            None => unreachable!("index is taken modulo the stripe count"),
        };
        Locked { stripe, table: self }
    }

    /// The options of the channel's namespace.
    pub(super) fn options(&self, channel: &ChannelName) -> Result<&NamespaceOptions, BrokerError> {
        self.config.options(channel)
    }

    fn new_channel(&self, options: &NamespaceOptions) -> Channel {
        Channel {
            epoch: self.next_epoch(),
            top: 0,
            options: options.clone(),
            history: VecDeque::new(),
            per_shard: vec![0; self.shards].into_boxed_slice(),
            subscribers: 0,
            presence: HashMap::new(),
            presence_users: HashMap::new(),
            expiry_pending: false,
            remote_position: false,
            restart_pending: false,
            reserved: 0,
        }
    }

    /// Puts back a channel read from the store at start-up: its epoch, and
    /// its history (`(offset, at, data)`, contiguous, oldest first, not
    /// empty). It counts toward `max_channels` (past it, with a warning:
    /// what was stored is kept).
    pub(super) fn restore(
        &self,
        name: Arc<str>,
        epoch: Epoch,
        options: &NamespaceOptions,
        history: impl Iterator<Item = (u64, Millis, bytes::Bytes)>,
    ) {
        let mut channel = self.new_channel(options);
        channel.epoch = epoch;
        for (offset, at, data) in history {
            channel.top = offset;
            channel
                .history
                .push_back(Kept { at, publication: Publication::new(name.clone(), offset, &data) });
        }
        let mut locked = self.lock(&name);
        if locked.stripe.channels.insert(name.clone(), channel).is_none()
            && self.count.open.fetch_add(1, Ordering::Relaxed) == self.count.max
        {
            log::warn!(
                "the store holds more channels than max_channels ({}): all are kept, new ones are \
                 refused until some expire",
                self.count.max
            );
        }
        locked.settle(&name);
    }

    /// Publishes `data` to `channel` now (no store involved): the next
    /// offset, history, deliveries.
    pub(super) fn publish(
        &self,
        host: &dyn Host,
        channel: &ChannelName,
        data: &[u8],
        exclude: Option<ConnRef>,
    ) -> Result<Published, BrokerError> {
        let options = self.options(channel)?;
        let now = self.now();
        let name = channel.shared();
        let mut stripe = self.lock(name);
        let state = stripe.open(name, options)?;
        let publication = Publication::new(name.clone(), state.top.saturating_add(1), data);
        state.append(host, name, now, publication, exclude);
        let published = Published { epoch: state.epoch, offset: state.top };
        if state.subscribers == 0 {
            stripe.settle(name);
        }
        Ok(published)
    }

    /// Now on the table's clock: Unix milliseconds, moving monotonically.
    pub(super) fn now(&self) -> Millis {
        let elapsed = u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.base.saturating_add(elapsed).saturating_add(self.skew.load(Ordering::Relaxed))
    }

    /// Moves the table's clock forward (history TTLs, channel expiry).
    pub(super) fn advance_clock(&self, by: std::time::Duration) {
        let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.skew.fetch_add(by, Ordering::Relaxed);
    }

    /// A fresh epoch: splitmix64 over a random seed and a counter, so epochs
    /// differ across channels, re-creations and restarts.
    pub(super) fn next_epoch(&self) -> Epoch {
        let n = self.epochs.fetch_add(1, Ordering::Relaxed);
        let mut z = self.epoch_seed.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Epoch::from_u32((z >> 32) as u32)
    }

    /// Frees channels that have no subscribers and whose history has
    /// expired, in the stripes that belong to `shard` (of `shards`); each
    /// stripe is locked briefly.
    pub(super) fn sweep(&self, shard: usize, shards: usize) {
        let now = self.now();
        for index in (shard..self.stripes.len()).step_by(shards.max(1)) {
            let Some(stripe) = self.stripes.get(index) else { continue };
            let mut stripe = stripe.lock().unwrap_or_else(PoisonError::into_inner);
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
    pub(super) fn subscribed_channels(&self, prefix: &str) -> Vec<(Arc<str>, u32)> {
        let mut found = Vec::new();
        for stripe in &self.stripes {
            let stripe = stripe.lock().unwrap_or_else(PoisonError::into_inner);
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

    /// Every channel's presence entries on this node, by channel, with its
    /// options.
    pub(super) fn all_presence(&self) -> Vec<(Arc<str>, NamespaceOptions, Vec<Member>)> {
        let mut entries = Vec::new();
        for stripe in &self.stripes {
            let stripe = stripe.lock().unwrap_or_else(PoisonError::into_inner);
            for (name, state) in &stripe.channels {
                if !state.presence.is_empty() {
                    entries.push((name.clone(), state.options.clone(), state.members()));
                }
            }
        }
        entries
    }

    /// Channels with subscribers on this node whose webhooks want to know
    /// when they are occupied or vacated, with their options.
    pub(super) fn occupied_channels(&self) -> Vec<(Arc<str>, NamespaceOptions)> {
        let mut entries = Vec::new();
        for stripe in &self.stripes {
            let stripe = stripe.lock().unwrap_or_else(PoisonError::into_inner);
            for (name, state) in &stripe.channels {
                if state.subscribers > 0 && state.options.notices.occupancy() {
                    entries.push((name.clone(), state.options.clone()));
                }
            }
        }
        entries
    }

    /// Channels in the table.
    pub(super) fn channel_count(&self) -> usize {
        self.count.open.load(Ordering::Relaxed)
    }
}

/// Hands `delivery` to each of `shards` through `host`.
pub(super) fn deliver_to(
    host: &dyn Host,
    shards: impl Iterator<Item = usize>,
    delivery: &Delivery,
) {
    for shard in shards {
        host.deliver(shard, delivery.clone());
    }
}

/// Replay for a subscribe with `since`.
pub(super) fn recover(state: &Channel, since: &Since, replay_limit: usize) -> Recovery {
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
    let oldest = state.history.front().map_or(u64::MAX, |kept| kept.publication.offset());
    if oldest > since.offset + 1 {
        return unrecoverable;
    }
    let skip = usize::try_from(since.offset + 1 - oldest).unwrap_or(usize::MAX);
    let mut size = 0usize;
    let mut missed: Vec<Arc<Publication>> =
        Vec::with_capacity(state.history.len().saturating_sub(skip));
    for kept in state.history.iter().skip(skip) {
        size += kept.publication.ws_frame().len();
        if size > replay_limit {
            return unrecoverable;
        }
        missed.push(kept.publication.clone());
    }
    Recovery { recovered: true, missed }
}
