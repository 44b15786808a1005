//! The demo page and herald.js in a real headless Chromium: delivery, reconnect with backoff through a cut connection, and recovery of what was published meanwhile, over WebSocket and over SSE with Last-Event-ID; the page over https with wss and SSE on the TLS listener.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

mod common;

use common::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};

/// A TCP proxy in front of herald that the test can cut: every proxied
/// connection is shut down, and new ones are refused until it is restored.
struct Proxy {
    addr: SocketAddr,
    sockets: Arc<Mutex<Vec<TcpStream>>>,
    refusing: Arc<AtomicBool>,
    refused: Arc<AtomicUsize>,
    /// The first bytes the browser sent on each connection.
    requests: Arc<Mutex<Vec<String>>>,
    /// Refuse WebSocket upgrades with 403, as some corporate proxies do.
    block_websocket: Arc<AtomicBool>,
}

impl Proxy {
    fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy = Proxy {
            addr: listener.local_addr().unwrap(),
            sockets: Arc::default(),
            refusing: Arc::default(),
            refused: Arc::default(),
            requests: Arc::default(),
            block_websocket: Arc::default(),
        };
        let (sockets, refusing, refused, requests, block_websocket) = (
            proxy.sockets.clone(),
            proxy.refusing.clone(),
            proxy.refused.clone(),
            proxy.requests.clone(),
            proxy.block_websocket.clone(),
        );
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if refusing.load(Ordering::SeqCst) {
                    refused.fetch_add(1, Ordering::SeqCst);
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else { continue };
                let mut all = sockets.lock().unwrap();
                all.push(client.try_clone().unwrap());
                all.push(server.try_clone().unwrap());
                drop(all);
                let requests = requests.clone();
                let (client_read, server_write) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let block = block_websocket.load(Ordering::SeqCst);
                std::thread::spawn(move || {
                    let inspect = Inspect { requests, block_websocket: block };
                    pipe(client_read, server_write, Some(inspect));
                });
                std::thread::spawn(move || pipe(server, client, None));
            }
        });
        proxy
    }

    /// Cuts every connection and refuses new ones.
    fn cut(&self) {
        self.refusing.store(true, Ordering::SeqCst);
        for socket in self.sockets.lock().unwrap().drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.refusing.store(false, Ordering::SeqCst);
    }
}

/// What the proxy does with the first bytes a browser sends.
struct Inspect {
    requests: Arc<Mutex<Vec<String>>>,
    block_websocket: bool,
}

