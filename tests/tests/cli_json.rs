//! Machine output (issue 22, point 4): `--json` on `sluice publish`'s
//! summary, `sluice stat`, `sluice nic plan` and `sluice token new` prints
//! JSON that scripts can read, with the same figures as the text.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sluice_tests::cli;
use sluice_tests::daemon::DaemonSpec;
use sluice_tests::{sluice_bin, sluiced_bin};

/// Runs `sluice` with `args` and `stdin`: exit code, stdout, stderr.
fn sluice(args: &[&str], stdin: &[u8]) -> (Option<i32>, String, String) {
    cli::run(Command::new(sluice_bin!()).args(args), stdin)
}

fn json(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not one JSON value ({e}): {text}"))
}

#[test]
fn token_new_json_holds_the_entry_and_the_token_whose_hash_it_is() {
    let (code, out, err) = sluice(
        &[
            "token",
            "new",
            "--name",
            "ingest-a",
            "--publish",
            "orders-*",
            "--json",
        ],
        b"",
    );
    assert_eq!(code, Some(0), "{err}");
    let v = json(&out);
    assert_eq!(v["name"], "ingest-a");
    assert_eq!(v["publish"], serde_json::json!(["orders-*"]));
    assert_eq!(v["admin"], false);
    let token = v["token"].as_str().expect("the token");
    assert_eq!(
        v["hash"].as_str().unwrap(),
        sluice_daemon::auth::hash_token(token)
    );
    assert!(v["toml"]
        .as_str()
        .unwrap()
        .contains(v["hash"].as_str().unwrap()));
    assert!(!err.contains(token), "the token is not printed twice");
}

#[test]
fn publish_and_stat_json_say_what_the_daemon_took() {
    let dir = tempfile::tempdir().unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), dir.path());
    let d = spec.start();
    let (quic, admin) = (spec.quic.to_string(), spec.admin.to_string());
    let cert = spec.server_cert().display().to_string();
    let lines: String = (1..=30).map(|i| format!("message {i}\n")).collect();
    let (code, out, err) = sluice(
        &[
            "publish",
            "-s",
            "orders",
            "--producer",
            "12",
            "--transport",
            "quic",
            "--to",
            &quic,
            "--server-cert",
            &cert,
            "--json",
        ],
        lines.as_bytes(),
    );
    assert_eq!(code, Some(0), "{err}");
    let v = json(&out);
    assert_eq!(v["stream"], "orders");
    assert_eq!(v["messages"], 30);
    assert_eq!(v["producer"], 12);
    assert_eq!(
        (v["first_seq"].as_u64(), v["last_seq"].as_u64()),
        (Some(1), Some(30))
    );
    assert!(v["messages_per_sec"].as_f64().unwrap() > 0.0, "{v}");
    let (code, out, err) = sluice(
        &[
            "stat", "--json", "--count", "2", "--every", "0.2", "--admin", &admin,
        ],
        b"",
    );
    assert_eq!(code, Some(0), "{err}");
    let frames: Vec<Value> = out.lines().map(json).collect();
    assert_eq!(frames.len(), 2, "one line per refresh: {out}");
    let streams = frames[1]["streams"].as_array().expect("streams");
    let orders = streams
        .iter()
        .find(|s| s["stream"] == "orders")
        .unwrap_or_else(|| panic!("no orders in {}", frames[1]));
    assert_eq!(orders["disk_full"], false);
    assert!(frames[1]["at"].as_str().unwrap().ends_with('Z'));
    assert!(frames[1]["groups"].is_array());
    let status = d.terminate(Duration::from_secs(10));
    assert!(status.success());
}

#[test]
fn nic_plan_json_is_the_plan_and_keeps_the_exit_status() {
    // Loopback's MTU is beyond any AF_XDP frame: the plan cannot work.
    let (code, out, err) = sluice(&["nic", "plan", "lo", "--queues", "0", "--json"], b"");
    assert_eq!(code, Some(1), "a plan that cannot work: {err}");
    let v = json(&out);
    assert_eq!(v["iface"], "lo");
    let checks = v["checks"].as_array().expect("checks");
    assert!(
        checks.iter().any(|c| c["level"] == "fail"),
        "a failing check: {v}"
    );
    assert!(err.contains("cannot work"), "{err}");
}
