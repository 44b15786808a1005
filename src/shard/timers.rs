//! A shard's timers: a min-heap of (deadline, token); an entry whose connection closed or re-armed is skipped when it comes due.

use crate::clock::Millis;
use mio::Token;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Pending deadlines. Each connection keeps at most one entry it counts on
/// (its `armed` deadline); firing never scans all connections.
#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Millis, usize)>>,
}

impl Timers {
    /// Adds an entry for `token` at `at`.
    pub fn schedule(&mut self, at: Millis, token: Token) {
        self.heap.push(Reverse((at, token.0)));
    }

    /// The earliest deadline, if any.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Removes and returns the earliest entry if it is due at `now`.
    pub fn pop_due(&mut self, now: Millis) -> Option<(Millis, Token)> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => {
                self.heap.pop().map(|Reverse((at, token))| (at, Token(token)))
            }
            _ => None,
        }
    }

    /// Pending entries, live or stale.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether no entry is pending.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_come_due_in_deadline_order() {
        let mut timers = Timers::default();
        timers.schedule(30, Token(3));
        timers.schedule(10, Token(1));
        timers.schedule(20, Token(2));
        assert_eq!(timers.next_deadline(), Some(10));
        assert_eq!(timers.pop_due(9), None);
        assert_eq!(timers.pop_due(25), Some((10, Token(1))));
        assert_eq!(timers.pop_due(25), Some((20, Token(2))));
        assert_eq!(timers.pop_due(25), None);
        assert_eq!(timers.len(), 1);
    }
}
