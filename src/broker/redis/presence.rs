//! Who is in a channel across nodes, in Redis: presence members (with connection counts per user) and, where webhooks ask for it, which nodes have subscribers; each entry expires unless its node renews it, so the members and subscribers of a node that dies leave, announced and noticed once, by whichever node sweeps first.
//!
//! Every change is one Lua script, so a transition (a user's first
//! connection, a channel's first node) is seen by exactly one script run,
//! which announces it to the nodes (`J:` on the channel's pub/sub channel)
//! and queues its notice for the webhooks (`XADD` on the scope's stream).
//! Entries expire through one sorted set per kind for the whole
//! deployment (`prx`, `ocx`): a channel whose every node died is swept too.

use super::Inner;
use crate::broker::notice::{NoticeKind, scope_of};
use crate::clock::{millis, unix_millis};
use crate::config::NamespaceOptions;
use crate::types::Member;
use std::sync::Arc;
use std::time::Duration;

/// Expired entries one sweep takes on; the rest wait for the next.
const SWEEP_BATCH: usize = 1000;

/// How often each node renews its entries and sweeps the expired ones,
/// for a presence TTL of `ttl` (`presence_ttl_secs`): six times per TTL.
/// A node that dies leaves entries that go within the TTL and a sixth of
/// it after its last renewal.
pub(super) fn refresh_interval(ttl: Duration) -> Duration {
    ttl / 6
}

/// Queues a notice on a scope's stream unless it is full; returns 1 if it
/// was dropped. Shared by the scripts below (prepended to each).
const NOTICE_LUA: &str = r"
local function notice(stream, kind, channel, user, time, bound)
  if stream == '' then return 0 end
  if redis.call('XLEN', stream) >= tonumber(bound) then return 1 end
  if user then
    redis.call('XADD', stream, '*', 'k', kind, 'c', channel, 't', time, 'u', user)
  else
    redis.call('XADD', stream, '*', 'k', kind, 'c', channel, 't', time)
  end
  return 0
end
local function flag(flags, at) return string.sub(flags, at, at) == '1' end
local function stream_of(flags)
  local bar = string.find(flags, '|', 1, true)
  if bar then return string.sub(flags, bar + 1) end
  return ''
end
";

/// A join, or the renewal of an entry. KEYS: members hash, user counts,
/// the expiry set of all entries (`prx`), the channel's flags. ARGV:
/// client, user and info (`Member::encode_user`), user, expiry (Unix ms),
/// keep (ms), pub/sub channel, channel, flags, time (ms), queue bound.
/// A new entry counts toward its user; the user's first connection is
/// announced (`J:CLIENT:1F:USER`, `F` = 1) and noticed (`member_added`)
/// as the flags ask. Returns `{new, dropped}`.
const JOIN_SCRIPT: &str = r"
local new = redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[7] .. '\n' .. ARGV[1])
redis.call('SET', KEYS[4], ARGV[8], 'PX', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
local dropped = 0
if new == 1 then
  local first = 0
  if redis.call('HINCRBY', KEYS[2], ARGV[3], 1) == 1 then first = 1 end
  if flag(ARGV[8], 1) then
    redis.call('PUBLISH', ARGV[6], 'J:' .. ARGV[1] .. ':1' .. first .. ':' .. ARGV[2])
  end
  if first == 1 and flag(ARGV[8], 2) then
    dropped = notice(stream_of(ARGV[8]), 'member_added', ARGV[7], ARGV[3], ARGV[9], ARGV[10])
  end
end
return {new, dropped}
";

/// A leave: the entry removed, its user's count lowered; the user's last
/// connection is announced (`J:CLIENT:0L:USER`, `L` = 1) and noticed
/// (`member_removed`) as the flags ask. KEYS and ARGV as [`JOIN_SCRIPT`]
/// (no expiry). Returns `{left, dropped}`.
const LEAVE_SCRIPT: &str = r"
local value = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[7] .. '\n' .. ARGV[1])
if not value then return {0, 0} end
redis.call('HDEL', KEYS[1], ARGV[1])
local last = 0
if redis.call('HINCRBY', KEYS[2], ARGV[3], -1) <= 0 then
  redis.call('HDEL', KEYS[2], ARGV[3])
  last = 1
end
local flags = redis.call('GET', KEYS[4]) or ARGV[8]
if flag(flags, 1) then
  redis.call('PUBLISH', ARGV[6], 'J:' .. ARGV[1] .. ':0' .. last .. ':' .. value)
