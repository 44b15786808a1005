//! `echo` mode: N connections each keeping K messages of S bytes in flight (closed loop), or sending at a fixed total rate (open loop, latency from each message's intended send time).

use crate::clock::{now_ns, sleep_until};
use crate::hist::Latency;
use crate::net::{client_frame, open_many, parse_frame, parse_url, upgrade_request};
use crate::parts::{self, Part, PartCtl};
use crate::stream::Stream;
use crate::window::{self, Common, Window, round};
use mio::{Events, Interest, Poll, Token};
use serde_json::{Value, json};
use std::io::{self, Read, Write};
use std::time::Duration;

/// Arguments of the `echo` mode.
#[derive(Debug, Clone, clap::Args)]
pub struct EchoArgs {
    /// The server's echo endpoint: ws://127.0.0.1:PORT/echo (or wss://).
    #[arg(long)]
    url: String,
    /// Connections.
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Bytes per message (binary; at least 16: send time and sequence).
    #[arg(long, default_value_t = 20)]
    size: usize,
    /// Closed loop: messages each connection keeps in flight.
    #[arg(long, default_value_t = 1)]
    inflight: usize,
    /// Open loop instead: messages per second over all connections, each
    /// sent at its intended time; latency counts from that time.
    #[arg(long)]
    rate: Option<f64>,
    #[command(flatten)]
    common: Common,
}

struct Client {
    stream: Stream,
    inbound: Vec<u8>,
    outbound: Vec<u8>,
    seq: u64,
}

