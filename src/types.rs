//! Values every layer shares: where a connection is, a position in a channel, a member, what a user call does, and why the engine refuses.

use crate::channel::ChannelName;
use bytes::Bytes;
use std::sync::Arc;

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

/// A client id for `who` on `node`: node, shard, slot and generation, so it
/// is unique on the node and across restarts, and the node can find the
/// connection from it.
pub fn client_id(node: &str, who: ConnRef) -> String {
    format!("{node}-{}-{}-{}", who.shard, who.key, who.generation)
}

/// The connection a client id names, if it was made on `node`.
pub fn parse_client_id(node: &str, id: &str) -> Option<ConnRef> {
    let rest = id.strip_prefix(node)?.strip_prefix('-')?;
    let mut parts = rest.split('-');
    let conn = ConnRef {
        shard: parts.next()?.parse().ok()?,
        key: parts.next()?.parse().ok()?,
        generation: parts.next()?.parse().ok()?,
    };
    parts.next().is_none().then_some(conn)
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
    /// The epoch written as the eight hex digits of `value`.
    pub fn from_u32(value: u32) -> Epoch {
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

/// Where a publication landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The channel's epoch.
    pub epoch: Epoch,
    /// The publication's offset.
    pub offset: u64,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The client id.
    pub client: Arc<str>,
    /// The user id (`""` for anonymous).
    pub user: Arc<str>,
}

/// What a server API call does to every connection of one user.
#[derive(Debug, Clone)]
pub enum UserAction {
    /// Close them with 4000.
    Disconnect,
    /// Unsubscribe them from a channel (they get an `unsubscribed` push).
    Unsubscribe(ChannelName),
}

/// Why the engine refused. Each front end maps these to its wire in one
/// place (an HTTP status, a `/ws` error code).
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
    /// The engine cannot do it now (Redis is down, its queue is full, or it
    /// did not answer in time); the message says which.
    Unavailable(String),
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
            BrokerError::Unavailable(why) => why.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_round_trip() {
        let who = ConnRef { shard: 3, key: 1234, generation: 99 };
        let id = client_id("a1b2c3d4", who);
        assert_eq!(id, "a1b2c3d4-3-1234-99");
        assert_eq!(parse_client_id("a1b2c3d4", &id), Some(who));
        assert_eq!(parse_client_id("ffffffff", &id), None);
        assert_eq!(parse_client_id("a1b2c3d4", "a1b2c3d4-3-1234"), None);
        assert_eq!(parse_client_id("a1b2c3d4", "a1b2c3d4-3-1234-99-1"), None);
        assert_eq!(parse_client_id("a1b2c3d4", "a1b2c3d4-x-1-1"), None);
    }

    #[test]
    fn epochs_are_eight_hex_digits() {
        assert_eq!(Epoch::from_u32(0x5e0c_1a2b).as_str(), "5e0c1a2b");
        assert_eq!(Epoch::parse("5e0c1a2b"), Some(Epoch::from_u32(0x5e0c_1a2b)));
        assert_eq!(Epoch::parse("5e0c1a2"), None);
        assert_eq!(Epoch::parse("5e0c1a2g"), None);
    }
}
