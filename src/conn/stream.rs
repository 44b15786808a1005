//! `/sse` and `/poll`: subscribers over plain HTTP, with a cursor that holds the position of every channel of the request.

use super::Ctx;
use crate::broker::channel::ChannelName;
use crate::broker::{ConnRef, Since};
use crate::error::HttpError;
use bytes::Bytes;
use std::fmt::Write as _;

/// Most channels one `/sse` or `/poll` request may name.
pub const MAX_STREAM_CHANNELS: usize = 64;
/// The reconnection delay an SSE stream advises (`retry:`), in milliseconds.
pub const SSE_RETRY_MS: u64 = 2000;
/// The longest `timeout` a long-poll may ask for, in seconds.
pub const MAX_POLL_TIMEOUT_SECS: u64 = 60;
/// A long-poll's `timeout` when it names none, in seconds.
pub const DEFAULT_POLL_TIMEOUT_SECS: u64 = 25;

/// Parses a cursor: one `EPOCH-OFFSET` per channel of the request, in the
/// request's order, joined by `.`; an empty entry is a channel without a
/// position (it starts from now).
pub fn parse_cursor(text: &str, channels: usize) -> Result<Vec<Option<Since>>, HttpError> {
    let bad = || HttpError::InvalidRequest("the cursor does not match the channels".into());
    let positions: Vec<Option<Since>> = text
        .split('.')
        .map(|part| {
            if part.is_empty() {
                return Some(None);
            }
            let (epoch, offset) = part.split_once('-')?;
            let epoch_ok = !epoch.is_empty()
                && epoch.len() <= 16
                && epoch.bytes().all(|b| b.is_ascii_hexdigit());
            let offset = offset.parse().ok()?;
            epoch_ok.then(|| Some(Since { epoch: epoch.to_string(), offset }))
        })
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    if positions.len() == channels { Ok(positions) } else { Err(bad()) }
}

/// The subscription of one `/sse` or `/poll` request.
#[derive(Debug)]
pub struct StreamSub {
    me: ConnRef,
    /// The channels, in the request's order.
    channels: Vec<ChannelName>,
    /// Each channel's epoch and newest offset this client has.
    positions: Vec<(String, u64)>,
}

/// What subscribing found.
#[derive(Debug, Default)]
pub struct Opened {
    /// `(channel index, recovered, missed)` per channel subscribed with a
    /// cursor position.
    pub recovery: Vec<(usize, bool, usize)>,
    /// Missed publications to replay, as `message` push frames, in order.
    pub missed: Vec<(usize, Bytes)>,
}

impl StreamSub {
    /// Subscribes connection `me` to `channels` (from `since`, when given,
    /// one position per channel). On failure nothing stays subscribed.
    pub fn open(
        me: ConnRef,
        channels: Vec<ChannelName>,
        since: Option<&[Option<Since>]>,
        ctx: &mut Ctx,
    ) -> Result<(StreamSub, Opened), HttpError> {
        let mut sub = StreamSub { me, channels: Vec::new(), positions: Vec::new() };
        let mut opened = Opened::default();
        let replay_limit = ctx.config.max_outbound_bytes / 4;
        for (index, channel) in channels.into_iter().enumerate() {
            let position = since.and_then(|since| since.get(index)).and_then(Option::as_ref);
            let subscribed =
                match ctx.shared.broker.subscribe(&channel, me, None, position, replay_limit) {
                    Ok(subscribed) => subscribed,
                    Err(error) => {
                        sub.release(ctx);
                        return Err(error.into());
                    }
                };
            ctx.locals.add(
                channel.shared().clone(),
                me.key,
                crate::shard::subscribers::Subscriber {
                    generation: me.generation,
                    last_offset: subscribed.offset,
                },
            );
            // Recovering, the client is at its cursor and each replayed
            // message moves it forward; otherwise it starts from now.
            let offset = match (&subscribed.recovery, position) {
                (Some(recovery), Some(position)) if recovery.recovered => position.offset,
                _ => subscribed.offset,
            };
            if let Some(recovery) = subscribed.recovery {
                opened.recovery.push((index, recovery.recovered, recovery.missed.len()));
                opened.missed.extend(recovery.missed.into_iter().map(|frame| (index, frame)));
            }
            sub.channels.push(channel);
            sub.positions.push((subscribed.epoch.as_str().to_string(), offset));
        }
        Ok((sub, opened))
    }

