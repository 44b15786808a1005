//! TLS on one connection: rustls' unbuffered server connection driven by the shard's loop. Ciphertext comes and goes through `io` like any socket bytes; plaintext goes to the connection's phases and comes from its `OutQueue`. herald owns every buffer, so an idle TLS connection keeps none.
//!
//! Reading: ciphertext read into the shard's scratch buffer is processed
//! there, in place (rustls decrypts records where they lie); each record's
//! plaintext goes to the connection as if it had been read from a plain
//! socket. Only what is left of an incomplete record (or, during the
//! handshake, of handshake messages spread over records) is copied into the
//! connection's own `incoming` buffer, which is empty between records.
//!
//! Writing: plaintext chunks are taken from the connection's `OutQueue` (a
//! large chunk on its own, small ones gathered into one record), encrypted
//! into `outgoing` and written with the same `io` call as a plain
//! connection's frames. A flush encrypts at most [`WRITE_BATCH`] bytes
//! before writing them, so what the socket does not take and herald holds
//! for it, beside the queue, is at most one batch; once written, the buffer
//! is freed. The queue keeps its bound, pacing and slow-consumer rule.

use super::io::{self, IoOutcome, SendVectored};
use super::out_queue::{Flush, OutQueue};
use rustls::server::{ServerConfig, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, UnbufferedStatus, WriteTraffic,
};
use std::io::IoSlice;
use std::sync::Arc;

/// The largest record a peer may send: a 5-byte header and 2^14 bytes of
/// data with up to 2048 bytes of protection (TLS 1.2's allowance; 1.3's is
/// 256).
pub const MAX_RECORD_BYTES: usize = 5 + 16_384 + 2048;
/// Ciphertext held for a connection between reads: an incomplete record,
/// or during the handshake, handshake messages that span records (rustls
/// takes up to 64 KiB of them). Past it the connection is closed.
pub const MAX_INCOMING_BYTES: usize = 0xFFFF + MAX_RECORD_BYTES;
/// Plaintext encrypted per round of a flush before it is written: the most
/// ciphertext a connection holds beside its queue.
pub const WRITE_BATCH: usize = 64 * 1024;
/// Most plaintext in one record (TLS's limit).
const MAX_FRAGMENT: usize = 16_384;
/// Queued chunks shorter than this are gathered into one record (a frame
/// header and its payload, several small frames) instead of one record each.
const GATHER_BELOW: usize = 4096;
/// Protection overhead reserved per record when encrypting: TLS 1.3 adds 22
/// bytes with AES-GCM or ChaCha20-Poly1305, TLS 1.2 29. rustls asks for more
/// if it needs it.
const RECORD_OVERHEAD: usize = 64;
/// Steps one call may take through rustls' states; each step consumes
/// something, so this is never reached unless rustls misbehaves, and then
/// the connection is closed instead of spinning.
const MAX_STEPS: usize = 100_000;

/// What processing received ciphertext ended with (beside the plaintext
/// handed over).
#[derive(Debug)]
pub enum Received {
    /// Every complete record was used; more input is welcome.
    More,
    /// The peer sent `close_notify`: no more data will come.
    PeerClosed,
    /// The connection asked to stop taking plaintext (it is closing).
    Stopped,
    /// The peer broke the protocol or the handshake failed: an alert is
    /// queued, and the connection closes once it is sent.
    Failed(rustls::Error),
}

/// One connection's TLS state and the ciphertext it holds.
pub struct TlsLayer {
    conn: UnbufferedServerConnection,
    /// Received ciphertext not yet used: empty (no allocation) between
    /// records.
    incoming: Vec<u8>,
    /// Ciphertext made and not yet written (`sent` bytes of it are):
    /// handshake messages, or what the socket did not take. Empty (no
    /// allocation) once written.
    outgoing: Vec<u8>,
    sent: usize,
    /// The handshake is complete: application data flows both ways.
    established: bool,
    /// A TLS error happened: nothing more is decrypted or encrypted; what
    /// is in `outgoing` (the alert) still goes out.
    failed: bool,
    /// `close_notify` is queued (or the connection failed, and will not
    /// send one).
    closing: bool,
}

