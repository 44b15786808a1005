//! A shard's socket: read and written with system calls on epoll, or through the ring's completions on io_uring, behind one `Transport`.

use crate::conn::io::{SendVectored, Transport};
use mio::net::TcpStream;
use std::cell::{Cell, RefCell};
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// Most bytes a connection on the ring holds received and not yet read:
/// past it, its receive is cancelled until it has read half (the kernel's
/// socket buffer and TCP's window then hold the sender back, as on epoll).
pub const MAX_HELD_INPUT: usize = 256 * 1024;
/// Most bytes one send carries; the rest waits in the connection's queue.
pub const MAX_SEND_BYTES: usize = 256 * 1024;
/// Spare buffers a shard keeps for reuse, and the largest it keeps.
const MAX_SPARES: usize = 64;
const MAX_SPARE_BYTES: usize = 16 * 1024;

/// On the ring (else epoll: everything below is unused).
const ON_RING: u8 = 1;
/// A multishot receive is posted.
const RECEIVING: u8 = 1 << 1;
/// The peer's end-of-file arrived (after the bytes held).
const END: u8 = 1 << 2;
/// A send is in flight: further output waits in the connection's queue.
const SENDING: u8 = 1 << 3;
/// Listed for the end-of-turn submission.
const LISTED: u8 = 1 << 4;
/// The connection shut its sending side while output was on its way: the
/// FIN follows the last send.
const FIN_WANTED: u8 = 1 << 5;

/// What a connection on the ring holds between the kernel and itself:
/// received bytes it has not read, written bytes not yet submitted.
#[derive(Debug, Default)]
struct Held {
    input: Vec<u8>,
    read: usize,
    output: Vec<u8>,
}

