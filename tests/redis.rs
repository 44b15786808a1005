//! The Redis engine with real `redis-server`s and two herald nodes: cross-node delivery in order, consecutive offsets from concurrent publishers on both nodes, recovery on the other node, and Redis going away and coming back.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

mod common;

use common::pusher::*;
use common::redis::*;
use common::*;
use herald::config::Engine;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[test]
fn publications_on_one_node_reach_subscribers_on_the_other_in_order() {
    let redis = Redis::start();
    let (a, b) = (engine_node(&redis.url(), "t1"), engine_node(&redis.url(), "t1"));
    wait_engine_up(&a);
    wait_engine_up(&b);
    let (mut client, _) = WsClient::open_client(a.addr);
    let reply = client.subscribe("news");
    assert_eq!(reply["op"], "subscribed", "{reply}");
    let mut api = ApiClient::new(b.addr, &b.api_key);
    for n in 1..=100 {
        let answer = api.publish("news", json!(n));
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.json()["offset"], n);
    }
    for n in 1..=100 {
        let push = client.next_push();
        assert_eq!((push["offset"].as_u64(), push["data"].as_u64()), (Some(n), Some(n)));
    }
    // The API's history reads Redis, whichever node answers.
    let history =
        ApiClient::new(a.addr, &a.api_key).send("GET", "/api/history?channel=news&limit=3", "");
    assert_eq!(history.status, 200, "{}", history.body);
    assert_eq!(history.json()["publications"].as_array().unwrap().len(), 3);
    assert_eq!(history.json()["offset"], 100);
}

