//! What crosses the broker: a publication, a presence change or a restart as a neutral value, with each front end's encoding built once per node on first use.

use crate::clock::Millis;
use crate::protocol;
use crate::types::{ConnRef, Epoch, Member};
use crate::wire::frame::{Opcode, encode_frame};
use crate::wire::{pusher, sse};
use bytes::Bytes;
use std::sync::{Arc, OnceLock};

/// One publication of a channel. Its `/ws` frame is its storage (the data
/// is a slice of it: history holds each publication once); the other
/// encodings are made by the first subscriber that needs them and shared
/// by every other.
#[derive(Debug)]
pub struct Publication {
    channel: Arc<str>,
    offset: u64,
    /// The `message` push as one WebSocket text frame.
    frame: Bytes,
    data_start: usize,
    /// `{"channel":..,"offset":..,"data":..}`: SSE events and poll answers.
    json: OnceLock<Bytes>,
    /// The Pusher event frame, for an app's channel.
    pusher: OnceLock<Bytes>,
}

impl Publication {
    /// A publication of `data` (raw JSON, kept byte for byte) at `offset`.
    pub fn new(channel: Arc<str>, offset: u64, data: &[u8]) -> Arc<Publication> {
        let (frame, data_start) = protocol::message_frame(&channel, offset, data);
        Arc::new(Publication {
            channel,
            offset,
            frame,
            data_start,
            json: OnceLock::new(),
            pusher: OnceLock::new(),
        })
    }

    /// The channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Its offset in the channel.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The publication's `data`, sliced out of its frame.
    pub fn data(&self) -> Bytes {
        // The frame ends with the `}` that follows the data.
        self.frame.slice(self.data_start..self.frame.len().saturating_sub(1))
    }

    /// The `/ws` `message` push frame, the same bytes for every subscriber.
    pub fn ws_frame(&self) -> &Bytes {
        &self.frame
    }

    /// The message as SSE and long-poll clients get it.
    pub fn json(&self) -> &Bytes {
        self.json.get_or_init(|| sse::message_json(&self.channel, self.offset, &self.data()))
    }

    /// The event as Pusher clients get it (an app's channel, whose data
    /// is the stored event `{"event":..,"data":..}`).
    pub fn pusher_frame(&self) -> &Bytes {
        self.pusher.get_or_init(|| {
            pusher::event_frame(app_channel_name(&self.channel), &self.data(), self.offset)
        })
    }
}

/// The Pusher protocol's name of an app's channel: what follows the app id.
fn app_channel_name(channel: &str) -> &str {
    channel.split_once(';').map_or(channel, |(_, name)| name)
}

/// A presence change: a client joined or left a channel.
#[derive(Debug)]
pub struct PresenceChange {
    /// `true` for a join, `false` for a leave.
    pub joined: bool,
    /// The channel.
    pub channel: Arc<str>,
    /// Who.
    pub member: Member,
    /// It was the user's first connection to join, or its last to leave
    /// (Pusher's `member_added` and `member_removed` are per user).
    pub user_changed: bool,
    frame: OnceLock<Bytes>,
    pusher: OnceLock<Option<Bytes>>,
}

impl PresenceChange {
    /// A join (`joined`) or leave of `member` in `channel`;
    /// `user_changed`: the user's first connection joined or its last left.
    pub fn new(
        joined: bool,
        channel: Arc<str>,
        member: Member,
        user_changed: bool,
    ) -> Arc<PresenceChange> {
        Arc::new(PresenceChange {
            joined,
            channel,
            member,
            user_changed,
            frame: OnceLock::new(),
            pusher: OnceLock::new(),
        })
    }

    /// `join` or `leave`.
    pub fn op(&self) -> &'static str {
        if self.joined { "join" } else { "leave" }
    }

    /// The `/ws` push frame.
    pub fn ws_frame(&self) -> &Bytes {
        self.frame.get_or_init(|| {
            let text = protocol::presence_event(self.op(), &self.channel, &self.member);
            encode_frame(Opcode::Text, text.as_bytes())
        })
    }

    /// The event as SSE clients get it: the push without its `op`.
    pub fn json(&self) -> Bytes {
        Bytes::from(protocol::presence_event_body(&self.channel, &self.member))
    }

    /// `member_added` or `member_removed` for Pusher clients; `None` when
    /// the user still has (or already had) another connection there.
    pub fn pusher_frame(&self) -> Option<&Bytes> {
        self.pusher
            .get_or_init(|| {
                let channel = app_channel_name(&self.channel);
                let text = match (self.user_changed, self.joined) {
                    (false, _) => return None,
                    (true, true) => pusher::member_added(channel, &self.member),
                    (true, false) => pusher::member_removed(channel, &self.member.user),
                };
                Some(encode_frame(Opcode::Text, &text))
            })
            .as_ref()
    }
}

