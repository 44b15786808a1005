//! The server API for backends: `/api/...` requests, authenticated with the API key, answered with JSON.

use crate::broker::channel::ChannelName;
use crate::broker::redis::{Job, ReplyTo};
use crate::broker::{BrokerError, ConnRef, HistoryPage, Since};
use crate::conn::Ctx;
use crate::conn::client::parse_client_id;
use crate::conn::http::{Request, query_value};
use crate::error::HttpError;
use crate::protocol::MAX_HISTORY_LIMIT;
use crate::server::Shared;
use crate::shard::inbox::Work;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// An API endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /api/publish`.
    Publish,
    /// `POST /api/broadcast`.
    Broadcast,
    /// `POST /api/disconnect`.
    Disconnect,
    /// `POST /api/unsubscribe`.
    Unsubscribe,
    /// `GET /api/presence`.
    Presence,
    /// `GET /api/history`.
    History,
    /// `GET /api/channels`.
    Channels,
    /// `GET /api/info`.
    Info,
}

impl Endpoint {
    /// Every endpoint, in the order of its metrics rows.
    pub const ALL: [Endpoint; 8] = [
        Endpoint::Publish,
        Endpoint::Broadcast,
        Endpoint::Disconnect,
        Endpoint::Unsubscribe,
        Endpoint::Presence,
        Endpoint::History,
        Endpoint::Channels,
        Endpoint::Info,
    ];

    /// The last part of its path, also its metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Publish => "publish",
            Endpoint::Broadcast => "broadcast",
            Endpoint::Disconnect => "disconnect",
            Endpoint::Unsubscribe => "unsubscribe",
            Endpoint::Presence => "presence",
            Endpoint::History => "history",
            Endpoint::Channels => "channels",
            Endpoint::Info => "info",
        }
    }

    /// The method it answers.
    pub fn method(self) -> &'static str {
        if self.takes_body() { "POST" } else { "GET" }
    }

    /// Whether requests to it carry a JSON body (the others take a query).
    pub fn takes_body(self) -> bool {
        matches!(
            self,
            Endpoint::Publish | Endpoint::Broadcast | Endpoint::Disconnect | Endpoint::Unsubscribe
        )
    }
}

/// The endpoint a path under `/api/` names, whatever the method.
pub fn endpoint(path: &str) -> Option<Endpoint> {
    let name = path.strip_prefix("/api/")?;
    Endpoint::ALL.into_iter().find(|endpoint| endpoint.label() == name)
}

/// The endpoint for a method and path under `/api/`.
pub fn route(method: &str, path: &str) -> Result<Endpoint, HttpError> {
    let endpoint = endpoint(path).ok_or(HttpError::NotFound)?;
    let allow = endpoint.method();
    if method == allow { Ok(endpoint) } else { Err(HttpError::MethodNotAllowed { allow }) }
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
}

/// How a call is answered.
#[derive(Debug)]
pub enum Reply {
    /// Now, with this status and JSON body.
    Now(u16, Vec<u8>),
    /// Later: every shard has work to do first, and the last one to finish
    /// sends the answer to the requesting connection's shard.
    Later,
}

/// Handles a call.
pub fn handle(call: &Call<'_>, ctx: &mut Ctx) -> Result<Reply, HttpError> {
    match call.endpoint {
        Endpoint::Publish => publish(call.body, call.reply_to, ctx),
        Endpoint::Broadcast => broadcast(call.body, call.reply_to, ctx),
        Endpoint::Disconnect => {
            let body: UserBody<'_> = parse_body(call.body)?;
            let user = user(&body)?;
            user_call(user, UserAction::Disconnect, call.reply_to, ctx);
            Ok(Reply::Later)
        }
        Endpoint::Unsubscribe => {
            let body: UserBody<'_> = parse_body(call.body)?;
            let user = user(&body)?;
            let channel = channel(body.channel)?;
            ctx.shared.broker.options(&channel)?;
            user_call(user, UserAction::Unsubscribe(channel), call.reply_to, ctx);
            Ok(Reply::Later)
        }
        Endpoint::Presence => presence(call.query, call.reply_to, ctx),
        Endpoint::History => history(call.query, call.reply_to, ctx),
        Endpoint::Channels => channels(call.query, ctx),
        Endpoint::Info => Ok(Reply::Now(200, info(&ctx.shared).into_bytes())),
    }
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

/// `exclude_client`: the client id as given (the Redis engine hands it to
/// every node), and the connection it names on this node.
fn exclude<'a>(
    body: &PublishBody<'a>,
    ctx: &Ctx,
) -> Result<(Option<&'a str>, Option<ConnRef>), HttpError> {
    let Some(raw) = body.exclude_client else { return Ok((None, None)) };
    let id = plain_string(raw)
        .ok_or_else(|| HttpError::InvalidRequest("exclude_client must be a client id".into()))?;
    // A client of another node (or of an earlier run) is simply not here.
    Ok((Some(id), parse_client_id(&ctx.node, id)))
}

