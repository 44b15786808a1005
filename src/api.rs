//! The server API front end for backends: `/api/...` requests, authenticated with the API key, answered with JSON.

use crate::broker::{Answer, EngineAnswer, ReplyTo};
use crate::channel::ChannelName;
use crate::error::HttpError;
use crate::metrics::ShardMetrics;
use crate::node::Shared;
use crate::protocol::{self, MAX_HISTORY_LIMIT};
use crate::types::{BrokerError, ConnRef, Published, Since, UserAction};
use crate::wire::http::{Request, query_value};
use crate::wire::router::ApiEndpoint as Endpoint;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// The one place engine refusals become HTTP answers (for the server API,
/// and for SSE and long-poll requests): an unconfigured namespace is 404,
/// an option the namespace lacks 400, a full node or an engine that cannot
/// serve now 503.
pub fn refusal(error: BrokerError) -> HttpError {
    match error {
        BrokerError::UnknownNamespace(_) | BrokerError::UnknownApp(_) => {
            HttpError::Missing(error.message())
        }
        BrokerError::PresenceOff | BrokerError::HistoryOff => {
            HttpError::InvalidRequest(error.message())
        }
        BrokerError::TooManyChannels(_) | BrokerError::PresenceFull(_) => {
            HttpError::LimitReached(error.message())
        }
        BrokerError::Unavailable(why) => HttpError::Unavailable(why),
    }
}

/// Checks `Authorization: apikey KEY`. The right key is always served, so
/// that a backend behind a NAT or a proxy shared with someone who guesses
/// is never locked out. A wrong key from a peer that failed
/// [`crate::auth::MAX_KEY_FAILURES`] times within the window is answered
/// 429 (and the connection closed) instead of 401.
pub fn authorize(
    request: &Request<'_>,
    shared: &Shared,
    peer: impl Fn() -> Option<IpAddr>,
) -> Result<(), HttpError> {
    let refused = match check_key(request, shared) {
        Ok(()) => return Ok(()),
        Err(refused) => refused,
    };
    // The peer's address costs a system call: asked only for a wrong key.
    let peer = peer();
    let now = Instant::now();
    shared
        .key_failures
        .check(peer, now)
        .map_err(|retry_after_secs| HttpError::TooManyRequests { retry_after_secs })?;
    shared.key_failures.record(peer, now);
    Err(refused)
}

fn check_key(request: &Request<'_>, shared: &Shared) -> Result<(), HttpError> {
    let presented = match request.unique_header("authorization") {
        Ok(Some(value)) => value,
        Ok(None) => return Err(HttpError::Unauthorized("missing Authorization: apikey <key>")),
        Err(_) => return Err(HttpError::Unauthorized("more than one Authorization header")),
    };
    let key_bytes = match presented.iter().position(|b| *b == b' ') {
        Some(space)
            if presented.get(..space).is_some_and(|s| s.eq_ignore_ascii_case(b"apikey")) =>
        {
            presented.get(space + 1..).unwrap_or_default().trim_ascii()
        }
        _ => return Err(HttpError::Unauthorized("the Authorization header must be: apikey <key>")),
    };
    if shared.api_key.matches(key_bytes) {
        Ok(())
    } else {
        Err(HttpError::Unauthorized("wrong API key"))
    }
}

/// An authorized request, complete with its body.
#[derive(Debug)]
pub struct Call<'a> {
    /// What it asks for.
    pub endpoint: Endpoint,
    /// The query string of a `GET` endpoint.
    pub query: Option<&'a str>,
    /// The body of a `POST` endpoint.
    pub body: &'a [u8],
    /// The connection the request came on: where a later answer goes.
    pub reply_to: ConnRef,
    /// The connection's tag for this request, carried by a later answer.
    pub id: u64,
}

/// How a call is answered.
#[derive(Debug)]
pub enum Reply {
    /// Now, with this status and JSON body.
    Now(u16, Vec<u8>),
    /// Later: the engine (or every shard) has work to do first; the answer
    /// comes to the requesting connection ([`answer`]).
    Later,
}

