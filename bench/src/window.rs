//! The measurement window: common arguments, and the coordinator's per-second samples of server CPU and machine steal time.

use crate::clock::{now_ns, sleep_until};
use crate::procfs;
use serde_json::{Value, json};

/// Arguments every mode takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// The server's process id: CPU time and memory come from /proc/PID.
    #[arg(long)]
    pub pid: u32,
    /// Worker threads, each with its own poll and share of the connections.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Processes the threads are spread over (default: enough for the
    /// open-file limit, one per 18,000 connections).
    #[arg(long)]
    pub processes: Option<usize>,
    /// Seconds measured, after the warm-up.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Seconds of load before the measurement starts.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Internal: run parts FIRST,COUNT,TOTAL as a child process.
    #[arg(long, hide = true)]
    pub parts: Option<String>,
}

/// This program's arguments, for child processes (which add `--parts`).
pub fn child_args() -> Vec<String> {
    std::env::args().skip(1).collect()
}

/// When the window opens and closes, on the monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Load starts.
    pub load_ns: u64,
    /// Measurement starts.
    pub start_ns: u64,
    /// Measurement ends.
    pub end_ns: u64,
}

impl Window {
    /// A window that opens `warmup` seconds after 100 ms from now.
    pub fn plan(common: &Common) -> Window {
        let load_ns = now_ns() + 100_000_000;
        let start_ns = load_ns + common.warmup * 1_000_000_000;
        Window { load_ns, start_ns, end_ns: start_ns + common.seconds * 1_000_000_000 }
    }

    /// The command that tells the parts.
    pub fn command(&self) -> Value {
        json!({"load_ns": self.load_ns, "start_ns": self.start_ns, "end_ns": self.end_ns})
    }

    /// Reads a window back from [`Window::command`].
    pub fn from_command(command: &Value) -> Result<Window, String> {
        let field = |name: &str| command[name].as_u64().ok_or(format!("no {name} in {command}"));
        Ok(Window {
            load_ns: field("load_ns")?,
            start_ns: field("start_ns")?,
            end_ns: field("end_ns")?,
        })
    }

    /// The second of the window that `t_ns` falls in, if any.
    pub fn second(&self, t_ns: u64) -> Option<usize> {
        (t_ns >= self.start_ns && t_ns < self.end_ns)
            .then(|| ((t_ns - self.start_ns) / 1_000_000_000) as usize)
    }

    /// Seconds in the window.
    pub fn seconds(&self) -> usize {
        ((self.end_ns - self.start_ns) / 1_000_000_000) as usize
    }
}

/// Samples the server's CPU seconds and the machine's steal share at every
/// second boundary of the window (blocking until it closes), plus this
/// process's CPU for the whole window.
pub fn sample(window: &Window, pid: u32) -> Result<Value, String> {
    let pid = pid.to_string();
    let own = "self";
    let mut cpu = Vec::new();
    let mut ticks = Vec::new();
    let mut own_start = 0.0;
    for second in 0..=window.seconds() {
        sleep_until(window.start_ns + second as u64 * 1_000_000_000);
        cpu.push(procfs::cpu_seconds(&pid).map_err(|e| format!("server process {pid}: {e}"))?);
        ticks.push(procfs::cpu_ticks());
        if second == 0 {
            own_start = procfs::cpu_seconds(own).unwrap_or(0.0);
        }
    }
    let own_cpu = procfs::cpu_seconds(own).unwrap_or(0.0) - own_start;
    let per_second: Vec<Value> = (0..window.seconds())
        .map(|s| {
            let (total0, steal0) = ticks[s];
            let (total1, steal1) = ticks[s + 1];
            let steal = (steal1 - steal0) as f64 / (total1 - total0).max(1) as f64;
            json!({"server_cpu_s": cpu[s + 1] - cpu[s], "steal": (steal * 1000.0).round() / 1000.0})
        })
        .collect();
    Ok(json!({
        "server_cpu_s": cpu[cpu.len() - 1] - cpu[0],
        "generator_cpu_s": own_cpu,
        "seconds": per_second,
    }))
}

/// Rounds for reports.
pub fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

/// The common measurement: opens the window, samples the server through
/// it, and collects the parts' merged result.
pub fn measure(
    coordinator: &mut crate::parts::Coordinator,
    common: &Common,
) -> Result<(Window, Value, Value), String> {
    let window = Window::plan(common);
    coordinator.command(&window.command())?;
    let samples = sample(&window, common.pid)?;
    let result = coordinator.gather()?.done()?;
    Ok((window, samples, result))
}
