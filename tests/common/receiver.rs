//! A webhook receiver on 127.0.0.1: records every request it takes, and can play a backend that is down (503) or one that never answers.

use super::DEADLINE;
use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 200, and the request is recorded.
    Up = 0,
    /// 503, not recorded.
    Down = 1,
    /// Reads the request and never answers.
    Silent = 2,
}

/// One request the receiver took.
#[derive(Debug, Clone)]
pub struct Hook {
    /// Headers, names lower-cased.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Hook {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// The body's one event.
    pub fn event(&self) -> Value {
        self.json()["events"][0].clone()
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

/// A receiver on a free port.
pub struct Receiver {
    pub url: String,
    hooks: Arc<Mutex<Vec<Hook>>>,
    mode: Arc<AtomicU8>,
    /// Requests seen, recorded or not.
    seen: Arc<Mutex<usize>>,
}

impl Receiver {
    pub fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hooks", listener.local_addr().unwrap());
        let receiver = Receiver {
            url,
            hooks: Arc::default(),
            mode: Arc::new(AtomicU8::new(Mode::Up as u8)),
            seen: Arc::default(),
        };
        let (hooks, mode, seen) =
            (receiver.hooks.clone(), receiver.mode.clone(), receiver.seen.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let (hooks, mode, seen) = (hooks.clone(), mode.clone(), seen.clone());
                std::thread::spawn(move || serve(stream, &hooks, &mode, &seen));
            }
        });
        receiver
    }

    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::Release);
    }

    /// Every request recorded so far.
    pub fn hooks(&self) -> Vec<Hook> {
        self.hooks.lock().unwrap().clone()
    }

    /// Requests that arrived, answered or not.
    pub fn seen(&self) -> usize {
        *self.seen.lock().unwrap()
    }

    /// Waits (up to `within`) until `count` requests are recorded; returns
    /// them all.
    pub fn wait_for(&self, count: usize, within: Duration) -> Vec<Hook> {
        let deadline = Instant::now() + within;
        loop {
            let hooks = self.hooks();
            if hooks.len() >= count {
                return hooks;
            }
            assert!(
                Instant::now() < deadline,
                "{} webhook requests, wanted {count}: {:?}",
                hooks.len(),
                hooks.iter().map(Hook::event).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The events recorded so far, in order.
    pub fn events(&self) -> Vec<Value> {
        self.hooks().iter().map(Hook::event).collect()
    }
}

fn serve(
    stream: std::net::TcpStream,
    hooks: &Mutex<Vec<Hook>>,
    mode: &AtomicU8,
    seen: &Mutex<usize>,
) {
    stream.set_read_timeout(Some(DEADLINE * 12)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = HashMap::new();
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
            }
        }
        let length: usize = headers.get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        *seen.lock().unwrap() += 1;
        let answer: &[u8] = match mode.load(Ordering::Acquire) {
            0 => {
                hooks.lock().unwrap().push(Hook { headers, body });
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            }
            1 => b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
            _ => {
                // Never answers: hold the connection until the client goes.
                let mut rest = Vec::new();
                let _ = reader.read_to_end(&mut rest);
                return;
            }
        };
        if writer.write_all(answer).is_err() {
            return;
        }
    }
}
