//! One access log line, in two steps: the request's part is written when
//! the request arrives (from borrowed headers, nothing cloned), the
//! response's when its head is known, and the end (error, bytes, duration)
//! when the body has ended. JSON keys and the text order are documented in
//! the README ("Access log").

use std::cell::RefCell;
use std::io::Write as _;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method, Version};

use crate::config::AccessLogFormat;

/// What the request itself says.
pub struct Request<'a> {
    /// The client's IP, as text.
    pub client_ip: &'a [u8],
    pub client_port: u16,
    pub request_id: &'a HeaderValue,
    pub method: &'a Method,
    pub host: Option<&'a str>,
    /// With the query string only when `log_query` is on.
    pub path: &'a str,
    pub version: Version,
    pub user_agent: Option<&'a HeaderValue>,
}

/// What the proxy did with it, known with the response head.
#[derive(Default)]
pub struct Answer<'a> {
    pub status: u16,
    pub route: Option<&'a str>,
    pub backend: Option<&'a str>,
    pub endpoint: Option<&'a str>,
    pub overridden: bool,
    pub retries: u32,
    pub failover_from: Option<&'a str>,
    /// Connect plus time to the response head; `None` when no backend was
    /// asked.
    pub upstream: Option<Duration>,
}

/// How the exchange ended.
pub struct End {
    pub error: Option<&'static str>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration: Duration,
}

pub fn request(out: &mut Vec<u8>, f: AccessLogFormat, ts: SystemTime, r: &Request) {
    let protocol = protocol(r.version);
    let ua = r.user_agent.map(HeaderValue::as_bytes);
    let mut port = itoa::Buffer::new();
    let port = port.format(r.client_port).as_bytes();
    match f {
        AccessLogFormat::Json => {
            out.extend_from_slice(b"{\"ts\":\"");
            timestamp(out, ts);
            out.extend_from_slice(b"\",\"client\":\"");
            client(out, r.client_ip, port);
            out.push(b'"');
            key_str(out, "request_id", Some(r.request_id.as_bytes()));
            key_str(out, "method", Some(r.method.as_str().as_bytes()));
            key_str(out, "host", r.host.map(str::as_bytes));
            key_str(out, "path", Some(r.path.as_bytes()));
            key_str(out, "protocol", Some(protocol.as_bytes()));
            key_str(out, "user_agent", ua);
        }
        AccessLogFormat::Text => {
            timestamp(out, ts);
            out.push(b' ');
            client(out, r.client_ip, port);
            for field in [
                Some(r.request_id.as_bytes()),
                Some(r.method.as_str().as_bytes()),
                r.host.map(str::as_bytes),
                Some(r.path.as_bytes()),
                Some(protocol.as_bytes()),
            ] {
                text_field(out, field);
            }
            out.extend_from_slice(b" \"");
            match ua.unwrap_or(b"-") {
                v if v.iter().all(|&b| text_plain(b, true)) => out.extend_from_slice(v),
                v => v.iter().for_each(|&b| text_byte(out, b, true)),
            }
            out.push(b'"');
        }
    }
}

pub fn answer(out: &mut Vec<u8>, f: AccessLogFormat, a: &Answer) {
    let mut n = itoa::Buffer::new();
    match f {
        AccessLogFormat::Json => {
            key_raw(out, "status", n.format(a.status).as_bytes());
            key_str(out, "route", a.route.map(str::as_bytes));
            key_str(out, "backend", a.backend.map(str::as_bytes));
            key_str(out, "endpoint", a.endpoint.map(str::as_bytes));
            key_raw(
                out,
                "override",
                if a.overridden { b"true" } else { b"false" },
            );
            key_raw(out, "retries", n.format(a.retries).as_bytes());
            key_str(out, "failover_from", a.failover_from.map(str::as_bytes));
            key_raw(out, "upstream_ms", b"");
            match a.upstream {
                Some(d) => millis(out, d),
                None => out.extend_from_slice(b"null"),
            }
        }
        AccessLogFormat::Text => {
            text_field(out, Some(n.format(a.status).as_bytes()));
            text_field(out, a.route.map(str::as_bytes));
            text_field(out, a.backend.map(str::as_bytes));
            text_field(out, a.endpoint.map(str::as_bytes));
            text_field(out, Some(if a.overridden { b"1" } else { b"0" }));
            text_field(out, Some(n.format(a.retries).as_bytes()));
            text_field(out, a.failover_from.map(str::as_bytes));
            out.push(b' ');
            match a.upstream {
                Some(d) => millis(out, d),
                None => out.push(b'-'),
            }
        }
    }
}

pub fn end(out: &mut Vec<u8>, f: AccessLogFormat, e: &End) {
    let mut n = itoa::Buffer::new();
    match f {
        AccessLogFormat::Json => {
            key_str(out, "error", e.error.map(str::as_bytes));
            key_raw(out, "bytes_in", n.format(e.bytes_in).as_bytes());
            key_raw(out, "bytes_out", n.format(e.bytes_out).as_bytes());
            key_raw(out, "duration_ms", b"");
            millis(out, e.duration);
            out.extend_from_slice(b"}\n");
        }
        AccessLogFormat::Text => {
            text_field(out, e.error.map(str::as_bytes));
            text_field(out, Some(n.format(e.bytes_in).as_bytes()));
            text_field(out, Some(n.format(e.bytes_out).as_bytes()));
            out.push(b' ');
            millis(out, e.duration);
            out.push(b'\n');
        }
    }
}