impl std::fmt::Debug for TlsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsLayer")
            .field("incoming", &self.incoming.len())
            .field("outgoing", &(self.outgoing.len() - self.sent))
            .field("established", &self.established)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl TlsLayer {
    /// A server connection waiting for its ClientHello.
    pub fn new(config: Arc<ServerConfig>) -> Result<TlsLayer, rustls::Error> {
        Ok(TlsLayer {
            conn: UnbufferedServerConnection::new(config)?,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            sent: 0,
            established: false,
            failed: false,
            closing: false,
        })
    }

    /// Whether the handshake is complete.
    pub fn is_established(&self) -> bool {
        self.established
    }

    /// Whether ciphertext waits to be written.
    pub fn has_pending(&self) -> bool {
        self.sent < self.outgoing.len()
    }

    /// Ciphertext bytes waiting to be written.
    pub fn pending_bytes(&self) -> usize {
        self.outgoing.len() - self.sent
    }

    /// Bytes this layer holds in buffers (received and outgoing), for
    /// tests of the memory an idle connection keeps.
    pub fn buffered_capacity(&self) -> usize {
        self.incoming.capacity() + self.outgoing.capacity()
    }

    /// Processes newly read ciphertext `input` (it is decrypted in place)
    /// and hands each record's plaintext, in order, to `deliver`, which
    /// returns whether to go on.
    pub fn receive(
        &mut self,
        input: &mut [u8],
        deliver: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Received {
        if self.failed {
            return Received::Stopped;
        }
        let received = if self.incoming.is_empty() {
            let (used, received) = self.process(input, deliver);
            if matches!(received, Received::More | Received::PeerClosed)
                && let Some(rest) = input.get(used..)
            {
                self.incoming.extend_from_slice(rest);
            }
            received
        } else {
            if self.incoming.len() + input.len() > MAX_INCOMING_BYTES {
                return self.too_much();
            }
            let mut incoming = std::mem::take(&mut self.incoming);
            incoming.extend_from_slice(input);
            let (used, received) = self.process(&mut incoming, deliver);
            if matches!(received, Received::More | Received::PeerClosed) {
                incoming.drain(..used.min(incoming.len()));
                if !incoming.is_empty() {
                    if incoming.capacity() > 2 * MAX_RECORD_BYTES {
                        incoming.shrink_to_fit();
                    }
                    self.incoming = incoming;
                }
            }
            received
        };
        if self.incoming.len() > MAX_INCOMING_BYTES {
            return self.too_much();
        }
        received
    }

    fn too_much(&mut self) -> Received {
        self.failed = true;
        self.closing = true;
        self.incoming = Vec::new();
        Received::Failed(rustls::Error::General("more TLS data held than a record".into()))
    }

    /// Runs rustls over `buf` until it needs more input. Returns how many
    /// bytes from the front of `buf` are used up.
    fn process(
        &mut self,
        buf: &mut [u8],
        deliver: &mut dyn FnMut(&[u8]) -> bool,
    ) -> (usize, Received) {
        let mut used = 0;
        let mut peer_closed = false;
        for _ in 0..MAX_STEPS {
            let Some(rest) = buf.get_mut(used..) else { break };
            let UnbufferedStatus { discard, state } = self.conn.process_tls_records(rest);
            let step = match state {
                Err(error) => Step::Fail(error),
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    let mut step = Step::Continue(0);
                    while let Some(record) = traffic.next_record() {
                        match record {
                            Ok(record) => {
                                if let Step::Continue(extra) = &mut step {
                                    *extra += record.discard;
                                }
                                if !deliver(record.payload) {
                                    step = Step::Stop;
                                    break;
                                }
                            }
                            Err(error) => {
                                step = Step::Fail(error);
                                break;
                            }
                        }
                    }
                    step
                }
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    match encode_into(&mut self.outgoing, |out| encode.encode(out)) {
                        Ok(()) => Step::Continue(0),
                        Err(error) => Step::Fail(error),
                    }
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    // Queued in `outgoing`, ahead of anything written
                    // later: as good as sent.
                    transmit.done();
                    Step::Continue(0)
                }
                Ok(ConnectionState::BlockedHandshake) => Step::Wait,
                // TLS 1.3 lets the server send before the client's Finished
                // has come: established only once the handshake is over.
                Ok(ConnectionState::WriteTraffic(_)) => Step::Wait,
                Ok(ConnectionState::PeerClosed) => {
                    peer_closed = true;
                    Step::Continue(0)
                }
                Ok(ConnectionState::Closed) => {
                    peer_closed = true;
                    Step::Wait
                }
                // Early data is off (rustls' default), so it never comes.
                Ok(_) => Step::Fail(rustls::Error::General("unexpected TLS state".into())),
            };
            used += discard;
            if !self.established && !self.conn.is_handshaking() {
                self.established = true;
            }
            match step {
                Step::Continue(extra) => used += extra,
                Step::Wait if peer_closed => return (used, Received::PeerClosed),
                Step::Wait => return (used, Received::More),
                Step::Stop => return (used, Received::Stopped),
                Step::Fail(error) => {
                    self.fail(buf, used);
                    return (used, Received::Failed(error));
                }
            }
        }
        self.failed = true;
        self.closing = true;
        (used, Received::Failed(rustls::Error::General("TLS made no progress".into())))
    }

    /// After an error, queues what rustls has to say about it (the alert)
    /// and stops. `buf[used..]` is the input rustls has not let go of.
    fn fail(&mut self, buf: &mut [u8], used: usize) {
        self.failed = true;
        self.closing = true;
        self.incoming = Vec::new();
        // Only while rustls has something queued: with nothing queued it
        // would read the same bad input again.
        for _ in 0..8 {
            if !self.conn.wants_write() {
                return;
            }
            let Some(rest) = buf.get_mut(used..) else { return };
            let UnbufferedStatus { state, .. } = self.conn.process_tls_records(rest);
            match state {
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    if encode_into(&mut self.outgoing, |out| encode.encode(out)).is_err() {
                        return;
                    }
                }
                _ => return,
            }
        }
    }

    /// Writes pending ciphertext, then encrypts queued plaintext and writes
    /// it, until the queue is empty or the socket is full. Returns how it
    /// ended and the ciphertext bytes written. Plaintext waits in the queue
    /// while the handshake is under way.
    pub fn flush<S: SendVectored>(&mut self, out: &mut OutQueue, socket: &mut S) -> (Flush, usize) {
        let mut written = 0;
        loop {
            let flushed = self.send_pending(socket, &mut written);
            if !matches!(flushed, Flush::Drained) {
                return (flushed, written);
            }
            if out.is_empty() || !self.established || self.failed {
                return (Flush::Drained, written);
            }
            if !self.encrypt_batch(out) {
                self.failed = true;
                self.closing = true;
                return (Flush::Closed, written);
            }
        }
    }

    fn send_pending<S: SendVectored>(&mut self, socket: &mut S, written: &mut usize) -> Flush {
        while let Some(rest) = self.outgoing.get(self.sent..).filter(|rest| !rest.is_empty()) {
            let offered = rest.len();
            match io::write_vectored(socket, &[IoSlice::new(rest)]) {
                IoOutcome::Progress(n) => {
                    self.sent += n;
                    *written += n;
                    // A short write: the socket is full.
                    if n < offered {
                        return Flush::WouldBlock;
                    }
                }
                IoOutcome::WouldBlock => return Flush::WouldBlock,
                IoOutcome::Closed | IoOutcome::Error(_) => return Flush::Closed,
            }
        }
        // Everything is written: an idle connection keeps no buffer.
        self.outgoing = Vec::new();
        self.sent = 0;
        Flush::Drained
    }

    /// Encrypts up to [`WRITE_BATCH`] bytes of queued plaintext into
    /// `outgoing`, taking them off the queue. Returns false if rustls
    /// cannot encrypt (the connection must close).
    fn encrypt_batch(&mut self, out: &mut OutQueue) -> bool {
        let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut self.incoming);
        match state {
            Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                let mut budget = WRITE_BATCH;
                while budget > 0 && !out.is_empty() {
                    let taken = match seal_next(&mut traffic, out, budget, &mut self.outgoing) {
                        Ok(taken) => taken,
                        Err(_) => return false,
                    };
                    out.consume(taken);
                    budget = budget.saturating_sub(taken);
                }
                true
            }
            // A message of rustls' own (a key update) goes first.
            Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                encode_into(&mut self.outgoing, |buf| encode.encode(buf)).is_ok()
            }
            Ok(ConnectionState::TransmitTlsData(transmit)) => {
                transmit.done();
                true
            }
            // Anything else here (received data that was not read, a
            // closed connection) leaves nothing to write to.
            _ => false,
        }
    }

    /// Queues `close_notify` (once), if the handshake is complete; the next
    /// flush sends it. Returns whether one was queued.
    pub fn queue_close_notify(&mut self) -> bool {
        if self.closing || !self.established || self.failed {
            self.closing = true;
            return false;
        }
        self.closing = true;
        let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut self.incoming);
        let Ok(ConnectionState::WriteTraffic(mut traffic)) = state else { return false };
        let start = self.outgoing.len();
        self.outgoing.resize(start + 2 * RECORD_OVERHEAD, 0);
        match self.outgoing.get_mut(start..).map(|buf| traffic.queue_close_notify(buf)) {
            Some(Ok(n)) => {
                self.outgoing.truncate(start + n);
                true
            }
            _ => {
                self.outgoing.truncate(start);
                false
            }
        }
    }

    /// Whether `close_notify` was queued or will never be (the connection
    /// failed, or never finished its handshake).
    pub fn is_closing(&self) -> bool {
        self.closing
    }
}

