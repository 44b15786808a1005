//! Channels over real sockets: fan-out across shards, ordering, recovery, presence, auth rules, slow consumers, churn.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

mod common;

use common::*;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[test]
fn an_api_publication_reaches_subscribers_with_its_offset() {
    let server = start_server(2, |_| {});
    let (mut client, _) = WsClient::open_client(server.addr);
    let subscribed = client.subscribe("news");
    assert_eq!(subscribed["op"], "subscribed");
    assert_eq!(subscribed["channel"], "news");
    assert_eq!(subscribed["offset"], 0);
    assert!(subscribed.get("recovered").is_none(), "no since, no recovery fields");
    let published = server.publish("news", json!({"title": "hello", "n": 1.50}));
    assert_eq!(published["offset"], 1);
    assert_eq!(published["epoch"], subscribed["epoch"]);
    let push = client.read_frame();
    assert_eq!(
        push.text(),
        r#"{"op":"message","channel":"news","offset":1,"data":{"title":"hello","n":1.5}}"#,
        "the data is the JSON the backend sent, byte for byte (serde_json wrote it compactly)"
    );
}

#[test]
fn data_is_kept_byte_for_byte() {
    let server = start_server(1, |_| {});
    let (mut client, _) = WsClient::open_client(server.addr);
    client.subscribe("news");
    let mut api = ApiClient::new(server.addr, &server.api_key);
    let body = r#"{"channel":"news","data": { "spaced" :  [1, 2.50, "\u00e9"] } }"#;
    assert_eq!(api.send("POST", "/api/publish", body).status, 200);
    let push = client.read_frame().text();
    assert!(push.ends_with(r#""data":{ "spaced" :  [1, 2.50, "\u00e9"] }}"#), "{push}");
}

#[test]
fn fan_out_to_1000_subscribers_over_all_shards_in_order() {
    let server = start_server(4, |_| {});
    let mut clients = Vec::new();
    let mut per_shard = [0usize; 4];
    for _ in 0..1000 {
        let (mut client, welcome) = WsClient::open_client(server.addr);
        per_shard[shard_of(&welcome)] += 1;
        client.subscribe("news");
        clients.push(client);
    }
    assert!(per_shard.iter().all(|count| *count > 0), "subscribers on every shard: {per_shard:?}");
    let mut api = ApiClient::new(server.addr, &server.api_key);
    for n in 1..=20 {
        let response = api.publish("news", json!({ "n": n }));
        assert_eq!(response.json()["offset"], n);
    }
    for client in &mut clients {
        for n in 1..=20 {
            let push = client.next_push();
            assert_eq!((push["offset"].as_u64(), push["data"]["n"].as_u64()), (Some(n), Some(n)));
        }
    }
}

#[test]
fn concurrent_publishers_on_different_shards_get_consecutive_offsets() {
    let server = start_server(4, |_| {});
    let (mut subscriber, _) = WsClient::open_client(server.addr);
    subscriber.subscribe("pub:race");
    let publishers = one_client_per_shard(&server, 4, "/ws");
    const EACH: u64 = 200;
    let threads: Vec<_> = publishers
        .into_iter()
        .enumerate()
        .map(|(p, (mut client, _))| {
            std::thread::spawn(move || {
                let mut offsets = Vec::new();
                for n in 0..EACH {
                    let reply = client.ok(
                        json!({"op": "publish", "channel": "pub:race", "data": {"p": p, "n": n}}),
                    );
                    offsets.push(reply["offset"].as_u64().unwrap());
                }
                offsets
            })
        })
        .collect();
    for thread in threads {
        let offsets = thread.join().unwrap();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "each publisher's offsets grow");
    }
    let mut next_n = [0u64; 4];
    for offset in 1..=4 * EACH {
        let push = subscriber.next_push();
        assert_eq!(push["offset"], offset, "consecutive offsets, none missing or repeated");
        let p = push["data"]["p"].as_u64().unwrap() as usize;
        assert_eq!(push["data"]["n"], next_n[p], "publisher {p}'s order is kept");
        next_n[p] += 1;
    }
}

#[test]
fn recovery_replays_exactly_what_was_missed() {
    let server = start_server(2, |_| {});
    let (mut client, _) = WsClient::open_client(server.addr);
    let epoch = client.subscribe("news")["epoch"].clone();
    server.publish("news", json!(1));
    assert_eq!(client.next_push()["offset"], 1);
    drop(client);
    for n in 2..=4 {
        server.publish("news", json!(n));
    }
    let (mut client, _) = WsClient::open_client(server.addr);
    let subscribed = client
        .ok(json!({"op": "subscribe", "channel": "news", "since": {"epoch": epoch, "offset": 1}}));
    assert_eq!(
        (subscribed["recovered"].as_bool(), subscribed["missed"].as_u64()),
        (Some(true), Some(3))
    );
    assert_eq!(subscribed["offset"], 4);
    server.publish("news", json!(5));
    for n in 2..=5 {
        let push = client.next_push();
        assert_eq!((push["offset"].as_u64(), push["data"].as_u64()), (Some(n), Some(n)));
    }
    // Nothing missed: recovered, 0 missed.
    let (mut other, _) = WsClient::open_client(server.addr);
    let up_to_date = other
        .ok(json!({"op": "subscribe", "channel": "news", "since": {"epoch": epoch, "offset": 5}}));
    assert_eq!(
        (up_to_date["recovered"].as_bool(), up_to_date["missed"].as_u64()),
        (Some(true), Some(0))
    );
}

#[test]
fn recovery_fails_plainly_on_another_epoch_or_a_gap_longer_than_history() {
    let server = start_server(2, |_| {});
    let first = server.publish("news", json!(0));
    let epoch = first["epoch"].as_str().unwrap().to_string();
    for n in 1..=150 {
        server.publish("news", json!(n));
    }
    let (mut client, _) = WsClient::open_client(server.addr);
    let wrong_epoch =
        client.ok(json!({"op": "subscribe", "channel": "news", "since": {"epoch": "0000beef", "offset": 140}}));
    assert_eq!(
        (wrong_epoch["recovered"].as_bool(), wrong_epoch["missed"].as_u64()),
        (Some(false), Some(0))
    );
    let (mut client, _) = WsClient::open_client(server.addr);
    let too_old = client
        .ok(json!({"op": "subscribe", "channel": "news", "since": {"epoch": epoch, "offset": 10}}));
    assert_eq!(too_old["recovered"], false, "history keeps 100 of 151");
    assert_eq!(too_old["offset"], 151);
    // And the subscription works from now on.
    server.publish("news", json!("after"));
    assert_eq!(client.next_push()["offset"], 152);
}

#[test]
fn recovery_racing_with_publishing_has_no_gap_and_no_duplicate() {
    let server = start_server(2, |_| {});
    const TOTAL: u64 = 3000;
    let seen = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (addr, key, seen) = (server.addr, server.api_key.clone(), seen.clone());
        std::thread::spawn(move || {
            let mut api = ApiClient::new(addr, &key);
            for n in 1..=TOTAL {
                // Stay within history (1000 kept) of the reader: flow control,
                // not timing.
                while n > seen.load(Ordering::Acquire) + 500 {
                    std::thread::yield_now();
                }
                assert_eq!(api.publish("pub:race", json!(n)).status, 200);
            }
        })
    };
    let mut last = 0u64;
    let mut epoch = Value::Null;
    let mut reconnects = 0;
    while last < TOTAL {
        let (mut client, _) = WsClient::open_client(server.addr);
        let command = if epoch.is_null() {
            json!({"op": "subscribe", "channel": "pub:race"})
        } else {
            json!({"op": "subscribe", "channel": "pub:race", "since": {"epoch": epoch, "offset": last}})
        };
        let reply = client.ok(command);
        if !epoch.is_null() {
            assert_eq!(reply["recovered"], true, "{reply}");
        }
        epoch = reply["epoch"].clone();
        if last == 0 {
            last = reply["offset"].as_u64().unwrap();
            seen.store(last, Ordering::Release);
        }
        // Read a stretch, then drop the connection mid-stream.
        for _ in 0..250 {
            if last == TOTAL {
                break;
            }
            let push = client.next_push();
            let offset = push["offset"].as_u64().unwrap();
            assert_eq!(offset, last + 1, "no gap, no duplicate");
            assert_eq!(push["data"], offset);
            last = offset;
            seen.store(last, Ordering::Release);
        }
        reconnects += 1;
    }
    publisher.join().unwrap();
    assert!(reconnects >= 10, "{reconnects}");
}

