//! `x-request-id`: every request has one, sent to the backend and back to
//! the client, and written in the access log and the request's event logs.
//! A client's own is kept when it is at most [`MAX_LEN`] bytes of
//! `[A-Za-z0-9._:-]` (no spaces, quotes or control bytes to forge log
//! lines with); otherwise, or when there is none, the proxy makes one: a
//! UUIDv7 (RFC 9562 §5.7), unique and sortable by time.

use http::{HeaderMap, HeaderName, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client-supplied ID kept.
pub const MAX_LEN: usize = 128;

/// The request's ID, after making sure `headers` carries exactly it;
/// `given` is how many `x-request-id` fields it has (`headers::Fields`).
pub fn ensure(headers: &mut HeaderMap, given: usize) -> HeaderValue {
    if given == 1
        && let Some(id) = headers.get(&X_REQUEST_ID)
        && is_safe(id.as_bytes())
    {
        return id.clone();
    }
    let id = new_id();
    headers.insert(X_REQUEST_ID.clone(), id.clone());
    id
}

fn is_safe(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A UUIDv7: 48 bits of Unix milliseconds, then 74 random bits from this
/// thread's generator (no lock, no shared counter).
fn new_id() -> HeaderValue {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut random = [0u8; 10];
    random[..8].copy_from_slice(&fastrand::u64(..).to_le_bytes());
    random[8..].copy_from_slice(&fastrand::u16(..).to_le_bytes());
    let id = uuid::Builder::from_unix_timestamp_millis(ms, &random).into_uuid();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let s = id.hyphenated().encode_lower(&mut text);
    HeaderValue::from_str(s).expect("a UUID is a valid header value")
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
    fn generated_ids_are_uuid_v7_and_sort_by_time() {
        let a = new_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_id();
        let u = uuid::Uuid::parse_str(a.to_str().unwrap()).unwrap();
        assert_eq!(u.get_version_num(), 7);
        assert!(a.as_bytes() < b.as_bytes());
    }
}
