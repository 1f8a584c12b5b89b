//! From credentials to principals: built once from `[auth]`, which it checks
//! whole, then asked for each connection.

use std::collections::HashMap;

use super::config::{AuthConfig, AuthConfigError};
use super::names::{check_common_name, check_principal_name, StreamPattern};
use super::permissions::{Permissions, Principal, PrincipalKind};
use super::token::{digest_of, digests_equal, parse_hash, Digest};

/// Maps a presented token or a verified client certificate's common name to
/// the principal configured for it.
#[derive(Debug, Clone)]
pub struct Authenticator {
    /// Token digests, with their principals, in config order.
    tokens: Vec<(Digest, Principal)>,
    /// By common name.
    clients: HashMap<String, Principal>,
}

impl Authenticator {
    /// Checks `config` whole; the first problem found is returned, naming
    /// its key (`auth.tokens[2].hash`).
    pub fn new(config: &AuthConfig) -> Result<Authenticator, AuthConfigError> {
        let mut tokens: Vec<(Digest, Principal)> = Vec::new();
        // name -> index, to name the earlier entry in a duplicate's error.
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (i, t) in config.tokens.iter().enumerate() {
            let key = format!("auth.tokens[{i}]");
            check_principal_name(&t.name)
                .map_err(|reason| AuthConfigError::new(format!("{key}.name"), reason))?;
            if let Some(first) = names.insert(&t.name, i) {
                return Err(AuthConfigError::new(
                    format!("{key}.name"),
                    format!("`{}` is already the name of auth.tokens[{first}]", t.name),
                ));
            }
            let digest = parse_hash(&t.hash).ok_or_else(|| {
                AuthConfigError::new(
                    format!("{key}.hash"),
                    "expected \"sha256:\" followed by 64 hex digits \
                     (`sluice token new` prints one)",
                )
            })?;
            // Two entries with one hash share one token: the second could
            // never be told apart from the first.
            if let Some(first) = tokens.iter().position(|(d, _)| *d == digest) {
                return Err(AuthConfigError::new(
                    format!("{key}.hash"),
                    format!(
                        "the same hash as auth.tokens[{first}] (`{}`): each principal needs its own token",
                        config.tokens[first].name
                    ),
                ));
            }
            let permissions = permissions(&key, &t.publish, &t.consume, t.admin)?;
            tokens.push((
                digest,
                Principal {
                    name: t.name.clone(),
                    kind: PrincipalKind::Token,
                    permissions,
                },
            ));
        }

        let mut clients: HashMap<String, Principal> = HashMap::new();
        let mut common_names: HashMap<&str, usize> = HashMap::new();
        for (i, c) in config.clients.iter().enumerate() {
            let key = format!("auth.clients[{i}]");
            check_common_name(&c.common_name)
                .map_err(|reason| AuthConfigError::new(format!("{key}.common_name"), reason))?;
            if let Some(first) = common_names.insert(&c.common_name, i) {
                return Err(AuthConfigError::new(
                    format!("{key}.common_name"),
                    format!(
                        "{:?} is already the common name of auth.clients[{first}]",
                        c.common_name
                    ),
                ));
            }
            let permissions = permissions(&key, &c.publish, &c.consume, c.admin)?;
            clients.insert(
                c.common_name.clone(),
                Principal {
                    name: c.common_name.clone(),
                    kind: PrincipalKind::ClientCert,
                    permissions,
                },
            );
        }
        Ok(Authenticator { tokens, clients })
    }

    /// The principal whose token is `presented`, if any.
    ///
    /// Timing tells an attacker nothing useful. The secret compared is not
    /// the token but its SHA-256, and the attacker can only choose the
    /// token: even a byte-by-byte early-exit comparison would reveal at most
    /// how many leading bytes of SHA-256(guess) match a stored digest, and
    /// steering that towards a match means inverting SHA-256. On top of
    /// that, each comparison takes the same time wherever the digests
    /// differ, and every entry is compared (no early return), so the time
    /// does not depend on which entry matched or whether one did.
    pub fn by_token(&self, presented: &str) -> Option<Principal> {
        let digest = digest_of(presented);
        let mut found = None;
        for (stored, principal) in &self.tokens {
            if digests_equal(stored, &digest) {
                found = Some(principal);
            }
        }
        found.cloned()
    }

