//! sluice: the command-line client of `sluiced`. See `sluice --help`.
//!
//! Exit codes: 0 on success, 1 when the work failed (daemon unreachable,
//! stream missing, ...), 2 for bad usage.

mod admin;
mod connect;
mod consume;
mod dlq;
mod docs;
mod group;
mod nic;
mod publish;
mod read;
mod spool;
mod stat;
mod stream;
mod stream_arg;
mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Publish to, consume from, read and watch a sluiced",
    long_about = "Publish to, consume from, read and watch a sluiced.\n\n\
Addresses default to sluiced's embedded defaults (data 127.0.0.1:7401/udp, \
admin http://127.0.0.1:7480); set SLUICE_ADDR and SLUICE_ADMIN to point \
elsewhere. An admin port served over HTTPS (admin.tls): SLUICE_ADMIN=https://HOST:PORT, \
and SLUICE_ADMIN_CERT (--admin-cert) for the certificate to trust."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Publish messages and wait until each is durable: lines of stdin (the
    /// default) or of files, stdin or each file as one message (--format
    /// raw), length-prefixed frames, or --count generated messages.
    Publish(Box<publish::Args>),
    /// Print a stream's records (offset, time, producer, seq, payload),
    /// through a running sluiced or from its data folder.
    Read(read::Args),
    /// Watch a running sluiced: per-stream rates, credit, fsync latency and
    /// dropped datagrams, refreshed every second.
    Stat(stat::Args),
    /// Mint an API token for sluiced's [auth] config (the config keeps only
    /// its hash), or hash a token minted elsewhere.
    Token(token::Args),
    /// Inspect a NIC for the AF_XDP fast path (`nic show IFACE`), or plan
    /// the ethtool and IRQ commands that steer the data port to its queues
    /// (`nic plan IFACE --queues 0,1`).
    Nic(nic::Args),
    /// Receive a stream's messages as a member of a consumer group: print
    /// them, or run a command for each (ack on its success, nack on its
    /// failure).
    Consume(Box<consume::Args>),
    /// A stream's dead letters (messages a consumer group gave up on):
    /// `dlq list STREAM`, `dlq replay STREAM [--purge]`, `dlq purge STREAM`.
    Dlq(dlq::Args),
    /// Consumer groups: `group list [STREAM]`, `group reset STREAM GROUP
    /// --start earliest|latest|offset:N|time:T` (replay, or skip a
    /// backlog), `group delete STREAM GROUP`.
    Group(group::Args),
    /// The spool's integrity: `spool verify` checks every record, the
    /// checkpoints and the consumer groups' state, through a running
    /// sluiced or on a data folder (`--data-dir`); exit status 1 if
    /// anything is damaged.
    Spool(spool::Args),
    /// Streams: `stream ls` (offsets and records of each), `stream info
    /// STREAM` (one in full: size on disk, segments, producers, groups,
    /// retention and fsync policy).
    Stream(stream::Args),
    /// Print a shell's completion script for sluice (bash, zsh, fish,
    /// elvish, powershell); see the README for where to put it.
    Completions(docs::CompletionsArgs),
    /// Print the manual page (roff) of `sluice` or of `sluiced`, or write
    /// them all into a folder (--dir): `sluice man sluiced | man -l -`.
    Man(docs::ManArgs),
}

/// The admin address and credentials, shared by `read`, `stat`, `dlq`,
/// `group`, `nic` and `spool`.
#[derive(clap::Args, Clone)]
struct AdminAddr {
    /// sluiced's admin (HTTP) address: HOST:PORT, or a base URL
    /// (http://HOST:PORT, https://HOST:PORT for admin.tls).
    #[arg(long, default_value = "127.0.0.1:7480", env = "SLUICE_ADMIN")]
    admin: admin::AdminUrl,
    #[command(flatten)]
    cert: admin::AdminCert,
    /// API token of a principal allowed to consume the stream (not needed
    /// for `stat`, nor by a daemon running anonymously on loopback).
    #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl AdminAddr {
    /// A GET of `path` on the admin endpoint, with the token if there is
    /// one; an error if `--admin-cert` cannot be read.
    fn request(&self, path: &str, timeout: std::time::Duration) -> Result<ureq::Request, String> {
        self.request_with("GET", path, timeout)
    }

