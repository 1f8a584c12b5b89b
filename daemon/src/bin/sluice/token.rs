//! `sluice token`: mint API tokens for sluiced's `[auth]` section, or hash
//! a token minted elsewhere. Neither talks to a daemon.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use sluice_daemon::auth::{
    check_principal_name, hash_token, new_token, AuthConfig, Authenticator, StreamPattern,
    TokenEntry,
};

use crate::Res;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Mint a token: print the [[auth.tokens]] block (with only the token's
    /// hash) to paste into sluiced.toml on stdout, and the token itself,
    /// once, on stderr (or into --token-file).
    New(NewArgs),
    /// Read a token from stdin and print its hash, the form sluiced.toml
    /// stores (for tokens minted elsewhere).
    Hash,
}

#[derive(clap::Args)]
struct NewArgs {
    /// Who the token is for, as logs and metrics will name it: 1 to 64 of
    /// A-Z a-z 0-9 . _ -
    #[arg(long, value_parser = principal_name)]
    name: String,
    /// A stream the token may publish to; `*` stands for any run of
    /// characters (`logs-*`, or `*` for all). Repeat for more.
    #[arg(long, value_name = "PATTERN", value_parser = stream_pattern)]
    publish: Vec<String>,
    /// A stream the token may consume from, as for --publish. Repeat for more.
    #[arg(long, value_name = "PATTERN", value_parser = stream_pattern)]
    consume: Vec<String>,
    /// Allow admin operations (on every stream).
    #[arg(long)]
    admin: bool,
    /// Write the token to this new file (mode 0600, no trailing newline)
    /// instead of printing it. The file must not exist yet.
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// Print one JSON object on stdout instead: the entry's fields (name,
    /// hash, publish, consume, admin), `toml` (the block to paste) and
    /// `token` (or `token_file`, where it was written).
    #[arg(long)]
    json: bool,
}

// The same checks as the config's, so that a block printed here always loads.
fn principal_name(s: &str) -> Result<String, String> {
    check_principal_name(s).map(|()| s.to_owned())
}

fn stream_pattern(s: &str) -> Result<String, String> {
    StreamPattern::parse(s).map(|_| s.to_owned())
}

pub fn run(a: Args) -> Res {
    match a.command {
        Command::New(a) => new(a),
        Command::Hash => hash(),
    }
}

fn new(a: NewArgs) -> Res {
    let token = new_token();
    let entry = TokenEntry {
        name: a.name,
        hash: hash_token(&token),
        publish: a.publish,
        consume: a.consume,
        admin: a.admin,
    };
    // Belt and braces: the block must load as it is.
    Authenticator::new(&AuthConfig {
        tokens: vec![entry.clone()],
        clients: vec![],
    })?;
    // The file first: if it cannot be written, no block is printed for a
    // token nobody has.
    if let Some(path) = &a.token_file {
        write_token_file(path, &token)?;
    }
    if a.json {
        let mut shown = serde_json::json!({
            "name": entry.name,
            "hash": entry.hash,
            "publish": entry.publish,
            "consume": entry.consume,
            "admin": entry.admin,
            "toml": entry.to_toml(),
        });
        match &a.token_file {
            Some(path) => shown["token_file"] = path.display().to_string().into(),
            None => shown["token"] = token.clone().into(),
        }
        println!("{shown}");
        return Ok(());
    }
    print!("{}", entry.to_toml());
    std::io::stdout().flush()?;
    match &a.token_file {
        Some(path) => eprintln!("sluice: token written to {} (mode 0600)", path.display()),
        None => {
            eprintln!("sluice: the token below is shown only once; only its hash is kept");
            eprintln!("{token}");
        }
    }
    Ok(())
}

/// Creates `path` readable by its owner only and writes `token` into it. An
/// existing file is left alone: it may hold a token still in use.
fn write_token_file(path: &Path, token: &str) -> Res {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot create token file {}: {e}", path.display()))?;
    f.write_all(token.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write token file {}: {e}", path.display()))?;
    Ok(())
}

fn hash() -> Res {
    let mut stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("sluice: reading a token from stdin (end with Ctrl-D)");
    }
    let mut text = String::new();
    stdin
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read a token from stdin: {e}"))?;
    // Surrounding whitespace (the newline of `echo`, of a file) is not part
    // of a token; whitespace inside means this is not one token.
    let token = text.trim();
    if token.is_empty() {
        return Err("no token on stdin".into());
    }
    if token.contains(char::is_whitespace) {
        return Err("stdin holds more than one word; expected one token".into());
    }
    println!("{}", hash_token(token));
    Ok(())
}