#[test]
fn concurrent_publishers_on_both_nodes_get_consecutive_offsets() {
    let redis = Redis::start();
    let (a, b) = (engine_node(&redis.url(), "t2"), engine_node(&redis.url(), "t2"));
    wait_engine_up(&a);
    wait_engine_up(&b);
    let (mut client, _) = WsClient::open_client(b.addr);
    client.subscribe("news");
    let publishers: Vec<_> = [(a.addr, a.api_key.clone(), "a"), (b.addr, b.api_key.clone(), "b")]
        .into_iter()
        .map(|(addr, key, name)| {
            std::thread::spawn(move || {
                let mut api = ApiClient::new(addr, &key);
                (0..200)
                    .map(|n| {
                        let answer = api.publish("news", json!(format!("{name}{n}")));
                        assert_eq!(answer.status, 200, "{}", answer.body);
                        answer.json()["offset"].as_u64().unwrap()
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut offsets: Vec<u64> = Vec::new();
    for publisher in publishers {
        let own = publisher.join().unwrap();
        assert!(own.windows(2).all(|w| w[0] < w[1]), "each publisher's order is kept");
        offsets.extend(own);
    }
    offsets.sort_unstable();
    assert_eq!(offsets, (1..=400).collect::<Vec<u64>>());
    let received: Vec<u64> =
        (0..400).map(|_| client.next_push()["offset"].as_u64().unwrap()).collect();
    assert_eq!(received, (1..=400).collect::<Vec<u64>>());
}

#[test]
fn pipelined_publishes_on_one_connection_are_answered_in_order_with_consecutive_offsets() {
    // Each publish waits for Redis; those pipelined behind it are carried
    // out meanwhile, and every answer still finds its place.
    let redis = Redis::start();
    let (a, b) = (engine_node(&redis.url(), "t9"), engine_node(&redis.url(), "t9"));
    wait_engine_up(&a);
    wait_engine_up(&b);
    let (mut client, _) = WsClient::open_client(b.addr);
    assert_eq!(client.subscribe("news")["op"], "subscribed");
    let key = &a.api_key;
    let between = [
        api_request(key, "POST", "/api/publish", "{}"),
        api_request(key, "GET", "/api/history?channel=news&limit=1", ""),
    ];
    let batch = publish_batch(key, "news", 300, 150, &between);
    let mut stream = connect(a.addr);
    stream.write_all(batch.as_bytes()).unwrap();
    let mut rest = Vec::new();
    for n in 1..=300 {
        let answer = read_response(&mut stream, &mut rest);
        assert_eq!(answer.status, 200, "publish {n}: {}", answer.body);
        assert_eq!(answer.json()["offset"], n, "publish {n}");
        if n == 150 {
            assert_eq!(read_response(&mut stream, &mut rest).status, 400);
            let page = read_response(&mut stream, &mut rest).json();
            assert_eq!(page["offset"], 150, "history read after publish 150: {page}");
        }
    }
    let received: Vec<(u64, u64)> = (0..300)
        .map(|_| {
            let push = client.next_push();
            (push["offset"].as_u64().unwrap(), push["data"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(received, (1..=300).map(|n| (n, n)).collect::<Vec<_>>());
}

#[test]
fn a_client_recovers_on_the_other_node() {
    let redis = Redis::start();
    let (a, b) = (engine_node(&redis.url(), "t3"), engine_node(&redis.url(), "t3"));
    wait_engine_up(&a);
    wait_engine_up(&b);
    let (mut client, _) = WsClient::open_client(a.addr);
    let subscribed = client.subscribe("news");
    for n in 1..=3 {
        a.publish("news", json!(n));
    }
    for _ in 1..=3 {
        client.next_push();
    }
    drop(client);
    for n in 4..=6 {
        b.publish("news", json!(n));
    }
    let (mut client, _) = WsClient::open_client(b.addr);
    let reply = client.ok(json!({
        "op": "subscribe", "channel": "news",
        "since": {"epoch": subscribed["epoch"], "offset": 3}
    }));
    assert_eq!(
        (reply["recovered"].as_bool(), reply["missed"].as_u64()),
        (Some(true), Some(3)),
        "{reply}"
    );
    let data: Vec<Value> = (0..3).map(|_| client.next_push()["data"].clone()).collect();
    assert_eq!(data, [json!(4), json!(5), json!(6)]);
    a.publish("news", json!(7));
    assert_eq!(client.next_push()["offset"], 7, "live after the replay, no duplicate");
    // A position from another epoch is not recoverable.
    let (mut other, _) = WsClient::open_client(b.addr);
    let reply = other.ok(json!({
        "op": "subscribe", "channel": "news", "since": {"epoch": "00000000", "offset": 3}
    }));
    assert_eq!(reply["recovered"], false);
}

#[test]
fn redis_down_means_503_while_connections_stay_and_delivery_resumes_after() {
    let mut redis = Redis::start();
    let a = engine_node(&redis.url(), "t4");
    wait_engine_up(&a);
    let (mut subscriber, _) = WsClient::open_client(a.addr);
    subscriber.subscribe("news");
    a.publish("news", json!("before"));
    assert_eq!(subscriber.next_push()["data"], "before");

    redis.stop();
    let mut api = ApiClient::new(a.addr, &a.api_key);
    wait_until("publishing is refused with 503", || {
        let answer = api.publish("news", json!("while down"));
        answer.status == 503
    });
    let refused = api.publish("news", json!("while down"));
    assert_eq!(refused.json()["error"]["code"], "unavailable");
    assert_eq!(request(a.addr, "GET /health HTTP/1.1\r\n\r\n").json()["engine"]["state"], "down");
    // Connections stay open and answered meanwhile: no shard waits for Redis.
    let started = Instant::now();
    assert_eq!(subscriber.ok(json!({"op": "ping"}))["op"], "pong");
    assert!(started.elapsed() < Duration::from_secs(1));
    let (mut other, _) = WsClient::open_client(a.addr);
    assert_eq!(other.ok(json!({"op": "ping"}))["op"], "pong");
    let mut echo = WsClient::open(a.addr, "/echo");
    echo.send_text("still here");
    assert_eq!(echo.read_frame().text(), "still here");
    // A subscribe needs Redis: refused plainly, the connection stays.
    let refused = other.call(json!({"op": "subscribe", "channel": "other"}));
    assert_eq!(refused["code"], "unavailable", "{refused}");
    assert_eq!(other.ok(json!({"op": "ping"}))["op"], "pong");

    assert!(redis.run(), "redis restarts on its port");
    // Delivery resumes: checked with real publications, not a flag. Redis
    // lost the channel (no persistence here): the subscriber is told it
    // starts over (`recovered:false`), then gets what follows.
    let mut told = false;
    wait_until("a publication after the restart is delivered", || {
        let answer = api.publish("news", json!("after"));
        if answer.status != 200 {
            return false;
        }
        while let Some(frame) = subscriber.frame_within(Duration::from_millis(200)) {
            let push = frame.json();
            if push["op"] == "subscribed" && push["recovered"] == false {
                told = true;
            } else if push["data"] == "after" {
                return true;
            }
        }
        false
    });
    assert!(told, "the subscriber learnt that it missed publications");
}

/// Sends one command to Redis and returns its raw answer.
fn redis_command(redis: &Redis, args: &[&str]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut command = format!("*{}\r\n", args.len());
    for arg in args {
        command.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(command.as_bytes()).unwrap();
    let mut answer = [0u8; 512];
    let n = stream.read(&mut answer).unwrap();
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

#[test]
fn publications_missed_by_a_dropped_subscriber_connection_come_from_history() {
    let redis = Redis::start();
    let (a, b) = (engine_node(&redis.url(), "t5"), engine_node(&redis.url(), "t5"));
    wait_engine_up(&a);
    wait_engine_up(&b);
    let (mut client, _) = WsClient::open_client(a.addr);
    client.subscribe("news");
    b.publish("news", json!(0));
    assert_eq!(client.next_push()["offset"], 1);
    let mut api = ApiClient::new(b.addr, &b.api_key);
    // Redis drops node A's pub/sub connection; what is published until A
    // is subscribed again reaches A only through history.
    for round in 0..3 {
        assert!(redis_command(&redis, &["CLIENT", "KILL", "TYPE", "pubsub"]).starts_with(':'));
        for n in 0..20 {
            assert_eq!(api.publish("news", json!(format!("{round}-{n}"))).status, 200);
        }
    }
    let last = api.publish("news", json!("last")).json()["offset"].as_u64().unwrap();
    let received: Vec<u64> =
        (2..=last).map(|_| client.next_push()["offset"].as_u64().unwrap()).collect();
    assert_eq!(received, (2..=last).collect::<Vec<u64>>(), "in order, once, none missing");
}

#[test]
fn subscribers_hear_at_once_that_history_cannot_fill_what_their_node_missed() {
    let redis = Redis::start();
    let (a, b) = (engine_node(&redis.url(), "t10"), engine_node(&redis.url(), "t10"));
    wait_engine_up(&a);
    wait_engine_up(&b);
    // `live` keeps no history: what node A misses cannot be read back.
    let (mut client, _) = WsClient::open_client(a.addr);
    let subscribed = client.subscribe("live:x");
    b.publish("live:x", json!(0));
    assert_eq!(client.next_push()["offset"], 1);
    // Node A's pub/sub connection is dropped and may not subscribe again
    // until three publications went by.
    assert!(redis_command(&redis, &["ACL", "SETUSER", "default", "-subscribe"]).starts_with("+OK"));
    assert!(redis_command(&redis, &["CLIENT", "KILL", "TYPE", "pubsub"]).starts_with(':'));
    for n in 1..=3 {
        assert_eq!(b.publish("live:x", json!(n))["offset"], n + 1);
    }
    assert!(redis_command(&redis, &["ACL", "SETUSER", "default", "+subscribe"]).starts_with("+OK"));
    // Told once A is subscribed again, with no publication after.
    let push = client.next_push();
    assert_eq!(
        (push["op"].as_str(), push["recovered"].as_bool(), push["offset"].as_u64()),
        (Some("subscribed"), Some(false), Some(4)),
        "{push}"
    );
    assert_eq!(push["epoch"], subscribed["epoch"]);
    b.publish("live:x", json!(5));
    assert_eq!(client.next_push()["offset"], 5, "live again from there");
}

#[test]
fn after_kill_9_of_a_node_its_clients_recover_everything_acknowledged_on_the_other() {
    let redis = Redis::start();
    let a = engine_node(&redis.url(), "t6");
    wait_engine_up(&a);
    let key = "process-node-api-key-0123";
    let mut b = NodeProcess::start(&redis, "t6", key);
    wait_until("node B reaches Redis", || {
        request(b.addr, "GET /health HTTP/1.1\r\n\r\n").json()["engine"]["state"] == "up"
    });
    let (mut client, _) = WsClient::open_client(b.addr);
    let subscribed = client.subscribe("news");
    // Publishing goes on through node A the whole time.
    let (a_addr, a_key) = (a.addr, a.api_key.clone());
    let publisher = std::thread::spawn(move || {
        let mut api = ApiClient::new(a_addr, &a_key);
        (1..=300u64)
            .map(|n| {
                let answer = api.publish("news", json!(n));
                assert_eq!(answer.status, 200, "{}", answer.body);
                answer.json()["offset"].as_u64().unwrap()
            })
            .collect::<Vec<u64>>()
    });
    let mut seen: Vec<u64> =
        (0..50).map(|_| client.next_push()["offset"].as_u64().unwrap()).collect();
    b.child.kill().unwrap(); // SIGKILL: no goodbye to Redis or to clients
    b.child.wait().unwrap();
    // The client reconnects to node A from the last offset it saw.
    let (mut client, _) = WsClient::open_client(a.addr);
    let last = *seen.last().unwrap();
    let reply = client.ok(json!({
        "op": "subscribe", "channel": "news",
        "since": {"epoch": subscribed["epoch"], "offset": last}
    }));
    assert_eq!(reply["recovered"], true, "{reply}");
    let acknowledged = publisher.join().unwrap();
    let newest = *acknowledged.iter().max().unwrap();
    while seen.last() != Some(&newest) {
        seen.push(client.next_push()["offset"].as_u64().unwrap());
    }
    assert_eq!(
        seen,
        (1..=newest).collect::<Vec<u64>>(),
        "every acknowledged publication, once, in order"
    );
}

#[test]
fn presence_and_join_leave_span_the_nodes() {
    let redis = Redis::start();
    let (a, b) = (engine_node(&redis.url(), "t7"), engine_node(&redis.url(), "t7"));
    wait_engine_up(&a);
    wait_engine_up(&b);
    let token = |server: &TestServer, user: &str| server.token(user, &[]);
    let (mut alice, alice_welcome) =
        WsClient::open_client_at(a.addr, &format!("/ws?token={}", token(&a, "alice")), "");
    alice.subscribe("chat:room");
    let (mut bob, bob_welcome) =
        WsClient::open_client_at(b.addr, &format!("/ws?token={}", token(&b, "bob")), "");
    bob.subscribe("chat:room");
    // Alice, on node A, hears Bob join on node B.
    let join = alice.next_push();
    assert_eq!((join["op"].as_str(), join["user"].as_str()), (Some("join"), Some("bob")), "{join}");
    assert_eq!(join["client"], bob_welcome["client"]);
    // Presence lists both, asked on either node, over /ws or the API.
    let reply = bob.ok(json!({"op": "presence", "channel": "chat:room"}));
    assert_eq!(sorted_field(&reply["clients"], "user"), ["alice", "bob"], "{reply}");
    let answer =
        ApiClient::new(a.addr, &a.api_key).send("GET", "/api/presence?channel=chat:room", "");
    assert_eq!(answer.json()["clients"].as_array().unwrap().len(), 2, "{}", answer.body);
    // Bob leaves: Alice hears it, and presence shrinks.
    drop(bob);
    let leave = alice.next_push();
    assert_eq!(
        (leave["op"].as_str(), leave["user"].as_str()),
        (Some("leave"), Some("bob")),
        "{leave}"
    );
    let reply = alice.ok(json!({"op": "presence", "channel": "chat:room"}));
    assert_eq!(reply["clients"], json!([{"client": alice_welcome["client"], "user": "alice"}]));
}

#[test]
fn disconnect_and_unsubscribe_reach_every_node() {
    let redis = Redis::start();
    let (a, b) = (engine_node(&redis.url(), "t8"), engine_node(&redis.url(), "t8"));
    wait_engine_up(&a);
    wait_engine_up(&b);
    let open = |server: &TestServer, user: &str| {
        let token = server.token(user, &[]);
        WsClient::open_client_at(server.addr, &format!("/ws?token={token}"), "").0
    };
    let (mut on_a, mut on_b, mut bystander) = (open(&a, "42"), open(&b, "42"), open(&b, "7"));
    for client in [&mut on_a, &mut on_b, &mut bystander] {
        client.subscribe("news");
    }
    let mut api = ApiClient::new(a.addr, &a.api_key);
    let answer = api.send("POST", "/api/unsubscribe", r#"{"user":"42","channel":"news"}"#);
    assert_eq!(answer.json(), json!({"unsubscribed": 2}), "{}", answer.body);
    for client in [&mut on_a, &mut on_b] {
        let push = client.next_push();
        assert_eq!(
            (push["op"].as_str(), push["channel"].as_str()),
            (Some("unsubscribed"), Some("news"))
        );
    }
    let answer = api.send("POST", "/api/disconnect", r#"{"user":"42"}"#);
    assert_eq!(answer.json(), json!({"disconnected": 2}), "{}", answer.body);
    assert_eq!(on_a.expect_close(), 4000);
    assert_eq!(on_b.expect_close(), 4000);
    assert_eq!(bystander.ok(json!({"op": "ping"}))["op"], "pong");
}

#[test]
fn sse_and_long_poll_work_across_nodes_with_cursors() {
    let redis = Redis::start();
    let (a, b) = (engine_node(&redis.url(), "t9"), engine_node(&redis.url(), "t9"));
    wait_engine_up(&a);
    wait_engine_up(&b);
    // An SSE stream on node A gets what node B publishes.
    let mut stream = connect(a.addr);
    stream.write_all(b"GET /sse?channel=news HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
    let mut received = String::new();
    let read_until = |stream: &mut TcpStream, needle: &str, text: &mut String| {
        let deadline = Instant::now() + DEADLINE;
        while !text.contains(needle) {
            assert!(Instant::now() < deadline, "no {needle:?} in {text:?}");
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).unwrap();
            assert!(n > 0, "stream ended: {text:?}");
            text.push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    };
    read_until(&mut stream, "event: subscribed", &mut received);
    for n in 1..=3 {
        b.publish("news", json!(n));
    }
    read_until(&mut stream, r#""offset":3,"data":3"#, &mut received);
    let cursor = received
        .lines()
        .filter_map(|line| line.strip_prefix("id: "))
        .next_back()
        .unwrap()
        .to_string();
    drop(stream);
    b.publish("news", json!(4));
    // A long-poll on node B continues from the SSE cursor.
    let answer =
        request(b.addr, &format!("GET /poll?channel=news&cursor={cursor} HTTP/1.1\r\n\r\n"));
    assert_eq!(answer.status, 200, "{}", answer.body);
    let body = answer.json();
    assert_eq!(body["messages"], json!([{"channel": "news", "offset": 4, "data": 4}]), "{body}");
    // And holds until the next one, published on node A.
    let next = body["cursor"].as_str().unwrap().to_string();
    let mut held = connect(b.addr);
    held.write_all(
        format!("GET /poll?channel=news&cursor={next}&timeout=30 HTTP/1.1\r\n\r\n").as_bytes(),
    )
    .unwrap();
    wait_until("the poll is held", || {
        metric(b.addr, "herald_connections{transport=\"poll\"} ") == 1.0
    });
    a.publish("news", json!(5));
    let body = read_response(&mut held, &mut Vec::new()).json();
    assert_eq!(body["messages"][0]["offset"], 5, "{body}");
}

/// A TCP proxy in front of Redis that can be stalled: while stalled it
/// neither reads what herald sends nor passes on what Redis answers, as a
/// Redis that hangs (or a network that drops everything) would. Its
/// sockets have small buffers, so herald's writes fill them quickly.
struct Proxy {
    port: u16,
    stalled: std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
}

impl Proxy {
    fn start(target: u16) -> Proxy {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        // Accepted sockets inherit the small receive buffer.
        socket.set_recv_buffer_size(4096).unwrap();
        socket.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
        socket.listen(64).unwrap();
        let listener: std::net::TcpListener = socket.into();
        let port = listener.local_addr().unwrap().port();
        let stalled =
            std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let gate = stalled.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else { continue };
                for (from, to) in
                    [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                {
                    let gate = gate.clone();
                    std::thread::spawn(move || forward(from, to, &gate));
                }
            }
        });
        Proxy { port, stalled }
    }

    fn set_stalled(&self, stalled: bool) {
        *self.stalled.0.lock().unwrap() = stalled;
        self.stalled.1.notify_all();
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

/// Copies `from` to `to`, waiting (not reading) while the gate is closed.
fn forward(
    mut from: TcpStream,
    mut to: TcpStream,
    gate: &(std::sync::Mutex<bool>, std::sync::Condvar),
) {
    let mut buf = [0u8; 4096];
    loop {
        drop(gate.1.wait_while(gate.0.lock().unwrap(), |stalled| *stalled).unwrap());
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}

#[test]
fn a_stalled_redis_never_stalls_a_shard() {
    let redis = Redis::start();
    let proxy = Proxy::start(redis.port);
    let url = proxy.url();
    let a = start_server(2, move |config| {
        config.engine = Engine::Redis;
        config.redis_url = url;
        config.redis_prefix = "t10".into();
        config.max_channels_per_connection = 4096;
        config.command_rate_per_sec = 1_000_000;
        config.command_burst = 1_000_000;
    });
    wait_engine_up(&a);
    let (mut subscriber, _) = WsClient::open_client(a.addr);
    assert_eq!(subscriber.subscribe("news")["op"], "subscribed");
    let mut echo = WsClient::open(a.addr, "/echo");
    let (mut pinger, _) = WsClient::open_client(a.addr);
    proxy.set_stalled(true);
    // 16,000 new channels with long names: each makes the node subscribe
    // in Redis, and those writes (4.5 MB, more than the kernel buffers
    // take) pile up against the stalled connection.
    let mut subscribers: Vec<WsClient> = (0..16).map(|_| WsClient::open_client(a.addr).0).collect();
    for (n, client) in subscribers.iter_mut().enumerate() {
        let batch: Vec<u8> = (0..1000)
            .flat_map(|c| {
                let channel = format!("stall.{n:02}-{c:04}-{}", "x".repeat(230));
                client_frame(
                    true,
                    0x1,
                    json!({"op": "subscribe", "channel": channel}).to_string().as_bytes(),
                )
            })
            .collect();
        client.send_raw(&batch);
    }
    let mut api = ApiClient::new(a.addr, &a.api_key);
    api.stream.write_all(
        format!(
            "POST /api/publish HTTP/1.1\r\nAuthorization: apikey {}\r\nContent-Length: 27\r\n\r\n{{\"channel\":\"news\",\"data\":1}}",
            a.api_key
        )
        .as_bytes(),
    ).unwrap();
    // Once the shards have taken the subscribes (the engine queues them),
    // everything that needs no Redis is answered at once on both shards,
    // for two seconds of the stall.
    wait_until("the subscribes are taken", || metric(a.addr, "herald_channels ") > 16_000.0);
    let started = Instant::now();
    let mut worst = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(2) {
        let round = Instant::now();
        echo.send_text("still here");
        assert_eq!(echo.read_frame().text(), "still here");
        assert_eq!(pinger.ok(json!({"op": "ping"}))["op"], "pong");
        assert_eq!(request(a.addr, "GET /health HTTP/1.1\r\n\r\n").status, 200);
        assert!(metric(a.addr, "herald_connections{transport=\"websocket\"} ") >= 6.0);
        assert_eq!(request(a.addr, "GET /herald.js HTTP/1.1\r\n\r\n").status, 200);
        worst = worst.max(round.elapsed());
    }
    assert!(worst < Duration::from_millis(100), "a round took {worst:?}");
    // Their clients leave while Redis is stalled; Redis comes back: the
    // queued work is carried out or refused, and the node serves as before.
    drop(subscribers);
    wait_until("the subscribers are gone", || metric(a.addr, "herald_channels ") < 10.0);
    proxy.set_stalled(false);
    let answer = read_response(&mut api.stream, &mut api.rest);
    assert!(matches!(answer.status, 200 | 503), "{}", answer.body);
    let (mut late, _) = WsClient::open_client(a.addr);
    wait_until("a subscribe is served again", || {
        late.call(json!({"op": "subscribe", "channel": "after-the-stall"}))["op"] == "subscribed"
    });
    assert_eq!(a.publish("news", json!("after"))["offset"].as_u64().map(|o| o >= 1), Some(true));
    wait_until("the first subscriber gets what follows", || {
        subscriber
            .frame_within(Duration::from_millis(100))
            .is_some_and(|f| f.json()["data"] == "after")
    });
}

#[test]
fn after_redis_restarts_a_new_subscribe_on_an_idle_node_is_served() {
    let mut redis = Redis::start();
    let (a, b) = (engine_node(&redis.url(), "t11"), engine_node(&redis.url(), "t11"));
    wait_engine_up(&a);
    wait_engine_up(&b);
    let (mut subscriber, _) = WsClient::open_client(a.addr);
    assert_eq!(subscriber.subscribe("news")["op"], "subscribed");
    redis.stop();
    assert!(redis.run(), "redis restarts on its port");
    // Publishing on B works again and A's subscriber receives: A's pub/sub
    // connection is back. A itself has run no command since the restart.
    let mut api = ApiClient::new(b.addr, &b.api_key);
    wait_until("a publication on B reaches A's subscriber", || {
        if api.publish("news", json!("after")).status != 200 {
            return false;
        }
        while let Some(frame) = subscriber.frame_within(Duration::from_millis(200)) {
            if frame.json()["data"] == "after" {
                return true;
            }
        }
        false
    });
    // The first command A runs after the restart: served, not `unavailable`.
    let (mut client, _) = WsClient::open_client(a.addr);
    let reply = client.call(json!({"op": "subscribe", "channel": "fresh"}));
    assert_eq!(reply["op"], "subscribed", "{reply}");
}

#[test]
fn pusher_events_presence_client_events_users_and_terminate_span_the_nodes() {
    let redis = Redis::start();
    let (a, b) = (pusher_engine_node(&redis.url(), "p1"), pusher_engine_node(&redis.url(), "p1"));
    wait_engine_up(&a);
    wait_engine_up(&b);
    // Presence: one member_added per user, whichever node they are on.
    let mut on_a = PusherClient::connect(a.addr, APP_KEY);
    on_a.join("presence-room", "u1", json!({"name": "A"}));
    let mut on_b = PusherClient::connect(b.addr, APP_KEY);
    let here = on_b.join("presence-room", "u2", json!({"name": "B"}));
    assert_eq!(here["presence"]["count"], 2, "{here}");
    assert_eq!(here["presence"]["hash"]["u1"], json!({"name": "A"}));
    let added = on_a.expect("pusher_internal:member_added");
    assert_eq!(added["data"], r#"{"user_id":"u2","user_info":{"name":"B"}}"#);
    let mut second_tab = PusherClient::connect(b.addr, APP_KEY);
    second_tab.join("presence-room", "u1", json!({"name": "A"}));
    on_a.expect_quiet(Duration::from_millis(300));
    let users =
        pusher_api(b.addr, "GET", &format!("/apps/{APP_ID}/channels/presence-room/users"), &[], "");
    assert_eq!(users.json(), json!({"users":[{"id":"u1"},{"id":"u2"}]}));
    // Events from either node's API, client events between nodes.
    on_a.subscribe_private("private-chat");
    on_b.subscribe_private("private-chat");
    trigger(b.addr, &["private-chat"], "news", "1");
    assert_eq!(on_a.expect("news")["data"], "1");
    assert_eq!(on_b.expect("news")["data"], "1");
    on_b.send(json!({"event": "client-typing", "channel": "private-chat", "data": {"who": "b"}}));
    assert_eq!(on_a.expect("client-typing")["data"], json!({"who": "b"}));
    on_b.expect_quiet(Duration::from_millis(200));
    // A user signed in on A gets sendToUser from B, and B terminates it.
    let user_data = r#"{"id":"u9"}"#;
    let auth = user_auth(&on_a.socket_id, user_data);
    on_a.send(json!({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}}));
    on_a.expect("pusher:signin_success");
    wait_until("the user channel reaches A", || {
        trigger(b.addr, &["#server-to-user-u9"], "ping-user", "{}");
        on_a.next_within(Duration::from_millis(200)).is_some_and(|e| e["event"] == "ping-user")
    });
    let response = pusher_api(
        b.addr,
        "POST",
        &format!("/apps/{APP_ID}/users/u9/terminate_connections"),
        &[],
        "{}",
    );
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(on_a.ws.expect_close(), 4009);
    // u1 is still there through its tab on B; when that goes, u1 leaves.
    second_tab.ws.shutdown();
    let removed = on_b.expect("pusher_internal:member_removed");
    assert_eq!(removed["data"], r#"{"user_id":"u1"}"#);
}

#[test]
fn a_dead_nodes_pusher_members_leave_within_the_presence_ttl() {
    let redis = Redis::start();
    dead_nodes_members_leave_within_the_presence_ttl(&redis.url(), "p2");
}
