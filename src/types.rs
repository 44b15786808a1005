//! Values every layer shares: where a connection is, a position in a channel, a member, what a user call does, which transitions webhooks hear of, and why the engine refuses.

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

/// The Pusher `socket_id` of `who` on `node`: `NODE.CONN`, two decimal
/// numbers as every Pusher SDK requires (`^\d+\.\d+$`): the node id's 32
/// bits, then shard, slot (10 digits) and generation (10 digits). It names
/// the same connection as its client id ([`client_id_of_socket`]).
pub fn socket_id(node: &str, who: ConnRef) -> String {
    let node = u32::from_str_radix(node, 16).unwrap_or(0);
    format!("{node}.{}{:010}{:010}", who.shard, who.key, who.generation)
}

/// The client id a Pusher `socket_id` names (for excluding it from a
/// publication on whichever node it lives), if it is one herald made.
pub fn client_id_of_socket(socket_id: &str) -> Option<String> {
    let (node, conn) = socket_id.split_once('.')?;
    let node: u32 = node.parse().ok()?;
    if conn.len() < 21 || !conn.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (shard, rest) = conn.split_at(conn.len() - 20);
    let (key, generation) = rest.split_at(10);
    let who = ConnRef {
        shard: shard.parse().ok()?,
        key: key.parse().ok()?,
        generation: generation.parse().ok()?,
    };
    Some(client_id(&format!("{node:08x}"), who))
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
    /// How long ago the newest publication kept was made, in milliseconds
    /// (a Pusher cache channel's remaining TTL follows from it).
    pub newest_age_ms: Option<u64>,
}

/// A subscriber's presence: its client id and user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The client id.
    pub client: Arc<str>,
    /// The user id (`""` for anonymous).
    pub user: Arc<str>,
    /// What the app says about the user (a Pusher presence member's
    /// `user_info`, raw JSON); `None` on `/ws`.
    pub info: Option<Arc<str>>,
}

impl Member {
    /// A member without `info`.
    pub fn new(client: Arc<str>, user: Arc<str>) -> Member {
        Member { client, user, info: None }
    }

    /// The user and info as one string, as the Redis engine keeps and
    /// announces them: `LEN:USER` then the info, `LEN` being the user's
    /// length in bytes.
    pub fn encode_user(&self) -> String {
        let info = self.info.as_deref().unwrap_or("");
        format!("{}:{}{info}", self.user.len(), self.user)
    }

    /// A member of `client` from [`Member::encode_user`]'s string.
    pub fn decode_user(client: Arc<str>, encoded: &str) -> Option<Member> {
        let (length, rest) = encoded.split_once(':')?;
        let length: usize = length.parse().ok()?;
        let user = rest.get(..length)?;
        let info = rest.get(length..)?;
        Some(Member {
            client,
            user: Arc::from(user),
            info: (!info.is_empty()).then(|| Arc::from(info)),
        })
    }
}

/// What a server API call does to every connection of one user.
#[derive(Debug, Clone)]
pub enum UserAction {
    /// Close them with 4000.
    Disconnect,
    /// Unsubscribe them from a channel (they get an `unsubscribed` push).
    Unsubscribe(ChannelName),
    /// Close the Pusher connections signed in as the user (the user being
    /// `APP;ID`) with 4009.
    Terminate,
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NoticeKind {
    /// The channel's first subscriber on any node.
    ChannelOccupied,
    /// The channel's last subscriber on every node left.
    ChannelVacated,
    /// A user's first connection in a presence channel.
    MemberAdded,
    /// A user's last connection in a presence channel left.
    MemberRemoved,
    /// A client sent a client event (Pusher apps).
    ClientEvent,
    /// A subscriber of a cache channel found no event (Pusher apps).
    CacheMiss,
}

impl NoticeKind {
    /// Every kind, in the order of their bits.
    pub const ALL: [NoticeKind; 6] = [
        NoticeKind::ChannelOccupied,
        NoticeKind::ChannelVacated,
        NoticeKind::MemberAdded,
        NoticeKind::MemberRemoved,
        NoticeKind::ClientEvent,
        NoticeKind::CacheMiss,
    ];

