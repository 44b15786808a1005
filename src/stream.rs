//! The SSE and long-poll front end: subscribers over plain HTTP, with a cursor that holds the position of every channel of the request, and everything they receive written as SSE events or poll messages.

use crate::broker::{Answer, Event, Position, Publication, ReplyTo, Subscription};
use crate::channel::ChannelName;
use crate::error::HttpError;
use crate::node::local::{Local, PENDING};
use crate::node::subscribers::Subscriber;
use crate::types::{BrokerError, ConnRef, Since};
use crate::wire::sse::{self, sse_event};
use bytes::Bytes;
use std::fmt::Write as _;
use std::sync::Arc;

/// Most channels one `/sse` or `/poll` request may name.
pub const MAX_STREAM_CHANNELS: usize = 64;
/// The longest `timeout` a long-poll may ask for, in seconds.
pub const MAX_POLL_TIMEOUT_SECS: u64 = 60;
/// A long-poll's `timeout` when it names none, in seconds.
pub const DEFAULT_POLL_TIMEOUT_SECS: u64 = 25;

/// The subscription of one `/sse` or `/poll` request.
#[derive(Debug)]
pub struct StreamSub {
    me: ConnRef,
    /// The channels, in the request's order.
    channels: Vec<ChannelName>,
    /// Each channel's epoch and newest offset this client has.
    positions: Vec<(String, u64)>,
}

/// One channel of a stream, subscribed: what to tell the client.
#[derive(Debug)]
pub struct Opened {
    /// The channel's index in the request.
    pub index: usize,
    /// With a cursor position: `(recovered, missed)`.
    pub recovery: Option<(bool, usize)>,
    /// Publications to send now, in order (missed, then held back).
    pub publications: Vec<Arc<Publication>>,
}

impl StreamSub {
    /// Subscribes connection `me` to `channels` (from `since`, when given,
    /// one position per channel). Returns the channels the engine answered
    /// at once; the others are answered later ([`StreamSub::on_subscribed`]),
    /// their index being the answer's id. On failure nothing stays
    /// subscribed.
    pub fn open(
        me: ConnRef,
        channels: Vec<ChannelName>,
        since: Option<&[Option<Since>]>,
        local: &mut Local,
    ) -> Result<(StreamSub, Vec<Opened>), HttpError> {
        let mut sub = StreamSub { me, channels: Vec::new(), positions: Vec::new() };
        let mut opened = Vec::new();
        let replay_limit = local.config.max_outbound_bytes / 4;
        for (index, channel) in channels.into_iter().enumerate() {
            let since = since.and_then(|since| since.get(index)).and_then(Option::as_ref);
            let subscription = Subscription {
                channel: &channel,
                who: me,
                member: None,
                since,
                replay_limit,
                members: false,
                newest: false,
                member_limit: 0,
            };
            let reply = ReplyTo { conn: me, id: Some(index as u64) };
            let (last_offset, position) = match local.shared.engine.subscribe(subscription, reply) {
                Answer::Now(Err(error)) => {
                    sub.release(local);
                    return Err(crate::api::refusal(error));
                }
                Answer::Now(Ok(position)) => (position.offset, Some(position)),
                Answer::Later => (PENDING, None),
            };
            let name = local.locals.add(
                &channel,
                me.key,
                Subscriber { generation: me.generation, last_offset },
            );
            sub.channels.push(name);
            // Until the engine answers, the client is where its cursor says.
            sub.positions.push(since.map(|s| (s.epoch.clone(), s.offset)).unwrap_or_default());
            if let Some(position) = position {
                let missed =
                    position.recovery.as_ref().map(|r| r.missed.clone()).unwrap_or_default();
                opened.push(sub.take_position(index, &position, missed));
            }
        }
        Ok((sub, opened))
    }

    /// Records the position the engine gave channel `index`: recovering,
    /// the client is at its cursor and each replayed publication moves it
    /// forward; otherwise it starts from the channel's newest offset.
    fn take_position(
        &mut self,
        index: usize,
        position: &Position,
        publications: Vec<Arc<Publication>>,
    ) -> Opened {
        let recovery = position.recovery.as_ref().map(|r| (r.recovered, r.missed.len()));
        let recovered = recovery.is_some_and(|(recovered, _)| recovered);
        if let Some((epoch, offset)) = self.positions.get_mut(index) {
            *epoch = position.epoch.as_str().to_string();
            if !recovered {
                *offset = position.offset;
            }
        }
        Opened { index, recovery, publications }
    }

    /// The engine's later answer for channel `index`.
    pub fn on_subscribed(
        &mut self,
        index: usize,
        channel: &ChannelName,
        result: Result<Position, BrokerError>,
        local: &mut Local,
    ) -> Result<Opened, BrokerError> {
        let position = match result {
            Ok(position) => position,
            Err(error) => {
                local.pending.remove(&(self.me.key, channel.shared().clone()));
                return Err(error);
            }
        };
        let missed = position.recovery.as_ref().map(|r| r.missed.clone()).unwrap_or_default();
        let publications = local.catch_up(self.me.key, channel.shared(), position.offset, missed);
        Ok(self.take_position(index, &position, publications))
    }

    /// Leaves every channel.
    pub fn release(&mut self, local: &mut Local) {
        for channel in std::mem::take(&mut self.channels) {
            local.locals.remove(channel.as_str(), self.me.key);
            local.pending.remove(&(self.me.key, channel.shared().clone()));
            local.shared.engine.unsubscribe(&channel, self.me, None);
        }
    }

