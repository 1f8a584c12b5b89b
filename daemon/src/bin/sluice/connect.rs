//! How the CLI reaches a daemon's data plane: the transport, the address,
//! how to trust the daemon and how to prove who we are.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use sluice_transport::client::{ProducerOptions, QuicOptions, Transport, TxProvider};
use sluice_transport::quic::tls::{self, ClientTls, ServerTrust};
use sluice_xdp::producer::TxSetup;

/// Where a daemon on this machine keeps its self-signed certificate, tried
/// in this order when none is given for a daemon on loopback: the
/// embedded default's data folder (relative to where it was started: the
/// quick start runs both in one folder), then the packaged service's
/// (daemon/dist/sluiced.toml: spool.dir = /var/lib/sluice).
const LOCAL_SERVER_CERTS: [&str; 2] = [
    "./sluice-data/tls/server.crt",
    "/var/lib/sluice/tls/server.crt",
];

/// How producers reach the daemon: a transport, and the QUIC flags.
#[derive(clap::Args, Clone)]
pub struct ConnectArgs {
    /// `fast`: authenticate over QUIC, publish over sealed raw UDP (LAN);
    /// `quic`: everything over QUIC (firewalls, WAN); `udp`: raw UDP to a
    /// daemon whose data port is insecure_lan; `http`: POSTs to the HTTP
    /// API (`--admin`), each batch under an Idempotency-Key.
    #[arg(long, default_value = "fast", value_parser = ["fast", "quic", "udp", "http"])]
    pub transport: String,
    #[command(flatten)]
    pub quic: QuicArgs,
    /// Send through an AF_XDP TX ring on this interface ("IFACE" or
    /// "IFACE:QUEUE", queue 0 by default) instead of the kernel's UDP
    /// stack (fast and udp transports; Linux, root or CAP_NET_RAW).
    #[arg(long, value_name = "IFACE[:QUEUE]")]
    xdp_tx: Option<String>,
}

/// How to reach the daemon's QUIC plane (consumers always use it), trust
/// it and prove who we are.
#[derive(clap::Args, Clone)]
pub struct QuicArgs {
    /// The daemon's QUIC address (default 127.0.0.1:7400); with
    /// `publish --transport udp`, its data address (default
    /// 127.0.0.1:7401). `publish` takes several (repeated, or a comma
    /// list) and fails over from one to the next in that order.
    #[arg(long, env = "SLUICE_ADDR", value_delimiter = ',', value_name = "ADDR")]
    to: Vec<SocketAddr>,
    /// API token (`sluice token new`).
    #[arg(
        long,
        env = "SLUICE_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    token: Option<String>,
    /// File holding the API token.
    #[arg(long, env = "SLUICE_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Trust daemon certificates issued by these CAs (PEM).
    #[arg(long, conflicts_with_all = ["server_fingerprint", "server_cert", "insecure_skip_verify"])]
    ca_file: Option<PathBuf>,
    /// Trust exactly the daemon certificate with this fingerprint
    /// ("sha256:...", printed in sluiced's log).
    #[arg(long, conflicts_with_all = ["server_cert", "insecure_skip_verify"])]
    server_fingerprint: Option<String>,
    /// Trust exactly the daemon certificate in this file. Default, for a
    /// daemon on loopback: its self-signed one, the first found of
    /// ./sluice-data/tls/server.crt (the embedded defaults, started in
    /// this folder) and /var/lib/sluice/tls/server.crt (the service).
    #[arg(
        long,
        env = "SLUICE_SERVER_CERT",
        conflicts_with = "insecure_skip_verify"
    )]
    server_cert: Option<PathBuf>,
    /// The name the daemon's certificate must carry (with --ca-file);
    /// default: the address's IP.
    #[arg(long)]
    server_name: Option<String>,
    /// Client certificate (PEM) for mutual TLS, with --client-key.
    #[arg(long, requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1) of --client-cert.
    #[arg(long, requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// Do not verify the daemon's certificate at all. For tests only:
    /// anyone on the path can impersonate the daemon.
    #[arg(long)]
    insecure_skip_verify: bool,
}

