//! The Pusher front end: a Pusher Channels (protocol 7) client connection over the engine, its channels kept apart per app, and the engine's answers written as Pusher events.
//!
//! A Pusher app's channel is an engine channel named `APP;NAME`
//! (`ChannelName::of_app`); its publications are stored as
//! `{"event":..,"data":..}` and reach Pusher clients as the event frame
//! the publication builds once per node. Presence members are per
//! connection in the engine, which marks a user's first join and last
//! leave, so that `member_added` and `member_removed` come once per user.

pub mod api;

use crate::broker::{Answer, EngineAnswer, Position, Publication, ReplyTo, Subscription};
use crate::channel::{AppChannelKind, ChannelName, USER_CHANNEL_PREFIX, app_channel_kind};
use crate::config::App;
use crate::error::CloseReason;
use crate::node::local::{Local, PENDING};
use crate::node::subscribers::Subscriber;
use crate::session::{Allowance, CommandBucket, Outbox};
use crate::types::{BrokerError, ConnRef, Member, Notice, NoticeKind, Since, client_id, socket_id};
use crate::wire::frame::{Opcode, encode_frame};
use crate::wire::pusher::{
    self as wire, ChannelData, ClientMessage, SigninData, SubscribeData, UnsubscribeData,
};
use bytes::Bytes;
use std::sync::Arc;

/// Why a Pusher connection is refused at once, or closed later: the code
/// for both the `pusher:error` frame and the close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 4001: no app has this key.
    UnknownApp,
    /// 4003: the app is disabled.
    AppDisabled,
    /// 4004: the app has its `max_connections`.
    OverQuota,
    /// 4007: a protocol version below 5.
    UnsupportedProtocol,
    /// 4009: the browser's origin is not allowed.
    OriginNotAllowed,
    /// 4009: `terminate_connections` for the signed-in user.
    Terminated,
}

impl Refusal {
    /// The close reason (code and text), from the Pusher protocol's table.
    pub fn close_reason(self) -> CloseReason {
        match self {
            Refusal::UnknownApp => CloseReason::Code(4001, "App key not in this cluster"),
            Refusal::AppDisabled => CloseReason::Code(4003, "App is disabled"),
            Refusal::OverQuota => CloseReason::Code(4004, "App is over its connection quota"),
            Refusal::UnsupportedProtocol => CloseReason::Code(4007, "Unsupported protocol version"),
            Refusal::OriginNotAllowed => CloseReason::Code(4009, "Origin not allowed"),
            Refusal::Terminated => CloseReason::Code(4009, "Connection terminated by the app"),
        }
    }
}

/// The one place herald's own reasons for closing a connection become the
/// Pusher protocol's codes, which tell pusher-js what to do next: a
/// graceful shutdown reconnects at once (4200), a slow consumer after a
/// second (4100), a silent peer at once (4201); protocol errors keep their
/// RFC 6455 codes. Pusher reasons pass as they are.
pub fn close_reason(reason: CloseReason) -> CloseReason {
    match reason {
        CloseReason::ShuttingDown => CloseReason::Code(4200, "Server shutting down; reconnect"),
        CloseReason::SlowConsumer => CloseReason::Code(4100, "Over capacity: slow consumer"),
        CloseReason::Policy("no traffic for two ping intervals") => {
            CloseReason::Code(4201, "Pong reply not received")
        }
        CloseReason::TooManyRequests => CloseReason::Code(4029, "Too many messages"),
        other => other,
    }
}

/// The `pusher:error` frame that goes before a close frame, so that
/// clients acting on the message (Pysher) see the same code.
pub fn error_before_close(reason: CloseReason) -> Option<Bytes> {
    match reason {
        CloseReason::Code(code, text) => Some(text_frame(&wire::error(Some(code), text))),
        _ => None,
    }
}

