//! permessage-deflate with real clients: Python's `websockets`, Node's `ws` and headless Chromium each negotiate it, send compressed messages and receive compressed publications and echoes, as a tap between them and herald sees on the wire; over wss:// too; a zip bomb is closed 1009; Safari 15.0-15.3 and `compression = false` get no extension.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::certs::{CertFiles, TestCa};
use common::client_process::ClientProcess;
use common::*;
use herald::testing::{compressed_client_frame, deflate};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

/// What herald answers every offer it accepts.
const AGREED: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// One WebSocket frame as the tap saw it.
#[derive(Debug, Clone, Copy)]
struct Seen {
    rsv1: bool,
    opcode: u8,
    len: usize,
}

/// What went over one tapped connection.
#[derive(Debug, Default, Clone)]
struct Tapped {
    /// The request's first line.
    request: String,
    /// The client's `Sec-WebSocket-Extensions` (its offer).
    offer: Option<String>,
    /// herald's `Sec-WebSocket-Extensions`, if it sent one.
    extensions: Option<String>,
    from_client: Vec<Seen>,
    from_server: Vec<Seen>,
}

/// A TCP proxy in front of herald that reads what passes: each
/// connection's request line, herald's answer and the frames either way.
struct Tap {
    addr: SocketAddr,
    connections: Arc<Mutex<Vec<Tapped>>>,
}

impl Tap {
    fn start(target: SocketAddr) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let tap = Tap { addr: listener.local_addr().unwrap(), connections: Arc::default() };
        let connections = tap.connections.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(target) else { continue };
                let index = {
                    let mut all = connections.lock().unwrap();
                    all.push(Tapped::default());
                    all.len() - 1
                };
                let (upstream, downstream) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let up = connections.clone();
                std::thread::spawn(move || pipe(upstream, downstream, &up, index, true));
                let down = connections.clone();
                std::thread::spawn(move || pipe(server, client, &down, index, false));
            }
        });
        tap
    }

    /// The connections whose request line starts with `start`.
    fn connections_to(&self, start: &str) -> Vec<Tapped> {
        let all = self.connections.lock().unwrap();
        all.iter().filter(|c| c.request.starts_with(start)).cloned().collect()
    }
}

/// Copies `from` to `to`, parsing the HTTP head and then the frames.
fn pipe(
    mut from: TcpStream,
    mut to: TcpStream,
    connections: &Mutex<Vec<Tapped>>,
    index: usize,
    from_client: bool,
) {
    let mut pending = Vec::new();
    let mut head_done = false;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Recorded before it is passed on: once a client saw something,
        // the tap has it.
        record(
            &mut pending,
            &buf[..n],
            &mut head_done,
            from_client,
            &mut connections.lock().unwrap()[index],
        );
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

/// Adds `bytes` to what was read so far, and records the HTTP head and
/// the frames completed by them.
fn record(
    pending: &mut Vec<u8>,
    bytes: &[u8],
    head_done: &mut bool,
    from_client: bool,
    tapped: &mut Tapped,
) {
    pending.extend_from_slice(bytes);
    if !*head_done {
        let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else { return };
        let head = String::from_utf8_lossy(&pending[..end]).into_owned();
        pending.drain(..end + 4);
        *head_done = true;
        let extensions = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-extensions").then(|| value.trim().to_string())
        });
        if from_client {
            tapped.request = head.lines().next().unwrap_or_default().to_string();
            tapped.offer = extensions;
        } else {
            tapped.extensions = extensions;
        }
    }
    while let Some((seen, used)) = parse_frame(pending) {
        pending.drain(..used);
        if from_client { &mut tapped.from_client } else { &mut tapped.from_server }.push(seen);
    }
}

/// The first frame of `buf` once it is all there, and its length.
fn parse_frame(buf: &[u8]) -> Option<(Seen, usize)> {
    let (first, second) = (*buf.first()?, *buf.get(1)?);
    let (len, mut at) = match second & 0x7F {
        126 => (usize::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)), 4),
        127 => (usize::try_from(u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)).ok()?, 10),
        short => (usize::from(short), 2),
    };
    if second & 0x80 != 0 {
        at += 4;
    }
    let end = at + len;
    (buf.len() >= end).then_some((Seen { rsv1: first & 0x40 != 0, opcode: first & 0x0F, len }, end))
}

