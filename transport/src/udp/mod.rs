//! The UDP datapath: sockets set up for bulk traffic, batched receive and
//! send (recvmmsg/sendmmsg), and the socket as a served endpoint's
//! [`PacketIo`](crate::serve::PacketIo).

mod batch;
mod io;
mod socket;

pub use batch::{RecvBatch, SendBatch};
pub use io::UdpIo;
pub use socket::{bind, bind_std, buffer_sizes, SocketOptions, UdpError};
