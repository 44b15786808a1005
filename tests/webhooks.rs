//! Webhooks from one node (the memory engine) to a real receiver: occupied and vacated, members per user, client events and cache misses for Pusher apps, the same events for herald's namespaces, signatures, the 3-second grace, a backend that is down or never answers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::pusher::*;
use common::receiver::{Mode, Receiver};
use common::redis::{NodeProcess, Redis, RedisCluster};
use common::*;
use herald::config::Secret;
use herald::{Config, ServerHandle};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const WEBHOOK_SECRET: &str = "webhook-secret-0123456789";

/// A node whose app `1` and namespace `chat` send webhooks to `url`;
/// `extra` is added to the config file.
fn node(url: &str, extra: &str) -> (ServerHandle, SocketAddr) {
    let text = format!(
        r#"
webhook_secret = "{WEBHOOK_SECRET}"
{extra}
[namespaces.chat]
presence = true
join_leave = true
client_publish = true
webhook_url = "{url}"

[[apps]]
id = "1"
key = "app-key"
secret = "app-secret-0123456789"
client_events = true
webhooks = [{{ url = "{url}" }}]
"#
    );
    let mut config =
        Config::load(Some((std::path::Path::new("webhooks.toml"), &text)), Vec::new(), true)
            .unwrap();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.threads = 2;
    let handle = start_config(config);
    let addr = handle.local_addr();
    (handle, addr)
}

/// `(name, channel, user_id)` of each event.
fn summary(events: &[Value]) -> Vec<(String, String, String)> {
    events
        .iter()
        .map(|event| {
            let text = |key: &str| event[key].as_str().unwrap_or_default().to_string();
            (text("name"), text("channel"), text("user_id"))
        })
        .collect()
}

fn triple(name: &str, channel: &str, user: &str) -> (String, String, String) {
    (name.into(), channel.into(), user.into())
}

#[test]
fn pusher_apps_hear_occupied_members_per_user_and_vacated_signed() {
    let receiver = Receiver::start();
    let (_server, addr) = node(&receiver.url, "");
    let mut a1 = PusherClient::connect(addr, APP_KEY);
    a1.join("presence-room", "u1", json!({}));
    let mut a2 = PusherClient::connect(addr, APP_KEY);
    a2.join("presence-room", "u1", json!({}));
    let mut b = PusherClient::connect(addr, APP_KEY);
    b.join("presence-room", "u2", json!({}));
    let hooks = receiver.wait_for(3, DEADLINE);
    assert_eq!(
        summary(&receiver.events()),
        [
            triple("channel_occupied", "presence-room", ""),
            triple("member_added", "presence-room", "u1"),
            triple("member_added", "presence-room", "u2"),
        ],
        "u1's second connection is not a new member"
    );
    for hook in &hooks {
        assert_eq!(hook.header("content-type"), "application/json");
        assert_eq!(hook.header("x-pusher-key"), APP_KEY);
        let expected = herald::wire::pusher::sign(&Secret::new(APP_SECRET), &hook.body);
        assert_eq!(hook.header("x-pusher-signature"), expected, "signed over the bytes sent");
        assert!(!hook.header("x-herald-webhook-id").is_empty());
        let time_ms = hook.json()["time_ms"].as_u64().unwrap();
        assert!(time_ms.abs_diff(herald::clock::unix_millis()) < 60_000);
    }
    let ids: std::collections::HashSet<&str> =
        hooks.iter().map(|hook| hook.header("x-herald-webhook-id")).collect();
    assert_eq!(ids.len(), 3, "each notice has its own id");
    // u1 leaves when its last connection does; then the channel is vacated.
    let left = Instant::now();
    a1.ws.shutdown();
    a2.ws.shutdown();
    b.ws.shutdown();
    receiver.wait_for(6, DEADLINE);
    assert!(left.elapsed() >= Duration::from_millis(2_900), "leaves wait out the grace");
    let mut tail = summary(&receiver.events()[3..]);
    tail.sort();
    assert_eq!(
        tail,
        [
            triple("channel_vacated", "presence-room", ""),
            triple("member_removed", "presence-room", "u1"),
            triple("member_removed", "presence-room", "u2"),
        ]
    );
    assert_eq!(receiver.events()[5]["name"], "channel_vacated", "vacated comes last");
}

