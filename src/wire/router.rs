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
    /// `GET /app/{key}`: a Pusher protocol client.
    Pusher,
    /// A Pusher HTTP API endpoint (its method checked).
    PusherApi(PusherEndpoint),
}

/// An endpoint of the Pusher HTTP API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PusherEndpoint {
    /// `POST /apps/{id}/events`.
    Events,
    /// `POST /apps/{id}/batch_events`.
    BatchEvents,
    /// `GET /apps/{id}/channels`.
    Channels,
    /// `GET /apps/{id}/channels/{name}`.
    Channel,
    /// `GET /apps/{id}/channels/{name}/users`.
    ChannelUsers,
    /// `POST /apps/{id}/users/{user}/terminate_connections` (also without
    /// `/apps/{id}`, as the Python SDK sends it).
    Terminate,
}

impl PusherEndpoint {
    /// The method it answers.
    pub fn method(self) -> &'static str {
        if self.takes_body() { "POST" } else { "GET" }
    }

    /// Whether requests to it carry a JSON body.
    pub fn takes_body(self) -> bool {
        matches!(
            self,
            PusherEndpoint::Events | PusherEndpoint::BatchEvents | PusherEndpoint::Terminate
        )
    }
}

/// A Pusher HTTP API path, taken apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PusherPath<'a> {
    /// The app id in the path (`None`: the Python SDK's terminate path).
    pub app: Option<&'a str>,
    /// The endpoint.
    pub endpoint: PusherEndpoint,
    /// The channel or user the path names, as sent (percent-encoded).
    pub name: Option<&'a str>,
}

/// Takes a Pusher HTTP API path apart: `/apps/{id}/...`, or
/// `/users/{user}/terminate_connections`.
pub fn pusher_path(path: &str) -> Option<PusherPath<'_>> {
    let (app, rest) = match path.strip_prefix("/apps/") {
        Some(rest) => {
            let (app, rest) = rest.split_once('/')?;
            (Some(app).filter(|app| !app.is_empty()), rest)
        }
        None => (None, path.strip_prefix('/')?),
    };
    if path.starts_with("/apps/") && app.is_none() {
        return None;
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let (endpoint, name) = match (app.is_some(), parts.as_slice()) {
        (true, ["events"]) => (PusherEndpoint::Events, None),
        (true, ["batch_events"]) => (PusherEndpoint::BatchEvents, None),
        (true, ["channels"]) => (PusherEndpoint::Channels, None),
        (true, ["channels", name]) => (PusherEndpoint::Channel, Some(*name)),
        (true, ["channels", name, "users"]) => (PusherEndpoint::ChannelUsers, Some(*name)),
        (_, ["users", user, "terminate_connections"]) => (PusherEndpoint::Terminate, Some(*user)),
        _ => return None,
    };
    if name.is_some_and(str::is_empty) {
        return None;
    }
    Some(PusherPath { app, endpoint, name })
}

/// The files herald serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum File {
    /// `/herald.js`, the browser client.
    HeraldJs,
    /// `/herald.d.ts`, its TypeScript declarations.
    HeraldDts,
    /// `/herald-pusher.js`, recovery for pusher-js and Laravel Echo.
    HeraldPusherJs,
    /// `/herald-pusher.d.ts`, its TypeScript declarations.
    HeraldPusherDts,
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
    if let Some(pusher) = pusher_path(path) {
        let allow = pusher.endpoint.method();
        return if method == allow {
            Ok(Route::PusherApi(pusher.endpoint))
        } else {
            Err(HttpError::MethodNotAllowed { allow })
        };
    }
    let route = match path {
        "/sse" | "/poll" if method == "OPTIONS" => return Ok(Route::Preflight),
        _ if path
            .strip_prefix("/app/")
            .is_some_and(|key| !key.is_empty() && !key.contains('/')) =>
        {
            Route::Pusher
        }
        "/ws" => Route::Client,
        "/echo" => Route::Echo,
        "/sse" => Route::Sse,
        "/poll" => Route::Poll,
        "/health" => Route::Health,
        "/metrics" => Route::Metrics,
        "/herald.js" => Route::File(File::HeraldJs),
        "/herald.d.ts" => Route::File(File::HeraldDts),
        "/herald-pusher.js" => Route::File(File::HeraldPusherJs),
        "/herald-pusher.d.ts" => Route::File(File::HeraldPusherDts),
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

    #[test]
    fn pusher_routes_and_paths() {
        assert_eq!(route("GET", "/app/app-key"), Ok(Route::Pusher));
        assert_eq!(route("GET", "/app/"), Err(HttpError::NotFound));
        assert_eq!(route("GET", "/app/a/b"), Err(HttpError::NotFound));
        assert_eq!(route("POST", "/apps/1/events"), Ok(Route::PusherApi(PusherEndpoint::Events)));
        assert_eq!(
            route("GET", "/apps/1/events"),
            Err(HttpError::MethodNotAllowed { allow: "POST" })
        );
        let cases = [
            ("/apps/1/batch_events", Some("1"), PusherEndpoint::BatchEvents, None),
            ("/apps/1/channels", Some("1"), PusherEndpoint::Channels, None),
            (
                "/apps/1/channels/presence-a.b",
                Some("1"),
                PusherEndpoint::Channel,
                Some("presence-a.b"),
            ),
            ("/apps/1/channels/p/users", Some("1"), PusherEndpoint::ChannelUsers, Some("p")),
            (
                "/apps/1/users/u%201/terminate_connections",
                Some("1"),
                PusherEndpoint::Terminate,
                Some("u%201"),
            ),
            ("/users/u1/terminate_connections", None, PusherEndpoint::Terminate, Some("u1")),
        ];
        for (path, app, endpoint, name) in cases {
            assert_eq!(pusher_path(path), Some(PusherPath { app, endpoint, name }), "{path}");
        }
        for bad in
            ["/apps//events", "/apps/1/nope", "/apps/1/channels/", "/users/x", "/apps/1", "/events"]
        {
            assert_eq!(pusher_path(bad), None, "{bad}");
        }
    }
}