/// A 1 KiB JSON notification, as compressible as real ones.
fn notification() -> Value {
    let items: Vec<Value> = (0..18)
        .map(|n| json!({"id": n, "user": format!("user-{n}"), "kind": "comment", "read": false}))
        .collect();
    json!({"type": "notifications", "items": items})
}

/// The client's side of its script (see tests/python/deflate_client.py):
/// compression agreed on `/echo` and a message echoed, agreed on `/ws`,
/// subscribed, a 1 KiB publication received. Answers the echoed message's
/// length and the publication's.
fn client_side(server: &TestServer, client: &ClientProcess) -> (usize, usize) {
    assert_eq!(client.next()["extensions"], AGREED, "the client's view of the answer");
    let echoed = client.next();
    assert_eq!(echoed["echoed"], true, "{echoed}");
    let length = usize::try_from(echoed["length"].as_u64().unwrap()).unwrap();
    assert_eq!(client.next()["extensions"], AGREED);
    assert_eq!(client.next()["op"], "welcome");
    let reply = client.next();
    assert_eq!((reply["op"].as_str(), reply["id"].as_u64()), (Some("subscribed"), Some(1)));
    let data = notification();
    server.publish("news", data.clone());
    let message = client.next();
    assert_eq!(message["op"], "message");
    assert_eq!(message["data"], data);
    let plain = message.to_string().len();
    assert!(plain > 1000, "{plain}");
    (length, plain)
}

