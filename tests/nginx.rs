//! The files in deploy/: nginx.conf and herald.toml with a real nginx in front of a live herald (WebSocket, SSE, long-poll and the server API through the proxy; a WebSocket that outlives nginx's 60 s read timeout because herald pings it), and sysctl.conf's keys.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

mod common;

use common::*;
use herald::ServerHandle;
use herald::config::{Config, Override, Source};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// nginx's default `proxy_read_timeout`, which the shipped `/ws` location keeps.
const NGINX_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the WebSockets stay idle: past nginx's read timeout.
const IDLE: Duration = Duration::from_secs(64);

const API_KEY: &str = "nginx-test-api-key-0123456789";
const TOKEN_SECRET: &str = "nginx-test-token-secret-0123456789abcdef";

/// herald started from the shipped deploy/herald.toml, on a free port, with
/// two shards and the given extra settings (as flags would give them).
fn start_herald(extra: &[(&'static str, &str)]) -> ServerHandle {
    let _ = env_logger::builder().is_test(true).try_init();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/herald.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    // The shipped file keeps history in /var/lib/herald: each herald here
    // gets a store of its own.
    static STORES: AtomicUsize = AtomicUsize::new(0);
    let store = std::env::temp_dir().join(format!(
        "herald-nginx-{}-{}",
        std::process::id(),
        STORES.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&store);
    let store = store.to_str().unwrap().to_string();
    let settings = [
        ("listen", "127.0.0.1:0"),
        ("threads", "2"),
        ("api_key", API_KEY),
        ("token_secret", TOKEN_SECRET),
        ("data_dir", store.as_str()),
    ];
    let overrides = settings
        .iter()
        .chain(extra)
        .map(|&(key, value)| Override {
            key,
            value: value.to_string(),
            source: Source::Flag(format!("--{}", key.replace('_', "-"))),
        })
        .collect();
    let config = Config::load(Some((&path, &text)), overrides, false)
        .unwrap_or_else(|error| panic!("deploy/herald.toml: {error}"));
    start_config(config)
}

fn token(user: &str) -> String {
    let secret = herald::config::Secret::new(TOKEN_SECRET);
    herald::auth::mint(&secret, user, Some(3600), &[], herald::auth::unix_now())
}

/// The nginx binary: on PATH, or in the sbin directories Debian and the
/// nginx.org packages use (often not on a user's PATH).
fn nginx_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("nginx"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no nginx binary on PATH or in /usr/sbin: install nginx \
                 (Debian/Ubuntu: apt-get install nginx, or nginx-light; ./.ci/run does)"
            )
        })
}

/// Splits a config into its top-level statements and blocks (comments
/// dropped), e.g. `map ... { ... }`, `log_format ...;`.
fn top_level(config: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut depth = 0usize;
    for line in config.lines() {
        let line = line.split('#').next().unwrap();
        for c in line.chars().chain(['\n']) {
            current.push(c);
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        items.push(std::mem::take(&mut current));
                    }
                }
                ';' if depth == 0 => items.push(std::mem::take(&mut current)),
                _ => {}
            }
        }
    }
    assert!(current.trim().is_empty() && depth == 0, "unbalanced config: {current}");
    items.into_iter().map(|item| item.trim().to_string()).collect()
}

/// The block that starts with `head` (e.g. `location = /ws`) inside `block`.
fn inner_block<'a>(block: &'a str, head: &str) -> &'a str {
    let start = block.find(&format!("{head} {{")).unwrap_or_else(|| panic!("no `{head}` block"));
    let end = block[start..].find('}').unwrap();
    &block[start..start + end]
}

