//! Server-Sent Events on the wire: the answer's head, events, and the cursor that SSE and long-poll clients carry.

use crate::error::HttpError;
use crate::types::Since;
use bytes::Bytes;
use std::fmt::Write as _;

/// The reconnection delay an SSE stream advises (`retry:`), in milliseconds.
pub const SSE_RETRY_MS: u64 = 2000;

/// Parses a cursor: one `EPOCH-OFFSET` per channel of the request, in the
/// request's order, joined by `.`; an empty entry is a channel without a
/// position (it starts from now).
pub fn parse_cursor(text: &str, channels: usize) -> Result<Vec<Option<Since>>, HttpError> {
    let bad = || HttpError::InvalidRequest("the cursor does not match the channels".into());
    let positions: Vec<Option<Since>> = text
        .split('.')
        .map(|part| {
            if part.is_empty() {
                return Some(None);
            }
            let (epoch, offset) = part.split_once('-')?;
            let epoch_ok = !epoch.is_empty()
                && epoch.len() <= 16
                && epoch.bytes().all(|b| b.is_ascii_hexdigit());
            let offset = offset.parse().ok()?;
            epoch_ok.then(|| Some(Since { epoch: epoch.to_string(), offset }))
        })
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    if positions.len() == channels { Ok(positions) } else { Err(bad()) }
}

/// Writes a cursor: `EPOCH-OFFSET` per position, joined by `.`; a position
/// with no epoch yet is an empty entry.
pub fn write_cursor<'a>(positions: impl Iterator<Item = (&'a str, u64)>) -> String {
    let mut cursor = String::new();
    for (index, (epoch, offset)) in positions.enumerate() {
        if index > 0 {
            cursor.push('.');
        }
        if !epoch.is_empty() {
            let _ = write!(cursor, "{epoch}-{offset}");
        }
    }
    cursor
}

/// A publication as SSE events and long-poll answers carry it:
/// `{"channel":..,"offset":..,"data":..}`, `data` byte for byte. Channel
/// names need no JSON escaping.
pub fn message_json(channel: &str, offset: u64, data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + channel.len() + 40);
    out.extend_from_slice(br#"{"channel":""#);
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(br#"","offset":"#);
    out.extend_from_slice(offset.to_string().as_bytes());
    out.extend_from_slice(br#","data":"#);
    out.extend_from_slice(data);
    out.push(b'}');
    Bytes::from(out)
}

/// An SSE event. Data lines cannot hold line breaks: a JSON text kept byte
/// for byte may, so each break starts a new `data:` line (the browser
/// joins them with `\n` again).
pub fn sse_event(event: &str, id: Option<&str>, data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 64);
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    let mut bytes = data.iter().peekable();
    while let Some(&byte) = bytes.next() {
        match byte {
            b'\r' => {
                if bytes.peek() == Some(&&b'\n') {
                    bytes.next();
                }
                out.extend_from_slice(b"\ndata: ");
            }
            b'\n' => out.extend_from_slice(b"\ndata: "),
            other => out.push(other),
        }
    }
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// The head of an SSE answer, with the `retry:` advice.
pub fn sse_head(allow_origin: Option<&str>) -> Bytes {
    let cors = cors_headers(allow_origin);
    Bytes::from(format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
         X-Accel-Buffering: no\r\n{cors}Connection: close\r\n\r\nretry: {SSE_RETRY_MS}\n\n"
    ))
}

/// The comment an SSE stream sends as its heartbeat.
pub const SSE_PING: &[u8] = b": ping\n\n";

/// The answer to a CORS preflight of `/sse` or `/poll`: `origin` (an
/// allowed one) may send `GET` with the headers these endpoints read.
pub fn preflight(origin: Option<&str>, keep_alive: bool) -> Bytes {
    let allow = match origin {
        Some(origin) => format!(
            "Access-Control-Allow-Origin: {origin}\r\nAccess-Control-Allow-Methods: GET\r\n\
             Access-Control-Allow-Headers: Authorization, Last-Event-ID, Cache-Control\r\n\
             Access-Control-Max-Age: 600\r\nVary: Origin\r\n"
        ),
        None => String::new(),
    };
    let connection = if keep_alive { "keep-alive" } else { "close" };
    Bytes::from(format!(
        "HTTP/1.1 204 No Content\r\n{allow}Content-Length: 0\r\nConnection: {connection}\r\n\r\n"
    ))
}

/// `Access-Control-Allow-Origin` for an allowed cross-origin browser.
pub fn cors_headers(allow_origin: Option<&str>) -> String {
    match allow_origin {
        Some(origin) => format!("Access-Control-Allow-Origin: {origin}\r\nVary: Origin\r\n"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_bad_ones_are_refused() {
        let parsed = parse_cursor("5e0c1a2b-46.00000001-0", 2).unwrap();
        assert_eq!(parsed[0], Some(Since { epoch: "5e0c1a2b".into(), offset: 46 }));
        assert_eq!(parsed[1].as_ref().unwrap().offset, 0);
        let partial = parse_cursor("5e0c1a2b-46.", 2).unwrap();
        assert_eq!(partial[1], None);
        for bad in ["", "5e0c1a2b-46", "x-1.y-2", "5e0c1a2b-.1-1", "5e0c1a2b-1.-2", "a-1.b-2.c-3"] {
            assert!(parse_cursor(bad, 2).is_err(), "{bad:?}");
        }
        let written = write_cursor([("5e0c1a2b", 46), ("", 0)].into_iter());
        assert_eq!(written, "5e0c1a2b-46.");
        assert_eq!(parse_cursor(&written, 2).unwrap(), partial);
    }

    #[test]
    fn line_breaks_in_data_start_new_data_lines() {
        let event = sse_event("message", Some("c-1"), b"{\"a\":\n1,\r\n\"b\":\r2}");
        assert_eq!(
            &event[..],
            b"id: c-1\nevent: message\ndata: {\"a\":\ndata: 1,\ndata: \"b\":\ndata: 2}\n\n"
        );
    }
}