#[test]
fn presence_and_join_leave_across_shards() {
    let server = start_server(2, |_| {});
    let mut clients = one_client_per_shard(&server, 2, "/ws");
    let (mut bob, bob_welcome) = clients.pop().unwrap();
    let (mut alice, alice_welcome) = clients.pop().unwrap();
    assert_ne!(shard_of(&alice_welcome), shard_of(&bob_welcome));
    alice.subscribe("chat:lobby");
    bob.subscribe("chat:lobby");
    let join = alice.next_push();
    assert_eq!(
        join,
        json!({"op": "join", "channel": "chat:lobby", "client": bob_welcome["client"], "user": ""})
    );
    let presence = alice.ok(json!({"op": "presence", "channel": "chat:lobby"}));
    let members = sorted_field(&presence["clients"], "client");
    let mut expected = vec![
        alice_welcome["client"].as_str().unwrap().to_string(),
        bob_welcome["client"].as_str().unwrap().to_string(),
    ];
    expected.sort();
    assert_eq!(members, expected);
    // Bob's connection ends: his presence goes and alice hears it.
    drop(bob);
    let leave = alice.next_push();
    assert_eq!(leave["op"], "leave");
    assert_eq!(leave["client"], bob_welcome["client"]);
    let presence = alice.ok(json!({"op": "presence", "channel": "chat:lobby"}));
    assert_eq!(presence["clients"].as_array().unwrap().len(), 1);
    // Presence is off in the default namespace.
    let error = alice.call(json!({"op": "presence", "channel": "news"}));
    assert_eq!((error["op"].as_str(), error["code"].as_str()), (Some("error"), Some("forbidden")));
}

