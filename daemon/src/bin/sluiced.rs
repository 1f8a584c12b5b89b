//! sluiced: the sluice daemon. See `sluiced --help`, and
//! [`sluice_daemon::launch`] for what it does and its exit codes.

use std::process::ExitCode;

use sluice_daemon::config::Args;

fn main() -> ExitCode {
    sluice_daemon::memory::start_trimmer();
    sluice_daemon::launch::main(Args::from_env(), std::future::pending(), |_| {})
}