impl ConnectArgs {
    /// The daemons' addresses, in failover order, and the producer options
    /// these flags describe.
    pub fn resolve(&self) -> Result<(Vec<SocketAddr>, ProducerOptions), String> {
        let default_port = if self.transport == "udp" { 7401 } else { 7400 };
        let addrs = self.quic.addrs(default_port);
        // Trust is one setting for all: with several daemons, a CA (or
        // one certificate they share) rather than the default file.
        let addr = addrs[0];
        let transport = match self.transport.as_str() {
            "udp" => Transport::Udp,
            "quic" => Transport::Quic(self.quic.options(addr)?),
            _ => Transport::FastPath(self.quic.options(addr)?),
        };
        let mut options = ProducerOptions::with_transport(transport);
        if let Some(spec) = &self.xdp_tx {
            if self.transport == "quic" {
                return Err("--xdp-tx needs --transport fast or udp".into());
            }
            options.tx = Some(xdp_tx(spec)?);
        }
        Ok((addrs, options))
    }
}

impl QuicArgs {
    /// The daemon's QUIC address and how to connect to it (consumers).
    pub fn resolve(&self) -> Result<(SocketAddr, QuicOptions), String> {
        if self.to.len() > 1 {
            return Err(format!(
                "--to: a consumer reads from one daemon, {} were given",
                self.to.len()
            ));
        }
        let addr = self.addrs(7400)[0];
        Ok((addr, self.options(addr)?))
    }

    /// The API token of --token or --token-file, if either is given (the
    /// HTTP transports of `consume` send it as a bearer token).
    pub fn token(&self) -> Result<Option<String>, String> {
        Ok(match (&self.token, &self.token_file) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(f)) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| format!("cannot read token file {}: {e}", f.display()))?
                    .trim()
                    .to_owned(),
            ),
            (None, None) => None,
        })
    }

    /// The addresses given, or the local default: never empty.
    fn addrs(&self, default_port: u16) -> Vec<SocketAddr> {
        if self.to.is_empty() {
            vec![SocketAddr::from(([127, 0, 0, 1], default_port))]
        } else {
            self.to.clone()
        }
    }

    fn options(&self, addr: SocketAddr) -> Result<QuicOptions, String> {
        let trust = if let Some(ca) = &self.ca_file {
            ServerTrust::CaFile(ca.clone())
        } else if let Some(fp) = &self.server_fingerprint {
            ServerTrust::Fingerprint(tls::parse_fingerprint(fp).map_err(|e| e.to_string())?)
        } else if self.insecure_skip_verify {
            eprintln!("sluice: --insecure-skip-verify: the daemon's certificate is NOT checked (tests only)");
            ServerTrust::InsecureSkipVerify
        } else {
            let local = || {
                LOCAL_SERVER_CERTS
                    .iter()
                    .map(Path::new)
                    .find(|p| p.exists())
                    .map(Path::to_path_buf)
            };
            let cert = match &self.server_cert {
                Some(c) => c.clone(),
                None if addr.ip().is_loopback() => local().ok_or_else(|| {
                    format!(
                        "how should the daemon at {addr} be trusted? its self-signed certificate is \
                         in none of {} (the daemon's <spool.dir>/tls/server.crt): give \
                         --server-cert (or SLUICE_SERVER_CERT), --server-fingerprint or --ca-file",
                        LOCAL_SERVER_CERTS.join(", ")
                    )
                })?,
                None => {
                    return Err(format!(
                        "how should the daemon at {addr} be trusted? give --ca-file, \
                         --server-fingerprint or --server-cert (or SLUICE_SERVER_CERT)"
                    ))
                }
            };
            let certs = tls::load_certs(&cert).map_err(|e| e.to_string())?;
            ServerTrust::Fingerprint(tls::fingerprint(&certs[0]))
        };
        let token = self.token()?;
        Ok(QuicOptions {
            tls: ClientTls {
                trust,
                client_cert: self.client_cert.clone().zip(self.client_key.clone()),
                server_name: self.server_name.clone(),
            },
            token,
        })
    }
}

/// The TX ring `--xdp-tx IFACE[:QUEUE]` names.
fn xdp_tx(spec: &str) -> Result<TxProvider, String> {
    let (interface, queue) = match spec.rsplit_once(':') {
        Some((i, q)) => (
            i,
            q.parse()
                .map_err(|_| format!("--xdp-tx {spec}: {q:?} is not a queue number"))?,
        ),
        None => (spec, 0),
    };
    sluice_xdp::producer::tx_provider(TxSetup::new(interface, queue))
        .map_err(|e| format!("--xdp-tx {spec}: {e}"))
}
