//! Socket-free tests of the connection state machine over a scripted non-blocking IO.

use super::*;
use crate::config::Config;
use crate::testing::client_frame as frame;
use crate::wire::frame::{close_frame, encode_frame};
use crate::wire::http;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self as stdio, Read, Write};
use std::rc::Rc;

/// One step a read call gets.
#[derive(Debug)]
enum ReadStep {
    /// Bytes arrived. Like a socket buffer, a read takes the bytes of every
    /// `Data` step in a row, as many as its buffer holds, and leaves the rest.
    Data(Vec<u8>),
    WouldBlock,
    Eof,
    Reset,
}

/// One step a write call gets.
#[derive(Debug)]
enum WriteStep {
    /// Accept at most this many bytes.
    Take(usize),
    WouldBlock,
}

#[derive(Debug, Default)]
struct Script {
    reads: VecDeque<ReadStep>,
    writes: VecDeque<WriteStep>,
    /// When the write script is empty, take everything.
    writes_unlimited: bool,
    written: Vec<u8>,
    read_total: usize,
    /// `read_total` when the first byte was written.
    read_before_first_write: Option<usize>,
    write_shut: bool,
}

/// A non-blocking transport that plays a script and checks on drop that the
/// script was used up.
#[derive(Debug, Clone, Default)]
struct ScriptedIo(Rc<RefCell<Script>>);

impl ScriptedIo {
    fn new() -> Self {
        let io = ScriptedIo::default();
        io.0.borrow_mut().writes_unlimited = true;
        io
    }
    fn read(&self, step: ReadStep) -> &Self {
        self.0.borrow_mut().reads.push_back(step);
        self
    }
    fn data(&self, bytes: &[u8]) -> &Self {
        self.read(ReadStep::Data(bytes.to_vec()))
    }
    fn write(&self, step: WriteStep) -> &Self {
        let mut script = self.0.borrow_mut();
        script.writes_unlimited = false;
        script.writes.push_back(step);
        drop(script);
        self
    }
    fn take_written(&self) -> Vec<u8> {
        std::mem::take(&mut self.0.borrow_mut().written)
    }
    fn read_total(&self) -> usize {
        self.0.borrow().read_total
    }
    fn read_before_first_write(&self) -> Option<usize> {
        self.0.borrow().read_before_first_write
    }
    fn write_shut(&self) -> bool {
        self.0.borrow().write_shut
    }
}

impl Drop for ScriptedIo {
    fn drop(&mut self) {
        // Only the last handle checks, and not while a test already fails.
        if Rc::strong_count(&self.0) == 1 && !std::thread::panicking() {
            let script = self.0.borrow();
            assert!(script.reads.is_empty(), "read script not used up: {:?}", script.reads);
            assert!(script.writes.is_empty(), "write script not used up: {:?}", script.writes);
        }
    }
}

impl Read for ScriptedIo {
    fn read(&mut self, buf: &mut [u8]) -> stdio::Result<usize> {
        let mut script = self.0.borrow_mut();
        match script.reads.front() {
            Some(ReadStep::Data(_)) => {}
            Some(ReadStep::WouldBlock) => {
                script.reads.pop_front();
                return Err(stdio::ErrorKind::WouldBlock.into());
            }
            Some(ReadStep::Eof) => {
                script.reads.pop_front();
                return Ok(0);
            }
            Some(ReadStep::Reset) => {
                script.reads.pop_front();
                return Err(stdio::ErrorKind::ConnectionReset.into());
            }
            None => panic!("unexpected read: the script has no more steps"),
        }
        let mut n = 0;
        while n < buf.len() {
            let Some(ReadStep::Data(data)) = script.reads.front_mut() else { break };
            let take = data.len().min(buf.len() - n);
            buf[n..n + take].copy_from_slice(&data[..take]);
            data.drain(..take);
            n += take;
            if data.is_empty() {
                script.reads.pop_front();
            }
        }
        script.read_total += n;
        Ok(n)
    }
}

