//! The data plane: listening sockets (`listener`), worker threads (`server`), the
//! per-connection IO wrapper (`io`), the request path (`handler`) with its
//! header rules (`headers`), bodies (`body`), upgrades (`upgrade`), gRPC
//! status and deadlines (`grpc`) and the one place errors become responses
//! (`error`).

pub mod body;
pub mod error;
pub mod forward;
pub mod grpc;
pub mod handler;
pub mod headers;
pub mod io;
pub mod listener;
pub mod request_id;
pub mod server;
pub mod table_cache;
pub mod upgrade;

pub use listener::Listeners;
pub use server::Shared;