/// Handles a call.
pub fn handle(
    call: &Call<'_>,
    shared: &Shared,
    metrics: &ShardMetrics,
) -> Result<Reply, HttpError> {
    let reply = ReplyTo { conn: call.reply_to, id: Some(call.id) };
    let engine = &shared.engine;
    match call.endpoint {
        Endpoint::Publish | Endpoint::Broadcast => {
            let request: PublishBody<'_> = parse_body(call.body)?;
            let channels = if call.endpoint == Endpoint::Publish {
                vec![channel(request.channel)?]
            } else {
                broadcast_channels(&request)?
            };
            // Every channel is checked before the first is published to: a
            // bad one refuses the whole request and nothing is published.
            for channel in &channels {
                shared.config.options(channel).map_err(refusal)?;
            }
            let data = data(&request)?;
            let exclude = match request.exclude_client {
                None => None,
                Some(raw) => Some(plain_string(raw).ok_or_else(|| {
                    HttpError::InvalidRequest("exclude_client must be a client id".into())
                })?),
            };
            let answer = engine.publish(&channels, data.get().as_bytes(), exclude, reply);
            metrics.publications.add(channels.len() as u64);
            later(call.endpoint, now(answer, EngineAnswer::Published))
        }
        Endpoint::Disconnect | Endpoint::Unsubscribe => {
            let body: UserBody<'_> = parse_body(call.body)?;
            let user = user(&body)?;
            let action = if call.endpoint == Endpoint::Disconnect {
                UserAction::Disconnect
            } else {
                let channel = channel(body.channel)?;
                shared.config.options(&channel).map_err(refusal)?;
                UserAction::Unsubscribe(channel)
            };
            later(call.endpoint, now(engine.act_on_user(user, action, reply), EngineAnswer::Users))
        }
        Endpoint::Presence => {
            let channel = query_channel(call.query)?;
            let answer = engine.presence(&channel, reply);
            later(call.endpoint, now(answer, |result| EngineAnswer::Presence(channel, result)))
        }
        Endpoint::History => {
            let (channel, since, limit) = history_query(call.query)?;
            let answer = engine.history(&channel, since.as_ref(), limit, reply);
            later(call.endpoint, now(answer, |result| EngineAnswer::History(channel, result)))
        }
        Endpoint::Channels => channels(call.query, shared),
        Endpoint::Info => Ok(Reply::Now(200, info(shared).into_bytes())),
    }
}

/// The engine's answer, if it is here, as an answer of the kind that
/// could also come later.
fn now<T>(
    answer: Answer<T>,
    kind: impl FnOnce(Result<T, BrokerError>) -> EngineAnswer,
) -> Option<EngineAnswer> {
    match answer {
        Answer::Now(result) => Some(kind(result)),
        Answer::Later => None,
    }
}

/// Now, or later.
fn later(endpoint: Endpoint, now: Option<EngineAnswer>) -> Result<Reply, HttpError> {
    match now {
        None => Ok(Reply::Later),
        Some(answer) => {
            let (status, body) = answer_body(endpoint, answer)?;
            Ok(Reply::Now(status, body))
        }
    }
}

/// An engine's answer to a request on `endpoint`, as the status and JSON
/// body of the HTTP answer.
pub fn answer(endpoint: Endpoint, answer: EngineAnswer) -> (u16, Vec<u8>) {
    match answer_body(endpoint, answer) {
        Ok(answer) => answer,
        Err(error) => (error.status(), error.body()),
    }
}

