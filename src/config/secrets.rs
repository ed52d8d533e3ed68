//! Secrets a config names but does not contain: `secret_file`/`token_file`
//! (read relative to the config's directory) and `secret_env`/`token_env`;
//! and the content of each backend's `ca` file (its digest).
//!
//! Validation records where a secret comes from and stays a pure function of
//! the text; only [`resolve`] reads files and the environment. `cutover run`
//! (and every reload) resolves; `cutover set`/`rollback` never do, so an
//! operator can roll back from a shell that cannot see the proxy's secrets;
//! `cutover check` reports what it cannot resolve as warnings (errors with
//! `--strict`).

use std::path::PathBuf;

use super::{Config, ConfigError, Diagnostic};

/// Where a secret or token is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// Given in the file (already in the spec's value).
    Inline,
    File(PathBuf),
    Env(String),
}

/// A secret to resolve, and where it was named (for errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    pub source: SecretSource,
    /// `routes[0].sticky.secret_env`
    pub key: String,
    /// Where the value of `key` is in the file.
    pub at: Diagnostic,
}

impl SecretRef {
    /// Reads the value; `Ok(None)` for an inline secret (nothing to read).
    fn read(&self) -> Result<Option<String>, Diagnostic> {
        let value = match &self.source {
            SecretSource::Inline => return Ok(None),
            SecretSource::File(path) => std::fs::read_to_string(path)
                .map(|t| t.trim_end_matches(['\n', '\r']).to_owned())
                .map_err(|e| self.problem(format!("cannot read {}: {e}", path.display())))?,
            SecretSource::Env(name) => std::env::var(name)
                .map_err(|_| self.problem(format!("environment variable {name} is not set")))?,
        };
        if value.is_empty() {
            return Err(self.problem("the secret is empty".into()));
        }
        Ok(Some(value))
    }

    fn problem(&self, what: String) -> Diagnostic {
        Diagnostic {
            message: format!("{}: {what}", self.key),
            ..self.at.clone()
        }
    }
}

/// Reads every `*_file` and `*_env` secret into the config. All problems
/// are reported together, each at the key that names the secret.
pub fn resolve(config: &mut Config) -> Result<(), ConfigError> {
    let mut errors = Vec::new();
    for b in &mut config.backends {
        let tls = &mut b.upstream_tls;
        if let Some(ca) = &tls.ca {
            // An unreadable CA is reported when the client config is built.
            tls.ca_digest = std::fs::read(ca).ok().map(|pem| super::sha256_hex(&pem));
        }
    }
    if let Some(from) = &config.admin_token_from {
        match from.read() {
            Ok(Some(v)) => config.admin_token = Some(v),
            Ok(None) => {}
            Err(d) => errors.push(d),
        }
    }
    for r in &mut config.routes {
        if let Some(s) = &mut r.sticky
            && let Some(from) = &s.secret_from
        {
            match from.read() {
                Ok(Some(v)) => s.secret = Some(v.into_bytes()),
                Ok(None) => {}
                Err(d) => errors.push(d),
            }
        }
        if let Some(o) = &mut r.overrides
            && let Some(from) = &o.token_from
        {
            match from.read() {
                Ok(Some(v)) => o.token = Some(v),
                Ok(None) => {}
                Err(d) => errors.push(d),
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::Invalid(errors))
    }
}
