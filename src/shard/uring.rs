//! A shard's io_uring: submissions, completions and the provided-buffer ring receives land in; the crate's only `unsafe` code.
//!
//! Every `unsafe` block here is one of three promises to the kernel: memory
//! it was given (the buffer ring, a send's bytes, the eventfd's counter)
//! stays where it is until the kernel is done with it; a descriptor it was
//! given stays open until the operations on it were submitted; and a
//! descriptor it handed back (an accepted socket) is owned by nobody else.
#![allow(unsafe_code)]

use io_uring::types::{CancelBuilder, Fd, SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, opcode, squeue};
use slab::Slab;
use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

/// Submission queue entries: a turn with more operations submits in
/// several steps.
const ENTRIES: u32 = 8192;
/// Completion queue entries: a fan-out to 10,000 connections completes
/// 10,000 sends in one turn. Past it the kernel keeps completions on a
/// slower overflow list (never drops them).
const COMPLETION_ENTRIES: u32 = 32768;
/// Buffers in a shard's receive ring (a power of two). A buffer goes back
/// as soon as its bytes are copied out, so it bounds what one wait can
/// receive, not what connections hold; past it a multishot receive ends
/// (`ENOBUFS`) and is posted again.
pub const RECV_BUFFERS: u16 = 512;
/// Size of each receive buffer: one multishot completion carries at most
/// this much.
pub const RECV_BUFFER_BYTES: usize = RECV_BUFFER_LEN as usize;
const RECV_BUFFER_LEN: u32 = 4096;
/// The buffer group id of the receive ring.
const GROUP: u16 = 0;

/// Set on every `user_data` that is not a receive; receives carry the
/// connection's token, which never has it.
const TAGGED: u64 = 1 << 63;
const SEND: u64 = 1;
const ACCEPT: u64 = 2;
const WAKE: u64 = 3;
const IGNORED: u64 = 4;
const LISTEN: u64 = 5;

fn tagged(kind: u64, payload: u32) -> u64 {
    TAGGED | kind << 32 | u64::from(payload)
}

/// What an operation with this `user_data` is for.
fn op_of(user_data: u64) -> Op {
    if user_data & TAGGED == 0 {
        return Op::Recv(user_data);
    }
    let payload = u32::try_from(user_data & 0xFFFF_FFFF).unwrap_or(u32::MAX);
    match (user_data & !TAGGED) >> 32 {
        SEND => Op::Send(payload),
        ACCEPT => Op::Accept(payload),
        WAKE => Op::Wake,
        LISTEN => Op::Listen(payload),
        _ => Op::Ignored,
    }
}

/// What a completion finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Bytes, end-of-file or an error for the connection with this token.
    Recv(u64),
    /// A send, by its slot.
    Send(u32),
    /// An accepted socket (or an error) from listener `n`.
    Accept(u32),
    /// Listener `n` has a client waiting.
    Listen(u32),
    /// The inbox's eventfd was read.
    Wake,
    /// A cancellation or close: nothing to do.
    Ignored,
}

/// One completion, copied out of the queue.
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    /// What it was for.
    pub op: Op,
    /// The result: a count or descriptor, or `-errno`.
    pub result: i32,
    flags: u32,
}

impl Completion {
    /// The operation goes on (a multishot one posts more completions).
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }

    /// The receive buffer the bytes are in, if it took one.
    pub fn buffer(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }
}

/// A send in flight: its bytes stay here until its completion.
#[derive(Debug)]
struct Sending {
    fd: RawFd,
    token: u64,
    bytes: Vec<u8>,
    sent: usize,
}

/// What became of a send.
#[derive(Debug)]
pub enum Sent {
    /// All of it went into the socket; the buffer comes back for reuse.
    Done(Vec<u8>),
    /// Part of it went: call [`Ring::resume_send`] or [`Ring::drop_send`].
    Partial,
    /// It failed with this errno.
    Failed(i32, Vec<u8>),
}

