//! The producer client library: an async handle over a sans-IO [`Sender`]
//! driven by a tokio task on a UDP socket.
//!
//! [`Sender`]: crate::proto::Sender

mod producer;

pub use producer::{Producer, ProducerError, ProducerOptions};
