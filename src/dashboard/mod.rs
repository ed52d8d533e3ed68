//! The live dashboard of the admin listener: one HTML page shipped inside
//! the binary (served at `/` and `/dashboard`), and the history it charts.
//!
//! The page polls `/admin/state` once a second, `/admin/history` every
//! [`history::INTERVAL`], and `/admin/analysis` when the build has it; it
//! draws its charts as SVG itself and needs nothing from the network.

pub mod history;

/// The page: HTML, CSS and JavaScript in one file, no external resources.
pub const PAGE: &str = include_str!("page.html");

/// What the page may load: itself and same-origin JSON, nothing else.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";
