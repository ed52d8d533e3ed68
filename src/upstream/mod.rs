//! Upstreams: endpoint state shared across reloads (`endpoint`), opening
//! connections (`connect`) and keeping them per worker (`pool`; HTTP/2 ones
//! shared by streams, `h2`), and the
//! request body sent on them (`body`; `replay` keeps it for a resend).

pub mod body;
pub mod budget;
pub mod connect;
pub mod endpoint;
pub mod expect;
pub mod grpc_health;
pub mod h2;
pub mod health;
pub mod pool;
pub mod replay;
pub mod tee;

pub use endpoint::{Backend, Endpoint, EndpointRegistry};
