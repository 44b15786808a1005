//! The Pusher HTTP API: signed requests at `/apps/{id}/...` (events, batches, channel and user queries, terminating a user's connections), answered in Pusher's shapes.
//!
//! Every request is checked before anything is done: the signature (key,
//! timestamp, body MD5, HMAC of method, path and sorted parameters), then
//! every event and channel of the body. Answers that need the engine more
//! than once (a batch of events; member counts with the Redis engine)
//! gather its answers in a [`Pending`] until the last one comes.

use super::signed_in_key;
use crate::broker::{Answer, EngineAnswer, ReplyTo};
use crate::channel::{AppChannelKind, ChannelName, USER_CHANNEL_PREFIX, app_channel_kind};
use crate::config::App;
use crate::error::HttpError;
use crate::metrics::ShardMetrics;
use crate::node::Shared;
use crate::types::{BrokerError, ConnRef, Member, UserAction, client_id_of_socket};
use crate::wire::pusher::{
    self as wire, MAX_CHANNELS_PER_TRIGGER, MAX_EVENT_NAME_LEN, SignedQuery,
};
use crate::wire::router::{PusherEndpoint, pusher_path};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::fmt::Write as _;
use std::sync::Arc;

/// A complete request to the Pusher HTTP API.
#[derive(Debug)]
pub struct Request<'a> {
    /// `GET` or `POST`.
    pub method: &'a str,
    /// The path, without the configured prefix: what was signed.
    pub path: &'a str,
    /// The query string (the signature's parameters, and the endpoint's).
    pub query: Option<&'a str>,
    /// The body.
    pub body: &'a [u8],
    /// The connection it came on: where later answers go.
    pub reply_to: ConnRef,
}

/// How a request is answered.
#[derive(Debug)]
pub enum Reply {
    /// Now, with this status and JSON body.
    Now(u16, Vec<u8>),
    /// When the engine has answered everything asked.
    Later(Box<Pending>),
}

/// What a channel's entry in an answer says.
#[derive(Debug, Clone, Copy, Default)]
struct Info {
    user_count: bool,
    subscription_count: bool,
    /// `GET /channels/{name}` always says whether it is occupied.
    occupied: bool,
    cache: bool,
}

/// How the gathered figures become the answer.
#[derive(Debug)]
enum Layout {
    /// `{}` (no `info` asked for).
    Empty,
    /// `{"channels":{NAME:{...}}}`.
    Channels,
    /// `{"batch":[{...}|{}]}`: each event's channel, if it asked for info.
    Batch(Vec<Option<usize>>),
    /// `{"occupied":..,...}` of the one channel.
    Channel,
    /// `{"users":[{"id":..}]}`.
    Users,
}

/// One channel in an answer, and the slots its figures come in.
#[derive(Debug)]
struct Target {
    channel: ChannelName,
    info: Info,
    /// Local subscribers (with Redis: this node's).
    subscriptions: u32,
    /// The slot of its members, when asked for.
    members: Option<usize>,
    /// The slot of its history (for its cache), when asked for.
    history: Option<usize>,
}

/// A request waiting for engine answers.
#[derive(Debug)]
pub struct Pending {
    /// Answers by slot (a later answer's id).
    slots: Vec<Option<EngineAnswer>>,
    missing: usize,
    /// What comes after the publications: the figures, or the answer.
    stage: Stage,
    cache_ttl_secs: u64,
    reply_to: ConnRef,
}

#[derive(Debug)]
enum Stage {
    /// Publications are under way; then the figures for `targets`.
    Publishing { targets: Vec<Target>, layout: Layout },
    /// The figures are under way.
    Counting { targets: Vec<Target>, layout: Layout },
    /// `terminate_connections`.
    Terminating,
}

