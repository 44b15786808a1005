//! Webhook delivery: a thread per configured webhook reads its scope's notices from the engine (on whichever node holds its lease), holds leaves for a grace period in which a rejoin cancels both, and POSTs each notice, signed, until the backend takes it or five minutes have passed.
//!
//! Notices of one channel go out in the order they happened; a leave
//! waits [`GRACE`] and is dropped with the join that undoes it within that
//! time (a page reload). Delivery is at least once: a notice is marked done
//! in the queue only after the backend answered 2xx, so a node that dies
//! mid-request leaves it to the next holder of the lease, which sends it
//! again with the same `X-Herald-Webhook-Id`.

use crate::broker::notice::{NoticeFeed, Queued};
use crate::config::Webhook;
use crate::metrics::WebhookCounters;
use crate::node::Shared;
use crate::types::NoticeKind;
use crate::wire::webhook::{self as wire, ID_HEADER};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a leave (vacated, member removed) waits for the join that
/// undoes it, as Pusher documents.
pub const GRACE: Duration = Duration::from_secs(3);
/// How long one request may take, connecting included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a notice is retried before it is given up (counted, logged).
const GIVE_UP_AFTER: Duration = Duration::from_secs(300);
/// The longest wait between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Notices read ahead of the last one done, per webhook.
const READ_AHEAD: usize = 1024;
/// A cache miss of a channel is told once per this time.
const CACHE_MISS_WINDOW: Duration = Duration::from_secs(10);

/// The running delivery threads.
#[derive(Debug)]
pub struct Webhooks {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Webhooks {
    /// Starts a thread for each of the configuration's webhooks.
    pub fn start(shared: &Arc<Shared>) -> Webhooks {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (index, webhook) in shared.config.webhooks.iter().enumerate() {
            // The reader is made here, before any shard runs: a memory
            // queue's reader starts after what is queued when it is made,
            // so one made by the thread, later, could miss the first
            // notices.
            let feed = shared.engine.notice_feed(&webhook.scope, &webhook.name);
            let (shared, stop) = (shared.clone(), stop.clone());
            let name = format!("herald-webhook-{}", webhook.name);
            match std::thread::Builder::new()
                .name(name)
                .spawn(move || deliver(&shared, index, feed, &stop))
            {
                Ok(thread) => threads.push(thread),
                Err(error) => log::error!("webhook {}: cannot start: {error}", webhook.name),
            }
        }
        Webhooks { stop, threads }
    }

    /// Stops the threads (a request under way ends within its timeout).
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// What became of a notice read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    /// Sent, skipped (not a kind this webhook wants), cancelled by the
    /// grace, or given up: the queue may forget it.
    Finished,
}

struct Slot {
    queued: Queued,
    state: State,
}

/// One webhook's loop: lead, read, decide, send, mark done.
fn deliver(shared: &Shared, index: usize, mut feed: Box<dyn NoticeFeed>, stop: &AtomicBool) {
    let Some(webhook) = shared.config.webhooks.get(index) else { return };
    let counters = shared.webhooks.get(index);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(REQUEST_TIMEOUT))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let mut window: VecDeque<Slot> = VecDeque::new();
    let mut last_read: Option<String> = None;
    let mut cache_misses: HashMap<String, Instant> = HashMap::new();
    let mut failures = 0u32;
    while !stop.load(Ordering::Acquire) {
        match feed.lead() {
            Ok(true) => failures = 0,
            Ok(false) => {
                // Another node delivers: start over from the queue's
                // cursor when the lease comes here.
                window.clear();
                last_read = None;
                pause(Duration::from_secs(1), stop);
                continue;
            }
            Err(error) => {
                failures += 1;
                if failures == 1 {
                    log::warn!("webhook {}: cannot reach the queue: {}", webhook.name, error.0);
                }
                window.clear();
                last_read = None;
                pause(Duration::from_secs(1), stop);
                continue;
            }
        }
        let wait = next_hold(&window).map_or(Duration::from_millis(500), |until| {
            until.saturating_duration_since(Instant::now()).min(Duration::from_millis(500))
        });
        if window.len() < READ_AHEAD {
            match feed.read(last_read.as_deref(), READ_AHEAD - window.len(), wait) {
                Ok(read) => {
                    if let Some(last) = read.last() {
                        last_read = Some(last.id.clone());
                    }
                    window.extend(
                        read.into_iter().map(|queued| Slot { queued, state: State::Waiting }),
                    );
                }
                Err(error) => {
                    log::warn!("webhook {}: reading its queue: {}", webhook.name, error.0);
                    window.clear();
                    last_read = None;
                    pause(Duration::from_secs(1), stop);
                    continue;
                }
            }
        }
        let cancelled = cancel_undone(&mut window);
        if let Some(counters) = counters {
            counters.cancelled.add(cancelled);
        }
        let lost_lease =
            send_due(webhook, &agent, &mut window, &mut cache_misses, &mut *feed, counters, stop);
        if lost_lease {
            window.clear();
            last_read = None;
            continue;
        }
        // What is finished at the front leaves the queue.
        let mut done = None;
        while window.front().is_some_and(|slot| slot.state == State::Finished) {
            done = window.pop_front().map(|slot| slot.queued.id);
        }
        if let Some(id) = done
            && let Err(error) = feed.done(&id)
        {
            log::warn!("webhook {}: marking notices done: {}", webhook.name, error.0);
        }
    }
}

