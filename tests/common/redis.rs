//! Real `redis-server`s and herald nodes as separate processes, for the tests of the Redis engine.

use super::DEADLINE;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` on a free port, stopped when dropped.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Redis {
        for _ in 0..20 {
            let port =
                std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let mut redis = Redis { port, child: None };
            if redis.run() {
                return redis;
            }
        }
        panic!(
            "could not start redis-server (install the Debian package redis-server; ./.ci/run does)"
        );
    }

    /// Starts the server on its port; whether it answers PING in time.
    pub fn run(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (install the Debian package redis-server; ./.ci/run does)");
        self.child = Some(child);
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            if self.ping() {
                return true;
            }
            if let Some(child) = &mut self.child
                && child.try_wait().unwrap().is_some()
            {
                return false; // the port was taken meanwhile
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        stream.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut answer = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut answer).is_ok()
            && &answer == b"+PONG\r\n"
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `herald serve` process on the Redis engine, killed with SIGKILL when dropped.
pub struct NodeProcess {
    pub child: Child,
    pub addr: std::net::SocketAddr,
}

impl NodeProcess {
    pub fn start(redis: &Redis, prefix: &str, api_key: &str) -> NodeProcess {
        NodeProcess::start_with(redis, prefix, api_key, "")
    }

    /// A node whose config file also has `extra`.
    pub fn start_with(redis: &Redis, prefix: &str, api_key: &str, extra: &str) -> NodeProcess {
        let config =
            std::env::temp_dir().join(format!("herald-test-{}-{prefix}.toml", std::process::id()));
        let text = format!("{extra}\n[channels]\nhistory_size = 1000\nhistory_ttl_secs = 300\n");
        std::fs::write(&config, text).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--threads", "2"])
            .args(["--engine", "redis", "--redis-url", &redis.url(), "--redis-prefix", prefix])
            .args(["--api-key", api_key, "--config", config.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("herald runs");
        let stdout = child.stdout.take().unwrap();
        let (send, receive) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("herald listening on ") {
                    let _ = send.send(addr.parse().unwrap());
                }
            }
        });
        let addr = receive.recv_timeout(DEADLINE).expect("the node starts");
        NodeProcess { child, addr }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
