//! Cutover: a Layer-7 reverse proxy for blue/green and canary releases.
//!
//! The request path lives in [`proxy::handler`]; the routing decision in
//! [`routing`]; configuration and reloads in [`config`] and [`app`].

#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod admin_client;
pub mod analysis;
pub mod app;
pub mod config;
pub mod dashboard;
pub mod demo;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod report;
pub mod rollout;
pub mod routing;
pub mod shadow;
pub mod status;
pub mod stripe;
pub mod tls;
pub mod upgrade;
pub mod upstream;
