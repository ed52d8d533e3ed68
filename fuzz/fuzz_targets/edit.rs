#![no_main]
//! See `fuzz/checks/edit.rs` for what this target asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| cutover_fuzz::edit::check(data));
