//! `sluiced`'s configuration: embedded defaults, then a TOML file, then
//! environment variables, then flags (each later one wins). Every key of the
//! file is also a flag and an environment variable; a bad value is an error
//! that names the key and says why.
//!
//! Each key is declared once (`sections.rs`); its typed value (`values.rs`)
//! is read by serde from the file and by clap from flags and variables;
//! the whole is checked once at load (`check.rs`), which builds what the
//! daemon runs on.

mod check;
mod declare;
mod env_hints;
mod flag_hints;
mod help;
mod sections;
mod values;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::auth::AuthConfig;
pub use check::{Checked, Logging, Settings};
use declare::KeyHelp;
pub use env_hints::unknown_variables;
pub use help::{env_name, flag_name};
pub use sections::{
    AdminFlags, AdminSection, ConsumersFlags, ConsumersSection, DataFlags, DataSection,
    ForwardEntry, GroupEntry, GrpcFlags, GrpcSection, LogFlags, LogSection, QuicFlags, QuicSection,
    SpoolFlags, SpoolSection, StreamsFlags, StreamsSection, XdpFlags, XdpSection,
};
pub use values::{Conflate, FsyncMode, LogFormat, OptionalSpan, Size, Span, XdpBind, XdpMode};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value for `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("invalid value for {0}")]
    Auth(String),
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// What `--print-config` writes in place of a secret.
pub const REDACTED: &str = "<redacted>";

/// The whole configuration, as the TOML file spells it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub data: DataSection,
    pub quic: QuicSection,
    pub admin: AdminSection,
    pub grpc: GrpcSection,
    pub spool: SpoolSection,
    pub streams: StreamsSection,
    pub auth: AuthConfig,
    pub xdp: XdpSection,
    pub consumers: ConsumersSection,
    pub log: LogSection,
    /// Forwards into NATS JetStream (`[[forward]]`), file only; not
    /// written when there are none, so that `--print-config` stays a list
    /// of sections.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub forward: Vec<ForwardEntry>,
}

/// `sluiced`'s command line: `--config`, `--print-config`, and a flag for
/// every key of the file (but `[auth]`, `consumers.groups` and
/// `[[forward]]`), which its help names in brackets, with the environment
/// variable that also sets it.
///
/// Only [`Args::command`] makes the command (it names the keys' flags),
/// hence `clap::Args`, not `clap::Parser`: there is no `Args::parse()`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Args {
    /// TOML configuration file.
    #[arg(long, short = 'c', env = "SLUICED_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (as TOML) and exit.
    #[arg(long)]
    pub print_config: bool,
    #[command(flatten)]
    pub data: DataFlags,
    #[command(flatten)]
    pub quic: QuicFlags,
    #[command(flatten)]
    pub admin: AdminFlags,
    #[command(flatten)]
    pub grpc: GrpcFlags,
    #[command(flatten)]
    pub spool: SpoolFlags,
    #[command(flatten)]
    pub streams: StreamsFlags,
    #[command(flatten)]
    pub xdp: XdpFlags,
    #[command(flatten)]
    pub consumers: ConsumersFlags,
    #[command(flatten)]
    pub log: LogFlags,
}

impl Config {
    /// The effective configuration for `args` (defaults, the file it
    /// names, variables and flags), checked, with what the daemon runs on.
    pub fn load(args: &Args) -> Result<(Config, Checked), ConfigError> {
        let mut c = match &args.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        c.apply(args);
        let checked = c.check()?;
        Ok((c, checked))
    }

    /// Lays the flags and variables given over these values.
    fn apply(&mut self, args: &Args) {
        // Destructured: a section added to `Args` and not applied here
        // does not compile.
        let Args {
            config: _,
            print_config: _,
            data,
            quic,
            admin,
            grpc,
            spool,
            streams,
            xdp,
            consumers,
            log,
        } = args;
        self.data.apply(data);
        self.quic.apply(quic);
        self.admin.apply(admin);
        self.grpc.apply(grpc);
        self.spool.apply(spool);
        self.streams.apply(streams);
        self.xdp.apply(xdp);
        self.consumers.apply(consumers);
        self.log.apply(log);
    }

    /// Every key that has a flag, in the file's order, for `--help`.
    fn keys() -> Vec<KeyHelp> {
        [
            DataSection::keys(),
            QuicSection::keys(),
            AdminSection::keys(),
            GrpcSection::keys(),
            SpoolSection::keys(),
            StreamsSection::keys(),
            XdpSection::keys(),
            ConsumersSection::keys(),
            LogSection::keys(),
        ]
        .concat()
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Reads a configuration file's text. The error names the key
    /// (`spool.fsync`), its line and what is wrong with it (for a word,
    /// the words it may be).
    pub fn from_toml(text: &str) -> Result<Config, String> {
        serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
            let key = e.path().to_string();
            let e = e.into_inner();
            let line = e.span().map(|s| {
                let before = text.as_bytes().get(..s.start).unwrap_or(text.as_bytes());
                1 + before.iter().filter(|&&b| b == b'\n').count()
            });
            let message = e.message().trim_end();
            match (key.as_str(), line) {
                (".", Some(line)) => format!("line {line}: {message}"),
                (".", None) => message.to_owned(),
                (key, Some(line)) => format!("`{key}` (line {line}): {message}"),
                (key, None) => format!("`{key}`: {message}"),
            }
        })
    }

    /// The configuration as a file, but for the forwards' secrets (token,
    /// password), written as [`REDACTED`]: `--print-config` output is
    /// pasted into tickets and chats.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        for f in &mut shown.forward {
            for secret in [&mut f.token, &mut f.password] {
                if !secret.is_empty() {
                    *secret = REDACTED.into();
                }
            }
        }
        toml::to_string_pretty(&shown).expect("config serializes")
    }
}
