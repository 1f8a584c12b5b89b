//! The producer client library: an async handle over a sans-IO [`Sender`]
//! driven by a tokio task over a link to the daemon: raw UDP, a QUIC stream,
//! or raw UDP sealed under a lease obtained over QUIC.
//!
//! [`Sender`]: crate::proto::Sender

mod link;
mod options;
mod producer;
mod tx;

pub use options::{ProducerError, ProducerOptions, QuicOptions, Transport};
pub use producer::Producer;
pub use tx::{DatagramTx, TxProvider};