end
local dropped = 0
if last == 1 and flag(flags, 3) then
  dropped = notice(stream_of(flags), 'member_removed', ARGV[7], ARGV[3], ARGV[9], ARGV[10])
end
return {1, dropped}
";

/// A node has subscribers of a channel (its first one came, or a
/// renewal). KEYS: the channel's nodes hash, the expiry set of all such
/// entries (`ocx`), the channel's flags. ARGV: node, expiry, keep, channel,
/// flags, time, queue bound. The channel's first node notices
/// `channel_occupied`. Returns `{new, dropped}`.
const OCCUPY_SCRIPT: &str = r"
local new = redis.call('HSET', KEYS[1], ARGV[1], 1)
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[4] .. '\n' .. ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('SET', KEYS[3], ARGV[5], 'PX', ARGV[3])
local dropped = 0
if new == 1 and redis.call('HLEN', KEYS[1]) == 1 and flag(ARGV[5], 4) then
  dropped = notice(stream_of(ARGV[5]), 'channel_occupied', ARGV[4], nil, ARGV[6], ARGV[7])
end
return {new, dropped}
";

/// A node's last subscriber of a channel left. KEYS and ARGV as
/// [`OCCUPY_SCRIPT`]. The channel's last node notices `channel_vacated`.
/// Returns `{left, dropped}`.
const VACATE_SCRIPT: &str = r"
redis.call('ZREM', KEYS[2], ARGV[4] .. '\n' .. ARGV[1])
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return {0, 0} end
local dropped = 0
local flags = redis.call('GET', KEYS[3]) or ARGV[5]
if redis.call('HLEN', KEYS[1]) == 0 and flag(flags, 5) then
  dropped = notice(stream_of(flags), 'channel_vacated', ARGV[4], nil, ARGV[6], ARGV[7])
end
return {1, dropped}
";

/// Entries their nodes stopped renewing (the node died) leave: presence
/// members as leaves (announced, `member_removed` for a user's last), then
/// nodes' occupancy (`channel_vacated` for a channel's last node). Keys
/// of each channel are derived from the prefix. KEYS: `prx`, `ocx`. ARGV:
/// now (Unix ms), batch, key prefix, time, queue bound. Returns
/// `{members, nodes, dropped}`.
const SWEEP_SCRIPT: &str = r"
local prefix = ARGV[3]
local dropped = 0
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, entry in ipairs(members) do
  redis.call('ZREM', KEYS[1], entry)
  local nl = string.find(entry, '\n', 1, true)
  local channel = string.sub(entry, 1, nl - 1)
  local client = string.sub(entry, nl + 1)
  local hash = prefix .. ':pr:' .. channel
  local value = redis.call('HGET', hash, client)
  if value then
    redis.call('HDEL', hash, client)
    local colon = string.find(value, ':', 1, true)
    local user = string.sub(value, colon + 1, colon + tonumber(string.sub(value, 1, colon - 1)))
    local users = prefix .. ':pru:' .. channel
    local last = 0
    if redis.call('HINCRBY', users, user, -1) <= 0 then
      redis.call('HDEL', users, user)
      last = 1
    end
    local flags = redis.call('GET', prefix .. ':chf:' .. channel) or ''
    if flag(flags, 1) then
      local pubsub = prefix .. ':pub:' .. channel
      redis.call('PUBLISH', pubsub, 'J:' .. client .. ':0' .. last .. ':' .. value)
    end
    if last == 1 and flag(flags, 3) then
      dropped = dropped + notice(stream_of(flags), 'member_removed', channel, user, ARGV[4], ARGV[5])
    end
  end
end
local nodes = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, entry in ipairs(nodes) do
  redis.call('ZREM', KEYS[2], entry)
  local nl = string.find(entry, '\n', 1, true)
  local channel = string.sub(entry, 1, nl - 1)
  local hash = prefix .. ':oc:' .. channel
  if redis.call('HDEL', hash, string.sub(entry, nl + 1)) == 1 and redis.call('HLEN', hash) == 0 then
    local flags = redis.call('GET', prefix .. ':chf:' .. channel) or ''
    if flag(flags, 5) then
      dropped = dropped + notice(stream_of(flags), 'channel_vacated', channel, nil, ARGV[4], ARGV[5])
    end
  end