fn pipe(mut from: TcpStream, mut to: TcpStream, inspect: Option<Inspect>) {
    let mut buf = [0u8; 16 * 1024];
    let mut first = true;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if first && let Some(inspect) = &inspect {
            let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
            let upgrade = head.starts_with("get /ws");
            inspect.requests.lock().unwrap().push(head);
            if upgrade && inspect.block_websocket {
                let _ = from.write_all(
                    b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                break;
            }
        }
        first = false;
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

/// The Node driver of one Chromium page (tests/browser/drive.mjs).
struct Page {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Page {
    fn open(url: &str) -> Page {
        Page::open_trusting(url, None)
    }

    /// Opens `url` in a Chromium that trusts the certificate whose public
    /// key has this SHA-256 (base64), if given.
    fn open_trusting(url: &str, spki_sha256: Option<&str>) -> Page {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert!(
            root.join("tests/browser/node_modules/playwright-core").exists(),
            "playwright-core is not installed: run `npm ci --prefix tests/browser` (./.ci/run does)"
        );
        assert!(
            Path::new(&std::env::var("CHROMIUM").unwrap_or("/usr/bin/chromium".into())).exists(),
            "no Chromium: install the Debian package `chromium` (./.ci/run does)"
        );
        let mut child = Command::new("node")
            .arg(root.join("tests/browser/drive.mjs"))
            .arg(url)
            .args(spki_sha256)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node runs (install nodejs)");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let mut page = Page { child, stdin, lines };
        assert_eq!(page.answer()["ready"], true);
        page
    }

    fn answer(&mut self) -> Value {
        let line = self
            .lines
            .recv_timeout(DEADLINE * 3)
            .unwrap_or_else(|_| panic!("the browser driver did not answer"));
        let value: Value = serde_json::from_str(&line).unwrap();
        assert!(value.get("error").is_none(), "browser: {value}");
        value
    }

    fn ask(&mut self, command: &str) -> Value {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
        self.answer()
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `channel` has `count` subscribers (the page subscribed).
fn wait_subscribed(server: &TestServer, channel: &str, count: u64) {
    let mut api = ApiClient::new(server.addr, &server.api_key);
    wait_until("the page is subscribed", || {
        let channels = api.send("GET", "/api/channels", "").json();
        // Channels without subscribers are not listed.
        let listed =
            channels["channels"].as_array().unwrap().iter().find(|c| c["channel"] == channel);
        listed.map_or(0, |c| c["subscribers"].as_u64().unwrap()) == count
    });
}

fn data_of(received: &Value) -> Vec<Value> {
    received.as_array().unwrap().iter().map(|m| m["data"].clone()).collect()
}

fn offsets_of(received: &Value) -> Vec<u64> {
    received.as_array().unwrap().iter().map(|m| m["offset"].as_u64().unwrap()).collect()
}

/// A dev server (the demo page and the `demo` namespace) behind a proxy.
fn dev_server() -> (TestServer, Proxy) {
    let server = start_server(2, |config| {
        *config = herald::Config {
            listen: config.listen,
            threads: config.threads,
            ..herald::Config::dev()
        };
    });
    let proxy = Proxy::start(server.addr);
    (server, proxy)
}

#[test]
fn the_demo_page_reconnects_with_backoff_and_recovers_what_it_missed() {
    let (server, proxy) = dev_server();
    let mut page =
        Page::open(&format!("http://{}/?channel=demo:t&minDelay=200&maxDelay=800", proxy.addr));
    assert_eq!(page.ask("state connected")["transport"], "websocket");
    wait_subscribed(&server, "demo:t", 1);
    server.publish("demo:t", json!("m1"));
    assert_eq!(data_of(&page.ask("received 1")["received"]), [json!("m1")]);

    proxy.cut();
    page.ask("state disconnected");
    server.publish("demo:t", json!("m2"));
    server.publish("demo:t", json!({"n": 3}));
    // The page keeps retrying, each time after a longer delay.
    wait_until("three refused reconnects", || proxy.refused.load(Ordering::SeqCst) >= 3);
    proxy.restore();
    page.ask("reconnects 1");
    let received = page.ask("received 3")["received"].clone();
    assert_eq!(data_of(&received), [json!("m1"), json!("m2"), json!({"n": 3})]);
    assert_eq!(offsets_of(&received), [1, 2, 3]);
    // Live delivery goes on, and nothing came twice.
    server.publish("demo:t", json!("m4"));
    let received = page.ask("received 4")["received"].clone();
    assert_eq!(offsets_of(&received), [1, 2, 3, 4]);

    let states = page.ask("states")["states"].clone();
    let delays: Vec<u64> = states
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["state"] == "disconnected")
        .map(|s| s["delay"].as_u64().unwrap())
        .collect();
    assert!(delays.len() >= 3, "{states}");
    assert!(delays.iter().all(|d| *d <= 800), "capped: {delays:?}");
    // Exponential: the third wait's range (400-800 ms) is above the first's (100-200 ms).
    assert!(delays[2] > delays[0], "{delays:?}");
}

#[test]
fn an_event_source_page_recovers_with_last_event_id() {
    let (server, proxy) = dev_server();
    let mut page = Page::open(&format!("http://{}/?channel=demo:s&transport=sse", proxy.addr));
    assert_eq!(page.ask("state connected")["transport"], "sse");
    wait_subscribed(&server, "demo:s", 1);
    server.publish("demo:s", json!("s1"));
    assert_eq!(data_of(&page.ask("received 1")["received"]), [json!("s1")]);

    proxy.cut();
    wait_subscribed(&server, "demo:s", 0);
    server.publish("demo:s", json!("s2"));
    server.publish("demo:s", json!("s3"));
    proxy.restore();
    let received = page.ask("received 3")["received"].clone();
    assert_eq!(data_of(&received), [json!("s1"), json!("s2"), json!("s3")]);
    assert_eq!(offsets_of(&received), [1, 2, 3]);
    server.publish("demo:s", json!("s4"));
    assert_eq!(offsets_of(&page.ask("received 4")["received"]), [1, 2, 3, 4]);
    // The browser itself resumed the stream from the last event's id.
    let requests = proxy.requests.lock().unwrap().clone();
    assert!(
        requests.iter().any(|r| r.starts_with("get /sse?") && r.contains("\r\nlast-event-id: ")),
        "{requests:?}"
    );
}

#[test]
fn herald_js_falls_back_to_sse_where_websockets_are_blocked() {
    let (server, proxy) = dev_server();
    proxy.block_websocket.store(true, Ordering::SeqCst);
    let mut page =
        Page::open(&format!("http://{}/?channel=demo:f&minDelay=100&maxDelay=400", proxy.addr));
    assert_eq!(page.ask("state connected")["transport"], "sse");
    wait_subscribed(&server, "demo:f", 1);
    server.publish("demo:f", json!("via sse"));
    assert_eq!(data_of(&page.ask("received 1")["received"]), [json!("via sse")]);
    let requests = proxy.requests.lock().unwrap().clone();
    assert!(requests.iter().filter(|r| r.starts_with("get /ws")).count() >= 2, "{requests:?}");
}

#[test]
fn herald_js_and_its_types_are_served() {
    let (server, _proxy) = dev_server();
    let js = request(server.addr, "GET /herald.js HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(js.status, 200);
    assert_eq!(js.header("content-type"), Some("text/javascript; charset=utf-8"));
    assert!(js.body.contains("export class Herald"));
    let types = request(server.addr, "GET /herald.d.ts HTTP/1.1\r\nHost: h\r\n\r\n");
    assert!(types.body.contains("export class Herald"));
    let page = request(server.addr, "GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    assert!(page.body.contains("herald demo"));
    // Without --dev there is no demo page; herald.js is still served.
    let production = start_with(|config| config.dev = false);
    let root = request(production.local_addr(), "GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(root.status, 404);
}

#[test]
fn the_demo_page_over_https_subscribes_over_wss_and_streams_sse_over_https() {
    let ca = certs::TestCa::new();
    let issued = ca.issue();
    let files = certs::CertFiles::new("browser", &issued);
    let tls = Arc::new(herald::tls::Tls::load(&files.cert, &files.key).unwrap());
    let server = start_server(2, |config| {
        *config = herald::Config {
            listen: config.listen,
            threads: config.threads,
            listen_tls: Some("127.0.0.1:0".parse().unwrap()),
            tls: Some(tls),
            ..herald::Config::dev()
        };
    });
    let origin = format!("https://127.0.0.1:{}", server.handle.tls_addr().unwrap().port());
    let trust = Some(issued.spki_sha256.as_str());

    let mut page = Page::open_trusting(&format!("{origin}/?channel=demo:w"), trust);
    let location = page.ask("location");
    assert_eq!(location["href"], format!("{origin}/?channel=demo:w"));
    assert_eq!(location["ws"], origin.replace("https:", "wss:"));
    assert_eq!(page.ask("state connected")["transport"], "websocket");
    wait_subscribed(&server, "demo:w", 1);
    server.publish("demo:w", json!("over wss"));
    assert_eq!(data_of(&page.ask("received 1")["received"]), [json!("over wss")]);

    let mut sse = Page::open_trusting(&format!("{origin}/?channel=demo:s&transport=sse"), trust);
    assert_eq!(sse.ask("state connected")["transport"], "sse");
    wait_subscribed(&server, "demo:s", 1);
    server.publish("demo:s", json!("over https"));
    assert_eq!(data_of(&sse.ask("received 1")["received"]), [json!("over https")]);
    // Everything the pages did went over TLS: the page, herald.js, the
    // WebSocket and the stream.
    assert!(metric(server.addr, "herald_tls_handshakes_total ") >= 3.0);
}
