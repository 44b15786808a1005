//! Notices: the transitions a backend hears about through webhooks (a channel occupied or vacated, a user's first or last connection in a presence channel, a client event, a cache miss), each found once per cluster, and the queues they wait in.
//!
//! Engines decide transitions where they see the whole cluster (the memory
//! engine under a channel's stripe lock, the Redis engine in Lua scripts),
//! so each is noticed once, in order. Notices wait in a queue per scope (a
//! Pusher app, or a namespace) until whoever delivers them (`webhook`) has
//! them; every reader of a scope keeps its own cursor.

pub use crate::types::{Notice, NoticeKind, NoticeKinds, scope_of};

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

/// A notice in a queue, with its place there (which a reader resumes
/// after, and which identifies it to the backend, for repeats).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// Its id in the scope's queue: increasing.
    pub id: String,
    /// The notice.
    pub notice: Notice,
}

/// Why a queue cannot be read now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedError(pub String);

/// One reader's view of a scope's queue: the delivery of one webhook.
pub trait NoticeFeed: Send {
    /// Whether this node is the one that delivers for this reader now
    /// (with Redis, one node holds a lease per reader; it is renewed by
    /// calling this regularly). The memory engine's node always is.
    fn lead(&mut self) -> Result<bool, FeedError>;
    /// Up to `max` notices after `after` (a notice's id; `None`: after
    /// the last one the reader is done with), oldest first, waiting up to
    /// `wait` for one.
    fn read(
        &mut self,
        after: Option<&str>,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Queued>, FeedError>;
    /// The reader is done with every notice up to `id`: its cursor moves,
    /// and what every reader is done with leaves the queue.
    fn done(&mut self, id: &str) -> Result<(), FeedError>;
}

/// The memory engine's queues: a bounded deque per scope, a cursor per
/// reader. Only this process reads them.
#[derive(Debug)]
pub struct MemoryNotices {
    scopes: Mutex<std::collections::HashMap<String, ScopeQueue>>,
    ready: std::sync::Condvar,
    bound: usize,
    /// Ids are `NODE-N`: unique across restarts (the node id is random per
    /// process), so a backend dropping repeats by id never drops a new one.
    node: String,
}

#[derive(Debug, Default)]
struct ScopeQueue {
    /// The id of the first entry of `entries`.
    first: u64,
    entries: VecDeque<Notice>,
    /// Each reader's next id.
    cursors: std::collections::HashMap<String, u64>,
}

impl MemoryNotices {
    /// Queues of at most `bound` notices per scope, their ids made on
    /// `node`.
    pub fn new(bound: usize, node: &str) -> MemoryNotices {
        MemoryNotices {
            scopes: Mutex::default(),
            ready: std::sync::Condvar::new(),
            bound,
            node: node.to_string(),
        }
    }

    fn id(&self, n: u64) -> String {
        format!("{}-{n}", self.node)
    }

    fn number(id: &str) -> Result<u64, FeedError> {
        id.rsplit_once('-')
            .and_then(|(_, n)| n.parse().ok())
            .ok_or_else(|| FeedError(format!("bad id {id}")))
    }

    /// Queues a notice; `false` if its scope's queue is full (it is dropped).
    pub fn push(&self, notice: Notice) -> bool {
        let mut scopes = self.scopes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let queue = scopes.entry(notice.scope()).or_default();
        if queue.entries.len() >= self.bound {
            return false;
        }
        queue.entries.push_back(notice);
        self.ready.notify_all();
        true
    }

    /// A reader `reader` of scope `scope`, starting after what is queued
    /// now.
    pub fn feed(self: &std::sync::Arc<Self>, scope: &str, reader: &str) -> MemoryFeed {
        let mut scopes = self.scopes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let queue = scopes.entry(scope.to_string()).or_default();
        let end = queue.first + queue.entries.len() as u64;
        queue.cursors.entry(reader.to_string()).or_insert(end);
        MemoryFeed { notices: self.clone(), scope: scope.to_string(), reader: reader.to_string() }
    }
}

/// A reader of a [`MemoryNotices`] scope.
#[derive(Debug)]
pub struct MemoryFeed {
    notices: std::sync::Arc<MemoryNotices>,
    scope: String,
    reader: String,
}

impl NoticeFeed for MemoryFeed {
    fn lead(&mut self) -> Result<bool, FeedError> {
        Ok(true)
    }

