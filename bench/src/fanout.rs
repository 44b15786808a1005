//! `fanout` mode: M subscribers of one channel and a publisher at a fixed rate (open loop, through the server API); deliveries, loss, reordering, latency from each publication's intended send time, and the time until its last subscriber has it.

use crate::clock::{now_ns, sleep_until};
use crate::echo::per_second_samples;
use crate::hist::Latency;
use crate::net::{Then, client_frame, open_many, parse_frame, parse_url, upgrade_request};
use crate::parts::{self, Part, PartCtl};
use crate::stream::Stream;
use crate::window::{self, Common, Window, round};
use mio::{Events, Interest, Poll, Token};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Arguments of the `fanout` mode.
#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    /// The server's client endpoint: ws://127.0.0.1:PORT/ws (or wss://).
    #[arg(long)]
    url: String,
    /// Where the server API listens (plain HTTP), if not at the URL's
    /// address: a wss:// URL needs it.
    #[arg(long)]
    api_addr: Option<SocketAddr>,
    /// The server API key (publications go through POST /api/publish).
    #[arg(long)]
    api_key: String,
    /// Subscribers of the channel.
    #[arg(long, default_value_t = 10_000)]
    subscribers: usize,
    /// The channel.
    #[arg(long, default_value = "bench")]
    channel: String,
    /// Publications per second.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Publish closed loop instead, as fast as the server answers, with this
    /// many requests in flight on the one keep-alive connection (1: each
    /// request waits for the previous answer). `--rate` is then ignored.
    #[arg(long)]
    depth: Option<usize>,
    /// Publishers, each on its own keep-alive connection (as a pool of PHP
    /// workers publishes): closed loop with `--depth`, each with that many
    /// requests in flight; open loop, the publications take the
    /// connections in turn. Publications are numbered from one counter:
    /// with more than one connection, two sent close together may reach
    /// the server in either order, which subscribers count as a gap.
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Bytes of each publication's data: a JSON string (quotes included)
    /// carrying the sequence number and the intended send time.
    #[arg(long, default_value_t = 32)]
    payload: usize,
    /// The data as a JSON object of that size instead: a list of
    /// notifications (ids, names, kinds, times, short texts, different in
    /// every publication), as compressible as an application's.
    #[arg(long)]
    json: bool,
    /// Offer permessage-deflate as browsers do, and inflate what comes
    /// compressed (once per distinct compressed payload: a server that
    /// compresses a publication once sends every subscriber the same bytes).
    #[arg(long)]
    deflate: bool,
    /// Seconds to wait after the window for the last deliveries.
    #[arg(long, default_value_t = 10)]
    drain: u64,
    /// Publish as a client does, with `publish` commands on one `/ws`
    /// connection (`skip_self`), instead of `POST /api/publish`: the
    /// channel's namespace must allow `client_publish`. Open loop only.
    #[arg(long, conflicts_with_all = ["pusher", "depth"])]
    ws_publish: bool,
    /// The server's `redis-server`s (Redis engine; comma-separated: a
    /// cluster's masters): their CPU through the window, together, is
    /// reported per publication.
    #[arg(long, value_delimiter = ',')]
    redis_pid: Vec<u32>,
    /// Speak the Pusher protocol instead, as app `ID:KEY:SECRET`: the URL
    /// is `ws://HOST:PORT/app/KEY`, subscribers send `pusher:subscribe`, and
    /// publications go through the signed `POST /apps/ID/events`.
    #[arg(long, value_name = "ID:KEY:SECRET")]
    pusher: Option<String>,
    #[command(flatten)]
    common: Common,
}

/// `"SEQ:SENDNS:xxxx"` padded to `size` bytes (at least what the numbers need).
fn payload(seq: u64, send_ns: u64, size: usize) -> String {
    let core = format!("{seq}:{send_ns}:");
    format!("\"{core}{}\"", "x".repeat(size.saturating_sub(core.len() + 2)))
}

