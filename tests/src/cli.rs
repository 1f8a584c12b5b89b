//! Running the `sluice` CLI in a test: with given input, without the
//! test environment's `SLUICE_ADDR`, `SLUICE_ADMIN` and `SLUICE_TOKEN`
//! (a developer's shell may set them).

use std::io::Write as _;
use std::process::{Command, Stdio};

/// Runs `cmd` (a `sluice` command line) with `stdin` as its input: exit
/// code, stdout, stderr.
pub fn run(cmd: &mut Command, stdin: &[u8]) -> (Option<i32>, String, String) {
    let mut child = cmd
        .env_remove("SLUICE_ADDR")
        .env_remove("SLUICE_ADMIN")
        .env_remove("SLUICE_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sluice runs");
    // A sluice that exits before it reads its input closes the pipe: that
    // write's error is no failure.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
