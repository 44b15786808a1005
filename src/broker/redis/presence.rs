//! Presence in Redis: a hash of members, a sorted set of expiries and connection counts per user, per channel, refreshed by each node for its own clients, so that a node that dies leaves entries that expire and are announced as leaves.

use super::Inner;
use crate::clock::{millis, unix_millis};
use crate::types::Member;
use std::sync::Arc;
use std::time::Duration;

/// How often each node refreshes its clients' presence entries and sweeps
/// out the expired entries of other nodes, for a presence TTL of `ttl`
/// (`presence_ttl_secs`): six times per TTL. A node that dies leaves its
/// members' entries, which leave (announced) within the TTL and a sixth of
/// it after its last refresh.
pub(super) fn refresh_interval(ttl: Duration) -> Duration {
    ttl / 6
}

/// A join, or the renewal of an entry: the entry and its expiry written,
/// the keys kept; a new entry counts toward its user and is announced
/// (`J:CLIENT:1F:USER` with `F` = 1 for the user's first connection) when
/// asked. KEYS: members hash, expiry set, user counts. ARGV: client, user
/// and info (`Member::encode_user`), user, expiry (Unix ms), keep (ms),
/// pub/sub channel, announce (`1`).
const JOIN_SCRIPT: &str = r"
local new = redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[5]) end
if new == 1 then
  local first = 0
  if redis.call('HINCRBY', KEYS[3], ARGV[3], 1) == 1 then first = 1 end
  if ARGV[7] == '1' then
    redis.call('PUBLISH', ARGV[6], 'J:' .. ARGV[1] .. ':1' .. first .. ':' .. ARGV[2])
  end
end
return new
";

/// A leave: the entry removed, its user's count lowered, and the leave
/// announced when asked (`J:CLIENT:0L:USER`, `L` = 1 for the user's last
/// connection). KEYS and ARGV as [`JOIN_SCRIPT`] (no expiry).
const LEAVE_SCRIPT: &str = r"
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local last = 0
if redis.call('HINCRBY', KEYS[3], ARGV[3], -1) <= 0 then
  redis.call('HDEL', KEYS[3], ARGV[3])
  last = 1
end
if ARGV[7] == '1' then
  redis.call('PUBLISH', ARGV[6], 'J:' .. ARGV[1] .. ':0' .. last .. ':' .. value)
end
return 1
";

/// Entries whose node stopped renewing them (it died) leave, each
/// announced like a leave: whichever node sweeps first announces it, once.
/// KEYS as [`JOIN_SCRIPT`]. ARGV: now (Unix ms), pub/sub channel, announce.
const SWEEP_SCRIPT: &str = r"
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
for _, client in ipairs(expired) do
  redis.call('ZREM', KEYS[2], client)
  local value = redis.call('HGET', KEYS[1], client)
  if value then
    redis.call('HDEL', KEYS[1], client)
    local colon = string.find(value, ':', 1, true)
    local user = string.sub(value, colon + 1, colon + tonumber(string.sub(value, 1, colon - 1)))
    local last = 0
    if redis.call('HINCRBY', KEYS[3], user, -1) <= 0 then
      redis.call('HDEL', KEYS[3], user)
      last = 1
    end
    if ARGV[3] == '1' then
      redis.call('PUBLISH', ARGV[2], 'J:' .. client .. ':0' .. last .. ':' .. value)
    end
  end
end
return #expired
";

/// The presence scripts, loaded once per command thread.
pub(super) struct Scripts {
    join: redis::Script,
    leave: redis::Script,
    sweep: redis::Script,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
        Scripts {
            join: redis::Script::new(JOIN_SCRIPT),
            leave: redis::Script::new(LEAVE_SCRIPT),
            sweep: redis::Script::new(SWEEP_SCRIPT),
        }
    }
}

/// How long an entry lives without being refreshed.
fn ttl_ms(inner: &Inner) -> u64 {
    millis(inner.config.presence_ttl)
}

/// How long a channel's presence keys outlive their last write.
fn keep_ms(inner: &Inner) -> u64 {
    2 * ttl_ms(inner)
}

/// `1` or `0`, as the scripts take a flag.
fn flag(on: bool) -> &'static str {
    if on { "1" } else { "0" }
}