/// Handles a request: checks its signature and body, and answers it or
/// sets off what it asks.
pub fn handle(
    request: &Request<'_>,
    shared: &Shared,
    metrics: &ShardMetrics,
    now_secs: u64,
) -> Result<Reply, HttpError> {
    let path = pusher_path(request.path).ok_or(HttpError::NotFound)?;
    let signed = SignedQuery::parse(request.query).map_err(signature_error)?;
    let key = signed
        .get("auth_key")
        .ok_or_else(|| signature_error(wire::SignatureError::Missing("auth_key")))?;
    let (index, app) = shared
        .config
        .app_by_key(key)
        .ok_or_else(|| HttpError::BadSignature(format!("unknown auth_key {key:?}")))?;
    if path.app.is_some_and(|id| id != app.id) {
        // The key of one app must not act on another (or a guessed id).
        return Err(HttpError::BadSignature("auth_key does not belong to this app".into()));
    }
    signed
        .verify(&app.secret, request.method, request.path, request.body, now_secs)
        .map_err(signature_error)?;
    if !app.enabled {
        return Err(HttpError::Forbidden("the app is disabled"));
    }
    let _ = index;
    let name = path.name.map(path_segment).transpose()?;
    let reply = |id| ReplyTo { conn: request.reply_to, id: Some(id) };
    let mut pending = Pending {
        slots: Vec::new(),
        missing: 0,
        stage: Stage::Terminating,
        cache_ttl_secs: app.cache_ttl_secs,
        reply_to: request.reply_to,
    };
    match path.endpoint {
        PusherEndpoint::Events => {
            let event: EventBody<'_> = parse_body(request.body)?;
            let trigger = check_event(&event, app, true)?;
            let layout = if trigger.info.user_count || trigger.info.subscription_count {
                Layout::Channels
            } else {
                Layout::Empty
            };
            let targets = targets_of(&trigger.channels, trigger.info);
            let answer = shared.engine.publish(
                &trigger.channels,
                &trigger.stored,
                trigger.exclude.as_deref(),
                reply(0),
            );
            metrics.publications.add(trigger.channels.len() as u64);
            pending.slots.push(None);
            pending.expect(0, answer, EngineAnswer::Published);
            pending.stage = Stage::Publishing { targets, layout };
        }
        PusherEndpoint::BatchEvents => {
            let batch: BatchBody<'_> = parse_body(request.body)?;
            if batch.batch.len() > app.max_batch_size {
                return Err(HttpError::InvalidRequest(format!(
                    "at most {} events in a batch",
                    app.max_batch_size
                )));
            }
            if batch.batch.is_empty() {
                return Err(HttpError::InvalidRequest("batch must list at least one event".into()));
            }
            // Every event is checked before the first is published.
            let triggers: Vec<Trigger> = batch
                .batch
                .iter()
                .map(|event| check_event(event, app, false))
                .collect::<Result<_, _>>()?;
            let mut targets = Vec::new();
            let mut order = Vec::with_capacity(triggers.len());
            for trigger in &triggers {
                let asked = trigger.info.user_count || trigger.info.subscription_count;
                order.push(asked.then_some(targets.len()));
                if asked {
                    targets.extend(targets_of(&trigger.channels, trigger.info));
                }
            }
            let layout = if order.iter().any(Option::is_some) {
                Layout::Batch(order)
            } else {
                Layout::Empty
            };
            pending.slots = triggers.iter().map(|_| None).collect();
            for (slot, trigger) in triggers.iter().enumerate() {
                let answer = shared.engine.publish(
                    &trigger.channels,
                    &trigger.stored,
                    trigger.exclude.as_deref(),
                    reply(slot as u64),
                );
                metrics.publications.add(trigger.channels.len() as u64);
                pending.expect(slot, answer, EngineAnswer::Published);
            }
            pending.stage = Stage::Publishing { targets, layout };
        }
        PusherEndpoint::Channels => {
            let prefix = query_param(&signed, "filter_by_prefix").unwrap_or_default();
            let info = info_of(query_param(&signed, "info").unwrap_or_default())?;
            if info.user_count && !prefix.starts_with("presence-") {
                return Err(HttpError::InvalidRequest(
                    "info=user_count needs filter_by_prefix=presence-".into(),
                ));
            }
            let full_prefix = format!("{};{prefix}", app.id);
            let mut channels: Vec<(Arc<str>, u32)> =
                shared.engine.subscribed_channels(&full_prefix);
            channels.sort();
            let targets = channels
                .into_iter()
                .filter_map(|(name, count)| {
                    let (_, pusher) = name.split_once(';')?;
                    if pusher.starts_with(USER_CHANNEL_PREFIX) {
                        return None;
                    }
                    let channel = ChannelName::of_app(&app.id, pusher).ok()?;
                    Some(Target {
                        channel,
                        info,
                        subscriptions: count,
                        members: None,
                        history: None,
                    })
                })
                .collect();
            pending.stage = Stage::Counting { targets, layout: Layout::Channels };
            pending.count(shared, reply);
        }
        PusherEndpoint::Channel => {
            let name = name.unwrap_or_default();
            let channel = app_channel(app, &name)?;
            let (kind, cache) = app_channel_kind(&name);
            let mut info = info_of(query_param(&signed, "info").unwrap_or_default())?;
            if info.user_count && kind != AppChannelKind::Presence {
                return Err(HttpError::InvalidRequest(
                    "user_count is only for presence channels".into(),
                ));
            }
            if info.cache && !cache {
                return Err(HttpError::InvalidRequest("cache is only for cache channels".into()));
            }
            info.occupied = true;
            let subscriptions = local_subscriptions(shared, &channel);
            let target = Target { channel, info, subscriptions, members: None, history: None };
            pending.stage = Stage::Counting { targets: vec![target], layout: Layout::Channel };
            pending.count(shared, reply);
        }
        PusherEndpoint::ChannelUsers => {
            let name = name.unwrap_or_default();
            let channel = app_channel(app, &name)?;
            if app_channel_kind(&name).0 != AppChannelKind::Presence {
                return Err(HttpError::InvalidRequest(
                    "users are only listed for presence channels".into(),
                ));
            }
            let info = Info { user_count: true, ..Info::default() };
            let target = Target { channel, info, subscriptions: 0, members: None, history: None };
            pending.stage = Stage::Counting { targets: vec![target], layout: Layout::Users };
            pending.count(shared, reply);
        }
        PusherEndpoint::Terminate => {
            let user = name.unwrap_or_default();
            if user.is_empty() || user.len() > wire::MAX_USER_ID_LEN {
                return Err(HttpError::InvalidRequest("a user id is 1 to 128 bytes".into()));
            }
            let answer = shared.engine.act_on_user(
                signed_in_key(&app.id, &user),
                UserAction::Terminate,
                reply(0),
            );
            pending.slots.push(None);
            pending.expect(0, answer, EngineAnswer::Users);
        }
    }
    Ok(match pending.advance(shared) {
        Some((status, body)) => Reply::Now(status, body),
        None => Reply::Later(Box::new(pending)),
    })
}