/// What an upgrade to `/app/{key}` asks for: the app (by index in the
/// configuration), or why the connection is refused once open.
pub fn opening(
    key: &str,
    protocol: Option<&str>,
    origin_allowed: bool,
    apps: &[App],
    connections_of: impl Fn(usize) -> usize,
) -> Result<usize, Refusal> {
    let (index, app) =
        apps.iter().enumerate().find(|(_, app)| app.key == key).ok_or(Refusal::UnknownApp)?;
    // A missing version is the newest; one below 5 is refused.
    let protocol = protocol.map_or(Some(7), |text| text.parse::<u32>().ok());
    if protocol.is_none_or(|version| version < *wire::PROTOCOLS.start()) {
        return Err(Refusal::UnsupportedProtocol);
    }
    if !origin_allowed {
        return Err(Refusal::OriginNotAllowed);
    }
    if !app.enabled {
        return Err(Refusal::AppDisabled);
    }
    if app.max_connections > 0 && connections_of(index) >= app.max_connections {
        return Err(Refusal::OverQuota);
    }
    Ok(index)
}

/// A reply as a text frame.
fn text_frame(json: &[u8]) -> Bytes {
    encode_frame(Opcode::Text, json)
}

/// The one place engine refusals become `pusher:subscription_error`s:
/// the `type` and `status` pusher-js reports to `.error()` callbacks.
fn subscription_refusal(error: &BrokerError) -> (&'static str, u16) {
    match error {
        BrokerError::PresenceFull(_) | BrokerError::TooManyChannels(_) => ("LimitReached", 403),
        BrokerError::Unavailable(_) => ("ServerError", 503),
        BrokerError::UnknownApp(_)
        | BrokerError::UnknownNamespace(_)
        | BrokerError::PresenceOff
        | BrokerError::HistoryOff => ("ServerError", 500),
    }
}

/// One channel of a connection.
#[derive(Debug)]
struct Sub {
    channel: ChannelName,
    /// The connection's presence entry, on a presence channel.
    member: Option<Member>,
    /// The engine has not answered the subscribe yet.
    pending: bool,
    /// The client has not asked for it (its own user channel, subscribed
    /// at sign-in): nothing is said about it.
    silent: bool,
}

/// A Pusher client connection beyond its framing.
#[derive(Debug)]
pub struct PusherSession {
    /// The app, by index in the configuration.
    app: usize,
    me: ConnRef,
    subscriptions: Vec<Sub>,
    /// The user the connection signed in as.
    user: Option<Arc<str>>,
    /// Every message the client sends.
    messages: CommandBucket,
    /// Its client events.
    client_events: CommandBucket,
}

impl PusherSession {
    /// The session of connection `me` to app `app` (an index into the
    /// configuration's apps), and its `connection_established` frame.
    pub fn open(app: usize, me: ConnRef, local: &Local) -> (PusherSession, Bytes) {
        let config = &local.config;
        let rate = config.apps.get(app).map_or(1, |app| app.client_event_rate);
        let session = PusherSession {
            app,
            me,
            subscriptions: Vec::new(),
            user: None,
            messages: CommandBucket::full(local.now, config.command_burst),
            client_events: CommandBucket::full(local.now, rate),
        };
        let activity = config.apps.get(app).map_or(120, |app| app.activity_timeout.as_secs());
        let established = wire::connection_established(&session.socket_id(local), activity);
        (session, text_frame(&established))
    }

    /// The app's index in the configuration.
    pub fn app_index(&self) -> usize {
        self.app
    }

