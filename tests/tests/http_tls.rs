//! The admin port over HTTPS (`admin.tls`, issue 19) against real daemons:
//! clients that trust the daemon's certificate (the CLI with
//! `--admin-cert`, a Rust client) are served; one that trusts nothing is
//! refused; plain HTTP to the port is answered a 400 in clear; garbage,
//! handshakes that stall and connections that send nothing are closed in
//! time, counted, and never stop others from being served. A certificate
//! of its own (`admin.tls_cert`, `admin.tls_key`) is served, and a missing
//! file or a key of another certificate stops the start (exit status 2)
//! naming the key.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use sluice_tests::consume::succeeded;
use sluice_tests::daemon::{admin_agent, get_with, Daemon, DaemonSpec};
use sluice_tests::pki::Ca;
use sluice_tests::{sluice_bin, sluiced_bin};

fn sluice(args: &[&str]) -> Output {
    Command::new(sluice_bin!())
        .args(args)
        .env_remove("SLUICE_ADMIN")
        .env_remove("SLUICE_ADMIN_CERT")
        .env_remove("SLUICE_TOKEN")
        .output()
        .expect("run sluice")
}

fn failures(d: &Daemon, reason: &str) -> f64 {
    d.metrics().value(
        "sluice_admin_tls_handshake_failures_total",
        &[("reason", reason)],
    )
}

