//! Upstreams: endpoint state shared across reloads (`endpoint`), and the
//! per-worker HTTP client with its connection pool (`client`).

pub mod budget;
pub mod client;
pub mod connector;
pub mod endpoint;
pub mod health;

pub use endpoint::{Backend, Endpoint, EndpointRegistry};
