//! The fuzz targets' invariants, one module per target. Each `check(data)`
//! panics when an invariant fails and is shared by the libFuzzer target
//! (`fuzz/fuzz_targets/<target>.rs`) and by `tests/fuzz_corpora.rs`, which
//! replays every committed corpus file on stable, so both assert the same.

#![allow(dead_code)]

pub mod config;
pub mod cookie;
pub mod edit;
pub mod headers;
pub mod http1;
pub mod input;
pub mod routing;

/// A target's invariant check over one input.
pub type Check = fn(&[u8]);

/// Every target, by the name of its corpus folder (`fuzz/corpus/<name>/`).
pub const TARGETS: &[(&str, Check)] = &[
    ("config", config::check),
    ("cookie", cookie::check),
    ("headers", headers::check),
    ("routing", routing::check),
    ("edit", edit::check),
    ("http1", http1::check),
];
