//! JSON-aware body comparison: the fields where two documents differ, as
//! paths in a small JSONPath subset (`$.a.b`, `$.a[*].b`, `$.a[0]`), minus
//! the paths the route's `ignore` names.

use serde_json::Value;

/// One step of a path: an object key, an array index, or any index (`[*]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
    AnyIndex,
}

/// A parsed `ignore` path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path(pub Vec<Step>);

impl Path {
    /// Parses `$`, `$.a.b`, `$.a[*].b`, `$.a[3]`; keys are letters, digits,
    /// `_` and `-`.
    pub fn parse(s: &str) -> Result<Path, String> {
        let mut rest = s
            .strip_prefix('$')
            .ok_or_else(|| "a path starts with `$`".to_owned())?;
        let mut steps = Vec::new();
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix('.') {
                let end = r.find(['.', '[']).unwrap_or(r.len());
                let key = &r[..end];
                let ok = !key.is_empty()
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                if !ok {
                    return Err(format!("\"{key}\" is not a key (letters, digits, _ and -)"));
                }
                steps.push(Step::Key(key.to_owned()));
                rest = &r[end..];
            } else if let Some(r) = rest.strip_prefix('[') {
                let end = r.find(']').ok_or_else(|| "a `[` without `]`".to_owned())?;
                let inner = &r[..end];
                if inner == "*" {
                    steps.push(Step::AnyIndex);
                } else {
                    let i = inner
                        .parse()
                        .map_err(|_| format!("\"[{inner}]\" is not `[*]` or `[N]`"))?;
                    steps.push(Step::Index(i));
                }
                rest = &r[end + 1..];
            } else {
                return Err(format!("unexpected \"{rest}\""));
            }
        }
        Ok(Path(steps))
    }

    /// Whether this pattern names the concrete path `at` or a parent of it.
    fn covers(&self, at: &[Step]) -> bool {
        self.0.len() <= at.len()
            && self.0.iter().zip(at).all(|(p, a)| match (p, a) {
                (Step::AnyIndex, Step::Index(_)) => true,
                (p, a) => p == a,
            })
    }
}

/// At most this many differing fields are reported per document pair: a
/// document that changed everywhere says so without walking all of it.
const MAX_FIELDS: usize = 8;

/// The paths where `a` and `b` differ, array indices written `[*]` (so
/// that one class counts one field, whatever its position), deduplicated,
/// at most [`MAX_FIELDS`], skipping what `ignore` covers.
pub fn diff(a: &Value, b: &Value, ignore: &[Path]) -> Vec<String> {
    let mut out = Vec::new();
    let mut at = Vec::new();
    walk(a, b, ignore, &mut at, &mut out);
    out
}

fn walk(a: &Value, b: &Value, ignore: &[Path], at: &mut Vec<Step>, out: &mut Vec<String>) {
    if out.len() >= MAX_FIELDS || ignore.iter().any(|p| p.covers(at)) {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                at.push(Step::Key(k.clone()));
                match y.get(k) {
                    Some(vb) => walk(va, vb, ignore, at, out),
                    None => report(ignore, at, out),
                }
                at.pop();
            }
            for k in y.keys().filter(|k| !x.contains_key(*k)) {
                at.push(Step::Key(k.clone()));
                report(ignore, at, out);
                at.pop();
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                at.push(Step::Index(i));
                walk(va, vb, ignore, at, out);
                at.pop();
            }
        }
        (a, b) if a == b => {}
        _ => report(ignore, at, out),
    }
}

fn report(ignore: &[Path], at: &[Step], out: &mut Vec<String>) {
    if out.len() >= MAX_FIELDS || ignore.iter().any(|p| p.covers(at)) {
        return;
    }
    let mut s = String::from("$");
    for step in at {
        match step {
            Step::Key(k) => {
                s.push('.');
                s.push_str(k);
            }
            Step::Index(_) | Step::AnyIndex => s.push_str("[*]"),
        }
    }
    if !out.contains(&s) {
        out.push(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn paths(v: &[&str]) -> Vec<Path> {
        v.iter().map(|p| Path::parse(p).expect("valid")).collect()
    }

    #[test]
    fn parses_the_subset_and_rejects_the_rest() {
        assert_eq!(
            Path::parse("$.a[*].b").unwrap(),
            Path(vec![
                Step::Key("a".into()),
                Step::AnyIndex,
                Step::Key("b".into())
            ])
        );
        assert_eq!(Path::parse("$").unwrap(), Path(vec![]));
        assert_eq!(Path::parse("$.x[2]").unwrap().0[1], Step::Index(2));
        for bad in ["a.b", "$.", "$..a", "$.a[", "$.a[x]", "$a", "$.a b"] {
            assert!(Path::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reports_changed_missing_and_added_fields_with_indices_folded() {
        let a = json!({"id": 1, "items": [{"p": 1}, {"p": 2}], "gone": true, "same": "x"});
        let b = json!({"id": 2, "items": [{"p": 1}, {"p": 3}], "new": 1, "same": "x"});
        assert_eq!(
            diff(&a, &b, &[]),
            vec!["$.gone", "$.id", "$.items[*].p", "$.new"]
        );
    }

    #[test]
    fn ignore_covers_a_field_and_everything_under_it() {
        let a = json!({"ts": 1, "meta": {"rid": "a", "n": 1}, "l": [{"rid": 1}]});
        let b = json!({"ts": 2, "meta": {"rid": "b", "n": 1}, "l": [{"rid": 2}]});
        assert!(diff(&a, &b, &paths(&["$.ts", "$.meta.rid", "$.l[*].rid"])).is_empty());
        assert_eq!(
            diff(&a, &b, &paths(&["$.ts", "$.meta"])),
            vec!["$.l[*].rid"]
        );
    }

    #[test]
    fn different_types_and_lengths_are_the_field_itself() {
        let a = json!({"l": [1, 2], "t": "1"});
        let b = json!({"l": [1], "t": 1});
        assert_eq!(diff(&a, &b, &[]), vec!["$.l", "$.t"]);
        assert_eq!(diff(&json!(1), &json!([1]), &[]), vec!["$"]);
    }
}
