//! Comparing a mirrored answer with the client's: status, the headers the
//! route names, then the body, JSON-aware when both sides are JSON. Each
//! difference is a class, the `class` label of
//! `cutover_shadow_mismatches_total`.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

use super::json;

/// What one side answered, as far as comparison needs it.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// The values of each `compare_headers` name, in order.
    pub headers: Vec<Vec<HeaderValue>>,
    /// The body, `None` when it was larger than `max_body`.
    pub body: Option<Bytes>,
}

impl Answer {
    pub fn new(status: u16, headers: &HeaderMap, names: &[HeaderName]) -> Answer {
        Answer {
            status,
            headers: names
                .iter()
                .map(|n| headers.get_all(n).iter().cloned().collect())
                .collect(),
            body: None,
        }
    }
}

/// The classes in which `shadow` differs from `primary`; `None` when the
/// bodies could not both be captured (the pair is not compared). A
/// different status is one class alone: its body differs by nature.
pub fn classes(
    primary: &Answer,
    shadow: &Answer,
    names: &[HeaderName],
    ignore: &[json::Path],
) -> Option<Vec<String>> {
    let (a, b) = (primary.body.as_ref()?, shadow.body.as_ref()?);
    if primary.status != shadow.status {
        return Some(vec!["status".to_owned()]);
    }
    let mut out: Vec<String> = names
        .iter()
        .zip(primary.headers.iter().zip(&shadow.headers))
        .filter(|(_, (x, y))| x != y)
        .map(|(n, _)| format!("header:{n}"))
        .collect();
    if a != b || !ignore.is_empty() {
        match (parse(a), parse(b)) {
            (Some(x), Some(y)) => out.extend(
                json::diff(&x, &y, ignore)
                    .into_iter()
                    .map(|p| format!("body_field:{p}")),
            ),
            (Some(_), None) => out.push("body_not_json".to_owned()),
            _ if a != b => out.push("body_bytes".to_owned()),
            _ => {}
        }
    }
    Some(out)
}

fn parse(b: &Bytes) -> Option<serde_json::Value> {
    if b.is_empty() {
        return None;
    }
    serde_json::from_slice(b).ok()
}

/// A short diff for `/admin/shadow`'s example: the first line where the
/// bodies differ, each side cut to `max` bytes.
pub fn short_diff(primary: &[u8], shadow: &[u8], max: usize) -> String {
    let at = primary
        .iter()
        .zip(shadow)
        .position(|(x, y)| x != y)
        .unwrap_or(primary.len().min(shadow.len()));
    let from = at.saturating_sub(max / 2);
    let cut = |b: &[u8]| {
        let end = b.len().min(from + max);
        String::from_utf8_lossy(b.get(from..end).unwrap_or_default()).into_owned()
    };
    format!("at byte {at}: - {:?} + {:?}", cut(primary), cut(shadow))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, ct: &str, body: &str) -> Answer {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_str(ct).unwrap());
        let mut a = Answer::new(status, &h, &[HeaderName::from_static("content-type")]);
        a.body = Some(Bytes::copy_from_slice(body.as_bytes()));
        a
    }

    fn run(a: &Answer, b: &Answer, ignore: &[&str]) -> Option<Vec<String>> {
        let ignore: Vec<_> = ignore
            .iter()
            .map(|p| json::Path::parse(p).unwrap())
            .collect();
        classes(a, b, &[HeaderName::from_static("content-type")], &ignore)
    }

    #[test]
    fn classes_of_each_kind() {
        let j = "application/json";
        let same = answer(200, j, r#"{"a":1}"#);
        assert_eq!(run(&same, &same, &[]), Some(vec![]));
        assert_eq!(
            run(&same, &answer(500, j, "x"), &[]),
            Some(vec!["status".into()])
        );
        assert_eq!(
            run(&same, &answer(200, "text/plain", r#"{"a":2}"#), &[]),
            Some(vec!["header:content-type".into(), "body_field:$.a".into()])
        );
        assert_eq!(
            run(&same, &answer(200, j, "oops"), &[]),
            Some(vec!["body_not_json".into()])
        );
        assert_eq!(
            run(&answer(200, j, "x"), &answer(200, j, "y"), &[]),
            Some(vec!["body_bytes".into()])
        );
        assert_eq!(
            run(&same, &answer(200, j, r#"{ "a" : 1 }"#), &[]),
            Some(vec![]),
            "JSON-aware: whitespace is no difference"
        );
        assert_eq!(
            run(&same, &answer(200, j, r#"{"a":3}"#), &["$.a"]),
            Some(vec![])
        );
        let mut big = same.clone();
        big.body = None;
        assert_eq!(run(&same, &big, &[]), None);
    }

    #[test]
    fn short_diff_points_at_the_first_difference() {
        assert_eq!(
            short_diff(b"abcdef", b"abXdef", 4),
            "at byte 2: - \"abcd\" + \"abXd\""
        );
    }
}
