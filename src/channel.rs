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
}

impl fmt::Display for InvalidChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidChannel::Length => write!(f, "a channel name is 1 to {MAX_CHANNEL_LEN} bytes"),
            InvalidChannel::Character => f.write_str(
                "a channel name may hold only A-Z a-z 0-9 _ : . @ # = , - (and a leading $)",
            ),
        }
    }
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

    /// Whether the name marks a private channel (`private-...` or `$...`),
    /// which needs a grant in the connection token.
    pub fn is_private(&self) -> bool {
        self.0.starts_with("private-") || self.0.starts_with('$')
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
