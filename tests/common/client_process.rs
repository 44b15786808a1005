//! A client program run by a test (Python, Node), printing one JSON line per event, read with a deadline.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

/// A client process that prints one JSON line per event; killed on drop.
pub struct ClientProcess {
    child: Child,
    lines: Receiver<String>,
    /// How long `next` waits for a line (interpreters start slowly).
    wait: Duration,
}

impl ClientProcess {
    /// Runs `command` with its stdout piped to `next`.
    pub fn spawn(command: &mut Command, wait: Duration) -> ClientProcess {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        ClientProcess { child, lines, wait }
    }

    /// The next line as JSON; fails the test on a timeout or an `error` line.
    pub fn next(&self) -> Value {
        let line = self.lines.recv_timeout(self.wait).expect("a line from the client");
        let value: Value = serde_json::from_str(&line).unwrap();
        assert!(value.get("error").is_none(), "client: {value}");
        value
    }
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
