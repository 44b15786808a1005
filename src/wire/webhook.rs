//! Webhook requests as pure functions: the JSON body of a notice (Pusher's shape, for Pusher apps and herald's namespaces alike) and the headers that sign it.

use crate::config::{Secret, WebhookSigning};
use crate::types::{Notice, NoticeKind};
use std::fmt::Write as _;

/// The header that identifies a notice across repeated deliveries: a
/// backend drops a request whose id it has seen.
pub const ID_HEADER: &str = "X-Herald-Webhook-Id";

/// A JSON string literal.
fn quote(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// The body: `{"time_ms":T,"events":[EVENT]}`, the event as Pusher
/// describes it. An app's channel is named as its clients name it; a
/// client event's `data` is a string (a JSON object sent by the client is
/// written as one).
pub fn body(notice: &Notice) -> Vec<u8> {
    let channel = notice.channel.split_once(';').map_or(notice.channel.as_str(), |(_, name)| name);
    let mut event = format!(r#"{{"name":"{}","channel":{}"#, notice.kind.name(), quote(channel));
    match notice.kind {
        NoticeKind::MemberAdded | NoticeKind::MemberRemoved => {
            let _ = write!(event, r#","user_id":{}"#, quote(notice.user.as_deref().unwrap_or("")));
        }
        NoticeKind::ClientEvent => {
            let _ = write!(event, r#","event":{}"#, quote(notice.event.as_deref().unwrap_or("")));
            if let Some(data) = &notice.data {
                let as_string = if data.starts_with('"') { data.clone() } else { quote(data) };
                let _ = write!(event, r#","data":{as_string}"#);
            }
            if let Some(socket) = &notice.socket_id {
                let _ = write!(event, r#","socket_id":{}"#, quote(socket));
            }
            if let Some(user) = &notice.user {
                let _ = write!(event, r#","user_id":{}"#, quote(user));
            }
        }
        NoticeKind::ChannelOccupied | NoticeKind::ChannelVacated | NoticeKind::CacheMiss => {}
    }
    event.push('}');
    format!(r#"{{"time_ms":{},"events":[{event}]}}"#, notice.time_ms).into_bytes()
}

/// The signing headers for `body`: Pusher's `X-Pusher-Key` and
/// `X-Pusher-Signature` (hex HMAC-SHA256 with the app's secret), or
/// herald's `X-Herald-Signature: sha256=HEX` (with `webhook_secret`).
pub fn signature_headers(signing: &WebhookSigning, body: &[u8]) -> Vec<(&'static str, String)> {
    match signing {
        WebhookSigning::Pusher { key, secret } => vec![
            ("X-Pusher-Key", key.clone()),
            ("X-Pusher-Signature", super::pusher::sign(secret, body)),
        ],
        WebhookSigning::Herald(secret) => {
            vec![("X-Herald-Signature", format!("sha256={}", super::pusher::sign(secret, body)))]
        }
    }
}

/// Whether `signature` (`sha256=HEX`) signs `body` with `secret`: what a
/// backend checks (herald's own tests, and the PHP example, do the same).
pub fn verify_herald(secret: &Secret, body: &[u8], signature: &str) -> bool {
    signature.strip_prefix("sha256=").is_some_and(|hex| super::pusher::verify(secret, body, hex))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn json(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn bodies_have_pushers_shape() {
        let mut notice = Notice::new(NoticeKind::ChannelOccupied, "1;presence-room", None);
        notice.time_ms = 1_327_078_148_132;
        assert_eq!(
            json(&body(&notice)),
            json!({"time_ms":1_327_078_148_132u64,"events":[{"name":"channel_occupied","channel":"presence-room"}]})
        );
        let mut member = Notice::new(NoticeKind::MemberRemoved, "chat:lobby", Some("u\"1"));
        member.time_ms = 5;
        assert_eq!(
            json(&body(&member))["events"][0],
            json!({"name":"member_removed","channel":"chat:lobby","user_id":"u\"1"})
        );
        let mut client = Notice::new(NoticeKind::ClientEvent, "1;presence-r", Some("u1"));
        client.event = Some("client-typing".into());
        client.data = Some(r#"{"a":1}"#.into());
        client.socket_id = Some("1.2".into());
        assert_eq!(
            json(&body(&client))["events"][0],
            json!({"name":"client_event","channel":"presence-r","event":"client-typing","data":"{\"a\":1}","socket_id":"1.2","user_id":"u1"})
        );
        client.data = Some(r#""text""#.into());
        assert_eq!(json(&body(&client))["events"][0]["data"], "text");
    }

    #[test]
    fn signatures_match_the_golden_vector_and_verify() {
        let secret = Secret::new("7ad3773142a6692b25b8");
        let body = br#"{"time_ms":1327078148132,"events":[{"name":"channel_occupied","channel":"my-channel"}]}"#;
        let pusher =
            WebhookSigning::Pusher { key: "278d425bdf160c739803".into(), secret: secret.clone() };
        let headers = signature_headers(&pusher, body);
        assert_eq!(headers[0], ("X-Pusher-Key", "278d425bdf160c739803".to_string()));
        assert_eq!(
            headers[1].1,
            "c19001ae3963ccb13bf618e5b16ba9848e7e74df0993aa0689168e341c6833cf"
        );
        let herald = signature_headers(&WebhookSigning::Herald(secret.clone()), body);
        assert!(verify_herald(&secret, body, &herald[0].1));
        assert!(!verify_herald(&secret, b"{}", &herald[0].1));
        assert!(!verify_herald(&secret, body, "c19001ae"));
    }
}