#[test]
fn unsubscribe_stops_delivery() {
    let server = start_server(2, |_| {});
    let (mut client, _) = WsClient::open_client(server.addr);
    client.subscribe("news");
    client.subscribe("barrier");
    let reply = client.ok(json!({"op": "unsubscribe", "channel": "news"}));
    assert_eq!(reply["op"], "unsubscribed");
    server.publish("news", json!("not for you"));
    server.publish("barrier", json!("after"));
    let push = client.next_push();
    assert_eq!(push["channel"], "barrier", "the earlier publication on news never came");
    // Unsubscribing again is harmless; subscribing again works.
    client.ok(json!({"op": "unsubscribe", "channel": "news"}));
    client.subscribe("news");
    server.publish("news", json!("for you"));
    assert_eq!(client.next_push()["data"], "for you");
}

#[test]
fn user_and_private_channel_rules() {
    let server = start_server(2, |config| config.allow_anonymous = true);
    let token = server.token("42", &["private-x", "$chat:*"]);
    let (mut user, welcome) =
        WsClient::open_client_at(server.addr, &format!("/ws?token={token}"), "");
    assert_eq!(welcome["user"], "42");
    user.subscribe("notifications#42");
    user.subscribe("dialog#7,42");
    user.subscribe("private-x");
    user.subscribe("$chat:ops");
    for (channel, code) in [
        ("notifications#7", "forbidden"),
        ("private-y", "forbidden"),
        ("$other", "forbidden"),
        ("nosuch:x", "not_found"),
        ("bad channel", "bad_request"),
    ] {
        let reply = user.call(json!({"op": "subscribe", "channel": channel}));
        assert_eq!(
            (reply["op"].as_str(), reply["code"].as_str()),
            (Some("error"), Some(code)),
            "{channel}"
        );
    }
    let (mut anonymous, _) = WsClient::open_client(server.addr);
    for channel in ["notifications#42", "private-x"] {
        let reply = anonymous.call(json!({"op": "subscribe", "channel": channel}));
        assert_eq!(reply["code"], "unauthorized", "{channel}");
    }
    anonymous.subscribe("news");
    // Publishing and history follow the same rules.
    let reply = anonymous.call(json!({"op": "history", "channel": "private-x"}));
    assert_eq!(reply["code"], "unauthorized");
}

