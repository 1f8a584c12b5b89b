//! `SLUICE_ADMIN` and `--admin` in every form the help shows: `HOST:PORT`,
//! `http://HOST:PORT` (with or without a trailing slash) and, for
//! admin.tls, `https://HOST:PORT`, by every command that takes an admin
//! address, `consume` included (it refused the URL form, even over QUIC
//! where it does not use it: "invalid socket address syntax").

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use sluice_tests::consume::{publish, succeeded};
use sluice_tests::daemon::DaemonSpec;
use sluice_tests::{sluice_bin, sluiced_bin};

/// `sluice args` with `SLUICE_ADMIN` (and `SLUICE_ADMIN_CERT`) as given;
/// killed if it has not finished within 30 s.
fn sluice(args: &[&str], admin: &str, cert: Option<&str>) -> Output {
    let mut cmd = Command::new(sluice_bin!());
    cmd.args(args)
        .env("SLUICE_ADMIN", admin)
        .env_remove("SLUICE_ADMIN_CERT")
        .env_remove("SLUICE_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(c) = cert {
        cmd.env("SLUICE_ADMIN_CERT", c);
    }
    let child = cmd.spawn().expect("start sluice");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(out) => out.expect("sluice output"),
        Err(_) => {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("sluice {args:?} did not finish within 30 s");
        }
    }
}

/// The payloads of `--print line` (or `sluice read`) output.
fn payloads(out: &str) -> Vec<String> {
    out.lines()
        .map(|l| l.rsplit('\t').next().unwrap().to_owned())
        .collect()
}

#[test]
fn every_command_takes_the_admin_address_as_a_url() {
    let dir = tempfile::tempdir().unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), dir.path());
    let _d = spec.start();
    let words = ["a", "b", "c", "d", "e", "f", "g"];
    publish(sluice_bin!(), &spec, "jobs", 1, &words, None);
    let addr = spec.admin.to_string();
    let forms = [
        format!("http://{addr}"),
        format!("http://{addr}/"),
        addr.clone(),
    ];
    for admin in &forms {
        let read = succeeded(&sluice(&["read", "-s", "jobs", "-n", "2"], admin, None));
        assert_eq!(payloads(&read), ["a", "b"], "read with {admin}");
        succeeded(&sluice(
            &["stat", "--every", "0.1", "--count", "1"],
            admin,
            None,
        ));
        let groups = succeeded(&sluice(&["group", "list"], admin, None));
        assert!(!groups.contains("error"), "{groups}");
    }
    // consume over the admin port's push routes, from the variable and
    // from the flag (which wins over it).
    let first = succeeded(&sluice(
        &[
            "consume",
            "jobs",
            "--group",
            "w",
            "--transport",
            "ws",
            "--count",
            "2",
            "--print",
            "line",
        ],
        &forms[0],
        None,
    ));
    assert_eq!(payloads(&first), ["a", "b"], "ws with {}", forms[0]);
    let next = succeeded(&sluice(
        &[
            "consume",
            "jobs",
            "--group",
            "w",
            "--transport",
            "sse",
            "--count",
            "2",
            "--print",
            "line",
        ],
        &forms[1],
        None,
    ));
    assert_eq!(payloads(&next), ["c", "d"], "sse with {}", forms[1]);
    let flag = succeeded(&sluice(
        &[
            "consume",
            "jobs",
            "--group",
            "w",
            "--transport",
            "sse",
            "--count",
            "1",
            "--print",
            "line",
            "--admin",
            &format!("http://{addr}/"),
        ],
        "127.0.0.1:1",
        None,
    ));
    assert_eq!(payloads(&flag), ["e"]);
    // Over QUIC the admin address is not used, but a URL in the
    // environment must not stop it.
    let quic = spec.quic.to_string();
    let cert = spec.server_cert().display().to_string();
    let over_quic = succeeded(&sluice(
        &[
            "consume",
            "jobs",
            "--group",
            "w",
            "--to",
            &quic,
            "--server-cert",
            &cert,
            "--count",
            "2",
            "--print",
            "line",
        ],
        &forms[0],
        None,
    ));
    assert_eq!(payloads(&over_quic), ["f", "g"]);
}

#[test]
fn a_bad_admin_address_is_a_usage_error_naming_the_forms() {
    for bad in [
        "ftp://127.0.0.1:7480",
        "http://127.0.0.1",
        "127.0.0.1:7480/x",
    ] {
        for args in [
            &["read", "-s", "jobs"][..],
            &["consume", "jobs", "--group", "w"][..],
            &["publish", "-s", "jobs", "--count", "1"][..],
        ] {
            let out = sluice(args, bad, None);
            assert_eq!(out.status.code(), Some(2), "{args:?} with {bad}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("expected HOST:PORT, http://HOST:PORT or https://HOST:PORT"),
                "{args:?} with {bad}: {err}"
            );
        }
    }
}

#[test]
fn consume_over_sse_speaks_https_to_a_tls_admin_port() {
    let dir = tempfile::tempdir().unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), dir.path()).admin_tls();
    let _d = spec.start();
    publish(sluice_bin!(), &spec, "jobs", 1, &["x", "y"], None);
    let url = format!("https://{}/", spec.admin);
    let cert = spec.server_cert().display().to_string();
    let got = succeeded(&sluice(
        &[
            "consume",
            "jobs",
            "--group",
            "w",
            "--transport",
            "sse",
            "--count",
            "2",
            "--print",
            "line",
        ],
        &url,
        Some(&cert),
    ));
    assert_eq!(payloads(&got), ["x", "y"]);
    // ws has no TLS client here: said so, not a confusing failure.
    let out = sluice(
        &["consume", "jobs", "--group", "w", "--transport", "ws"],
        &url,
        Some(&cert),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("use --transport sse or quic"), "{err}");
}
