//! How `sluiced` says it cannot start: a guessed flag is told the right
//! one (exit status 2, as every usage error), and with `log.format =
//! "json"` a fatal error is one JSON line like the rest of its log.

use std::process::{Command, Output};

use sluice_tests::sluiced_bin;

fn sluiced(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(sluiced_bin!())
        .args(args)
        .envs(env.iter().copied())
        .env_remove("SLUICED_CONFIG")
        .env_remove("SLUICED_LOG_FORMAT")
        .env_remove("SLUICED_LOG_LEVEL")
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
