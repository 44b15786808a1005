//! The Redis engine on a real Redis Cluster (three masters with a replica each, from `redis-server --cluster-enabled yes`): cross-node delivery in order over sharded pub/sub, recovery, presence, a master killed during publishing, and a busy channel's slot moved while publishing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

mod common;

use common::redis::*;
use common::*;
use serde_json::json;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[test]
fn publications_cross_nodes_in_order_recover_and_presence_spans_the_nodes() {
    let cluster = RedisCluster::start(3, 1);
    let (a, b) = (engine_node(&cluster.url(), "c1"), engine_node(&cluster.url(), "c1"));
    wait_engine_up(&a);
    wait_engine_up(&b);
    // Channels spread over the masters: each is subscribed on its own.
    let channels: Vec<String> = (0..8).map(|n| format!("news-{n}")).collect();
    let mut cluster = cluster;
    let masters: HashSet<u16> =
        channels.iter().map(|c| cluster.master_of(cluster.slot_of(c)).port).collect();
    assert!(masters.len() >= 2, "the channels are on several masters");
    let (mut client, _) = WsClient::open_client(b.addr);
    let mut epochs = Vec::new();
    for channel in &channels {
        let reply = client.subscribe(channel);
        assert_eq!(reply["op"], "subscribed", "{reply}");
        epochs.push(reply["epoch"].clone());
    }
    let mut api = ApiClient::new(a.addr, &a.api_key);
    for n in 1..=20 {
        for channel in &channels {
            let answer = api.publish(channel, json!(n));
            assert_eq!(answer.status, 200, "{}", answer.body);
            assert_eq!(answer.json()["offset"], n, "{}", answer.body);
        }
    }
    let mut next = vec![1u64; channels.len()];
    for _ in 0..20 * channels.len() {
        let push = client.next_push();
        let at = channels.iter().position(|c| push["channel"] == c.as_str()).unwrap();
        assert_eq!(push["offset"].as_u64(), Some(next[at]), "{push}");
        assert_eq!(push["data"].as_u64(), Some(next[at]), "{push}");
        next[at] += 1;
    }
    // A client that saw 5 of news-3 gets the other 15 from history, on A.
    let (mut late, _) = WsClient::open_client(a.addr);
    let reply = late.ok(json!({
        "op": "subscribe", "channel": "news-3", "since": {"epoch": epochs[3], "offset": 5}
    }));
    assert_eq!((reply["recovered"].as_bool(), reply["missed"].as_u64()), (Some(true), Some(15)));
    let data: Vec<u64> = (0..15).map(|_| late.next_push()["data"].as_u64().unwrap()).collect();
    assert_eq!(data, (6..=20).collect::<Vec<u64>>());
    // Presence across the nodes.
    let token = |server: &TestServer, user: &str| server.token(user, &[]);
    let (mut alice, _) =
        WsClient::open_client_at(a.addr, &format!("/ws?token={}", token(&a, "alice")), "");
    alice.subscribe("chat:room");
    let (mut bob, _) =
        WsClient::open_client_at(b.addr, &format!("/ws?token={}", token(&b, "bob")), "");
    bob.subscribe("chat:room");
    let join = alice.next_push();
    assert_eq!((join["op"].as_str(), join["user"].as_str()), (Some("join"), Some("bob")), "{join}");
    let reply = bob.ok(json!({"op": "presence", "channel": "chat:room"}));
    assert_eq!(sorted_field(&reply["clients"], "user"), ["alice", "bob"], "{reply}");
    drop(bob);
    let leave = alice.next_push();
    assert_eq!((leave["op"].as_str(), leave["user"].as_str()), (Some("leave"), Some("bob")));
    // A call on a user's connections reaches every node (through the
    // control channel, a shard channel too).
    let answer = ApiClient::new(b.addr, &b.api_key).send(
        "POST",
        "/api/disconnect",
        &json!({"user": "alice"}).to_string(),
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["disconnected"], 1, "{}", answer.body);
}

/// Publishes to `channel` on `server` until `stop`, each attempt with its
/// own number (`1, 2, ...`), retrying after a refusal; returns `(offset,
/// number)` of each acknowledged publication, in order.
fn publisher(
    server: &TestServer,
    channel: &'static str,
    stop: Arc<AtomicBool>,
    acknowledged: Arc<AtomicU64>,
) -> std::thread::JoinHandle<Vec<(u64, u64)>> {
    let (addr, key) = (server.addr, server.api_key.clone());
    std::thread::spawn(move || {
        let mut api = ApiClient::new(addr, &key);
        let mut done = Vec::new();
        let deadline = Instant::now() + DEADLINE * 4;
        for attempt in 1.. {
            if stop.load(Ordering::Acquire) || Instant::now() >= deadline {
                break;
            }
            let answer = api.publish(channel, json!(attempt));
            if answer.status == 200 {
                done.push((answer.json()["offset"].as_u64().unwrap(), attempt));
                acknowledged.fetch_add(1, Ordering::AcqRel);
            } else {
                assert_eq!(answer.status, 503, "{}", answer.body);
                std::thread::sleep(Duration::from_millis(20));
                api = ApiClient::new(addr, &key);
            }
        }
        done
    })
}

