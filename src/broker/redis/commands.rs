//! The command thread: one Redis connection, the jobs the shards queued, answered through the host; subscribes wait for the node's Redis subscription without holding up other jobs.

use super::pubsub::{MAX_BACKOFF, MIN_BACKOFF, bytes_of, note_epoch, number, stream_entry, text};
use super::scripts::{POSITION_SCRIPT, PUBLISH_SCRIPT};
use super::{Inner, Job, Wants, answer, control, presence};
use crate::broker::publication::{Position, Publication, Recovery};
use crate::broker::{EngineAnswer, ReplyTo};
use crate::channel::ChannelName;
use crate::types::{BrokerError, Epoch, HistoryPage, Published, Since};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How long a subscribe waits for the node's Redis subscription to be
/// confirmed before it is answered `unavailable`.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(5);
/// How long a channel without history keeps its epoch and offset in Redis
/// after its last publication or subscription.
const IDLE_CHANNEL_TTL_MS: u64 = 24 * 3600 * 1000;
/// A connection idle this long is checked with a `PING` before a job uses
/// it (as is one in use when the pub/sub connection was lost): after Redis
/// restarted, the first job would otherwise fail on the dead connection.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Why a job failed.
#[derive(Debug)]
enum JobError {
    /// No connection to Redis.
    Down,
    /// The connection failed during the job.
    Lost(redis::RedisError),
    /// Redis answered with an error, or with something unexpected.
    Failed(String),
}

impl From<redis::RedisError> for JobError {
    fn from(error: redis::RedisError) -> Self {
        if error.is_io_error() || error.is_connection_dropped() || error.is_timeout() {
            JobError::Lost(error)
        } else {
            JobError::Failed(error.to_string())
        }
    }
}

impl JobError {
    fn refusal(&self) -> BrokerError {
        match self {
            JobError::Down | JobError::Lost(_) => super::unavailable(),
            JobError::Failed(what) => {
                BrokerError::Unavailable(format!("the engine failed: {what}"))
            }
        }
    }
}

/// The command connection and when to try for one.
struct Link {
    connection: Option<super::Commands>,
    backoff: Duration,
    next_attempt: Instant,
    last_used: Instant,
}

