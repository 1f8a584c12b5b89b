//! `sluice consume` against a real daemon: printing and acking, pull mode,
//! a command per message (ack on success, nack and redelivery on
//! failure), a clean stop on SIGTERM that keeps the acks, and its errors.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sluice_tests::consume::{publish, succeeded};
use sluice_tests::daemon::{Daemon, DaemonSpec};
use sluice_tests::{sluice_bin, sluiced_bin};

fn start(dir: &Path) -> (DaemonSpec, Daemon) {
    let spec = DaemonSpec::new(sluiced_bin!(), dir);
    let d = spec.start();
    (spec, d)
}

/// `sluice consume STREAM` with the flags to reach `spec`'s daemon.
fn consume(spec: &DaemonSpec, stream: &str, args: &[&str]) -> Command {
    let mut c = Command::new(sluice_bin!());
    c.args(["consume", stream, "--to", &spec.quic.to_string()])
        .args(["--server-cert", &spec.server_cert().display().to_string()])
        .args(args)
        .env_remove("SLUICE_TOKEN")
        .env_remove("SLUICE_ADDR");
    c
}

/// Runs a consume that must end by itself within `limit`.
fn run(mut c: Command, limit: Duration) -> Output {
    let child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sluice consume");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("sluice consume output"),
        Err(_) => {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("sluice consume did not finish within {limit:?}");
        }
    }
}

/// `offset delivery producer seq payload` of `--print line` output.
fn lines(out: &str) -> Vec<(u64, u32, u64, u64, String)> {
    out.lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 5, "{l:?}");
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
                f[4].to_owned(),
            )
        })
        .collect()
}

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn consume_prints_acks_and_continues_where_the_group_is() {
    let dir = tempfile::tempdir().unwrap();
    let (spec, d) = start(dir.path());
    publish(
        sluice_bin!(),
        &spec,
        "jobs",
        7,
        &["one", "two", "three", "four", "five"],
        None,
    );
    // Payloads only, by default.
    let out = succeeded(&run(
        consume(&spec, "jobs", &["--group", "g", "--count", "3"]),
        LIMIT,
    ));
    assert_eq!(out, "one\ntwo\nthree\n");
    // Acked ones are not delivered again: the group goes on at 3.
    let out = succeeded(&run(
        consume(
            &spec,
            "jobs",
            &["-g", "g", "--count", "2", "--print", "line"],
        ),
        LIMIT,
    ));
    assert_eq!(
        lines(&out),
        [
            (3, 1, 7, 4, "four".to_owned()),
            (4, 1, 7, 5, "five".to_owned())
        ]
    );
    // Another group gets everything; --start applies to a new group.
    let out = succeeded(&run(
        consume(
            &spec,
            "jobs",
            &["-g", "other", "--start", "offset:4", "--count", "1"],
        ),
        LIMIT,
    ));
    assert_eq!(out, "five\n");
    // Pull mode, JSON lines; a message published while it waits.
    let waiting = consume(
        &spec,
        "jobs",
        &[
            "-g", "g", "--pull", "--batch", "10", "--wait", "2s", "--count", "1", "--print", "json",
        ],
    );
    let pulled = std::thread::spawn(move || run(waiting, LIMIT));
    std::thread::sleep(Duration::from_millis(500));
    publish(sluice_bin!(), &spec, "jobs", 7, &["six"], None);
    let out = succeeded(&pulled.join().unwrap());
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["offset"], 5, "{v}");
    assert_eq!(v["delivery"], 1, "{v}");
    assert_eq!(v["seq"], 6, "{v}");
    assert_eq!(v["payload"], "c2l4", "{v}");
    // The group's acks are durable: its backlog is empty.
    let m = d.metrics();
    let l = [("stream", "jobs"), ("group", "g")];
    assert_eq!(m.value("sluice_group_backlog_messages", &l), 0.0);
    assert_eq!(m.value("sluice_group_acked_total", &l), 6.0);
    assert!(d.terminate(Duration::from_secs(15)).success());
}

