//! A `/ws` client: its identity and subscriptions, and the commands it sends.

use super::Ctx;
use super::Millis;
use super::out_queue::OutQueue;
use super::websocket::{self, Opcode};
use crate::auth::{Denied, Identity};
use crate::broker::channel::ChannelName;
use crate::broker::redis::{Job, ReplyTo, SubscribeOutcome};
use crate::broker::{BrokerError, ConnRef, Member, Since};
use crate::config::Config;
use crate::error::CloseReason;
use crate::protocol::{self, Command, CommandError, ErrorCode};
use crate::shard::subscribers::Subscriber;
use bytes::Bytes;
use std::num::NonZeroU64;
use std::sync::Arc;

/// A local subscriber's `last_offset` while its subscribe waits for the
/// Redis engine: its deliveries are held back (in `Ctx::pending`) until the
/// position is known.
pub const PENDING: u64 = u64::MAX;
/// Deliveries held back per waiting subscription; past it, the oldest go
/// (the client then recovers them from history on its next subscribe).
pub const MAX_PENDING_DELIVERIES: usize = 4096;

/// State of one `/ws` connection beyond its framing.
#[derive(Debug)]
pub struct ClientSession {
    identity: Identity,
    me: ConnRef,
    subscriptions: Vec<ChannelName>,
    /// When the token expires (shard clock), if it does.
    token_deadline: Option<NonZeroU64>,
    commands: CommandBucket,
}

/// The per-connection command rate limit: a token bucket of
/// `command_burst` commands refilled at `command_rate_per_sec`, in
/// thousandths of a command so that integer arithmetic refills smoothly.
/// A refused command costs a token too: the balance goes into debt, and a
/// client that keeps sending while refused runs up a whole burst of debt
/// and is closed. Eight bytes, so that every `/ws` session stays in the
/// same allocator size class.
#[derive(Debug)]
struct CommandBucket {
    /// Thousandths of a command; negative: debt.
    balance: i32,
    /// When it was last refilled: shard clock milliseconds, wrapping
    /// (an elapsed time is right up to 49 days, and the bucket is full
    /// long before that).
    updated: u32,
}

/// What the bucket says to a command.
#[derive(Debug, PartialEq, Eq)]
enum Allowance {
    Granted,
    Refused,
    /// Refused, and a whole burst of debt is run up: close with 4029.
    Exhausted,
}

impl CommandBucket {
    fn full(now: Millis, burst: u32) -> Self {
        CommandBucket { balance: milli(burst), updated: clock32(now) }
    }

    /// Takes one command's token.
    fn take(&mut self, now: Millis, rate_per_sec: u32, burst: u32) -> Allowance {
        let now = clock32(now);
        let elapsed = i64::from(now.wrapping_sub(self.updated));
        self.updated = now;
        let refilled = i64::from(self.balance) + elapsed * i64::from(rate_per_sec);
        let balance = refilled.min(i64::from(milli(burst))) - 1000;
        self.balance = i32::try_from(balance.max(-i64::from(milli(burst)) - 1000)).unwrap_or(0);
        if balance >= 0 {
            Allowance::Granted
        } else if balance < -i64::from(milli(burst)) {
            Allowance::Exhausted
        } else {
            Allowance::Refused
        }
    }
}

/// `commands` in thousandths (the configured burst is at most a million).
fn milli(commands: u32) -> i32 {
    i32::try_from(u64::from(commands) * 1000).unwrap_or(i32::MAX)
}

/// The shard clock's low 32 bits of milliseconds.
// Wrapping is the point: elapsed times are taken with `wrapping_sub`.
#[allow(clippy::cast_possible_truncation)]
fn clock32(now: Millis) -> u32 {
    now as u32
}

impl ClientSession {
    /// A session for connection `me` with `identity`.
    pub fn new(
        identity: Identity,
        me: ConnRef,
        token_deadline: Option<Millis>,
        now: Millis,
        config: &Config,
    ) -> Self {
        // Deadlines are at least 1 ms on the shard clock.
        let token_deadline =
            token_deadline.map(|at| NonZeroU64::new(at).unwrap_or(NonZeroU64::MIN));
        ClientSession {
            identity,
            me,
            subscriptions: Vec::new(),
            token_deadline,
            commands: CommandBucket::full(now, config.command_burst),
        }
    }

