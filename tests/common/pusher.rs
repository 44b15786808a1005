//! A Pusher protocol test client over the raw WebSocket client, and HTTP API requests signed as the Pusher SDKs sign them.

use super::{DEADLINE, Response, WsClient, connect, read_response};
use herald::config::Secret;
use herald::wire::pusher::{channel_string, md5_hex, sign, user_string};
use serde_json::{Value, json};
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The test app: what `[[apps]]` says in [`APPS`].
pub const APP_ID: &str = "1";
pub const APP_KEY: &str = "app-key";
pub const APP_SECRET: &str = "app-secret-0123456789";

/// Apps for the tests: `1` with client events, `2` beside it, `3` disabled.
pub const APPS: &str = r#"
[[apps]]
id = "1"
key = "app-key"
secret = "app-secret-0123456789"
client_events = true

[[apps]]
id = "2"
key = "other-key"
secret = "other-secret-0123456789"

[[apps]]
id = "3"
key = "off-key"
secret = "off-secret-0123456789"
enabled = false
"#;

/// The apps of a config file text, for `Config`'s `apps`.
pub fn apps(text: &str) -> Vec<herald::config::App> {
    herald::Config::load(Some((std::path::Path::new("apps.toml"), text)), Vec::new(), true)
        .expect("the test apps are valid")
        .apps
}

/// `KEY:SIGNATURE` for a private or presence subscription.
pub fn channel_auth(socket: &str, channel: &str, channel_data: Option<&str>) -> String {
    let signature =
        sign(&Secret::new(APP_SECRET), channel_string(socket, channel, channel_data).as_bytes());
    format!("{APP_KEY}:{signature}")
}

/// `KEY:SIGNATURE` for a sign-in.
pub fn user_auth(socket: &str, user_data: &str) -> String {
    let signature = sign(&Secret::new(APP_SECRET), user_string(socket, user_data).as_bytes());
    format!("{APP_KEY}:{signature}")
}

/// A Pusher client connection.
pub struct PusherClient {
    pub ws: WsClient,
    pub socket_id: String,
    pub activity_timeout: u64,
}

impl PusherClient {
    /// Connects to `/app/{key}` and reads `connection_established`.
    pub fn connect(addr: SocketAddr, key: &str) -> PusherClient {
        PusherClient::connect_at(
            addr,
            &format!("/app/{key}?protocol=7&client=js&version=8.6.0&flash=false"),
        )
    }

    /// Connects to `path` and reads `connection_established`.
    pub fn connect_at(addr: SocketAddr, path: &str) -> PusherClient {
        let mut ws = WsClient::open(addr, path);
        let first = ws.read_frame().json();
        assert_eq!(first["event"], "pusher:connection_established", "{first}");
        let data: Value =
            serde_json::from_str(first["data"].as_str().expect("data is a string")).unwrap();
        PusherClient {
            ws,
            socket_id: data["socket_id"].as_str().unwrap().to_string(),
            activity_timeout: data["activity_timeout"].as_u64().unwrap(),
        }
    }

    pub fn send(&mut self, message: Value) {
        self.ws.send_text(&message.to_string());
    }

    /// The next event (a text frame), skipping ping and pong frames.
    pub fn next(&mut self) -> Value {
        self.ws.next_push()
    }

