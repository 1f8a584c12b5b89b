//! How `sluiced` says it cannot start: a guessed flag is told the right
//! one (exit status 2, as every usage error), and with `log.format =
//! "json"` a fatal error is one JSON line like the rest of its log.

use std::process::{Command, Output};

use sluice_tests::sluiced_bin;

fn sluiced(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(sluiced_bin!())
        .args(args)
        .env_remove("SLUICED_CONFIG")
        .env_remove("SLUICED_LOG_FORMAT")
        .env_remove("SLUICED_LOG_LEVEL")
        .envs(env.iter().copied())
        .output()
        .expect("run sluiced")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_guessed_flag_is_told_the_right_one_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = sluiced(&["--data-dir", data.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("unexpected argument '--data-dir'")
            && err.contains("did you mean --spool-dir (`spool.dir` of the configuration file, or SLUICED_SPOOL_DIR)?")
            && err.contains("Usage: sluiced --spool-dir <PATH>"),
        "{err}"
    );
    // Not clap's nearest spelling, which is another key altogether.
    assert!(!err.contains("--data-credit"), "{err}");
    assert!(!data.exists(), "nothing is made on a usage error");

    // A key given without its section: every section's flag for it.
    let out = sluiced(&["--listen", "127.0.0.1:7401"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    for flag in [
        "--data-listen [data.listen]",
        "--quic-listen [quic.listen]",
        "--admin-listen [admin.listen]",
        "--grpc-listen [grpc.listen]",
    ] {
        assert!(err.contains(flag), "no {flag} in {err}");
    }

    // Any other mistyped flag: clap's own suggestion.
    let out = sluiced(&["--spool-fsinc", "never"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("a similar argument exists: '--spool-fsync'"),
        "{err}"
    );
}

/// Every line of `out`'s stderr as JSON (a line that is not fails).
fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    stderr(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

/// The one fatal line of a start refused with `code`, naming `needle`.
fn assert_fatal(line: &serde_json::Value, code: u64, needle: &str) {
    assert_eq!(line["level"], "ERROR", "{line}");
    assert_eq!(line["fields"]["exit_code"], code, "{line}");
    let message = line["fields"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(needle), "{line}");
    assert!(line["timestamp"].is_string(), "{line}");
}

/// Listeners on ports of the system's choosing: two of these tests may
/// start the daemon's network side at once.
const ANY_PORTS: [&str; 8] = [
    "--admin-listen",
    "127.0.0.1:0",
    "--data-listen",
    "127.0.0.1:0",
    "--quic-listen",
    "127.0.0.1:0",
    "--grpc-listen",
    "127.0.0.1:0",
];

#[test]
fn with_json_logs_a_bad_configuration_is_one_json_line() {
    let dir = tempfile::tempdir().unwrap();
    let key = "spool.segment_bytes";
    // The format from the flag, from the variable, and from the file.
    let file = dir.path().join("sluiced.toml");
    std::fs::write(
        &file,
        "[log]\nformat = \"json\"\n[spool]\nsegment_bytes = 1\n",
    )
    .unwrap();
    for out in [
        sluiced(&["--log-format", "json", "--spool-segment-bytes", "1"], &[]),
        sluiced(
            &["--spool-segment-bytes", "1"],
            &[("SLUICED_LOG_FORMAT", "json")],
        ),
        sluiced(&["--config", file.to_str().unwrap()], &[]),
    ] {
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        let lines = json_lines(&out);
        assert_eq!(lines.len(), 1, "{}", stderr(&out));
        assert_fatal(&lines[0], 2, key);
    }
    // The flag wins over the file, as for every key.
    let out = sluiced(
        &["--config", file.to_str().unwrap(), "--log-format", "text"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).starts_with("sluiced: invalid value for `spool.segment_bytes`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn errors_before_the_format_is_known_and_text_logs_stay_text() {
    let dir = tempfile::tempdir().unwrap();
    // Not TOML, and no flag: the format cannot be known.
    let file = dir.path().join("broken.toml");
    std::fs::write(&file, "[log\nformat = \"json\"\n").unwrap();
    let out = sluiced(&["--config", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.starts_with("sluiced: config file "), "{err}");
    // ... but with the flag it is.
    let out = sluiced(
        &["--config", file.to_str().unwrap(), "--log-format", "json"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert_fatal(&json_lines(&out)[0], 2, "broken.toml");
    // Usage errors come before any configuration: text.
    let out = sluiced(&["--log-format", "json", "--data-dir", "x"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).starts_with("error: unexpected argument"));
    // Text logs: the message as before.
    let out = sluiced(&["--spool-segment-bytes", "1"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out).trim_end(),
        "sluiced: invalid value for `spool.segment_bytes`: must be at least 1MiB"
    );
}

#[test]
fn with_json_logs_a_failed_start_ends_the_log_with_a_json_line() {
    let dir = tempfile::tempdir().unwrap();
    // A spool folder that is a file: the daemon logs its start, then
    // cannot make the spool (exit status 1).
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, "").unwrap();
    let mut args = vec![
        "--log-format",
        "json",
        "--spool-dir",
        not_a_dir.to_str().unwrap(),
    ];
    args.extend(ANY_PORTS);
    let out = sluiced(&args, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let lines = json_lines(&out);
    assert!(
        lines.len() >= 2,
        "the start is logged too: {}",
        stderr(&out)
    );
    assert_fatal(lines.last().unwrap(), 1, "spool");
    let errors = lines.iter().filter(|l| l["level"] == "ERROR").count();
    assert_eq!(errors, 1, "said once: {}", stderr(&out));
}

#[test]
fn a_mistyped_sluiced_variable_is_named_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluiced.toml");
    std::fs::write(&config, "").unwrap();
    let spec =
        sluice_tests::forward::spec(sluiced_bin!(), dir.path(), &config.display().to_string());
    let line = spec.command_line();
    let mut cmd = Command::new(&line[0]);
    cmd.args(&line[1..])
        .env("SLUICED_SPOOL_FSYNCC", "never")
        .env_remove("SLUICED_SPOOL_FSYNC");
    let d = spec.start_with(&mut cmd);
    let status = d.terminate(std::time::Duration::from_secs(10));
    assert!(status.success());
    let log = sluice_tests::forward::log_of(dir.path());
    assert!(
        log.contains(
            "SLUICED_SPOOL_FSYNCC is not one sluiced reads: did you mean SLUICED_SPOOL_FSYNC?"
        ),
        "{log}"
    );
}
