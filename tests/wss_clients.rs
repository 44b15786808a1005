//! Other WebSocket clients over wss://, each trusting only the test CA: Python's `websockets` and Node's `ws` subscribe on herald's TLS listener and receive a publication.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::certs::{CertFiles, TestCa};
use common::client_process::ClientProcess;
use common::*;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

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
        DEADLINE * 2,
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
        DEADLINE * 2,
    );
    let open = subscribes_and_receives(&server, &client, "news");
    assert_eq!(open["protocol"], "TLSv1.3");
    assert_eq!(open["alpn"], false, "ws offers no ALPN; herald serves it anyway");
}
