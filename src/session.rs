//! The `/ws` front end: a client's identity and subscriptions, the commands it sends, and the engine's answers written as replies.

use crate::auth::{Denied, Identity};
use crate::broker::{Answer, EngineAnswer, Position, Publication, ReplyTo, Subscription};
use crate::channel::ChannelName;
use crate::clock::Millis;
use crate::config::Config;
use crate::error::CloseReason;
use crate::node::local::{Local, PENDING};
use crate::node::subscribers::Subscriber;
use crate::protocol::{self, Command, CommandError, ErrorCode};
use crate::types::{BrokerError, ConnRef, Member, Since, client_id};
use crate::wire::frame::{Opcode, encode_frame};
use bytes::Bytes;
use smallvec::SmallVec;
use std::num::NonZeroU64;
use std::sync::Arc;

/// Where a session's replies and pushes go (a connection's outbound queue).
pub trait Outbox {
    /// Queues one frame.
    fn push(&mut self, frame: Bytes);

    /// Queues a publication's WebSocket frame: the plain one, unless the
    /// connection took up compression.
    fn push_publication(&mut self, publication: &Publication) {
        self.push(publication.websocket_frame().clone());
    }
}

/// A reply as a text frame.
fn text_frame(json: &[u8]) -> Bytes {
    encode_frame(Opcode::Text, json)
}

/// The one place engine refusals become `/ws` error codes.
fn command_error(id: Option<u64>, error: &BrokerError) -> CommandError {
    let code = match error {
        BrokerError::UnknownNamespace(_) | BrokerError::UnknownApp(_) | BrokerError::HistoryOff => {
            ErrorCode::NotFound
        }
        BrokerError::PresenceOff => ErrorCode::Forbidden,
        BrokerError::TooManyChannels(_) | BrokerError::PresenceFull(_) => ErrorCode::LimitExceeded,
        BrokerError::Unavailable(_) => ErrorCode::Unavailable,
    };
    CommandError::new(id, code, error.message())
}

/// State of one `/ws` connection beyond its framing.
#[derive(Debug)]
pub struct ClientSession {
    identity: Identity,
    me: ConnRef,
    /// Its channels: the first inline, more in an allocation of their own.
    subscriptions: SmallVec<[ChannelName; 1]>,
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
pub struct CommandBucket {
    /// Thousandths of a command; negative: debt.
    balance: i32,
    /// When it was last refilled: shard clock milliseconds, wrapping
    /// (an elapsed time is right up to 49 days, and the bucket is full
    /// long before that).
    updated: u32,
}

/// What the bucket says to a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Allowance {
    /// Go ahead.
    Granted,
    /// Refused: over the rate.
    Refused,
    /// Refused, and a whole burst of debt is run up: close with 4029.
    Exhausted,
}

impl CommandBucket {
    /// A full bucket.
    pub fn full(now: Millis, burst: u32) -> Self {
        CommandBucket { balance: milli(burst), updated: clock32(now) }
    }

    /// Takes one command's token.
    pub fn take(&mut self, now: Millis, rate_per_sec: u32, burst: u32) -> Allowance {
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
            subscriptions: SmallVec::new(),
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

    /// The client id: node, shard, slot and generation.
    pub fn client_id(&self, local: &Local) -> String {
        client_id(&local.node, self.me)
    }

    fn member(&self, local: &Local) -> Member {
        Member::new(Arc::from(self.client_id(local)), self.identity.user.clone())
    }

    fn reply_to(&self, id: Option<u64>) -> ReplyTo {
        ReplyTo { conn: self.me, id }
    }

    /// Carries out one command and queues its reply (and, for a recovering
    /// subscribe, the missed publications). Past the command rate limit a
    /// command is refused with `too_many_requests`; a client that runs up a
    /// whole burst of refused commands is closed with 4029.
    pub fn on_text(
        &mut self,
        text: &str,
        out: &mut impl Outbox,
        local: &mut Local,
    ) -> Result<(), CloseReason> {
        let (rate, burst) = (local.config.command_rate_per_sec, local.config.command_burst);
        let command = Command::parse(text);
        let allowance = self.commands.take(local.now, rate, burst);
        let reply = if allowance != Allowance::Granted {
            local.metrics.commands_limited.inc();
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
                Ok(command) => self.execute(command, out, local),
                Err(error) => Err(error),
            }
        };
        let bytes = match reply {
            Ok(Some(reply)) => reply,
            Ok(None) => return Ok(()),
            Err(error) => protocol::error(&error),
        };
        out.push(text_frame(&bytes));
        local.metrics.messages_out.inc();
        Ok(())
    }

