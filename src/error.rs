//! Errors as they go on the wire: a refused request becomes an HTTP answer, a failed WebSocket a close code; each mapped here, once.

use bytes::Bytes;
use std::fmt;
use tungstenite::error::{CapacityError, Error as WsError, ProtocolError};

/// Why a request gets an HTTP error answer instead of what it asked for.
/// Every variant becomes `{"error":{"code":..,"message":..}}` with the status
/// of [`HttpError::status`], and the connection is closed after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The request head is not valid HTTP/1.1 (400).
    Malformed(&'static str),
    /// The request head passed `MAX_HEAD_BYTES` (431).
    HeadTooLarge,
    /// The request head has more than `MAX_HEADERS` headers (431).
    TooManyHeaders,
    /// No such endpoint (404).
    NotFound,
    /// The endpoint exists but not for this method (405, with `Allow`).
    MethodNotAllowed {
        /// The methods the endpoint takes.
        allow: &'static str,
    },
    /// A WebSocket endpoint was asked without `Upgrade: websocket` (426).
    UpgradeRequired,
    /// `Sec-WebSocket-Version` is missing or not 13 (426, with `Sec-WebSocket-Version: 13`).
    UnsupportedVersion,
    /// The upgrade request is invalid (400): the message says what is wrong.
    BadHandshake(&'static str),
    /// A browser `Origin` that `allowed_origins` does not list (403).
    OriginNotAllowed,
    /// No token where one is required, or a bad one (401).
    Unauthorized(&'static str),
    /// A signed request (the Pusher HTTP API) whose signature, key or
    /// timestamp does not check out (401).
    BadSignature(String),
    /// The connection's identity may not use what it asked for (403).
    Forbidden(&'static str),
    /// The node holds `max_connections` connections already (503).
    AtCapacity,
    /// The server is shutting down (503).
    ShuttingDown,
    /// A body without `Content-Length` (or with `Transfer-Encoding`, which
    /// herald does not take) where one is needed (411).
    LengthRequired,
    /// A body over `max_api_body_bytes`, known from `Content-Length` (413).
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// A well-framed API request that asks for something invalid (400).
    InvalidRequest(String),
    /// An API request for something that does not exist (404).
    Missing(String),
    /// Too many failed API key checks from this peer (429, with
    /// `Retry-After`); the connection closes after the answer.
    TooManyRequests {
        /// Seconds until the peer may try again.
        retry_after_secs: u64,
    },
    /// herald cannot do it now (503): the engine is down, or the answer did
    /// not come in time.
    Unavailable(String),
    /// A server-wide limit is reached, such as `max_channels` (503, code
    /// `limit_exceeded`).
    LimitReached(String),
}

impl HttpError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Malformed(_) | HttpError::BadHandshake(_) | HttpError::InvalidRequest(_) => {
                400
            }
            HttpError::Unauthorized(_) | HttpError::BadSignature(_) => 401,
            HttpError::OriginNotAllowed | HttpError::Forbidden(_) => 403,
            HttpError::NotFound | HttpError::Missing(_) => 404,
            HttpError::MethodNotAllowed { .. } => 405,
            HttpError::UpgradeRequired | HttpError::UnsupportedVersion => 426,
            HttpError::LengthRequired => 411,
            HttpError::PayloadTooLarge { .. } => 413,
            HttpError::HeadTooLarge | HttpError::TooManyHeaders => 431,
            HttpError::TooManyRequests { .. } => 429,
            HttpError::AtCapacity
            | HttpError::ShuttingDown
            | HttpError::Unavailable(_)
            | HttpError::LimitReached(_) => 503,
        }
    }

    /// The error code in the JSON body (the codes of PROTOCOL.md).
    pub fn code(&self) -> &'static str {
        match self {
            HttpError::Malformed(_)
            | HttpError::BadHandshake(_)
            | HttpError::MethodNotAllowed { .. }
            | HttpError::UpgradeRequired
            | HttpError::UnsupportedVersion
            | HttpError::LengthRequired
            | HttpError::InvalidRequest(_) => "bad_request",
            HttpError::Unauthorized(_) | HttpError::BadSignature(_) => "unauthorized",
            HttpError::OriginNotAllowed | HttpError::Forbidden(_) => "forbidden",
            HttpError::NotFound | HttpError::Missing(_) => "not_found",
            HttpError::HeadTooLarge
            | HttpError::TooManyHeaders
            | HttpError::PayloadTooLarge { .. }
            | HttpError::LimitReached(_)
            | HttpError::TooManyRequests { .. } => "limit_exceeded",
            HttpError::AtCapacity | HttpError::ShuttingDown | HttpError::Unavailable(_) => {
                "unavailable"
            }
        }
    }

    /// A sentence for the person reading the answer.
    pub fn message(&self) -> String {
        match self {
            HttpError::Malformed(what) => format!("malformed request: {what}"),
            HttpError::HeadTooLarge => {
                format!("request head larger than {} bytes", crate::config::MAX_HEAD_BYTES)
            }
            HttpError::TooManyHeaders => {
                format!("more than {} request headers", crate::config::MAX_HEADERS)
            }
            HttpError::NotFound => "no such endpoint".to_string(),
            HttpError::MethodNotAllowed { allow } => format!("method not allowed; use {allow}"),
            HttpError::UpgradeRequired => {
                "this endpoint speaks WebSocket: send Upgrade: websocket".to_string()
            }
            HttpError::UnsupportedVersion => {
                "unsupported WebSocket version; herald speaks Sec-WebSocket-Version: 13".to_string()
            }
            HttpError::BadHandshake(what) => format!("bad WebSocket handshake: {what}"),
            HttpError::OriginNotAllowed => "origin not allowed".to_string(),
            HttpError::Unauthorized(what) | HttpError::Forbidden(what) => what.to_string(),
            HttpError::AtCapacity => "server at connection capacity, retry later".to_string(),
            HttpError::ShuttingDown => "server shutting down".to_string(),
            HttpError::LengthRequired => {
                "a request body needs Content-Length (chunked bodies are not accepted)".to_string()
            }
            HttpError::PayloadTooLarge { limit } => {
                format!("request body larger than {limit} bytes")
            }
            HttpError::InvalidRequest(message)
            | HttpError::Missing(message)
            | HttpError::BadSignature(message)
            | HttpError::LimitReached(message) => message.clone(),
            HttpError::TooManyRequests { retry_after_secs } => format!(
                "too many failed API key checks from this address; retry in {retry_after_secs} s"
            ),
            HttpError::Unavailable(what) => what.clone(),
        }
    }

    /// Whether the connection must close after this answer: the request's
    /// framing is broken or too big, so the next request cannot be found,
    /// or the peer is being pushed away (429).
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            HttpError::Malformed(_)
                | HttpError::HeadTooLarge
                | HttpError::TooManyHeaders
                | HttpError::LengthRequired
                | HttpError::PayloadTooLarge { .. }
                | HttpError::TooManyRequests { .. }
        )
    }

    fn extra_headers(&self) -> String {
        let fixed = match self {
            HttpError::TooManyRequests { retry_after_secs } => {
                return format!("Retry-After: {retry_after_secs}\r\n");
            }
            HttpError::MethodNotAllowed { allow: "GET" } => "Allow: GET\r\n",
            HttpError::MethodNotAllowed { allow: "POST" } => "Allow: POST\r\n",
            HttpError::MethodNotAllowed { .. } => "",
            HttpError::UpgradeRequired | HttpError::UnsupportedVersion => {
                "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            }
            HttpError::AtCapacity | HttpError::ShuttingDown | HttpError::Unavailable(_) => {
                "Retry-After: 1\r\n"
            }
            _ => "",
        };
        fixed.to_string()
    }

    /// The whole HTTP answer: status line, headers, JSON body, for a
    /// connection that closes after it.
    pub fn to_response(&self) -> Bytes {
        self.response(false)
    }

    /// The answer, saying whether the connection stays open after it.
    pub fn response(&self, keep_alive: bool) -> Bytes {
        json_response(self.status(), &self.extra_headers(), &self.body(), keep_alive)
    }

    /// The JSON body: `{"error":{"code":..,"message":..}}`.
    pub fn body(&self) -> Vec<u8> {
        serde_json::json!({
            "error": { "code": self.code(), "message": self.message() }
        })
        .to_string()
        .into_bytes()
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status(), self.message())
    }
}

