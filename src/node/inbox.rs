//! A shard's inbox: work handed over by other threads, with one wake-up for many items.

use super::UserTask;
use crate::broker::{Delivery, EngineAnswer, ReplyTo};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::ThreadId;

/// Work another thread gives a shard.
#[derive(Debug)]
pub enum Work {
    /// An event for the shard's subscribers of one channel.
    Deliver(Delivery),
    /// Stop accepting, close every connection gracefully, and exit.
    Shutdown,
    /// A server API call on one user's connections (disconnect,
    /// unsubscribe), carried out by every shard.
    ForUser(Arc<UserTask>),
    /// An engine's answer to a connection of this shard that asked.
    Answer {
        /// The connection, and its tag for the request.
        to: ReplyTo,
        /// The answer.
        answer: EngineAnswer,
    },
}

/// How a shard is woken up: through its epoll instance, or through an
/// eventfd that its io_uring reads.
#[derive(Debug)]
pub enum Waker {
    /// Registered with the shard's `mio::Poll`.
    Poll(mio::Waker),
    /// An eventfd (non-blocking) the shard's ring keeps a read posted on.
    EventFd(OwnedFd),
}

impl Waker {
    /// A fresh eventfd waker.
    pub fn event_fd() -> io::Result<Waker> {
        let flags = rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK;
        Ok(Waker::EventFd(rustix::event::eventfd(0, flags)?))
    }

    fn wake(&self) -> io::Result<()> {
        match self {
            Waker::Poll(waker) => waker.wake(),
            Waker::EventFd(fd) => match rustix::io::write(fd, &1u64.to_ne_bytes()) {
                // The counter is saturated: the shard has a wake-up pending.
                Ok(_) | Err(rustix::io::Errno::AGAIN) => Ok(()),
                Err(error) => Err(error.into()),
            },
        }
    }
}

/// Items for one shard, and the waker that interrupts its wait.
#[derive(Debug)]
pub struct Inbox {
    items: Mutex<Vec<Work>>,
    waker: Waker,
    /// A wake-up is on its way: later senders need not send another.
    woken: AtomicBool,
    /// The shard's thread. It drains its inbox at the end of every turn of
    /// its loop, so work it sends itself needs no wake-up.
    owner: OnceLock<ThreadId>,
    /// The shard sent itself work: its next `poll` must not sleep.
    local_pending: AtomicBool,
}

impl Inbox {
    /// An inbox whose waker the shard's reactor listens to.
    pub fn new(waker: Waker) -> Self {
        Inbox {
            items: Mutex::new(Vec::new()),
            waker,
            woken: AtomicBool::new(false),
            owner: OnceLock::new(),
            local_pending: AtomicBool::new(false),
        }
    }

    /// The eventfd to read, for a shard on io_uring.
    pub fn event_fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.waker {
            Waker::EventFd(fd) => Some(fd.as_fd()),
            Waker::Poll(_) => None,
        }
    }

    /// Marks the calling thread as the shard's (called once, as it starts).
    pub fn claim(&self) {
        let _ = self.owner.set(std::thread::current().id());
    }

    /// Hands `work` to the shard. Never blocks on the shard: the lock is held
    /// only to push.
    pub fn send(&self, work: Work) {
        self.items.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(work);
        if self.owner.get() == Some(&std::thread::current().id()) {
            self.local_pending.store(true, Ordering::Relaxed);
            return;
        }
        if !self.woken.swap(true, Ordering::AcqRel)
            && let Err(error) = self.waker.wake()
        {
            log::error!("could not wake a shard: {error}");
        }
    }

    /// Whether the shard sent itself work it has not drained yet.
    pub fn has_local_work(&self) -> bool {
        self.local_pending.load(Ordering::Relaxed)
    }

    /// Moves every pending item into `into` (which the caller keeps and
    /// reuses, so draining allocates nothing in the steady state).
    pub fn drain(&self, into: &mut Vec<Work>) {
        // Cleared before taking the items: anything sent after this point
        // wakes the shard again.
        self.woken.store(false, Ordering::Release);
        self.local_pending.store(false, Ordering::Relaxed);
        let mut items = self.items.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        std::mem::swap(&mut *items, into);
    }
}
