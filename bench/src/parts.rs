//! Parts of a load: one thread with its own mio poll per part, grouped into processes; each part walks the same barriers in step with the coordinator, and results are merged.
//!
//! A part reports at a barrier (`PartCtl::ready`) and waits for the
//! coordinator's command; at the end it reports its result. A process runs
//! its parts as threads and speaks for them: it merges their reports into one
//! and passes commands on. The coordinator talks to the local process over
//! channels and to child processes over stdin/stdout, one JSON line each way.
//! Processes exist only so that one load can hold more sockets than one
//! process's open-file limit allows.

use serde_json::{Map, Value, json};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc::{Receiver, Sender, channel};

/// Connections per process, under the 20,000 open files a process may hold here.
pub const CONNECTIONS_PER_PROCESS: usize = 18_000;

/// One part: which share of the load it carries.
#[derive(Debug, Clone, Copy)]
pub struct Part {
    /// Index among all parts.
    pub index: usize,
    /// How many parts there are.
    pub total: usize,
}

impl Part {
    /// This part's share of `items`: (first global index, count).
    pub fn share(&self, items: usize) -> (usize, usize) {
        let base = items / self.total;
        let extra = items % self.total;
        let first = self.index * base + self.index.min(extra);
        (first, base + usize::from(self.index < extra))
    }
}

enum FromPart {
    Ready(Value),
    Done(Value),
    Failed(String),
}

/// A part's line to its process.
pub struct PartCtl {
    commands: Receiver<Value>,
    reports: Sender<FromPart>,
}

impl PartCtl {
    /// Reports at a barrier and waits for the coordinator's command.
    pub fn ready(&self, report: Value) -> Result<Value, String> {
        self.report(report)?;
        self.commands.recv().map_err(|_| "the coordinator is gone".to_string())
    }

    /// Reports at a barrier without waiting: the command comes through
    /// [`PartCtl::try_command`] while the part keeps working.
    pub fn report(&self, report: Value) -> Result<(), String> {
        self.reports
            .send(FromPart::Ready(report))
            .map_err(|_| "the coordinator is gone".to_string())
    }

    /// The coordinator's command, if it has come.
    pub fn try_command(&self) -> Option<Value> {
        self.commands.try_recv().ok()
    }
}

/// Merges reports: numbers add up, arrays of numbers add element-wise,
/// objects merge key by key; keys ending in `_hist` are latency histograms
/// (merged as such) and keys ending in `_max` keep the largest value.
pub fn merge(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Object(into), Value::Object(from)) => {
            for (key, value) in from {
                match into.get_mut(key) {
                    None => {
                        into.insert(key.clone(), value.clone());
                    }
                    Some(existing) if key.ends_with("_hist") => {
                        let mut merged = crate::hist::Latency::from_json(existing);
                        merged.merge(&crate::hist::Latency::from_json(value));
                        *existing = merged.to_json();
                    }
                    Some(existing) if key.ends_with("_max") => merge_max(existing, value),
                    Some(existing) => merge(existing, value),
                }
            }
        }
        (Value::Array(into), Value::Array(from)) => {
            for (i, value) in from.iter().enumerate() {
                match into.get_mut(i) {
                    Some(existing) => merge(existing, value),
                    None => into.push(value.clone()),
                }
            }
        }
        (into @ Value::Number(_), Value::Number(from)) => {
            let sum = match (into.as_u64(), from.as_u64()) {
                (Some(a), Some(b)) => Value::from(a + b),
                _ => Value::from(into.as_f64().unwrap_or(0.0) + from.as_f64().unwrap_or(0.0)),
            };
            *into = sum;
        }
        (into, from) => *into = from.clone(),
    }
}

