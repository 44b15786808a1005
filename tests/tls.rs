//! wss:// and https:// on the TLS listener beside the plain one: WebSocket, SSE and the server API over TLS, certificate reload for new connections while old ones go on, the handshake deadline and the pending-handshake cap for TLS, garbage and refused handshakes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

mod common;

use common::certs::*;
use common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A channel-test server with a TLS listener serving `files`.
fn tls_server(
    files: &CertFiles,
    adjust: impl FnOnce(&mut herald::Config),
) -> (TestServer, SocketAddr) {
    let tls = herald::tls::Tls::load(&files.cert, &files.key).unwrap();
    let server = start_server(2, |config| {
        config.listen_tls = Some("127.0.0.1:0".parse().unwrap());
        config.tls = Some(Arc::new(tls));
        adjust(config);
    });
    let tls_addr = server.handle.tls_addr().expect("a TLS listener");
    (server, tls_addr)
}

/// `GET target` over a new TLS connection.
fn get_tls(addr: SocketAddr, ca: &TestCa, target: &str) -> Response {
    let mut stream = connect_tls(addr, &ca.client_config());
    write!(stream, "GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    read_response(&mut stream, &mut Vec::new())
}

#[test]
fn wss_sse_and_the_api_work_over_tls_beside_the_plain_listener() {
    let ca = TestCa::new();
    let files = CertFiles::new("beside", &ca.issue());
    let (server, tls_addr) = tls_server(&files, |_| {});
    assert_ne!(tls_addr, server.addr);

    // A WebSocket over TLS gets a publication made over the plain API.
    let stream = connect_tls(tls_addr, &ca.client_config());
    assert_eq!(stream.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let token = server.token("alice", &[]);
    let (mut client, welcome) = WsClient::upgrade_client(stream, &format!("/ws?token={token}"));
    assert_eq!(welcome["user"], "alice");
    client.subscribe("news");

    // An SSE stream over TLS.
    let mut sse = connect_tls(tls_addr, &ca.client_config());
    write!(sse, "GET /sse?channel=news&token={token} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut sse_buf = Vec::new();
    let head = read_response_head(&mut sse, &mut sse_buf);
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    read_until(&mut sse, &mut sse_buf, b"event: subscribed");

    server.publish("news", json!({"title": "over tls"}));
    let push = client.next_push();
    assert_eq!(push["op"], "message");
    assert_eq!(push["data"], json!({"title": "over tls"}));
    read_until(&mut sse, &mut sse_buf, br#"{"title":"over tls"}"#);

    // The server API over TLS, keep-alive.
    let mut api = connect_tls(tls_addr, &ca.client_config());
    let mut rest = Vec::new();
    for n in 1..=3 {
        let body = json!({"channel": "news", "data": n}).to_string();
        write!(
            api,
            "POST /api/publish HTTP/1.1\r\nHost: localhost\r\nAuthorization: apikey {}\r\n\
             Content-Length: {}\r\n\r\n{body}",
            server.api_key,
            body.len()
        )
        .unwrap();
        let response = read_response(&mut api, &mut rest);
        assert_eq!(response.status, 200, "{}", response.body);
        assert_eq!(client.next_push()["data"], n);
    }

    // The plain listener is unchanged.
    let plain = request(server.addr, "GET /health HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(plain.status, 200);
    assert_eq!(get_tls(tls_addr, &ca, "/health").body, r#"{"status":"ok"}"#);
    assert!(metric(server.addr, "herald_tls_handshakes_total ") >= 4.0);
    let expiry = metric(server.addr, "herald_tls_certificate_expiry_seconds ");
    assert_eq!(expiry, 4_070_908_800.0, "2099-01-01");
}

#[test]
fn tls_1_2_and_1_3_are_served_and_a_client_without_http_1_1_is_refused() {
    let ca = TestCa::new();
    let files = CertFiles::new("versions", &ca.issue());
    let (server, tls_addr) = tls_server(&files, |_| {});
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let config = ca.client_config_with(&[version], &[b"http/1.1"]);
        let stream = connect_tls(tls_addr, &config);
        assert_eq!(stream.conn.protocol_version(), Some(version.version));
        let mut client = WsClient::upgrade(stream, "/echo", "");
        client.send_text("hello");
        assert_eq!(client.read_frame().text(), "hello");
    }
    // A client that offers ALPN without http/1.1 (HTTP/2 only) is refused
    // in the handshake; one that offers no ALPN at all is served.
    let h2_only = ca.client_config_with(rustls::ALL_VERSIONS, &[b"h2"]);
    assert!(try_connect_tls(tls_addr, &h2_only).is_err());
    let no_alpn = ca.client_config_with(rustls::ALL_VERSIONS, &[]);
    let stream = connect_tls(tls_addr, &no_alpn);
    assert_eq!(stream.conn.alpn_protocol(), None);
    assert!(
        metric(server.addr, "herald_connections_refused_total{reason=\"tls_handshake\"} ") >= 1.0
    );
}

#[test]
fn a_reload_serves_the_new_certificate_to_new_connections_while_old_ones_go_on() {
    let ca = TestCa::new();
    let first = ca.issue();
    let files = CertFiles::new("reload", &first);
    let (server, tls_addr) = tls_server(&files, |_| {});
    let stream = connect_tls(tls_addr, &ca.client_config());
    assert_eq!(served_certificate(&stream), first.der);
    let (mut old, _) = WsClient::upgrade_client(stream, "/ws");
    old.subscribe("news");

    let second = ca.issue_valid((2021, 1, 1), (2098, 1, 1));
    files.replace(&second);
    let reloaded = server.handle.reload_tls().unwrap().unwrap();
    assert_eq!(herald::tls::format_utc(reloaded.not_after), "2098-01-01 00:00:00 UTC");
    let fresh = connect_tls(tls_addr, &ca.client_config());
    assert_eq!(served_certificate(&fresh), second.der, "a new connection gets the new pair");
    server.publish("news", json!("after the reload"));
    assert_eq!(old.next_push()["data"], "after the reload", "an old connection goes on");

    // A bad pair (a key of another certificate) is refused; the served one
    // stays.
    let third = ca.issue();
    std::fs::write(&files.key, &third.key).unwrap();
    let error = server.handle.reload_tls().unwrap_err();
    assert!(error.to_string().contains("do not match"), "{error}");
    let after = connect_tls(tls_addr, &ca.client_config());
    assert_eq!(served_certificate(&after), second.der);
    assert_eq!(metric(server.addr, "herald_tls_reloads_total{result=\"ok\"} "), 1.0);
    assert_eq!(metric(server.addr, "herald_tls_reloads_total{result=\"refused\"} "), 1.0);
    // Without TLS there is nothing to reload.
    assert!(start().reload_tls().unwrap().is_none());
}

#[test]
fn a_connection_that_never_finishes_its_tls_handshake_is_closed_at_the_deadline() {
    let ca = TestCa::new();
    let files = CertFiles::new("stall", &ca.issue());
    let (server, tls_addr) = tls_server(&files, |config| {
        config.handshake_timeout = Duration::from_millis(500);
    });
    // Half a ClientHello, then nothing.
    let config = ca.client_config();
    let mut client =
        rustls::ClientConnection::new(config, "localhost".try_into().unwrap()).unwrap();
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    let started = Instant::now();
    let mut stalled = connect(tls_addr);
    stalled.write_all(&hello[..hello.len() / 2]).unwrap();
    let mut silent = connect(tls_addr);
    assert!(closed_by_server(&mut stalled));
    assert!(closed_by_server(&mut silent));
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(490), "closed after {waited:?}");
    assert!(waited < Duration::from_secs(5), "closed after {waited:?}");
    wait_until("both counted as handshake timeouts", || {
        metric(server.addr, "herald_connections_refused_total{reason=\"handshake_timeout\"} ")
            >= 2.0
    });
}

#[test]
fn unfinished_tls_handshakes_count_toward_max_pending_handshakes() {
    let ca = TestCa::new();
    let files = CertFiles::new("pending", &ca.issue());
    let (server, tls_addr) = tls_server(&files, |config| {
        config.threads = 1;
        config.max_pending_handshakes = 4;
    });
    let mut silent: Vec<_> = (0..4).map(|_| connect(tls_addr)).collect();
    wait_until("four connections open", || server.handle.connections() == 4);
    // A fifth (plain or TLS) closes the one waiting longest.
    let fresh = connect_tls(tls_addr, &ca.client_config());
    assert!(closed_by_server(&mut silent[0]));
    let mut client = WsClient::upgrade(fresh, "/echo", "");
    client.send_text("still served");
    assert_eq!(client.read_frame().text(), "still served");
    assert!(
        metric(
            server.addr,
            "herald_connections_refused_total{reason=\"too_many_pending_handshakes\"} "
        ) >= 1.0
    );
}

#[test]
fn bytes_that_are_not_tls_get_an_alert_and_a_close_and_harm_nothing() {
    let ca = TestCa::new();
    let files = CertFiles::new("garbage", &ca.issue());
    let (server, tls_addr) = tls_server(&files, |_| {});
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"[..],
        b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00",
        b"\x16\x03\x01\xff\xff",
        b"\x15\x03\x03\x00\x02\x02\x28",
        &[0u8; 4096],
    ] {
        let mut stream = connect(tls_addr);
        stream.write_all(garbage).unwrap();
        let mut answer = Vec::new();
        let deadline = Instant::now() + DEADLINE;
        loop {
            assert!(Instant::now() < deadline, "not closed");
            let mut buf = [0u8; 256];
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
        // A TLS alert record at most.
        assert!(answer.is_empty() || (answer[0] == 0x15 && answer.len() <= 7), "{answer:?}");
    }
    // The server is unharmed.
    let mut client = WsClient::upgrade(connect_tls(tls_addr, &ca.client_config()), "/echo", "");
    client.send_text("fine");
    assert_eq!(client.read_frame().text(), "fine");
    assert!(
        metric(server.addr, "herald_connections_refused_total{reason=\"tls_handshake\"} ") >= 4.0
    );
}

#[test]
fn a_large_echo_over_tls_comes_back_whole() {
    let ca = TestCa::new();
    let files = CertFiles::new("large", &ca.issue());
    let (_server, tls_addr) = tls_server(&files, |_| {});
    let mut client = WsClient::upgrade(connect_tls(tls_addr, &ca.client_config()), "/echo", "");
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    client.send(2, &payload);
    let frame = client.read_frame();
    assert_eq!(frame.opcode, 2);
    assert!(frame.payload == payload, "the payload came back changed");
    client.send(8, &1000u16.to_be_bytes());
    assert_eq!(client.expect_close(), 1000);
}

/// Reads an HTTP response head (no body) into a string; the rest stays in
/// `buf`.
fn read_response_head(stream: &mut impl Read, buf: &mut Vec<u8>) -> String {
    read_until(stream, buf, b"\r\n\r\n");
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    String::from_utf8(buf.drain(..end).collect()).unwrap()
}

/// Reads until `needle` is in `buf`.
fn read_until(stream: &mut impl Read, buf: &mut Vec<u8>, needle: &[u8]) {
    let deadline = Instant::now() + DEADLINE;
    while !buf.windows(needle.len()).any(|w| w == needle) {
        assert!(Instant::now() < deadline, "no {:?}", String::from_utf8_lossy(needle));
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before {:?}", String::from_utf8_lossy(needle));
        buf.extend_from_slice(&chunk[..n]);
    }
}
