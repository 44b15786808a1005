//! One shard's state that front ends work with: its clock, counters, subscriber and user tables, and deliveries held back for subscriptions still waiting for the engine.

use super::Shared;
use super::subscribers::LocalSubscribers;
use super::users::LocalUsers;
use crate::broker::Publication;
use crate::clock::Millis;
use crate::config::Config;
use crate::metrics::ShardMetrics;
use std::collections::HashMap;
use std::sync::Arc;

/// A local subscriber's `last_offset` while its subscribe waits for the
/// engine: its deliveries are held back (in [`Local::pending`]) until the
/// position is known.
pub const PENDING: u64 = u64::MAX;
/// Deliveries held back per waiting subscription; past it, the oldest go
/// (the client then recovers them from history on its next subscribe).
pub const MAX_PENDING_DELIVERIES: usize = 4096;

/// Publications held back for one waiting subscription, in arrival order.
pub type Held = Vec<Arc<Publication>>;

/// One shard's state.
#[derive(Debug)]
pub struct Local {
    /// The server's configuration.
    pub config: Arc<Config>,
    /// What all shards share: the engine, counters, the node id.
    pub shared: Arc<Shared>,
    /// Now, on the shard's clock.
    pub now: Millis,
    /// This node's id, the first part of every client id.
    pub node: Arc<str>,
    /// This shard's index.
    pub shard: usize,
    /// This shard's subscribers, by channel.
    pub locals: LocalSubscribers,
    /// This shard's counters.
    pub metrics: Arc<ShardMetrics>,
    /// This shard's authenticated `/ws` connections, by user.
    pub users: LocalUsers,
    /// This shard's Pusher connections signed in, by `APP;USER`.
    pub signed_in: LocalUsers,
    /// Deliveries held back for subscriptions waiting for the engine, by
    /// (slab key, channel), in arrival order.
    pub pending: HashMap<(u32, Arc<str>), Held>,
}

impl Local {
    /// The state of shard `shard`.
    pub fn new(shared: Arc<Shared>, shard: usize) -> Self {
        let metrics = shared.metrics.get(shard).cloned().unwrap_or_default();
        Local {
            config: shared.config.clone(),
            node: shared.node.clone(),
            shared,
            now: 0,
            shard,
            locals: LocalSubscribers::default(),
            metrics,
            users: LocalUsers::default(),
            signed_in: LocalUsers::default(),
            pending: HashMap::new(),
        }
    }

    /// This shard's index as connections name it.
    pub fn shard_id(&self) -> u16 {
        u16::try_from(self.shard).unwrap_or(u16::MAX)
    }

    /// A subscription of connection `key` that waited for the engine is
    /// told its position `top`: returns what to send after the reply
    /// (history's `missed` publications, all at or below the top, then
    /// those held back meanwhile that are above it, each once, in order),
    /// and takes the local subscriber out of waiting.
    pub fn catch_up(
        &mut self,
        key: u32,
        channel: &Arc<str>,
        top: u64,
        missed: Vec<Arc<Publication>>,
    ) -> Vec<Arc<Publication>> {
        let held = self.pending.remove(&(key, channel.clone())).unwrap_or_default();
        let mut publications = missed;
        let mut last = top;
        for publication in held {
            if publication.offset() > last {
                last = publication.offset();
                publications.push(publication);
            }
        }
        if let Some(subscriber) =
            self.locals.get_mut(channel).and_then(|subscribers| subscribers.get_mut(&key))
        {
            subscriber.last_offset = last;
        }
        publications
    }
}
