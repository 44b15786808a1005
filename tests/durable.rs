//! Durable history with the real binary: `kill -9` or SIGTERM, a restart on the same `data_dir`, and every client kind recovers exactly what it missed; retention and expiry reach the disk; a full disk answers 503 while subscribers are served; a store of another format or in use is refused.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

mod common;

use common::*;
use herald::broker::durable::Store;
use herald::config::Durability;
use rustix::process::{Pid, Signal, kill_process};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Instant;

const HERALD: &str = env!("CARGO_BIN_EXE_herald");
const API_KEY: &str = "durable-test-api-key-0123";

/// A test's own directory: `herald.toml` and `data/` (the data_dir).
struct Place(PathBuf);

impl Place {
    /// A fresh directory, with `config` as the config file.
    fn new(name: &str, config: &str) -> Place {
        let path =
            std::env::temp_dir().join(format!("herald-durable-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("herald.toml"), config).unwrap();
        Place(path)
    }

    fn data(&self) -> PathBuf {
        self.0.join("data")
    }

    fn args(&self) -> Vec<String> {
        [
            "serve",
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "2",
            "--api-key",
            API_KEY,
            "--config",
            self.0.join("herald.toml").to_str().unwrap(),
            "--data-dir",
            self.data().to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    }

    /// What the store holds: each channel's name and offsets (herald must
    /// not be running: the store admits one process at a time).
    fn stored(&self) -> Vec<(String, Vec<u64>)> {
        let store = Store::open(&self.data(), Durability::Fsync).unwrap();
        let mut channels = Vec::new();
        store
            .read(|channel| {
                let offsets = channel.publications.iter().map(|p| p.offset).collect();
                channels.push((channel.name, offsets));
            })
            .unwrap();
        channels
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Channels with history (the default namespace), a short history, a
/// short-lived one, and none.
const CONFIG: &str = "[channels]\nhistory_size = 100\nhistory_ttl_secs = 600\n\
                      [namespaces.short]\nhistory_size = 5\nhistory_ttl_secs = 600\n\
                      [namespaces.brief]\nhistory_size = 5\nhistory_ttl_secs = 1\n\
                      [namespaces.live]\n";

/// A running herald.
struct Herald {
    child: Child,
    addr: SocketAddr,
}

impl Herald {
    /// Starts `program args...` (herald, or a wrapper that execs it) and
    /// waits for the listening line.
    fn spawn(program: &str, args: &[String]) -> Herald {
        let mut child = Command::new(program)
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
                    let _ = tx.send(addr.parse::<SocketAddr>().unwrap());
                }
            }
        });
        let Ok(addr) = rx.recv_timeout(DEADLINE) else {
            let _ = child.kill();
            let mut stderr = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
            panic!("herald did not start: {stderr}");
        };
        Herald { child, addr }
    }

    fn start(place: &Place) -> Herald {
        Herald::spawn(HERALD, &place.args())
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
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// SIGKILL: nothing is flushed, closed or synced on the way out.
    fn kill_9(mut self) {
        self.signal(Signal::KILL);
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&self.wait()), Some(9));
    }

    /// SIGTERM, and a clean exit.
    fn terminate(mut self) {
        self.signal(Signal::TERM);
        assert!(self.wait().success());
    }

    fn publish(&self, channel: &str, data: Value) -> Response {
        ApiClient::new(self.addr, API_KEY).publish(channel, data)
    }

    fn get(&self, target: &str) -> Response {
        request(self.addr, &format!("GET {target} HTTP/1.1\r\nHost: herald\r\n\r\n"))
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs herald to its end (a start-up refusal): exit code and stderr.
fn run(args: &[String]) -> (Option<i32>, String) {
    let output = Command::new(HERALD).args(args).output().unwrap();
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// The next SSE `event:`, `id:` and `data:` of a stream.
fn sse_event(stream: &mut std::net::TcpStream, buf: &mut Vec<u8>) -> (String, String, Value) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let block = String::from_utf8(buf.drain(..end + 2).collect()).unwrap();
            let field = |name: &str| {
                block.lines().find_map(|line| line.strip_prefix(name)).unwrap_or("").to_string()
            };
            let event = field("event: ");
            if !event.is_empty() {
                return (event, field("id: "), serde_json::from_str(&field("data: ")).unwrap());
            }
            continue;
        }
        assert!(Instant::now() < deadline, "no SSE event within the deadline");
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "the stream ended");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A `/ws` client of `news` at offset 3 after a restart gets 4..=10, in
/// order, once, `recovered: true` in the same epoch; an SSE client with
/// `Last-Event-ID` and a long-poll with its cursor get the same; live
/// publications follow without duplicates.
fn recovers_what_was_missed(stop: impl FnOnce(Herald), name: &str) {
    let place = Place::new(name, CONFIG);
    let herald = Herald::start(&place);
    let (mut ws, _) = WsClient::open_client(herald.addr);
    let reply = ws.subscribe("news");
    let epoch = reply["epoch"].as_str().unwrap().to_string();
    for n in 1..=10 {
        let answer = herald.publish("news", json!({ "n": n }));
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.json()["epoch"], epoch.as_str());
        if n <= 3 {
            assert_eq!(ws.next_push()["data"]["n"], n);
        }
    }
    drop(ws);
    stop(herald);

