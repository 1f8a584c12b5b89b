//! Runs the example (the binary `cargo run -p sluice-grpc-example` runs)
//! against a real sluiced on loopback, and checks what it printed and what
//! the daemon holds afterwards: the messages stored once and the group's
//! acks.
//!
//! Cargo gives a test the paths of its own package's binaries only, so the
//! daemon is this test binary run again with the hidden subcommand
//! `daemon` (sluice-testkit's `serve`: sluiced's own `main`, built from the
//! same sources), as the benchmarks start theirs. Hence `harness = false`:
//! `main` below is either the daemon or the test.

use std::ffi::OsString;
use std::process::{Command, ExitCode, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use sluice_daemon::auth::{hash_token, new_token};
use sluice_testkit::daemon::{serve, Daemon, DaemonSpec, STOP_ON_STDIN_EOF};

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == "daemon") {
        let stop_on_eof = args.iter().any(|a| a == STOP_ON_STDIN_EOF);
        let flags = args.iter().skip_while(|a| *a != "--").skip(1).cloned();
        return serve(stop_on_eof, flags.collect());
    }
    // What libtest would do with `--list` and with name filters (cargo
    // test's other flags change nothing here).
    const NAME: &str = "the_example_publishes_once_and_its_pull_acks";
    // libtest's flags that take the next word as their value.
    const VALUED: [&str; 6] = [
        "--test-threads",
        "--logfile",
        "--format",
        "--color",
        "-Z",
        "--shuffle-seed",
    ];
    if args.iter().any(|a| a == "--list") {
        println!("{NAME}: test");
        return ExitCode::SUCCESS;
    }
    let (mut filters, mut skipped, mut words) = (Vec::new(), false, args.iter());
    while let Some(a) = words.next().and_then(|a| a.to_str()) {
        if a == "--skip" {
            skipped |= words
                .next()
                .and_then(|p| p.to_str())
                .is_some_and(|p| NAME.contains(p));
        } else if VALUED.contains(&a) {
            words.next();
        } else if !a.starts_with('-') {
            filters.push(a);
        }
    }
    if skipped || !(filters.is_empty() || filters.iter().any(|f| NAME.contains(f))) {
        println!("test {NAME} ... filtered out");
        return ExitCode::SUCCESS;
    }
    the_example_publishes_once_and_its_pull_acks();
    println!("test {NAME} ... ok");
    ExitCode::SUCCESS
}

fn the_example_publishes_once_and_its_pull_acks() {
    let dir = tempfile::tempdir().unwrap();
    // The example's principal publishes and consumes; the test reads the
    // daemon with another that may only consume.
    let (app, checker) = (new_token(), new_token());
    let config = dir.path().join("sluiced.toml");
    std::fs::write(
        &config,
        format!(
            "[[auth.tokens]]\nname = \"app\"\nhash = \"{}\"\npublish = [\"*\"]\nconsume = [\"*\"]\n\n\
             [[auth.tokens]]\nname = \"checker\"\nhash = \"{}\"\nconsume = [\"*\"]\n",
            hash_token(&app),
            hash_token(&checker),
        ),
    )
    .unwrap();
    let d = DaemonSpec::this_exe(&dir.path().join("data"))
        .unwrap()
        .arg("--config")
        .arg(config.display().to_string())
        .start();
    let grpc = d.grpc.to_string();

    // A wrong token: a clear error and a failing exit, nothing stored.
    let out = example(&["--addr", &grpc, "--stream", "orders"], "not-a-token");
    assert!(
        !out.status.success(),
        "a wrong token was taken:\n{}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unauthenticated"),
        "no clear error for a wrong token:\n{}",
        text(&out)
    );

    let out = example(
        &[
            "--addr", &grpc, "--stream", "orders", "--group", "billing", "--count", "3",
        ],
        &app,
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "the example failed:\n{}", text(&out));
    eprintln!("{stdout}");
    for line in [
        "published 3 messages to orders at offsets [0, 1, 2], durable",
        "sent again with the same key: replayed true, offsets [Some(0), Some(1), Some(2)]",
        "received offset 0: \"message 1\" (attempt 1)",
        "received offset 1: \"message 2\" (attempt 1)",
        "received offset 2: \"message 3\" (attempt 1)",
        "acks of offsets [0, 1, 2] confirmed durable",
        "group billing: every offset below 3 acked, backlog 0",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "no line {line:?} in:\n{stdout}"
        );
    }

    // The daemon's own view: three records, once each (the resend stored
    // nothing), and the group's acks.
    let page = get_json(&d, "/streams/orders/records?from=0&limit=100", &checker);
    let payloads: Vec<String> = page["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| {
            let b = base64::engine::general_purpose::STANDARD
                .decode(r["payload"].as_str().expect("a payload"))
                .expect("base64");
            String::from_utf8(b).expect("UTF-8")
        })
        .collect();
    assert_eq!(payloads, ["message 1", "message 2", "message 3"], "{page}");
    assert_eq!(page["durable_end"], 3, "{page}");
    let groups = get_json(&d, "/groups", &checker);
    let billing = groups["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .find(|g| g["stream"] == "orders" && g["group"] == "billing")
        .unwrap_or_else(|| panic!("no group billing in {groups}"))
        .clone();
    assert_eq!(billing["floor"], 3, "{billing}");
    assert_eq!(billing["acked"], 3, "{billing}");
    d.terminate(Duration::from_secs(20));
}

/// Runs the example with `args` and `SLUICE_TOKEN`; at most 60 s (its own
/// waits are bounded well below that).
fn example(args: &[&str], token: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice-grpc-example"))
        .args(args)
        .env("SLUICE_TOKEN", token)
        .env_remove("SLUICE_GRPC")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the example");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "the example did not finish within 60 s:\n{}",
                text(&child.wait_with_output().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn get_json(d: &Daemon, path: &str, token: &str) -> serde_json::Value {
    let url = format!("{}{path}", d.admin_url());
    let body = d.here(|| {
        ureq::get(&url)
            .set("authorization", &format!("Bearer {token}"))
            .timeout(Duration::from_secs(10))
            .call()
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
            .into_string()
            .unwrap()
    });
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}