    /// The user the connection signed in as.
    pub fn signed_in_user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    fn app<'c>(&self, local: &'c Local) -> Option<&'c App> {
        local.config.apps.get(self.app)
    }

    fn socket_id(&self, local: &Local) -> String {
        socket_id(&local.node, self.me)
    }

    fn reply_to(&self) -> ReplyTo {
        ReplyTo { conn: self.me, id: None }
    }

    /// Handles one message from the client; queues what it answers. Only
    /// a flood closes the connection (4029): everything else a client gets
    /// wrong is answered with `pusher:error` and the connection stays.
    pub fn on_text(
        &mut self,
        text: &str,
        out: &mut impl Outbox,
        local: &mut Local,
    ) -> Result<(), CloseReason> {
        let (rate, burst) = (local.config.command_rate_per_sec, local.config.command_burst);
        match self.messages.take(local.now, rate, burst) {
            Allowance::Granted => {}
            Allowance::Refused => {
                local.metrics.commands_limited.inc();
                let message = format!("at most {rate} messages a second; slow down");
                send(out, local, &wire::error(None, &message));
                return Ok(());
            }
            Allowance::Exhausted => {
                local.metrics.commands_limited.inc();
                return Err(CloseReason::TooManyRequests);
            }
        }
        let Some(message) = ClientMessage::parse(text) else {
            send(
                out,
                local,
                &wire::error(None, "Invalid message: expected a JSON object with an event"),
            );
            return Ok(());
        };
        match &*message.event {
            "pusher:ping" => send(out, local, wire::PONG),
            "pusher:pong" => {}
            "pusher:subscribe" => match wire::command_data::<SubscribeData>(message.data) {
                Some(data) => self.subscribe(data, out, local),
                None => send(
                    out,
                    local,
                    &wire::error(None, "pusher:subscribe needs data with a channel"),
                ),
            },
            "pusher:unsubscribe" => {
                let data = wire::command_data::<UnsubscribeData>(message.data);
                if let Some(name) = data.and_then(|data| data.channel) {
                    let channel =
                        self.app(local).and_then(|app| ChannelName::of_app(&app.id, &name).ok());
                    if let Some(channel) = channel {
                        self.unsubscribe(&channel, local);
                    }
                }
            }
            "pusher:signin" => match wire::command_data::<SigninData>(message.data) {
                Some(data) => self.sign_in(data, out, local),
                None => send(
                    out,
                    local,
                    &wire::error(Some(4009), "pusher:signin needs auth and user_data"),
                ),
            },
            event if event.starts_with("client-") => self.client_event(&message, out, local),
            event if event.starts_with("pusher_internal:") => send(
                out,
                local,
                &wire::error(None, "pusher_internal: events are reserved for the server"),
            ),
            // Other `pusher:` events of newer clients are ignored.
            event if event.starts_with("pusher:") => {}
            _ => send(out, local, &wire::error(None, "Client events must start with client-")),
        }
        Ok(())
    }

    fn subscribe(&mut self, data: SubscribeData, out: &mut impl Outbox, local: &mut Local) {
        let config = local.config.clone();
        let Some(app) = config.apps.get(self.app) else { return };
        let Some(name) = data.channel else {
            send(out, local, &wire::error(None, "pusher:subscribe needs a channel"));
            return;
        };
        let refuse = |out: &mut dyn FnMut(&[u8]), kind: &str, message: &str, status: u16| {
            out(&wire::subscription_error(&name, kind, message, status));
        };
        let mut emit = |bytes: &[u8]| send(out, local, bytes);
        let channel = match ChannelName::of_app(&app.id, &name) {
            Ok(channel) => channel,
            Err(invalid) => {
                refuse(&mut emit, "InvalidChannel", &invalid.to_string(), 400);
                return;
            }
        };
        let (kind, cache) = app_channel_kind(&name);
        if kind == AppChannelKind::User {
            // Subscribed at sign-in; the client asks for it to route its
            // events to `pusher.user`.
            let own = self
                .user
                .as_deref()
                .is_some_and(|user| name.strip_prefix(USER_CHANNEL_PREFIX) == Some(user));
            if own {
                if let Some(sub) = self.subscriptions.iter_mut().find(|s| s.channel == channel) {
                    sub.silent = false;
                }
                emit(&wire::subscription_succeeded(&name));
            } else {
                refuse(&mut emit, "AuthError", "sign in as this user first (pusher:signin)", 403);
            }
            return;
        }
        if self.subscriptions.iter().any(|sub| sub.channel == channel) {
            emit(&wire::error(None, &format!("Existing subscription to channel {name}")));
            return;
        }
        let socket = self.socket_id(local);
        let mut member = None;
        if kind.needs_auth() {
            let channel_data =
                data.channel_data.as_deref().filter(|_| kind == AppChannelKind::Presence);
            let signed = wire::channel_string(&socket, &name, channel_data);
            let auth = data.auth.as_deref().unwrap_or_default();
            if !wire::verify_auth(&app.key, &app.secret, signed.as_bytes(), auth) {
                refuse(&mut emit, "AuthError", "Invalid signature", 401);
                return;
            }
            if kind == AppChannelKind::Presence {
                let Some(channel_data) = channel_data else {
                    refuse(&mut emit, "AuthError", "presence channels need channel_data", 400);
                    return;
                };
                match wire::parse_channel_data(channel_data, app.presence_max_user_info_bytes) {
                    Ok(ChannelData { user_id, user_info }) => {
                        member = Some(Member {
                            client: Arc::from(client_id(&local.node, self.me)),
                            user: Arc::from(user_id),
                            info: user_info.map(Arc::from),
                        });
                    }
                    Err(problem) => {
                        refuse(&mut emit, "InvalidChannelData", &problem, 400);
                        return;
                    }
                }
            }
        }
        let max = local.config.max_channels_per_connection;
        if self.subscriptions.len() >= max {
            let message = format!("at most {max} channels per connection");
            refuse(&mut emit, "LimitReached", &message, 403);
            return;
        }
        let since =
            data.herald_since.map(|since| Since { epoch: since.epoch, offset: since.offset });
        let recovering = since.is_some();
        self.start_subscription(
            Sub { channel, member, pending: true, silent: false },
            since.as_ref(),
            cache && !recovering,
            app.presence_max_members,
            out,
            local,
        );
    }

    /// Subscribes in the engine and the shard's table; the reply goes out
    /// now or when the engine answers.
    fn start_subscription(
        &mut self,
        mut sub: Sub,
        since: Option<&Since>,
        newest: bool,
        member_limit: usize,
        out: &mut impl Outbox,
        local: &mut Local,
    ) {
        let subscription = Subscription {
            channel: &sub.channel,
            who: self.me,
            member: sub.member.as_ref(),
            since,
            replay_limit: local.config.max_outbound_bytes / 4,
            members: sub.member.is_some(),
            newest,
            member_limit,
        };
        let answer = local.shared.engine.subscribe(subscription, self.reply_to());
        if let Answer::Now(Err(error)) = &answer {
            if !sub.silent {
                let name = pusher_name(&sub.channel);
                let (kind, status) = subscription_refusal(error);
                send(out, local, &wire::subscription_error(name, kind, &error.message(), status));
            }
            return;
        }
        // Registered before this shard reads its inbox again: publications
        // after the position are held back until it is known.
        sub.channel = local.locals.add(
            &sub.channel,
            self.me.key,
            Subscriber { generation: self.me.generation, last_offset: PENDING },
        );
        let channel = sub.channel.clone();
        self.subscriptions.push(sub);
        if let Answer::Now(result) = answer {
            self.complete_subscribe(&channel, result, out, local);
        }
    }

    /// The engine's answer to a subscribe: the success (with the members
    /// on a presence channel), herald's position, then what history had
    /// (missed events, or a cache channel's event) and what was held back
    /// meanwhile, each once, in order.
    fn complete_subscribe(
        &mut self,
        channel: &ChannelName,
        result: Result<Position, BrokerError>,
        out: &mut impl Outbox,
        local: &mut Local,
    ) {
        let Some(index) = self.subscriptions.iter().position(|sub| &sub.channel == channel) else {
            // Unsubscribed meanwhile.
            local.pending.remove(&(self.me.key, channel.shared().clone()));
            return;
        };
        let name = pusher_name(channel);
        let limit = self.app(local).map_or(0, |app| app.presence_max_members);
        let mut position = match result {
            Ok(position) => position,
            Err(error) => {
                let silent = self.subscriptions.get(index).is_some_and(|sub| sub.silent);
                self.unsubscribe(channel, local);
                if !silent {
                    let (kind, status) = subscription_refusal(&error);
                    send(
                        out,
                        local,
                        &wire::subscription_error(name, kind, &error.message(), status),
                    );
                }
                return;
            }
        };
        let Some(sub) = self.subscriptions.get_mut(index) else { return };
        sub.pending = false;
        let silent = sub.silent;
        let member = sub.member.clone();
        if let Some(me) = &member {
            if !position.members.iter().any(|m| m.client == me.client) {
                position.members.push(me.clone());
            }
            // The Redis engine's limit: checked on the members it read.
            let mut users: Vec<&str> = position.members.iter().map(|m| &*m.user).collect();
            users.sort_unstable();
            users.dedup();
            if limit > 0 && users.len() > limit {
                self.unsubscribe(channel, local);
                let error = BrokerError::PresenceFull(limit);
                let (kind, status) = subscription_refusal(&error);
                send(out, local, &wire::subscription_error(name, kind, &error.message(), status));
                return;
            }
        }
        let (cache_channel, missed, recovery) = {
            let (_, cache) = app_channel_kind(name);
            match &mut position.recovery {
                Some(recovery) => {
                    let missed = std::mem::take(&mut recovery.missed);
                    (false, missed.clone(), Some((recovery.recovered, missed.len())))
                }
                None => (cache, position.newest.take().into_iter().collect::<Vec<_>>(), None),
            }
        };
        let cache_miss = cache_channel && missed.is_empty();
        let publications = local.catch_up(self.me.key, channel.shared(), position.offset, missed);
        if silent {
            self.send_events(&publications, out, local);
            return;
        }
        let succeeded = match &member {
            Some(_) => wire::presence_succeeded(name, &position.members),
            None => wire::subscription_succeeded(name),
        };
        send(out, local, &succeeded);
        let herald =
            wire::herald_subscribed(name, position.epoch.as_str(), position.offset, recovery);
        send(out, local, &herald);
        if cache_miss {
            send(out, local, &wire::cache_miss(name));
            if wants(local, channel, NoticeKind::CacheMiss) {
                local.shared.engine.notify(Notice::new(
                    NoticeKind::CacheMiss,
                    channel.as_str(),
                    None,
                ));
            }
        }
        self.send_events(&publications, out, local);
    }

    fn send_events(&self, publications: &[Arc<Publication>], out: &mut impl Outbox, local: &Local) {
        for publication in publications {
            out.push_publication(publication);
        }
        local.metrics.messages_out.add(publications.len() as u64);
    }

    /// An engine's answer to this session that came later (a subscribe).
    pub fn on_answer(&mut self, answer: EngineAnswer, out: &mut impl Outbox, local: &mut Local) {
        if let EngineAnswer::Subscribed(channel, result) = answer {
            self.complete_subscribe(&channel, result, out, local);
        }
    }

    /// Leaves `channel`; returns whether the connection was in it.
    fn unsubscribe(&mut self, channel: &ChannelName, local: &mut Local) -> bool {
        let Some(index) = self.subscriptions.iter().position(|sub| &sub.channel == channel) else {
            return false;
        };
        let sub = self.subscriptions.swap_remove(index);
        // Its own user channel stays while signed in.
        if sub.silent {
            self.subscriptions.push(sub);
            return false;
        }
        leave(self.me, &sub, local);
        true
    }

    fn sign_in(&mut self, data: SigninData, out: &mut impl Outbox, local: &mut Local) {
        let config = local.config.clone();
        let Some(app) = config.apps.get(self.app) else { return };
        let (Some(auth), Some(user_data)) = (data.auth, data.user_data) else {
            send(out, local, &wire::error(Some(4009), "pusher:signin needs auth and user_data"));
            return;
        };
        let signed = wire::user_string(&self.socket_id(local), &user_data);
        if !wire::verify_auth(&app.key, &app.secret, signed.as_bytes(), &auth) {
            send(out, local, &wire::error(Some(4009), "Invalid signature"));
            return;
        }
        let user = match wire::parse_user_data(&user_data) {
            Ok(user) => user,
            Err(problem) => {
                send(out, local, &wire::error(Some(4009), &problem));
                return;
            }
        };
        match &self.user {
            Some(current) if **current != *user => {
                let message = "the connection is signed in as another user";
                send(out, local, &wire::error(Some(4009), message));
                return;
            }
            Some(_) => {}
            None => {
                let user: Arc<str> = Arc::from(user.as_str());
                local.signed_in.add(
                    &signed_in_key(&app.id, &user),
                    self.me.key,
                    self.me.generation,
                );
                self.user = Some(user.clone());
                // The user's channel: `sendToUser` events reach every
                // connection signed in as the user, on every node.
                if let Ok(channel) =
                    ChannelName::of_app(&app.id, &format!("{USER_CHANNEL_PREFIX}{user}"))
                {
                    let sub = Sub { channel, member: None, pending: true, silent: true };
                    self.start_subscription(sub, None, false, 0, out, local);
                }
            }
        }
        send(out, local, &wire::signin_success(&user_data));
    }

    fn client_event(
        &mut self,
        message: &ClientMessage<'_>,
        out: &mut impl Outbox,
        local: &mut Local,
    ) {
        let config = local.config.clone();
        let Some(app) = config.apps.get(self.app) else { return };
        let refuse = |out: &mut dyn Outbox, local: &Local, code: Option<u16>, text: &str| {
            out.push(text_frame(&wire::error(code, text)));
            local.metrics.messages_out.inc();
        };
        if !app.client_events {
            refuse(out, local, None, "To send client events, enable client_events for the app");
            return;
        }
        let Some(name) = message.channel.as_deref() else {
            refuse(out, local, None, "A client event needs a channel");
            return;
        };
        let (kind, _) = app_channel_kind(name);
        if !matches!(kind, AppChannelKind::Private | AppChannelKind::Presence) {
            refuse(out, local, None, "Client events are only for private and presence channels");
            return;
        }
        let Ok(channel) = ChannelName::of_app(&app.id, name) else {
            refuse(out, local, None, "Invalid channel name");
            return;
        };
        let Some(sub) =
            self.subscriptions.iter().find(|sub| sub.channel == channel && !sub.pending)
        else {
            let text = format!(
                "Cannot broadcast client event (connection not subscribed to channel {name})"
            );
            refuse(out, local, None, &text);
            return;
        };
        if message.event.len() > wire::MAX_EVENT_NAME_LEN {
            refuse(out, local, None, "Client event name too long");
            return;
        }
        if message.data.is_some_and(|data| data.get().len() > app.max_event_payload_bytes) {
            let text = format!("Client event data over {} bytes", app.max_event_payload_bytes);
            refuse(out, local, None, &text);
            return;
        }
        let rate = app.client_event_rate;
        if self.client_events.take(local.now, rate, rate) != Allowance::Granted {
            let text =
                format!("Client event rejected - only {rate} client events per second allowed");
            refuse(out, local, Some(4301), &text);
            return;
        }
        let user = sub.member.as_ref().map(|member| &*member.user);
        let frame = wire::client_event(&message.event, name, message.data, user);
        let me = client_id(&local.node, self.me);
        if let Err(error) = local.shared.engine.relay(&channel, &frame, Some(&me)) {
            refuse(out, local, None, &error.message());
            return;
        }
        local.metrics.publications.inc();
        if wants(local, &channel, NoticeKind::ClientEvent) {
            let mut notice = Notice::new(NoticeKind::ClientEvent, channel.as_str(), user);
            notice.event = Some(message.event.to_string());
            notice.data = message.data.map(|data| data.get().to_string());
            notice.socket_id = Some(self.socket_id(local));
            local.shared.engine.notify(notice);
        }
    }

    /// The connection was terminated or is closing: it leaves every
    /// channel (members leave, on every node) and the sign-in index.
    pub fn release(&mut self, local: &mut Local) {
        if let (Some(user), Some(app)) = (&self.user, local.config.apps.get(self.app)) {
            let key = signed_in_key(&app.id, user);
            local.signed_in.remove(&key, self.me.key);
        }
        for sub in std::mem::take(&mut self.subscriptions) {
            leave(self.me, &sub, local);
        }
    }
}

