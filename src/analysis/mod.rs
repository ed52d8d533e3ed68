//! A/B verdicts: every other backend of a route compared with its baseline,
//! with statistics that stay valid however often they are looked at.
//!
//! The statistics are pure functions of plain counts, one file per method:
//! - [`rate`]: a confidence sequence for one error rate (beta-binomial
//!   mixture; Howard, Ramdas, McAuliffe, Sekhon 2021);
//! - [`error_rate`]: the difference of two error rates and its decision;
//! - [`dkw`]: a time-uniform band for a distribution function (Howard and
//!   Ramdas 2022, Theorem 2);
//! - [`latency`]: quantiles with bounds and the test "is green slower";
//! - [`srm`]: sample-ratio mismatch (Lindon and Malek 2022);
//! - [`verdict`]: the three combined under one error budget.
//!
//! Recording the evidence on the request path is [`evidence`]; the sliding
//! and "since an instant" windows over it are [`window`]; [`exported`] makes
//! it Prometheus series, and [`prometheus`] reads them back summed over
//! replicas.

pub mod dkw;
pub mod error_rate;
pub mod evidence;
pub mod exported;
pub mod json;
pub mod latency;
pub mod prometheus;
pub mod rate;
pub mod srm;
pub mod verdict;
pub mod window;

#[cfg(test)]
mod simulation;

pub use verdict::{Comparison, Kind, Settings, Side, compare};

/// An interval of a quantity, with its point estimate.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Bounds {
    pub estimate: f64,
    pub lower: f64,
    pub upper: f64,
}

/// Where one comparison stands against its threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Worse by more than the threshold, with confidence.
    Worse,
    /// Not worse by more than the threshold, with confidence.
    Within,
    /// Not enough evidence either way yet.
    Unknown,
}