/// A join of `member` in `channel`.
pub(super) fn join(
    con: &mut redis::Connection,
    inner: &Inner,
    scripts: &Scripts,
    channel: &str,
    member: &Member,
    announce: bool,
) -> redis::RedisResult<()> {
    let (hash, scores, users) = inner.presence_keys(channel);
    scripts
        .join
        .key(hash)
        .key(scores)
        .key(users)
        .arg(member.client.as_ref())
        .arg(member.encode_user())
        .arg(member.user.as_ref())
        .arg(unix_millis() + ttl_ms(inner))
        .arg(keep_ms(inner))
        .arg(inner.pubsub_channel(channel))
        .arg(flag(announce))
        .invoke::<i64>(con)
        .map(drop)
}

/// A leave of `member` from `channel`.
pub(super) fn leave(
    con: &mut redis::Connection,
    inner: &Inner,
    scripts: &Scripts,
    channel: &str,
    member: &Member,
    announce: bool,
) -> redis::RedisResult<()> {
    let (hash, scores, users) = inner.presence_keys(channel);
    scripts
        .leave
        .key(hash)
        .key(scores)
        .key(users)
        .arg(member.client.as_ref())
        .arg(member.encode_user())
        .arg(member.user.as_ref())
        .arg(0)
        .arg(0)
        .arg(inner.pubsub_channel(channel))
        .arg(flag(announce))
        .invoke::<i64>(con)
        .map(drop)
}

/// Renews this node's presence entries in one round trip, and sweeps the
/// entries other nodes stopped renewing (they died) out of the channels
/// this node has members in, in another. An entry of this node that was
/// swept meanwhile (Redis was out of reach for longer than the presence
/// TTL) joins again.
pub(super) fn refresh(
    inner: &Inner,
    scripts: &Scripts,
    con: &mut redis::Connection,
) -> redis::RedisResult<()> {
    let entries = inner.table.all_presence();
    if entries.is_empty() {
        return Ok(());
    }
    let sweep: String = redis::cmd("SCRIPT").arg("LOAD").arg(SWEEP_SCRIPT).query(con)?;
    let expires = unix_millis() + ttl_ms(inner);
    let now = unix_millis();
    let mut renew = redis::pipe();
    let mut sweeps = redis::pipe();
    for (channel, announce, members) in &entries {
        let (hash, scores, users) = inner.presence_keys(channel);
        for member in members {
            renew.cmd("HSETNX").arg(&hash).arg(member.client.as_ref()).arg(member.encode_user());
            renew.cmd("ZADD").arg(&scores).arg(expires).arg(member.client.as_ref()).ignore();
        }
        for key in [&hash, &scores, &users] {
            renew.cmd("PEXPIRE").arg(key).arg(keep_ms(inner)).ignore();
        }
        sweeps
            .cmd("EVALSHA")
            .arg(&sweep)
            .arg(3)
            .arg(&hash)
            .arg(&scores)
            .arg(&users)
            .arg(now)
            .arg(inner.pubsub_channel(channel))
            .arg(flag(*announce))
            .ignore();
    }
    let written: Vec<i64> = renew.query(con)?;
    // HSETNX wrote an entry that was gone: it was swept, so it joins anew.
    let mut written = written.into_iter();
    for (channel, announce, members) in &entries {
        for member in members {
            if written.next() == Some(1) {
                let (hash, _, _) = inner.presence_keys(channel);
                redis::cmd("HDEL").arg(&hash).arg(member.client.as_ref()).query::<()>(con)?;
                join(con, inner, scripts, channel, member, *announce)?;
            }
        }
    }
    sweeps.query::<()>(con)
}

/// Sweeps expired entries (of nodes that died) out of `channel`, each
/// announced as a leave.
fn sweep(
    con: &mut redis::Connection,
    inner: &Inner,
    scripts: &Scripts,
    channel: &str,
    announce: bool,
) -> redis::RedisResult<()> {
    let (hash, scores, users) = inner.presence_keys(channel);
    scripts
        .sweep
        .key(hash)
        .key(scores)
        .key(users)
        .arg(unix_millis())
        .arg(inner.pubsub_channel(channel))
        .arg(flag(announce))
        .invoke::<i64>(con)
        .map(drop)
}

/// The channel's members on every node; entries of nodes that died
/// without cleaning up are swept first (announced if `announce`).
pub(super) fn members(
    con: &mut redis::Connection,
    inner: &Inner,
    scripts: &Scripts,
    channel: &str,
    announce: bool,
) -> redis::RedisResult<Vec<Member>> {
    sweep(con, inner, scripts, channel, announce)?;
    let (hash, _, _) = inner.presence_keys(channel);
    let entries: Vec<(String, String)> = redis::cmd("HGETALL").arg(&hash).query(con)?;
    Ok(entries
        .into_iter()
        .filter_map(|(client, encoded)| Member::decode_user(Arc::from(client.as_str()), &encoded))
        .collect())
}
