//! Who is in a channel across nodes, in Redis: presence members (with connection counts per user) and, where webhooks ask for it, which nodes have subscribers; each entry expires unless its node renews it, so the members and subscribers of a node that dies leave, announced and noticed once, by whichever node sweeps first.
//!
//! Every change is one Lua script on the channel's own keys (one hash
//! slot in a cluster), so a transition (a user's first connection, a
//! channel's first node) is seen by exactly one script run, which
//! announces it to the nodes (`J:` on the channel's pub/sub channel) and
//! says which notice it makes; the command thread then queues the notice
//! on the scope's stream (another slot). Entries expire through a sorted
//! set per channel and kind; an index of all entries for the whole
//! deployment (`prx`, `ocx`) says which channels to sweep, so a channel
//! whose every node died is swept too.

use super::{Commands, Inner};
use crate::broker::notice::{NoticeKind, scope_of};
use crate::clock::{millis, unix_millis};
use crate::config::NamespaceOptions;
use crate::types::Member;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// Expired index entries one sweep takes on; the rest wait for the next.
const SWEEP_BATCH: usize = 1000;

/// How often each node renews its entries and sweeps the expired ones,
/// for a presence TTL of `ttl` (`presence_ttl_secs`): six times per TTL.
/// A node that dies leaves entries that go within the TTL and a sixth of
/// it after its last renewal.
pub(super) fn refresh_interval(ttl: Duration) -> Duration {
    ttl / 6
}

/// Shared by the scripts below (prepended to each): a channel's flag
/// (`channel_flags`).
const FLAG_LUA: &str = r"
local function flag(flags, at) return string.sub(flags, at, at) == '1' end
";

/// A join, or the renewal of an entry. KEYS: members hash, user counts,
/// the channel's expiry set of members, the channel's flags. ARGV: client,
/// user and info (`Member::encode_user`), user, expiry (Unix ms), keep
/// (ms), pub/sub channel, flags, publish command. A new entry counts
/// toward its user; the user's first connection is announced
/// (`J:CLIENT:1F:USER`, `F` = 1) and noticed as the flags ask. Returns
/// `{new, notice}` (`member_added` or empty).
const JOIN_SCRIPT: &str = r"
local new = redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
redis.call('SET', KEYS[4], ARGV[7], 'PX', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('PEXPIRE', KEYS[3], ARGV[5])
local notice = ''
if new == 1 then
  local first = 0
  if redis.call('HINCRBY', KEYS[2], ARGV[3], 1) == 1 then first = 1 end
  if flag(ARGV[7], 1) then
    redis.call(ARGV[8], ARGV[6], 'J:' .. ARGV[1] .. ':1' .. first .. ':' .. ARGV[2])
  end
  if first == 1 and flag(ARGV[7], 2) then notice = 'member_added' end
end
return {new, notice, ARGV[7]}
";

/// A leave: the entry removed, its user's count lowered; the user's last
/// connection is announced (`J:CLIENT:0L:USER`, `L` = 1) and noticed as
/// the flags ask. KEYS and ARGV as [`JOIN_SCRIPT`]. Returns `{left,
/// notice, flags}` (`member_removed` or empty).
const LEAVE_SCRIPT: &str = r"
local value = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if not value then return {0, '', ''} end
redis.call('HDEL', KEYS[1], ARGV[1])
local last = 0
if redis.call('HINCRBY', KEYS[2], ARGV[3], -1) <= 0 then
  redis.call('HDEL', KEYS[2], ARGV[3])
  last = 1
end
local flags = redis.call('GET', KEYS[4]) or ARGV[7]
if flag(flags, 1) then
  redis.call(ARGV[8], ARGV[6], 'J:' .. ARGV[1] .. ':0' .. last .. ':' .. value)
end
local notice = ''
if last == 1 and flag(flags, 3) then notice = 'member_removed' end
return {1, notice, flags}
";

/// A node has subscribers of a channel (its first one came, or a
/// renewal). KEYS: the channel's nodes hash, its expiry set of nodes, its
/// flags. ARGV: node, expiry, keep, flags. The channel's first node
/// notices `channel_occupied`. Returns `{new, notice, flags}`.
const OCCUPY_SCRIPT: &str = r"
local new = redis.call('HSET', KEYS[1], ARGV[1], 1)
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[3])
local notice = ''
if new == 1 and redis.call('HLEN', KEYS[1]) == 1 and flag(ARGV[4], 4) then
  notice = 'channel_occupied'
end
return {new, notice, ARGV[4]}
";