fn merge_max(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Object(into), Value::Object(from)) => {
            for (key, value) in from {
                match into.get_mut(key) {
                    Some(existing) => merge_max(existing, value),
                    None => {
                        into.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (into, from) => {
            if from.as_f64().unwrap_or(f64::MIN) > into.as_f64().unwrap_or(f64::MIN) {
                *into = from.clone();
            }
        }
    }
}

/// What a process says to the coordinator.
trait Up {
    fn send(&mut self, message: Value) -> Result<(), String>;
    fn receive(&mut self) -> Result<Value, String>;
}

/// Runs parts `first..first + count` of `total` as threads in this process,
/// speaking for them through `up`.
fn run_process<F>(
    first: usize,
    count: usize,
    total: usize,
    up: &mut dyn Up,
    body: F,
) -> Result<(), String>
where
    F: Fn(Part, PartCtl) -> Result<Value, String> + Send + Sync + Clone + 'static,
{
    let (report_tx, report_rx) = channel();
    let mut command_txs = Vec::new();
    let mut threads = Vec::new();
    for index in first..first + count {
        let (command_tx, command_rx) = channel();
        command_txs.push(command_tx);
        let reports = report_tx.clone();
        let body = body.clone();
        threads.push(std::thread::spawn(move || {
            let ctl = PartCtl { commands: command_rx, reports: reports.clone() };
            let outcome = body(Part { index, total }, ctl);
            let _ = reports.send(match outcome {
                Ok(result) => FromPart::Done(result),
                Err(error) => FromPart::Failed(error),
            });
        }));
    }
    drop(report_tx);
    loop {
        let mut merged = Value::Object(Map::new());
        let mut ready = 0;
        let mut done = 0;
        for _ in 0..count {
            match report_rx.recv().map_err(|_| "a part thread died")? {
                FromPart::Ready(report) => {
                    merge(&mut merged, &report);
                    ready += 1;
                }
                FromPart::Done(result) => {
                    merge(&mut merged, &result);
                    done += 1;
                }
                FromPart::Failed(error) => {
                    up.send(json!({"failed": error}))?;
                    return Err(error);
                }
            }
        }
        if done == count {
            for thread in threads {
                let _ = thread.join();
            }
            return up.send(json!({"done": merged}));
        }
        if ready != count {
            return Err("parts disagree on where they are".into());
        }
        up.send(json!({"ready": merged}))?;
        let command = up.receive()?;
        for tx in &command_txs {
            tx.send(command.clone()).map_err(|_| "a part thread died")?;
        }
    }
}

/// The local process's end: channels to the coordinator.
struct LocalUp {
    tx: Sender<Value>,
    rx: Receiver<Value>,
}

impl Up for LocalUp {
    fn send(&mut self, message: Value) -> Result<(), String> {
        self.tx.send(message).map_err(|_| "the coordinator is gone".to_string())
    }
    fn receive(&mut self) -> Result<Value, String> {
        self.rx.recv().map_err(|_| "the coordinator is gone".to_string())
    }
}

/// A child process's end: JSON lines on stdin and stdout.
struct StdioUp;

impl Up for StdioUp {
    fn send(&mut self, message: Value) -> Result<(), String> {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{message}").and_then(|()| stdout.flush()).map_err(|e| e.to_string())
    }
    fn receive(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).map_err(|e| e.to_string())?;
        serde_json::from_str(&line).map_err(|e| format!("bad command {line:?}: {e}"))
    }
}

/// Runs in a child process started by [`Coordinator::start`]: the parts
/// named by `--parts FIRST,COUNT,TOTAL`.
pub fn run_child<F>(spec: &str, body: F) -> Result<(), String>
where
    F: Fn(Part, PartCtl) -> Result<Value, String> + Send + Sync + Clone + 'static,
{
    let numbers: Vec<usize> = spec.split(',').filter_map(|n| n.parse().ok()).collect();
    let [first, count, total] = numbers[..] else {
        return Err(format!("--parts wants FIRST,COUNT,TOTAL, got {spec}"));
    };
    run_process(first, count, total, &mut StdioUp, body)
}

enum Link {
    Local {
        tx: Sender<Value>,
        rx: Receiver<Value>,
        thread: Option<std::thread::JoinHandle<Result<(), String>>>,
    },
    Child {
        child: Child,
        stdin: ChildStdin,
        stdout: BufReader<ChildStdout>,
    },
}

impl Link {
    fn send(&mut self, message: &Value) -> Result<(), String> {
        match self {
            Link::Local { tx, .. } => {
                tx.send(message.clone()).map_err(|_| "the local parts are gone".into())
            }
            Link::Child { stdin, .. } => {
                writeln!(stdin, "{message}").and_then(|()| stdin.flush()).map_err(|e| e.to_string())
            }
        }
    }

    fn receive(&mut self) -> Result<Value, String> {
        match self {
            Link::Local { rx, .. } => rx.recv().map_err(|_| "the local parts are gone".into()),
            Link::Child { stdout, .. } => {
                let mut line = String::new();
                if stdout.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                    return Err("a load process exited".into());
                }
                serde_json::from_str(&line).map_err(|e| format!("bad report {line:?}: {e}"))
            }
        }
    }
}

/// The coordinator: holds every process's link and walks the barriers.
pub struct Coordinator {
    links: Vec<Link>,
}

