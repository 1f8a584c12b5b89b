//! A real `sluiced` process for a test: the launcher of `sluice-testkit`
//! (start it with [`crate::sluiced_bin!`] as the program).

pub use sluice_testkit::daemon::{free_tcp, free_udp, Daemon, DaemonSpec, Exited, Target};
