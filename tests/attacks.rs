//! Hostile and broken peers, each against a canary client that must keep getting fast answers: ping and fragment floods, slowloris at scale, readers that never read, a reconnect storm, abrupt resets. (Descriptor exhaustion: tests/process.rs.)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

mod common;

use common::*;
use serde_json::json;
use std::io::{Read, Write};
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
