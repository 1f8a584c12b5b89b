//! What an operator sees: `sluiced --help`, `--print-config`, errors that
//! name the key and exit 2, refusing a data folder in use, and the `sluice`
//! CLI publishing, reading back and watching a real daemon.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use sluice_tests::daemon::DaemonSpec;
use sluice_tests::{sluice_bin, sluiced_bin};

fn run(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(bin)
        .args(args)
        .envs(env.iter().copied())
        .env_remove("SLUICED_CONFIG")
        .output()
        .expect("run")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn help_explains_every_option_with_its_key_and_variable() {
    let out = run(sluiced_bin!(), &["--help"], &[]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for needle in [
        "--spool-fsync",
        "[spool.fsync]",
        "SLUICED_SPOOL_FSYNC",
        "--data-listen",
        "[data.listen]",
        "--print-config",
        "127.0.0.1:7401",
        // Under its section, with its default (from the one declaration)
        // as one would write it after the flag.
        "Spool: the durable log [spool]:",
        "[default: always]",
        "[default: 8MiB]",
        "[default: 24h]",
        // The two flags named otherwise than by the rule.
        "--repair",
        "SLUICED_SPOOL_REPAIR",
        "--streams <LIST>",
        "SLUICED_STREAMS=",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
    // `-h`: one line of help for each option.
    let out = run(sluiced_bin!(), &["-h"], &[]);
    let short = text(&out.stdout);
    assert!(
        short.contains("[spool.fsync] When appends are made durable [default: always]"),
        "{short}"
    );
    assert!(
        !short.contains("benchmarks only"),
        "the details are for --help: {short}"
    );
}

#[test]
fn print_config_shows_file_env_and_flags_in_order_of_precedence() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.toml");
    std::fs::write(
        &file,
        "[data]\ncredit = 10\nmax_sessions = 9\n[spool]\nfsync = \"never\"\n\
         segment_bytes = \"64MiB\"\nretention_age = \"7d\"\nscrub_interval = \"12h\"\n",
    )
    .unwrap();
    let out = run(
        sluiced_bin!(),
        &[
            "--config",
            file.to_str().unwrap(),
            "--print-config",
            "--data-credit",
            "30",
            "--admin-page-bytes",
            "1MiB",
        ],
        &[
            ("SLUICED_DATA_CREDIT", "20"),
            ("SLUICED_DATA_MAX_SESSIONS", "11"),
            ("SLUICED_SPOOL_SCRUB_INTERVAL", "36h"),
            ("SLUICED_XDP_QUEUES", "1,2"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains("credit = 30"), "the flag wins: {shown}");
    assert!(
        shown.contains("max_sessions = 11"),
        "env beats the file: {shown}"
    );
    assert!(
        shown.contains("fsync = \"never\""),
        "the file beats defaults: {shown}"
    );
    // Sizes are written as integers, durations as one writes them.
    for line in [
        "segment_bytes = 67108864",
        "page_bytes = 1048576",
        "retention_age = \"7d\"",
        "scrub_interval = \"36h\"",
        "queues = [\n    1,\n    2,\n]",
    ] {
        assert!(shown.contains(line), "{line}: {shown}");
    }
    // What it prints is itself a valid config file.
    let again = dir.path().join("again.toml");
    std::fs::write(&again, &shown).unwrap();
    let out = run(
        sluiced_bin!(),
        &["--config", again.to_str().unwrap(), "--print-config"],
        &[],
    );
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), shown);
}

#[test]
fn the_sample_config_is_valid() {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../daemon/dist/sluiced.toml");
    let out = run(
        sluiced_bin!(),
        &["--config", sample.to_str().unwrap(), "--print-config"],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("dir = \"/var/lib/sluice\""));
}

#[test]
fn bad_configuration_exits_2_and_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (content, key) in [
        ("[spool]\nfsync = \"sometimes\"\n", "spool.fsync"),
        ("[spool]\nfsnyc = \"always\"\n", "fsnyc"),
        ("[data]\nlisten = \"nowhere\"\n", "listen"),
        ("[data]\ncredit = 0\n", "data.credit"),
        ("[log]\nformat = \"xml\"\n", "log.format"),
        (
            "[spool]\nfsync = \"sometimes\"\n",
            "`always`, `interval`, `never`",
        ),
        ("[spool]\nsegment_bytes = \"lots\"\n", "spool.segment_bytes"),
        ("[admin]\nidle_timeout = 60\n", "admin.idle_timeout"),
        ("[spool\n", "s.toml"),
    ] {
        let file = dir.path().join("s.toml");
        std::fs::write(&file, content).unwrap();
        let out = run(sluiced_bin!(), &["--config", file.to_str().unwrap()], &[]);
        assert_eq!(out.status.code(), Some(2), "{content}");
        let err = text(&out.stderr);
        assert!(
            err.contains(key),
            "error for {content:?} does not name {key}: {err}"
        );
    }
    let out = run(sluiced_bin!(), &["--config", "/no/such/file.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/no/such/file.toml"));
    let out = run(sluiced_bin!(), &["--data-credit", "lots"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(sluiced_bin!(), &[], &[("SLUICED_SPOOL_FSYNC", "maybe")]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("spool.fsync")
            && err.contains("SLUICED_SPOOL_FSYNC")
            && err.contains("interval"),
        "{err}"
    );
    let out = run(sluiced_bin!(), &["--spool-segment-bytes", "12 apples"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("MiB"), "{}", text(&out.stderr));
}

#[test]
fn repair_is_a_switch_that_only_turns_repair_on() {
    let dir = tempfile::tempdir().unwrap();
    let on = dir.path().join("on.toml");
    std::fs::write(&on, "[spool]\nrepair = true\n").unwrap();
    let on = on.to_str().unwrap();
    let repair = |args: &[&str], env: &[(&str, &str)]| {
        let mut all = vec!["--print-config"];
        all.extend_from_slice(args);
        let out = run(sluiced_bin!(), &all, env);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout).contains("repair = true")
    };
    assert!(!repair(&[], &[]));
    assert!(repair(&["--repair"], &[]));
    assert!(
        repair(&["--config", on], &[]),
        "absent, the file's value stays"
    );
    assert!(repair(&[], &[("SLUICED_SPOOL_REPAIR", "true")]));
    assert!(
        repair(&["--config", on], &[("SLUICED_SPOOL_REPAIR", "false")]),
        "a switch can only turn repair on"
    );
    let out = run(sluiced_bin!(), &["--repair", "yes"], &[]);
    assert_eq!(out.status.code(), Some(2), "--repair takes no value");
}

#[test]
fn a_data_folder_in_use_or_a_busy_port_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), dir.path());
    let d = spec.start();
    // Same folder, other ports.
    let other = DaemonSpec::new(sluiced_bin!(), dir.path()).command_line();
    let out = Command::new(&other[0]).args(&other[1..]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("in use") && err.contains(&format!("pid {}", d.pid())),
        "{err}"
    );
    // Another folder, the same data port.
    let dir2 = tempfile::tempdir().unwrap();
    let mut busy = DaemonSpec::new(sluiced_bin!(), dir2.path());
    busy.data = spec.data;
    let line = busy.command_line();
    let out = Command::new(&line[0]).args(&line[1..]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains(&spec.data.to_string()), "{err}");
    assert!(d.terminate(Duration::from_secs(15)).success());
}

