//! `idle` mode: open WebSocket connections in steps (optionally subscribed), leave them idle, and sample the server's RSS at each step; the slope is the memory per connection.

use crate::net::{Then, client_frame, open_many, parse_url, upgrade_request};
use crate::parts::{self, Part, PartCtl};
use crate::procfs;
use crate::window::round;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Whether idle connections subscribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Subscribe {
    /// Upgraded, nothing more.
    None,
    /// Each subscribed to one channel they all share.
    Shared,
    /// Each subscribed to a channel of its own.
    Distinct,
}

/// Arguments of the `idle` mode.
#[derive(Debug, Clone, clap::Args)]
pub struct IdleArgs {
    /// The server, as ws://127.0.0.1:PORT/PATH (/echo, or /ws to subscribe),
    /// or wss://.
    #[arg(long)]
    url: String,
    /// The server's process id: its RSS is read from /proc/PID/status.
    #[arg(long)]
    pid: u32,
    /// Connection counts to sample at, in increasing order.
    #[arg(long, value_delimiter = ',', default_value = "0,2500,5000,7500,10000")]
    steps: Vec<usize>,
    /// Subscribe each connection after upgrading.
    #[arg(long, value_enum, default_value = "none")]
    subscribe: Subscribe,
    /// Offer permessage-deflate in each upgrade (the result counts the
    /// connections where the server agreed).
    #[arg(long)]
    deflate: bool,
    /// Handshakes in flight per thread while opening.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Milliseconds to let the server settle before each sample.
    #[arg(long, default_value_t = 1000)]
    settle_ms: u64,
    /// Threads opening connections.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Processes holding connections (default: one per 18,000).
    #[arg(long)]
    processes: Option<usize>,
    /// Internal: run parts FIRST,COUNT,TOTAL as a child process.
    #[arg(long, hide = true)]
    parts: Option<String>,
}

fn part(args: &IdleArgs, part: Part, ctl: PartCtl) -> Result<Value, String> {
    let (target, path) = parse_url(&args.url)?;
    let request = upgrade_request(target.addr, &path, args.deflate);
    let most = args.steps.iter().copied().max().unwrap_or(0);
    // Part p owns load indexes [p * span, (p + 1) * span): distinct source
    // ports and addresses whatever the step.
    let span = most.div_ceil(part.total).max(1);
    let mut held = Vec::new();
    for &step in &args.steps {
        let (_, mine) = Part { index: part.index, total: part.total }.share(step);
        let more = mine.saturating_sub(held.len());
        let first = part.index * span + held.len();
        let subscribe = args.subscribe;
        let opened = open_many(target, &request, first, more, args.concurrency, |index| {
            let channel = match subscribe {
                Subscribe::None => return None,
                Subscribe::Shared => "idle".to_string(),
                Subscribe::Distinct => format!("idle.{index}"),
            };
            Some(Then {
                send: client_frame(
                    1,
                    format!(r#"{{"op":"subscribe","channel":"{channel}"}}"#).as_bytes(),
                ),
                expect: br#"{"op":"subscribed""#,
            })
        })?;
        held.extend(opened);
        let deflate = held.iter().filter(|open| open.deflate).count();
        ctl.ready(json!({"open": held.len(), "deflate": deflate}))?;
    }
    Ok(json!({"open": held.len()}))
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
    let body = {
        let args = args.clone();
        move |p: Part, ctl: PartCtl| part(&args, p, ctl)
    };
    if args.steps.len() < 2 || args.steps.windows(2).any(|w| w[0] > w[1]) {
        return Err("--steps must be at least two increasing counts".into());
    }
    let most = args.steps.iter().copied().max().unwrap_or(0);
    let processes = args.processes.unwrap_or_else(|| parts::processes_for(most));
    let threads = args.threads.max(processes);
    let Some(mut coordinator) = parts::begin(args.parts.as_deref(), threads, processes, body)?
    else {
        return Ok(());
    };
    let pid = args.pid.to_string();
    let mut samples = Vec::new();
    let mut deflate = 0;
    let path = parse_url(&args.url)?.1;
    for (i, &step) in args.steps.iter().enumerate() {
        let started = Instant::now();
        let opened = coordinator.gather()?.ready()?;
        let open = opened["open"].as_u64().unwrap_or(0);
        deflate = opened["deflate"].as_u64().unwrap_or(0);
        let opened_in = started.elapsed();
        std::thread::sleep(Duration::from_millis(args.settle_ms));
        let (rss, anon) =
            procfs::rss(&pid).map_err(|e| format!("reading /proc/{pid}/status: {e}"))?;
        eprintln!(
            "idle {path}: {open} connections, RSS {:.1} MiB (opened in {opened_in:?})",
            rss as f64 / 1048576.0
        );
        if open != step as u64 {
            return Err(format!("step {i}: {open} connections open, wanted {step}"));
        }
        samples.push(json!({"connections": step, "rss_bytes": rss, "rss_anon_bytes": anon}));
        coordinator.command(&json!({"next": i + 1}))?;
    }
    coordinator.gather()?.done()?;
    coordinator.finish()?;
    let points: Vec<(f64, f64)> = samples
        .iter()
        .map(|s| (s["connections"].as_f64().unwrap_or(0.0), s["rss_bytes"].as_f64().unwrap_or(0.0)))
        .collect();
    let anon: Vec<(f64, f64)> = samples
        .iter()
        .map(|s| {
            (s["connections"].as_f64().unwrap_or(0.0), s["rss_anon_bytes"].as_f64().unwrap_or(0.0))
        })
        .collect();
    let (first, last) = (points[0], points[points.len() - 1]);
    let report = json!({
        "mode": "idle",
        "path": path,
        "subscribe": format!("{:?}", args.subscribe).to_lowercase(),
        "connections": most,
        "deflate_agreed": deflate,
        "rss_bytes_per_connection": round(slope(&points), 0),
        "rss_anon_bytes_per_connection": round(slope(&anon), 0),
        "rss_bytes_per_connection_delta": round((last.1 - first.1) / (last.0 - first.0), 0),
        "samples": samples,
    });
    println!("{report}");
    eprintln!(
        "idle {path} ({}): {} bytes of RSS per connection (slope over {} samples up to {most})",
        report["subscribe"],
        report["rss_bytes_per_connection"],
        points.len()
    );
    Ok(())
}