#[test]
fn a_reload_within_the_grace_sends_nothing() {
    let receiver = Receiver::start();
    let (_server, addr) = node(&receiver.url, "");
    let mut tab = PusherClient::connect(addr, APP_KEY);
    tab.join("presence-room", "u1", json!({}));
    receiver.wait_for(2, DEADLINE);
    // The page reloads: the old connection goes, a new one joins at once.
    tab.ws.shutdown();
    let mut reloaded = PusherClient::connect(addr, APP_KEY);
    reloaded.join("presence-room", "u1", json!({}));
    // A marker after the grace: everything before it has been decided.
    std::thread::sleep(Duration::from_millis(3_500));
    let mut other = PusherClient::connect(addr, APP_KEY);
    other.subscribe("marker");
    receiver.wait_for(3, DEADLINE);
    assert_eq!(
        summary(&receiver.events()),
        [
            triple("channel_occupied", "presence-room", ""),
            triple("member_added", "presence-room", "u1"),
            triple("channel_occupied", "marker", ""),
        ],
        "the leave and the rejoin cancel out"
    );
}

#[test]
fn client_events_and_cache_misses_are_heard() {
    let receiver = Receiver::start();
    let (_server, addr) = node(&receiver.url, "");
    let mut a = PusherClient::connect(addr, APP_KEY);
    let mut b = PusherClient::connect(addr, APP_KEY);
    a.join("presence-chat", "u1", json!({}));
    b.join("presence-chat", "u2", json!({}));
    a.send(json!({"event": "client-typing", "channel": "presence-chat", "data": {"x": 1}}));
    b.expect("client-typing");
    a.subscribe("cache-news");
    b.subscribe("cache-news");
    let wanted = |events: &[Value]| {
        events.iter().filter(|e| e["name"] == "client_event" || e["name"] == "cache_miss").count()
    };
    let deadline = Instant::now() + DEADLINE;
    while wanted(&receiver.events()) < 2 {
        assert!(Instant::now() < deadline, "{:?}", receiver.events());
        std::thread::sleep(Duration::from_millis(20));
    }
    let events = receiver.events();
    let client = events.iter().find(|e| e["name"] == "client_event").unwrap();
    assert_eq!(
        *client,
        json!({"name":"client_event","channel":"presence-chat","event":"client-typing","data":"{\"x\":1}","socket_id":a.socket_id,"user_id":"u1"})
    );
    let misses = events.iter().filter(|e| e["name"] == "cache_miss").count();
    assert_eq!(misses, 1, "two subscribers of an empty cache channel: one miss");
}

#[test]
fn namespaces_get_the_same_events_signed_with_the_webhook_secret() {
    let receiver = Receiver::start();
    let (_server, addr) = node(&receiver.url, "");
    let (mut alice, _) = WsClient::open_client_at(addr, "/ws", "");
    alice.subscribe("chat:lobby");
    alice.subscribe("news");
    let hooks = receiver.wait_for(2, DEADLINE);
    assert_eq!(summary(&receiver.events())[0], triple("channel_occupied", "chat:lobby", ""));
    assert_eq!(summary(&receiver.events())[1], triple("member_added", "chat:lobby", ""));
    for hook in &hooks {
        let signature = hook.header("x-herald-signature");
        assert!(
            herald::wire::webhook::verify_herald(
                &Secret::new(WEBHOOK_SECRET),
                &hook.body,
                signature
            ),
            "{signature}"
        );
        assert!(hook.header("x-pusher-key").is_empty());
    }
    // `news` has no webhook: nothing about it.
    receiver.wait_for(2, Duration::from_millis(500));
    assert_eq!(receiver.hooks().len(), 2);
}

