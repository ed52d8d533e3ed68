#![no_main]
//! See `fuzz/checks/http1.rs` for what this target asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| cutover_fuzz::http1::check(data));