#[test]
fn tokens_in_header_or_query_and_bad_ones_refused() {
    let server = start_server(1, |config| config.allow_anonymous = false);
    let token = server.token("7", &[]);
    let (_, welcome) =
        WsClient::open_client_at(server.addr, "/ws", &format!("Authorization: Bearer {token}\r\n"));
    assert_eq!(welcome["user"], "7");
    let (_, welcome) = WsClient::open_client_at(server.addr, &format!("/ws?x=1&token={token}"), "");
    assert_eq!(welcome["user"], "7");

    let now = herald::auth::unix_now();
    let expired = herald::auth::mint(&server.secret, "7", Some(10), &[], now - 100);
    let other_secret = herald::config::Secret::new("a-different-secret-of-32-bytes-xx");
    let forged = herald::auth::mint(&other_secret, "7", Some(60), &[], now);
    let claims = token.split('.').nth(1).unwrap();
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{claims}.");
    let cases = [
        (format!("/ws?token={expired}"), "token expired"),
        (format!("/ws?token={forged}"), "token signature does not match"),
        (format!("/ws?token={none}"), "token algorithm must be HS256"),
        ("/ws?token=not-a-token".to_string(), "a token is three"),
        ("/ws".to_string(), "a token is required"),
    ];
    for (path, message) in cases {
        let response = request(server.addr, &upgrade_request(&path, ""));
        assert_eq!(response.status, 401, "{path}");
        assert_eq!(response.json()["error"]["code"], "unauthorized");
        let text = response.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(text.starts_with(message), "{path}: {text}");
    }
}

#[test]
fn a_token_that_expires_while_connected_closes_with_1008() {
    let server = start_server(1, |_| {});
    // Expired 9 s ago: inside the 10 s leeway, outside it in 1 s.
    let iat = herald::auth::unix_now() - 10;
    let token = herald::auth::mint(&server.secret, "7", Some(1), &[], iat);
    let (mut client, _) = WsClient::open_client_at(server.addr, &format!("/ws?token={token}"), "");
    let opened = Instant::now();
    assert_eq!(client.expect_close(), 1008);
    assert!(opened.elapsed() < Duration::from_secs(4), "{:?}", opened.elapsed());
}

#[test]
fn a_slow_consumer_is_closed_with_4008_while_fast_ones_get_everything() {
    let server = start_server(2, |config| {
        config.max_outbound_bytes = 64 << 10;
        config.max_message_bytes = 16 << 10;
        config.max_api_body_bytes = 16 << 10;
    });
    // The slow one reads nothing and has a small receive buffer.
    let slow_socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    slow_socket.set_recv_buffer_size(4096).unwrap();
    slow_socket.connect(&server.addr.into()).unwrap();
    let mut slow_stream: std::net::TcpStream = slow_socket.into();
    slow_stream.set_read_timeout(Some(DEADLINE)).unwrap();
    std::io::Write::write_all(&mut slow_stream, upgrade_request("/ws", "").as_bytes()).unwrap();
    let mut rest = Vec::new();
    let response = read_response(&mut slow_stream, &mut rest);
    let mut slow = WsClient::from_parts(slow_stream, rest, response);
    assert_eq!(slow.read_frame().json()["op"], "welcome");
    slow.subscribe("news");

    const MESSAGES: u64 = 2000;
    let progress: Vec<Arc<AtomicU64>> = (0..10).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let readers: Vec<_> = progress
        .iter()
        .map(|done| {
            let (mut client, _) = WsClient::open_client(server.addr);
            client.subscribe("news");
            let done = done.clone();
            std::thread::spawn(move || {
                for n in 1..=MESSAGES {
                    let push = client.next_push();
                    assert_eq!(push["offset"], n);
                    done.store(n, Ordering::Release);
                }
            })
        })
        .collect();
    // The slow one reads nothing until herald has given up on it, then
    // everything it was sent (within the lingering close's 2 s: herald's
    // queue beyond the 64 KiB kernel buffer is not kept longer).
    let addr = server.addr;
    let slow_reader = std::thread::spawn(move || {
        wait_until("the slow consumer is closed", || {
            metric(addr, "herald_slow_consumer_closes_total ") >= 1.0
        });
        let mut got = 0;
        loop {
            let frame = slow.try_read_frame().expect("the close frame");
            match frame.opcode {
                1 => {
                    got += 1;
                    assert_eq!(frame.json()["offset"], got);
                }
                8 => {
                    assert_eq!(frame.close_code(), Some(4008));
                    break;
                }
                _ => {}
            }
        }
        assert!(slow.try_read_frame().is_none(), "nothing after the close frame");
        got
    });
    let mut api = ApiClient::new(server.addr, &server.api_key);
    let payload = "x".repeat(4000);
    for n in 1..=MESSAGES {
        // Fast readers keep up: at most 8 messages (32 KB) in flight.
        while progress.iter().any(|done| done.load(Ordering::Acquire) + 8 < n) {
            std::thread::yield_now();
        }
        assert_eq!(api.publish("news", json!(payload)).status, 200);
    }
    for reader in readers {
        reader.join().unwrap();
    }
    // The slow one: what it got is in order, then close 4008, then nothing.
    let got = slow_reader.join().unwrap();
    assert!(got < MESSAGES, "closed before the end: got {got}");
}