#[test]
fn a_backend_that_is_down_gets_everything_once_it_is_back_in_order() {
    let receiver = Receiver::start();
    receiver.set_mode(Mode::Down);
    let (_server, addr) = node(&receiver.url, "");
    let mut clients = Vec::new();
    for n in 0..5 {
        let mut client = PusherClient::connect(addr, APP_KEY);
        client.subscribe(&format!("room-{n}"));
        clients.push(client);
    }
    let deadline = Instant::now() + DEADLINE;
    while receiver.seen() < 2 {
        assert!(Instant::now() < deadline, "herald tries while the backend is down");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(30));
    receiver.set_mode(Mode::Up);
    receiver.wait_for(5, Duration::from_secs(45));
    let channels: Vec<String> =
        summary(&receiver.events()).into_iter().map(|(_, c, _)| c).collect();
    assert_eq!(channels, ["room-0", "room-1", "room-2", "room-3", "room-4"]);
    let metrics = request(addr, "GET /metrics HTTP/1.1\r\n\r\n").body;
    assert!(metrics.contains("herald_webhook_delivered_total{webhook=\"app-1-0\"} 5"), "{metrics}");
    assert!(!metrics.contains("herald_webhook_retries_total{webhook=\"app-1-0\"} 0"), "{metrics}");
}

#[test]
fn a_backend_that_never_answers_holds_a_bounded_queue() {
    let receiver = Receiver::start();
    receiver.set_mode(Mode::Silent);
    let (_server, addr) = node(&receiver.url, "webhook_queue_size = 10");
    let mut client = PusherClient::connect(addr, APP_KEY);
    for n in 0..30 {
        client.subscribe(&format!("room-{n}"));
    }
    let metric = |addr| {
        let body = request(addr, "GET /metrics HTTP/1.1\r\n\r\n").body;
        body.lines()
            .find_map(|line| line.strip_prefix("herald_webhook_notices_dropped_total "))
            .and_then(|value| value.parse::<u64>().ok())
            .unwrap_or(0)
    };
    wait_until("notices past the queue's bound are dropped and counted", || metric(addr) >= 20);
    assert_eq!(metric(addr), 20, "10 queued (one of them in flight), 20 dropped");
    wait_until("the first request is sent (and waits for its answer)", || receiver.seen() >= 1);
    assert_eq!(metric(addr), 20);
}

/// The config file of a node on the Redis (or cluster) at `redis_url` whose
/// app `1` sends webhooks to `url`.
fn redis_config(redis_url: &str, prefix: &str, url: &str) -> String {
    format!(
        r#"
engine = "redis"
redis_url = "{}"
redis_prefix = "{prefix}"
presence_ttl_secs = 2

[[apps]]
id = "1"
key = "app-key"
secret = "app-secret-0123456789"
webhooks = [{{ url = "{url}" }}]
"#,
        redis_url
    )
}

/// A node in this process on the Redis (or cluster) at `redis_url`.
fn redis_node(redis_url: &str, prefix: &str, url: &str) -> (ServerHandle, SocketAddr) {
    let text = redis_config(redis_url, prefix, url);
    let mut config =
        Config::load(Some((std::path::Path::new("node.toml"), &text)), Vec::new(), true).unwrap();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.threads = 2;
    let handle = start_config(config);
    let addr = handle.local_addr();
    wait_until("the node reaches Redis", || {
        request(addr, "GET /health HTTP/1.1\r\n\r\n").json()["engine"]["state"] == "up"
    });
    (handle, addr)
}

#[test]
fn across_nodes_each_transition_is_sent_once_in_order() {
    let redis = Redis::start();
    transitions_are_sent_once_in_order(&redis.url(), "w1");
}

#[test]
fn on_a_redis_cluster_each_transition_is_sent_once_in_order() {
    // Each channel's scripts run on its master; the notices go to the
    // scope's queue (another slot) in a second step.
    let cluster = RedisCluster::start(3, 0);
    transitions_are_sent_once_in_order(&cluster.url(), "w3");
}