/// The buffer ring: `RECV_BUFFERS` entries the kernel takes receive buffers
/// from, and the buffers themselves.
#[derive(Debug)]
struct BufferRing {
    /// Page-aligned, `RECV_BUFFERS` entries of 16 bytes; its first entry's
    /// last field is the tail the kernel reads.
    entries: NonNull<io_uring::types::BufRingEntry>,
    layout: Layout,
    buffers: Box<[u8]>,
    /// Entries handed to the kernel so far (wrapping).
    tail: u16,
}

impl BufferRing {
    fn new() -> io::Result<BufferRing> {
        let bytes = usize::from(RECV_BUFFERS) * size_of::<io_uring::types::BufRingEntry>();
        let layout = Layout::from_size_align(bytes, 4096).map_err(io::Error::other)?;
        // SAFETY: the layout's size is not zero.
        let memory = unsafe { alloc_zeroed(layout) };
        let entries =
            NonNull::new(memory.cast()).ok_or_else(|| io::Error::other("out of memory"))?;
        let mut buffers =
            vec![0u8; usize::from(RECV_BUFFERS) * RECV_BUFFER_BYTES].into_boxed_slice();
        // The kernel takes the buffers in turn: all of them are soon in use.
        // Touched now, they are a fixed cost from the start (2 MiB per
        // shard) rather than memory that seems to grow with connections.
        for page in buffers.chunks_mut(4096) {
            if let Some(byte) = page.first_mut() {
                *byte = 1;
            }
        }
        let mut ring = BufferRing { entries, layout, buffers, tail: 0 };
        for id in 0..RECV_BUFFERS {
            ring.give(id);
        }
        Ok(ring)
    }

    /// Hands buffer `id` (back) to the kernel.
    fn give(&mut self, id: u16) {
        let mask = RECV_BUFFERS - 1;
        let start = usize::from(id) * RECV_BUFFER_BYTES;
        let address = self.buffers.as_mut_ptr().wrapping_add(start) as u64;
        // SAFETY: the index is masked into the allocation of RECV_BUFFERS
        // entries; the kernel reads an entry only between the old and the
        // new tail, and this one is outside until the tail moves below.
        let entry = unsafe { &mut *self.entries.as_ptr().add(usize::from(self.tail & mask)) };
        entry.set_addr(address);
        entry.set_len(RECV_BUFFER_LEN);
        entry.set_bid(id);
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field lies in the first entry, inside the
        // allocation, and is only ever accessed atomically by the kernel
        // (a u16 aligned to 2); the release store publishes the entry.
        unsafe {
            let tail =
                io_uring::types::BufRingEntry::tail(self.entries.as_ptr()) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    fn bytes(&self, id: u16, len: usize) -> &[u8] {
        let start = usize::from(id) * RECV_BUFFER_BYTES;
        self.buffers.get(start..start + len.min(RECV_BUFFER_BYTES)).unwrap_or_default()
    }
}

// SAFETY: the entries are owned by this value alone (the kernel aside, which
// synchronises through the tail); it moves to its shard's thread once.
unsafe impl Send for BufferRing {}

impl Drop for BufferRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the ring that knew the
        // address was unregistered or closed before (see `Ring`'s drop).
        unsafe { dealloc(self.entries.as_ptr().cast(), self.layout) }
    }
}

/// One shard's ring.
pub struct Ring {
    ring: IoUring,
    buffers: BufferRing,
    sends: Slab<Sending>,
    /// Completions taken out of a full queue to make room for submissions,
    /// handed out first by the next `completions`.
    backlog: Vec<Completion>,
    /// The eventfd's counter is read into this.
    wake_counter: Box<[u8; 8]>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring").field("sends", &self.sends.len()).finish_non_exhaustive()
    }
}

