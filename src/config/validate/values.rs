//! Values every section uses: addresses, durations, integers in a range, names and secrets.

use super::*;

impl Validator<'_> {
    pub(super) fn socket_addr(&mut self, key: &str, s: &Str) -> Option<SocketAddr> {
        match s.get_ref().parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.error(
                    s,
                    format!("{key}: \"{}\" is not an ip:port address", s.get_ref()),
                );
                None
            }
        }
    }

    pub(super) fn duration(&mut self, key: &str, s: &Option<Str>, default_secs: u64) -> Duration {
        let Some(s) = s else {
            return Duration::from_secs(default_secs);
        };
        match humantime::parse_duration(s.get_ref()) {
            Ok(d) if d > MAX_DURATION => {
                self.error(
                    s,
                    format!(
                        "{key}: \"{}\" is longer than the maximum of 365 days",
                        s.get_ref()
                    ),
                );
                Duration::from_secs(default_secs)
            }
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.error(s, format!("{key}: must be greater than zero"));
                Duration::from_secs(default_secs)
            }
            Err(e) => {
                self.error(
                    s,
                    format!(
                        "{key}: \"{}\" is not a duration like \"250ms\" or \"5s\" ({e})",
                        s.get_ref()
                    ),
                );
                Duration::from_secs(default_secs)
            }
        }
    }

    /// A duration with a documented maximum, so deadline arithmetic can
    /// never overflow.
    pub(super) fn duration_at_most(
        &mut self,
        key: &str,
        s: &Option<Str>,
        default_secs: u64,
        max_secs: u64,
    ) -> Duration {
        let d = self.duration(key, s, default_secs);
        match s {
            Some(s) if d > Duration::from_secs(max_secs) => {
                let max = humantime::format_duration(Duration::from_secs(max_secs));
                self.error(
                    s,
                    format!(
                        "{key}: \"{}\" is more than the maximum of {max}",
                        s.get_ref()
                    ),
                );
                Duration::from_secs(default_secs)
            }
            _ => d,
        }
    }

    pub(super) fn int(
        &mut self,
        key: &str,
        v: &Option<Spanned<i64>>,
        default: usize,
        min: i64,
        max: i64,
    ) -> usize {
        match v {
            None => default,
            Some(n) if (min..=max).contains(n.get_ref()) => *n.get_ref() as usize,
            Some(n) => {
                self.error(
                    n,
                    format!("{key}: {} is out of range {min}..={max}", n.get_ref()),
                );
                default
            }
        }
    }

    pub(super) fn duration_ms(&mut self, key: &str, s: &Option<Str>, default_ms: u64) -> Duration {
        match s {
            None => Duration::from_millis(default_ms),
            Some(_) => self.duration(key, s, 1),
        }
    }

    /// Where a secret given inline, as `<what>_file` or as `<what>_env` comes
    /// from, and its value if inline. Reads nothing: see `secrets.rs`.
    pub(super) fn secret<T>(
        &mut self,
        key: &str,
        at: &Spanned<T>,
        inline: &Option<Str>,
        file: &Option<Str>,
        env: &Option<Str>,
        what: &str,
    ) -> (Option<String>, Option<SecretRef>) {
        let given = [inline.is_some(), file.is_some(), env.is_some()];
        if given.iter().filter(|g| **g).count() > 1 {
            self.error(
                at,
                format!("{key}: set only one of {what}, {what}_file, {what}_env"),
            );
            return (None, None);
        }
        let (source, from, name) = if let Some(s) = inline {
            if s.get_ref().is_empty() {
                self.error(s, format!("{key}.{what}: must not be empty"));
                return (None, None);
            }
            (SecretSource::Inline, s, what.to_owned())
        } else if let Some(f) = file {
            let path = self.dir.join(f.get_ref());
            (SecretSource::File(path), f, format!("{what}_file"))
        } else if let Some(e) = env {
            (
                SecretSource::Env(e.get_ref().clone()),
                e,
                format!("{what}_env"),
            )
        } else {
            return (None, None);
        };
        let value = inline.as_ref().map(|s| s.get_ref().clone());
        let at = Diagnostic::at(&self.file, self.text, from.span().start, String::new());
        let secret = SecretRef {
            source,
            key: format!("{key}.{name}"),
            at,
        };
        (value, Some(secret))
    }

    pub(super) fn header_name(&mut self, key: &str, h: &Str) -> Option<HeaderName> {
        match HeaderName::try_from(h.get_ref().as_str()) {
            Ok(n) => Some(n),
            Err(_) => {
                self.error(
                    h,
                    format!("{key}: \"{}\" is not a valid header name", h.get_ref()),
                );
                None
            }
        }
    }

    pub(super) fn cookie_name(&mut self, key: &str, c: &Str) -> String {
        // RFC 6265 §4.1.1: a cookie name is an RFC 9110 token.
        let ok = !c.get_ref().is_empty() && c.get_ref().bytes().all(is_token_byte);
        if !ok {
            self.error(
                c,
                format!("{key}: \"{}\" is not a valid cookie name", c.get_ref()),
            );
        }
        c.get_ref().clone()
    }
}

pub(super) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub(super) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
