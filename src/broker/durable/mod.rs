//! Durable history for the memory engine (`data_dir`): publications of namespaces that keep history reach the store through one writer thread, many per commit, before their publishes are answered; at start-up the store is read back into the channel table.
//!
//! A publish to such a channel does not touch the table on the shard: it
//! is queued for the writer (bounded; past [`QUEUE_BOUND`] it is refused at
//! once) and answered later. The writer takes what is queued as one group:
//!
//! 1. **reserve**: under each channel's stripe lock, the next offset after
//!    `top` and the reservations before it (the channel is not freed while
//!    it has any; nothing is visible yet: subscribers, history and `top`
//!    are unchanged);
//! 2. **write**: one batch for the whole group (the publications, the
//!    removals that keep the disk within `history_size` and the TTL), one
//!    commit, and with `durability = fsync` one `fdatasync`;
//! 3. **apply**: under the stripe lock again, each publication becomes the
//!    channel's `top`, enters history and is handed to the shards with
//!    subscribers, in offset order; then every publish of the group is
//!    answered through the host.
//!
//! So a subscriber never sees a publication the disk does not have, and a
//! subscribe (which reads `top` and history under the same lock) is as
//! race-free as without a store. If the commit fails, the reservations are
//! undone, nothing was delivered, and each publish is answered
//! `unavailable`; the store is closed and reopened (at most once a second)
//! before the next group. No shard ever waits on the disk.

mod ledger;
pub mod store;

pub use store::{FORMAT, Store, StoredChannel, StoredPublication};

use super::publication::Publication;
use super::table::Table;
use super::{Answer, EngineAnswer, Host, ReplyTo};
use crate::channel::ChannelName;
use crate::clock::Millis;
use crate::config::{Durability, NamespaceOptions};
use crate::types::{BrokerError, ConnRef, Epoch, Published};
use bytes::Bytes;
use ledger::{Appended, Changes, Ledger};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Publishes the shards may have waiting for the writer at once. Past it a
/// publish is answered `unavailable` at once (and counted in
/// `herald_engine_refusals_total`) rather than queued behind a disk that
/// does not keep up.
pub const QUEUE_BOUND: usize = 16_384;
/// Most publishes in one group commit.
const GROUP_JOBS: usize = 4_096;
/// Most bytes of data in one group commit (past it the group ends early).
const GROUP_BYTES: usize = 8 << 20;
/// How often the writer removes channels whose history expired, and
/// retries a store that failed.
const TICK: Duration = Duration::from_secs(1);
/// How long a shutdown waits for the writer to commit what is queued and
/// close the store.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// The store's figures, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreFigures {
    /// Publishes answered `unavailable` because the store could not write.
    pub failures: u64,
    /// Batches committed.
    pub commits: u64,
    /// Channels stored.
    pub channels: u64,
    /// Publications stored.
    pub publications: u64,
}

/// What the writer and the engine share.
#[derive(Debug, Default)]
struct Counters {
    refused: AtomicU64,
    failures: AtomicU64,
    commits: AtomicU64,
    channels: AtomicU64,
    publications: AtomicU64,
    /// The last write failed and the store is not back yet.
    failing: AtomicBool,
}

/// A publish for the writer.
#[derive(Debug)]
struct Publish {
    channels: Vec<ChannelName>,
    /// Raw JSON.
    data: Bytes,
    exclude: Option<ConnRef>,
    reply: ReplyTo,
}

#[derive(Debug)]
enum Job {
    Publish(Publish),
    /// Commit what came before, close the store, end.
    Stop,
}

/// The engine's handle on the writer.
#[derive(Debug)]
pub(super) struct Durable {
    jobs: SyncSender<Job>,
    counters: Arc<Counters>,
    /// Disconnected when the writer has closed the store.
    closed: Mutex<Option<Receiver<()>>>,
}

