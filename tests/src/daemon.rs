//! A real `sluiced` process for a test: the launcher of `sluice-testkit`
//! (start it with [`crate::sluiced_bin!`] as the program).

pub use sluice_testkit::daemon::{
    admin_agent, free_tcp, free_udp, get_with, Daemon, DaemonSpec, Exited, Target,
};
