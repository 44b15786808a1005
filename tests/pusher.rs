//! The Pusher protocol end to end over real sockets: the WebSocket protocol (handshake, channels, presence per user, client events, sign-in, liveness, close codes), the signed HTTP API as the PHP SDK sends it, and recovery for herald-pusher.js.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::pusher::*;
use common::*;
use herald::ServerHandle;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;

fn server() -> (ServerHandle, SocketAddr) {
    server_with(|_| {})
}

fn server_with(adjust: impl FnOnce(&mut herald::Config)) -> (ServerHandle, SocketAddr) {
    let handle = start_with(|config| {
        config.apps = apps(APPS);
        adjust(config);
    });
    let addr = handle.local_addr();
    (handle, addr)
}

/// Reads frames until the connection's close frame: the `pusher:error`
/// code before it and the close code.
fn error_then_close(client: &mut WsClient) -> (Value, u16) {
    let mut error = Value::Null;
    loop {
        let frame = client.try_read_frame().expect("a close frame");
        match frame.opcode {
            1 => error = frame.json(),
            8 => return (error, frame.close_code().unwrap_or(1005)),
            _ => {}
        }
    }
}

#[test]
fn a_connection_is_established_with_a_pusher_socket_id() {
    let (_server, addr) = server();
    let client = PusherClient::connect(addr, APP_KEY);
    let (node, conn) = client.socket_id.split_once('.').unwrap();
    assert!(!node.is_empty() && node.bytes().all(|b| b.is_ascii_digit()), "{}", client.socket_id);
    assert!(!conn.is_empty() && conn.bytes().all(|b| b.is_ascii_digit()), "{}", client.socket_id);
    assert_eq!(client.activity_timeout, 120);
    // Pysher's protocol 6 and a missing version are the same protocol.
    PusherClient::connect_at(
        addr,
        &format!("/app/{APP_KEY}?client=Pysher&version=1.0.8&protocol=6"),
    );
    PusherClient::connect_at(addr, &format!("/app/{APP_KEY}"));
}

#[test]
fn refused_connections_get_pushers_error_and_close_codes() {
    let (_server, addr) = server_with(|config| {
        config.allowed_origins =
            herald::config::OriginPolicy::parse(&["https://app.example"]).unwrap();
    });
    let old_protocol = format!("/app/{APP_KEY}?protocol=4");
    let current = format!("/app/{APP_KEY}?protocol=7");
    let cases = [
        ("/app/nope?protocol=7", "", 4001),
        ("/app/off-key?protocol=7", "", 4003),
        (old_protocol.as_str(), "", 4007),
        (current.as_str(), "Origin: https://evil.example\r\n", 4009),
    ];
    for (path, headers, code) in cases {
        let mut client = WsClient::open_with(addr, path, headers);
        let (error, close) = error_then_close(&mut client);
        assert_eq!(error["event"], "pusher:error", "{path}");
        assert_eq!(error["data"]["code"], code, "{path}: {error}");
        assert_eq!(close, code, "{path}");
    }
    // An allowed origin connects.
    let mut ok =
        WsClient::open_with(addr, &format!("/app/{APP_KEY}"), "Origin: https://app.example\r\n");
    assert_eq!(ok.read_frame().json()["event"], "pusher:connection_established");
}

#[test]
fn an_app_over_its_connection_quota_refuses_with_4004() {
    let (_server, addr) = server_with(|config| {
        config.apps = apps(
            "[[apps]]\nid = \"1\"\nkey = \"app-key\"\nsecret = \"app-secret-0123456789\"\nmax_connections = 1\n",
        );
    });
    let first = PusherClient::connect(addr, APP_KEY);
    let mut second = WsClient::open(addr, &format!("/app/{APP_KEY}"));
    let (error, close) = error_then_close(&mut second);
    assert_eq!((error["data"]["code"].as_u64(), close), (Some(4004), 4004));
    // The slot frees when the first leaves.
    first.ws.shutdown();
    wait_until("the first connection's slot is free", || {
        let mut third = WsClient::open(addr, &format!("/app/{APP_KEY}"));
        third.read_frame().json()["event"] == "pusher:connection_established"
    });
}

