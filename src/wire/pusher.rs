//! The Pusher Channels protocol (version 7) as pure functions: the frames herald sends, the messages it reads, and the signatures it checks.
//!
//! Every outbound shape follows Pusher's double-encoding rule per event:
//! `data` is a JSON *string* holding JSON, except in `pusher:error`,
//! `pusher:subscription_error` and `pusher:signin_success`, where it is an
//! object. Signatures are lowercase hex HMAC-SHA256 with the app's secret,
//! compared in constant time.

use crate::config::Secret;
use crate::types::Member;
use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::Sha256;
use std::borrow::Cow;
use std::fmt::Write as _;

type HmacSha256 = Hmac<Sha256>;

/// The protocol versions herald speaks (Pysher uses 6; they are the same
/// on the wire).
pub const PROTOCOLS: std::ops::RangeInclusive<u32> = 5..=7;
/// Longest event name (the SDKs' limit).
pub const MAX_EVENT_NAME_LEN: usize = 200;
/// Longest presence `user_id` (Pusher's limit).
pub const MAX_USER_ID_LEN: usize = 128;
/// Channels one HTTP trigger may name.
pub const MAX_CHANNELS_PER_TRIGGER: usize = 100;
/// How far a signed HTTP request's `auth_timestamp` may be from now.
pub const MAX_CLOCK_SKEW_SECS: u64 = 600;

/// `{"event":"pusher:pong","data":"{}"}`.
pub const PONG: &[u8] = br#"{"event":"pusher:pong","data":"{}"}"#;
/// `{"event":"pusher:ping","data":"{}"}`: herald asks a quiet client.
pub const PING: &[u8] = br#"{"event":"pusher:ping","data":"{}"}"#;

