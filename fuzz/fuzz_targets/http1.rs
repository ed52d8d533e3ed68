#![no_main]
//! See `fuzz/checks/http1.rs` for what this target asserts.

libfuzzer_sys::fuzz_target!(
    init: {
        // A Rust `main` ignores SIGPIPE before it runs (so `cutover` and the
        // test binaries that replay this corpus do); libFuzzer's C `main`
        // does not. Without this, a `writev` to a connection the other side
        // closed (the harness's backend answering a request the proxy gave
        // up on; `writev` takes no `MSG_NOSIGNAL`) killed the whole fuzzing
        // process instead of failing that write.
        // SAFETY: sets a signal's disposition to "ignore" before any thread
        // of the harness starts; no handler runs.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
    },
    |data: &[u8]| cutover_fuzz::http1::check(data)
);