    /// The next event if one comes within `timeout`.
    pub fn next_within(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = self.ws.frame_within(left)?;
            if frame.opcode == 1 {
                return Some(frame.json());
            }
        }
    }

    /// The next event named `name`, skipping others (`herald_subscribed`
    /// and the like).
    pub fn expect(&mut self, name: &str) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            assert!(Instant::now() < deadline, "no {name} in time");
            let event = self.next();
            if event["event"] == name {
                return event;
            }
        }
    }

    /// Nothing but pings and herald's own events arrives within `within`.
    pub fn expect_quiet(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        while let Some(event) = self.next_within(deadline.saturating_duration_since(Instant::now()))
        {
            let name = event["event"].as_str().unwrap_or_default();
            assert!(name.starts_with("pusher_internal:herald"), "unexpected {event}");
        }
    }

    /// Sends `pusher:subscribe` with `data` and returns the first answer
    /// about the channel (success or error).
    pub fn subscribe_with(&mut self, data: Value) -> Value {
        let channel = data["channel"].clone();
        self.send(json!({"event": "pusher:subscribe", "data": data}));
        let deadline = Instant::now() + DEADLINE;
        loop {
            assert!(Instant::now() < deadline, "no answer to the subscribe");
            let event = self.next();
            if event["channel"] == channel || event["event"] == "pusher:error" {
                return event;
            }
        }
    }

    /// Subscribes to a public channel; panics unless it succeeds.
    pub fn subscribe(&mut self, channel: &str) -> Value {
        let answer = self.subscribe_with(json!({"auth": "", "channel": channel}));
        assert_eq!(answer["event"], "pusher_internal:subscription_succeeded", "{answer}");
        answer
    }

    /// Subscribes to a private channel with a good signature.
    pub fn subscribe_private(&mut self, channel: &str) -> Value {
        let auth = channel_auth(&self.socket_id, channel, None);
        let answer = self.subscribe_with(json!({"auth": auth, "channel": channel}));
        assert_eq!(answer["event"], "pusher_internal:subscription_succeeded", "{answer}");
        answer
    }

    /// Joins a presence channel as `user`; returns the member list.
    pub fn join(&mut self, channel: &str, user: &str, info: Value) -> Value {
        let channel_data = json!({"user_id": user, "user_info": info}).to_string();
        let auth = channel_auth(&self.socket_id, channel, Some(&channel_data));
        let answer = self.subscribe_with(
            json!({"auth": auth, "channel": channel, "channel_data": channel_data}),
        );
        assert_eq!(answer["event"], "pusher_internal:subscription_succeeded", "{answer}");
        serde_json::from_str(answer["data"].as_str().unwrap()).unwrap()
    }
}

/// The data of an event, decoded when it is a JSON string.
pub fn data_of(event: &Value) -> Value {
    match event["data"].as_str() {
        Some(text) => serde_json::from_str(text).unwrap_or_else(|_| Value::from(text)),
        None => event["data"].clone(),
    }
}

/// A request to the Pusher HTTP API, signed like the Node and Python SDKs
/// do (raw query string, `body_md5` when there is a body).
pub fn pusher_api(
    addr: SocketAddr,
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    body: &str,
) -> Response {
    let query = signed_query(method, path, params, body, APP_KEY, APP_SECRET, now());
    raw_request(
        addr,
        &format!(
            "{method} {path}?{query} HTTP/1.1\r\nHost: herald\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// Unix seconds now.
pub fn now() -> u64 {
    herald::auth::unix_now()
}

/// A signed query string: `params` with `auth_key`, `auth_timestamp`,
/// `auth_version` and (for a body) `body_md5`, then `auth_signature`.
pub fn signed_query(
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    body: &str,
    key: &str,
    secret: &str,
    timestamp: u64,
) -> String {
    let timestamp = timestamp.to_string();
    let md5 = md5_hex(body.as_bytes());
    let mut all: Vec<(&str, &str)> = params.to_vec();
    all.push(("auth_key", key));
    all.push(("auth_timestamp", &timestamp));
    all.push(("auth_version", "1.0"));
    if !body.is_empty() {
        all.push(("body_md5", &md5));
    }
    all.sort();
    let query: Vec<String> = all.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let query = query.join("&");
    let signature = sign(&Secret::new(secret), format!("{method}\n{path}\n{query}").as_bytes());
    format!("{query}&auth_signature={signature}")
}

/// Sends one raw HTTP request on a new connection and reads the answer.
pub fn raw_request(addr: SocketAddr, request: &str) -> Response {
    let mut stream = connect(addr);
    stream.write_all(request.as_bytes()).unwrap();
    let mut rest = Vec::new();
    read_response(&mut stream, &mut rest)
}

/// Triggers `event` on `channels` through the HTTP API; panics unless 200.
pub fn trigger(addr: SocketAddr, channels: &[&str], event: &str, data: &str) -> Value {
    let body = json!({"name": event, "channels": channels, "data": data}).to_string();
    let response = pusher_api(addr, "POST", &format!("/apps/{APP_ID}/events"), &[], &body);
    assert_eq!(response.status, 200, "{}", response.body);
    response.json()
}
