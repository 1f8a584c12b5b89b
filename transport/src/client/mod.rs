//! The client library.
//!
//! - [`Producer`]: an async handle over a sans-IO [`Sender`] driven by a
//!   tokio task over a link to the daemon: raw UDP, a QUIC stream, or raw
//!   UDP sealed under a lease obtained over QUIC;
//! - [`Consumer`]: a member of a consumer group, over QUIC, with explicit
//!   acks and at-least-once delivery across reconnects.
//!
//! [`Sender`]: crate::proto::Sender
//!
//! # Failover between daemons
//!
//! [`Producer::connect_any`] takes an ordered list of daemons that all
//! take the stream (each with its own spool; with `[[forward]]`, into the
//! same JetStream stream). What was chosen, and why:
//!
//! - **When it moves.** A session that was open is lost (no packet for the
//!   sender's `idle_timeout`, the link failed, the daemon closed it for a
//!   reason other than refusing us, or nothing became durable for
//!   `credit_timeout` while sends waited): the producer moves to the next
//!   address at once. An attempt that fails (no QUIC handshake, no WELCOME
//!   within `handshake_timeout`) moves it on too. A refusal (unknown
//!   stream, wrong credentials, not allowed) is not retried anywhere: it is
//!   a configuration error, reported as such.
//! - **Round robin, backoff per round.** The list is walked in order and
//!   wraps; only after every daemon failed in a row does it wait (50 ms,
//!   doubling to 2 s), so a dead daemon costs one attempt, not a backoff.
//!   With one address this is the reconnect behaviour producers always had.
//! - **Giving up.** After more than `max_reconnects` rounds of failures in
//!   a row (one address: more than `max_reconnects` failures, as before),
//!   or once no session has been open for `unreachable_timeout`, every
//!   waiting send fails with [`ProducerError::Unreachable`]. Until then
//!   sends queue into the unacked buffer and then wait (backpressure):
//!   nothing is dropped without its send failing.
//! - **Same ids, same seqs.** The unacked messages move to the new session
//!   with their seqs ([`Sender::successor`]), and its HELLO says the first
//!   seq it will send (`first_seq`, in the wire format since the start).
//!   The daemon's receiver starts after the larger of that and its own
//!   durable seq for the producer, so a daemon that never saw the producer
//!   (durable 0) or saw it long ago neither NACKs seqs the producer no
//!   longer holds nor makes it renumber; no protocol change was needed. A
//!   message that reaches JetStream through both daemons has the same
//!   `Nats-Msg-Id` (`{stream}/{producer}/{seq}`) and is stored once.
//! - **The acked mark only grows.** It is the highest seq any daemon acked;
//!   a WELCOME or STATUS reporting less is ignored (the sender never
//!   resends what it dropped, nor reports a message unacked again). A
//!   daemon that holds more (it stored messages whose ack was lost) acks
//!   them at once.
//! - **Where a starting producer stands.** With several addresses, a
//!   producer that starts asks each daemon of the list its durable seq and
//!   numbers after the highest: after a failover the newest messages are at
//!   another daemon than the first. A daemon that is down then cannot be
//!   asked; an application that must rule that out keeps its last acked
//!   seq and passes it as [`ProducerOptions::resume_after`].
//! - **What the application sees.** A `warn` log line per failover (from,
//!   to, reason, messages resent), and [`Producer::status`] /
//!   [`Producer::watch_status`]: the daemon in use, whether a session is
//!   open, the number of failovers and the last one ([`FailoverEvent`]).
//!
//! Messages stored at both daemons (stored at the first, its ack lost with
//! it) are two records in two spools, each forwarded; JetStream keeps one.
//! One trust setting covers every daemon of the list: over QUIC, give a CA
//! (or a certificate they share) rather than one daemon's fingerprint.
//!
//! [`Sender::successor`]: crate::proto::Sender::successor

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