#[test]
fn public_events_arrive_with_their_data_string_verbatim() {
    let (_server, addr) = server();
    let mut client = PusherClient::connect(addr, APP_KEY);
    let succeeded = client.subscribe("orders");
    assert_eq!(
        succeeded,
        json!({"event":"pusher_internal:subscription_succeeded","channel":"orders","data":"{}"})
    );
    let position = client.expect("pusher_internal:herald_subscribed");
    assert_eq!(data_of(&position)["offset"], 0);
    trigger(addr, &["orders"], "OrderShipped", r#"{"id":1,"note":"é \"q\""}"#);
    let event = client.expect("OrderShipped");
    assert_eq!(event["channel"], "orders");
    assert_eq!(event["data"], r#"{"id":1,"note":"é \"q\""}"#);
    assert_eq!(event["herald_offset"], 1);
    // Another app's channel of the same name is another channel.
    let other = pusher_api_as(
        addr,
        "2",
        "other-key",
        "other-secret-0123456789",
        &json!({"name":"x","channel":"orders","data":"{}"}),
    );
    assert_eq!(other.status, 200, "{}", other.body);
    client.expect_quiet(Duration::from_millis(300));
}

fn pusher_api_as(addr: SocketAddr, app: &str, key: &str, secret: &str, body: &Value) -> Response {
    let body = body.to_string();
    let path = format!("/apps/{app}/events");
    let query = signed_query("POST", &path, &[], &body, key, secret, now());
    raw_request(
        addr,
        &format!(
            "POST {path}?{query} HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

#[test]
fn private_channels_need_the_apps_signature_and_a_bad_one_keeps_the_connection() {
    let (_server, addr) = server();
    let mut client = PusherClient::connect(addr, APP_KEY);
    let socket = client.socket_id.clone();
    let wrong = [
        json!({"channel": "private-a"}),
        json!({"auth": null, "channel": "private-a"}),
        json!({"auth": format!("other-key:{}", channel_auth(&socket, "private-a", None).split_once(':').unwrap().1), "channel": "private-a"}),
        json!({"auth": channel_auth(&socket, "private-b", None), "channel": "private-a"}),
        json!({"auth": channel_auth("1.1", "private-a", None), "channel": "private-a"}),
        json!({"auth": format!("{APP_KEY}:00"), "channel": "private-a"}),
    ];
    for data in wrong {
        let answer = client.subscribe_with(data.clone());
        assert_eq!(
            answer,
            json!({"event":"pusher:subscription_error","channel":"private-a","data":{"type":"AuthError","error":"Invalid signature","status":401}}),
            "{data}"
        );
    }
    client.send(json!({"event": "pusher:ping", "data": {}}));
    assert_eq!(client.expect("pusher:pong")["data"], "{}");
    client.subscribe_private("private-a");
    trigger(addr, &["private-a"], "secret", "1");
    assert_eq!(client.expect("secret")["data"], "1");
    // Names outside Pusher's grammar are refused with InvalidChannel.
    let bad = client.subscribe_with(json!({"auth": "", "channel": "a:b"}));
    assert_eq!(bad["data"]["type"], "InvalidChannel");
    assert_eq!(bad["data"]["status"], 400);
}

#[test]
fn presence_is_per_user_and_lists_the_subscriber() {
    let (_server, addr) = server();
    let room = "presence-room.1";
    let mut a1 = PusherClient::connect(addr, APP_KEY);
    let here = a1.join(room, "u1", json!({"name": "A"}));
    assert_eq!(here, json!({"presence":{"ids":["u1"],"hash":{"u1":{"name":"A"}},"count":1}}));
    let mut a2 = PusherClient::connect(addr, APP_KEY);
    let here = a2.join(room, "u1", json!({"name": "A"}));
    assert_eq!(here["presence"]["count"], 1, "the same user twice is one member");
    let mut b = PusherClient::connect(addr, APP_KEY);
    let here = b.join(room, "u2", json!(null));
    assert_eq!(here["presence"]["count"], 2);
    assert_eq!(here["presence"]["hash"]["u2"], Value::Null);
    // u1's second tab was not announced; u2 was, once, to each other tab.
    let added = a1.expect("pusher_internal:member_added");
    assert_eq!(added["data"], r#"{"user_id":"u2","user_info":null}"#);
    a1.expect_quiet(Duration::from_millis(200));
    assert_eq!(a2.expect("pusher_internal:member_added")["data"], added["data"]);
    // The HTTP API counts users, not connections.
    let users = pusher_api(addr, "GET", &format!("/apps/{APP_ID}/channels/{room}/users"), &[], "");
    assert_eq!(users.json(), json!({"users":[{"id":"u1"},{"id":"u2"}]}));
    let info = pusher_api(
        addr,
        "GET",
        &format!("/apps/{APP_ID}/channels/{room}"),
        &[("info", "user_count,subscription_count")],
        "",
    );
    assert_eq!(info.json(), json!({"occupied":true,"user_count":2,"subscription_count":3}));
    // u1 leaves only when its last tab does.
    a2.ws.shutdown();
    b.expect_quiet(Duration::from_millis(300));
    a1.send(json!({"event": "pusher:unsubscribe", "data": {"channel": room}}));
    let removed = b.expect("pusher_internal:member_removed");
    assert_eq!(removed["data"], r#"{"user_id":"u1"}"#);
    // Numeric user ids (the Node SDK's `{user_id: 10}`) are strings, and
    // channel_data is signed as sent (Pysher writes spaces).
    let mut c = PusherClient::connect(addr, APP_KEY);
    let channel_data = r#"{"user_id": 10, "user_info": {"name": "Mr. Channels"}}"#;
    let auth = channel_auth(&c.socket_id, room, Some(channel_data));
    let answer =
        c.subscribe_with(json!({"auth": auth, "channel": room, "channel_data": channel_data}));
    let here: Value = serde_json::from_str(answer["data"].as_str().unwrap()).unwrap();
    assert!(here["presence"]["ids"].as_array().unwrap().contains(&json!("10")), "{here}");
}

#[test]
fn a_presence_channel_past_its_member_limit_refuses_new_users() {
    let (_server, addr) = server_with(|config| {
        config.apps = apps(
            "[[apps]]\nid = \"1\"\nkey = \"app-key\"\nsecret = \"app-secret-0123456789\"\npresence_max_members = 1\n",
        );
    });
    let mut a = PusherClient::connect(addr, APP_KEY);
    a.join("presence-x", "u1", json!({}));
    let mut b = PusherClient::connect(addr, APP_KEY);
    let channel_data = json!({"user_id": "u2"}).to_string();
    let auth = channel_auth(&b.socket_id, "presence-x", Some(&channel_data));
    let refused = b.subscribe_with(
        json!({"auth": auth, "channel": "presence-x", "channel_data": channel_data}),
    );
    assert_eq!(refused["event"], "pusher:subscription_error");
    assert_eq!(refused["data"]["type"], "LimitReached");
    a.expect_quiet(Duration::from_millis(200));
    // Another tab of a member is not another user.
    b.join("presence-x", "u1", json!({}));
}

#[test]
fn client_events_reach_the_others_on_private_and_presence_channels_only() {
    let (_server, addr) = server();
    let mut a = PusherClient::connect(addr, APP_KEY);
    let mut b = PusherClient::connect(addr, APP_KEY);
    a.subscribe_private("private-chat");
    b.subscribe_private("private-chat");
    a.send(json!({"event": "client-typing", "channel": "private-chat", "data": {"name": "A"}}));
    assert_eq!(
        b.expect("client-typing"),
        json!({"event":"client-typing","channel":"private-chat","data":{"name":"A"}})
    );
    // String and absent data are relayed as sent.
    a.send(json!({"event": "client-s", "channel": "private-chat", "data": "text"}));
    assert_eq!(b.expect("client-s")["data"], "text");
    a.send(json!({"event": "client-none", "channel": "private-chat"}));
    assert!(b.expect("client-none").get("data").is_none());
    a.expect_quiet(Duration::from_millis(200));
    // On presence, the sender's user id comes along.
    a.join("presence-chat", "u1", json!({}));
    b.join("presence-chat", "u2", json!({}));
    a.send(json!({"event": "client-hi", "channel": "presence-chat", "data": {}}));
    assert_eq!(b.expect("client-hi")["user_id"], "u1");
    // Refusals are pusher:error, and the connection stays.
    let refusals = [
        (json!({"event": "client-x", "channel": "orders", "data": {}}), Value::Null),
        (json!({"event": "client-x", "channel": "private-other", "data": {}}), Value::Null),
        (json!({"event": "client-x", "channel": "private-encrypted-x", "data": {}}), Value::Null),
        (
            json!({"event": "pusher_internal:member_added", "channel": "presence-chat", "data": {}}),
            Value::Null,
        ),
    ];
    for (message, code) in refusals {
        a.send(message.clone());
        let error = a.expect("pusher:error");
        assert_eq!(error["data"]["code"], code, "{message}: {error}");
    }
}

#[test]
fn more_than_ten_client_events_a_second_are_refused_with_4301() {
    let (_server, addr) = server();
    let mut a = PusherClient::connect(addr, APP_KEY);
    let mut b = PusherClient::connect(addr, APP_KEY);
    a.subscribe_private("private-chat");
    b.subscribe_private("private-chat");
    // All fifteen in one write: the bucket refills 10 a second.
    let frames: Vec<u8> = (0..15)
        .flat_map(|n| {
            let message = json!({"event": "client-burst", "channel": "private-chat", "data": n});
            client_frame(true, 1, message.to_string().as_bytes())
        })
        .collect();
    a.ws.send_raw(&frames);
    let error = a.expect("pusher:error");
    assert_eq!(error["data"]["code"], 4301, "{error}");
    a.send(json!({"event": "pusher:ping", "data": ""}));
    a.expect("pusher:pong");
    let mut received = Vec::new();
    while let Some(event) = b.next_within(Duration::from_millis(300)) {
        if event["event"] == "client-burst" {
            received.push(event["data"].as_u64().unwrap());
        }
    }
    assert_eq!(received, (0..10).collect::<Vec<u64>>());
}

#[test]
fn client_events_are_off_unless_the_app_allows_them() {
    let (_server, addr) = server();
    let mut a = PusherClient::connect(addr, "other-key");
    let auth = {
        let signature = herald::wire::pusher::sign(
            &herald::config::Secret::new("other-secret-0123456789"),
            format!("{}:private-x", a.socket_id).as_bytes(),
        );
        format!("other-key:{signature}")
    };
    a.subscribe_with(json!({"auth": auth, "channel": "private-x"}));
    a.send(json!({"event": "client-x", "channel": "private-x", "data": {}}));
    let error = a.expect("pusher:error");
    assert!(error["data"]["message"].as_str().unwrap().contains("client_events"), "{error}");
}

#[test]
fn malformed_messages_get_errors_and_the_connection_stays() {
    let (_server, addr) = server();
    let mut client = PusherClient::connect(addr, APP_KEY);
    client.ws.send_text("not json");
    assert_eq!(client.expect("pusher:error")["data"]["code"], Value::Null);
    client.ws.send(2, b"\x00\x01");
    client.expect("pusher:error");
    client.send(json!({"event": "pusher:unknown", "data": {}}));
    client.send(json!({"event": "pusher:subscribe"}));
    client.expect("pusher:error");
    client.send(json!({"event": "pusher:subscribe", "data": "{\"channel\":\"s\"}"}));
    client.expect("pusher_internal:subscription_succeeded");
    client.send(json!({"event": "pusher:ping", "data": {}}));
    client.expect("pusher:pong");
}

#[test]
fn cache_channels_send_their_last_event_or_a_miss() {
    let (_server, addr) = server();
    let mut client = PusherClient::connect(addr, APP_KEY);
    client.subscribe("cache-empty");
    assert_eq!(
        client.expect("pusher:cache_miss"),
        json!({"event":"pusher:cache_miss","channel":"cache-empty","data":"{}"})
    );
    trigger(addr, &["cache-news"], "first", "1");
    trigger(addr, &["cache-news"], "second", "2");
    client.subscribe("cache-news");
    let cached = client.next();
    assert_eq!(cached["event"], "pusher_internal:herald_subscribed");
    let cached = client.next();
    assert_eq!((cached["event"].as_str(), cached["data"].as_str()), (Some("second"), Some("2")));
    let info = pusher_api(
        addr,
        "GET",
        &format!("/apps/{APP_ID}/channels/cache-news"),
        &[("info", "cache")],
        "",
    );
    let info = info.json();
    assert_eq!(info["cache"]["data"], "2");
    assert_eq!(info["cache"]["event"], "second");
    let ttl = info["cache"]["ttl"].as_u64().unwrap();
    assert!((1790..=1800).contains(&ttl), "{info}");
}

#[test]
fn signed_in_users_get_server_to_user_events_and_can_be_terminated() {
    let (_server, addr) = server();
    let user_data = r#"{"id":"u1","user_info":{"name":"A"}}"#;
    let mut tabs: Vec<PusherClient> =
        (0..2).map(|_| PusherClient::connect(addr, APP_KEY)).collect();
    for tab in &mut tabs {
        let auth = user_auth(&tab.socket_id, user_data);
        tab.send(json!({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}}));
        let success = tab.expect("pusher:signin_success");
        assert_eq!(success["data"]["user_data"], user_data);
        tab.send(json!({"event": "pusher:subscribe", "data": {"auth": "", "channel": "#server-to-user-u1"}}));
        tab.expect("pusher_internal:subscription_succeeded");
    }
    // A presence-only connection of the same user is not signed in.
    let mut presence_only = PusherClient::connect(addr, APP_KEY);
    presence_only.join("presence-r", "u1", json!({}));
    // Someone else may not take the user's channel.
    let mut other = PusherClient::connect(addr, APP_KEY);
    let refused = other.subscribe_with(json!({"auth": "", "channel": "#server-to-user-u1"}));
    assert_eq!(refused["data"]["status"], 403);
    // A bad sign-in is an error, not a close.
    other.send(json!({"event": "pusher:signin", "data": {"auth": user_auth("1.1", user_data), "user_data": user_data}}));
    assert_eq!(other.expect("pusher:error")["data"]["code"], 4009);
    trigger(addr, &["#server-to-user-u1"], "notice", r#"{"n":1}"#);
    for tab in &mut tabs {
        assert_eq!(tab.expect("notice")["data"], r#"{"n":1}"#);
    }
    let path = format!("/apps/{APP_ID}/users/u1/terminate_connections");
    let response = pusher_api(addr, "POST", &path, &[], "{}");
    assert_eq!((response.status, response.json()), (200, json!({})));
    for tab in &mut tabs {
        let (error, close) = error_then_close(&mut tab.ws);
        assert_eq!((error["data"]["code"].as_u64(), close), (Some(4009), 4009));
    }
    presence_only.send(json!({"event": "pusher:ping", "data": {}}));
    presence_only.expect("pusher:pong");
}

#[test]
fn socket_id_leaves_out_the_sender() {
    let (_server, addr) = server();
    let mut a = PusherClient::connect(addr, APP_KEY);
    let mut b = PusherClient::connect(addr, APP_KEY);
    a.subscribe("room");
    b.subscribe("room");
    let body =
        json!({"name": "e", "channel": "room", "data": "x", "socket_id": a.socket_id}).to_string();
    let response = pusher_api(addr, "POST", &format!("/apps/{APP_ID}/events"), &[], &body);
    assert_eq!(response.status, 200, "{}", response.body);
    b.expect("e");
    a.expect_quiet(Duration::from_millis(300));
}

#[test]
fn events_are_checked_whole_before_anything_is_published() {
    let (_server, addr) = server();
    let events = format!("/apps/{APP_ID}/events");
    let hundred: Vec<String> = (0..100).map(|n| format!("c{n}")).collect();
    let ok = json!({"name": "e", "channels": hundred, "data": "{}"});
    assert_eq!(pusher_api(addr, "POST", &events, &[], &ok.to_string()).status, 200);
    let many: Vec<String> = (0..101).map(|n| format!("c{n}")).collect();
    let bad_bodies = [
        (json!({"name": "e", "channels": many, "data": "{}"}), 400),
        (json!({"name": "e", "channel": "c", "data": "x".repeat(10 * 1024 + 1)}), 413),
        (json!({"name": "e", "channel": "c", "data": {"not": "a string"}}), 400),
        (json!({"name": "e", "channels": ["private-encrypted-a", "b"], "data": "{}"}), 400),
        (json!({"name": "e", "channel": "a:b", "data": "{}"}), 400),
        (json!({"name": "e", "channel": "c", "data": "{}", "socket_id": "1.x"}), 400),
        (json!({"name": "pusher_internal:x", "channel": "c", "data": "{}"}), 400),
        (json!({"channel": "c", "data": "{}"}), 400),
        (json!({"name": "e", "data": "{}"}), 400),
    ];
    for (body, status) in bad_bodies {
        let response = pusher_api(addr, "POST", &events, &[], &body.to_string());
        assert_eq!(response.status, status, "{body}: {}", response.body);
    }
    let batch_path = format!("/apps/{APP_ID}/batch_events");
    let ten: Vec<Value> =
        (0..10).map(|n| json!({"name": "e", "channel": format!("b{n}"), "data": "{}"})).collect();
    let response = pusher_api(addr, "POST", &batch_path, &[], &json!({"batch": ten}).to_string());
    assert_eq!((response.status, response.json()), (200, json!({})));
    let eleven: Vec<Value> =
        (0..11).map(|n| json!({"name": "e", "channel": format!("b{n}"), "data": "{}"})).collect();
    let response =
        pusher_api(addr, "POST", &batch_path, &[], &json!({"batch": eleven}).to_string());
    assert_eq!(response.status, 400);
}

#[test]
fn counts_come_back_with_info() {
    let (_server, addr) = server();
    let mut a = PusherClient::connect(addr, APP_KEY);
    a.join("presence-p", "u1", json!({}));
    a.subscribe("plain");
    let body = json!({"name": "e", "channels": ["presence-p", "plain"], "data": "{}", "info": "user_count,subscription_count"});
    let response =
        pusher_api(addr, "POST", &format!("/apps/{APP_ID}/events"), &[], &body.to_string());
    assert_eq!(
        response.json(),
        json!({"channels":{"presence-p":{"user_count":1,"subscription_count":1},"plain":{"subscription_count":1}}})
    );
    let batch = json!({"batch": [
        {"name": "e", "channel": "plain", "data": "{}", "info": "subscription_count"},
        {"name": "e", "channel": "plain", "data": "{}"},
    ]});
    let response =
        pusher_api(addr, "POST", &format!("/apps/{APP_ID}/batch_events"), &[], &batch.to_string());
    assert_eq!(response.json(), json!({"batch":[{"subscription_count":1},{}]}));
    let channels = format!("/apps/{APP_ID}/channels");
    let list = pusher_api(
        addr,
        "GET",
        &channels,
        &[("filter_by_prefix", "presence-"), ("info", "user_count")],
        "",
    );
    assert_eq!(list.json(), json!({"channels":{"presence-p":{"user_count":1}}}));
    let all = pusher_api(addr, "GET", &channels, &[], "");
    assert_eq!(all.json(), json!({"channels":{"plain":{},"presence-p":{}}}));
    let none = pusher_api(addr, "GET", &channels, &[("filter_by_prefix", "zzz")], "");
    assert_eq!(none.body, r#"{"channels":{}}"#, "an empty map, never a list");
    let refused = pusher_api(addr, "GET", &channels, &[("info", "user_count")], "");
    assert_eq!(refused.status, 400);
    let unoccupied = pusher_api(addr, "GET", &format!("{channels}/nobody"), &[], "");
    assert_eq!(unoccupied.json(), json!({"occupied":false}));
    let not_presence = pusher_api(addr, "GET", &format!("{channels}/plain/users"), &[], "");
    assert_eq!(not_presence.status, 400);
}

/// The PHP SDK's requests, as `Pusher.php` (7.2.6) builds them: one
/// `channel` key for a single channel, `body_md5` on every POST, a
/// `Content-Type: application/json` header even on GET, the query
/// percent-encoded by Guzzle, `"{}"` as the terminate body, and only
/// status 200 with a JSON body counts as success.
#[test]
fn php_sdk_shaped_requests_are_accepted() {
    let (_server, addr) = server_with(|config| config.pusher_path_prefix = "/herald".into());
    let mut client = PusherClient::connect(addr, APP_KEY);
    client.subscribe_private("private-ish");
    let php = |method: &str, path: &str, params: &[(&str, &str)], body: &str, prefix: &str| {
        let query = signed_query(method, path, params, body, APP_KEY, APP_SECRET, now());
        // Guzzle percent-encodes what it sends; the signature is over the
        // decoded values.
        let encoded = query.replace(',', "%2C").replace('-', "%2D");
        raw_request(
            addr,
            &format!(
                "{method} {prefix}{path}?{encoded} HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nX-Pusher-Library: pusher-http-php 7.2.6\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
    };
    let body =
        r#"{"name":"App\\Events\\OrderShipped","data":"{\"id\":1}","channel":"private-ish"}"#;
    for prefix in ["", "/herald"] {
        let response = php("POST", &format!("/apps/{APP_ID}/events"), &[], body, prefix);
        assert_eq!((response.status, response.body.as_str()), (200, "{}"), "prefix {prefix:?}");
        assert_eq!(client.expect("App\\Events\\OrderShipped")["data"], r#"{"id":1}"#);
    }
    let response = php(
        "GET",
        &format!("/apps/{APP_ID}/channels"),
        &[("info", "subscription_count"), ("filter_by_prefix", "private-")],
        "",
        "",
    );
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.json(), json!({"channels":{"private-ish":{"subscription_count":1}}}));
    let response =
        php("POST", &format!("/apps/{APP_ID}/users/nobody/terminate_connections"), &[], "{}", "");
    assert_eq!((response.status, response.body.as_str()), (200, "{}"));
    // The Python SDK's terminate path has no /apps/{id}, and it sends
    // body_md5 on GET too.
    let response = pusher_api(addr, "POST", "/users/nobody/terminate_connections", &[], "{}");
    assert_eq!(response.status, 200, "{}", response.body);
    let md5 = herald::wire::pusher::md5_hex(b"");
    let response =
        pusher_api(addr, "GET", &format!("/apps/{APP_ID}/channels"), &[("body_md5", &md5)], "");
    assert_eq!(response.status, 200, "{}", response.body);
}

#[test]
fn requests_that_do_not_check_out_are_401() {
    let (_server, addr) = server();
    let path = format!("/apps/{APP_ID}/events");
    let body = json!({"name": "e", "channel": "c", "data": "{}"}).to_string();
    let send = |query: String, body: &str, path: &str| {
        raw_request(
            addr,
            &format!(
                "POST {path}?{query} HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
    };
    let good = signed_query("POST", &path, &[], &body, APP_KEY, APP_SECRET, now());
    assert_eq!(send(good.clone(), &body, &path).status, 200);
    let cases = [
        (
            "wrong secret",
            signed_query("POST", &path, &[], &body, APP_KEY, "wrong-secret-0123456789", now()),
        ),
        ("601 s late", signed_query("POST", &path, &[], &body, APP_KEY, APP_SECRET, now() - 601)),
        ("601 s early", signed_query("POST", &path, &[], &body, APP_KEY, APP_SECRET, now() + 601)),
        ("unknown key", signed_query("POST", &path, &[], &body, "nope", APP_SECRET, now())),
        (
            "another app's key",
            signed_query("POST", &path, &[], &body, "other-key", "other-secret-0123456789", now()),
        ),
        ("a parameter changed", good.replace("auth_version=1.0", "auth_version=1.1")),
        ("no signature", good.split("&auth_signature").next().unwrap().to_string()),
    ];
    for (what, query) in cases {
        let response = send(query, &body, &path);
        assert_eq!(response.status, 401, "{what}: {}", response.body);
    }
    let tampered = body.replace("\"e\"", "\"f\"");
    assert_eq!(send(good, &tampered, &path).status, 401, "body_md5 mismatch");
    // A disabled app is 403.
    let off = "/apps/3/events";
    let query = signed_query("POST", off, &[], &body, "off-key", "off-secret-0123456789", now());
    assert_eq!(send(query, &body, off).status, 403);
}

#[test]
fn a_quiet_client_is_pinged_then_closed_with_4201() {
    let (_server, addr) = server_with(|config| {
        config.apps = apps(
            "[[apps]]\nid = \"1\"\nkey = \"app-key\"\nsecret = \"app-secret-0123456789\"\nactivity_timeout_secs = 1\npong_timeout_secs = 1\n",
        );
    });
    let mut silent = PusherClient::connect(addr, APP_KEY);
    let mut alive = PusherClient::connect(addr, APP_KEY);
    assert_eq!(silent.activity_timeout, 1);
    let started = std::time::Instant::now();
    let watcher = std::thread::spawn(move || {
        let (mut ping_frame, mut ping_event) = (false, false);
        let close = loop {
            let frame = silent.ws.try_read_frame().expect("frames until the close");
            match frame.opcode {
                9 => ping_frame = true,
                1 if frame.json()["event"] == "pusher:ping" => ping_event = true,
                1 => assert_eq!(frame.json()["data"]["code"], 4201, "{}", frame.text()),
                8 => break frame.close_code(),
                _ => {}
            }
        };
        assert!(ping_frame && ping_event, "both pings came first");
        assert_eq!(close, Some(4201));
        assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
    });
    // Meanwhile a client that answers pusher:ping stays.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        if let Some(event) = alive.next_within(Duration::from_millis(200))
            && event["event"] == "pusher:ping"
        {
            alive.send(json!({"event": "pusher:pong", "data": {}}));
        }
    }
    alive.send(json!({"event": "pusher:ping", "data": {}}));
    alive.expect("pusher:pong");
    watcher.join().unwrap();
}

#[test]
fn shutdown_closes_pusher_clients_with_4200_so_they_come_back_at_once() {
    let (server, addr) = server();
    let mut client = PusherClient::connect(addr, APP_KEY);
    let stopper = std::thread::spawn(move || server.shutdown());
    let (error, close) = error_then_close(&mut client.ws);
    assert_eq!((error["data"]["code"].as_u64(), close), (Some(4200), 4200));
    client.ws.finish_close(4200);
    stopper.join().unwrap();
}

#[test]
fn herald_since_replays_what_a_client_missed_once_in_order() {
    let (_server, addr) = server();
    let mut client = PusherClient::connect(addr, APP_KEY);
    client.subscribe("feed");
    let position = data_of(&client.expect("pusher_internal:herald_subscribed"));
    let epoch = position["epoch"].as_str().unwrap().to_string();
    trigger(addr, &["feed"], "e", "1");
    let seen = client.expect("e")["herald_offset"].as_u64().unwrap();
    client.ws.shutdown();
    for n in 2..=4 {
        trigger(addr, &["feed"], "e", &n.to_string());
    }
    let mut back = PusherClient::connect(addr, APP_KEY);
    let since = json!({"epoch": epoch, "offset": seen});
    back.subscribe_with(json!({"auth": "", "channel": "feed", "herald_since": since}));
    let position = data_of(&back.expect("pusher_internal:herald_subscribed"));
    assert_eq!(position, json!({"epoch": epoch, "offset": 4, "recovered": true, "missed": 3}));
    let replayed: Vec<String> =
        (0..3).map(|_| back.expect("e")["data"].as_str().unwrap().to_string()).collect();
    assert_eq!(replayed, ["2", "3", "4"]);
    trigger(addr, &["feed"], "e", "5");
    assert_eq!(back.expect("e")["data"], "5");
    back.expect_quiet(Duration::from_millis(200));
    // From another epoch: not recovered, nothing replayed.
    let mut stale = PusherClient::connect(addr, APP_KEY);
    stale.subscribe_with(
        json!({"auth": "", "channel": "feed", "herald_since": {"epoch": "00000000", "offset": 2}}),
    );
    let position = data_of(&stale.expect("pusher_internal:herald_subscribed"));
    assert_eq!(position["recovered"], false);
    stale.expect_quiet(Duration::from_millis(200));
}

#[test]
fn pusher_channels_are_apart_from_ws_channels() {
    let server = start_server(2, |config| config.apps = apps(APPS));
    let (mut ws, _) = WsClient::open_client(server.addr);
    ws.subscribe("orders");
    let mut pusher = PusherClient::connect(server.addr, APP_KEY);
    pusher.subscribe("orders");
    trigger(server.addr, &["orders"], "e", "1");
    server.publish("orders", json!(2));
    assert_eq!(pusher.expect("e")["data"], "1");
    pusher.expect_quiet(Duration::from_millis(200));
    assert_eq!(ws.next_push()["data"], 2);
    // herald's own API lists no app channel.
    let channels = ApiClient::new(server.addr, &server.api_key).send("GET", "/api/channels", "");
    assert!(!channels.body.contains(';'), "{}", channels.body);
}
