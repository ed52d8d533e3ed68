//! `[backends.NAME]`: endpoints, health checks, outlier ejection, TLS to the backend.

use super::*;

impl Validator<'_> {
    /// Upstream TLS settings are per connection pool, which is per address:
    /// two backends may share an `https://` endpoint only if they verify it
    /// the same way.
    pub(super) fn shared_tls_endpoints(&mut self, raw: &RawConfig, backends: &[BackendSpec]) {
        for (i, (_, spanned)) in raw.backends.get_ref().iter().enumerate() {
            let Some(b) = backends.get(i) else { continue };
            let clash = backends[..i].iter().find(|other| {
                other.upstream_tls != b.upstream_tls
                    && b.endpoints
                        .iter()
                        .any(|e| e.scheme == Scheme::HTTPS && other.endpoints.contains(e))
            });
            if let Some(other) = clash {
                self.error(
                    spanned,
                    format!(
                        "backends.{}: shares an https:// endpoint with backends.{} but sets ca or insecure_skip_verify differently",
                        b.name, other.name
                    ),
                );
            }
        }
    }

    pub(super) fn backend(&mut self, name: &str, spanned: &Spanned<RawBackend>) -> BackendSpec {
        let raw = spanned.get_ref();
        let key = format!("backends.{}", name);
        if !valid_name(name) {
            self.error(
                spanned,
                format!("{key}: a backend name uses only letters, digits, '-' and '_'"),
            );
        }
        if raw.endpoints.get_ref().is_empty() {
            self.error(
                &raw.endpoints,
                format!("{key}.endpoints: at least one endpoint is required"),
            );
        }
        let mut endpoints = Vec::new();
        for (i, e) in raw.endpoints.get_ref().iter().enumerate() {
            match parse_endpoint(e.get_ref()) {
                Ok(ep) if endpoints.contains(&ep) => {
                    self.error(
                        e,
                        format!("{key}.endpoints[{i}]: \"{}\" is listed twice", e.get_ref()),
                    );
                }
                Ok(ep) => endpoints.push(ep),
                Err(why) => self.error(
                    e,
                    format!("{key}.endpoints[{i}]: \"{}\" {why}", e.get_ref()),
                ),
            }
        }
        let balance = match raw.balance.as_ref().map(|b| (b, b.get_ref().as_str())) {
            None | Some((_, "round_robin")) => Balance::RoundRobin,
            Some((_, "p2c")) => Balance::P2c,
            Some((b, other)) => {
                self.error(
                    b,
                    format!("{key}.balance: \"{other}\" is not one of round_robin, p2c"),
                );
                Balance::RoundRobin
            }
        };
        let health = raw.health.as_ref().map(|h| self.health(&key, h));
        let outlier = self.outlier(&key, raw.outlier.as_ref().map(|o| o.get_ref()));
        let mut on_5xx = false;
        for (i, r) in raw
            .retry_on
            .iter()
            .flat_map(|r| r.get_ref().iter())
            .enumerate()
        {
            match r.get_ref().as_str() {
                "5xx" => on_5xx = true,
                "connect" => {}
                other => self.error(
                    r,
                    format!("{key}.retry_on[{i}]: \"{other}\" is not one of connect, 5xx"),
                ),
            }
        }
        let retry = RetrySpec {
            retries: self.int(&format!("{key}.retries"), &raw.retries, 2, 0, 10) as u32,
            on_5xx,
            buffer_bytes: self.int(
                &format!("{key}.retry_buffer_bytes"),
                &raw.retry_buffer_bytes,
                65536,
                0,
                16 << 20,
            ),
        };
        let upstream_tls = UpstreamTls {
            ca: raw.ca.as_ref().map(|c| self.dir.join(c.get_ref())),
            insecure_skip_verify: raw.insecure_skip_verify,
            ca_digest: None,
        };
        let max_connections = self.int(
            &format!("{key}.max_connections"),
            &raw.max_connections,
            1024,
            1,
            1 << 20,
        );
        let protocol = self.protocol(&key, raw, &endpoints);
        if let (Some(h), Some(HealthSpec { grpc: Some(_), .. })) = (&raw.health, &health)
            && protocol == Protocol::Http1
        {
            self.error(
                h,
                format!("{key}.health.grpc: gRPC health checks need protocol = \"h2c\", \"h2\" or \"auto\""),
            );
        }
        BackendSpec {
            grpc_errors: super::super::GrpcCodeSet::default(),
            protocol,
            max_connections,
            name: name.to_owned(),
            endpoints,
            balance,
            health,
            outlier,
            retry,
            upstream_tls,
        }
    }

    /// `protocol`: `h2c` is cleartext only, `h2` and `auto` choose by ALPN
    /// and so need `https://` endpoints.
    pub(super) fn protocol(
        &mut self,
        key: &str,
        raw: &RawBackend,
        endpoints: &[EndpointSpec],
    ) -> Protocol {
        let Some(p) = &raw.protocol else {
            return Protocol::Http1;
        };
        let protocol = match p.get_ref().as_str() {
            "http1" => Protocol::Http1,
            "h2c" => Protocol::H2c,
            "h2" => Protocol::H2,
            "auto" => Protocol::Auto,
            other => {
                self.error(
                    p,
                    format!("{key}.protocol: \"{other}\" is not one of http1, h2c, h2, auto"),
                );
                return Protocol::Http1;
            }
        };
        let https = |e: &&EndpointSpec| e.scheme == Scheme::HTTPS;
        match protocol {
            Protocol::H2c if endpoints.iter().any(|e| https(&e)) => self.error(
                p,
                format!("{key}.protocol: \"h2c\" is HTTP/2 over cleartext; use \"h2\" for https:// endpoints"),
            ),
            Protocol::H2 | Protocol::Auto if !endpoints.iter().all(|e| https(&e)) => self.error(
                p,
                format!(
                    "{key}.protocol: \"{}\" negotiates HTTP/2 by TLS ALPN and needs https:// endpoints; use \"h2c\" for cleartext",
                    p.get_ref()
                ),
            ),
            _ => {}
        }
        protocol
    }

    pub(super) fn health(&mut self, key: &str, spanned: &Spanned<RawHealth>) -> HealthSpec {
        let h = spanned.get_ref();
        let key = format!("{key}.health");
        let path = match (&h.path, h.grpc) {
            (Some(p), true) => {
                self.error(
                    p,
                    format!(
                        "{key}.path: not used with grpc = true (the check calls {})",
                        HealthSpec::GRPC_PATH
                    ),
                );
                HealthSpec::GRPC_PATH.to_owned()
            }
            (None, true) => HealthSpec::GRPC_PATH.to_owned(),
            (None, false) => {
                self.error(spanned, format!("{key}.path: required (or grpc = true)"));
                "/".to_owned()
            }
            (Some(p), false) => {
                self.health_path(&key, p);
                p.get_ref().clone()
            }
        };
        if let (Some(s), false) = (&h.service, h.grpc) {
            self.error(s, format!("{key}.service: only with grpc = true"));
        }
        if let (Some(s), true) = (&h.expected_status, h.grpc) {
            self.error(
                s,
                format!("{key}.expected_status: not used with grpc = true (SERVING is healthy)"),
            );
        }
        let grpc = h.grpc.then(|| {
            h.service
                .as_ref()
                .map_or_else(String::new, |s| s.get_ref().clone())
        });
        let mut expected_status = Vec::new();
        for s in h.expected_status.iter().flat_map(|s| s.get_ref().iter()) {
            if (100..=599).contains(s.get_ref()) {
                expected_status.push(*s.get_ref() as u16);
            } else {
                self.error(
                    s,
                    format!(
                        "{key}.expected_status: {} is not an HTTP status",
                        s.get_ref()
                    ),
                );
            }
        }
        HealthSpec {
            path,
            grpc,
            interval: self.duration_ms(&format!("{key}.interval"), &h.interval, 2000),
            timeout: self.duration_ms(&format!("{key}.timeout"), &h.timeout, 1000),
            healthy_threshold: self.int(
                &format!("{key}.healthy_threshold"),
                &h.healthy_threshold,
                2,
                1,
                100,
            ) as u32,
            unhealthy_threshold: self.int(
                &format!("{key}.unhealthy_threshold"),
                &h.unhealthy_threshold,
                3,
                1,
                100,
            ) as u32,
            expected_status,
            start_unhealthy: h.start_unhealthy,
        }
    }

    fn health_path(&mut self, key: &str, path: &Str) {
        if !path.get_ref().starts_with('/') {
            self.error(
                path,
                format!("{key}.path: \"{}\" must start with '/'", path.get_ref()),
            );
        } else if path.get_ref().parse::<http::Uri>().is_err() || path.get_ref().contains('#') {
            // What the checker sends: an origin-form request target
            // (RFC 9112 §3.2.1), so no spaces, controls or fragment.
            self.error(
                path,
                format!(
                    "{key}.path: \"{}\" is not a valid request target (encode spaces and other special characters as %XX)",
                    path.get_ref()
                ),
            );
        }
    }

    pub(super) fn outlier(&mut self, key: &str, o: Option<&RawOutlier>) -> OutlierSpec {
        let key = format!("{key}.outlier");
        let none = RawOutlier {
            consecutive_failures: None,
            base_ejection_time: None,
            max_ejection_time: None,
            max_ejected_percent: None,
            on: None,
        };
        let o = o.unwrap_or(&none);
        let mut on_5xx = false;
        for (i, r) in o.on.iter().flat_map(|r| r.get_ref().iter()).enumerate() {
            match r.get_ref().as_str() {
                "5xx" => on_5xx = true,
                "gateway" => {}
                other => self.error(
                    r,
                    format!("{key}.on[{i}]: \"{other}\" is not one of gateway, 5xx"),
                ),
            }
        }
        OutlierSpec {
            on_5xx,
            consecutive_failures: self.int(
                &format!("{key}.consecutive_failures"),
                &o.consecutive_failures,
                5,
                0,
                1000,
            ) as u32,
            base_ejection_time: self.duration_ms(
                &format!("{key}.base_ejection_time"),
                &o.base_ejection_time,
                10_000,
            ),
            max_ejection_time: self.duration_ms(
                &format!("{key}.max_ejection_time"),
                &o.max_ejection_time,
                300_000,
            ),
            max_ejected_percent: self.int(
                &format!("{key}.max_ejected_percent"),
                &o.max_ejected_percent,
                50,
                0,
                100,
            ) as u32,
        }
    }
}

/// Parses `host:port`, `http://host:port` (port defaults to 80) or
/// `https://host:port` (port defaults to 443).
pub fn parse_endpoint(s: &str) -> Result<EndpointSpec, &'static str> {
    let (scheme, rest) = if let Some(r) = s.strip_prefix("http://") {
        (Scheme::HTTP, r)
    } else if let Some(r) = s.strip_prefix("https://") {
        (Scheme::HTTPS, r)
    } else if s.contains("://") {
        return Err("has an unsupported scheme (use http:// or https://)");
    } else {
        (Scheme::HTTP, s)
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') || rest.contains('@') || rest.is_empty() {
        return Err("is not host:port");
    }
    let authority: Authority = rest.parse().map_err(|_| "is not host:port")?;
    let has_port = authority.port_u16().is_some();
    if !has_port && !s.contains("://") {
        return Err("needs a port (host:port)");
    }
    if authority.port_u16() == Some(0) {
        return Err("has port 0");
    }
    Ok(EndpointSpec { scheme, authority })
}
