//! `connect` mode: C connection attempts in flight, each a TCP connect and a WebSocket upgrade, reset once upgraded; upgrades per second and handshake latency.

use crate::clock::{now_ns, sleep_until};
use crate::echo::per_second_samples;
use crate::hist::Latency;
use crate::net::{open, parse_url, upgrade_request};
use crate::parts::{self, Part, PartCtl};
use crate::stream::Stream;
use crate::window::{self, Common, Window, round};
use mio::{Events, Interest, Poll, Token};
use serde_json::{Value, json};
use std::io::{self, Read, Write};
use std::time::Duration;

/// Arguments of the `connect` mode.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// The endpoint to upgrade on: ws://127.0.0.1:PORT/echo, or wss:// (each
    /// attempt then makes a full TLS handshake first).
    #[arg(long)]
    url: String,
    /// Connection attempts in flight.
    #[arg(long, default_value_t = 64)]
    inflight: usize,
    #[command(flatten)]
    common: Common,
}

struct Attempt {
    stream: Stream,
    started_ns: u64,
    sent: bool,
    buf: Vec<u8>,
}

fn part(args: &ConnectArgs, part: Part, ctl: PartCtl) -> Result<Value, String> {
    let (target, path) = parse_url(&args.url)?;
    let request = upgrade_request(target.addr, &path, false);
    let (first, count) = part.share(args.inflight);
    let window = Window::from_command(&ctl.ready(json!({"ready": 1}))?)?;
    let mut per_second = vec![0u64; window.seconds()];
    let mut latency = Latency::default();
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let mut events = Events::with_capacity(1024);
    let mut attempts: Vec<Option<Attempt>> = (0..count).map(|_| None).collect();
    let (mut refused, mut errors, mut total) = (0u64, 0u64, 0u64);
    sleep_until(window.load_ns);
    let start =
        |slot: usize, poll: &mut Poll, attempts: &mut Vec<Option<Attempt>>| -> Result<(), String> {
            // One request per connection: Nagle cannot delay it.
            let mut stream =
                open(first + slot, target, false).map_err(|e| format!("connect: {e}"))?;
            poll.registry()
                .register(&mut stream, Token(slot), Interest::READABLE | Interest::WRITABLE)
                .map_err(|e| e.to_string())?;
            attempts[slot] =
                Some(Attempt { stream, started_ns: now_ns(), sent: false, buf: Vec::new() });
            Ok(())
        };
    for slot in 0..count {
        start(slot, &mut poll, &mut attempts)?;
    }
    while now_ns() < window.end_ns {
        poll.poll(&mut events, Some(Duration::from_millis(20))).map_err(|e| e.to_string())?;
        for event in &events {
            let slot = event.token().0;
            let Some(attempt) = attempts.get_mut(slot).and_then(Option::as_mut) else { continue };
            let mut finished = false;
            if event.is_writable() && attempt.stream.flush_tls().is_err() {
                errors += 1;
                finished = true;
            }
            if event.is_writable() && !attempt.sent && !finished {
                match attempt.stream.write(&request) {
                    Ok(_) => attempt.sent = true,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected
                        ) => {}
                    Err(_) => {
                        errors += 1;
                        finished = true;
                    }
                }
            }
            if event.is_readable() && attempt.sent && !finished {
                let mut chunk = [0u8; 1024];
                loop {
                    match attempt.stream.read(&mut chunk) {
                        Ok(0) => {
                            errors += 1;
                            finished = true;
                            break;
                        }
                        Ok(n) => attempt.buf.extend_from_slice(&chunk[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            errors += 1;
                            finished = true;
                            break;
                        }
                    }
                }
                if !finished && attempt.buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let now = now_ns();
                    if attempt.buf.starts_with(b"HTTP/1.1 101 ") {
                        total += 1;
                        if let Some(second) = window.second(now) {
                            per_second[second] += 1;
                            latency.record(now - attempt.started_ns);
                        }
                    } else {
                        refused += 1;
                    }
                    finished = true;
                }
            }
            if finished {
                // Dropping the socket resets it (SO_LINGER 0, no TIME_WAIT)
                // and takes it out of the poll.
                attempts[slot] = None;
                start(slot, &mut poll, &mut attempts)?;
            }
        }
    }
    Ok(json!({
        "upgrades": per_second.iter().sum::<u64>(),
        "upgrades_total": total,
        "refused": refused,
        "errors": errors,
        "per_second": per_second,
        "latency_hist": latency.to_json(),
    }))
}

/// Runs the `connect` mode.
pub fn run(args: &ConnectArgs) -> Result<(), String> {
    let body = {
        let args = args.clone();
        move |p: Part, ctl: PartCtl| part(&args, p, ctl)
    };
    let processes = args.common.processes.unwrap_or(1);
    let threads = args.common.threads.max(processes).min(args.inflight.max(1));
    let Some(mut coordinator) =
        parts::begin(args.common.parts.as_deref(), threads, processes, body)?
    else {
        return Ok(());
    };
    coordinator.gather()?.ready()?;
    let (window, samples, result) = window::measure(&mut coordinator, &args.common)?;
    coordinator.finish()?;
    let seconds = window.seconds() as f64;
    let upgrades = result["upgrades"].as_u64().unwrap_or(0) as f64;
    let server_cpu = samples["server_cpu_s"].as_f64().unwrap_or(0.0);
    let report = json!({
        "mode": "connect",
        "inflight": args.inflight,
        "seconds": seconds,
        "upgrades_per_s": round(upgrades / seconds, 0),
        "server_cpu_s": round(server_cpu, 3),
        "server_cpu_us_per_upgrade": round(server_cpu * 1e6 / upgrades.max(1.0), 2),
        "upgrades_per_server_cpu_s": round(upgrades / server_cpu.max(1e-9), 0),
        "generator_cpu_percent": round(samples["generator_cpu_s"].as_f64().unwrap_or(0.0) / seconds * 100.0, 1),
        "latency": Latency::from_json(&result["latency_hist"]).summary(),
        "refused": result["refused"],
        "errors": result["errors"],
        "per_second": per_second_samples(&result["per_second"], &samples),
    });
    println!("{report}");
    eprintln!(
        "connect: {} in flight: {} upgrades/s, {} us server CPU per upgrade, p99 {} us, errors {}",
        args.inflight,
        report["upgrades_per_s"],
        report["server_cpu_us_per_upgrade"],
        report["latency"]["p99_us"],
        report["errors"]
    );
    Ok(())
}
