//! Sticky cookie codec and its HMAC check: every cookie the codec writes
//! reads back as written, through a `Cookie` header among others; and a
//! signed codec accepts no value but one it wrote itself (a mutated or
//! forged value reads as absent), whatever bytes it is given.

use std::time::Duration;

use cutover::routing::Bucket;
use cutover::routing::sticky::{CookieCodec, CookieValue};
use http::{HeaderMap, HeaderValue, header};

use super::input::Input;

const TOKEN: &[u8] = b"abcXYZ019!#$%&'*+-.^_`|~";
const NAME: &[u8] = b"abcdefgXYZ0189-_";

fn pick(input: &mut Input<'_>, alphabet: &[u8], max: usize) -> String {
    let n = 1 + input.choose(max);
    (0..n)
        .map(|_| char::from(alphabet[input.choose(alphabet.len())]))
        .collect()
}

/// The value part of a `Set-Cookie` line `name=value; Path=/; ...`.
fn value_of<'a>(set_cookie: &'a HeaderValue, name: &str) -> &'a str {
    let line = set_cookie.to_str().expect("Set-Cookie is visible ASCII");
    let pair = line.split(';').next().unwrap_or_default();
    pair.strip_prefix(name)
        .and_then(|p| p.strip_prefix('='))
        .unwrap_or_else(|| panic!("Set-Cookie does not start with {name}=: {line}"))
}

pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let signed = input.bool();
    let secret = input.bytes(40).to_vec();
    let name = pick(&mut input, TOKEN, 8);
    let max_age = input
        .bool()
        .then(|| Duration::from_secs(input.u32().into()));
    let codec = CookieCodec::new(&name, max_age, signed.then_some(&secret[..]));
    let bucket = Bucket::new(input.u16() % 10_000).expect("in range");
    let backend = input.bool().then(|| pick(&mut input, NAME, 12));
    let secure = input.bool();

    // Round trip.
    let set = codec.set_cookie(bucket, backend.as_deref(), secure);
    assert_eq!(
        set.to_str().ok().map(|s| s.ends_with("; Secure")),
        Some(secure)
    );
    let value = value_of(&set, &name).to_owned();
    let expected = CookieValue {
        bucket,
        backend: backend.as_deref(),
    };
    assert_eq!(codec.decode(&value), Some(expected), "{value}");
    let mut headers = HeaderMap::new();
    // Other cookies around it, named outside the name's alphabet (with a
    // duplicate name the first one counts, as for any cookie).
    let cookie = format!("other=1; {name}={value}; more=2");
    headers.insert(
        header::COOKIE,
        HeaderValue::from_str(&cookie).expect("ASCII"),
    );
    assert_eq!(codec.read(&headers), Some(expected), "{cookie}");

    // Tampered and forged values: a mutation of the real one, and raw bytes.
    let mut mutated = value.clone().into_bytes();
    for _ in 0..input.choose(4) {
        let at = input.choose(mutated.len() + 1);
        let b = input.u8();
        match input.choose(4) {
            0 if at < mutated.len() => mutated[at] ^= b,
            1 if at < mutated.len() => {
                mutated.remove(at);
            }
            2 => mutated.truncate(at),
            _ => mutated.insert(at, b),
        }
    }
    let raw = input.rest();
    for candidate in [&mutated[..], raw] {
        let Ok(candidate) = std::str::from_utf8(candidate) else {
            continue;
        };
        judge(&codec, &name, signed, candidate);
        // In a `Cookie` header (visible ASCII, no `;`), the value reads as
        // decoding it, less trailing blanks and quotes, does.
        let plain = candidate
            .bytes()
            .all(|b| b == b'\t' || (b' '..=b'~').contains(&b) && b != b';');
        if plain && let Ok(v) = HeaderValue::from_str(&format!("{name}={candidate}")) {
            let mut headers = HeaderMap::new();
            headers.insert(header::COOKIE, v);
            let read = codec.read(&headers);
            let trimmed = candidate.trim_end().trim_matches('"');
            assert_eq!(read, codec.decode(trimmed), "read and decode disagree");
        }
    }
}

/// What any accepted value must be.
fn judge(codec: &CookieCodec, name: &str, signed: bool, candidate: &str) {
    let Some(v) = codec.decode(candidate) else {
        return;
    };
    assert!(v.bucket.get() < 10_000);
    if let Some(b) = v.backend {
        assert!(!b.is_empty() && !b.contains('.'), "{candidate:?}");
    }
    if signed {
        // Only what the codec signs verifies: the value is exactly the
        // one it writes for what it read (no second encoding of a bucket,
        // no other signature, no trailing bits).
        let rewritten = codec.set_cookie(v.bucket, v.backend, false);
        assert_eq!(
            value_of(&rewritten, name),
            candidate,
            "a signed codec accepted a value it did not write"
        );
    }
}
