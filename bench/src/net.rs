//! Client connections for the load modes: non-blocking connects from several 127.0.0.x addresses, TLS for wss:// servers, upgrades, subscriptions, and frames.

use crate::stream::Stream;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Socket, Type};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// Connections per 127.0.0.x source address, well under the ~28,000
/// ephemeral ports one address has toward one server port.
const PER_SOURCE_ADDRESS: usize = 20_000;

/// A server to load: its address, and whether it speaks TLS (wss://).
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub addr: SocketAddr,
    pub tls: bool,
}

/// `ws://IP:PORT/PATH` or `wss://IP:PORT/PATH` as a target and a path
/// (loopback only).
pub fn parse_url(url: &str) -> Result<(Target, String), String> {
    let (rest, tls) = match (url.strip_prefix("ws://"), url.strip_prefix("wss://")) {
        (Some(rest), _) => (rest, false),
        (_, Some(rest)) => (rest, true),
        _ => return Err("the URL must start with ws:// or wss://".into()),
    };
    let (authority, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], rest[slash..].to_string()),
        None => (rest, "/".to_string()),
    };
    let addr: SocketAddr =
        authority.parse().map_err(|_| format!("expected IP:PORT, got {authority}"))?;
    if !addr.ip().is_loopback() {
        return Err("only loopback servers may be loaded".into());
    }
    Ok((Target { addr, tls }, path))
}

/// The upgrade request for `path`; with `deflate`, offering
/// permessage-deflate as browsers do.
pub fn upgrade_request(addr: SocketAddr, path: &str, deflate: bool) -> Vec<u8> {
    let offer = if deflate { DEFLATE_OFFER } else { "" };
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
    )
    .into_bytes()
}

/// permessage-deflate as Chromium offers it.
const DEFLATE_OFFER: &str =
    "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

/// A non-blocking connect for connection number `index` of the load:
/// 20,000 connections per 127.0.0.x source address. Closing one resets it
/// (no TIME_WAIT left on the generator's side to eat ephemeral ports).
/// `nodelay` for connections that send more than one message.
pub fn connect(index: usize, addr: SocketAddr, nodelay: bool) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    socket.set_linger(Some(Duration::ZERO))?;
    if nodelay {
        socket.set_tcp_nodelay(true)?;
    }
    let source = index / PER_SOURCE_ADDRESS;
    if source > 0 {
        // bind() picks a port before it knows the destination, so only the
        // extra addresses are bound; the first lets connect() choose.
        let octet = u8::try_from(1 + source % 250).unwrap_or(1);
        socket.bind(&SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, octet)), 0).into())?;
    }
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(error) if error.raw_os_error() == Some(115) => {} // EINPROGRESS
        Err(error) => return Err(error),
    }
    Ok(TcpStream::from_std(socket.into()))
}

/// [`connect`], with TLS for a wss:// target.
pub fn open(index: usize, target: Target, nodelay: bool) -> io::Result<Stream> {
    Stream::new(connect(index, target.addr, nodelay)?, target.tls)
}

/// A masked client frame (text 0x1 or binary 0x2).
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x5a, 0x13, 0xc7, 0x8e];
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n < 65536 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, k)| b ^ k));
    out
}

/// One unmasked server frame at the start of `buf`: (opcode, payload range,
/// frame length), or `None` while incomplete.
pub fn parse_frame(buf: &[u8]) -> Option<(u8, std::ops::Range<usize>, usize)> {
    let (first, second) = (*buf.first()?, *buf.get(1)?);
    let (len, header) = match second & 0x7F {
        126 => (usize::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])), 4),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize, 10),
        n => (usize::from(n), 2),
    };
    if buf.len() < header + len {
        return None;
    }
    Some((first & 0x0F, header..header + len, header + len))
}

/// An open connection and the bytes read past what opening it needed.
pub struct Open {
    /// The connection (non-blocking, not registered).
    pub stream: Stream,
    /// Bytes already read and not yet parsed as frames.
    pub buf: Vec<u8>,
    /// The server agreed to permessage-deflate.
    pub deflate: bool,
}

/// What to do after the 101: send a command and wait for a text frame that
/// starts with `expect`.
pub struct Then<'a> {
    /// The frame to send (already encoded).
    pub send: Vec<u8>,
    /// The reply's first bytes.
    pub expect: &'a [u8],
}

