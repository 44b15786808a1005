//! `idle` mode: open WebSocket connections in steps, leave them idle, and sample the server's RSS at each step.

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Socket, Type};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// Connections per 127.0.0.x source address, well under the ~28,000
/// ephemeral ports one address has toward one server port.
const PER_SOURCE_ADDRESS: usize = 20_000;

/// Arguments of the `idle` mode.
#[derive(Debug, clap::Args)]
pub struct IdleArgs {
    /// The server, as ws://127.0.0.1:PORT/PATH (PATH: /echo or /ws).
    #[arg(long)]
    url: String,
    /// The server's process id: its RSS is read from /proc/PID/status.
    #[arg(long)]
    pid: u32,
    /// Connection counts to sample at, in increasing order.
    #[arg(long, value_delimiter = ',', default_value = "0,2500,5000,7500,10000")]
    steps: Vec<usize>,
    /// Handshakes in flight while opening connections.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Milliseconds to let the server settle before each sample.
    #[arg(long, default_value_t = 1000)]
    settle_ms: u64,
}

/// A connection on its way to being upgraded.
struct Opening {
    stream: TcpStream,
    sent: bool,
    response: Vec<u8>,
}

fn parse_url(url: &str) -> Result<(SocketAddr, String), String> {
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

/// The server's resident memory: (VmRSS, RssAnon) in bytes.
fn rss(pid: u32) -> io::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    Ok((field("VmRSS:"), field("RssAnon:")))
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

/// Opens `count` more upgraded connections into `held`.
fn open(
    poll: &mut Poll,
    addr: SocketAddr,
    request: &[u8],
    count: usize,
    concurrency: usize,
    held: &mut Vec<TcpStream>,
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
                        held.push(done.stream);
                        free.push(slot);
                        in_flight -= 1;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Least-squares slope of `y` over `x`.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let covariance: f64 = points.iter().map(|(x, y)| (x - mean_x) * (y - mean_y)).sum();
    let variance: f64 = points.iter().map(|(x, _)| (x - mean_x).powi(2)).sum();
    if variance == 0.0 { 0.0 } else { covariance / variance }
}

/// Runs the `idle` mode.
pub fn run(args: &IdleArgs) -> Result<(), String> {
    let (addr, path) = parse_url(&args.url)?;
    if args.steps.windows(2).any(|w| w[0] > w[1]) || args.steps.len() < 2 {
        return Err("--steps must be at least two increasing counts".into());
    }
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let mut held = Vec::new();
    let mut samples = Vec::new();
    for &step in &args.steps {
        let more = step - held.len();
        let started = Instant::now();
        open(&mut poll, addr, request.as_bytes(), more, args.concurrency, &mut held)?;
        let opened_in = started.elapsed();
        std::thread::sleep(Duration::from_millis(args.settle_ms));
        let (rss, anon) =
            rss(args.pid).map_err(|e| format!("reading /proc/{}/status: {e}", args.pid))?;
        println!(
            "{}",
            serde_json::json!({
                "mode": "idle", "path": path, "connections": step,
                "rss_bytes": rss, "rss_anon_bytes": anon,
                "opened_in_ms": opened_in.as_millis() as u64,
            })
        );
        samples.push((step as f64, rss as f64, anon as f64));
    }
    let rss_slope = slope(&samples.iter().map(|s| (s.0, s.1)).collect::<Vec<_>>());
    let anon_slope = slope(&samples.iter().map(|s| (s.0, s.2)).collect::<Vec<_>>());
    let (first, last) = (samples[0], samples[samples.len() - 1]);
    let delta = (last.1 - first.1) / (last.0 - first.0);
    println!(
        "{}",
        serde_json::json!({
            "mode": "idle", "path": path, "summary": true,
            "connections": last.0 as u64,
            "rss_bytes_per_connection_slope": rss_slope.round(),
            "rss_anon_bytes_per_connection_slope": anon_slope.round(),
            "rss_bytes_per_connection_delta": delta.round(),
        })
    );
    eprintln!(
        "idle {path}: {:.0} bytes of RSS per connection (slope over {} samples up to {} connections; anon {:.0})",
        rss_slope,
        samples.len(),
        last.0,
        anon_slope
    );
    Ok(())
}