    /// The user id (`""` when anonymous).
    pub fn user(&self) -> &str {
        &self.identity.user
    }

    /// When the connection's token expires, on the shard clock.
    pub fn token_deadline(&self) -> Option<Millis> {
        self.token_deadline.map(NonZeroU64::get)
    }

    /// The client id: node, shard, slot and generation, so it is unique on
    /// the node and across restarts, and the server API can find the
    /// connection from it.
    pub fn client_id(&self, ctx: &Ctx) -> String {
        client_id(&ctx.node, self.me)
    }

    fn member(&self, ctx: &Ctx) -> Member {
        Member { client: Arc::from(self.client_id(ctx)), user: self.identity.user.clone() }
    }

    /// Carries out one command and queues its reply (and, for a recovering
    /// subscribe, the missed publications). Past the command rate limit a
    /// command is refused with `too_many_requests`; a client that runs up a
    /// whole burst of refused commands is closed with 4029.
    pub fn on_text(
        &mut self,
        text: &str,
        out: &mut OutQueue,
        ctx: &mut Ctx,
    ) -> Result<(), CloseReason> {
        let (rate, burst) = (ctx.config.command_rate_per_sec, ctx.config.command_burst);
        let command = Command::parse(text);
        let allowance = self.commands.take(ctx.now, rate, burst);
        let reply = if allowance != Allowance::Granted {
            ctx.metrics.commands_limited.inc();
            if allowance == Allowance::Exhausted {
                return Err(CloseReason::TooManyRequests);
            }
            let id = match &command {
                Ok(command) => command.id(),
                Err(error) => error.id,
            };
            Err(CommandError::new(
                id,
                ErrorCode::TooManyRequests,
                format!("at most {rate} commands a second (bursts of {burst}); slow down"),
            ))
        } else {
            match command {
                Ok(command) => self.execute(command, out, ctx),
                Err(error) => Err(error),
            }
        };
        let bytes = match reply {
            Ok(Some(reply)) => reply,
            Ok(None) => return Ok(()),
            Err(error) => protocol::error(&error),
        };
        out.push(websocket::encode_frame(Opcode::Text, &bytes));
        ctx.metrics.messages_out.inc();
        Ok(())
    }

    /// Runs a command. `Ok(None)`: the reply is already queued.
    fn execute(
        &mut self,
        command: Command<'_>,
        out: &mut OutQueue,
        ctx: &mut Ctx,
    ) -> Result<Option<Vec<u8>>, CommandError> {
        match command {
            Command::Ping { id } => Ok(Some(protocol::pong(id))),
            Command::Subscribe { id, channel, since } => {
                self.subscribe(id, channel, since, out, ctx).map(|()| None)
            }
            Command::Unsubscribe { id, channel } => {
                let channel = parse_channel(id, channel)?;
                self.unsubscribe(&channel, ctx);
                Ok(Some(protocol::unsubscribed(id, channel.as_str())))
            }
            Command::Publish { id, channel, data, skip_self } => {
                let channel = self.accessible(id, channel, ctx)?;
                let broker = &ctx.shared.broker;
                let options = broker.options(&channel).map_err(|e| broker_error(id, &e))?;
                if !options.client_publish {
                    let namespace = channel.namespace().unwrap_or("(default)");
                    return Err(CommandError::new(
                        id,
                        ErrorCode::Forbidden,
                        format!("namespace {namespace} does not allow client publish"),
                    ));
                }
                let exclude = skip_self.then_some(self.me);
                if let Some(engine) = broker.redis() {
                    engine.submit(Job::Publish {
                        channels: vec![channel],
                        data: Bytes::copy_from_slice(data.as_bytes()),
                        exclude: exclude.map(|who| client_id(&ctx.node, who)),
                        reply: ReplyTo::Client { to: self.me, id },
                    });
                    ctx.metrics.publications.inc();
                    return Ok(None);
                }
                let published = broker
                    .publish(&channel, data.as_bytes(), exclude)
                    .map_err(|e| broker_error(id, &e))?;
                ctx.metrics.publications.inc();
                Ok(Some(protocol::published(
                    id,
                    channel.as_str(),
                    published.epoch.as_str(),
                    published.offset,
                )))
            }
            Command::Presence { id, channel } => {
                let channel = self.accessible(id, channel, ctx)?;
                if let Some(engine) = ctx.shared.broker.redis() {
                    ctx.shared.broker.presence(&channel).map_err(|e| broker_error(id, &e))?;
                    engine.submit(Job::Presence {
                        channel,
                        reply: ReplyTo::Client { to: self.me, id },
                    });
                    return Ok(None);
                }
                let members =
                    ctx.shared.broker.presence(&channel).map_err(|e| broker_error(id, &e))?;
                Ok(Some(protocol::presence(id, channel.as_str(), &members)))
            }
            Command::History { id, channel, since, limit } => {
                let channel = self.accessible(id, channel, ctx)?;
                if let Some(engine) = ctx.shared.broker.redis() {
                    if ctx.shared.broker.options(&channel).is_ok_and(|o| o.history_size == 0) {
                        return Err(broker_error(id, &BrokerError::HistoryOff));
                    }
                    engine.submit(Job::History {
                        channel,
                        since,
                        limit,
                        reply: ReplyTo::Client { to: self.me, id },
                    });
                    return Ok(None);
                }
                let page = ctx
                    .shared
                    .broker
                    .history(&channel, since.as_ref(), limit)
                    .map_err(|e| broker_error(id, &e))?;
                Ok(Some(protocol::history(id, channel.as_str(), &page)))
            }
        }
    }