impl Client {
    fn queue(&mut self, send_ns: u64, size: usize) {
        let mut payload = vec![0u8; size.max(16)];
        payload[..8].copy_from_slice(&send_ns.to_le_bytes());
        payload[8..16].copy_from_slice(&self.seq.to_le_bytes());
        self.seq += 1;
        self.outbound.extend_from_slice(&client_frame(2, &payload));
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush_tls()?;
        while !self.outbound.is_empty() {
            match self.stream.write(&self.outbound) {
                Ok(n) => {
                    self.outbound.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

fn part(args: &EchoArgs, part: Part, ctl: PartCtl) -> Result<Value, String> {
    let (target, path) = parse_url(&args.url)?;
    let (first, count) = part.share(args.connections);
    let request = upgrade_request(target.addr, &path, false);
    let opened = open_many(target, &request, first, count, 256, |_| None)?;
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let mut clients = Vec::with_capacity(count);
    for (i, open) in opened.into_iter().enumerate() {
        let mut stream = open.stream;
        poll.registry()
            .register(&mut stream, Token(i), Interest::READABLE | Interest::WRITABLE)
            .map_err(|e| e.to_string())?;
        clients.push(Client { stream, inbound: open.buf, outbound: Vec::new(), seq: 0 });
    }
    let window = Window::from_command(&ctl.ready(json!({"connected": count}))?)?;
    let seconds = window.seconds();
    let mut per_second = vec![0u64; seconds];
    let mut latency = Latency::default();
    let (mut sent, mut errors) = (0u64, 0u64);
    // Open loop: this part's share of the rate, spread over its connections.
    let interval_ns =
        args.rate.map(|rate| (1e9 / (rate * count as f64 / args.connections as f64)) as u64);
    let mut next_send = window.load_ns;
    let mut cursor = 0;
    sleep_until(window.load_ns);
    if interval_ns.is_none() {
        for client in &mut clients {
            for _ in 0..args.inflight {
                client.queue(now_ns(), args.size);
                sent += 1;
            }
            client.flush().map_err(|e| format!("write: {e}"))?;
        }
    }
    let mut events = Events::with_capacity(1024);
    let mut scratch = vec![0u8; 64 * 1024];
    while now_ns() < window.end_ns {
        let until = match interval_ns {
            Some(_) => next_send,
            None => window.end_ns,
        };
        let timeout = Duration::from_nanos(until.saturating_sub(now_ns()).min(100_000_000));
        poll.poll(&mut events, Some(timeout)).map_err(|e| e.to_string())?;
        for event in &events {
            let Some(client) = clients.get_mut(event.token().0) else { continue };
            loop {
                match client.stream.read(&mut scratch) {
                    Ok(0) => return Err("the server closed an echo connection".into()),
                    Ok(n) => client.inbound.extend_from_slice(&scratch[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(format!("read: {e}")),
                }
            }
            let now = now_ns();
            let mut used = 0;
            let mut echoed = 0;
            while let Some((opcode, payload, len)) = parse_frame(&client.inbound[used..]) {
                let payload = &client.inbound[used + payload.start..used + payload.end];
                used += len;
                if opcode != 2 || payload.len() < 16 {
                    errors += 1;
                    continue;
                }
                let send_ns = u64::from_le_bytes(payload[..8].try_into().unwrap_or_default());
                if let Some(second) = window.second(now) {
                    per_second[second] += 1;
                    latency.record(now.saturating_sub(send_ns));
                }
                echoed += 1;
            }
            client.inbound.drain(..used);
            if interval_ns.is_none() {
                for _ in 0..echoed {
                    client.queue(now, args.size);
                    sent += 1;
                }
            }
            client.flush().map_err(|e| format!("write: {e}"))?;
        }
        if let Some(interval) = interval_ns {
            let now = now_ns();
            while next_send <= now && next_send < window.end_ns {
                let n = clients.len().max(1);
                let client = &mut clients[cursor % n];
                client.queue(next_send, args.size);
                client.flush().map_err(|e| format!("write: {e}"))?;
                sent += 1;
                cursor += 1;
                next_send += interval.max(1);
            }
        }
    }
    Ok(json!({
        "received": per_second.iter().sum::<u64>(),
        "sent": sent,
        "errors": errors,
        "per_second": per_second,
        "latency_hist": latency.to_json(),
    }))
}

/// Runs the `echo` mode.
pub fn run(args: &EchoArgs) -> Result<(), String> {
    let body = {
        let args = args.clone();
        move |p: Part, ctl: PartCtl| part(&args, p, ctl)
    };
    let processes = args.common.processes.unwrap_or_else(|| parts::processes_for(args.connections));
    let threads = args.common.threads.max(processes).min(args.connections.max(1));
    let Some(mut coordinator) =
        parts::begin(args.common.parts.as_deref(), threads, processes, body)?
    else {
        return Ok(());
    };
    let connected = coordinator.gather()?.ready()?;
    let (window, samples, result) = window::measure(&mut coordinator, &args.common)?;
    coordinator.finish()?;

    let seconds = window.seconds() as f64;
    let received = result["received"].as_u64().unwrap_or(0) as f64;
    let server_cpu = samples["server_cpu_s"].as_f64().unwrap_or(0.0);
    let latency = Latency::from_json(&result["latency_hist"]).summary();
    let per_second = per_second_samples(&result["per_second"], &samples);
    let report = json!({
        "mode": "echo",
        "connections": connected["connected"],
        "size": args.size,
        "inflight": if args.rate.is_some() { Value::Null } else { Value::from(args.inflight) },
        "rate": args.rate,
        "seconds": seconds,
        "messages_per_s": round(received / seconds, 0),
        "server_cpu_s": round(server_cpu, 3),
        "server_cpu_us_per_message": round(server_cpu * 1e6 / received.max(1.0), 3),
        "messages_per_server_cpu_s": round(received / server_cpu.max(1e-9), 0),
        "generator_cpu_percent": round(samples["generator_cpu_s"].as_f64().unwrap_or(0.0) / seconds * 100.0, 1),
        "latency": latency,
        "errors": result["errors"],
        "per_second": per_second,
    });
    println!("{report}");
    eprintln!(
        "echo: {} connections x {} B: {} msg/s, {} us server CPU per message, p99 {} us",
        report["connections"],
        args.size,
        report["messages_per_s"],
        report["server_cpu_us_per_message"],
        latency["p99_us"]
    );
    Ok(())
}

/// Per-second counts beside the server's CPU and the machine's steal in the
/// same second.
pub fn per_second_samples(counts: &Value, samples: &Value) -> Value {
    let counts = counts.as_array().cloned().unwrap_or_default();
    let seconds = samples["seconds"].as_array().cloned().unwrap_or_default();
    Value::from(
        counts
            .iter()
            .zip(seconds.iter())
            .map(|(count, second)| {
                json!({"count": count, "server_cpu_s": second["server_cpu_s"], "steal": second["steal"]})
            })
            .collect::<Vec<_>>(),
    )
}
