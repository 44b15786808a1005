//! Hostile and broken peers, each against a canary client that must keep getting fast answers: ping and fragment floods, slowloris at scale, readers that never read, a reconnect storm, abrupt resets. (Descriptor exhaustion: tests/process.rs.)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

mod common;

use common::*;
use serde_json::{Value, json};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A `/ws` client that must keep answering quickly whatever others do.
struct Canary {
    client: WsClient,
    worst: Duration,
}

impl Canary {
    fn open(addr: SocketAddr) -> Canary {
        Canary { client: WsClient::open_client(addr).0, worst: Duration::ZERO }
    }

    /// One ping round trip; remembers the slowest.
    fn check(&mut self) {
        let started = Instant::now();
        assert_eq!(self.client.ok(json!({"op": "ping"}))["op"], "pong");
        self.worst = self.worst.max(started.elapsed());
    }

    fn assert_fast(&self) {
        assert!(self.worst < Duration::from_millis(500), "the canary waited {:?}", self.worst);
    }
}

/// Resets the connection (RST instead of FIN) when dropped.
fn reset(stream: TcpStream) {
    socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)).unwrap();
    drop(stream);
}

#[test]
fn a_ping_flood_without_reading_the_pongs_is_closed_with_1008() {
    let server = start_server(2, |_| {});
    let mut canary = Canary::open(server.addr);
    let mut flooder = WsClient::open(server.addr, "/echo");
    let pings: Vec<u8> = (0..500).flat_map(|_| client_frame(true, 0x9, b"flood")).collect();
    // Written without reading a single pong.
    let _ = flooder.stream.write_all(&pings);
    canary.check();
    assert_eq!(flooder.expect_close(), 1008);
    canary.check();
    canary.assert_fast();
}

#[test]
fn fragment_floods_are_closed_per_connection_and_by_the_server_wide_budget() {
    let server = start_server(2, |config| config.max_incomplete_bytes = 64 * 1024);
    let mut canary = Canary::open(server.addr);
    // 50 connections at once, each a text message that never ends: one
    // byte per fragment. Each is closed at its fragment cap.
    let mut flooders: Vec<WsClient> =
        (0..50).map(|_| WsClient::open_client(server.addr).0).collect();
    for flooder in &mut flooders {
        flooder.send_raw(&client_frame(false, 0x1, b"x"));
    }
    let fragment = client_frame(false, 0x0, b"x");
    let mut refused = vec![false; flooders.len()];
    for round in 0..1100 {
        for (index, flooder) in flooders.iter_mut().enumerate() {
            refused[index] |= flooder.stream.write_all(&fragment).is_err();
        }
        if round % 200 == 0 {
            canary.check();
        }
    }
    for (index, flooder) in flooders.iter_mut().enumerate() {
        if !refused[index] {
            assert_eq!(flooder.expect_close(), 1008);
        }
    }
    canary.check();
    // The budget over all connections: unfinished 16 KiB messages fill the
    // 64 KiB budget; the connection that passes it is closed, the others
    // keep theirs.
    let mut holders: Vec<WsClient> = (0..5).map(|_| WsClient::open(server.addr, "/echo")).collect();
    for holder in holders.iter_mut().take(4) {
        holder.send_raw(&client_frame(false, 0x2, &[7u8; 15 * 1024]));
        canary.check();
    }
    holders[4].send_raw(&client_frame(false, 0x2, &[7u8; 15 * 1024]));
    assert_eq!(holders[4].expect_close(), 1008);
    assert!(metric(server.addr, "herald_incomplete_message_bytes ") >= 60.0 * 1024.0);
    // Finished messages free their share.
    for holder in holders.iter_mut().take(4) {
        holder.send_raw(&client_frame(true, 0x0, b"!"));
        assert_eq!(holder.read_frame().payload.len(), 15 * 1024 + 1);
    }
    assert_eq!(metric(server.addr, "herald_incomplete_message_bytes "), 0.0);
    canary.check();
    canary.assert_fast();
}