impl Durable {
    /// Opens the store in `dir` (making it if need be), reads it back into
    /// `table` (trimmed to the namespaces' options as configured now), and
    /// starts the writer.
    pub(super) fn start(
        table: Arc<Table>,
        host: Arc<dyn Host>,
        dir: &Path,
        durability: Durability,
    ) -> Result<Durable, String> {
        let started = Instant::now();
        let store = Store::open(dir, durability)?;
        let ledger = restore(&store, &table)?;
        log::info!(
            "durable history in {} (format {FORMAT}, durability {}): {} channels, {} publications \
             read back in {} ms",
            dir.display(),
            durability.name(),
            ledger.channel_count(),
            ledger.publication_count(),
            started.elapsed().as_millis()
        );
        let counters = Arc::new(Counters::default());
        let (jobs, queue) = mpsc::sync_channel(QUEUE_BOUND);
        let (closing, closed) = mpsc::channel();
        let mut writer = Writer {
            table,
            host,
            dir: dir.to_path_buf(),
            durability,
            store: Some(store),
            ledger,
            counters: counters.clone(),
            retry_at: Instant::now(),
            failure: String::new(),
        };
        writer.count();
        std::thread::Builder::new()
            .name("herald-store".into())
            .spawn(move || {
                writer.run(&queue);
                drop(writer);
                drop(closing);
            })
            .map_err(|error| format!("cannot start the store's writer thread: {error}"))?;
        Ok(Durable { jobs, counters, closed: Mutex::new(Some(closed)) })
    }

    /// Queues a publish for the writer: answered later, or `unavailable`
    /// now when the queue is full or the writer has stopped.
    pub(super) fn publish(
        &self,
        channels: &[ChannelName],
        data: &[u8],
        exclude: Option<ConnRef>,
        reply: ReplyTo,
    ) -> Answer<Vec<(ChannelName, Published)>> {
        let job = Job::Publish(Publish {
            channels: channels.to_vec(),
            data: Bytes::copy_from_slice(data),
            exclude,
            reply,
        });
        match self.jobs.try_send(job) {
            Ok(()) => Answer::Later,
            Err(TrySendError::Full(_)) => {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                Answer::Now(Err(BrokerError::Unavailable(
                    "the store is not keeping up: its queue is full, retry".into(),
                )))
            }
            Err(TrySendError::Disconnected(_)) => Answer::Now(Err(BrokerError::Unavailable(
                "the store is closed (shutting down)".into(),
            ))),
        }
    }

    /// Whether the store writes (false from a failed write until one
    /// succeeds).
    pub(super) fn up(&self) -> bool {
        !self.counters.failing.load(Ordering::Acquire)
    }

    /// Publishes refused at once because the queue was full.
    pub(super) fn refused(&self) -> u64 {
        self.counters.refused.load(Ordering::Relaxed)
    }

    /// The store's figures.
    pub(super) fn figures(&self) -> StoreFigures {
        let counters = &self.counters;
        StoreFigures {
            failures: counters.failures.load(Ordering::Relaxed),
            commits: counters.commits.load(Ordering::Relaxed),
            channels: counters.channels.load(Ordering::Relaxed),
            publications: counters.publications.load(Ordering::Relaxed),
        }
    }

    /// Has the writer commit what is queued and close the store; waits for
    /// it (a few seconds at most: a disk that hangs does not hold the
    /// shutdown).
    pub(super) fn stop(&self) {
        let closed = self.closed.lock().unwrap_or_else(PoisonError::into_inner).take();
        let Some(closed) = closed else { return };
        if self.jobs.send(Job::Stop).is_ok()
            && closed.recv_timeout(STOP_WAIT) == Err(RecvTimeoutError::Timeout)
        {
            log::warn!("the store did not close within {} s", STOP_WAIT.as_secs());
        }
    }
}

