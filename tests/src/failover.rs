//! The producer side of the failover tests (tests/failover.rs,
//! tests/forward_failover.rs): one producer sends a run of messages with
//! batches in flight while its first daemon is killed for good midway.

use std::collections::{BTreeSet, VecDeque};
use std::ops::Range;
use std::time::Duration;

use sluice_transport::client::{Producer, ProducerError};
use tokio::task::JoinHandle;

use crate::load;

/// How a failover run sends.
pub struct Run {
    /// Messages in all (payloads `load::payload(producer, i)`, seqs 1..=total).
    pub total: u64,
    pub batch: u64,
    /// Batches awaiting their ack at once: what is unacked when the first
    /// daemon dies, and is sent again to the next.
    pub in_flight: usize,
    /// The kill comes once this many messages were acked.
    pub kill_after: u64,
    /// Each batch must be acked within this (through the failover).
    pub ack_within: Duration,
}

/// What a run saw.
pub struct Sent {
    /// Every seq acked.
    pub acked: BTreeSet<u64>,
    /// How many were acked when the kill came.
    pub acked_at_kill: u64,
}

impl Run {
    /// Sends the run's messages as producer `id` and calls `kill` once,
    /// after `kill_after` acks; panics if a batch fails or is not acked in
    /// time (the producer is to fail over, not give up).
    pub async fn send(&self, producer: &Producer, id: u64, kill: impl FnOnce()) -> Sent {
        let mut kill = Some(kill);
        let mut acked = BTreeSet::new();
        let mut acked_at_kill = None;
        let mut in_flight: VecDeque<JoinHandle<Result<Range<u64>, ProducerError>>> =
            VecDeque::new();
        let mut next = 0;
        while next < self.total || !in_flight.is_empty() {
            while in_flight.len() < self.in_flight && next < self.total {
                let n = self.batch.min(self.total - next);
                let batch = (next..next + n).map(|i| load::payload(id, i)).collect();
                in_flight.push_back(tokio::spawn(producer.send_batch(batch)));
                next += n;
            }
            let oldest = in_flight.pop_front().expect("a batch in flight");
            let seqs = tokio::time::timeout(self.ack_within, oldest)
                .await
                .unwrap_or_else(|_| panic!("a batch not acked within {:?}", self.ack_within))
                .expect("send task")
                .unwrap_or_else(|e| panic!("a send failed instead of failing over: {e}"));
            acked.extend(seqs);
            if acked.len() as u64 >= self.kill_after {
                if let Some(kill) = kill.take() {
                    kill();
                    acked_at_kill = Some(acked.len() as u64);
                }
            }
        }
        Sent {
            acked,
            acked_at_kill: acked_at_kill.expect("the kill came"),
        }
    }
}
