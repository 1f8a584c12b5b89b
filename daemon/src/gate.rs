//! Who may come in: every connection to the QUIC plane (and so every lease
//! of the raw-UDP fast path) is tied to a principal, found by its client
//! certificate or its API token. Failures are counted by reason and logged
//! with the peer's address, at a bounded rate (anyone can fail on purpose).
//! So are connections refused because the daemon, or their principal, holds
//! its most QUIC connections (see `crate::quic`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use tracing::warn;

use crate::auth::{Action, Authenticator, Permissions, Principal, PrincipalKind, StreamPattern};
use crate::log_limit::LogLimit;

/// Why a client was turned away; the text goes back to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// Neither a known client certificate nor a token.
    NoCredentials,
    /// A token that matches no principal.
    BadToken,
    /// A certificate the TLS layer accepted but no principal maps.
    UnknownCertificate,
    /// A principal asked for what it may not do.
    Forbidden,
    /// Authenticated, but the daemon holds `quic.max_connections` QUIC
    /// connections already.
    ConnectionLimit,
    /// Authenticated, but its principal holds
    /// `quic.max_connections_per_principal` QUIC connections already.
    PrincipalConnectionLimit,
}

impl Denied {
    pub const ALL: [Denied; 6] = [
        Denied::NoCredentials,
        Denied::BadToken,
        Denied::UnknownCertificate,
        Denied::Forbidden,
        Denied::ConnectionLimit,
        Denied::PrincipalConnectionLimit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Denied::NoCredentials => "no_credentials",
            Denied::BadToken => "bad_token",
            Denied::UnknownCertificate => "unknown_certificate",
            Denied::Forbidden => "forbidden",
            Denied::ConnectionLimit => "connection_limit",
            Denied::PrincipalConnectionLimit => "principal_connection_limit",
        }
    }

    /// What the client is told.
    pub fn reason(self) -> &'static str {
        match self {
            Denied::NoCredentials => "no credentials: present an API token or a client certificate",
            Denied::BadToken => "invalid token",
            Denied::UnknownCertificate => "client certificate not mapped to any principal",
            Denied::Forbidden => "not allowed",
            Denied::ConnectionLimit => "too many QUIC connections (quic.max_connections)",
            Denied::PrincipalConnectionLimit => {
                "too many QUIC connections of this principal (quic.max_connections_per_principal)"
            }
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value (an HTTP header,
/// gRPC metadata); the scheme is case-insensitive (RFC 9110 §11.1).
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

pub struct Gate {
    /// Who is admitted; replaced whole by a reload (SIGHUP), so a check
    /// sees either the old principals or the new ones, never a mix.
    access: RwLock<Access>,
    /// Every listener is on loopback (fixed for the process: listeners
    /// change only with a restart).
    loopback_only: bool,
    /// Per [`Denied::ALL`].
    pub denied: [AtomicU64; Denied::ALL.len()],
    log: Mutex<LogLimit>,
}

/// The principals in force, and whether there are none (on loopback:
/// everyone is anonymous).
struct Access {
    auth: Arc<Authenticator>,
    anonymous: bool,
}

impl Access {
    fn new(auth: Authenticator, loopback_only: bool) -> Access {
        let anonymous = auth.is_empty() && loopback_only;
        if anonymous {
            warn!("no principals configured ([auth]): every local client is anonymous with all rights; this is allowed only because every listener is on loopback");
        }
        Access {
            auth: Arc::new(auth),
            anonymous,
        }
    }
}

/// Why [`Gate::replace`] kept the principals it had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotReplaced(pub &'static str);

impl Gate {
    pub fn new(auth: Authenticator, loopback_only: bool) -> Self {
        Gate {
            access: RwLock::new(Access::new(auth, loopback_only)),
            loopback_only,
            denied: Default::default(),
            log: Mutex::new(LogLimit::new(5)),
        }
    }

    pub fn is_anonymous(&self) -> bool {
        self.access.read().unwrap().anonymous
    }

    /// Puts `auth` in force for every credential checked from now on
    /// (connections and requests already admitted keep their principal).
    /// Refused when it has no principals while a listener is beyond
    /// loopback: that would shut everyone out (a restart with such a
    /// configuration is refused the same way).
    pub fn replace(&self, auth: Authenticator) -> Result<(), NotReplaced> {
        if auth.is_empty() && !self.loopback_only {
            return Err(NotReplaced(
                "no principals while listening beyond loopback: nobody could connect",
            ));
        }
        *self.access.write().unwrap() = Access::new(auth, self.loopback_only);
        Ok(())
    }

    /// The principals in force (a reference that a reload does not
    /// change under the caller).
    fn current(&self) -> (Arc<Authenticator>, bool) {
        let a = self.access.read().unwrap();
        (a.auth.clone(), a.anonymous)
    }

    /// The principal of a connection: by its client certificate's common
    /// name (if it presented one), else by its token.
    pub fn principal(
        &self,
        peer: SocketAddr,
        token: &str,
        cert_common_name: Option<&str>,
    ) -> Result<Principal, Denied> {
        let (auth, anonymous) = self.current();
        if anonymous {
            return Ok(self::anonymous());
        }
        let found = match (cert_common_name, token.is_empty()) {
            (Some(cn), _) => match auth.by_client_cert(cn) {
                Some(p) => Ok(p),
                // A token can still vouch for a client whose certificate
                // maps to nobody.
                None if !token.is_empty() => auth.by_token(token).ok_or(Denied::BadToken),
                None => Err(Denied::UnknownCertificate),
            },
            (None, true) => Err(Denied::NoCredentials),
            (None, false) => auth.by_token(token).ok_or(Denied::BadToken),
        };
        found.inspect_err(|d| self.deny(peer, *d, ""))
    }

    /// Checks `principal` may do `action` on `stream`; counts and logs a no.
    pub fn check(
        &self,
        peer: SocketAddr,
        principal: &Principal,
        action: Action,
        stream: &str,
    ) -> Result<(), String> {
        if principal.may(action, stream) {
            return Ok(());
        }
        self.deny(peer, Denied::Forbidden, stream);
        Err(format!(
            "principal {:?} may not {action} stream {stream:?}",
            principal.name
        ))
    }

    /// Counts and logs (at a bounded rate) a connection of `principal`
    /// refused elsewhere (over a connection limit).
    pub fn refused(&self, peer: SocketAddr, d: Denied, principal: &str) {
        self.denied[d as usize].fetch_add(1, Relaxed);
        if let Some(suppressed) = self.log.lock().unwrap().allow(Instant::now()) {
            warn!(%peer, reason = d.as_str(), principal, suppressed, "connection refused");
        }
    }

    fn deny(&self, peer: SocketAddr, d: Denied, stream: &str) {
        self.denied[d as usize].fetch_add(1, Relaxed);
        if let Some(suppressed) = self.log.lock().unwrap().allow(Instant::now()) {
            warn!(%peer, reason = d.as_str(), stream, suppressed, "access denied");
        }
    }
}

fn anonymous() -> Principal {
    let all = || vec![StreamPattern::parse("*").expect("`*` is a pattern")];
    Principal {
        name: "anonymous".into(),
        kind: PrincipalKind::Anonymous,
        permissions: Permissions {
            publish: all(),
            consume: all(),
            admin: true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{hash_token, new_token, AuthConfig, TokenEntry};

    fn peer() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    #[test]
    fn tokens_certificates_and_their_failures() {
        let token = new_token();
        let config = AuthConfig {
            tokens: vec![TokenEntry {
                name: "ingest".into(),
                hash: hash_token(&token),
                publish: vec!["orders".into()],
                consume: vec![],
                admin: false,
            }],
            clients: vec![],
        };
        let gate = Gate::new(Authenticator::new(&config).unwrap(), true);
        assert!(!gate.is_anonymous());
        let p = gate.principal(peer(), &token, None).unwrap();
        assert_eq!(p.name, "ingest");
        assert!(gate.check(peer(), &p, Action::Publish, "orders").is_ok());
        let e = gate
            .check(peer(), &p, Action::Publish, "audit")
            .unwrap_err();
        assert!(e.contains("ingest") && e.contains("audit"), "{e}");
        assert_eq!(
            gate.principal(peer(), "slc_wrong", None).unwrap_err(),
            Denied::BadToken
        );
        assert_eq!(
            gate.principal(peer(), "", None).unwrap_err(),
            Denied::NoCredentials
        );
        assert_eq!(
            gate.principal(peer(), "", Some("stranger")).unwrap_err(),
            Denied::UnknownCertificate
        );
        // A token vouches for a client whose certificate maps to nobody.
        assert_eq!(
            gate.principal(peer(), &token, Some("stranger"))
                .unwrap()
                .name,
            "ingest"
        );
        gate.refused(peer(), Denied::PrincipalConnectionLimit, "ingest");
        let counts: Vec<u64> = gate.denied.iter().map(|c| c.load(Relaxed)).collect();
        assert_eq!(counts, vec![1, 1, 1, 1, 0, 1]);
    }

    #[test]
    fn replaced_principals_apply_to_the_next_check() {
        let (a, b) = (new_token(), new_token());
        let only = |token: &str| {
            Authenticator::new(&AuthConfig {
                tokens: vec![TokenEntry {
                    name: "ingest".into(),
                    hash: hash_token(token),
                    publish: vec!["*".into()],
                    consume: vec![],
                    admin: false,
                }],
                clients: vec![],
            })
            .unwrap()
        };
        let gate = Gate::new(only(&a), false);
        assert!(gate.principal(peer(), &a, None).is_ok());
        gate.replace(only(&b)).unwrap();
        assert_eq!(
            gate.principal(peer(), &a, None).unwrap_err(),
            Denied::BadToken
        );
        assert!(gate.principal(peer(), &b, None).is_ok());
        // Beyond loopback, no principals would shut everyone out: kept.
        let empty = Authenticator::new(&AuthConfig::default()).unwrap();
        assert!(gate.replace(empty.clone()).is_err());
        assert!(gate.principal(peer(), &b, None).is_ok());
        // On loopback, no principals means anonymous, as at start.
        let local = Gate::new(only(&a), true);
        local.replace(empty).unwrap();
        assert!(local.is_anonymous());
    }

    #[test]
    fn anonymous_only_with_no_principals_on_loopback() {
        let empty = || Authenticator::new(&AuthConfig::default()).unwrap();
        let gate = Gate::new(empty(), true);
        let p = gate.principal(peer(), "", None).unwrap();
        assert_eq!(p.kind, PrincipalKind::Anonymous);
        assert!(p.may(Action::Publish, "anything"));
        let gate = Gate::new(empty(), false);
        assert_eq!(
            gate.principal(peer(), "", None).unwrap_err(),
            Denied::NoCredentials
        );
    }
}
