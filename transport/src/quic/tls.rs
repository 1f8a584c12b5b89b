//! TLS 1.3 for the QUIC plane, both sides.
//!
//! A client trusts the daemon by a CA file (certificates issued by an
//! organisation's CA), by the daemon's certificate pinned by fingerprint
//! (the daemon's self-signed default prints its fingerprint in its log), or,
//! for tests only, not at all. Nothing turns verification off silently: the
//! only way is [`ServerTrust::InsecureSkipVerify`], and it warns.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use thiserror::Error;
use tracing::warn;

use super::ALPN;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {what} from {path}: {reason}")]
    Load {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("invalid fingerprint {0:?}: expected \"sha256:\" and 64 hex digits")]
    Fingerprint(String),
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// How a client decides that it talks to the real daemon.
#[derive(Clone, PartialEq, Eq)]
pub enum ServerTrust {
    /// Certificates chaining to one of these CAs (a PEM file), valid for
    /// the server name.
    CaFile(PathBuf),
    /// Exactly the certificate whose DER has this SHA-256.
    Fingerprint([u8; 32]),
    /// Any certificate at all. For tests only: anyone on the path can
    /// impersonate the daemon. Warns whenever a connection uses it.
    InsecureSkipVerify,
}

impl fmt::Debug for ServerTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerTrust::CaFile(p) => write!(f, "CaFile({})", p.display()),
            ServerTrust::Fingerprint(fp) => write!(f, "Fingerprint({})", format_fingerprint(fp)),
            ServerTrust::InsecureSkipVerify => f.write_str("InsecureSkipVerify"),
        }
    }
}

/// A client's TLS settings.
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub trust: ServerTrust,
    /// A client certificate chain and its key (PEM files), for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// The name the daemon's certificate must carry; by default the
    /// address the client connects to.
    pub server_name: Option<String>,
}

/// SHA-256 of a certificate's DER.
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    d.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// `sha256:` and lowercase hex, as logs print and options take it.
pub fn format_fingerprint(fp: &[u8; 32]) -> String {
    let mut s = String::from("sha256:");
    for b in fp {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], TlsError> {
    let bad = || TlsError::Fingerprint(s.to_owned());
    let hex = s.trim().strip_prefix("sha256:").ok_or_else(bad)?;
    // Also take the colon-separated form other tools print.
    let hex: String = hex.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// Every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::Load {
        what: "certificates",
        path: path.to_path_buf(),
        reason,
    };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no CERTIFICATE block in the file".into()));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Load {
        what: "a private key",
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// QUIC transport settings shared by both sides: keep-alives every
/// `keep_alive` (well inside the idle timeout), and windows large enough for
/// bulk publishing.
pub fn transport_config(keep_alive: Duration) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(keep_alive));
    t.max_idle_timeout(Some(
        Duration::from_secs(10).try_into().expect("a small timeout"),
    ));
    t.stream_receive_window((16u32 << 20).into());
    t.receive_window((64u32 << 20).into());
    t.send_window(64 << 20);
    Arc::new(t)
}

/// The QUIC client configuration for `tls`, pinging every `keep_alive`: a
/// client whose data goes elsewhere (the fast path) keeps it short, so that
/// a restarted daemon's stateless reset reaches it soon.
pub fn client_config(
    tls: &ClientTls,
    keep_alive: Duration,
) -> Result<quinn::ClientConfig, TlsError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &tls.trust {
        ServerTrust::CaFile(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in load_certs(path)? {
                roots.add(c).map_err(|e| TlsError::Load {
                    what: "CA certificates",
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            }
            builder.with_root_certificates(roots)
        }
        ServerTrust::Fingerprint(fp) => {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Pinned {
                    fingerprint: Some(*fp),
                    provider,
                }))
        }
        ServerTrust::InsecureSkipVerify => {
            warn!("--insecure-skip-verify: the daemon's certificate is NOT checked; anyone on the path can impersonate it (tests only)");
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Pinned {
                    fingerprint: None,
                    provider,
                }))
        }
    };
    let mut config = match &tls.client_cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| TlsError::Config(format!("client certificate: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(config).map_err(|e| TlsError::Config(e.to_string()))?;
    let mut c = quinn::ClientConfig::new(Arc::new(quic));
    c.transport_config(transport_config(keep_alive));
    Ok(c)
}

/// The QUIC server configuration: this certificate chain and key, and, if
/// `client_ca` is given, client certificates verified against it (clients
/// without one may still authenticate with a token).
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca: Option<&Path>,
) -> Result<quinn::ServerConfig, TlsError> {
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match client_ca {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in load_certs(path)? {
                roots.add(c).map_err(|e| TlsError::Load {
                    what: "client CA certificates",
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(format!("server certificate: {e}")))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(config).map_err(|e| TlsError::Config(e.to_string()))?;
    let mut c = quinn::ServerConfig::with_crypto(Arc::new(quic));
    c.transport_config(transport_config(Duration::from_secs(2)));
    Ok(c)
}

/// The server name to verify: the configured one, else the address.
pub fn server_name(tls: &ClientTls, addr: std::net::SocketAddr) -> String {
    tls.server_name
        .clone()
        .unwrap_or_else(|| addr.ip().to_string())
}

/// Checks the daemon's certificate by fingerprint, or (for tests) not at
/// all; either way checks that the handshake was signed by its key.
#[derive(Debug)]
struct Pinned {
    /// `None`: any certificate ([`ServerTrust::InsecureSkipVerify`]).
    fingerprint: Option<[u8; 32]>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.fingerprint {
            None => Ok(ServerCertVerified::assertion()),
            Some(fp) if fingerprint(end_entity) == fp => Ok(ServerCertVerified::assertion()),
            Some(fp) => Err(rustls::Error::General(format!(
                "the daemon's certificate is {}, not the pinned {}",
                format_fingerprint(&fingerprint(end_entity)),
                format_fingerprint(&fp)
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_print_and_parse_back() {
        let fp = fingerprint(b"certificate");
        let s = format_fingerprint(&fp);
        assert!(s.starts_with("sha256:") && s.len() == 7 + 64);
        assert_eq!(parse_fingerprint(&s).unwrap(), fp);
        let colons: String = s.as_bytes()[7..]
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(parse_fingerprint(&format!("sha256:{colons}")).unwrap(), fp);
        for bad in ["", "sha256:", "md5:00", "sha256:zz", &s[..20]] {
            assert!(parse_fingerprint(bad).is_err(), "{bad}");
        }
    }
}
