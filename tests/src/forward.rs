//! Shared by the forwarding tests (tests/tests/forward*.rs): sluiced with a
//! `[[forward]]` configuration and a log file, and a JetStream client of
//! the test's cluster.

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::{self, Context};
use async_nats::ServerAddr;

use crate::daemon::DaemonSpec;

/// The forward's name in these configurations: its group is `forward.js`.
pub const NAME: &str = "js";

/// Writes `dir`/sluiced.toml: stream `stream`, forwarded by forward `js`
/// to `servers` into JetStream stream `target`, with `extra` keys of the
/// `[[forward]]` entry (one per line); returns the file's path.
pub fn write_config(
    dir: &Path,
    stream: &str,
    servers: &[String],
    target: &str,
    extra: &str,
) -> String {
    let servers: Vec<String> = servers.iter().map(|s| format!("{s:?}")).collect();
    let text = format!(
        "[streams]\nnames = [\"{stream}\"]\n\n[[forward]]\nname = \"{NAME}\"\nstreams = [\"{stream}\"]\n\
         servers = [{}]\ntarget_stream = \"{target}\"\n{extra}\n",
        servers.join(", ")
    );
    std::fs::create_dir_all(dir).expect("the test folder");
    let path = dir.join("sluiced.toml");
    std::fs::write(&path, text).expect("write sluiced.toml");
    path.display().to_string()
}

/// sluiced (`bin`) with its data in `dir`/data, the configuration file
/// `config`, and its log (info) in `dir`/sluiced.log.
pub fn spec(bin: &Path, dir: &Path, config: &str) -> DaemonSpec {
    let mut spec = DaemonSpec::new(bin, &dir.join("data")).args(["--config", config]);
    spec.log_file = Some(dir.join("sluiced.log"));
    spec.log_level = "info".into();
    spec
}

/// What sluiced logged so far (empty before it wrote anything).
pub fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("sluiced.log")).unwrap_or_default()
}

/// A JetStream client of the cluster at `urls`.
pub async fn connect(urls: &[String]) -> Context {
    let addrs: Vec<ServerAddr> = urls.iter().map(|u| u.parse().unwrap()).collect();
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(addrs)
        .await
        .expect("connect to the cluster");
    jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(5))
        .build(client)
}