/// A message that is not kept: no offset, no history (a Pusher client
/// event), its frame text made by the sender once.
#[derive(Debug)]
pub struct Relayed {
    /// The channel.
    pub channel: Arc<str>,
    text: Bytes,
    frame: OnceLock<Bytes>,
}

impl Relayed {
    /// A message for `channel` whose subscribers get `text` as one frame.
    pub fn new(channel: Arc<str>, text: Bytes) -> Arc<Relayed> {
        Arc::new(Relayed { channel, text, frame: OnceLock::new() })
    }

    /// The frame's text, as the sender made it.
    pub fn text(&self) -> &Bytes {
        &self.text
    }

    /// The text frame, built once per node.
    pub fn frame(&self) -> &Bytes {
        self.frame.get_or_init(|| encode_frame(Opcode::Text, &self.text))
    }
}

/// The channel's epoch changed under its subscribers (the Redis engine lost
/// its history): each starts over after `top` and is told so.
#[derive(Debug)]
pub struct Restart {
    /// The channel.
    pub channel: Arc<str>,
    /// The new epoch.
    pub epoch: Epoch,
    /// Subscribers are at this offset now: what follows is new to them.
    pub top: u64,
    frame: OnceLock<Bytes>,
    pusher: OnceLock<Bytes>,
}

impl Restart {
    /// A restart of `channel` at `epoch`, after `top`.
    pub fn new(channel: Arc<str>, epoch: Epoch, top: u64) -> Arc<Restart> {
        Arc::new(Restart { channel, epoch, top, frame: OnceLock::new(), pusher: OnceLock::new() })
    }

    /// `pusher_internal:herald_subscribed` with `recovered:false`, for
    /// `herald-pusher.js`.
    pub fn pusher_frame(&self) -> &Bytes {
        self.pusher.get_or_init(|| {
            let channel = app_channel_name(&self.channel);
            let text =
                pusher::herald_subscribed(channel, self.epoch.as_str(), self.top, Some((false, 0)));
            encode_frame(Opcode::Text, &text)
        })
    }

    /// The `subscribed` push with `recovered:false` that `/ws` clients get.
    pub fn ws_frame(&self) -> &Bytes {
        self.frame.get_or_init(|| {
            let text = protocol::subscribed(
                None,
                &self.channel,
                self.epoch.as_str(),
                self.top,
                Some((false, 0)),
            );
            encode_frame(Opcode::Text, &text)
        })
    }
}

/// What a delivery carries.
#[derive(Debug, Clone)]
pub enum Event {
    /// A publication.
    Publication(Arc<Publication>),
    /// A join or a leave.
    Presence(Arc<PresenceChange>),
    /// The channel started over.
    Restart(Arc<Restart>),
    /// A message that is not kept (a Pusher client event).
    Relay(Arc<Relayed>),
}

/// An event for the subscribers of one channel on one shard.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The channel.
    pub channel: Arc<str>,
    /// What happened.
    pub event: Event,
    /// A connection that must not get it (`skip_self`, `exclude_client`, the
    /// joiner of its own join).
    pub exclude: Option<ConnRef>,
}

impl Delivery {
    /// The publication's offset, if it is one.
    pub fn offset(&self) -> Option<u64> {
        match &self.event {
            Event::Publication(publication) => Some(publication.offset),
            _ => None,
        }
    }
}

/// A subscriber's position in a channel, as a subscribe finds it.
#[derive(Debug)]
pub struct Position {
    /// The channel's epoch.
    pub epoch: Epoch,
    /// The newest offset: the subscriber gets every publication after it.
    pub offset: u64,
    /// With `since`: whether everything after it could be replayed, and what
    /// to replay.
    pub recovery: Option<Recovery>,
    /// The channel's members, where the subscription asked for them (the
    /// subscriber may or may not be among them yet).
    pub members: Vec<Member>,
    /// The newest publication history holds, where the subscription asked
    /// for it (a Pusher cache channel's event).
    pub newest: Option<Arc<Publication>>,
}

/// The outcome of recovery on subscribe.
#[derive(Debug)]
pub struct Recovery {
    /// Every publication after `since` is in `missed`.
    pub recovered: bool,
    /// The missed publications, oldest first.
    pub missed: Vec<Arc<Publication>>,
}

/// A publication kept in history, with when it was made (history expires
/// by age).
#[derive(Debug, Clone)]
pub(crate) struct Kept {
    pub(crate) at: Millis,
    pub(crate) publication: Arc<Publication>,
}
