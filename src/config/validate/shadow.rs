//! `[[routes]] shadow = { ... }`: mirroring to another backend.

use http::Method;

use super::*;
use crate::config::raw::RawShadow;
use crate::shadow::{self, ShadowSpec, json};

/// The largest `max_body`: every copy pending holds up to three bodies.
const MAX_BODY_LIMIT: usize = 16 << 20;

impl Validator<'_> {
    pub(super) fn shadow(
        &mut self,
        route: &str,
        s: &Spanned<RawShadow>,
        known: &BTreeSet<&str>,
    ) -> ShadowSpec {
        let key = format!("{route}.shadow");
        let raw = s.get_ref();
        let backend = raw.backend.get_ref().clone();
        if !known.contains(backend.as_str()) {
            let list = known.iter().copied().collect::<Vec<_>>().join(", ");
            self.error(
                &raw.backend,
                format!("{key}.backend: backend \"{backend}\" is not defined (known: {list})"),
            );
        }
        let sample = match &raw.sample {
            None => shadow::DEFAULT_SAMPLE,
            Some(x) if (0.0..=1.0).contains(x.get_ref()) => *x.get_ref(),
            Some(x) => {
                self.error(
                    x,
                    format!("{key}.sample: {} is not a share in 0..=1", x.get_ref()),
                );
                shadow::DEFAULT_SAMPLE
            }
        };
        let mut warnings = Vec::new();
        let methods = match &raw.methods {
            None => vec![Method::GET, Method::HEAD],
            Some(list) => {
                let mut methods = Vec::new();
                for m in list.get_ref() {
                    let Ok(method) = Method::from_bytes(m.get_ref().as_bytes()) else {
                        self.error(
                            m,
                            format!("{key}.methods: \"{}\" is not an HTTP method", m.get_ref()),
                        );
                        continue;
                    };
                    if !method.is_idempotent() {
                        // RFC 9110 §9.2.2: a copy of a non-idempotent
                        // request may act twice (charge a card twice).
                        let d = Diagnostic::at(
                            &self.file,
                            self.text,
                            m.span().start,
                            format!(
                                "{key}.methods: {method} is not idempotent; the shadow backend will act on every copy (make sure it writes nowhere real)"
                            ),
                        );
                        warnings.push(d.to_string());
                    }
                    methods.push(method);
                }
                methods
            }
        };
        let max_body = match &raw.max_body {
            None => shadow::DEFAULT_MAX_BODY,
            Some(v) => match byte_size(v.get_ref()) {
                Some(n) if n <= MAX_BODY_LIMIT => n,
                _ => {
                    self.error(
                        v,
                        format!("{key}.max_body: not a size like 65536 or \"64KiB\" up to 16MiB"),
                    );
                    shadow::DEFAULT_MAX_BODY
                }
            },
        };
        let compare_headers = raw
            .compare_headers
            .as_ref()
            .map(|l| {
                l.get_ref()
                    .iter()
                    .filter_map(|h| self.header_name(&format!("{key}.compare_headers"), h))
                    .collect()
            })
            .unwrap_or_default();
        let ignore = raw
            .ignore
            .as_ref()
            .map(|l| {
                l.get_ref()
                    .iter()
                    .filter_map(|p| match json::Path::parse(p.get_ref()) {
                        Ok(path) => Some(path),
                        Err(e) => {
                            self.error(
                                p,
                                format!(
                                    "{key}.ignore: \"{}\" is not a path like \"$.a.b\" or \"$.a[*].b\": {e}",
                                    p.get_ref()
                                ),
                            );
                            None
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let timeout = match &raw.timeout {
            None => shadow::DEFAULT_TIMEOUT,
            t => self.duration_at_most(&format!("{key}.timeout"), t, 10, 3_600),
        };
        let queue = self.int(
            &format!("{key}.queue"),
            &raw.queue,
            shadow::DEFAULT_QUEUE,
            1,
            100_000,
        );
        ShadowSpec {
            backend,
            sample,
            methods,
            max_body,
            compare_headers,
            ignore,
            noise: raw.noise,
            keep_examples: raw.keep_examples,
            timeout,
            queue,
            warnings,
        }
    }
}

/// `65536`, `"64KiB"`, `"1MiB"`, `"512B"`.
fn byte_size(v: &toml::Value) -> Option<usize> {
    match v {
        toml::Value::Integer(n) => usize::try_from(*n).ok(),
        toml::Value::String(s) => {
            let s = s.trim();
            let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            let (n, unit) = s.split_at(split);
            let n: usize = n.parse().ok()?;
            let mult = match unit.trim() {
                "" | "B" => 1,
                "KiB" => 1 << 10,
                "MiB" => 1 << 20,
                _ => return None,
            };
            n.checked_mul(mult)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    fn errors(shadow: &str) -> String {
        let text = format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\n[backends.blue]\nendpoints = [\"127.0.0.1:1\"]\n[backends.green]\nendpoints = [\"127.0.0.1:2\"]\n[[routes]]\nname = \"app\"\nweights = {{ blue = 1, green = 0 }}\nshadow = {shadow}\n"
        );
        match super::parse(std::path::Path::new("c.toml"), &text) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn keys_are_validated_with_locations() {
        assert_eq!(errors(r#"{ backend = "green" }"#), "");
        let e = errors(r#"{ backend = "red" }"#);
        assert!(
            e.starts_with("c.toml:10:22: routes[0].shadow.backend: backend \"red\" is not defined"),
            "{e}"
        );
        let e = errors(r#"{ backend = "green", sample = 1.5 }"#);
        assert!(e.contains("c.toml:10:40: routes[0].shadow.sample"), "{e}");
        let e = errors(r#"{ backend = "green", max_body = "64KB" }"#);
        assert!(e.contains("routes[0].shadow.max_body"), "{e}");
        let e = errors(r#"{ backend = "green", ignore = ["timestamp"] }"#);
        assert!(e.contains("routes[0].shadow.ignore: \"timestamp\""), "{e}");
        let e = errors(r#"{ backend = "green", methods = ["G ET"] }"#);
        assert!(e.contains("routes[0].shadow.methods"), "{e}");
        let e = errors(r#"{ backend = "green", queue = 0 }"#);
        assert!(e.contains("routes[0].shadow.queue"), "{e}");
    }

    #[test]
    fn sizes() {
        use toml::Value;
        assert_eq!(
            super::byte_size(&Value::String("64KiB".into())),
            Some(65536)
        );
        assert_eq!(
            super::byte_size(&Value::String("1MiB".into())),
            Some(1 << 20)
        );
        assert_eq!(super::byte_size(&Value::Integer(10)), Some(10));
        assert_eq!(super::byte_size(&Value::Integer(-1)), None);
        assert_eq!(super::byte_size(&Value::String("1GB".into())), None);
    }
}
