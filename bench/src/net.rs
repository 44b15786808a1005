//! Client connections for the load modes: non-blocking connects from several 127.0.0.x addresses, upgrades, and server frames.

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Socket, Type};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// Connections per 127.0.0.x source address, well under the ~28,000
/// ephemeral ports one address has toward one server port.
const PER_SOURCE_ADDRESS: usize = 20_000;

/// `ws://IP:PORT/PATH` as an address and a path (loopback only).
pub fn parse_url(url: &str) -> Result<(SocketAddr, String), String> {
    let rest = url.strip_prefix("ws://").ok_or("the URL must start with ws://")?;
    let (authority, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], rest[slash..].to_string()),
        None => (rest, "/".to_string()),
    };
    let addr: SocketAddr =
        authority.parse().map_err(|_| format!("expected IP:PORT, got {authority}"))?;
    if !addr.ip().is_loopback() {
        return Err("only loopback servers may be loaded".into());
    }
    Ok((addr, path))
}

/// The upgrade request for `path`.
pub fn upgrade_request(addr: SocketAddr, path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// An upgraded connection and the bytes that came after its 101 head.
pub struct Held {
    /// The socket (non-blocking, not registered).
    pub stream: TcpStream,
    /// What followed the head in the same reads (a welcome frame, say).
    pub leftover: Vec<u8>,
}

/// A connection on its way to being upgraded.
struct Opening {
    stream: TcpStream,
    sent: bool,
    response: Vec<u8>,
}

/// A non-blocking connect from source address 127.0.0.(1 + `source`).
fn connect_from(source: usize, addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    // Closing resets the connection instead of leaving the generator's side
    // in TIME_WAIT, which would eat the ephemeral ports of the next run.
    socket.set_linger(Some(Duration::ZERO))?;
    if source > 0 {
        // bind() must pick a port before it knows the destination, so only
        // the extra addresses are bound; the first lets connect() choose.
        let octet = u8::try_from(1 + source % 250).unwrap_or(1);
        let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, octet)), 0);
        socket.bind(&local.into())?;
    }
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(error) if error.raw_os_error() == Some(115) => {} // EINPROGRESS
        Err(error) => return Err(error),
    }
    Ok(TcpStream::from_std(socket.into()))
}

/// Opens `count` more upgraded connections into `held` (deregistered from
/// `poll` once upgraded).
pub fn open(
    poll: &mut Poll,
    addr: SocketAddr,
    request: &[u8],
    count: usize,
    concurrency: usize,
    held: &mut Vec<Held>,
) -> Result<(), String> {
    let mut events = Events::with_capacity(1024);
    let mut slots: Vec<Option<Opening>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut started = 0;
    let mut in_flight = 0;
    let target = held.len() + count;
    let deadline = Instant::now() + Duration::from_secs(120);
    while held.len() < target {
        while in_flight < concurrency && started < count {
            let source = (held.len() + in_flight) / PER_SOURCE_ADDRESS;
            let mut stream = connect_from(source, addr).map_err(|e| format!("connect: {e}"))?;
            let slot = free.pop().unwrap_or_else(|| {
                slots.push(None);
                slots.len() - 1
            });
            poll.registry()
                .register(&mut stream, Token(slot), Interest::READABLE | Interest::WRITABLE)
                .map_err(|e| format!("register: {e}"))?;
            slots[slot] = Some(Opening { stream, sent: false, response: Vec::new() });
            started += 1;
            in_flight += 1;
        }
        if Instant::now() > deadline {
            return Err(format!("only {} of {target} connections opened in 120 s", held.len()));
        }
        poll.poll(&mut events, Some(Duration::from_secs(1))).map_err(|e| format!("poll: {e}"))?;
        for event in &events {
            let slot = event.token().0;
            let Some(opening) = slots.get_mut(slot).and_then(Option::as_mut) else { continue };
            if event.is_writable() && !opening.sent {
                match opening.stream.take_error() {
                    Ok(Some(error)) | Err(error) => {
                        return Err(format!("connection failed: {error}"));
                    }
                    Ok(None) => {}
                }
                match opening.stream.write(request) {
                    Ok(n) if n == request.len() => opening.sent = true,
                    Ok(_) => return Err("short write of a handshake".into()),
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                    Err(error) if error.kind() == io::ErrorKind::NotConnected => {}
                    Err(error) => return Err(format!("write: {error}")),
                }
            }
            if event.is_readable() && opening.sent {
                let mut buf = [0u8; 1024];
                loop {
                    match opening.stream.read(&mut buf) {
                        Ok(0) => {
                            return Err(
                                "the server closed a connection during the handshake".into()
                            );
                        }
                        Ok(n) => opening.response.extend_from_slice(&buf[..n]),
                        Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                        Err(error) => return Err(format!("read: {error}")),
                    }
                }
                if let Some(end) = opening.response.windows(4).position(|w| w == b"\r\n\r\n") {
                    if !opening.response.starts_with(b"HTTP/1.1 101 ") {
                        let head = String::from_utf8_lossy(&opening.response[..end]);
                        return Err(format!("upgrade refused: {head}"));
                    }
                    if let Some(mut done) = slots[slot].take() {
                        poll.registry().deregister(&mut done.stream).map_err(|e| e.to_string())?;
                        let leftover = done.response.split_off(end + 4);
                        held.push(Held { stream: done.stream, leftover });
                        free.push(slot);
                        in_flight -= 1;
                    }
                }
            }
        }
    }
    Ok(())
}

/// A masked client text frame.
pub fn client_text_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [0x5a, 0x13, 0xc7, 0x8e];
    let mut out = vec![0x81];
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
