//! herald: a real-time notification server on a shard-per-core mio event loop.
//!
//! [`Server::start`] binds one `SO_REUSEPORT` listener per shard and runs each
//! shard's loop on its own thread; the returned [`ServerHandle`] gives the
//! bound address and stops the server gracefully. `docs/ARCHITECTURE.md`
//! follows one connection through the modules below.

pub mod api;
pub mod auth;
pub mod broker;
pub mod config;
pub mod conn;
pub mod error;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod shard;
pub mod sys;
#[doc(hidden)]
pub mod testing;

pub use config::Config;
pub use server::{Server, ServerHandle};
