//! The `/ws` client protocol: commands parsed from JSON text frames; replies and pushes written as JSON.

use crate::types::{HistoryPage, Member, Since};
use crate::wire::frame::{Opcode, frame_header};
use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use std::fmt::Write as _;

/// Most publications one `history` command returns; `limit` is capped to it.
pub const MAX_HISTORY_LIMIT: usize = 1000;

/// Error codes of error replies (PROTOCOL.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The command is malformed.
    BadRequest,
    /// The connection's identity does not allow it.
    Unauthorized,
    /// Not allowed by the channel's rules or namespace options.
    Forbidden,
    /// No such thing.
    NotFound,
    /// A limit was reached.
    LimitExceeded,
    /// The connection sends commands faster than its rate limit allows.
    TooManyRequests,
    /// The engine cannot serve it now.
    Unavailable,
    /// herald failed.
    Internal,
}

/// A command that could not be carried out, answered with an error reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError {
    /// The command's `id`, when it had a usable one.
    pub id: Option<u64>,
    /// What kind of failure.
    pub code: ErrorCode,
    /// A sentence for the developer reading it.
    pub message: String,
}

impl CommandError {
    /// An error for the command with `id`.
    pub fn new(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Self {
        CommandError { id, code, message: message.into() }
    }
}

/// A client command. Borrowed from the frame it came in.
#[derive(Debug, Clone, PartialEq)]
pub enum Command<'a> {
    /// `subscribe`, optionally recovering from `since`.
    Subscribe { id: Option<u64>, channel: &'a str, since: Option<Since> },
    /// `unsubscribe`.
    Unsubscribe { id: Option<u64>, channel: &'a str },
    /// `publish`: `data` is the raw JSON text, kept byte for byte.
    Publish { id: Option<u64>, channel: &'a str, data: &'a str, skip_self: bool },
    /// `presence`.
    Presence { id: Option<u64>, channel: &'a str },
    /// `history`, after `since`, at most `limit` publications.
    History { id: Option<u64>, channel: &'a str, since: Option<Since>, limit: usize },
    /// `ping`.
    Ping { id: Option<u64> },
}

/// The command's fields before checking; unknown fields are ignored.
#[derive(Deserialize)]
struct RawCommand<'a> {
    #[serde(borrow, default)]
    op: Option<&'a RawValue>,
    #[serde(default)]
    id: Option<Value>,
    #[serde(borrow, default)]
    channel: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(default)]
    since: Option<Value>,
    #[serde(default)]
    limit: Option<Value>,
    #[serde(default)]
    skip_self: Option<Value>,
}

/// A field that is present, whatever its value (`null` included).
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(deserializer).map(Some)
}

/// A JSON string field as a borrowed `&str`: channel names and ops never
/// contain escapes, so a string with any is refused rather than copied.
fn plain_string(raw: Option<&RawValue>) -> Option<&str> {
    let text = raw?.get();
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    (!inner.contains('\\') && !inner.contains('"')).then_some(inner)
}

impl<'a> Command<'a> {
    /// The command's `id`, if it has one.
    pub fn id(&self) -> Option<u64> {
        match self {
            Command::Subscribe { id, .. }
            | Command::Unsubscribe { id, .. }
            | Command::Publish { id, .. }
            | Command::Presence { id, .. }
            | Command::History { id, .. }
            | Command::Ping { id } => *id,
        }
    }

