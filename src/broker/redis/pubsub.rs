//! The pub/sub thread: the node's subscriber connections to Redis (one, or one per cluster master), which channels it wants and Redis confirmed, and every publication from them handed to the shards in offset order.

use super::cluster::{Topology, key_slot};
use super::{Commands, Inner, Job, deliver_presence, lock};
use crate::broker::publication::{Publication, Relayed, Restart};
use crate::broker::table::deliver_to;
use crate::broker::{Delivery, Event};
use crate::types::{Epoch, Member, parse_client_id};
use std::collections::HashSet;
use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// First wait before reconnecting to Redis; doubles up to [`MAX_BACKOFF`].
pub(super) const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between reconnection attempts.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The Redis channels this node wants, those Redis confirmed, and the
/// connections `SUBSCRIBE`s are written on. Shards only change the sets
/// (no I/O under these locks on a shard); engine threads write.
#[derive(Debug, Default)]
pub(super) struct Subscriptions {
    state: Mutex<State>,
    /// Held while writing, so that commands from two threads never mix.
    writer: Mutex<Writers>,
}

/// Where subscriptions are written.
#[derive(Debug, Default)]
struct Writers {
    /// One connection to a single instance; in a cluster, one per master,
    /// in the order of `topology.masters`.
    streams: Vec<Option<TcpStream>>,
    /// In a cluster, which master owns each slot: a channel is subscribed
    /// (`SSUBSCRIBE`) on the master that owns its slot.
    topology: Option<Topology>,
}

impl Writers {
    /// Shuts every connection: their readers end.
    fn shut_all(&mut self) {
        for stream in self.streams.drain(..).flatten() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        self.topology = None;
    }
}

#[derive(Debug, Default)]
struct State {
    wanted: HashSet<String>,
    confirmed: HashSet<String>,
}

impl Subscriptions {
    /// Wants `name`; true if it was not wanted before.
    pub(super) fn want(&self, name: String) -> bool {
        lock(&self.state).wanted.insert(name)
    }

    /// No longer wants `name`; true if it was wanted.
    pub(super) fn unwant(&self, name: &str) -> bool {
        let mut state = lock(&self.state);
        state.confirmed.remove(name);
        state.wanted.remove(name)
    }

    /// Whether Redis confirmed the node's subscription to `name`.
    pub(super) fn is_confirmed(&self, name: &str) -> bool {
        lock(&self.state).confirmed.contains(name)
    }

    /// Whether `name` is wanted.
    pub(super) fn is_wanted(&self, name: &str) -> bool {
        lock(&self.state).wanted.contains(name)
    }

    /// Redis confirmed `name`; true if it is still wanted.
    fn confirm(&self, name: &str) -> bool {
        let mut state = lock(&self.state);
        state.wanted.contains(name) && state.confirmed.insert(name.to_string())
    }

    /// Writes `SUBSCRIBE name` (or `UNSUBSCRIBE`; `SSUBSCRIBE` to the
    /// slot's master in a cluster) if the connection is up and the node
    /// still wants it (or no longer does). A failed write closes the
    /// connection: its reader notices and the thread reconnects,
    /// subscribing to everything wanted then.
    pub(super) fn write(&self, name: &str, subscribe: bool) {
        let mut writers = lock(&self.writer);
        if self.is_wanted(name) != subscribe {
            return;
        }
        let (index, verb) = route(writers.topology.as_ref(), name, subscribe);
        let Some(slot) = index.and_then(|index| writers.streams.get_mut(index)) else { return };
        let Some(stream) = slot.as_mut() else { return };
        if let Err(error) = stream.write_all(&redis::cmd(verb).arg(name).get_packed_command()) {
            log::warn!("redis engine: writing to the pub/sub connection failed: {error}");
            let _ = stream.shutdown(std::net::Shutdown::Both);
            *slot = None;
        }
    }

    /// Closes the connections (at shutdown): the readers' blocking reads end.
    pub(super) fn close(&self) {
        lock(&self.writer).shut_all();
    }
}