    /// Runs a command. `Ok(None)`: the reply is queued already, or comes
    /// when the engine answers.
    fn execute(
        &mut self,
        command: Command<'_>,
        out: &mut impl Outbox,
        local: &mut Local,
    ) -> Result<Option<Vec<u8>>, CommandError> {
        match command {
            Command::Ping { id } => Ok(Some(protocol::pong(id))),
            Command::Subscribe { id, channel, since } => {
                self.subscribe(id, channel, since, out, local).map(|()| None)
            }
            Command::Unsubscribe { id, channel } => {
                let channel = parse_channel(id, channel)?;
                self.unsubscribe(&channel, local);
                Ok(Some(protocol::unsubscribed(id, channel.as_str())))
            }
            Command::Publish { id, channel, data, skip_self } => {
                let channel = self.accessible(id, channel, local)?;
                let options = local.config.options(&channel).map_err(|e| command_error(id, &e))?;
                if !options.client_publish {
                    let namespace = channel.namespace().unwrap_or("(default)");
                    return Err(CommandError::new(
                        id,
                        ErrorCode::Forbidden,
                        format!("namespace {namespace} does not allow client publish"),
                    ));
                }
                let exclude = skip_self.then(|| self.client_id(local));
                let answer = local.shared.engine.publish(
                    std::slice::from_ref(&channel),
                    data.as_bytes(),
                    exclude.as_deref(),
                    self.reply_to(id),
                );
                local.metrics.publications.inc();
                match answer {
                    Answer::Later => Ok(None),
                    Answer::Now(result) => published_reply(id, result).map(Some),
                }
            }
            Command::Presence { id, channel } => {
                let channel = self.accessible(id, channel, local)?;
                match local.shared.engine.presence(&channel, self.reply_to(id)) {
                    Answer::Later => Ok(None),
                    Answer::Now(result) => result
                        .map(|members| Some(protocol::presence(id, channel.as_str(), &members)))
                        .map_err(|e| command_error(id, &e)),
                }
            }
            Command::History { id, channel, since, limit } => {
                let channel = self.accessible(id, channel, local)?;
                let engine = &local.shared.engine;
                match engine.history(&channel, since.as_ref(), limit, self.reply_to(id)) {
                    Answer::Later => Ok(None),
                    Answer::Now(result) => result
                        .map(|page| Some(protocol::history(id, channel.as_str(), &page)))
                        .map_err(|e| command_error(id, &e)),
                }
            }
        }
    }

    /// A channel this connection may use.
    fn accessible(
        &self,
        id: Option<u64>,
        channel: &str,
        local: &Local,
    ) -> Result<ChannelName, CommandError> {
        let channel = parse_channel(id, channel)?;
        local.config.options(&channel).map_err(|e| command_error(id, &e))?;
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
        out: &mut impl Outbox,
        local: &mut Local,
    ) -> Result<(), CommandError> {
        let channel = self.accessible(id, channel, local)?;
        if self.subscriptions.contains(&channel) {
            return Err(CommandError::new(id, ErrorCode::BadRequest, "already subscribed"));
        }
        let max = local.config.max_channels_per_connection;
        if self.subscriptions.len() >= max {
            return Err(CommandError::new(
                id,
                ErrorCode::LimitExceeded,
                format!("at most {max} subscriptions per connection"),
            ));
        }
        let presence = local.config.options(&channel).map_err(|e| command_error(id, &e))?.presence;
        let member = presence.then(|| self.member(local));
        let subscription = Subscription {
            channel: &channel,
            who: self.me,
            member: member.as_ref(),
            since: since.as_ref(),
            // Missed publications are replies, not pushes: they may take a
            // quarter of the outbound bound, leaving room for live ones.
            replay_limit: local.config.max_outbound_bytes / 4,
            members: false,
            newest: false,
            member_limit: 0,
        };
        let answer = local.shared.engine.subscribe(subscription, self.reply_to(id));
        // Registered locally before this shard reads its inbox again: every
        // publication after the position is on its way to this shard (and
        // held back while the position is still to come).
        let last_offset = match &answer {
            Answer::Now(Err(error)) => return Err(command_error(id, error)),
            Answer::Now(Ok(position)) => position.offset,
            Answer::Later => PENDING,
        };
        // The list holds the shard's copy of the name, not this command's.
        let name = local.locals.add(
            &channel,
            self.me.key,
            Subscriber { generation: self.me.generation, last_offset },
        );
        self.subscriptions.push(name);
        if let Answer::Now(Ok(position)) = answer {
            let missed = position.recovery.as_ref().map(|r| r.missed.clone()).unwrap_or_default();
            let sent = subscribed(id, &channel, &position, missed, out);
            local.metrics.messages_out.add(sent);
        }
        Ok(())
    }