    /// A channel this connection may use.
    fn accessible(
        &self,
        id: Option<u64>,
        channel: &str,
        ctx: &Ctx,
    ) -> Result<ChannelName, CommandError> {
        let channel = parse_channel(id, channel)?;
        ctx.shared.broker.options(&channel).map_err(|e| broker_error(id, &e))?;
        self.identity.may_access(&channel).map_err(|denied| {
            let code = match denied {
                Denied::Anonymous => ErrorCode::Unauthorized,
                Denied::OtherUser | Denied::NoGrant => ErrorCode::Forbidden,
            };
            CommandError::new(id, code, denied.message())
        })?;
        Ok(channel)
    }

    fn subscribe(
        &mut self,
        id: Option<u64>,
        channel: &str,
        since: Option<Since>,
        out: &mut OutQueue,
        ctx: &mut Ctx,
    ) -> Result<(), CommandError> {
        let channel = self.accessible(id, channel, ctx)?;
        if self.subscriptions.contains(&channel) {
            return Err(CommandError::new(id, ErrorCode::BadRequest, "already subscribed"));
        }
        let max = ctx.config.max_channels_per_connection;
        if self.subscriptions.len() >= max {
            return Err(CommandError::new(
                id,
                ErrorCode::LimitExceeded,
                format!("at most {max} subscriptions per connection"),
            ));
        }
        let broker = &ctx.shared.broker;
        let presence = broker.options(&channel).map_err(|e| broker_error(id, &e))?.presence;
        let member = presence.then(|| self.member(ctx));
        // Missed publications are replies, not pushes: they may take a
        // quarter of the outbound bound, leaving room for live ones.
        let replay_limit = ctx.config.max_outbound_bytes / 4;
        if let Some(engine) = broker.redis() {
            // The position comes from Redis; deliveries wait until it does.
            broker
                .subscribe_node(&channel, self.me, member.as_ref())
                .map_err(|e| broker_error(id, &e))?;
            if let Some(member) = &member {
                let announce = broker.options(&channel).is_ok_and(|options| options.join_leave);
                engine.submit(Job::PresenceJoin {
                    channel: channel.clone(),
                    member: member.clone(),
                    announce,
                });
            }
            ctx.locals.add(
                channel.shared().clone(),
                self.me.key,
                Subscriber { generation: self.me.generation, last_offset: PENDING },
            );
            engine.submit(Job::Subscribe {
                channel: channel.clone(),
                who: self.me,
                id,
                since,
                replay_limit,
            });
            self.subscriptions.push(channel);
            return Ok(());
        }
        let subscribed = broker
            .subscribe(&channel, self.me, member.as_ref(), since.as_ref(), replay_limit)
            .map_err(|e| broker_error(id, &e))?;
        // Registered locally before this shard reads its inbox again: every
        // publication after `subscribed.offset` is on its way to this shard.
        ctx.locals.add(
            channel.shared().clone(),
            self.me.key,
            Subscriber { generation: self.me.generation, last_offset: subscribed.offset },
        );
        let recovery = subscribed.recovery.as_ref().map(|r| (r.recovered, r.missed.len()));
        let reply = protocol::subscribed(
            id,
            channel.as_str(),
            subscribed.epoch.as_str(),
            subscribed.offset,
            recovery,
        );
        out.push(websocket::encode_frame(Opcode::Text, &reply));
        let mut sent = 1;
        for frame in subscribed.recovery.into_iter().flat_map(|r| r.missed) {
            out.push(frame);
            sent += 1;
        }
        ctx.metrics.messages_out.add(sent);
        self.subscriptions.push(channel);
        Ok(())
    }