    /// The event's name in webhook bodies (Pusher's names).
    pub fn name(self) -> &'static str {
        match self {
            NoticeKind::ChannelOccupied => "channel_occupied",
            NoticeKind::ChannelVacated => "channel_vacated",
            NoticeKind::MemberAdded => "member_added",
            NoticeKind::MemberRemoved => "member_removed",
            NoticeKind::ClientEvent => "client_event",
            NoticeKind::CacheMiss => "cache_miss",
        }
    }

    /// The kind a name stands for.
    pub fn from_name(name: &str) -> Option<NoticeKind> {
        NoticeKind::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// Its bit in a [`NoticeKinds`] set.
    pub fn bit(self) -> u8 {
        match self {
            NoticeKind::ChannelOccupied => 1,
            NoticeKind::ChannelVacated => 2,
            NoticeKind::MemberAdded => 4,
            NoticeKind::MemberRemoved => 8,
            NoticeKind::ClientEvent => 16,
            NoticeKind::CacheMiss => 32,
        }
    }

    /// Whether it is the undoing of `other` (a leave and a join of the
    /// same thing): within the grace period the two cancel out.
    pub fn undoes(self, other: NoticeKind) -> bool {
        matches!(
            (self, other),
            (NoticeKind::ChannelOccupied, NoticeKind::ChannelVacated)
                | (NoticeKind::MemberAdded, NoticeKind::MemberRemoved)
        )
    }
}

/// A set of kinds, as a bit set (one byte, so that channel options stay
/// small and `Copy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoticeKinds(pub u8);

impl NoticeKinds {
    /// Whether `kind` is in the set.
    pub fn has(self, kind: NoticeKind) -> bool {
        self.0 & kind.bit() != 0
    }

    /// Whether occupancy (occupied or vacated) is asked for.
    pub fn occupancy(self) -> bool {
        self.has(NoticeKind::ChannelOccupied) || self.has(NoticeKind::ChannelVacated)
    }

    /// Whether membership (added or removed) is asked for.
    pub fn membership(self) -> bool {
        self.has(NoticeKind::MemberAdded) || self.has(NoticeKind::MemberRemoved)
    }

    /// Adds `kind`.
    pub fn with(self, kind: NoticeKind) -> NoticeKinds {
        NoticeKinds(self.0 | kind.bit())
    }
}

/// One transition, as a webhook reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// What happened.
    pub kind: NoticeKind,
    /// The channel, as the engine names it (`APP;NAME` for an app's).
    pub channel: String,
    /// The user, for member and (presence) client notices.
    pub user: Option<String>,
    /// A client event's name.
    pub event: Option<String>,
    /// A client event's data, raw JSON as sent.
    pub data: Option<String>,
    /// The Pusher socket id of a client event's sender.
    pub socket_id: Option<String>,
    /// When it happened, Unix milliseconds.
    pub time_ms: u64,
}

impl Notice {
    /// A notice of `kind` about `channel` (and `user`), now.
    pub fn new(kind: NoticeKind, channel: &str, user: Option<&str>) -> Notice {
        Notice {
            kind,
            channel: channel.to_string(),
            user: user.map(str::to_string),
            event: None,
            data: None,
            socket_id: None,
            time_ms: crate::clock::unix_millis(),
        }
    }

    /// The scope whose queue it goes to: the app of an app's channel
    /// (`app:ID`), else the namespace (`ns:NAME`, `ns:` without one).
    pub fn scope(&self) -> String {
        scope_of(&self.channel)
    }

