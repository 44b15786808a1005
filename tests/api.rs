//! The server API over real sockets: every endpoint and error status, request-smuggling shapes, keep-alive with pipelining, the key lockout, and /metrics.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

mod common;

use common::*;
use serde_json::{Value, json};
use std::io::Write;

/// A `/ws` client of `user` (token from the test server).
fn user_client(server: &TestServer, user: &str) -> (WsClient, Value) {
    let token = server.token(user, &[]);
    WsClient::open_client_at(server.addr, &format!("/ws?token={token}"), "")
}

/// Opens clients of `user` until one lives on each of two shards.
fn user_on_both_shards(server: &TestServer, user: &str) -> Vec<WsClient> {
    let mut clients: Vec<Option<WsClient>> = vec![None, None];
    for _ in 0..200 {
        let (client, welcome) = user_client(server, user);
        let shard = shard_of(&welcome);
        if clients[shard].is_none() {
            clients[shard] = Some(client);
        }
        if clients.iter().all(Option::is_some) {
            return clients.into_iter().map(Option::unwrap).collect();
        }
    }
    panic!("the kernel never put a connection on both shards");
}

#[test]
fn publish_with_exclude_client_skips_only_that_client() {
    let server = start_server(2, |_| {});
    let (mut excluded, welcome) = WsClient::open_client(server.addr);
    let (mut other, _) = WsClient::open_client(server.addr);
    excluded.subscribe("news");
    other.subscribe("news");
    let mut api = ApiClient::new(server.addr, &server.api_key);
    let body = json!({"channel": "news", "data": "first", "exclude_client": welcome["client"]});
    let answer = api.send("POST", "/api/publish", &body.to_string());
    assert_eq!((answer.status, &answer.json()["offset"]), (200, &json!(1)));
    api.publish("news", json!("second"));
    assert_eq!(other.next_push()["data"], "first");
    assert_eq!(other.next_push()["data"], "second");
    assert_eq!(excluded.next_push()["data"], "second", "the first never reached it");
    let bad = api.send("POST", "/api/publish", r#"{"channel":"news","data":1,"exclude_client":5}"#);
    assert_eq!(bad.status, 400);
}

#[test]
fn broadcast_publishes_to_every_channel_or_none() {
    let server = start_server(2, |_| {});
    let (mut a, _) = WsClient::open_client(server.addr);
    let (mut b, _) = WsClient::open_client(server.addr);
    a.subscribe("news");
    b.subscribe("chat:lobby");
    let mut api = ApiClient::new(server.addr, &server.api_key);
    api.publish("news", json!(0));
    let body = json!({"channels": ["news", "chat:lobby"], "data": {"n": 1}});
    let answer = api.send("POST", "/api/broadcast", &body.to_string());
    assert_eq!(answer.status, 200, "{}", answer.body);
    let results = answer.json()["results"].clone();
    assert_eq!(results[0]["channel"], "news");
    assert_eq!(results[0]["offset"], 2);
    assert_eq!(results[1]["channel"], "chat:lobby");
    assert_eq!(results[1]["offset"], 1);
    assert_eq!(a.next_push()["offset"], 1);
    assert_eq!(a.next_push()["data"], json!({"n": 1}));
    assert_eq!(b.next_push()["data"], json!({"n": 1}));
    // One bad channel refuses the whole request: nothing is published.
    for (body, status) in [
        (json!({"channels": ["news", "bad channel"], "data": 1}), 400),
        (json!({"channels": ["news", "nosuch:x"], "data": 1}), 404),
        (json!({"channels": ["news", "news"], "data": 1}), 400),
        (json!({"channels": [], "data": 1}), 400),
        (json!({"channels": "news", "data": 1}), 400),
        (json!({"channels": ["news"]}), 400),
    ] {
        let answer = api.send("POST", "/api/broadcast", &body.to_string());
        assert_eq!(answer.status, status, "{body}: {}", answer.body);
    }
    assert_eq!(api.publish("news", json!(3)).json()["offset"], 3, "nothing was published");
}

#[test]
fn disconnect_closes_every_connection_of_the_user_on_every_shard_with_4000() {
    let server = start_server(2, |_| {});
    let mut victims = user_on_both_shards(&server, "42");
    let (mut bystander, _) = user_client(&server, "7");
    let mut api = ApiClient::new(server.addr, &server.api_key);
    let answer = api.send("POST", "/api/disconnect", r#"{"user":"42"}"#);
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json(), json!({"disconnected": 2}));
    for victim in &mut victims {
        assert_eq!(victim.expect_close(), 4000);
    }
    assert_eq!(bystander.ok(json!({"op": "ping"}))["op"], "pong");
    let none = api.send("POST", "/api/disconnect", r#"{"user":"nobody"}"#);
    assert_eq!(none.json(), json!({"disconnected": 0}));
    for body in [r#"{"user":""}"#, r#"{"user":42}"#, "{}", "[]"] {
        assert_eq!(api.send("POST", "/api/disconnect", body).status, 400, "{body}");
    }
}

#[test]
fn unsubscribe_removes_the_user_from_the_channel_and_tells_it() {
    let server = start_server(2, |_| {});
    let mut users = user_on_both_shards(&server, "42");
    let (mut other, _) = user_client(&server, "7");
    for client in users.iter_mut().chain([&mut other]) {
        client.subscribe("news");
        client.subscribe("barrier");
    }
    let mut api = ApiClient::new(server.addr, &server.api_key);
    let answer = api.send("POST", "/api/unsubscribe", r#"{"user":"42","channel":"news"}"#);
    assert_eq!(answer.json(), json!({"unsubscribed": 2}));
    api.publish("news", json!("after"));
    api.publish("barrier", json!("barrier"));
    for client in &mut users {
        let push = client.next_push();
        assert_eq!(
            (push["op"].as_str(), push["channel"].as_str()),
            (Some("unsubscribed"), Some("news"))
        );
        assert_eq!(
            client.next_push()["channel"],
            "barrier",
            "news after the unsubscribe never came"
        );
    }
    assert_eq!(other.next_push()["data"], "after");
    let again = api.send("POST", "/api/unsubscribe", r#"{"user":"42","channel":"news"}"#);
    assert_eq!(again.json(), json!({"unsubscribed": 0}));
    let bad = api.send("POST", "/api/unsubscribe", r#"{"user":"42","channel":"bad channel"}"#);
    assert_eq!(bad.status, 400);
    let unknown = api.send("POST", "/api/unsubscribe", r#"{"user":"42","channel":"nosuch:a"}"#);
    assert_eq!(unknown.status, 404);
}

#[test]
fn presence_history_channels_and_info() {
    let server = start_server(2, |_| {});
    let (mut alice, alice_welcome) = user_client(&server, "alice");
    let (mut bob, _) = user_client(&server, "bob");
    alice.subscribe("chat:room");
    bob.subscribe("chat:room");
    bob.subscribe("news");
    let mut api = ApiClient::new(server.addr, &server.api_key);

    let presence = api.send("GET", "/api/presence?channel=chat%3Aroom", "");
    assert_eq!(presence.status, 200, "{}", presence.body);
    assert_eq!(sorted_field(&presence.json()["clients"], "user"), ["alice", "bob"]);
    assert!(
        presence.json()["clients"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["client"] == alice_welcome["client"])
    );
    assert_eq!(api.send("GET", "/api/presence?channel=news", "").status, 400, "presence is off");
    assert_eq!(api.send("GET", "/api/presence", "").status, 400);

    for n in 1..=5 {
        api.publish("news", json!(n));
    }
    let all = api.send("GET", "/api/history?channel=news", "").json();
    assert_eq!(all["offset"], 5);
    assert_eq!(all["publications"].as_array().unwrap().len(), 5);
    let epoch = all["epoch"].as_str().unwrap();
    let page = api
        .send("GET", &format!("/api/history?channel=news&since_offset=2&epoch={epoch}&limit=2"), "")
        .json();
    assert_eq!(page["publications"], json!([{"offset": 3, "data": 3}, {"offset": 4, "data": 4}]));
    for bad in [
        "/api/history?channel=news&since_offset=2",
        "/api/history?channel=news&epoch=abc",
        "/api/history?channel=news&limit=-1",
        "/api/history?channel=news&channel=other",
        "/api/history?channel=%zz",
        "/api/history?channel=live:x",
    ] {
        assert_eq!(api.send("GET", bad, "").status, 400, "{bad}");
    }
    let user_channel = api.send("GET", "/api/history?channel=%2342", "").json();
    assert_eq!(user_channel["offset"], 0, "a user channel is named with %23");

    let channels = api.send("GET", "/api/channels", "").json();
    assert_eq!(
        channels["channels"],
        json!([{"channel": "chat:room", "subscribers": 2}, {"channel": "news", "subscribers": 1}])
    );
    let chat = api.send("GET", "/api/channels?prefix=chat:", "").json();
    assert_eq!(chat["channels"].as_array().unwrap().len(), 1);

    let info = api.send("GET", "/api/info", "").json();
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["connections"], 3, "two clients and this API connection");
    assert_eq!(info["shards"], 2);
    assert_eq!(info["nodes"].as_array().unwrap().len(), 1);
    assert!(info["uptime_secs"].is_u64());
}

#[test]
fn every_error_status_of_the_api() {
    let server = start_server(1, |config| config.max_api_body_bytes = 1024);
    let key = format!("Authorization: apikey {}\r\n", server.api_key);
    let cases = [
        ("POST /api/publish HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}".to_string(), 401),
        ("GET /api/info HTTP/1.1\r\nAuthorization: Bearer x\r\n\r\n".to_string(), 401),
        (format!("GET /api/nothing HTTP/1.1\r\n{key}\r\n"), 404),
        (format!("GET /api/publish HTTP/1.1\r\n{key}\r\n"), 405),
        (format!("POST /api/info HTTP/1.1\r\n{key}Content-Length: 0\r\n\r\n"), 405),
        (format!("POST /api/publish HTTP/1.1\r\n{key}\r\n"), 411),
        (format!("POST /api/publish HTTP/1.1\r\n{key}Transfer-Encoding: chunked\r\n\r\n"), 411),
        (format!("POST /api/publish HTTP/1.1\r\n{key}Content-Length: 5000\r\n\r\n"), 413),
        (format!("POST /api/publish HTTP/1.1\r\n{key}Content-Length: 3\r\n\r\n{{x}}"), 400),
    ];
    for (request_text, status) in cases {
        let response = request(server.addr, &request_text);
        assert_eq!(response.status, status, "{request_text}");
        assert!(response.json()["error"]["message"].is_string());
    }
    let response = request(server.addr, &format!("GET /api/publish HTTP/1.1\r\n{key}\r\n"));
    assert_eq!(response.header("allow"), Some("POST"));
    assert_eq!(error_code(&request(server.addr, "GET /api/info HTTP/1.1\r\n\r\n")), "unauthorized");
}

/// Requests whose framing two HTTP parsers could read differently: each is
/// refused with 400 and the connection closed, so nothing after it can be
/// taken for a second request.
#[test]
fn request_smuggling_shapes_are_refused_and_closed() {
    let server = start_server(1, |_| {});
    let key = format!("Authorization: apikey {}\r\n", server.api_key);
    let body = r#"{"channel":"news","data":1}"#;
    let len = body.len();
    let smuggled = "GET /api/info HTTP/1.1\r\n\r\n";
    let shapes = [
        format!(
            "POST /api/publish HTTP/1.1\r\n{key}Content-Length: {len}\r\nContent-Length: {len}\r\n\r\n{body}"
        ),
        format!(
            "POST /api/publish HTTP/1.1\r\n{key}Content-Length: {len}\r\nContent-Length: 0\r\n\r\n{body}"
        ),
        format!("POST /api/publish HTTP/1.1\r\n{key}Content-Length: {len}, {len}\r\n\r\n{body}"),
        format!("POST /api/publish HTTP/1.1\r\n{key}Content-Length: +{len}\r\n\r\n{body}"),
        format!("POST /api/publish HTTP/1.1\r\n{key}Content-Length: -1\r\n\r\n{body}"),
        format!(
            "POST /api/publish HTTP/1.1\r\n{key}Content-Length: {len}\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
        ),
        format!(
            "POST /api/publish HTTP/1.1\r\n{key}Transfer-Encoding: chunked\r\nContent-Length: {len}\r\n\r\n{body}"
        ),
        format!(
            "POST /api/publish HTTP/1.1\r\n{key}Content-Length: {len}\r\nX-Folded: a\r\n b\r\n\r\n{body}"
        ),
        format!(
            "POST /api/publish HTTP/1.1\r\n{key}X-Folded: a\r\n\tContent-Length: 0\r\nContent-Length: {len}\r\n\r\n{body}"
        ),
        format!(
            "POST /api/publish HTTP/1.1\r\n{key}Content-Length: {len}\rX-Bare: cr\r\n\r\n{body}"
        ),
        format!("POST /api/publish HTTP/1.1\r{key}Content-Length: {len}\r\n\r\n{body}"),
        format!("POST /api/publish HTTP/1.1\r\n{key}Content-Length : {len}\r\n\r\n{body}"),
    ];
    for shape in shapes {
        let mut stream = connect(server.addr);
        stream.write_all(format!("{shape}{smuggled}").as_bytes()).unwrap();
        let response = read_response(&mut stream, &mut Vec::new());
        assert_eq!(response.status, 400, "{shape:?}: {}", response.body);
        assert_eq!(response.header("connection"), Some("close"), "{shape:?}");
        assert!(closed_by_server(&mut stream), "{shape:?}: the connection stays open");
    }
    // None of them published anything.
    let mut api = ApiClient::new(server.addr, &server.api_key);
    assert_eq!(api.publish("news", json!(1)).json()["offset"], 1);
}

#[test]
fn pipelined_requests_are_answered_in_order_even_across_shards() {
    let server = start_server(2, |_| {});
    let (mut victim, _) = user_client(&server, "42");
    let key = &server.api_key;
    let publish = |n: u32| {
        let body = json!({"channel": "news", "data": n}).to_string();
        api_request(key, "POST", "/api/publish", &body)
    };
    let disconnect = api_request(key, "POST", "/api/disconnect", r#"{"user":"42"}"#);
    let info = api_request(key, "GET", "/api/info", "");
    // The disconnect waits for both shards; the answers of what follows it
    // wait their turn.
    let batch = [publish(1), disconnect, publish(2), info, publish(3)].concat();
    let mut stream = connect(server.addr);
    stream.write_all(batch.as_bytes()).unwrap();
    let mut rest = Vec::new();
    let answers: Vec<Value> =
        (0..5).map(|_| read_response(&mut stream, &mut rest).json()).collect();
    assert_eq!(answers[0]["offset"], 1);
    assert_eq!(answers[1], json!({"disconnected": 1}));
    assert_eq!(answers[2]["offset"], 2);
    assert!(answers[3]["version"].is_string());
    assert_eq!(answers[4]["offset"], 3);
    assert_eq!(victim.expect_close(), 4000);
    // Byte by byte, the same.
    let mut slow = connect(server.addr);
    for byte in [publish(4), publish(5)].concat().bytes() {
        slow.write_all(&[byte]).unwrap();
    }
    let mut rest = Vec::new();
    assert_eq!(read_response(&mut slow, &mut rest).json()["offset"], 4);
    assert_eq!(read_response(&mut slow, &mut rest).json()["offset"], 5);
}

#[test]
fn pipelined_publishes_that_wait_for_the_store_are_carried_out_together_and_answered_in_order() {
    // With a data_dir every publish waits for its group's commit. Pipelined
    // on one connection, each used to wait for the one before: one commit
    // per publish. Now they are carried out together, and the answers
    // (with a refusal and a synchronous answer among them) keep their order.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("pipelined-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = start_server(1, |config| config.data_dir = Some(dir.join("data")));
    let key = &server.api_key;
    let publishes = 200;
    let between =
        [api_request(key, "POST", "/api/publish", "{}"), api_request(key, "GET", "/api/info", "")];
    let batch = publish_batch(key, "news", publishes, 100, &between);
    let mut stream = connect(server.addr);
    stream.write_all(batch.as_bytes()).unwrap();
    let mut rest = Vec::new();
    for n in 1..=publishes {
        let answer = read_response(&mut stream, &mut rest);
        assert_eq!(answer.status, 200, "publish {n}: {}", answer.body);
        assert_eq!(answer.json()["offset"], n, "publish {n}");
        if n == 100 {
            assert_eq!(read_response(&mut stream, &mut rest).status, 400);
            assert!(read_response(&mut stream, &mut rest).json()["version"].is_string());
        }
    }
    let metrics = request(server.addr, "GET /metrics HTTP/1.1\r\n\r\n").body;
    let commits: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("herald_store_commits_total "))
        .and_then(|value| value.trim().parse().ok())
        .expect("herald_store_commits_total");
    assert!(commits <= publishes / 4, "{commits} commits for {publishes} pipelined publishes");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let server = start_server(1, |_| {});
    let body = r#"{"channel":"news","data":"late"}"#;
    let mut stream = connect(server.addr);
    let head = format!(
        "POST /api/publish HTTP/1.1\r\nAuthorization: apikey {}\r\nExpect: 100-continue\r\n\
         Content-Length: {}\r\n\r\n",
        server.api_key,
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    let mut rest = Vec::new();
    assert_eq!(read_response(&mut stream, &mut rest).status, 100);
    stream.write_all(body.as_bytes()).unwrap();
    assert_eq!(read_response(&mut stream, &mut rest).json()["offset"], 1);
    // An oversized body is refused before it is sent.
    let big = format!(
        "POST /api/publish HTTP/1.1\r\nAuthorization: apikey {}\r\nExpect: 100-continue\r\n\
         Content-Length: 100000000\r\n\r\n",
        server.api_key
    );
    assert_eq!(request(server.addr, &big).status, 413);
}

#[test]
fn repeated_key_failures_get_429_while_the_right_key_is_always_served() {
    let server = start_server(1, |_| {});
    for _ in 0..herald::auth::MAX_KEY_FAILURES {
        // A refusal before the body is read closes the connection: a new one each time.
        let mut wrong = ApiClient::new(server.addr, "wrong-key-000000");
        assert_eq!(wrong.publish("news", json!(1)).status, 401);
    }
    // From the same address (a NAT, a proxy): wrong keys now wait...
    let mut stream = connect(server.addr);
    let wrong = "GET /api/info HTTP/1.1\r\nAuthorization: apikey wrong-key-000000\r\n\r\n";
    stream.write_all(wrong.as_bytes()).unwrap();
    let refused = read_response(&mut stream, &mut Vec::new());
    assert_eq!(refused.status, 429);
    assert_eq!(error_code(&refused), "limit_exceeded");
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(closed_by_server(&mut stream));
    // ...and the backend with the right key is served as ever.
    let mut right = ApiClient::new(server.addr, &server.api_key);
    assert_eq!(right.publish("news", json!(1)).status, 200);
    assert_eq!(right.send("GET", "/api/info", "").status, 200);
    // WebSocket clients and /health are not API requests: unaffected.
    let (mut client, _) = WsClient::open_client(server.addr);
    assert_eq!(client.ok(json!({"op": "ping"}))["op"], "pong");
    assert_eq!(request(server.addr, "GET /health HTTP/1.1\r\n\r\n").status, 200);
}

#[test]
fn server_api_requests_with_bare_lf_line_ends_are_refused_and_closed() {
    let server = start_server(1, |_| {});
    let (mut subscriber, _) = WsClient::open_client(server.addr);
    subscriber.subscribe("news");
    let body = r#"{"channel":"news","data":1}"#;
    let key = &server.api_key;
    for head in [
        // A bare LF hides a second Content-Length from a CRLF-only parser.
        format!(
            "POST /api/publish HTTP/1.1\r\nAuthorization: apikey {key}\r\nX-A: a\nContent-Length: {}\r\n\r\n",
            body.len()
        ),
        format!(
            "POST /api/publish HTTP/1.1\nAuthorization: apikey {key}\nContent-Length: {}\n\n",
            body.len()
        ),
        format!("GET /api/info HTTP/1.1\r\nAuthorization: apikey {key}\n\r\n"),
    ] {
        let mut stream = connect(server.addr);
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body.as_bytes()).unwrap();
        let response = read_response(&mut stream, &mut Vec::new());
        assert_eq!(response.status, 400, "{head:?}");
        assert!(response.body.contains("CRLF"), "{}", response.body);
        assert!(closed_by_server(&mut stream));
    }
    assert!(subscriber.frame_within(std::time::Duration::from_millis(100)).is_none());
    // Other endpoints still take a bare LF, as RFC 9112 allows.
    assert_eq!(request(server.addr, "GET /health HTTP/1.1\nHost: x\n\n").status, 200);
}

#[test]
fn metrics_count_what_happened() {
    let server = start_server(2, |_| {});
    let (mut client, _) = WsClient::open_client(server.addr);
    client.subscribe("news");
    let mut api = ApiClient::new(server.addr, &server.api_key);
    api.publish("news", json!(1));
    client.next_push();
    api.send("GET", "/api/nothing", "");
    request(server.addr, "GET /nowhere HTTP/1.1\r\n\r\n");
    let scrape = request(server.addr, "GET /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(scrape.status, 200);
    assert!(scrape.header("content-type").unwrap().starts_with("text/plain; version=0.0.4"));
    let value = |line_start: &str| -> f64 {
        scrape
            .body
            .lines()
            .find_map(|line| line.strip_prefix(line_start)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {line_start} in\n{}", scrape.body))
    };
    assert_eq!(value("herald_publications_total "), 1.0);
    assert_eq!(value("herald_deliveries_total "), 1.0);
    assert_eq!(value("herald_connections{transport=\"websocket\"} "), 1.0);
    assert!(
        value("herald_connections{transport=\"http\"} ") >= 2.0,
        "the API client and this scrape"
    );
    assert_eq!(value("herald_api_requests_total{endpoint=\"publish\",status=\"200\"} "), 1.0);
    assert_eq!(value("herald_api_requests_total{endpoint=\"unknown\",status=\"404\"} "), 1.0);
    assert_eq!(value("herald_connections_refused_total{reason=\"404\"} "), 1.0);
    assert!(value("herald_messages_received_total ") >= 1.0);
    assert!(value("herald_messages_sent_total ") >= 3.0, "welcome, subscribed, the push");
    assert!(value("herald_bytes_received_total ") > 0.0);
    // Each shard has its own series; the shards together turned many times.
    let turns = value("herald_loop_iterations_total{shard=\"0\"} ")
        + value("herald_loop_iterations_total{shard=\"1\"} ");
    assert!(turns > 0.0);
    assert_eq!(
        turns,
        value("herald_loop_turn_seconds_count{shard=\"0\"} ")
            + value("herald_loop_turn_seconds_count{shard=\"1\"} ")
    );
    assert_eq!(value("herald_channels "), 1.0);
    client.send_text(r#"{"op":"subscribe","channel":"chat:x"}"#);
    drop(client);
    let after = request(server.addr, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(after.status, 405);
}
