//! Principals and what they may do.

use std::fmt;

use super::StreamPattern;

/// Something a principal asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Send messages to a stream.
    Publish,
    /// Receive (and ack) messages of a stream.
    Consume,
    /// Admin operations. Not granted per stream: `admin = true` allows them
    /// on every stream (and on none in particular).
    Admin,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Publish => "publish",
            Action::Consume => "consume",
            Action::Admin => "admin",
        })
    }
}

/// What one principal is allowed: by stream pattern for publish and
/// consume, all or nothing for admin. Each grant stands alone: `admin` does
/// not imply publish or consume, nor the reverse.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Permissions {
    pub publish: Vec<StreamPattern>,
    pub consume: Vec<StreamPattern>,
    pub admin: bool,
}

impl Permissions {
    /// May `action` be done on `stream`? For [`Action::Admin`] the stream
    /// is ignored.
    pub fn allows(&self, action: Action, stream: &str) -> bool {
        let any = |patterns: &[StreamPattern]| patterns.iter().any(|p| p.matches(stream));
        match action {
            Action::Publish => any(&self.publish),
            Action::Consume => any(&self.consume),
            Action::Admin => self.admin,
        }
    }
}

/// How a principal proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrincipalKind {
    /// An API token from `[[auth.tokens]]`.
    Token,
    /// A client certificate mapped by `[[auth.clients]]`.
    ClientCert,
    /// Nobody in particular: the embedded default, with no principals
    /// configured and every listener on loopback.
    Anonymous,
}

impl fmt::Display for PrincipalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PrincipalKind::Token => "token",
            PrincipalKind::ClientCert => "client certificate",
            PrincipalKind::Anonymous => "anonymous (loopback only)",
        })
    }
}

/// An authenticated client: its name (a token entry's `name`, or the
/// certificate's common name), how it authenticated, what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub kind: PrincipalKind,
    pub permissions: Permissions,
}

impl Principal {
    /// May this principal do `action` on `stream`? (`stream` is ignored
    /// for [`Action::Admin`].)
    pub fn may(&self, action: Action, stream: &str) -> bool {
        self.permissions.allows(action, stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(ps: &[&str]) -> Vec<StreamPattern> {
        ps.iter()
            .map(|p| StreamPattern::parse(p).unwrap())
            .collect()
    }

    fn principal(publish: &[&str], consume: &[&str], admin: bool) -> Principal {
        Principal {
            name: "p".into(),
            kind: PrincipalKind::Token,
            permissions: Permissions {
                publish: patterns(publish),
                consume: patterns(consume),
                admin,
            },
        }
    }

    #[test]
    fn each_action_checks_its_own_patterns() {
        let p = principal(&["orders", "logs-*"], &["orders"], false);
        assert!(p.may(Action::Publish, "orders"));
        assert!(p.may(Action::Publish, "logs-web"));
        assert!(!p.may(Action::Publish, "metrics"));
        assert!(p.may(Action::Consume, "orders"));
        assert!(
            !p.may(Action::Consume, "logs-web"),
            "publish does not grant consume"
        );
        assert!(!p.may(Action::Admin, "orders"));
    }

    #[test]
    fn admin_is_for_every_stream_and_grants_nothing_else() {
        let admin = principal(&[], &[], true);
        for stream in ["orders", "anything", ""] {
            assert!(admin.may(Action::Admin, stream), "{stream:?}");
        }
        assert!(!admin.may(Action::Publish, "orders"));
        assert!(!admin.may(Action::Consume, "orders"));
    }

    #[test]
    fn nothing_granted_allows_nothing() {
        let p = principal(&[], &[], false);
        for action in [Action::Publish, Action::Consume, Action::Admin] {
            assert!(!p.may(action, "orders"), "{action}");
        }
    }

    #[test]
    fn star_allows_every_valid_stream_only() {
        let p = principal(&["*"], &["*"], false);
        assert!(p.may(Action::Publish, "orders"));
        assert!(p.may(Action::Consume, "x"));
        assert!(!p.may(Action::Publish, "../etc"));
        assert!(!p.may(Action::Consume, ""));
    }
}
