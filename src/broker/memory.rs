//! The memory engine, the embedded default: one node, history in RAM, every answer at once (but publishes to channels with history when `data_dir` makes it durable).
//!
//! A publication takes its channel's stripe, gets the next offset, enters
//! history, and is handed to every shard that has subscribers, all before
//! the stripe is released: so every shard receives a channel's
//! publications in offset order, whichever shards their publishers run on.
//! Lock order is always stripe, then inbox.
//!
//! With `data_dir`, history also lives in a store on disk (`durable`): a
//! publish to a namespace that keeps history goes to the store's writer
//! thread, which makes it visible and answers it once it is written.

use super::durable::Durable;
use super::notice::{MemoryNotices, Notice, NoticeFeed, NoticeKind};
use super::publication::{Position, PresenceChange, Relayed};
use super::table::{Table, deliver_to, recover};
use super::{Answer, Delivery, Engine, Event, Health, Host, ReplyTo, Subscription};
use crate::channel::ChannelName;
use crate::config::Config;
use crate::types::{
    BrokerError, ConnRef, HistoryPage, Member, Published, Since, UserAction, parse_client_id,
};
use std::sync::Arc;

/// Channels of one node, in RAM (and history on disk with `data_dir`).
#[derive(Debug)]
pub struct MemoryEngine {
    table: Arc<Table>,
    node: Arc<str>,
    host: Arc<dyn Host>,
    notices: Arc<MemoryNotices>,
    dropped: std::sync::atomic::AtomicU64,
    /// The store's writer, with `data_dir`.
    durable: Option<Durable>,
}

impl MemoryEngine {
    /// An engine for node `node`, delivering through `host`, history in
    /// RAM only (whatever `data_dir` says).
    pub fn new(config: Arc<Config>, node: Arc<str>, host: Arc<dyn Host>) -> MemoryEngine {
        MemoryEngine {
            notices: Arc::new(MemoryNotices::new(config.webhook_queue_size, &node)),
            table: Arc::new(Table::new(config)),
            node,
            host,
            dropped: std::sync::atomic::AtomicU64::new(0),
            durable: None,
        }
    }

    /// Queues a notice if its channel's webhooks want its kind.
    fn notice(&self, wanted: crate::types::NoticeKinds, notice: Notice) {
        if wanted.has(notice.kind) && !self.notices.push(notice) {
            let dropped = self.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if dropped.is_power_of_two() {
                log::warn!("webhook notices dropped: a queue is full ({} so far)", dropped + 1);
            }
        }
    }

    /// An engine as the configuration asks: with `data_dir`, its store is
    /// opened (or made) and read back before the engine answers anything.
    pub fn start(
        config: Arc<Config>,
        node: Arc<str>,
        host: Arc<dyn Host>,
    ) -> Result<MemoryEngine, String> {
        let mut engine = MemoryEngine::new(config.clone(), node, host);
        if let Some(dir) = &config.data_dir {
            engine.durable = Some(Durable::start(
                engine.table.clone(),
                engine.host.clone(),
                dir,
                config.durability,
            )?);
        }
        Ok(engine)
    }

    /// Moves the engine's clock forward (history TTLs, channel expiry).
    #[doc(hidden)]
    pub fn advance_clock(&self, by: std::time::Duration) {
        self.table.advance_clock(by);
    }
}

impl Engine for MemoryEngine {
    fn publish(
        &self,
        channels: &[ChannelName],
        data: &[u8],
        exclude: Option<&str>,
        reply: ReplyTo,
    ) -> Answer<Vec<(ChannelName, Published)>> {
        // A client of another node (or of an earlier run) is simply not here.
        let exclude = exclude.and_then(|id| parse_client_id(&self.node, id));
        if let Some(durable) = &self.durable {
            let mut keeps_history = false;
            for channel in channels {
                match self.table.options(channel) {
                    Ok(options) => keeps_history |= options.history_size > 0,
                    Err(error) => return Answer::Now(Err(error)),
                }
            }
            if keeps_history {
                return durable.publish(channels, data, exclude, reply);
            }
        }
        let mut results = Vec::with_capacity(channels.len());
        for channel in channels {
            match self.table.publish(&*self.host, channel, data, exclude) {
                Ok(published) => results.push((channel.clone(), published)),
                Err(error) => return Answer::Now(Err(error)),
            }
        }
        Answer::Now(Ok(results))
    }