    fn read(
        &mut self,
        after: Option<&str>,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Queued>, FeedError> {
        let after = after.map(MemoryNotices::number).transpose()?;
        let notices = &self.notices;
        let mut scopes = notices.scopes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let deadline = std::time::Instant::now() + wait;
        loop {
            if let Some(queue) = scopes.get(&self.scope) {
                let cursor = match after {
                    Some(id) => id + 1,
                    None => queue.cursors.get(&self.reader).copied().unwrap_or(queue.first),
                }
                .max(queue.first);
                let skip =
                    usize::try_from(cursor.saturating_sub(queue.first)).unwrap_or(usize::MAX);
                let found: Vec<Queued> = queue
                    .entries
                    .iter()
                    .enumerate()
                    .skip(skip)
                    .take(max)
                    .map(|(index, notice)| Queued {
                        id: notices.id(queue.first + index as u64),
                        notice: notice.clone(),
                    })
                    .collect();
                if !found.is_empty() {
                    return Ok(found);
                }
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(Vec::new());
            }
            scopes = notices
                .ready
                .wait_timeout(scopes, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    fn done(&mut self, id: &str) -> Result<(), FeedError> {
        let next = MemoryNotices::number(id)? + 1;
        let mut scopes =
            self.notices.scopes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(queue) = scopes.get_mut(&self.scope) else { return Ok(()) };
        queue.cursors.insert(self.reader.clone(), next);
        // What every reader has passed leaves the queue.
        let slowest = queue.cursors.values().copied().min().unwrap_or(next);
        while queue.first < slowest && queue.entries.pop_front().is_some() {
            queue.first += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn scopes_are_apps_and_namespaces() {
        assert_eq!(scope_of("1;presence-room"), "app:1");
        assert_eq!(scope_of("chat:lobby"), "ns:chat");
        assert_eq!(scope_of("$chat:x"), "ns:chat");
        assert_eq!(scope_of("news"), "ns:");
    }

    #[test]
    fn notices_travel_as_fields() {
        let mut notice = Notice::new(NoticeKind::ClientEvent, "1;private-a", Some("u1"));
        notice.event = Some("client-x".into());
        notice.data = Some(r#"{"a":1}"#.into());
        notice.socket_id = Some("1.2".into());
        let fields = notice.to_fields();
        let back = Notice::from_fields(fields.iter().map(|(k, v)| (*k, v.as_str())));
        assert_eq!(back, Some(notice));
        assert_eq!(Notice::from_fields([("k", "nope"), ("c", "x"), ("t", "1")]), None);
    }

    #[test]
    fn each_reader_has_its_cursor_and_a_full_queue_drops() {
        let notices = Arc::new(MemoryNotices::new(3, "n1"));
        let mut a = notices.feed("ns:", "a");
        let mut b = notices.feed("ns:", "b");
        for name in ["x", "y", "z", "w"] {
            let queued = notices.push(Notice::new(NoticeKind::ChannelOccupied, name, None));
            assert_eq!(queued, name != "w");
        }
        let read = a.read(None, 10, Duration::ZERO).unwrap();
        assert_eq!(
            read.iter().map(|q| q.notice.channel.as_str()).collect::<Vec<_>>(),
            ["x", "y", "z"]
        );
        assert_eq!(a.read(Some(&read[0].id), 10, Duration::ZERO).unwrap().len(), 2);
        a.done(&read[1].id).unwrap();
        assert_eq!(a.read(None, 10, Duration::ZERO).unwrap()[0].notice.channel, "z");
        // b has not read: nothing left the queue yet.
        assert_eq!(b.read(None, 10, Duration::ZERO).unwrap().len(), 3);
        b.done(&read[2].id).unwrap();
        assert!(notices.push(Notice::new(NoticeKind::ChannelOccupied, "v", None)));
        assert!(notices.push(Notice::new(NoticeKind::ChannelOccupied, "u", None)));
        assert_eq!(b.read(None, 10, Duration::ZERO).unwrap().len(), 2);
        assert!(a.read(None, 10, Duration::ZERO).unwrap()[0].notice.channel == "z");
    }
}