/// A node's last subscriber of a channel left. KEYS and ARGV as
/// [`OCCUPY_SCRIPT`]. The channel's last node notices `channel_vacated`.
/// Returns `{left, notice, flags}`.
const VACATE_SCRIPT: &str = r"
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return {0, '', ''} end
local flags = redis.call('GET', KEYS[3]) or ARGV[4]
local notice = ''
if redis.call('HLEN', KEYS[1]) == 0 and flag(flags, 5) then notice = 'channel_vacated' end
return {1, notice, flags}
";

/// A channel's entries that their nodes stopped renewing (the node died)
/// leave: members as leaves (announced; `member_removed` for a user's
/// last), then nodes (`channel_vacated` for the channel's last). KEYS:
/// members hash, user counts, expiry set of members, nodes hash, expiry
/// set of nodes, flags. ARGV: now (Unix ms), pub/sub channel, publish
/// command. Returns `{flags, notice1, user1, ...}` (user empty for a
/// channel notice).
const SWEEP_SCRIPT: &str = r"
local flags = redis.call('GET', KEYS[6]) or ''
local out = {flags}
for _, client in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1])) do
  redis.call('ZREM', KEYS[3], client)
  local value = redis.call('HGET', KEYS[1], client)
  if value then
    redis.call('HDEL', KEYS[1], client)
    local colon = string.find(value, ':', 1, true)
    local user = string.sub(value, colon + 1, colon + tonumber(string.sub(value, 1, colon - 1)))
    local last = 0
    if redis.call('HINCRBY', KEYS[2], user, -1) <= 0 then
      redis.call('HDEL', KEYS[2], user)
      last = 1
    end
    if flag(flags, 1) then
      redis.call(ARGV[3], ARGV[2], 'J:' .. client .. ':0' .. last .. ':' .. value)
    end
    if last == 1 and flag(flags, 3) then
      table.insert(out, 'member_removed')
      table.insert(out, user)
    end
  end
end
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', ARGV[1])) do
  redis.call('ZREM', KEYS[5], node)
  if redis.call('HDEL', KEYS[4], node) == 1 and redis.call('HLEN', KEYS[4]) == 0
    and flag(flags, 5) then
    table.insert(out, 'channel_vacated')
    table.insert(out, '')
  end
end
return out
";

/// Index entries (`CHANNEL\nCLIENT` or `CHANNEL\nNODE`) that are still
/// expired leave the index: one renewed meanwhile stays. KEYS: the index.
/// ARGV: now (Unix ms), then the entries.
const UNINDEX_SCRIPT: &str = r"
local gone = 0
for i = 2, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) <= tonumber(ARGV[1]) then
    gone = gone + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return gone
";

/// A notice from a front end (a client event, a cache miss) or from a
/// script above, for a scope's stream, unless it is full. KEYS: the
/// stream. ARGV: bound, then field and value pairs. Returns 1 if it was
/// dropped.
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
    unindex: redis::Script,
    pub(super) notify: redis::Script,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
        let with_flag = |body: &str| redis::Script::new(&format!("{FLAG_LUA}{body}"));
        Scripts {
            join: with_flag(JOIN_SCRIPT),
            leave: with_flag(LEAVE_SCRIPT),
            occupy: with_flag(OCCUPY_SCRIPT),
            vacate: with_flag(VACATE_SCRIPT),
            sweep: with_flag(SWEEP_SCRIPT),
            unindex: redis::Script::new(UNINDEX_SCRIPT),
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

/// What a presence script answered: whether it changed anything, the
/// notice it makes (empty: none) and the channel's flags.
type Outcome = (i64, String, String);

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
        .key(inner.channel_key(channel, "prx"))
        .key(inner.channel_flags_key(channel))
        .arg(member.client.as_ref())
        .arg(member.encode_user())
        .arg(member.user.as_ref())
        .arg(unix_millis() + ttl_ms(inner))
        .arg(keep_ms(inner))
        .arg(inner.pubsub_channel(channel))
        .arg(flags)
        .arg(inner.publish_command());
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
        .key(inner.channel_key(channel, "ocx"))
        .key(inner.channel_flags_key(channel))
        .arg(inner.node.as_ref())
        .arg(unix_millis() + ttl_ms(inner))
        .arg(keep_ms(inner))
        .arg(flags);
    call
}

/// The index entry of a member or a node of a channel.
fn index_entry(channel: &str, who: &str) -> String {
    format!("{channel}\n{who}")
}