/// Whether the channel's webhooks want notices of `kind`.
fn wants(local: &Local, channel: &ChannelName, kind: NoticeKind) -> bool {
    local.config.options(channel).is_ok_and(|options| options.notices.has(kind))
}

/// Leaves one channel: the shard's table, held deliveries, the engine.
fn leave(me: ConnRef, sub: &Sub, local: &mut Local) {
    local.locals.remove(sub.channel.as_str(), me.key);
    local.pending.remove(&(me.key, sub.channel.shared().clone()));
    local.shared.engine.unsubscribe(&sub.channel, me, sub.member.as_ref());
}

/// The key of a signed-in user in the shard's index: `APP;USER`.
pub fn signed_in_key(app: &str, user: &str) -> Arc<str> {
    Arc::from(format!("{app};{user}"))
}

/// The Pusher name of an app's channel.
fn pusher_name(channel: &ChannelName) -> &str {
    channel.app().map_or(channel.as_str(), |(_, name)| name)
}

/// Queues one reply.
fn send(out: &mut impl Outbox, local: &Local, json: &[u8]) {
    out.push(text_frame(json));
    local.metrics.messages_out.inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(key: &str) -> App {
        crate::config::Config::load(
            Some((
                std::path::Path::new("herald.toml"),
                &format!(
                    "[[apps]]\nid = \"1\"\nkey = \"{key}\"\nsecret = \"0123456789abcdef\"\nmax_connections = 2\n"
                ),
            )),
            Vec::new(),
            true,
        )
        .unwrap()
        .apps
        .remove(0)
    }

    #[test]
    fn an_opening_is_refused_with_pushers_codes() {
        let apps = [app("k")];
        assert_eq!(opening("k", Some("7"), true, &apps, |_| 0), Ok(0));
        assert_eq!(opening("k", None, true, &apps, |_| 0), Ok(0));
        assert_eq!(opening("k", Some("5"), true, &apps, |_| 0), Ok(0));
        assert_eq!(opening("x", Some("7"), true, &apps, |_| 0), Err(Refusal::UnknownApp));
        assert_eq!(opening("k", Some("4"), true, &apps, |_| 0), Err(Refusal::UnsupportedProtocol));
        assert_eq!(opening("k", Some("x"), true, &apps, |_| 0), Err(Refusal::UnsupportedProtocol));
        assert_eq!(opening("k", Some("7"), false, &apps, |_| 0), Err(Refusal::OriginNotAllowed));
        assert_eq!(opening("k", Some("7"), true, &apps, |_| 2), Err(Refusal::OverQuota));
        assert_eq!(Refusal::UnknownApp.close_reason().code(), 4001);
        assert_eq!(Refusal::Terminated.close_reason().code(), 4009);
    }

    #[test]
    fn herald_reasons_become_pusher_codes() {
        assert_eq!(close_reason(CloseReason::ShuttingDown).code(), 4200);
        assert_eq!(close_reason(CloseReason::SlowConsumer).code(), 4100);
        assert_eq!(
            close_reason(CloseReason::Policy("no traffic for two ping intervals")).code(),
            4201
        );
        assert_eq!(close_reason(CloseReason::InvalidUtf8).code(), 1007);
        assert!(error_before_close(CloseReason::InvalidUtf8).is_none());
        assert!(error_before_close(close_reason(CloseReason::ShuttingDown)).is_some());
    }
}