    /// With the Redis engine: subscribes `me` to `channels` on this node
    /// and asks Redis for each channel's position (from `since`); the
    /// answers come back through the shard's inbox, one per channel, with
    /// the channel's index as the id. On failure nothing stays subscribed.
    pub fn open_remote(
        me: ConnRef,
        channels: Vec<ChannelName>,
        since: Option<&[Option<Since>]>,
        ctx: &mut Ctx,
    ) -> Result<StreamSub, HttpError> {
        let broker = &ctx.shared.broker;
        let replay_limit = ctx.config.max_outbound_bytes / 4;
        let mut sub = StreamSub { me, channels: Vec::new(), positions: Vec::new() };
        for (index, channel) in channels.into_iter().enumerate() {
            let position = since.and_then(|since| since.get(index)).and_then(Option::clone);
            if let Err(error) = broker.subscribe_node(&channel, me, None) {
                sub.release(ctx);
                return Err(error.into());
            }
            ctx.locals.add(
                channel.shared().clone(),
                me.key,
                crate::shard::subscribers::Subscriber {
                    generation: me.generation,
                    last_offset: crate::conn::client::PENDING,
                },
            );
            sub.positions
                .push(position.as_ref().map(|p| (p.epoch.clone(), p.offset)).unwrap_or_default());
            if let Some(engine) = broker.redis() {
                engine.submit(crate::broker::redis::Job::Subscribe {
                    channel: channel.clone(),
                    who: me,
                    id: Some(index as u64),
                    since: position,
                    replay_limit,
                });
            }
            sub.channels.push(channel);
        }
        Ok(sub)
    }

    /// Sets channel `index`'s epoch, and its offset unless `None` (the
    /// client's own position stands: what it missed is being replayed).
    pub fn set_position(&mut self, index: usize, epoch: &str, offset: Option<u64>) {
        if let Some(position) = self.positions.get_mut(index) {
            position.0 = epoch.to_string();
            if let Some(offset) = offset {
                position.1 = offset;
            }
        }
    }

    /// A `subscribed` push's body (`{"channel":..,"epoch":..,"offset":..}`)
    /// after the channel's epoch changed: its position starts over there.
    pub fn restart(&mut self, body: &[u8]) {
        let Ok(notice) = serde_json::from_slice::<serde_json::Value>(body) else { return };
        let (Some(channel), Some(epoch), Some(offset)) = (
            notice.get("channel").and_then(serde_json::Value::as_str),
            notice.get("epoch").and_then(serde_json::Value::as_str),
            notice.get("offset").and_then(serde_json::Value::as_u64),
        ) else {
            return;
        };
        if let Some(index) = self.index_of(channel) {
            self.set_position(index, epoch, Some(offset));
        }
    }