#[test]
fn slowloris_at_scale_is_closed_at_the_deadline_while_fresh_clients_get_in() {
    let server = start_server(2, |config| {
        config.handshake_timeout = Duration::from_millis(1500);
        config.max_pending_handshakes = 400;
    });
    let head = upgrade_request("/ws", "");
    // 500 that dribble their request head, 500 that send nothing.
    let mut dribblers: Vec<TcpStream> = (0..500).map(|_| connect(server.addr)).collect();
    let silent: Vec<TcpStream> = (0..500).map(|_| connect(server.addr)).collect();
    let started = Instant::now();
    let mut canary_checks = 0;
    let mut sent = 0;
    while started.elapsed() < Duration::from_millis(1000) {
        // One more byte every 20 ms, never the blank line that ends the head.
        if sent + 4 < head.len() {
            for stream in &mut dribblers {
                let _ = stream.write_all(&head.as_bytes()[sent..sent + 1]);
            }
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
        // A fresh client gets in, upgrades and is answered meanwhile.
        let mut canary = Canary::open(server.addr);
        canary.check();
        canary.assert_fast();
        canary_checks += 1;
    }
    assert!(canary_checks >= 3);
    // Past the deadline (or evicted to make room), every slow one is closed.
    for mut stream in dribblers.into_iter().chain(silent) {
        assert!(closed_by_server(&mut stream), "a slow client is still connected");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        metric(
            server.addr,
            "herald_connections_refused_total{reason=\"too_many_pending_handshakes\"} "
        ) > 0.0
    );
    assert!(
        metric(server.addr, "herald_connections_refused_total{reason=\"handshake_timeout\"} ")
            > 0.0
    );
}

/// The resident memory of this process, in bytes.
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: usize = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[test]
fn subscribers_that_never_read_are_closed_at_the_bound_and_memory_stays_bounded() {
    const BOUND: usize = 256 * 1024;
    let server = start_server(2, |config| {
        config.max_outbound_bytes = BOUND;
        config.max_api_body_bytes = 32 * 1024;
    });
    let mut canary = Canary::open(server.addr);
    let mut readers: Vec<WsClient> =
        (0..300).map(|_| WsClient::open_client(server.addr).0).collect();
    for reader in &mut readers {
        reader.subscribe("news");
        socket2::SockRef::from(&reader.stream).set_recv_buffer_size(4096).unwrap();
    }
    let before = rss();
    let mut api = ApiClient::new(server.addr, &server.api_key);
    let data = "x".repeat(16 * 1024);
    let closes = |addr| metric(addr, "herald_close_codes_sent_total{code=\"4008\"} ");
    let mut published = 0;
    while closes(server.addr) < 300.0 {
        assert!(published < 2000, "not all closed after {published} publications");
        for _ in 0..20 {
            assert_eq!(api.publish("news", json!(data)).status, 200);
            published += 1;
        }
        canary.check();
    }
    let growth = rss().saturating_sub(before);
    assert!(growth <= 300 * BOUND, "RSS grew {growth} bytes");
    canary.assert_fast();
    drop(readers);
}

#[test]
fn a_reconnect_storm_of_5000_clients_is_served() {
    let server = start_server(2, |_| {});
    let started = Instant::now();
    let threads: Vec<_> = (0..10)
        .map(|_| {
            let addr = server.addr;
            std::thread::spawn(move || {
                // Every client sends its upgrade at once, then reads.
                let mut streams: Vec<TcpStream> = (0..500).map(|_| connect(addr)).collect();
                for stream in &mut streams {
                    stream.write_all(upgrade_request("/ws", "").as_bytes()).unwrap();
                }
                for stream in &mut streams {
                    let response = read_response(stream, &mut Vec::new());
                    assert_eq!(response.status, 101);
                }
                streams
            })
        })
        .collect();
    let clients: Vec<Vec<TcpStream>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let took = started.elapsed();
    eprintln!("5,000 clients connected in {took:?}");
    assert!(took < Duration::from_secs(10));
    assert_eq!(clients.iter().map(Vec::len).sum::<usize>(), 5000);
    assert_eq!(server.handle.connections(), 5000);
    let mut canary = Canary::open(server.addr);
    canary.check();
    canary.assert_fast();
}

#[test]
fn abrupt_peers_leave_nothing_behind() {
    let server = start_server(2, |config| {
        config.max_outbound_bytes = 256 * 1024;
        config.max_api_body_bytes = 32 * 1024;
    });
    let mut canary = Canary::open(server.addr);
    let baseline = server.handle.connections();
    // Reset in the middle of a frame.
    let mut client = WsClient::open(server.addr, "/echo");
    let frame = client_frame(true, 0x1, &[b'a'; 1000]);
    client.stream.write_all(&frame[..500]).unwrap();
    reset(client.stream);
    // Reset with a large queued output.
    let (mut reader, _) = WsClient::open_client(server.addr);
    reader.subscribe("news");
    socket2::SockRef::from(&reader.stream).set_recv_buffer_size(4096).unwrap();
    let mut api = ApiClient::new(server.addr, &server.api_key);
    for _ in 0..10 {
        api.publish("news", json!("y".repeat(16 * 1024)));
    }
    reset(reader.stream);
    // Half-close right after the upgrade.
    let client = WsClient::open(server.addr, "/echo");
    client.stream.shutdown(Shutdown::Write).unwrap();
    let mut stream = client.stream;
    assert!(closed_by_server(&mut stream));
    // Close during the close handshake: a close frame, then gone at once.
    let mut client = WsClient::open(server.addr, "/echo");
    client.send(0x8, &1000u16.to_be_bytes());
    reset(client.stream);
    // A client that answers our close with a reset.
    let mut client = WsClient::open_client(server.addr).0;
    let mut buf = [0u8; 16];
    let _ = client.stream.read(&mut buf);
    reset(client.stream);
    canary.check();
    drop(api);
    wait_until("every broken connection is gone", || server.handle.connections() == baseline);
    canary.check();
    canary.assert_fast();
}

// Round two: holes where one peer, anonymous or with any valid token, hurt
// every other client, and limits that were weaker than documented.

/// Writes `request` over and over on one connection whose receive buffer is
/// tiny, reading none of the answers, until the server stops taking them (a
/// write that makes no progress for a second) or 64 MiB went out. Returns
/// the bytes that went out and the connection.
fn pipeline_without_reading(addr: SocketAddr, request: &[u8]) -> (usize, TcpStream) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    stream.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
    let batch = request.repeat(64);
    let mut sent = 0;
    while sent < 64 << 20 {
        match stream.write(&batch) {
            Ok(n) => sent += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => panic!("writing requests: {e}"),
        }
    }
    (sent, stream)
}