    let herald = Herald::start(&place);
    let (mut ws, _) = WsClient::open_client(herald.addr);
    let reply = ws.ok(json!({
        "op": "subscribe", "channel": "news", "since": {"epoch": epoch, "offset": 3}
    }));
    assert_eq!((reply["recovered"].clone(), reply["epoch"].clone()), (json!(true), json!(epoch)));
    assert_eq!((reply["offset"].clone(), reply["missed"].clone()), (json!(10), json!(7)));
    for n in 4..=10 {
        let push = ws.next_push();
        assert_eq!((push["offset"].clone(), push["data"]["n"].clone()), (json!(n), json!(n)));
    }

    let cursor = format!("{epoch}-3");
    let mut sse = connect(herald.addr);
    sse.write_all(
        format!(
            "GET /sse?channel=news HTTP/1.1\r\nHost: herald\r\nLast-Event-ID: {cursor}\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let mut buf = Vec::new();
    let (event, _, subscribed) = sse_event(&mut sse, &mut buf);
    assert_eq!(event, "subscribed");
    assert_eq!(
        (subscribed["recovered"].clone(), subscribed["missed"].clone()),
        (json!(true), json!(7))
    );
    for n in 4..=10 {
        let (event, id, message) = sse_event(&mut sse, &mut buf);
        assert_eq!((event.as_str(), message["data"]["n"].clone()), ("message", json!(n)));
        assert_eq!(id, format!("{epoch}-{n}"));
    }

    let poll = herald.get(&format!("/poll?channel=news&cursor={cursor}&timeout=0")).json();
    let offsets: Vec<u64> = poll["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, (4..=10).collect::<Vec<_>>());
    assert_eq!(poll["recovered"], Value::Null, "{poll}");
    assert_eq!(poll["cursor"], format!("{epoch}-10").as_str());

    // What comes next follows on, once, in the same epoch.
    let answer = herald.publish("news", json!({ "n": 11 })).json();
    assert_eq!(
        (answer["epoch"].as_str(), answer["offset"].as_u64()),
        (Some(epoch.as_str()), Some(11))
    );
    assert_eq!(ws.next_push()["data"]["n"], 11);
    let (_, _, message) = sse_event(&mut sse, &mut buf);
    assert_eq!(message["offset"], 11);
    drop((ws, sse));
    herald.terminate();
}

#[test]
fn after_kill_9_a_restart_recovers_exactly_what_each_client_missed() {
    recovers_what_was_missed(Herald::kill_9, "kill");
}

#[test]
fn after_a_graceful_restart_each_client_recovers_what_it_missed() {
    recovers_what_was_missed(Herald::terminate, "term");
}

#[test]
fn retention_and_expiry_are_enforced_on_disk() {
    let place = Place::new("retention", CONFIG);
    let herald = Herald::start(&place);
    for n in 1..=12 {
        assert_eq!(herald.publish("short:a", json!(n)).status, 200);
    }
    assert_eq!(herald.publish("news", json!("stays")).status, 200);
    assert_eq!(herald.publish("live:x", json!("never stored")).status, 200);
    for n in 1..=3 {
        assert_eq!(herald.publish("brief:a", json!(n)).status, 200);
    }
    // brief keeps its publications for a second: then the channel goes.
    wait_until("the expired channel to leave the store", || {
        metric(herald.addr, "herald_store_channels ") == 2.0
    });
    assert_eq!(metric(herald.addr, "herald_store_publications "), 6.0);
    herald.terminate();
    let kept = vec![("news".to_string(), vec![1]), ("short:a".to_string(), (8..=12).collect())];
    assert_eq!(place.stored(), kept);

    let herald = Herald::start(&place);
    for n in 1..=8 {
        assert_eq!(herald.publish("short:b", json!(n)).status, 200);
    }
    herald.kill_9();
    let stored = place.stored();
    assert_eq!(stored.len(), 3, "{stored:?}");
    assert_eq!(stored[2], ("short:b".to_string(), (4..=8).collect()));
}

/// `bytes` characters that LZ4 cannot shrink (the store compresses large
/// values).
fn noise(bytes: usize, seed: u64) -> String {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..bytes)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(
                b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_"
                    [(state % 64) as usize],
            )
        })
        .collect()
}