    /// The index of `channel`, if the request named it.
    pub fn index_of(&self, channel: &str) -> Option<usize> {
        self.channels.iter().position(|c| c.as_str() == channel)
    }

    /// Channels of the request.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// The channel at `index`.
    pub fn channel(&self, index: usize) -> &str {
        self.channels.get(index).map_or("", ChannelName::as_str)
    }

    /// Records that the client has `offset` of channel `index`.
    fn advance(&mut self, index: usize, offset: u64) {
        if let Some((_, at)) = self.positions.get_mut(index) {
            *at = (*at).max(offset);
        }
    }

    /// The cursor of the positions now.
    pub fn cursor(&self) -> String {
        sse::write_cursor(self.positions.iter().map(|(epoch, offset)| (epoch.as_str(), *offset)))
    }

    /// Channel `index`'s `{"channel":..,"epoch":..,"offset":..}` now.
    fn describe(&self, index: usize, recovered: Option<(bool, usize)>) -> String {
        let (epoch, offset) = self.positions.get(index).cloned().unwrap_or_default();
        let mut out =
            format!(r#"{{"channel":"{}","epoch":"{epoch}","offset":{offset}"#, self.channel(index));
        if let Some((recovered, missed)) = recovered {
            let _ = write!(out, r#","recovered":{recovered},"missed":{missed}"#);
        }
        out.push('}');
        out
    }
}

/// The SSE events for a channel just subscribed: `subscribed` with the
/// recovery, then each publication with the cursor after it.
pub fn sse_opened(sub: &mut StreamSub, opened: Opened) -> Vec<Bytes> {
    let cursor = sub.cursor();
    let body = sub.describe(opened.index, opened.recovery);
    let mut events = Vec::with_capacity(1 + opened.publications.len());
    events.push(sse_event("subscribed", Some(&cursor), body.as_bytes()));
    for publication in opened.publications {
        sub.advance(opened.index, publication.offset());
        events.push(sse_event("message", Some(&sub.cursor()), publication.json()));
    }
    events
}

/// The SSE event for something delivered on the stream's channels, if it
/// is one of them.
pub fn sse_delivered(sub: &mut StreamSub, channel: &str, event: &Event) -> Option<Bytes> {
    let index = sub.index_of(channel)?;
    Some(match event {
        // Only Pusher clients subscribe to the channels these go to.
        Event::Relay(_) => return None,
        Event::Publication(publication) => {
            sub.advance(index, publication.offset());
            sse_event("message", Some(&sub.cursor()), publication.json())
        }
        Event::Presence(change) => sse_event(change.op(), None, &change.json()),
        Event::Restart(restart) => {
            if let Some(position) = sub.positions.get_mut(index) {
                *position = (restart.epoch.as_str().to_string(), restart.top);
            }
            let body = sub.describe(index, Some((false, 0)));
            sse_event("subscribed", Some(&sub.cursor()), body.as_bytes())
        }
    })
}

/// A held poll's answer as it builds up.
#[derive(Debug, Default)]
pub struct PollAnswer {
    /// Message bodies (`{"channel":..,"offset":..,"data":..}`), in order.
    pub messages: Vec<Bytes>,
    /// Some channel's cursor position could not be recovered.
    pub unrecovered: bool,
}

impl PollAnswer {
    /// A channel was subscribed: what it brought.
    pub fn opened(&mut self, sub: &mut StreamSub, opened: Opened) {
        if opened.recovery.is_some_and(|(recovered, _)| !recovered) {
            self.unrecovered = true;
        }
        for publication in opened.publications {
            sub.advance(opened.index, publication.offset());
            self.messages.push(publication.json().clone());
        }
    }

    /// Something delivered on the poll's channels: publications are
    /// collected, a restart noted; presence changes are not for polls.
    /// Returns whether it was taken.
    pub fn delivered(&mut self, sub: &mut StreamSub, channel: &str, event: &Event) -> bool {
        let Some(index) = sub.index_of(channel) else { return false };
        match event {
            Event::Publication(publication) => {
                sub.advance(index, publication.offset());
                self.messages.push(publication.json().clone());
                true
            }
            Event::Restart(restart) => {
                if let Some(position) = sub.positions.get_mut(index) {
                    *position = (restart.epoch.as_str().to_string(), restart.top);
                }
                self.unrecovered = true;
                false
            }
            Event::Presence(_) | Event::Relay(_) => false,
        }
    }

    /// The answer's body: `{"cursor":..,["recovered":false,]"messages":[..]}`.
    pub fn body(&self, sub: &StreamSub) -> Vec<u8> {
        let size: usize = self.messages.iter().map(|m| m.len() + 1).sum();
        let mut body = Vec::with_capacity(size + 96);
        body.extend_from_slice(br#"{"cursor":""#);
        body.extend_from_slice(sub.cursor().as_bytes());
        body.extend_from_slice(br#"","#);
        if self.unrecovered {
            body.extend_from_slice(br#""recovered":false,"#);
        }
        body.extend_from_slice(br#""messages":["#);
        for (index, message) in self.messages.iter().enumerate() {
            if index > 0 {
                body.push(b',');
            }
            body.extend_from_slice(message);
        }
        body.extend_from_slice(b"]}");
        body
    }
}
