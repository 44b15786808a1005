//! Redis Cluster: whether the seeds are one, which hash slot a key or shard channel is in, and which master owns each slot.

use std::time::Duration;

/// Hash slots of a Redis Cluster.
const SLOTS: u16 = 16_384;

/// The hash slot of `key`: CRC16 (XMODEM) of its hash tag (the part
/// between the first `{` and the next `}`, when not empty) or of the whole
/// key, modulo 16,384.
pub(super) fn key_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|b| *b == b'{').and_then(|open| {
        let rest = key.get(open + 1..)?;
        let close = rest.iter().position(|b| *b == b'}')?;
        rest.get(..close).filter(|tag| !tag.is_empty())
    });
    crc16(tagged.unwrap_or(key)) % SLOTS
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for byte in bytes {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// Whether the Redis at `client` runs in cluster mode (`INFO cluster`).
pub(super) fn is_cluster(client: &redis::Client, timeout: Duration) -> redis::RedisResult<bool> {
    let mut con = client.get_connection_with_timeout(timeout)?;
    con.set_read_timeout(Some(timeout))?;
    let info: String = redis::cmd("INFO").arg("cluster").query(&mut con)?;
    Ok(info.lines().any(|line| line.trim() == "cluster_enabled:1"))
}

/// Which master owns each slot, as `CLUSTER SLOTS` told it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Topology {
    /// `(first slot, last slot, index in masters)`, sorted.
    ranges: Vec<(u16, u16, usize)>,
    /// How many replicas each master has.
    replicas: Vec<usize>,
    /// `host:port` of each master.
    pub(super) masters: Vec<String>,
}

impl Topology {
    /// Reads the slot map from any node of the cluster.
    pub(super) fn read(con: &mut dyn redis::ConnectionLike) -> redis::RedisResult<Topology> {
        let value: redis::Value = redis::cmd("CLUSTER").arg("SLOTS").query(con)?;
        Topology::parse(&value).ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Parse, "unexpected CLUSTER SLOTS answer"))
        })
    }

    /// `[[first, last, [host, port, id, ...], replicas...], ...]`.
    fn parse(value: &redis::Value) -> Option<Topology> {
        let redis::Value::Array(entries) = value else { return None };
        let mut topology = Topology::default();
        for entry in entries {
            let redis::Value::Array(parts) = entry else { return None };
            let first = u16::try_from(super::pubsub::number(parts.first()?)?).ok()?;
            let last = u16::try_from(super::pubsub::number(parts.get(1)?)?).ok()?;
            let redis::Value::Array(master) = parts.get(2)? else { return None };
            let host = super::pubsub::text(master.first()?)?;
            let port = super::pubsub::number(master.get(1)?)?;
            let address = format!("{host}:{port}");
            let index = match topology.masters.iter().position(|known| *known == address) {
                Some(index) => index,
                None => {
                    topology.masters.push(address);
                    topology.replicas.push(parts.len().saturating_sub(3));
                    topology.masters.len() - 1
                }
            };
            topology.ranges.push((first, last, index));
        }
        topology.ranges.sort_unstable();
        Some(topology)
    }

    /// The index in `masters` of the master that owns `slot`, if any does.
    pub(super) fn owner(&self, slot: u16) -> Option<usize> {
        let at = self.ranges.partition_point(|(_, last, _)| *last < slot);
        self.ranges.get(at).filter(|(first, _, _)| *first <= slot).map(|(_, _, index)| *index)
    }

    /// How many replicas the master that owns `slot` has.
    pub(super) fn replicas_of(&self, slot: u16) -> usize {
        self.owner(slot).and_then(|index| self.replicas.get(index).copied()).unwrap_or(0)
    }

    /// Whether every slot has an owner.
    pub(super) fn is_complete(&self) -> bool {
        let mut next = 0u32;
        for (first, last, _) in &self.ranges {
            if u32::from(*first) != next {
                return false;
            }
            next = u32::from(*last) + 1;
        }
        next == u32::from(SLOTS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_cluster_specification() {
        // The examples of the Redis Cluster specification.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"foo"), 12_182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}".as_slice()));
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"));
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(key_slot(b"herald:{chat:1}:m"), key_slot(b"herald:{chat:1}:pub"));
    }

    #[test]
    fn a_slot_is_found_in_its_range() {
        let int = redis::Value::Int;
        let node = |port| {
            redis::Value::Array(vec![
                redis::Value::BulkString(b"127.0.0.1".to_vec()),
                int(port),
                redis::Value::BulkString(b"id".to_vec()),
            ])
        };
        let value = redis::Value::Array(vec![
            redis::Value::Array(vec![int(5461), int(10922), node(7001), node(7004)]),
            redis::Value::Array(vec![int(0), int(5460), node(7000)]),
            redis::Value::Array(vec![int(10923), int(16383), node(7002)]),
        ]);
        let topology = Topology::parse(&value).unwrap();
        assert!(topology.is_complete());
        let at = |slot| topology.owner(slot).map(|index| topology.masters[index].as_str());
        assert_eq!(at(0), Some("127.0.0.1:7000"));
        assert_eq!(at(5461), Some("127.0.0.1:7001"));
        assert_eq!(at(10922), Some("127.0.0.1:7001"));
        assert_eq!(at(16383), Some("127.0.0.1:7002"));
        assert_eq!((topology.replicas_of(6000), topology.replicas_of(0)), (1, 0));
        let partial = Topology::parse(&redis::Value::Array(vec![redis::Value::Array(vec![
            int(0),
            int(100),
            node(7000),
        ])]))
        .unwrap();
        assert!(!partial.is_complete());
        assert_eq!(partial.owner(101), None);
    }
}