/// Reads the store back into `table`: each channel of a namespace that
/// (still) keeps history, with the publications its options keep now
/// (contiguous, within `history_size`, younger than the TTL). What is left
/// out is removed from the disk before anything else is written.
fn restore(store: &Store, table: &Table) -> Result<Ledger, String> {
    let now = table.now();
    let mut ledger = Ledger::default();
    let mut batch = store.batch();
    let leftovers = store.read(|mut channel| {
        let name = ChannelName::parse(&channel.name).ok();
        let options = name
            .as_ref()
            .and_then(|name| table.options(name).ok())
            .filter(|options| options.history_size > 0);
        let keep = options.map_or(0, |options| kept(&channel, options, now));
        for dropped in channel.publications.drain(..channel.publications.len() - keep) {
            batch.remove_publication(&channel.name, channel.epoch, dropped.offset);
        }
        match (name, options) {
            (Some(name), Some(options)) if keep > 0 => {
                let ttl = ttl_millis(options);
                ledger.restored(name.shared().clone(), &channel, ttl);
                let history = channel.publications.into_iter().map(|p| (p.offset, p.at, p.data));
                table.restore(name.shared().clone(), channel.epoch, options, history);
            }
            _ => batch.remove_channel(&channel.name),
        }
    })?;
    for name in &leftovers.channels {
        batch.remove_channel(name);
    }
    for key in &leftovers.publications {
        batch.remove_key(key);
    }
    store.commit(batch).map_err(|error| {
        format!("cannot write to the store in {}: {error}", store.dir().display())
    })?;
    Ok(ledger)
}

/// How many of `channel`'s newest publications `options` keep at `now`:
/// the contiguous run that ends with the newest, at most `history_size`,
/// none older than the TTL.
fn kept(channel: &StoredChannel, options: &NamespaceOptions, now: Millis) -> usize {
    let publications = &channel.publications;
    let mut run = usize::from(!publications.is_empty());
    for pair in publications.windows(2).rev() {
        match pair {
            [older, newer] if older.offset.checked_add(1) == Some(newer.offset) => run += 1,
            _ => break,
        }
    }
    let ttl = ttl_millis(options);
    let keep = run.min(options.history_size);
    let expired = publications
        .iter()
        .skip(publications.len() - keep)
        .take_while(|publication| publication.at.saturating_add(ttl) <= now)
        .count();
    keep - expired
}

fn ttl_millis(options: &NamespaceOptions) -> Millis {
    options.history_ttl_secs.saturating_mul(1000)
}

/// One channel of a publish, as the writer planned it.
#[derive(Debug)]
enum Slot {
    /// A channel that keeps history: its reserved offset.
    Stored { channel: ChannelName, epoch: Epoch, offset: u64, keep_from: u64 },
    /// A channel that keeps none (in a broadcast with others that do):
    /// published when the group has committed, without the store.
    Plain(ChannelName),
}

/// The writer thread's state.
struct Writer {
    table: Arc<Table>,
    host: Arc<dyn Host>,
    dir: PathBuf,
    durability: Durability,
    /// `None` after a failure, until reopened.
    store: Option<Store>,
    ledger: Ledger,
    counters: Arc<Counters>,
    /// When a failed store may next be reopened.
    retry_at: Instant,
    /// Why the store failed.
    failure: String,
}

impl Writer {
    fn run(&mut self, queue: &Receiver<Job>) {
        let mut next_tick = Instant::now() + TICK;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            let first = match queue.recv_timeout(wait) {
                Ok(job) => Some(job),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut group = Vec::new();
            let mut bytes = 0;
            let mut stop = false;
            let mut next = first;
            while let Some(job) = next {
                match job {
                    Job::Publish(publish) => {
                        bytes += publish.data.len() * publish.channels.len();
                        group.push(publish);
                    }
                    Job::Stop => {
                        stop = true;
                        break;
                    }
                }
                if group.len() >= GROUP_JOBS || bytes >= GROUP_BYTES {
                    break;
                }
                next = queue.try_recv().ok();
            }
            if !group.is_empty() {
                self.run_group(group);
            }
            if stop {
                // Whatever came after the stop is refused, not dropped
                // unanswered.
                while let Ok(job) = queue.try_recv() {
                    if let Job::Publish(publish) = job {
                        let closed =
                            BrokerError::Unavailable("the store is closed (shutting down)".into());
                        self.host.answer(publish.reply, EngineAnswer::Published(Err(closed)));
                    }
                }
                return;
            }
            if Instant::now() >= next_tick {
                next_tick = Instant::now() + TICK;
                self.tick();
            }
        }
    }