impl Ring {
    /// A ring with its receive buffers registered, or why the kernel would
    /// not have one (too old, `io_uring_disabled`, a seccomp filter).
    pub fn new() -> io::Result<Ring> {
        let ring = IoUring::builder()
            .setup_cqsize(COMPLETION_ENTRIES)
            .setup_coop_taskrun()
            .setup_submit_all()
            .build(ENTRIES)?;
        if !ring.params().is_feature_ext_arg() || !ring.params().is_feature_nodrop() {
            return Err(io::Error::other("the kernel's io_uring lacks EXT_ARG or NODROP (5.11+)"));
        }
        let buffers = BufferRing::new()?;
        // SAFETY: the entries live as long as `Ring` and are unregistered in
        // its drop before they are freed.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                buffers.entries.as_ptr() as u64,
                RECV_BUFFERS,
                GROUP,
                0,
            )?;
        }
        let mut ring = Ring {
            ring,
            buffers,
            sends: Slab::new(),
            backlog: Vec::new(),
            wake_counter: Box::new([0; 8]),
        };
        ring.check_multishot_receive()?;
        Ok(ring)
    }

    /// Multishot receive needs Linux 6.0: older kernels take the request
    /// and fail it. Tried once on a socket pair.
    fn check_multishot_receive(&mut self) -> io::Result<()> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        self.recv(ours.as_raw_fd(), 0);
        io::Write::write_all(&mut &theirs, b"x")?;
        self.ring.submit_and_wait(1)?;
        let mut completions = Vec::new();
        self.completions(&mut completions);
        let answer = completions.first().copied();
        let result = match answer {
            Some(completion) if completion.result == 1 => Ok(()),
            Some(completion) => Err(io::Error::from_raw_os_error(-completion.result)),
            None => Err(io::Error::other("no completion")),
        };
        if let Some(id) = answer.and_then(|completion| completion.buffer()) {
            self.buffers.give(id);
        }
        // Closing the pair ends the receive; its last completion is drained
        // with the shard's first.
        drop(theirs);
        self.push(&opcode::AsyncCancel::new(0).build().user_data(tagged(IGNORED, 0)));
        self.ring.submit_and_wait(1)?;
        drop(ours);
        result.map_err(|error| io::Error::new(error.kind(), format!("multishot receive: {error}")))
    }

    /// Queues `entry` for the next submission; `false` if it was lost (see
    /// [`Ring::lose`]).
    fn push(&mut self, entry: &squeue::Entry) -> bool {
        loop {
            // SAFETY: every entry built in this module points only at memory
            // that outlives its operation (the comments at each say why).
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return true;
            }
            // Full: hand what is queued to the kernel and retry. If the
            // kernel will not take submissions until completions are
            // reaped (EBUSY), they are moved aside for the shard first.
            match self.ring.submit() {
                Ok(_) => {}
                Err(error) if error.raw_os_error() == Some(libc_flags::EBUSY) => {
                    let mut backlog = std::mem::take(&mut self.backlog);
                    self.reap(&mut backlog);
                    self.backlog = backlog;
                }
                Err(error) if error.raw_os_error() == Some(libc_flags::EINTR) => {}
                Err(error) => {
                    self.lose(entry, &error);
                    return false;
                }
            }
        }
    }

    /// An operation the kernel would not take (the queue was full and the
    /// submission failed with something other than `EBUSY`, which a valid
    /// ring is not expected to do): it completes at once with the error, so
    /// its owner sees it fail (a connection closes, an accept pauses)
    /// rather than wait for it forever.
    fn lose(&mut self, entry: &squeue::Entry, error: &io::Error) {
        log::error!("io_uring submit failed, an operation fails with it: {error}");
        let errno = error.raw_os_error().unwrap_or(libc_flags::EIO);
        let op = op_of(entry.get_user_data());
        self.backlog.push(Completion { op, result: -errno, flags: 0 });
    }

    /// Posts a multishot receive on `fd` for the connection `token`.
    pub fn recv(&mut self, fd: RawFd, token: u64) {
        let entry = opcode::RecvMulti::new(Fd(fd), GROUP).build().user_data(token & !TAGGED);
        self.push(&entry);
    }

    /// Cancels the receive posted for `token`.
    pub fn cancel_recv(&mut self, token: u64) {
        let entry = opcode::AsyncCancel::new(token & !TAGGED).build();
        self.push(&entry.user_data(tagged(IGNORED, 0)));
    }

    /// Posts a multishot accept on listener `index`; sockets come
    /// non-blocking and close-on-exec.
    pub fn accept(&mut self, listener: BorrowedFd<'_>, index: u32) {
        let flags = libc_flags::SOCK_NONBLOCK | libc_flags::SOCK_CLOEXEC;
        let entry = opcode::AcceptMulti::new(Fd(listener.as_raw_fd())).flags(flags).build();
        self.push(&entry.user_data(tagged(ACCEPT, index)));
    }

    /// Posts a one-shot wait for a client on listener `index` (while the
    /// process is out of descriptors, an accept would fail at once, client
    /// or not).
    pub fn wait_for_client(&mut self, listener: BorrowedFd<'_>, index: u32) {
        let entry = opcode::PollAdd::new(Fd(listener.as_raw_fd()), libc_flags::POLLIN).build();
        self.push(&entry.user_data(tagged(LISTEN, index)));
    }

    /// Cancels the accept (or the wait for a client) posted on listener
    /// `index`.
    pub fn cancel_accept(&mut self, index: u32) {
        for kind in [ACCEPT, LISTEN] {
            let entry = opcode::AsyncCancel::new(tagged(kind, index)).build();
            self.push(&entry.user_data(tagged(IGNORED, 0)));
        }
    }

    /// Posts a read of the inbox's eventfd.
    pub fn wait_for_wake(&mut self, event_fd: BorrowedFd<'_>) {
        // SAFETY (of the push): the counter is boxed in `self` and the ring
        // is closed before it is freed.
        let entry =
            opcode::Read::new(Fd(event_fd.as_raw_fd()), self.wake_counter.as_mut_ptr(), 8).build();
        self.push(&entry.user_data(tagged(WAKE, 0)));
    }

    /// Sends `bytes` on `fd` for the connection `token`.
    pub fn send(&mut self, fd: RawFd, token: u64, bytes: Vec<u8>) {
        let slot = self.sends.insert(Sending { fd, token, bytes, sent: 0 });
        self.post_send(slot);
    }

    fn post_send(&mut self, slot: usize) {
        let Some(sending) = self.sends.get(slot) else { return };
        let rest = sending.bytes.get(sending.sent..).unwrap_or_default();
        let len = u32::try_from(rest.len()).unwrap_or(u32::MAX);
        // SAFETY (of the push): the bytes stay in `self.sends` (a Vec's heap
        // buffer does not move with the slab) until this send's completion;
        // the ring is closed before `self.sends` is dropped.
        let entry = opcode::Send::new(Fd(sending.fd), rest.as_ptr(), len)
            .flags(libc_flags::MSG_NOSIGNAL | libc_flags::MSG_WAITALL)
            .build();
        let Ok(slot) = u32::try_from(slot) else { return };
        self.push(&entry.user_data(tagged(SEND, slot)));
    }

    /// The connection a send is for.
    pub fn send_token(&self, slot: u32) -> Option<u64> {
        self.sends.get(slot as usize).map(|sending| sending.token)
    }

    /// Records a send's completion.
    pub fn sent(&mut self, slot: u32, result: i32) -> Sent {
        let slot = slot as usize;
        let Some(sending) = self.sends.get_mut(slot) else { return Sent::Partial };
        match usize::try_from(result) {
            Ok(count) if sending.sent + count < sending.bytes.len() && count > 0 => {
                sending.sent += count;
                Sent::Partial
            }
            Ok(0) if !sending.bytes.is_empty() => {
                Sent::Failed(libc_flags::EPIPE, self.sends.remove(slot).bytes)
            }
            Ok(_) => Sent::Done(self.sends.remove(slot).bytes),
            Err(_) => Sent::Failed(-result, self.sends.remove(slot).bytes),
        }
    }

    /// Sends the rest of a partial send (its connection is still open).
    pub fn resume_send(&mut self, slot: u32) {
        self.post_send(slot as usize);
    }

    /// Forgets a partial send whose connection is gone.
    pub fn drop_send(&mut self, slot: u32) {
        self.sends.try_remove(slot as usize);
    }

    /// Closes a connection's socket through the ring: what it has queued
    /// there is cancelled first (a receive, a send the socket had no room
    /// for), then the descriptor is closed, in that order and with nothing
    /// in between, so no operation can reach a later socket given the same
    /// number.
    pub fn close(&mut self, fd: OwnedFd) {
        let fd = fd.into_raw_fd();
        let cancel = opcode::AsyncCancel2::new(CancelBuilder::fd(Fd(fd)).all())
            .build()
            .flags(squeue::Flags::IO_HARDLINK)
            .user_data(tagged(IGNORED, 0));
        self.push(&cancel);
        if !self.push(&opcode::Close::new(Fd(fd)).build().user_data(tagged(IGNORED, 1))) {
            // SAFETY: the close was not queued, so the descriptor is still
            // this shard's alone; it is closed here instead.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }

    /// Submits what is queued and waits for at least one completion, at
    /// most `timeout` (`None`: no limit; zero: no waiting).
    /// Completions already moved aside (see [`Ring::push`]) make it not
    /// wait at all.
    pub fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let timeout = if self.backlog.is_empty() { timeout } else { Some(Duration::ZERO) };
        let result = match timeout {
            Some(Duration::ZERO) if self.ring.submission().is_empty() => return Ok(()),
            Some(Duration::ZERO) => self.ring.submit(),
            Some(timeout) => {
                let timespec = Timespec::from(timeout);
                let args = SubmitArgs::new().timespec(&timespec);
                self.ring.submitter().submit_with_args(1, &args)
            }
            None => self.ring.submit_and_wait(1),
        };
        match result {
            Ok(_) => Ok(()),
            Err(error)
                if matches!(
                    error.raw_os_error(),
                    Some(libc_flags::ETIME | libc_flags::EINTR | libc_flags::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    /// Appends every completion waiting in the queue to `into`, in order.
    pub fn completions(&mut self, into: &mut Vec<Completion>) {
        into.append(&mut self.backlog);
        self.reap(into);
    }

    fn reap(&mut self, into: &mut Vec<Completion>) {
        for entry in self.ring.completion() {
            let op = op_of(entry.user_data());
            into.push(Completion { op, result: entry.result(), flags: entry.flags() });
        }
    }

    /// The bytes a receive completion put in buffer `id`.
    pub fn received(&self, id: u16, len: usize) -> &[u8] {
        self.buffers.bytes(id, len)
    }

    /// Gives buffer `id` back to the kernel once its bytes were copied.
    pub fn recycle(&mut self, id: u16) {
        self.buffers.give(id);
    }

    /// Submits what is queued without waiting (before the shard exits).
    pub fn flush(&mut self) {
        let _ = self.ring.submit();
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Everything still posted is cancelled and its completion awaited
        // (briefly), so the kernel is done with the sends' bytes, the
        // buffers and the counter before they are freed.
        let cancel = opcode::AsyncCancel2::new(CancelBuilder::any()).build();
        self.push(&cancel.user_data(tagged(IGNORED, 0)));
        let deadline = std::time::Instant::now() + Duration::from_millis(500);
        loop {
            let _ = self.wait(Some(Duration::from_millis(10)));
            let mut completions = Vec::new();
            self.completions(&mut completions);
            for completion in completions {
                match completion.op {
                    Op::Send(slot) => drop(self.sends.try_remove(slot as usize)),
                    Op::Recv(_) => {
                        if let Some(id) = completion.buffer() {
                            self.buffers.give(id);
                        }
                    }
                    _ => {}
                }
            }
            if self.sends.is_empty() || std::time::Instant::now() >= deadline {
                break;
            }
        }
        // A send the kernel still holds (it would not say it was cancelled
        // in time) keeps its bytes: leaked rather than freed under it.
        if !self.sends.is_empty() {
            std::mem::forget(std::mem::take(&mut self.sends));
        }
        // The kernel forgets the buffer ring's address before it is freed.
        let _ = self.ring.submitter().unregister_buf_ring(GROUP);
    }
}

/// An accepted socket's descriptor, now owned by the shard.
pub fn accepted(result: i32) -> Option<OwnedFd> {
    // SAFETY: a non-negative result of an accept is a new descriptor that
    // the kernel gave this process and nothing else refers to.
    (result >= 0).then(|| unsafe { OwnedFd::from_raw_fd(result) })
}

/// The few constants of the Linux ABI the ring needs (from the kernel's
/// uapi headers; the same on every architecture herald builds for).
mod libc_flags {
    pub const SOCK_NONBLOCK: i32 = 0o4000;
    pub const SOCK_CLOEXEC: i32 = 0o2000000;
    pub const MSG_NOSIGNAL: i32 = 0x4000;
    pub const MSG_WAITALL: i32 = 0x100;
    pub const EPIPE: i32 = 32;
    pub const POLLIN: u32 = 0x1;
    pub const EINTR: i32 = 4;
    pub const EIO: i32 = 5;
    pub const EBUSY: i32 = 16;
    pub const ETIME: i32 = 62;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn an_operation_the_kernel_would_not_take_fails_at_once_with_its_error() {
        let mut ring = match Ring::new() {
            Ok(ring) => ring,
            Err(error) => {
                eprintln!("skipped: no io_uring here ({error})");
                return;
            }
        };
        // What the start-up check left behind (its receive's end) is
        // collected first, so that the queue is empty.
        let mut completions = Vec::new();
        for _ in 0..10 {
            ring.wait(Some(Duration::from_millis(200))).unwrap();
            ring.completions(&mut completions);
            if completions.drain(..).count() == 0 {
                break;
            }
        }
        let (ours, _theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let bytes = b"hello".to_vec();
        let slot = ring.sends.insert(Sending { fd: ours.as_raw_fd(), token: 7, bytes, sent: 0 });
        let slot = u32::try_from(slot).unwrap();
        let entry = opcode::Send::new(Fd(ours.as_raw_fd()), std::ptr::null(), 0)
            .build()
            .user_data(tagged(SEND, slot));
        const ENOMEM: i32 = 12;
        ring.lose(&entry, &io::Error::from_raw_os_error(ENOMEM));

        // Nothing else is posted: a wait that waited for the kernel would
        // sit out its whole timeout.
        let started = Instant::now();
        ring.wait(Some(Duration::from_secs(30))).unwrap();
        assert!(started.elapsed() < Duration::from_secs(10), "waited with a completion in hand");

        ring.completions(&mut completions);
        let completion = completions.iter().find(|completion| completion.op == Op::Send(slot));
        let completion = completion.expect("the lost send completes");
        assert_eq!(completion.result, -ENOMEM);
        assert!(!completion.more());
        assert_eq!(ring.send_token(slot), Some(7));
        match ring.sent(slot, completion.result) {
            Sent::Failed(errno, bytes) => {
                assert_eq!((errno, bytes.as_slice()), (ENOMEM, &b"hello"[..]))
            }
            other => panic!("the send should have failed, not {other:?}"),
        }
        assert!(ring.sends.is_empty(), "the failed send's slot is freed");
    }
}