/// An HTTP answer with a JSON body.
pub fn json_response(status: u16, extra_headers: &str, body: &[u8], keep_alive: bool) -> Bytes {
    http_response(status, extra_headers, "application/json", body, keep_alive)
}

/// An HTTP answer: status line, headers, body.
pub fn http_response(
    status: u16,
    extra_headers: &str,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
) -> Bytes {
    let head = http_head(status, extra_headers, content_type, body.len(), keep_alive);
    let mut response = Vec::with_capacity(head.len() + body.len());
    response.extend_from_slice(head.as_bytes());
    response.extend_from_slice(body);
    Bytes::from(response)
}

/// The head of an answer whose body of `length` bytes is sent separately
/// (a file built into the binary goes out without being copied).
pub fn http_head(
    status: u16,
    extra_headers: &str,
    content_type: &str,
    length: usize,
    keep_alive: bool,
) -> String {
    format!(
        "HTTP/1.1 {status} {reason}\r\n{extra_headers}Content-Type: {content_type}\r\n\
         Content-Length: {length}\r\nConnection: {connection}\r\n\r\n",
        reason = reason_phrase(status),
        connection = if keep_alive { "keep-alive" } else { "close" },
    )
}

/// The reason phrase of the statuses herald answers with.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Why herald closes a WebSocket. Every variant has one close code
/// ([`CloseReason::code`]) and a short reason sent in the close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// 1000: a normal close.
    Normal,
    /// A code a front end takes from its own protocol's table (the Pusher
    /// protocol's 4001-4201), with its reason.
    Code(u16, &'static str),
    /// 1001: the server is shutting down.
    ShuttingDown,
    /// 1002: the peer broke RFC 6455.
    Protocol(&'static str),
    /// 1003: a binary frame on `/ws`, which speaks JSON text frames.
    UnsupportedData,
    /// 1007: a text message that is not UTF-8.
    InvalidUtf8,
    /// 1008: the peer broke a rule of this server (token expired, no
    /// traffic for two ping intervals, control-frame flood).
    Policy(&'static str),
    /// 1009: a message over the size limit.
    MessageTooBig,
    /// 1011: herald failed; the peer did nothing wrong.
    Internal,
    /// 4000: disconnected through the server API.
    DisconnectedByApi,
    /// 4008: the outbound queue passed `max_outbound_bytes`.
    SlowConsumer,
    /// 4029: too many requests.
    TooManyRequests,
}

impl CloseReason {
    /// The close code on the wire.
    pub fn code(&self) -> u16 {
        match self {
            CloseReason::Normal => 1000,
            CloseReason::Code(code, _) => *code,
            CloseReason::ShuttingDown => 1001,
            CloseReason::Protocol(_) => 1002,
            CloseReason::UnsupportedData => 1003,
            CloseReason::InvalidUtf8 => 1007,
            CloseReason::Policy(_) => 1008,
            CloseReason::MessageTooBig => 1009,
            CloseReason::Internal => 1011,
            CloseReason::DisconnectedByApi => 4000,
            CloseReason::SlowConsumer => 4008,
            CloseReason::TooManyRequests => 4029,
        }
    }

    /// The reason text of the close frame (at most 123 bytes).
    pub fn reason(&self) -> &'static str {
        match self {
            CloseReason::Normal => "",
            CloseReason::Code(_, reason) => reason,
            CloseReason::ShuttingDown => "server shutting down",
            CloseReason::Protocol(what) | CloseReason::Policy(what) => what,
            CloseReason::UnsupportedData => "binary frames are not accepted here",
            CloseReason::InvalidUtf8 => "invalid UTF-8 in text message",
            CloseReason::MessageTooBig => "message too big",
            CloseReason::Internal => "internal error",
            CloseReason::DisconnectedByApi => "disconnected",
            CloseReason::SlowConsumer => "slow consumer",
            CloseReason::TooManyRequests => "too many requests",
        }
    }

    /// Whether the connection is failed (close frame sent, input no longer
    /// read) rather than closed with a handshake the peer completes.
    pub fn fails_connection(&self) -> bool {
        matches!(
            self,
            CloseReason::Protocol(_)
                | CloseReason::UnsupportedData
                | CloseReason::InvalidUtf8
                | CloseReason::MessageTooBig
                | CloseReason::Internal
        )
    }
}

/// What a tungstenite error means for the connection.
#[derive(Debug)]
pub enum WsFailure {
    /// Send this close code and fail the connection.
    Close(CloseReason),
    /// The close handshake is complete: flush and close the socket.
    Finished,
    /// The transport failed; nothing more can be sent.
    Transport,
}

impl From<WsError> for WsFailure {
    fn from(error: WsError) -> Self {
        match error {
            WsError::ConnectionClosed | WsError::AlreadyClosed => WsFailure::Finished,
            WsError::Io(_) => WsFailure::Transport,
            WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
                WsFailure::Close(CloseReason::MessageTooBig)
            }
            WsError::Capacity(_) => WsFailure::Close(CloseReason::Protocol("frame too large")),
            WsError::Utf8(_) => WsFailure::Close(CloseReason::InvalidUtf8),
            WsError::Protocol(error) => WsFailure::Close(CloseReason::Protocol(describe(&error))),
            WsError::WriteBufferFull(_) | WsError::AttackAttempt => {
                WsFailure::Close(CloseReason::Internal)
            }
            // TLS, URL and HTTP errors belong to tungstenite's client and
            // handshake, which herald does not use.
            _ => WsFailure::Close(CloseReason::Internal),
        }
    }
}

