#![no_main]
//! See `fuzz/checks/cookie.rs` for what this target asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| cutover_fuzz::cookie::check(data));
