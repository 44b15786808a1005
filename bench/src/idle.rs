//! `idle` mode: open WebSocket connections in steps, leave them idle, and sample the server's RSS at each step.

use crate::net::{open, parse_url, upgrade_request};
use mio::Poll;
use std::io;
use std::time::{Duration, Instant};

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
    let request = upgrade_request(addr, &path);
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
