//! Hints for a mistyped or guessed flag of `sluiced`. Clap suggests the
//! flag whose spelling is nearest, which for a guess is often wrong:
//! `--data-dir` is closest to `--data-credit`, when the data folder is
//! `--spool-dir`. A guess from other daemons' habits is named here with
//! the flag it stands for; a flag given without its section (`--fsync`,
//! `--listen`) gets the flags of every section that has it; anything
//! else keeps clap's own suggestion.

use clap::builder::StyledStr;
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Arg, Command};

/// What people write for a key that sluiced names otherwise, and its
/// flag.
const GUESSES: &[(&[&str], &str)] = &[
    (
        &[
            "data-dir",
            "datadir",
            "data-path",
            "data-folder",
            "data-directory",
            "spool",
            "spool-path",
            "spool-directory",
            "storage",
            "storage-dir",
            "state-dir",
            "store-dir",
            "db-dir",
            "path",
        ],
        "spool-dir",
    ),
    (&["config-file", "conf", "cfg"], "config"),
    (
        &["metrics-listen", "http-listen", "metrics-addr", "http-addr"],
        "admin-listen",
    ),
    (&["verbose", "debug", "log", "loglevel"], "log-level"),
    (&["json", "log-json"], "log-format"),
    (
        &["iface", "interface", "nic", "dev", "device"],
        "xdp-interface",
    ),
    (
        &["print-configuration", "dump-config", "show-config"],
        "print-config",
    ),
];

/// At most this many flags are offered for a flag without its section.
const MAX_OFFERED: usize = 5;

/// `e` with a better tip for an unknown flag, when there is one.
pub fn hint(mut e: clap::Error, command: &Command) -> clap::Error {
    if e.kind() != ErrorKind::UnknownArgument {
        return e;
    }
    let Some(ContextValue::String(given)) = e.get(ContextKind::InvalidArg) else {
        return e;
    };
    // `--data_dir=/x` → `data-dir`.
    let Some(name) = given.strip_prefix("--") else {
        return e;
    };
    let name = name
        .split('=')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
        .replace('_', "-");
    let flags: Vec<&Arg> = command
        .get_arguments()
        .filter(|a| a.get_long().is_some())
        .collect();
    let long = |a: &&Arg| a.get_long().unwrap_or_default().to_owned();
    let guessed = GUESSES
        .iter()
        .find(|(guesses, _)| guesses.contains(&name.as_str()))
        .and_then(|(_, flag)| flags.iter().find(|a| long(a) == *flag));
    let offered: Vec<&Arg> = match guessed {
        Some(a) => vec![*a],
        None => flags
            .iter()
            .filter(|a| {
                let l = long(a);
                // Another spelling of a real flag (`--spool_fsync`), or a
                // key without its section (`--fsync`, `--listen`).
                l == name || l.ends_with(&format!("-{name}"))
            })
            .copied()
            .collect(),
    };
    if offered.is_empty() || offered.len() > MAX_OFFERED {
        return e;
    }
    let tip = match offered.as_slice() {
        [a] => format!("did you mean {}?", describe(a)),
        several => format!(
            "did you mean one of {}?",
            several
                .iter()
                .map(|a| match a.get_id().as_str() {
                    id if id.contains('.') => format!("--{} [{id}]", long(a)),
                    _ => format!("--{}", long(a)),
                })
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    // Clap's nearest spelling, and the usage line it made for it, would
    // contradict ours.
    e.remove(ContextKind::SuggestedArg);
    match offered.as_slice() {
        [a] => {
            let usage = match a.get_action().takes_values() {
                true => format!(
                    "Usage: {} --{} <{}>",
                    command.get_name(),
                    long(a),
                    a.get_value_names()
                        .and_then(|v| v.first())
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "VALUE".into())
                ),
                false => format!("Usage: {} --{}", command.get_name(), long(a)),
            };
            e.insert(
                ContextKind::Usage,
                ContextValue::StyledStr(StyledStr::from(usage)),
            );
        }
        _ => {
            e.remove(ContextKind::Usage);
        }
    }
    e.insert(
        ContextKind::Suggested,
        ContextValue::StyledStrs(vec![StyledStr::from(tip)]),
    );
    e
}

/// `--spool-dir (`spool.dir` of the configuration file, or
/// SLUICED_SPOOL_DIR)`.
fn describe(a: &Arg) -> String {
    let long = a.get_long().unwrap_or_default();
    let id = a.get_id().as_str();
    match (id.contains('.'), a.get_env()) {
        (true, Some(env)) => format!(
            "--{long} (`{id}` of the configuration file, or {})",
            env.to_string_lossy()
        ),
        (true, None) => format!("--{long} (`{id}` of the configuration file)"),
        (false, _) => format!("--{long}"),
    }
}