/// What to do after one state.
enum Step {
    /// Go on, with this many more bytes used.
    Continue(usize),
    /// rustls needs more input.
    Wait,
    /// The connection stopped taking plaintext.
    Stop,
    Fail(rustls::Error),
}

/// Appends what `encode` writes (a handshake message or an alert) to
/// `outgoing`, growing it to the size rustls asks for.
fn encode_into(
    outgoing: &mut Vec<u8>,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<(), rustls::Error> {
    let start = outgoing.len();
    let mut room = 512;
    loop {
        outgoing.resize(start + room, 0);
        match outgoing.get_mut(start..).map(&mut encode) {
            Some(Ok(n)) => {
                outgoing.truncate(start + n);
                return Ok(());
            }
            Some(Err(EncodeError::InsufficientSize(needed))) if needed.required_size > room => {
                room = needed.required_size;
            }
            _ => {
                outgoing.truncate(start);
                return Err(rustls::Error::General("cannot encode a TLS message".into()));
            }
        }
    }
}

/// Encrypts the next plaintext of the queue (at most `budget` bytes) into
/// `outgoing` without taking it off the queue; returns how much it took. A
/// large chunk is encrypted where it lies; small ones are gathered into one
/// record.
fn seal_next<Data>(
    traffic: &mut WriteTraffic<'_, Data>,
    out: &OutQueue,
    budget: usize,
    outgoing: &mut Vec<u8>,
) -> Result<usize, EncryptError> {
    let mut chunks = out.chunks();
    let Some(first) = chunks.next() else { return Ok(0) };
    if first.len() >= GATHER_BELOW || out.chunk_count() == 1 {
        let take = first.len().min(budget);
        seal(traffic, first.get(..take).unwrap_or_default(), outgoing)?;
        return Ok(take);
    }
    let limit = MAX_FRAGMENT.min(budget);
    let mut gathered = Vec::with_capacity(limit.min(out.len()));
    for chunk in std::iter::once(first).chain(chunks) {
        let room = limit - gathered.len();
        gathered.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or_default());
        if gathered.len() == limit {
            break;
        }
    }
    seal(traffic, &gathered, outgoing)?;
    Ok(gathered.len())
}

/// Appends `plain`, encrypted into records, to `outgoing`.
fn seal<Data>(
    traffic: &mut WriteTraffic<'_, Data>,
    plain: &[u8],
    outgoing: &mut Vec<u8>,
) -> Result<(), EncryptError> {
    let start = outgoing.len();
    let mut room = plain.len() + (plain.len() / MAX_FRAGMENT + 1) * RECORD_OVERHEAD;
    loop {
        outgoing.resize(start + room, 0);
        let result = match outgoing.get_mut(start..) {
            Some(buf) => traffic.encrypt(plain, buf),
            None => Err(EncryptError::EncryptExhausted),
        };
        match result {
            Ok(n) => {
                outgoing.truncate(start + n);
                return Ok(());
            }
            Err(EncryptError::InsufficientSize(needed)) if needed.required_size > room => {
                room = needed.required_size;
            }
            Err(error) => {
                outgoing.truncate(start);
                return Err(error);
            }
        }
    }
}