#[test]
fn channel_churn_leaves_nothing_behind() {
    let server = start_server(2, |config| {
        // 300,000 commands as fast as they go: no rate limit here.
        config.command_rate_per_sec = 1_000_000;
        config.command_burst = 1_000_000;
        config.namespaces.insert(
            "churn".into(),
            herald::config::NamespaceOptions {
                history_size: 1,
                history_ttl_secs: 1,
                client_publish: true,
                ..Default::default()
            },
        );
    });
    let (mut client, _) = WsClient::open_client(server.addr);
    const CHANNELS: usize = 100_000;
    const BATCH: usize = 2000;
    for start in (0..CHANNELS).step_by(BATCH) {
        // Pipelined: a batch of commands, then their replies.
        let mut frames = Vec::new();
        for n in start..start + BATCH {
            let channel = format!("churn:{n}");
            for command in [
                json!({"op": "subscribe", "channel": channel}),
                json!({"op": "publish", "channel": channel, "data": n, "skip_self": true}),
                json!({"op": "unsubscribe", "channel": channel}),
            ] {
                frames.extend(client_frame(true, 1, command.to_string().as_bytes()));
            }
        }
        client.send_raw(&frames);
        for _ in 0..3 * BATCH {
            let reply = client.read_frame().json();
            assert_ne!(reply["op"], "error", "{reply}");
        }
    }
    assert!(server.handle.channel_count() > 0, "history keeps channels until it expires");
    wait_until("every churned channel to be freed", || server.handle.channel_count() == 0);
}

#[test]
fn skip_self_and_exclude_client() {
    let server = start_server(2, |_| {});
    let (mut me, welcome) = WsClient::open_client(server.addr);
    me.subscribe("chat:room");
    me.subscribe("barrier");
    let reply =
        me.ok(json!({"op": "publish", "channel": "chat:room", "data": "mine", "skip_self": true}));
    assert_eq!(reply["op"], "published");
    let mut api = ApiClient::new(server.addr, &server.api_key);
    let body =
        json!({"channel": "chat:room", "data": "not to me", "exclude_client": welcome["client"]});
    assert_eq!(api.send("POST", "/api/publish", &body.to_string()).status, 200);
    me.ok(json!({"op": "publish", "channel": "chat:room", "data": "echoed"}));
    let push = me.next_push();
    assert_eq!((push["data"].as_str(), push["offset"].as_u64()), (Some("echoed"), Some(3)));
}

#[test]
fn client_publish_needs_the_namespace_option() {
    let server = start_server(1, |_| {});
    let (mut client, _) = WsClient::open_client(server.addr);
    let reply = client.call(json!({"op": "publish", "channel": "news", "data": 1}));
    assert_eq!(reply["code"], "forbidden");
    assert!(reply["message"].as_str().unwrap().contains("does not allow client publish"));
}

