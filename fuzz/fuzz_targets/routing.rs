#![no_main]
//! See `fuzz/checks/routing.rs` for what this target asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| cutover_fuzz::routing::check(data));