/// `{"seq":"SEQ:SENDNS:","items":[...]}` of about `size` bytes: notifications
/// made from a pseudo-random sequence seeded by `seq`, so that no two
/// publications are alike.
fn json_payload(seq: u64, send_ns: u64, size: usize) -> String {
    const WORDS: [&str; 16] = [
        "comment",
        "liked",
        "your",
        "photo",
        "replied",
        "to",
        "thread",
        "new",
        "follower",
        "mentioned",
        "you",
        "in",
        "a",
        "post",
        "shared",
        "invoice",
    ];
    let mut x = seq.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let word = |n: u64| WORDS[(n % 16) as usize];
    let mut out = format!(r#"{{"seq":"{seq}:{send_ns}:","items":["#);
    let mut first = true;
    while out.len() + 2 < size {
        let text: Vec<&str> = (0..5).map(|_| word(next())).collect();
        let item = format!(
            r#"{{"id":{},"from":"user-{}","kind":"{}","at":{},"text":"{}","read":{}}}"#,
            next() % 10_000_000,
            next() % 100_000,
            word(next()),
            1_764_500_000 + next() % 100_000,
            text.join(" "),
            next() % 2 == 0
        );
        if out.len() + item.len() + 3 > size && !first {
            break;
        }
        if !first {
            out.push(',');
        }
        out.push_str(&item);
        first = false;
    }
    out.push_str("]}");
    out
}

/// The `(seq, send_ns)` inside a message push.
fn parse_push(payload: &[u8]) -> Option<(u64, u64)> {
    let find = |key: &[u8]| Some(payload.windows(key.len()).position(|w| w == key)? + key.len());
    let at = find(br#""data":""#).or_else(|| find(br#""data":{"seq":""#))?;
    let rest = payload.get(at..)?;
    let mut fields = rest.split(|b| *b == b':');
    let number = |field: Option<&[u8]>| std::str::from_utf8(field?).ok()?.parse::<u64>().ok();
    Some((number(fields.next())?, number(fields.next())?))
}

/// A Pusher app the fanout speaks to.
#[derive(Debug, Clone)]
struct PusherApp {
    id: String,
    key: String,
    secret: String,
}

impl PusherApp {
    fn parse(text: &str) -> Result<PusherApp, String> {
        let mut parts = text.splitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(id), Some(key), Some(secret)) => {
                Ok(PusherApp { id: id.into(), key: key.into(), secret: secret.into() })
            }
            _ => Err("--pusher takes ID:KEY:SECRET".into()),
        }
    }

    /// The query string of a signed request, as the Pusher SDKs sign it.
    fn signed_query(&self, method: &str, path: &str, body: &str) -> String {
        use hmac::{KeyInit, Mac};
        use md5::Digest;
        let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        let query = format!(
            "auth_key={}&auth_timestamp={timestamp}&auth_version=1.0&body_md5={}",
            self.key,
            hex(&md5::Md5::digest(body.as_bytes()))
        );
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(self.secret.as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(format!("{method}\n{path}\n{query}").as_bytes());
        format!("{query}&auth_signature={}", hex(&mac.finalize().into_bytes()))
    }
}

/// What a protocol's subscribe, and its message frames, look like.
struct Dialect {
    subscribe: Vec<u8>,
    subscribed: &'static [u8],
    message: &'static [u8],
}

fn dialect(args: &FanoutArgs) -> Dialect {
    match args.pusher {
        None => Dialect {
            subscribe: client_frame(
                1,
                format!(r#"{{"op":"subscribe","channel":"{}"}}"#, args.channel).as_bytes(),
            ),
            subscribed: br#"{"op":"subscribed""#,
            message: br#"{"op":"message""#,
        },
        Some(_) => Dialect {
            subscribe: client_frame(
                1,
                format!(
                    r#"{{"event":"pusher:subscribe","data":{{"auth":"","channel":"{}"}}}}"#,
                    args.channel
                )
                .as_bytes(),
            ),
            subscribed: br#"{"event":"pusher_internal:subscription_succeeded""#,
            message: br#"{"channel":"#,
        },
    }
}

struct Subscriber {
    stream: Stream,
    buf: Vec<u8>,
    last_seq: Option<u64>,
}

/// permessage-deflate on the generator's side: an inflater, and what each
/// compressed payload inflated to (a server that compresses a publication
/// once sends the same bytes to every subscriber; one that compresses per
/// connection is inflated per delivery).
struct Inflating {
    decompress: flate2::Decompress,
    seen: HashMap<Vec<u8>, Option<(u64, u64)>>,
}

impl Inflating {
    fn new() -> Inflating {
        Inflating { decompress: flate2::Decompress::new(false), seen: HashMap::new() }
    }

    /// The `(seq, send_ns)` of a compressed message push that starts with
    /// `message`.
    fn push(&mut self, payload: &[u8], message: &[u8]) -> Result<Option<(u64, u64)>, String> {
        if let Some(known) = self.seen.get(payload) {
            return Ok(*known);
        }
        self.decompress.reset(false);
        let mut input = payload.to_vec();
        input.extend_from_slice(&[0x00, 0x00, 0xFF, 0xFF]);
        let mut out = Vec::with_capacity(payload.len() * 8 + 64);
        loop {
            let before = self.decompress.total_in();
            let offset = usize::try_from(before).unwrap_or(usize::MAX);
            let rest = input.get(offset..).unwrap_or_default();
            self.decompress
                .decompress_vec(rest, &mut out, flate2::FlushDecompress::Sync)
                .map_err(|e| format!("inflate: {e}"))?;
            let used = self.decompress.total_in() - before;
            if self.decompress.total_in() as usize >= input.len() && out.len() < out.capacity() {
                break;
            }
            if used == 0 && out.len() < out.capacity() {
                return Err("inflate: no progress".into());
            }
            out.reserve(out.capacity());
        }
        let push = if out.starts_with(message) {
            Some(parse_push(&out).ok_or("a message without sequence and send time")?)
        } else {
            None
        };
        if self.seen.len() >= 4096 {
            self.seen.clear();
        }
        self.seen.insert(payload.to_vec(), push);
        Ok(push)
    }
}

#[derive(Default)]
struct Tally {
    /// Deliveries of publications sent inside the window.
    in_window: u64,
    /// Deliveries received in each second of the window.
    per_second: Vec<u64>,
    gaps: u64,
    duplicates: u64,
    latency: Latency,
    /// Per publication sent in the window: when its last delivery came.
    last: HashMap<u64, u64>,
    send_time: HashMap<u64, u64>,
    /// Bytes of the frames of the deliveries counted in `in_window`
    /// (headers included).
    wire_bytes: u64,
    /// Of those deliveries, the ones that came compressed.
    compressed: u64,
}

fn read_subscriber(
    sub: &mut Subscriber,
    scratch: &mut [u8],
    window: &Window,
    tally: &mut Tally,
    message: &[u8],
    inflating: &mut Inflating,
) -> Result<(), String> {
    loop {
        match sub.stream.read(scratch) {
            Ok(0) => return Err("the server closed a subscriber".into()),
            Ok(n) => sub.buf.extend_from_slice(&scratch[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let now = now_ns();
    let mut used = 0;
    while let Some((opcode, payload, len)) = parse_frame(&sub.buf[used..]) {
        let compressed = sub.buf[used] & 0x40 != 0;
        let payload = &sub.buf[used + payload.start..used + payload.end];
        used += len;
        if opcode == 8 {
            return Err("the server closed a subscriber (close frame)".into());
        }
        if opcode == 9 {
            // Heartbeat: answer as a browser would, or herald closes an
            // idle subscriber after two ping intervals. A pong is 6-131
            // bytes into a socket that is read from: it fits.
            let pong = client_frame(0xA, payload);
            let _ = sub.stream.write_all(&pong);
            continue;
        }
        if opcode != 1 {
            continue;
        }
        let (seq, send_ns) = if compressed {
            match inflating.push(payload, message)? {
                Some(push) => push,
                None => continue,
            }
        } else if payload.starts_with(message) {
            parse_push(payload).ok_or("a message without sequence and send time")?
        } else {
            continue;
        };
        match sub.last_seq {
            Some(last) if seq <= last => tally.duplicates += 1,
            Some(last) if seq > last + 1 => tally.gaps += 1,
            _ => {}
        }
        sub.last_seq = Some(seq);
        if let Some(second) = window.second(now) {
            tally.per_second[second] += 1;
        }
        if send_ns >= window.start_ns && send_ns < window.end_ns {
            tally.in_window += 1;
            tally.wire_bytes += len as u64;
            tally.compressed += u64::from(compressed);
            tally.latency.record(now.saturating_sub(send_ns));
            let last = tally.last.entry(seq).or_insert(now);
            *last = (*last).max(now);
            tally.send_time.insert(seq, send_ns);
        }
    }
    sub.buf.drain(..used);
    Ok(())
}

fn part(args: &FanoutArgs, part: Part, ctl: PartCtl) -> Result<Value, String> {
    let (target, path) = parse_url(&args.url)?;
    let (first, count) = part.share(args.subscribers);
    let dialect = dialect(args);
    let request = upgrade_request(target.addr, &path, args.deflate);
    let opened = open_many(target, &request, first, count, 256, |_| {
        Some(Then { send: dialect.subscribe.clone(), expect: dialect.subscribed })
    })?;
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let mut subs = Vec::with_capacity(count);
    let deflate_agreed = opened.iter().filter(|open| open.deflate).count();
    for (i, open) in opened.into_iter().enumerate() {
        let mut stream = open.stream;
        poll.registry()
            .register(&mut stream, Token(i), Interest::READABLE)
            .map_err(|e| e.to_string())?;
        subs.push(Subscriber { stream, buf: open.buf, last_seq: None });
    }
    let window = Window::from_command(&ctl.ready(json!({"subscribed": count}))?)?;
    let mut tally = Tally { per_second: vec![0; window.seconds()], ..Default::default() };
    let mut events = Events::with_capacity(4096);
    let mut scratch = vec![0u8; 64 * 1024];
    let mut inflating = Inflating::new();
    let mut pending_command = None;
    // Until the window closes, then until the coordinator says everything
    // arrived (or gives up): each report is a barrier.
    let mut reported = false;
    loop {
        if now_ns() >= window.end_ns && !reported {
            ctl.report(json!({"in_window": tally.in_window}))?;
            reported = true;
        }
        if reported && let Some(command) = ctl.try_command() {
            pending_command = Some(command);
        }
        if let Some(command) = pending_command.take() {
            if command["stop"].as_bool() == Some(true) {
                break;
            }
            reported = false;
        }
        poll.poll(&mut events, Some(Duration::from_millis(20))).map_err(|e| e.to_string())?;
        for event in &events {
            if let Some(sub) = subs.get_mut(event.token().0) {
                read_subscriber(
                    sub,
                    &mut scratch,
                    &window,
                    &mut tally,
                    dialect.message,
                    &mut inflating,
                )?;
            }
        }
    }
    let last: Map<String, Value> =
        tally.last.iter().map(|(seq, at)| (seq.to_string(), Value::from(*at))).collect();
    let sent: Map<String, Value> =
        tally.send_time.iter().map(|(seq, at)| (seq.to_string(), Value::from(*at))).collect();
    Ok(json!({
        "in_window": tally.in_window,
        "received": tally.per_second.iter().sum::<u64>(),
        "per_second": tally.per_second,
        "gaps": tally.gaps,
        "duplicates": tally.duplicates,
        "wire_bytes": tally.wire_bytes,
        "compressed": tally.compressed,
        "deflate_agreed": deflate_agreed,
        "latency_hist": tally.latency.to_json(),
        "last_max": last,
        "sent_max": sent,
    }))
}

/// Publishes at `rate` from `window.load_ns` to `window.end_ns`, open loop:
/// pipelined keep-alive POSTs, each sent at its intended time, answers
/// counted by a reader thread per connection. With `--publishers N`, the
/// publications take N connections in turn. Returns (publications sent
/// inside the window, all sent, all answered 200).
fn publish(args: &FanoutArgs, addr: SocketAddr, window: Window) -> Result<(u64, u64, u64), String> {
    let answered = Arc::new(AtomicU64::new(0));
    let mut streams = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..args.publishers.max(1) {
        let stream = std::net::TcpStream::connect(addr).map_err(|e| format!("API connect: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut reading = stream.try_clone().map_err(|e| e.to_string())?;
        let answered = answered.clone();
        readers.push(std::thread::spawn(move || read_answers(&mut reading, &answered)));
        streams.push(stream);
    }
    let connections = streams.len() as u64;
    let (in_window, sent) = open_loop(args.rate, window, |seq, send_ns, interval| {
        // The last publication on each connection closes it.
        let last = send_ns + interval * connections >= window.end_ns;
        let request = publish_request(args, addr, seq, send_ns, last);
        let stream = &mut streams[(seq % connections) as usize];
        stream.write_all(request.as_bytes()).map_err(|e| format!("API write: {e}"))
    })?;
    for reader in readers {
        reader.join().map_err(|_| "the answer reader panicked")??;
    }
    Ok((in_window, sent, answered.load(Ordering::Acquire)))
}

/// Calls `send(seq, send_ns, interval)` for publications at `rate` from
/// `window.load_ns` to `window.end_ns`, open loop: each at its intended
/// time, whether or not the ones before were answered. Returns
/// (publications sent inside the window, all sent).
fn open_loop(
    rate: f64,
    window: Window,
    mut send: impl FnMut(u64, u64, u64) -> Result<(), String>,
) -> Result<(u64, u64), String> {
    let interval = ((1e9 / rate) as u64).max(1);
    let (mut seq, mut in_window) = (0u64, 0u64);
    let mut next = window.load_ns;
    while next < window.end_ns {
        sleep_until(next);
        send(seq, next, interval)?;
        if next >= window.start_ns {
            in_window += 1;
        }
        seq += 1;
        next += interval;
    }
    Ok((in_window, seq))
}

/// A publication's data (`--payload`, or `--json`): its sequence number
/// and intended send time inside.
fn data_of(args: &FanoutArgs, seq: u64, send_ns: u64) -> String {
    if args.json {
        json_payload(seq, send_ns, args.payload)
    } else {
        payload(seq, send_ns, args.payload)
    }
}

/// Publishes at `rate` as [`publish`] does, as `publish` commands on one
/// `/ws` connection; a reader thread counts the `published` replies. After
/// the last one the writer waits (up to `--drain` seconds) for the
/// outstanding replies, then closes. Returns (publications sent inside the
/// window, all sent, all answered `published`).
fn publish_over_ws(
    args: &FanoutArgs,
    target: crate::net::Target,
    window: Window,
) -> Result<(u64, u64, u64), String> {
    if target.tls {
        return Err("--ws-publish speaks plain ws:// only".into());
    }
    let mut stream =
        std::net::TcpStream::connect(target.addr).map_err(|e| format!("publisher connect: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream.write_all(&upgrade_request(target.addr, "/ws", false)).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut chunk).map_err(|e| format!("publisher upgrade: {e}"))?;
        if n == 0 {
            return Err("the server closed the publisher during its upgrade".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    if !buf.starts_with(b"HTTP/1.1 101") {
        return Err(format!(
            "publisher upgrade refused: {}",
            String::from_utf8_lossy(&buf[..head_end])
        ));
    }
    buf.drain(..head_end);
    let answered = Arc::new(AtomicU64::new(0));
    let reader = {
        let mut reading = stream.try_clone().map_err(|e| e.to_string())?;
        let answered = answered.clone();
        std::thread::spawn(move || read_published(&mut reading, buf, &answered))
    };
    let (in_window, seq) = open_loop(args.rate, window, |seq, send_ns, _| {
        let command = format!(
            r#"{{"op":"publish","id":{seq},"channel":"{}","data":{},"skip_self":true}}"#,
            args.channel,
            data_of(args, seq, send_ns)
        );
        stream
            .write_all(&client_frame(1, command.as_bytes()))
            .map_err(|e| format!("publisher write: {e}"))
    })?;
    let give_up = now_ns() + args.drain * 1_000_000_000;
    while answered.load(Ordering::Acquire) < seq && now_ns() < give_up && !reader.is_finished() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = stream.write_all(&client_frame(8, &1000u16.to_be_bytes()));
    let _ = stream.shutdown(std::net::Shutdown::Write);
    reader.join().map_err(|_| "the reply reader panicked")??;
    Ok((in_window, seq, answered.load(Ordering::Acquire)))
}

/// Reads the publisher's frames until the server closes: counts
/// `published` replies; an `error` reply fails the run.
fn read_published(
    stream: &mut std::net::TcpStream,
    mut buf: Vec<u8>,
    answered: &AtomicU64,
) -> Result<(), String> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        while let Some((opcode, payload, length)) = parse_frame(&buf) {
            let frame = &buf[payload];
            if opcode == 8 {
                return Ok(());
            }
            if frame.starts_with(br#"{"op":"published""#) {
                answered.fetch_add(1, Ordering::Release);
            } else if frame.starts_with(br#"{"op":"error""#) {
                return Err(format!("publish failed: {}", String::from_utf8_lossy(frame)));
            }
            buf.drain(..length);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(error) => return Err(format!("publisher read: {error}")),
        }
    }
}

/// A `POST /api/publish` request (with `--pusher`, a signed
/// `POST /apps/ID/events`) for publication `seq` sent at `send_ns`.
fn publish_request(
    args: &FanoutArgs,
    addr: SocketAddr,
    seq: u64,
    send_ns: u64,
    last: bool,
) -> String {
    let data = data_of(args, seq, send_ns);
    if let Some(app) = args.pusher.as_deref().and_then(|text| PusherApp::parse(text).ok()) {
        let body = format!(r#"{{"name":"bench","channel":"{}","data":{data}}}"#, args.channel);
        let path = format!("/apps/{}/events", app.id);
        let query = app.signed_query("POST", &path, &body);
        return format!(
            "POST {path}?{query} HTTP/1.1\r\nHost: {addr}\r\n{}\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            if last { "Connection: close\r\n" } else { "" },
            body.len()
        );
    }
    let body = format!(r#"{{"channel":"{}","data":{data}}}"#, args.channel);
    format!(
        "POST /api/publish HTTP/1.1\r\nHost: {addr}\r\nAuthorization: apikey {}\r\n{}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        args.api_key,
        if last { "Connection: close\r\n" } else { "" },
        body.len()
    )
}

/// What closed-loop publishers did: publications sent inside the window,
/// all sent, all answered 200, and the time from each request inside the
/// window to its answer.
#[derive(Default)]
struct Published {
    in_window: u64,
    sent: u64,
    answered: u64,
    latency: Latency,
}

/// Runs `publishers` closed-loop publishers (each [`publish_closed_loop`])
/// and adds up what they did.
fn publish_closed_loops(
    args: &FanoutArgs,
    addr: SocketAddr,
    window: Window,
    depth: usize,
) -> Result<Published, String> {
    let seq = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..args.publishers.max(1))
        .map(|_| {
            let (args, seq) = (args.clone(), seq.clone());
            std::thread::spawn(move || publish_closed_loop(&args, addr, window, depth, &seq))
        })
        .collect();
    let mut total = Published::default();
    for thread in threads {
        let one = thread.join().map_err(|_| "a publisher panicked")??;
        total.in_window += one.in_window;
        total.sent += one.sent;
        total.answered += one.answered;
        total.latency.merge(&one.latency);
    }
    Ok(total)
}

/// Publishes closed loop from `window.load_ns` to `window.end_ns`: `depth`
/// requests in flight on one keep-alive connection, a new one sent for each
/// answer (answers come in request order), numbered from `seq`.
fn publish_closed_loop(
    args: &FanoutArgs,
    addr: SocketAddr,
    window: Window,
    depth: usize,
    seq: &AtomicU64,
) -> Result<Published, String> {
    let mut stream = std::net::TcpStream::connect(addr).map_err(|e| format!("API connect: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    sleep_until(window.load_ns);
    let mut done = Published::default();
    let mut sent_at = std::collections::VecDeque::new();
    let send = |stream: &mut std::net::TcpStream,
                done: &mut Published,
                sent_at: &mut std::collections::VecDeque<u64>| {
        let now = now_ns();
        let request = publish_request(args, addr, seq.fetch_add(1, Ordering::Relaxed), now, false);
        done.sent += 1;
        sent_at.push_back(now);
        if now >= window.start_ns && now < window.end_ns {
            done.in_window += 1;
        }
        stream.write_all(request.as_bytes()).map_err(|e| format!("API write: {e}"))
    };
    for _ in 0..depth {
        send(&mut stream, &mut done, &mut sent_at)?;
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    while done.answered < done.sent {
        let n = stream.read(&mut chunk).map_err(|e| format!("API read: {e}"))?;
        if n == 0 {
            return Err("the server closed the API connection".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some(length) = complete_answer(&buf)? {
            buf.drain(..length);
            done.answered += 1;
            let now = now_ns();
            if let Some(sent) = sent_at.pop_front()
                && sent >= window.start_ns
                && sent < window.end_ns
            {
                done.latency.record(now.saturating_sub(sent));
            }
            if now < window.end_ns {
                send(&mut stream, &mut done, &mut sent_at)?;
            }
        }
    }
    Ok(done)
}

/// The length of the first complete answer in `buf`, if it is complete;
/// an error unless it is a 200.
fn complete_answer(buf: &[u8]) -> Result<Option<usize>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { return Ok(None) };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0);
    if buf.len() < end + 4 + length {
        return Ok(None);
    }
    if !head.starts_with("http/1.1 200") {
        return Err(format!(
            "publish failed: {}",
            String::from_utf8_lossy(&buf[..end + 4 + length])
        ));
    }
    Ok(Some(end + 4 + length))
}

/// Reads pipelined answers until the server closes; counts the 200s.
fn read_answers(stream: &mut std::net::TcpStream, answered: &AtomicU64) -> Result<(), String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        while let Some(length) = complete_answer(&buf)? {
            buf.drain(..length);
            answered.fetch_add(1, Ordering::Release);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(error) => return Err(format!("API read: {error}")),
        }
    }
}

/// Runs the `fanout` mode.
pub fn run(args: &FanoutArgs) -> Result<(), String> {
    let body = {
        let args = args.clone();
        move |p: Part, ctl: PartCtl| part(&args, p, ctl)
    };
    let (target, _) = parse_url(&args.url)?;
    let addr = match (args.api_addr, target.tls) {
        (Some(addr), _) => addr,
        (None, false) => target.addr,
        (None, true) => return Err("a wss:// URL needs --api-addr (the plain server API)".into()),
    };
    if let Some(app) = &args.pusher {
        PusherApp::parse(app)?;
    }
    let processes = args.common.processes.unwrap_or_else(|| parts::processes_for(args.subscribers));
    let threads = args.common.threads.max(processes);
    let Some(mut coordinator) =
        parts::begin(args.common.parts.as_deref(), threads, processes, body)?
    else {
        return Ok(());
    };
    let subscribed = coordinator.gather()?.ready()?;
    let window = Window::plan(&args.common);
    coordinator.command(&window.command())?;
    let publisher = {
        let args = args.clone();
        std::thread::spawn(move || match args.depth {
            Some(depth) => publish_closed_loops(&args, addr, window, depth.max(1)),
            None if args.ws_publish => {
                publish_over_ws(&args, target, window).map(|(in_window, sent, answered)| {
                    Published { in_window, sent, answered, latency: Latency::default() }
                })
            }
            None => publish(&args, addr, window).map(|(in_window, sent, answered)| Published {
                in_window,
                sent,
                answered,
                latency: Latency::default(),
            }),
        })
    };
    let redis_cpu = |pids: &[u32]| -> Option<f64> {
        if pids.is_empty() {
            return None;
        }
        pids.iter().map(|pid| crate::procfs::cpu_seconds(&pid.to_string()).ok()).sum()
    };
    let redis_start = (!args.redis_pid.is_empty()).then(|| {
        sleep_until(window.start_ns);
        redis_cpu(&args.redis_pid)
    });
    let samples = window::sample(&window, args.common.pid)?;
    let redis_seconds = match (redis_start.flatten(), redis_cpu(&args.redis_pid)) {
        (Some(start), Some(end)) => Some(end - start),
        _ => None,
    };
    let Published { in_window: published, sent, answered, latency: publish_latency } =
        publisher.join().map_err(|_| "the publisher panicked")??;
    let expected = published * args.subscribers as u64;
    // Wait for the last deliveries: each barrier is one report from every part.
    let give_up = now_ns() + args.drain * 1_000_000_000;
    loop {
        let report = coordinator.gather()?.ready()?;
        let got = report["in_window"].as_u64().unwrap_or(0);
        if got >= expected || now_ns() >= give_up {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        coordinator.command(&json!({"more": true}))?;
    }
    coordinator.command(&json!({"stop": true}))?;
    let result = coordinator.gather()?.done()?;
    coordinator.finish()?;

    let seconds = window.seconds() as f64;
    let received = result["received"].as_u64().unwrap_or(0) as f64;
    let in_window = result["in_window"].as_u64().unwrap_or(0);
    let server_cpu = samples["server_cpu_s"].as_f64().unwrap_or(0.0);
    let mut last = Latency::default();
    if let (Some(lasts), Some(sends)) =
        (result["last_max"].as_object(), result["sent_max"].as_object())
    {
        for (seq, at) in lasts {
            if let (Some(at), Some(sent)) = (at.as_u64(), sends.get(seq).and_then(Value::as_u64)) {
                last.record(at.saturating_sub(sent));
            }
        }
    }
    let report = json!({
        "mode": "fanout",
        "subscribers": subscribed["subscribed"],
        "rate": args.rate,
        "depth": args.depth,
        "publish_path": if args.ws_publish { "ws" } else { "api" },
        "publishers": args.publishers,
        "payload_bytes": args.payload,
        "json": args.json,
        "deflate_offered": args.deflate,
        "deflate_agreed": result["deflate_agreed"],
        "seconds": seconds,
        "published": published,
        "published_total": sent,
        "answered": answered,
        "deliveries_expected": expected,
        "deliveries_received": in_window,
        "lost": expected.saturating_sub(in_window),
        "gaps": result["gaps"],
        "duplicates": result["duplicates"],
        "deliveries_per_s": round(received / seconds, 0),
        "wire_bytes_per_delivery": round(
            result["wire_bytes"].as_u64().unwrap_or(0) as f64 / (in_window as f64).max(1.0),
            1
        ),
        "compressed_share": round(
            result["compressed"].as_u64().unwrap_or(0) as f64 / (in_window as f64).max(1.0),
            3
        ),
        "publishes_per_s": round(published as f64 / seconds, 0),
        "server_cpu_us_per_publish": round(server_cpu * 1e6 / (published as f64).max(1.0), 3),
        "server_cpu_s": round(server_cpu, 3),
        "server_cpu_us_per_delivery": round(server_cpu * 1e6 / received.max(1.0), 3),
        "redis_cpu_s": redis_seconds.map(|s| round(s, 3)),
        "redis_cpu_us_per_publish": redis_seconds.map(|s| round(s * 1e6 / (published as f64).max(1.0), 1)),
        "generator_cpu_percent": round(samples["generator_cpu_s"].as_f64().unwrap_or(0.0) / seconds * 100.0, 1),
        "latency": Latency::from_json(&result["latency_hist"]).summary(),
        "last_subscriber_latency": last.summary(),
        "publish_latency": publish_latency.summary(),
        "per_second": per_second_samples(&result["per_second"], &samples),
    });
    println!("{report}");
    if args.depth.is_some() {
        eprintln!(
            "publish: {} subscribers, {} publishers, depth {:?}: {} publishes/s, {} us server CPU \
             per publish, answered in p50 {} us, p99 {} us",
            report["subscribers"],
            args.publishers,
            args.depth,
            report["publishes_per_s"],
            report["server_cpu_us_per_publish"],
            report["publish_latency"]["p50_us"],
            report["publish_latency"]["p99_us"]
        );
    }
    eprintln!(
        "fanout: {} subscribers, {} pub/s, {} B: {} deliveries/s, {} us server CPU per delivery, p99 {} us, lost {}",
        report["subscribers"],
        args.rate,
        args.payload,
        report["deliveries_per_s"],
        report["server_cpu_us_per_delivery"],
        report["latency"]["p99_us"],
        report["lost"]
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_carry_sequence_and_time() {
        let data = payload(42, 1_234_567_890_123, 32);
        assert_eq!(data.len(), 32);
        let push = format!(r#"{{"op":"message","channel":"c","offset":1,"data":{data}}}"#);
        assert_eq!(parse_push(push.as_bytes()), Some((42, 1_234_567_890_123)));
        let pusher =
            format!(r#"{{"channel":"c","event":"bench","data":{data},"herald_offset":1}}"#);
        assert_eq!(parse_push(pusher.as_bytes()), Some((42, 1_234_567_890_123)));
    }

    #[test]
    fn json_payloads_carry_sequence_and_time_and_inflate_back() {
        let data = json_payload(42, 1_234_567_890_123, 1024);
        assert!((900..=1024).contains(&data.len()), "{}", data.len());
        assert!(serde_json::from_str::<Value>(&data).is_ok(), "{data}");
        assert_ne!(data, json_payload(43, 1_234_567_890_123, 1024)[..].replace("43:", "42:"));
        let push = format!(r#"{{"op":"message","channel":"c","offset":1,"data":{data}}}"#);
        assert_eq!(parse_push(push.as_bytes()), Some((42, 1_234_567_890_123)));
        // As a server sends it: a raw deflate stream, its sync trailer cut.
        let mut compress = flate2::Compress::new(flate2::Compression::default(), false);
        let mut compressed = Vec::with_capacity(2048);
        compress
            .compress_vec(push.as_bytes(), &mut compressed, flate2::FlushCompress::Sync)
            .unwrap();
        compressed.truncate(compressed.len() - 4);
        assert!(compressed.len() * 2 < push.len(), "{} of {}", compressed.len(), push.len());
        let mut inflating = Inflating::new();
        let message = br#"{"op":"message""#;
        for _ in 0..2 {
            let got = inflating.push(&compressed, message).unwrap();
            assert_eq!(got, Some((42, 1_234_567_890_123)));
        }
        assert_eq!(inflating.seen.len(), 1);
    }

    #[test]
    fn pusher_requests_are_signed_as_the_sdks_sign_them() {
        let app = PusherApp::parse("3:278d425bdf160c739803:7ad3773142a6692b25b8").unwrap();
        let query = app.signed_query("POST", "/apps/3/events", "{}");
        assert!(query.starts_with("auth_key=278d425bdf160c739803&auth_timestamp="), "{query}");
        assert!(query.contains("&body_md5=99914b932bd37a50b983c5e7c90ae93b&auth_signature="));
    }
}
