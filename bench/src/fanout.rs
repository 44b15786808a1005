//! `fanout` mode: subscribers of one channel and a publisher at a fixed rate through the server API; deliveries, order, loss, and the server's CPU time per delivery.

use crate::net::{Held, client_text_frame, open, parse_frame, parse_url, upgrade_request};
use mio::{Events, Interest, Poll, Token};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Arguments of the `fanout` mode.
#[derive(Debug, clap::Args)]
pub struct FanoutArgs {
    /// The server's client endpoint: ws://127.0.0.1:PORT/ws.
    #[arg(long)]
    url: String,
    /// The server API key (publications go through POST /api/publish).
    #[arg(long)]
    api_key: String,
    /// The server's process id: its CPU time is read from /proc/PID/stat.
    #[arg(long)]
    pid: u32,
    /// Subscribers of the channel.
    #[arg(long, default_value_t = 10_000)]
    subscribers: usize,
    /// The channel.
    #[arg(long, default_value = "bench")]
    channel: String,
    /// Publications per second.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Seconds measured, after the warm-up.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Seconds of publishing before the measurement starts.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Bytes of each publication's data (a JSON string, quotes included).
    #[arg(long, default_value_t = 32)]
    payload: usize,
    /// Handshakes in flight while opening subscribers.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
}

/// CPU seconds (user + system) a process has used, from /proc/PID/stat.
/// The kernel reports them in USER_HZ ticks, which Linux fixes at 100.
fn cpu_seconds(pid: &str) -> io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    Ok((ticks(11) + ticks(12)) / 100.0)
}

struct Subscriber {
    held: Held,
    last_offset: u64,
    subscribed: bool,
}

/// The offset in a `message` push.
fn offset_of(payload: &[u8]) -> Option<u64> {
    let key = br#""offset":"#;
    let at = payload.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = payload.get(at..)?.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(payload.get(at..at + digits)?).ok()?.parse().ok()
}

#[derive(Default)]
struct Tally {
    deliveries: u64,
    subscribed: usize,
    gaps: u64,
    duplicates: u64,
}

/// Reads everything a subscriber's socket has and counts what it holds.
fn drain(sub: &mut Subscriber, scratch: &mut [u8], tally: &mut Tally) -> Result<(), String> {
    loop {
        match sub.held.stream.read(scratch) {
            Ok(0) => return Err("the server closed a subscriber".into()),
            Ok(n) => sub.held.leftover.extend_from_slice(&scratch[..n]),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
            Err(error) => return Err(format!("read: {error}")),
        }
    }
    let mut used = 0;
    while let Some((opcode, payload, len)) = parse_frame(&sub.held.leftover[used..]) {
        let payload = &sub.held.leftover[used + payload.start..used + payload.end];
        match opcode {
            1 if payload.starts_with(br#"{"op":"message""#) => {
                let offset = offset_of(payload).ok_or("a message without an offset")?;
                if sub.last_offset != 0 && offset != sub.last_offset + 1 {
                    if offset <= sub.last_offset {
                        tally.duplicates += 1;
                    } else {
                        tally.gaps += 1;
                    }
                }
                sub.last_offset = offset;
                tally.deliveries += 1;
            }
            1 if payload.starts_with(br#"{"op":"subscribed""#) => {
                sub.subscribed = true;
                tally.subscribed += 1;
            }
            1 if payload.starts_with(br#"{"op":"error""#) => {
                return Err(format!("error reply: {}", String::from_utf8_lossy(payload)));
            }
            8 => return Err("the server closed a subscriber (close frame)".into()),
            _ => {}
        }
        used += len;
    }
    sub.held.leftover.drain(..used);
    Ok(())
}