/// A JSON string literal of `text`.
fn quote(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// `"channel":"NAME"` needs no escaping: Pusher names are
/// `[A-Za-z0-9_\-=@,.;#]`.
fn event_with_string_data(event: &str, channel: Option<&str>, data: &str) -> Vec<u8> {
    let mut out = String::with_capacity(48 + event.len() + data.len());
    out.push_str("{\"event\":");
    out.push_str(&quote(event));
    if let Some(channel) = channel {
        let _ = write!(out, ",\"channel\":\"{channel}\"");
    }
    out.push_str(",\"data\":");
    out.push_str(&quote(data));
    out.push('}');
    out.into_bytes()
}

/// `pusher:connection_established`, the first frame of every connection.
pub fn connection_established(socket_id: &str, activity_timeout_secs: u64) -> Vec<u8> {
    let data =
        format!(r#"{{"socket_id":"{socket_id}","activity_timeout":{activity_timeout_secs}}}"#);
    event_with_string_data("pusher:connection_established", None, &data)
}

/// `pusher:error` with an object `data` (Pysher reads `data["code"]`).
pub fn error(code: Option<u16>, message: &str) -> Vec<u8> {
    let code = code.map_or_else(|| "null".to_string(), |code| code.to_string());
    format!(r#"{{"event":"pusher:error","data":{{"code":{code},"message":{}}}}}"#, quote(message))
        .into_bytes()
}

/// `pusher_internal:subscription_succeeded` for a channel without presence.
pub fn subscription_succeeded(channel: &str) -> Vec<u8> {
    event_with_string_data("pusher_internal:subscription_succeeded", Some(channel), "{}")
}

/// `pusher_internal:subscription_succeeded` for a presence channel: every
/// distinct user once (its latest `user_info`, `null` without one), the
/// subscriber included.
pub fn presence_succeeded(channel: &str, members: &[Member]) -> Vec<u8> {
    let mut users: Vec<(&str, Option<&str>)> = Vec::with_capacity(members.len());
    for member in members {
        match users.iter_mut().find(|(user, _)| *user == &*member.user) {
            Some(entry) => entry.1 = member.info.as_deref().or(entry.1),
            None => users.push((&member.user, member.info.as_deref())),
        }
    }
    let mut ids = String::from("[");
    let mut hash = String::from("{");
    for (index, (user, info)) in users.iter().enumerate() {
        if index > 0 {
            ids.push(',');
            hash.push(',');
        }
        let user = quote(user);
        ids.push_str(&user);
        let _ = write!(hash, "{user}:{}", info.unwrap_or("null"));
    }
    ids.push(']');
    hash.push('}');
    let data = format!(r#"{{"presence":{{"ids":{ids},"hash":{hash},"count":{}}}}}"#, users.len());
    event_with_string_data("pusher_internal:subscription_succeeded", Some(channel), &data)
}

/// `pusher_internal:member_added`: a user's first connection joined.
pub fn member_added(channel: &str, member: &Member) -> Vec<u8> {
    let info = member.info.as_deref().unwrap_or("null");
    let data = format!(r#"{{"user_id":{},"user_info":{info}}}"#, quote(&member.user));
    event_with_string_data("pusher_internal:member_added", Some(channel), &data)
}

/// `pusher_internal:member_removed`: a user's last connection left.
pub fn member_removed(channel: &str, user: &str) -> Vec<u8> {
    let data = format!(r#"{{"user_id":{}}}"#, quote(user));
    event_with_string_data("pusher_internal:member_removed", Some(channel), &data)
}

/// herald's position in a channel after a subscribe (or after the channel
/// started over), for `herald-pusher.js`; stock clients ignore every
/// `pusher_internal:` event they do not know. `recovery`: whether the
/// events after the client's position could be replayed, and how many
/// follow.
pub fn herald_subscribed(
    channel: &str,
    epoch: &str,
    offset: u64,
    recovery: Option<(bool, usize)>,
) -> Vec<u8> {
    let mut data = format!(r#"{{"epoch":"{epoch}","offset":{offset}"#);
    if let Some((recovered, missed)) = recovery {
        let _ = write!(data, r#","recovered":{recovered},"missed":{missed}"#);
    }
    data.push('}');
    event_with_string_data("pusher_internal:herald_subscribed", Some(channel), &data)
}

/// `pusher:subscription_error` on the channel (as the client named it,
/// valid or not), as pusher-js itself reports a failed authorization
/// (Laravel Echo's `.error()` gets the object).
pub fn subscription_error(channel: &str, kind: &str, message: &str, status: u16) -> Vec<u8> {
    format!(
        r#"{{"event":"pusher:subscription_error","channel":{},"data":{{"type":{},"error":{},"status":{status}}}}}"#,
        quote(channel),
        quote(kind),
        quote(message)
    )
    .into_bytes()
}

/// `pusher:cache_miss`: a cache channel holds no event.
pub fn cache_miss(channel: &str) -> Vec<u8> {
    event_with_string_data("pusher:cache_miss", Some(channel), "{}")
}

/// `pusher:signin_success`, echoing the signed `user_data` verbatim.
pub fn signin_success(user_data: &str) -> Vec<u8> {
    format!(r#"{{"event":"pusher:signin_success","data":{{"user_data":{}}}}}"#, quote(user_data))
        .into_bytes()
}

/// What the engine stores for an event published through the HTTP API:
/// `{"event":NAME,"data":DATA}`, `data` the API's JSON string verbatim.
pub fn stored_event(name: &str, data: &RawValue) -> Vec<u8> {
    format!(r#"{{"event":{},"data":{}}}"#, quote(name), data.get()).into_bytes()
}

/// A channel event as its subscribers get it: the stored event with the
/// channel in front and its offset behind (`herald_offset`, which
/// `herald-pusher.js` resumes from and pusher-js drops), as one text frame.
pub fn event_frame(channel: &str, stored: &[u8], offset: u64) -> Bytes {
    // The stored event is `{...}` as `stored_event` wrote it.
    let inner = stored.get(1..stored.len().saturating_sub(1)).unwrap_or_default();
    let mut json = Vec::with_capacity(stored.len() + channel.len() + 40);
    let _ = write!(ByteWriter(&mut json), r#"{{"channel":"{channel}","#);
    json.extend_from_slice(inner);
    let _ = write!(ByteWriter(&mut json), r#","herald_offset":{offset}}}"#);
    super::frame::encode_frame(super::frame::Opcode::Text, &json)
}

/// A client event as the other subscribers get it: the sender's `event`,
/// `channel` and `data` (an object or a string, as sent), and the sender's
/// `user_id` on a presence channel.
pub fn client_event(
    event: &str,
    channel: &str,
    data: Option<&RawValue>,
    user: Option<&str>,
) -> Vec<u8> {
    let mut out = format!(r#"{{"event":{},"channel":"{channel}""#, quote(event));
    if let Some(data) = data {
        let _ = write!(out, r#","data":{}"#, data.get());
    }
    if let Some(user) = user {
        let _ = write!(out, r#","user_id":{}"#, quote(user));
    }
    out.push('}');
    out.into_bytes()
}

/// `fmt::Write` into a byte vector.
struct ByteWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for ByteWriter<'_> {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        self.0.extend_from_slice(text.as_bytes());
        Ok(())
    }
}

/// One message from a client: `{"event", "channel"?, "data"?}`; `data` is
/// kept raw (a client event relays it as sent).
#[derive(Debug, Deserialize)]
pub struct ClientMessage<'a> {
    /// The event name.
    #[serde(borrow)]
    pub event: Cow<'a, str>,
    /// The channel, for client events.
    #[serde(borrow, default)]
    pub channel: Option<Cow<'a, str>>,
    /// The data, raw.
    #[serde(borrow, default)]
    pub data: Option<&'a RawValue>,
}

impl<'a> ClientMessage<'a> {
    /// Parses a text frame; `None` for anything that is not such an object.
    pub fn parse(text: &'a str) -> Option<ClientMessage<'a>> {
        serde_json::from_str(text).ok()
    }
}

/// The `data` of a protocol command, an object or a string holding one
/// (Reverb and some clients send the latter).
pub fn command_data<T: for<'de> Deserialize<'de>>(data: Option<&RawValue>) -> Option<T> {
    let raw = data?;
    match serde_json::from_str::<T>(raw.get()) {
        Ok(value) => Some(value),
        Err(_) => {
            let text: String = serde_json::from_str(raw.get()).ok()?;
            serde_json::from_str(&text).ok()
        }
    }
}

/// `pusher:subscribe`'s data.
#[derive(Debug, Deserialize)]
pub struct SubscribeData {
    /// The channel.
    pub channel: Option<String>,
    /// `KEY:SIGNATURE` for private and presence channels.
    #[serde(default)]
    pub auth: Option<String>,
    /// The presence member, a JSON string whose bytes are signed.
    #[serde(default)]
    pub channel_data: Option<String>,
    /// herald's extension: the position to recover from.
    #[serde(default)]
    pub herald_since: Option<HeraldSince>,
}

/// A position `herald-pusher.js` resumes a channel from.
#[derive(Debug, Clone, Deserialize)]
pub struct HeraldSince {
    /// The channel's epoch then.
    pub epoch: String,
    /// The last offset the client had.
    pub offset: u64,
}

/// `pusher:unsubscribe`'s data.
#[derive(Debug, Deserialize)]
pub struct UnsubscribeData {
    /// The channel.
    pub channel: Option<String>,
}

/// `pusher:signin`'s data.
#[derive(Debug, Deserialize)]
pub struct SigninData {
    /// `KEY:SIGNATURE` over `SOCKET::user::USER_DATA`.
    pub auth: Option<String>,
    /// The user, a JSON string whose bytes are signed.
    pub user_data: Option<String>,
}

/// A presence subscriber's `channel_data`, checked.
#[derive(Debug, PartialEq, Eq)]
pub struct ChannelData {
    /// `user_id`, a number written as a decimal string.
    pub user_id: String,
    /// `user_info`, raw JSON, if given.
    pub user_info: Option<String>,
}

/// Reads `channel_data`: an object with a `user_id` (a non-empty string
/// of at most [`MAX_USER_ID_LEN`], or a number) and an optional
/// `user_info` of at most `max_info` bytes.
pub fn parse_channel_data(text: &str, max_info: usize) -> Result<ChannelData, String> {
    #[derive(Deserialize)]
    struct Raw<'a> {
        #[serde(borrow)]
        user_id: Option<&'a RawValue>,
        #[serde(borrow, default)]
        user_info: Option<&'a RawValue>,
    }
    let raw: Raw<'_> =
        serde_json::from_str(text).map_err(|_| "channel_data must be a JSON object".to_string())?;
    let user_id = user_id_of(raw.user_id).ok_or("channel_data needs a user_id (a string)")?;
    let user_info = raw.user_info.map(|info| info.get().to_string());
    if user_info.as_ref().is_some_and(|info| info.len() > max_info) {
        return Err(format!("user_info must be at most {max_info} bytes"));
    }
    Ok(ChannelData { user_id, user_info })
}

/// Reads `user_data` of a sign-in: an object with an `id` (as `user_id`).
pub fn parse_user_data(text: &str) -> Result<String, String> {
    #[derive(Deserialize)]
    struct Raw<'a> {
        #[serde(borrow)]
        id: Option<&'a RawValue>,
    }
    let raw: Raw<'_> =
        serde_json::from_str(text).map_err(|_| "user_data must be a JSON object".to_string())?;
    user_id_of(raw.id).ok_or_else(|| "user_data needs an id (a string)".to_string())
}

/// A user id: a non-empty string, or a whole number as its decimal text.
fn user_id_of(raw: Option<&RawValue>) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(raw?.get()).ok()?;
    let id = match value {
        serde_json::Value::String(id) => id,
        serde_json::Value::Number(number) if number.is_u64() || number.is_i64() => {
            number.to_string()
        }
        _ => return None,
    };
    (!id.is_empty() && id.len() <= MAX_USER_ID_LEN).then_some(id)
}

fn mac(secret: &Secret) -> HmacSha256 {
    // HMAC takes a key of any length; this cannot fail.
    match HmacSha256::new_from_slice(secret.expose().as_bytes()) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    }
}

/// The lowercase hex HMAC-SHA256 of `text` with `secret`.
pub fn sign(secret: &Secret, text: &[u8]) -> String {
    let mut mac = mac(secret);
    mac.update(text);
    hex(&mac.finalize().into_bytes())
}

/// Whether `signature` (hex, either case) is the HMAC-SHA256 of `text`,
/// compared in constant time.
pub fn verify(secret: &Secret, text: &[u8], signature: &str) -> bool {
    let Some(bytes) = unhex(signature) else { return false };
    let mut mac = mac(secret);
    mac.update(text);
    mac.verify_slice(&bytes).is_ok()
}

/// Whether a subscription's or sign-in's `auth` (`KEY:HEX`) is the app's
/// signature of `text`.
pub fn verify_auth(key: &str, secret: &Secret, text: &[u8], auth: &str) -> bool {
    match auth.split_once(':') {
        Some((auth_key, signature)) => auth_key == key && verify(secret, text, signature),
        None => false,
    }
}

/// What a private or presence subscription signs: `SOCKET:CHANNEL` or
/// `SOCKET:CHANNEL:CHANNEL_DATA` (its bytes as received).
pub fn channel_string(socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
    match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    }
}

/// What a sign-in signs: `SOCKET::user::USER_DATA`.
pub fn user_string(socket_id: &str, user_data: &str) -> String {
    format!("{socket_id}::user::{user_data}")
}

/// The lowercase hex MD5 of a body (`body_md5`).
pub fn md5_hex(body: &[u8]) -> String {
    hex(&Md5::digest(body))
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok())
        .collect()
}

/// Why a signed HTTP API request is refused (all are 401).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureError {
    /// A parameter is missing or malformed.
    Missing(&'static str),
    /// The query is not valid percent-encoding.
    Query,
    /// `auth_timestamp` is more than [`MAX_CLOCK_SKEW_SECS`] from now.
    Timestamp,
    /// `body_md5` is not the body's.
    BodyMd5,
    /// The signature does not match.
    Signature,
}

impl SignatureError {
    /// The sentence for the 401 answer.
    pub fn message(&self) -> String {
        match self {
            SignatureError::Missing(what) => format!("missing or malformed {what}"),
            SignatureError::Query => "the query string is not valid percent-encoding".into(),
            SignatureError::Timestamp => format!(
                "auth_timestamp is more than {MAX_CLOCK_SKEW_SECS} seconds from the server's clock"
            ),
            SignatureError::BodyMd5 => "body_md5 does not match the body".into(),
            SignatureError::Signature => "invalid signature".into(),
        }
    }
}

/// A signed HTTP API request's query: its parameters, decoded.
#[derive(Debug)]
pub struct SignedQuery {
    /// Every parameter but `auth_signature`, keys lower-cased, sorted.
    params: Vec<(String, String)>,
    signature: String,
}

impl SignedQuery {
    /// Reads the query (`+` and `%XX` decoded, as PHP's Guzzle encodes
    /// it; the Node and Python SDKs send it raw).
    pub fn parse(query: Option<&str>) -> Result<SignedQuery, SignatureError> {
        let mut params = Vec::new();
        let mut signature = None;
        for pair in query.unwrap_or_default().split('&').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = super::http::percent_decode(key).ok_or(SignatureError::Query)?;
            let value = super::http::percent_decode(value).ok_or(SignatureError::Query)?;
            if key == "auth_signature" {
                signature = Some(value.into_owned());
            } else {
                params.push((key.to_ascii_lowercase(), value.into_owned()));
            }
        }
        params.sort();
        let signature = signature.ok_or(SignatureError::Missing("auth_signature"))?;
        Ok(SignedQuery { params, signature })
    }

    /// A parameter's value (key lower-case).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Checks the request against the app's secret: timestamp within
    /// [`MAX_CLOCK_SKEW_SECS`] of `now`, `body_md5` when there is a body
    /// (or when given), and the signature over `METHOD\nPATH\nPARAMS`.
    pub fn verify(
        &self,
        secret: &Secret,
        method: &str,
        path: &str,
        body: &[u8],
        now: u64,
    ) -> Result<(), SignatureError> {
        let timestamp: u64 = self
            .get("auth_timestamp")
            .and_then(|t| t.parse().ok())
            .ok_or(SignatureError::Missing("auth_timestamp"))?;
        if timestamp.abs_diff(now) > MAX_CLOCK_SKEW_SECS {
            return Err(SignatureError::Timestamp);
        }
        match self.get("body_md5") {
            Some(md5) if !md5.eq_ignore_ascii_case(&md5_hex(body)) => {
                return Err(SignatureError::BodyMd5);
            }
            None if !body.is_empty() => return Err(SignatureError::Missing("body_md5")),
            _ => {}
        }
        let mut text = format!("{}\n{path}\n", method.to_ascii_uppercase());
        for (index, (key, value)) in self.params.iter().enumerate() {
            if index > 0 {
                text.push('&');
            }
            let _ = write!(text, "{key}={value}");
        }
        if verify(secret, text.as_bytes(), &self.signature) {
            Ok(())
        } else {
            Err(SignatureError::Signature)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::sync::Arc;

    fn json(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    /// The credentials of Pusher's worked examples.
    fn secret() -> Secret {
        Secret::new("7ad3773142a6692b25b8")
    }
    const KEY: &str = "278d425bdf160c739803";

    #[test]
    fn golden_vectors() {
        let private = "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4";
        assert_eq!(
            sign(&secret(), channel_string("1234.1234", "private-foobar", None).as_bytes()),
            private
        );
        let data = r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#;
        assert_eq!(
            sign(&secret(), channel_string("1234.1234", "presence-foobar", Some(data)).as_bytes()),
            "31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80"
        );
        assert_eq!(
            sign(&secret(), user_string("1234.1234", r#"{"id":"12345"}"#).as_bytes()),
            "4708d583dada6a56435fb8bc611c77c359a31eebde13337c16ab43aa6de336ba"
        );
        let webhook = r#"{"time_ms":1327078148132,"events":[{"name":"channel_occupied","channel":"my-channel"}]}"#;
        assert_eq!(
            sign(&secret(), webhook.as_bytes()),
            "c19001ae3963ccb13bf618e5b16ba9848e7e74df0993aa0689168e341c6833cf"
        );
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        let auth = format!("{KEY}:{private}");
        assert!(verify_auth(KEY, &secret(), b"1234.1234:private-foobar", &auth));
        assert!(verify_auth(
            KEY,
            &secret(),
            b"1234.1234:private-foobar",
            &auth.to_uppercase().replace(&KEY.to_uppercase(), KEY)
        ));
        assert!(!verify_auth("other", &secret(), b"1234.1234:private-foobar", &auth));
        assert!(!verify_auth(KEY, &secret(), b"1234.1235:private-foobar", &auth));
        assert!(!verify_auth(KEY, &secret(), b"1234.1234:private-foobar", KEY));
        assert!(!verify_auth(KEY, &secret(), b"1234.1234:private-foobar", &format!("{KEY}:zz")));
    }

    #[test]
    fn the_rest_api_worked_example_verifies() {
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        assert_eq!(md5_hex(body), "ec365a775a4cd0599faeb73354201b6f");
        let query = "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0\
                     &body_md5=ec365a775a4cd0599faeb73354201b6f\
                     &auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c";
        let signed = SignedQuery::parse(Some(query)).unwrap();
        assert_eq!(signed.get("auth_key"), Some(KEY));
        assert_eq!(signed.verify(&secret(), "POST", "/apps/3/events", body, 1_353_088_179), Ok(()));
        assert_eq!(
            signed.verify(&secret(), "POST", "/apps/3/events", body, 1_353_088_179 + 600),
            Ok(())
        );
        assert_eq!(
            signed.verify(&secret(), "POST", "/apps/3/events", body, 1_353_088_179 + 601),
            Err(SignatureError::Timestamp)
        );
        assert_eq!(
            signed.verify(&secret(), "POST", "/apps/3/events", b"{}", 1_353_088_179),
            Err(SignatureError::BodyMd5)
        );
        assert_eq!(
            signed.verify(&secret(), "POST", "/apps/4/events", body, 1_353_088_179),
            Err(SignatureError::Signature)
        );
        assert_eq!(
            signed.verify(&Secret::new("wrong"), "POST", "/apps/3/events", body, 1_353_088_179),
            Err(SignatureError::Signature)
        );
        // Percent-encoded (PHP's Guzzle) and upper-case keys sign the same.
        let encoded = query.replace("auth_version=1.0", "AUTH_VERSION=1%2E0");
        let signed = SignedQuery::parse(Some(&encoded)).unwrap();
        assert_eq!(signed.verify(&secret(), "post", "/apps/3/events", body, 1_353_088_179), Ok(()));
        assert_eq!(
            SignedQuery::parse(Some("auth_key=x")).unwrap_err(),
            SignatureError::Missing("auth_signature")
        );
    }

    #[test]
    fn outbound_shapes_follow_the_double_encoding_rule() {
        let established = json(&connection_established("1.2", 120));
        assert_eq!(established["event"], "pusher:connection_established");
        let data: Value = serde_json::from_str(established["data"].as_str().unwrap()).unwrap();
        assert_eq!(data, serde_json::json!({"socket_id": "1.2", "activity_timeout": 120}));
        assert_eq!(
            json(&error(Some(4001), "no app")),
            serde_json::json!({"event":"pusher:error","data":{"code":4001,"message":"no app"}})
        );
        assert_eq!(json(&error(None, "x"))["data"]["code"], Value::Null);
        assert_eq!(json(PONG)["data"], "{}");
        assert_eq!(
            json(&subscription_succeeded("orders")),
            serde_json::json!({"event":"pusher_internal:subscription_succeeded","channel":"orders","data":"{}"})
        );
        assert_eq!(
            json(&subscription_error("private-x", "AuthError", "Invalid signature", 401)),
            serde_json::json!({"event":"pusher:subscription_error","channel":"private-x","data":{"type":"AuthError","error":"Invalid signature","status":401}})
        );
        assert_eq!(json(&cache_miss("cache-x"))["data"], "{}");
        let signin = json(&signin_success(r#"{"id":"1"}"#));
        assert_eq!(signin["data"]["user_data"], r#"{"id":"1"}"#);
    }

    #[test]
    fn presence_lists_each_user_once_with_the_subscriber() {
        let member = |client: &str, user: &str, info: Option<&str>| Member {
            client: Arc::from(client),
            user: Arc::from(user),
            info: info.map(Arc::from),
        };
        let members = [
            member("c1", "1", Some(r#"{"name":"A"}"#)),
            member("c2", "2", None),
            member("c3", "1", Some(r#"{"name":"A2"}"#)),
        ];
        let frame = json(&presence_succeeded("presence-room", &members));
        let data: Value = serde_json::from_str(frame["data"].as_str().unwrap()).unwrap();
        assert_eq!(
            data,
            serde_json::json!({"presence":{"ids":["1","2"],"hash":{"1":{"name":"A2"},"2":null},"count":2}})
        );
        let added = json(&member_added("presence-room", &members[0]));
        assert_eq!(added["data"], r#"{"user_id":"1","user_info":{"name":"A"}}"#);
        let removed = json(&member_removed("presence-room", "2"));
        assert_eq!(removed["data"], r#"{"user_id":"2"}"#);
    }

    #[test]
    fn events_carry_channel_and_offset_around_the_stored_event() {
        let data: Box<RawValue> = serde_json::from_str(r#""{\"id\":1}""#).unwrap();
        let stored = stored_event("Order\"Shipped", &data);
        let frame = event_frame("orders", &stored, 7);
        let text = &frame[2..];
        assert_eq!(
            json(text),
            serde_json::json!({"channel":"orders","event":"Order\"Shipped","data":"{\"id\":1}","herald_offset":7})
        );
        let object: Box<RawValue> = serde_json::from_str(r#"{"a":1}"#).unwrap();
        assert_eq!(
            json(&client_event("client-x", "presence-r", Some(&object), Some("u1"))),
            serde_json::json!({"event":"client-x","channel":"presence-r","data":{"a":1},"user_id":"u1"})
        );
        assert_eq!(
            json(&client_event("client-x", "private-r", None, None)),
            serde_json::json!({"event":"client-x","channel":"private-r"})
        );
        let subscribed = json(&herald_subscribed("orders", "5e0c1a2b", 12, Some((true, 3))));
        let data: Value = serde_json::from_str(subscribed["data"].as_str().unwrap()).unwrap();
        assert_eq!(
            data,
            serde_json::json!({"epoch":"5e0c1a2b","offset":12,"recovered":true,"missed":3})
        );
    }

    #[test]
    fn inbound_data_may_be_an_object_or_a_string_holding_one() {
        let message = ClientMessage::parse(
            r#"{"event":"pusher:subscribe","data":{"auth":"","channel":"a"}}"#,
        )
        .unwrap();
        let data: SubscribeData = command_data(message.data).unwrap();
        assert_eq!(data.channel.as_deref(), Some("a"));
        let message = ClientMessage::parse(r#"{"event":"pusher:subscribe","data":"{\"channel\":\"b\",\"herald_since\":{\"epoch\":\"5e0c1a2b\",\"offset\":3}}"}"#).unwrap();
        let data: SubscribeData = command_data(message.data).unwrap();
        assert_eq!(data.channel.as_deref(), Some("b"));
        assert_eq!(data.herald_since.unwrap().offset, 3);
        let ping = ClientMessage::parse(r#"{"event":"pusher:ping","data":""}"#).unwrap();
        assert!(command_data::<SubscribeData>(ping.data).is_none());
        assert!(ClientMessage::parse("not json").is_none());
        assert!(ClientMessage::parse(r#"{"data":{}}"#).is_none());
        assert!(ClientMessage::parse(r#"[1]"#).is_none());
    }

    #[test]
    fn member_and_user_data_are_checked() {
        assert_eq!(
            parse_channel_data(r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#, 1024),
            Ok(ChannelData {
                user_id: "10".into(),
                user_info: Some(r#"{"name":"Mr. Channels"}"#.into())
            })
        );
        assert_eq!(
            parse_channel_data(r#"{"user_id": "1"}"#, 1024),
            Ok(ChannelData { user_id: "1".into(), user_info: None })
        );
        assert!(parse_channel_data(r#"{"user_id":""}"#, 1024).is_err());
        assert!(parse_channel_data(r#"{"user_id":1.5}"#, 1024).is_err());
        assert!(parse_channel_data(r#"{"user_info":{}}"#, 1024).is_err());
        assert!(
            parse_channel_data(&format!(r#"{{"user_id":"{}"}}"#, "x".repeat(129)), 1024).is_err()
        );
        assert!(parse_channel_data(r#"{"user_id":"1","user_info":"long"}"#, 4).is_err());
        assert!(parse_channel_data("[]", 1024).is_err());
        assert_eq!(parse_user_data(r#"{"id":"12345","user_info":{}}"#), Ok("12345".into()));
        assert_eq!(parse_user_data(r#"{"id":7}"#), Ok("7".into()));
        assert!(parse_user_data(r#"{"name":"x"}"#).is_err());
    }
}
