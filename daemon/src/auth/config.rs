//! The `[auth]` section of `sluiced.toml`, as the file spells it. Values are
//! checked by [`Authenticator::new`](super::Authenticator::new), not here, so
//! that every error can name its key.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// `[auth]`: the principals that may connect. Empty (the default) means no
/// principal is configured at all.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `[[auth.tokens]]`: principals that present an API token.
    pub tokens: Vec<TokenEntry>,
    /// `[[auth.clients]]`: principals that present a client certificate.
    pub clients: Vec<ClientEntry>,
}

/// One `[[auth.tokens]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Who this is, for logs and metrics.
    pub name: String,
    /// `sha256:` and the lowercase hex SHA-256 of the whole token string
    /// (what `sluice token new` prints). The token itself is never stored.
    pub hash: String,
    /// Stream patterns this principal may publish to.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Stream patterns this principal may consume from.
    #[serde(default)]
    pub consume: Vec<String>,
    /// May use admin operations (on every stream).
    #[serde(default)]
    pub admin: bool,
}

/// One `[[auth.clients]]` entry: a client certificate, already verified by
/// the TLS layer, becomes this principal when its subject common name is
/// `common_name`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientEntry {
    pub common_name: String,
    #[serde(default)]
    pub publish: Vec<String>,
    #[serde(default)]
    pub consume: Vec<String>,
    #[serde(default)]
    pub admin: bool,
}

impl TokenEntry {
    /// This entry as a `[[auth.tokens]]` block, ready to paste into
    /// `sluiced.toml`.
    pub fn to_toml(&self) -> String {
        // Serialized under `auth.tokens` so the header reads `[[auth.tokens]]`.
        #[derive(Serialize)]
        struct File<'a> {
            auth: Auth<'a>,
        }
        #[derive(Serialize)]
        struct Auth<'a> {
            tokens: [&'a TokenEntry; 1],
        }
        toml::to_string(&File {
            auth: Auth { tokens: [self] },
        })
        .expect("a token entry serializes")
    }
}

/// A bad value in `[auth]`: `key` is the full path of the value
/// (`auth.tokens[2].hash`, `auth.clients[0].publish[1]`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{key}: {reason}")]
pub struct AuthConfigError {
    pub key: String,
    pub reason: String,
}

impl AuthConfigError {
    pub(super) fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        AuthConfigError {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            auth: AuthConfig,
        }
        let text = r#"
[auth]
[[auth.tokens]]
name = "ingest-a"
hash = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
publish = ["orders", "logs-*"]
consume = ["orders"]
admin = false

[[auth.clients]]
common_name = "producer-7"
publish = ["*"]
consume = []
admin = false
"#;
        let auth = toml::from_str::<File>(text).unwrap().auth;
        assert_eq!(auth.tokens.len(), 1);
        assert_eq!(auth.tokens[0].publish, ["orders", "logs-*"]);
        assert_eq!(auth.clients[0].common_name, "producer-7");
    }

    #[test]
    fn permissions_default_to_nothing() {
        let t: TokenEntry = toml::from_str("name = \"a\"\nhash = \"h\"\n").unwrap();
        assert!(t.publish.is_empty() && t.consume.is_empty() && !t.admin);
        let c: ClientEntry = toml::from_str("common_name = \"a\"\n").unwrap();
        assert!(c.publish.is_empty() && c.consume.is_empty() && !c.admin);
        assert_eq!(
            toml::from_str::<AuthConfig>("").unwrap(),
            AuthConfig::default()
        );
    }

    #[test]
    fn unknown_keys_are_refused_and_named() {
        let e = toml::from_str::<TokenEntry>("name = \"a\"\nhash = \"h\"\npublsh = []\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("publsh"), "{e}");
        let e = toml::from_str::<AuthConfig>("[[token]]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("token"), "{e}");
    }

    #[test]
    fn an_entry_prints_as_a_block_that_parses_back() {
        let entry = TokenEntry {
            name: "ingest-a".into(),
            hash: "sha256:ab".into(),
            publish: vec!["orders".into(), "logs-*".into()],
            consume: vec![],
            admin: true,
        };
        let text = entry.to_toml();
        assert!(text.starts_with("[[auth.tokens]]\n"), "{text}");
        #[derive(Deserialize)]
        struct File {
            auth: AuthConfig,
        }
        let back = toml::from_str::<File>(&text).unwrap().auth;
        assert_eq!(back.tokens, [entry]);
    }
}