#[test]
fn history_command_pages_after_since() {
    let server = start_server(1, |_| {});
    let epoch = server.publish("news", json!({"n": 1}))["epoch"].clone();
    for n in 2..=5 {
        server.publish("news", json!({ "n": n }));
    }
    let (mut client, _) = WsClient::open_client(server.addr);
    let page = client.ok(json!({"op": "history", "channel": "news", "since": {"epoch": epoch, "offset": 2}, "limit": 2}));
    assert_eq!(page["epoch"], epoch);
    assert_eq!(page["offset"], 5);
    assert_eq!(
        page["publications"],
        json!([{"offset": 3, "data": {"n": 3}}, {"offset": 4, "data": {"n": 4}}])
    );
    let all = client.ok(json!({"op": "history", "channel": "news"}));
    assert_eq!(all["publications"].as_array().unwrap().len(), 5);
    let off = client.call(json!({"op": "history", "channel": "live:x"}));
    assert_eq!(off["code"], "not_found");
}

#[test]
fn bad_commands_get_error_replies_and_the_connection_stays_open() {
    let server = start_server(1, |_| {});
    let (mut client, _) = WsClient::open_client(server.addr);
    client.subscribe("news");
    let again = client.call(json!({"op": "subscribe", "channel": "news"}));
    assert_eq!(
        (again["code"].as_str(), again["message"].as_str()),
        (Some("bad_request"), Some("already subscribed"))
    );
    for (command, code) in [
        (json!({"op": "subscribe", "channel": ""}), "bad_request"),
        (json!({"op": "subscribe", "channel": "x".repeat(256)}), "bad_request"),
        (json!({"op": "subscribe"}), "bad_request"),
        (json!({"op": "subscribe", "channel": "nosuch:x"}), "not_found"),
        (json!({"op": "publish", "channel": "pub:x"}), "bad_request"),
        (json!({"op": "subscribe", "channel": "a", "since": {"epoch": 1}}), "bad_request"),
    ] {
        let reply = client.call(command.clone());
        assert_eq!(
            (reply["op"].as_str(), reply["code"].as_str()),
            (Some("error"), Some(code)),
            "{command}"
        );
    }
    assert_eq!(client.ok(json!({"op": "ping"}))["op"], "pong");
}

#[test]
fn api_publish_answers_and_errors() {
    let server = start_server(1, |config| config.max_api_body_bytes = 2048);
    let mut api = ApiClient::new(server.addr, &server.api_key);
    let ok = api.publish("news", json!(1));
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("connection"), Some("keep-alive"));
    assert!(ok.json()["epoch"].is_string());
    // Keep-alive: more requests on the same connection.
    assert_eq!(api.publish("news", json!(2)).json()["offset"], 2);
    for (body, status, code) in [
        ("not json", 400, "bad_request"),
        (r#"{"data":1}"#, 400, "bad_request"),
        (r#"{"channel":"bad channel","data":1}"#, 400, "bad_request"),
        (r#"{"channel":"news"}"#, 400, "bad_request"),
        (r#"{"channel":"nosuch:x","data":1}"#, 404, "not_found"),
    ] {
        let response = api.send("POST", "/api/publish", body);
        assert_eq!(
            (response.status, response.json()["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}"
        );
    }
    assert_eq!(api.publish("news", json!(3)).status, 200, "errors keep the connection");
    let mut wrong = ApiClient::new(server.addr, "not-the-key-0000");
    assert_eq!(wrong.publish("news", json!(1)).status, 401);
    let get = request(server.addr, "GET /api/publish HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((get.status, get.header("allow")), (405, Some("POST")));
    let missing = request(server.addr, "GET /api/nothing HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(missing.status, 404);
    let big = format!(r#"{{"channel":"news","data":"{}"}}"#, "x".repeat(3000));
    assert_eq!(api.send("POST", "/api/publish", &big).status, 413);
    let no_length = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: apikey {}\r\n\r\n",
        server.api_key
    );
    assert_eq!(request(server.addr, &no_length).status, 411);
}