impl Pending {
    /// Notes what slot `slot` will get: the answer now, or later.
    fn expect<T>(
        &mut self,
        slot: usize,
        answer: Answer<T>,
        kind: impl FnOnce(Result<T, BrokerError>) -> EngineAnswer,
    ) {
        match answer {
            Answer::Now(result) => {
                if let Some(entry) = self.slots.get_mut(slot) {
                    *entry = Some(kind(result));
                }
            }
            Answer::Later => self.missing += 1,
        }
    }

    /// Asks the engine for the figures of every target.
    fn count(&mut self, shared: &Shared, reply: impl Fn(u64) -> ReplyTo) {
        let Stage::Counting { targets, .. } = &mut self.stage else { return };
        let mut asks = Vec::new();
        for target in targets.iter_mut() {
            let presence = app_channel_kind(target.channel.app().map_or("", |(_, name)| name)).0
                == AppChannelKind::Presence;
            if presence && (target.info.user_count || target.info.occupied) {
                target.members = Some(self.slots.len() + asks.len());
                asks.push((target.channel.clone(), false));
            }
            if target.info.cache {
                target.history = Some(self.slots.len() + asks.len());
                asks.push((target.channel.clone(), true));
            }
        }
        let first = self.slots.len();
        self.slots.extend(asks.iter().map(|_| None));
        for (offset, (channel, history)) in asks.into_iter().enumerate() {
            let slot = first + offset;
            let id = slot as u64;
            if history {
                let answer = shared.engine.history(&channel, None, usize::MAX, reply(id));
                let name = channel.clone();
                self.expect(slot, answer, |result| EngineAnswer::History(name, result));
            } else {
                let answer = shared.engine.presence(&channel, reply(id));
                let name = channel.clone();
                self.expect(slot, answer, |result| EngineAnswer::Presence(name, result));
            }
        }
    }