    /// The principal mapped to a client certificate with subject common
    /// name `common_name`. The certificate must already have been verified
    /// by the TLS layer: this only maps a name, it proves nothing. (Common
    /// names are not secrets, so a plain map lookup is fine.)
    pub fn by_client_cert(&self, common_name: &str) -> Option<Principal> {
        self.clients.get(common_name).cloned()
    }

    /// No principal is configured at all (no tokens, no client certificates).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty() && self.clients.is_empty()
    }
}

/// Checks one entry's grants; `key` is the entry's path (`auth.tokens[0]`).
fn permissions(
    key: &str,
    publish: &[String],
    consume: &[String],
    admin: bool,
) -> Result<Permissions, AuthConfigError> {
    let patterns = |field: &str, list: &[String]| {
        list.iter()
            .enumerate()
            .map(|(j, p)| {
                StreamPattern::parse(p)
                    .map_err(|reason| AuthConfigError::new(format!("{key}.{field}[{j}]"), reason))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Permissions {
        publish: patterns("publish", publish)?,
        consume: patterns("consume", consume)?,
        admin,
    })
}

#[cfg(test)]
mod tests {
    use super::super::config::{ClientEntry, TokenEntry};
    use super::super::permissions::Action;
    use super::super::token::{hash_token, new_token};
    use super::*;

    fn token(name: &str, hash: &str, publish: &[&str], consume: &[&str]) -> TokenEntry {
        TokenEntry {
            name: name.into(),
            hash: hash.into(),
            publish: publish.iter().map(|s| s.to_string()).collect(),
            consume: consume.iter().map(|s| s.to_string()).collect(),
            admin: false,
        }
    }

    fn client(cn: &str, publish: &[&str]) -> ClientEntry {
        ClientEntry {
            common_name: cn.into(),
            publish: publish.iter().map(|s| s.to_string()).collect(),
            consume: vec![],
            admin: false,
        }
    }

    /// The error of `config`, as displayed.
    fn error(config: AuthConfig) -> String {
        Authenticator::new(&config).unwrap_err().to_string()
    }

    #[test]
    fn empty_config_is_valid_and_empty() {
        let a = Authenticator::new(&AuthConfig::default()).unwrap();
        assert!(a.is_empty());
        assert_eq!(a.by_token(""), None);
        assert_eq!(a.by_client_cert(""), None);
    }

    #[test]
    fn token_round_trip() {
        let t = new_token();
        let config = AuthConfig {
            tokens: vec![
                token("other", &hash_token(&new_token()), &["x"], &[]),
                token(
                    "ingest-a",
                    &hash_token(&t),
                    &["orders", "logs-*"],
                    &["orders"],
                ),
            ],
            clients: vec![],
        };
        let a = Authenticator::new(&config).unwrap();
        assert!(!a.is_empty());
        let p = a.by_token(&t).expect("the minted token is found");
        assert_eq!(p.name, "ingest-a");
        assert_eq!(p.kind, PrincipalKind::Token);
        assert!(p.may(Action::Publish, "logs-web"));
        assert!(p.may(Action::Consume, "orders"));
        assert!(!p.may(Action::Consume, "logs-web"));

        assert_eq!(a.by_token(&new_token()), None, "a different token");
        assert_eq!(a.by_token(&t[..t.len() - 1]), None, "a prefix of the token");
        assert_eq!(a.by_token(&format!("{t} ")), None, "no trimming");
        assert_eq!(
            a.by_token(&hash_token(&t)),
            None,
            "the hash is not the token"
        );
        assert_eq!(a.by_token(""), None);
    }

    #[test]
    fn uppercase_hex_in_the_config_is_the_same_hash() {
        let t = new_token();
        let upper = format!("sha256:{}", hash_token(&t)[7..].to_uppercase());
        let config = AuthConfig {
            tokens: vec![token("a", &upper, &[], &[])],
            clients: vec![],
        };
        let a = Authenticator::new(&config).unwrap();
        assert_eq!(a.by_token(&t).unwrap().name, "a");
    }

    #[test]
    fn client_cert_mapping() {
        let config = AuthConfig {
            tokens: vec![],
            clients: vec![
                client("producer-7", &["*"]),
                ClientEntry {
                    admin: true,
                    ..client("ops", &[])
                },
            ],
        };
        let a = Authenticator::new(&config).unwrap();
        assert!(!a.is_empty());
        let p = a.by_client_cert("producer-7").unwrap();
        assert_eq!(p.name, "producer-7");
        assert_eq!(p.kind, PrincipalKind::ClientCert);
        assert!(p.may(Action::Publish, "anything"));
        assert!(!p.may(Action::Consume, "anything"));
        assert!(!p.may(Action::Admin, ""));
        assert!(a.by_client_cert("ops").unwrap().may(Action::Admin, ""));
        assert_eq!(a.by_client_cert("Producer-7"), None, "case matters");
        assert_eq!(a.by_client_cert("producer-"), None);
        assert_eq!(
            a.by_token("producer-7"),
            None,
            "a common name is not a token"
        );
    }

    #[test]
    fn a_token_and_a_certificate_may_share_a_name() {
        // One client may hold both kinds of credential; `kind` tells them apart.
        let config = AuthConfig {
            tokens: vec![token("producer-7", &hash_token("t"), &[], &[])],
            clients: vec![client("producer-7", &[])],
        };
        assert!(Authenticator::new(&config).is_ok());
    }

    #[test]
    fn errors_name_the_key() {
        let h0 = hash_token("t0");
        let h1 = hash_token("t1");
        let h2 = hash_token("t2");
        let base = || AuthConfig {
            tokens: vec![
                token("a", &h0, &[], &[]),
                token("b", &h1, &[], &[]),
                token("c", &h2, &["orders"], &["orders"]),
            ],
            clients: vec![client("producer-7", &["*"])],
        };
        assert!(Authenticator::new(&base()).is_ok());

        // Breaks one thing in a valid config; the error must start with
        // `starts` (the key, and maybe the reason) and contain `contains`.
        let expect = |break_it: &dyn Fn(&mut AuthConfig), starts: &str, contains: &str| {
            let mut config = base();
            break_it(&mut config);
            let e = error(config);
            assert!(e.starts_with(starts), "{e:?} should start with {starts:?}");
            assert!(e.contains(contains), "{e:?} should contain {contains:?}");
        };
        expect(
            &|c| c.tokens[2].hash = "sha256:abc".into(),
            "auth.tokens[2].hash: expected \"sha256:\" followed by 64 hex digits",
            "",
        );
        expect(
            &|c| c.tokens[1].hash = h1[7..].to_string(),
            "auth.tokens[1].hash: expected",
            "",
        );
        expect(
            &|c| c.tokens[2].hash = c.tokens[0].hash.clone(),
            "auth.tokens[2].hash: the same hash as auth.tokens[0] (`a`)",
            "",
        );
        expect(
            &|c| c.tokens[2].name = "a".into(),
            "auth.tokens[2].name: `a` is already the name of auth.tokens[0]",
            "",
        );
        expect(
            &|c| c.tokens[1].name = String::new(),
            "auth.tokens[1].name: ",
            "1 to 64",
        );
        expect(
            &|c| c.tokens[1].name = "ingest a".into(),
            "auth.tokens[1].name: ",
            "' '",
        );
        expect(
            &|c| c.tokens[2].publish.push("logs/*".into()),
            "auth.tokens[2].publish[1]: ",
            "'/'",
        );
        expect(
            &|c| c.tokens[2].consume.insert(0, String::new()),
            "auth.tokens[2].consume[0]: ",
            "empty",
        );
        expect(
            &|c| c.clients[0].publish.push(".hidden".into()),
            "auth.clients[0].publish[1]: ",
            "starts with `.`",
        );
        expect(
            &|c| c.clients.push(client("producer-7", &[])),
            "auth.clients[1].common_name: \"producer-7\" is already the common name of auth.clients[0]",
            "",
        );
        expect(
            &|c| c.clients[0].common_name = String::new(),
            "auth.clients[0].common_name: ",
            "1 to 64",
        );
        expect(
            &|c| c.clients[0].consume.push("a?".into()),
            "auth.clients[0].consume[0]: ",
            "'?'",
        );
    }

    #[test]
    fn errors_from_a_parsed_file() {
        #[derive(serde::Deserialize)]
        struct File {
            auth: AuthConfig,
        }
        let text = r#"
[[auth.tokens]]
name = "ingest-a"
hash = "sha256:not-hex"
"#;
        let config = toml::from_str::<File>(text).unwrap().auth;
        let e = Authenticator::new(&config).unwrap_err();
        assert_eq!(e.key, "auth.tokens[0].hash");
        assert!(e.reason.contains("64 hex digits"), "{e}");
    }
}