/// Sleeps up to `time`, waking early when told to stop.
fn pause(time: Duration, stop: &AtomicBool) {
    let until = Instant::now() + time;
    while !stop.load(Ordering::Acquire) && Instant::now() < until {
        std::thread::sleep(
            Duration::from_millis(50).min(until.saturating_duration_since(Instant::now())),
        );
    }
}

/// Whether the notice is a leave, held for the grace.
fn is_leave(kind: NoticeKind) -> bool {
    matches!(kind, NoticeKind::ChannelVacated | NoticeKind::MemberRemoved)
}

/// When the first held leave may go.
fn next_hold(window: &VecDeque<Slot>) -> Option<Instant> {
    let now_ms = crate::clock::unix_millis();
    window
        .iter()
        .filter(|slot| slot.state == State::Waiting && is_leave(slot.queued.notice.kind))
        .map(|slot| {
            let due = slot.queued.notice.time_ms + grace_ms();
            Instant::now() + Duration::from_millis(due.saturating_sub(now_ms))
        })
        .min()
}

fn grace_ms() -> u64 {
    u64::try_from(GRACE.as_millis()).unwrap_or(3000)
}

/// A leave followed within the grace by the join that undoes it (the same
/// channel, and the same user for members) cancels out: neither is sent.
/// Returns how many were cancelled.
fn cancel_undone(window: &mut VecDeque<Slot>) -> u64 {
    let mut cancelled = 0;
    for leave in 0..window.len() {
        let Some(slot) = window.get(leave) else { continue };
        if slot.state != State::Waiting || !is_leave(slot.queued.notice.kind) {
            continue;
        }
        let notice = slot.queued.notice.clone();
        let undo = window.iter().enumerate().skip(leave + 1).find(|(_, later)| {
            let candidate = &later.queued.notice;
            later.state == State::Waiting
                && candidate.kind.undoes(notice.kind)
                && candidate.channel == notice.channel
                && candidate.user == notice.user
                && candidate.time_ms <= notice.time_ms + grace_ms()
        });
        if let Some((join, _)) = undo {
            for index in [leave, join] {
                if let Some(slot) = window.get_mut(index) {
                    slot.state = State::Finished;
                }
            }
            cancelled += 2;
        }
    }
    cancelled
}

/// Sends every notice that may go now, in order: not one behind a held or
/// unsent notice of its channel, not a leave inside its grace. Returns
/// whether the lease was lost meanwhile.
fn send_due(
    webhook: &Webhook,
    agent: &ureq::Agent,
    window: &mut VecDeque<Slot>,
    cache_misses: &mut HashMap<String, Instant>,
    feed: &mut dyn NoticeFeed,
    counters: Option<&WebhookCounters>,
    stop: &AtomicBool,
) -> bool {
    let now_ms = crate::clock::unix_millis();
    let mut blocked: HashSet<String> = HashSet::new();
    for slot in window.iter_mut() {
        if slot.state != State::Waiting || stop.load(Ordering::Acquire) {
            continue;
        }
        let notice = &slot.queued.notice;
        if blocked.contains(&notice.channel) {
            continue;
        }
        if !webhook.kinds.has(notice.kind) {
            slot.state = State::Finished;
            continue;
        }
        if is_leave(notice.kind) && now_ms < notice.time_ms + grace_ms() {
            blocked.insert(notice.channel.clone());
            continue;
        }
        if notice.kind == NoticeKind::CacheMiss {
            let recent = cache_misses
                .get(&notice.channel)
                .is_some_and(|at| at.elapsed() < CACHE_MISS_WINDOW);
            if recent {
                slot.state = State::Finished;
                continue;
            }
            if cache_misses.len() > 10_000 {
                cache_misses.retain(|_, at| at.elapsed() < CACHE_MISS_WINDOW);
            }
            cache_misses.insert(notice.channel.clone(), Instant::now());
        }
        match post(webhook, agent, &slot.queued, feed, counters, stop) {
            Posted::Delivered | Posted::GaveUp => slot.state = State::Finished,
            Posted::LostLease => return true,
            Posted::Stopped => return false,
        }
    }
    false
}