    /// Parses one text frame.
    pub fn parse(text: &'a str) -> Result<Command<'a>, CommandError> {
        let raw: RawCommand<'a> = match serde_json::from_str(text) {
            Ok(raw) => raw,
            Err(error) if error.is_data() => {
                return Err(CommandError::new(
                    None,
                    ErrorCode::BadRequest,
                    format!("a command is a JSON object with an op: {error}"),
                ));
            }
            Err(error) => {
                return Err(CommandError::new(
                    None,
                    ErrorCode::BadRequest,
                    format!("invalid JSON: {error}"),
                ));
            }
        };
        let id = match &raw.id {
            None | Some(Value::Null) => None,
            Some(Value::Number(number)) if number.as_u64().is_some() => number.as_u64(),
            Some(_) => {
                return Err(CommandError::new(
                    None,
                    ErrorCode::BadRequest,
                    "id must be a non-negative integer",
                ));
            }
        };
        let bad = |message: &str| CommandError::new(id, ErrorCode::BadRequest, message);
        let op = match raw.op {
            None => return Err(bad("missing op")),
            Some(op) => plain_string(Some(op)).ok_or_else(|| bad("op must be a string"))?,
        };
        let channel = || -> Result<&'a str, CommandError> {
            match raw.channel {
                None => Err(bad("missing channel")),
                Some(channel) => plain_string(Some(channel))
                    .ok_or_else(|| bad("channel must be a string of A-Z a-z 0-9 _ : . @ # = , -")),
            }
        };
        let since = || -> Result<Option<Since>, CommandError> {
            match &raw.since {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Object(fields)) => {
                    let epoch = fields.get("epoch").and_then(Value::as_str);
                    let offset = fields.get("offset").and_then(Value::as_u64);
                    match (epoch, offset) {
                        (Some(epoch), Some(offset)) if epoch.len() <= 64 => {
                            Ok(Some(Since { epoch: epoch.to_string(), offset }))
                        }
                        _ => Err(bad(
                            "since must be {\"epoch\": string, \"offset\": non-negative integer}",
                        )),
                    }
                }
                Some(_) => {
                    Err(bad("since must be {\"epoch\": string, \"offset\": non-negative integer}"))
                }
            }
        };
        match op {
            "subscribe" => Ok(Command::Subscribe { id, channel: channel()?, since: since()? }),
            "unsubscribe" => Ok(Command::Unsubscribe { id, channel: channel()? }),
            "publish" => {
                let data = raw.data.ok_or_else(|| bad("publish needs data"))?.get();
                let skip_self = match raw.skip_self {
                    None | Some(Value::Null) => false,
                    Some(Value::Bool(skip)) => skip,
                    Some(_) => return Err(bad("skip_self must be true or false")),
                };
                Ok(Command::Publish { id, channel: channel()?, data, skip_self })
            }
            "presence" => Ok(Command::Presence { id, channel: channel()? }),
            "history" => {
                let limit = match &raw.limit {
                    None | Some(Value::Null) => MAX_HISTORY_LIMIT,
                    Some(Value::Number(number)) => match number.as_u64() {
                        Some(limit) => {
                            usize::try_from(limit).unwrap_or(usize::MAX).min(MAX_HISTORY_LIMIT)
                        }
                        None => return Err(bad("limit must be a non-negative integer")),
                    },
                    Some(_) => return Err(bad("limit must be a non-negative integer")),
                };
                Ok(Command::History { id, channel: channel()?, since: since()?, limit })
            }
            "ping" => Ok(Command::Ping { id }),
            other => Err(bad(&format!("unknown op {:?}", truncate(other, 64)))),
        }
    }
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}

