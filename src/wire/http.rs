//! HTTP/1.1 request heads: find the end scanning only new bytes, then parse once with httparse.

pub use crate::config::{MAX_HEAD_BYTES, MAX_HEADERS};
use crate::error::HttpError;
use std::borrow::Cow;

/// Where a request head ends in `buf`: the index just past the blank line.
/// Only bytes from `from` on are new since the last call, and only they are
/// scanned: the `\n` that ends a head is always a new byte, and the two bytes
/// before it are looked up directly, so a `\r\n\r\n` split across reads is
/// found. Bare `\n` line ends are accepted as RFC 9112 allows.
pub fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let window = buf.get(from..)?;
    for (offset, byte) in window.iter().enumerate() {
        if *byte != b'\n' {
            continue;
        }
        let at = from + offset;
        let before = at.checked_sub(1).and_then(|i| buf.get(i)).copied();
        let two_before = at.checked_sub(2).and_then(|i| buf.get(i)).copied();
        let blank_line =
            matches!((two_before, before), (_, Some(b'\n')) | (Some(b'\n'), Some(b'\r')));
        if blank_line {
            return Some(at + 1);
        }
    }
    None
}

/// A header that must appear at most once appeared more often.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repeated;

/// A parsed request head, borrowing the bytes it was read from.
#[derive(Debug)]
pub struct Request<'h> {
    /// `GET`, `POST`, ...
    pub method: &'h str,
    /// The request target as sent: path and query.
    pub target: &'h str,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// Every header, in order.
    pub headers: &'h [httparse::Header<'h>],
    /// The head as received, up to and including its blank line.
    pub raw: &'h [u8],
}

impl<'h> Request<'h> {
    /// The path part of the target.
    pub fn path(&self) -> &'h str {
        self.target.split_once('?').map_or(self.target, |(path, _)| path)
    }

    /// The query part of the target, without the `?`.
    pub fn query(&self) -> Option<&'h str> {
        self.target.split_once('?').map(|(_, query)| query)
    }

    /// Values of every header with this name (case-insensitive).
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'h [u8]> + 'a {
        self.headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
    }

    /// The single value of a header; `Err(Repeated)` when it appears more than once.
    pub fn unique_header(&self, name: &str) -> Result<Option<&'h [u8]>, Repeated> {
        let mut values = self.headers_named(name);
        let first = values.next();
        if values.next().is_some() { Err(Repeated) } else { Ok(first) }
    }

    /// Whether every line of the head ends with CRLF. A bare LF is
    /// accepted elsewhere (RFC 9112 allows it), but not where a body
    /// follows: two parsers that disagree on line ends disagree on where a
    /// request ends (request smuggling).
    pub fn has_strict_line_ends(&self) -> bool {
        let mut previous = 0u8;
        for &byte in self.raw {
            if byte == b'\n' && previous != b'\r' {
                return false;
            }
            previous = byte;
        }
        true
    }

    /// Whether a comma-separated header (over all its occurrences) holds
    /// `token`, compared case-insensitively.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers_named(name).any(|value| {
            value
                .split(|b| *b == b',')
                .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    }
}

/// Parses a complete head (`head` ends with the blank line) and hands the
/// request to `handle`.
pub fn parse<T>(head: &[u8], handle: impl FnOnce(&Request<'_>) -> T) -> Result<T, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(HttpError::Malformed("incomplete request head"));
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooManyHeaders),
        Err(error) => return Err(HttpError::Malformed(describe(error))),
    }
    let (Some(method), Some(target), Some(version)) =
        (request.method, request.path, request.version)
    else {
        return Err(HttpError::Malformed("incomplete request line"));
    };
    Ok(handle(&Request { method, target, version, headers: request.headers, raw: head }))
}

fn describe(error: httparse::Error) -> &'static str {
    match error {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token in request line",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "invalid HTTP version",
    }
}