/// The pub/sub thread: connects, reads until a connection fails (or, in a
/// cluster, a slot moved), and again, with backoff, until the engine stops.
pub(super) fn run(inner: &Inner) {
    let mut backoff = MIN_BACKOFF;
    while !inner.stop.load(Ordering::Acquire) {
        let session = match inner.is_cluster() {
            Ok(false) => single(inner),
            Ok(true) => sharded(inner),
            Err(error) => Err(error.to_string()),
        };
        match session {
            Ok(()) => backoff = MIN_BACKOFF,
            Err(error) => log::debug!("redis engine: pub/sub connection failed: {error}"),
        }
        lock(&inner.subscriptions.writer).shut_all();
        lock(&inner.subscriptions.state).confirmed.clear();
        inner.suspect.store(true, Ordering::Release);
        let until = Instant::now() + backoff;
        while Instant::now() < until && !inner.stop.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(20).min(backoff));
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One instance (the first URL, as for commands): one connection, read
/// until it fails.
fn single(inner: &Inner) -> Result<(), String> {
    let seed = inner.seeds.first().ok_or("no redis_url")?;
    let address = match seed.get_connection_info().addr() {
        redis::ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
        other => return Err(format!("unsupported Redis address {other}")),
    };
    let stream = open(inner, &address).map_err(|error| format!("{address}: {error}"))?;
    subscribe_all(inner, vec![stream.try_clone().map_err(|e| e.to_string())?], None)?;
    log::debug!("redis engine: pub/sub connected");
    read(inner, stream);
    Ok(())
}

/// A cluster: one connection per master, each read by its own thread;
/// when one fails, or a slot moved away from a master, all are closed and
/// the thread starts again from the cluster's new slot map.
fn sharded(inner: &Inner) -> Result<(), String> {
    let topology = match inner.connect().map_err(|error| error.to_string())? {
        Commands::Cluster { topology, .. } => topology,
        Commands::Single(_) => return Err("the cluster answered as a single instance".into()),
    };
    if !topology.is_complete() {
        return Err("the cluster's slots are not all served".into());
    }
    let mut streams = Vec::with_capacity(topology.masters.len());
    for master in &topology.masters {
        streams.push(open(inner, master).map_err(|error| format!("{master}: {error}"))?);
    }
    let clones = streams
        .iter()
        .map(TcpStream::try_clone)
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|error| error.to_string())?;
    subscribe_all(inner, clones, Some(topology.clone()))?;
    log::debug!("redis engine: pub/sub connected to the masters {:?}", topology.masters);
    std::thread::scope(|scope| {
        for (stream, master) in streams.into_iter().zip(&topology.masters) {
            let reader = std::thread::Builder::new()
                .name("herald-redis-shard".into())
                .spawn_scoped(scope, move || {
                    read(inner, stream);
                    log::debug!("redis engine: pub/sub connection to {master} ended");
                    // The others end too: the thread starts over.
                    lock(&inner.subscriptions.writer).shut_all();
                });
            if let Err(error) = reader {
                log::warn!("redis engine: cannot start a pub/sub reader: {error}");
                lock(&inner.subscriptions.writer).shut_all();
            }
        }
    });
    Ok(())
}

/// Opens a subscriber connection to `address` and authenticates.
fn open(inner: &Inner, address: &str) -> std::io::Result<TcpStream> {
    let mut stream = std::net::ToSocketAddrs::to_socket_addrs(address)?
        .next()
        .map(|addr| TcpStream::connect_timeout(&addr, super::CALL_TIMEOUT))
        .ok_or_else(|| std::io::Error::other("Redis address resolves to nothing"))??;
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(super::CALL_TIMEOUT))?;
    let settings = inner.seeds.first().map(|seed| seed.get_connection_info().redis_settings());
    if let Some(settings) = settings
        && let Some(password) = settings.password()
    {
        let mut auth = redis::cmd("AUTH");
        if let Some(user) = settings.username() {
            auth.arg(user);
        }
        stream.write_all(&auth.arg(password).get_packed_command())?;
    }
    Ok(stream)
}

