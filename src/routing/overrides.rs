//! Tester overrides: a header or cookie naming a backend forces it, even at
//! weight 0, when the optional token matches `x-cutover-token`.

use http::{HeaderMap, HeaderName};

use super::sticky::find_cookie;

/// The header that carries the override token.
pub static TOKEN_HEADER: HeaderName = HeaderName::from_static("x-cutover-token");

#[derive(Debug, Clone)]
pub struct Overrides {
    pub header: Option<HeaderName>,
    pub cookie: Option<String>,
    pub token: Option<String>,
}

impl Overrides {
    /// The backend name the request asks for, if it may ask at all.
    pub fn requested<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        let name = self
            .header
            .as_ref()
            .and_then(|h| headers.get(h)?.to_str().ok())
            .or_else(|| find_cookie(headers, self.cookie.as_deref()?))?;
        if let Some(token) = &self.token {
            let given = headers.get(&TOKEN_HEADER)?;
            if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
                return None;
            }
        }
        Some(name.trim())
    }
}

/// Compares without an early exit, so timing does not reveal the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn token_gates_the_override() {
        let o = Overrides {
            header: Some(HeaderName::from_static("x-cutover-backend")),
            cookie: Some("force".into()),
            token: Some("t0k".into()),
        };
        let mut h = HeaderMap::new();
        h.insert("cookie", HeaderValue::from_static("force=green"));
        assert_eq!(o.requested(&h), None);
        h.insert("x-cutover-token", HeaderValue::from_static("t0x"));
        assert_eq!(o.requested(&h), None);
        h.insert("x-cutover-token", HeaderValue::from_static("t0k"));
        assert_eq!(o.requested(&h), Some("green"));
        h.insert("x-cutover-backend", HeaderValue::from_static("blue"));
        assert_eq!(o.requested(&h), Some("blue"));
    }
}