#[test]
fn http_answers_a_client_does_not_read_stop_its_requests_being_read() {
    const BOUND: usize = 64 * 1024;
    let server = start_server(2, |config| {
        config.max_outbound_bytes = BOUND;
        config.max_api_body_bytes = 16 * 1024;
    });
    let mut canary = Canary::open(server.addr);
    let publish = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: apikey {}\r\n\
         Content-Length: 30\r\n\r\n{{\"channel\":\"news\",\"data\":1234}}",
        server.api_key
    );
    let requests = [
        "GET /herald.js HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
        "GET /health HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
        "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
        publish,
    ];
    for request in &requests {
        let before = rss();
        let (sent, stream) = pipeline_without_reading(server.addr, request.as_bytes());
        let growth = rss().saturating_sub(before);
        let first_line = request.lines().next().unwrap();
        // What went out fits in the two kernels' socket buffers and the
        // server's bounded backlog; without the bound the server reads on
        // and queues answers for as long as the client writes.
        assert!(sent < 24 << 20, "{first_line}: the server took {sent} bytes of requests");
        assert!(growth < 64 << 20, "{first_line}: RSS grew {growth} bytes");
        canary.check();
        reset(stream);
    }
    canary.assert_fast();
}

#[test]
fn answers_ready_behind_a_waiting_publish_count_toward_the_bound() {
    // With a data_dir a publish waits for its commit, and the server API
    // requests pipelined behind it are carried out meanwhile; their ready
    // answers wait behind it. A client that pipelines publishes and large
    // history reads and never reads the answers must still stop being read
    // at the bound, not when 64 answers of 10 MB are queued.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("ready-answers-bound-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = start_server(1, |config| {
        config.max_outbound_bytes = 64 * 1024;
        config.data_dir = Some(dir.join("data"));
    });
    let mut canary = Canary::open(server.addr);
    let mut api = ApiClient::new(server.addr, &server.api_key);
    for _ in 0..100 {
        assert_eq!(api.publish("news", json!("h".repeat(100_000))).status, 200);
    }
    let key = &server.api_key;
    let pair = api_request(key, "POST", "/api/publish", r#"{"channel":"live","data":1234}"#)
        + &api_request(key, "GET", "/api/history?channel=news&limit=100", "");
    let before = rss();
    let (sent, stream) = pipeline_without_reading(server.addr, pair.as_bytes());
    let growth = rss().saturating_sub(before);
    assert!(sent < 24 << 20, "the server took {sent} bytes of requests");
    assert!(growth < 64 << 20, "RSS grew {growth} bytes");
    canary.check();
    reset(stream);
    canary.assert_fast();
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pipelined_requests_whose_answers_are_read_are_all_answered_in_order() {
    let server = start_server(1, |config| config.max_outbound_bytes = 64 * 1024);
    // Answers far beyond the bound, read as they come: every request is
    // answered, in order, though most wait their turn unparsed.
    let mut stream = connect(server.addr);
    let batch: String =
        (0..200).map(|n| format!("GET /herald.js?n={n} HTTP/1.1\r\nHost: x\r\n\r\n")).collect();
    let reader = {
        let mut stream = stream.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut rest = Vec::new();
            (0..200).map(|_| read_response(&mut stream, &mut rest).body.len()).collect::<Vec<_>>()
        })
    };
    stream.write_all(batch.as_bytes()).unwrap();
    let lengths = reader.join().unwrap();
    assert!(
        lengths.iter().all(|len| *len == include_bytes!("../web/herald.js").len()),
        "{lengths:?}"
    );
}