    /// Reserves, writes and applies a group of publishes, and answers each.
    fn run_group(&mut self, group: Vec<Publish>) {
        let now = self.table.now();
        let plans: Vec<Result<Vec<Slot>, BrokerError>> =
            group.iter().map(|publish| self.reserve(publish)).collect();
        let written = self.write(&group, &plans, now);
        for (publish, plan) in group.into_iter().zip(plans) {
            let result = match (plan, &written) {
                (Err(error), _) => Err(error),
                (Ok(slots), Ok(())) => self.apply(&publish, slots, now),
                (Ok(slots), Err(why)) => {
                    self.undo(&slots);
                    self.counters.failures.fetch_add(1, Ordering::Relaxed);
                    Err(BrokerError::Unavailable(why.clone()))
                }
            };
            self.host.answer(publish.reply, EngineAnswer::Published(result));
        }
    }

    /// Reserves the next offset of each channel of `publish` that keeps
    /// history. All or none: on a refusal, its reservations are undone.
    fn reserve(&self, publish: &Publish) -> Result<Vec<Slot>, BrokerError> {
        let mut slots = Vec::with_capacity(publish.channels.len());
        for channel in &publish.channels {
            let reserved = self.table.options(channel).and_then(|options| {
                if options.history_size == 0 {
                    return Ok(Slot::Plain(channel.clone()));
                }
                let name = channel.shared();
                let mut stripe = self.table.lock(name);
                let state = stripe.open(name, options)?;
                state.reserved += 1;
                Ok(Slot::Stored {
                    channel: channel.clone(),
                    epoch: state.epoch,
                    offset: state.top.saturating_add(state.reserved),
                    keep_from: state.oldest_kept(),
                })
            });
            match reserved {
                Ok(slot) => slots.push(slot),
                Err(error) => {
                    self.undo(&slots);
                    return Err(error);
                }
            }
        }
        Ok(slots)
    }

    /// Gives reservations back (newest first), freeing a channel that has
    /// nothing else to keep it.
    fn undo(&self, slots: &[Slot]) {
        for slot in slots.iter().rev() {
            let Slot::Stored { channel, .. } = slot else { continue };
            let name = channel.shared();
            let mut stripe = self.table.lock(name);
            let Some(state) = stripe.get(name) else { continue };
            state.reserved = state.reserved.saturating_sub(1);
            if state.subscribers == 0 {
                stripe.settle(name);
            }
        }
    }

    /// Writes the group's publications in one commit.
    fn write(
        &mut self,
        group: &[Publish],
        plans: &[Result<Vec<Slot>, BrokerError>],
        now: Millis,
    ) -> Result<(), String> {
        // Each channel's publications of the group, in offset order.
        let mut order: Vec<Arc<str>> = Vec::new();
        let mut appended: HashMap<Arc<str>, Appended> = HashMap::new();
        for (publish, plan) in group.iter().zip(plans) {
            let Ok(slots) = plan else { continue };
            for slot in slots {
                let Slot::Stored { channel, epoch, offset, keep_from } = slot else { continue };
                let Ok(options) = self.table.options(channel) else { continue };
                let name = channel.shared();
                let entry = appended.entry(name.clone()).or_insert_with(|| {
                    order.push(name.clone());
                    Appended {
                        epoch: *epoch,
                        keep_from: *keep_from,
                        size: options.history_size as u64,
                        ttl: ttl_millis(options),
                        publications: Vec::new(),
                    }
                });
                entry.publications.push((*offset, now, publish.data.clone()));
            }
        }
        if order.is_empty() {
            return Ok(());
        }
        self.reopen()?;
        let Some(store) = &self.store else { return Err(self.failure.clone()) };
        let mut batch = store.batch();
        let mut changes = Changes::default();
        for name in &order {
            if let Some(appended) = appended.get(name) {
                self.ledger.append(name, appended, &mut batch, &mut changes);
            }
        }
        self.commit(batch, changes)
    }