    /// An engine answer that came later, for slot `id`. Returns the
    /// answer once everything is in.
    pub fn on_answer(
        &mut self,
        id: Option<u64>,
        answer: EngineAnswer,
        shared: &Shared,
    ) -> Option<(u16, Vec<u8>)> {
        let slot = id.and_then(|id| usize::try_from(id).ok())?;
        let entry = self.slots.get_mut(slot)?;
        if entry.is_none() {
            *entry = Some(answer);
            self.missing = self.missing.saturating_sub(1);
        }
        self.advance(shared)
    }

    /// Moves on once every answer of the stage is in: the answer, or the
    /// next stage's questions.
    fn advance(&mut self, shared: &Shared) -> Option<(u16, Vec<u8>)> {
        if self.missing > 0 {
            return None;
        }
        let slots = std::mem::take(&mut self.slots);
        // The first refusal answers the request.
        for answer in slots.iter().flatten() {
            if let Some(error) = refusal_in(answer) {
                let error = refusal(error.clone());
                return Some((error.status(), error.body()));
            }
        }
        match std::mem::replace(&mut self.stage, Stage::Terminating) {
            Stage::Terminating => Some((200, b"{}".to_vec())),
            Stage::Publishing { mut targets, layout } => {
                if matches!(layout, Layout::Empty) {
                    return Some((200, b"{}".to_vec()));
                }
                for target in &mut targets {
                    target.subscriptions = local_subscriptions(shared, &target.channel);
                }
                self.stage = Stage::Counting { targets, layout };
                let conn = self.reply_to;
                self.count(shared, |id| ReplyTo { conn, id: Some(id) });
                self.advance(shared)
            }
            Stage::Counting { targets, layout } => {
                Some((200, render(&targets, &layout, &slots, self.cache_ttl_secs)))
            }
        }
    }
}

