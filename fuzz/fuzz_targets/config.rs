#![no_main]
//! See `fuzz/checks/config.rs` for what this target asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| cutover_fuzz::config::check(data));