impl Write for ScriptedIo {
    fn write(&mut self, buf: &[u8]) -> stdio::Result<usize> {
        self.write_vectored(&[stdio::IoSlice::new(buf)])
    }

    /// Like writev on a socket: takes from every slice in turn, up to what
    /// the script allows.
    fn write_vectored(&mut self, bufs: &[stdio::IoSlice<'_>]) -> stdio::Result<usize> {
        let mut script = self.0.borrow_mut();
        if script.read_before_first_write.is_none() {
            script.read_before_first_write = Some(script.read_total);
        }
        let allowed = match script.writes.pop_front() {
            Some(WriteStep::Take(n)) => n,
            Some(WriteStep::WouldBlock) => return Err(stdio::ErrorKind::WouldBlock.into()),
            None if script.writes_unlimited => usize::MAX,
            None => panic!("unexpected write: the script has no more steps"),
        };
        let mut n = 0;
        for buf in bufs {
            let take = buf.len().min(allowed - n);
            script.written.extend_from_slice(&buf[..take]);
            n += take;
            if n == allowed {
                break;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> stdio::Result<()> {
        Ok(())
    }
}

impl io::SendVectored for ScriptedIo {}

impl Transport for ScriptedIo {
    fn shutdown_write(&self) -> stdio::Result<()> {
        self.0.borrow_mut().write_shut = true;
        Ok(())
    }
}

/// A context for shard 0 of node "n1", with a broker whose only inbox is
/// not read (deliveries are tested in the broker and over sockets).
pub(crate) fn ctx_with(config: Config) -> Ctx {
    crate::testing::context(config)
}

fn ctx() -> Ctx {
    let mut config = Config::dev();
    config.ping_interval = Duration::from_secs(25);
    ctx_with(config)
}

const ECHO_UPGRADE: &[u8] = b"GET /echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

const SWITCHING: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

fn open_echo(io: &ScriptedIo, ctx: &mut Ctx) -> Conn<ScriptedIo> {
    let mut conn = Conn::new(io.clone(), ctx);
    io.data(ECHO_UPGRADE);
    assert_eq!(conn.ready(true, true, ctx), Next::Keep);
    assert_eq!(io.take_written(), SWITCHING);
    conn
}

#[test]
fn the_same_head_split_at_every_byte_gives_the_same_answer() {
    let mut ctx = ctx();
    for split in 0..ECHO_UPGRADE.len() {
        let io = ScriptedIo::new();
        let mut conn = Conn::new(io.clone(), &ctx);
        let (first, second) = ECHO_UPGRADE.split_at(split);
        if !first.is_empty() {
            io.data(first);
            assert_eq!(conn.ready(true, true, &mut ctx), Next::Keep);
            let early = io.take_written();
            assert!(
                early.is_empty(),
                "answered early at split {split}: {}",
                String::from_utf8_lossy(&early)
            );
        }
        io.data(second);
        assert_eq!(conn.ready(true, true, &mut ctx), Next::Keep);
        assert_eq!(io.take_written(), SWITCHING, "split at {split}");
        assert!(conn.is_open_websocket());
    }
}

#[test]
fn head_and_first_frame_in_one_read() {
    let mut ctx = ctx();
    let io = ScriptedIo::new();
    let mut conn = Conn::new(io.clone(), &ctx);
    let mut bytes = ECHO_UPGRADE.to_vec();
    bytes.extend(frame(true, 1, b"first"));
    io.data(&bytes);
    conn.ready(true, true, &mut ctx);
    let mut expected = SWITCHING.to_vec();
    expected.extend_from_slice(b"\x81\x05first");
    assert_eq!(io.take_written(), expected);
}

#[test]
fn partial_writes_and_would_block_at_every_step() {
    let mut ctx = ctx();
    let io = ScriptedIo::new();
    let mut conn = Conn::new(io.clone(), &ctx);
    // Every write takes one byte: the socket is full after each (a short
    // write says so, and the next writable event resumes).
    for _ in 0..SWITCHING.len() {
        io.write(WriteStep::Take(1));
    }
    io.data(ECHO_UPGRADE);
    conn.ready(true, true, &mut ctx);
    let mut written = io.take_written();
    while written.len() < SWITCHING.len() {
        assert_eq!(conn.ready(false, true, &mut ctx), Next::Keep);
        written.extend(io.take_written());
    }
    assert_eq!(written, SWITCHING);
    assert_eq!(conn.queued_bytes(), 0);
}

#[test]
fn frames_split_across_reads_with_would_block_between() {
    let mut ctx = ctx();
    let io = ScriptedIo::new();
    let mut conn = open_echo(&io, &mut ctx);
    let message = frame(true, 2, &[7u8; 300]);
    for byte in &message {
        io.data(std::slice::from_ref(byte));
        conn.ready(true, false, &mut ctx);
    }
    let written = io.take_written();
    assert_eq!(&written[..4], b"\x82\x7e\x01\x2c");
    assert_eq!(&written[4..], &[7u8; 300][..]);
}

#[test]
fn a_head_over_the_limit_is_refused_without_reading_further() {
    let mut ctx = ctx();
    let io = ScriptedIo::new();
    let mut conn = Conn::new(io.clone(), &ctx);
    let mut huge = b"GET /ws HTTP/1.1\r\nX-Big: ".to_vec();
    huge.resize(1 << 20, b'a');
    // The whole megabyte is offered at once; the answer must come at the limit.
    io.read(ReadStep::Data(huge));
    // After answering, the connection discards input up to the linger cap.
    assert_eq!(conn.ready(true, true, &mut ctx), Next::Close);
    assert_eq!(io.read_before_first_write(), Some(http::MAX_HEAD_BYTES));
    let answer = String::from_utf8(io.take_written()).unwrap();
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    assert!(io.write_shut());
    assert!(io.read_total() <= http::MAX_HEAD_BYTES + LINGER_MAX_BYTES + SCRATCH_BYTES);
    // The rest of the megabyte is deliberately left unread.
    io.0.borrow_mut().reads.clear();
}

#[test]
fn refusals_are_answered_then_half_closed_until_the_peer_closes() {
    let mut ctx = ctx();
    let io = ScriptedIo::new();
    let mut conn = Conn::new(io.clone(), &ctx);
    io.data(b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(conn.ready(true, true, &mut ctx), Next::Keep);
    let answer = String::from_utf8(io.take_written()).unwrap();
    assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
    assert!(answer.contains("Connection: close\r\n"), "{answer}");
    assert!(answer.ends_with(r#"{"error":{"code":"not_found","message":"no such endpoint"}}"#));
    assert!(io.write_shut());
    io.read(ReadStep::Eof);
    assert_eq!(conn.ready(true, false, &mut ctx), Next::Close);
}

#[test]
fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let mut ctx = ctx();
    let io = ScriptedIo::new();
    let mut conn = Conn::new(io.clone(), &ctx);
    io.data(
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /nowhere HTTP/1.1\r\nHost: x\r\n\r\nGET /hea",
    );
    conn.ready(true, true, &mut ctx);
    let answers = String::from_utf8(io.take_written()).unwrap();
    let health = answers.find("HTTP/1.1 200 OK").unwrap();
    let missing = answers.find("HTTP/1.1 404 Not Found").unwrap();
    assert!(health < missing);
    assert_eq!(answers.matches("Connection: keep-alive").count(), 2);
    assert!(!io.write_shut());
    io.data(b"lth HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    conn.ready(true, true, &mut ctx);
    let last = String::from_utf8(io.take_written()).unwrap();
    assert!(
        last.starts_with("HTTP/1.1 200 OK\r\n") && last.contains("Connection: close"),
        "{last}"
    );
    assert!(io.write_shut());
    io.read(ReadStep::Eof);
    assert_eq!(conn.ready(true, false, &mut ctx), Next::Close);
}

#[test]
fn health_answers_ok() {
    let mut ctx = ctx();
    let io = ScriptedIo::new();
    let mut conn = Conn::new(io.clone(), &ctx);
    io.data(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    conn.ready(true, true, &mut ctx);
    let answer = String::from_utf8(io.take_written()).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(answer.ends_with("\r\n\r\n{\"status\":\"ok\"}"));
    io.read(ReadStep::Reset);
    assert_eq!(conn.ready(true, false, &mut ctx), Next::Close);
}

#[test]
fn an_incomplete_head_is_closed_at_the_deadline() {
    let mut ctx = ctx();
    let io = ScriptedIo::new();
    let mut conn = Conn::new(io.clone(), &ctx);
    io.data(b"GET /ws HTTP/1.1\r\n");
    conn.ready(true, true, &mut ctx);
    let deadline = conn.deadline(&ctx);
    assert_eq!(deadline, millis(ctx.config.handshake_timeout));
    ctx.now = deadline - 1;
    assert_eq!(conn.on_timer(&mut ctx), Next::Keep);
    ctx.now = deadline;
    assert_eq!(conn.on_timer(&mut ctx), Next::Close);
}

#[test]
fn a_quiet_websocket_is_pinged_then_closed_after_two_intervals() {
    let mut ctx = ctx();
    let io = ScriptedIo::new();
    let mut conn = open_echo(&io, &mut ctx);
    let interval = millis(ctx.config.ping_interval);
    assert_eq!(conn.deadline(&ctx), interval);
    ctx.now = interval;
    assert_eq!(conn.on_timer(&mut ctx), Next::Keep);
    assert_eq!(io.take_written(), b"\x89\x00");
    assert_eq!(conn.deadline(&ctx), 2 * interval);
    // A pong resets the clock.
    ctx.now = interval + 10;
    io.data(&frame(true, 10, b""));
    conn.ready(true, false, &mut ctx);
    assert_eq!(conn.deadline(&ctx), 2 * interval + 10);
    ctx.now = 2 * interval + 10;
    conn.on_timer(&mut ctx);
    assert_eq!(io.take_written(), b"\x89\x00");
    ctx.now = 3 * interval + 10;
    assert_eq!(conn.on_timer(&mut ctx), Next::Keep);
    let close = io.take_written();
    let expected = close_frame(CloseReason::Policy("no traffic for two ping intervals"));
    assert_eq!(close, expected);
    assert_eq!(&close[2..4], &1008u16.to_be_bytes());
    assert!(io.write_shut());
}

#[test]
fn shutdown_sends_1001_and_waits_for_the_reply() {
    let mut ctx = ctx();
    let io = ScriptedIo::new();
    let mut conn = open_echo(&io, &mut ctx);
    assert_eq!(conn.shutdown(&mut ctx), Next::Keep);
    let close = io.take_written();
    assert_eq!(&close[..4], b"\x88\x16\x03\xe9");
    assert!(!conn.is_open_websocket());
    io.data(&frame(true, 8, b"\x03\xe9"));
    conn.ready(true, false, &mut ctx);
    assert!(io.write_shut(), "after the close handshake the server half-closes");
    io.read(ReadStep::Eof);
    assert_eq!(conn.ready(true, false, &mut ctx), Next::Close);
}

#[test]
fn an_unanswered_close_gives_up_at_the_close_timeout() {
    let mut ctx = ctx();
    let io = ScriptedIo::new();
    let mut conn = open_echo(&io, &mut ctx);
    conn.shutdown(&mut ctx);
    io.take_written();
    ctx.now = conn.deadline(&ctx);
    assert_eq!(ctx.now, millis(CLOSE_HANDSHAKE_TIMEOUT));
    assert_eq!(conn.on_timer(&mut ctx), Next::Close);
}

#[test]
fn protocol_errors_send_their_close_code() {
    let cases: [(&[u8], u16); 3] = [
        (b"\x81\x05hello", 1002),
        (&[0x81, 0x82, 0, 0, 0, 0, 0xc3, 0x28], 1007),
        // 16 MiB + 1: one byte over the /echo limit.
        (&[0x82, 0xFF, 0, 0, 0, 0, 1, 0, 0, 1, 1, 2, 3, 4], 1009),
    ];
    for (input, code) in cases {
        let mut ctx = ctx();
        let io = ScriptedIo::new();
        let mut conn = open_echo(&io, &mut ctx);
        io.data(input);
        assert_eq!(conn.ready(true, true, &mut ctx), Next::Keep);
        let written = io.take_written();
        assert_eq!(written[0], 0x88, "a close frame for {input:x?}");
        assert_eq!(u16::from_be_bytes([written[2], written[3]]), code);
        assert!(io.write_shut());
    }
}

#[test]
fn binary_frames_on_ws_close_with_1003() {
    let mut ctx = ctx();
    let io = ScriptedIo::new();
    let mut conn = Conn::new(io.clone(), &ctx);
    let ws_upgrade = String::from_utf8(ECHO_UPGRADE.to_vec()).unwrap().replace("/echo", "/ws");
    io.data(ws_upgrade.as_bytes());
    conn.ready(true, true, &mut ctx);
    let opening = String::from_utf8_lossy(&io.take_written()).into_owned();
    assert!(
        opening.contains(r#"{"op":"welcome","client":"n1-0-0-0","user":"","ping_interval":25}"#),
        "{opening}"
    );
    io.data(&frame(true, 1, br#"{"op":"ping","id":6}"#));
    conn.ready(true, true, &mut ctx);
    assert_eq!(io.take_written(), b"\x81\x14{\"op\":\"pong\",\"id\":6}");
    io.data(&frame(true, 2, b"\x00"));
    conn.ready(true, true, &mut ctx);
    let close = io.take_written();
    assert_eq!(&close[2..4], &1003u16.to_be_bytes());
}

#[test]
fn a_peer_that_does_not_read_stops_being_read() {
    let mut config = Config::dev();
    config.max_outbound_bytes = 16 << 10;
    let mut ctx = ctx_with(config);
    let io = ScriptedIo::new();
    let mut conn = open_echo(&io, &mut ctx);
    let before = io.read_total();
    // The socket takes nothing; 4 KiB messages, each echoed as 4100 bytes.
    io.write(WriteStep::WouldBlock);
    let message = frame(true, 2, &[1u8; 4096]);
    for _ in 0..3 {
        io.data(&message);
    }
    conn.ready(true, true, &mut ctx);
    assert_eq!(io.read_total() - before, 3 * message.len(), "one read takes what arrived");
    assert_eq!(conn.queued_bytes(), 3 * 4100);
    // More arrives, but the queue is past the read pause (half the bound,
    // 8 KiB): it is not read.
    io.data(&message);
    conn.ready(true, false, &mut ctx);
    assert_eq!(io.read_total() - before, 3 * message.len());
    // Once the peer reads, reading resumes.
    io.0.borrow_mut().writes_unlimited = true;
    conn.ready(false, true, &mut ctx);
    assert_eq!(io.read_total() - before, 4 * message.len());
    assert_eq!(io.take_written().len(), 4 * 4100);
}

/// An idle connection is its slab slot and nothing else: tungstenite's
/// state and the outbound queue hold no allocation while idle. Guard the
/// slot's size (docs/BENCHMARKS.md has the measured RSS per connection).
#[test]
fn an_idle_connection_is_small() {
    // 224 bytes, then one word for the Pusher endpoint (its session is a
    // third kind of endpoint, whose tag costs one) and one for the TLS
    // state's pointer.
    assert!(
        size_of::<Conn<mio::net::TcpStream>>() <= 240,
        "{}",
        size_of::<Conn<mio::net::TcpStream>>()
    );
    let mut ctx = ctx();
    let io = ScriptedIo::new();
    let conn = open_echo(&io, &mut ctx);
    let Phase::WebSocket(ws) = &conn.phase else { panic!("not upgraded") };
    assert!(!ws.session.holds_codec());
    assert_eq!(conn.queued_bytes(), 0);
}

#[test]
fn a_slow_consumer_is_closed_with_4008_and_gets_nothing_more() {
    let mut config = Config::dev();
    config.max_outbound_bytes = 16 << 10;
    let mut ctx = ctx_with(config);
    let io = ScriptedIo::new();
    let mut conn = open_echo(&io, &mut ctx);
    let push = encode_frame(Opcode::Text, &[b'x'; 1000]);
    // The socket takes half a frame and then nothing (a short write says so).
    io.write(WriteStep::Take(500));
    assert_eq!(conn.push(push.clone(), &ctx), Pushed::Queued);
    conn.flush(&ctx);
    let mut queued = 1;
    while conn.push(push.clone(), &ctx) == Pushed::Queued {
        queued += 1;
    }
    assert_eq!(queued, (16 << 10) / push.len());
    assert_eq!(conn.push(push.clone(), &ctx), Pushed::Dropped, "nothing after the decision");
    // What goes out: the rest of the half-written frame, then close 4008.
    io.0.borrow_mut().writes_unlimited = true;
    conn.ready(false, true, &mut ctx);
    let mut expected = push.to_vec();
    expected.extend_from_slice(&close_frame(CloseReason::SlowConsumer));
    assert_eq!(io.take_written(), expected);
    assert!(io.write_shut());
}

#[test]
fn spurious_readiness_is_harmless() {
    // Events can be spurious: a read that says WouldBlock changes nothing.
    let mut ctx = ctx();
    let io = ScriptedIo::new();
    let mut conn = open_echo(&io, &mut ctx);
    io.read(ReadStep::WouldBlock);
    assert_eq!(conn.ready(true, true, &mut ctx), Next::Keep);
    assert!(io.take_written().is_empty());
    assert!(conn.is_open_websocket());
}

// TLS: the same connection behind rustls' unbuffered server, driven by an
// in-memory rustls client through the scripted socket.

mod tls {
    use super::*;
    use crate::conn::tls::WRITE_BATCH;
    use crate::tls::Tls;
    use crate::tls::test_certs;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use std::io::ErrorKind;
    use std::sync::Arc;

    /// A server configuration for `localhost` signed by a test CA, and a
    /// client that trusts that CA.
    fn pair() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let (ca, chain, key) = test_certs::ca_signed();
        let dir = test_certs::dir(&format!("conn-{:?}", std::thread::current().id()));
        let tls = Tls::load(
            &test_certs::write(&dir, "chain.pem", &chain),
            &test_certs::write(&dir, "key.pem", &key),
        )
        .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        (tls.server_config().clone(), Arc::new(client))
    }

    fn client(config: &Arc<rustls::ClientConfig>) -> rustls::ClientConnection {
        rustls::ClientConnection::new(config.clone(), "localhost".try_into().unwrap()).unwrap()
    }

    fn tls_conn(
        io: &ScriptedIo,
        server: &Arc<rustls::ServerConfig>,
        ctx: &Ctx,
    ) -> Conn<ScriptedIo> {
        let mut conn = Conn::new(io.clone(), ctx);
        assert!(conn.start_tls(server.clone()));
        conn
    }

    /// Moves bytes both ways until neither side has anything more to say:
    /// the client's ciphertext reaches the server in reads of `piece`
    /// bytes. Returns the plaintext the client received, and whether it
    /// saw the server's close_notify.
    fn exchange(
        conn: &mut Conn<ScriptedIo>,
        io: &ScriptedIo,
        client: &mut rustls::ClientConnection,
        ctx: &mut Ctx,
        piece: usize,
    ) -> (Vec<u8>, bool) {
        let mut plain = Vec::new();
        let mut closed = false;
        for _ in 0..10_000 {
            let mut to_server = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut to_server).unwrap();
            }
            for chunk in to_server.chunks(piece) {
                io.data(chunk);
                let _ = conn.ready(true, true, ctx);
            }
            if to_server.is_empty() {
                let _ = conn.ready(false, true, ctx);
            }
            let from_server = io.take_written();
            let mut rest = &from_server[..];
            while !rest.is_empty() {
                client.read_tls(&mut rest).unwrap();
                client.process_new_packets().unwrap();
            }
            loop {
                let mut buf = [0u8; 4096];
                match client.reader().read(&mut buf) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => plain.extend_from_slice(&buf[..n]),
                    Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                    Err(error) => panic!("client read: {error}"),
                }
            }
            if to_server.is_empty() && from_server.is_empty() {
                return (plain, closed);
            }
        }
        panic!("the exchange never settled");
    }

    #[test]
    fn a_tls_websocket_works_whatever_the_pieces_the_ciphertext_comes_in() {
        let (server, client_config) = pair();
        let mut ctx = ctx();
        for piece in [1, 5, 100, 1500, 65536] {
            let io = ScriptedIo::new();
            let mut conn = tls_conn(&io, &server, &ctx);
            let mut client = client(&client_config);
            let (plain, _) = exchange(&mut conn, &io, &mut client, &mut ctx, piece);
            assert!(plain.is_empty());
            assert!(!client.is_handshaking(), "piece {piece}");
            assert_eq!(client.alpn_protocol(), Some(&b"http/1.1"[..]));
            assert!(conn.in_first_request(), "the handshake counts as a pending request");

            client.writer().write_all(ECHO_UPGRADE).unwrap();
            let (plain, _) = exchange(&mut conn, &io, &mut client, &mut ctx, piece);
            assert_eq!(plain, SWITCHING, "piece {piece}");
            client.writer().write_all(&frame(true, 1, b"over tls")).unwrap();
            let (plain, _) = exchange(&mut conn, &io, &mut client, &mut ctx, piece);
            assert_eq!(plain, b"\x81\x08over tls", "piece {piece}");
            // Idle again: no ciphertext buffer is kept, in or out.
            assert_eq!(conn.tls_buffered(), 0, "piece {piece}");
            assert_eq!(conn.queued_bytes(), 0);
            assert!(conn.is_open_websocket());
        }
        assert_eq!(ctx.metrics.tls_handshakes.get(), 5);
    }

    #[test]
    fn many_frames_in_one_flush_are_gathered_into_few_records() {
        let (server, client_config) = pair();
        let mut ctx = ctx();
        let io = ScriptedIo::new();
        let mut conn = tls_conn(&io, &server, &ctx);
        let mut client = client(&client_config);
        exchange(&mut conn, &io, &mut client, &mut ctx, 65536);
        client.writer().write_all(ECHO_UPGRADE).unwrap();
        exchange(&mut conn, &io, &mut client, &mut ctx, 65536);
        let push = encode_frame(Opcode::Text, b"tick");
        for _ in 0..100 {
            assert_eq!(conn.push(push.clone(), &ctx), Pushed::Queued);
        }
        conn.flush(&ctx);
        let written = io.take_written();
        // One record of 600 bytes, not 100 records of 6.
        assert!(written.len() < 700, "{} bytes of ciphertext", written.len());
        let mut rest = &written[..];
        while !rest.is_empty() {
            client.read_tls(&mut rest).unwrap();
            client.process_new_packets().unwrap();
        }
        let mut plain = Vec::new();
        let _ = client.reader().read_to_end(&mut plain);
        assert_eq!(plain, push.repeat(100));
    }

    #[test]
    fn garbage_before_the_client_hello_gets_an_alert_then_a_close() {
        let (server, _) = pair();
        for garbage in [
            &b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"[..],
            b"\x16\x03\x01\xff\xff",
            b"\x15\x03\x03\x00\x02\x02\x28",
        ] {
            let mut ctx = ctx();
            let io = ScriptedIo::new();
            let mut conn = tls_conn(&io, &server, &ctx);
            io.data(garbage);
            assert_eq!(conn.ready(true, true, &mut ctx), Next::Keep);
            let written = io.take_written();
            // An alert record, or nothing (after the peer's own alert).
            assert!(written.is_empty() || written[0] == 0x15, "{written:?}");
            assert!(written.len() < 64);
            assert!(io.write_shut(), "half-closed after the alert");
            assert_eq!(conn.tls_buffered(), 0);
            assert_eq!(conn.queued_bytes(), 0);
            assert!(!conn.in_first_request());
        }
    }

    #[test]
    fn a_handshake_that_stalls_is_closed_at_the_deadline() {
        let (server, client_config) = pair();
        let mut ctx = ctx();
        let io = ScriptedIo::new();
        let mut conn = tls_conn(&io, &server, &ctx);
        let mut client = client(&client_config);
        let mut hello = Vec::new();
        client.write_tls(&mut hello).unwrap();
        io.data(&hello[..hello.len() / 2]);
        assert_eq!(conn.ready(true, true, &mut ctx), Next::Keep);
        assert!(conn.in_first_request());
        assert!(conn.tls_buffered() > 0, "half a ClientHello is kept");
        let deadline = conn.deadline(&ctx);
        assert_eq!(deadline, ctx.now + millis(ctx.config.handshake_timeout));
        ctx.now = deadline;
        assert_eq!(conn.on_timer(&mut ctx), Next::Close);
    }

    #[test]
    fn a_tls_answer_ends_with_close_notify_before_the_fin() {
        let (server, client_config) = pair();
        let mut ctx = ctx();
        let io = ScriptedIo::new();
        let mut conn = tls_conn(&io, &server, &ctx);
        let mut client = client(&client_config);
        exchange(&mut conn, &io, &mut client, &mut ctx, 65536);
        client
            .writer()
            .write_all(b"GET /health HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            .unwrap();
        let (plain, closed) = exchange(&mut conn, &io, &mut client, &mut ctx, 65536);
        let text = String::from_utf8(plain).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.ends_with(r#"{"status":"ok"}"#), "{text}");
        assert!(closed, "close_notify came");
        assert!(io.write_shut());
    }

    #[test]
    fn a_peer_that_does_not_read_holds_its_queue_and_one_batch_at_most() {
        let (server, client_config) = pair();
        let mut config = Config::dev();
        config.max_outbound_bytes = 256 << 10;
        let mut ctx = ctx_with(config);
        let io = ScriptedIo::new();
        let mut conn = tls_conn(&io, &server, &ctx);
        let mut client = client(&client_config);
        exchange(&mut conn, &io, &mut client, &mut ctx, 65536);
        client.writer().write_all(ECHO_UPGRADE).unwrap();
        exchange(&mut conn, &io, &mut client, &mut ctx, 65536);
        // The socket takes 1000 bytes, then nothing.
        io.write(WriteStep::Take(1000));
        io.write(WriteStep::WouldBlock);
        let push = encode_frame(Opcode::Text, &[b'x'; 1000]);
        let mut pushed = Vec::new();
        while conn.push(push.clone(), &ctx) == Pushed::Queued {
            pushed.extend_from_slice(&push);
            conn.flush(&ctx);
            assert!(
                conn.queued_bytes() <= (256 << 10) + WRITE_BATCH + 4 * 64,
                "{} bytes held",
                conn.queued_bytes()
            );
        }
        // Over the bound: closed with 4008 after what was started.
        io.0.borrow_mut().writes_unlimited = true;
        let (plain, closed) = exchange(&mut conn, &io, &mut client, &mut ctx, 65536);
        assert!(closed);
        let close = close_frame(CloseReason::SlowConsumer);
        assert!(plain.ends_with(&close));
        let frames = &plain[..plain.len() - close.len()];
        assert!(pushed.starts_with(frames) && frames.len() % push.len() == 0);
    }
}
