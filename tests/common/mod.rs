//! Test helpers: a server on 127.0.0.1:0, a raw HTTP/WebSocket client that can also send what no good client would, and deadlines instead of sleeps.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

pub mod certs;
pub mod client_process;
pub mod pusher;
pub mod receiver;
pub mod redis;

use herald::config::{Io, NamespaceOptions, Secret};
use herald::{Config, Server, ServerHandle};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How long any single wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A dev configuration on a free port with two shards, changed by `adjust`.
pub fn start_with(adjust: impl FnOnce(&mut Config)) -> ServerHandle {
    let _ = env_logger::builder().is_test(true).try_init();
    let mut config = Config::dev();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.threads = 2;
    adjust(&mut config);
    start_config(config)
}

/// The reactor the tests run on: `HERALD_IO` (`epoll` or `io_uring`), as
/// for the binary, which the tests that spawn it pass it on to. `.ci/run`
/// runs the tests on each.
pub fn test_io() -> Io {
    match std::env::var("HERALD_IO").as_deref() {
        Ok("io_uring") => Io::IoUring,
        Ok("epoll") | Err(_) => Io::Epoll,
        Ok(other) => panic!("HERALD_IO={other}: expected epoll or io_uring"),
    }
}

/// Starts `config` on the reactor of [`test_io`], and checks that it runs
/// on it (no silent fallback to epoll under test).
pub fn start_config(mut config: Config) -> ServerHandle {
    config.io = test_io();
    let handle = Server::start(config).expect("server starts");
    assert_eq!(handle.io(), test_io(), "the server fell back from the reactor asked for");
    handle
}

/// A dev server with defaults.
pub fn start() -> ServerHandle {
    start_with(|_| {})
}

/// A server for channel tests, with what tests need to talk to it.
pub struct TestServer {
    pub handle: ServerHandle,
    pub addr: SocketAddr,
    pub api_key: String,
    pub secret: Secret,
}

impl TestServer {
    /// A token for `user` granting `channels`, valid for an hour.
    pub fn token(&self, user: &str, channels: &[&str]) -> String {
        let channels: Vec<String> = channels.iter().map(|c| c.to_string()).collect();
        herald::auth::mint(&self.secret, user, Some(3600), &channels, herald::auth::unix_now())
    }

    /// Publishes through `POST /api/publish` on a new connection.
    pub fn publish(&self, channel: &str, data: Value) -> Value {
        let response = ApiClient::new(self.addr, &self.api_key).publish(channel, data);
        assert_eq!(response.status, 200, "{}", response.body);
        response.json()
    }
}

/// Namespaces for channel tests: the default one keeps 100 publications for
/// 5 minutes; `chat` has presence, join/leave and client publish; `pub` only
/// client publish; `live` keeps no history.
pub fn channel_config(config: &mut Config) {
    config.channels =
        NamespaceOptions { history_size: 100, history_ttl_secs: 300, ..Default::default() };
    config.namespaces.insert(
        "chat".into(),
        NamespaceOptions {
            history_size: 50,
            history_ttl_secs: 300,
            presence: true,
            join_leave: true,
            client_publish: true,
            ..Default::default()
        },
    );
    config.namespaces.insert(
        "pub".into(),
        NamespaceOptions {
            history_size: 1000,
            history_ttl_secs: 300,
            client_publish: true,
            ..Default::default()
        },
    );
    config.namespaces.insert("live".into(), NamespaceOptions::default());
}

/// A channel-test server with `threads` shards, changed by `adjust`.
pub fn start_server(threads: usize, adjust: impl FnOnce(&mut Config)) -> TestServer {
    let mut api_key = String::new();
    let mut secret = Secret::new("");
    let handle = start_with(|config| {
        config.threads = threads;
        channel_config(config);
        adjust(config);
        api_key = config.api_key.expose().to_string();
        secret = config.token_secret.clone();
    });
    let addr = handle.local_addr();
    TestServer { handle, addr, api_key, secret }
}

/// A keep-alive connection to the server API.
pub struct ApiClient {
    pub stream: TcpStream,
    pub rest: Vec<u8>,
    pub key: String,
}

