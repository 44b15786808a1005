//! The Lua scripts that keep a channel's epoch, offsets and history consistent in Redis: one script, one atomic step.

/// A publication: next offset, history, and `PUBLISH` to the nodes.
/// KEYS: meta hash, history stream. ARGV: data, history size, history TTL
/// in ms, epoch for a new channel, pub/sub channel, exclude, idle TTL in ms,
/// the publish command (`PUBLISH`, or `SPUBLISH` in a cluster), the node,
/// the node's number for this publication. Run again with the same node and
/// number (a cluster client retries a call whose answer was lost when a
/// master failed over), it publishes nothing and answers the first run's
/// offset: the meta hash keeps each node's last number and offset.
pub(super) const PUBLISH_SCRIPT: &str = r"
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'n:' .. ARGV[9])
local epoch = meta[1]
if epoch and meta[2] then
  local colon = string.find(meta[2], ':', 1, true)
  if colon and string.sub(meta[2], 1, colon - 1) == ARGV[10] then
    return {epoch, tonumber(string.sub(meta[2], colon + 1))}
  end
end
if not epoch then
  epoch = ARGV[4]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'top', 0)
end
local offset = redis.call('HINCRBY', KEYS[1], 'top', 1)
redis.call('HSET', KEYS[1], 'n:' .. ARGV[9], ARGV[10] .. ':' .. offset)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    /// A `redis-server` of the test's own (installed by `./.ci/run`),
    /// killed when dropped.
    struct Server(Child);

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn server() -> (Server, redis::Connection) {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let server = Server(
            Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server runs (install the Debian package redis-server)"),
        );
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(connection) = client.get_connection() {
                return (server, connection);
            }
            assert!(Instant::now() < deadline, "redis-server answers");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn publish(con: &mut redis::Connection, node: &str, number: u64, data: &str) -> (String, u64) {
        redis::Script::new(PUBLISH_SCRIPT)
            .key("t:{c}:m")
            .key("t:{c}:h")
            .arg(data)
            .arg(100)
            .arg(60_000)
            .arg("0000000a")
            .arg("t:{c}:pub")
            .arg("")
            .arg(60_000)
            .arg("PUBLISH")
            .arg(node)
            .arg(number)
            .invoke(con)
            .unwrap()
    }

    #[test]
    fn a_publish_run_again_with_its_number_publishes_nothing() {
        let (_server, mut con) = server();
        let con = &mut con;
        assert_eq!(publish(con, "n1", 7, "a"), ("0000000a".into(), 1));
        // The same call again (a cluster client's retry): the first offset.
        assert_eq!(publish(con, "n1", 7, "a"), ("0000000a".into(), 1));
        // Another node's publication with the same number is its own.
        assert_eq!(publish(con, "n2", 7, "b"), ("0000000a".into(), 2));
        assert_eq!(publish(con, "n1", 8, "c"), ("0000000a".into(), 3));
        let kept: usize = redis::cmd("XLEN").arg("t:{c}:h").query(con).unwrap();
        assert_eq!(kept, 3);
    }

    #[test]
    fn a_channel_rewinds_only_when_redis_is_behind_in_the_same_epoch() {
        let (_server, mut con) = server();
        let con = &mut con;
        for number in 1..=5 {
            publish(con, "n1", number, "x");
        }
        let rewind = |con: &mut redis::Connection, epoch: &str, delivered: u64| -> u64 {
            redis::Script::new(REWIND_SCRIPT)
                .key("t:{c}:m")
                .key("t:{c}:h")
                .arg(epoch)
                .arg(delivered)
                .arg("0000000b")
                .invoke(con)
                .unwrap()
        };
        // Not behind, or another epoch: nothing changes.
        assert_eq!(rewind(con, "0000000a", 5), 0);
        assert_eq!(rewind(con, "00000009", 9), 0);
        // Behind: a new epoch, from nothing.
        assert_eq!(rewind(con, "0000000a", 9), 1);
        assert_eq!(publish(con, "n1", 6, "y"), ("0000000b".into(), 1));
        let kept: usize = redis::cmd("XLEN").arg("t:{c}:h").query(con).unwrap();
        assert_eq!(kept, 1);
    }
}