    /// The Redis engine answered a subscribe: the reply, what the client
    /// missed, then what arrived meanwhile, each publication once and in
    /// order. Returns the frames queued.
    pub fn complete_subscribe(
        &mut self,
        id: Option<u64>,
        channel: &ChannelName,
        outcome: Result<SubscribeOutcome, String>,
        out: &mut OutQueue,
        ctx: &mut Ctx,
    ) -> u64 {
        let held = ctx.pending.remove(&(self.me.key, channel.shared().clone())).unwrap_or_default();
        if !self.subscriptions.contains(channel) {
            return 0; // unsubscribed meanwhile
        }
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(message) => {
                self.unsubscribe(channel, ctx);
                let error = CommandError::new(id, ErrorCode::Unavailable, message);
                out.push(websocket::encode_frame(Opcode::Text, &protocol::error(&error)));
                return 1;
            }
        };
        let recovery = outcome.recovery.as_ref().map(|(ok, missed)| (*ok, missed.len()));
        let reply =
            protocol::subscribed(id, channel.as_str(), &outcome.epoch, outcome.top, recovery);
        out.push(websocket::encode_frame(Opcode::Text, &reply));
        let missed = outcome.recovery.map(|(_, missed)| missed).unwrap_or_default();
        let frames = catch_up(ctx, self.me.key, channel, outcome.top, missed, held);
        let sent = 1 + frames.len() as u64;
        for frame in frames {
            out.push(frame);
        }
        sent
    }

    /// Leaves `channel`; returns whether the connection was subscribed.
    pub fn unsubscribe(&mut self, channel: &ChannelName, ctx: &mut Ctx) -> bool {
        let Some(position) = self.subscriptions.iter().position(|c| c == channel) else {
            return false;
        };
        let channel = self.subscriptions.swap_remove(position);
        self.leave(&channel, ctx);
        true
    }

    fn leave(&self, channel: &ChannelName, ctx: &mut Ctx) {
        ctx.locals.remove(channel.as_str(), self.me.key);
        ctx.pending.remove(&(self.me.key, channel.shared().clone()));
        let presence = ctx.shared.broker.options(channel).is_ok_and(|options| options.presence);
        let member = presence.then(|| self.member(ctx));
        ctx.shared.broker.unsubscribe(channel, self.me, member.as_ref());
    }

    /// Leaves every channel: the connection is closing. Presence entries go
    /// and `leave` is pushed, on whichever shards the other subscribers are.
    pub fn release(&mut self, ctx: &mut Ctx) {
        ctx.users.remove(&self.identity.user, self.me.key);
        for channel in std::mem::take(&mut self.subscriptions) {
            self.leave(&channel, ctx);
        }
    }
}

/// A subscription that waited for the Redis engine is told its position
/// `top`: returns what to send after the reply (history's `missed`
/// publications, all at or below the top, then those `held` back meanwhile
/// that are above it, each once, in order), and takes the local subscriber
/// (slab `key`) out of waiting.
pub(super) fn catch_up(
    ctx: &mut Ctx,
    key: u32,
    channel: &ChannelName,
    top: u64,
    missed: Vec<(u64, Bytes)>,
    held: super::Held,
) -> Vec<Bytes> {
    let mut frames: Vec<Bytes> = missed.into_iter().map(|(_, frame)| frame).collect();
    let mut last = top;
    for (offset, frame) in held {
        if offset > last {
            frames.push(frame);
            last = offset;
        }
    }
    if let Some(subscriber) =
        ctx.locals.get_mut(channel.as_str()).and_then(|subscribers| subscribers.get_mut(&key))
    {
        subscriber.last_offset = last;
    }
    frames
}

