//! `/sse` and `/poll` over real sockets: delivery, cursors, recovery, auth refusals, the slow-reader bound, and 1,000 held polls answered by one publish.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

mod common;

use common::*;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// One server-sent event.
#[derive(Debug, Default, Clone)]
struct Event {
    id: Option<String>,
    event: String,
    data: String,
}

impl Event {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{:?}: {e}", self.data))
    }
}

/// An open `/sse` stream.
struct Sse {
    stream: TcpStream,
    buf: Vec<u8>,
    head: Response,
    comments: Vec<String>,
}

impl Sse {
    fn open(addr: std::net::SocketAddr, target: &str, headers: &str) -> Sse {
        let mut stream = connect(addr);
        let request = format!("GET {target} HTTP/1.1\r\nHost: herald\r\n{headers}\r\n");
        stream.write_all(request.as_bytes()).unwrap();
        let mut buf = Vec::new();
        let head = read_response_head(&mut stream, &mut buf);
        Sse { stream, buf, head, comments: Vec::new() }
    }

    /// The next event, skipping `retry:` and comment lines (kept in `comments`).
    fn next(&mut self) -> Event {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block = String::from_utf8(self.buf.drain(..end + 2).collect()).unwrap();
                let mut event = Event::default();
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(comment) = line.strip_prefix(':') {
                        self.comments.push(comment.trim().to_string());
                    } else if let Some(id) = line.strip_prefix("id: ") {
                        event.id = Some(id.to_string());
                    } else if let Some(name) = line.strip_prefix("event: ") {
                        event.event = name.to_string();
                    } else if let Some(value) = line.strip_prefix("data: ") {
                        data.push(value.to_string());
                    }
                }
                if !event.event.is_empty() {
                    event.data = data.join("\n");
                    return event;
                }
                continue;
            }
            assert!(Instant::now() < deadline, "no event within the deadline");
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk).expect("read SSE");
            assert!(n > 0, "the stream ended; had {:?}", String::from_utf8_lossy(&self.buf));
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next `message` event.
    fn message(&mut self) -> Event {
        loop {
            let event = self.next();
            if event.event == "message" {
                return event;
            }
        }
    }
}

/// Reads a response head only (an SSE answer has no length).
fn read_response_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Response {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(buf.drain(..end + 4).collect()).unwrap();
            let status = head.split(' ').nth(1).unwrap().parse().unwrap();
            return Response { status, head, body: String::new() };
        }
        assert!(Instant::now() < deadline, "no head");
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before a head");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn get(addr: std::net::SocketAddr, target: &str) -> Response {
    request(addr, &format!("GET {target} HTTP/1.1\r\nHost: herald\r\n\r\n"))
}

#[test]
fn sse_delivers_every_channel_with_cursors_and_keeps_data_byte_for_byte() {
    let server = start_server(2, |_| {});
    let mut sse = Sse::open(server.addr, "/sse?channel=news&channel=chat%3Aroom", "");
    assert_eq!(sse.head.status, 200);
    assert_eq!(sse.head.header("content-type"), Some("text/event-stream"));
    assert_eq!(sse.head.header("cache-control"), Some("no-cache"));
    let first = sse.next();
    assert_eq!((first.event.as_str(), &first.json()["channel"]), ("subscribed", &json!("news")));
    let second = sse.next();
    assert_eq!(second.json()["channel"], "chat:room");
    server.publish("news", json!({"n": 1}));
    server.publish("chat:room", json!("two"));
    let one = sse.message();
    assert_eq!(one.json(), json!({"channel": "news", "offset": 1, "data": {"n": 1}}));
    let two = sse.message();
    assert_eq!(two.json()["data"], "two");
    // The id holds both positions.
    assert_eq!(two.id.as_deref().unwrap().split('.').count(), 2);
    assert!(two.id.as_deref().unwrap().ends_with("-1"));
    // Data with line breaks arrives as several data lines, joined again.
    let mut api = ApiClient::new(server.addr, &server.api_key);
    let pretty = "{\"channel\":\"news\",\"data\":{\n  \"a\": 1\n}}";
    assert_eq!(api.send("POST", "/api/publish", pretty).status, 200);
    assert_eq!(sse.message().data, "{\"channel\":\"news\",\"offset\":2,\"data\":{\n  \"a\": 1\n}}");
}

