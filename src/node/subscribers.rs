//! A shard's own subscriber table: for each channel, the local connections subscribed and the last offset each has.

use crate::channel::ChannelName;
use indexmap::IndexMap;
use std::collections::HashMap;

/// One local subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscriber {
    /// The generation of the connection's slot (its key is the map key).
    pub generation: u32,
    /// The newest offset this subscriber has been given: anything at or
    /// below it is a duplicate.
    pub last_offset: u64,
}

/// Channel name to local subscribers. Only the shard's thread touches it.
#[derive(Debug, Default)]
pub struct LocalSubscribers {
    channels: HashMap<ChannelName, IndexMap<u32, Subscriber>>,
}

impl LocalSubscribers {
    /// Adds a connection (slab `key`) to `channel`, having seen up to
    /// `last_offset`. Returns the table's copy of the name, for the
    /// subscriber to hold instead of its own: one allocation per channel on
    /// a shard, not one per subscribed connection.
    pub fn add(&mut self, channel: &ChannelName, key: u32, subscriber: Subscriber) -> ChannelName {
        let entry = self.channels.entry(channel.clone());
        let name = entry.key().clone();
        entry.or_default().insert(key, subscriber);
        name
    }

    /// Removes a connection from `channel`; forgets the channel when it was
    /// the last local subscriber.
    pub fn remove(&mut self, channel: &str, key: u32) {
        if let Some(subscribers) = self.channels.get_mut(channel) {
            subscribers.swap_remove(&key);
            if subscribers.is_empty() {
                self.channels.remove(channel);
            }
        }
    }

    /// The subscribers of `channel`, if any.
    pub fn get_mut(&mut self, channel: &str) -> Option<&mut IndexMap<u32, Subscriber>> {
        self.channels.get_mut(channel)
    }

    /// Channels with local subscribers.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn channel(name: &str) -> ChannelName {
        ChannelName::parse(name).unwrap()
    }

    #[test]
    fn subscribers_of_a_channel_share_the_tables_copy_of_its_name() {
        let mut table = LocalSubscribers::default();
        let subscriber = Subscriber { generation: 1, last_offset: 0 };
        let first = table.add(&channel("news"), 1, subscriber);
        let second = table.add(&channel("news"), 2, subscriber);
        assert!(Arc::ptr_eq(first.shared(), second.shared()));
        let other = table.add(&channel("sport"), 1, subscriber);
        assert!(!Arc::ptr_eq(first.shared(), other.shared()));
        assert_eq!(other.as_str(), "sport");
    }

    #[test]
    fn the_last_subscriber_takes_the_channel_with_it() {
        let mut table = LocalSubscribers::default();
        let news = channel("news");
        table.add(&news, 1, Subscriber { generation: 7, last_offset: 3 });
        table.add(&news, 2, Subscriber { generation: 8, last_offset: 3 });
        table.remove("news", 1);
        assert_eq!(table.get_mut("news").unwrap().len(), 1);
        table.remove("news", 2);
        assert!(table.get_mut("news").is_none());
        assert_eq!(table.channel_count(), 0);
    }
}