    /// The notice as field/value pairs (a Redis stream entry).
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("k", self.kind.name().to_string()),
            ("c", self.channel.clone()),
            ("t", self.time_ms.to_string()),
        ];
        let optional =
            [("u", &self.user), ("e", &self.event), ("d", &self.data), ("s", &self.socket_id)];
        for (name, value) in optional {
            if let Some(value) = value {
                fields.push((name, value.clone()));
            }
        }
        fields
    }

    /// A notice from [`Notice::to_fields`]'s pairs.
    pub fn from_fields<'a>(fields: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<Notice> {
        let (mut kind, mut channel, mut time_ms) = (None, None, None);
        let mut notice = Notice::new(NoticeKind::CacheMiss, "", None);
        for (name, value) in fields {
            match name {
                "k" => kind = NoticeKind::from_name(value),
                "c" => channel = Some(value.to_string()),
                "t" => time_ms = value.parse().ok(),
                "u" => notice.user = Some(value.to_string()),
                "e" => notice.event = Some(value.to_string()),
                "d" => notice.data = Some(value.to_string()),
                "s" => notice.socket_id = Some(value.to_string()),
                _ => {}
            }
        }
        notice.kind = kind?;
        notice.channel = channel?;
        notice.time_ms = time_ms?;
        Some(notice)
    }
}

/// The scope of a channel's notices: `app:ID` or `ns:NAMESPACE`.
pub fn scope_of(channel: &str) -> String {
    if let Some((app, _)) = channel.split_once(';') {
        return format!("app:{app}");
    }
    let name =
        channel.strip_prefix('$').or_else(|| channel.strip_prefix("private-")).unwrap_or(channel);
    match name.split_once(':') {
        Some((namespace, _)) => format!("ns:{namespace}"),
        None => "ns:".to_string(),
    }
}

/// Why the engine refused. Each front end maps these to its wire in one
/// place (an HTTP status, a `/ws` error code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerError {
    /// The channel's namespace is not configured.
    UnknownNamespace(String),
    /// The channel's Pusher app is not configured (on this node).
    UnknownApp(String),
    /// The presence channel has its limit of distinct users.
    PresenceFull(usize),
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
            BrokerError::UnknownApp(app) => {
                format!("unknown app {app:?}: configure it in [[apps]]")
            }
            BrokerError::PresenceFull(max) => {
                format!("the presence channel has its limit of {max} members")
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
    fn socket_ids_are_two_decimal_numbers_that_name_the_client() {
        let who = ConnRef { shard: 3, key: 1234, generation: 99 };
        let socket = socket_id("a1b2c3d4", who);
        assert_eq!(socket, format!("{}.300000012340000000099", 0xa1b2_c3d4_u32));
        assert_eq!(client_id_of_socket(&socket).as_deref(), Some("a1b2c3d4-3-1234-99"));
        let widest = ConnRef { shard: u16::MAX, key: u32::MAX, generation: u32::MAX };
        let socket = socket_id("00000001", widest);
        assert_eq!(client_id_of_socket(&socket), Some(client_id("00000001", widest)));
        for bad in ["1.2", "x.300000012340000000099", "1", "1.30000001234000000009x", "1.-3"] {
            assert_eq!(client_id_of_socket(bad), None, "{bad}");
        }
    }

    #[test]
    fn members_user_and_info_travel_as_one_string() {
        let member = Member {
            client: Arc::from("c"),
            user: Arc::from("a:1"),
            info: Some(Arc::from(r#"{"name":"A"}"#)),
        };
        assert_eq!(member.encode_user(), r#"3:a:1{"name":"A"}"#);
        assert_eq!(Member::decode_user(Arc::from("c"), &member.encode_user()), Some(member));
        let plain = Member::new(Arc::from("c"), Arc::from("bob"));
        assert_eq!(Member::decode_user(Arc::from("c"), &plain.encode_user()), Some(plain));
        assert_eq!(Member::decode_user(Arc::from("c"), "9:bob"), None);
    }

    #[test]
    fn epochs_are_eight_hex_digits() {
        assert_eq!(Epoch::from_u32(0x5e0c_1a2b).as_str(), "5e0c1a2b");
        assert_eq!(Epoch::parse("5e0c1a2b"), Some(Epoch::from_u32(0x5e0c_1a2b)));
        assert_eq!(Epoch::parse("5e0c1a2"), None);
        assert_eq!(Epoch::parse("5e0c1a2g"), None);
    }
}
