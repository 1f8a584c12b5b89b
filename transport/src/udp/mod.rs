//! The UDP datapath: sockets set up for bulk traffic, batched receive and
//! send (recvmmsg/sendmmsg), and a driver that runs a receiving
//! [`Endpoint`](crate::proto::Endpoint) on a socket.

mod batch;
mod driver;
mod socket;

pub use batch::{RecvBatch, SendBatch};
pub use driver::{serve, Control, Owner, ServeHandle, ServeStats, TICK};
pub use socket::{bind, buffer_sizes, SocketOptions, UdpError};