/// herald in a mount namespace of its own, with `data_dir` on a 1 MiB tmpfs.
fn start_on_a_small_disk(place: &Place) -> Herald {
    let probe = Command::new("unshare").args(["-Urm", "true"]).status();
    assert!(
        probe.is_ok_and(|status| status.success()),
        "this test needs `unshare -Urm` (util-linux, user namespaces) to give herald a small tmpfs"
    );
    std::fs::create_dir_all(place.data()).unwrap();
    let mut args: Vec<String> = [
        "-Urm",
        "sh",
        "-c",
        "mount -t tmpfs -o size=1m tmpfs \"$1\" && shift && exec \"$0\" \"$@\"",
        HERALD,
        place.data().to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    args.extend(place.args());
    Herald::spawn("unshare", &args)
}

#[test]
fn a_full_disk_answers_503_and_subscribers_are_still_served() {
    let place = Place::new("full", CONFIG);
    let herald = start_on_a_small_disk(&place);
    let (mut ws, _) = WsClient::open_client(herald.addr);
    ws.subscribe("news");
    ws.subscribe("live:x");
    let mut acknowledged = 0;
    let refused = loop {
        let pad = noise(16 * 1024, acknowledged);
        let response = herald.publish("news", json!({ "n": acknowledged + 1, "pad": pad }));
        if response.status != 200 {
            break response;
        }
        acknowledged += 1;
        assert_eq!(ws.next_push()["data"]["n"], acknowledged);
        assert!(acknowledged < 1000, "1 MiB never filled up");
    };
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(error_code(&refused), "unavailable");
    let message = refused.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("store cannot write"), "{message}");
    assert!(
        message.contains("No space left on device") || message.contains("os error"),
        "{message}"
    );
    assert!(metric(herald.addr, "herald_store_failures_total ") >= 1.0);
    let health = herald.get("/health").json();
    assert_eq!(health["status"], "degraded", "{health}");

    // Subscribers are served: live publications, the history held in
    // memory, pings; the refused publication reached nobody.
    assert_eq!(herald.publish("live:x", json!("still here")).status, 200);
    let push = ws.next_push();
    assert_eq!(
        (push["channel"].as_str(), push["data"].as_str()),
        (Some("live:x"), Some("still here"))
    );
    let history = ws.ok(json!({"op": "history", "channel": "news"}));
    assert_eq!(history["publications"].as_array().unwrap().len(), acknowledged as usize);
    ws.send(9, b"ping");
    assert_eq!(ws.read_frame().opcode, 10);
    // Still refused, and still never delivered.
    let pad = noise(16 * 1024, 1_000_000);
    assert_eq!(herald.publish("news", json!({ "n": "again", "pad": pad })).status, 503);
    assert_eq!(herald.publish("live:x", json!("after")).status, 200);
    assert_eq!(ws.next_push()["data"], "after");
    drop(ws);
    herald.terminate();
}

#[test]
fn a_store_of_another_format_is_refused_naming_both_versions() {
    let place = Place::new("format", CONFIG);
    std::fs::create_dir_all(place.data()).unwrap();
    std::fs::write(place.data().join("FORMAT"), "herald store format 0\nwritten by herald 0.0.1\n")
        .unwrap();
    let (code, stderr) = run(&place.args());
    assert_eq!(code, Some(1));
    for part in ["has format 0", "written by herald 0.0.1", "reads format 1 only", "older herald"] {
        assert!(stderr.contains(part), "{part:?} missing from {stderr}");
    }
    // A directory with other files is not taken over.
    std::fs::write(place.data().join("FORMAT"), "").unwrap();
    std::fs::remove_file(place.data().join("FORMAT")).unwrap();
    std::fs::write(place.data().join("notes.txt"), "mine").unwrap();
    let (code, stderr) = run(&place.args());
    assert_eq!(code, Some(1));
    assert!(stderr.contains("holds files but no herald store"), "{stderr}");
    assert!(Path::new(&place.data().join("notes.txt")).exists());
}

#[test]
fn two_heralds_cannot_share_a_data_dir() {
    let place = Place::new("shared", CONFIG);
    let herald = Herald::start(&place);
    let (code, stderr) = run(&place.args());
    assert_eq!(code, Some(1));
    assert!(stderr.contains("another process has it open"), "{stderr}");
    herald.terminate();
}