fn answer_body(endpoint: Endpoint, answer: EngineAnswer) -> Result<(u16, Vec<u8>), HttpError> {
    let body = match answer {
        EngineAnswer::Published(result) => {
            let results = result.map_err(refusal)?;
            if endpoint == Endpoint::Broadcast {
                broadcast_body(&results)
            } else {
                let (_, published) = results
                    .first()
                    .ok_or_else(|| HttpError::Unavailable("nothing was published".into()))?;
                format!(
                    r#"{{"epoch":"{}","offset":{}}}"#,
                    published.epoch.as_str(),
                    published.offset
                )
                .into_bytes()
            }
        }
        EngineAnswer::Users(result) => {
            let count = result.map_err(refusal)?;
            let key =
                if endpoint == Endpoint::Disconnect { "disconnected" } else { "unsubscribed" };
            format!(r#"{{"{key}":{count}}}"#).into_bytes()
        }
        EngineAnswer::Presence(channel, result) => {
            protocol::presence_body(channel.as_str(), &result.map_err(refusal)?)
        }
        EngineAnswer::History(channel, result) => {
            protocol::history_body(channel.as_str(), &result.map_err(refusal)?)
        }
        EngineAnswer::Subscribed(..) => {
            return Err(HttpError::Unavailable("not an answer to this request".into()));
        }
    };
    Ok((200, body))
}

fn broadcast_body(results: &[(ChannelName, Published)]) -> Vec<u8> {
    let mut answer = String::from(r#"{"results":["#);
    for (index, (channel, published)) in results.iter().enumerate() {
        if index > 0 {
            answer.push(',');
        }
        let _ = write!(
            answer,
            r#"{{"channel":"{}","epoch":"{}","offset":{}}}"#,
            channel.as_str(),
            published.epoch.as_str(),
            published.offset
        );
    }
    answer.push_str("]}");
    answer.into_bytes()
}

#[derive(Deserialize)]
struct PublishBody<'a> {
    #[serde(borrow, default)]
    channel: Option<&'a RawValue>,
    #[serde(borrow, default)]
    channels: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    exclude_client: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct UserBody<'a> {
    #[serde(borrow, default)]
    user: Option<&'a RawValue>,
    #[serde(borrow, default)]
    channel: Option<&'a RawValue>,
}

/// Tells a present `null` from an absent field.
fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(deserializer).map(Some)
}

fn parse_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, HttpError> {
    serde_json::from_slice(body)
        .map_err(|error| HttpError::InvalidRequest(format!("body must be a JSON object: {error}")))
}

/// A JSON string without escapes, borrowed.
fn plain_string(raw: &RawValue) -> Option<&str> {
    let inner = raw.get().strip_prefix('"')?.strip_suffix('"')?;
    (!inner.contains('\\') && !inner.contains('"')).then_some(inner)
}

fn channel(raw: Option<&RawValue>) -> Result<ChannelName, HttpError> {
    let name = raw
        .and_then(plain_string)
        .ok_or_else(|| HttpError::InvalidRequest("channel must be a string".into()))?;
    parse_channel(name)
}

fn parse_channel(name: &str) -> Result<ChannelName, HttpError> {
    ChannelName::parse(name)
        .map_err(|invalid| HttpError::InvalidRequest(format!("channel {name:?}: {invalid}")))
}

fn user(body: &UserBody<'_>) -> Result<Arc<str>, HttpError> {
    // Any JSON string, escapes included, as a token's `sub` may hold them.
    let user = body
        .user
        .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
        .filter(|user| !user.is_empty())
        .ok_or_else(|| HttpError::InvalidRequest("user must be a non-empty string".into()))?;
    Ok(Arc::from(user))
}

fn data<'a>(body: &PublishBody<'a>) -> Result<&'a RawValue, HttpError> {
    body.data.ok_or_else(|| HttpError::InvalidRequest("missing data".into()))
}