    /// An engine's answer to a command of this session that it answered
    /// later: the reply (and for a subscribe, what the client missed and
    /// what was held back meanwhile, each once, in order). Returns the
    /// frames queued.
    pub fn on_answer(
        &mut self,
        id: Option<u64>,
        answer: EngineAnswer,
        out: &mut impl Outbox,
        local: &mut Local,
    ) -> u64 {
        let reply = match answer {
            EngineAnswer::Subscribed(channel, result) => {
                return self.complete_subscribe(id, &channel, result, out, local);
            }
            EngineAnswer::Published(result) => published_reply(id, result),
            EngineAnswer::Presence(channel, result) => result
                .map(|members| protocol::presence(id, channel.as_str(), &members))
                .map_err(|e| command_error(id, &e)),
            EngineAnswer::History(channel, result) => result
                .map(|page| protocol::history(id, channel.as_str(), &page))
                .map_err(|e| command_error(id, &e)),
            EngineAnswer::Users(_) => return 0,
        };
        let bytes = reply.unwrap_or_else(|error| protocol::error(&error));
        out.push(text_frame(&bytes));
        1
    }

    fn complete_subscribe(
        &mut self,
        id: Option<u64>,
        channel: &ChannelName,
        result: Result<Position, BrokerError>,
        out: &mut impl Outbox,
        local: &mut Local,
    ) -> u64 {
        if !self.subscriptions.contains(channel) {
            // Unsubscribed meanwhile.
            local.pending.remove(&(self.me.key, channel.shared().clone()));
            return 0;
        }
        let position = match result {
            Ok(position) => position,
            Err(error) => {
                self.unsubscribe(channel, local);
                out.push(text_frame(&protocol::error(&command_error(id, &error))));
                return 1;
            }
        };
        let missed = position.recovery.as_ref().map(|r| r.missed.clone()).unwrap_or_default();
        let publications = local.catch_up(self.me.key, channel.shared(), position.offset, missed);
        subscribed(id, channel, &position, publications, out)
    }

    /// Leaves `channel`; returns whether the connection was subscribed.
    pub fn unsubscribe(&mut self, channel: &ChannelName, local: &mut Local) -> bool {
        let Some(position) = self.subscriptions.iter().position(|c| c == channel) else {
            return false;
        };
        let channel = self.subscriptions.swap_remove(position);
        self.leave(&channel, local);
        true
    }

    fn leave(&self, channel: &ChannelName, local: &mut Local) {
        local.locals.remove(channel.as_str(), self.me.key);
        local.pending.remove(&(self.me.key, channel.shared().clone()));
        let presence = local.config.options(channel).is_ok_and(|options| options.presence);
        let member = presence.then(|| self.member(local));
        local.shared.engine.unsubscribe(channel, self.me, member.as_ref());
    }

    /// Leaves every channel: the connection is closing. Presence entries go
    /// and `leave` is pushed, on whichever shards the other subscribers are.
    pub fn release(&mut self, local: &mut Local) {
        local.users.remove(&self.identity.user, self.me.key);
        for channel in std::mem::take(&mut self.subscriptions) {
            self.leave(&channel, local);
        }
    }
}

/// The `subscribed` reply and the publications that follow it; returns the
/// frames queued.
fn subscribed(
    id: Option<u64>,
    channel: &ChannelName,
    position: &Position,
    publications: Vec<Arc<Publication>>,
    out: &mut impl Outbox,
) -> u64 {
    let recovery = position.recovery.as_ref().map(|r| (r.recovered, r.missed.len()));
    let reply = protocol::subscribed(
        id,
        channel.as_str(),
        position.epoch.as_str(),
        position.offset,
        recovery,
    );
    out.push(text_frame(&reply));
    let sent = 1 + publications.len() as u64;
    for publication in publications {
        out.push_publication(&publication);
    }
    sent
}

/// The `published` reply (of the first channel: a client publishes to one).
fn published_reply(
    id: Option<u64>,
    result: Result<Vec<(ChannelName, crate::types::Published)>, BrokerError>,
) -> Result<Vec<u8>, CommandError> {
    let results = result.map_err(|e| command_error(id, &e))?;
    let Some((channel, published)) = results.first() else {
        return Err(command_error(id, &BrokerError::Unavailable("nothing was published".into())));
    };
    Ok(protocol::published(id, channel.as_str(), published.epoch.as_str(), published.offset))
}

fn parse_channel(id: Option<u64>, channel: &str) -> Result<ChannelName, CommandError> {
    ChannelName::parse(channel)
        .map_err(|invalid| CommandError::new(id, ErrorCode::BadRequest, invalid.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `/ws` connection holds a session: at most 88 bytes keeps it in
    /// glibc's 96-byte chunk (request + 8, rounded up to 16), with its first
    /// channel inline.
    #[test]
    fn a_session_fits_the_allocators_96_byte_class() {
        assert!(size_of::<ClientSession>() <= 88, "{}", size_of::<ClientSession>());
        assert_eq!(size_of::<SmallVec<[ChannelName; 1]>>(), size_of::<Vec<ChannelName>>());
    }

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
}
