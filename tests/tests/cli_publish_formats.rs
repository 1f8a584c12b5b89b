//! `sluice publish --format lines|raw|length-prefixed` against a real
//! daemon: any bytes go in (not only UTF-8) and come back as they went,
//! over QUIC and over HTTP; raw stdin and each raw file are one message;
//! a cut frame is an error that says where.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use base64::Engine;
use sluice_tests::daemon::DaemonSpec;
use sluice_tests::{sluice_bin, sluiced_bin};

/// `sluice publish -s STREAM ARGS` to the daemon of `spec`, `input` on
/// its stdin.
fn publish(spec: &DaemonSpec, stream: &str, args: &[&str], input: &[u8]) -> Output {
    let quic = spec.quic.to_string();
    let cert = spec.server_cert().display().to_string();
    let admin = spec.admin.to_string();
    let mut child = Command::new(sluice_bin!())
        .args([
            "publish",
            "-s",
            stream,
            "--to",
            &quic,
            "--server-cert",
            &cert,
        ])
        .args(["--admin", &admin])
        .args(args)
        .env_remove("SLUICE_ADMIN")
        .env_remove("SLUICE_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sluice publish");
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The payloads of `stream`, as `sluice read --format json` gives them.
fn payloads(spec: &DaemonSpec, stream: &str) -> Vec<Vec<u8>> {
    let admin = spec.admin.to_string();
    let out = ok(Command::new(sluice_bin!())
        .args(["read", "-s", stream, "--admin", &admin, "--format", "json"])
        .env_remove("SLUICE_ADMIN")
        .output()
        .unwrap());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            base64::engine::general_purpose::STANDARD
                .decode(v["payload"].as_str().unwrap())
                .unwrap()
        })
        .collect()
}

/// `messages` as length-prefixed frames (u32 big-endian length, bytes).
fn frames(messages: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    for m in messages {
        v.extend_from_slice(&(m.len() as u32).to_be_bytes());
        v.extend_from_slice(m);
    }
    v
}

#[test]
fn any_bytes_go_in_as_lines_raw_or_frames_and_come_back_as_they_went() {
    let dir = tempfile::tempdir().unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), dir.path());
    let _d = spec.start();

    // Lines that are not UTF-8 (it refused them: "stream did not contain
    // valid UTF-8"), with \r\n and a last line without its newline.
    ok(publish(
        &spec,
        "lines",
        &["--producer", "1"],
        b"caf\xe9\nplain\r\n\xff\xfe\x00\nlast",
    ));
    assert_eq!(
        payloads(&spec, "lines"),
        [&b"caf\xe9"[..], b"plain", b"\xff\xfe\x00", b"last"]
    );

    // Raw: all of stdin is one message, newlines and all; over HTTP too.
    let blob: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    ok(publish(
        &spec,
        "raw",
        &["--format", "raw", "--producer", "2"],
        &blob,
    ));
    ok(publish(
        &spec,
        "raw",
        &["--format", "raw", "--transport", "http"],
        b"line one\nline two\n",
    ));
    assert_eq!(payloads(&spec, "raw"), [&blob[..], b"line one\nline two\n"]);

    // Raw files: each file is one message, in order.
    let a = dir.path().join("a.bin");
    let b = dir.path().join("b.bin");
    std::fs::write(&a, b"\x00first\nfile\x80").unwrap();
    std::fs::write(&b, b"second").unwrap();
    ok(publish(
        &spec,
        "files",
        &[
            "--format",
            "raw",
            "--producer",
            "3",
            "-f",
            a.to_str().unwrap(),
            "-f",
            b.to_str().unwrap(),
        ],
        b"",
    ));
    assert_eq!(
        payloads(&spec, "files"),
        [&b"\x00first\nfile\x80"[..], b"second"]
    );

    // Length-prefixed: messages with newlines inside and an empty one.
    let messages: [&[u8]; 3] = [b"x\ny", b"", b"\xff\xfe\n"];
    ok(publish(
        &spec,
        "frames",
        &["--format", "length-prefixed", "--producer", "4"],
        &frames(&messages),
    ));
    ok(publish(
        &spec,
        "frames",
        &["--format", "length-prefixed", "--transport", "http"],
        &frames(&[b"over http"]),
    ));
    assert_eq!(
        payloads(&spec, "frames"),
        [&b"x\ny"[..], b"", b"\xff\xfe\n", b"over http"]
    );
}

#[test]
fn a_cut_frame_or_a_bad_format_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), dir.path());
    let _d = spec.start();
    let mut input = frames(&[b"whole"]);
    input.extend_from_slice(&10u32.to_be_bytes());
    input.extend_from_slice(b"cut");
    let out = publish(&spec, "cut", &["--format", "length-prefixed"], &input);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("stdin: the frame at byte 9 says 10 bytes, but the input ends after 3"),
        "{err}"
    );
    // Text is not frames: its first bytes make a length past any message.
    let out = publish(&spec, "cut", &["--format", "length-prefixed"], b"hello\n");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("more than a message can be"), "{err}");
    // Usage: an unknown format, or a format with generated messages.
    for args in [
        &["--format", "csv"][..],
        &["--format", "raw", "--count", "3"][..],
    ] {
        let out = publish(&spec, "cut", args, b"");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}