/// `ip:port`, `[ip]:port` for IPv6 (as `SocketAddr` displays it).
fn client(out: &mut Vec<u8>, ip: &[u8], port: &[u8]) {
    let v6 = ip.contains(&b':');
    if v6 {
        out.push(b'[');
    }
    out.extend_from_slice(ip);
    out.extend_from_slice(if v6 { b"]:" } else { b":" });
    out.extend_from_slice(port);
}

thread_local! {
    /// The last second formatted, "2026-12-01T18:00:00." and its Unix time.
    static SECOND: RefCell<(u64, Vec<u8>)> = const { RefCell::new((u64::MAX, Vec::new())) };
}

/// RFC 3339 UTC with milliseconds; the date and time up to the second are
/// formatted once a second per thread.
fn timestamp(out: &mut Vec<u8>, ts: SystemTime) {
    let since = ts
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let (secs, ms) = (since.as_secs(), since.subsec_millis());
    SECOND.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
            c.1.clear();
            let _ = write!(c.1, "{}", humantime::format_rfc3339_seconds(whole));
            c.1.pop(); // the 'Z'
            c.1.push(b'.');
            c.0 = secs;
        }
        out.extend_from_slice(&c.1);
    });
    out.extend_from_slice(&[
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
        b'Z',
    ]);
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

/// Milliseconds with three decimals ("12.345"), without floating point.
fn millis(out: &mut Vec<u8>, d: Duration) {
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    out.extend_from_slice(itoa::Buffer::new().format(micros / 1000).as_bytes());
    let frac = micros % 1000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

fn key_raw(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(value);
}

/// A JSON string, or `null`. Bytes outside printable ASCII are escaped as
/// `\u00XX` (header values may hold any octet), so a line is always valid
/// JSON and one line.
fn key_str(out: &mut Vec<u8>, key: &str, value: Option<&[u8]>) {
    let Some(value) = value else {
        return key_raw(out, key, b"null");
    };
    key_raw(out, key, b"\"");
    // Runs of plain bytes are copied at once.
    let mut rest = value;
    while let Some(i) = rest.iter().position(|&b| !json_plain(b)) {
        out.extend_from_slice(&rest[..i]);
        match rest[i] {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b => {
                let _ = write!(out, "\\u{b:04x}");
            }
        }
        rest = &rest[i + 1..];
    }
    out.extend_from_slice(rest);
    out.push(b'"');
}

fn json_plain(b: u8) -> bool {
    (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\'
}

/// A space, then the field, or `-`; spaces, quotes, backslashes and
/// non-printable bytes become `\xHH` so fields always split on spaces.
fn text_field(out: &mut Vec<u8>, value: Option<&[u8]>) {
    out.push(b' ');
    match value {
        None | Some(b"") => out.push(b'-'),
        Some(v) if v.iter().all(|&b| text_plain(b, false)) => out.extend_from_slice(v),
        Some(v) => v.iter().for_each(|&b| text_byte(out, b, false)),
    }
}

fn text_plain(b: u8, quoted: bool) -> bool {
    (b == b' ' && quoted) || ((0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\')
}

fn text_byte(out: &mut Vec<u8>, b: u8, quoted: bool) {
    match b {
        _ if text_plain(b, quoted) => out.push(b),
        _ => {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(f: AccessLogFormat) -> String {
        let id = HeaderValue::from_static("abc-1");
        let ua = HeaderValue::from_bytes(b"curl \"x\"\xff").unwrap();
        let mut out = Vec::new();
        request(
            &mut out,
            f,
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_007),
            &Request {
                client_ip: b"127.0.0.1",
                client_port: 5000,
                request_id: &id,
                method: &Method::GET,
                host: Some("example.com"),
                path: "/a b",
                version: Version::HTTP_11,
                user_agent: Some(&ua),
            },
        );
        answer(
            &mut out,
            f,
            &Answer {
                status: 200,
                route: Some("app"),
                backend: Some("green"),
                endpoint: Some("127.0.0.1:1"),
                overridden: true,
                retries: 1,
                failover_from: Some("blue"),
                upstream: Some(Duration::from_micros(1500)),
            },
        );
        end(
            &mut out,
            f,
            &End {
                error: None,
                bytes_in: 3,
                bytes_out: 10,
                duration: Duration::from_micros(2_001),
            },
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn json_is_one_valid_object() {
        let l = line(AccessLogFormat::Json);
        assert!(l.ends_with("}\n") && l.matches('\n').count() == 1, "{l}");
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["ts"], "1970-01-01T00:00:01.007Z");
        assert_eq!(v["client"], "127.0.0.1:5000");
        assert_eq!(v["user_agent"], "curl \"x\"\u{ff}");
        assert_eq!(v["override"], true);
        assert_eq!(v["failover_from"], "blue");
        assert_eq!(v["upstream_ms"], 1.5);
        assert_eq!(v["duration_ms"], 2.001);
        assert_eq!(v["error"], serde_json::Value::Null);
        assert_eq!(v["bytes_out"], 10);
    }

    #[test]
    fn text_has_a_fixed_order() {
        assert_eq!(
            line(AccessLogFormat::Text),
            "1970-01-01T00:00:01.007Z 127.0.0.1:5000 abc-1 GET example.com /a\\x20b HTTP/1.1 \
             \"curl \\x22x\\x22\\xff\" 200 app green 127.0.0.1:1 1 1 blue 1.500 - 3 10 2.001\n"
        );
    }
}