#[test]
fn publish_read_and_stat_against_a_running_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), dir.path());
    let d = spec.start();
    // The default path: authenticate over QUIC (anonymously: loopback, no
    // principals), publish over sealed raw UDP, trusting the daemon's
    // self-signed certificate from its file.
    let quic = spec.quic.to_string();
    let cert = spec.server_cert().display().to_string();
    let admin = spec.admin.to_string();
    // Lines from stdin, as producer 7.
    let mut child = Command::new(sluice_bin!())
        .args([
            "publish",
            "-s",
            "tour",
            "--to",
            &quic,
            "--server-cert",
            &cert,
        ])
        .args(["--producer", "7"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"first\nsecond \xe2\x9c\x93\nthird\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary = text(&out.stderr);
    assert!(
        summary.contains("published 3 messages") && summary.contains("durable"),
        "{summary}"
    );
    // Generated messages, as producer 8.
    let out = run(
        sluice_bin!(),
        &[
            "publish",
            "-s",
            "tour",
            "--to",
            &quic,
            "--server-cert",
            &cert,
            "--transport",
            "quic",
            "--producer",
            "8",
            "--count",
            "1000",
            "--size",
            "64",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Read back through the daemon.
    let out = run(
        sluice_bin!(),
        &["read", "-s", "tour", "--admin", &admin, "-n", "3"],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 3);
    for (i, (line, payload)) in lines.iter().zip(["first", "second ✓", "third"]).enumerate() {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f[0], i.to_string());
        assert_eq!(f[2], "producer=7");
        assert_eq!(f[3], format!("seq={}", i + 1));
        assert_eq!(f[4], payload);
    }
    let out = run(
        sluice_bin!(),
        &[
            "read", "-s", "tour", "--admin", &admin, "--from", "3", "--format", "json",
        ],
        &[],
    );
    let records: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 1000);
    assert_eq!(records[999]["seq"], 1000);
    assert_eq!(records[999]["producer"], 8);
    // stat shows the stream and its counters.
    let out = run(
        sluice_bin!(),
        &["stat", "--admin", &admin, "--count", "1", "--every", "0.2"],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stat = text(&out.stdout);
    assert!(
        stat.contains("tour") && stat.contains("fsync p50/p99"),
        "{stat}"
    );
    // The files cannot be read while the daemon owns them...
    let out = run(
        sluice_bin!(),
        &[
            "read",
            "-s",
            "tour",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("in use"));
    // ... and can once it has stopped.
    assert!(d.terminate(Duration::from_secs(15)).success());
    let out = run(
        sluice_bin!(),
        &[
            "read",
            "-s",
            "tour",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "-n",
            "1",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).ends_with("producer=7\tseq=1\tfirst\n"));
    // A stream that does not exist, and a daemon that is not there.
    let out = run(
        sluice_bin!(),
        &["read", "-s", "tour", "--admin", &admin],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot reach"),
        "{}",
        text(&out.stderr)
    );
}

/// The README's configuration reference: each row's cells (key, flag /
/// variable, default, meaning), by the keys its first cell names.
fn readme_rows() -> Vec<(Vec<String>, String, String)> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let table = readme
        .split_once("### Configuration reference")
        .expect("README has a configuration reference")
        .1;
    let mut rows = Vec::new();
    for line in table.lines().skip_while(|l| !l.starts_with('|')) {
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.split(" | ").collect();
        if cells.len() < 4 || !cells[0].contains('`') {
            continue;
        }
        let keys = cells[0]
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        rows.push((keys, cells[1].to_owned(), cells[2].to_owned()));
    }
    rows
}

#[test]
fn the_readme_names_each_keys_flag_variable_and_default_as_declared() {
    // The defaults as `--print-config` writes them.
    let out = run(sluiced_bin!(), &["--print-config"], &[]);
    let mut defaults = std::collections::HashMap::new();
    let mut section = String::new();
    for line in text(&out.stdout).lines() {
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_owned();
        } else if let Some((key, value)) = line.split_once(" = ") {
            // The README shows a string without its quotes, but for "".
            let shown = match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
                Some(v) if !v.is_empty() => v.to_owned(),
                _ => value.to_owned(),
            };
            defaults.insert(format!("{section}.{key}"), shown);
        }
    }
    let rows = readme_rows();
    let command = sluice_daemon::config::Args::command();
    let mut checked = 0;
    for a in command.get_arguments() {
        let id = a.get_id().as_str();
        if !id.contains('.') {
            continue;
        }
        let Some((_, names, default)) = rows
            .iter()
            .find(|(keys, _, _)| keys.iter().any(|k| k == id))
        else {
            panic!("README's configuration reference has no row for `{id}`");
        };
        let long = format!("`--{}`", a.get_long().unwrap());
        let env = format!("`{}`", a.get_env().unwrap().to_string_lossy());
        assert!(
            names.contains(&long) && names.contains(&env),
            "README's row for `{id}` should name {long} and {env}: {names}"
        );
        let value = format!("`{}`", defaults[id]);
        assert!(
            default.contains(&value),
            "README's row for `{id}` should give the default {value}: {default}"
        );
        checked += 1;
    }
    assert!(checked > 50, "only {checked} flags checked");
}

#[test]
fn the_readme_documents_every_configuration_key() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let out = run(sluiced_bin!(), &["--print-config"], &[]);
    let mut section = String::new();
    let mut keys = 0;
    for line in text(&out.stdout).lines() {
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_owned();
        } else if let Some((key, _)) = line.split_once(" = ") {
            let full = format!("`{section}.{key}`");
            assert!(
                readme.contains(&full),
                "README's configuration reference lacks {full}"
            );
            keys += 1;
        }
    }
    assert!(keys > 15, "only {keys} keys in --print-config");
}