/// Two nodes on `redis_url`: joins and leaves of one user's two
/// connections on both nodes and of another user, and the channel's
/// occupancy, each sent once, in order.
fn transitions_are_sent_once_in_order(redis_url: &str, prefix: &str) {
    let receiver = Receiver::start();
    let (_a, a) = redis_node(redis_url, prefix, &receiver.url);
    let (_b, b) = redis_node(redis_url, prefix, &receiver.url);
    let mut on_a = PusherClient::connect(a, APP_KEY);
    on_a.join("presence-room", "u1", json!({}));
    let mut tab_on_b = PusherClient::connect(b, APP_KEY);
    tab_on_b.join("presence-room", "u1", json!({}));
    let mut u2_on_b = PusherClient::connect(b, APP_KEY);
    u2_on_b.join("presence-room", "u2", json!({}));
    receiver.wait_for(3, DEADLINE);
    assert_eq!(
        summary(&receiver.events()),
        [
            triple("channel_occupied", "presence-room", ""),
            triple("member_added", "presence-room", "u1"),
            triple("member_added", "presence-room", "u2"),
        ]
    );
    on_a.ws.shutdown();
    u2_on_b.ws.shutdown();
    // u1 still has its tab on B: only u2 leaves.
    receiver.wait_for(4, DEADLINE);
    tab_on_b.ws.shutdown();
    receiver.wait_for(6, DEADLINE);
    assert_eq!(
        summary(&receiver.events()[3..]),
        [
            triple("member_removed", "presence-room", "u2"),
            triple("member_removed", "presence-room", "u1"),
            triple("channel_vacated", "presence-room", ""),
        ]
    );
    // Nothing more: each was sent by one node.
    std::thread::sleep(Duration::from_millis(1_000));
    assert_eq!(receiver.hooks().len(), 6);
}

#[test]
fn a_killed_node_s_members_and_channel_leave_once_and_its_queue_lives_on() {
    let redis = Redis::start();
    let receiver = Receiver::start();
    let mut b = NodeProcess::start_with(
        &redis,
        "w2",
        "process-node-api-key-0123",
        &redis_config(&redis.url(), "w2", &receiver.url)
            .replace("engine = \"redis\"", "")
            .replace(&format!("redis_url = \"{}\"", redis.url()), "")
            .replace("redis_prefix = \"w2\"", ""),
    );
    wait_until("node B reaches Redis", || {
        request(b.addr, "GET /health HTTP/1.1\r\n\r\n").json()["engine"]["state"] == "up"
    });
    let mut doomed = PusherClient::connect(b.addr, APP_KEY);
    doomed.join("presence-room", "u2", json!({}));
    receiver.wait_for(2, DEADLINE);
    // The backend goes down; B (likely the webhook's lease holder) dies
    // with nobody else in the channel.
    receiver.set_mode(Mode::Down);
    let (_a, a) = redis_node(&redis.url(), "w2", &receiver.url);
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    let killed = Instant::now();
    // A sweeps B's entries (2 s TTL) and queues the leaves; whoever holds
    // the lease next (A, once B's runs out) delivers them when the backend
    // is back.
    let deadline = Instant::now() + Duration::from_secs(20);
    while receiver.seen() < 1 || killed.elapsed() < Duration::from_secs(12) {
        assert!(Instant::now() < deadline, "A tries to deliver B's leaves");
        std::thread::sleep(Duration::from_millis(50));
    }
    receiver.set_mode(Mode::Up);
    let hooks = receiver.wait_for(4, Duration::from_secs(40));
    assert_eq!(
        summary(&receiver.events()[2..]),
        [
            triple("member_removed", "presence-room", "u2"),
            triple("channel_vacated", "presence-room", "")
        ]
    );
    let ids: std::collections::HashSet<&str> =
        hooks.iter().map(|hook| hook.header("x-herald-webhook-id")).collect();
    assert_eq!(ids.len(), hooks.len(), "no notice delivered twice");
    std::thread::sleep(Duration::from_millis(1_000));
    assert_eq!(receiver.hooks().len(), 4);
    let _ = a;
}