#[test]
fn a_failed_command_nacks_and_the_message_comes_again() {
    let dir = tempfile::tempdir().unwrap();
    let (spec, d) = start(dir.path());
    publish(sluice_bin!(), &spec, "jobs", 7, &["payload x"], None);
    let seen = dir.path().join("seen");
    // Fails on the first delivery, succeeds on the second.
    let script = format!(
        "printf '%s %s %s %s ' \"$SLUICE_OFFSET\" \"$SLUICE_DELIVERY\" \"$SLUICE_PRODUCER\" \"$SLUICE_SEQ\" >> {f}; \
         cat >> {f}; echo >> {f}; test \"$SLUICE_DELIVERY\" -ge 2",
        f = seen.display()
    );
    let started = Instant::now();
    let o = run(
        consume(
            &spec,
            "jobs",
            &[
                "-g",
                "g",
                "--exec",
                &script,
                "--nack-delay",
                "300ms",
                "--count",
                "1",
            ],
        ),
        LIMIT,
    );
    assert_eq!(succeeded(&o), "", "nothing printed with --exec");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("offset 0 (delivery 1)") && err.contains("nacked"),
        "{err}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "redelivered before the nack delay"
    );
    assert_eq!(
        std::fs::read_to_string(&seen).unwrap(),
        "0 1 7 1 payload x\n0 2 7 1 payload x\n"
    );

    // `false` never acks: the consumer nacks until stopped (SIGTERM), and
    // the message goes to the next member.
    publish(sluice_bin!(), &spec, "jobs", 7, &["payload y"], None);
    let mut child: Child = consume(
        &spec,
        "jobs",
        &["-g", "g", "--exec", "false", "--nack-delay", "1s"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let (tx, rx) = mpsc::channel();
    let err = BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for l in err.lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let limit = Instant::now() + LIMIT;
    loop {
        let l = rx
            .recv_timeout(limit.saturating_duration_since(Instant::now()))
            .expect("the consumer said it nacked");
        if l.contains("nacked") {
            assert!(l.contains("offset 1 (delivery 1)"), "{l}");
            break;
        }
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait(&mut child, Duration::from_secs(15));
    assert!(status.success(), "SIGTERM: {status}");
    let out = succeeded(&run(
        consume(
            &spec,
            "jobs",
            &["-g", "g", "--count", "1", "--print", "line"],
        ),
        LIMIT,
    ));
    let got = lines(&out);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].0, got[0].4.as_str()), (1, "payload y"));
    assert!(got[0].1 >= 2, "delivered again: {got:?}");
    assert!(d.terminate(Duration::from_secs(15)).success());
}

fn wait(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let limit = Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > limit {
            let _ = child.kill();
            panic!("sluice consume did not stop within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_stops_cleanly_and_keeps_the_acks() {
    let dir = tempfile::tempdir().unwrap();
    let (spec, d) = start(dir.path());
    publish(sluice_bin!(), &spec, "jobs", 7, &["a", "b", "c"], None);
    let mut child = consume(&spec, "jobs", &["-g", "g", "--print", "line"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for l in out.lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(
            rx.recv_timeout(LIMIT)
                .expect("the consumer printed the messages"),
        );
    }
    assert!(got[2].starts_with("2\t1\t7\t3\tc"), "{got:?}");
    // Stopped right after printing: the acks are made durable on the way
    // out (no --count, no sync of ours before).
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait(&mut child, Duration::from_secs(15));
    assert!(status.success(), "SIGTERM: {status}");
    publish(sluice_bin!(), &spec, "jobs", 7, &["d"], None);
    let out = succeeded(&run(
        consume(
            &spec,
            "jobs",
            &["-g", "g", "--count", "1", "--print", "line"],
        ),
        LIMIT,
    ));
    assert_eq!(out, "3\t1\t7\t4\td\n");
    assert!(d.terminate(Duration::from_secs(15)).success());
}

#[test]
fn bad_usage_exits_2_and_failures_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let (spec, d) = start(dir.path());
    for args in [
        &["-g", "g", "--start", "yesterday"][..],
        &["--count", "1"][..],
        &["-g", "g", "--print", "xml"][..],
        &["-g", "g", "--batch", "5"][..],
    ] {
        let o = run(consume(&spec, "jobs", args), LIMIT);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
    }
    let o = run(consume(&spec, "nope", &["-g", "g", "--count", "1"]), LIMIT);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("nope") || err.contains("no such stream"),
        "{err}"
    );
    let o = run(
        consume(&spec, "jobs", &["-g", ".bad", "--count", "1"]),
        LIMIT,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(d.terminate(Duration::from_secs(15)).success());
}
