//! The client library.
//!
//! - [`Producer`]: an async handle over a sans-IO [`Sender`] driven by a
//!   tokio task over a link to the daemon: raw UDP, a QUIC stream, or raw
//!   UDP sealed under a lease obtained over QUIC;
//! - [`Consumer`]: a member of a consumer group, over QUIC, with explicit
//!   acks and at-least-once delivery across reconnects.
//!
//! [`Sender`]: crate::proto::Sender

mod consumer;
mod failover;
mod link;
mod options;
mod producer;
mod tx;

pub use crate::quic::control::{ConsumeMode, StartAt};
pub use consumer::{Consumer, ConsumerError, ConsumerOptions, Delivery, SubscriptionInfo};
pub use options::{ProducerError, ProducerOptions, QuicOptions, Transport};
pub use producer::{FailoverEvent, Producer, ProducerStatus};
pub use tx::{DatagramTx, TxProvider};