#[test]
fn sse_recovers_from_last_event_id_or_cursor_in_order_and_once() {
    let server = start_server(2, |_| {});
    let mut sse = Sse::open(server.addr, "/sse?channel=news&channel=chat%3Aroom", "");
    for n in 1..=2 {
        server.publish("news", json!(n));
    }
    sse.message();
    let last_id = sse.message().id.unwrap();
    drop(sse);
    for n in 3..=5 {
        server.publish("news", json!(n));
    }
    server.publish("chat:room", json!("c1"));
    // Both reconnect from the same id: the second also misses what was
    // published live during the first.
    let mut missed_news = vec![json!(3), json!(4), json!(5)];
    for (target, header) in [
        (
            "/sse?channel=news&channel=chat%3Aroom".to_string(),
            format!("Last-Event-ID: {last_id}\r\n"),
        ),
        (format!("/sse?channel=news&channel=chat%3Aroom&cursor={last_id}"), String::new()),
    ] {
        let mut sse = Sse::open(server.addr, &target, &header);
        // Each channel's `subscribed` event comes before what it missed.
        let mut subscribed = Vec::new();
        let mut got: Vec<Value> = Vec::new();
        while got.len() < missed_news.len() + 1 {
            let event = sse.next();
            match event.event.as_str() {
                "subscribed" => subscribed.push(event.json()),
                "message" => {
                    let channel = event.json()["channel"].as_str().unwrap().to_string();
                    assert!(subscribed.iter().any(|s| s["channel"] == channel.as_str()));
                    got.push(event.json()["data"].clone());
                }
                other => panic!("unexpected event {other}"),
            }
        }
        assert_eq!(subscribed[0]["recovered"], true, "{}", subscribed[0]);
        assert_eq!(subscribed[0]["missed"], missed_news.len());
        assert_eq!(subscribed[1]["missed"], 1);
        let mut expected = missed_news.clone();
        expected.push(json!("c1"));
        assert_eq!(got, expected);
        // Live messages continue after the replay, without duplicates.
        let live = server.publish("news", json!("live"));
        let event = sse.message();
        assert_eq!(event.json()["offset"], live["offset"]);
        missed_news.push(json!("live"));
    }
    // Another epoch cannot be recovered: the client is told.
    let mut sse = Sse::open(server.addr, "/sse?channel=news&cursor=abcdef01-3", "");
    let subscribed = sse.next();
    assert_eq!(subscribed.json()["recovered"], false);
}

#[test]
fn sse_and_poll_refuse_what_ws_refuses() {
    let server = start_server(1, |config| config.allow_anonymous = true);
    let token = server.token("42", &["private-a"]);
    for path in ["/sse", "/poll"] {
        let cases = [
            (format!("{path}?channel=private-b"), 401),
            (format!("{path}?channel=private-b&token={token}"), 403),
            (format!("{path}?channel=%2343&token={token}"), 403),
            (format!("{path}?channel=news&token=not.a.token"), 401),
            (format!("{path}?channel=nosuch:x"), 404),
            (path.to_string(), 400),
            (format!("{path}?channel=bad%20name"), 400),
            (format!("{path}?channel=news&channel=news"), 400),
            (format!("{path}?channel=news&cursor=zz"), 400),
            (format!("{path}?channel=news&cursor=abcdef01-1.abcdef01-2"), 400),
        ];
        for (target, status) in cases {
            let response = get(server.addr, &target);
            assert_eq!(response.status, status, "{target}: {}", response.body);
            assert!(response.json()["error"]["code"].is_string());
        }
        let post = request(
            server.addr,
            &format!("POST {path}?channel=news HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
        );
        assert_eq!(post.status, 405);
    }
    assert_eq!(get(server.addr, "/poll?channel=news&timeout=61").status, 400);
    // A granted private channel works.
    let mut sse = Sse::open(server.addr, &format!("/sse?channel=private-a&token={token}"), "");
    assert_eq!(sse.next().event, "subscribed");
}

#[test]
fn sse_sends_ping_comments() {
    let server = start_server(1, |config| config.ping_interval = Duration::from_millis(200));
    let mut sse = Sse::open(server.addr, "/sse?channel=news", "");
    sse.next();
    server.publish("news", json!(1));
    let deadline = Instant::now() + DEADLINE;
    while !sse.comments.iter().any(|c| c == "ping") {
        assert!(Instant::now() < deadline, "no ping comment");
        // Each publication is one event; pings come between them.
        server.publish("news", json!(2));
        sse.message();
    }
}

#[test]
fn a_slow_sse_reader_is_closed_at_the_outbound_bound() {
    let server = start_server(1, |config| {
        config.max_outbound_bytes = 64 * 1024;
        config.max_api_body_bytes = 16 * 1024;
    });
    let mut sse = Sse::open(server.addr, "/sse?channel=news", "");
    sse.stream.set_read_timeout(Some(DEADLINE)).unwrap();
    // The reader stops reading; publications pile up in the kernel and then
    // in herald's queue until the bound.
    let mut api = ApiClient::new(server.addr, &server.api_key);
    let data = "x".repeat(8 * 1024);
    let closes = || metric(server.addr, "herald_slow_consumer_closes_total ");
    let deadline = Instant::now() + DEADLINE;
    while closes() != 1.0 {
        assert!(Instant::now() < deadline, "never closed: {} closes", closes());
        for _ in 0..20 {
            api.publish("news", json!(data));
        }
    }
    // What was queued before the bound is delivered, then the stream ends.
    let mut received = 0usize;
    let mut chunk = [0u8; 65536];
    loop {
        match sse.stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => received += n,
        }
    }
    assert!(received > 0);
    drop(sse);
    wait_until("the stream is gone", || {
        metric(server.addr, "herald_connections{transport=\"sse\"} ") == 0.0
    });
}