thread_local! {
    /// A shard's spare `Held` and send buffers: a busy connection reuses
    /// them, an idle one holds none.
    // The boxes are what is reused: a connection's `Option<Box<Held>>`
    // takes one without allocating.
    #[allow(clippy::vec_box)]
    static SPARE_HELD: RefCell<Vec<Box<Held>>> = const { RefCell::new(Vec::new()) };
    static SPARE_BYTES: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer for output, from the spares if there is one.
fn spare_bytes() -> Vec<u8> {
    SPARE_BYTES.with(|spares| spares.borrow_mut().pop()).unwrap_or_default()
}

/// Keeps a buffer whose send completed for the next one.
pub fn reuse_bytes(mut bytes: Vec<u8>) {
    if bytes.capacity() > MAX_SPARE_BYTES || bytes.capacity() == 0 {
        return;
    }
    bytes.clear();
    SPARE_BYTES.with(|spares| {
        let mut spares = spares.borrow_mut();
        if spares.len() < MAX_SPARES {
            spares.push(bytes);
        }
    });
}

/// A connection's socket.
#[derive(Debug)]
pub struct Socket {
    stream: TcpStream,
    state: Cell<u8>,
    /// The errno a receive or send on the ring failed with (0: none).
    errno: u16,
    held: Option<Box<Held>>,
}

impl Socket {
    /// A socket the shard's epoll reports on.
    pub fn epoll(stream: TcpStream) -> Socket {
        Socket { stream, state: Cell::new(0), errno: 0, held: None }
    }

    /// A socket the shard's ring does the I/O of.
    pub fn ring(stream: TcpStream) -> Socket {
        Socket { stream, state: Cell::new(ON_RING), errno: 0, held: None }
    }

    /// The stream, for registering it with epoll.
    pub fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// The descriptor, for the ring's operations.
    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    fn is(&self, bit: u8) -> bool {
        self.state.get() & bit != 0
    }

    fn set(&self, bit: u8, on: bool) {
        let state = self.state.get();
        self.state.set(if on { state | bit } else { state & !bit });
    }

    fn held(&mut self) -> &mut Held {
        self.held.get_or_insert_with(|| {
            SPARE_HELD.with(|spares| spares.borrow_mut().pop()).unwrap_or_default()
        })
    }

    /// Gives the `Held` back to the spares once it holds nothing.
    fn release_held(&mut self) {
        let Some(held) = &self.held else { return };
        if !held.output.is_empty() || held.read < held.input.len() {
            return;
        }
        let Some(mut held) = self.held.take() else { return };
        held.read = 0;
        held.input.clear();
        if held.input.capacity() > MAX_SPARE_BYTES {
            held.input = Vec::new();
        }
        if held.output.capacity() > MAX_SPARE_BYTES {
            held.output = Vec::new();
        }
        SPARE_HELD.with(|spares| {
            let mut spares = spares.borrow_mut();
            if spares.len() < MAX_SPARES {
                spares.push(held);
            }
        });
    }

    /// Bytes a receive completion brought.
    pub fn received(&mut self, bytes: &[u8]) {
        self.held().input.extend_from_slice(bytes);
    }

    /// The peer's end-of-file arrived.
    pub fn received_end(&mut self) {
        self.set(END, true);
    }

    /// A receive or send failed with `errno`: the connection's next read or
    /// write reports it.
    pub fn failed(&mut self, errno: i32) {
        self.errno = u16::try_from(errno).ok().filter(|&errno| errno != 0).unwrap_or(5);
    }

    /// Received bytes not read yet.
    pub fn held_input(&self) -> usize {
        self.held.as_ref().map_or(0, |held| held.input.len() - held.read)
    }

    /// Records whether a multishot receive is posted.
    pub fn set_receiving(&mut self, receiving: bool) {
        self.set(RECEIVING, receiving);
    }

    /// Whether a receive is posted.
    pub fn is_receiving(&self) -> bool {
        self.is(RECEIVING)
    }

    /// Whether a receive should be posted: on the ring, none is, the peer
    /// can still send, and what it sent has mostly been read.
    pub fn wants_receive(&self) -> bool {
        self.is(ON_RING)
            && !self.is(RECEIVING)
            && !self.is(END)
            && self.errno == 0
            && self.held_input() < MAX_HELD_INPUT / 2
    }

    /// Whether written bytes wait for the end-of-turn submission and the
    /// socket is not listed for it yet (it is now).
    pub fn list_for_send(&mut self) -> bool {
        let waiting = self.held.as_ref().is_some_and(|held| !held.output.is_empty());
        if !waiting || self.is(LISTED) || self.is(SENDING) {
            return false;
        }
        self.set(LISTED, true);
        true
    }

    /// The bytes to send now, if any; the socket is then sending.
    pub fn take_output(&mut self) -> Option<Vec<u8>> {
        self.set(LISTED, false);
        if self.is(SENDING) {
            return None;
        }
        let held = self.held.as_mut()?;
        if held.output.is_empty() {
            return None;
        }
        let output = std::mem::replace(&mut held.output, spare_bytes());
        self.set(SENDING, true);
        self.release_held();
        Some(output)
    }

    /// The send in flight completed; the FIN follows if it was waiting.
    pub fn send_done(&mut self) {
        self.set(SENDING, false);
        let waiting = self.held.as_ref().is_some_and(|held| !held.output.is_empty());
        if self.is(FIN_WANTED) && !waiting {
            self.set(FIN_WANTED, false);
            if let Err(error) = self.stream.shutdown(std::net::Shutdown::Write) {
                self.failed(error.raw_os_error().unwrap_or(0));
            }
        }
    }

    /// The send in flight failed.
    pub fn send_failed(&mut self, errno: i32) {
        self.set(SENDING, false);
        self.failed(errno);
    }

    /// Whether a send is in flight.
    pub fn is_sending(&self) -> bool {
        self.is(SENDING)
    }

    /// Takes the socket apart at teardown: its descriptor, and the bytes
    /// written but not yet submitted.
    pub fn into_parts(mut self) -> (OwnedFd, Option<Vec<u8>>) {
        let output = self.held.take().map(|held| held.output).filter(|output| !output.is_empty());
        (OwnedFd::from(self.stream), output)
    }

    fn receive_held(&mut self, buf: &mut [u8]) -> Option<usize> {
        let held = self.held.as_mut()?;
        let rest = held.input.get(held.read..)?;
        if rest.is_empty() {
            return None;
        }
        let n = rest.len().min(buf.len());
        buf.get_mut(..n)?.copy_from_slice(rest.get(..n)?);
        held.read += n;
        if held.read == held.input.len() {
            held.input.clear();
            held.read = 0;
            self.release_held();
        }
        Some(n)
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.receive(buf)
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.send_vectored(&[IoSlice::new(buf)])
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl SendVectored for Socket {
    fn send_vectored(&mut self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        if !self.is(ON_RING) {
            return self.stream.send_vectored(slices);
        }
        if self.errno != 0 {
            return Err(io::Error::from_raw_os_error(i32::from(self.errno)));
        }
        if self.is(SENDING) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let output = &mut self.held().output;
        let mut taken = 0;
        for slice in slices {
            let room = MAX_SEND_BYTES.saturating_sub(output.len());
            if room == 0 {
                break;
            }
            let part = slice.get(..room.min(slice.len())).unwrap_or_default();
            output.extend_from_slice(part);
            taken += part.len();
        }
        if taken == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(taken)
    }
}

impl Transport for Socket {
    fn receive(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.is(ON_RING) {
            return self.stream.receive(buf);
        }
        if let Some(n) = self.receive_held(buf) {
            return Ok(n);
        }
        if self.errno != 0 {
            return Err(io::Error::from_raw_os_error(i32::from(self.errno)));
        }
        if self.is(END) {
            return Ok(0);
        }
        Err(io::ErrorKind::WouldBlock.into())
    }

    fn shutdown_write(&self) -> io::Result<()> {
        let waiting = self.held.as_ref().is_some_and(|held| !held.output.is_empty());
        if self.is(ON_RING) && (self.is(SENDING) || waiting) {
            self.set(FIN_WANTED, true);
            return Ok(());
        }
        self.stream.shutdown(std::net::Shutdown::Write)
    }

    fn peer_ip(&self) -> Option<std::net::IpAddr> {
        self.stream.peer_ip()
    }
}
