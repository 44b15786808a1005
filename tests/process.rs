//! The `herald` binary as an operator runs it: start-up errors, the listening line, signals, a low open-file limit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::*;
use rustix::process::{Pid, Signal, kill_process};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const HERALD: &str = env!("CARGO_BIN_EXE_herald");

/// A running `herald serve` child process.
struct Herald {
    child: Child,
    addr: SocketAddr,
    /// The TLS listener's address, with `--listen-tls`.
    tls_addr: Option<SocketAddr>,
}

impl Herald {
    /// Runs `sh -c "<prefix> exec herald serve <args>"` and waits for the
    /// listening line.
    fn spawn(prefix: &str, args: &[&str]) -> Herald {
        let command = format!("{prefix} exec \"$0\" serve \"$@\"");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(command)
            .arg(HERALD)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn herald");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("herald listening on ") {
                    let _ = tx.send((false, addr.parse::<SocketAddr>().unwrap()));
                } else if let Some(addr) = line.strip_prefix("herald listening for TLS on ") {
                    let _ = tx.send((true, addr.parse::<SocketAddr>().unwrap()));
                }
            }
        });
        let (tls, addr) = rx.recv_timeout(DEADLINE).expect("the listening line");
        assert!(!tls, "the plain listener is announced first");
        let tls_addr = args
            .contains(&"--listen-tls")
            .then(|| rx.recv_timeout(DEADLINE).expect("the TLS listening line").1);
        Herald { child, addr, tls_addr }
    }

    fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).unwrap()).unwrap();
        kill_process(pid, signal).unwrap();
    }

    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "herald did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stderr(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            let _ = stderr.read_to_string(&mut text);
        }
        text
    }

    /// CPU seconds the process has used (utime + stime from /proc).
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        ticks / 100.0
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs herald to completion (for start-up errors).
fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut command = Command::new(HERALD);
    command.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().unwrap();
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn bad_settings_stop_start_up_and_name_the_setting() {
    let (code, stderr) = run(&["serve", "--dev", "--threads", "0"], &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("`threads` (from flag --threads)"), "{stderr}");
    let (code, stderr) = run(&["serve", "--dev"], &[("HERALD_MAX_OUTBOUND_BYTES", "lots")]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("environment variable HERALD_MAX_OUTBOUND_BYTES"), "{stderr}");
    let (code, stderr) = run(&["serve", "--dev", "--listen", "nowhere"], &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("`listen`"), "{stderr}");
    let (code, stderr) = run(&["serve", "--dev", "--allowed-origin", "example.com"], &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("`allowed_origins`"), "{stderr}");
}

#[test]
fn without_dev_the_secrets_are_required() {
    let (code, stderr) = run(&["serve", "--listen", "127.0.0.1:0"], &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("HERALD_API_KEY") && stderr.contains("--api-key"), "{stderr}");
}

