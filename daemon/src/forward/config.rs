//! A forward's settings as the daemon runs them, checked from the file's
//! `[[forward]]` entries (config/check.rs builds them).

use std::path::PathBuf;

use crate::pattern::{is_pattern, matches};

/// How the forwarder authenticates to the NATS servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    None,
    Token(String),
    UserPassword {
        user: String,
        password: String,
    },
    /// A NATS credentials file (JWT and NKey seed).
    CredsFile(PathBuf),
    /// A file holding a user NKey seed (`SU...`): the servers list the
    /// public key in `authorization { users = [{ nkey: ... }] }`.
    NKeyFile(PathBuf),
}

/// Where a created JetStream stream keeps its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    File,
    Memory,
}

/// The target stream to create when missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Create {
    pub replicas: usize,
    pub storage: Storage,
}

/// One `[[forward]]` entry, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardConfig {
    pub name: String,
    /// Sluice streams forwarded: exact names, or patterns where `*`
    /// stands for any run of characters (`orders-*`, `*`), matched
    /// against the streams there are and those made later.
    pub streams: Vec<String>,
    pub servers: Vec<String>,
    /// Subject template: `{stream}` is replaced by the stream's name,
    /// `{producer}` by the producer's id.
    pub subject: String,
    pub target_stream: String,
    /// `Some`: create the target stream if it is missing.
    pub create: Option<Create>,
    pub auth: Auth,
    /// CA certificates for TLS to the servers (TLS required when given).
    pub tls_ca: Option<PathBuf>,
    pub max_in_flight: u32,
    /// `ack = "replicated"`: producers of its streams are acked once
    /// JetStream PubAcked their messages (forward/confirm.rs).
    pub replicated: bool,
}

impl ForwardConfig {
    /// The consumer group through which this forward reads its streams.
    pub fn group(&self) -> String {
        group_name(&self.name)
    }

    /// The subject a message of `producer` on `stream` is published to.
    pub fn subject_for(&self, stream: &str, producer: u64) -> String {
        self.subject
            .replace("{stream}", stream)
            .replace("{producer}", &producer.to_string())
    }

    /// The subject filter that takes every message of `stream` (what a
    /// created target stream lists): `{producer}` becomes `*`. For a
    /// pattern, whose streams may have dots (several tokens), the subject
    /// up to `{stream}` then `>`.
    pub fn subjects_of(&self, stream: &str) -> String {
        if is_pattern(stream) {
            let prefix = self.subject.split("{stream}").next().unwrap_or_default();
            return format!("{prefix}>");
        }
        self.subject
            .replace("{stream}", stream)
            .replace("{producer}", "*")
    }

    /// The exact stream names among `streams`.
    pub fn exact_streams(&self) -> impl Iterator<Item = &String> {
        self.streams.iter().filter(|s| !is_pattern(s))
    }

    /// Whether stream `name` is one this forward takes (a dead-letter
    /// stream only by its exact name).
    pub fn takes(&self, name: &str) -> bool {
        self.streams.iter().any(|s| {
            if is_pattern(s) {
                !name.ends_with(".dlq") && matches(s, name)
            } else {
                s == name
            }
        })
    }

    /// Whether any entry of `streams` is a pattern.
    pub fn has_patterns(&self) -> bool {
        self.streams.iter().any(|s| is_pattern(s))
    }

    /// `true` if each producer has a subject of its own, so that where the
    /// target stands for a producer can be read (its last message there).
    pub fn per_producer(&self) -> bool {
        self.subject.contains("{producer}")
    }
}

/// The consumer group of forward `name`.
pub fn group_name(name: &str) -> String {
    format!("forward.{name}")
}

/// Checks a subject template rendered for a stream and a producer: NATS
/// subjects are dot-separated tokens without spaces or wildcards.
pub fn check_subject(subject: &str) -> Result<(), String> {
    if subject.is_empty() {
        return Err("empty subject".into());
    }
    if let Some(c) = subject
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '*' | '>' | '{' | '}'))
    {
        return Err(format!(
            "subject {subject:?} contains {c:?} (a NATS subject takes no spaces or wildcards; \
             `{{stream}}` and `{{producer}}` are the only placeholders)"
        ));
    }
    if subject.split('.').any(str::is_empty) {
        return Err(format!("subject {subject:?} has an empty token"));
    }
    Ok(())
}