/// Publishes at `rate` per second until `stop`, through pipelined keep-alive
/// POSTs: open loop, each request goes at its intended time whether or not
/// the answers to earlier ones are back (a reader thread counts them).
fn publish(
    addr: SocketAddr,
    key: &str,
    channel: &str,
    payload: usize,
    rate: f64,
    stop: &AtomicBool,
    published: &Arc<AtomicU64>,
) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("API connect: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let reader = {
        let mut stream = stream.try_clone().map_err(|e| e.to_string())?;
        let published = published.clone();
        std::thread::spawn(move || -> Result<u64, String> { read_answers(&mut stream, &published) })
    };
    let data = format!("\"{}\"", "x".repeat(payload.saturating_sub(2)));
    let body = format!(r#"{{"channel":"{channel}","data":{data}}}"#);
    let request = format!(
        "POST /api/publish HTTP/1.1\r\nHost: {addr}\r\nAuthorization: apikey {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let interval = Duration::from_secs_f64(1.0 / rate);
    let started = Instant::now();
    let mut sent: u32 = 0;
    while !stop.load(Ordering::Acquire) {
        let due = started + interval * sent;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        stream.write_all(request.as_bytes()).map_err(|e| format!("API write: {e}"))?;
        sent += 1;
    }
    // The last request says so: the server closes after answering it.
    let last = request.replacen("HTTP/1.1\r\n", "HTTP/1.1\r\nConnection: close\r\n", 1);
    stream.write_all(last.as_bytes()).map_err(|e| format!("API write: {e}"))?;
    sent += 1;
    let answered = reader.join().map_err(|_| "the answer reader panicked")??;
    if answered != u64::from(sent) {
        return Err(format!("sent {sent} publications, {answered} answered"));
    }
    Ok(())
}

/// Reads pipelined answers until the server closes; counts the 200s.
fn read_answers(stream: &mut TcpStream, published: &AtomicU64) -> Result<u64, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let mut answered = 0;
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() < end + 4 + length {
                break;
            }
            if !head.starts_with("http/1.1 200") {
                return Err(format!(
                    "publish failed: {}",
                    String::from_utf8_lossy(&buf[..end + 4 + length])
                ));
            }
            buf.drain(..end + 4 + length);
            answered += 1;
            published.fetch_add(1, Ordering::Release);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(answered),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(error) => return Err(format!("API read: {error}")),
        }
    }
}