#[test]
fn https_with_the_daemons_own_certificate_serves_clients_that_trust_it() {
    let dir = tempfile::tempdir().unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), dir.path()).admin_tls();
    let d = spec.start();
    let cert = spec.server_cert();
    let cert_arg = cert.display().to_string();

    // A Rust client trusting exactly the daemon's certificate.
    let agent = admin_agent(Some(&cert)).unwrap();
    let health = get_with(&agent, &spec.admin_url(), "/health").unwrap();
    assert!(health.contains("\"ok\""), "{health}");

    // The CLI: a bare address with --admin-cert, and a base URL.
    let addr = spec.admin.to_string();
    let url = format!("https://{addr}");
    let out = sluice(&[
        "stat",
        "--admin",
        &addr,
        "--admin-cert",
        &cert_arg,
        "--every",
        "0.1",
        "--count",
        "1",
    ]);
    succeeded(&out);
    let input = "one\ntwo\nthree\n";
    let mut publish = Command::new(sluice_bin!())
        .args(["publish", "-s", "tls", "--transport", "http"])
        .args(["--admin", &url, "--admin-cert", &cert_arg])
        .env_remove("SLUICE_ADMIN")
        .env_remove("SLUICE_TOKEN")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    publish
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    succeeded(&publish.wait_with_output().unwrap());
    let read = succeeded(&sluice(&[
        "read",
        "-s",
        "tls",
        "--admin",
        &url,
        "--admin-cert",
        &cert_arg,
    ]));
    let payloads: Vec<&str> = read
        .lines()
        .map(|l| l.rsplit('\t').next().unwrap())
        .collect();
    assert_eq!(payloads, ["one", "two", "three"], "{read}");

    // Trusting nothing but the public CAs: the self-signed certificate is
    // refused (exit status 1), and so is plain HTTP written as http://.
    let out = sluice(&["stat", "--admin", &url, "--count", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let out = sluice(&[
        "stat",
        "--admin",
        &format!("http://{addr}"),
        "--admin-cert",
        &cert_arg,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("https://"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A stop with an HTTPS connection kept alive (the agent's) and a
    // handshake that has not started: clean, and without waiting for them.
    let _stalled = TcpStream::connect(spec.admin).unwrap();
    let t = Instant::now();
    assert!(d.terminate(Duration::from_secs(10)).success());
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[test]
fn plain_http_garbage_and_stalled_handshakes_are_closed_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), dir.path())
        .admin_tls()
        .args(["--admin-idle-timeout", "2s", "--admin-header-timeout", "2s"]);
    // Well under the deadlines (2 s): an answer that waited for a stalled
    // handshake would take longer.
    let prompt = Duration::from_secs(1);
    let d = spec.start();
    let agent = admin_agent(Some(&spec.server_cert())).unwrap();
    let health = || {
        let t = Instant::now();
        get_with(&agent, &spec.admin_url(), "/health").expect("/health over HTTPS");
        t.elapsed()
    };

    // Plain HTTP: a 400 in clear that says why.
    match ureq::get(&format!("http://{}/health", spec.admin))
        .timeout(Duration::from_secs(5))
        .call()
    {
        Err(ureq::Error::Status(400, r)) => {
            let body = r.into_string().unwrap();
            assert!(body.contains("https://"), "{body}");
        }
        other => panic!("plain HTTP to the HTTPS port: {other:?}"),
    }
    assert!(health() < prompt);

    // Bytes that are not TLS at all, and a TLS record that is garbage:
    // closed at once.
    let connect = || {
        let s = TcpStream::connect(spec.admin).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    };
    let closed = |mut s: TcpStream| {
        let mut buf = [0u8; 256];
        // EOF, an alert then EOF, or a reset: anything but a wait.
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let mut junk = connect();
    junk.write_all(&[0x00, 0xff, 0x13, 0x37, 0x42]).unwrap();
    let mut bad_record = connect();
    bad_record
        .write_all(&[
            0x16, 0x03, 0x01, 0x00, 0x08, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4,
        ])
        .unwrap();

    // Handshakes that stall: connections that send nothing, and one that
    // sends half a record header. Others are served meanwhile.
    let silent: Vec<TcpStream> = (0..8).map(|_| connect()).collect();
    let mut half = connect();
    half.write_all(&[0x16, 0x03]).unwrap();
    let t = Instant::now();
    closed(junk);
    closed(bad_record);
    assert!(t.elapsed() < prompt, "closed at once");
    for _ in 0..5 {
        assert!(health() < prompt, "served while handshakes stall");
    }
    // Past the deadlines, the stalled ones are closed.
    let t = Instant::now();
    for s in silent {
        closed(s);
    }
    closed(half);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(health() < prompt);

    assert_eq!(failures(&d, "not_tls"), 2.0, "plain HTTP and junk");
    assert_eq!(failures(&d, "error"), 1.0, "the garbage record");
    assert_eq!(failures(&d, "timeout"), 9.0, "8 silent, 1 half");
    let closed_by = |reason: &str| {
        d.metrics().value(
            "sluice_admin_connections_closed_total",
            &[("reason", reason)],
        )
    };
    // (And perhaps the client's own kept-alive connection, idle as long.)
    assert!(closed_by("idle_timeout") >= 8.0);
    assert_eq!(closed_by("header_timeout"), 1.0);
}

#[test]
fn a_certificate_of_its_own_is_served_and_a_bad_one_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    std::fs::create_dir(&pki).unwrap();
    let ca = Ca::new(&pki, "admin");
    let good = ca.server(&pki, "admin", &["127.0.0.1", "localhost"]);
    let other = ca.server(&pki, "other", &["127.0.0.1"]);
    let spool = dir.path().join("spool");
    let spec = |cert: &Path, key: &Path| {
        DaemonSpec::new(sluiced_bin!(), &spool).args([
            "--admin-tls",
            "true",
            "--admin-tls-cert",
            &cert.display().to_string(),
            "--admin-tls-key",
            &key.display().to_string(),
        ])
    };

    // A key of another certificate; a certificate file that is missing;
    // a certificate while admin.tls is off.
    let refused = |s: DaemonSpec, key: &str| {
        let out = s.run_to_exit(Duration::from_secs(20));
        assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
        assert!(out.stderr.contains(key), "{key}: {}", out.stderr);
    };
    refused(spec(&good.cert, &other.key), "admin.tls_key");
    refused(spec(&pki.join("missing.crt"), &good.key), "admin.tls_cert");
    refused(
        DaemonSpec::new(sluiced_bin!(), &spool).args([
            "--admin-tls-cert",
            &good.cert.display().to_string(),
            "--admin-tls-key",
            &good.key.display().to_string(),
        ]),
        "admin.tls_cert",
    );

    // Its own certificate, trusted through the CA.
    let mut s = spec(&good.cert, &good.key);
    s.admin_trust = Some(ca.pem.clone());
    let _d = s.start();
    let agent = admin_agent(Some(&ca.pem)).unwrap();
    assert!(get_with(&agent, &s.admin_url(), "/health")
        .unwrap()
        .contains("\"ok\""));
    // The QUIC plane's self-signed certificate is not it.
    let quic = admin_agent(Some(&s.server_cert())).unwrap();
    assert!(get_with(&quic, &s.admin_url(), "/health").is_err());
    let out = sluice(&[
        "stat",
        "--admin",
        &s.admin.to_string(),
        "--admin-cert",
        &ca.pem.display().to_string(),
        "--every",
        "0.1",
        "--count",
        "1",
    ]);
    succeeded(&out);
}