    fn subscribe(&self, subscription: Subscription<'_>, _reply: ReplyTo) -> Answer<Position> {
        let Subscription { channel, who, member, since, replay_limit, .. } = subscription;
        let options = match self.table.options(channel) {
            Ok(options) => options,
            Err(error) => return Answer::Now(Err(error)),
        };
        let name = channel.shared();
        let mut stripe = self.table.lock(name);
        let state = match stripe.open(name, options) {
            Ok(state) => state,
            Err(error) => return Answer::Now(Err(error)),
        };
        let limit = subscription.member_limit;
        if let Some(member) = member
            && state.options.presence
            && limit > 0
            && !state.has_user(&member.user)
            && state.user_count() >= limit
        {
            if state.subscribers == 0 {
                stripe.settle(name);
            }
            return Answer::Now(Err(BrokerError::PresenceFull(limit)));
        }
        let wanted = state.options.notices;
        if state.add_subscriber(who) {
            self.notice(wanted, Notice::new(NoticeKind::ChannelOccupied, name, None));
        }
        let recovery = since.map(|since| recover(state, since, replay_limit));
        if let Some(member) = member
            && state.options.presence
        {
            let first = state.join(member);
            if first {
                self.notice(wanted, Notice::new(NoticeKind::MemberAdded, name, Some(&member.user)));
            }
            if state.options.join_leave {
                let change = PresenceChange::new(true, name.clone(), member.clone(), first);
                deliver_to(
                    &*self.host,
                    state.shards_besides(who),
                    &Delivery {
                        channel: name.clone(),
                        event: Event::Presence(change),
                        exclude: Some(who),
                    },
                );
            }
        }
        let members = if subscription.members { state.members() } else { Vec::new() };
        let newest = subscription
            .newest
            .then(|| state.history.back().map(|kept| kept.publication.clone()))
            .flatten();
        Answer::Now(Ok(Position {
            epoch: state.epoch,
            offset: state.top,
            recovery,
            members,
            newest,
        }))
    }

    fn unsubscribe(&self, channel: &ChannelName, who: ConnRef, member: Option<&Member>) {
        let name = channel.shared();
        let mut stripe = self.table.lock(name);
        let Some(state) = stripe.get(name) else { return };
        state.remove_subscriber(who);
        let left = member.and_then(|member| state.leave(&member.client));
        let wanted = state.options.notices;
        if let Some((member, true)) = &left {
            self.notice(wanted, Notice::new(NoticeKind::MemberRemoved, name, Some(&member.user)));
        }
        if state.subscribers == 0 {
            self.notice(wanted, Notice::new(NoticeKind::ChannelVacated, name, None));
        }
        if let Some((member, last)) = left
            && state.options.join_leave
        {
            let change = PresenceChange::new(false, name.clone(), member, last);
            deliver_to(
                &*self.host,
                state.interested_shards(),
                &Delivery {
                    channel: name.clone(),
                    event: Event::Presence(change),
                    exclude: Some(who),
                },
            );
        }
        if state.subscribers == 0 {
            stripe.settle(name);
        }
    }

    fn relay(
        &self,
        channel: &ChannelName,
        text: &[u8],
        exclude: Option<&str>,
    ) -> Result<(), BrokerError> {
        let exclude = exclude.and_then(|id| parse_client_id(&self.node, id));
        let name = channel.shared();
        let mut stripe = self.table.lock(name);
        let Some(state) = stripe.get(name) else { return Ok(()) };
        let relayed = Relayed::new(name.clone(), bytes::Bytes::copy_from_slice(text));
        deliver_to(
            &*self.host,
            state.interested_shards(),
            &Delivery { channel: name.clone(), event: Event::Relay(relayed), exclude },
        );
        Ok(())
    }