/// Runs the `fanout` mode.
pub fn run(args: &FanoutArgs) -> Result<(), String> {
    let (addr, path) = parse_url(&args.url)?;
    let pid = args.pid.to_string();
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let mut held = Vec::with_capacity(args.subscribers);
    let opening = Instant::now();
    open(
        &mut poll,
        addr,
        upgrade_request(addr, &path).as_bytes(),
        args.subscribers,
        args.concurrency,
        &mut held,
    )?;
    eprintln!("fanout: {} subscribers connected in {:?}", held.len(), opening.elapsed());

    let subscribe = client_text_frame(
        format!(r#"{{"op":"subscribe","channel":"{}"}}"#, args.channel).as_bytes(),
    );
    let mut subs: Vec<Subscriber> = Vec::with_capacity(held.len());
    for (i, mut held) in held.into_iter().enumerate() {
        poll.registry()
            .register(&mut held.stream, Token(i), Interest::READABLE)
            .map_err(|e| e.to_string())?;
        held.stream.write_all(&subscribe).map_err(|e| format!("subscribe: {e}"))?;
        subs.push(Subscriber { held, last_offset: 0, subscribed: false });
    }
    let mut events = Events::with_capacity(4096);
    let mut scratch = vec![0u8; 64 * 1024];
    let mut tally = Tally::default();
    // Welcome frames may already be buffered: read every socket once.
    for sub in &mut subs {
        drain(sub, &mut scratch, &mut tally)?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while tally.subscribed < subs.len() {
        if Instant::now() > deadline {
            return Err(format!("only {} of {} subscribed", tally.subscribed, subs.len()));
        }
        poll.poll(&mut events, Some(Duration::from_millis(100))).map_err(|e| e.to_string())?;
        for event in &events {
            if let Some(sub) = subs.get_mut(event.token().0) {
                drain(sub, &mut scratch, &mut tally)?;
            }
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (stop, published) = (stop.clone(), published.clone());
        let (key, channel, payload, rate) =
            (args.api_key.clone(), args.channel.clone(), args.payload, args.rate);
        std::thread::spawn(move || publish(addr, &key, &channel, payload, rate, &stop, &published))
    };
    let started = Instant::now();
    let window_start = started + Duration::from_secs_f64(args.warmup);
    let window_end = window_start + Duration::from_secs_f64(args.seconds);
    let mut start_mark = None;
    let mut end_mark = None;
    loop {
        let now = Instant::now();
        if start_mark.is_none() && now >= window_start {
            start_mark = Some((
                now,
                tally.deliveries,
                cpu_seconds(&pid).map_err(|e| e.to_string())?,
                cpu_seconds("self").unwrap_or(0.0),
            ));
        }
        if end_mark.is_none() && now >= window_end {
            end_mark = Some((
                now,
                tally.deliveries,
                cpu_seconds(&pid).map_err(|e| e.to_string())?,
                cpu_seconds("self").unwrap_or(0.0),
            ));
            stop.store(true, Ordering::Release);
        }
        if end_mark.is_some() {
            let expected = published.load(Ordering::Acquire) * subs.len() as u64;
            if publisher.is_finished() && tally.deliveries >= expected {
                break;
            }
            if now > window_end + Duration::from_secs(10) {
                break;
            }
        }
        poll.poll(&mut events, Some(Duration::from_millis(20))).map_err(|e| e.to_string())?;
        for event in &events {
            if let Some(sub) = subs.get_mut(event.token().0) {
                drain(sub, &mut scratch, &mut tally)?;
            }
        }
    }
    publisher.join().map_err(|_| "the publisher panicked")??;
    let (Some((t0, d0, cpu0, own0)), Some((t1, d1, cpu1, own1))) = (start_mark, end_mark) else {
        return Err("the measurement window never closed".into());
    };
    let published = published.load(Ordering::Acquire);
    let expected = published * subs.len() as u64;
    let window = (t1 - t0).as_secs_f64();
    let deliveries = (d1 - d0) as f64;
    let cpu = cpu1 - cpu0;
    let cpu_us_per_delivery = if deliveries > 0.0 { cpu * 1e6 / deliveries } else { f64::NAN };
    println!(
        "{}",
        serde_json::json!({
            "mode": "fanout",
            "subscribers": subs.len(),
            "payload_bytes": args.payload,
            "rate": args.rate,
            "window_s": (window * 100.0).round() / 100.0,
            "published": published,
            "deliveries_expected": expected,
            "deliveries_received": tally.deliveries,
            "lost": expected.saturating_sub(tally.deliveries),
            "gaps": tally.gaps,
            "duplicates": tally.duplicates,
            "deliveries_per_s": (deliveries / window).round(),
            "server_cpu_s": (cpu * 1000.0).round() / 1000.0,
            "server_cpu_percent": (cpu / window * 1000.0).round() / 10.0,
            "server_cpu_us_per_delivery": (cpu_us_per_delivery * 1000.0).round() / 1000.0,
            "generator_cpu_percent": ((own1 - own0) / window * 1000.0).round() / 10.0,
        })
    );
    eprintln!(
        "fanout: {} subscribers, {} pub/s, {} B: {:.0} deliveries/s, server {:.3} us CPU per delivery ({:.0}% of a core), lost {}, gaps {}, duplicates {}",
        subs.len(),
        args.rate,
        args.payload,
        deliveries / window,
        cpu_us_per_delivery,
        cpu / window * 100.0,
        expected.saturating_sub(tally.deliveries),
        tally.gaps,
        tally.duplicates
    );
    Ok(())
}