/// The shipped nginx.conf as the test runs it: the upstream is `herald`, the
/// TLS server listens on plain HTTP at `listen` (no certificate here), the
/// port-80 redirect server is left out, and logs go to `dir`. Everything
/// else (the map, the upstream's keep-alive, every location) is as shipped.
fn render(herald: SocketAddr, listen: SocketAddr, dir: &Path) -> String {
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx.conf"))
            .unwrap();
    let mut kept = Vec::new();
    let mut redirects = 0;
    for item in top_level(&shipped) {
        if item.starts_with("server") && item.contains("return 301 https://") {
            redirects += 1;
            continue;
        }
        kept.push(item);
    }
    assert_eq!(redirects, 1, "the shipped config should have one http-to-https server");
    let text = kept.join("\n\n");

    let (mut upstreams, mut tls_listens, mut certificates) = (0, 0, 0);
    let mut lines = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed == "server 127.0.0.1:8080;" {
            upstreams += 1;
            lines.push(format!("server {herald};"));
        } else if trimmed == "listen 443 ssl http2;" {
            tls_listens += 1;
            lines.push(format!("listen {listen};"));
        } else if trimmed == "listen [::]:443 ssl http2;" {
            tls_listens += 1;
        } else if trimmed.starts_with("ssl_") {
            certificates += usize::from(trimmed.starts_with("ssl_certificate"));
        } else {
            lines.push(line.replace("/var/log/nginx/", &format!("{}/", dir.display())));
        }
    }
    assert_eq!(
        (upstreams, tls_listens, certificates),
        (1, 2, 2),
        "the shipped config changed shape"
    );
    let rendered = lines.join("\n");
    // The WebSocket location keeps nginx's default read timeout: what keeps
    // a quiet WebSocket open is herald's ping, not a long timeout.
    assert!(!inner_block(&rendered, "location = /ws").contains("proxy_read_timeout"));
    rendered
}

/// nginx running the rendered config, as the current user, in its own
/// directory; killed when dropped.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Nginx {
    fn start(herald: SocketAddr) -> Nginx {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "nginx-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // A free port for nginx to listen on.
        let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let d = dir.display();
        let config = format!(
            "events {{ worker_connections 256; }}\n\
             http {{\n\
             access_log {d}/access.log;\n\
             client_body_temp_path {d}/client_body;\n\
             proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n\
             uwsgi_temp_path {d}/uwsgi;\n\
             scgi_temp_path {d}/scgi;\n\
             {}\n\
             }}\n",
            render(herald, addr, &dir)
        );
        let file = dir.join("nginx.conf");
        std::fs::write(&file, config).unwrap();
        let error_log = dir.join("error.log");
        let child = Command::new(nginx_binary())
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&file)
            .arg("-e")
            .arg(&error_log)
            .arg("-g")
            .arg(format!(
                "daemon off; master_process off; pid {d}/nginx.pid; error_log {d}/error.log info;"
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut nginx = Nginx { child, addr, dir };
        let deadline = Instant::now() + DEADLINE;
        while TcpStream::connect(addr).is_err() {
            if let Some(status) = nginx.child.try_wait().unwrap() {
                panic!("nginx exited ({status}):\n{}", nginx.error_log());
            }
            assert!(Instant::now() < deadline, "nginx did not listen:\n{}", nginx.error_log());
            std::thread::sleep(Duration::from_millis(10));
        }
        nginx
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// An SSE stream read through nginx, which sends it chunked.
struct EventStream {
    stream: TcpStream,
    /// Bytes read and not yet de-chunked.
    raw: Vec<u8>,
    /// The de-chunked stream not yet parsed into events.
    text: Vec<u8>,
    /// `: ping` comments seen.
    pings: usize,
}

impl EventStream {
    fn open(addr: SocketAddr, path: &str) -> EventStream {
        let mut stream = connect(addr);
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
        )
        .unwrap();
        let mut raw = Vec::new();
        let response = read_response(&mut stream, &mut raw);
        assert_eq!(response.status, 200, "{}", response.head);
        assert_eq!(response.header("content-type"), Some("text/event-stream"));
        assert_eq!(response.header("transfer-encoding"), Some("chunked"), "{}", response.head);
        EventStream { stream, raw, text: Vec::new(), pings: 0 }
    }

    /// The next event (name and JSON data), skipping comments and `retry:`.
    fn next(&mut self) -> (String, Value) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            while let Some(end) = self.text.windows(2).position(|w| w == b"\n\n") {
                let block = String::from_utf8(self.text.drain(..end + 2).collect()).unwrap();
                let (mut event, mut data) = ("message".to_string(), None);
                for line in block.lines() {
                    if line == ": ping" {
                        self.pings += 1;
                    } else if let Some(name) = line.strip_prefix("event: ") {
                        event = name.to_string();
                    } else if let Some(json) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(json).unwrap());
                    }
                }
                if let Some(data) = data {
                    return (event, data);
                }
            }
            if !self.dechunk() {
                assert!(Instant::now() < deadline, "no SSE event within the deadline");
                let mut buf = [0u8; 4096];
                let n = self.stream.read(&mut buf).expect("read the SSE stream");
                assert!(n > 0, "the SSE stream ended");
                self.raw.extend_from_slice(&buf[..n]);
            }
        }
    }

    /// Moves the whole chunks read so far from `raw` to `text`; returns
    /// whether there was one.
    fn dechunk(&mut self) -> bool {
        let mut moved = false;
        while let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") {
            let size = std::str::from_utf8(&self.raw[..line_end]).unwrap();
            let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
            assert_ne!(size, 0, "the SSE stream ended");
            let start = line_end + 2;
            if self.raw.len() < start + size + 2 {
                break;
            }
            self.text.extend_from_slice(&self.raw[start..start + size]);
            self.raw.drain(..start + size + 2);
            moved = true;
        }
        moved
    }
}

