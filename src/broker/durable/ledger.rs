//! What the store holds, per channel, as the writer knows it (epoch, oldest and newest offset, when the newest was published), and the changes that keep the disk within `history_size` and `history_ttl_secs`.
//!
//! The ledger changes only after a batch has committed: a batch that fails
//! leaves it as the disk is.

use super::store::{Batch, StoredChannel};
use crate::clock::Millis;
use crate::types::Epoch;
use bytes::Bytes;
use std::collections::HashMap;
use std::collections::hash_map::Entry as MapEntry;
use std::sync::Arc;

/// One channel on disk: publications `oldest..=newest` of `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) epoch: Epoch,
    pub(super) oldest: u64,
    pub(super) newest: u64,
    /// When the newest was published (table clock: Unix milliseconds).
    pub(super) newest_at: Millis,
    /// The namespace's history TTL, in milliseconds.
    pub(super) ttl: Millis,
}

impl Entry {
    fn count(&self) -> u64 {
        self.newest.saturating_sub(self.oldest).saturating_add(1)
    }

    /// Removes every publication of the entry.
    fn remove_all(&self, name: &str, batch: &mut Batch) {
        for offset in self.oldest..=self.newest {
            batch.remove_publication(name, self.epoch, offset);
        }
    }
}

/// The store's channels.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    channels: HashMap<Arc<str>, Entry>,
    /// Publications stored, over every channel.
    publications: u64,
}

/// One committed group's publications of one channel, to store.
#[derive(Debug)]
pub(super) struct Appended {
    /// The channel's epoch (in the table).
    pub(super) epoch: Epoch,
    /// The oldest offset the table's history still holds: older ones leave
    /// the disk too (they expired).
    pub(super) keep_from: u64,
    /// The namespace's `history_size`.
    pub(super) size: u64,
    /// The namespace's history TTL, in milliseconds.
    pub(super) ttl: Millis,
    /// `(offset, at, data)`, contiguous, oldest first, never empty.
    pub(super) publications: Vec<(u64, Millis, Bytes)>,
}

/// A group's changes to the ledger, applied once its batch has committed.
#[derive(Debug, Default)]
pub(super) struct Changes {
    entries: Vec<(Arc<str>, Option<Entry>)>,
}

impl Ledger {
    /// Channels stored.
    pub(super) fn channel_count(&self) -> u64 {
        self.channels.len() as u64
    }

    /// Publications stored.
    pub(super) fn publication_count(&self) -> u64 {
        self.publications
    }

    /// Notes a channel read back at start-up (its publications as kept).
    pub(super) fn restored(&mut self, name: Arc<str>, channel: &StoredChannel, ttl: Millis) {
        let (Some(first), Some(last)) = (channel.publications.first(), channel.publications.last())
        else {
            return;
        };
        let entry = Entry {
            epoch: channel.epoch,
            oldest: first.offset,
            newest: last.offset,
            newest_at: last.at,
            ttl,
        };
        self.publications += entry.count();
        self.channels.insert(name, entry);
    }

    /// Writes `appended` into `batch`: the channel's record when it is new
    /// to the disk (or made anew, when the disk's publications of its old
    /// epoch go), the publications that stay within `history_size` and the
    /// TTL, and the removal of those that no longer do. Returns the ledger's
    /// change, for [`Ledger::apply`] once the batch has committed.
    pub(super) fn append(
        &self,
        name: &Arc<str>,
        appended: &Appended,
        batch: &mut Batch,
        changes: &mut Changes,
    ) {
        let (Some(first), Some(last)) =
            (appended.publications.first(), appended.publications.last())
        else {
            return;
        };
        let (first, (newest, newest_at)) = (first.0, (last.0, last.1));
        let prior = self.channels.get(name).filter(|prior| prior.epoch == appended.epoch);
        match self.channels.get(name) {
            Some(prior) if prior.epoch == appended.epoch => {}
            other => {
                // New to the disk, or made anew in the table (it expired
                // there): the old epoch's publications go.
                if let Some(old) = other {
                    old.remove_all(name, batch);
                }
                batch.put_channel(name, appended.epoch);
            }
        }
        let base = prior.map_or(first, |prior| prior.oldest);
        let within_size = newest.saturating_add(1).saturating_sub(appended.size.max(1));
        let oldest = base.max(appended.keep_from).max(within_size).min(newest);
        if let Some(prior) = prior {
            for offset in prior.oldest..oldest.min(prior.newest.saturating_add(1)) {
                batch.remove_publication(name, appended.epoch, offset);
            }
        }
        for (offset, at, data) in &appended.publications {
            // One that history_size pushes out at once is never written.
            if *offset >= oldest {
                batch.put_publication(name, appended.epoch, *offset, *at, data);
            }
        }
        let entry = Entry { epoch: appended.epoch, oldest, newest, newest_at, ttl: appended.ttl };
        changes.entries.push((name.clone(), Some(entry)));
    }

    /// Removes every channel whose newest publication is older than its
    /// TTL (the table frees such a channel too, once nobody is subscribed).
    pub(super) fn expire(&self, now: Millis, batch: &mut Batch, changes: &mut Changes) {
        for (name, entry) in &self.channels {
            if entry.newest_at.saturating_add(entry.ttl) <= now {
                entry.remove_all(name, batch);
                batch.remove_channel(name);
                changes.entries.push((name.clone(), None));
            }
        }
    }

    /// Applies a committed batch's changes.
    pub(super) fn apply(&mut self, changes: Changes) {
        for (name, entry) in changes.entries {
            let before = match self.channels.entry(name) {
                MapEntry::Occupied(mut occupied) => match entry {
                    Some(entry) => Some(std::mem::replace(occupied.get_mut(), entry)),
                    None => Some(occupied.remove()),
                },
                MapEntry::Vacant(vacant) => {
                    if let Some(entry) = entry {
                        vacant.insert(entry);
                    }
                    None
                }
            };
            self.publications = self.publications.saturating_sub(before.map_or(0, |e| e.count()));
            self.publications += entry.map_or(0, |e| e.count());
        }
    }
}