#[test]
fn a_config_file_is_read_and_flags_win_over_it() {
    let dir = std::env::temp_dir().join(format!("herald-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("herald.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:1\"\nno_echo = true\nthreads = 1\n").unwrap();
    let herald = Herald::spawn(
        "",
        &["--dev", "--config", file.to_str().unwrap(), "--listen", "127.0.0.1:0"],
    );
    assert_ne!(herald.addr.port(), 1, "the flag won over the file");
    let response = request(herald.addr, &upgrade_request("/echo", ""));
    assert_eq!(response.status, 404, "no_echo from the file applies");
    std::fs::write(&file, "threads = 2\nthread = 3\n").unwrap();
    let (code, stderr) = run(&["serve", "--dev", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("unknown setting `thread`"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn dev_mode_prints_the_generated_secrets_and_logs_none() {
    let mut herald = Herald::spawn("", &["--dev", "--listen", "127.0.0.1:0"]);
    herald.signal(Signal::TERM);
    assert!(herald.wait().success());
    let stderr = herald.stderr();
    assert!(!stderr.contains("api_key ="), "secrets are never logged: {stderr}");
}

#[test]
fn sigterm_sends_1001_to_every_websocket_and_exits_0() {
    let mut herald = Herald::spawn("", &["--dev", "--listen", "127.0.0.1:0"]);
    let mut clients: Vec<WsClient> = (0..4).map(|_| WsClient::open(herald.addr, "/echo")).collect();
    let (mut ws, _) = WsClient::open_client(herald.addr);
    herald.signal(Signal::TERM);
    for client in clients.iter_mut().chain(std::iter::once(&mut ws)) {
        assert_eq!(client.expect_close(), 1001);
        client.finish_close(1001);
    }
    let status = herald.wait();
    assert_eq!(status.code(), Some(0));
    // Nothing accepts any more.
    assert!(TcpStream::connect(herald.addr).is_err());
}

#[test]
fn shutdown_does_not_wait_past_its_timeout_for_silent_clients() {
    let mut herald =
        Herald::spawn("", &["--dev", "--listen", "127.0.0.1:0", "--shutdown-timeout-secs", "1"]);
    // This client never answers the close frame.
    let mut client = WsClient::open(herald.addr, "/echo");
    let started = Instant::now();
    herald.signal(Signal::INT);
    assert_eq!(client.expect_close(), 1001);
    assert_eq!(herald.wait().code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}

#[test]
fn accept_under_a_low_open_file_limit_does_not_spin_and_recovers() {
    // 48 descriptors: about 15 go to stdio, shards and logging, the rest to
    // connections. max_connections is set high so the limit that bites is
    // the descriptor limit.
    let mut herald = Herald::spawn(
        "ulimit -n 48;",
        &["--dev", "--listen", "127.0.0.1:0", "--threads", "1", "--max-connections", "1000"],
    );
    let addr = herald.addr;
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..60 {
        let mut stream = connect(addr);
        stream.write_all(upgrade_request("/echo", "").as_bytes()).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        // Each client gets an answer quickly: 101, or a refusal (503 or a
        // closed connection), never a hang.
        let answered_at = Instant::now();
        let outcome = loop {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => break None,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        break Some(
                            String::from_utf8_lossy(&buf).split(' ').nth(1).unwrap().to_string(),
                        );
                    }
                }
            }
        };
        assert!(
            answered_at.elapsed() < Duration::from_secs(2),
            "a client waited {:?}",
            answered_at.elapsed()
        );
        match outcome.as_deref() {
            Some("101") => held.push(stream),
            Some("503") | None => refused += 1,
            Some(other) => panic!("unexpected status {other}"),
        }
    }
    assert!(held.len() >= 20, "some connections were served: {}", held.len());
    assert!(refused >= 10, "the rest were refused: {refused}");

    // While out of descriptors the server must not spin.
    let before = herald.cpu_seconds();
    let window = Instant::now();
    let mut probe = TcpStream::connect(addr).unwrap();
    let _ = probe.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    while window.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let used = herald.cpu_seconds() - before;
    assert!(used < 0.3, "the server used {used} s of CPU in 1 s while out of descriptors");

    // Freeing descriptors lets it accept again by itself.
    held.clear();
    drop(probe);
    wait_until("a fresh client to be served", || {
        let Ok(mut stream) = TcpStream::connect(addr) else { return false };
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let _ = stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer.starts_with("HTTP/1.1 200")
    });
    let mut client = WsClient::open(addr, "/echo");
    client.send_text("back");
    assert_eq!(client.read_frame().text(), "back");
    herald.signal(Signal::TERM);
    assert_eq!(client.expect_close(), 1001);
    client.finish_close(1001);
    assert!(herald.wait().success());
    let log = herald.stderr();
    assert!(log.contains("refusing new clients with 503"), "{log}");
}

/// `serve` arguments for a TLS listener on a free port with `files`.
fn tls_args(files: &certs::CertFiles) -> Vec<String> {
    [
        "--listen-tls",
        "127.0.0.1:0",
        "--tls-cert",
        files.cert.to_str().unwrap(),
        "--tls-key",
        files.key.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn expired_mismatched_and_missing_certificates_stop_start_up_naming_the_file() {
    let ca = certs::TestCa::new();
    let files = certs::CertFiles::new("startup", &ca.issue_valid((2019, 1, 1), (2020, 1, 1)));
    let args = tls_args(&files);
    let mut all = vec!["serve", "--dev", "--listen", "127.0.0.1:0"];
    all.extend(args.iter().map(String::as_str));
    let (code, stderr) = run(&all, &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("`tls_cert` (from flag --tls-cert)"), "{stderr}");
    assert!(stderr.contains(&files.cert.display().to_string()), "{stderr}");
    assert!(stderr.contains("expired on 2020-01-01"), "{stderr}");

    files.replace(&ca.issue());
    std::fs::write(&files.key, ca.issue().key).unwrap();
    let (code, stderr) = run(&all, &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("`tls_key` (from flag --tls-key)"), "{stderr}");
    assert!(stderr.contains(&files.key.display().to_string()), "{stderr}");
    assert!(stderr.contains("do not match"), "{stderr}");

    // Reported with the other problems, from the environment too.
    std::fs::remove_file(&files.cert).unwrap();
    let (code, stderr) = run(
        &["serve", "--dev", "--listen", "127.0.0.1:0", "--threads", "0"],
        &[
            ("HERALD_LISTEN_TLS", "127.0.0.1:0"),
            ("HERALD_TLS_CERT", files.cert.to_str().unwrap()),
            ("HERALD_TLS_KEY", files.key.to_str().unwrap()),
        ],
    );
    assert_eq!(code, Some(2));
    assert!(stderr.contains("2 problems with the settings"), "{stderr}");
    assert!(stderr.contains("environment variable HERALD_TLS_CERT"), "{stderr}");
    assert!(stderr.contains(&format!("cannot read {}", files.cert.display())), "{stderr}");
}

#[test]
fn sighup_serves_the_new_certificate_to_new_connections_while_old_ones_keep_receiving() {
    const KEY: &str = "process-test-api-key-0123";
    let ca = certs::TestCa::new();
    let first = ca.issue();
    let files = certs::CertFiles::new("sighup", &first);
    let args = tls_args(&files);
    let mut all = vec!["--dev", "--listen", "127.0.0.1:0", "--api-key", KEY];
    all.extend(args.iter().map(String::as_str));
    let mut herald = Herald::spawn("", &all);
    let tls_addr = herald.tls_addr.unwrap();
    let config = ca.client_config();
    let stream = certs::connect_tls(tls_addr, &config);
    assert_eq!(certs::served_certificate(&stream), first.der);
    let (mut old, _) = WsClient::upgrade_client(stream, "/ws");
    old.subscribe("news");

    let second = ca.issue_valid((2021, 1, 1), (2098, 1, 1));
    files.replace(&second);
    herald.signal(Signal::HUP);
    wait_until("a new connection to get the new certificate", || {
        certs::served_certificate(&certs::connect_tls(tls_addr, &config)) == second.der
    });
    let mut api = ApiClient::new(herald.addr, KEY);
    assert_eq!(api.publish("news", serde_json::json!("renewed")).status, 200);
    assert_eq!(old.next_push()["data"], "renewed");

    // A bad pair is refused; the new one stays.
    std::fs::write(&files.key, ca.issue().key).unwrap();
    herald.signal(Signal::HUP);
    wait_until("the refused reload to be counted", || {
        metric(herald.addr, "herald_tls_reloads_total{result=\"refused\"} ") == 1.0
    });
    assert_eq!(certs::served_certificate(&certs::connect_tls(tls_addr, &config)), second.der);
    assert_eq!(api.publish("news", serde_json::json!("still here")).status, 200);
    assert_eq!(old.next_push()["data"], "still here");

    herald.signal(Signal::TERM);
    assert_eq!(old.expect_close(), 1001);
    old.finish_close(1001);
    assert_eq!(herald.wait().code(), Some(0));
    let log = herald.stderr();
    assert!(log.contains("SIGHUP: TLS certificate reloaded"), "{log}");
    assert!(
        log.contains("SIGHUP: the new TLS certificate was refused, the current one stays"),
        "{log}"
    );
    assert!(log.contains(&files.key.display().to_string()), "{log}");
}

/// Echoes one message through `herald`, stops it with SIGTERM (it must exit
/// 0), and returns what it logged.
fn echo_then_stop(mut herald: Herald) -> String {
    let mut client = WsClient::open(herald.addr, "/echo");
    client.send_text("served");
    let frame = client.read_frame();
    assert_eq!((frame.opcode, frame.payload.as_slice()), (1, &b"served"[..]));
    herald.signal(Signal::TERM);
    assert_eq!(herald.wait().code(), Some(0));
    herald.stderr()
}

/// Where the kernel refuses io_uring (here a seccomp filter that fails
/// io_uring_setup with EPERM, as Docker's default profile does),
/// `--io io_uring` says so at start-up and serves on epoll.
#[test]
fn where_the_kernel_refuses_io_uring_the_server_says_so_and_runs_on_epoll() {
    let args = ["--dev", "--listen", "127.0.0.1:0", "--threads", "2", "--io", "io_uring"];
    let herald = Herald::spawn("exec python3 tests/python/without_io_uring.py", &args);
    let stderr = echo_then_stop(herald);
    assert!(
        stderr.contains("io = \"io_uring\" is not available here")
            && stderr.contains("running on epoll"),
        "{stderr}"
    );
    assert!(stderr.contains("with 2 shards on epoll"), "{stderr}");
}

/// Where it is available, `--io io_uring` runs every shard on it.
#[test]
fn io_uring_is_used_where_the_kernel_allows_it() {
    if std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").is_ok_and(|v| v.trim() != "0")
    {
        eprintln!("io_uring is disabled on this machine: nothing to check");
        return;
    }
    let args = ["--dev", "--listen", "127.0.0.1:0", "--threads", "2", "--io", "io_uring"];
    let stderr = echo_then_stop(Herald::spawn("", &args));
    assert!(stderr.contains("with 2 shards on io_uring"), "{stderr}");
    assert!(!stderr.contains("not available"), "{stderr}");
}