/// Drives one client through its script and checks, from the client's
/// side and on the wire, that compression was agreed and used both ways on
/// `/echo` and on `/ws`. Answers what the tap saw of `/ws`.
fn compressed_both_ways(server: &TestServer, tap: &Tap, client: &ClientProcess) -> Tapped {
    let (length, plain) = client_side(server, client);
    // /echo: a compressed message came back compressed.
    let echo = &tap.connections_to("GET /echo")[0];
    assert_eq!(echo.extensions.as_deref(), Some(AGREED));
    let sent = echo.from_client.iter().find(|f| f.opcode == 1).expect("the client's message");
    assert!(sent.rsv1 && sent.len < length / 3, "the client compressed: {sent:?} of {length}");
    let back = echo.from_server.iter().find(|f| f.opcode == 1).expect("the echo");
    assert!(back.rsv1 && back.len < length / 3, "herald compressed: {back:?} of {length}");

    // /ws: the subscribe command went compressed, the publication came so.
    let ws = &tap.connections_to("GET /ws")[0];
    assert_eq!(ws.extensions.as_deref(), Some(AGREED));
    assert!(ws.from_client.iter().any(|f| f.opcode == 1 && f.rsv1), "{:?}", ws.from_client);
    let publication = ws.from_server.last().unwrap();
    assert!(
        publication.rsv1 && publication.len < plain / 3,
        "the publication compressed: {publication:?} of {plain}"
    );
    ws.clone()
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn python_websockets_compresses_both_ways() {
    let python = root().join("target/pyenv/bin/python");
    assert!(
        python.exists(),
        "no Python environment with websockets: python3 -m venv target/pyenv && \
         target/pyenv/bin/pip install -r tests/python/requirements.txt (./.ci/run does)"
    );
    let server = start_server(2, |_| {});
    let tap = Tap::start(server.addr);
    let client = ClientProcess::spawn(
        Command::new(python)
            .arg(root().join("tests/python/deflate_client.py"))
            .arg(format!("ws://{}/echo", tap.addr))
            .arg(format!("ws://{}/ws", tap.addr))
            .arg("news"),
        DEADLINE * 3,
    );
    compressed_both_ways(&server, &tap, &client);
}

#[test]
fn python_websockets_negotiates_compression_over_wss() {
    let python = root().join("target/pyenv/bin/python");
    assert!(python.exists(), "no Python environment with websockets (./.ci/run makes it)");
    let ca = TestCa::new();
    let files = CertFiles::new("deflate", &ca.issue());
    std::fs::write(files.path("ca.pem"), ca.pem()).unwrap();
    let tls = herald::tls::Tls::load(&files.cert, &files.key).unwrap();
    let server = start_server(2, |config| {
        config.listen_tls = Some("127.0.0.1:0".parse().unwrap());
        config.tls = Some(Arc::new(tls));
    });
    let port = server.handle.tls_addr().unwrap().port();
    let client = ClientProcess::spawn(
        Command::new(python)
            .arg(root().join("tests/python/deflate_client.py"))
            .arg(format!("wss://localhost:{port}/echo"))
            .arg(format!("wss://localhost:{port}/ws"))
            .arg("news")
            .arg(files.path("ca.pem")),
        DEADLINE * 3,
    );
    // websockets compressed what it sent (it compresses every message), so
    // herald inflated it behind TLS; its answers were inflated by the client.
    client_side(&server, &client);
}

#[test]
fn node_ws_compresses_both_ways() {
    assert!(
        root().join("tests/browser/node_modules/ws").exists(),
        "ws is not installed: run `npm ci --prefix tests/browser` (./.ci/run does)"
    );
    let server = start_server(2, |_| {});
    let tap = Tap::start(server.addr);
    let client = ClientProcess::spawn(
        Command::new("node")
            .arg(root().join("tests/browser/deflate_ws.mjs"))
            .arg(format!("ws://{}/echo", tap.addr))
            .arg(format!("ws://{}/ws", tap.addr))
            .arg("news"),
        DEADLINE * 3,
    );
    compressed_both_ways(&server, &tap, &client);
}

#[test]
fn chromium_compresses_both_ways() {
    assert!(
        root().join("tests/browser/node_modules/playwright-core").exists(),
        "playwright-core is not installed: run `npm ci --prefix tests/browser` (./.ci/run does)"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or("/usr/bin/chromium".into());
    assert!(Path::new(&chromium).exists(), "no Chromium: install the Debian package `chromium`");
    let server = start_server(2, |_| {});
    let tap = Tap::start(server.addr);
    let client = ClientProcess::spawn(
        Command::new("node")
            .arg(root().join("tests/browser/deflate_chromium.mjs"))
            .arg(format!("http://{}/herald.js", tap.addr))
            .arg(format!("ws://{}/echo", tap.addr))
            .arg(format!("ws://{}/ws", tap.addr))
            .arg("news"),
        DEADLINE * 3,
    );
    let ws = compressed_both_ways(&server, &tap, &client);
    assert_eq!(ws.offer.as_deref(), Some("permessage-deflate; client_max_window_bits"));
}

#[test]
fn a_zip_bomb_is_closed_1009() {
    let server = start();
    let mut client = WsClient::open_with(
        server.local_addr(),
        "/ws",
        "Sec-WebSocket-Extensions: permessage-deflate\r\n",
    );
    assert_eq!(client.response.header("sec-websocket-extensions"), Some(AGREED));
    // About 1 KiB that inflates to 1 MiB, past /ws's 64 KiB.
    let bomb = deflate(&vec![b'a'; 1 << 20]);
    assert!(bomb.len() <= 1100, "{}", bomb.len());
    client.send_raw(&compressed_client_frame(true, 1, &bomb));
    assert_eq!(client.expect_close(), 1009);
}

#[test]
fn without_the_setting_no_offer_is_accepted() {
    let server = start_with(|config| config.compression = false);
    let client = WsClient::open_with(
        server.local_addr(),
        "/ws",
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
    );
    assert_eq!(client.response.status, 101);
    assert_eq!(client.response.header("sec-websocket-extensions"), None);
}

#[test]
fn safari_15_0_to_15_3_is_served_uncompressed() {
    let server = start();
    let safari = |version: &str| {
        format!(
            "User-Agent: Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 \
             (KHTML, like Gecko) Version/{version} Safari/605.1.15\r\n\
             Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        )
    };
    let broken = WsClient::open_with(server.local_addr(), "/ws", &safari("15.2"));
    assert_eq!(broken.response.header("sec-websocket-extensions"), None);
    let fixed = WsClient::open_with(server.local_addr(), "/ws", &safari("15.4"));
    assert_eq!(fixed.response.header("sec-websocket-extensions"), Some(AGREED));
}
