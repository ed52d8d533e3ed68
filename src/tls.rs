//! TLS with rustls: the HTTPS listener's certificates, chosen by SNI and
//! swapped on reload without a restart, and the client configs used to reach
//! `https://` endpoints.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::config::{CertSpec, TlsSpec, UpstreamTls};

/// A certificate expiring sooner than this is logged as a warning.
const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// One loaded certificate chain and key.
#[derive(Debug)]
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    /// DNS names (lower case) and `*.suffix` wildcards it is valid for.
    pub names: Vec<String>,
    /// The first name, or the file name: the `name` label of the expiry metric.
    pub label: String,
    pub not_after: SystemTime,
}

/// The certificates in force: the first is the default.
#[derive(Debug)]
pub struct CertStore {
    pub certs: Vec<LoadedCert>,
    exact: HashMap<String, usize>,
    /// Fingerprint of the files, to notice a change.
    pub digest: String,
}

impl CertStore {
    /// Loads and checks every pair; any bad pair fails the whole load, so a
    /// reload never serves half a change.
    pub fn load(spec: &TlsSpec) -> anyhow::Result<CertStore> {
        let mut certs = Vec::new();
        let mut digest_input = Vec::new();
        for c in &spec.certs {
            let (cert, bytes) = load_pair(c)?;
            digest_input.extend_from_slice(&bytes);
            certs.push(cert);
        }
        let mut exact = HashMap::new();
        for (i, c) in certs.iter().enumerate() {
            for n in &c.names {
                exact.entry(n.clone()).or_insert(i);
            }
        }
        Ok(CertStore {
            certs,
            exact,
            digest: crate::config::sha256_hex(&digest_input),
        })
    }

    /// Fingerprint of the files of `spec` as they are now on disk.
    pub fn digest_of(spec: &TlsSpec) -> String {
        let mut input = Vec::new();
        for c in &spec.certs {
            input.extend(std::fs::read(&c.cert).unwrap_or_default());
            input.extend(std::fs::read(&c.key).unwrap_or_default());
        }
        crate::config::sha256_hex(&input)
    }

    fn pick(&self, sni: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        let by_name = sni.and_then(|name| {
            let name = name.to_ascii_lowercase();
            let i = self.exact.get(&name).or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.exact.get(&format!("*.{parent}"))
            })?;
            Some(&self.certs[*i].key)
        });
        by_name.or_else(|| self.certs.first().map(|c| &c.key))
    }
}

fn load_pair(spec: &CertSpec) -> anyhow::Result<(LoadedCert, Vec<u8>)> {
    let cert_pem = std::fs::read(&spec.cert)
        .with_context(|| format!("cannot read {}", spec.cert.display()))?;
    let key_pem =
        std::fs::read(&spec.key).with_context(|| format!("cannot read {}", spec.key.display()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}: not a PEM certificate chain", spec.cert.display()))?;
    if chain.is_empty() {
        bail!("{}: no certificate found", spec.cert.display());
    }
    // PKCS#8, PKCS#1 (RSA) and SEC1 (EC) keys.
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .with_context(|| format!("{}: not a PEM private key", spec.key.display()))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .with_context(|| format!("{}: unsupported private key", spec.key.display()))?;
    let certified = CertifiedKey::new(chain.clone(), signing);
    certified.keys_match().with_context(|| {
        format!(
            "{} does not match the key {}",
            spec.cert.display(),
            spec.key.display()
        )
    })?;
    let (_, x509) = x509_parser::parse_x509_certificate(&chain[0])
        .map_err(|e| anyhow::anyhow!("{}: {e}", spec.cert.display()))?;
    let not_after =
        UNIX_EPOCH + Duration::from_secs(x509.validity().not_after.timestamp().max(0) as u64);
    let mut names: Vec<String> = x509
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => {
                        Some(d.to_ascii_lowercase())
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        names.extend(
            x509.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    let now = SystemTime::now();
    if not_after < now {
        bail!("{}: certificate expired", spec.cert.display());
    }
    let label = names
        .first()
        .cloned()
        .unwrap_or_else(|| file_name(&spec.cert));
    if not_after.duration_since(now).unwrap_or_default() < EXPIRY_WARNING {
        tracing::warn!(cert = %spec.cert.display(), name = %label, "certificate expires within 14 days");
    }
    let mut bytes = cert_pem;
    bytes.extend(key_pem);
    Ok((
        LoadedCert {
            key: Arc::new(certified),
            names,
            label,
            not_after,
        },
        bytes,
    ))
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Picks the certificate for each handshake from the store in force.
#[derive(Debug)]
pub struct Resolver {
    pub store: ArcSwap<CertStore>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.store.load().pick(hello.server_name()).cloned()
    }
}

/// The HTTPS listener's config: TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`,
/// and session resumption both ways a client may ask for it.
///
/// - Stateless tickets (RFC 8446 §4.6.1, RFC 5077 for TLS 1.2): the
///   session sealed with a key only this process holds (ChaCha20-Poly1305,
///   rotated every 6 hours, so a ticket lives at most 12), reusable, and
///   costing the server no memory. Without a ticketer rustls hands out
///   single-use tickets backed by its cache, so a client resuming the same
///   session twice gets a full handshake the second time.
/// - rustls's session cache (256 sessions, its default) for TLS 1.2
///   clients that resume by session ID.
///
/// The config is built once per process: reloads swap certificates in the
/// resolver and keep the ticket keys; a restart or `cutover upgrade`
/// starts new keys, and clients fall back to one full handshake.
pub fn server_config(resolver: Arc<Resolver>) -> anyhow::Result<Arc<ServerConfig>> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ticketer = rustls::crypto::ring::Ticketer::new().context("TLS session ticket key")?;
    Ok(Arc::new(config))
}

/// The client config for one backend's `https://` endpoints.
pub fn client_config(spec: &UpstreamTls) -> anyhow::Result<Arc<ClientConfig>> {
    let builder =
        ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let mut config = if spec.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        match &spec.ca {
            Some(ca) => {
                let pem =
                    std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    roots.add(cert.with_context(|| format!("{}: bad PEM", ca.display()))?)?;
                }
                if roots.is_empty() {
                    bail!("{}: no CA certificate found", ca.display());
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// `insecure_skip_verify = true`: accepts any certificate, still checks
/// that the handshake signatures are valid.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
