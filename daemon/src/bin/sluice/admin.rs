//! How the CLI reaches sluiced's admin (HTTP API) port: `--admin` takes
//! `HOST:PORT` (plain HTTP, as always), or a base URL, `http://HOST:PORT`
//! or `https://HOST:PORT`; `--admin-cert PEM` trusts exactly the
//! certificates of that file (a CA, or the daemon's self-signed
//! `<spool.dir>/tls/server.crt`) and implies HTTPS.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The admin port's address, as `--admin` gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminUrl {
    /// `Some(true)` for `https://`, `Some(false)` for `http://`, `None`
    /// for a bare `HOST:PORT` (HTTP unless `--admin-cert` is given).
    https: Option<bool>,
    /// `HOST:PORT`.
    authority: String,
}

impl FromStr for AdminUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (https, rest) = if let Some(r) = s.strip_prefix("https://") {
            (Some(true), r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (Some(false), r)
        } else {
            (None, s)
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        let port = authority.rsplit_once(':').map(|(_, p)| p);
        if authority.contains('/') || port.is_none_or(|p| p.parse::<u16>().is_err()) {
            return Err(format!(
                "{s:?}: expected HOST:PORT, http://HOST:PORT or https://HOST:PORT"
            ));
        }
        Ok(AdminUrl {
            https,
            authority: authority.to_owned(),
        })
    }
}

/// As given, less a trailing slash: a bare address stays bare, so that
/// what the CLI prints for plain HTTP is unchanged.
impl fmt::Display for AdminUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.https {
            Some(true) => write!(f, "https://{}", self.authority),
            Some(false) => write!(f, "http://{}", self.authority),
            None => f.write_str(&self.authority),
        }
    }
}

/// An admin port to send requests to: its base URL and an agent that
/// speaks its protocol.
pub struct Admin {
    /// `http(s)://HOST:PORT`.
    pub base: String,
    pub agent: ureq::Agent,
}

impl Admin {
    /// `url`, trusting `cert` (which implies HTTPS) if given.
    pub fn new(url: &AdminUrl, cert: Option<&Path>) -> Result<Admin, String> {
        Admin::with_agent(url, cert, |b| b)
    }

    /// As [`Admin::new`], the agent set up by `tune` too (timeouts).
    pub fn with_agent(
        url: &AdminUrl,
        cert: Option<&Path>,
        tune: impl FnOnce(ureq::AgentBuilder) -> ureq::AgentBuilder,
    ) -> Result<Admin, String> {
        let https = match (url.https, cert) {
            (Some(false), Some(_)) => {
                return Err(format!(
                    "--admin {url} is plain HTTP, but --admin-cert asks for HTTPS: write https://"
                ))
            }
            (Some(https), _) => https,
            (None, cert) => cert.is_some(),
        };
        let mut agent = tune(ureq::AgentBuilder::new());
        if let Some(cert) = cert {
            let config = sluice_daemon::identity::https_client(cert)
                .map_err(|e| format!("--admin-cert: {e}"))?;
            agent = agent.tls_config(config);
        }
        let scheme = if https { "https" } else { "http" };
        Ok(Admin {
            base: format!("{scheme}://{}", url.authority),
            agent: agent.build(),
        })
    }

    /// Whether it speaks HTTPS.
    pub fn is_https(&self) -> bool {
        self.base.starts_with("https://")
    }

    /// A request of `method` for `path` (which starts with `/`).
    pub fn request(&self, method: &str, path: &str) -> ureq::Request {
        self.agent.request(method, &format!("{}{path}", self.base))
    }
}

/// `--admin-cert`, for commands that take it.
#[derive(clap::Args, Clone, Debug)]
pub struct AdminCert {
    /// Trust exactly the certificates of this PEM file for sluiced's admin
    /// port (a CA, or the daemon's self-signed <spool.dir>/tls/server.crt),
    /// and speak HTTPS to it (admin.tls).
    #[arg(
        id = "admin_cert",
        long = "admin-cert",
        value_name = "PEM",
        env = "SLUICE_ADMIN_CERT"
    )]
    pub path: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_or_a_base_url() {
        let bare: AdminUrl = "127.0.0.1:7480".parse().unwrap();
        assert_eq!(bare.to_string(), "127.0.0.1:7480");
        let a = Admin::new(&bare, None).unwrap();
        assert_eq!(a.base, "http://127.0.0.1:7480");
        let tls: AdminUrl = "https://sluice.example:7480/".parse().unwrap();
        assert_eq!(tls.to_string(), "https://sluice.example:7480");
        assert_eq!(
            Admin::new(&tls, None).unwrap().base,
            "https://sluice.example:7480"
        );
        assert_eq!(
            "[::1]:7480".parse::<AdminUrl>().unwrap().authority,
            "[::1]:7480"
        );
        for bad in ["127.0.0.1", "http://h:7480/x", "h:port", ""] {
            assert!(bad.parse::<AdminUrl>().is_err(), "{bad}");
        }
        let plain: AdminUrl = "http://127.0.0.1:7480".parse().unwrap();
        assert!(Admin::new(&plain, Some(Path::new("x.crt"))).is_err());
    }
}
