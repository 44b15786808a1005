//! The server API for backends: `/api/...` requests, authenticated with the API key, answered with JSON.

use crate::auth::ApiKey;
use crate::broker::BrokerError;
use crate::broker::channel::ChannelName;
use crate::conn::Ctx;
use crate::conn::client::parse_client_id;
use crate::conn::http::Request;
use crate::error::HttpError;
use serde::Deserialize;
use serde_json::value::RawValue;

/// An API endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /api/publish`.
    Publish,
}

impl Endpoint {
    /// Whether requests to it carry a body.
    pub fn takes_body(self) -> bool {
        match self {
            Endpoint::Publish => true,
        }
    }
}

/// The endpoint for a method and path under `/api/`.
pub fn route(method: &str, path: &str) -> Result<Endpoint, HttpError> {
    let (endpoint, allow) = match path {
        "/api/publish" => (Endpoint::Publish, "POST"),
        _ => return Err(HttpError::NotFound),
    };
    if method == allow { Ok(endpoint) } else { Err(HttpError::MethodNotAllowed { allow }) }
}

/// Checks `Authorization: apikey KEY`.
pub fn authorize(request: &Request<'_>, key: &ApiKey) -> Result<(), HttpError> {
    let presented = match request.unique_header("authorization") {
        Ok(Some(value)) => value,
        Ok(None) => return Err(HttpError::Unauthorized("missing Authorization: apikey <key>")),
        Err(_) => return Err(HttpError::Unauthorized("more than one Authorization header")),
    };
    let key_bytes = match presented.iter().position(|b| *b == b' ') {
        Some(space)
            if presented.get(..space).is_some_and(|s| s.eq_ignore_ascii_case(b"apikey")) =>
        {
            presented.get(space + 1..).unwrap_or_default().trim_ascii()
        }
        _ => return Err(HttpError::Unauthorized("the Authorization header must be: apikey <key>")),
    };
    if key.matches(key_bytes) { Ok(()) } else { Err(HttpError::Unauthorized("wrong API key")) }
}

#[derive(Deserialize)]
struct PublishBody<'a> {
    #[serde(borrow)]
    channel: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    exclude_client: Option<&'a RawValue>,
}

fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(deserializer).map(Some)
}

/// A JSON string without escapes, borrowed.
fn plain_string(raw: &RawValue) -> Option<&str> {
    let inner = raw.get().strip_prefix('"')?.strip_suffix('"')?;
    (!inner.contains('\\') && !inner.contains('"')).then_some(inner)
}

/// Handles a request whose head and body are complete: status and JSON body.
pub fn handle(endpoint: Endpoint, body: &[u8], ctx: &mut Ctx) -> Result<(u16, Vec<u8>), HttpError> {
    match endpoint {
        Endpoint::Publish => publish(body, ctx),
    }
}

fn publish(body: &[u8], ctx: &mut Ctx) -> Result<(u16, Vec<u8>), HttpError> {
    let request: PublishBody<'_> = serde_json::from_slice(body).map_err(|error| {
        HttpError::InvalidRequest(format!("body must be a JSON object: {error}"))
    })?;
    let channel = request
        .channel
        .and_then(plain_string)
        .ok_or_else(|| HttpError::InvalidRequest("channel must be a string".into()))?;
    let channel =
        ChannelName::parse(channel).map_err(|e| HttpError::InvalidRequest(e.to_string()))?;
    let data = request.data.ok_or_else(|| HttpError::InvalidRequest("missing data".into()))?;
    let exclude = match request.exclude_client {
        None => None,
        Some(raw) => {
            let id = plain_string(raw).ok_or_else(|| {
                HttpError::InvalidRequest("exclude_client must be a client id".into())
            })?;
            // A client of another node (or an old one) is simply not here.
            parse_client_id(&ctx.node, id)
        }
    };
    let published = ctx
        .shared
        .broker
        .publish(&channel, data.get().as_bytes(), exclude)
        .map_err(broker_error)?;
    let answer =
        format!(r#"{{"epoch":"{}","offset":{}}}"#, published.epoch.as_str(), published.offset);
    Ok((200, answer.into_bytes()))
}

fn broker_error(error: BrokerError) -> HttpError {
    match error {
        BrokerError::UnknownNamespace(_) => HttpError::Missing(error.message()),
        BrokerError::PresenceOff | BrokerError::HistoryOff => {
            HttpError::InvalidRequest(error.message())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_methods() {
        assert_eq!(route("POST", "/api/publish"), Ok(Endpoint::Publish));
        assert_eq!(
            route("GET", "/api/publish"),
            Err(HttpError::MethodNotAllowed { allow: "POST" })
        );
        assert_eq!(route("POST", "/api/nope"), Err(HttpError::NotFound));
    }
}
