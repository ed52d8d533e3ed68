//! A retry budget: retries may add at most `ratio` of the requests of the
//! last 10 seconds, plus a small floor per second, so retries cannot multiply
//! an outage. Like tower's `TpsBudget`, but with atomics only: its deposit
//! takes a mutex on every request, which the request path must not.
//!
//! Counts live in ten one-second slots per thread stripe (`stripe`): a
//! deposit writes only its own thread's cache line, a withdraw (a retry,
//! rare) sums them all. A slot is reset by whoever first sees it stale, so
//! a count racing that reset may be lost: the budget is approximate by a
//! request or two, never unbounded.

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::stripe::{Padded, STRIPES};

const SLOTS: usize = 10;

#[derive(Debug, Default)]
struct Slot {
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

#[derive(Debug)]
pub struct RetryBudget {
    /// A fixed number, so that finding this thread's is a mask, not a
    /// division.
    stripes: Box<[Padded<[Slot; SLOTS]>; STRIPES]>,
    ratio: f64,
    min_per_second: u64,
}

thread_local! {
    /// The second this thread last asked for: when it begins and ends, and
    /// its number. Nearly every request falls in the one before it, and
    /// comparing instants is cheaper than subtracting them.
    static LAST: Cell<Option<(Instant, Instant, u64)>> = const { Cell::new(None) };
}

fn seconds_since_start(now: Instant) -> u64 {
    LAST.with(|last| {
        if let Some((begin, end, second)) = last.get()
            && begin <= now
            && now < end
        {
            return second;
        }
        static START: OnceLock<Instant> = OnceLock::new();
        let start = *START.get_or_init(Instant::now);
        let whole = now.saturating_duration_since(start).as_secs();
        let begin = start + Duration::from_secs(whole);
        // +1 so that no live slot is ever second 0, the initial value.
        let second = whole + 1;
        last.set(Some((begin, begin + Duration::from_secs(1), second)));
        second
    })
}

impl RetryBudget {
    pub fn new(ratio: f64, min_per_second: u64) -> RetryBudget {
        RetryBudget {
            stripes: Box::new(std::array::from_fn(|_| Padded::default())),
            ratio,
            min_per_second,
        }
    }

    /// This thread's slot of `second`.
    fn slot(&self, second: u64) -> &Slot {
        let stripe = &self.stripes[crate::stripe::current() % STRIPES];
        let slot = &stripe.0[(second % SLOTS as u64) as usize];
        if slot.second.load(Ordering::Relaxed) != second {
            slot.second.store(second, Ordering::Relaxed);
            slot.requests.store(0, Ordering::Relaxed);
            slot.retries.store(0, Ordering::Relaxed);
        }
        slot
    }

    /// Counts a first attempt.
    pub fn deposit(&self, now: Instant) {
        self.slot(seconds_since_start(now))
            .requests
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget if there is room.
    pub fn withdraw(&self, now: Instant) -> bool {
        let second = seconds_since_start(now);
        let current = self.slot(second);
        let (mut requests, mut retries) = (0, 0);
        for s in self.stripes.iter().flat_map(|stripe| &stripe.0) {
            if second.saturating_sub(s.second.load(Ordering::Relaxed)) < SLOTS as u64 {
                requests += s.requests.load(Ordering::Relaxed);
                retries += s.retries.load(Ordering::Relaxed);
            }
        }
        let allowed = self.min_per_second * SLOTS as u64 + (requests as f64 * self.ratio) as u64;
        if retries < allowed {
            current.retries.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_retries_at_the_ratio_plus_floor() {
        let b = RetryBudget::new(0.2, 1);
        let now = Instant::now();
        for _ in 0..100 {
            b.deposit(now);
        }
        let granted = (0..100).filter(|_| b.withdraw(now)).count();
        // 20% of 100 requests, plus 1 per second over the 10-second window.
        assert_eq!(granted, 30);
    }

    #[test]
    fn seconds_count_from_the_first_call() {
        let t0 = Instant::now();
        let s = seconds_since_start(t0);
        assert!(s >= 1);
        // The cached second, then the next ones, then an earlier instant
        // again: each the same as computed from scratch.
        for ms in [0, 10, 1_000, 1_001, 2_500, 10, 0, 60_000, 999] {
            let now = t0 + Duration::from_millis(ms);
            let cached = seconds_since_start(now);
            LAST.with(|l| l.set(None));
            assert_eq!(cached, seconds_since_start(now), "{ms} ms");
        }
        assert_eq!(
            seconds_since_start(t0 + Duration::from_secs(5)),
            seconds_since_start(t0) + 5
        );
    }
}