/// The answer's JSON from the gathered figures.
fn render(
    targets: &[Target],
    layout: &Layout,
    slots: &[Option<EngineAnswer>],
    cache_ttl_secs: u64,
) -> Vec<u8> {
    let members = |target: &Target| -> Option<&Vec<Member>> {
        match slots.get(target.members?)?.as_ref()? {
            EngineAnswer::Presence(_, Ok(members)) => Some(members),
            _ => None,
        }
    };
    let users = |target: &Target| -> Vec<&str> {
        let mut users: Vec<&str> = members(target)
            .map(|m| m.iter().map(|member| &*member.user).collect())
            .unwrap_or_default();
        users.sort_unstable();
        users.dedup();
        users
    };
    let attributes = |target: &Target| -> String {
        let mut fields: Vec<String> = Vec::new();
        let user_count = users(target).len();
        if target.info.occupied {
            let occupied = target.subscriptions > 0 || user_count > 0;
            fields.push(format!(r#""occupied":{occupied}"#));
        }
        if target.info.user_count {
            fields.push(format!(r#""user_count":{user_count}"#));
        }
        if target.info.subscription_count {
            fields.push(format!(r#""subscription_count":{}"#, target.subscriptions));
        }
        if let Some(cache) =
            target.history.and_then(|slot| cache_of(slots.get(slot)?.as_ref()?, cache_ttl_secs))
        {
            fields.push(format!(r#""cache":{cache}"#));
        }
        format!("{{{}}}", fields.join(","))
    };
    let name = |target: &Target| target.channel.app().map_or("", |(_, name)| name).to_string();
    let mut out = String::new();
    match layout {
        Layout::Empty => out.push_str("{}"),
        Layout::Channels => {
            out.push_str(r#"{"channels":{"#);
            for (index, target) in targets.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                let _ = write!(out, r#""{}":{}"#, name(target), attributes(target));
            }
            out.push_str("}}");
        }
        Layout::Batch(order) => {
            out.push_str(r#"{"batch":["#);
            for (index, target) in order.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                match target.and_then(|at| targets.get(at)) {
                    Some(target) => out.push_str(&attributes(target)),
                    None => out.push_str("{}"),
                }
            }
            out.push_str("]}");
        }
        Layout::Channel => {
            if let Some(target) = targets.first() {
                out.push_str(&attributes(target));
            }
        }
        Layout::Users => {
            out.push_str(r#"{"users":["#);
            let listed = targets.first().map(users).unwrap_or_default();
            for (index, user) in listed.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                let _ = write!(out, r#"{{"id":{}}}"#, serde_json::Value::from(*user));
            }
            out.push_str("]}");
        }
    }
    out.into_bytes()
}

/// A cache channel's event and remaining seconds, from its history.
fn cache_of(answer: &EngineAnswer, cache_ttl_secs: u64) -> Option<String> {
    let EngineAnswer::History(_, Ok(page)) = answer else { return None };
    let (_, stored) = page.publications.last()?;
    let age_secs = page.newest_age_ms.unwrap_or(0) / 1000;
    let ttl = cache_ttl_secs.saturating_sub(age_secs);
    #[derive(Deserialize)]
    struct Stored<'a> {
        #[serde(borrow)]
        event: &'a RawValue,
        #[serde(borrow)]
        data: &'a RawValue,
    }
    let stored: Stored<'_> = serde_json::from_slice(stored).ok()?;
    Some(format!(r#"{{"event":{},"data":{},"ttl":{ttl}}}"#, stored.event.get(), stored.data.get()))
}

/// The refusal in an engine answer, if it is one.
fn refusal_in(answer: &EngineAnswer) -> Option<&BrokerError> {
    match answer {
        EngineAnswer::Published(Err(error))
        | EngineAnswer::Presence(_, Err(error))
        | EngineAnswer::History(_, Err(error))
        | EngineAnswer::Users(Err(error))
        | EngineAnswer::Subscribed(_, Err(error)) => Some(error),
        _ => None,
    }
}

/// The one place engine refusals become the Pusher API's statuses.
fn refusal(error: BrokerError) -> HttpError {
    match error {
        BrokerError::UnknownApp(_) | BrokerError::UnknownNamespace(_) => {
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

fn signature_error(error: wire::SignatureError) -> HttpError {
    HttpError::BadSignature(error.message())
}

/// This node's subscribers of `channel`.
fn local_subscriptions(shared: &Shared, channel: &ChannelName) -> u32 {
    shared
        .engine
        .subscribed_channels(channel.as_str())
        .into_iter()
        .find(|(name, _)| **name == *channel.as_str())
        .map_or(0, |(_, count)| count)
}

/// The targets of a trigger's channels, for its `info`.
fn targets_of(channels: &[ChannelName], info: Info) -> Vec<Target> {
    channels
        .iter()
        .map(|channel| {
            let presence = app_channel_kind(channel.app().map_or("", |(_, name)| name)).0
                == AppChannelKind::Presence;
            let info = Info { user_count: info.user_count && presence, ..info };
            Target {
                channel: channel.clone(),
                info,
                subscriptions: 0,
                members: None,
                history: None,
            }
        })
        .collect()
}

/// `info=user_count,subscription_count,cache`.
fn info_of(text: &str) -> Result<Info, HttpError> {
    let mut info = Info::default();
    for attribute in text.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        match attribute {
            "user_count" => info.user_count = true,
            "subscription_count" => info.subscription_count = true,
            "cache" => info.cache = true,
            other => {
                return Err(HttpError::InvalidRequest(format!(
                    "unknown info attribute {other:?} (user_count, subscription_count, cache)"
                )));
            }
        }
    }
    Ok(info)
}

fn query_param<'a>(signed: &'a SignedQuery, key: &str) -> Option<&'a str> {
    signed.get(key)
}

/// A path segment, percent-decoded (`+` stays a plus).
fn path_segment(segment: &str) -> Result<String, HttpError> {
    let escaped = segment.replace('+', "%2B");
    crate::wire::http::percent_decode(&escaped)
        .map(|text| text.into_owned())
        .ok_or_else(|| HttpError::InvalidRequest("the path is not valid percent-encoding".into()))
}

fn app_channel(app: &App, name: &str) -> Result<ChannelName, HttpError> {
    ChannelName::of_app(&app.id, name)
        .map_err(|invalid| HttpError::InvalidRequest(format!("channel {name:?}: {invalid}")))
}

fn parse_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, HttpError> {
    serde_json::from_slice(body)
        .map_err(|error| HttpError::InvalidRequest(format!("body must be a JSON object: {error}")))
}

/// An event of `events` or of a batch.
#[derive(Deserialize)]
struct EventBody<'a> {
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    channel: Option<&'a RawValue>,
    #[serde(borrow, default)]
    channels: Option<&'a RawValue>,
    #[serde(borrow, default)]
    socket_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    info: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct BatchBody<'a> {
    #[serde(borrow)]
    batch: Vec<EventBody<'a>>,
}

/// An event, checked: where it goes, what is stored, who is left out.
struct Trigger {
    channels: Vec<ChannelName>,
    stored: Vec<u8>,
    exclude: Option<String>,
    info: Info,
}

fn string_of(raw: Option<&RawValue>, what: &str) -> Result<Option<String>, HttpError> {
    raw.map(|raw| {
        serde_json::from_str::<String>(raw.get())
            .map_err(|_| HttpError::InvalidRequest(format!("{what} must be a string")))
    })
    .transpose()
}

/// Checks one event: name, data (a string, within the app's limit),
/// channels (`channels` up to 100, or one `channel`; with an encrypted
/// channel, only that one), `socket_id`, `info`.
fn check_event(
    event: &EventBody<'_>,
    app: &App,
    many_channels: bool,
) -> Result<Trigger, HttpError> {
    let name = string_of(event.name, "name")?
        .ok_or_else(|| HttpError::InvalidRequest("missing name".into()))?;
    if name.is_empty() || name.len() > MAX_EVENT_NAME_LEN {
        return Err(HttpError::InvalidRequest(format!(
            "name must be 1 to {MAX_EVENT_NAME_LEN} bytes"
        )));
    }
    if name.starts_with("pusher_internal:") {
        return Err(HttpError::InvalidRequest("pusher_internal: event names are reserved".into()));
    }
    let data = event.data.ok_or_else(|| HttpError::InvalidRequest("missing data".into()))?;
    let text = string_of(Some(data), "data")?.unwrap_or_default();
    if text.len() > app.max_event_payload_bytes {
        return Err(HttpError::PayloadTooLarge { limit: app.max_event_payload_bytes });
    }
    let mut names: Vec<String> = match (event.channels, event.channel) {
        (Some(raw), None) if many_channels => serde_json::from_str(raw.get())
            .map_err(|_| HttpError::InvalidRequest("channels must be a list of strings".into()))?,
        (Some(_), None) => {
            return Err(HttpError::InvalidRequest("a batch event names one channel".into()));
        }
        (None, Some(_)) => vec![string_of(event.channel, "channel")?.unwrap_or_default()],
        (Some(_), Some(_)) => {
            return Err(HttpError::InvalidRequest("give channels or channel, not both".into()));
        }
        (None, None) => return Err(HttpError::InvalidRequest("missing channels".into())),
    };
    names.dedup();
    if names.is_empty() || names.len() > MAX_CHANNELS_PER_TRIGGER {
        return Err(HttpError::InvalidRequest(format!(
            "an event goes to 1 to {MAX_CHANNELS_PER_TRIGGER} channels"
        )));
    }
    if names.len() > 1
        && names.iter().any(|name| app_channel_kind(name).0 == AppChannelKind::Encrypted)
    {
        return Err(HttpError::InvalidRequest(
            "an event for an encrypted channel goes to that channel alone".into(),
        ));
    }
    let mut channels = Vec::with_capacity(names.len());
    for name in &names {
        let channel = app_channel(app, name)?;
        if !channels.contains(&channel) {
            channels.push(channel);
        }
    }
    let exclude = match string_of(event.socket_id, "socket_id")? {
        None => None,
        Some(socket) => {
            let well_formed = socket.split_once('.').is_some_and(|(a, b)| {
                !a.is_empty()
                    && !b.is_empty()
                    && (a.bytes().chain(b.bytes())).all(|c| c.is_ascii_digit())
            });
            if !well_formed {
                return Err(HttpError::InvalidRequest(format!("invalid socket_id {socket:?}")));
            }
            // Not one of herald's: nobody to leave out.
            client_id_of_socket(&socket)
        }
    };
    let info = info_of(&string_of(event.info, "info")?.unwrap_or_default())?;
    Ok(Trigger { channels, stored: wire::stored_event(&name, data), exclude, info })
}
