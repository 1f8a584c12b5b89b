//! `sluiced`'s command line as clap builds it: each section's flags (ids
//! `section.key`) are named, given their variable, placeholder and default
//! here, from the id and the key's declaration, in one place.

use std::collections::HashMap;

use clap::builder::StyledStr;
use clap::error::{ContextKind, ContextValue};
use clap::{Arg, Command, FromArgMatches};

use super::declare::{KeyHelp, UNNAMED};
use super::{Args, Config};

const ABOUT: &str = "sluice daemon: durable reliable-UDP ingest";

const LONG_ABOUT: &str = "sluiced receives messages from producers over sluice's reliable UDP \
protocol and acknowledges each one only after it is fsynced to the spool.\n\n\
With no options it runs on embedded defaults: data on 127.0.0.1:7401/udp, metrics \
and health on http://127.0.0.1:7480, spool in ./sluice-data.\n\n\
Settings come from the defaults, then --config FILE (TOML), then SLUICED_* \
environment variables, then flags; later ones win. Each option below names its \
key in the file in brackets. Sizes take a unit (64MiB, 8KiB; or bytes); \
durations are written like 10s, 500ms, 12h, 7d.\n\n\
SIGHUP reads the configuration again: [auth] and [log] change in place, \
other changed keys are logged as needing a restart, an invalid file changes \
nothing. With $NOTIFY_SOCKET set, sluiced reports READY, RELOADING and \
STOPPING to it (systemd Type=notify).\n\n\
Exit status: 0 after a clean stop (SIGTERM, SIGINT); 1 when it cannot run \
(a socket, the data folder); 2 for a bad configuration; 3 when the spool is \
damaged: the message names stream, file, byte and the offsets affected \
(check it with `sluice spool verify --data-dir DIR`; restore the files, or \
start with --repair).";

/// The flag of key `id`: `spool.fsync` → `spool-fsync`.
pub fn flag_name(id: &str) -> String {
    id.replace(['.', '_'], "-")
}

/// The variable of key `id`: `spool.fsync` → `SLUICED_SPOOL_FSYNC`.
pub fn env_name(id: &str) -> String {
    format!("SLUICED_{}", id.replace('.', "_").to_ascii_uppercase())
}

/// Names a key's flag and variable (unless its declaration did), and
/// writes its help: the key first, so that an operator finds it in the
/// file, then the documentation, then the default (shown, not set: a flag
/// not given must leave the file's value alone).
fn describe(mut a: Arg, key: &KeyHelp) -> Arg {
    if a.get_long() == Some(UNNAMED) {
        a = a.long(flag_name(key.id));
    }
    if a.get_env().is_none() {
        a = a.env(env_name(key.id));
    }
    if a.get_action().takes_values() {
        a = a.value_name(key.placeholder);
        if key.list {
            a = a.value_delimiter(',');
        }
    }
    let default = format!("[default: {}]", key.default);
    let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
    let long = a.get_long_help().map(|h| h.to_string());
    a = a.help(format!("[{}] {help} {default}", key.id));
    match long {
        Some(long) => a.long_help(format!("[{}] {long}\n\n{default}", key.id)),
        None => a,
    }
}

/// Adds to clap's error for a bad flag or variable the key it stands for:
/// the value may have come from the variable, which clap does not name.
fn name_the_key(mut e: clap::Error, command: &Command) -> clap::Error {
    let Some(ContextValue::String(shown)) = e.get(ContextKind::InvalidArg) else {
        return e;
    };
    // `--spool-fsync <WHEN>`
    let long = shown
        .trim_start_matches('-')
        .split([' ', '='])
        .next()
        .unwrap_or_default();
    let Some(arg) = command
        .get_arguments()
        .find(|a| a.get_long() == Some(long) && a.get_id().as_str().contains('.'))
    else {
        return e;
    };
    let tip = match arg.get_env() {
        Some(env) => format!(
            "--{long} (or the variable {}) sets `{}` of the configuration file",
            env.to_string_lossy(),
            arg.get_id()
        ),
        None => format!("--{long} sets `{}` of the configuration file", arg.get_id()),
    };
    e.insert(
        ContextKind::Suggested,
        ContextValue::StyledStrs(vec![StyledStr::from(tip)]),
    );
    e
}

impl Args {
    /// The command line as clap parses it and `--help` shows it: each
    /// option under its section's heading, with its key and default (from
    /// `Config::default()`, where defaults are declared, once).
    pub fn command() -> Command {
        let keys: HashMap<&str, KeyHelp> = Config::keys().into_iter().map(|k| (k.id, k)).collect();
        // About and version after the flags: clap's derive takes the doc
        // comments of `Args` and of each section's flags for an about.
        <Args as clap::Args>::augment_args(Command::new("sluiced"))
            .version(env!("CARGO_PKG_VERSION"))
            .about(ABOUT)
            .long_about(LONG_ABOUT)
            .mut_args(|a| match keys.get(a.get_id().as_str()) {
                Some(key) => describe(a, key),
                None => a,
            })
    }

    /// The arguments of this process (exits with clap's message on an
    /// error, or after `--help` and `--version`).
    pub fn from_env() -> Args {
        Args::parse_args_from(std::env::args_os())
    }

    /// `args` (the program's name first) as [`Args::from_env`] reads them.
    pub fn parse_args_from<I, T>(args: I) -> Args
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Args::try_parse_args_from(args).unwrap_or_else(|e| e.exit())
    }

    /// As [`Args::parse_args_from`], but the error (or `--help`) returned.
    pub fn try_parse_args_from<I, T>(args: I) -> Result<Args, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let command = Args::command();
        let matches = command
            .clone()
            .try_get_matches_from(args)
            .map_err(|e| super::flag_hints::hint(name_the_key(e, &command), &command))?;
        Args::from_arg_matches(&matches)
    }
}
