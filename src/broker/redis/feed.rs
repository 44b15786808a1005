//! A webhook's reader of its scope's notice stream in Redis: one node at a time holds its lease and delivers; its cursor is kept in Redis, so the node that takes over after a death goes on from where the last delivery was acknowledged.

use super::Inner;
use crate::broker::notice::{FeedError, Notice, NoticeFeed, Queued};
use std::sync::Arc;
use std::time::Duration;

/// How long a lease lasts unless its holder renews it (every `lead`).
const LEASE: Duration = Duration::from_secs(10);

/// A reader of `scope`'s stream for the webhook `reader`.
pub(super) struct RedisFeed {
    inner: Arc<Inner>,
    connection: Option<super::Commands>,
    stream: String,
    cursor_key: String,
    lease_key: String,
    /// Every reader's cursor key of this scope: what all have passed is
    /// trimmed from the stream.
    siblings: Vec<String>,
    /// Where this reader is: the id of the last notice it is done with.
    cursor: Option<String>,
}

impl RedisFeed {
    pub(super) fn new(inner: Arc<Inner>, scope: &str, reader: &str) -> RedisFeed {
        let siblings = inner
            .config
            .webhooks
            .iter()
            .filter(|webhook| webhook.scope == scope)
            .map(|webhook| format!("{}:c:{}", inner.notice_stream(scope), webhook.name))
            .collect();
        RedisFeed {
            stream: inner.notice_stream(scope),
            cursor_key: format!("{}:c:{reader}", inner.notice_stream(scope)),
            lease_key: format!("{}:l:{reader}", inner.notice_stream(scope)),
            siblings,
            connection: None,
            cursor: None,
            inner,
        }
    }

    /// The connection, made if there is none; dropped on an error.
    fn run<T>(
        &mut self,
        work: impl FnOnce(&mut super::Commands, &mut Self) -> redis::RedisResult<T>,
    ) -> Result<T, FeedError> {
        let mut connection = match self.connection.take() {
            Some(connection) => connection,
            None => self.inner.connect().map_err(|error| FeedError(error.to_string()))?,
        };
        match work(&mut connection, self) {
            Ok(value) => {
                self.connection = Some(connection);
                Ok(value)
            }
            Err(error) => Err(FeedError(error.to_string())),
        }
    }
}

impl NoticeFeed for RedisFeed {
    fn lead(&mut self) -> Result<bool, FeedError> {
        let node = self.inner.node.to_string();
        let lease_ms = u64::try_from(LEASE.as_millis()).unwrap_or(u64::MAX);
        self.run(|con, feed| {
            let taken: Option<String> = redis::cmd("SET")
                .arg(&feed.lease_key)
                .arg(&node)
                .arg("NX")
                .arg("PX")
                .arg(lease_ms)
                .query(con)?;
            if taken.is_some() {
                // A new lease: go on from the last acknowledged notice.
                feed.cursor = None;
                return Ok(true);
            }
            let holder: Option<String> = redis::cmd("GET").arg(&feed.lease_key).query(con)?;
            if holder.as_deref() == Some(node.as_str()) {
                redis::cmd("PEXPIRE").arg(&feed.lease_key).arg(lease_ms).query::<()>(con)?;
                return Ok(true);
            }
            Ok(false)
        })
    }

    fn read(
        &mut self,
        after: Option<&str>,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Queued>, FeedError> {
        let block_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        let after = after.map(str::to_string);
        self.run(|con, feed| {
            if feed.cursor.is_none() {
                let stored: Option<String> = redis::cmd("GET").arg(&feed.cursor_key).query(con)?;
                feed.cursor = Some(stored.unwrap_or_else(|| "0".to_string()));
            }
            let after = after.or_else(|| feed.cursor.clone()).unwrap_or_else(|| "0".to_string());
            let mut entries: Vec<redis::Value> = redis::cmd("XRANGE")
                .arg(&feed.stream)
                .arg(format!("({after}"))
                .arg("+")
                .arg("COUNT")
                .arg(max)
                .query(con)?;
            if entries.is_empty() {
                // Wait for the next one (its stream may not exist yet).
                let answer: redis::Value = redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(max)
                    .arg("BLOCK")
                    .arg(block_ms)
                    .arg("STREAMS")
                    .arg(&feed.stream)
                    .arg(&after)
                    .query(con)?;
                entries = stream_entries(answer);
            }
            Ok(entries.iter().filter_map(queued).collect())
        })
    }

    fn done(&mut self, id: &str) -> Result<(), FeedError> {
        let id = id.to_string();
        self.run(|con, feed| {
            redis::cmd("SET").arg(&feed.cursor_key).arg(&id).query::<()>(con)?;
            feed.cursor = Some(id.clone());
            // What every reader of the scope is done with leaves the stream.
            let cursors: Vec<Option<String>> = redis::cmd("MGET").arg(&feed.siblings).query(con)?;
            let slowest = cursors
                .iter()
                .map(|c| c.as_deref().unwrap_or("0"))
                .min_by(|a, b| stream_id(a).cmp(&stream_id(b)));
            if let Some(slowest) = slowest.filter(|slowest| *slowest != "0") {
                redis::cmd("XTRIM").arg(&feed.stream).arg("MINID").arg(slowest).query::<()>(con)?;
            }
            Ok(())
        })
    }
}

/// A stream id (`MS-SEQ`) as numbers, for comparing.
fn stream_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// The entries of an `XREAD` answer for one stream.
fn stream_entries(answer: redis::Value) -> Vec<redis::Value> {
    let redis::Value::Array(streams) = answer else { return Vec::new() };
    streams
        .into_iter()
        .find_map(|stream| match stream {
            redis::Value::Array(mut parts) if parts.len() == 2 => match parts.pop() {
                Some(redis::Value::Array(entries)) => Some(entries),
                _ => None,
            },
            _ => None,
        })
        .unwrap_or_default()
}

/// One stream entry as a queued notice.
fn queued(entry: &redis::Value) -> Option<Queued> {
    let redis::Value::Array(parts) = entry else { return None };
    let id = text(parts.first()?)?;
    let redis::Value::Array(fields) = parts.get(1)? else { return None };
    let texts: Vec<String> = fields.iter().filter_map(text).collect();
    let pairs = texts.chunks(2).filter_map(|pair| match pair {
        [field, value] => Some((field.as_str(), value.as_str())),
        _ => None,
    });
    Some(Queued { id, notice: Notice::from_fields(pairs)? })
}

fn text(value: &redis::Value) -> Option<String> {
    match value {
        redis::Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        redis::Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    }
}
