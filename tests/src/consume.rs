//! Helpers of the consumer tests: publishing lines with the `sluice` CLI,
//! and the admin port's JSON API.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use base64::Engine;
use serde_json::Value;

use crate::daemon::DaemonSpec;

/// Publishes `lines` to `stream` as `producer` with `sluice publish` over
/// QUIC (trusting the daemon's own certificate), with `token` if given;
/// returns once all are durable (panics otherwise).
pub fn publish(
    sluice: &Path,
    spec: &DaemonSpec,
    stream: &str,
    producer: u64,
    lines: &[&str],
    token: Option<&str>,
) {
    let quic = spec.quic.to_string();
    let cert = spec.server_cert().display().to_string();
    let mut cmd = Command::new(sluice);
    cmd.args(["publish", "-s", stream, "--transport", "quic"])
        .args(["--to", &quic, "--server-cert", &cert])
        .args(["--producer", &producer.to_string()])
        .env_remove("SLUICE_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(t) = token {
        cmd.args(["--token", t]);
    }
    let mut child = cmd.spawn().expect("start sluice publish");
    let mut input = lines.join("\n");
    input.push('\n');
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "sluice publish failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The stdout of a `sluice` run that must have succeeded (else a panic
/// with its exit status and stderr).
pub fn succeeded(o: &Output) -> String {
    assert!(
        o.status.success(),
        "sluice failed ({}): {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// An admin API answer: status and JSON body (`Null` if not JSON).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

fn answer(r: Result<ureq::Response, ureq::Error>, what: &str) -> Answer {
    let (status, text) = match r {
        Ok(r) => (r.status(), r.into_string().expect("a body")),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("{what}: {e}"),
    };
    Answer {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
    }
}

fn request(method: &str, admin: SocketAddr, path: &str, token: Option<&str>) -> ureq::Request {
    // Long polls last up to 30 s.
    let r =
        ureq::request(method, &format!("http://{admin}{path}")).timeout(Duration::from_secs(60));
    match token {
        Some(t) => r.set("authorization", &format!("Bearer {t}")),
        None => r,
    }
}

/// POSTs `body` (sent as is) to the admin port.
pub fn post(admin: SocketAddr, path: &str, body: &str, token: Option<&str>) -> Answer {
    answer(
        request("POST", admin, path, token)
            .set("content-type", "application/json")
            .send_string(body),
        &format!("POST {path}"),
    )
}

/// GETs a path of the admin port.
pub fn get(admin: SocketAddr, path: &str, token: Option<&str>) -> Answer {
    answer(
        request("GET", admin, path, token).call(),
        &format!("GET {path}"),
    )
}

/// A base64 payload of the API, as text.
pub fn text(b64: &Value) -> String {
    let b = base64::engine::general_purpose::STANDARD
        .decode(b64.as_str().expect("a base64 string"))
        .expect("base64");
    String::from_utf8(b).expect("UTF-8")
}
