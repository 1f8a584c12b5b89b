//! The daemon's TLS identity: the certificate and key the QUIC plane
//! serves. Configured files, or, when none are configured, a self-signed
//! certificate made at first start and kept in the data folder, so that the
//! embedded defaults work out of the box. Its fingerprint goes to the log:
//! clients pin it (`sluice publish --server-fingerprint`, or `--server-cert`
//! with the file).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sluice_transport::quic::tls::{self, TlsError};
use thiserror::Error;
use tracing::{info, warn};

/// The admin port's TLS (`admin.tls`), as the configuration gives it.
#[derive(Debug, Clone)]
pub enum AdminTls {
    /// Plain HTTP.
    Off,
    /// HTTPS with the QUIC plane's certificate and key ([`Identity`]), known
    /// once the daemon has loaded (or made) them.
    QuicIdentity,
    /// HTTPS with its own certificate (`admin.tls_cert`, `admin.tls_key`),
    /// loaded and checked with the configuration.
    Own(Arc<rustls::ServerConfig>),
}

/// The admin port's HTTPS for this certificate chain and key: rustls
/// with ring (as the QUIC plane), HTTP/1.1 by ALPN (the only protocol it
/// speaks). Fails if the key is not the certificate's.
pub fn https_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The gRPC plane's TLS (`grpc.tls`) for this certificate chain and key:
/// as [`https_config`], but HTTP/2 by ALPN (gRPC's only protocol).
pub fn grpc_tls_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let mut config = Arc::unwrap_or_clone(https_config(chain, key)?);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The client side of [`https_config`]: trusts the certificates of the
/// PEM file `trust` (a CA, or the daemon's own self-signed certificate),
/// and nothing else, for an `https://` admin port (`sluice --admin-cert`,
/// tests).
pub fn https_client(trust: &Path) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in tls::load_certs(trust)? {
        roots.add(c).map_err(|e| TlsError::Load {
            what: "a trusted certificate",
            path: trust.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The self-signed certificate and key, inside the data folder.
pub const SELF_SIGNED_CERT: &str = "tls/server.crt";
pub const SELF_SIGNED_KEY: &str = "tls/server.key";
/// The QUIC stateless-reset secret, inside the data folder.
pub const RESET_KEY: &str = "tls/reset.key";

#[derive(Debug, Error)]
pub enum IdentityError {
    #[error("quic certificate: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot make a self-signed certificate: {0}")]
    Generate(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// SHA-256 of the leaf certificate.
    pub fingerprint: [u8; 32],
    /// Where the certificate comes from, for the log.
    pub cert_path: PathBuf,
}

/// Where the QUIC plane's certificate comes from (`[quic]`, and the data
/// folder for the self-signed one).
pub struct IdentitySource<'a> {
    /// Configured files (`quic.cert`, `quic.key`); empty: self-signed.
    pub cert: &'a Path,
    pub key: &'a Path,
    /// Where the self-signed one is kept.
    pub dir: &'a Path,
    /// The QUIC listener's address, named in the self-signed certificate.
    pub listen: SocketAddr,
}

/// The configured certificate, or the self-signed one (made if missing).
pub fn load_or_create(from: &IdentitySource) -> Result<Identity, IdentityError> {
    let (cert, key) = if from.cert.as_os_str().is_empty() {
        let dir = from.dir;
        let (cert, key) = (dir.join(SELF_SIGNED_CERT), dir.join(SELF_SIGNED_KEY));
        if !cert.exists() || !key.exists() {
            create_self_signed(&cert, &key, from.listen)?;
        }
        if !from.listen.ip().is_loopback() {
            warn!(cert = %cert.display(), "the QUIC plane serves a self-signed certificate beyond loopback: clients must pin its fingerprint (or configure quic.cert and quic.key)");
        }
        (cert, key)
    } else {
        (from.cert.to_path_buf(), from.key.to_path_buf())
    };
    let chain = tls::load_certs(&cert)?;
    let key_der = tls::load_key(&key)?;
    let fingerprint = tls::fingerprint(&chain[0]);
    info!(
        cert = %cert.display(),
        fingerprint = %tls::format_fingerprint(&fingerprint),
        "QUIC certificate (clients can pin this fingerprint)"
    );
    Ok(Identity {
        chain,
        key: key_der,
        fingerprint,
        cert_path: cert,
    })
}

fn create_self_signed(cert: &Path, key: &Path, listen: SocketAddr) -> Result<(), IdentityError> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let ip = listen.ip();
    if !ip.is_unspecified() && !ip.is_loopback() {
        names.push(ip.to_string());
    }
    let made = rcgen::generate_simple_self_signed(names)
        .map_err(|e| IdentityError::Generate(e.to_string()))?;
    write_private(key, made.key_pair.serialize_pem().as_bytes(), 0o600)?;
    write_private(cert, made.cert.pem().as_bytes(), 0o644)?;
    info!(cert = %cert.display(), "made a self-signed QUIC certificate (first start)");
    Ok(())
}

/// Writes `bytes` to `path` with `mode`, through a temporary file, so a
/// crash leaves either nothing or the whole file.
fn write_private(path: &Path, bytes: &[u8], mode: u32) -> Result<(), IdentityError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| IdentityError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// The subject common name of a DER certificate, if it has one.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// The secret behind QUIC stateless resets, kept across restarts: a daemon
/// that restarted (even after `kill -9`) can then tell the clients of its
/// previous life at once that their connections are gone, and they
/// reconnect without waiting out an idle timeout.
pub fn reset_key(data_dir: &Path) -> Result<[u8; 64], IdentityError> {
    let path = data_dir.join(RESET_KEY);
    if let Ok(bytes) = std::fs::read(&path) {
        if let Ok(key) = <[u8; 64]>::try_from(bytes.as_slice()) {
            return Ok(key);
        }
        warn!(path = %path.display(), "the stateless-reset secret is damaged; making a new one");
    }
    let mut key = [0u8; 64];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
        .map_err(|_| IdentityError::Generate("no randomness for the reset secret".into()))?;
    write_private(&path, &key, 0o600)?;
    Ok(key)
}
