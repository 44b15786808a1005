//! Channel names: what is valid, which namespace a channel is in, and whose it is.

use std::fmt;
use std::sync::Arc;

/// Longest channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 255;

/// A valid channel name: 1..=255 bytes of `[A-Za-z0-9_:.@#=,-]`, or a `$`
/// followed by such bytes (a private channel). None of these bytes needs
/// escaping in JSON, which the push encoders rely on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

/// Why a channel name is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidChannel {
    /// Empty or longer than 255 bytes.
    Length,
    /// A byte outside `[A-Za-z0-9_:.@#=,-]`.
    Character,
    /// A Pusher channel name with a byte outside `[A-Za-z0-9_=@,.;-]`.
    AppCharacter,
}

impl fmt::Display for InvalidChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidChannel::Length => write!(f, "a channel name is 1 to {MAX_CHANNEL_LEN} bytes"),
            InvalidChannel::AppCharacter => f.write_str(
                "a channel name may hold only A-Z a-z 0-9 _ - = @ , . ; (or be #server-to-user-ID)",
            ),
            InvalidChannel::Character => f.write_str(
                "a channel name may hold only A-Z a-z 0-9 _ : . @ # = , - (and a leading $)",
            ),
        }
    }
}

/// Longest Pusher channel name (the Node and Python SDKs' limit; Pusher
/// documents 164).
pub const MAX_APP_CHANNEL_LEN: usize = 200;
/// Longest app id: with the separator and the longest Pusher name, an
/// app channel's name stays within [`MAX_CHANNEL_LEN`].
pub const MAX_APP_ID_LEN: usize = 32;
/// Between an app's id and a Pusher channel name in herald's name for it.
const APP_SEPARATOR: char = ';';
/// The prefix of a Pusher user's own channel.
pub const USER_CHANNEL_PREFIX: &str = "#server-to-user-";

/// What kind of Pusher channel a name is, by its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppChannelKind {
    /// Anyone may subscribe.
    Public,
    /// `private-`: the app's auth endpoint signs each subscription.
    Private,
    /// `private-encrypted-`: private, and the data is encrypted end to end.
    Encrypted,
    /// `presence-`: private, with a member list.
    Presence,
    /// `#server-to-user-ID`: the connections signed in as that user.
    User,
}

impl AppChannelKind {
    /// Whether a subscription needs a signature from the app.
    pub fn needs_auth(self) -> bool {
        matches!(
            self,
            AppChannelKind::Private | AppChannelKind::Encrypted | AppChannelKind::Presence
        )
    }
}

/// The kind of a Pusher channel name and whether it is a cache channel
/// (first matching prefix wins: `private-encrypted-cache-`,
/// `private-encrypted-`, `private-cache-`, `private-`, `presence-cache-`,
/// `presence-`, `cache-`, `#server-to-user-`).
pub fn app_channel_kind(name: &str) -> (AppChannelKind, bool) {
    const PREFIXES: [(&str, AppChannelKind, bool); 8] = [
        ("private-encrypted-cache-", AppChannelKind::Encrypted, true),
        ("private-encrypted-", AppChannelKind::Encrypted, false),
        ("private-cache-", AppChannelKind::Private, true),
        ("private-", AppChannelKind::Private, false),
        ("presence-cache-", AppChannelKind::Presence, true),
        ("presence-", AppChannelKind::Presence, false),
        ("cache-", AppChannelKind::Public, true),
        (USER_CHANNEL_PREFIX, AppChannelKind::User, false),
    ];
    PREFIXES
        .iter()
        .find(|(prefix, _, _)| name.starts_with(prefix))
        .map_or((AppChannelKind::Public, false), |(_, kind, cache)| (*kind, *cache))
}

/// Whether `byte` may appear in a Pusher channel name. Not `:`, the field
/// separator of the strings apps sign.
pub fn is_app_channel_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"_-=@,.;".contains(&byte)
}

/// Whether `byte` may appear in a channel name.
pub fn is_channel_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"_:.@#=,-".contains(&byte)
}

