//! The `/ws` client protocol: commands parsed from JSON text frames; replies and pushes written as JSON.

use serde::Serialize;
use serde_json::Value;

/// Error codes of error replies (PROTOCOL.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The command is malformed.
    BadRequest,
    /// The connection's identity does not allow it.
    Unauthorized,
    /// Not allowed by the channel's rules or namespace options.
    Forbidden,
    /// No such thing.
    NotFound,
    /// A limit was reached.
    LimitExceeded,
    /// The engine cannot serve it now.
    Unavailable,
    /// herald failed.
    Internal,
}

/// A command that could not be carried out, answered with an error reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError {
    /// The command's `id`, when it had a usable one.
    pub id: Option<u64>,
    /// What kind of failure.
    pub code: ErrorCode,
    /// A sentence for the developer reading it.
    pub message: String,
}

impl CommandError {
    fn new(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Self {
        CommandError { id, code, message: message.into() }
    }
}

/// A client command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `{"op":"ping"}`: answered with `pong`.
    Ping {
        /// The command id.
        id: Option<u64>,
    },
}

impl Command {
    /// Parses one text frame. Unknown fields are ignored.
    pub fn parse(text: &str) -> Result<Command, CommandError> {
        let value: Value = serde_json::from_str(text).map_err(|error| {
            CommandError::new(None, ErrorCode::BadRequest, format!("invalid JSON: {error}"))
        })?;
        let Value::Object(fields) = value else {
            return Err(CommandError::new(
                None,
                ErrorCode::BadRequest,
                "a command is a JSON object",
            ));
        };
        let id = match fields.get("id") {
            None | Some(Value::Null) => None,
            Some(Value::Number(number)) if number.as_u64().is_some() => number.as_u64(),
            Some(_) => {
                return Err(CommandError::new(
                    None,
                    ErrorCode::BadRequest,
                    "id must be a non-negative integer",
                ));
            }
        };
        let op = match fields.get("op") {
            Some(Value::String(op)) => op.as_str(),
            Some(_) => {
                return Err(CommandError::new(id, ErrorCode::BadRequest, "op must be a string"));
            }
            None => return Err(CommandError::new(id, ErrorCode::BadRequest, "missing op")),
        };
        match op {
            "ping" => Ok(Command::Ping { id }),
            other => Err(CommandError::new(
                id,
                ErrorCode::BadRequest,
                format!("unknown op {:?}", truncate(other, 64)),
            )),
        }
    }
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}

#[derive(Serialize)]
struct Welcome<'a> {
    op: &'static str,
    client: &'a str,
    user: &'a str,
    ping_interval: Value,
}

/// `{"op":"welcome",...}`, sent when a `/ws` connection opens.
pub fn welcome(client: &str, user: &str, ping_interval: std::time::Duration) -> Vec<u8> {
    let ping_interval = if ping_interval.subsec_nanos() == 0 {
        Value::from(ping_interval.as_secs())
    } else {
        Value::from(ping_interval.as_secs_f64())
    };
    to_json(&Welcome { op: "welcome", client, user, ping_interval })
}

#[derive(Serialize)]
struct Pong {
    op: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
}

/// `{"op":"pong","id":..}`.
pub fn pong(id: Option<u64>) -> Vec<u8> {
    to_json(&Pong { op: "pong", id })
}

#[derive(Serialize)]
struct ErrorReply<'a> {
    op: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    code: ErrorCode,
    message: &'a str,
}

/// `{"op":"error","id":..,"code":..,"message":..}`.
pub fn error(error: &CommandError) -> Vec<u8> {
    to_json(&ErrorReply { op: "error", id: error.id, code: error.code, message: &error.message })
}

fn to_json(value: &impl Serialize) -> Vec<u8> {
    // Serializing these plain structs of strings and numbers cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_with_and_without_id() {
        assert_eq!(Command::parse(r#"{"op":"ping","id":6}"#), Ok(Command::Ping { id: Some(6) }));
        assert_eq!(Command::parse(r#"{"op":"ping","extra":[1]}"#), Ok(Command::Ping { id: None }));
        assert_eq!(pong(Some(6)), br#"{"op":"pong","id":6}"#);
        assert_eq!(pong(None), br#"{"op":"pong"}"#);
    }

    #[test]
    fn bad_commands_get_error_replies_with_their_id() {
        let error = Command::parse(r#"{"op":"fly","id":3}"#).unwrap_err();
        assert_eq!(error.id, Some(3));
        assert_eq!(error.code, ErrorCode::BadRequest);
        let reply: Value = serde_json::from_slice(&super::error(&error)).unwrap();
        assert_eq!(reply["op"], "error");
        assert_eq!(reply["id"], 3);
        assert_eq!(reply["code"], "bad_request");
        for bad in ["not json", "[1,2]", r#"{"id":1}"#, r#"{"op":5}"#, r#"{"op":"ping","id":-1}"#] {
            assert_eq!(Command::parse(bad).unwrap_err().code, ErrorCode::BadRequest, "{bad}");
        }
    }

    #[test]
    fn welcome_names_client_user_and_interval() {
        let welcome = welcome("c1", "42", std::time::Duration::from_secs(25));
        assert_eq!(
            welcome,
            br#"{"op":"welcome","client":"c1","user":"42","ping_interval":25}"#.to_vec()
        );
    }
}
