//! The node: what every shard shares (configuration, the engine, the shards' inboxes, the API key, counters) and the tables of one shard that front ends use.

pub mod inbox;
pub mod local;
pub mod subscribers;
pub mod users;

use crate::auth::{ApiKey, KeyFailures};
use crate::broker::{self, Delivery, Done, Engine, EngineAnswer, Host, ReplyTo};
use crate::config::Config;
use crate::metrics::{self, NodeFigures, ShardMetrics};
use crate::types::UserAction;
use inbox::{Inbox, Work};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// What every shard shares.
#[derive(Debug)]
pub struct Shared {
    /// The configuration.
    pub config: Arc<Config>,
    /// This node's id: random per process, the prefix of client ids.
    pub node: Arc<str>,
    /// Open connections on every shard (those counted toward `max_connections`).
    pub connections: AtomicUsize,
    /// Channels, history, presence, and delivery between nodes.
    pub engine: Box<dyn Engine>,
    /// Every shard's inbox.
    pub inboxes: Arc<Inboxes>,
    /// The server API key check.
    pub api_key: ApiKey,
    /// Failed API key checks by peer, for the 429 lockout.
    pub key_failures: KeyFailures,
    /// Each shard's counters, by shard index.
    pub metrics: Box<[Arc<ShardMetrics>]>,
    /// When the server started.
    pub started: Instant,
    /// Bytes held in WebSocket messages whose last frame has not arrived,
    /// over all connections (bounded by `max_incomplete_bytes`).
    pub incomplete_bytes: AtomicUsize,
    /// Open Pusher connections per app (by index), for its `max_connections`.
    pub app_connections: Box<[AtomicUsize]>,
    /// Each webhook's counters, in the configuration's order.
    pub webhooks: Box<[metrics::WebhookCounters]>,
}

impl Shared {
    /// The node of `config`, its shards reached through `inboxes`; starts
    /// the engine the configuration names.
    pub fn new(
        config: Arc<Config>,
        node: Arc<str>,
        inboxes: Vec<Arc<Inbox>>,
    ) -> Result<Shared, String> {
        let inboxes = Arc::new(Inboxes(inboxes.into_boxed_slice()));
        let engine = broker::start(config.clone(), node.clone(), inboxes.clone())?;
        let metrics = (0..inboxes.0.len()).map(|_| Arc::new(ShardMetrics::default())).collect();
        let app_connections = config.apps.iter().map(|_| AtomicUsize::new(0)).collect();
        let config_webhooks = config.webhooks.iter().map(|_| Default::default()).collect();
        Ok(Shared {
            api_key: ApiKey::new(&config.api_key),
            config,
            node,
            connections: AtomicUsize::new(0),
            engine,
            inboxes,
            key_failures: KeyFailures::default(),
            metrics,
            started: Instant::now(),
            incomplete_bytes: AtomicUsize::new(0),
            app_connections,
            webhooks: config_webhooks,
        })
    }

    /// Shards on this node.
    pub fn shard_count(&self) -> usize {
        self.inboxes.0.len()
    }

    /// Hands work to a shard.
    pub fn send(&self, shard: usize, work: Work) {
        self.inboxes.send(shard, work);
    }

    /// `/metrics`: every shard's counters, summed, in Prometheus text format.
    pub fn render_metrics(&self) -> String {
        let health = self.engine.health();
        let figures = NodeFigures {
            channels: self.engine.channel_count(),
            uptime_secs: self.started.elapsed().as_secs(),
            incomplete_bytes: self.incomplete_bytes.load(Ordering::Relaxed),
            engine_refusals: health.refused,
            notices_dropped: health.notices_dropped,
            tls: self.config.tls.as_ref().map(|tls| {
                let (reloads, failed_reloads) = tls.reload_counts();
                metrics::TlsFigures { not_after: tls.not_after(), reloads, failed_reloads }
            }),
            store: health.store.unwrap_or_default(),
        };
        let mut text = metrics::render(&self.metrics, &figures);
        let webhooks: Vec<(&str, &metrics::WebhookCounters)> = self
            .config
            .webhooks
            .iter()
            .map(|webhook| webhook.name.as_str())
            .zip(self.webhooks.iter())
            .collect();
        metrics::render_webhooks(&mut text, &webhooks, health.notices_dropped);
        text
    }
}

/// The shards' inboxes: the host engines deliver through.
#[derive(Debug)]
pub struct Inboxes(Box<[Arc<Inbox>]>);

impl Inboxes {
    fn send(&self, shard: usize, work: Work) {
        if let Some(inbox) = self.0.get(shard) {
            inbox.send(work);
        }
    }
}

impl Host for Inboxes {
    fn shards(&self) -> usize {
        self.0.len()
    }

    fn deliver(&self, shard: usize, delivery: Delivery) {
        self.send(shard, Work::Deliver(delivery));
    }

    fn answer(&self, to: ReplyTo, answer: EngineAnswer) {
        self.send(usize::from(to.conn.shard), Work::Answer { to, answer });
    }

    fn act_on_user(&self, user: Arc<str>, action: UserAction, done: Done) {
        let task = Arc::new(UserTask {
            user,
            action,
            remaining: AtomicUsize::new(self.0.len()),
            count: AtomicUsize::new(0),
            done: Mutex::new(Some(done)),
        });
        for shard in 0..self.0.len() {
            self.send(shard, Work::ForUser(task.clone()));
        }
    }
}

/// A call carried out by every shard on its own connections of one user;
/// the last shard to finish hands the total on.
pub struct UserTask {
    /// The user.
    pub user: Arc<str>,
    /// What to do.
    pub action: UserAction,
    /// Shards still working on it.
    remaining: AtomicUsize,
    /// Connections acted on so far.
    count: AtomicUsize,
    done: Mutex<Option<Done>>,
}

impl std::fmt::Debug for UserTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserTask").field("user", &self.user).field("action", &self.action).finish()
    }
}

impl UserTask {
    /// A shard acted on `count` connections; the last shard to report
    /// hands the total on.
    pub fn finish(&self, count: usize) {
        self.count.fetch_add(count, Ordering::AcqRel);
        if self.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let done = self.done.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(done) = done {
            done(self.count.load(Ordering::Acquire));
        }
    }
}