end
return {#members, #nodes, dropped}
";

/// A notice from a front end (a client event, a cache miss) for a scope's
/// stream, unless it is full. KEYS: the stream. ARGV: bound, then field and
/// value pairs. Returns 1 if it was dropped.
const NOTIFY_SCRIPT: &str = r"
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return 1 end
redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
return 0
";

/// The scripts, loaded once per command thread.
pub(super) struct Scripts {
    join: redis::Script,
    leave: redis::Script,
    occupy: redis::Script,
    vacate: redis::Script,
    sweep: redis::Script,
    pub(super) notify: redis::Script,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
        let with_notice = |body: &str| redis::Script::new(&format!("{NOTICE_LUA}{body}"));
        Scripts {
            join: with_notice(JOIN_SCRIPT),
            leave: with_notice(LEAVE_SCRIPT),
            occupy: with_notice(OCCUPY_SCRIPT),
            vacate: with_notice(VACATE_SCRIPT),
            sweep: with_notice(SWEEP_SCRIPT),
            notify: redis::Script::new(NOTIFY_SCRIPT),
        }
    }
}

/// What the scripts need to know of a channel's options, kept in Redis
/// beside it (a node that sweeps may have no other way to know): whether
/// joins and leaves are announced, which notices are wanted, and the
/// scope's stream: `AJRCV|STREAM`, each letter `1` or `0`.
pub(super) fn channel_flags(inner: &Inner, channel: &str, options: &NamespaceOptions) -> String {
    let bit = |on: bool| if on { '1' } else { '0' };
    let notices = options.notices;
    let stream =
        if notices.0 == 0 { String::new() } else { inner.notice_stream(&scope_of(channel)) };
    [
        bit(options.join_leave),
        bit(notices.has(NoticeKind::MemberAdded)),
        bit(notices.has(NoticeKind::MemberRemoved)),
        bit(notices.has(NoticeKind::ChannelOccupied)),
        bit(notices.has(NoticeKind::ChannelVacated)),
    ]
    .iter()
    .collect::<String>()
        + "|"
        + &stream
}

/// How long an entry lives without being renewed.
fn ttl_ms(inner: &Inner) -> u64 {
    millis(inner.config.presence_ttl)
}

/// How long a channel's keys outlive their last write.
fn keep_ms(inner: &Inner) -> u64 {
    2 * ttl_ms(inner)
}

/// The number in a script's answer at `index`.
fn count(values: &[i64], index: usize) -> u64 {
    values.get(index).map_or(0, |value| u64::try_from(*value).unwrap_or(0))
}

/// A script run for one member of `channel`.
fn member_call<'s>(
    script: &'s redis::Script,
    inner: &Inner,
    channel: &str,
    flags: &str,
    member: &Member,
) -> redis::ScriptInvocation<'s> {
    let (hash, users) = inner.presence_keys(channel);
    let mut call = script.prepare_invoke();
    call.key(hash)
        .key(users)
        .key(inner.key("prx"))
        .key(inner.channel_flags_key(channel))
        .arg(member.client.as_ref())
        .arg(member.encode_user())
        .arg(member.user.as_ref())
        .arg(unix_millis() + ttl_ms(inner))
        .arg(keep_ms(inner))
        .arg(inner.pubsub_channel(channel))
        .arg(channel)
        .arg(flags)
        .arg(unix_millis())
        .arg(inner.config.webhook_queue_size);
    call
}

/// A script run for this node's occupancy of `channel`.
fn node_call<'s>(
    script: &'s redis::Script,
    inner: &Inner,
    channel: &str,
    flags: &str,
) -> redis::ScriptInvocation<'s> {
    let mut call = script.prepare_invoke();
    call.key(inner.occupancy_key(channel))
        .key(inner.key("ocx"))
        .key(inner.channel_flags_key(channel))
        .arg(inner.node.as_ref())
        .arg(unix_millis() + ttl_ms(inner))
        .arg(keep_ms(inner))
        .arg(channel)
        .arg(flags)
        .arg(unix_millis())
        .arg(inner.config.webhook_queue_size);
    call
}

/// A join of `member` in `channel`; returns the notices dropped.
pub(super) fn join(
    con: &mut redis::Connection,
    inner: &Inner,
    scripts: &Scripts,
    channel: &str,
    flags: &str,
    member: &Member,
) -> redis::RedisResult<u64> {
    let answer: Vec<i64> = member_call(&scripts.join, inner, channel, flags, member).invoke(con)?;
    Ok(count(&answer, 1))
}