impl ApiClient {
    pub fn new(addr: SocketAddr, key: &str) -> ApiClient {
        ApiClient { stream: connect(addr), rest: Vec::new(), key: key.to_string() }
    }

    /// Sends one request with this client's key and reads the answer.
    pub fn send(&mut self, method: &str, path: &str, body: &str) -> Response {
        let request = api_request(&self.key, method, path, body);
        self.stream.write_all(request.as_bytes()).unwrap();
        read_response(&mut self.stream, &mut self.rest)
    }

    pub fn publish(&mut self, channel: &str, data: Value) -> Response {
        self.send("POST", "/api/publish", &json!({"channel": channel, "data": data}).to_string())
    }
}

/// A server API request with API key `key`, as bytes to write (or to
/// pipeline).
pub fn api_request(key: &str, method: &str, path: &str, body: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: herald\r\nAuthorization: apikey {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Publishes of the numbers 1 to `count` to `channel`, as one pipelined
/// batch, with the requests `between` after publish number `at`.
pub fn publish_batch(key: &str, channel: &str, count: u64, at: u64, between: &[String]) -> String {
    let mut batch = String::new();
    for n in 1..=count {
        let body = json!({"channel": channel, "data": n}).to_string();
        batch.push_str(&api_request(key, "POST", "/api/publish", &body));
        if n == at {
            batch.extend(between.iter().map(String::as_str));
        }
    }
    batch
}

/// The `error.code` of an error answer's JSON body.
pub fn error_code(response: &Response) -> String {
    response.json()["error"]["code"].as_str().unwrap_or_default().to_string()
}

/// A plain TCP connection with the test deadline as its read timeout.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.set_write_timeout(Some(DEADLINE)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// An upgrade request for `path` with extra header lines (each ending in \r\n).
pub fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// An HTTP response as read from the wire.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Response {
    /// The value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    /// The JSON body.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body {:?}: {e}", self.body))
    }
}

/// A stream a test client talks over: a TCP socket, or TLS over one.
pub trait TestStream: Read + Write {
    /// The TCP socket underneath.
    fn tcp(&self) -> &TcpStream;
}

impl TestStream for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

/// A TLS client stream over TCP.
pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

impl TestStream for TlsStream {
    fn tcp(&self) -> &TcpStream {
        &self.sock
    }
}

/// Reads one HTTP response head (and a Content-Length body) from `stream`,
/// leaving whatever follows in `rest`.
pub fn read_response(stream: &mut impl Read, rest: &mut Vec<u8>) -> Response {
    let deadline = Instant::now() + DEADLINE;
    let head_end = loop {
        if let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        assert!(Instant::now() < deadline, "no response head within the deadline");
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).expect("read response");
        assert!(
            n > 0,
            "connection closed before a response; got {:?}",
            String::from_utf8_lossy(rest)
        );
        rest.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8(rest[..head_end].to_vec()).unwrap();
    rest.drain(..head_end);
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut response = Response { status, head, body: String::new() };
    if let Some(length) = response.header("content-length").map(|v| v.parse::<usize>().unwrap()) {
        while rest.len() < length {
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).expect("read body");
            assert!(n > 0, "connection closed inside the body");
            rest.extend_from_slice(&buf[..n]);
        }
        response.body = String::from_utf8(rest.drain(..length).collect()).unwrap();
    }
    response
}

/// Sends `request` on a new connection and reads the answer.
pub fn request(addr: SocketAddr, request: &str) -> Response {
    let mut stream = connect(addr);
    stream.write_all(request.as_bytes()).unwrap();
    read_response(&mut stream, &mut Vec::new())
}

/// Whether the server closed the connection (EOF, or a reset, or with TLS
/// the end of TCP without close_notify) within the deadline.
pub fn closed_by_server(stream: &mut impl Read) -> bool {
    let deadline = Instant::now() + DEADLINE;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof) => {
                return true;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(e) => panic!("read: {e}"),
        }
    }
    false
}

/// A frame as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The close code of a close frame.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == 8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    /// The payload as text.
    pub fn text(&self) -> String {
        String::from_utf8(self.payload.clone()).unwrap()
    }

    /// The payload as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap()
    }
}

