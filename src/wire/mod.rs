//! What herald reads and writes on a socket, as pure functions with no I/O: HTTP heads, routing, the WebSocket handshake, frames and their compression, SSE, the Pusher protocol, webhook requests.

pub mod deflate;
pub mod frame;
pub mod http;
pub mod pusher;
pub mod router;
pub mod scanner;
pub mod sse;
pub mod upgrade;
pub mod webhook;