impl Link {
    /// Connects if there is no connection and the backoff allows.
    fn connect_if_due(&mut self, inner: &Inner) {
        if self.connection.is_some() || Instant::now() < self.next_attempt {
            return;
        }
        match inner.connect() {
            Ok(connected) => {
                log::info!("redis engine: connected");
                self.connection = Some(connected);
                self.last_used = Instant::now();
                inner.up.store(true, Ordering::Release);
                self.backoff = MIN_BACKOFF;
            }
            Err(error) => {
                if inner.up.swap(false, Ordering::AcqRel) || self.backoff == MIN_BACKOFF {
                    log::warn!("redis engine: cannot connect: {error}");
                }
                self.next_attempt = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// The connection for a job: one idle for a while, or in doubt since
    /// the pub/sub connection was lost, is checked first, and replaced at
    /// once if Redis went away meanwhile (a restart).
    fn fresh(&mut self, inner: &Inner) -> Option<&mut super::Commands> {
        let in_doubt = inner.suspect.swap(false, Ordering::AcqRel);
        if (in_doubt || self.last_used.elapsed() >= IDLE_CHECK)
            && let Some(con) = &mut self.connection
            && redis::cmd("PING").query::<String>(con).is_err()
        {
            log::info!("redis engine: the idle connection was lost; reconnecting");
            self.connection = None;
            self.next_attempt = Instant::now();
        }
        self.connect_if_due(inner);
        self.last_used = Instant::now();
        self.connection.as_mut()
    }

    /// Runs `work` on a fresh connection; a lost connection is dropped (and
    /// replaced on the next call).
    fn run<T>(
        &mut self,
        inner: &Inner,
        work: impl FnOnce(&mut super::Commands) -> Result<T, JobError>,
    ) -> Result<T, JobError> {
        let outcome = match self.fresh(inner) {
            Some(con) => work(con),
            None => Err(JobError::Down),
        };
        if let Err(JobError::Lost(cause)) = &outcome {
            self.lost(inner, cause);
        }
        outcome
    }

    fn lost(&mut self, inner: &Inner, cause: &redis::RedisError) {
        log::warn!("redis engine: connection lost: {cause}");
        self.connection = None;
        inner.up.store(false, Ordering::Release);
        self.next_attempt = Instant::now();
    }
}

/// A subscribe waiting for the node's Redis subscription.
struct Parked {
    channel: ChannelName,
    wants: Wants,
    reply: ReplyTo,
    deadline: Instant,
}

/// Subscribes waiting for confirmations, by pub/sub channel, and the
/// order their deadlines come in (all wait the same time: arrival order),
/// so that neither a confirmation nor the deadline check scans them all.
#[derive(Default)]
struct ParkedSubscribes {
    by_channel: HashMap<String, Vec<Parked>>,
    deadlines: std::collections::VecDeque<(Instant, String)>,
}

impl ParkedSubscribes {
    fn park(&mut self, name: String, waiting: Parked) {
        self.deadlines.push_back((waiting.deadline, name.clone()));
        self.by_channel.entry(name).or_default().push(waiting);
    }

    fn confirmed(&mut self, name: &str) -> Vec<Parked> {
        self.by_channel.remove(name).unwrap_or_default()
    }

    /// Answers subscribes whose node subscription was not confirmed in time.
    fn expire(&mut self, inner: &Inner) {
        let now = Instant::now();
        while let Some((deadline, _)) = self.deadlines.front()
            && *deadline <= now
        {
            let Some((_, name)) = self.deadlines.pop_front() else { break };
            let Some(waiting) = self.by_channel.get_mut(&name) else { continue };
            // Oldest first: those due are at the front.
            let due = waiting.iter().take_while(|parked| parked.deadline <= now).count();
            for parked in waiting.drain(..due) {
                let refusal = BrokerError::Unavailable(
                    "the node's Redis subscription was not confirmed in time, retry".into(),
                );
                answer(inner, parked.reply, EngineAnswer::Subscribed(parked.channel, Err(refusal)));
            }
            if waiting.is_empty() {
                self.by_channel.remove(&name);
            }
        }
    }
}

/// Runs jobs until the engine stops.
pub(super) fn run(inner: &Inner, jobs: &Receiver<Job>) {
    let scripts = Scripts {
        publish: redis::Script::new(PUBLISH_SCRIPT),
        position: redis::Script::new(POSITION_SCRIPT),
        presence: presence::Scripts::new(),
    };
    let mut link = Link {
        connection: None,
        backoff: MIN_BACKOFF,
        next_attempt: Instant::now(),
        last_used: Instant::now(),
    };
    let mut parked = ParkedSubscribes::default();
    let refresh = presence::refresh_interval(inner.config.presence_ttl);
    let mut next_refresh = Instant::now() + refresh;
    while !inner.stop.load(Ordering::Acquire) {
        if Instant::now() >= next_refresh {
            next_refresh = Instant::now() + refresh;
            if let Some(con) = link.fresh(inner) {
                // Replicas attach and masters move: the next publications
                // wait for the replicas there are now.
                if let Err(error) = con.read_topology() {
                    log::warn!("redis engine: reading the cluster's slots failed: {error}");
                }
                match presence::refresh(inner, &scripts.presence, con) {
                    Ok(dropped) => inner.dropped(dropped),
                    Err(error) => log::warn!("redis engine: presence refresh failed: {error}"),
                }
            }
        }
        link.connect_if_due(inner);
        control::expire(inner);
        parked.expire(inner);
        let job = match jobs.recv_timeout(Duration::from_millis(50)) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        if job.is_bounded() {
            inner.queued.fetch_sub(1, Ordering::AcqRel);
        }
        match job {
            Job::Listen(name) => inner.subscriptions.write(&name, true),
            Job::Unlisten(name) => inner.subscriptions.write(&name, false),
            Job::Confirmed(name) => {
                for waiting in parked.confirmed(&name) {
                    subscribe(inner, &mut link, &scripts, waiting);
                }
            }
            Job::Subscribe { channel, wants, reply } => {
                let name = inner.pubsub_channel(channel.as_str());
                let waiting =
                    Parked { channel, wants, reply, deadline: Instant::now() + SUBSCRIBE_WAIT };
                if inner.subscriptions.is_confirmed(&name) {
                    subscribe(inner, &mut link, &scripts, waiting);
                } else {
                    // Other jobs go on meanwhile; the confirmation (or
                    // the deadline) takes it up.
                    parked.park(name, waiting);
                }
            }
            job => {
                let mut outcome = link.run(inner, |con| run_job(inner, con, &scripts, &job));
                // A job that only reads is tried once more on a new
                // connection: the one lost may have died long before (Redis
                // restarted). One that writes or publishes is not: it may
                // have been carried out before the answer was lost.
                let repeatable = matches!(job, Job::Presence { .. } | Job::History { .. });
                if repeatable && matches!(outcome, Err(JobError::Lost(_))) {
                    outcome = link.run(inner, |con| run_job(inner, con, &scripts, &job));
                }
                if let Err(error) = outcome {
                    fail(inner, job, &error);
                }
            }
        }
    }
}

struct Scripts {
    publish: redis::Script,
    position: redis::Script,
    presence: presence::Scripts,
}

/// Reads a subscriber's position (and what it missed) and answers it.
fn subscribe(inner: &Inner, link: &mut Link, scripts: &Scripts, waiting: Parked) {
    let mut outcome = link.run(inner, |con| position(inner, con, scripts, &waiting));
    // Reading a position changes nothing if run twice: once more on a new
    // connection if the one lost had died before.
    if matches!(outcome, Err(JobError::Lost(_))) {
        outcome = link.run(inner, |con| position(inner, con, scripts, &waiting));
    }
    let result = outcome.map_err(|error| error.refusal());
    answer(inner, waiting.reply, EngineAnswer::Subscribed(waiting.channel, result));
}

fn position(
    inner: &Inner,
    con: &mut super::Commands,
    scripts: &Scripts,
    waiting: &Parked,
) -> Result<Position, JobError> {
    let channel = waiting.channel.as_str();
    let options = inner.config.options(&waiting.channel).cloned().unwrap_or_default();
    let keep_ms = if options.history_size > 0 {
        options.history_ttl_secs.saturating_mul(1000)
    } else {
        IDLE_CHANNEL_TTL_MS
    };
    let (meta, history) = inner.keys(channel);
    let since = waiting.wants.since.as_ref();
    let values: Vec<redis::Value> = scripts
        .position
        .key(meta)
        .key(&history)
        .arg(inner.table.next_epoch().as_str())
        .arg(since.map_or("", |s| s.epoch.as_str()))
        .arg(since.map_or(0, |s| s.offset))
        .arg(keep_ms.max(1))
        .invoke(con)?;
    let mut position = parse_position(
        waiting.channel.shared(),
        &values,
        since.is_some(),
        waiting.wants.replay_limit,
    )
    .ok_or_else(|| JobError::Failed("unexpected answer from Redis".into()))?;
    note_epoch(inner, channel, position.epoch);
    if waiting.wants.members {
        let (members, dropped) = presence::members(con, inner, &scripts.presence, channel)?;
        inner.dropped(dropped);
        position.members = members;
    }
    if waiting.wants.newest {
        let entries: Vec<redis::Value> = redis::cmd("XREVRANGE")
            .arg(&history)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query(con)?;
        position.newest =
            entries.iter().filter_map(stream_entry).next().map(|(offset, data, _)| {
                Publication::new(waiting.channel.shared().clone(), offset, data)
            });
    }
    Ok(position)
}

fn run_job(
    inner: &Inner,
    con: &mut super::Commands,
    scripts: &Scripts,
    job: &Job,
) -> Result<(), JobError> {
    match job {
        Job::Publish { channels, data, exclude, reply } => {
            let exclude = exclude.as_deref().unwrap_or_default();
            let mut results = Vec::with_capacity(channels.len());
            for channel in channels {
                let options = inner.config.options(channel).cloned().unwrap_or_default();
                let (meta, history) = inner.keys(channel.as_str());
                let ttl_ms = options.history_ttl_secs.saturating_mul(1000).max(1);
                let (epoch, offset): (String, u64) = scripts
                    .publish
                    .key(&meta)
                    .key(history)
                    .arg(data.as_ref())
                    .arg(options.history_size)
                    .arg(ttl_ms)
                    .arg(inner.table.next_epoch().as_str())
                    .arg(inner.pubsub_channel(channel.as_str()))
                    .arg(exclude)
                    .arg(IDLE_CHANNEL_TTL_MS)
                    .arg(inner.publish_command())
                    .arg(inner.node.as_ref())
                    .arg(inner.publications.fetch_add(1, Ordering::Relaxed))
                    .invoke(con)?;
                if !con.replicate(&meta)? {
                    log::warn!(
                        "redis engine: no replica confirmed a publication of {channel} in time"
                    );
                }
                results.push((channel.clone(), Published { epoch: epoch_of(&epoch), offset }));
            }
            answer(inner, *reply, EngineAnswer::Published(Ok(results)));
            Ok(())
        }
        Job::PresenceJoin { channel, member } => {
            let flags = flags_of(inner, channel);
            let dropped =
                presence::join(con, inner, &scripts.presence, channel.as_str(), &flags, member)?;
            inner.dropped(dropped);
            Ok(())
        }
        Job::PresenceLeave { channel, member } => {
            let flags = flags_of(inner, channel);
            let dropped =
                presence::leave(con, inner, &scripts.presence, channel.as_str(), &flags, member)?;
            inner.dropped(dropped);
            Ok(())
        }
        Job::Occupy(channel) => {
            let flags = flags_of(inner, channel);
            let dropped =
                presence::occupy(con, inner, &scripts.presence, channel.as_str(), &flags)?;
            inner.dropped(dropped);
            Ok(())
        }
        Job::Vacate(channel) => {
            let flags = flags_of(inner, channel);
            let dropped =
                presence::vacate(con, inner, &scripts.presence, channel.as_str(), &flags)?;
            inner.dropped(dropped);
            Ok(())
        }
        Job::Notice(notice) => {
            let mut call = scripts.presence.notify.key(inner.notice_stream(&notice.scope()));
            call.arg(inner.config.webhook_queue_size);
            for (field, value) in notice.to_fields() {
                call.arg(field).arg(value);
            }
            let dropped: u64 = call.invoke(con)?;
            inner.dropped(dropped);
            Ok(())
        }
        Job::Relay { channel, text, exclude } => {
            let mut payload = format!("T:{}:", exclude.as_deref().unwrap_or_default()).into_bytes();
            payload.extend_from_slice(text);
            redis::cmd(inner.publish_command())
                .arg(inner.pubsub_channel(channel.as_str()))
                .arg(payload)
                .query::<()>(con)?;
            Ok(())
        }
        Job::Presence { channel, reply } => {
            let (members, dropped) =
                presence::members(con, inner, &scripts.presence, channel.as_str())?;
            inner.dropped(dropped);
            answer(inner, *reply, EngineAnswer::Presence(channel.clone(), Ok(members)));
            Ok(())
        }
        Job::UserCall { user, action, reply } => {
            Ok(control::call(inner, con, user, action, *reply)?)
        }
        Job::ControlReply { origin, id, count } => {
            Ok(control::report(inner, con, origin, *id, *count)?)
        }
        Job::History { channel, since, limit, reply } => {
            let page = history(inner, con, channel, since.as_ref(), *limit)?;
            answer(inner, *reply, EngineAnswer::History(channel.clone(), Ok(page)));
            Ok(())
        }
        // Handled by `run` without the command connection.
        Job::Listen(_) | Job::Unlisten(_) | Job::Confirmed(_) | Job::Subscribe { .. } => Ok(()),
    }
}

fn history(
    inner: &Inner,
    con: &mut super::Commands,
    channel: &ChannelName,
    since: Option<&Since>,
    limit: usize,
) -> Result<HistoryPage, JobError> {
    let (meta, history) = inner.keys(channel.as_str());
    let (position, entries): ((Option<String>, Option<u64>), Vec<redis::Value>) = redis::pipe()
        .atomic()
        .cmd("HMGET")
        .arg(&meta)
        .arg("epoch")
        .arg("top")
        .cmd("XRANGE")
        .arg(&history)
        .arg("-")
        .arg("+")
        .query(con)?;
    let epoch = position.0.map_or_else(|| inner.table.next_epoch(), |epoch| epoch_of(&epoch));
    // With the channel's epoch, only what follows the position; otherwise
    // all of history.
    let after = match since {
        Some(since) if since.epoch == epoch.as_str() => since.offset,
        _ => 0,
    };
    let publications = entries
        .iter()
        .filter_map(stream_entry)
        .filter(|(offset, _, _)| *offset > after)
        .take(limit)
        .map(|(offset, data, _)| (offset, Bytes::copy_from_slice(data)))
        .collect();
    // A stream entry's id begins with the Redis clock's milliseconds.
    let newest_age_ms = entries
        .last()
        .and_then(entry_millis)
        .map(|at| crate::clock::unix_millis().saturating_sub(at));
    Ok(HistoryPage { epoch, offset: position.1.unwrap_or(0), publications, newest_age_ms })
}

/// A channel's flags for the presence scripts, from its options.
fn flags_of(inner: &Inner, channel: &ChannelName) -> String {
    let options = inner.config.options(channel).cloned().unwrap_or_default();
    presence::channel_flags(inner, channel.as_str(), &options)
}

/// The milliseconds part of a stream entry's id (`MS-SEQ`).
fn entry_millis(entry: &redis::Value) -> Option<u64> {
    let redis::Value::Array(parts) = entry else { return None };
    let id = text(parts.first()?)?;
    id.split_once('-')?.0.parse().ok()
}

/// Tells whoever waits for `job` that it failed.
fn fail(inner: &Inner, job: Job, error: &JobError) {
    let refusal = error.refusal();
    let (reply, failure) = match job {
        Job::Publish { reply, .. } => (reply, EngineAnswer::Published(Err(refusal))),
        Job::Presence { channel, reply } => (reply, EngineAnswer::Presence(channel, Err(refusal))),
        Job::History { channel, reply, .. } => {
            (reply, EngineAnswer::History(channel, Err(refusal)))
        }
        Job::UserCall { reply, .. } => (reply, EngineAnswer::Users(Err(refusal))),
        Job::Subscribe { channel, reply, .. } => {
            (reply, EngineAnswer::Subscribed(channel, Err(refusal)))
        }
        // Presence entries are refreshed from the node's own table every
        // refresh interval: a join lost now is written then; a leave lost
        // now expires with the presence TTL. The asking node answers a control
        // call with the counts it got at its timeout.
        Job::PresenceJoin { .. }
        | Job::PresenceLeave { .. }
        | Job::Occupy(_)
        | Job::Vacate(_)
        | Job::Notice(_)
        | Job::Relay { .. }
        | Job::ControlReply { .. }
        | Job::Listen(_)
        | Job::Unlisten(_)
        | Job::Confirmed(_) => return,
    };
    answer(inner, reply, failure);
}

/// An epoch as Redis keeps it (herald wrote it: eight hex digits).
fn epoch_of(text: &str) -> Epoch {
    Epoch::parse(text).unwrap_or(Epoch::from_u32(0))
}

/// The position script's answer: `{epoch, top}`, or with a position
/// `{epoch, top, recovered, offset1, data1, ...}`.
fn parse_position(
    channel: &std::sync::Arc<str>,
    values: &[redis::Value],
    with_since: bool,
    replay_limit: usize,
) -> Option<Position> {
    let epoch = epoch_of(&text(values.first()?)?);
    let top = number(values.get(1)?)?;
    let plain =
        |recovery| Position { epoch, offset: top, recovery, members: Vec::new(), newest: None };
    if !with_since {
        return Some(plain(None));
    }
    let mut recovered = number(values.get(2)?)? == 1;
    let mut missed = Vec::new();
    let mut size = 0usize;
    for pair in values.get(3..)?.chunks(2) {
        let [offset, data] = pair else { return None };
        let publication = Publication::new(channel.clone(), number(offset)?, bytes_of(data)?);
        size += publication.ws_frame().len();
        if size > replay_limit {
            recovered = false;
            missed.clear();
            break;
        }
        missed.push(publication);
    }
    Some(plain(Some(Recovery { recovered, missed })))
}
