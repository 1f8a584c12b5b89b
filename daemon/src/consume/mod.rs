//! Consumers: the durable messages of a stream delivered to the systems
//! that process them, with explicit acks, redelivery after a deadline, a
//! dead-letter stream, groups that share work, and credit-based
//! backpressure.
//!
//! Like the transport, the logic is split from the I/O:
//! - [`ranges`]: offsets acked above a group's floor, as ranges;
//! - [`group`]: one group's sans-IO state machine (members, credits,
//!   deadlines, redelivery, dead letters, conflation), fed `now` and
//!   records, asked what to deliver and what to journal;
//! - [`store`]: a group's durable state (journal and snapshot);
//! - [`dead_letter`]: the envelope a dead-lettered message is stored in;
//! - [`budget`]: the credit push consumers may hold, clamped per member,
//!   per connection and in all, whatever they declare;
//! - [`service`]: a daemon's groups and the handles through which QUIC and
//!   HTTP consumers join them; `task`: the task that drives one group's
//!   machine over the spool;
//! - [`changes`]: which of a group's settings a reload changed, and when
//!   each takes effect.

pub mod budget;
pub mod changes;
pub mod dead_letter;
pub mod group;
mod handle;
mod metrics;
mod offset_map;
pub mod ranges;
pub mod service;
pub mod store;
mod task;