pub use herald::testing::client_frame;

/// A WebSocket client over a raw socket (or TLS over one).
pub struct WsClient<S: TestStream = TcpStream> {
    pub stream: S,
    pub buf: Vec<u8>,
    pub response: Response,
    /// Frames read while looking for a reply, in order.
    pub pending: VecDeque<Frame>,
    next_id: u64,
}

impl<S: TestStream> WsClient<S> {
    /// A client over an already upgraded stream (`buf`: bytes read past the head).
    pub fn from_parts(stream: S, buf: Vec<u8>, response: Response) -> WsClient<S> {
        WsClient { stream, buf, response, pending: VecDeque::new(), next_id: 0 }
    }

    /// Opens a WebSocket on `path` over `stream`; panics unless the
    /// answer is 101.
    pub fn upgrade(mut stream: S, path: &str, headers: &str) -> WsClient<S> {
        stream.write_all(upgrade_request(path, headers).as_bytes()).unwrap();
        let mut buf = Vec::new();
        let response = read_response(&mut stream, &mut buf);
        assert_eq!(response.status, 101, "{}{}", response.head, response.body);
        WsClient::from_parts(stream, buf, response)
    }

    /// Opens `/ws` (or `path`) over `stream` and reads the welcome message.
    pub fn upgrade_client(stream: S, path: &str) -> (WsClient<S>, Value) {
        let mut client = WsClient::upgrade(stream, path, "");
        let welcome = client.read_frame().json();
        assert_eq!(welcome["op"], "welcome");
        (client, welcome)
    }

    pub fn send(&mut self, opcode: u8, payload: &[u8]) {
        self.send_raw(&client_frame(true, opcode, payload));
    }

    pub fn send_text(&mut self, text: &str) {
        self.send(1, text.as_bytes());
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Sends a command with a fresh id and returns its reply; pushes that
    /// arrive meanwhile wait in `pending`.
    pub fn call(&mut self, mut command: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        command["id"] = json!(id);
        self.send_text(&command.to_string());
        loop {
            let frame = self.read_wire_frame().expect("a reply before the connection ends");
            if frame.opcode == 1 {
                let value = frame.json();
                if value["id"] == json!(id) {
                    return value;
                }
            }
            self.pending.push_back(frame);
        }
    }

    /// `call` that must succeed: panics on an error reply.
    pub fn ok(&mut self, command: Value) -> Value {
        let reply = self.call(command);
        assert_ne!(reply["op"], "error", "{reply}");
        reply
    }

    /// Subscribes to `channel`.
    pub fn subscribe(&mut self, channel: &str) -> Value {
        self.ok(json!({"op": "subscribe", "channel": channel}))
    }

    /// The next push that is a JSON text message (skipping pings).
    pub fn next_push(&mut self) -> Value {
        loop {
            let frame = self.read_frame();
            match frame.opcode {
                1 => return frame.json(),
                9 | 10 => continue,
                _ => panic!("expected a push, got {frame:?}"),
            }
        }
    }

    /// Reads the next frame within the deadline.
    pub fn read_frame(&mut self) -> Frame {
        self.try_read_frame().expect("a frame before the deadline")
    }

    /// Reads the next frame, or `None` if the connection ends first.
    pub fn try_read_frame(&mut self) -> Option<Frame> {
        match self.pending.pop_front() {
            Some(frame) => Some(frame),
            None => self.read_wire_frame(),
        }
    }

    /// The next frame if one comes within `timeout`.
    pub fn frame_within(&mut self, timeout: Duration) -> Option<Frame> {
        if let Some(frame) = self.pending.pop_front() {
            return Some(frame);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.tcp().set_read_timeout(Some(left)).unwrap();
            let mut chunk = vec![0u8; 64 * 1024];
            let read = self.stream.read(&mut chunk);
            self.stream.tcp().set_read_timeout(Some(DEADLINE)).unwrap();
            match read {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return None;
                }
                Err(e) => panic!("reading a frame: {e}"),
            }
        }
    }