/// A broadcast's channels: a non-empty list, none named twice.
fn broadcast_channels(request: &PublishBody<'_>) -> Result<Vec<ChannelName>, HttpError> {
    let raw_channels = request.channels.as_deref().unwrap_or_default();
    if raw_channels.is_empty() {
        return Err(HttpError::InvalidRequest(
            "channels must be a non-empty list of channel names".into(),
        ));
    }
    let mut channels: Vec<ChannelName> = Vec::with_capacity(raw_channels.len());
    for raw in raw_channels {
        let channel = channel(Some(raw))?;
        if channels.contains(&channel) {
            return Err(HttpError::InvalidRequest(format!(
                "channel {} is listed twice",
                channel.as_str()
            )));
        }
        channels.push(channel);
    }
    Ok(channels)
}

fn query_channel(query: Option<&str>) -> Result<ChannelName, HttpError> {
    let name = query_value(query, "channel")?
        .ok_or_else(|| HttpError::InvalidRequest("the query needs channel=NAME".into()))?;
    parse_channel(&name)
}

fn query_number(query: Option<&str>, name: &str) -> Result<Option<u64>, HttpError> {
    match query_value(query, name)? {
        None => Ok(None),
        Some(text) if text.is_empty() => Ok(None),
        Some(text) => text.parse().map(Some).map_err(|_| {
            HttpError::InvalidRequest(format!("{name} must be a non-negative integer"))
        }),
    }
}

/// `?channel=..[&since_offset=..&epoch=..][&limit=..]`.
fn history_query(query: Option<&str>) -> Result<(ChannelName, Option<Since>, usize), HttpError> {
    let channel = query_channel(query)?;
    let since_offset = query_number(query, "since_offset")?;
    let epoch = query_value(query, "epoch")?.filter(|epoch| !epoch.is_empty());
    let since = match (since_offset, epoch) {
        (Some(offset), Some(epoch)) => Some(Since { epoch: epoch.into_owned(), offset }),
        (None, None) => None,
        (Some(_), None) => {
            return Err(HttpError::InvalidRequest("since_offset needs the epoch it is in".into()));
        }
        (None, Some(_)) => {
            return Err(HttpError::InvalidRequest("epoch needs a since_offset".into()));
        }
    };
    let limit = match query_number(query, "limit")? {
        None => MAX_HISTORY_LIMIT,
        Some(limit) => usize::try_from(limit).unwrap_or(usize::MAX).min(MAX_HISTORY_LIMIT),
    };
    Ok((channel, since, limit))
}

fn channels(query: Option<&str>, shared: &Shared) -> Result<Reply, HttpError> {
    let prefix = query_value(query, "prefix")?.unwrap_or_default();
    let mut channels = shared.engine.subscribed_channels(&prefix);
    // Pusher apps' channels (`APP;NAME`) are theirs: their API lists them.
    channels.retain(|(channel, _)| ChannelName::parse(channel).is_ok_and(|c| c.app().is_none()));
    channels.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut answer = String::with_capacity(32 + channels.len() * 48);
    answer.push_str(r#"{"channels":["#);
    for (index, (channel, subscribers)) in channels.iter().enumerate() {
        if index > 0 {
            answer.push(',');
        }
        // Channel names need no JSON escaping.
        let _ = write!(answer, r#"{{"channel":"{channel}","subscribers":{subscribers}}}"#);
    }
    answer.push_str("]}");
    Ok(Reply::Now(200, answer.into_bytes()))
}

/// `GET /api/info`: this node, and the cluster it is part of (with the
/// memory engine, only itself).
pub fn info(shared: &Shared) -> String {
    let health = shared.engine.health();
    let engine = match health.up {
        Some(false) => format!("{} (unavailable)", health.name),
        _ => health.name.to_string(),
    };
    let node = serde_json::json!({
        "node": &*shared.node,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": shared.started.elapsed().as_secs(),
        "connections": shared.connections.load(Ordering::Relaxed),
        "shards": shared.config.threads,
        "channels": shared.engine.channel_count(),
        "engine": engine,
    });
    let mut answer = node.clone();
    if let Value::Object(fields) = &mut answer {
        fields.insert("nodes".into(), Value::Array(vec![node]));
    }
    answer.to_string()
}