    /// A request of `method` for `path`, with the token if there is one.
    fn request_with(
        &self,
        method: &str,
        path: &str,
        timeout: std::time::Duration,
    ) -> Result<ureq::Request, String> {
        let admin = admin::Admin::new(&self.admin, self.cert.path.as_deref())?;
        let req = admin.request(method, path).timeout(timeout);
        Ok(match &self.token {
            Some(t) => req.set("authorization", &format!("Bearer {t}")),
            None => req,
        })
    }

    /// GETs `path` from the admin endpoint and returns the body; an HTTP
    /// error status becomes an error carrying the daemon's message.
    fn get(&self, path: &str) -> Result<String, Box<dyn std::error::Error>> {
        let r = self
            .request(path, std::time::Duration::from_secs(10))?
            .call();
        self.answer(r)
    }

    /// POSTs `body` (JSON) to `path` and returns the answer's body, as
    /// [`get`](Self::get). Replays of long dead-letter streams take a
    /// while: the timeout is generous.
    fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<String, Box<dyn std::error::Error>> {
        let r = self
            .request_with("POST", path, std::time::Duration::from_secs(300))?
            .send_json(body);
        self.answer(r)
    }

    /// PUTs `path` (no body) and returns the answer's body, as
    /// [`get`](Self::get).
    fn put(&self, path: &str) -> Result<String, Box<dyn std::error::Error>> {
        let r = self
            .request_with("PUT", path, std::time::Duration::from_secs(60))?
            .call();
        self.answer(r)
    }

    /// DELETEs `path` and returns the answer's body, as [`get`](Self::get).
    fn delete(&self, path: &str) -> Result<String, Box<dyn std::error::Error>> {
        let r = self
            .request_with("DELETE", path, std::time::Duration::from_secs(60))?
            .call();
        self.answer(r)
    }

    fn answer(
        &self,
        r: Result<ureq::Response, ureq::Error>,
    ) -> Result<String, Box<dyn std::error::Error>> {
        let admin = &self.admin;
        match r {
            Ok(r) => Ok(r.into_string()?),
            Err(ureq::Error::Status(code, r)) => {
                let body = r.into_string().unwrap_or_default();
                let msg = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_owned))
                    .unwrap_or(body);
                Err(format!("sluiced at {admin} answered {code}: {msg}").into())
            }
            Err(e) => Err(format!(
                "cannot reach sluiced's admin endpoint at {admin}: {e} (is it running? see --admin)"
            )
            .into()),
        }
    }
}

type Res = Result<(), Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    // What the client library has to say (reconnects, lost links) goes to
    // stderr; SLUICE_LOG=debug for more, =off for none.
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match Cli::parse().command {
        Cmd::Publish(a) => publish::run(*a),
        Cmd::Read(a) => read::run(a),
        Cmd::Stat(a) => stat::run(a),
        Cmd::Stream(a) => stream::run(a),
        Cmd::Token(a) => token::run(a),
        Cmd::Nic(a) => nic::run(a),
        Cmd::Dlq(a) => dlq::run(a),
        Cmd::Group(a) => group::run(a),
        Cmd::Consume(a) => consume::run(*a),
        Cmd::Spool(a) => spool::run(a),
        Cmd::Completions(a) => docs::completions(a),
        Cmd::Man(a) => docs::man(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`| head`): not an error.
        Err(e) if is_broken_pipe(&*e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// A path given on the command line that must exist.
fn existing(path: &std::path::Path) -> Result<(), String> {
    if path.exists() {
        Ok(())
    } else {
        Err(format!("{} does not exist", path.display()))
    }
}
