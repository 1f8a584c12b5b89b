//! How the CLI trusts a daemon on loopback without being told (issue 22,
//! point 4): `--server-cert`, else `SLUICE_SERVER_CERT`, else the
//! daemon's self-signed certificate where a daemon of this machine keeps
//! it (`./sluice-data/tls/server.crt`, `/var/lib/sluice/tls/server.crt`);
//! from any folder, and when none is found the error says where it looked.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sluice_tests::cli;
use sluice_tests::daemon::DaemonSpec;
use sluice_tests::{sluice_bin, sluiced_bin};

/// `sluice publish` of one line to the daemon's QUIC address, run in
/// folder `cwd` with `env`: exit code and stderr.
fn publish(spec: &DaemonSpec, cwd: &Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(sluice_bin!());
    cmd.args([
        "publish",
        "-s",
        "orders",
        "--producer",
        "5",
        "--transport",
        "quic",
    ])
    .args(["--to", &spec.quic.to_string()])
    .current_dir(cwd)
    .env_remove("SLUICE_SERVER_CERT")
    .envs(env.iter().copied());
    let (code, _, err) = cli::run(&mut cmd, b"one line\n");
    (code, err)
}

#[test]
fn the_cli_finds_the_daemon_certificate_from_any_folder_or_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), &dir.path().join("daemon"));
    let d = spec.start();
    let elsewhere = tempfile::tempdir().unwrap();
    if Path::new("/var/lib/sluice/tls/server.crt").exists() {
        eprintln!("a service's certificate is on this machine: the not-found case is not tried");
    } else {
        let (code, err) = publish(&spec, elsewhere.path(), &[]);
        assert_eq!(code, Some(1), "{err}");
        for said in [
            "./sluice-data/tls/server.crt",
            "/var/lib/sluice/tls/server.crt",
            "SLUICE_SERVER_CERT",
        ] {
            assert!(err.contains(said), "{said:?} not in: {err}");
        }
    }
    let cert = spec.server_cert().display().to_string();
    let (code, err) = publish(&spec, elsewhere.path(), &[("SLUICE_SERVER_CERT", &cert)]);
    assert_eq!(code, Some(0), "with SLUICE_SERVER_CERT: {err}");
    // In the folder a daemon of the embedded defaults was started in.
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join("sluice-data/tls")).unwrap();
    std::fs::copy(
        spec.server_cert(),
        home.path().join("sluice-data/tls/server.crt"),
    )
    .unwrap();
    let (code, err) = publish(&spec, home.path(), &[]);
    assert_eq!(code, Some(0), "from ./sluice-data: {err}");
    let status = d.terminate(Duration::from_secs(10));
    assert!(status.success());
}