impl ChannelName {
    /// Checks and wraps a name.
    pub fn parse(name: &str) -> Result<ChannelName, InvalidChannel> {
        if name.is_empty() || name.len() > MAX_CHANNEL_LEN {
            return Err(InvalidChannel::Length);
        }
        let rest = name.strip_prefix('$').unwrap_or(name);
        if rest.is_empty() || !rest.bytes().all(is_channel_byte) {
            return Err(InvalidChannel::Character);
        }
        Ok(ChannelName(Arc::from(name)))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared name, for tables keyed by it.
    pub fn shared(&self) -> &Arc<str> {
        &self.0
    }

    /// The namespace: the part before the first `:`, `None` without one.
    /// A private prefix (`$`, `private-`) is not part of it: `$chat:x` and
    /// `private-chat:x` are private channels of namespace `chat`.
    pub fn namespace(&self) -> Option<&str> {
        let name =
            self.0.strip_prefix('$').or_else(|| self.0.strip_prefix("private-")).unwrap_or(&self.0);
        name.split_once(':').map(|(namespace, _)| namespace)
    }

    /// The users a user channel (`...#42` or `...#42,43`) belongs to: the
    /// comma-separated list after the last `#`. `None` for other channels.
    pub fn users(&self) -> Option<impl Iterator<Item = &str>> {
        self.0.rsplit_once('#').map(|(_, users)| users.split(','))
    }

    /// A Pusher app's channel: `name` checked against Pusher's grammar (1
    /// to [`MAX_APP_CHANNEL_LEN`] bytes of `A-Z a-z 0-9 _ - = @ , . ;`, or
    /// `#server-to-user-` and a user id of those bytes), kept as
    /// `{app};{name}`. `;` is not in herald's own grammar, so no `/ws` or
    /// server API name can reach an app's channel, and no app another's.
    pub fn of_app(app: &str, name: &str) -> Result<ChannelName, InvalidChannel> {
        if name.is_empty() || name.len() > MAX_APP_CHANNEL_LEN {
            return Err(InvalidChannel::Length);
        }
        let rest = name.strip_prefix(USER_CHANNEL_PREFIX).unwrap_or(name);
        if rest.is_empty() || !rest.bytes().all(is_app_channel_byte) {
            return Err(InvalidChannel::AppCharacter);
        }
        Ok(ChannelName(Arc::from(format!("{app}{APP_SEPARATOR}{name}"))))
    }

    /// For an app's channel: the app's id and the channel's name in the
    /// Pusher protocol.
    pub fn app(&self) -> Option<(&str, &str)> {
        self.0.split_once(APP_SEPARATOR)
    }

    /// Whether the name marks a private channel (`private-...` or `$...`),
    /// which needs a grant in the connection token.
    pub fn is_private(&self) -> bool {
        self.0.starts_with("private-") || self.0.starts_with('$')
    }
}

/// Tables keyed by channel name are looked up by `&str` (the derived
/// `Hash` and `Eq` are the string's).
impl std::borrow::Borrow<str> for ChannelName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(ChannelName::parse("news").is_ok());
        assert!(ChannelName::parse("chat:room-1.a_b@c#42,43=x").is_ok());
        assert_eq!(ChannelName::parse(""), Err(InvalidChannel::Length));
        assert_eq!(ChannelName::parse(&"a".repeat(256)), Err(InvalidChannel::Length));
        assert!(ChannelName::parse(&"a".repeat(255)).is_ok());
        assert!(ChannelName::parse("$private").is_ok());
        for bad in ["a b", "a/b", "a\"b", "é", "a\\b", "a*", "$", "a$b", "$$a"] {
            assert_eq!(ChannelName::parse(bad), Err(InvalidChannel::Character), "{bad}");
        }
    }

    #[test]
    fn app_channels_follow_pushers_grammar_apart_from_herald_names() {
        let orders = ChannelName::of_app("1", "private-orders.1;a,b=c@d").unwrap();
        assert_eq!(orders.as_str(), "1;private-orders.1;a,b=c@d");
        assert_eq!(orders.app(), Some(("1", "private-orders.1;a,b=c@d")));
        assert_eq!(orders.namespace(), None);
        assert!(ChannelName::parse(orders.as_str()).is_err());
        assert_eq!(ChannelName::parse("news").unwrap().app(), None);
        assert!(ChannelName::of_app("1", "#server-to-user-42").is_ok());
        for bad in ["a:b", "a b", "#x", "#server-to-user-", "a#b", "é", "$x"] {
            assert!(ChannelName::of_app("1", bad).is_err(), "{bad}");
        }
        assert_eq!(ChannelName::of_app("1", ""), Err(InvalidChannel::Length));
        assert!(ChannelName::of_app("1", &"a".repeat(200)).is_ok());
        assert_eq!(ChannelName::of_app("1", &"a".repeat(201)), Err(InvalidChannel::Length));
    }

    #[test]
    fn app_channel_kinds_go_by_the_first_matching_prefix() {
        use AppChannelKind::*;
        let cases = [
            ("orders", Public, false),
            ("cache-x", Public, true),
            ("private-x", Private, false),
            ("private-cache-x", Private, true),
            ("private-encrypted-x", Encrypted, false),
            ("private-encrypted-cache-x", Encrypted, true),
            ("presence-x", Presence, false),
            ("presence-cache-x", Presence, true),
            ("#server-to-user-1", User, false),
            ("x-private-y", Public, false),
        ];
        for (name, kind, cache) in cases {
            assert_eq!(app_channel_kind(name), (kind, cache), "{name}");
        }
    }

    #[test]
    fn namespace_users_and_privacy() {
        let chat = ChannelName::parse("chat:lobby").unwrap();
        assert_eq!(chat.namespace(), Some("chat"));
        assert!(chat.users().is_none());
        assert_eq!(ChannelName::parse("news").unwrap().namespace(), None);
        let dialog = ChannelName::parse("dialog#42,43").unwrap();
        assert_eq!(dialog.users().unwrap().collect::<Vec<_>>(), ["42", "43"]);
        assert!(ChannelName::parse("private-x").unwrap().is_private());
        assert!(ChannelName::parse("$x").unwrap().is_private());
        assert_eq!(ChannelName::parse("$chat:x").unwrap().namespace(), Some("chat"));
        assert_eq!(ChannelName::parse("private-chat:x").unwrap().namespace(), Some("chat"));
        assert_eq!(ChannelName::parse("private-x").unwrap().namespace(), None);
        assert!(!ChannelName::parse("x-private").unwrap().is_private());
    }
}
