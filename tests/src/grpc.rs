//! What the gRPC tests share: a daemon with three principals and a
//! plaintext channel to its gRPC port, requests carrying a token.

use std::path::Path;
use std::time::Duration;

use sluice_daemon::auth::{hash_token, new_token};
use tonic::transport::{Channel, Endpoint};
use tonic::Request;

use crate::daemon::{Daemon, DaemonSpec};

/// The principals' API tokens.
pub struct Tokens {
    /// Publish to and consume from every stream.
    pub writer: String,
    /// Consume only.
    pub reader: String,
    /// Publish only.
    pub producer: String,
}

/// The spec of a daemon (the `sluiced` at `bin`, its data under `dir`)
/// with the three principals of [`Tokens`]; `extra` goes at the end of its
/// configuration file.
pub fn spec(bin: &Path, dir: &Path, extra: &str) -> (DaemonSpec, Tokens) {
    let t = Tokens {
        writer: new_token(),
        reader: new_token(),
        producer: new_token(),
    };
    std::fs::create_dir_all(dir).unwrap();
    let config = dir.join("sluiced.toml");
    std::fs::write(
        &config,
        format!(
            "[[auth.tokens]]\nname = \"writer\"\nhash = \"{}\"\npublish = [\"*\"]\nconsume = [\"*\"]\n\n\
             [[auth.tokens]]\nname = \"reader\"\nhash = \"{}\"\nconsume = [\"*\"]\n\n\
             [[auth.tokens]]\nname = \"producer\"\nhash = \"{}\"\npublish = [\"*\"]\n\n{extra}",
            hash_token(&t.writer),
            hash_token(&t.reader),
            hash_token(&t.producer),
        ),
    )
    .unwrap();
    let spec = DaemonSpec::new(bin, &dir.join("data"))
        .arg("--config")
        .arg(config.display().to_string());
    (spec, t)
}

/// A plaintext channel to the daemon's gRPC port.
pub async fn channel(d: &Daemon) -> Channel {
    Endpoint::from_shared(format!("http://{}", d.grpc))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect to the gRPC port")
}

/// `msg` with `authorization: Bearer <token>`.
pub fn with_token<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}
