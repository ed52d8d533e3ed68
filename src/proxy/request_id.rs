//! `x-request-id`: every request has one, sent to the backend and back to
//! the client, and written in the access log and the request's event logs.
//! A client's own is kept when it is at most [`MAX_LEN`] bytes of
//! `[A-Za-z0-9._:-]` (no spaces, quotes or control bytes to forge log
//! lines with); otherwise, or when there is none, the proxy makes one: a
//! UUIDv7 (RFC 9562 §5.7), unique and sortable by time.
//!
//! Making one costs a clock read, a few hex digits and one allocation:
//! each thread picks its random bits once and then counts (RFC 9562 §6.2,
//! a dedicated counter), and keeps the text of its last ID, rewriting only
//! the digits that changed.

use std::cell::RefCell;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client-supplied ID kept.
pub const MAX_LEN: usize = 128;

/// Length of a hyphenated UUID: `8-4-4-4-12` hex digits.
const LEN: usize = 36;

/// The request's ID, after making sure `headers` carries exactly it;
/// `given` is how many `x-request-id` fields it has (`headers::Fields`).
///
/// The value is marked sensitive: it differs on every request, so HPACK
/// must not put it in an HTTP/2 connection's dynamic table (the `h2`
/// crate indexes every other field). Indexed, each ID would evict useful
/// entries, and each lookup would compare against every earlier ID still
/// there (callgrind: 66.6k → 63.8k instructions per h2c request).
pub fn ensure(headers: &mut HeaderMap, given: usize) -> HeaderValue {
    if given == 1
        && let Some(id) = headers.get_mut(&X_REQUEST_ID)
        && is_safe(id.as_bytes())
    {
        id.set_sensitive(true);
        return id.clone();
    }
    let mut id = new_id();
    id.set_sensitive(true);
    headers.insert(X_REQUEST_ID.clone(), id.clone());
    id
}

/// The ID as text, for a log line (read only when the line is written): a
/// kept ID is ASCII ([`is_safe`]), and so is a new one.
pub fn as_str(id: &HeaderValue) -> &str {
    std::str::from_utf8(id.as_bytes()).unwrap_or("-")
}

fn is_safe(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

thread_local! {
    static GENERATOR: RefCell<Option<Generator>> = const { RefCell::new(None) };
}

/// A UUIDv7: 48 bits of Unix milliseconds, then this thread's 42 random
/// bits (drawn once) and its 32-bit counter (started at a random value).
fn new_id() -> HeaderValue {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    GENERATOR.with_borrow_mut(|g| g.get_or_insert_with(Generator::new).next(ms))
}

/// One thread's IDs.
struct Generator {
    /// The last ID's text: the thread's random digits never change, the
    /// time's only when the millisecond does.
    text: [u8; LEN],
    /// The millisecond in `text`.
    ms: u64,
    counter: u32,
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes the low `out.len()` hex digits of `n` into `out`.
fn hex(out: &mut [u8], mut n: u64) {
    for b in out.iter_mut().rev() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
}

impl Generator {
    fn new() -> Generator {
        // Version 7 and variant `10` (RFC 9562 §4.1, §4.2) around 42
        // random bits: 12 of `rand_a`, then 30 of `rand_b` before the
        // counter.
        let random = fastrand::u64(..);
        let mut text = *b"00000000-0000-7000-8000-000000000000";
        hex(&mut text[15..18], random & 0xfff);
        hex(&mut text[19..20], 0x8 | ((random >> 12) & 0x3));
        hex(&mut text[20..23], (random >> 14) & 0xfff);
        hex(&mut text[24..28], (random >> 26) & 0xffff);
        let mut g = Generator {
            text,
            ms: 0,
            counter: fastrand::u32(..),
        };
        g.set_ms(0);
        g
    }

    fn set_ms(&mut self, ms: u64) {
        self.ms = ms;
        let ms = ms & 0xffff_ffff_ffff;
        hex(&mut self.text[0..8], ms >> 16);
        hex(&mut self.text[9..13], ms & 0xffff);
    }

    fn next(&mut self, ms: u64) -> HeaderValue {
        if ms != self.ms {
            self.set_ms(ms);
        }
        self.counter = self.counter.wrapping_add(1);
        hex(&mut self.text[28..36], u64::from(self.counter));
        // One allocation, whose clones (the request's, the response's)
        // only count references: `Bytes::copy_from_slice` would allocate
        // again at the first clone.
        HeaderValue::from_maybe_shared(Bytes::from_owner(self.text))
            .expect("hex digits and hyphens are a valid header value")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_for(values: &[&[u8]]) -> (HeaderValue, HeaderMap) {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(X_REQUEST_ID.clone(), HeaderValue::from_bytes(v).unwrap());
        }
        (ensure(&mut h, values.len()), h)
    }

    #[test]
    fn keeps_a_safe_id_and_replaces_others() {
        let (id, h) = id_for(&[b"abc-123_x.y:z"]);
        assert_eq!(id, "abc-123_x.y:z");
        assert_eq!(h.get_all(&X_REQUEST_ID).iter().count(), 1);
        let long = vec![b'a'; MAX_LEN + 1];
        for bad in [&b"a b"[..], b"a\"b", b"", &long, b"\xff"] {
            let (id, h) = id_for(&[bad]);
            assert_eq!(id.len(), 36, "{bad:?}");
            assert_eq!(h.get(&X_REQUEST_ID), Some(&id));
        }
        let (id, h) = id_for(&[b"one", b"two"]);
        assert_eq!((id.len(), h.get_all(&X_REQUEST_ID).iter().count()), (36, 1));
        assert!(id_for(&[&[b'a'; MAX_LEN]]).0.len() == MAX_LEN);
    }

    #[test]
    fn ids_kept_or_made_are_sensitive_for_hpack() {
        for given in [&[&b"kept-1"[..]][..], &[], &[b"a b"]] {
            let (id, h) = id_for(given);
            assert!(id.is_sensitive(), "{given:?}");
            assert!(h.get(&X_REQUEST_ID).unwrap().is_sensitive(), "{given:?}");
        }
    }

    #[test]
    fn generated_ids_are_uuid_v7_and_sort_by_time() {
        let a = new_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_id();
        let u = uuid::Uuid::parse_str(a.to_str().unwrap()).unwrap();
        assert_eq!(u.get_version_num(), 7);
        assert_eq!(u.get_variant(), uuid::Variant::RFC4122);
        assert!(a.as_bytes() < b.as_bytes());
        // The time is the clock's, to the millisecond.
        let (secs, _) = u.get_timestamp().unwrap().to_unix();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(now.abs_diff(secs) <= 1, "{secs} vs {now}");
    }

    #[test]
    fn generated_ids_are_unique_across_threads() {
        let make = || (0..1000).map(|_| new_id()).collect::<Vec<_>>();
        let other = std::thread::spawn(make);
        let mut all = make();
        all.extend(other.join().unwrap());
        for id in &all {
            let u = uuid::Uuid::parse_str(id.to_str().unwrap()).unwrap();
            assert_eq!(u.get_version_num(), 7, "{id:?}");
        }
        let n = all.len();
        let set: std::collections::HashSet<_> = all.into_iter().collect();
        assert_eq!(set.len(), n);
    }
}