/// A client id for `who` on `node`.
pub fn client_id(node: &str, who: ConnRef) -> String {
    format!("{node}-{}-{}-{}", who.shard, who.key, who.generation)
}

/// The connection a client id names, if it was made on `node`.
pub fn parse_client_id(node: &str, id: &str) -> Option<ConnRef> {
    let rest = id.strip_prefix(node)?.strip_prefix('-')?;
    let mut parts = rest.split('-');
    let conn = ConnRef {
        shard: parts.next()?.parse().ok()?,
        key: parts.next()?.parse().ok()?,
        generation: parts.next()?.parse().ok()?,
    };
    parts.next().is_none().then_some(conn)
}

fn parse_channel(id: Option<u64>, channel: &str) -> Result<ChannelName, CommandError> {
    ChannelName::parse(channel)
        .map_err(|invalid| CommandError::new(id, ErrorCode::BadRequest, invalid.to_string()))
}

fn broker_error(id: Option<u64>, error: &BrokerError) -> CommandError {
    let code = match error {
        BrokerError::UnknownNamespace(_) | BrokerError::HistoryOff => ErrorCode::NotFound,
        BrokerError::PresenceOff => ErrorCode::Forbidden,
        BrokerError::TooManyChannels(_) => ErrorCode::LimitExceeded,
    };
    CommandError::new(id, code, error.message())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_bucket_refills_refuses_and_gives_up_on_a_client_that_keeps_going() {
        let mut bucket = CommandBucket::full(1_000, 3);
        for _ in 0..3 {
            assert_eq!(bucket.take(1_000, 10, 3), Allowance::Granted);
        }
        assert_eq!(bucket.take(1_000, 10, 3), Allowance::Refused);
        // 10 a second: one more command every 100 ms, debt repaid first.
        assert_eq!(bucket.take(1_150, 10, 3), Allowance::Refused);
        assert_eq!(bucket.take(1_500, 10, 3), Allowance::Granted);
        // Never more than the burst, however long the pause.
        let mut rested = CommandBucket::full(0, 3);
        let granted = (0..10).filter(|_| rested.take(3_600_000, 10, 3) == Allowance::Granted);
        assert_eq!(granted.count(), 3);
        // A client that keeps going runs up a burst of debt.
        let mut flooder = CommandBucket::full(0, 3);
        let answers: Vec<Allowance> = (0..7).map(|_| flooder.take(0, 10, 3)).collect();
        assert_eq!(answers[3..6], [Allowance::Refused, Allowance::Refused, Allowance::Refused]);
        assert_eq!(answers[6], Allowance::Exhausted);
        // The clock's low 32 bits wrap: still 100 ms elapsed.
        let mut wrapping = CommandBucket::full(u64::from(u32::MAX) - 50, 1);
        assert_eq!(wrapping.take(u64::from(u32::MAX) - 50, 10, 1), Allowance::Granted);
        assert_eq!(wrapping.take(u64::from(u32::MAX) + 50, 10, 1), Allowance::Granted);
    }

    #[test]
    fn client_ids_round_trip() {
        let who = ConnRef { shard: 3, key: 1234, generation: 99 };
        let id = client_id("a1b2c3d4", who);
        assert_eq!(id, "a1b2c3d4-3-1234-99");
        assert_eq!(parse_client_id("a1b2c3d4", &id), Some(who));
        assert_eq!(parse_client_id("ffffffff", &id), None);
        assert_eq!(parse_client_id("a1b2c3d4", "a1b2c3d4-3-1234"), None);
        assert_eq!(parse_client_id("a1b2c3d4", "a1b2c3d4-3-1234-99-1"), None);
        assert_eq!(parse_client_id("a1b2c3d4", "a1b2c3d4-x-1-1"), None);
    }
}
