//! The routing decision, free of sockets: which route a request matches
//! (`matcher`), which backend of it serves the request (`split`, `sticky`,
//! `overrides`), all held in one immutable [`RoutingTable`] (`table`) that a
//! reload rebuilds and publishes with a single `ArcSwap::store`.

pub mod choose;
pub mod matcher;
pub mod overrides;
pub mod split;
pub mod sticky;
pub mod table;

pub use choose::Choice;
pub use split::{BUCKETS, Bucket, Split};
pub use table::{Route, RouteBackend, RoutingTable, Source};