#[test]
fn the_unfinished_message_budget_counts_bytes_received_not_lengths_announced() {
    let server = start_server(2, |config| config.max_incomplete_bytes = 1 << 20);
    let mut canary = Canary::open(server.addr);
    // Sixteen connections each announce a 16 MiB - 1 binary message and
    // send nothing of it.
    let mut announcers: Vec<WsClient> =
        (0..16).map(|_| WsClient::open(server.addr, "/echo")).collect();
    for announcer in &mut announcers {
        announcer.send_raw(&[0x82, 0xFF, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0]);
    }
    canary.check();
    // An authenticated client's 3 KB command arrives in two segments.
    let (mut client, _) = WsClient::open_client(server.addr);
    let command = json!({"op": "ping", "id": 7, "pad": "p".repeat(3000)}).to_string();
    let frame = client_frame(true, 0x1, command.as_bytes());
    client.send_raw(&frame[..1500]);
    canary.check();
    client.send_raw(&frame[1500..]);
    assert_eq!(client.next_push()["op"], "pong");
    assert!(metric(server.addr, "herald_incomplete_message_bytes ") < 4096.0);
    // The announcers were not closed: what they hold is nothing.
    for announcer in &mut announcers {
        assert!(announcer.frame_within(Duration::from_millis(20)).is_none());
    }
    canary.assert_fast();
}

#[test]
fn a_message_not_completed_in_time_is_closed_with_1008_however_it_trickles() {
    let server = start_server(2, |config| {
        config.message_timeout = Duration::from_secs(1);
        config.ping_interval = Duration::from_secs(30);
    });
    let mut canary = Canary::open(server.addr);
    let frame = client_frame(true, 0x1, &[b'a'; 200]);
    // One sends half a frame and stops.
    let mut stalled = WsClient::open(server.addr, "/echo");
    stalled.send_raw(&frame[..100]);
    // Another trickles a byte at a time: each byte is traffic, but the
    // message does not make it in time.
    let mut trickler = WsClient::open_client(server.addr).0;
    let started = Instant::now();
    let mut sent = 0;
    let mut closed = None;
    while closed.is_none() && started.elapsed() < DEADLINE {
        if sent < frame.len() && trickler.stream.write_all(&frame[sent..=sent]).is_ok() {
            sent += 1;
        }
        closed = trickler.frame_within(Duration::from_millis(100)).and_then(|f| f.close_code());
    }
    assert_eq!(closed, Some(1008), "the trickler was not closed");
    assert!(sent < frame.len(), "the whole frame went out before the deadline");
    assert_eq!(stalled.expect_close(), 1008);
    canary.check();
    canary.assert_fast();
}

#[test]
fn held_polls_and_streams_whose_clients_leave_free_their_slots_at_once() {
    let server = start_server(2, |config| config.max_connections = 45);
    let held: Vec<TcpStream> = (0..40)
        .map(|n| {
            let mut stream = connect(server.addr);
            let path = if n % 2 == 0 { "/poll?channel=x&timeout=30" } else { "/sse?channel=x" };
            stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).unwrap();
            stream
        })
        .collect();
    wait_until("every poll and stream is held", || {
        metric(server.addr, "herald_connections{transport=\"poll\"} ") == 20.0
            && metric(server.addr, "herald_connections{transport=\"sse\"} ") == 20.0
    });
    // Half leave with a reset, half with an orderly close.
    for (n, stream) in held.into_iter().enumerate() {
        if n % 4 < 2 { reset(stream) } else { drop(stream) }
    }
    // Well before the polls' 30 s timeout, everyone is served again.
    let started = Instant::now();
    wait_until("the slots are free", || server.handle.connections() <= 1);
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert_eq!(request(server.addr, "GET /health HTTP/1.1\r\n\r\n").status, 200);
    assert_eq!(metric(server.addr, "herald_streams_left_total "), 40.0);
}

