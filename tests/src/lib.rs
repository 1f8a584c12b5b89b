//! Support code for sluice's end-to-end tests: real `sluiced` processes on
//! loopback, and checks of what ended up in their spool.

pub mod check;
pub mod cli;
pub mod consume;
pub mod daemon;
pub mod failover;
pub mod flood;
pub mod forward;
pub mod grpc;
pub mod load;
pub mod nats_jwt;
pub mod pki;
pub mod privilege;

/// A two-thread tokio runtime for a synchronous test that drives async
/// clients (the NATS tests: they block on the cluster kit's processes
/// between async steps).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Path of the `sluiced` built for these tests (use from integration tests).
#[macro_export]
macro_rules! sluiced_bin {
    () => {
        std::path::Path::new(env!("CARGO_BIN_EXE_e2e-sluiced"))
    };
}

/// Path of the `sluice` CLI built for these tests.
#[macro_export]
macro_rules! sluice_bin {
    () => {
        std::path::Path::new(env!("CARGO_BIN_EXE_e2e-sluice"))
    };
}
