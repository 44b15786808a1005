//! The WebSocket opening handshake (RFC 6455 section 4.2), validated by hand and answered with 101.

use super::http::{Repeated, Request};
use crate::config::OriginPolicy;
use crate::error::HttpError;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha1::{Digest, Sha1};

/// The GUID every server appends to the client's key (RFC 6455 section 1.3).
const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`: base64(sha1(key + GUID)).
pub fn accept_key(key: &[u8]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(WEBSOCKET_GUID);
    BASE64.encode(sha1.finalize())
}

/// Checks an upgrade request in the order RFC 6455 lists the fields, its
/// `Origin` last, and returns the `Sec-WebSocket-Accept` value. Every
/// refusal says what is wrong.
pub fn validate(request: &Request<'_>, origins: &OriginPolicy) -> Result<String, HttpError> {
    let accept = validate_handshake(request)?;
    check_origin(request, origins)?;
    Ok(accept)
}

/// [`validate`] without the `Origin` check (the Pusher endpoint refuses an
/// origin once the socket is open, with a close code its clients read).
pub fn validate_handshake(request: &Request<'_>) -> Result<String, HttpError> {
    if request.version < 1 {
        return Err(HttpError::BadHandshake("WebSocket needs HTTP/1.1"));
    }
    match request.unique_header("host") {
        Ok(Some(host)) if !host.is_empty() => {}
        Ok(_) => return Err(HttpError::BadHandshake("missing Host header")),
        Err(Repeated) => return Err(HttpError::BadHandshake("more than one Host header")),
    }
    if !request.has_token("upgrade", "websocket") {
        return Err(HttpError::UpgradeRequired);
    }
    if !request.has_token("connection", "upgrade") {
        return Err(HttpError::BadHandshake("Connection header must include Upgrade"));
    }
    match request.unique_header("sec-websocket-version") {
        Ok(Some(b"13")) => {}
        _ => return Err(HttpError::UnsupportedVersion),
    }
    let key = match request.unique_header("sec-websocket-key") {
        Ok(Some(key)) => key.trim_ascii(),
        Ok(None) => return Err(HttpError::BadHandshake("missing Sec-WebSocket-Key header")),
        Err(Repeated) => {
            return Err(HttpError::BadHandshake("more than one Sec-WebSocket-Key header"));
        }
    };
    // The key is 16 random bytes, base64-encoded: 24 characters.
    let decoded_len = if key.len() == 24 { BASE64.decode(key).map(|k| k.len()).ok() } else { None };
    if decoded_len != Some(16) {
        return Err(HttpError::BadHandshake(
            "Sec-WebSocket-Key must be 16 bytes in base64 (24 characters)",
        ));
    }
    Ok(accept_key(key))
}

/// Checks a browser's `Origin` against `allowed_origins`; returns it when
/// there is one (it is allowed). No `Origin`: not a browser, or a
/// same-origin `GET`, so no cross-site request to refuse.
pub fn check_origin<'h>(
    request: &Request<'h>,
    origins: &OriginPolicy,
) -> Result<Option<&'h str>, HttpError> {
    match request.unique_header("origin") {
        Ok(None) => Ok(None),
        Ok(Some(origin)) => {
            let origin = std::str::from_utf8(origin).unwrap_or_default();
            let host = request.unique_header("host").ok().flatten();
            let host = host.and_then(|host| std::str::from_utf8(host).ok());
            if origins.allows(origin, host) {
                Ok(Some(origin))
            } else {
                Err(HttpError::OriginNotAllowed)
            }
        }
        Err(Repeated) => Err(HttpError::BadHandshake("more than one Origin header")),
    }
}

/// The `101 Switching Protocols` answer.
pub fn switching_protocols(accept: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::http;

    #[test]
    fn rfc_6455_accept_vector() {
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    const GOOD: &str = "GET /ws HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
                        Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                        Sec-WebSocket-Version: 13\r\n";

    fn check(extra: &str, without: &str, origins: &OriginPolicy) -> Result<String, HttpError> {
        let mut head: String = GOOD
            .lines()
            .filter(|line| without.is_empty() || !line.starts_with(without))
            .map(|l| format!("{l}\n"))
            .collect();
        head.push_str(extra);
        head.push_str("\r\n");
        http::parse(head.as_bytes(), |request| validate(request, origins)).unwrap()
    }

    #[test]
    fn a_valid_request_is_accepted() {
        let accept = check("", "", &OriginPolicy::default()).unwrap();
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn each_missing_or_wrong_field_has_its_own_answer() {
        let none = OriginPolicy::default();
        assert_eq!(check("", "Upgrade:", &none).unwrap_err(), HttpError::UpgradeRequired);
        assert_eq!(check("", "Connection:", &none).unwrap_err().status(), 400);
        assert_eq!(check("", "Host:", &none).unwrap_err().status(), 400);
        assert_eq!(
            check("", "Sec-WebSocket-Version:", &none).unwrap_err(),
            HttpError::UnsupportedVersion
        );
        let wrong_version = check("Sec-WebSocket-Version: 8\r\n", "Sec-WebSocket-Version:", &none);
        assert_eq!(wrong_version.unwrap_err().status(), 426);
        assert_eq!(check("", "Sec-WebSocket-Key:", &none).unwrap_err().status(), 400);
        let short_key = check("Sec-WebSocket-Key: c2hvcnQ=\r\n", "Sec-WebSocket-Key:", &none);
        assert_eq!(short_key.unwrap_err().status(), 400);
        let two_keys = check("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "", &none);
        assert_eq!(two_keys.unwrap_err().status(), 400);
    }

    #[test]
    fn origins_are_checked_only_for_browsers() {
        let none = OriginPolicy::default();
        assert_eq!(
            check("Origin: https://evil.example\r\n", "", &none).unwrap_err(),
            HttpError::OriginNotAllowed
        );
        assert!(check("Origin: http://example.com\r\n", "", &none).is_ok(), "same origin");
        let listed = OriginPolicy::parse(&["https://app.example"]).unwrap();
        assert!(check("Origin: https://app.example\r\n", "", &listed).is_ok());
    }
}