/// Puts entries in a deployment-wide index (`prx` or `ocx`), each with its
/// expiry; before the channel's own entries are written, so that a node
/// that dies between the two leaves nothing unswept.
fn index(
    inner: &Inner,
    con: &mut Commands,
    which: &str,
    entries: &[String],
) -> redis::RedisResult<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let expiry = unix_millis() + ttl_ms(inner);
    let mut add = redis::cmd("ZADD");
    add.arg(inner.key(which));
    for entry in entries {
        add.arg(expiry).arg(entry);
    }
    add.query::<()>(con)
}

/// Queues the notice a script made, on the stream its channel's flags name.
fn notify(
    inner: &Inner,
    scripts: &Scripts,
    con: &mut Commands,
    flags: &str,
    kind: &str,
    channel: &str,
    user: Option<&str>,
) -> redis::RedisResult<u64> {
    let Some((_, stream)) = flags.split_once('|') else { return Ok(0) };
    if kind.is_empty() || stream.is_empty() {
        return Ok(0);
    }
    let mut call = scripts.notify.key(stream);
    call.arg(inner.config.webhook_queue_size)
        .arg("k")
        .arg(kind)
        .arg("c")
        .arg(channel)
        .arg("t")
        .arg(unix_millis());
    if let Some(user) = user {
        call.arg("u").arg(user);
    }
    call.invoke(con)
}

/// A join of `member` in `channel`; returns the notices dropped.
pub(super) fn join(
    con: &mut Commands,
    inner: &Inner,
    scripts: &Scripts,
    channel: &str,
    flags: &str,
    member: &Member,
) -> redis::RedisResult<u64> {
    index(inner, con, "prx", &[index_entry(channel, &member.client)])?;
    let (_, notice, flags): Outcome =
        member_call(&scripts.join, inner, channel, flags, member).invoke(con)?;
    notify(inner, scripts, con, &flags, &notice, channel, Some(&member.user))
}

/// A leave of `member` from `channel`; returns the notices dropped.
pub(super) fn leave(
    con: &mut Commands,
    inner: &Inner,
    scripts: &Scripts,
    channel: &str,
    flags: &str,
    member: &Member,
) -> redis::RedisResult<u64> {
    let (_, notice, flags): Outcome =
        member_call(&scripts.leave, inner, channel, flags, member).invoke(con)?;
    redis::cmd("ZREM")
        .arg(inner.key("prx"))
        .arg(index_entry(channel, &member.client))
        .query::<()>(con)?;
    notify(inner, scripts, con, &flags, &notice, channel, Some(&member.user))
}

/// This node's first subscriber of `channel` came; returns the notices
/// dropped.
pub(super) fn occupy(
    con: &mut Commands,
    inner: &Inner,
    scripts: &Scripts,
    channel: &str,
    flags: &str,
) -> redis::RedisResult<u64> {
    index(inner, con, "ocx", &[index_entry(channel, &inner.node)])?;
    let (_, notice, flags): Outcome =
        node_call(&scripts.occupy, inner, channel, flags).invoke(con)?;
    notify(inner, scripts, con, &flags, &notice, channel, None)
}

/// This node's last subscriber of `channel` left; returns the notices
/// dropped.
pub(super) fn vacate(
    con: &mut Commands,
    inner: &Inner,
    scripts: &Scripts,
    channel: &str,
    flags: &str,
) -> redis::RedisResult<u64> {
    let (_, notice, flags): Outcome =
        node_call(&scripts.vacate, inner, channel, flags).invoke(con)?;
    redis::cmd("ZREM")
        .arg(inner.key("ocx"))
        .arg(index_entry(channel, &inner.node))
        .query::<()>(con)?;
    notify(inner, scripts, con, &flags, &notice, channel, None)
}