/// Every value of query parameter `name`, percent-decoded, in order. `+`
/// stands for a space, as HTML forms and PHP's `http_build_query` write it.
pub fn query_values<'q>(
    query: Option<&'q str>,
    name: &'q str,
) -> impl Iterator<Item = Result<Cow<'q, str>, HttpError>> + 'q {
    query.unwrap_or_default().split('&').filter_map(move |pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| {
            percent_decode(value).ok_or_else(|| {
                HttpError::InvalidRequest(format!(
                    "query parameter {name} is not valid percent-encoded UTF-8"
                ))
            })
        })
    })
}

/// The value of a query parameter that may appear at most once.
pub fn query_value<'q>(
    query: Option<&'q str>,
    name: &'q str,
) -> Result<Option<Cow<'q, str>>, HttpError> {
    let mut values = query_values(query, name);
    let first = values.next().transpose()?;
    if values.next().is_some() {
        return Err(HttpError::InvalidRequest(format!(
            "query parameter {name} given more than once"
        )));
    }
    Ok(first)
}

/// Decodes `%XX` escapes and `+`; `None` for a broken escape or bytes that
/// are not UTF-8.
pub fn percent_decode(text: &str) -> Option<Cow<'_, str>> {
    if !text.bytes().any(|b| b == b'%' || b == b'+') {
        return Some(Cow::Borrowed(text));
    }
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(byte) = bytes.next() {
        match byte {
            b'+' => out.push(b' '),
            b'%' => {
                let high = bytes.next().and_then(|b| (b as char).to_digit(16))?;
                let low = bytes.next().and_then(|b| (b as char).to_digit(16))?;
                out.push(u8::try_from(high * 16 + low).ok()?);
            }
            other => out.push(other),
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_end_is_found_across_any_split() {
        let head = b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\nNEXT";
        let end = head.len() - 4;
        for split in 0..=head.len() {
            // First call sees the bytes up to the split, second the rest.
            let first = find_head_end(&head[..split], 0);
            let found = first.or_else(|| find_head_end(head, split));
            assert_eq!(found, Some(end), "split at {split}");
        }
    }

    #[test]
    fn bare_newlines_end_a_head() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\nHost: x\n\n", 0), Some(24));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n", 0), None);
    }

    #[test]
    fn parse_reads_method_target_and_headers() {
        let head =
            b"GET /ws?token=abc HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\n\r\n";
        let seen = parse(head, |request| {
            assert_eq!(request.method, "GET");
            assert_eq!(request.path(), "/ws");
            assert_eq!(request.query(), Some("token=abc"));
            assert_eq!(request.version, 1);
            assert!(request.has_token("connection", "upgrade"));
            assert!(!request.has_token("connection", "close"));
            assert_eq!(request.unique_header("HOST"), Ok(Some(&b"x"[..])));
        });
        assert!(seen.is_ok());
    }

    #[test]
    fn too_many_headers_is_431() {
        let mut head = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            head.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        assert_eq!(parse(&head, |_| ()).unwrap_err(), HttpError::TooManyHeaders);
        assert_eq!(parse(&head, |_| ()).unwrap_err().status(), 431);
    }

    #[test]
    fn garbage_is_400() {
        let error = parse(b"\x00\x01 nonsense\r\n\r\n", |_| ()).unwrap_err();
        assert_eq!(error.status(), 400);
    }

    #[test]
    fn query_values_are_percent_decoded() {
        let query = Some("channel=%23alice%2Cbob&limit=10&x&tag=a+b&tag=c");
        assert_eq!(query_value(query, "channel").unwrap().as_deref(), Some("#alice,bob"));
        assert_eq!(query_value(query, "limit").unwrap().as_deref(), Some("10"));
        assert_eq!(query_value(query, "x").unwrap().as_deref(), Some(""));
        assert_eq!(query_value(query, "missing").unwrap(), None);
        assert!(query_value(query, "tag").is_err());
        let tags: Vec<_> = query_values(query, "tag").map(Result::unwrap).collect();
        assert_eq!(tags, ["a b", "c"]);
        assert_eq!(query_value(None, "channel").unwrap(), None);
        for broken in ["channel=%", "channel=%2", "channel=%zz", "channel=%ff"] {
            assert!(query_value(Some(broken), "channel").is_err(), "{broken}");
        }
    }
}
