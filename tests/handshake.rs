//! Request heads and the WebSocket opening handshake over real sockets: every answer, every limit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::*;
use herald::config::OriginPolicy;
use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

#[test]
fn rfc_6455_accept_vector() {
    let server = start();
    let client = WsClient::open(server.local_addr(), "/echo");
    assert_eq!(
        client.response.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    assert_eq!(client.response.header("upgrade"), Some("websocket"));
    assert_eq!(client.response.header("connection"), Some("Upgrade"));
}

#[test]
fn health_answers_200() {
    let server = start();
    let response = request(server.local_addr(), "GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(response.status, 200);
    assert_eq!(response.json(), serde_json::json!({"status": "ok"}));
}

fn assert_refused(response: &Response, status: u16, code: &str) {
    assert_eq!(response.status, status, "{}{}", response.head, response.body);
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.json()["error"]["code"], code, "{}", response.body);
    assert!(response.json()["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
}

#[test]
fn unknown_paths_are_404_and_wrong_methods_405() {
    let server = start();
    let addr = server.local_addr();
    assert_refused(&request(addr, "GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n"), 404, "not_found");
    let post = request(addr, "POST /ws HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    assert_refused(&post, 405, "bad_request");
    assert_eq!(post.header("allow"), Some("GET"));
    let delete = request(addr, "DELETE /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_refused(&delete, 405, "bad_request");
}

#[test]
fn bad_handshakes_are_400() {
    let server = start();
    let addr = server.local_addr();
    let base = upgrade_request("/echo", "");
    let cases = [
        base.replace("dGhlIHNhbXBsZSBub25jZQ==", "dG9vIHNob3J0"),
        base.replace("dGhlIHNhbXBsZSBub25jZQ==", "not base64 at all!!!!!!="),
        base.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
        base.replace("Connection: Upgrade\r\n", "Connection: keep-alive\r\n"),
        base.replace("Host: 127.0.0.1\r\n", ""),
        base.replace("HTTP/1.1", "HTTP/1.0"),
        "GARBAGE\r\n\r\n".to_string(),
    ];
    for case in cases {
        assert_refused(&request(addr, &case), 400, "bad_request");
    }
}

#[test]
fn missing_upgrade_or_wrong_version_is_426() {
    let server = start();
    let addr = server.local_addr();
    let base = upgrade_request("/echo", "");
    for case in [
        base.replace("Upgrade: websocket\r\n", ""),
        base.replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8"),
        base.replace("Sec-WebSocket-Version: 13\r\n", ""),
    ] {
        let response = request(addr, &case);
        assert_refused(&response, 426, "bad_request");
        assert_eq!(response.header("sec-websocket-version"), Some("13"));
    }
}

#[test]
fn foreign_origins_are_403_and_listed_ones_pass() {
    let server = start_with(|config| {
        config.allowed_origins = OriginPolicy::parse(&["https://app.example"]).unwrap();
    });
    let addr = server.local_addr();
    let foreign = upgrade_request("/echo", "Origin: https://evil.example\r\n");
    assert_refused(&request(addr, &foreign), 403, "forbidden");
    let listed = upgrade_request("/echo", "Origin: https://app.example\r\n");
    assert_eq!(request(addr, &listed).status, 101);
    let same_origin = upgrade_request("/echo", "Origin: http://127.0.0.1\r\n");
    assert_eq!(request(addr, &same_origin).status, 101);
    assert_eq!(
        request(addr, &upgrade_request("/echo", "")).status,
        101,
        "no Origin: not a browser"
    );
}

#[test]
fn over_max_connections_is_503() {
    let server = start_with(|config| config.max_connections = 2);
    let addr = server.local_addr();
    let _first = WsClient::open(addr, "/echo");
    let _second = WsClient::open(addr, "/echo");
    let third = request(addr, &upgrade_request("/echo", ""));
    assert_refused(&third, 503, "unavailable");
    assert_eq!(third.header("retry-after"), Some("1"));
    // The refused connection does not count: closing one lets a new one in.
    drop(_first);
    wait_until("a slot to free up", || server.connections() < 2);
    assert_eq!(request(addr, &upgrade_request("/echo", "")).status, 101);
}

#[test]
fn anonymous_clients_need_allow_anonymous() {
    let server = start_with(|config| config.allow_anonymous = false);
    let response = request(server.local_addr(), &upgrade_request("/ws", ""));
    assert_refused(&response, 401, "unauthorized");
}

#[test]
fn no_echo_turns_the_echo_endpoint_off() {
    let server = start_with(|config| config.echo = false);
    assert_refused(&request(server.local_addr(), &upgrade_request("/echo", "")), 404, "not_found");
}

#[test]
fn two_hundred_headers_are_431() {
    let server = start();
    let mut head = String::from("GET /echo HTTP/1.1\r\nHost: x\r\n");
    for i in 0..200 {
        head.push_str(&format!("X-H{i}: v\r\n"));
    }
    head.push_str("\r\n");
    assert_refused(&request(server.local_addr(), &head), 431, "limit_exceeded");
}

#[test]
fn a_one_mebibyte_header_is_431_before_it_is_all_sent() {
    let server = start();
    let mut stream = connect(server.local_addr());
    // 16 KiB of a header that never ends: the server must answer without
    // waiting for the rest.
    let mut head = b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    head.resize(16 * 1024, b'a');
    stream.write_all(&head).unwrap();
    let response = read_response(&mut stream, &mut Vec::new());
    assert_eq!(response.status, 431);
    // The rest of the megabyte is not read: the server closes instead.
    let rest = vec![b'a'; (1 << 20) - head.len()];
    let mut sent = 0;
    while sent < rest.len() {
        match stream.write(&rest[sent..]) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    assert!(closed_by_server(&mut stream));
}

#[test]
fn the_same_head_split_at_every_byte_gets_the_same_answer() {
    let server = start();
    let addr = server.local_addr();
    let head = upgrade_request("/echo", "");
    let whole = request(addr, &head);
    assert_eq!(whole.status, 101);
    for split in 1..head.len() {
        let mut stream = connect(addr);
        stream.write_all(&head.as_bytes()[..split]).unwrap();
        stream.flush().unwrap();
        stream.write_all(&head.as_bytes()[split..]).unwrap();
        let response = read_response(&mut stream, &mut Vec::new());
        assert_eq!(response.head, whole.head, "split at {split}");
    }
}

#[test]
fn head_and_first_frame_in_one_write() {
    let server = start();
    let mut stream = connect(server.local_addr());
    let mut bytes = upgrade_request("/echo", "").into_bytes();
    bytes.extend(client_frame(true, 1, b"right behind the head"));
    stream.write_all(&bytes).unwrap();
    let mut rest = Vec::new();
    let response = read_response(&mut stream, &mut rest);
    assert_eq!(response.status, 101);
    let mut client = WsClient::from_parts(stream, rest, response);
    assert_eq!(client.read_frame().text(), "right behind the head");
}

#[test]
fn a_dribbled_head_is_closed_at_the_deadline() {
    let timeout = Duration::from_millis(800);
    let server = start_with(|config| config.handshake_timeout = timeout);
    // The server's deadline runs from accept, on a millisecond clock read
    // at the start of its loop turn: start counting before connecting, and
    // allow that clock's granularity.
    let started = Instant::now();
    let mut stream = connect(server.local_addr());
    let head = upgrade_request("/echo", "");
    // One byte at a time, paced: the connection is never idle for long, but
    // the head is never complete within the deadline.
    let mut closed_after = None;
    for byte in head.as_bytes().iter().take(head.len() - 1) {
        if stream.write_all(std::slice::from_ref(byte)).is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        // The read timeout paces the bytes (50 ms apart) while watching for
        // the server's close.
        stream.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut buf = [0u8; 16];
        match stream.read(&mut buf) {
            Ok(0) => {
                closed_after = Some(started.elapsed());
                break;
            }
            Ok(_) => panic!("unexpected answer to an incomplete head"),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                closed_after = Some(started.elapsed());
                break;
            }
        }
    }
    let closed_after = closed_after.expect("the server closed the connection");
    assert!(closed_after + Duration::from_millis(5) >= timeout, "closed early: {closed_after:?}");
    assert!(closed_after < timeout + Duration::from_secs(2), "closed late: {closed_after:?}");
    // Others are served meanwhile.
    assert_eq!(request(server.local_addr(), "GET /health HTTP/1.1\r\nHost: x\r\n\r\n").status, 200);
}

#[test]
fn accepted_connections_do_not_wait_for_nagle() {
    // Small frames must go out at once: TCP_NODELAY is set on the listener
    // and inherited by every accepted socket. A 200 ms Nagle/delayed-ACK
    // stall would show as a slow round trip.
    let server = start();
    let mut client = WsClient::open(server.local_addr(), "/echo");
    let started = Instant::now();
    for _ in 0..20 {
        client.send_text("x");
        client.send_text("y");
        assert_eq!(client.read_frame().text(), "x");
        assert_eq!(client.read_frame().text(), "y");
    }
    assert!(started.elapsed() < Duration::from_millis(500), "{:?}", started.elapsed());
}
