//! The Lua scripts that keep a channel's epoch, offsets and history consistent in Redis: one script, one atomic step.

/// A publication: next offset, history, and `PUBLISH` to the nodes.
/// KEYS: meta hash, history stream. ARGV: data, history size, history TTL
/// in ms, epoch for a new channel, pub/sub channel, exclude, idle TTL in ms,
/// the publish command (`PUBLISH`, or `SPUBLISH` in a cluster).
pub(super) const PUBLISH_SCRIPT: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[4]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'top', 0)
end
local offset = redis.call('HINCRBY', KEYS[1], 'top', 1)
local size = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
if size > 0 then
  redis.call('XADD', KEYS[2], '*', 'o', offset, 'd', ARGV[1], 'x', ARGV[6])
  redis.call('XTRIM', KEYS[2], 'MAXLEN', size)
  local now = redis.call('TIME')
  local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  redis.call('XTRIM', KEYS[2], 'MINID', now_ms - ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
  redis.call('PEXPIRE', KEYS[1], ttl)
else
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[7]))
end
redis.call(ARGV[8], ARGV[5], epoch .. ':' .. offset .. ':' .. ARGV[6] .. ':' .. ARGV[1])
return {epoch, offset}
";

/// A channel's position, and what history holds after a client's position.
/// KEYS: meta hash, history stream. ARGV: epoch for a new channel, since
/// epoch (empty: none), since offset, TTL in ms to keep the channel for.
/// Returns `{epoch, top}` without a position; with one,
/// `{epoch, top, recovered, offset1, data1, ...}`.
pub(super) const POSITION_SCRIPT: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local top = 0
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'top', 0)
else
  top = tonumber(redis.call('HGET', KEYS[1], 'top'))
end
local keep = tonumber(ARGV[4])
if redis.call('PTTL', KEYS[1]) < keep then
  redis.call('PEXPIRE', KEYS[1], keep)
end
if ARGV[2] == '' then
  return {epoch, top}
end
local since = tonumber(ARGV[3])
if (ARGV[2] ~= epoch and since ~= 0) or since > top then
  return {epoch, top, 0}
end
if since == top then
  return {epoch, top, 1}
end
local out = {epoch, top, 1}
local first = true
for _, entry in ipairs(redis.call('XRANGE', KEYS[2], '-', '+')) do
  local offset = tonumber(entry[2][2])
  if offset > since then
    if first and offset > since + 1 then
      return {epoch, top, 0}
    end
    first = false
    table.insert(out, entry[2][2])
    table.insert(out, entry[2][4])
  end
end
if first then
  return {epoch, top, 0}
end
return out
";

/// The channel lost publications in Redis that a node had delivered (a
/// master failed over to a replica that had not received them): a new
/// epoch, so that every node tells its subscribers they start over rather
/// than take the next publications for repeats of the lost ones.
/// KEYS: meta hash, history stream. ARGV: the epoch the node knows, the
/// offset it delivered, the new epoch. Returns 1 if the epoch changed.
pub(super) const REWIND_SCRIPT: &str = r"
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'top')) >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'epoch', ARGV[3], 'top', 0)
redis.call('DEL', KEYS[2])
return 1
";