#[test]
fn poll_holds_until_a_message_then_continues_from_its_cursor() {
    let server = start_server(2, |_| {});
    let mut stream = connect(server.addr);
    let mut rest = Vec::new();
    let poll = |stream: &mut TcpStream, query: &str| {
        stream
            .write_all(format!("GET /poll?{query} HTTP/1.1\r\nHost: herald\r\n\r\n").as_bytes())
            .unwrap();
    };
    poll(&mut stream, "channel=news&timeout=30");
    wait_until("the poll is held", || {
        metric(server.addr, "herald_connections{transport=\"poll\"} ") == 1.0
    });
    server.publish("news", json!("first"));
    let answer = read_response(&mut stream, &mut rest);
    assert_eq!(answer.status, 200);
    let body = answer.json();
    assert_eq!(body["messages"], json!([{"channel": "news", "offset": 1, "data": "first"}]));
    let cursor = body["cursor"].as_str().unwrap().to_string();
    // Published between polls: the next poll with the cursor answers at once.
    server.publish("news", json!("second"));
    server.publish("news", json!("third"));
    poll(&mut stream, &format!("channel=news&cursor={cursor}"));
    let body = read_response(&mut stream, &mut rest).json();
    let data: Vec<Value> =
        body["messages"].as_array().unwrap().iter().map(|m| m["data"].clone()).collect();
    assert_eq!(data, [json!("second"), json!("third")]);
    // Nothing new: an empty answer at the timeout.
    let cursor = body["cursor"].as_str().unwrap().to_string();
    let started = Instant::now();
    poll(&mut stream, &format!("channel=news&cursor={cursor}&timeout=1"));
    let body = read_response(&mut stream, &mut rest).json();
    assert_eq!(body["messages"], json!([]));
    assert_eq!(body["cursor"], cursor.as_str());
    assert!(started.elapsed() >= Duration::from_millis(900));
    // Another epoch: answered at once, and the client is told.
    poll(&mut stream, "channel=news&cursor=abcdef01-1");
    let body = read_response(&mut stream, &mut rest).json();
    assert_eq!(body["recovered"], false);
}

#[test]
fn a_thousand_held_polls_are_answered_by_one_publish() {
    let server = start_server(2, |_| {});
    let mut polls: Vec<TcpStream> = (0..1000)
        .map(|_| {
            let mut stream = connect(server.addr);
            stream
                .write_all(b"GET /poll?channel=news&timeout=60 HTTP/1.1\r\nHost: h\r\n\r\n")
                .unwrap();
            stream
        })
        .collect();
    wait_until("1,000 polls held", || {
        metric(server.addr, "herald_connections{transport=\"poll\"} ") == 1000.0
    });
    let published = server.publish("news", json!("everyone"));
    for stream in &mut polls {
        let body = read_response(stream, &mut Vec::new()).json();
        assert_eq!(body["messages"][0]["offset"], published["offset"]);
        assert_eq!(body["messages"][0]["data"], "everyone");
    }
    assert_eq!(server.handle.channel_count(), 1);
}

#[test]
fn cross_origin_browsers_get_a_cors_preflight_and_may_send_a_bearer_token() {
    let server = start_server(1, |config| {
        config.allowed_origins =
            herald::config::OriginPolicy::parse(&["https://app.example.com"]).unwrap();
        config.allow_anonymous = false;
    });
    let token = server.token("42", &[]);
    for path in ["/sse", "/poll"] {
        let preflight = request(
            server.addr,
            &format!(
                "OPTIONS {path}?channel=news HTTP/1.1\r\nHost: herald\r\n\
                 Origin: https://app.example.com\r\nAccess-Control-Request-Method: GET\r\n\
                 Access-Control-Request-Headers: authorization\r\n\r\n"
            ),
        );
        assert_eq!(preflight.status, 204, "{path}: {}", preflight.body);
        assert_eq!(
            preflight.header("access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(preflight.header("access-control-allow-methods"), Some("GET"));
        let headers = preflight.header("access-control-allow-headers").unwrap().to_lowercase();
        assert!(headers.contains("authorization") && headers.contains("last-event-id"));
        let refused = request(
            server.addr,
            &format!(
                "OPTIONS {path}?channel=news HTTP/1.1\r\nHost: herald\r\n\
                 Origin: https://evil.example\r\nAccess-Control-Request-Method: GET\r\n\r\n"
            ),
        );
        assert_eq!(refused.status, 403);
    }
    // The request the preflight allowed: a poll with the token in a header.
    let answer = request(
        server.addr,
        &format!(
            "GET /poll?channel=news&timeout=0 HTTP/1.1\r\nHost: herald\r\n\
             Origin: https://app.example.com\r\nAuthorization: Bearer {token}\r\n\r\n"
        ),
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("access-control-allow-origin"), Some("https://app.example.com"));
}