/// Publishes through nginx, on a new connection as a backend would.
fn publish(nginx: &Nginx, channel: &str, data: Value) -> Value {
    let response = ApiClient::new(nginx.addr, API_KEY).publish(channel, data);
    assert_eq!(response.status, 200, "{}{}", response.head, response.body);
    response.json()
}

/// The next data message on a WebSocket, answering pings on the way.
fn next_message(client: &mut WsClient) -> Value {
    loop {
        let frame = client.read_frame();
        match frame.opcode {
            1 => return frame.json(),
            9 => client.send(10, &frame.payload),
            _ => panic!("expected a message, got {frame:?}"),
        }
    }
}

#[test]
fn through_nginx_every_transport_delivers_and_an_idle_websocket_outlives_the_read_timeout() {
    let herald = start_herald(&[]);
    let nginx = Nginx::start(herald.local_addr());
    // The control: the same config in front of a herald that (nearly) never
    // pings, to show that nginx does cut a quiet WebSocket.
    let silent_herald = start_herald(&[("ping_interval_secs", "3600")]);
    let silent_nginx = Nginx::start(silent_herald.local_addr());

    // A WebSocket subscriber, an SSE stream and a long-poll cursor, all
    // through nginx, on a channel of the default namespace (it keeps history).
    let channel = "news";
    let (mut subscriber, welcome) =
        WsClient::open_client_at(nginx.addr, &format!("/ws?token={}", token("alice")), "");
    assert_eq!(welcome["user"], "alice");
    assert_eq!(subscriber.subscribe(channel)["op"], "subscribed");
    let mut sse =
        EventStream::open(nginx.addr, &format!("/sse?channel={channel}&token={}", token("bob")));
    assert_eq!(sse.next().0, "subscribed");
    let poll_path =
        |query: &str| format!("/poll?channel={channel}&token={}&{query}", token("carol"));
    let mut poller = connect(nginx.addr);
    let start = request_on(&mut poller, &poll_path("timeout=0"));
    assert_eq!(start["messages"], json!([]));
    let cursor = start["cursor"].as_str().unwrap().to_string();

    let published = publish(&nginx, channel, json!({"n": 1}));
    assert_eq!(published["offset"], 1);

    let push = next_message(&mut subscriber);
    assert_eq!((push["op"].as_str(), push["offset"].as_u64()), (Some("message"), Some(1)));
    assert_eq!(push["data"], json!({"n": 1}));
    let (event, data) = sse.next();
    assert_eq!(event, "message");
    assert_eq!(data, json!({"channel": channel, "offset": 1, "data": {"n": 1}}));
    let polled = request_on(&mut poller, &poll_path(&format!("cursor={cursor}&timeout=5")));
    assert_eq!(polled["messages"], json!([{"channel": channel, "offset": 1, "data": {"n": 1}}]));

    // Now everything goes quiet for longer than nginx's read timeout. On
    // the side: a poll held for 60 s (the longest herald holds one) must
    // come back through nginx as an empty answer, not a 504; and the
    // WebSocket behind the silent herald must be cut by nginx.
    let (mut control, _) =
        WsClient::open_client_at(silent_nginx.addr, &format!("/ws?token={}", token("dave")), "");
    let idle_start = Instant::now();
    let control_watch = std::thread::spawn(move || {
        let frame = control.frame_within(IDLE);
        (frame, idle_start.elapsed())
    });
    let cursor = polled["cursor"].as_str().unwrap().to_string();
    let long_poll_path = poll_path(&format!("cursor={cursor}&timeout=60"));
    let long_poll = std::thread::spawn(move || {
        let mut stream = poller;
        write!(stream, "GET {long_poll_path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        stream.set_read_timeout(Some(IDLE)).unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        // One small answer: its head and body, read without the usual deadline.
        while !answer.ends_with(b"}") {
            let n = stream.read(&mut buf).expect("the held poll's answer");
            assert!(n > 0, "nginx closed the held poll: {}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&buf[..n]);
        }
        (String::from_utf8(answer).unwrap(), idle_start.elapsed())
    });

    let mut pings = 0;
    while idle_start.elapsed() < IDLE {
        match subscriber.frame_within(IDLE.saturating_sub(idle_start.elapsed())) {
            Some(frame) if frame.opcode == 9 => {
                pings += 1;
                subscriber.send(10, &frame.payload);
            }
            Some(frame) => panic!("a quiet WebSocket got {frame:?}"),
            None => assert!(
                idle_start.elapsed() >= IDLE,
                "nginx closed the WebSocket after {:?} of quiet",
                idle_start.elapsed()
            ),
        }
    }
    assert!(pings >= 2, "herald pinged {pings} times in {IDLE:?}");

    let (frame, cut_after) = control_watch.join().unwrap();
    assert!(frame.is_none(), "the silent herald's WebSocket got {frame:?}");
    assert!(
        cut_after >= NGINX_READ_TIMEOUT - Duration::from_secs(2) && cut_after < IDLE,
        "nginx should cut a WebSocket quiet for {NGINX_READ_TIMEOUT:?}, cut it after {cut_after:?}"
    );
    let (answer, answered_after) = long_poll.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let body: Value =
        serde_json::from_str(&answer[answer.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    assert_eq!(body["messages"], json!([]), "{answer}");
    assert!(answered_after >= Duration::from_secs(59), "answered after {answered_after:?}");

    // The idle WebSocket and the SSE stream still deliver.
    publish(&nginx, channel, json!({"n": 2}));
    let push = next_message(&mut subscriber);
    assert_eq!((push["offset"].as_u64(), &push["data"]), (Some(2), &json!({"n": 2})));
    let (event, data) = sse.next();
    assert_eq!((event.as_str(), &data["data"]), ("message", &json!({"n": 2})));
    assert!(sse.pings >= 2, "the SSE stream had {} pings", sse.pings);
    assert!(
        !nginx.error_log().contains("upstream timed out"),
        "nginx timed out on herald:\n{}",
        nginx.error_log()
    );
}

/// A GET on a kept-alive connection; returns the JSON answer.
fn request_on(stream: &mut TcpStream, path: &str) -> Value {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut rest = Vec::new();
    let response = read_response(stream, &mut rest);
    assert_eq!(response.status, 200, "{}{}", response.head, response.body);
    assert!(rest.is_empty());
    response.json()
}

/// A request from a given loopback source address (127.0.0.2 is not one
/// the shipped config lets through to the server API).
fn request_from(source: &str, addr: SocketAddr, request: &str) -> Response {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&source.parse::<SocketAddr>().unwrap().into()).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    read_response(&mut stream, &mut Vec::new())
}

#[test]
fn the_shipped_config_lets_only_allowed_addresses_reach_the_server_api_and_metrics() {
    let herald = start_herald(&[]);
    let nginx = Nginx::start(herald.local_addr());
    let info =
        format!("GET /api/info HTTP/1.1\r\nHost: x\r\nAuthorization: apikey {API_KEY}\r\n\r\n");
    let metrics = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    let health = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";

    // From 127.0.0.1 (allowed): herald answers.
    let api = request_from("127.0.0.1:0", nginx.addr, &info);
    assert_eq!(api.status, 200, "{}", api.body);
    assert_eq!(api.json()["engine"], "memory");
    assert_eq!(request_from("127.0.0.1:0", nginx.addr, metrics).status, 200);
    // A wrong key gets herald's own JSON answer through nginx.
    let wrong = ApiClient::new(nginx.addr, "wrong-key-0123456789").send("GET", "/api/info", "");
    assert_eq!((wrong.status, wrong.json()["error"]["code"].as_str()), (401, Some("unauthorized")));

    // From elsewhere: nginx refuses the API and metrics, and serves the rest.
    assert_eq!(request_from("127.0.0.2:0", nginx.addr, &info).status, 403);
    assert_eq!(request_from("127.0.0.2:0", nginx.addr, metrics).status, 403);
    let health = request_from("127.0.0.2:0", nginx.addr, health);
    assert_eq!(
        health.json(),
        json!({"status": "ok", "engine": {"name": "memory", "state": "up"}}),
        "the shipped config keeps a store, whose state /health tells"
    );
    let script =
        request_from("127.0.0.2:0", nginx.addr, "GET /herald.js HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(script.status, 200);
    assert!(
        script.body.contains("export class Herald"),
        "{}",
        &script.body[..200.min(script.body.len())]
    );
}

/// The remote addresses of the established TCP connections to `port` on
/// 127.0.0.1, from /proc/net/tcp.
fn peers_of(port: u16) -> Vec<std::net::Ipv4Addr> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let parse = |field: &str| {
        let (ip, port) = field.split_once(':').unwrap();
        let ip = u32::from_str_radix(ip, 16).unwrap();
        (std::net::Ipv4Addr::from(ip.swap_bytes()), u16::from_str_radix(port, 16).unwrap())
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, remote, state) = (parse(fields[1]), parse(fields[2]), fields[3]);
            (local == (std::net::Ipv4Addr::LOCALHOST, port) && state == "01").then_some(remote.0)
        })
        .collect()
}

#[test]
fn nginx_reaches_herald_from_several_loopback_source_addresses() {
    let herald = start_herald(&[]);
    let nginx = Nginx::start(herald.local_addr());
    let clients: Vec<_> = (0..12)
        .map(|i| {
            WsClient::open_client_at(
                nginx.addr,
                &format!("/ws?token={}", token(&format!("u{i}"))),
                "",
            )
            .0
        })
        .collect();
    let mut sources = peers_of(herald.local_addr().port());
    sources.sort();
    sources.dedup();
    let allowed: Vec<std::net::Ipv4Addr> = (1..=4).map(|n| [127, 0, 0, n].into()).collect();
    assert!(sources.iter().all(|source| allowed.contains(source)), "{sources:?}");
    // 12 connections, each from one of four sources at random: all from the
    // same one has a chance of 4 in 4^12.
    assert!(sources.len() >= 2, "every connection came from {sources:?}");
    drop(clients);
}

#[test]
fn every_key_of_deploy_sysctl_conf_exists_on_this_kernel() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/sysctl.conf");
    let text = std::fs::read_to_string(path).unwrap();
    let mut keys = 0;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (key, value) =
            line.split_once('=').unwrap_or_else(|| panic!("not key = value: {line}"));
        let file = Path::new("/proc/sys").join(key.trim().replace('.', "/"));
        let current = std::fs::read_to_string(&file)
            .unwrap_or_else(|error| panic!("{key}: no {} ({error})", file.display()));
        // Same number of fields as the kernel's own value.
        assert_eq!(
            value.split_whitespace().count(),
            current.split_whitespace().count(),
            "{key} = {value} (now {current})"
        );
        keys += 1;
    }
    assert!(keys >= 5, "only {keys} settings");
}
