//! Routing as a pure function: a request's method and path to the endpoint it names, or the refusal.

use crate::error::HttpError;

/// What a request's method and path name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /ws`: the JSON client protocol over WebSocket.
    Client,
    /// `GET /echo`: the WebSocket echo (where the configuration serves it).
    Echo,
    /// `GET /sse`.
    Sse,
    /// `GET /poll`.
    Poll,
    /// `OPTIONS /sse` or `OPTIONS /poll`: a browser's CORS preflight before
    /// a cross-origin request with `Authorization` or `Last-Event-ID`.
    Preflight,
    /// `GET /health`.
    Health,
    /// `GET /metrics`.
    Metrics,
    /// A file built into the binary.
    File(File),
    /// A server API endpoint (its method checked).
    Api(ApiEndpoint),
}

/// The files herald serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum File {
    /// `/herald.js`, the browser client.
    HeraldJs,
    /// `/herald.d.ts`, its TypeScript declarations.
    HeraldDts,
    /// `/`, the demo page (in `--dev` only).
    DemoPage,
}

/// A server API endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiEndpoint {
    /// `POST /api/publish`.
    Publish,
    /// `POST /api/broadcast`.
    Broadcast,
    /// `POST /api/disconnect`.
    Disconnect,
    /// `POST /api/unsubscribe`.
    Unsubscribe,
    /// `GET /api/presence`.
    Presence,
    /// `GET /api/history`.
    History,
    /// `GET /api/channels`.
    Channels,
    /// `GET /api/info`.
    Info,
}

impl ApiEndpoint {
    /// Every endpoint, in the order of its metrics rows.
    pub const ALL: [ApiEndpoint; 8] = [
        ApiEndpoint::Publish,
        ApiEndpoint::Broadcast,
        ApiEndpoint::Disconnect,
        ApiEndpoint::Unsubscribe,
        ApiEndpoint::Presence,
        ApiEndpoint::History,
        ApiEndpoint::Channels,
        ApiEndpoint::Info,
    ];

    /// The last part of its path, also its metrics label.
    pub fn label(self) -> &'static str {
        match self {
            ApiEndpoint::Publish => "publish",
            ApiEndpoint::Broadcast => "broadcast",
            ApiEndpoint::Disconnect => "disconnect",
            ApiEndpoint::Unsubscribe => "unsubscribe",
            ApiEndpoint::Presence => "presence",
            ApiEndpoint::History => "history",
            ApiEndpoint::Channels => "channels",
            ApiEndpoint::Info => "info",
        }
    }

    /// The method it answers.
    pub fn method(self) -> &'static str {
        if self.takes_body() { "POST" } else { "GET" }
    }

    /// Whether requests to it carry a JSON body (the others take a query).
    pub fn takes_body(self) -> bool {
        matches!(
            self,
            ApiEndpoint::Publish
                | ApiEndpoint::Broadcast
                | ApiEndpoint::Disconnect
                | ApiEndpoint::Unsubscribe
        )
    }

    /// The endpoint a path under `/api/` names, whatever the method.
    pub fn from_path(path: &str) -> Option<ApiEndpoint> {
        let name = path.strip_prefix("/api/")?;
        ApiEndpoint::ALL.into_iter().find(|endpoint| endpoint.label() == name)
    }
}

/// The endpoint for a method and path: `404` for a path herald does not
/// serve, `405` (with the method it takes) for a known path asked with
/// another method.
pub fn route(method: &str, path: &str) -> Result<Route, HttpError> {
    if path.starts_with("/api/") {
        let endpoint = ApiEndpoint::from_path(path).ok_or(HttpError::NotFound)?;
        let allow = endpoint.method();
        return if method == allow {
            Ok(Route::Api(endpoint))
        } else {
            Err(HttpError::MethodNotAllowed { allow })
        };
    }
    let route = match path {
        "/sse" | "/poll" if method == "OPTIONS" => return Ok(Route::Preflight),
        "/ws" => Route::Client,
        "/echo" => Route::Echo,
        "/sse" => Route::Sse,
        "/poll" => Route::Poll,
        "/health" => Route::Health,
        "/metrics" => Route::Metrics,
        "/herald.js" => Route::File(File::HeraldJs),
        "/herald.d.ts" => Route::File(File::HeraldDts),
        // The demo page exists only for GET.
        "/" if method == "GET" => Route::File(File::DemoPage),
        _ => return Err(HttpError::NotFound),
    };
    if method == "GET" { Ok(route) } else { Err(HttpError::MethodNotAllowed { allow: "GET" }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_methods() {
        assert_eq!(route("POST", "/api/publish"), Ok(Route::Api(ApiEndpoint::Publish)));
        assert_eq!(route("GET", "/api/history"), Ok(Route::Api(ApiEndpoint::History)));
        assert_eq!(
            route("GET", "/api/publish"),
            Err(HttpError::MethodNotAllowed { allow: "POST" })
        );
        assert_eq!(route("POST", "/api/info"), Err(HttpError::MethodNotAllowed { allow: "GET" }));
        assert_eq!(route("POST", "/api/nope"), Err(HttpError::NotFound));
        assert_eq!(route("POST", "/api/"), Err(HttpError::NotFound));
        for endpoint in ApiEndpoint::ALL {
            let path = format!("/api/{}", endpoint.label());
            assert_eq!(route(endpoint.method(), &path), Ok(Route::Api(endpoint)));
        }
        assert_eq!(route("GET", "/ws"), Ok(Route::Client));
        assert_eq!(route("POST", "/ws"), Err(HttpError::MethodNotAllowed { allow: "GET" }));
        assert_eq!(route("GET", "/"), Ok(Route::File(File::DemoPage)));
        assert_eq!(route("POST", "/"), Err(HttpError::NotFound));
        assert_eq!(route("GET", "/nope"), Err(HttpError::NotFound));
        assert_eq!(route("OPTIONS", "/sse"), Ok(Route::Preflight));
        assert_eq!(route("OPTIONS", "/poll"), Ok(Route::Preflight));
        assert_eq!(route("OPTIONS", "/ws"), Err(HttpError::MethodNotAllowed { allow: "GET" }));
    }
}
