//! Presence in Redis: a hash of members and a sorted set of expiries per channel, refreshed by each node for its own clients, so a node that dies leaves entries that expire.

use super::Inner;
use crate::clock::{millis, unix_millis};
use crate::types::Member;
use std::sync::Arc;
use std::time::Duration;

/// How long a presence entry lives in Redis without being refreshed: a node
/// that dies without cleaning up leaves entries that go after this.
pub const PRESENCE_TTL: Duration = Duration::from_secs(60);
/// How often each node refreshes its clients' presence entries.
pub(super) const PRESENCE_REFRESH: Duration = Duration::from_secs(20);

/// Writes (or renews) `member`'s entry in `channel`, expiring at `expires`
/// (Unix milliseconds).
pub(super) fn add(
    pipe: &mut redis::Pipeline,
    inner: &Inner,
    channel: &str,
    member: &Member,
    expires: u64,
) {
    let (hash, scores) = inner.presence_keys(channel);
    pipe.cmd("HSET").arg(&hash).arg(member.client.as_ref()).arg(member.user.as_ref()).ignore();
    pipe.cmd("ZADD").arg(&scores).arg(expires).arg(member.client.as_ref()).ignore();
}

/// Removes `member`'s entry from `channel`.
pub(super) fn remove(pipe: &mut redis::Pipeline, inner: &Inner, channel: &str, member: &Member) {
    let (hash, scores) = inner.presence_keys(channel);
    pipe.cmd("HDEL").arg(&hash).arg(member.client.as_ref()).ignore();
    pipe.cmd("ZREM").arg(&scores).arg(member.client.as_ref()).ignore();
}

/// Keeps a channel's presence keys for two presence lifetimes.
pub(super) fn keep(pipe: &mut redis::Pipeline, inner: &Inner, channel: &str) {
    let (hash, scores) = inner.presence_keys(channel);
    let keep_ms = 2 * millis(PRESENCE_TTL);
    pipe.cmd("PEXPIRE").arg(&hash).arg(keep_ms).ignore();
    pipe.cmd("PEXPIRE").arg(&scores).arg(keep_ms).ignore();
}

/// Publishes a join or leave for every node's subscribers of `channel`
/// (`J:CLIENT:JOINED:USER`: the client is left out on its own node).
pub(super) fn announce(
    pipe: &mut redis::Pipeline,
    inner: &Inner,
    joined: bool,
    channel: &str,
    member: &Member,
) {
    let joined = if joined { "1" } else { "0" };
    pipe.cmd("PUBLISH")
        .arg(inner.pubsub_channel(channel))
        .arg(format!("J:{}:{joined}:{}", member.client, member.user))
        .ignore();
}

/// A join: the entry, the keys kept, and the announcement if asked.
pub(super) fn join(
    con: &mut redis::Connection,
    inner: &Inner,
    channel: &str,
    member: &Member,
    announce_it: bool,
) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    pipe.atomic();
    add(&mut pipe, inner, channel, member, unix_millis() + millis(PRESENCE_TTL));
    keep(&mut pipe, inner, channel);
    if announce_it {
        announce(&mut pipe, inner, true, channel, member);
    }
    pipe.query(con)
}

/// A leave: the entry removed, and the announcement if asked.
pub(super) fn leave(
    con: &mut redis::Connection,
    inner: &Inner,
    channel: &str,
    member: &Member,
    announce_it: bool,
) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    pipe.atomic();
    remove(&mut pipe, inner, channel, member);
    if announce_it {
        announce(&mut pipe, inner, false, channel, member);
    }
    pipe.query(con)
}

/// Writes this node's presence entries again with a fresh expiry.
pub(super) fn refresh(inner: &Inner, con: &mut redis::Connection) -> redis::RedisResult<()> {
    let entries = inner.table.all_presence();
    if entries.is_empty() {
        return Ok(());
    }
    let expires = unix_millis() + millis(PRESENCE_TTL);
    let mut pipe = redis::pipe();
    for (channel, members) in &entries {
        for member in members {
            add(&mut pipe, inner, channel, member, expires);
        }
        keep(&mut pipe, inner, channel);
    }
    pipe.query(con)
}

/// The channel's members on every node; entries of nodes that died without
/// cleaning up have expired and are dropped.
pub(super) fn members(
    con: &mut redis::Connection,
    inner: &Inner,
    channel: &str,
) -> redis::RedisResult<Vec<Member>> {
    let (hash, scores) = inner.presence_keys(channel);
    let now = unix_millis();
    let expired: Vec<String> =
        redis::cmd("ZRANGEBYSCORE").arg(&scores).arg("-inf").arg(now).query(con)?;
    if !expired.is_empty() {
        redis::pipe()
            .cmd("ZREM")
            .arg(&scores)
            .arg(&expired)
            .ignore()
            .cmd("HDEL")
            .arg(&hash)
            .arg(&expired)
            .ignore()
            .query::<()>(con)?;
    }
    let clients: Vec<String> =
        redis::cmd("ZRANGEBYSCORE").arg(&scores).arg(now).arg("+inf").query(con)?;
    let users: Vec<Option<String>> = if clients.is_empty() {
        Vec::new()
    } else {
        redis::cmd("HMGET").arg(&hash).arg(&clients).query(con)?
    };
    Ok(clients
        .iter()
        .zip(users)
        .filter_map(|(client, user)| {
            Some(Member { client: Arc::from(client.as_str()), user: Arc::from(user?.as_str()) })
        })
        .collect())
}
