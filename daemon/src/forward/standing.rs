//! Where the target stands for each producer: the seq of its last message
//! in the JetStream stream, read from the stream (its last message on the
//! producer's own subject, `Sluice-Seq` header).
//!
//! Why: JetStream drops a repeated `Nats-Msg-Id` only within the stream's
//! duplicate window (2 minutes for a stream the forward creates). A daemon
//! that was down longer, or a producer that failed over to another daemon,
//! would store again what is already there. A forward's messages reach the
//! stream in each producer's order (fast-ingest batches with gap = fail),
//! so everything of a producer up to its last stored seq is stored: what a
//! forward is about to send at or below it is acked without sending.
//! Read once per producer after the forward (re)starts or a batch fails —
//! not per message — and only when the subject has `{producer}` (else the
//! duplicate window is the only guard; daemon/FORWARD.md).

use std::collections::HashMap;

use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};

use super::message::SEQ;

/// The last stored seq of each producer met since the last [`forget`].
///
/// [`forget`]: Standing::forget
#[derive(Default)]
pub struct Standing {
    last: HashMap<u64, u64>,
}

impl Standing {
    /// Forgets every producer: read them again (after a failed batch, or
    /// when another daemon may have written meanwhile).
    pub fn forget(&mut self) {
        self.last.clear();
    }

    /// `true` if the message `seq` of `producer` is already in the target;
    /// reads the producer's last stored message the first time it is met.
    pub async fn stored(
        &mut self,
        stream: &Stream<()>,
        subject: &str,
        producer: u64,
        seq: u64,
    ) -> Result<bool, String> {
        let last = match self.last.get(&producer) {
            Some(l) => *l,
            None => {
                let l = last_seq(stream, subject).await?;
                self.last.insert(producer, l);
                l
            }
        };
        Ok(seq <= last)
    }
}

/// The `Sluice-Seq` of the last message on `subject` (0: none).
async fn last_seq(stream: &Stream<()>, subject: &str) -> Result<u64, String> {
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(m) => m
            .headers
            .get(SEQ)
            .and_then(|v| v.as_str().parse().ok())
            .ok_or_else(|| {
                format!("the last message on {subject} has no {SEQ} header: another writer uses the subject")
            }),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(0),
        Err(e) => Err(format!("cannot read the last message on {subject}: {e}")),
    }
}