/// A leave of `member` from `channel`; returns the notices dropped.
pub(super) fn leave(
    con: &mut redis::Connection,
    inner: &Inner,
    scripts: &Scripts,
    channel: &str,
    flags: &str,
    member: &Member,
) -> redis::RedisResult<u64> {
    let answer: Vec<i64> =
        member_call(&scripts.leave, inner, channel, flags, member).invoke(con)?;
    Ok(count(&answer, 1))
}

/// This node's first subscriber of `channel` came; returns the notices
/// dropped.
pub(super) fn occupy(
    con: &mut redis::Connection,
    inner: &Inner,
    scripts: &Scripts,
    channel: &str,
    flags: &str,
) -> redis::RedisResult<u64> {
    let answer: Vec<i64> = node_call(&scripts.occupy, inner, channel, flags).invoke(con)?;
    Ok(count(&answer, 1))
}

/// This node's last subscriber of `channel` left; returns the notices
/// dropped.
pub(super) fn vacate(
    con: &mut redis::Connection,
    inner: &Inner,
    scripts: &Scripts,
    channel: &str,
    flags: &str,
) -> redis::RedisResult<u64> {
    let answer: Vec<i64> = node_call(&scripts.vacate, inner, channel, flags).invoke(con)?;
    Ok(count(&answer, 1))
}

/// Renews this node's entries in one round trip (re-entering, as joins,
/// any that were swept while the node could not reach Redis for longer
/// than the TTL), then sweeps out the entries of nodes that died.
/// Returns the notices dropped.
pub(super) fn refresh(
    inner: &Inner,
    scripts: &Scripts,
    con: &mut redis::Connection,
) -> redis::RedisResult<u64> {
    let members = inner.table.all_presence();
    let occupied = inner.table.occupied_channels();
    if !members.is_empty() || !occupied.is_empty() {
        // Loaded first: the pipeline runs them by hash.
        for script in [&scripts.join, &scripts.occupy] {
            script.prepare_invoke().load(con)?;
        }
        let mut renew = redis::pipe();
        for (channel, options, entries) in &members {
            let flags = channel_flags(inner, channel, options);
            for member in entries {
                renew.invoke_script(&member_call(&scripts.join, inner, channel, &flags, member));
            }
        }
        for (channel, options) in &occupied {
            let flags = channel_flags(inner, channel, options);
            renew.invoke_script(&node_call(&scripts.occupy, inner, channel, &flags));
        }
        let answers: Vec<Vec<i64>> = renew.query(con)?;
        let dropped: u64 = answers.iter().map(|answer| count(answer, 1)).sum();
        return Ok(dropped + sweep(inner, scripts, con)?);
    }
    sweep(inner, scripts, con)
}

/// Sweeps expired entries (of nodes that died) out of every channel, a
/// batch at a time. Returns the notices dropped.
fn sweep(inner: &Inner, scripts: &Scripts, con: &mut redis::Connection) -> redis::RedisResult<u64> {
    let mut dropped = 0;
    loop {
        let answer: Vec<i64> = scripts
            .sweep
            .key(inner.key("prx"))
            .key(inner.key("ocx"))
            .arg(unix_millis())
            .arg(SWEEP_BATCH)
            .arg(&inner.prefix)
            .arg(unix_millis())
            .arg(inner.config.webhook_queue_size)
            .invoke(con)?;
        dropped += count(&answer, 2);
        if count(&answer, 0) < SWEEP_BATCH as u64 && count(&answer, 1) < SWEEP_BATCH as u64 {
            return Ok(dropped);
        }
    }
}

/// The channel's members on every node; entries of nodes that died are
/// swept first.
pub(super) fn members(
    con: &mut redis::Connection,
    inner: &Inner,
    scripts: &Scripts,
    channel: &str,
) -> redis::RedisResult<(Vec<Member>, u64)> {
    let dropped = sweep(inner, scripts, con)?;
    let (hash, _) = inner.presence_keys(channel);
    let entries: Vec<(String, String)> = redis::cmd("HGETALL").arg(&hash).query(con)?;
    let members = entries
        .into_iter()
        .filter_map(|(client, encoded)| Member::decode_user(Arc::from(client.as_str()), &encoded))
        .collect();
    Ok((members, dropped))
}