/// Runs `calls` with as few round trips as the connection allows: one
/// pipeline on a single instance, one per hash slot in a cluster (a
/// pipeline goes to one master). `slot_of` names each call's channel.
fn run_grouped(
    con: &mut Commands,
    calls: &[(String, redis::ScriptInvocation<'_>)],
) -> redis::RedisResult<Vec<Outcome>> {
    let mut groups: std::collections::BTreeMap<u16, Vec<&redis::ScriptInvocation<'_>>> =
        std::collections::BTreeMap::new();
    for (channel, call) in calls {
        let slot = match con {
            Commands::Single(_) => 0,
            Commands::Cluster { .. } => super::cluster::key_slot(channel.as_bytes()),
        };
        groups.entry(slot).or_default().push(call);
    }
    let mut outcomes = Vec::with_capacity(calls.len());
    for group in groups.values() {
        let mut pipe = redis::pipe();
        for call in group {
            pipe.invoke_script(call);
        }
        outcomes.extend(pipe.query::<Vec<Outcome>>(con)?);
    }
    Ok(outcomes)
}

/// Renews this node's entries in few round trips (re-entering, as joins,
/// any that were swept while the node could not reach Redis for longer
/// than the TTL), then sweeps out the entries of nodes that died.
/// Returns the notices dropped.
pub(super) fn refresh(
    inner: &Inner,
    scripts: &Scripts,
    con: &mut Commands,
) -> redis::RedisResult<u64> {
    let members = inner.table.all_presence();
    let occupied = inner.table.occupied_channels();
    let mut dropped = 0;
    if !members.is_empty() || !occupied.is_empty() {
        // Loaded first: the pipelines run them by hash.
        for script in [&scripts.join, &scripts.occupy] {
            script.prepare_invoke().load(con)?;
        }
        let mut member_entries = Vec::new();
        let mut calls = Vec::new();
        let mut notices = Vec::new();
        for (channel, options, entries) in &members {
            let flags = channel_flags(inner, channel, options);
            for member in entries {
                member_entries.push(index_entry(channel, &member.client));
                let tag = inner.channel_key(channel, "");
                calls.push((tag, member_call(&scripts.join, inner, channel, &flags, member)));
                notices.push((channel.to_string(), Some(member.user.to_string())));
            }
        }
        let node_entries: Vec<String> =
            occupied.iter().map(|(channel, _)| index_entry(channel, &inner.node)).collect();
        for (channel, options) in &occupied {
            let flags = channel_flags(inner, channel, options);
            let tag = inner.channel_key(channel, "");
            calls.push((tag, node_call(&scripts.occupy, inner, channel, &flags)));
            notices.push((channel.to_string(), None));
        }
        index(inner, con, "prx", &member_entries)?;
        index(inner, con, "ocx", &node_entries)?;
        let outcomes = run_grouped(con, &calls)?;
        for ((channel, user), (_, notice, flags)) in notices.iter().zip(&outcomes) {
            dropped += notify(inner, scripts, con, flags, notice, channel, user.as_deref())?;
        }
    }
    Ok(dropped + sweep(inner, scripts, con)?)
}

/// Sweeps expired entries (of nodes that died) out of every channel the
/// index names, a batch at a time. Returns the notices dropped.
fn sweep(inner: &Inner, scripts: &Scripts, con: &mut Commands) -> redis::RedisResult<u64> {
    let mut dropped = 0;
    loop {
        let now = unix_millis();
        let expired = |con: &mut Commands, which: &str| -> redis::RedisResult<Vec<String>> {
            redis::cmd("ZRANGEBYSCORE")
                .arg(inner.key(which))
                .arg("-inf")
                .arg(now)
                .arg("LIMIT")
                .arg(0)
                .arg(SWEEP_BATCH)
                .query(con)
        };
        let members = expired(con, "prx")?;
        let nodes = expired(con, "ocx")?;
        let channels: BTreeSet<&str> = members
            .iter()
            .chain(&nodes)
            .filter_map(|entry| entry.split_once('\n').map(|(channel, _)| channel))
            .collect();
        for channel in channels {
            let (hash, users) = inner.presence_keys(channel);
            let answer: Vec<String> = scripts
                .sweep
                .key(hash)
                .key(users)
                .key(inner.channel_key(channel, "prx"))
                .key(inner.occupancy_key(channel))
                .key(inner.channel_key(channel, "ocx"))
                .key(inner.channel_flags_key(channel))
                .arg(now)
                .arg(inner.pubsub_channel(channel))
                .arg(inner.publish_command())
                .invoke(con)?;
            let Some((flags, notices)) = answer.split_first() else { continue };
            for pair in notices.chunks(2) {
                let [kind, user] = pair else { continue };
                let user = Some(user.as_str()).filter(|user| !user.is_empty());
                dropped += notify(inner, scripts, con, flags, kind, channel, user)?;
            }
        }
        for (which, entries) in [("prx", &members), ("ocx", &nodes)] {
            if !entries.is_empty() {
                scripts.unindex.key(inner.key(which)).arg(now).arg(entries).invoke::<u64>(con)?;
            }
        }
        if members.len() < SWEEP_BATCH && nodes.len() < SWEEP_BATCH {
            return Ok(dropped);
        }
    }
}

/// The channel's members on every node; entries of nodes that died are
/// swept first.
pub(super) fn members(
    con: &mut Commands,
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
