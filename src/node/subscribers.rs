//! A shard's own subscriber table: for each channel, the local connections subscribed and the last offset each has.

use indexmap::IndexMap;
use std::collections::HashMap;
use std::sync::Arc;

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
    channels: HashMap<Arc<str>, IndexMap<u32, Subscriber>>,
}

impl LocalSubscribers {
    /// Adds a connection (slab `key`) to `channel`, having seen up to
    /// `last_offset`. Returns the table's copy of the name, which the
    /// channel's subscribers can share.
    pub fn add(&mut self, channel: Arc<str>, key: u32, subscriber: Subscriber) -> Arc<str> {
        let entry = self.channels.entry(channel);
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

    #[test]
    fn subscribers_of_a_channel_share_the_tables_copy_of_its_name() {
        let mut table = LocalSubscribers::default();
        let subscriber = Subscriber { generation: 1, last_offset: 0 };
        let first = table.add(Arc::from("news"), 1, subscriber);
        let second = table.add(Arc::from("news"), 2, subscriber);
        assert!(Arc::ptr_eq(&first, &second));
        let other = table.add(Arc::from("sport"), 1, subscriber);
        assert!(!Arc::ptr_eq(&first, &other));
        assert_eq!(&*other, "sport");
    }

    #[test]
    fn the_last_subscriber_takes_the_channel_with_it() {
        let mut table = LocalSubscribers::default();
        let news: Arc<str> = Arc::from("news");
        table.add(news.clone(), 1, Subscriber { generation: 7, last_offset: 3 });
        table.add(news.clone(), 2, Subscriber { generation: 8, last_offset: 3 });
        table.remove("news", 1);
        assert_eq!(table.get_mut("news").unwrap().len(), 1);
        table.remove("news", 2);
        assert!(table.get_mut("news").is_none());
        assert_eq!(table.channel_count(), 0);
    }
}