struct Opening {
    stream: Stream,
    sent: bool,
    upgraded: bool,
    deflate: bool,
    buf: Vec<u8>,
}

/// Opens `count` connections (load indexes `first..first + count`), each
/// upgraded with `request` and, if given, subscribed by `then(index)`; at
/// most `concurrency` in flight.
pub fn open_many<'a>(
    target: Target,
    request: &[u8],
    first: usize,
    count: usize,
    concurrency: usize,
    then: impl Fn(usize) -> Option<Then<'a>>,
) -> Result<Vec<Open>, String> {
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let mut events = Events::with_capacity(1024);
    let mut slots: Vec<Option<(usize, Opening)>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut opened = Vec::with_capacity(count);
    let (mut started, mut in_flight) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(120);
    while opened.len() < count {
        while in_flight < concurrency && started < count {
            let index = first + started;
            let mut stream = open(index, target, true).map_err(|e| format!("connect: {e}"))?;
            let slot = free.pop().unwrap_or_else(|| {
                slots.push(None);
                slots.len() - 1
            });
            poll.registry()
                .register(&mut stream, Token(slot), Interest::READABLE | Interest::WRITABLE)
                .map_err(|e| format!("register: {e}"))?;
            slots[slot] = Some((
                index,
                Opening { stream, sent: false, upgraded: false, deflate: false, buf: Vec::new() },
            ));
            started += 1;
            in_flight += 1;
        }
        if Instant::now() > deadline {
            return Err(format!("only {} of {count} connections opened in 120 s", opened.len()));
        }
        poll.poll(&mut events, Some(Duration::from_secs(1))).map_err(|e| e.to_string())?;
        for event in &events {
            let slot = event.token().0;
            let Some((index, opening)) = slots.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            if event.is_writable() {
                opening.stream.flush_tls().map_err(|e| format!("TLS: {e}"))?;
            }
            if event.is_writable() && !opening.sent {
                match opening.stream.tcp().take_error() {
                    Ok(Some(error)) | Err(error) => {
                        return Err(format!("connection failed: {error}"));
                    }
                    Ok(None) => {}
                }
                match opening.stream.write(request) {
                    Ok(n) if n == request.len() => opening.sent = true,
                    Ok(_) => return Err("short write of a handshake".into()),
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected
                        ) => {}
                    Err(e) => return Err(format!("write: {e}")),
                }
            }
            if !(event.is_readable() && opening.sent) {
                continue;
            }
            let mut chunk = [0u8; 4096];
            loop {
                match opening.stream.read(&mut chunk) {
                    Ok(0) => return Err("the server closed a connection while opening".into()),
                    Ok(n) => opening.buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(format!("read: {e}")),
                }
            }
            let then = then(*index);
            if !opening.upgraded {
                let Some(end) = opening.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                if !opening.buf.starts_with(b"HTTP/1.1 101 ") {
                    return Err(format!(
                        "upgrade refused: {}",
                        String::from_utf8_lossy(&opening.buf[..end])
                    ));
                }
                let head = String::from_utf8_lossy(&opening.buf[..end]).to_ascii_lowercase();
                opening.deflate = head.contains("\r\nsec-websocket-extensions: permessage-deflate");
                opening.buf.drain(..end + 4);
                opening.upgraded = true;
                if let Some(then) = &then {
                    opening.stream.write_all(&then.send).map_err(|e| format!("subscribe: {e}"))?;
                }
            }
            let done = match &then {
                None => true,
                Some(then) => {
                    let mut used = 0;
                    let mut found = false;
                    while let Some((opcode, payload, len)) = parse_frame(&opening.buf[used..]) {
                        let payload = &opening.buf[used + payload.start..used + payload.end];
                        used += len;
                        if opcode == 1 && payload.starts_with(then.expect) {
                            found = true;
                            break;
                        }
                    }
                    if found {
                        opening.buf.drain(..used);
                    }
                    found
                }
            };
            if done && let Some((_, mut done)) = slots[slot].take() {
                poll.registry().deregister(&mut done.stream).map_err(|e| e.to_string())?;
                opened.push(Open { stream: done.stream, buf: done.buf, deflate: done.deflate });
                free.push(slot);
                in_flight -= 1;
            }
        }
    }
    Ok(opened)
}
