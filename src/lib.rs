//! herald: a real-time notification server on a shard-per-core mio event loop.
//!
//! [`Server::start`] binds one `SO_REUSEPORT` listener per shard and runs each
//! shard's loop on its own thread; the returned [`ServerHandle`] gives the
//! bound address and stops the server gracefully. `docs/ARCHITECTURE.md`
//! follows one connection through the modules below.

// In layers, each importing only those below it (docs/ARCHITECTURE.md has
// the table; tests/layers.rs keeps it true).
// 0: base
pub mod channel;
pub mod clock;
pub mod config;
pub mod error;
pub mod sys;
pub mod tls;
pub mod types;
// 1: wire formats, pure
pub mod protocol;
pub mod wire;
// 2: the broker
pub mod broker;
// 3: the node
pub mod auth;
pub mod metrics;
pub mod node;
pub mod webhook;
// 4: front ends
pub mod api;
pub mod pusher;
pub mod session;
pub mod stream;
// 5-7: a connection, a shard, the server
pub mod conn;
pub mod server;
pub mod shard;
#[doc(hidden)]
pub mod testing;

pub use config::Config;
pub use server::{Server, ServerHandle};