fn publish(body: &[u8], reply_to: ConnRef, ctx: &mut Ctx) -> Result<Reply, HttpError> {
    let request: PublishBody<'_> = parse_body(body)?;
    let channel = channel(request.channel)?;
    let data = data(&request)?;
    let (exclude_id, exclude) = exclude(&request, ctx)?;
    if let Some(engine) = ctx.shared.broker.redis() {
        ctx.shared.broker.options(&channel)?;
        engine.submit(Job::Publish {
            channels: vec![channel],
            data: Bytes::copy_from_slice(data.get().as_bytes()),
            exclude: exclude_id.map(str::to_string),
            reply: ReplyTo::Api(reply_to),
        });
        ctx.metrics.publications.inc();
        return Ok(Reply::Later);
    }
    let published = ctx.shared.broker.publish(&channel, data.get().as_bytes(), exclude)?;
    ctx.metrics.publications.inc();
    let answer =
        format!(r#"{{"epoch":"{}","offset":{}}}"#, published.epoch.as_str(), published.offset);
    Ok(Reply::Now(200, answer.into_bytes()))
}

/// Publishes the same data to several channels. Every channel is checked
/// before the first is published to: a bad one refuses the whole request
/// and nothing is published.
fn broadcast(body: &[u8], reply_to: ConnRef, ctx: &mut Ctx) -> Result<Reply, HttpError> {
    let request: PublishBody<'_> = parse_body(body)?;
    let raw_channels = request.channels.as_deref().unwrap_or_default();
    if raw_channels.is_empty() {
        return Err(HttpError::InvalidRequest(
            "channels must be a non-empty list of channel names".into(),
        ));
    }
    let mut channels = Vec::with_capacity(raw_channels.len());
    for raw in raw_channels {
        let channel = channel(Some(raw))?;
        ctx.shared.broker.options(&channel)?;
        if channels.contains(&channel) {
            return Err(HttpError::InvalidRequest(format!(
                "channel {} is listed twice",
                channel.as_str()
            )));
        }
        channels.push(channel);
    }
    let data = data(&request)?;
    let (exclude_id, exclude) = exclude(&request, ctx)?;
    if let Some(engine) = ctx.shared.broker.redis() {
        ctx.metrics.publications.add(channels.len() as u64);
        engine.submit(Job::Publish {
            channels,
            data: Bytes::copy_from_slice(data.get().as_bytes()),
            exclude: exclude_id.map(str::to_string),
            reply: ReplyTo::Api(reply_to),
        });
        return Ok(Reply::Later);
    }
    let mut answer = String::from(r#"{"results":["#);
    for (index, channel) in channels.iter().enumerate() {
        let published = ctx.shared.broker.publish(channel, data.get().as_bytes(), exclude)?;
        ctx.metrics.publications.inc();
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
    Ok(Reply::Now(200, answer.into_bytes()))
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

fn presence(query: Option<&str>, reply_to: ConnRef, ctx: &mut Ctx) -> Result<Reply, HttpError> {
    let channel = query_channel(query)?;
    let members = ctx.shared.broker.presence(&channel)?;
    if let Some(engine) = ctx.shared.broker.redis() {
        engine.submit(Job::Presence { channel, reply: ReplyTo::Api(reply_to) });
        return Ok(Reply::Later);
    }
    let clients: Vec<Value> = members
        .iter()
        .map(|member| serde_json::json!({"client": &*member.client, "user": &*member.user}))
        .collect();
    let answer = serde_json::json!({ "channel": channel.as_str(), "clients": clients });
    Ok(Reply::Now(200, answer.to_string().into_bytes()))
}

fn history(query: Option<&str>, reply_to: ConnRef, ctx: &mut Ctx) -> Result<Reply, HttpError> {
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
    if let Some(engine) = ctx.shared.broker.redis() {
        if ctx.shared.broker.options(&channel)?.history_size == 0 {
            return Err(BrokerError::HistoryOff.into());
        }
        engine.submit(Job::History { channel, since, limit, reply: ReplyTo::Api(reply_to) });
        return Ok(Reply::Later);
    }
    let page = ctx.shared.broker.history(&channel, since.as_ref(), limit)?;
    Ok(Reply::Now(200, history_body(channel.as_str(), &page)))
}

/// The `GET /api/history` answer for a page of history.
pub fn history_body(channel: &str, page: &HistoryPage) -> Vec<u8> {
    let size: usize = page.publications.iter().map(|(_, data)| data.len() + 32).sum();
    let mut answer = Vec::with_capacity(size + 96);
    let _ = write!(
        VecWriter(&mut answer),
        r#"{{"channel":"{}","epoch":"{}","offset":{},"publications":["#,
        channel,
        page.epoch.as_str(),
        page.offset
    );
    for (index, (offset, data)) in page.publications.iter().enumerate() {
        if index > 0 {
            answer.push(b',');
        }
        let _ = write!(VecWriter(&mut answer), r#"{{"offset":{offset},"data":"#);
        answer.extend_from_slice(data);
        answer.push(b'}');
    }
    answer.extend_from_slice(b"]}");
    answer
}

/// `fmt::Write` into a byte vector.
struct VecWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

fn channels(query: Option<&str>, ctx: &mut Ctx) -> Result<Reply, HttpError> {
    let prefix = query_value(query, "prefix")?.unwrap_or_default();
    let mut channels = ctx.shared.broker.subscribed_channels(&prefix);
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
    let node = serde_json::json!({
        "node": &*shared.node,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": shared.started.elapsed().as_secs(),
        "connections": shared.connections.load(Ordering::Relaxed),
        "shards": shared.config.threads,
        "channels": shared.broker.channel_count(),
        "engine": match shared.broker.redis() {
            None => "memory",
            Some(engine) if engine.is_up() => "redis",
            Some(_) => "redis (unavailable)",
        },
    });
    let mut answer = node.clone();
    if let Value::Object(fields) = &mut answer {
        fields.insert("nodes".into(), Value::Array(vec![node]));
    }
    answer.to_string()
}

/// What every shard does to one user's connections.
#[derive(Debug, Clone)]
pub enum UserAction {
    /// Close them with 4000.
    Disconnect,
    /// Unsubscribe them from a channel (they get an `unsubscribed` push).
    Unsubscribe(ChannelName),
}

/// An API call carried out by every shard on its own connections of one
/// user. The last shard to finish answers the caller.
#[derive(Debug)]
pub struct UserTask {
    /// The user.
    pub user: Arc<str>,
    /// What to do.
    pub action: UserAction,
    reply_to: TaskReply,
    /// Shards still working on it.
    remaining: AtomicUsize,
    /// Connections acted on so far.
    count: AtomicUsize,
}

impl UserTask {
    /// A shard acted on `count` connections. The last shard to report sends
    /// the answer to the requesting connection.
    pub fn finish(&self, count: usize, shared: &Shared) {
        self.count.fetch_add(count, Ordering::AcqRel);
        if self.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let total = self.count.load(Ordering::Acquire);
        match &self.reply_to {
            TaskReply::Local(to) => {
                let body = user_answer(&self.action, total);
                shared.send(
                    usize::from(to.shard),
                    Work::Answer { to: *to, status: 200, body: body.into_bytes() },
                );
            }
            TaskReply::Node { origin, id } => {
                if let Some(engine) = shared.broker.redis() {
                    engine.submit(Job::ControlReply {
                        origin: origin.clone(),
                        id: *id,
                        count: total,
                    });
                }
            }
        }
    }
}

/// Where a [`UserTask`]'s count goes.
#[derive(Debug)]
pub enum TaskReply {
    /// Answer this API request.
    Local(ConnRef),
    /// Report to the node that asked through Redis (the Redis engine).
    Node {
        /// That node's id.
        origin: String,
        /// Its request id.
        id: u64,
    },
}

/// `{"disconnected":N}` or `{"unsubscribed":N}`.
pub fn user_answer(action: &UserAction, count: usize) -> String {
    match action {
        UserAction::Disconnect => format!(r#"{{"disconnected":{count}}}"#),
        UserAction::Unsubscribe(_) => format!(r#"{{"unsubscribed":{count}}}"#),
    }
}

/// Has every shard of this node carry out `action` on `user`'s connections;
/// the count goes to `reply_to`.
pub fn fan_out_to_shards(user: Arc<str>, action: UserAction, reply_to: TaskReply, shared: &Shared) {
    let shards = shared.shard_count();
    let task = Arc::new(UserTask {
        user,
        action,
        reply_to,
        remaining: AtomicUsize::new(shards),
        count: AtomicUsize::new(0),
    });
    for shard in 0..shards {
        shared.send(shard, Work::ForUser(task.clone()));
    }
}

/// A call on a user's connections: on every node (Redis engine) or on
/// every shard of this one.
fn user_call(user: Arc<str>, action: UserAction, reply_to: ConnRef, ctx: &Ctx) {
    match ctx.shared.broker.redis() {
        Some(engine) => engine.submit(Job::UserCall { user, action, to: reply_to }),
        None => fan_out_to_shards(user, action, TaskReply::Local(reply_to), &ctx.shared),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_methods() {
        assert_eq!(route("POST", "/api/publish"), Ok(Endpoint::Publish));
        assert_eq!(route("GET", "/api/history"), Ok(Endpoint::History));
        assert_eq!(
            route("GET", "/api/publish"),
            Err(HttpError::MethodNotAllowed { allow: "POST" })
        );
        assert_eq!(route("POST", "/api/info"), Err(HttpError::MethodNotAllowed { allow: "GET" }));
        assert_eq!(route("POST", "/api/nope"), Err(HttpError::NotFound));
        assert_eq!(route("POST", "/api/"), Err(HttpError::NotFound));
        for endpoint in Endpoint::ALL {
            let path = format!("/api/{}", endpoint.label());
            assert_eq!(route(endpoint.method(), &path), Ok(endpoint));
        }
    }
}
