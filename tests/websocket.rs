//! WebSocket connections over real sockets: echo, the /ws welcome and commands, close codes, heartbeats.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::*;
use std::time::{Duration, Instant};

#[test]
fn echo_returns_text_and_binary_messages() {
    let server = start();
    let mut client = WsClient::open(server.local_addr(), "/echo");
    client.send_text("hello");
    assert_eq!(client.read_frame(), Frame { fin: true, opcode: 1, payload: b"hello".to_vec() });
    client.send(2, &[0, 1, 2, 255]);
    assert_eq!(client.read_frame(), Frame { fin: true, opcode: 2, payload: vec![0, 1, 2, 255] });
    let big: Vec<u8> = (0..(3 << 20)).map(|i| (i % 251) as u8).collect();
    client.send(2, &big);
    assert_eq!(client.read_frame().payload, big);
    client.send(8, &1000u16.to_be_bytes());
    assert_eq!(client.expect_close(), 1000);
    assert!(closed_by_server(&mut client.stream));
}

#[test]
fn fragmented_messages_are_reassembled() {
    let server = start();
    let mut client = WsClient::open(server.local_addr(), "/echo");
    client.send_raw(&client_frame(false, 1, b"frag"));
    client.send_raw(&client_frame(true, 9, b"ping in between"));
    client.send_raw(&client_frame(false, 0, b"men"));
    client.send_raw(&client_frame(true, 0, b"ted"));
    assert_eq!(
        client.read_frame(),
        Frame { fin: true, opcode: 10, payload: b"ping in between".to_vec() }
    );
    assert_eq!(client.read_frame().text(), "fragmented");
}

#[test]
fn an_unmasked_frame_closes_with_1002() {
    let server = start();
    let mut client = WsClient::open(server.local_addr(), "/echo");
    client.send_raw(b"\x81\x05hello");
    assert_eq!(client.expect_close(), 1002);
    assert!(closed_by_server(&mut client.stream));
}

#[test]
fn invalid_utf8_closes_with_1007() {
    let server = start();
    let mut client = WsClient::open(server.local_addr(), "/echo");
    client.send(1, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80");
    assert_eq!(client.expect_close(), 1007);
}

#[test]
fn invalid_utf8_is_caught_before_the_frame_ends() {
    let server = start();
    let mut client = WsClient::open(server.local_addr(), "/echo");
    // A 1 KiB text frame whose 3rd byte is invalid; only its 8-byte header
    // and first 3 payload bytes are ever sent.
    let mut payload = b"ok\xff".to_vec();
    payload.resize(1024, b'a');
    let frame = client_frame(true, 1, &payload);
    client.send_raw(&frame[..11]);
    assert_eq!(client.expect_close(), 1007);
}

#[test]
fn an_oversized_message_closes_with_1009() {
    let server = start_with(|config| config.max_message_bytes = 64 * 1024);
    let (mut client, _) = WsClient::open_client(server.local_addr());
    // Only the header of a 64 KiB + 1 frame: refused from its length.
    let frame = client_frame(true, 1, &vec![b' '; 64 * 1024 + 1]);
    client.send_raw(&frame[..14]);
    assert_eq!(client.expect_close(), 1009);
    // The same limit applies across fragments.
    let (mut client, _) = WsClient::open_client(server.local_addr());
    client.send_raw(&client_frame(false, 1, &vec![b' '; 40 * 1024]));
    client.send_raw(&client_frame(true, 0, &vec![b' '; 40 * 1024]));
    assert_eq!(client.expect_close(), 1009);
}

#[test]
fn binary_frames_on_ws_close_with_1003() {
    let server = start();
    let (mut client, _) = WsClient::open_client(server.local_addr());
    client.send(2, b"\x00\x01");
    assert_eq!(client.expect_close(), 1003);
}

#[test]
fn ws_welcomes_then_answers_commands_and_survives_bad_ones() {
    let server = start();
    let (mut client, welcome) = WsClient::open_client(server.local_addr());
    assert_eq!(welcome["user"], "");
    assert_eq!(welcome["ping_interval"], 25);
    let id = welcome["client"].as_str().unwrap().to_string();
    let (_, other) = WsClient::open_client(server.local_addr());
    assert_ne!(other["client"].as_str().unwrap(), id, "client ids are unique");

    client.send_text(r#"{"op":"ping","id":6}"#);
    assert_eq!(client.read_frame().json(), serde_json::json!({"op": "pong", "id": 6}));
    client.send_text("this is not json");
    let error = client.read_frame().json();
    assert_eq!(error["op"], "error");
    assert_eq!(error["code"], "bad_request");
    client.send_text(r#"{"op":"teleport","id":7}"#);
    let error = client.read_frame().json();
    assert_eq!((error["id"].as_u64(), error["code"].as_str()), (Some(7), Some("bad_request")));
    client.send_text(r#"{"op":"ping","id":8}"#);
    assert_eq!(client.read_frame().json()["id"], 8, "still open after bad commands");
}

#[test]
fn a_quiet_client_is_pinged_and_a_silent_one_closed_with_1008() {
    let interval = Duration::from_millis(300);
    let server = start_with(|config| config.ping_interval = interval);
    let mut client = WsClient::open(server.local_addr(), "/echo");
    let opened = Instant::now();
    let ping = client.read_frame();
    assert_eq!(ping.opcode, 9, "a heartbeat ping");
    assert!(opened.elapsed() >= interval - Duration::from_millis(20));
    // Not answering: closed two intervals after the last byte it sent.
    assert_eq!(client.expect_close(), 1008);
    let closed = opened.elapsed();
    assert!(closed >= 2 * interval - Duration::from_millis(20), "{closed:?}");
    assert!(closed < 2 * interval + Duration::from_secs(1), "{closed:?}");
}

#[test]
fn a_client_that_answers_pings_stays_open() {
    let interval = Duration::from_millis(200);
    let server = start_with(|config| config.ping_interval = interval);
    let mut client = WsClient::open(server.local_addr(), "/echo");
    let started = Instant::now();
    let mut pings = 0;
    while started.elapsed() < 6 * interval {
        let frame = client.read_frame();
        assert_eq!(frame.opcode, 9, "only pings, no close: {frame:?}");
        pings += 1;
        client.send(10, &frame.payload);
    }
    assert!(pings >= 4, "pinged every interval: {pings}");
}