    fn notify(&self, notice: Notice) {
        self.notice(crate::types::NoticeKinds(u8::MAX), notice);
    }

    fn notice_feed(&self, scope: &str, reader: &str) -> Box<dyn NoticeFeed> {
        Box::new(self.notices.feed(scope, reader))
    }

    fn presence(&self, channel: &ChannelName, _reply: ReplyTo) -> Answer<Vec<Member>> {
        match self.table.options(channel) {
            Err(error) => return Answer::Now(Err(error)),
            Ok(options) if !options.presence => return Answer::Now(Err(BrokerError::PresenceOff)),
            Ok(_) => {}
        }
        let mut stripe = self.table.lock(channel.as_str());
        Answer::Now(Ok(stripe
            .get(channel.as_str())
            .map(|state| state.members())
            .unwrap_or_default()))
    }

    fn history(
        &self,
        channel: &ChannelName,
        since: Option<&Since>,
        limit: usize,
        _reply: ReplyTo,
    ) -> Answer<HistoryPage> {
        match self.table.options(channel) {
            Err(error) => return Answer::Now(Err(error)),
            Ok(options) if options.history_size == 0 => {
                return Answer::Now(Err(BrokerError::HistoryOff));
            }
            Ok(_) => {}
        }
        let now = self.table.now();
        let mut stripe = self.table.lock(channel.as_str());
        let Some(state) = stripe.get(channel.as_str()) else {
            // Nothing was published, or all of it expired: an empty channel
            // with an epoch of its own (not kept: there is nothing to keep).
            return Answer::Now(Ok(HistoryPage {
                epoch: self.table.next_epoch(),
                offset: 0,
                publications: Vec::new(),
                newest_age_ms: None,
            }));
        };
        state.trim(now);
        let after = match since {
            Some(since) if since.epoch == state.epoch.as_str() => since.offset,
            _ => 0,
        };
        let publications = state
            .history
            .iter()
            .filter(|kept| kept.publication.offset() > after)
            .take(limit)
            .map(|kept| (kept.publication.offset(), kept.publication.data()))
            .collect();
        let newest_age_ms = state.history.back().map(|kept| now.saturating_sub(kept.at));
        Answer::Now(Ok(HistoryPage {
            epoch: state.epoch,
            offset: state.top,
            publications,
            newest_age_ms,
        }))
    }

    fn act_on_user(&self, user: Arc<str>, action: UserAction, reply: ReplyTo) -> Answer<usize> {
        // Every connection lives on this node: its shards carry it out, and
        // the last to finish has the answer sent.
        let host = self.host.clone();
        self.host.act_on_user(
            user,
            action,
            Box::new(move |count| host.answer(reply, super::EngineAnswer::Users(Ok(count)))),
        );
        Answer::Later
    }

    fn subscribed_channels(&self, prefix: &str) -> Vec<(Arc<str>, u32)> {
        self.table.subscribed_channels(prefix)
    }

    fn channel_count(&self) -> usize {
        self.table.channel_count()
    }

    fn sweep(&self, shard: usize, shards: usize) {
        self.table.sweep(shard, shards);
    }

    fn health(&self) -> Health {
        let notices_dropped = self.dropped.load(std::sync::atomic::Ordering::Relaxed);
        match &self.durable {
            None => Health { name: "memory", up: None, refused: 0, notices_dropped, store: None },
            Some(durable) => Health {
                name: "memory",
                up: Some(durable.up()),
                refused: durable.refused(),
                notices_dropped,
                store: Some(durable.figures()),
            },
        }
    }

    fn stop(&self) {
        if let Some(durable) = &self.durable {
            durable.stop();
        }
    }
}

#[cfg(test)]
mod tests;
