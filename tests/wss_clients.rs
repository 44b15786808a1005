//! Other WebSocket clients over wss://, each trusting only the test CA: Python's `websockets` and Node's `ws` subscribe on herald's TLS listener and receive a publication.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::certs::{CertFiles, TestCa};
use common::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, channel};

/// A client process that prints one JSON line per message.
struct ClientProcess {
    child: Child,
    lines: Receiver<String>,
}

impl ClientProcess {
    fn spawn(command: &mut Command) -> ClientProcess {
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
        ClientProcess { child, lines }
    }

    fn next(&self) -> Value {
        let line = self.lines.recv_timeout(DEADLINE * 2).expect("a line from the client");
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

/// A server with a TLS listener, the CA's certificate in a file, and the
/// wss:// URL of `/ws` (by name: the certificate is for localhost).
fn server(name: &str) -> (TestServer, CertFiles, String) {
    let ca = TestCa::new();
    let files = CertFiles::new(name, &ca.issue());
    std::fs::write(files.path("ca.pem"), ca.pem()).unwrap();
    let tls = herald::tls::Tls::load(&files.cert, &files.key).unwrap();
    let server = start_server(2, |config| {
        config.listen_tls = Some("127.0.0.1:0".parse().unwrap());
        config.tls = Some(Arc::new(tls));
    });
    let port = server.handle.tls_addr().unwrap().port();
    (server, files, format!("wss://localhost:{port}/ws"))
}

/// Subscribed, receives a publication, over TLS.
fn subscribes_and_receives(server: &TestServer, client: &ClientProcess, channel: &str) -> Value {
    let open = client.next();
    assert_eq!(open["open"], true);
    assert_eq!(client.next()["op"], "welcome");
    let reply = client.next();
    assert_eq!((reply["op"].as_str(), reply["id"].as_u64()), (Some("subscribed"), Some(1)));
    server.publish(channel, json!({"over": "wss"}));
    let message = client.next();
    assert_eq!(message["op"], "message");
    assert_eq!(message["data"], json!({"over": "wss"}));
    open
}

#[test]
fn python_websockets_over_wss() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("target/pyenv/bin/python");
    assert!(
        python.exists(),
        "no Python environment with websockets: python3 -m venv target/pyenv && \
         target/pyenv/bin/pip install -r tests/python/requirements.txt (./.ci/run does)"
    );
    let (server, files, url) = server("python");
    let client = ClientProcess::spawn(
        Command::new(python)
            .arg(root.join("tests/python/wss_client.py"))
            .arg(&url)
            .arg(files.path("ca.pem"))
            .arg("news"),
    );
    let open = subscribes_and_receives(&server, &client, "news");
    assert_eq!(open["protocol"], "TLSv1.3");
}

#[test]
fn node_ws_over_wss() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(
        root.join("tests/browser/node_modules/ws").exists(),
        "ws is not installed: run `npm ci --prefix tests/browser` (./.ci/run does)"
    );
    let (server, files, url) = server("node");
    let client = ClientProcess::spawn(
        Command::new("node")
            .arg(root.join("tests/browser/wss.mjs"))
            .arg(&url)
            .arg(files.path("ca.pem"))
            .arg("news"),
    );
    let open = subscribes_and_receives(&server, &client, "news");
    assert_eq!(open["protocol"], "TLSv1.3");
    assert_eq!(open["alpn"], false, "ws offers no ALPN; herald serves it anyway");
}
