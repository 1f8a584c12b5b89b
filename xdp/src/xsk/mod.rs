//! AF_XDP sockets over libc: a UMEM (one anonymous mapping of equal-sized
//! frames), the fill/RX rings that carry frames in and the TX/completion
//! rings that carry them out, and a socket bound to one queue.
//!
//! - [`sys`]: the uapi structs and constants (include/uapi/linux/if_xdp.h);
//! - `umem`: the mappings, frame addressing;
//! - `ring`: producer/consumer rings shared with the kernel;
//! - [`XskSocket`]: open, receive, transmit, statistics;
//! - [`pin_current_thread`], [`thread_cpu_time`]: for queue threads.

mod config;
mod error;
mod ring;
mod socket;
mod stats;
pub mod sys;
mod thread;
mod umem;

pub use config::{BindMode, BusyPoll, XskConfig};
pub use error::XskError;
pub use socket::XskSocket;
pub use stats::XdpStatistics;
pub use thread::{pin_current_thread, thread_cpu_time};