/// Subscribes to every channel the node wants, each on its master's
/// connection in a cluster, and keeps the connections for later
/// subscriptions; under the writer's lock, so a channel wanted meanwhile
/// is written on them by the command thread.
fn subscribe_all(
    inner: &Inner,
    mut streams: Vec<TcpStream>,
    topology: Option<Topology>,
) -> Result<(), String> {
    let mut writers = lock(&inner.subscriptions.writer);
    let wanted: Vec<String> = lock(&inner.subscriptions.state).wanted.iter().cloned().collect();
    for name in &wanted {
        let (index, verb) = route(topology.as_ref(), name, true);
        let Some(stream) = index.and_then(|index| streams.get_mut(index)) else { continue };
        stream.write_all(&redis::cmd(verb).arg(name).get_packed_command()).map_err(|error| {
            for stream in &streams {
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
            error.to_string()
        })?;
    }
    *writers = Writers { streams: streams.into_iter().map(Some).collect(), topology };
    Ok(())
}

/// Which connection `name` is subscribed on (the only one, or in a cluster
/// the one to the master that owns its slot), and with which command.
fn route(
    topology: Option<&Topology>,
    name: &str,
    subscribe: bool,
) -> (Option<usize>, &'static str) {
    match topology {
        Some(topology) => (
            topology.owner(key_slot(name.as_bytes())),
            if subscribe { "SSUBSCRIBE" } else { "SUNSUBSCRIBE" },
        ),
        None => (Some(0), if subscribe { "SUBSCRIBE" } else { "UNSUBSCRIBE" }),
    }
}

/// Reads until the connection fails: subscription confirmations, calls
/// between nodes, and publications for the shards.
fn read(inner: &Inner, stream: TcpStream) {
    let mut reader = BufReader::new(stream);
    let mut parser = redis::Parser::new();
    // A command connection for reading history when publications were
    // missed (the pub/sub connection itself can only listen).
    let mut catch_up: Option<Commands> = None;
    let control = inner.control_channel();
    let replies = inner.reply_channel(&inner.node);
    loop {
        let value = match parser.parse_value(&mut reader) {
            Ok(value) => value,
            Err(error) => {
                if !inner.stop.load(Ordering::Acquire) {
                    log::warn!("redis engine: pub/sub connection lost: {error}");
                }
                return;
            }
        };
        let items = match value {
            redis::Value::Array(items) => items,
            redis::Value::ServerError(error) => {
                // A `MOVED` for a subscription sent to a master that no
                // longer owns the slot, or worse: start over.
                log::warn!("redis engine: the pub/sub connection was refused: {error:?}");
                return;
            }
            _ => continue,
        };
        let kind = items.first().and_then(text).unwrap_or_default();
        let name = items.get(1).and_then(text).unwrap_or_default();
        match kind.as_str() {
            "sunsubscribe" if inner.subscriptions.is_wanted(&name) => {
                // The slot moved to another master: subscribe there.
                log::info!("redis engine: {name} moved to another cluster master");
                return;
            }
            "subscribe" | "ssubscribe" => {
                log::debug!("redis engine: subscribed to {name}");
                if inner.subscriptions.confirm(&name) {
                    inner.submit_internal(Job::Confirmed(name.clone()));
                }
                // Subscribed again after a lost connection: what was
                // published meanwhile comes from history, before anything
                // newer is read from this connection.
                if let Some(channel) = inner.channel_of(&name)
                    && remote_top(inner, channel).is_some()
                    && !catch_up_to_redis(inner, &mut catch_up, channel)
                {
                    mark_restart(inner, channel);
                }
            }
            "message" | "smessage" if name == control || name == replies => {
                let Some(payload) = items.get(2).and_then(bytes_of) else { continue };
                if name == control {
                    super::control::on_call(inner, payload);
                } else {
                    super::control::on_count(inner, payload);
                }
            }
            "message" | "smessage" => {
                let (Some(channel), Some(payload)) =
                    (inner.channel_of(&name), items.get(2).and_then(bytes_of))
                else {
                    continue;
                };
                if let Some(event) = payload.strip_prefix(b"J:") {
                    on_presence(inner, channel, event);
                    continue;
                }
                if let Some(relayed) = payload.strip_prefix(b"T:") {
                    on_relay(inner, channel, relayed);
                    continue;
                }
                if let Some((epoch, offset, exclude, data)) = split_payload(payload) {
                    let filled = fill_gap(inner, &mut catch_up, channel, epoch, offset);
                    deliver(inner, channel, epoch, offset, exclude, data, !filled);
                }
            }
            _ => {}
        }
    }
}

/// `J:CLIENT:JC:LEN:USERINFO`: a join (`J` = 1) or leave of a client, `C`
/// = 1 when it was its user's first or last connection, then its user and
/// info (`Member::encode_user`); for everyone but that client.
fn on_presence(inner: &Inner, channel: &str, event: &[u8]) {
    let Ok(event) = std::str::from_utf8(event) else { return };
    let mut parts = event.splitn(3, ':');
    let (Some(client), Some(flags), Some(encoded)) = (parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let Some(member) = Member::decode_user(client.into(), encoded) else { return };
    let exclude = parse_client_id(&inner.node, client);
    let joined = flags.starts_with('1');
    let user_changed = flags.get(1..2) == Some("1");
    deliver_presence(inner, channel, (joined, user_changed), member, exclude);
}

/// `T:EXCLUDE:TEXT`: a message that is not kept, for everyone but the
/// `EXCLUDE` client.
fn on_relay(inner: &Inner, channel: &str, relayed: &[u8]) {
    let Some(colon) = relayed.iter().position(|b| *b == b':') else { return };
    let (exclude, text) = relayed.split_at(colon);
    let exclude = std::str::from_utf8(exclude).ok().and_then(|id| parse_client_id(&inner.node, id));
    let text = bytes::Bytes::copy_from_slice(text.get(1..).unwrap_or_default());
    inner.deliver(channel, |name| (Event::Relay(Relayed::new(name, text)), exclude));
}

/// A publication from Redis, for this node's subscribers of `channel`.
/// Publications arrive in offset order (one Redis connection, one reader);
/// repeats and older ones are dropped. With `restart`, or when the epoch
/// changed under subscribers, every subscriber is first told that it starts
/// over.
fn deliver(
    inner: &Inner,
    channel: &str,
    epoch: &str,
    offset: u64,
    exclude: &str,
    data: &[u8],
    restart: bool,
) {
    let mut stripe = inner.table.lock(channel);
    let Some((name, state)) = stripe.get_named(channel) else { return };
    let restart = restart || std::mem::take(&mut state.restart_pending);
    let mut notice = None;
    match Epoch::parse(epoch) {
        Some(epoch) if epoch != state.epoch || restart => {
            if state.remote_position || restart {
                log::info!("channel {channel}: epoch changed in Redis; subscribers start over");
                notice = Some(Restart::new(name.clone(), epoch, offset.saturating_sub(1)));
            }
            state.epoch = epoch;
            state.top = offset.saturating_sub(1);
            state.remote_position = true;
        }
        _ => {}
    }
    if offset <= state.top {
        return;
    }
    state.top = offset;
    if let Some(notice) = notice {
        let delivery =
            Delivery { channel: name.clone(), event: Event::Restart(notice), exclude: None };
        deliver_to(&*inner.host, state.interested_shards(), &delivery);
    }
    let delivery = Delivery {
        channel: name.clone(),
        event: Event::Publication(Publication::new(name, offset, data)),
        exclude: parse_client_id(&inner.node, exclude),
    };
    deliver_to(&*inner.host, state.interested_shards(), &delivery);
}

/// Where the node is in `channel` (epoch and newest offset delivered), once
/// a publication from Redis set it.
fn remote_top(inner: &Inner, channel: &str) -> Option<(Epoch, u64)> {
    let mut stripe = inner.table.lock(channel);
    let state = stripe.get(channel)?;
    (state.remote_position && state.top > 0).then_some((state.epoch, state.top))
}

/// Publications of `channel` were missed and cannot be read back: its next
/// delivery says so to every subscriber.
fn mark_restart(inner: &Inner, channel: &str) {
    if let Some(state) = inner.table.lock(channel).get(channel) {
        state.restart_pending = true;
    }
}

/// A subscribe read the channel's epoch in Redis. From now on another
/// epoch from Redis means the channel was lost there. (Its offset is not
/// taken: publications below it may still be on their way to other
/// subscribers of this node.)
pub(super) fn note_epoch(inner: &Inner, channel: &str, epoch: Epoch) {
    if let Some(state) = inner.table.lock(channel).get(channel)
        && !state.remote_position
    {
        state.epoch = epoch;
        state.top = 0;
        state.remote_position = true;
    }
}

/// Before publication `offset` of `channel` is delivered: if the node
/// delivered an earlier one of the same epoch and some between were missed
/// (the pub/sub connection was down), delivers them from history, in
/// order. Returns false when history no longer holds them all: subscribers
/// are then told they start over.
fn fill_gap(
    inner: &Inner,
    catch_up: &mut Option<Commands>,
    channel: &str,
    epoch: &str,
    offset: u64,
) -> bool {
    let Some((known, top)) = remote_top(inner, channel) else { return true };
    if known.as_str() != epoch || offset <= top + 1 {
        return true;
    }
    log::info!(
        "channel {channel}: publications {} to {} came not through pub/sub; reading history",
        top + 1,
        offset - 1
    );
    if catch_up.is_none() {
        *catch_up = connect_for_catch_up(inner);
    }
    let Some(con) = catch_up else { return false };
    let history = inner.keys(channel).1;
    let entries: Vec<redis::Value> =
        match redis::cmd("XRANGE").arg(&history).arg("-").arg("+").query(con) {
            Ok(entries) => entries,
            Err(_) => {
                *catch_up = None;
                return false;
            }
        };
    let mut missed = Vec::new();
    let mut next = top + 1;
    for (entry_offset, data, exclude) in entries.iter().filter_map(stream_entry) {
        if entry_offset < next || entry_offset >= offset {
            continue;
        }
        if entry_offset != next {
            break;
        }
        missed.push((entry_offset, exclude, data));
        next += 1;
    }
    if next != offset {
        return false;
    }
    for (entry_offset, exclude, data) in missed {
        let exclude = std::str::from_utf8(exclude).unwrap_or_default();
        deliver(inner, channel, epoch, entry_offset, exclude, data, false);
    }
    true
}

/// After a re-subscription: delivers whatever the node missed of `channel`
/// up to its newest offset in Redis, or tells its subscribers they start
/// over where history no longer holds it. False when Redis could not be
/// read (the next publication then says they start over).
fn catch_up_to_redis(inner: &Inner, catch_up: &mut Option<Commands>, channel: &str) -> bool {
    if catch_up.is_none() {
        *catch_up = connect_for_catch_up(inner);
    }
    let Some(con) = catch_up else { return false };
    let meta = inner.keys(channel).0;
    let position: redis::RedisResult<(Option<String>, Option<u64>)> =
        redis::cmd("HMGET").arg(&meta).arg("epoch").arg("top").query(con);
    match position {
        Ok((Some(epoch), Some(top))) => {
            let known = remote_top(inner, channel);
            if known.is_some_and(|(known, _)| known.as_str() != epoch) {
                // A new epoch began while the node was away (the channel
                // was lost in Redis): subscribers start over, with what
                // history holds of the new epoch.
                return replay_new_epoch(inner, con, channel, &epoch, top);
            }
            if let Some((_, delivered)) = known
                && top < delivered
            {
                // Redis lost publications this node delivered (a master
                // failed over to a replica that did not have them yet).
                match rewind(inner, con, channel, &epoch, delivered) {
                    Some(new_epoch) => restart_at(inner, channel, new_epoch.as_str(), 0),
                    None => mark_restart(inner, channel),
                }
                return true;
            }
            if !fill_gap(inner, catch_up, channel, &epoch, top + 1) {
                // History no longer holds what was missed: subscribers are
                // told now, not at the next publication (there may be none
                // for a long time).
                restart_at(inner, channel, &epoch, top);
            }
            true
        }
        // The channel is gone from Redis: its next publication has a new epoch.
        Ok(_) => true,
        Err(_) => {
            *catch_up = None;
            false
        }
    }
}

/// Delivers a new epoch of `channel` from history, the first publication
/// with the notice that subscribers start over (at `top` when history holds
/// nothing). False if it cannot be read.
fn replay_new_epoch(
    inner: &Inner,
    con: &mut Commands,
    channel: &str,
    epoch: &str,
    top: u64,
) -> bool {
    let history = inner.keys(channel).1;
    let entries: Vec<redis::Value> =
        match redis::cmd("XRANGE").arg(&history).arg("-").arg("+").query(con) {
            Ok(entries) => entries,
            Err(_) => return false,
        };
    let mut first = true;
    for (offset, data, exclude) in entries.iter().filter_map(stream_entry) {
        let exclude = std::str::from_utf8(exclude).unwrap_or_default();
        deliver(inner, channel, epoch, offset, exclude, data, first);
        first = false;
    }
    if first {
        restart_at(inner, channel, epoch, top);
    }
    true
}

/// Tells `channel`'s subscribers on this node that they start over at
/// `top` of `epoch` (what they missed cannot be read back), and goes on
/// from there; an epoch that is not herald's leaves the notice to the next
/// publication.
fn restart_at(inner: &Inner, channel: &str, epoch: &str, top: u64) {
    let Some(epoch) = Epoch::parse(epoch) else {
        mark_restart(inner, channel);
        return;
    };
    let mut stripe = inner.table.lock(channel);
    let Some((name, state)) = stripe.get_named(channel) else { return };
    state.epoch = epoch;
    state.top = top;
    state.remote_position = true;
    state.restart_pending = false;
    let notice = Restart::new(name.clone(), epoch, top);
    let delivery = Delivery { channel: name.clone(), event: Event::Restart(notice), exclude: None };
    deliver_to(&*inner.host, state.interested_shards(), &delivery);
}

/// A command connection for reading history from the pub/sub thread.
fn connect_for_catch_up(inner: &Inner) -> Option<Commands> {
    inner
        .connect()
        .map_err(|error| log::warn!("redis engine: cannot read missed publications: {error}"))
        .ok()
}

/// Redis is behind what this node delivered of `channel`: the channel
/// starts a new epoch there (unless another node did it first), so that
/// its next offsets are not taken for repeats. Returns the new epoch if
/// this node set it.
fn rewind(
    inner: &Inner,
    con: &mut Commands,
    channel: &str,
    epoch: &str,
    delivered: u64,
) -> Option<Epoch> {
    log::warn!(
        "channel {channel}: Redis holds fewer publications than this node delivered \
         (a failover lost some); it starts a new epoch"
    );
    let (meta, history) = inner.keys(channel);
    let new_epoch = inner.table.next_epoch();
    let rewound = redis::Script::new(super::scripts::REWIND_SCRIPT)
        .key(meta)
        .key(history)
        .arg(epoch)
        .arg(delivered)
        .arg(new_epoch.as_str())
        .invoke::<u64>(con);
    match rewound {
        Ok(1) => Some(new_epoch),
        Ok(_) => None,
        Err(error) => {
            log::warn!("channel {channel}: starting a new epoch failed: {error}");
            None
        }
    }
}

/// `EPOCH:OFFSET:EXCLUDE:DATA`.
fn split_payload(payload: &[u8]) -> Option<(&str, u64, &str, &[u8])> {
    let mut parts = payload.splitn(4, |b| *b == b':');
    let epoch = std::str::from_utf8(parts.next()?).ok()?;
    let offset = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let exclude = std::str::from_utf8(parts.next()?).ok()?;
    Some((epoch, offset, exclude, parts.next()?))
}

/// `(offset, data, exclude)` of a history stream entry
/// (`[id, ["o", N, "d", DATA, "x", CLIENT]]`).
pub(super) fn stream_entry(entry: &redis::Value) -> Option<(u64, &[u8], &[u8])> {
    let redis::Value::Array(parts) = entry else { return None };
    let Some(redis::Value::Array(fields)) = parts.get(1) else { return None };
    let offset = number(fields.get(1)?)?;
    let data = bytes_of(fields.get(3)?)?;
    let exclude = fields.get(5).and_then(bytes_of).unwrap_or_default();
    Some((offset, data, exclude))
}

/// A Redis value as text.
pub(super) fn text(value: &redis::Value) -> Option<String> {
    match value {
        redis::Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        redis::Value::SimpleString(text) => Some(text.clone()),
        redis::Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A Redis value as a number.
pub(super) fn number(value: &redis::Value) -> Option<u64> {
    match value {
        redis::Value::Int(n) => u64::try_from(*n).ok(),
        other => text(other)?.parse().ok(),
    }
}

/// A Redis bulk string's bytes.
pub(super) fn bytes_of(value: &redis::Value) -> Option<&[u8]> {
    match value {
        redis::Value::BulkString(bytes) => Some(bytes),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_split_at_the_first_three_colons() {
        assert_eq!(
            split_payload(br#"5e0c1a2b:46:n1-0-3-9:{"a":"b:c"}"#),
            Some(("5e0c1a2b", 46, "n1-0-3-9", &br#"{"a":"b:c"}"#[..]))
        );
        assert_eq!(split_payload(b"5e0c1a2b:46::1"), Some(("5e0c1a2b", 46, "", &b"1"[..])));
        assert_eq!(split_payload(b"5e0c1a2b:x::1"), None);
    }
}