/// How a notice's delivery ended.
enum Posted {
    Delivered,
    GaveUp,
    LostLease,
    Stopped,
}

/// POSTs one notice until the backend answers 2xx, retrying with backoff
/// for [`GIVE_UP_AFTER`]; renews the lease between tries.
fn post(
    webhook: &Webhook,
    agent: &ureq::Agent,
    queued: &Queued,
    feed: &mut dyn NoticeFeed,
    counters: Option<&WebhookCounters>,
    stop: &AtomicBool,
) -> Posted {
    let body = wire::body(&queued.notice);
    let headers = wire::signature_headers(&webhook.signing, &body);
    let started = Instant::now();
    let mut backoff = Duration::from_secs(1);
    loop {
        let mut request = agent
            .post(&webhook.url)
            .header("Content-Type", "application/json")
            .header(ID_HEADER, &queued.id);
        for (name, value) in &headers {
            request = request.header(*name, value);
        }
        let outcome = match request.send(&body[..]) {
            Ok(response) if response.status().is_success() => return delivered(counters),
            Ok(response) => format!("answered {}", response.status()),
            Err(error) => error.to_string(),
        };
        if started.elapsed() >= GIVE_UP_AFTER {
            log::error!(
                "webhook {}: gave up on notice {} ({} of {}) after {:?}: {outcome}",
                webhook.name,
                queued.id,
                queued.notice.kind.name(),
                queued.notice.channel,
                GIVE_UP_AFTER
            );
            if let Some(counters) = counters {
                counters.failed.inc();
            }
            return Posted::GaveUp;
        }
        if let Some(counters) = counters {
            counters.retried.inc();
        }
        log::debug!(
            "webhook {}: notice {}: {outcome}; retrying in {backoff:?}",
            webhook.name,
            queued.id
        );
        pause(backoff, stop);
        if stop.load(Ordering::Acquire) {
            return Posted::Stopped;
        }
        if !matches!(feed.lead(), Ok(true)) {
            return Posted::LostLease;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn delivered(counters: Option<&WebhookCounters>) -> Posted {
    if let Some(counters) = counters {
        counters.delivered.inc();
    }
    Posted::Delivered
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Notice;

    fn slot(kind: NoticeKind, channel: &str, user: Option<&str>, time_ms: u64, id: u64) -> Slot {
        let mut notice = Notice::new(kind, channel, user);
        notice.time_ms = time_ms;
        Slot { queued: Queued { id: id.to_string(), notice }, state: State::Waiting }
    }

    #[test]
    fn a_rejoin_within_the_grace_cancels_the_leave_and_itself() {
        let mut window: VecDeque<Slot> = [
            slot(NoticeKind::MemberRemoved, "c", Some("u1"), 1_000, 1),
            slot(NoticeKind::MemberAdded, "c", Some("u2"), 1_500, 2),
            slot(NoticeKind::MemberAdded, "c", Some("u1"), 3_900, 3),
            slot(NoticeKind::ChannelVacated, "d", None, 1_000, 4),
            slot(NoticeKind::ChannelOccupied, "d", None, 4_001, 5),
        ]
        .into();
        assert_eq!(cancel_undone(&mut window), 2);
        let states: Vec<State> = window.iter().map(|slot| slot.state).collect();
        assert_eq!(
            states,
            [State::Finished, State::Waiting, State::Finished, State::Waiting, State::Waiting],
            "u1 came back within 3 s; d's occupant came back 3.001 s later"
        );
    }
}