/// Reads `client`'s pushes until attempt `last` arrived; the attempts
/// delivered, in order. Panics on a restart: nothing acknowledged may be
/// lost.
fn received_until(client: &mut WsClient, last: u64) -> Vec<u64> {
    let mut seen = Vec::new();
    let mut offsets = Vec::new();
    while seen.last() != Some(&last) {
        let frame = client.frame_within(DEADLINE);
        let push = frame
            .unwrap_or_else(|| {
                panic!("publication {last} not delivered; got {seen:?} ({offsets:?})")
            })
            .json();
        assert_eq!(push["op"], "message", "no restart: {push}");
        offsets.push(push["offset"].as_u64().unwrap());
        seen.push(push["data"].as_u64().unwrap());
    }
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "offsets increase: {offsets:?}");
    seen
}

/// Every acknowledged attempt is delivered once, every attempt delivered
/// at most once, all in the order they were made (an attempt whose answer
/// was a refusal may have been published all the same).
fn assert_delivered_once_in_order(seen: &[u64], acknowledged: &[(u64, u64)]) {
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "once each, in order: {seen:?}");
    let seen: HashSet<u64> = seen.iter().copied().collect();
    for (offset, attempt) in acknowledged {
        assert!(seen.contains(attempt), "{attempt} (offset {offset}) delivered: {seen:?}");
    }
}

/// Two nodes on `cluster`: a client of node B subscribed to a busy
/// channel while node A publishes to it; `disturb` acts on the cluster
/// (given the channel's slot) once 50 publications were acknowledged, and
/// publishing goes on for 50 more. Every acknowledged publication reaches
/// the client once, in order, with no restart. Returns node A, the
/// client's `subscribed` reply and the acknowledged `(offset, attempt)`s.
fn publishing_survives(
    cluster: &mut RedisCluster,
    prefix: &str,
    disturb: impl FnOnce(&mut RedisCluster, u16),
) -> (TestServer, serde_json::Value, Vec<(u64, u64)>) {
    let (a, b) = (engine_node(&cluster.url(), prefix), engine_node(&cluster.url(), prefix));
    wait_engine_up(&a);
    wait_engine_up(&b);
    let (mut client, _) = WsClient::open_client(b.addr);
    let subscribed = client.subscribe("pub:busy");
    assert_eq!(subscribed["op"], "subscribed");
    let (stop, count) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let publishing = publisher(&a, "pub:busy", stop.clone(), count.clone());
    wait_until("publications before", || count.load(Ordering::Acquire) >= 50);
    let slot = cluster.slot_of("pub:busy");
    disturb(cluster, slot);
    let before = count.load(Ordering::Acquire);
    wait_until("publications after", || count.load(Ordering::Acquire) >= before + 50);
    stop.store(true, Ordering::Release);
    let acknowledged = publishing.join().unwrap();
    let last = acknowledged.last().unwrap().1;
    let seen = received_until(&mut client, last);
    assert_delivered_once_in_order(&seen, &acknowledged);
    (a, subscribed, acknowledged)
}

#[test]
fn a_master_killed_during_publishing_loses_no_acknowledged_publication() {
    let mut cluster = RedisCluster::start(3, 1);
    let (a, subscribed, acknowledged) =
        publishing_survives(&mut cluster, "c2", |cluster, slot| cluster.master_of(slot).kill());
    // A client that reconnects a little behind recovers the rest from
    // the promoted replica's history.
    let (mut late, _) = WsClient::open_client(a.addr);
    let (epoch, top) = (subscribed["epoch"].clone(), acknowledged.last().unwrap().0);
    let reply = late.ok(json!({
        "op": "subscribe", "channel": "pub:busy", "since": {"epoch": epoch, "offset": top - 5}
    }));
    assert_eq!((reply["recovered"].as_bool(), reply["missed"].as_u64()), (Some(true), Some(5)));
}

#[test]
fn moving_a_busy_channels_slot_while_publishing_loses_nothing() {
    let mut cluster = RedisCluster::start(3, 0);
    publishing_survives(&mut cluster, "c3", |cluster, slot| {
        let from = cluster.master_of(slot).port;
        cluster.move_slot(slot);
        assert_ne!(cluster.master_of(slot).port, from, "the slot moved");
    });
}

#[test]
fn a_dead_nodes_members_leave_within_the_presence_ttl() {
    // The sweep reads the deployment's index of entries (one slot) and
    // runs each channel's sweep on the channel's master.
    let cluster = RedisCluster::start(3, 0);
    dead_nodes_members_leave_within_the_presence_ttl(&cluster.url(), "c4");
}