fn describe(error: &ProtocolError) -> &'static str {
    match error {
        ProtocolError::NonZeroReservedBits => "reserved bits set",
        ProtocolError::UnmaskedFrameFromClient => "unmasked frame from client",
        ProtocolError::FragmentedControlFrame => "fragmented control frame",
        ProtocolError::ControlFrameTooBig => "control frame too big",
        ProtocolError::UnknownControlFrameType(_) => "unknown control opcode",
        ProtocolError::UnknownDataFrameType(_) => "unknown data opcode",
        ProtocolError::UnexpectedContinueFrame => "continuation without a message",
        ProtocolError::ExpectedFragment(_) => "expected a continuation frame",
        ProtocolError::InvalidCloseSequence => "invalid close frame",
        ProtocolError::InvalidOpcode(_) => "invalid opcode",
        ProtocolError::ResetWithoutClosingHandshake => "reset without closing handshake",
        ProtocolError::ReceivedAfterClosing => "data after close",
        _ => "protocol error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_has_a_json_body_and_closes() {
        let all = [
            HttpError::Malformed("x"),
            HttpError::HeadTooLarge,
            HttpError::TooManyHeaders,
            HttpError::NotFound,
            HttpError::MethodNotAllowed { allow: "GET" },
            HttpError::UpgradeRequired,
            HttpError::UnsupportedVersion,
            HttpError::BadHandshake("x"),
            HttpError::OriginNotAllowed,
            HttpError::Unauthorized("x"),
            HttpError::Forbidden("x"),
            HttpError::AtCapacity,
            HttpError::ShuttingDown,
            HttpError::LengthRequired,
            HttpError::PayloadTooLarge { limit: 10 },
            HttpError::InvalidRequest("x".into()),
            HttpError::Missing("x".into()),
            HttpError::TooManyRequests { retry_after_secs: 7 },
            HttpError::Unavailable("x".into()),
        ];
        for error in all {
            let response = String::from_utf8(error.to_response().to_vec()).unwrap();
            let (head, body) = response.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with(&format!("HTTP/1.1 {} ", error.status())), "{head}");
            assert!(head.contains("Connection: close"));
            assert!(head.contains(&format!("Content-Length: {}", body.len())));
            let json: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(json["error"]["code"], error.code());
        }
        let upgrade = HttpError::UnsupportedVersion.to_response();
        assert!(String::from_utf8_lossy(&upgrade).contains("Sec-WebSocket-Version: 13\r\n"));
    }

    #[test]
    fn close_codes_follow_the_protocol() {
        assert_eq!(CloseReason::ShuttingDown.code(), 1001);
        assert_eq!(CloseReason::Protocol("x").code(), 1002);
        assert_eq!(CloseReason::UnsupportedData.code(), 1003);
        assert_eq!(CloseReason::InvalidUtf8.code(), 1007);
        assert_eq!(CloseReason::MessageTooBig.code(), 1009);
        assert_eq!(CloseReason::SlowConsumer.code(), 4008);
        for reason in
            [CloseReason::ShuttingDown, CloseReason::InvalidUtf8, CloseReason::SlowConsumer]
        {
            assert!(reason.reason().len() <= 123);
        }
    }
}
