//! Every `sluice` subcommand that takes a stream takes it the same two
//! ways (issue 22, point 4): as its first argument or with `-s`/`--stream`
//! — one of them, not both, not neither (usage errors, exit 2); a group
//! command takes STREAM GROUP, or -s and -g for either.

use std::process::Command;
use std::time::Duration;

use sluice_tests::cli;
use sluice_tests::daemon::DaemonSpec;
use sluice_tests::{sluice_bin, sluiced_bin};

fn sluice(args: &[&str], stdin: &[u8]) -> (Option<i32>, String, String) {
    cli::run(Command::new(sluice_bin!()).args(args), stdin)
}

#[test]
fn a_stream_is_named_as_the_first_argument_or_with_s_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), dir.path());
    let d = spec.start();
    let (quic, admin) = (spec.quic.to_string(), spec.admin.to_string());
    let cert = spec.server_cert().display().to_string();
    let to = ["--to", &quic, "--server-cert", &cert, "--transport", "quic"];
    // publish: -s (as before) and positional.
    let mut args = vec!["publish", "-s", "orders", "--producer", "1"];
    args.extend(to);
    let (code, _, err) = sluice(&args, b"a\nb\n");
    assert_eq!(code, Some(0), "publish -s: {err}");
    let mut args = vec!["publish", "orders", "--producer", "2"];
    args.extend(to);
    let (code, _, err) = sluice(&args, b"c\n");
    assert_eq!(code, Some(0), "publish STREAM: {err}");
    // read, stream info, dlq list, consume: both ways, the same answer.
    for (a, b) in [
        (
            vec!["read", "-s", "orders", "--admin", &admin],
            vec!["read", "orders", "--admin", &admin],
        ),
        (
            vec![
                "stream", "info", "-s", "orders", "--json", "--admin", &admin,
            ],
            vec!["stream", "info", "orders", "--json", "--admin", &admin],
        ),
        (
            vec!["dlq", "list", "--stream", "orders", "--admin", &admin],
            vec!["dlq", "list", "orders", "--admin", &admin],
        ),
    ] {
        let (ca, oa, ea) = sluice(&a, b"");
        let (cb, ob, eb) = sluice(&b, b"");
        assert_eq!((ca, cb), (Some(0), Some(0)), "{a:?}: {ea} / {b:?}: {eb}");
        assert_eq!(oa, ob, "{a:?} and {b:?} differ");
    }
    let (_, records, _) = sluice(&["read", "orders", "--admin", &admin], b"");
    assert_eq!(records.lines().count(), 3, "{records}");
    let mut consume = vec!["consume", "-s", "orders", "-g", "g1", "--count", "3"];
    consume.extend(["--to", &quic, "--server-cert", &cert]);
    let (code, _, err) = sluice(&consume, b"");
    assert_eq!(code, Some(0), "consume -s: {err}");
    // A group: STREAM GROUP, or -s and -g for either.
    for args in [
        vec![
            "group", "reset", "-s", "orders", "-g", "g1", "--start", "earliest",
        ],
        vec!["group", "reset", "orders", "g1", "--start", "latest"],
        vec![
            "group", "reset", "-s", "orders", "g1", "--start", "earliest",
        ],
    ] {
        let mut args = args.clone();
        args.extend(["--admin", &admin]);
        let (code, out, err) = sluice(&args, b"");
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert!(out.contains("group g1 of orders"), "{out}");
    }
    for args in [
        vec!["group", "reset", "orders", "--start", "earliest"],
        vec![
            "group", "reset", "orders", "g1", "extra", "--start", "earliest",
        ],
    ] {
        let mut args = args.clone();
        args.extend(["--admin", &admin]);
        let (code, _, err) = sluice(&args, b"");
        assert_eq!(code, Some(2), "{args:?}: {err}");
    }
    let (code, out, err) = sluice(
        &["group", "delete", "orders", "-g", "g1", "--admin", &admin],
        b"",
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("deleted group g1 of orders"), "{out}");
    // Both, or neither: usage errors.
    let (code, _, err) = sluice(&["read", "orders", "-s", "other", "--admin", &admin], b"");
    assert_eq!(code, Some(2), "both: {err}");
    assert!(err.contains("cannot be used with"), "{err}");
    let (code, _, err) = sluice(&["stream", "info", "--admin", &admin], b"");
    assert_eq!(code, Some(2), "neither: {err}");
    assert!(err.contains("STREAM"), "{err}");
    let status = d.terminate(Duration::from_secs(10));
    assert!(status.success());
}