    fn read_wire_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            let mut chunk = vec![0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof
                    ) =>
                {
                    return None;
                }
                Err(e) => panic!("reading a frame: {e}"),
            }
        }
    }

    /// Reads frames until a close frame and returns its code (skipping
    /// pings and data).
    pub fn expect_close(&mut self) -> u16 {
        loop {
            let frame = self.try_read_frame().expect("a close frame before the connection ends");
            if frame.opcode == 8 {
                return frame.close_code().unwrap_or(1005);
            }
        }
    }

    /// Answers a close handshake and waits for the server to close TCP.
    pub fn finish_close(&mut self, code: u16) {
        self.send(8, &code.to_be_bytes());
        assert!(closed_by_server(&mut self.stream), "server did not close the socket");
    }

    pub fn shutdown(&self) {
        let _ = self.stream.tcp().shutdown(Shutdown::Both);
    }
}

impl WsClient {
    /// Opens a WebSocket on `path`; panics unless the answer is 101.
    pub fn open(addr: SocketAddr, path: &str) -> WsClient {
        WsClient::open_with(addr, path, "")
    }

    /// Opens a WebSocket on `path` with extra header lines.
    pub fn open_with(addr: SocketAddr, path: &str, headers: &str) -> WsClient {
        WsClient::upgrade(connect(addr), path, headers)
    }

    /// Opens `/ws` and reads the welcome message.
    pub fn open_client(addr: SocketAddr) -> (WsClient, Value) {
        WsClient::open_client_at(addr, "/ws", "")
    }

    /// Opens `/ws` with a query and headers, and reads the welcome message.
    pub fn open_client_at(addr: SocketAddr, path: &str, headers: &str) -> (WsClient, Value) {
        let mut client = WsClient::open_with(addr, path, headers);
        let welcome = client.read_frame().json();
        assert_eq!(welcome["op"], "welcome");
        (client, welcome)
    }
}

/// Parses one unmasked server frame from the start of `buf`.
pub fn parse_server_frame(buf: &[u8]) -> Option<(Frame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    assert_eq!(buf[1] & 0x80, 0, "server frames are never masked");
    let (len, header) = match buf[1] & 0x7F {
        126 => (u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize, 4),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().unwrap()) as usize, 10),
        n => (n as usize, 2),
    };
    let payload = buf.get(header..header + len)?.to_vec();
    Some((Frame { fin: buf[0] & 0x80 != 0, opcode: buf[0] & 0x0F, payload }, header + len))
}

/// Polls `check` until it holds or the deadline passes.
pub fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The shard a client lives on, from its client id (`node-shard-key-generation`).
pub fn shard_of(welcome: &Value) -> usize {
    welcome["client"].as_str().unwrap().split('-').nth(1).unwrap().parse().unwrap()
}

/// Opens `/ws` clients until there is one on each of `shards` shards.
pub fn one_client_per_shard(
    server: &TestServer,
    shards: usize,
    path: &str,
) -> Vec<(WsClient, Value)> {
    let mut found: HashMap<usize, (WsClient, Value)> = HashMap::new();
    for _ in 0..500 {
        let (client, welcome) = WsClient::open_client_at(server.addr, path, "");
        found.entry(shard_of(&welcome)).or_insert((client, welcome));
        if found.len() == shards {
            let mut clients: Vec<_> = found.into_iter().collect();
            clients.sort_by_key(|(shard, _)| *shard);
            return clients.into_iter().map(|(_, client)| client).collect();
        }
    }
    panic!("the kernel never put a connection on some shard");
}

/// A value of the server's `/metrics`: the number after `line_start` (a
/// metric's name and labels, and the space).
pub fn metric(addr: SocketAddr, line_start: &str) -> f64 {
    let body = request(addr, "GET /metrics HTTP/1.1\r\n\r\n").body;
    body.lines()
        .find_map(|line| line.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in\n{body}"))
}

/// The `field` of every object in a JSON list (a presence list's users or
/// clients), sorted.
pub fn sorted_field(list: &Value, field: &str) -> Vec<String> {
    let mut values: Vec<String> = list
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|item| {
            item[field].as_str().unwrap_or_else(|| panic!("no {field} in {item}")).to_string()
        })
        .collect();
    values.sort();
    values
}