    /// Makes each reserved publication of `publish` visible (history,
    /// deliveries) and publishes its other channels; where each landed. A
    /// channel without history that cannot be made (`max_channels`) is the
    /// answer, as without a store (the others are published).
    fn apply(
        &self,
        publish: &Publish,
        slots: Vec<Slot>,
        now: Millis,
    ) -> Result<Vec<(ChannelName, Published)>, BrokerError> {
        let mut results = Vec::with_capacity(slots.len());
        let mut refused = None;
        for slot in slots {
            match slot {
                Slot::Stored { channel, epoch, offset, .. } => {
                    let name = channel.shared();
                    let mut stripe = self.table.lock(name);
                    match stripe.get(name) {
                        Some(state) => {
                            // Reservations are applied in the order they
                            // were made: this one is the next offset.
                            state.reserved = state.reserved.saturating_sub(1);
                            let publication = Publication::new(name.clone(), offset, &publish.data);
                            state.append(&*self.host, name, now, publication, publish.exclude);
                            if state.subscribers == 0 {
                                stripe.settle(name);
                            }
                        }
                        // Cannot be: a channel with reservations is not freed.
                        None => log::error!("channel {name} vanished with a reservation"),
                    }
                    drop(stripe);
                    results.push((channel, Published { epoch, offset }));
                }
                Slot::Plain(channel) => {
                    match self.table.publish(&*self.host, &channel, &publish.data, publish.exclude)
                    {
                        Ok(published) => results.push((channel, published)),
                        Err(error) => refused = refused.or(Some(error)),
                    }
                }
            }
        }
        refused.map_or(Ok(results), Err)
    }

    /// Once a second: removes expired channels from the disk, and tries a
    /// store that failed again.
    fn tick(&mut self) {
        let now = self.table.now();
        if self.reopen().is_err() {
            return;
        }
        let Some(store) = &self.store else { return };
        let mut batch = store.batch();
        let mut changes = Changes::default();
        self.ledger.expire(now, &mut batch, &mut changes);
        if !batch.is_empty() {
            let _ = self.commit(batch, changes);
        }
    }

    /// Reopens the store after a failure (at most once a second).
    fn reopen(&mut self) -> Result<(), String> {
        if self.store.is_some() {
            return Ok(());
        }
        if Instant::now() < self.retry_at {
            return Err(self.failure.clone());
        }
        match Store::open(&self.dir, self.durability) {
            Ok(store) => {
                // Still failing until a write succeeds.
                log::info!("the store in {} is open again", self.dir.display());
                self.store = Some(store);
                Ok(())
            }
            Err(error) => {
                self.retry_at = Instant::now() + TICK;
                log::debug!("the store is still failing: {error}");
                Err(self.failure.clone())
            }
        }
    }

    /// Commits `batch`; applies `changes` to the ledger once it has. A
    /// failure closes the store (it is reopened later).
    fn commit(&mut self, batch: store::Batch, changes: Changes) -> Result<(), String> {
        let Some(store) = &self.store else { return Err(self.failure.clone()) };
        match store.commit(batch) {
            Ok(()) => {
                self.ledger.apply(changes);
                self.counters.failing.store(false, Ordering::Release);
                self.counters.commits.fetch_add(1, Ordering::Relaxed);
                self.count();
                Ok(())
            }
            Err(error) => {
                self.failure = format!(
                    "the store cannot write ({error}); publications to channels with history \
                     are refused until it can"
                );
                log::error!("{} in {}", self.failure, self.dir.display());
                self.counters.failing.store(true, Ordering::Release);
                self.store = None;
                self.retry_at = Instant::now() + TICK;
                Err(self.failure.clone())
            }
        }
    }

    /// Publishes the ledger's counts.
    fn count(&self) {
        self.counters.channels.store(self.ledger.channel_count(), Ordering::Relaxed);
        self.counters.publications.store(self.ledger.publication_count(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
