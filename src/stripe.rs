//! Per-thread stripes for counters written on the request path: each
//! thread writes its own cache line and readers (a scrape, the retry
//! budget's withdraw, `/admin/state`) sum the stripes. With up to
//! [`STRIPES`] threads (the workers and the control thread) no two
//! threads write the same line, so nothing bounces between cores.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Stripes per striped value; threads map onto them round-robin as they
/// first touch one.
pub const STRIPES: usize = 16;

/// A value alone on its 128 bytes: two cache lines on x86, whose
/// adjacent-line prefetcher pairs them, and one on Apple silicon.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Padded<T>(pub T);

/// Counters per [`Line`]: 16 x 8 bytes = 128 bytes.
pub const PER_LINE: usize = 16;

/// Striped counters' storage: [`PER_LINE`] counters alone on their 128
/// bytes, as [`Padded`] (the A/B evidence and the per-pair metrics).
#[repr(align(128))]
pub struct Line(pub [AtomicU64; PER_LINE]);

thread_local! {
    static STRIPE: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES
    };
}

/// This thread's stripe, `0..STRIPES`.
pub fn current() -> usize {
    STRIPE.with(|s| *s)
}