impl Coordinator {
    /// Starts `threads` parts spread over `processes` processes: the first
    /// runs here, the others are this program again with `child_args` plus
    /// `--parts FIRST,COUNT,TOTAL`.
    pub fn start<F>(
        threads: usize,
        processes: usize,
        child_args: &[String],
        body: F,
    ) -> Result<Coordinator, String>
    where
        F: Fn(Part, PartCtl) -> Result<Value, String> + Send + Sync + Clone + 'static,
    {
        let processes = processes.clamp(1, threads.max(1));
        let total = threads.max(processes);
        let mut links = Vec::new();
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        for p in 0..processes {
            let group = Part { index: p, total: processes };
            let (first, count) = group.share(total);
            if p == 0 {
                let (up_tx, coordinator_rx) = channel();
                let (coordinator_tx, up_rx) = channel();
                let body = body.clone();
                let thread = std::thread::spawn(move || {
                    run_process(first, count, total, &mut LocalUp { tx: up_tx, rx: up_rx }, body)
                });
                links.push(Link::Local {
                    tx: coordinator_tx,
                    rx: coordinator_rx,
                    thread: Some(thread),
                });
            } else {
                let mut child = Command::new(&exe)
                    .args(child_args)
                    .arg("--parts")
                    .arg(format!("{first},{count},{total}"))
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .map_err(|e| format!("starting a load process: {e}"))?;
                let stdin = child.stdin.take().ok_or("no stdin")?;
                let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
                links.push(Link::Child { child, stdin, stdout });
            }
        }
        Ok(Coordinator { links })
    }

    /// Waits until every part reports; returns the merged reports, or the
    /// merged results when the parts are done.
    pub fn gather(&mut self) -> Result<Gathered, String> {
        let mut merged = Value::Object(Map::new());
        let mut done = false;
        for link in &mut self.links {
            let message = link.receive()?;
            if let Some(error) = message.get("failed") {
                return Err(format!("a load part failed: {}", error.as_str().unwrap_or("?")));
            }
            if let Some(result) = message.get("done") {
                merge(&mut merged, result);
                done = true;
            } else if let Some(report) = message.get("ready") {
                merge(&mut merged, report);
            }
        }
        Ok(if done { Gathered::Done(merged) } else { Gathered::Ready(merged) })
    }

    /// Sends a command to every part.
    pub fn command(&mut self, command: &Value) -> Result<(), String> {
        self.links.iter_mut().try_for_each(|link| link.send(command))
    }

    /// Waits for the processes to end.
    pub fn finish(self) -> Result<(), String> {
        for link in self.links {
            match link {
                Link::Local { thread, .. } => {
                    if let Some(thread) = thread {
                        thread.join().map_err(|_| "the local parts panicked")??;
                    }
                }
                Link::Child { mut child, .. } => {
                    let _ = child.wait();
                }
            }
        }
        Ok(())
    }
}

/// What the parts said at a barrier.
pub enum Gathered {
    /// Every part reached the barrier.
    Ready(Value),
    /// Every part finished.
    Done(Value),
}

impl Gathered {
    /// The merged value, expecting a barrier.
    pub fn ready(self) -> Result<Value, String> {
        match self {
            Gathered::Ready(value) => Ok(value),
            Gathered::Done(_) => Err("the parts finished early".into()),
        }
    }

    /// The merged value, expecting the end.
    pub fn done(self) -> Result<Value, String> {
        match self {
            Gathered::Done(value) => Ok(value),
            Gathered::Ready(_) => Err("the parts did not finish".into()),
        }
    }
}

/// Starts a load: in a child process (`--parts` given) runs its parts and
/// returns `None`; otherwise starts the coordinator over `threads` parts in
/// `processes` processes.
pub fn begin<F>(
    parts: Option<&str>,
    threads: usize,
    processes: usize,
    body: F,
) -> Result<Option<Coordinator>, String>
where
    F: Fn(Part, PartCtl) -> Result<Value, String> + Send + Sync + Clone + 'static,
{
    match parts {
        Some(spec) => run_child(spec, body).map(|()| None),
        None => {
            Coordinator::start(threads, processes, &crate::window::child_args(), body).map(Some)
        }
    }
}

/// Processes needed for `connections` sockets.
pub fn processes_for(connections: usize) -> usize {
    connections.div_ceil(CONNECTIONS_PER_PROCESS).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_everything_once() {
        let parts: Vec<(usize, usize)> =
            (0..3).map(|i| Part { index: i, total: 3 }.share(10)).collect();
        assert_eq!(parts, [(0, 4), (4, 3), (7, 3)]);
    }

    #[test]
    fn merging_adds_numbers_arrays_and_histograms() {
        let mut a = json!({"n": 1, "rate": 0.5, "per_second": [1, 2], "deep": {"x": 1}, "last_max": {"7": 10}});
        merge(
            &mut a,
            &json!({"n": 2, "rate": 0.25, "per_second": [3, 4, 5], "deep": {"x": 2, "y": 1}, "last_max": {"7": 5, "8": 1}}),
        );
        assert_eq!(
            a,
            json!({"n": 3, "rate": 0.75, "per_second": [4, 6, 5], "deep": {"x": 3, "y": 1}, "last_max": {"7": 10, "8": 1}})
        );
    }
}