/// Starts a reply: `{"op":"OP"` and `,"id":N` when the command had an id.
fn reply_head(op: &str, id: Option<u64>) -> String {
    let mut out = format!(r#"{{"op":"{op}""#);
    if let Some(id) = id {
        let _ = write!(out, r#","id":{id}"#);
    }
    out
}

/// `{"op":"welcome",...}`, sent when a `/ws` connection opens.
pub fn welcome(client: &str, user: &str, ping_interval: std::time::Duration) -> Vec<u8> {
    let ping_interval = if ping_interval.subsec_nanos() == 0 {
        Value::from(ping_interval.as_secs())
    } else {
        Value::from(ping_interval.as_secs_f64())
    };
    serde_json::json!({"op": "welcome", "client": client, "user": user, "ping_interval": ping_interval})
        .to_string()
        .into_bytes()
}

/// `{"op":"pong","id":..}`.
pub fn pong(id: Option<u64>) -> Vec<u8> {
    let mut out = reply_head("pong", id);
    out.push('}');
    out.into_bytes()
}

/// `{"op":"subscribed",...}`. `recovery` is `(recovered, missed)` when the
/// subscribe had `since`.
pub fn subscribed(
    id: Option<u64>,
    channel: &str,
    epoch: &str,
    offset: u64,
    recovery: Option<(bool, usize)>,
) -> Vec<u8> {
    let mut out = reply_head("subscribed", id);
    let _ = write!(out, r#","channel":"{channel}","epoch":"{epoch}","offset":{offset}"#);
    if let Some((recovered, missed)) = recovery {
        let _ = write!(out, r#","recovered":{recovered},"missed":{missed}"#);
    }
    out.push('}');
    out.into_bytes()
}

/// `{"op":"unsubscribed",...}`.
pub fn unsubscribed(id: Option<u64>, channel: &str) -> Vec<u8> {
    let mut out = reply_head("unsubscribed", id);
    let _ = write!(out, r#","channel":"{channel}"}}"#);
    out.into_bytes()
}

/// `{"op":"published",...}`.
pub fn published(id: Option<u64>, channel: &str, epoch: &str, offset: u64) -> Vec<u8> {
    let mut out = reply_head("published", id);
    let _ = write!(out, r#","channel":"{channel}","epoch":"{epoch}","offset":{offset}}}"#);
    out.into_bytes()
}

/// The `message` push of a publication, as one WebSocket text frame, and
/// where its `data` starts. Channel names need no JSON escaping.
pub fn message_frame(channel: &str, offset: u64, data: &[u8]) -> (Bytes, usize) {
    let offset_text = offset.to_string();
    let body_len = r#"{"op":"message","channel":"","offset":,"data":}"#.len()
        + channel.len()
        + offset_text.len()
        + data.len();
    let mut out = BytesMut::with_capacity(body_len + 10);
    frame_header(Opcode::Text, body_len, &mut out);
    out.put_slice(br#"{"op":"message","channel":""#);
    out.put_slice(channel.as_bytes());
    out.put_slice(br#"","offset":"#);
    out.put_slice(offset_text.as_bytes());
    out.put_slice(br#","data":"#);
    let data_start = out.len();
    out.put_slice(data);
    out.put_u8(b'}');
    (out.freeze(), data_start)
}

/// A `join` or `leave` push as JSON text.
pub fn presence_event(op: &str, channel: &str, member: &Member) -> String {
    serde_json::json!({
        "op": op, "channel": channel, "client": &*member.client, "user": &*member.user,
    })
    .to_string()
}

/// A `join` or `leave` without its `op`: `{"channel":..,"client":..,"user":..}`.
pub fn presence_event_body(channel: &str, member: &Member) -> String {
    serde_json::json!({"channel": channel, "client": &*member.client, "user": &*member.user})
        .to_string()
}

/// `{"op":"presence",...,"clients":[{"client":..,"user":..}]}`.
pub fn presence(id: Option<u64>, channel: &str, members: &[Member]) -> Vec<u8> {
    let mut out = reply_head("presence", id);
    out.push(',');
    write_presence_fields(&mut out, channel, members);
    out.push('}');
    out.into_bytes()
}

/// `{"channel":..,"clients":[..]}`: a presence list without a reply's `op`
/// (the server API's answer).
pub fn presence_body(channel: &str, members: &[Member]) -> Vec<u8> {
    let mut out = String::from("{");
    write_presence_fields(&mut out, channel, members);
    out.push('}');
    out.into_bytes()
}

fn write_presence_fields(out: &mut String, channel: &str, members: &[Member]) {
    let clients: Vec<Value> = members
        .iter()
        .map(|member| serde_json::json!({"client": &*member.client, "user": &*member.user}))
        .collect();
    let _ = write!(out, r#""channel":"{channel}","clients":{}"#, Value::from(clients));
}

/// `{"op":"history",...,"publications":[{"offset":..,"data":..}]}`; each
/// `data` is written back byte for byte.
pub fn history(id: Option<u64>, channel: &str, page: &HistoryPage) -> Vec<u8> {
    let mut head = reply_head("history", id);
    head.push(',');
    write_history(head, channel, page)
}

/// `{"channel":..,"epoch":..,"offset":..,"publications":[..]}`: a page of
/// history without a reply's `op` (the server API's answer).
pub fn history_body(channel: &str, page: &HistoryPage) -> Vec<u8> {
    write_history(String::from("{"), channel, page)
}

fn write_history(mut head: String, channel: &str, page: &HistoryPage) -> Vec<u8> {
    let size: usize = page.publications.iter().map(|(_, data)| data.len() + 32).sum();
    let mut out = Vec::with_capacity(size + 128);
    let _ = write!(
        head,
        r#""channel":"{channel}","epoch":"{}","offset":{},"publications":["#,
        page.epoch.as_str(),
        page.offset
    );
    out.extend_from_slice(head.as_bytes());
    for (i, (offset, data)) in page.publications.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(format!(r#"{{"offset":{offset},"data":"#).as_bytes());
        out.extend_from_slice(data);
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    out
}

/// `{"op":"error","id":..,"code":..,"message":..}`.
pub fn error(error: &CommandError) -> Vec<u8> {
    let mut out = reply_head("error", error.id);
    let code = serde_json::to_string(&error.code).unwrap_or_default();
    let message = Value::from(error.message.as_str());
    let _ = write!(out, r#","code":{code},"message":{message}}}"#);
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn every_command_parses() {
        assert_eq!(Command::parse(r#"{"op":"ping","id":6}"#), Ok(Command::Ping { id: Some(6) }));
        assert_eq!(
            Command::parse(
                r#"{"op":"subscribe","id":1,"channel":"news","since":{"epoch":"f3a9","offset":41}}"#
            ),
            Ok(Command::Subscribe {
                id: Some(1),
                channel: "news",
                since: Some(Since { epoch: "f3a9".into(), offset: 41 })
            })
        );
        assert_eq!(
            Command::parse(r#"{"op":"unsubscribe","id":2,"channel":"news","extra":[1]}"#),
            Ok(Command::Unsubscribe { id: Some(2), channel: "news" })
        );
        assert_eq!(
            Command::parse(
                r#"{"op":"publish","id":3,"channel":"chat:lobby","data":{"text": "hi" },"skip_self":true}"#
            ),
            Ok(Command::Publish {
                id: Some(3),
                channel: "chat:lobby",
                data: r#"{"text": "hi" }"#,
                skip_self: true
            })
        );
        assert_eq!(
            Command::parse(r#"{"op":"publish","channel":"c","data":null}"#),
            Ok(Command::Publish { id: None, channel: "c", data: "null", skip_self: false })
        );
        assert_eq!(
            Command::parse(r#"{"op":"presence","id":4,"channel":"chat:lobby"}"#),
            Ok(Command::Presence { id: Some(4), channel: "chat:lobby" })
        );
        assert_eq!(
            Command::parse(r#"{"op":"history","id":5,"channel":"news","limit":5000}"#),
            Ok(Command::History {
                id: Some(5),
                channel: "news",
                since: None,
                limit: MAX_HISTORY_LIMIT
            })
        );
    }

    #[test]
    fn bad_commands_get_error_replies_with_their_id() {
        let error = Command::parse(r#"{"op":"fly","id":3}"#).unwrap_err();
        assert_eq!((error.id, error.code), (Some(3), ErrorCode::BadRequest));
        let reply = json(&super::error(&error));
        assert_eq!(reply["op"], "error");
        assert_eq!(reply["id"], 3);
        assert_eq!(reply["code"], "bad_request");
        for bad in [
            "not json",
            "[1,2]",
            r#"{"id":1}"#,
            r#"{"op":5}"#,
            r#"{"op":"ping","id":-1}"#,
            r#"{"op":"subscribe"}"#,
            r#"{"op":"subscribe","channel":7}"#,
            r#"{"op":"subscribe","channel":"a\"b"}"#,
            r#"{"op":"subscribe","channel":"a","since":{"epoch":"x"}}"#,
            r#"{"op":"publish","channel":"a"}"#,
            r#"{"op":"publish","channel":"a","data":1,"skip_self":"yes"}"#,
            r#"{"op":"history","channel":"a","limit":-1}"#,
        ] {
            assert_eq!(Command::parse(bad).unwrap_err().code, ErrorCode::BadRequest, "{bad}");
        }
    }

    #[test]
    fn replies_are_json_with_the_command_id() {
        let epoch = crate::types::Epoch::from_u32(0xf3a9);
        assert_eq!(json(&pong(Some(6))), serde_json::json!({"op":"pong","id":6}));
        assert_eq!(json(&pong(None)), serde_json::json!({"op":"pong"}));
        assert_eq!(
            json(&subscribed(Some(1), "news", epoch.as_str(), 45, Some((true, 4)))),
            serde_json::json!({"op":"subscribed","id":1,"channel":"news","epoch":"0000f3a9","offset":45,"recovered":true,"missed":4})
        );
        assert_eq!(
            json(&subscribed(None, "news", epoch.as_str(), 0, None)),
            serde_json::json!({"op":"subscribed","channel":"news","epoch":"0000f3a9","offset":0})
        );
        assert_eq!(
            json(&unsubscribed(Some(2), "n")),
            serde_json::json!({"op":"unsubscribed","id":2,"channel":"n"})
        );
        assert_eq!(
            json(&published(Some(3), "c", epoch.as_str(), 12)),
            serde_json::json!({"op":"published","id":3,"channel":"c","epoch":"0000f3a9","offset":12})
        );
        let members = [Member::new("c1".into(), "4\"2".into())];
        assert_eq!(
            json(&presence(Some(4), "c", &members)),
            serde_json::json!({"op":"presence","id":4,"channel":"c","clients":[{"client":"c1","user":"4\"2"}]})
        );
        let page = HistoryPage {
            epoch,
            offset: 45,
            publications: vec![
                (44, Bytes::from_static(b"{\"a\": 1}")),
                (45, Bytes::from_static(b"[]")),
            ],
            newest_age_ms: None,
        };
        let text = String::from_utf8(history(Some(5), "news", &page)).unwrap();
        assert!(text.contains(r#"{"offset":44,"data":{"a": 1}}"#), "{text}");
        assert_eq!(json(text.as_bytes())["publications"][1]["data"], serde_json::json!([]));
    }

    #[test]
    fn welcome_names_client_user_and_interval() {
        let welcome = welcome("c1", "42", std::time::Duration::from_secs(25));
        assert_eq!(
            json(&welcome),
            serde_json::json!({"op":"welcome","client":"c1","user":"42","ping_interval":25})
        );
    }
}