    /// Leaves every channel.
    pub fn release(&mut self, ctx: &mut Ctx) {
        for channel in std::mem::take(&mut self.channels) {
            ctx.locals.remove(channel.as_str(), self.me.key);
            ctx.pending.remove(&(self.me.key, channel.shared().clone()));
            ctx.shared.broker.unsubscribe(&channel, self.me, None);
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

    /// The newest offset the client has of channel `index`.
    pub fn offset(&self, index: usize) -> u64 {
        self.positions.get(index).map_or(0, |(_, offset)| *offset)
    }

    /// The channel at `index`.
    pub fn channel(&self, index: usize) -> &str {
        self.channels.get(index).map_or("", ChannelName::as_str)
    }

    /// Records that the client has `offset` of channel `index`.
    pub fn advance(&mut self, index: usize, offset: u64) {
        if let Some((_, at)) = self.positions.get_mut(index) {
            *at = (*at).max(offset);
        }
    }

    /// The cursor of the positions now.
    pub fn cursor(&self) -> String {
        let mut cursor = String::with_capacity(self.positions.len() * 16);
        for (index, (epoch, offset)) in self.positions.iter().enumerate() {
            if index > 0 {
                cursor.push('.');
            }
            // No position yet: an empty entry (from now).
            if !epoch.is_empty() {
                let _ = write!(cursor, "{epoch}-{offset}");
            }
        }
        cursor
    }

    /// Each channel's `{"channel":..,"epoch":..,"offset":..}` now.
    pub fn describe(&self, index: usize, recovered: Option<(bool, usize)>) -> String {
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

/// A push frame's JSON text without its WebSocket header and its `op`
/// field, and the `op`: `{"op":"message","channel":..}` becomes
/// `("message", {"channel":..})`. Server frames are unmasked.
pub fn push_body(frame: &[u8]) -> Option<(&str, Vec<u8>)> {
    let header = match frame.get(1)? & 0x7F {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    let json = frame.get(header..)?;
    let rest = json.strip_prefix(br#"{"op":""#)?;
    let op_end = rest.iter().position(|b| *b == b'"')?;
    let op = std::str::from_utf8(rest.get(..op_end)?).ok()?;
    let after = rest.get(op_end + 1..)?.strip_prefix(b",")?;
    let mut body = Vec::with_capacity(after.len() + 1);
    body.push(b'{');
    body.extend_from_slice(after);
    Some((op, body))
}

/// An SSE event. Data lines cannot hold line breaks: a JSON text kept byte
/// for byte may, so each break starts a new `data:` line (the browser
/// joins them with `\n` again).
pub fn sse_event(event: &str, id: Option<&str>, data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 64);
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    let mut bytes = data.iter().peekable();
    while let Some(&byte) = bytes.next() {
        match byte {
            b'\r' => {
                if bytes.peek() == Some(&&b'\n') {
                    bytes.next();
                }
                out.extend_from_slice(b"\ndata: ");
            }
            b'\n' => out.extend_from_slice(b"\ndata: "),
            other => out.push(other),
        }
    }
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// The head of an SSE answer, with the `retry:` advice.
pub fn sse_head(allow_origin: Option<&str>) -> Bytes {
    let cors = cors_headers(allow_origin);
    Bytes::from(format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
         X-Accel-Buffering: no\r\n{cors}Connection: close\r\n\r\nretry: {SSE_RETRY_MS}\n\n"
    ))
}

/// `Access-Control-Allow-Origin` for an allowed cross-origin browser.
pub fn cors_headers(allow_origin: Option<&str>) -> String {
    match allow_origin {
        Some(origin) => format!("Access-Control-Allow-Origin: {origin}\r\nVary: Origin\r\n"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::encode_message;

    #[test]
    fn cursors_round_trip_and_bad_ones_are_refused() {
        let parsed = parse_cursor("5e0c1a2b-46.00000001-0", 2).unwrap();
        assert_eq!(parsed[0], Some(Since { epoch: "5e0c1a2b".into(), offset: 46 }));
        assert_eq!(parsed[1].as_ref().unwrap().offset, 0);
        let partial = parse_cursor("5e0c1a2b-46.", 2).unwrap();
        assert_eq!(partial[1], None);
        for bad in ["", "5e0c1a2b-46", "x-1.y-2", "5e0c1a2b-.1-1", "5e0c1a2b-1.-2", "a-1.b-2.c-3"] {
            assert!(parse_cursor(bad, 2).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn push_frames_become_event_bodies() {
        let (frame, _) = encode_message("news", 7, br#"{"a":1}"#);
        let (op, body) = push_body(&frame).unwrap();
        assert_eq!(op, "message");
        assert_eq!(body, br#"{"channel":"news","offset":7,"data":{"a":1}}"#);
        let big = vec![b'1'; 70_000];
        let (frame, _) = encode_message("news", 8, &big);
        let (_, body) = push_body(&frame).unwrap();
        assert!(body.starts_with(br#"{"channel":"news","offset":8,"data":111"#));
    }

    #[test]
    fn line_breaks_in_data_start_new_data_lines() {
        let event = sse_event("message", Some("c-1"), b"{\"a\":\n1,\r\n\"b\":\r2}");
        assert_eq!(
            &event[..],
            b"id: c-1\nevent: message\ndata: {\"a\":\ndata: 1,\ndata: \"b\":\ndata: 2}\n\n"
        );
    }
}