#[test]
fn a_client_over_its_command_rate_is_refused_then_closed_with_4029() {
    let server = start_server(2, |config| {
        config.command_rate_per_sec = 50;
        config.command_burst = 20;
    });
    // A subscriber of a presence channel must not pay for a join/leave storm.
    let (mut bystander, _) = WsClient::open_client(server.addr);
    bystander.subscribe("chat:lobby");
    let (mut flooder, _) = WsClient::open_client(server.addr);
    let mut storm = Vec::new();
    for n in 0..200 {
        let op = if n % 2 == 0 { "subscribe" } else { "unsubscribe" };
        storm.extend(client_frame(
            true,
            0x1,
            json!({"op": op, "id": n, "channel": "chat:lobby"}).to_string().as_bytes(),
        ));
    }
    let _ = flooder.stream.write_all(&storm);
    let mut refused = 0;
    let code = loop {
        let frame = flooder.try_read_frame().expect("a close before the connection ends");
        if frame.opcode == 8 {
            break frame.close_code();
        }
        if frame.opcode == 1 && frame.json()["code"] == "too_many_requests" {
            refused += 1;
        }
    };
    assert_eq!(code, Some(4029));
    assert!(refused >= 1, "no command was refused before the close");
    // The bystander heard at most the burst's joins and leaves and is open.
    assert_eq!(bystander.ok(json!({"op": "ping"}))["op"], "pong");
    assert!(metric(server.addr, "herald_commands_limited_total ") >= 21.0);
}

#[test]
fn commands_within_the_rate_are_served_and_the_bucket_refills() {
    let server = start_server(1, |config| {
        config.command_rate_per_sec = 1000;
        config.command_burst = 10;
    });
    let (mut client, _) = WsClient::open_client(server.addr);
    let burst: Vec<u8> = (0..11)
        .flat_map(|n| {
            client_frame(true, 0x1, json!({"op": "ping", "id": n}).to_string().as_bytes())
        })
        .collect();
    client.send_raw(&burst);
    let replies: Vec<Value> = (0..11).map(|_| client.next_push()).collect();
    assert!(replies[..10].iter().all(|r| r["op"] == "pong"), "{replies:?}");
    assert_eq!(replies[10]["code"], "too_many_requests");
    assert_eq!(replies[10]["id"], 10);
    // A few milliseconds later there is room again.
    wait_until("the bucket refills", || client.call(json!({"op": "ping"}))["op"] == "pong");
}

#[test]
fn no_channel_is_made_past_max_channels_and_the_limit_is_per_connection_too() {
    let server = start_server(2, |config| {
        config.max_channels = 5;
        config.max_channels_per_connection = 3;
    });
    let (mut client, _) = WsClient::open_client(server.addr);
    for n in 0..3 {
        assert_eq!(
            client.call(json!({"op": "subscribe", "channel": format!("live:{n}")}))["op"],
            "subscribed"
        );
    }
    let over = client.call(json!({"op": "subscribe", "channel": "live:3"}));
    assert_eq!(over["code"], "limit_exceeded", "{over}");
    let (mut other, _) = WsClient::open_client(server.addr);
    for n in 3..5 {
        other.subscribe(&format!("live:{n}"));
    }
    let full = other.call(json!({"op": "subscribe", "channel": "live:5"}));
    assert_eq!(full["code"], "limit_exceeded", "{full}");
    let mut api = ApiClient::new(server.addr, &server.api_key);
    let refused = api.publish("live:6", json!(1));
    assert_eq!((refused.status, error_code(&refused).as_str()), (503, "limit_exceeded"));
    // Existing channels carry on.
    assert_eq!(api.publish("live:0", json!(1)).status, 200);
    assert_eq!(client.next_push()["op"], "message");
    // A channel freed makes room for a new one.
    other.ok(json!({"op": "unsubscribe", "channel": "live:4"}));
    wait_until("room for a channel", || {
        other.call(json!({"op": "subscribe", "channel": "live:5"}))["op"] == "subscribed"
    });
}
