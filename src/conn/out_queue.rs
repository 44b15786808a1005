//! A connection's outbound queue: reference-counted chunks written with vectored writes.

use super::io::{self, IoOutcome, SendVectored};
use bytes::{Buf, Bytes};
use std::collections::VecDeque;
use std::io::IoSlice;

/// Chunks handed to one `writev` at most. Linux takes up to 1024 (IOV_MAX);
/// 64 chunks is already far more than one socket buffer's worth of frames.
const MAX_IOVECS: usize = 64;

/// Chunks an empty queue makes room for at its first push (512 bytes): a
/// busy fan-out turn queues each subscriber several frames, and growing
/// from four (the default) to 16 costs two reallocations per connection
/// per turn; this costs none up to 16.
const FIRST_CAPACITY: usize = 16;

/// Bytes waiting to be written to one connection. A publication pushed to
/// many connections is one `Bytes` whose clones sit in each queue: fan-out
/// costs a reference count, not a copy.
#[derive(Debug, Default)]
pub struct OutQueue {
    chunks: VecDeque<Bytes>,
    len: usize,
    /// The front chunk is partly written: it must go out whole, or the frame
    /// it belongs to would be cut.
    front_started: bool,
}

/// How a flush ended.
#[derive(Debug)]
pub enum Flush {
    /// Everything queued is written.
    Drained,
    /// The socket is full; the rest waits for the next writable event.
    WouldBlock,
    /// The peer is gone; nothing more can be written.
    Closed,
}

impl OutQueue {
    /// Queued bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends a chunk. Empty chunks are dropped.
    pub fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            if self.chunks.capacity() == 0 {
                self.chunks.reserve_exact(FIRST_CAPACITY);
            }
            self.len += chunk.len();
            self.chunks.push_back(chunk);
        }
    }

    /// Drops every chunk not yet started, keeping a partly written front chunk
    /// so the stream stays well framed. Used when a slow consumer is closed:
    /// its close frame should not wait behind data it will never read.
    pub fn discard_unstarted(&mut self) {
        let keep = usize::from(self.front_started);
        while self.chunks.len() > keep {
            if let Some(chunk) = self.chunks.pop_back() {
                self.len -= chunk.len();
            }
        }
    }

    /// Writes as much as the socket takes.
    pub fn write_to<W: SendVectored>(&mut self, socket: &mut W) -> Flush {
        while !self.chunks.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            let mut offered = 0;
            for (slot, chunk) in slices.iter_mut().zip(self.chunks.iter()) {
                *slot = IoSlice::new(chunk);
                count += 1;
                offered += chunk.len();
            }
            let slices = slices.get(..count).unwrap_or_default();
            match io::write_vectored(socket, slices) {
                IoOutcome::Progress(written) => {
                    self.consume_bytes(written);
                    // A short write filled the socket buffer: the next write
                    // would only say EAGAIN, and an edge-triggered EPOLLOUT
                    // comes when there is room again.
                    if written < offered {
                        return Flush::WouldBlock;
                    }
                }
                IoOutcome::WouldBlock => return Flush::WouldBlock,
                IoOutcome::Closed | IoOutcome::Error(_) => return Flush::Closed,
            }
        }
        // An idle connection keeps no queue allocation.
        self.chunks = VecDeque::new();
        Flush::Drained
    }

    /// The queued chunks, front first.
    pub fn chunks(&self) -> impl Iterator<Item = &Bytes> {
        self.chunks.iter()
    }

    /// How many chunks are queued.
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// Takes `written` bytes off the front (they were sent, or encrypted
    /// to be sent). An emptied queue keeps no allocation.
    pub fn consume(&mut self, written: usize) {
        self.consume_bytes(written);
        if self.chunks.is_empty() {
            self.chunks = VecDeque::new();
        }
    }

    fn consume_bytes(&mut self, mut written: usize) {
        self.len -= written.min(self.len);
        while written > 0 {
            let Some(front) = self.chunks.front_mut() else { break };
            if written >= front.len() {
                written -= front.len();
                self.chunks.pop_front();
                self.front_started = false;
            } else {
                front.advance(written);
                self.front_started = true;
                written = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{self, Write};

    /// Takes at most `limit` bytes per write, then WouldBlock after `budget`.
    struct Throttled {
        written: Vec<u8>,
        limit: usize,
        budget: usize,
    }

    impl SendVectored for Throttled {}

    #[test]
    fn a_queue_allocates_once_for_a_turns_frames_and_frees_when_drained() {
        let mut queue = OutQueue::default();
        assert_eq!(queue.chunks.capacity(), 0);
        queue.push(Bytes::from_static(b"a"));
        let capacity = queue.chunks.capacity();
        assert!(capacity >= FIRST_CAPACITY, "{capacity}");
        for _ in 1..FIRST_CAPACITY {
            queue.push(Bytes::from_static(b"b"));
        }
        assert_eq!(queue.chunks.capacity(), capacity, "grew within the first 16 frames");
        let mut socket = Throttled { written: Vec::new(), limit: usize::MAX, budget: usize::MAX };
        assert!(matches!(queue.write_to(&mut socket), Flush::Drained));
        assert_eq!(socket.written.len(), FIRST_CAPACITY);
        assert_eq!(queue.chunks.capacity(), 0, "an idle connection keeps no queue");
    }

    impl Write for Throttled {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            if self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for buf in bufs {
                let take = buf.len().min(self.limit.saturating_sub(n)).min(self.budget);
                self.written.extend_from_slice(&buf[..take]);
                n += take;
                self.budget -= take;
                if take < buf.len() || n == self.limit {
                    break;
                }
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn partial_writes_keep_order_and_count() {
        let mut queue = OutQueue::default();
        queue.push(Bytes::from_static(b"hello "));
        queue.push(Bytes::new());
        queue.push(Bytes::from_static(b"wide "));
        queue.push(Bytes::from_static(b"world"));
        assert_eq!(queue.len(), 16);
        let mut socket = Throttled { written: Vec::new(), limit: 4, budget: 7 };
        // A short write means the socket is full: no second attempt.
        assert!(matches!(queue.write_to(&mut socket), Flush::WouldBlock));
        assert_eq!(queue.len(), 12);
        socket.budget = usize::MAX;
        while !matches!(queue.write_to(&mut socket), Flush::Drained) {}
        assert_eq!(socket.written, b"hello wide world");
        assert!(queue.is_empty());
    }

    #[test]
    fn discard_keeps_a_started_frame_whole() {
        let mut queue = OutQueue::default();
        queue.push(Bytes::from_static(b"frame-one"));
        queue.push(Bytes::from_static(b"frame-two"));
        let mut socket = Throttled { written: Vec::new(), limit: 3, budget: 3 };
        assert!(matches!(queue.write_to(&mut socket), Flush::WouldBlock));
        queue.discard_unstarted();
        assert_eq!(queue.len(), 6);
        socket.budget = usize::MAX;
        socket.limit = usize::MAX;
        assert!(matches!(queue.write_to(&mut socket), Flush::Drained));
        assert_eq!(socket.written, b"frame-one");

        let mut untouched = OutQueue::default();
        untouched.push(Bytes::from_static(b"a"));
        untouched.push(Bytes::from_static(b"b"));
        untouched.discard_unstarted();
        assert!(untouched.is_empty());
    }

    #[test]
    fn closed_peer_is_reported() {
        struct Reset;
        impl SendVectored for Reset {}
        impl Write for Reset {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::ConnectionReset.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut queue = OutQueue::default();
        queue.push(Bytes::from_static(b"x"));
        assert!(matches!(queue.write_to(&mut Reset), Flush::Closed));
    }
}
