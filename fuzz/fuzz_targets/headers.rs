#![no_main]
//! See `fuzz/checks/headers.rs` for what this target asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| cutover_fuzz::headers::check(data));
